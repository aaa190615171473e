//! The agent's control socket: a unix socket that answers one JSON request per connection with the
//! node's tables and counters, for `weftd show` (the `ip route` / `ip neigh` / `bridge fdb` of a
//! userspace dataplane) and for scripts (`-o json`).
//!
//! Protocol: the client writes one line, `{"cmd":"show"}`, `{"cmd":"status"}` or
//! `{"cmd":"policy","src":..,"dst":..,"protocol":"tcp","port":80}`, and reads one JSON document
//! until EOF: a [`ShowReply`], a [`StatusReply`], a `PolicyReply`, or `{"error": "..."}` for a request
//! the agent does not understand. The reply is written in one piece. The server runs on its own
//! thread and reads only published snapshots, merged counters and the control plane's flags, so a
//! slow or stuck client never touches the forwarding path.
//!
//! `weftctl status` ([`StatusReply`]) is the one-screen health check: healthy means the lease is
//! held, the tables are programmed from the datastore, subnet.env is written and the datastore
//! answers; the reply lists what is wrong otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::show::{
    tables_view, CountersView, FdbView, NeighView, NodeView, RouteView, ShowReply, TrafficView,
};
pub use crate::status::StatusReply;

/// Errors of the control socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The socket could not be created (directory missing, permissions, address in use).
    #[error("cannot listen on control socket {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No agent answers on the socket.
    #[error("cannot reach weftd at {path}: {source} (is weftd running, and is this its control_socket?)")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The conversation broke off.
    #[error("control socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The other side sent something that is not the expected JSON.
    #[error("control socket answer is not valid JSON: {0}")]
    Decode(#[from] serde_json::Error),
    /// The agent refused the request (an older weftd that lacks it, say).
    #[error("weftd answered: {0}")]
    Agent(String),
}

/// A request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Tables, counters and node facts.
    Show,
    /// The node's health on one screen (`weftctl status`).
    Status,
    /// What NetworkPolicy does with a flow (`weftctl policy`).
    Policy(crate::policy::explain::PolicyQuery),
}

/// A running control socket server; stops and removes the socket when dropped.
#[derive(Debug)]
pub struct CtlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CtlServer {
    /// Listens on `path` (a stale socket file from a killed agent is replaced) and answers each
    /// request with `show()` or `status()`.
    pub fn start<F, G, P>(path: &Path, show: F, status: G, policy: P) -> Result<CtlServer, CtlError>
    where
        F: Fn() -> ShowReply + Send + 'static,
        G: Fn() -> StatusReply + Send + 'static,
        P: Fn(&crate::policy::explain::PolicyQuery) -> crate::policy::explain::PolicyReply
            + Send
            + 'static,
    {
        let listen_err = |source| CtlError::Listen {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(listen_err)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(listen_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handler = move |req: &Request| -> Result<Vec<u8>, serde_json::Error> {
            match req {
                Request::Show => serde_json::to_vec(&show()),
                Request::Status => serde_json::to_vec(&status()),
                Request::Policy(q) => serde_json::to_vec(&policy(q)),
            }
        };
        let thread = std::thread::Builder::new()
            .name("weft-ctl".into())
            .spawn(move || serve(listener, stop2, handler))
            .map_err(listen_err)?;
        Ok(CtlServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve<H>(listener: UnixListener, stop: Arc<AtomicBool>, handler: H)
where
    H: Fn(&Request) -> Result<Vec<u8>, serde_json::Error>,
{
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, &handler) {
                    tracing::debug!("control socket client: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!("control socket accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn answer<H>(stream: UnixStream, handler: &H) -> Result<(), CtlError>
where
    H: Fn(&Request) -> Result<Vec<u8>, serde_json::Error>,
{
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(&stream).take(4096).read_line(&mut line)?;
    // Encoded whole, then written at once: serde_json writing straight into the socket would make
    // one write(2) per token.
    let body = match serde_json::from_str::<Request>(line.trim()) {
        Ok(req) => handler(&req)?,
        Err(e) => serde_json::to_vec(&serde_json::json!({ "error": format!("bad request: {e}") }))?,
    };
    let mut out = &stream;
    out.write_all(&body)?;
    Ok(())
}

/// Sends `req` to the agent at `path` and decodes its answer.
pub fn request<T: serde::de::DeserializeOwned>(path: &Path, req: &Request) -> Result<T, CtlError> {
    let mut stream = UnixStream::connect(path).map_err(|source| CtlError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    match serde_json::from_str::<T>(&body) {
        Ok(v) => Ok(v),
        Err(e) => match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(serde_json::Value::Object(o)) if o.contains_key("error") => Err(CtlError::Agent(
                o["error"].as_str().unwrap_or_default().to_string(),
            )),
            _ => Err(e.into()),
        },
    }
}

/// Asks the agent at `path` for its tables and counters.
pub fn request_show(path: &Path) -> Result<ShowReply, CtlError> {
    request(path, &Request::Show)
}

/// Asks the agent at `path` what its NetworkPolicy does with flow `q`.
pub fn request_policy(
    path: &Path,
    q: &crate::policy::explain::PolicyQuery,
) -> Result<crate::policy::explain::PolicyReply, CtlError> {
    request(path, &Request::Policy(q.clone()))
}

/// Asks the agent at `path` for its health.
pub fn request_status(path: &Path) -> Result<StatusReply, CtlError> {
    request(path, &Request::Status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{status_of, DatastoreView, Health};
    use std::net::Ipv4Addr;

    fn show() -> ShowReply {
        ShowReply {
            node: NodeView {
                name: "node-a".into(),
                public_ip: Ipv4Addr::new(192, 168, 50, 1),
                subnet: "10.244.1.0/24".into(),
                network: "10.244.0.0/16".into(),
                vtep_mac: "02:00:00:00:00:01".into(),
                vni: 1,
                port: 8472,
                tun: "weft.1".into(),
                tun_mtu: 1450,
                underlay_mtu: 1500,
                workers: 1,
            },
            routes: Vec::new(),
            neighbors: Vec::new(),
            fdb: Vec::new(),
            counters: CountersView::default(),
        }
    }

    fn health() -> Health {
        Health {
            backend: "vxlan".into(),
            uptime_secs: 1,
            datastore: DatastoreView {
                kind: "static".into(),
                endpoint: "[[peers]] of the config file".into(),
                connected: true,
                reconnects: 0,
            },
            lease_held: true,
            renewals: 0,
            tables_programmed: true,
            subnet_file: "/run/flannel/subnet.env".into(),
            subnet_env_written: false,
            peers: 0,
            ip_forward: Some(true),
            masq: crate::status::MasqView::default(),
            policy: None,
        }
    }

    #[test]
    fn show_status_and_bad_requests_over_the_socket() {
        let path = std::env::temp_dir().join(format!("weft-ctl-test-{}.sock", std::process::id()));
        let server = CtlServer::start(
            &path,
            show,
            || status_of(show(), health()),
            |q| crate::policy::explain::explain(None, "", Vec::new(), q),
        )
        .expect("listen");
        assert_eq!(request_show(&path).expect("show"), show());
        let status = request_status(&path).expect("status");
        assert!(!status.healthy);
        assert_eq!(status, status_of(show(), health()));
        // A request the agent does not know: its error, not a decoding failure.
        let mut s = UnixStream::connect(&path).expect("connect");
        s.write_all(b"{\"cmd\":\"reboot\"}\n").expect("write");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("read");
        assert!(body.contains("bad request"), "{body}");
        drop(server);
        assert!(!path.exists(), "the socket file is removed on drop");
        assert!(matches!(request_show(&path), Err(CtlError::Connect { .. })));
    }
}
