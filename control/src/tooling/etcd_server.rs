//! A real etcd server for the lab, the integration tests and `weftd bench-control`: the
//! distribution's `etcd` binary on a temporary data directory and free ports, on loopback or inside
//! a lab namespace, killed and removed on drop.
//!
//! Helpers ([`EtcdServer::put`], [`EtcdServer::list`], ...) speak to it with the same etcd client
//! the agent uses, from inside the server's namespace, so a test can seed and inspect flannel's
//! keys wherever the server runs.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::etcd::{Client, ConnectOptions, GetOptions, PutOptions};

use crate::netns::{spawn_in_netns, NetNs};

/// Where Debian's `etcd-server` package installs the server.
pub const ETCD_BINARY: &str = "/usr/bin/etcd";

/// Errors of the fixture.
#[derive(Debug, thiserror::Error)]
pub enum EtcdServerError {
    /// The binary is missing.
    #[error("{0} is missing: install Debian's etcd-server package (.ci/run does)")]
    Missing(String),
    /// Spawning or waiting failed.
    #[error("etcd: {0}")]
    Io(String),
    /// A client request failed.
    #[error("etcd client: {0}")]
    Client(#[from] crate::etcd::Error),
}

/// A running etcd.
#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    dir: PathBuf,
    ns: Option<NetNs>,
    ip: Ipv4Addr,
    client_port: u16,
    peer_port: u16,
    log: PathBuf,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

fn free_port(ip: Ipv4Addr) -> std::io::Result<u16> {
    Ok(TcpListener::bind(SocketAddrV4::new(ip, 0))?
        .local_addr()?
        .port())
}

/// Creates the server's data directory `name`: in RAM (`/dev/shm`) where the host has it, else
/// in the temporary directory. etcd preallocates a 64 MiB WAL segment per server at start, and
/// the tests start several at once: on a nearly full disk (a CI machine after the build) that
/// fails with ENOSPC, while a throwaway server loses nothing by living in RAM.
fn scratch_dir(name: &str) -> std::io::Result<PathBuf> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        let dir = shm.join(name);
        if std::fs::create_dir_all(&dir).is_ok() {
            return Ok(dir);
        }
    }
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl EtcdServer {
    /// Starts etcd on 127.0.0.1 with free ports.
    pub fn start_loopback() -> Result<EtcdServer, EtcdServerError> {
        Self::start(None, Ipv4Addr::LOCALHOST)
    }

    /// Starts etcd listening on `ip`, inside the namespace named `netns` when given (a lab's
    /// underlay, so nodes reach it over the underlay), else in ours. Waits until it answers.
    pub fn start(netns: Option<&str>, ip: Ipv4Addr) -> Result<EtcdServer, EtcdServerError> {
        if !Path::new(ETCD_BINARY).exists() {
            return Err(EtcdServerError::Missing(ETCD_BINARY.into()));
        }
        let io = |what: &str| {
            let what = what.to_string();
            move |e: std::io::Error| EtcdServerError::Io(format!("{what}: {e}"))
        };
        let ns = netns
            .map(NetNs::open)
            .transpose()
            .map_err(|e| EtcdServerError::Io(e.to_string()))?;
        let ports = || -> std::io::Result<(u16, u16)> { Ok((free_port(ip)?, free_port(ip)?)) };
        let (client_port, peer_port) = match &ns {
            Some(ns) => ns
                .run(ports)
                .map_err(|e| EtcdServerError::Io(e.to_string()))?
                .map_err(io("pick ports"))?,
            None => ports().map_err(io("pick ports"))?,
        };
        let name = format!(
            "weft-etcd-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = scratch_dir(&name).map_err(io("create data dir"))?;
        let log = dir.join("etcd.log");
        let mut server = EtcdServer {
            child: None,
            dir,
            ns,
            ip,
            client_port,
            peer_port,
            log,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), EtcdServerError> {
        let io = |what: &'static str| {
            move |e: std::io::Error| EtcdServerError::Io(format!("{what}: {e}"))
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io("open log"))?;
        let log2 = log.try_clone().map_err(io("dup log"))?;
        let client_url = self.endpoint();
        let peer_url = format!("http://{}:{}", self.ip, self.peer_port);
        let mut cmd = Command::new(ETCD_BINARY);
        cmd.arg("--name")
            .arg("weft-test")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("weft-test={peer_url}"))
            .arg("--log-level")
            .arg("warn")
            .env_remove("ETCDCTL_API")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // Its own process group: a Ctrl-C meant for a demo does not kill it behind our back.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = match &self.ns {
            Some(ns) => spawn_in_netns(&mut cmd, ns),
            None => cmd.spawn(),
        }
        .map_err(io("spawn /usr/bin/etcd"))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(15))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), EtcdServerError> {
        let start = Instant::now();
        loop {
            if self
                .block(|mut c| async move { c.get("/", None).await.map(|_| ()) })
                .is_ok()
            {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            if exited || start.elapsed() > timeout {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(EtcdServerError::Io(format!(
                    "did not become ready on {} within {timeout:?}; log:\n{log}",
                    self.endpoint()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The client URL, `http://ip:port`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.ip, self.client_port)
    }

    /// Whether the client port accepts connections (from the server's namespace).
    pub fn is_up(&self) -> bool {
        let addr = SocketAddrV4::new(self.ip, self.client_port);
        let probe =
            move || TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok();
        match &self.ns {
            Some(ns) => ns.run(probe).unwrap_or(false),
            None => probe(),
        }
    }

    /// Kills the server (SIGKILL: as abrupt as a crash or a partition). Data stays on disk.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same data and ports.
    pub fn restart(&mut self) -> Result<(), EtcdServerError> {
        self.stop();
        self.spawn()
    }

    /// Runs `f` with a fresh client, inside the server's namespace, on a private runtime and
    /// thread.
    pub fn block<T, F, Fut>(&self, f: F) -> Result<T, EtcdServerError>
    where
        F: FnOnce(Client) -> Fut + Send,
        Fut: Future<Output = Result<T, crate::etcd::Error>>,
        T: Send,
    {
        let ep = self.endpoint();
        let run = move || -> Result<T, EtcdServerError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| EtcdServerError::Io(format!("runtime: {e}")))?;
            rt.block_on(async move {
                let opts = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(5));
                let c = Client::connect([ep], Some(opts)).await?;
                Ok(f(c).await?)
            })
        };
        match &self.ns {
            Some(ns) => ns
                .run(run)
                .map_err(|e| EtcdServerError::Io(e.to_string()))?,
            // A thread of its own, so callers may be inside a runtime themselves.
            None => std::thread::scope(|s| {
                s.spawn(run)
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            }),
        }
    }

    /// Runs `f` on a thread inside the server's namespace (threads `f` spawns stay there too),
    /// so a caller can hold its own long-lived clients next to the server.
    pub fn in_ns<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, EtcdServerError> {
        match &self.ns {
            Some(ns) => ns.run(f).map_err(|e| EtcdServerError::Io(e.to_string())),
            None => Ok(std::thread::scope(|s| {
                s.spawn(f)
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })),
        }
    }

    /// Puts `key = value`, bound to a fresh etcd lease of `ttl` seconds when given.
    pub fn put(&self, key: &str, value: &str, ttl: Option<i64>) -> Result<(), EtcdServerError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.block(move |mut c| async move {
            let opts = match ttl {
                Some(ttl) => Some(PutOptions::new().with_lease(c.lease_grant(ttl).await?.id)),
                None => None,
            };
            c.put(key, value, opts).await.map(|_| ())
        })
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &str) -> Result<(), EtcdServerError> {
        let key = key.to_string();
        self.block(move |mut c| async move { c.delete(key, None).await.map(|_| ()) })
    }

    /// Every key under `prefix`: (key, value, etcd lease id).
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, String, i64)>, EtcdServerError> {
        let prefix = prefix.to_string();
        self.block(move |mut c| async move {
            let r = c.get(prefix, Some(GetOptions::new().with_prefix())).await?;
            Ok(r.kvs
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        String::from_utf8_lossy(&kv.value).into_owned(),
                        kv.lease,
                    )
                })
                .collect())
        })
    }

    /// Compacts the history up to the current revision (forces watchers to re-list).
    pub fn compact(&self) -> Result<(), EtcdServerError> {
        self.block(|mut c| async move {
            let rev = c.get("/", None).await?.header.map_or(0, |h| h.revision);
            c.compact(rev).await.map(|_| ())
        })
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
