//! The agent's CNI socket: answers the `weft` plugin's requests ([`cni_shim::wire`]).
//!
//! One accept thread, which acknowledges each connection at once (so the plugin can tell a busy
//! agent from a dead one); each connection then gets its own thread, which waits for the one
//! mutex that serialises the work. The lock covers IPAM *and* plumbing, so two ADDs never race for an address, a DEL
//! never removes a link an ADD is still configuring, and a rollback sees exactly what its ADD made.
//! This is control path: an ADD takes about a millisecond, so a hundred in a row take a tenth of
//! a second.
//!
//! Ordering for "nothing lost on a crash": ADD persists the allocation before creating any link,
//! and undoes both on failure; DEL removes the link before releasing the address. After a crash
//! mid-ADD the runtime sees an error and calls DEL, which finds the allocation by its key and the
//! link by its derived name.

use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cni_shim::spec::{
    self, code, AddResult, CniError, Command, Interface, Invocation, IpConfig, NetConf, Route,
};
use cni_shim::wire::{self, Reply, Request};
use ipnet::Ipv4Net;

use super::ipam::{Ipam, IpamError, Key, PodName, PortOptions};
use super::plumbing::{self, PlumbError, PodPlan};
use crate::datastore::{PodEntry, TableInputs};
use crate::netlink::{Netlink, NetlinkError};
use crate::netns::{NetNs, NetNsError};
use dataplane::io::packet::PacketPort;
use dataplane::io::worker::WorkerShared;
use dataplane::police::PortLimits;
use dataplane::snapshot::SourcePrefixes;
use dataplane::PortId;

// The plugin refuses more prefixes than the dataplane holds inline.
const _: () = assert!(cni_shim::spec::MAX_ALLOWED_SOURCES == SourcePrefixes::MAX);

/// What the CNI server needs to know about the node. The agent fills it from its config today;
/// with a datastore the subnet comes from the node's lease.
#[derive(Debug, Clone)]
pub struct CniContext {
    /// The node's pod subnet.
    pub subnet: Ipv4Net,
    /// The pods' gateway, the bridge's address (`<subnet>.1`).
    pub gateway: Ipv4Addr,
    /// MTU of pod interfaces: the tunnel MTU.
    pub mtu: u32,
    /// The node bridge the host veths join.
    pub bridge: String,
    /// Where the IPAM state lives.
    pub data_dir: PathBuf,
    /// Switch mode (`pod_ports = "switch"`): where pod ports are published.
    pub switch: Option<SwitchPorts>,
}

/// What a switch-mode CNI server publishes pod ports into: the tables (shared with the datastore
/// sync) and the workers' pod sockets.
#[derive(Clone)]
pub struct SwitchPorts {
    /// The tables' inputs.
    pub inputs: Arc<TableInputs>,
    /// The workers.
    pub workers: Arc<WorkerShared>,
    /// With `[policy] source = "kubernetes"`: the pods the policy in force knows. ADD of a pod
    /// it does not know yet waits for it (its labels decide its policy).
    pub pod_gate: Option<Arc<crate::policy::kube::PodGate>>,
}

impl std::fmt::Debug for SwitchPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchPorts")
            .field("pods", &self.inputs.pods().len())
            .field("pod_gate", &self.pod_gate.is_some())
            .finish_non_exhaustive()
    }
}

/// How long ADD waits for every worker to take a new port into its snapshot.
pub const PORT_LIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the CNI server could not start.
#[derive(Debug, thiserror::Error)]
pub enum CniServerError {
    /// The socket could not be created.
    #[error("cannot listen on the CNI socket {path}: {source}; check [cni] socket and that its directory is writable")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The IPAM state could not be opened.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// No netlink socket.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

struct Work {
    ipam: Ipam,
    nl: Netlink,
    /// Switch mode: each attached pod's port, by host veth.
    ports: std::collections::BTreeMap<String, PortId>,
}

struct Handler {
    ctx: CniContext,
    ready: Arc<AtomicBool>,
    work: Mutex<Work>,
}

/// A running CNI server; stops and removes its socket when dropped.
pub struct CniServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for CniServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CniServer")
            .field("path", &self.path)
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl CniServer {
    /// Opens the IPAM state, binds `socket` (replacing a stale socket file, mode 0600) and starts
    /// serving. Call it from a thread in the node's network namespace: the server's netlink
    /// socket is bound there. Not ready until [`CniServer::set_ready`]: STATUS answers 50 and ADD
    /// 11 until then.
    pub fn start(socket: &Path, ctx: CniContext) -> Result<CniServer, CniServerError> {
        let listen_err = |source| CniServerError::Listen {
            path: socket.to_path_buf(),
            source,
        };
        let ipam = Ipam::open(&ctx.data_dir)?;
        let nl = Netlink::new()?;
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).map_err(listen_err)?;
        }
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(listen_err(e)),
        }
        let listener = UnixListener::bind(socket).map_err(listen_err)?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(listen_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(false));
        tracing::info!(
            socket = %socket.display(),
            ipam = %ipam.path().display(),
            allocations = ipam.allocations().len(),
            subnet = %ctx.subnet,
            "CNI server listening"
        );
        let mut work = Work {
            ipam,
            nl,
            ports: std::collections::BTreeMap::new(),
        };
        if let Some(sw) = &ctx.switch {
            adopt(&mut work, sw, &ctx);
        }
        let handler = Arc::new(Handler {
            ctx,
            ready: ready.clone(),
            work: Mutex::new(work),
        });
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("weft-cni".into())
            .spawn(move || accept_loop(listener, stop2, handler))
            .map_err(listen_err)?;
        Ok(CniServer {
            path: socket.to_path_buf(),
            stop,
            ready,
            thread: Some(thread),
        })
    }

    /// Marks the node ready for ADD (it has its subnet and its tables are programmed) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CniServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept with a connection of our own.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Accepts until stopped, one thread per request; on stop it waits for the requests in flight,
/// so a dropped server holds nothing (the IPAM and its lock go with the last request).
fn accept_loop(listener: UnixListener, stop: Arc<AtomicBool>, handler: Arc<Handler>) {
    let mut inflight: Vec<JoinHandle<()>> = Vec::new();
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        inflight.retain(|t| !t.is_finished());
        match conn {
            Ok(mut stream) => {
                // Acknowledge here, not on the request thread: the plugin's "is weftd there?"
                // deadline then does not depend on spawning a thread under load. Writing 11
                // bytes into a fresh socket's empty buffer does not block.
                if let Err(e) = wire::acknowledge(&mut stream) {
                    tracing::debug!("CNI client went away before the acknowledgement: {e}");
                    continue;
                }
                let h = handler.clone();
                let spawned = std::thread::Builder::new()
                    .name("weft-cni-req".into())
                    .spawn(move || serve(stream, &h));
                match spawned {
                    Ok(t) => inflight.push(t),
                    Err(e) => tracing::warn!("CNI server: cannot spawn a request thread: {e}"),
                }
            }
            Err(e) => {
                tracing::warn!("CNI socket accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    for t in inflight {
        let _ = t.join();
    }
}

fn serve(mut stream: UnixStream, handler: &Handler) {
    if let Err(e) = stream.set_read_timeout(Some(Duration::from_secs(5))) {
        tracing::debug!("CNI client: {e}");
        return;
    }
    let reply = match wire::read_request(&mut stream) {
        Ok(Ok(request)) => handler.handle(&request),
        Ok(Err(e)) => Reply::Error(e),
        Err(e) => {
            tracing::debug!("CNI client went away: {e}");
            return;
        }
    };
    if let Err(e) = wire::send_reply(&mut stream, &reply) {
        tracing::warn!("CNI client went away before the reply: {e}");
    }
}

fn key_of(env: &Invocation) -> Key {
    Key {
        container_id: env.container_id().to_string(),
        ifname: env.ifname().to_string(),
    }
}

/// The Kubernetes pod the runtime names in `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, as
/// kubelet's runtimes pass them), if it names one.
fn pod_name(env: &Invocation) -> Option<PodName> {
    Some(PodName {
        namespace: env.arg("K8S_POD_NAMESPACE")?.to_string(),
        name: env.arg("K8S_POD_NAME")?.to_string(),
    })
}

fn ipam_error(e: IpamError) -> CniError {
    let code = match e {
        IpamError::Exhausted { .. } => code::TRY_AGAIN_LATER,
        IpamError::Io { .. } | IpamError::Corrupt { .. } | IpamError::Locked { .. } => {
            code::IO_FAILURE
        }
    };
    CniError::new(code, e.to_string())
}

fn netns_error(path: &str, e: NetNsError) -> CniError {
    let msg = match &e {
        NetNsError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound => format!(
            "CNI_NETNS: {path} does not exist; the runtime must create the sandbox's network namespace before ADD"
        ),
        _ => format!("CNI_NETNS: {e}"),
    };
    CniError::new(code::INVALID_ENV, msg)
}

fn plumb_error(netns: &str, e: PlumbError) -> CniError {
    match e {
        PlumbError::Netns(e) => netns_error(netns, e),
        e @ PlumbError::IfnameExists { .. } => CniError::new(code::IFNAME_EXISTS, e.to_string()),
        PlumbError::Netlink(e) => CniError::new(code::PLUMBING, e.to_string()),
    }
}

impl Handler {
    fn lock(&self) -> MutexGuard<'_, Work> {
        // A panic while plumbing leaves the IPAM state consistent (it is only changed through
        // committed writes), so a poisoned lock is safe to keep using.
        self.work.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handle(&self, req: &Request) -> Reply {
        let conf = match NetConf::from_value(&req.config) {
            Ok(c) => c,
            Err(e) => return Reply::Error(e),
        };
        if let Err(e) = req.env.validate() {
            return Reply::Error(e);
        }
        let start = Instant::now();
        let result = match req.env.command {
            Command::Add => self
                .add(&req.env, &conf)
                .map(|r| Some(r.to_json(conf.cni_version))),
            Command::Del => self.del(&req.env).map(|()| None),
            Command::Check => self.check(&req.env, &conf).map(|()| None),
            Command::Status => self.status().map(|()| None),
            Command::Gc => self.gc(&conf).map(|()| None),
            Command::Version => Ok(Some(spec::version_info())),
        };
        let took = start.elapsed();
        match result {
            Ok(v) => {
                if matches!(req.env.command, Command::Add | Command::Del | Command::Gc) {
                    tracing::info!(
                        command = %req.env.command,
                        container = req.env.container_id(),
                        ifname = req.env.ifname(),
                        us = took.as_micros() as u64,
                        "CNI ok"
                    );
                }
                Reply::Ok(v)
            }
            Err(e) => {
                tracing::warn!(
                    command = %req.env.command,
                    container = req.env.container_id(),
                    code = e.code,
                    "CNI failed: {}",
                    e.msg
                );
                Reply::Error(e)
            }
        }
    }

    fn status(&self) -> Result<(), CniError> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(CniError::new(
                code::NOT_AVAILABLE,
                "weftd is starting: the node has no subnet or its forwarding tables are not programmed yet",
            )
            .details("wait for weftd to finish starting; its log says \"weftd is up\" when ready"))
        }
    }

    fn plan(&self, key: &Key, host_veth: String, ip: Ipv4Addr) -> PodPlan {
        let mut plan = PodPlan {
            host_mac: plumbing::host_veth_mac(&key.container_id, &key.ifname),
            container_mac: plumbing::pod_mac(ip),
            host_veth,
            ifname: key.ifname.clone(),
            addr: Ipv4Net::new(ip, self.ctx.subnet.prefix_len())
                .expect("a subnet's own prefix length is valid"),
            gateway: self.ctx.gateway,
            mtu: self.ctx.mtu,
            bridge: self.ctx.bridge.clone(),
            switch: false,
        };
        if self.ctx.switch.is_some() {
            plan.switch = true;
            plan.addr = Ipv4Net::from(ip);
            plan.gateway = plumbing::SWITCH_GATEWAY;
        }
        plan
    }

    /// ADD. Weft creates the container's interface, so it comes first in a chain; a `prevResult`
    /// (some plugin before it) is suppressed, as the spec allows, not merged: the result lists
    /// what Weft made.
    fn add(&self, env: &Invocation, conf: &NetConf) -> Result<AddResult, CniError> {
        if self.status().is_err() {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                "weftd is starting and cannot attach pods yet",
            )
            .details("the runtime retries; check weftd's log if this persists"));
        }
        let netns_path = env.netns.as_deref().unwrap_or_default();
        let ns = NetNs::open_path(Path::new(netns_path)).map_err(|e| netns_error(netns_path, e))?;
        // Before anything is allocated, and outside the lock: other pods' ADDs and DELs go on.
        let gate = self.ctx.switch.as_ref().and_then(|s| s.pod_gate.as_ref());
        if let (Some(gate), Some(pod)) = (gate, pod_name(env)) {
            let wait = crate::policy::kube::POD_WAIT;
            if !gate.wait(&pod, env.arg("K8S_POD_UID"), wait) {
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!(
                        "pod {}/{} is not in the Kubernetes API's pods as weftd's NetworkPolicy watcher sees them (waited {wait:?}): its labels, and so its policy, are unknown, so it is not attached",
                        pod.namespace, pod.name
                    ),
                )
                .details("the runtime retries; if this persists, check weftd's log for the policy watcher (its RBAC: pods list/watch)"));
            }
        }
        let key = key_of(env);
        let host_veth = plumbing::host_veth_name(&key.container_id, &key.ifname);
        let mut work = self.lock();
        let Work { ipam, nl, ports } = &mut *work;
        if let Some(other) = ipam
            .allocations()
            .iter()
            .find(|a| a.host_veth == host_veth && a.key != key)
        {
            return Err(CniError::new(
                code::INTERNAL,
                format!(
                    "host veth name {host_veth} of container {} is taken by container {} interface {} (hash collision); delete that pod or retry with another container ID",
                    key.container_id, other.key.container_id, other.key.ifname
                ),
            ));
        }
        // A repeated ADD (no DEL in between) or a crash mid-ADD can leave the host end behind.
        if let Some(sw) = &self.ctx.switch {
            unpublish(sw, ports, &host_veth);
        }
        plumbing::detach(nl, &host_veth)
            .map_err(|e| CniError::new(code::PLUMBING, e.to_string()))?;
        if conf.bandwidth.is_some() && self.ctx.switch.is_none() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "runtimeConfig.bandwidth: weft enforces pod bandwidth only in switch mode ([dataplane] pod_ports = \"switch\"); this node runs bridge mode",
            )
            .details("in bridge mode chain the bandwidth plugin after weft and give it, not weft, the bandwidth capability (deploy/10-weft-bridge.conflist)"));
        }
        let options = PortOptions {
            bandwidth: conf.bandwidth,
            allowed_sources: conf.allowed_sources.clone(),
            pod: pod_name(env),
        };
        let alloc = ipam
            .allocate_with(self.ctx.subnet, &key, &host_veth, options.clone())
            .map_err(ipam_error)?;
        let plan = self.plan(&key, host_veth, alloc.ip);
        if let Err(e) = plumbing::attach(nl, &ns, &plan) {
            // attach removed its links; give the address back too.
            if let Err(re) = ipam.release(&key) {
                tracing::error!("rollback: cannot release {}: {re}", alloc.ip);
            }
            return Err(plumb_error(netns_path, e));
        }
        if let Some(sw) = &self.ctx.switch {
            if let Err(e) = publish(sw, ports, &plan, alloc.ip, &options, true) {
                let _ = plumbing::detach(nl, &plan.host_veth);
                if let Err(re) = ipam.release(&key) {
                    tracing::error!("rollback: cannot release {}: {re}", alloc.ip);
                }
                return Err(CniError::new(code::PLUMBING, e));
            }
        }
        drop(work);
        Ok(AddResult {
            interfaces: vec![
                Interface {
                    name: plan.host_veth.clone(),
                    mac: plan.host_mac.to_string(),
                    mtu: Some(plan.mtu),
                    sandbox: None,
                },
                Interface {
                    name: plan.ifname.clone(),
                    mac: plan.container_mac.to_string(),
                    mtu: Some(plan.mtu),
                    sandbox: Some(netns_path.to_string()),
                },
            ],
            ips: vec![IpConfig {
                address: plan.addr.to_string(),
                gateway: Some(plan.gateway.to_string()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some(plan.gateway.to_string()),
            }],
            dns: conf.dns.clone(),
        })
    }

    fn del(&self, env: &Invocation) -> Result<(), CniError> {
        let key = key_of(env);
        let mut work = self.lock();
        let Work { ipam, nl, ports } = &mut *work;
        let host_veth = ipam.get(&key).map_or_else(
            || plumbing::host_veth_name(&key.container_id, &key.ifname),
            |a| a.host_veth.clone(),
        );
        if let Some(sw) = &self.ctx.switch {
            unpublish(sw, ports, &host_veth);
        }
        plumbing::detach(nl, &host_veth)
            .map_err(|e| CniError::new(code::PLUMBING, e.to_string()))?;
        ipam.release(&key).map_err(ipam_error)?;
        Ok(())
    }

    fn check(&self, env: &Invocation, conf: &NetConf) -> Result<(), CniError> {
        let failed = |what: String| CniError::new(code::CHECK_FAILED, format!("CHECK: {what}"));
        let prev = conf.prev_result.as_ref().ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "prevResult: missing; CHECK needs the result of the container's ADD",
            )
        })?;
        let prev = AddResult::from_json(prev)?;
        let key = key_of(env);
        let netns_path = env.netns.as_deref().unwrap_or_default();
        let alloc = self.lock().ipam.get(&key).cloned().ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "container {} interface {} has no Weft address; was it added to this node?",
                    key.container_id, key.ifname
                ),
            )
        })?;
        let plan = self.plan(&key, alloc.host_veth.clone(), alloc.ip);
        let listed = prev
            .interfaces
            .iter()
            .position(|i| i.name == plan.ifname && i.sandbox.as_deref() == Some(netns_path));
        let Some(index) = listed else {
            return Err(failed(format!(
                "prevResult lists no interface {} in {netns_path}",
                plan.ifname
            )));
        };
        if !prev
            .ips
            .iter()
            .any(|ip| ip.address == plan.addr.to_string() && ip.interface == Some(index))
        {
            return Err(failed(format!(
                "prevResult does not give {} address {}",
                plan.ifname, plan.addr
            )));
        }
        let ns = NetNs::open_path(Path::new(netns_path)).map_err(|e| netns_error(netns_path, e))?;
        let work = self.lock();
        let wrong =
            plumbing::check(&work.nl, &ns, &plan).map_err(|e| plumb_error(netns_path, e))?;
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(failed(wrong.join("; ")))
        }
    }

    fn gc(&self, conf: &NetConf) -> Result<(), CniError> {
        let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "cni.dev/valid-attachments: missing; GC releases every attachment not listed, so weft will not guess",
            )
        })?;
        let mut work = self.lock();
        let Work { ipam, nl, ports } = &mut *work;
        let stale: Vec<_> = ipam
            .allocations()
            .iter()
            .filter(|a| {
                !valid
                    .iter()
                    .any(|v| v.container_id == a.key.container_id && v.ifname == a.key.ifname)
            })
            .cloned()
            .collect();
        for a in &stale {
            if let Some(sw) = &self.ctx.switch {
                unpublish(sw, ports, &a.host_veth);
            }
            plumbing::detach(nl, &a.host_veth)
                .map_err(|e| CniError::new(code::PLUMBING, e.to_string()))?;
        }
        let gone = ipam.retain(|a| !stale.contains(a)).map_err(ipam_error)?;
        for a in gone {
            tracing::info!(
                container = a.key.container_id,
                ifname = a.key.ifname,
                ip = %a.ip,
                "GC released a stale attachment"
            );
        }
        Ok(())
    }
}

/// Switch mode: opens the pod's port on its host veth and publishes it (socket first, then the
/// tables), then, with `wait`, returns once every worker has it. On an error nothing is left
/// published.
fn publish(
    sw: &SwitchPorts,
    ports: &mut std::collections::BTreeMap<String, PortId>,
    plan: &PodPlan,
    ip: Ipv4Addr,
    options: &PortOptions,
    wait: bool,
) -> Result<PortId, String> {
    let extra = SourcePrefixes::new(&options.allowed_sources).ok_or_else(|| {
        format!(
            "{} allowed source prefixes; at most {} per pod",
            options.allowed_sources.len(),
            SourcePrefixes::MAX
        )
    })?;
    let port = sw
        .inputs
        .free_port()
        .ok_or_else(|| "no free switch port id (65535 pods on one node?)".to_string())?;
    let sock = PacketPort::open_steered(
        &plan.host_veth,
        dataplane::io::packet::DEFAULT_RCVBUF,
        sw.workers.workers(),
    )
    .map_err(|e| e.to_string())?;
    let limits = options.bandwidth.and_then(|b| {
        PortLimits::new(
            (b.ingress_rate, b.ingress_burst),
            (b.egress_rate, b.egress_burst),
        )
    });
    let mut socks = (*sw.workers.pod_ports()).clone();
    socks.insert_limited(port, Arc::new(sock), limits.map(Arc::new));
    sw.workers.set_pod_ports(socks);
    sw.inputs.add_pod(PodEntry {
        port,
        ip,
        mac: plan.container_mac,
        port_mac: plumbing::SWITCH_GATEWAY_MAC,
        mtu: u16::try_from(plan.mtu).unwrap_or(u16::MAX),
        extra,
        pod: options.pod.clone(),
    });
    ports.insert(plan.host_veth.clone(), port);
    if wait && !sw.workers.sync(PORT_LIVE_TIMEOUT) {
        unpublish(sw, ports, &plan.host_veth);
        return Err(format!(
            "the workers did not take port {} ({}) within {PORT_LIVE_TIMEOUT:?}",
            port.0, plan.host_veth
        ));
    }
    Ok(port)
}

/// Switch mode: withdraws host veth `host_veth`'s port, if it has one: tables first, then the
/// socket, then waits (briefly) until no worker uses either.
fn unpublish(
    sw: &SwitchPorts,
    ports: &mut std::collections::BTreeMap<String, PortId>,
    host_veth: &str,
) {
    let Some(port) = ports.remove(host_veth) else {
        return;
    };
    sw.inputs.remove_pod(port);
    let mut socks = (*sw.workers.pod_ports()).clone();
    socks.remove(port);
    sw.workers.set_pod_ports(socks);
    let _ = sw.workers.sync(PORT_LIVE_TIMEOUT);
    // A worker on an older snapshot may have learnt on the port meanwhile; the id is reused.
    sw.inputs.learnt().forget_port(port);
}

/// Switch mode at start: re-attaches the pods an earlier run left (an allocation whose host veth
/// exists gets its port back) and deletes Weft veths no allocation names (orphans of a crash).
fn adopt(work: &mut Work, sw: &SwitchPorts, ctx: &CniContext) {
    let Ok(links) = work.nl.links() else {
        tracing::warn!("switch mode: cannot list links; existing pods are not re-adopted");
        return;
    };
    let allocations = work.ipam.allocations().to_vec();
    let mut adopted = 0;
    for a in &allocations {
        if !links.iter().any(|l| l.name == a.host_veth) {
            continue;
        }
        let plan = PodPlan {
            host_veth: a.host_veth.clone(),
            host_mac: plumbing::host_veth_mac(&a.key.container_id, &a.key.ifname),
            container_mac: plumbing::pod_mac(a.ip),
            ifname: a.key.ifname.clone(),
            addr: Ipv4Net::from(a.ip),
            gateway: plumbing::SWITCH_GATEWAY,
            mtu: ctx.mtu,
            bridge: ctx.bridge.clone(),
            switch: true,
        };
        match publish(sw, &mut work.ports, &plan, a.ip, &a.options(), false) {
            Ok(_) => adopted += 1,
            Err(e) => {
                tracing::warn!(veth = %a.host_veth, ip = %a.ip, "switch mode: cannot re-adopt the pod: {e}")
            }
        }
    }
    let mut orphans = 0;
    for l in &links {
        let ours = l.name.starts_with(plumbing::HOST_VETH_PREFIX)
            && l.kind.as_deref() == Some("veth")
            && !allocations.iter().any(|a| a.host_veth == l.name);
        if ours && plumbing::detach(&work.nl, &l.name).is_ok() {
            orphans += 1;
        }
    }
    if adopted > 0 || orphans > 0 {
        tracing::info!(
            adopted,
            orphans,
            "switch mode: re-adopted existing pods, removed orphan veths"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(socket: &Path, command: &str) -> Reply {
        let env = Invocation {
            command: Command::parse(command).expect("verb"),
            container_id: Some("c1".into()),
            netns: Some("/nonexistent/netns".into()),
            ifname: Some("eth0".into()),
            args: None,
        };
        let config = serde_json::json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft"});
        wire::call(socket, &Request { env, config }).expect("agent reachable")
    }

    /// The readiness handshake, without root: STATUS is 50 and ADD 11 until the agent says it is
    /// ready; then STATUS succeeds and an ADD into a missing namespace is an env error (4) that
    /// leaves no allocation behind.
    #[test]
    fn status_follows_readiness_and_add_waits_for_it() {
        let dir = std::env::temp_dir().join(format!("weft-cni-server-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let socket = dir.join("cni.sock");
        let ctx = CniContext {
            subnet: "10.244.1.0/24".parse().expect("valid"),
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            mtu: 1450,
            bridge: "weft0".into(),
            data_dir: dir.join("data"),
            switch: None,
        };
        let server = CniServer::start(&socket, ctx).expect("start");
        let code_of = |r: Reply| match r {
            Reply::Error(e) => e.code,
            Reply::Ok(_) => 0,
        };
        assert_eq!(code_of(call(&socket, "STATUS")), code::NOT_AVAILABLE);
        assert_eq!(code_of(call(&socket, "ADD")), code::TRY_AGAIN_LATER);
        server.set_ready(true);
        assert_eq!(code_of(call(&socket, "STATUS")), 0);
        match call(&socket, "ADD") {
            Reply::Error(e) => {
                assert_eq!(e.code, code::INVALID_ENV);
                assert!(
                    e.msg.contains("/nonexistent/netns does not exist"),
                    "{}",
                    e.msg
                );
            }
            other => panic!("ADD into a missing netns: {other:?}"),
        }
        assert_eq!(code_of(call(&socket, "DEL")), 0, "DEL of nothing succeeds");
        drop(server);
        assert!(!socket.exists(), "the socket goes with the server");
        let ipam = Ipam::open(&dir.join("data")).expect("reopen");
        assert!(ipam.allocations().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
