//! A cluster in network namespaces on one machine: the demo, the integration tests and the
//! benchmark harness all build their topology here.
//!
//! ```text
//!  pod ns ──veth── node ns (weftd or kernel flannel.1, bridge weft0) ──veth── underlay ns (bridge ul0)
//! ```
//!
//! Nodes added with [`Lab::add_node_on`] segment 1 hang off a second bridge, `ul1`
//! (192.168.78.0/24), in the same underlay namespace, which then routes between the two segments
//! (.254 on each bridge): two underlay subnets, one router, as cross-subnet tests need.
//!
//! The underlay is [`Underlay::Ideal`] unless a lab says otherwise: its veths and bridge carry a
//! 64 KiB GSO packet whole, so a GSO-capable sender never pays for segmentation.
//! [`Underlay::Segmenting`] makes it behave like NICs and a switch: frames of the MTU on the
//! wire, merged again by GRO on each node's receive.
//!
//! Every namespace and link name carries a per-process prefix, so concurrent labs never collide,
//! and everything is removed in `Drop`, also when a test fails half-way. Agents run as child
//! processes (`weftd run`) inside their node's namespace and are killed on drop.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::config::vtep_mac_for;
use crate::datastore::flannel;
use crate::netlink::Netlink;
use crate::netns::{spawn_in_netns, NetNs};
use crate::tooling::etcd_server::EtcdServer;
use dataplane::wire::EthernetAddress;

/// Errors while building or driving a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A namespace operation failed.
    #[error("namespace {name}: {msg}")]
    Netns {
        /// Namespace name.
        name: String,
        /// What failed.
        msg: String,
    },
    /// Netlink plumbing failed.
    #[error("plumbing in {ns}: {source}")]
    Netlink {
        /// Namespace name.
        ns: String,
        /// The netlink error.
        source: crate::netlink::NetlinkError,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The lab's etcd failed.
    #[error("lab etcd: {0}")]
    Etcd(#[from] crate::tooling::etcd_server::EtcdServerError),
    /// An agent did not come up.
    #[error(
        "agent on {node} did not answer on its control socket within {secs} s; its log:\n{log}"
    )]
    AgentStart {
        /// Node name.
        node: String,
        /// Seconds waited.
        secs: u64,
        /// Tail of the agent's log.
        log: String,
    },
}

/// How a node carries pod traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// `weftd run`: the userspace dataplane.
    Weft,
    /// The Linux kernel VXLAN device configured exactly as flannel configures `flannel.1`.
    KernelVxlan,
    /// Kernel routing as flannel's host-gw backend does it: `<subnet> via <peer public IP>`.
    KernelHostGw,
}

/// One node of the lab.
#[derive(Debug)]
pub struct LabNode {
    /// Node name (also the VTEP MAC seed).
    pub name: String,
    /// Weft or kernel.
    pub kind: NodeKind,
    /// The node's namespace.
    pub ns: NetNs,
    /// Underlay address.
    pub public_ip: Ipv4Addr,
    /// Underlay segment: 0 = 192.168.77.0/24 on `ul0`, 1 = 192.168.78.0/24 on `ul1`.
    pub segment: u8,
    /// Pod subnet.
    pub subnet: Ipv4Net,
    /// The agent's control socket (Weft nodes).
    pub ctl_socket: PathBuf,
    /// The agent's config file (Weft nodes).
    pub config: PathBuf,
    /// The agent's log file (Weft nodes).
    pub log: PathBuf,
    /// The agent's subnet.env (Weft nodes).
    pub subnet_file: PathBuf,
    /// The agent's CNI socket (Weft nodes): what a CNI network config's `socket` names.
    pub cni_socket: PathBuf,
    /// The agent's CNI data directory (IPAM state), per node.
    pub cni_data_dir: PathBuf,
    /// The agent process, while it runs.
    pub agent: Option<Child>,
    /// The pods on this node.
    pub pods: Vec<LabPod>,
}

/// One pod: a namespace with `eth0` on its node's bridge.
#[derive(Debug)]
pub struct LabPod {
    /// The pod's namespace.
    pub ns: NetNs,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The host end of its veth, on the node.
    pub host_veth: String,
}

/// A cluster in namespaces.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    dir: PathBuf,
    underlay: NetNs,
    /// The nodes, in creation order.
    pub nodes: Vec<LabNode>,
    weftd: PathBuf,
    /// Underlay MTU.
    pub underlay_mtu: u32,
    /// Worker threads per Weft agent (0 = one per core, the agent's default).
    pub workers: usize,
    /// Extra `[dataplane]` lines for every Weft agent's config, e.g. `"gso = false\n"`.
    pub dataplane_extra: String,
    /// How the underlay carries large packets; set before adding nodes.
    pub underlay_kind: Underlay,
    /// Whole sections appended to every Weft node's config (`[policy]` and the like).
    pub config_extra: String,
    /// The body of every Weft agent's `[backend]` section (default [`DEFAULT_BACKEND`]), e.g.
    /// `"type = \"ipip\"\nencapsulation = \"CrossSubnet\"\n"`. Its `type` also sets the pods' MTU
    /// ([`Lab::pod_mtu`]).
    pub backend: String,
    /// Where Weft agents get their subnets and peers.
    pub datastore: LabDatastore,
    /// `[network] ip_masq` of every Weft agent (default false: most tests are about pod↔pod
    /// traffic and need no firewall tool).
    pub ip_masq: bool,
    /// Extra `[network]` lines for every Weft agent's config, e.g. `"masq_backend = \"nftables\"\n"`.
    pub network_extra: String,
    /// Environment variables set for every Weft agent started from now on.
    pub agent_env: Vec<(String, String)>,
    /// Weft nodes run in switch mode (`[dataplane] pod_ports = "switch"`): no bridge, pods are
    /// attached through the agent's CNI server ([`Lab::add_pod`] does it) as ports of Weft's
    /// switch.
    pub switch: bool,
    etcd: Option<EtcdServer>,
}

/// Where a lab's Weft agents get their subnets and peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LabDatastore {
    /// Each config lists every other node (`[[peers]]`); subnets are `10.244.<i>.0/24`.
    #[default]
    Static,
    /// flannel's etcd layout; subnets come from leases.
    Etcd(LabEtcd),
    /// flannel's Kubernetes layout against the API server a kubeconfig names (tests serve one);
    /// subnets come from the Nodes' podCIDRs.
    Kubernetes {
        /// The kubeconfig every agent uses.
        kubeconfig: PathBuf,
    },
}

/// etcd settings of a lab (see [`Lab::start_etcd`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabEtcd {
    /// Client URL, reachable from the nodes over the underlay.
    pub endpoint: String,
    /// Key prefix.
    pub prefix: String,
    /// Lease TTL, seconds.
    pub lease_ttl: u64,
    /// Renew margin, seconds.
    pub renew_margin: u64,
}

/// The port every Weft agent of a lab serves /healthz, /readyz and /metrics on. Each node has
/// its own namespace, hence its own address; reach it with [`Lab::http_get`].
pub const HEALTH_PORT: u16 = 9472;

/// Cluster network of every lab.
pub const NETWORK: &str = "10.244.0.0/16";
/// The Kubernetes namespace the lab's switch-mode pods are in (`K8S_POD_NAMESPACE`).
pub const LAB_NAMESPACE: &str = "lab";

/// The underlay namespace's own address on `ul0`: a vantage point for tests that send raw frames
/// to a node's VXLAN port.
pub const UNDERLAY_HOST: &str = "192.168.77.254/24";
/// The underlay namespace's own address on `ul1`, segment 1's router address.
pub const UNDERLAY_HOST_1: &str = "192.168.78.254/24";
/// The underlay segments: bridge, /24 network, and the underlay namespace's address on it.
pub const SEGMENTS: [(&str, Ipv4Addr, &str); 2] = [
    ("ul0", Ipv4Addr::new(192, 168, 77, 0), UNDERLAY_HOST),
    ("ul1", Ipv4Addr::new(192, 168, 78, 0), UNDERLAY_HOST_1),
];
/// The bridge every node's pods hang off.
pub const BRIDGE: &str = "weft0";
/// The `[backend]` body of a lab's Weft agents unless a test sets [`Lab::backend`].
pub const DEFAULT_BACKEND: &str = "type = \"vxlan\"\n";

/// How the lab's underlay carries packets larger than its MTU (`weftd bench --underlay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Underlay {
    /// Veths and the bridge pass a GSO packet (up to 64 KiB) whole, from one node's stack to the
    /// other's: the kernel's cheapest case, and the default.
    #[default]
    Ideal,
    /// As NICs and a switch do: each bridge port segments what it sends (TSO, USO and GSO lists
    /// off, so GSO packets are cut into MTU frames there, as a NIC cuts them on the wire), and each
    /// node's `eth0` runs GRO on receive (NAPI, as a NIC driver does). Needs `ethtool`.
    Segmenting,
}

impl Underlay {
    /// Its name and what it does, for a report.
    pub fn describe(self) -> &'static str {
        match self {
            Underlay::Ideal => "ideal (veths and bridge pass 64 KiB GSO packets whole)",
            Underlay::Segmenting => {
                "segmenting (MTU frames between nodes, cut at the bridge's ports; GRO on each node's receive)"
            }
        }
    }
}

/// The `ethtool -K` settings [`Underlay::Segmenting`] gives the bridge's port of each node.
pub const SEGMENTING_PORT: [&str; 6] = [
    "tso",
    "off",
    "tx-udp-segmentation",
    "off",
    "tx-gso-list",
    "off",
];
/// The `ethtool -K` settings [`Underlay::Segmenting`] gives each node's `eth0`.
pub const SEGMENTING_NODE: [&str; 2] = ["gro", "on"];

/// Runs `ethtool -K <dev> <settings>` in the named network namespace.
fn ethtool_features(netns: &str, dev: &str, settings: &[&str]) -> Result<(), LabError> {
    let what = format!("ethtool -K {dev} {} in {netns}", settings.join(" "));
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "ethtool", "-K", dev])
        .args(settings)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(what.clone()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let hint = if err.contains("ethtool") && err.contains("No such file") {
            " (a segmenting underlay needs ethtool: apt-get install ethtool)"
        } else {
            ""
        };
        return Err(LabError::Io {
            what,
            source: std::io::Error::other(format!("{}{hint}", err.trim())),
        });
    }
    Ok(())
}

static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

impl Lab {
    /// An empty lab: an underlay namespace with bridge `ul0`. `weftd` is the agent binary to run
    /// on Weft nodes.
    pub fn new(weftd: &Path) -> Result<Lab, LabError> {
        let seq = LAB_SEQ.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("wl{}x{}", std::process::id() % 100_000, seq);
        let dir = std::env::temp_dir().join(format!("weft-lab-{prefix}"));
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        let underlay = netns(&format!("{prefix}-ul"))?;
        in_ns(&underlay, |nl| {
            nl.create_bridge("ul0")?;
            // A bridge without a MAC of its own takes its lowest port's, and changes it as ports
            // come and go: nodes added later would then strand their peers' ARP entries for the
            // underlay host (etcd lives there). Pin it.
            nl.set_mac("ul0", EthernetAddress([0x02, 0x77, 0x77, 0, 0, 0xfe]))?;
            nl.add_address("ul0", UNDERLAY_HOST.parse().expect("valid"))?;
            nl.set_up("ul0")?;
            nl.set_up("lo")
        })?;
        switch_like(&underlay)?;
        Ok(Lab {
            prefix,
            dir,
            underlay,
            nodes: Vec::new(),
            weftd: weftd.to_path_buf(),
            underlay_mtu: 1500,
            workers: 0,
            dataplane_extra: String::new(),
            underlay_kind: Underlay::Ideal,
            config_extra: String::new(),
            backend: DEFAULT_BACKEND.to_string(),
            datastore: LabDatastore::Static,
            ip_masq: false,
            network_extra: String::new(),
            agent_env: Vec::new(),
            switch: false,
            etcd: None,
        })
    }

    /// A UDP socket in the underlay namespace (address 192.168.77.254), for sending crafted frames.
    pub fn underlay_udp(&self) -> std::io::Result<std::net::UdpSocket> {
        self.underlay
            .run(|| {
                std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::new(192, 168, 77, 254), 0))
            })
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    /// Where the lab keeps configs and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds node number `i` (1..=250): underlay address 192.168.77.i, pod subnet 10.244.i.0/24.
    pub fn add_node(&mut self, i: u8, kind: NodeKind) -> Result<usize, LabError> {
        self.add_node_on(i, kind, 0)
    }

    /// Adds node number `i` (1..=250, unique across segments) on underlay segment `segment`
    /// ([`SEGMENTS`]): 0 is [`Lab::add_node`]'s 192.168.77.i on `ul0`; 1 is 192.168.78.i on `ul1`,
    /// created with the first such node, the underlay namespace routing between the two. Pod
    /// subnet 10.244.i.0/24. Every node has a route to the other segment via its own segment's
    /// .254, so the nodes of the two segments reach each other through one router hop.
    pub fn add_node_on(&mut self, i: u8, kind: NodeKind, segment: u8) -> Result<usize, LabError> {
        let subnet: Ipv4Net = format!("10.244.{i}.0/24").parse().expect("valid subnet");
        self.add_node_with_subnet_on(i, kind, subnet, segment)
    }

    /// Creates bridge `ul1` (segment 1) in the underlay namespace if it is missing and turns the
    /// namespace into the router between the segments.
    fn ensure_segment_1(&self) -> Result<(), LabError> {
        let (bridge, _, host) = SEGMENTS[1];
        let exists = {
            let mut found = false;
            in_ns(&self.underlay, |nl| {
                found = nl.link(bridge)?.is_some();
                Ok(())
            })?;
            found
        };
        if exists {
            return Ok(());
        }
        in_ns(&self.underlay, |nl| {
            nl.create_bridge(bridge)?;
            // Pinned as `ul0` is (see `Lab::new`).
            nl.set_mac(bridge, EthernetAddress([0x02, 0x77, 0x78, 0, 0, 0xfe]))?;
            nl.add_address(bridge, host.parse().expect("valid"))?;
            nl.set_up(bridge)
        })?;
        sysctl(&self.underlay, "net/ipv4/ip_forward", "1")
    }

    /// Adds node number `i` as [`Lab::add_node`] does, with pod subnet `subnet` (inside
    /// 10.244.0.0/16; a small one, such as a /29, to run out of addresses).
    pub fn add_node_with_subnet(
        &mut self,
        i: u8,
        kind: NodeKind,
        subnet: Ipv4Net,
    ) -> Result<usize, LabError> {
        self.add_node_with_subnet_on(i, kind, subnet, 0)
    }

    fn add_node_with_subnet_on(
        &mut self,
        i: u8,
        kind: NodeKind,
        subnet: Ipv4Net,
        segment: u8,
    ) -> Result<usize, LabError> {
        let Some(&(bridge, net, _)) = SEGMENTS.get(usize::from(segment)) else {
            return Err(LabError::Io {
                what: format!("node-{i} on segment {segment}"),
                source: std::io::Error::other("the lab has segments 0 and 1"),
            });
        };
        if segment == 1 {
            self.ensure_segment_1()?;
        }
        let name = format!("node-{i}");
        let ns = netns(&format!("{}-n{i}", self.prefix))?;
        let public_ip = Ipv4Addr::from(u32::from(net) + u32::from(i));
        let router = Ipv4Addr::from(u32::from(net) + 254);
        let other: Ipv4Net = Ipv4Net::new(SEGMENTS[usize::from(1 - segment)].1, 24).expect("valid");
        self.join_underlay(&ns, &format!("{}n{i}", self.prefix), bridge, public_ip)?;
        in_ns(&ns, |nl| {
            nl.replace_route(other, "eth0", Some(router), false)
        })?;
        sysctl(&ns, "net/ipv4/ip_forward", "1")?;
        self.nodes.push(LabNode {
            subnet_file: self.dir.join(format!("{name}.subnet.env")),
            ctl_socket: self.dir.join(format!("{name}.sock")),
            config: self.dir.join(format!("{name}.toml")),
            log: self.dir.join(format!("{name}.log")),
            cni_socket: self.dir.join(format!("{name}.cni.sock")),
            cni_data_dir: self.dir.join(format!("{name}.cni")),
            name,
            kind,
            ns,
            public_ip,
            segment,
            subnet,
            agent: None,
            pods: Vec::new(),
        });
        Ok(self.nodes.len() - 1)
    }

    /// Writes every Weft node's config (all other nodes as peers) and starts its agent; programs
    /// every kernel node as flanneld would. Waits until every agent answers. With an etcd lab
    /// ([`Lab::start_etcd`]) the agents take their subnets from leases and each node's `subnet` is
    /// updated from its agent; kernel nodes publish their leases first and are programmed from
    /// everyone's leases once the agents are up.
    pub fn start(&mut self) -> Result<(), LabError> {
        if self.datastore != LabDatastore::Static {
            return self.start_from_datastore();
        }
        let peers: Vec<(String, Ipv4Addr, Ipv4Net)> = self
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.public_ip, n.subnet))
            .collect();
        for idx in 0..self.nodes.len() {
            match self.nodes[idx].kind {
                NodeKind::Weft => {
                    self.write_config(idx, &peers)?;
                    self.start_agent(idx)?;
                }
                NodeKind::KernelVxlan => self.program_kernel_node(idx, &peers)?,
                NodeKind::KernelHostGw => self.program_host_gw_node(idx, &peers)?,
            }
        }
        for idx in 0..self.nodes.len() {
            if self.nodes[idx].kind == NodeKind::Weft {
                self.wait_agent(idx, Duration::from_secs(10))?;
            }
        }
        Ok(())
    }

    fn write_config(
        &self,
        idx: usize,
        peers: &[(String, Ipv4Addr, Ipv4Net)],
    ) -> Result<(), LabError> {
        let n = &self.nodes[idx];
        let mut s = String::new();
        let subnet_line = match self.datastore {
            LabDatastore::Static => format!("subnet = \"{}\"\n", n.subnet),
            LabDatastore::Etcd(_) | LabDatastore::Kubernetes { .. } => String::new(),
        };
        let _ = writeln!(
            s,
            "[node]\nname = \"{}\"\npublic_ip = \"{}\"\n{subnet_line}\n[network]\nnetwork = \"{NETWORK}\"\nip_masq = {}\n{}\n\n[backend]\n{}\n\n[dataplane]\nbridge = \"{BRIDGE}\"\ncontrol_socket = \"{}\"\nworkers = {}\n{}\n[health]\nlisten = \"0.0.0.0:{HEALTH_PORT}\"\n",
            n.name,
            n.public_ip,
            self.ip_masq,
            self.network_extra.trim_end(),
            self.backend.trim_end(),
            n.ctl_socket.display(),
            self.workers,
            if self.switch {
                format!("pod_ports = \"switch\"\n{}", self.dataplane_extra.trim_end())
            } else {
                format!("pod_ports = \"bridge\"\n{}", self.dataplane_extra.trim_end())
            },
        );
        let _ = writeln!(
            s,
            "[cni]\nsocket = \"{}\"\ndata_dir = \"{}\"\n",
            n.cni_socket.display(),
            n.cni_data_dir.display()
        );
        if !self.config_extra.is_empty() {
            let _ = writeln!(s, "{}\n", self.config_extra.trim_end());
        }
        match &self.datastore {
            LabDatastore::Static => {
                let _ = writeln!(
                    s,
                    "[datastore]\ntype = \"static\"\nsubnet_file = \"{}\"\n",
                    n.subnet_file.display()
                );
            }
            LabDatastore::Etcd(e) => {
                let _ = writeln!(
                    s,
                    "[datastore]\ntype = \"etcd\"\nsubnet_file = \"{}\"\n\n[datastore.etcd]\nendpoints = [\"{}\"]\nprefix = \"{}\"\nlease_ttl = {}\nrenew_margin = {}\n",
                    n.subnet_file.display(),
                    e.endpoint,
                    e.prefix,
                    e.lease_ttl,
                    e.renew_margin
                );
                return std::fs::write(&n.config, s)
                    .map_err(io_err(format!("write {}", n.config.display())));
            }
            LabDatastore::Kubernetes { kubeconfig } => {
                let _ = writeln!(
                    s,
                    "[datastore]\ntype = \"kubernetes\"\nsubnet_file = \"{}\"\n\n[datastore.kubernetes]\nkubeconfig = \"{}\"\n",
                    n.subnet_file.display(),
                    kubeconfig.display()
                );
                return std::fs::write(&n.config, s)
                    .map_err(io_err(format!("write {}", n.config.display())));
            }
        }
        for (name, ip, subnet) in peers.iter().filter(|p| p.0 != n.name) {
            let _ = writeln!(
                s,
                "[[peers]]\nname = \"{name}\"\npublic_ip = \"{ip}\"\nsubnet = \"{subnet}\"\n"
            );
        }
        std::fs::write(&n.config, s).map_err(io_err(format!("write {}", n.config.display())))
    }

    /// Writes the config of Weft node `idx` for the lab's datastore and starts its agent without
    /// waiting for it: for nodes added after [`Lab::start`] (a static lab lists every node as a
    /// peer; an etcd lab's agent waits for etcd if it is down).
    pub fn launch_agent(&mut self, idx: usize) -> Result<(), LabError> {
        let peers: Vec<(String, Ipv4Addr, Ipv4Net)> = self
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.public_ip, n.subnet))
            .collect();
        self.write_config(idx, &peers)?;
        self.start_agent(idx)
    }

    /// Starts (or restarts) the agent of Weft node `idx`.
    pub fn start_agent(&mut self, idx: usize) -> Result<(), LabError> {
        let n = &mut self.nodes[idx];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .map_err(io_err(format!("open {}", n.log.display())))?;
        let log2 = log.try_clone().map_err(io_err("dup log file"))?;
        let mut cmd = Command::new(&self.weftd);
        // Its own process group: a Ctrl-C in the terminal reaches the demo or harness, whose `Drop`
        // stops the agents in order, not every agent at once behind its back.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.arg("run")
            .arg("--config")
            .arg(&n.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        for (k, v) in &self.agent_env {
            cmd.env(k, v);
        }
        let child = spawn_in_netns(&mut cmd, &n.ns).map_err(io_err(format!(
            "spawn {} in {}",
            self.weftd.display(),
            n.name
        )))?;
        n.agent = Some(child);
        Ok(())
    }

    /// Waits until the agent of node `idx` answers on its control socket.
    pub fn wait_agent(&mut self, idx: usize, timeout: Duration) -> Result<(), LabError> {
        let start = Instant::now();
        let n = &mut self.nodes[idx];
        loop {
            if crate::ctl::request_show(&n.ctl_socket).is_ok() {
                return Ok(());
            }
            let exited = n
                .agent
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            if exited || start.elapsed() > timeout {
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                return Err(LabError::AgentStart {
                    node: n.name.clone(),
                    secs: timeout.as_secs(),
                    log: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` to the agent of node `idx` and waits for it to exit.
    pub fn stop_agent(&mut self, idx: usize, signal: i32) {
        if let Some(mut child) = self.nodes[idx].agent.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                crate::sys::kill(pid, signal);
            }
            let _ = child.wait();
        }
    }

    /// Programs kernel node `idx` exactly as flanneld programs `flannel.1`: the VXLAN device
    /// (VNI 1, dstport 8472, nolearning, MTU underlay - 50) with the node's `<subnet>.0/32`, a
    /// bridge for pods, and per remote node a permanent neighbour, an FDB entry and an onlink route.
    fn program_kernel_node(
        &self,
        idx: usize,
        peers: &[(String, Ipv4Addr, Ipv4Net)],
    ) -> Result<(), LabError> {
        let n = &self.nodes[idx];
        let mtu = self.underlay_mtu - 50;
        let (name, public_ip, subnet) = (n.name.clone(), n.public_ip, n.subnet);
        let peers: Vec<_> = peers.iter().filter(|p| p.0 != name).cloned().collect();
        // A real NIC finishes the checksums the kernel leaves partial; a veth does not (see
        // `sys::set_tx_checksum_offload`). A kernel receiver trusts the skb metadata and does not
        // care, but Weft reads the bytes: when this node has Weft peers, make its kernel finish
        // checksums in software. An all-kernel lab keeps its offloads, so the kernel reference in
        // the benchmark harness runs at full speed.
        if self.nodes.iter().any(|m| m.kind == NodeKind::Weft) {
            n.ns.run(|| crate::sys::set_tx_checksum_offload("eth0", false))
                .map_err(|e| LabError::Netns {
                    name: n.ns.name().to_string(),
                    msg: e.to_string(),
                })?
                .map_err(io_err(format!("ethtool -K eth0 tx off in {}", n.name)))?;
        }
        in_ns(&n.ns, move |nl| {
            let dev = "flannel.1";
            let underlay = nl.link_index("eth0")?;
            nl.create_vxlan(dev, 1, 8472, public_ip, underlay, false)?;
            nl.set_mac(dev, vtep_mac_for(&name))?;
            nl.set_mtu(dev, mtu)?;
            nl.add_address(dev, Ipv4Net::new(subnet.network(), 32).expect("valid"))?;
            nl.set_up(dev)?;
            pod_bridge(nl, subnet, mtu)?;
            for (peer, ip, psubnet) in &peers {
                let mac = vtep_mac_for(peer);
                nl.replace_neighbor_permanent(psubnet.network(), mac, dev)?;
                nl.append_fdb(mac, dev, *ip)?;
                nl.replace_route(*psubnet, dev, Some(psubnet.network()), true)?;
            }
            Ok(())
        })
    }

    /// Programs node `idx` as flannel's host-gw backend does: a bridge for pods and per remote
    /// node a route `<subnet> via <public IP> dev eth0`. No encapsulation; pods get the full MTU.
    fn program_host_gw_node(
        &self,
        idx: usize,
        peers: &[(String, Ipv4Addr, Ipv4Net)],
    ) -> Result<(), LabError> {
        let n = &self.nodes[idx];
        let mtu = self.underlay_mtu;
        let (name, subnet) = (n.name.clone(), n.subnet);
        let peers: Vec<_> = peers.iter().filter(|p| p.0 != name).cloned().collect();
        in_ns(&n.ns, move |nl| {
            pod_bridge(nl, subnet, mtu)?;
            for (_, ip, psubnet) in &peers {
                nl.replace_route(*psubnet, "eth0", Some(*ip), false)?;
            }
            Ok(())
        })
    }

    /// The MTU pods on node `idx` get: the tunnel MTU (underlay − 50 for VXLAN, − 20 for IP-in-IP,
    /// by the `type` of [`Lab::backend`] on Weft nodes), or the underlay MTU under host-gw.
    pub fn pod_mtu(&self, idx: usize) -> u32 {
        match self.nodes[idx].kind {
            NodeKind::KernelHostGw => self.underlay_mtu,
            NodeKind::KernelVxlan => self.underlay_mtu - 50,
            NodeKind::Weft => self.underlay_mtu - backend_overhead(&self.backend),
        }
    }

    /// Adds a pod to node `idx`: address `<subnet>.<host>`, default route via `<subnet>.1`, its
    /// veth's host end on the node's bridge. Call after [`Lab::start`] (the bridge must exist).
    ///
    /// On a switch-mode Weft node ([`Lab::switch`]) the pod is attached as a runtime would, by
    /// a CNI ADD to the agent's CNI server (container ID `lab-<idx>-<host>`); its address is
    /// then the one the agent's IPAM hands out, not `<subnet>.<host>`.
    pub fn add_pod(&mut self, idx: usize, host: u8) -> Result<Ipv4Addr, LabError> {
        if self.switch && self.nodes[idx].kind == NodeKind::Weft {
            return self.add_pod_cni(idx, host);
        }
        let (node_fd, subnet, tun_mtu) = {
            let n = &self.nodes[idx];
            (
                n.ns.file().try_clone().map_err(io_err("dup netns fd"))?,
                n.subnet,
                self.pod_mtu(idx),
            )
        };
        let pod_name = format!("{}-p{}x{host}", self.prefix, idx + 1);
        let ns = netns(&pod_name)?;
        let host_veth = format!("{}v{}x{host}", self.prefix, idx + 1);
        let ip = Ipv4Addr::from(u32::from(subnet.network()) + u32::from(host));
        let gw = gateway(subnet);
        {
            let hv = host_veth.clone();
            in_ns(&ns, move |nl| {
                nl.set_up("lo")?;
                nl.create_veth("eth0", &hv)?;
                nl.move_to_netns(&hv, node_fd.as_fd())?;
                nl.set_mtu("eth0", tun_mtu)?;
                nl.add_address(
                    "eth0",
                    Ipv4Net::new(ip, subnet.prefix_len()).expect("valid"),
                )?;
                nl.set_up("eth0")?;
                nl.replace_route("0.0.0.0/0".parse().expect("valid"), "eth0", Some(gw), false)
            })?;
        }
        {
            let hv = host_veth.clone();
            in_ns(&self.nodes[idx].ns, move |nl| {
                nl.set_mtu(&hv, tun_mtu)?;
                nl.set_master(&hv, BRIDGE)?;
                // As the weft CNI plugin does (cni::plumbing::attach).
                nl.set_hairpin(&hv, true)?;
                nl.set_up(&hv)
            })?;
        }
        self.nodes[idx].pods.push(LabPod { ns, ip, host_veth });
        Ok(ip)
    }

    fn cni_request(
        &self,
        idx: usize,
        command: &str,
        id: &str,
        netns: Option<String>,
    ) -> Result<Option<serde_json::Value>, LabError> {
        let n = &self.nodes[idx];
        let env = cni_shim::spec::Invocation {
            command: cni_shim::spec::Command::parse(command).expect("a CNI verb"),
            container_id: Some(id.to_string()),
            netns,
            ifname: Some("eth0".into()),
            // As kubelet's runtimes do: NetworkPolicy selects the pod by namespace and name.
            args: Some(format!(
                "K8S_POD_NAMESPACE={LAB_NAMESPACE};K8S_POD_NAME={id}"
            )),
        };
        let config = serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "weft",
            "type": "weft",
            "socket": n.cni_socket.display().to_string(),
        });
        let fail = |msg: String| LabError::Io {
            what: format!("CNI {command} of {id} on {}", n.name),
            source: std::io::Error::other(msg),
        };
        match cni_shim::wire::call(&n.cni_socket, &cni_shim::wire::Request { env, config }) {
            Ok(cni_shim::wire::Reply::Ok(v)) => Ok(v),
            Ok(cni_shim::wire::Reply::Error(e)) => {
                Err(fail(format!("{} (code {})", e.msg, e.code)))
            }
            Err(e) => Err(fail(e.msg)),
        }
    }

    /// The container ID, and the pod name in namespace [`LAB_NAMESPACE`] (`CNI_ARGS`), of the
    /// pod [`Lab::add_pod`] puts on node `idx` with host number `host` in switch mode.
    pub fn pod_id(idx: usize, host: u8) -> String {
        format!("lab-{idx}-{host}")
    }

    fn add_pod_cni(&mut self, idx: usize, host: u8) -> Result<Ipv4Addr, LabError> {
        let pod_name = format!("{}-p{}x{host}", self.prefix, idx + 1);
        let ns = netns(&pod_name)?;
        in_ns(&ns, |nl| nl.set_up("lo"))?;
        let id = Self::pod_id(idx, host);
        let result = self
            .cni_request(idx, "ADD", &id, Some(ns.path().display().to_string()))?
            .unwrap_or_default();
        let bad = |what: &str| LabError::Io {
            what: format!("CNI ADD result of {id}"),
            source: std::io::Error::other(format!("{what}: {result}")),
        };
        let ip: Ipv4Addr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| bad("no address"))?;
        let host_veth = result["interfaces"][0]["name"]
            .as_str()
            .ok_or_else(|| bad("no host interface"))?
            .to_string();
        self.nodes[idx].pods.push(LabPod { ns, ip, host_veth });
        Ok(ip)
    }

    /// Removes the pod with address `ip` from node `idx`: a CNI DEL on a switch-mode node, the
    /// veth deleted with its namespace otherwise.
    pub fn del_pod(&mut self, idx: usize, ip: Ipv4Addr) -> Result<(), LabError> {
        let Some(at) = self.nodes[idx].pods.iter().position(|p| p.ip == ip) else {
            return Ok(());
        };
        if self.switch && self.nodes[idx].kind == NodeKind::Weft {
            let host = self.nodes[idx].pods[at]
                .ns
                .name()
                .rsplit('x')
                .next()
                .and_then(|h| h.parse::<u8>().ok())
                .unwrap_or(0);
            self.cni_request(idx, "DEL", &Self::pod_id(idx, host), None)?;
        }
        self.nodes[idx].pods.remove(at);
        Ok(())
    }

    /// A new, empty namespace for a pod that something else attaches (a CNI plugin): loopback up,
    /// nothing else. Its name carries the lab's prefix and `tag`; it is deleted when dropped.
    pub fn empty_pod_ns(&self, tag: &str) -> Result<NetNs, LabError> {
        let ns = netns(&format!("{}-{tag}", self.prefix))?;
        in_ns(&ns, |nl| nl.set_up("lo"))?;
        Ok(ns)
    }

    /// The underlay namespace (bridge `ul0`, address [`UNDERLAY_HOST`]): a vantage point outside
    /// every node, e.g. for reaching a node's hostPort, or for servers the nodes reach there.
    pub fn underlay(&self) -> &NetNs {
        &self.underlay
    }

    /// A host on the underlay segment `ul0` that is not a node and not in the cluster network, at
    /// 192.168.77.`octet`/24 (not 1..=250 of a node, nor 254): what pods reach "outside". Its
    /// interface is `eth0`. The namespace is deleted when dropped; its veth goes with it.
    pub fn add_outside_host(&self, octet: u8) -> Result<NetNs, LabError> {
        let ns = netns(&format!("{}-o{octet}", self.prefix))?;
        self.join_underlay(
            &ns,
            &format!("{}o{octet}", self.prefix),
            SEGMENTS[0].0,
            Ipv4Addr::new(192, 168, 77, octet),
        )?;
        Ok(ns)
    }

    /// Joins namespace `ns` to underlay bridge `bridge` by a veth: `eth0` inside with `ip`/24
    /// (lo and eth0 up, the underlay MTU), `ul_end` in the underlay namespace on the bridge.
    fn join_underlay(
        &self,
        ns: &NetNs,
        ul_end: &str,
        bridge: &str,
        ip: Ipv4Addr,
    ) -> Result<(), LabError> {
        let ul_fd = self.underlay.file();
        let mtu = self.underlay_mtu;
        in_ns(ns, |nl| {
            nl.set_up("lo")?;
            nl.create_veth("eth0", ul_end)?;
            nl.move_to_netns(ul_end, ul_fd.as_fd())?;
            nl.set_mtu("eth0", mtu)?;
            nl.add_address("eth0", Ipv4Net::new(ip, 24).expect("valid"))?;
            nl.set_up("eth0")
        })?;
        in_ns(&self.underlay, |nl| {
            nl.set_mtu(ul_end, mtu)?;
            nl.set_master(ul_end, bridge)?;
            nl.set_up(ul_end)
        })?;
        if self.underlay_kind == Underlay::Segmenting {
            ethtool_features(self.underlay.name(), ul_end, &SEGMENTING_PORT)?;
            ethtool_features(ns.name(), "eth0", &SEGMENTING_NODE)?;
        }
        Ok(())
    }

    /// The pod with address `ip`.
    pub fn pod(&self, ip: Ipv4Addr) -> Option<&LabPod> {
        self.nodes
            .iter()
            .flat_map(|n| n.pods.iter())
            .find(|p| p.ip == ip)
    }
}

/// The network config an etcd lab writes at `<prefix>/config`.
pub const ETCD_NETWORK_CONFIG: &str =
    r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#;
/// The underlay address etcd listens on in an etcd lab (the underlay namespace's own).
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 254);

impl Lab {
    /// Starts a real etcd in the underlay namespace (reachable from every node at
    /// 192.168.77.254), writes flannel's network config at `<prefix>/config` and switches the lab
    /// to the etcd datastore with the given lease TTL and renew margin (seconds).
    pub fn start_etcd(&mut self, lease_ttl: u64, renew_margin: u64) -> Result<(), LabError> {
        let etcd = EtcdServer::start(Some(self.underlay.name()), ETCD_IP)?;
        let prefix = flannel::DEFAULT_PREFIX.to_string();
        etcd.put(&flannel::config_key(&prefix), ETCD_NETWORK_CONFIG, None)?;
        self.datastore = LabDatastore::Etcd(LabEtcd {
            endpoint: etcd.endpoint(),
            prefix,
            lease_ttl,
            renew_margin,
        });
        self.etcd = Some(etcd);
        Ok(())
    }

    /// The lab's etcd, once started.
    pub fn etcd(&self) -> Option<&EtcdServer> {
        self.etcd.as_ref()
    }

    /// The lab's etcd, mutably (to stop and restart it).
    pub fn etcd_mut(&mut self) -> Option<&mut EtcdServer> {
        self.etcd.as_mut()
    }

    fn etcd_prefix(&self) -> String {
        match &self.datastore {
            LabDatastore::Etcd(e) => e.prefix.clone(),
            LabDatastore::Static | LabDatastore::Kubernetes { .. } => {
                flannel::DEFAULT_PREFIX.to_string()
            }
        }
    }

    fn require_etcd(&self) -> Result<&EtcdServer, LabError> {
        self.etcd.as_ref().ok_or_else(|| LabError::Io {
            what: "lab etcd".into(),
            source: std::io::Error::other("no etcd started; call Lab::start_etcd first"),
        })
    }

    fn start_from_datastore(&mut self) -> Result<(), LabError> {
        let etcd = matches!(self.datastore, LabDatastore::Etcd(_));
        // Kernel nodes first publish their leases, as flanneld would on start.
        for idx in 0..self.nodes.len() {
            if self.nodes[idx].kind != NodeKind::Weft && !etcd {
                return Err(LabError::Io {
                    what: format!("{} in a Kubernetes lab", self.nodes[idx].name),
                    source: std::io::Error::other(
                        "only Weft nodes run with the Kubernetes datastore",
                    ),
                });
            }
            if self.nodes[idx].kind == NodeKind::KernelVxlan {
                self.publish_kernel_lease(idx)?;
                self.kernel_vxlan_device(idx)?;
            }
        }
        for idx in 0..self.nodes.len() {
            if self.nodes[idx].kind == NodeKind::Weft {
                self.write_config(idx, &[])?;
                self.start_agent(idx)?;
            }
        }
        for idx in 0..self.nodes.len() {
            if self.nodes[idx].kind == NodeKind::Weft {
                self.wait_agent(idx, Duration::from_secs(15))?;
                self.refresh_subnet(idx)?;
            }
        }
        for idx in 0..self.nodes.len() {
            if self.nodes[idx].kind == NodeKind::KernelVxlan {
                self.sync_kernel_node_from_etcd(idx)?;
            }
        }
        Ok(())
    }

    /// Reads the subnet the agent of node `idx` holds (its lease) into `nodes[idx].subnet`.
    pub fn refresh_subnet(&mut self, idx: usize) -> Result<(), LabError> {
        let n = &mut self.nodes[idx];
        let show = crate::ctl::request_show(&n.ctl_socket).map_err(|e| LabError::Io {
            what: format!("weftd show on {}", n.name),
            source: std::io::Error::other(e.to_string()),
        })?;
        n.subnet = show.node.subnet.parse().map_err(|_| LabError::Io {
            what: format!("subnet of {}", n.name),
            source: std::io::Error::other(format!("{:?} is not a subnet", show.node.subnet)),
        })?;
        Ok(())
    }

    /// Writes kernel node `idx`'s lease (its subnet, PublicIP, VTEP MAC) in flannel's format with
    /// a one-hour TTL, as flanneld does.
    pub fn publish_kernel_lease(&self, idx: usize) -> Result<(), LabError> {
        let n = &self.nodes[idx];
        let etcd = self.require_etcd()?;
        let key = flannel::lease_key(&self.etcd_prefix(), n.subnet);
        let value = flannel::vxlan_lease_value(n.public_ip, 1, vtep_mac_for(&n.name));
        etcd.put(&key, &value, Some(3600))?;
        Ok(())
    }

    /// Creates kernel node `idx`'s `flannel.1` and pod bridge, without peers.
    fn kernel_vxlan_device(&self, idx: usize) -> Result<(), LabError> {
        self.program_kernel_node(idx, &[])
    }

    /// Programs kernel node `idx` from every lease in etcd, as flanneld's watch would: per
    /// remote lease a permanent neighbour, an FDB entry and an onlink route, replacing what is
    /// there; routes of subnets no longer leased are deleted.
    pub fn sync_kernel_node_from_etcd(&self, idx: usize) -> Result<(), LabError> {
        let prefix = self.etcd_prefix();
        let entries = self
            .require_etcd()?
            .list(&flannel::subnets_prefix(&prefix))?;
        let n = &self.nodes[idx];
        let own = n.subnet;
        let peers: Vec<(Ipv4Net, Ipv4Addr, EthernetAddress)> = entries
            .iter()
            .filter_map(|(k, v, _)| {
                let subnet = flannel::subnet_of_key(&prefix, k)?;
                let l = flannel::parse_lease_value(subnet, k, v.as_bytes()).ok()?;
                Some((subnet, l.public_ip, l.vtep_mac?))
            })
            .filter(|p| p.0 != own)
            .collect();
        in_ns(&n.ns, move |nl| {
            let dev = "flannel.1";
            let leased: Vec<Ipv4Net> = peers.iter().map(|p| p.0).collect();
            for r in nl.routes()? {
                if r.dev.as_deref() == Some(dev) && r.gateway.is_some() && !leased.contains(&r.dst)
                {
                    nl.delete_route(r.dst)?;
                }
            }
            for (subnet, ip, mac) in &peers {
                nl.replace_neighbor_permanent(subnet.network(), *mac, dev)?;
                nl.append_fdb(*mac, dev, *ip)?;
                nl.replace_route(*subnet, dev, Some(subnet.network()), true)?;
            }
            Ok(())
        })
    }

    /// `GET path` on node `idx`'s health server (port [`HEALTH_PORT`] inside its namespace):
    /// status and body.
    pub fn http_get(&self, idx: usize, path: &str) -> std::io::Result<(u16, String)> {
        let path = path.to_string();
        self.nodes[idx]
            .ns
            .run(move || {
                crate::health::get(
                    std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, HEALTH_PORT)),
                    &path,
                    Duration::from_secs(2),
                )
            })
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for idx in 0..self.nodes.len() {
            self.stop_agent(idx, libc::SIGKILL);
        }
        // Pods and nodes go first (their veths die with them), the underlay last.
        for n in self.nodes.drain(..) {
            drop(n.pods);
            drop(n.ns);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The bridge address of a node owning `subnet` — `<subnet>.1/<len>`, as flannel gives `cni0` —
/// by the same rule `weftd` plumbs `weft0` with.
fn bridge_addr(subnet: Ipv4Net) -> Ipv4Net {
    crate::netlink::NodePlan::new(0, subnet, subnet, BRIDGE, 0).bridge_addr
}

/// Bytes of encapsulation per packet under a `[backend]` body: 50 for VXLAN (also when the body
/// does not parse: the agent will refuse it anyway), 20 for IP-in-IP, none for host-gw.
fn backend_overhead(backend: &str) -> u32 {
    let ty = backend
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| t.get("type").and_then(|v| v.as_str().map(str::to_string)));
    match ty.as_deref() {
        Some("ipip") => 20,
        Some("host-gw") => 0,
        _ => 50,
    }
}

/// The pods' gateway on a node: the bridge's address.
fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    bridge_addr(subnet).addr()
}

/// The bridge kernel nodes hang their pods off, as `weftd` plumbs `weft0` for its own.
fn pod_bridge(nl: &Netlink, subnet: Ipv4Net, mtu: u32) -> Result<(), crate::netlink::NetlinkError> {
    nl.create_bridge(BRIDGE)?;
    nl.set_mtu(BRIDGE, mtu)?;
    nl.add_address(BRIDGE, bridge_addr(subnet))?;
    nl.set_up(BRIDGE)
}

fn netns(name: &str) -> Result<NetNs, LabError> {
    NetNs::create(name).map_err(|e| LabError::Netns {
        name: name.to_string(),
        msg: e.to_string(),
    })
}

/// Runs `f` with a netlink handle inside namespace `ns`.
pub fn in_ns<F>(ns: &NetNs, f: F) -> Result<(), LabError>
where
    F: FnOnce(&Netlink) -> Result<(), crate::netlink::NetlinkError> + Send,
{
    let name = ns.name().to_string();
    ns.run(move || {
        let nl = Netlink::new()?;
        f(&nl)
    })
    .map_err(|e| LabError::Netns {
        name: name.clone(),
        msg: e.to_string(),
    })?
    .map_err(|source| LabError::Netlink { ns: name, source })
}

/// The `br_netfilter` switches of a namespace: where the module is loaded, frames crossing a
/// bridge in that namespace run its iptables, ip6tables and arptables hooks.
const BRIDGE_NF_CALLS: [&str; 3] = [
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/bridge/bridge-nf-call-arptables",
];

/// Makes the underlay namespace's bridges forward as a switch does: without `br_netfilter`'s
/// per-frame firewall hooks, which a host that loaded the module (Kubernetes nodes do) turns on in
/// every new namespace. Nodes keep theirs, as a real node's `cni0` does. Without the module there
/// is nothing to turn off.
fn switch_like(ns: &NetNs) -> Result<(), LabError> {
    for key in BRIDGE_NF_CALLS {
        let present = ns
            .run(move || std::path::Path::new("/proc/sys").join(key).exists())
            .map_err(|e| LabError::Netns {
                name: ns.name().to_string(),
                msg: e.to_string(),
            })?;
        if present {
            sysctl(ns, key, "0")?;
        }
    }
    Ok(())
}

/// Writes a sysctl inside `ns` (`key` is the path under /proc/sys).
pub fn sysctl(ns: &NetNs, key: &str, value: &str) -> Result<(), LabError> {
    let path = format!("/proc/sys/{key}");
    let what = format!("write {path} in {}", ns.name());
    let value = value.to_string();
    ns.run(move || std::fs::write(&path, value))
        .map_err(|e| LabError::Netns {
            name: ns.name().to_string(),
            msg: e.to_string(),
        })?
        .map_err(io_err(what))
}

impl LabPod {
    /// A TCP listener inside the pod (the socket stays in the pod's namespace on any thread).
    pub fn listen(&self, port: u16) -> std::io::Result<TcpListener> {
        self.ns
            .run(move || TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)))
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    /// A TCP connection from inside the pod.
    pub fn connect(&self, to: SocketAddrV4, timeout: Duration) -> std::io::Result<TcpStream> {
        self.ns
            .run(move || TcpStream::connect_timeout(&to.into(), timeout))
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    /// A UDP socket inside the pod, bound to `port` (0 = any).
    pub fn udp(&self, port: u16) -> std::io::Result<std::net::UdpSocket> {
        self.ns
            .run(move || std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)))
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    /// Pings `dst` from the pod: ICMP echo over a raw socket, `payload` data bytes, optional DF.
    pub fn ping(&self, dst: Ipv4Addr, payload: usize, df: bool, timeout: Duration) -> PingResult {
        match self
            .ns
            .run(move || crate::tooling::ping::ping(dst, payload, df, timeout))
        {
            Ok(r) => r,
            Err(e) => PingResult::Error(e.to_string()),
        }
    }
}

pub use crate::tooling::ping::PingResult;

/// What one TCP throughput run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// Bytes the receiver got.
    pub bytes: u64,
    /// From the receiver's first byte to its last.
    pub elapsed: Duration,
}

impl Throughput {
    /// Gigabits per second.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
}

impl Lab {
    /// A single TCP stream from pod `src` to pod `dst` for `duration`, with the built-in sender
    /// and receiver (no external tool). `stop` ends it early.
    pub fn tcp_throughput(
        &self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        port: u16,
        duration: Duration,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<Throughput, LabError> {
        use std::io::{Read, Write};
        let pod = |ip: Ipv4Addr| {
            self.pod(ip).ok_or_else(|| LabError::Netns {
                name: ip.to_string(),
                msg: "no pod with this address".into(),
            })
        };
        let listener = pod(dst)?
            .listen(port)
            .map_err(io_err(format!("listen on {dst}:{port}")))?;
        let receiver = std::thread::spawn(move || -> std::io::Result<Throughput> {
            let (mut conn, _) = listener.accept()?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut bytes = 0u64;
            let mut first: Option<Instant> = None;
            let mut last = Instant::now();
            loop {
                let n = conn.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
                bytes += n as u64;
            }
            let elapsed = first.map_or(Duration::ZERO, |f| last.saturating_duration_since(f));
            Ok(Throughput { bytes, elapsed })
        });
        let mut conn = pod(src)?
            .connect(SocketAddrV4::new(dst, port), Duration::from_secs(3))
            .map_err(io_err(format!("TCP connect {src} -> {dst}:{port}")))?;
        let chunk = vec![0x5au8; 128 * 1024];
        let start = Instant::now();
        while start.elapsed() < duration && !stop.load(Ordering::Relaxed) {
            conn.write_all(&chunk)
                .map_err(io_err(format!("TCP send {src} -> {dst}")))?;
        }
        drop(conn);
        receiver
            .join()
            .map_err(|_| LabError::Io {
                what: "TCP receiver".into(),
                source: std::io::Error::other("receiver thread panicked"),
            })?
            .map_err(io_err(format!("TCP receive {src} -> {dst}")))
    }
}
