//! The node agent: asks the datastore (static file, etcd, Kubernetes) for this node's subnet and
//! its peers, plumbs the node, runs the dataplane workers, keeps the tables current from the
//! datastore on a control thread, writes subnet.env, and serves the control socket and the
//! health/metrics endpoint.
//!
//! Start-up order (etcd): public IP and VTEP MAC, network config (retried until valid), subnet
//! lease, tables from the lease listing, TUN and plumbing, workers, watch, subnet.env, ready.
//!
//! Start-up order matters for "nothing lost on a crash": the TUN device is created by this process
//! and vanishes with it (the kernel then drops the cluster route into it), while the bridge and the
//! pods on it are kernel state that outlives the agent. A restarted agent re-creates the TUN,
//! re-plumbs idempotently and publishes the same tables, so existing pods talk again within a
//! second without being recreated.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dataplane::io::tun::{TunDevice, TunOffload};
use dataplane::io::worker::{self, IoOptions, UnderlayRx, WorkerConfig, WorkerIo, WorkerShared};
use dataplane::snapshot::SnapshotCell;
use ipnet::Ipv4Net;

use crate::config::{BackendKind, Config, Encapsulation, PolicySource, PublicAddress};
use crate::ctl::{self, CountersView, CtlServer, NodeView, ShowReply};
use crate::datastore::{
    etcd, kube, static_peers, BackendChoice, Backoff, DatastoreKind, Lease, OwnNode, PeerSync,
};
use crate::direct_routes::DirectRoutes;
use crate::health::{HealthError, HealthServer};
use crate::metrics::Metrics;
use crate::netlink::{self, Netlink, NodePlan};
use crate::subnet_env::{self, SubnetEnv};

/// The TUN device's port id in the tables.
pub use crate::datastore::TUN_PORT;
/// Where the agent's network namespace shows its sysctls.
const PROC_SYS: &str = "/proc/sys";

/// Socket buffer size for the VXLAN sockets.
const SOCKET_BUFFER: usize = 4 << 20;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The underlay address or its interface could not be determined.
    #[error("underlay: {0}")]
    Underlay(String),
    /// Creating the TUN device failed (is /dev/net/tun there, and are we root / CAP_NET_ADMIN?).
    #[error("cannot create TUN device {name}: {source} (needs /dev/net/tun and CAP_NET_ADMIN)")]
    Tun {
        /// Device name.
        name: String,
        /// OS error.
        source: std::io::Error,
    },
    /// Netlink plumbing failed.
    #[error("node plumbing: {0}")]
    Plumbing(#[from] netlink::NetlinkError),
    /// The underlay sockets could not be opened.
    #[error("cannot open the {backend} sockets (VXLAN: UDP {port}): {source} (another VXLAN device or agent on the port? CAP_NET_RAW for the raw sockets?)")]
    Socket {
        /// The backend.
        backend: &'static str,
        /// UDP port.
        port: u16,
        /// OS error.
        source: std::io::Error,
    },
    /// The control socket could not be started.
    #[error(transparent)]
    Ctl(#[from] ctl::CtlError),
    /// A worker thread could not be spawned.
    #[error("cannot spawn worker thread: {0}")]
    Spawn(std::io::Error),
    /// `dataplane.cpu_wakeup_latency_us` is set, but the PM QoS request could not be made.
    #[error(
        "dataplane.cpu_wakeup_latency_us: cannot request a CPU wakeup latency through {}: {source} \
         (needs root and a kernel with PM QoS; unset the field to run without it)",
        crate::cpu_latency::DEVICE
    )]
    CpuLatency {
        /// OS error.
        source: std::io::Error,
    },
    /// The health server could not start.
    #[error(transparent)]
    Health(#[from] HealthError),
    /// The etcd datastore failed (out of subnets, TLS files, stopped while waiting).
    #[error("etcd datastore: {0}")]
    Etcd(#[from] etcd::EtcdError),
    /// The Kubernetes datastore failed.
    #[error("kubernetes datastore: {0}")]
    Kube(#[from] kube::KubeError),
    /// The CNI server could not be started.
    #[error("CNI server: {0}")]
    Cni(#[from] crate::cni::CniServerError),
    /// A kernel setting the pod path needs (`net.ipv4.ip_forward`) could not be set.
    #[error("forwarding: {0}")]
    Forwarding(#[from] crate::forwarding::SysctlError),
    /// The egress masquerade rules could not be written (or their tool is missing).
    #[error(transparent)]
    Masq(#[from] crate::masq::MasqError),
    /// The NetworkPolicy source could not start (stopped while the first lists loaded).
    #[error("NetworkPolicy from the Kubernetes API: {0}")]
    Policy(&'static str),
}

/// What the agent derived from its configuration and the host.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// Node name.
    pub name: String,
    /// Underlay address.
    pub public_ip: Ipv4Addr,
    /// Underlay interface.
    pub underlay_if: String,
    /// Underlay MTU.
    pub underlay_mtu: u16,
    /// The underlay interface's subnet: peers in it can be routed directly.
    pub underlay: Ipv4Net,
    /// Tunnel MTU.
    pub tun_mtu: u16,
    /// TUN device name: `weft.<vni>` (vxlan), `weft.ipip`, `weft.hostgw`.
    pub tun_name: String,
    /// Worker count.
    pub workers: usize,
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    facts: NodeFacts,
    cfg: Config,
    shared: Arc<WorkerShared>,
    workers: Vec<JoinHandle<std::io::Result<()>>>,
    ctl: Option<CtlServer>,
    metrics: Arc<Metrics>,
    health: Option<HealthServer>,
    stop: Arc<AtomicBool>,
    control: Option<JoinHandle<()>>,
    cni: Option<crate::cni::CniServer>,
    routes: Option<DirectRoutes>,
    masq: Option<crate::masq::Masq>,
    policy_watch: Option<JoinHandle<()>>,
    /// The PM QoS request of `dataplane.cpu_wakeup_latency_us`, in force while this is open.
    _cpu_latency: Option<crate::cpu_latency::CpuLatencyRequest>,
}

/// The live datastore connection the control thread takes over after start-up.
enum Session {
    Static,
    Etcd {
        client: Box<crate::etcd::Client>,
        acquired: Box<etcd::Acquired>,
    },
    Kube {
        client: ::kube::Client,
    },
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Session::Static => "Static",
            Session::Etcd { .. } => "Etcd",
            Session::Kube { .. } => "Kube",
        })
    }
}

/// What the datastore said before plumbing: our subnet, the network, the first peers.
#[derive(Debug)]
struct Prepared {
    subnet: Ipv4Net,
    network: Ipv4Net,
    backend: BackendChoice,
    leases: Vec<Lease>,
    /// The tables hold everything the datastore had (static, etcd: the acquisition's listing);
    /// Kubernetes programs its peers once the watcher's first list is in.
    programmed: bool,
    session: Session,
}

impl Prepared {
    /// The configuration with what the datastore decided filled in.
    fn effective(&self, cfg: &Config) -> Config {
        let mut c = cfg.clone();
        c.node.subnet = Some(self.subnet);
        c.network.network = self.network;
        c.backend.kind = self.backend.kind;
        c.backend.encapsulation = self.backend.encapsulation;
        c.backend.vni = self.backend.vni;
        c.backend.port = self.backend.port;
        c
    }
}

/// This node's dataplane identity for [`crate::datastore::reconcile`].
pub fn own_node(cfg: &Config, facts: &NodeFacts, subnet: Ipv4Net) -> OwnNode {
    OwnNode {
        subnet,
        public_ip: facts.public_ip,
        vtep_mac: cfg.vtep_mac(),
        vni: cfg.backend.vni,
        vxlan_port: cfg.backend.port,
        underlay_mtu: facts.underlay_mtu,
        tun_mtu: facts.tun_mtu,
        backend: cfg.backend.kind,
        encapsulation: cfg.backend.encapsulation,
        underlay: facts.underlay,
    }
}

impl Agent {
    /// Plumbs the node, starts the workers and the control socket; stops on SIGTERM handled by
    /// the caller through [`Agent::stop`].
    pub fn start(cfg: &Config) -> Result<Agent, AgentError> {
        Self::start_with_stop(cfg, Arc::new(AtomicBool::new(false)))
    }

    /// Like [`Agent::start`]; `stop` ends start-up waits (for etcd, the network config, the
    /// Node's podCIDR) and, later, the control thread.
    pub fn start_with_stop(cfg: &Config, stop: Arc<AtomicBool>) -> Result<Agent, AgentError> {
        let mut facts = node_facts(cfg)?;
        let cpu_latency = match cfg.dataplane.cpu_wakeup_latency_us {
            Some(us) => {
                let held = crate::cpu_latency::CpuLatencyRequest::request(us)
                    .map_err(|source| AgentError::CpuLatency { source })?;
                tracing::info!(
                    us,
                    "holding a PM QoS CPU wakeup latency request ({})",
                    crate::cpu_latency::DEVICE
                );
                Some(held)
            }
            None => None,
        };
        // The firewall tool is looked for first, so a host without one fails before anything
        // is changed.
        let masq_backend = if cfg.network.ip_masq {
            Some(crate::masq::detect(cfg.network.masq_backend)?)
        } else {
            None
        };
        let metrics = Arc::new(Metrics::new());
        // Up first, so probes get /healthz (and a 503 /readyz) while we wait for a datastore.
        let health = match cfg.health.listen {
            Some(addr) => Some(HealthServer::start(addr, metrics.clone())?),
            None => None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AgentError::Spawn)?;
        let prepared = rt.block_on(prepare(cfg, &facts, &stop))?;
        metrics.lease_held.store(true, Ordering::Relaxed);
        metrics.datastore_connected.store(true, Ordering::Relaxed);
        let cfg = prepared.effective(cfg);
        // The datastore's network config may have chosen another backend than the file's.
        facts.tun_name = cfg.backend.kind.tun_name(cfg.backend.vni);
        facts.tun_mtu =
            u16::try_from(cfg.tunnel_mtu(u32::from(facts.underlay_mtu))).unwrap_or(u16::MAX);
        let subnet = prepared.subnet;
        let own = own_node(&cfg, &facts, subnet);
        let switch = cfg.dataplane.pod_ports == crate::config::PodPortMode::Switch;
        let cell = Arc::new(SnapshotCell::new(
            crate::datastore::reconcile_with_pods(
                &own,
                &[],
                switch.then(Default::default).as_ref(),
            )
            .snapshot(),
        ));
        let inputs = Arc::new(crate::datastore::TableInputs::with_aging(
            own,
            cell.clone(),
            switch,
            cfg.dataplane.neigh_aging(),
        ));
        // NetworkPolicy: on before the CNI server attaches or re-adopts a pod, so no pod is
        // ever reachable outside its policy.
        let (policy_watch, kube_policy) = match &cfg.policy.source {
            PolicySource::None => (None, None),
            source => {
                let mut state = crate::policy::PolicyState::new(
                    cfg.policy.conntrack_max,
                    cfg.policy.established,
                    vec![own.subnet.network(), own.public_ip],
                );
                match source {
                    PolicySource::Dir(dir) => {
                        if let Some(m) = crate::policy::watch::initial(dir) {
                            state.set_manifests(m);
                        }
                        inputs.enable_policy(state);
                        let w =
                            crate::policy::watch::spawn(dir.clone(), inputs.clone(), stop.clone())
                                .map_err(AgentError::Spawn)?;
                        (Some(w), None)
                    }
                    _ => {
                        inputs.enable_policy(state);
                        let client = match &prepared.session {
                            Session::Kube { client } => client.clone(),
                            _ => rt.block_on(kube::client(&cfg))?,
                        };
                        let mut w = crate::policy::kube::PolicyWatch::new(client, inputs.clone());
                        rt.block_on(w.sync(&stop)).map_err(AgentError::Policy)?;
                        (None, Some(w))
                    }
                }
            }
        };
        if policy_watch.is_some() || kube_policy.is_some() {
            let figures = inputs.clone();
            metrics.attach_policy(Arc::new(move || figures.policy_figures()));
        }
        let pod_gate = kube_policy
            .as_ref()
            .map(crate::policy::kube::PolicyWatch::gate);
        let mut sync = PeerSync::with_inputs(inputs.clone(), metrics.clone());
        // Kernel routes for peers reached without encapsulation.
        let routes = if cfg.backend.kind == BackendKind::HostGw
            || cfg.backend.encapsulation != Encapsulation::Always
        {
            let (routes, sink) =
                DirectRoutes::start(facts.underlay_if.clone(), prepared.network, metrics.clone())
                    .map_err(AgentError::Spawn)?;
            sync.set_direct_sink(sink);
            Some(routes)
        } else {
            None
        };
        sync.replace_all(prepared.leases.iter().cloned());
        sync.commit();
        if prepared.programmed {
            metrics.tables_programmed.store(true, Ordering::Relaxed);
        }

        // Before any device exists, so a refusal leaves nothing behind.
        for c in crate::forwarding::enable(Path::new(PROC_SYS))? {
            tracing::info!(sysctl = %c.key, before = %c.before, after = %c.after, "changed a kernel setting the pod path needs");
        }
        let masq = match masq_backend {
            Some(b) => Some(crate::masq::Masq::start(
                b,
                crate::masq::Rules {
                    cluster: prepared.network,
                    subnet,
                },
                metrics.clone(),
            )?),
            None => {
                // An earlier run's rules would still translate pod traffic.
                crate::masq::remove_leftovers();
                None
            }
        };
        let offload = match (cfg.dataplane.offload, cfg.dataplane.uso) {
            (true, true) => TunOffload::TSO4_USO4,
            (true, false) => TunOffload::TSO4,
            (false, _) => TunOffload::NONE,
        };
        let tun =
            TunDevice::create_with(&facts.tun_name, facts.workers, offload).map_err(|source| {
                AgentError::Tun {
                    name: facts.tun_name.clone(),
                    source,
                }
            })?;
        let tun_offload = tun.offload();
        let nl = Netlink::new()?;
        let mut plan = NodePlan::new(
            cfg.backend.vni,
            subnet,
            cfg.network.network,
            &cfg.dataplane.bridge,
            u32::from(facts.tun_mtu),
        );
        plan.tun_name = facts.tun_name.clone();
        plan.switch = switch;
        netlink::plumb_node(&nl, &plan)?;
        let shared = Arc::new(WorkerShared::new(cell.clone(), facts.workers));
        // The CNI server comes up before the workers but answers STATUS with 50 (and ADD with 11)
        // until the node is ready below.
        let cni = if cfg.cni.enabled {
            Some(crate::cni::CniServer::start(
                &cfg.cni.socket,
                crate::cni::CniContext {
                    subnet,
                    gateway: plan.bridge_addr.addr(),
                    mtu: plan.bridge_mtu,
                    bridge: plan.bridge.clone(),
                    data_dir: cfg.cni.data_dir.clone(),
                    switch: switch.then(|| crate::cni::SwitchPorts {
                        inputs: inputs.clone(),
                        workers: shared.clone(),
                        pod_gate: pod_gate.clone(),
                    }),
                },
            )?)
        } else {
            None
        };

        metrics.attach_workers(shared.clone());
        let vxlan_addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, cfg.backend.port);
        let opts = IoOptions {
            rcvbuf: SOCKET_BUFFER,
            sndbuf: SOCKET_BUFFER,
            src: facts.public_ip,
            gso: cfg.dataplane.gso,
            ..IoOptions::default()
        };
        let mut io = Vec::with_capacity(facts.workers);
        for (id, queue) in tun.into_queues().into_iter().enumerate() {
            let opened = match cfg.backend.kind {
                BackendKind::Vxlan => WorkerIo::open_with(queue, vxlan_addr, opts),
                BackendKind::Ipip => WorkerIo::open_ipip(queue, id, facts.workers, opts),
                BackendKind::HostGw => WorkerIo::open_rx(queue, UnderlayRx::None, opts),
            };
            io.push(opened.map_err(|source| AgentError::Socket {
                backend: cfg.backend.kind.name(),
                port: cfg.backend.port,
                source,
            })?);
        }
        // Every worker's VXLAN socket is bound: steer the group by flow, as the pod ports are.
        if let Some(first) = io.first() {
            if let Err(e) = first.steer(io.len()) {
                tracing::warn!(
                    "cannot steer the VXLAN sockets by flow (SO_ATTACH_REUSEPORT_CBPF): {e}; \
                     the kernel spreads datagrams by its own hash, and replies may wake a second worker"
                );
            }
        }
        let gro = report_offloads(&cfg, &metrics, tun_offload, &io);
        let wcfg = WorkerConfig {
            gro,
            spin: dataplane::time::Duration::from_micros(u64::from(cfg.dataplane.busy_poll_us)),
            ..WorkerConfig::default()
        };
        let workers =
            worker::spawn_workers(TUN_PORT, io, &shared, wcfg).map_err(AgentError::Spawn)?;

        let show = {
            let shared = shared.clone();
            let facts = facts.clone();
            let cfg = cfg.clone();
            move || show_reply(&cfg, &facts, &shared)
        };
        let policy = {
            let shared = shared.clone();
            let inputs = inputs.clone();
            let source = match &cfg.policy.source {
                PolicySource::Dir(dir) => format!("dir {}", dir.display()),
                other => other.name().to_string(),
            };
            move |q: &crate::policy::explain::PolicyQuery| {
                crate::policy::explain::explain(
                    shared.cell.load_full().policy.as_ref(),
                    &source,
                    inputs.policies_in_force().unwrap_or_default(),
                    q,
                )
            }
        };
        let status = {
            let show = show.clone();
            let cfg = cfg.clone();
            let metrics = metrics.clone();
            let started = std::time::Instant::now();
            let masq_backend = masq.as_ref().map_or("", |m| m.backend().name());
            let policy = policy.clone();
            move || {
                let mut h = health_of(&cfg, &metrics, started, masq_backend);
                let p = policy(&crate::policy::explain::PolicyQuery {
                    src: Ipv4Addr::UNSPECIFIED,
                    dst: Ipv4Addr::UNSPECIFIED,
                    protocol: "tcp".into(),
                    port: 0,
                });
                h.policy = p.enforced.then_some(crate::status::PolicyView {
                    source: p.source,
                    generation: p.generation,
                    policies: p.policies.len(),
                    isolated_pods: p.isolated_pods,
                });
                crate::status::status_of(show(), h)
            }
        };
        let ctl = CtlServer::start(&cfg.dataplane.control_socket, show, status, policy)?;

        let env = SubnetEnv {
            network: cfg.network.network,
            subnet,
            mtu: u32::from(facts.tun_mtu),
            ipmasq: masq.is_some(),
        };
        let peers = sync.published().len();
        let control = {
            let stop = stop.clone();
            let metrics = metrics.clone();
            let cfg = cfg.clone();
            let session = prepared.session;
            std::thread::Builder::new()
                .name("weft-control".into())
                .spawn(move || {
                    rt.block_on(control_loop(
                        cfg,
                        session,
                        sync,
                        env,
                        (metrics, stop),
                        kube_policy,
                    ));
                })
                .map_err(AgentError::Spawn)?
        };
        if let Some(cni) = &cni {
            cni.set_ready(true);
        }
        tracing::info!(
            node = %facts.name,
            datastore = cfg.datastore.kind.name(),
            public_ip = %facts.public_ip,
            subnet = %subnet,
            tun = %facts.tun_name,
            mtu = facts.tun_mtu,
            backend = cfg.backend.kind.name(),
            encapsulation = cfg.backend.encapsulation.name(),
            underlay = %facts.underlay,
            workers = facts.workers,
            tun_offload = tun_offload.tso4,
            peers,
            health = ?health.as_ref().map(HealthServer::addr),
            "weftd is up"
        );
        Ok(Agent {
            facts,
            cfg,
            shared,
            workers,
            ctl: Some(ctl),
            metrics,
            health,
            stop,
            control: Some(control),
            cni,
            routes,
            masq,
            policy_watch,
            _cpu_latency: cpu_latency,
        })
    }

    /// What the agent derived at start-up.
    pub fn facts(&self) -> &NodeFacts {
        &self.facts
    }

    /// The effective configuration: the file with what the datastore decided (subnet, network,
    /// VNI, port) filled in.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The agent's metrics and readiness.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops the control thread, the workers and the servers. The TUN device goes with the last
    /// worker. The subnet lease is left in place (with its TTL), so a restart reuses it, as
    /// flannel's does.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.policy_watch.take() {
            let _ = w.join();
        }
        if let Some(c) = self.control.take() {
            if c.join().is_err() {
                tracing::error!("control thread panicked");
            }
        }
        // No new pods while the dataplane goes down.
        self.cni.take();
        self.shared.request_stop();
        for (id, w) in self.workers.drain(..).enumerate() {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(worker = id, "worker ended with an error: {e}"),
                Err(_) => tracing::error!(worker = id, "worker panicked"),
            }
        }
        self.ctl.take();
        self.health.take();
        // The control thread (and with it the route sink) is gone: the programmer ends.
        if let Some(r) = self.routes.take() {
            r.join();
        }
        // The rules stay; only their reconciler ends.
        if let Some(m) = self.masq.take() {
            m.stop();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Asks the datastore for our subnet, the network and the first peers.
async fn prepare(
    cfg: &Config,
    facts: &NodeFacts,
    stop: &Arc<AtomicBool>,
) -> Result<Prepared, AgentError> {
    match cfg.datastore.kind {
        DatastoreKind::Static => Ok(Prepared {
            subnet: cfg
                .node
                .subnet
                .expect("validation requires node.subnet with the static datastore"),
            network: cfg.network.network,
            backend: BackendChoice::of_config(cfg),
            leases: static_peers::leases(cfg),
            programmed: true,
            session: Session::Static,
        }),
        DatastoreKind::Etcd => {
            let e = &cfg.datastore.etcd;
            let mut client = etcd::connect(e).await?;
            let net = etcd::wait_network_config(&mut client, &e.prefix, stop).await?;
            tracing::info!(
                network = %net.network,
                subnet_len = net.subnet_len,
                backend = net.backend.kind.name(),
                direct_routing = net.backend.direct_routing,
                vni = net.backend.vni,
                port = net.backend.port,
                "network config from etcd"
            );
            let own = etcd::OwnAttrs {
                public_ip: facts.public_ip,
                backend: net.backend.kind,
                vni: net.backend.vni,
                vtep_mac: cfg.vtep_mac(),
            };
            let previous = subnet_env::previous_subnet(&cfg.datastore.subnet_file);
            let mut backoff = Backoff::new();
            let acquired = loop {
                match etcd::acquire(&mut client, &e.prefix, &net, &own, previous, e.lease_ttl).await
                {
                    Ok(a) => break a,
                    Err(err @ etcd::EtcdError::Request { .. }) => {
                        tracing::warn!("acquiring a subnet lease: {err}; retrying");
                        if stop.load(Ordering::Relaxed) {
                            return Err(etcd::EtcdError::Stopped.into());
                        }
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err(err) => return Err(err.into()),
                }
            };
            tracing::info!(
                subnet = %acquired.subnet,
                key = %acquired.key,
                how = acquired.how,
                ttl = e.lease_ttl,
                "subnet lease acquired"
            );
            Ok(Prepared {
                subnet: acquired.subnet,
                network: net.network,
                backend: BackendChoice::of_flannel(&net.backend),
                leases: etcd::leases_of(&acquired.listed.0),
                programmed: true,
                session: Session::Etcd {
                    client: Box::new(client),
                    acquired: Box::new(acquired),
                },
            })
        }
        DatastoreKind::Kubernetes => {
            let p = kube::prepare(cfg, facts.public_ip, stop).await?;
            Ok(Prepared {
                subnet: p.subnet,
                network: p.network,
                backend: p.backend,
                leases: Vec::new(),
                programmed: false,
                session: Session::Kube { client: p.client },
            })
        }
    }
}

/// The control thread: keeps the peers current from the datastore and subnet.env written.
async fn control_loop(
    cfg: Config,
    session: Session,
    mut sync: PeerSync,
    env: SubnetEnv,
    (metrics, stop): (Arc<Metrics>, Arc<AtomicBool>),
    policy: Option<crate::policy::kube::PolicyWatch>,
) {
    // The policy watchers run on this runtime, the one their client was built on.
    let policy_task = policy.map(|w| tokio::spawn(w.run(stop.clone())));
    let env_task = {
        let path = cfg.datastore.subnet_file.clone();
        let metrics = metrics.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut logged = false;
            while !stop.load(Ordering::Relaxed) {
                match env.write(&path) {
                    Ok(()) => {
                        metrics.subnet_env_written.store(true, Ordering::Relaxed);
                        tracing::info!(path = %path.display(), "subnet.env written");
                        return;
                    }
                    Err(e) if !logged => {
                        tracing::error!("{e}; not ready until it is written; retrying");
                        logged = true;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    match session {
        Session::Static => {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Session::Etcd { client, acquired } => {
            let e = &cfg.datastore.etcd;
            let renew_now = Arc::new(tokio::sync::Notify::new());
            let rev = acquired.listed.1;
            let own_key = acquired.key.clone();
            let renew = tokio::spawn(etcd::renew_loop(
                (*client).clone(),
                *acquired,
                e.lease_ttl,
                e.renew_margin,
                metrics.clone(),
                stop.clone(),
                renew_now.clone(),
            ));
            let watch = etcd::Watch {
                client: *client,
                prefix: e.prefix.clone(),
                rev,
                own_key,
                metrics: metrics.clone(),
                stop: stop.clone(),
                renew_now,
            };
            etcd::watch_loop(watch, &mut sync).await;
            renew.abort();
        }
        Session::Kube { client } => {
            kube::run(client, &cfg, &mut sync, metrics.clone(), stop.clone()).await;
        }
    }
    env_task.abort();
    if let Some(t) = policy_task {
        t.abort();
    }
}

fn node_facts(cfg: &Config) -> Result<NodeFacts, AgentError> {
    let (public_ip, underlay_if, underlay_mtu) = match &cfg.node.public_address {
        PublicAddress::Static(ip) => {
            let (ifname, mtu) = crate::autodetect::interface_of(*ip)
                .map_err(|e| AgentError::Underlay(e.to_string()))?;
            (*ip, ifname, mtu)
        }
        PublicAddress::Autodetect(method) => {
            crate::autodetect::detect(method).map_err(|e| AgentError::Underlay(e.to_string()))?
        }
    };
    let underlay =
        crate::autodetect::subnet_of(public_ip).map_err(|e| AgentError::Underlay(e.to_string()))?;
    let tun_mtu = u16::try_from(cfg.tunnel_mtu(underlay_mtu)).unwrap_or(u16::MAX);
    let underlay_mtu = u16::try_from(underlay_mtu).unwrap_or(u16::MAX);
    let workers = match cfg.dataplane.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    Ok(NodeFacts {
        name: cfg.node.name.clone(),
        public_ip,
        underlay_if,
        underlay_mtu,
        underlay,
        tun_mtu,
        tun_name: cfg.backend.kind.tun_name(cfg.backend.vni),
        workers,
    })
}

/// The control plane's state for `weftctl status`.
fn health_of(
    cfg: &Config,
    metrics: &Metrics,
    started: std::time::Instant,
    masq_backend: &str,
) -> crate::status::Health {
    let d = &cfg.datastore;
    let endpoint = match d.kind {
        DatastoreKind::Static => "[[peers]] of the config file".to_string(),
        DatastoreKind::Etcd => format!("{} prefix {}", d.etcd.endpoints.join(","), d.etcd.prefix),
        DatastoreKind::Kubernetes => match &d.kubernetes.kubeconfig {
            Some(k) => k.display().to_string(),
            None => "in-cluster".to_string(),
        },
    };
    crate::status::Health {
        // flannel's name: "vxlan", "ipip", "host-gw".
        backend: cfg.backend.kind.name().to_string(),
        uptime_secs: started.elapsed().as_secs(),
        datastore: crate::status::DatastoreView {
            kind: d.kind.name().to_string(),
            endpoint,
            connected: metrics.datastore_connected.load(Ordering::Relaxed),
            reconnects: metrics.reconnects(),
        },
        lease_held: metrics.lease_held.load(Ordering::Relaxed),
        renewals: metrics.renewals(),
        tables_programmed: metrics.tables_programmed.load(Ordering::Relaxed),
        subnet_file: d.subnet_file.display().to_string(),
        subnet_env_written: metrics.subnet_env_written.load(Ordering::Relaxed),
        peers: metrics.peers(),
        policy: None,
        ip_forward: crate::forwarding::ip_forward_on(Path::new(PROC_SYS)),
        masq: crate::status::MasqView {
            enabled: metrics.masq_enabled(),
            backend: masq_backend.to_string(),
            repairs: metrics.masq_repairs(),
        },
    }
}

fn show_reply(cfg: &Config, facts: &NodeFacts, shared: &WorkerShared) -> ShowReply {
    let snap = shared.cell.load_full();
    let now = dataplane::io::clock::now();
    let pods = shared.pod_ports();
    let (routes, neighbors, fdb) = ctl::tables_view(
        &snap,
        &facts.tun_name,
        |p| pods.get(p).map(|s| s.name().to_string()),
        now,
    );
    let counters = shared.counters();
    ShowReply {
        node: NodeView {
            name: facts.name.clone(),
            public_ip: facts.public_ip,
            subnet: cfg.node.subnet.map(|s| s.to_string()).unwrap_or_default(),
            network: cfg.network.network.to_string(),
            vtep_mac: snap.node.vtep_mac.to_string(),
            vni: snap.node.vni,
            port: snap.node.vxlan_port,
            tun: facts.tun_name.clone(),
            tun_mtu: facts.tun_mtu,
            underlay_mtu: facts.underlay_mtu,
            workers: facts.workers,
        },
        routes,
        neighbors,
        fdb,
        counters: CountersView::from(&counters),
    }
}

/// What became of one offload at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OffloadState {
    On,
    OffByConfig,
    Refused,
    Unused,
}

impl OffloadState {
    /// From whether the backend uses it, the config asks for it and the kernel took it.
    fn of(used: bool, wanted: bool, got: bool) -> Self {
        match (used, wanted, got) {
            (false, _, _) => OffloadState::Unused,
            (true, false, _) => OffloadState::OffByConfig,
            (true, true, false) => OffloadState::Refused,
            (true, true, true) => OffloadState::On,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            OffloadState::On => "on",
            OffloadState::OffByConfig => "off (config)",
            OffloadState::Refused => "off (refused by the kernel)",
            OffloadState::Unused => "unused by the backend",
        }
    }
}

/// Probes the offloads the workers will use (TUN super-frames were asked for when the TUN was
/// created, UDP GSO when the senders were opened; UDP GRO is asked for here, on every worker's
/// socket), says once in the log what each one is, warns for one the kernel refused, and sets
/// `weft_offload_enabled`. Returns whether UDP GRO is on, which the workers' config then takes.
fn report_offloads(cfg: &Config, metrics: &Metrics, tun: TunOffload, io: &[WorkerIo]) -> bool {
    let udp = cfg.backend.kind == BackendKind::Vxlan && !io.is_empty();
    let gso = udp && io.iter().all(|w| w.vxlan_tx.gso());
    let gro = udp && cfg.dataplane.gro && io.iter().all(WorkerIo::enable_gro);
    let states = [
        (
            "tun_tso4",
            OffloadState::of(true, cfg.dataplane.offload, tun.tso4),
        ),
        (
            "tun_uso4",
            OffloadState::of(true, cfg.dataplane.offload && cfg.dataplane.uso, tun.uso4),
        ),
        ("udp_gso", OffloadState::of(udp, cfg.dataplane.gso, gso)),
        ("udp_gro", OffloadState::of(udp, cfg.dataplane.gro, gro)),
    ];
    for (name, state) in states {
        metrics.set_offload(name, state == OffloadState::On);
        if state == OffloadState::Refused {
            tracing::warn!(
                offload = name,
                "offload refused by the kernel; working without it"
            );
        }
    }
    tracing::info!(
        tun_tso4 = states[0].1.as_str(),
        tun_uso4 = states[1].1.as_str(),
        udp_gso = states[2].1.as_str(),
        udp_gro = states[3].1.as_str(),
        "offloads"
    );
    gro
}

#[cfg(test)]
mod offload_tests {
    use super::OffloadState;

    #[test]
    fn offload_state_names_why_an_offload_is_off() {
        assert_eq!(OffloadState::of(true, true, true), OffloadState::On);
        assert_eq!(
            OffloadState::of(true, false, true),
            OffloadState::OffByConfig
        );
        assert_eq!(
            OffloadState::of(true, false, false),
            OffloadState::OffByConfig
        );
        assert_eq!(OffloadState::of(true, true, false), OffloadState::Refused);
        assert_eq!(OffloadState::of(false, true, true), OffloadState::Unused);
        assert_eq!(
            OffloadState::Refused.as_str(),
            "off (refused by the kernel)"
        );
    }
}
