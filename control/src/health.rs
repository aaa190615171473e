//! The health and metrics HTTP server: `GET /healthz` (200 while the agent runs), `GET /readyz`
//! (200 once the subnet lease is held, the tables are programmed from the datastore and
//! subnet.env is written; 503 with the missing parts before), `GET /metrics` (OpenMetrics text,
//! see [`crate::metrics`]). The paths are flannel's; Calico's Felix uses `/liveness` and
//! `/readiness`, which are served too so either kind of probe works.
//!
//! A deliberately small HTTP/1.1 server on one thread: one request per connection, no keep-alive,
//! bounded request size and read timeout, so a stuck client cannot hold the agent. Probes and
//! scrapes are a few requests a minute; nothing here is on the forwarding path.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::metrics::Metrics;

/// The health server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for health and metrics on {addr}: {source} (another agent or exporter on the port? set [health] listen)")]
pub struct HealthError {
    /// The address.
    pub addr: SocketAddr,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// A running health server; stops when dropped.
#[derive(Debug)]
pub struct HealthServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HealthServer {
    /// Listens on `addr` and serves `metrics`.
    pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<HealthServer, HealthError> {
        let err = |source| HealthError { addr, source };
        let listener = TcpListener::bind(addr).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let bound = listener.local_addr().map_err(err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("weft-health".into())
            .spawn(move || serve(listener, &stop2, &metrics))
            .map_err(err)?;
        Ok(HealthServer {
            addr: bound,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: TcpListener, stop: &AtomicBool, metrics: &Arc<Metrics>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, metrics) {
                    tracing::debug!("health client: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!("health accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The response to `GET path`: status, content type, body.
pub fn respond(path: &str, metrics: &Arc<Metrics>) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path.split('?').next().unwrap_or_default() {
        "/healthz" | "/liveness" => (200, TEXT, "ok\n".into()),
        "/readyz" | "/readiness" => {
            if metrics.is_ready() {
                (200, TEXT, "ok\n".into())
            } else {
                (
                    503,
                    TEXT,
                    format!("not ready: {}\n", metrics.not_ready_reasons().join(", ")),
                )
            }
        }
        "/metrics" => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        _ => (
            404,
            TEXT,
            "not found; try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

fn answer(stream: TcpStream, metrics: &Arc<Metrics>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(&stream).take(8192);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers; a GET has no body we care about.
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = if method == "GET" || method == "HEAD" {
        respond(path, metrics)
    } else {
        (405, "text/plain; charset=utf-8", "only GET\n".to_string())
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut out = &stream;
    write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        out.write_all(body.as_bytes())?;
    }
    out.flush()
}

/// `GET path` on `addr`: status and body. For tests, the lab and `weftd` itself.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:.80}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_readyz_metrics_over_http() {
        let m = Arc::new(Metrics::new());
        let server =
            HealthServer::start("127.0.0.1:0".parse().expect("addr"), m.clone()).expect("start");
        let t = Duration::from_secs(2);
        assert_eq!(get(server.addr(), "/healthz", t).expect("get").0, 200);
        let (status, body) = get(server.addr(), "/readyz", t).expect("get");
        assert_eq!(status, 503);
        assert!(body.contains("subnet lease not held"), "{body}");
        m.lease_held.store(true, Ordering::Relaxed);
        m.tables_programmed.store(true, Ordering::Relaxed);
        m.subnet_env_written.store(true, Ordering::Relaxed);
        assert_eq!(get(server.addr(), "/readyz", t).expect("get").0, 200);
        let (status, body) = get(server.addr(), "/metrics", t).expect("get");
        assert_eq!(status, 200);
        assert!(body.contains("weft_ready 1"), "{body}");
        assert_eq!(get(server.addr(), "/nope", t).expect("get").0, 404);
    }
}
