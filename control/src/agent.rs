//! The node agent: turns the configuration (the static datastore) into plumbing, table snapshots
//! and running dataplane workers, and serves the control socket.
//!
//! Start-up order matters for "nothing lost on a crash": the TUN device is created by this process
//! and vanishes with it (the kernel then drops the cluster route into it), while the bridge and the
//! pods on it are kernel state that outlives the agent. A restarted agent re-creates the TUN,
//! re-plumbs idempotently and publishes the same tables, so existing pods talk again within a
//! second without being recreated.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::thread::JoinHandle;

use dataplane::fib::NextHop;
use dataplane::io::tun::{TunDevice, TunOffload};
use dataplane::io::worker::{self, WorkerConfig, WorkerIo, WorkerShared};
use dataplane::snapshot::{NodeConfig, Port, PortKind, SnapshotCell, Tables};
use dataplane::PortId;

use crate::config::{Config, PublicAddress};
use crate::ctl::{self, CountersView, CtlServer, NodeView, ShowReply};
use crate::netlink::{self, Netlink, NodePlan};

/// The TUN device's port id in the tables.
pub const TUN_PORT: PortId = PortId(0);
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
    /// A VXLAN socket could not be opened.
    #[error("cannot open the VXLAN sockets on UDP {port}: {source} (another VXLAN device or agent on the port? CAP_NET_RAW for the raw sender?)")]
    Socket {
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
    /// The CNI server could not be started.
    #[error("CNI server: {0}")]
    Cni(#[from] crate::cni::CniServerError),
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
    /// Tunnel MTU.
    pub tun_mtu: u16,
    /// TUN device name, `weft.<vni>`.
    pub tun_name: String,
    /// Worker count.
    pub workers: usize,
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    facts: NodeFacts,
    shared: Arc<WorkerShared>,
    workers: Vec<JoinHandle<std::io::Result<()>>>,
    ctl: Option<CtlServer>,
    cni: Option<crate::cni::CniServer>,
}

/// Builds the tables a node with configuration `cfg` forwards with: its own subnet to the TUN, and
/// per remote peer flannel's neighbour, FDB and route.
pub fn build_tables(cfg: &Config, facts: &NodeFacts) -> Tables {
    let subnet = cfg.node.subnet;
    let mut node = NodeConfig::flannel_defaults(cfg.vtep_mac(), facts.public_ip, subnet.network());
    node.vni = cfg.backend.vni;
    node.vxlan_port = cfg.backend.port;
    node.underlay_mtu = facts.underlay_mtu;
    let mut t = Tables::new(node);
    t.set_port(
        TUN_PORT,
        Port {
            kind: PortKind::L3,
            mtu: facts.tun_mtu,
        },
    );
    t.fib.insert(subnet, NextHop::Local { port: TUN_PORT });
    for peer in cfg.peers.iter().filter(|p| p.name != cfg.node.name) {
        t.add_vxlan_peer(peer.subnet, peer.public_ip, peer.vtep_mac);
    }
    t
}

impl Agent {
    /// Plumbs the node, starts the workers and the control socket.
    pub fn start(cfg: &Config) -> Result<Agent, AgentError> {
        let facts = node_facts(cfg)?;
        let tables = build_tables(cfg, &facts);
        let cell = Arc::new(SnapshotCell::new(tables.snapshot()));

        let offload = if cfg.dataplane.offload {
            TunOffload::TSO4
        } else {
            TunOffload::NONE
        };
        let tun =
            TunDevice::create_with(&facts.tun_name, facts.workers, offload).map_err(|source| {
                AgentError::Tun {
                    name: facts.tun_name.clone(),
                    source,
                }
            })?;
        if offload.tso4 && !tun.offload().tso4 {
            tracing::warn!(tun = %facts.tun_name, "TUN offloads refused by the kernel; plain packets");
        }
        let tun_offload = tun.offload().tso4;
        let nl = Netlink::new()?;
        let plan = NodePlan::new(
            cfg.backend.vni,
            cfg.node.subnet,
            cfg.network.network,
            &cfg.dataplane.bridge,
            u32::from(facts.tun_mtu),
        );
        netlink::plumb_node(&nl, &plan)?;
        // The CNI server comes up before the workers but answers STATUS with 50 (and ADD with 11)
        // until the node is ready below.
        let cni = if cfg.cni.enabled {
            Some(crate::cni::CniServer::start(
                &cfg.cni.socket,
                crate::cni::CniContext {
                    subnet: cfg.node.subnet,
                    gateway: plan.bridge_addr.addr(),
                    mtu: plan.bridge_mtu,
                    bridge: plan.bridge.clone(),
                    data_dir: cfg.cni.data_dir.clone(),
                },
            )?)
        } else {
            None
        };

        let shared = Arc::new(WorkerShared::new(cell.clone(), facts.workers));
        let vxlan_addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, cfg.backend.port);
        let mut io = Vec::with_capacity(facts.workers);
        for queue in tun.into_queues() {
            io.push(
                WorkerIo::open(queue, vxlan_addr, SOCKET_BUFFER, SOCKET_BUFFER).map_err(
                    |source| AgentError::Socket {
                        port: cfg.backend.port,
                        source,
                    },
                )?,
            );
        }
        let workers = worker::spawn_workers(TUN_PORT, io, &shared, WorkerConfig::default())
            .map_err(AgentError::Spawn)?;

        let show = {
            let shared = shared.clone();
            let facts = facts.clone();
            let cfg = cfg.clone();
            move || show_reply(&cfg, &facts, &shared)
        };
        let ctl = CtlServer::start(&cfg.dataplane.control_socket, show)?;
        if let Some(cni) = &cni {
            cni.set_ready(true);
        }
        tracing::info!(
            node = %facts.name,
            public_ip = %facts.public_ip,
            subnet = %cfg.node.subnet,
            tun = %facts.tun_name,
            mtu = facts.tun_mtu,
            workers = facts.workers,
            tun_offload,
            peers = cfg.peers.iter().filter(|p| p.name != cfg.node.name).count(),
            "weftd is up"
        );
        Ok(Agent {
            facts,
            shared,
            workers,
            ctl: Some(ctl),
            cni,
        })
    }

    /// What the agent derived at start-up.
    pub fn facts(&self) -> &NodeFacts {
        &self.facts
    }

    /// Stops the workers and the control socket. The TUN device goes with the last worker.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
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
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown();
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
        tun_mtu,
        tun_name: format!("weft.{}", cfg.backend.vni),
        workers,
    })
}

fn show_reply(cfg: &Config, facts: &NodeFacts, shared: &WorkerShared) -> ShowReply {
    let snap = shared.cell.load_full();
    let now = dataplane::io::clock::now();
    let (routes, neighbors, fdb) = ctl::tables_view(&snap, &facts.tun_name, now);
    let counters = shared.counters();
    ShowReply {
        node: NodeView {
            name: facts.name.clone(),
            public_ip: facts.public_ip,
            subnet: cfg.node.subnet.to_string(),
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
