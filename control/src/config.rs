//! The agent's configuration file (`weftd run --config FILE`), TOML, with the static datastore
//! embedded: the node, the cluster network, the backend and the peers.
//!
//! Every field, with its default (`deploy/weftd.example.toml` is the annotated version):
//!
//! ```toml
//! [node]
//! name = "node-a"              # required, here or --node-name / NODE_NAME; the VTEP MAC's seed (vtep_mac_for)
//! public_ip = "192.168.50.1"   # the underlay address; exclusive with autodetect
//! autodetect = "first-found"   # default when public_ip is absent; or "can-reach=IP", "interface=REGEX"
//! subnet = "10.244.1.0/24"     # required with the static datastore (only there); this node's pod
//!                              # subnet, inside network, /30 or larger
//!
//! [network]
//! network = "10.244.0.0/16"    # default; flannel's Network
//! ip_masq = true               # default: masquerade pod traffic leaving the cluster network
//!                              # (flannel's --ip-masq; see crate::masq)
//! masq_backend = "auto"        # default: iptables when the host has it, else nftables; or
//!                              # "iptables", "nftables"
//!
//! [backend]
//! type = "vxlan"               # default; or "ipip" (RFC 2003, protocol 4), "host-gw" (plain routes)
//! encapsulation = "Always"     # default; or "CrossSubnet" (peers on this node's underlay subnet
//!                              # are routed natively), "Never" (all peers natively); vxlan and ipip
//! vni = 1                      # default 1; 0..=16777215 (vxlan)
//! port = 8472                  # default 8472 (flannel's; Calico and IANA use 4789) (vxlan)
//! mtu = "auto"                 # default "auto": underlay MTU - 50 (vxlan), - 20 (ipip), - 0
//!                              # (host-gw); or a number 576..=8950
//!
//! [dataplane]
//! workers = 0                  # default 0: one per core
//! bridge = "weft0"             # default; the local pod bridge
//! control_socket = "/run/weft/weftd.sock"   # default
//! offload = true               # default: TUN offloads (virtio-net headers, TSO, coalescing)
//! gso = true                   # default: send a flow's segments as UDP GSO trains
//! gro = true                   # default: let the kernel merge received VXLAN datagrams (UDP GRO)
//! uso = true                   # default: take pods' UDP GSO sends as one TUN read (USO, Linux 6.2)
//! busy_poll_us = 200           # default 200: keep polling this long after traffic; 0 = always sleep
//! pod_ports = "bridge"         # default: pods on the kernel bridge; "switch": pod veths are ports
//!                              # of Weft's own switch (AF_PACKET), no bridge
//!
//! [datastore]
//! type = "static"              # default; or "etcd", "kubernetes" (flannel's two layouts)
//! subnet_file = "/run/flannel/subnet.env"   # default; flannel's subnet.env, written atomically
//!
//! [datastore.etcd]             # used with type = "etcd"
//! endpoints = ["http://127.0.0.1:2379"]     # default
//! prefix = "/coreos.com/network"            # default; network config at <prefix>/config
//! ca_file = "..."              # TLS: CA, client cert and key (all optional)
//! cert_file = "..."
//! key_file = "..."
//! username = "..."             # optional etcd user (password below)
//! password = "..."
//! lease_ttl = 86400            # default, seconds: the subnet lease's TTL (flannel's 24 h)
//! renew_margin = 3600          # default, seconds: renew when this much remains (flannel's 1 h)
//!
//! [datastore.kubernetes]       # used with type = "kubernetes"
//! kubeconfig = "..."           # default: in-cluster service account, else $KUBECONFIG or ~/.kube/config
//! net_conf = "..."             # flannel's net-conf.json; default: [network] and [backend] here
//!
//! [health]
//! listen = "0.0.0.0:9472"      # default; /healthz, /readyz, /metrics; "off" disables
//!
//! [cni]
//! enabled = true               # default: serve the weft CNI plugin
//! socket = "/run/weft/cni.sock"             # default; the plugin's "socket" must match
//! data_dir = "/var/lib/weft"   # default; IPAM state (cni-ipam.json, cni-ipam.journal)
//!
//! [[peers]]                    # static datastore only; default none; one table per remote node
//! name = "node-b"
//! public_ip = "192.168.50.2"
//! subnet = "10.244.2.0/24"
//! vtep_mac = "0e:..."          # default vtep_mac_for(name), as the peer derives its own
//! ```
//!
//! Parsing happens in two steps: serde reads the file into raw sections (unknown keys rejected,
//! TOML syntax and type errors reported by the `toml` crate with line, column and key), then
//! [`Config::from_toml_str`] validates every value into typed fields. Each validation error names
//! the field by its path, e.g. `peers[1].subnet`.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use dataplane::wire::EthernetAddress;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::autodetect::AutodetectMethod;

/// flannel's default etcd prefix (`--etcd-prefix`).
pub const DEFAULT_ETCD_PREFIX: &str = "/coreos.com/network";
/// Default cluster network, flannel's documented default.
pub const DEFAULT_NETWORK: &str = "10.244.0.0/16";
/// Default VXLAN network identifier (flannel's).
pub const DEFAULT_VNI: u32 = 1;
/// Default VXLAN UDP port (flannel's; Linux's legacy default, not IANA's 4789).
pub const DEFAULT_PORT: u16 = 8472;
/// Default pod bridge name.
pub const DEFAULT_BRIDGE: &str = "weft0";
/// Default control socket path.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/weft/weftd.sock";
/// Default CNI socket path (the `weft` plugin's default too).
pub const DEFAULT_CNI_SOCKET: &str = "/run/weft/cni.sock";
/// Default directory of the agent's state (IPAM allocations).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/weft";
/// Smallest tunnel MTU accepted: the IPv4 minimum datagram every host must accept (RFC 791).
pub const MIN_MTU: u32 = 576;
/// Largest tunnel MTU accepted: a 9000-byte jumbo underlay minus the VXLAN overhead.
pub const MAX_MTU: u32 = 9000 - VXLAN_OVERHEAD;
/// Bytes VXLAN over IPv4 adds: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Bytes IP-in-IP adds: the outer IPv4 header.
pub const IPIP_OVERHEAD: u32 = 20;
/// Largest VNI: 24 bits (RFC 7348 §5).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Default health and metrics listen address (flannel serves /healthz only when given a port;
/// Weft serves it by default, on a port chosen to echo VXLAN's 8472).
pub const DEFAULT_HEALTH_LISTEN: &str = "0.0.0.0:9472";
/// Default etcd endpoint (flannel's).
pub const DEFAULT_ETCD_ENDPOINT: &str = "http://127.0.0.1:2379";
/// Default subnet lease TTL, seconds (flannel's 24 h).
pub const DEFAULT_LEASE_TTL: u64 = 24 * 3600;
/// Default renew margin, seconds (flannel's 1 h).
pub const DEFAULT_RENEW_MARGIN: u64 = 3600;
/// Longest pod subnet prefix accepted: a /30 holds the TUN's `.0`, the bridge's `.1` and one pod.
pub const MAX_SUBNET_PREFIX: u8 = 30;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}; check the path given to --config and its permissions")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type. The `toml`
    /// crate's message carries the line, column and key; the field is named in front of it
    /// when the error points at a value. (The caller names the file.)
    #[error("{}{source}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Parse {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// The field the error is at, e.g. `network.ip_masq`, when the error points at a value.
        field: Option<String>,
        /// The TOML error.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is malformed or out of range.
    #[error("{field}: {message}")]
    Invalid {
        /// The field path, e.g. `backend.vni`.
        field: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// A subnet is not inside the cluster network.
    #[error("{field}: {subnet} is not inside network {network}; pick a subnet of network.network or widen it")]
    NotInside {
        /// The field path.
        field: String,
        /// The subnet.
        subnet: Ipv4Net,
        /// The cluster network.
        network: Ipv4Net,
    },
    /// Two pod subnets overlap.
    #[error(
        "{field}: {subnet} overlaps {other} of {other_field}; every node needs its own subnet"
    )]
    Overlap {
        /// The field path of the later subnet.
        field: String,
        /// The later subnet.
        subnet: Ipv4Net,
        /// The field path of the earlier subnet.
        other_field: String,
        /// The earlier subnet.
        other: Ipv4Net,
    },
    /// Two entries that must differ are equal (peer names, VTEP MACs).
    #[error("{field}: {value} is already used by {other_field}; each must be unique")]
    Duplicate {
        /// The field path of the later entry.
        field: String,
        /// The repeated value.
        value: String,
        /// The field path of the earlier entry.
        other_field: String,
    },
    /// A backend Weft does not implement.
    #[error(
        "backend.type: {0:?} is not a backend Weft has; use \"vxlan\", \"ipip\" or \"host-gw\""
    )]
    UnsupportedBackend(String),
}

/// The dotted path of the `key = value` line a TOML error points into (`network.ip_masq`), read
/// off the text: the key before `=` on that line, under the last `[table]` header above it.
fn field_at(text: &str, e: &toml::de::Error) -> Option<String> {
    let at = e.span()?.start;
    let line_start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(line_start..)?.lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let table = text
        .get(..line_start)?
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|h| h.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

// ---- raw (serde) form: what the file says, before validation -------------------------------

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    backend: RawBackend,
    #[serde(default)]
    dataplane: RawDataplane,
    #[serde(default)]
    datastore: RawDatastore,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    cni: RawCni,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    peers: Vec<RawPeer>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawDatastore {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subnet_file: Option<PathBuf>,
    #[serde(default)]
    etcd: RawEtcd,
    #[serde(default)]
    kubernetes: RawKube,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoints: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease_ttl: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    renew_margin: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawKube {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kubeconfig: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    net_conf: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    // Optional in the file: a DaemonSet's shared config leaves it to `--node-name` / NODE_NAME.
    #[serde(default)]
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    autodetect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subnet: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip_masq: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    masq_backend: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encapsulation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vni: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mtu: Option<toml::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workers: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bridge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    control_socket: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offload: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gso: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gro: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uso: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    busy_poll_us: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod_ports: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawCni {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    socket: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: String,
    public_ip: String,
    subnet: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vtep_mac: Option<String>,
}

// ---- validated form ------------------------------------------------------------------------

/// How the node's public (underlay) address is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicAddress {
    /// Given in `node.public_ip`.
    Static(Ipv4Addr),
    /// Found at start-up with `node.autodetect`.
    Autodetect(AutodetectMethod),
}

/// `[node]`: this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSection {
    /// The node's name, unique in the cluster; the seed of its VTEP MAC.
    pub name: String,
    /// The underlay address, or how to find it.
    pub public_address: PublicAddress,
    /// This node's pod subnet: given with the static datastore; `None` with etcd (it comes from
    /// the lease) and Kubernetes (from the Node's `spec.podCIDR`).
    pub subnet: Option<Ipv4Net>,
}

/// `[network]`: the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSection {
    /// The cluster network every pod subnet lies in (flannel's `Network`).
    pub network: Ipv4Net,
    /// Masquerade pod traffic that leaves the cluster network (flannel's `--ip-masq`).
    pub ip_masq: bool,
    /// Which firewall tool writes the masquerade rules.
    pub masq_backend: crate::masq::BackendChoice,
}

/// Which backend the node runs (flannel's `Backend.Type` and lease `BackendType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendKind {
    /// VXLAN, wire-compatible with flannel's vxlan backend (and Calico's `vxlanMode`).
    Vxlan,
    /// IP-in-IP (RFC 2003, IP protocol 4), flannel's `ipip` backend and Calico's `ipipMode`,
    /// carried in userspace: no `ipip` kernel module.
    Ipip,
    /// No encapsulation: each peer's pod subnet routed via its public IP, which must be on a
    /// directly connected underlay subnet (flannel's `host-gw`).
    HostGw,
}

impl BackendKind {
    /// Every backend, for messages.
    pub const ALL: [BackendKind; 3] = [BackendKind::Vxlan, BackendKind::Ipip, BackendKind::HostGw];

    /// flannel's name: `vxlan`, `ipip`, `host-gw` (`Backend.Type`, lease `BackendType`).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Vxlan => "vxlan",
            BackendKind::Ipip => "ipip",
            BackendKind::HostGw => "host-gw",
        }
    }

    /// The backend flannel calls `name`.
    pub fn from_name(name: &str) -> Option<BackendKind> {
        BackendKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Bytes the encapsulation adds in front of a pod packet (the MTU it costs).
    pub fn overhead(self) -> u32 {
        match self {
            BackendKind::Vxlan => VXLAN_OVERHEAD,
            BackendKind::Ipip => IPIP_OVERHEAD,
            BackendKind::HostGw => 0,
        }
    }

    /// The TUN device's name: `weft.<vni>` for VXLAN (as flannel names `flannel.<vni>`),
    /// `weft.ipip`, `weft.hostgw`.
    pub fn tun_name(self, vni: u32) -> String {
        match self {
            BackendKind::Vxlan => format!("weft.{vni}"),
            BackendKind::Ipip => "weft.ipip".to_string(),
            BackendKind::HostGw => "weft.hostgw".to_string(),
        }
    }
}

/// When a tunnel backend encapsulates (Calico's `ipipMode` / `vxlanMode` values; flannel's
/// `DirectRouting: true` is `CrossSubnet`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Encapsulation {
    /// Every peer through the tunnel.
    Always,
    /// Peers whose public IP is on this node's underlay subnet are routed natively (a kernel
    /// route via the peer); the others through the tunnel.
    CrossSubnet,
    /// Every peer routed natively, as host-gw: peers off the underlay subnet are refused.
    Never,
}

impl Encapsulation {
    /// Calico's spelling: `Always`, `CrossSubnet`, `Never`.
    pub fn name(self) -> &'static str {
        match self {
            Encapsulation::Always => "Always",
            Encapsulation::CrossSubnet => "CrossSubnet",
            Encapsulation::Never => "Never",
        }
    }

    /// The mode Calico spells `name`.
    pub fn from_name(name: &str) -> Option<Encapsulation> {
        [
            Encapsulation::Always,
            Encapsulation::CrossSubnet,
            Encapsulation::Never,
        ]
        .into_iter()
        .find(|e| e.name() == name)
    }
}

/// The tunnel MTU setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mtu {
    /// Underlay interface MTU minus the encapsulation overhead (50 for VXLAN over IPv4).
    Auto,
    /// A fixed tunnel MTU.
    Fixed(u32),
}

/// `[backend]`: encapsulation parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSection {
    /// The backend type.
    pub kind: BackendKind,
    /// When to encapsulate (vxlan and ipip; host-gw never does).
    pub encapsulation: Encapsulation,
    /// VXLAN network identifier.
    pub vni: u32,
    /// VXLAN UDP destination port.
    pub port: u16,
    /// Tunnel MTU.
    pub mtu: Mtu,
}

/// `[dataplane]`: the local forwarding engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneSection {
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// The local pod bridge.
    pub bridge: String,
    /// Path of the agent's control socket.
    pub control_socket: PathBuf,
    /// Open the TUN with offloads (`IFF_VNET_HDR`, `TUN_F_CSUM | TUN_F_TSO4`): the kernel hands
    /// the workers 64 KiB TCP super-frames to segment, and takes coalesced ones back, instead of
    /// one syscall per packet. On by default; the agent falls back to plain packets if the kernel
    /// refuses.
    pub offload: bool,
    /// Send a flow's run of equal-sized VXLAN packets as one UDP GSO train (`UDP_SEGMENT`). On by
    /// default; probed at start-up and turned off by itself if the kernel refuses.
    pub gso: bool,
    /// Ask the kernel to merge received VXLAN datagrams of one flow (`UDP_GRO`). On by default;
    /// ignored on kernels without it.
    pub gro: bool,
    /// With `offload`, also offer the TUN UDP segmentation (`TUN_F_USO4`, Linux 6.2), so a pod's
    /// UDP GSO send is one TUN read that Weft cuts into datagrams. On by default; a kernel that
    /// refuses it leaves TSO in place.
    pub uso: bool,
    /// Microseconds a worker keeps polling after moving packets before it sleeps: replies that
    /// come back within it skip the scheduler's wakeup latency, at the cost of that much CPU per
    /// burst. Default 200; 0 always sleeps.
    pub busy_poll_us: u32,
    /// How pods attach: to the kernel bridge, or as ports of Weft's switch.
    pub pod_ports: PodPortMode,
}

/// `[dataplane] pod_ports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodPortMode {
    /// Pod veths join the kernel bridge `dataplane.bridge` (flannel's `cni0` model); the kernel
    /// switches same-node traffic and routes the rest into the TUN.
    #[default]
    Bridge,
    /// Pod veths are ports of Weft's switch (AF_PACKET sockets): every pod frame passes through
    /// Weft; no bridge. Pods get a /32 and a default route via 169.254.1.1, which Weft answers
    /// (Calico's routed model).
    Switch,
}

impl PodPortMode {
    /// The config value.
    pub fn name(self) -> &'static str {
        match self {
            PodPortMode::Bridge => "bridge",
            PodPortMode::Switch => "switch",
        }
    }
}

/// Default of `[dataplane] busy_poll_us`.
pub const DEFAULT_BUSY_POLL_US: u32 = 200;
/// `[cni]`: the server the `weft` CNI plugin talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniSection {
    /// Serve the plugin (on by default).
    pub enabled: bool,
    /// The unix socket the plugin connects to; its network config's `socket` must name it.
    pub socket: PathBuf,
    /// Where the pod address allocations are kept (`cni-ipam.json` and `cni-ipam.journal`).
    pub data_dir: PathBuf,
}

/// `[[peers]]`: a remote node of the static datastore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's node name.
    pub name: String,
    /// The peer's underlay address (flannel's `PublicIP`).
    pub public_ip: Ipv4Addr,
    /// The peer's pod subnet.
    pub subnet: Ipv4Net,
    /// The peer's VTEP MAC (flannel's `VtepMAC`).
    pub vtep_mac: EthernetAddress,
}

/// `[datastore.etcd]`: flannel's etcd v3 layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSection {
    /// Client URLs, `http://` or `https://`.
    pub endpoints: Vec<String>,
    /// Key prefix; the network config is at `<prefix>/config`, leases under `<prefix>/subnets/`.
    pub prefix: String,
    /// CA certificate (PEM) to verify the servers with.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM).
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM).
    pub key_file: Option<PathBuf>,
    /// etcd user name.
    pub username: Option<String>,
    /// etcd password.
    pub password: Option<String>,
    /// TTL of the subnet lease, seconds.
    pub lease_ttl: u64,
    /// Renew the lease when less than this many seconds remain.
    pub renew_margin: u64,
}

/// `[datastore.kubernetes]`: flannel's `--kube-subnet-mgr` layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSection {
    /// A kubeconfig file; `None`: in-cluster config, else `$KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// flannel's `net-conf.json`; `None`: the network and backend come from this file.
    pub net_conf: Option<PathBuf>,
}

/// `[datastore]`: where the node's subnet and its peers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatastoreSection {
    /// Which datastore.
    pub kind: DatastoreKind,
    /// Where flannel's subnet.env is written.
    pub subnet_file: PathBuf,
    /// etcd settings.
    pub etcd: EtcdSection,
    /// Kubernetes settings.
    pub kubernetes: KubeSection,
}

/// `[health]`: the health and metrics HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSection {
    /// Listen address; `None` when disabled (`listen = "off"`).
    pub listen: Option<SocketAddr>,
}

/// Command-line overrides of the file (`weftd run --datastore etcd --etcd-endpoints ...`),
/// applied before validation so they are validated like the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `datastore.type`.
    pub datastore: Option<String>,
    /// `datastore.etcd.endpoints`.
    pub etcd_endpoints: Option<Vec<String>>,
    /// `datastore.etcd.prefix`.
    pub etcd_prefix: Option<String>,
    /// `datastore.subnet_file`.
    pub subnet_file: Option<PathBuf>,
    /// `health.listen`.
    pub health_listen: Option<String>,
    /// `datastore.kubernetes.kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `node.name` (`--node-name`, env `NODE_NAME` as in flannel's DaemonSet).
    pub node_name: Option<String>,
    /// `network.ip_masq` (`--ip-masq`, as flannel's flag).
    pub ip_masq: Option<bool>,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[node]`.
    pub node: NodeSection,
    /// `[network]`.
    pub network: NetworkSection,
    /// `[backend]`.
    pub backend: BackendSection,
    /// `[dataplane]`.
    pub dataplane: DataplaneSection,
    /// `[datastore]`.
    pub datastore: DatastoreSection,
    /// `[health]`.
    pub health: HealthSection,
    /// `[cni]`.
    pub cni: CniSection,
    /// `[[peers]]` (static datastore).
    pub peers: Vec<PeerConfig>,
}

/// The VTEP MAC of node `node_name`: a locally administered unicast MAC derived from a hash of the
/// name.
///
/// Peers cache a node's VTEP MAC in permanent neighbour and FDB entries; when the MAC changes on
/// restart they keep sending to the old one until they re-sync (flannel issue #1795). Flannel keeps
/// its MAC stable by reading it back from the lease it published; Weft derives it from the node name
/// so it is stable without any state, and so a static peer list can leave `vtep_mac` out. The hash
/// (FNV-1a 64 over `"weft-vtep:" + name`, then the splitmix64 finaliser) is part of the wire
/// contract: changing it changes every node's MAC.
pub fn vtep_mac_for(node_name: &str) -> EthernetAddress {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"weft-vtep:".iter().chain(node_name.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    let b = h.to_be_bytes();
    // Locally administered (bit 1 set), unicast (bit 0 clear).
    EthernetAddress([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
}

fn parse_ip(field: &str, s: &str) -> Result<Ipv4Addr, ConfigError> {
    let ip: Ipv4Addr = s
        .trim()
        .parse()
        .map_err(|_| invalid(field, format!("{s:?} is not an IPv4 address")))?;
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback() {
        return Err(invalid(
            field,
            format!("{ip} cannot be a node address; use the node's underlay unicast address"),
        ));
    }
    Ok(ip)
}

fn parse_net(field: &str, s: &str) -> Result<Ipv4Net, ConfigError> {
    let net: Ipv4Net = s.trim().parse().map_err(|_| {
        invalid(
            field,
            format!("{s:?} is not an IPv4 CIDR like 10.244.1.0/24"),
        )
    })?;
    if net != net.trunc() {
        return Err(invalid(
            field,
            format!("{net} has host bits set; did you mean {}?", net.trunc()),
        ));
    }
    Ok(net)
}

fn parse_subnet(field: &str, s: &str, network: Ipv4Net) -> Result<Ipv4Net, ConfigError> {
    let subnet = parse_net(field, s)?;
    if subnet.prefix_len() > MAX_SUBNET_PREFIX {
        return Err(invalid(
            field,
            format!(
                "{subnet} is too small: a node subnet needs at least a /{MAX_SUBNET_PREFIX} (the tunnel's .0, the bridge's .1 and a pod)"
            ),
        ));
    }
    if !network.contains(&subnet) || subnet.prefix_len() <= network.prefix_len() {
        return Err(ConfigError::NotInside {
            field: field.to_string(),
            subnet,
            network,
        });
    }
    Ok(subnet)
}

fn parse_mac(field: &str, s: &str) -> Result<EthernetAddress, ConfigError> {
    let mac: EthernetAddress = s
        .trim()
        .parse()
        .map_err(|e| invalid(field, format!("{e}")))?;
    if mac.is_multicast() || mac == EthernetAddress([0; 6]) {
        return Err(invalid(
            field,
            format!("{mac} is not a unicast MAC; a VTEP MAC must be unicast and non-zero"),
        ));
    }
    Ok(mac)
}

fn in_range(field: &str, v: i64, lo: i64, hi: i64) -> Result<i64, ConfigError> {
    if v < lo || v > hi {
        return Err(invalid(field, format!("{v} is out of range {lo}..={hi}")));
    }
    Ok(v)
}

fn validate_ifname(field: &str, name: &str) -> Result<(), ConfigError> {
    // IFNAMSIZ is 16 with the NUL; the kernel's dev_valid_name rejects '/', ':' and whitespace.
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(invalid(
            field,
            format!("{name:?} is not a valid interface name: 1-15 bytes, no '/', ':' or spaces"),
        ));
    }
    Ok(())
}

fn validate_datastore(raw: &RawDatastore) -> Result<DatastoreSection, ConfigError> {
    let kind: DatastoreKind = raw
        .kind
        .as_deref()
        .unwrap_or("static")
        .trim()
        .parse()
        .map_err(|e: String| invalid("datastore.type", e))?;
    let subnet_file = raw
        .subnet_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::subnet_env::DEFAULT_PATH));
    if subnet_file.as_os_str().is_empty() || subnet_file.file_name().is_none() {
        return Err(invalid(
            "datastore.subnet_file",
            format!("{} is not a file path", subnet_file.display()),
        ));
    }
    let e = &raw.etcd;
    let endpoints = e
        .endpoints
        .clone()
        .unwrap_or_else(|| vec![DEFAULT_ETCD_ENDPOINT.to_string()]);
    if endpoints.is_empty() {
        return Err(invalid(
            "datastore.etcd.endpoints",
            "empty; give at least one URL like \"http://127.0.0.1:2379\"",
        ));
    }
    for (i, ep) in endpoints.iter().enumerate() {
        let rest = ep
            .strip_prefix("http://")
            .or_else(|| ep.strip_prefix("https://"))
            .ok_or_else(|| {
                invalid(
                    format!("datastore.etcd.endpoints[{i}]"),
                    format!("{ep:?} is not an http:// or https:// URL"),
                )
            })?;
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(invalid(
                format!("datastore.etcd.endpoints[{i}]"),
                format!("{ep:?} has no host:port"),
            ));
        }
    }
    let prefix = e
        .prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_ETCD_PREFIX.to_string());
    if !prefix.starts_with('/') {
        return Err(invalid(
            "datastore.etcd.prefix",
            format!("{prefix:?} must start with '/' like flannel's \"/coreos.com/network\""),
        ));
    }
    if e.cert_file.is_some() != e.key_file.is_some() {
        return Err(invalid(
            "datastore.etcd",
            "cert_file and key_file go together; give both or neither",
        ));
    }
    if e.password.is_some() && e.username.is_none() {
        return Err(invalid(
            "datastore.etcd.username",
            "missing; a password needs a user",
        ));
    }
    let lease_ttl = in_range(
        "datastore.etcd.lease_ttl",
        e.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL as i64),
        2,
        10 * 365 * 24 * 3600,
    )? as u64;
    let renew_margin = in_range(
        "datastore.etcd.renew_margin",
        e.renew_margin
            .unwrap_or(DEFAULT_RENEW_MARGIN.min(lease_ttl / 2) as i64),
        1,
        lease_ttl as i64 - 1,
    )? as u64;
    Ok(DatastoreSection {
        kind,
        subnet_file,
        etcd: EtcdSection {
            endpoints,
            prefix: prefix.trim_end_matches('/').to_string(),
            ca_file: e.ca_file.clone(),
            cert_file: e.cert_file.clone(),
            key_file: e.key_file.clone(),
            username: e.username.clone(),
            password: e.password.clone(),
            lease_ttl,
            renew_margin,
        },
        kubernetes: KubeSection {
            kubeconfig: raw.kubernetes.kubeconfig.clone(),
            net_conf: raw.kubernetes.net_conf.clone(),
        },
    })
}

impl Overrides {
    fn apply(&self, mut raw: RawConfig) -> RawConfig {
        if let Some(v) = &self.datastore {
            raw.datastore.kind = Some(v.clone());
        }
        if let Some(v) = &self.etcd_endpoints {
            raw.datastore.etcd.endpoints = Some(v.clone());
        }
        if let Some(v) = &self.etcd_prefix {
            raw.datastore.etcd.prefix = Some(v.clone());
        }
        if let Some(v) = &self.subnet_file {
            raw.datastore.subnet_file = Some(v.clone());
        }
        if let Some(v) = &self.health_listen {
            raw.health.listen = Some(v.clone());
        }
        if let Some(v) = &self.kubeconfig {
            raw.datastore.kubernetes.kubeconfig = Some(v.clone());
        }
        if let Some(v) = &self.node_name {
            raw.node.name = v.clone();
        }
        if let Some(v) = self.ip_masq {
            raw.network.ip_masq = Some(v);
        }
        raw
    }
}

fn validate_node_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    Ok(())
}

/// Which datastore a node runs with (`[datastore] type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatastoreKind {
    /// Peers listed in the config file.
    Static,
    /// flannel's etcd v3 layout.
    Etcd,
    /// flannel's Kubernetes (`--kube-subnet-mgr`) layout.
    Kubernetes,
}

impl DatastoreKind {
    /// The name used in the config file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DatastoreKind::Static => "static",
            DatastoreKind::Etcd => "etcd",
            DatastoreKind::Kubernetes => "kubernetes",
        }
    }
}

impl std::str::FromStr for DatastoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "static" => Ok(DatastoreKind::Static),
            "etcd" => Ok(DatastoreKind::Etcd),
            "kubernetes" | "kube" => Ok(DatastoreKind::Kubernetes),
            other => Err(format!(
                "{other:?} is not a datastore; use \"static\", \"etcd\" or \"kubernetes\""
            )),
        }
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        Self::load_with(path, &Overrides::default())
    }

    /// Reads the file at `path`, applies command-line `overrides`, and validates the result.
    pub fn load_with(path: impl AsRef<Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let raw: RawConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: Some(path.to_path_buf()),
            field: field_at(&text, &source),
            source: Box::new(source),
        })?;
        Self::validate(overrides.apply(raw))
    }

    /// Parses and validates a configuration from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: None,
            field: field_at(text, &source),
            source: Box::new(source),
        })?;
        Self::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        // [network] first: subnets are checked against it.
        let network = parse_net(
            "network.network",
            raw.network.network.as_deref().unwrap_or(DEFAULT_NETWORK),
        )?;
        if network.prefix_len() > 28 {
            return Err(invalid(
                "network.network",
                format!("{network} is too small for a cluster; flannel rejects networks longer than /28"),
            ));
        }

        // [node]
        if raw.node.name.trim().is_empty() {
            return Err(invalid(
                "node.name",
                "missing or empty; set it in the file or with --node-name (env NODE_NAME)",
            ));
        }
        let public_address = match (&raw.node.public_ip, &raw.node.autodetect) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "node",
                    "set either public_ip or autodetect, not both",
                ))
            }
            (Some(ip), None) => PublicAddress::Static(parse_ip("node.public_ip", ip)?),
            (None, method) => PublicAddress::Autodetect(
                method
                    .as_deref()
                    .unwrap_or("first-found")
                    .parse()
                    .map_err(|e| invalid("node.autodetect", format!("{e}")))?,
            ),
        };
        // [datastore] early: it decides whether node.subnet and [[peers]] belong here.
        let datastore = validate_datastore(&raw.datastore)?;
        let subnet = match (datastore.kind, &raw.node.subnet) {
            (DatastoreKind::Static, Some(s)) => Some(parse_subnet("node.subnet", s, network)?),
            (DatastoreKind::Static, None) => {
                return Err(invalid(
                    "node.subnet",
                    "missing; the static datastore needs this node's pod subnet, e.g. \"10.244.1.0/24\"",
                ))
            }
            (kind, Some(_)) => {
                return Err(invalid(
                    "node.subnet",
                    format!(
                        "set only with the static datastore; with {} the subnet comes from {}",
                        kind.name(),
                        if kind == DatastoreKind::Etcd {
                            "the node's lease"
                        } else {
                            "the Node's spec.podCIDR"
                        }
                    ),
                ))
            }
            (_, None) => None,
        };
        if datastore.kind != DatastoreKind::Static && !raw.peers.is_empty() {
            return Err(invalid(
                "peers",
                format!(
                    "[[peers]] are the static datastore's; with {} the peers come from the datastore",
                    datastore.kind.name()
                ),
            ));
        }
        let health = HealthSection {
            listen: match raw.health.listen.as_deref().map(str::trim) {
                None => Some(DEFAULT_HEALTH_LISTEN.parse().expect("valid default")),
                Some("off") | Some("") => None,
                Some(s) => Some(s.parse().map_err(|_| {
                    invalid(
                        "health.listen",
                        format!("{s:?} is not an address:port like \"0.0.0.0:9472\" (or \"off\")"),
                    )
                })?),
            },
        };
        let node = NodeSection {
            name: raw.node.name.trim().to_string(),
            public_address,
            subnet,
        };

        // [backend]
        let kind_name = raw.backend.kind.as_deref().unwrap_or("vxlan");
        let kind = BackendKind::from_name(kind_name)
            .ok_or_else(|| ConfigError::UnsupportedBackend(kind_name.to_string()))?;
        let encapsulation = match (kind, raw.backend.encapsulation.as_deref()) {
            (BackendKind::HostGw, None | Some("Never")) => Encapsulation::Never,
            (BackendKind::HostGw, Some(other)) => {
                return Err(invalid(
                    "backend.encapsulation",
                    format!("{other:?} with type \"host-gw\", which never encapsulates; leave it out or use a tunnel type (\"vxlan\", \"ipip\")"),
                ))
            }
            (_, None) => Encapsulation::Always,
            (_, Some(name)) => Encapsulation::from_name(name).ok_or_else(|| {
                invalid(
                    "backend.encapsulation",
                    format!("{name:?} is not one of \"Always\", \"CrossSubnet\", \"Never\" (Calico's names, case as written)"),
                )
            })?,
        };
        let vni = in_range(
            "backend.vni",
            raw.backend.vni.unwrap_or(i64::from(DEFAULT_VNI)),
            0,
            i64::from(MAX_VNI),
        )? as u32;
        let port = in_range(
            "backend.port",
            raw.backend.port.unwrap_or(i64::from(DEFAULT_PORT)),
            1,
            65535,
        )? as u16;
        let mtu = match &raw.backend.mtu {
            None => Mtu::Auto,
            Some(toml::Value::String(s)) if s == "auto" => Mtu::Auto,
            Some(toml::Value::Integer(n)) => {
                Mtu::Fixed(
                    in_range("backend.mtu", *n, i64::from(MIN_MTU), i64::from(MAX_MTU))? as u32,
                )
            }
            Some(other) => {
                return Err(invalid(
                    "backend.mtu",
                    format!("{other} is neither \"auto\" nor a number {MIN_MTU}..={MAX_MTU}"),
                ))
            }
        };
        let backend = BackendSection {
            kind,
            encapsulation,
            vni,
            port,
            mtu,
        };

        // [dataplane]
        let workers = in_range(
            "dataplane.workers",
            raw.dataplane.workers.unwrap_or(0),
            0,
            1024,
        )? as usize;
        let bridge = raw
            .dataplane
            .bridge
            .clone()
            .unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        validate_ifname("dataplane.bridge", &bridge)?;
        if bridge == crate::netlink::tun_name(vni) {
            return Err(invalid(
                "dataplane.bridge",
                format!("{bridge:?} is the name of the TUN device; pick another"),
            ));
        }
        let control_socket = raw
            .dataplane
            .control_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET));
        if !control_socket.is_absolute() {
            return Err(invalid(
                "dataplane.control_socket",
                format!("{} is not an absolute path", control_socket.display()),
            ));
        }
        let busy_poll_us = match raw.dataplane.busy_poll_us {
            None => DEFAULT_BUSY_POLL_US,
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|&n| n <= 100_000)
                .ok_or_else(|| {
                    invalid(
                        "dataplane.busy_poll_us",
                        format!("{n} is not a number of microseconds in 0..=100000"),
                    )
                })?,
        };
        let dataplane = DataplaneSection {
            workers,
            bridge,
            control_socket,
            offload: raw.dataplane.offload.unwrap_or(true),
            gso: raw.dataplane.gso.unwrap_or(true),
            gro: raw.dataplane.gro.unwrap_or(true),
            uso: raw.dataplane.uso.unwrap_or(true),
            busy_poll_us,
            pod_ports: match raw.dataplane.pod_ports.as_deref() {
                None | Some("bridge") => PodPortMode::Bridge,
                Some("switch") => PodPortMode::Switch,
                Some(v) => {
                    return Err(invalid(
                        "dataplane.pod_ports",
                        format!("{v:?} is not \"bridge\" or \"switch\""),
                    ))
                }
            },
        };

        // [cni]
        let absolute = |field: &str, path: PathBuf| {
            if path.is_absolute() {
                Ok(path)
            } else {
                Err(invalid(
                    field,
                    format!("{} is not an absolute path", path.display()),
                ))
            }
        };
        let cni = CniSection {
            enabled: raw.cni.enabled.unwrap_or(true),
            socket: absolute(
                "cni.socket",
                raw.cni
                    .socket
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_CNI_SOCKET)),
            )?,
            data_dir: absolute(
                "cni.data_dir",
                raw.cni
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            )?,
        };
        if cni.enabled && cni.socket == dataplane.control_socket {
            return Err(invalid(
                "cni.socket",
                format!(
                    "{} is also dataplane.control_socket; the two sockets need different paths",
                    cni.socket.display()
                ),
            ));
        }

        // [[peers]]
        let own_mac = vtep_mac_for(&node.name);
        let mut peers: Vec<PeerConfig> = Vec::with_capacity(raw.peers.len());
        for (i, p) in raw.peers.iter().enumerate() {
            let f = |name: &str| format!("peers[{i}].{name}");
            validate_node_name(&f("name"), &p.name)?;
            let name = p.name.trim().to_string();
            if name == node.name {
                return Err(ConfigError::Duplicate {
                    field: f("name"),
                    value: name,
                    other_field: "node.name".into(),
                });
            }
            if let Some(j) = peers.iter().position(|q| q.name == name) {
                return Err(ConfigError::Duplicate {
                    field: f("name"),
                    value: name,
                    other_field: format!("peers[{j}].name"),
                });
            }
            let public_ip = parse_ip(&f("public_ip"), &p.public_ip)?;
            let subnet = parse_subnet(&f("subnet"), &p.subnet, network)?;
            if let Some(own) = node.subnet {
                if subnet.contains(&own) || own.contains(&subnet) {
                    return Err(ConfigError::Overlap {
                        field: f("subnet"),
                        subnet,
                        other_field: "node.subnet".into(),
                        other: own,
                    });
                }
            }
            if let Some((j, q)) = peers
                .iter()
                .enumerate()
                .find(|(_, q)| q.subnet.contains(&subnet) || subnet.contains(&q.subnet))
            {
                return Err(ConfigError::Overlap {
                    field: f("subnet"),
                    subnet,
                    other_field: format!("peers[{j}].subnet"),
                    other: q.subnet,
                });
            }
            let vtep_mac = match &p.vtep_mac {
                Some(s) => parse_mac(&f("vtep_mac"), s)?,
                None => vtep_mac_for(&name),
            };
            if vtep_mac == own_mac {
                return Err(ConfigError::Duplicate {
                    field: f("vtep_mac"),
                    value: vtep_mac.to_string(),
                    other_field: "node (its derived VTEP MAC)".into(),
                });
            }
            if let Some(j) = peers.iter().position(|q| q.vtep_mac == vtep_mac) {
                return Err(ConfigError::Duplicate {
                    field: f("vtep_mac"),
                    value: vtep_mac.to_string(),
                    other_field: format!("peers[{j}].vtep_mac"),
                });
            }
            peers.push(PeerConfig {
                name,
                public_ip,
                subnet,
                vtep_mac,
            });
        }

        Ok(Config {
            node,
            network: NetworkSection {
                network,
                ip_masq: raw.network.ip_masq.unwrap_or(true),
                masq_backend: match raw.network.masq_backend.as_deref() {
                    None => crate::masq::BackendChoice::Auto,
                    Some(v) => crate::masq::BackendChoice::parse(v).ok_or_else(|| {
                        invalid(
                            "network.masq_backend",
                            format!("{v:?} is not one of \"auto\", \"iptables\", \"nftables\""),
                        )
                    })?,
                },
            },
            backend,
            dataplane,
            datastore,
            health,
            cni,
            peers,
        })
    }

    /// This node's VTEP MAC, [`vtep_mac_for`] its name.
    pub fn vtep_mac(&self) -> EthernetAddress {
        vtep_mac_for(&self.node.name)
    }

    /// The tunnel MTU for an underlay interface of MTU `underlay_mtu`: the fixed `backend.mtu`, or
    /// `underlay_mtu` minus the backend's overhead (50 vxlan, 20 ipip, 0 host-gw) when it is
    /// `auto`.
    pub fn tunnel_mtu(&self, underlay_mtu: u32) -> u32 {
        match self.backend.mtu {
            Mtu::Fixed(mtu) => mtu,
            Mtu::Auto => underlay_mtu.saturating_sub(self.backend.kind.overhead()),
        }
    }

    /// The effective configuration as TOML, every default filled in (for `--print-config` and
    /// logs). Parsing the result gives back an equal [`Config`]; peer VTEP MACs are written out.
    pub fn to_toml_string(&self) -> String {
        let (public_ip, autodetect) = match &self.node.public_address {
            PublicAddress::Static(ip) => (Some(ip.to_string()), None),
            PublicAddress::Autodetect(m) => (None, Some(m.to_string())),
        };
        let raw = RawConfig {
            node: RawNode {
                name: self.node.name.clone(),
                public_ip,
                autodetect,
                subnet: self.node.subnet.map(|s| s.to_string()),
            },
            network: RawNetwork {
                network: Some(self.network.network.to_string()),
                ip_masq: Some(self.network.ip_masq),
                masq_backend: Some(self.network.masq_backend.name().to_string()),
            },
            backend: RawBackend {
                kind: Some(self.backend.kind.name().to_string()),
                encapsulation: Some(self.backend.encapsulation.name().to_string()),
                vni: Some(i64::from(self.backend.vni)),
                port: Some(i64::from(self.backend.port)),
                mtu: Some(match self.backend.mtu {
                    Mtu::Auto => toml::Value::String("auto".into()),
                    Mtu::Fixed(n) => toml::Value::Integer(i64::from(n)),
                }),
            },
            dataplane: RawDataplane {
                workers: Some(self.dataplane.workers as i64),
                bridge: Some(self.dataplane.bridge.clone()),
                control_socket: Some(self.dataplane.control_socket.clone()),
                offload: Some(self.dataplane.offload),
                gso: Some(self.dataplane.gso),
                gro: Some(self.dataplane.gro),
                uso: Some(self.dataplane.uso),
                busy_poll_us: Some(i64::from(self.dataplane.busy_poll_us)),
                pod_ports: Some(self.dataplane.pod_ports.name().to_string()),
            },
            datastore: RawDatastore {
                kind: Some(self.datastore.kind.name().to_string()),
                subnet_file: Some(self.datastore.subnet_file.clone()),
                etcd: {
                    let e = &self.datastore.etcd;
                    RawEtcd {
                        endpoints: Some(e.endpoints.clone()),
                        prefix: Some(e.prefix.clone()),
                        ca_file: e.ca_file.clone(),
                        cert_file: e.cert_file.clone(),
                        key_file: e.key_file.clone(),
                        username: e.username.clone(),
                        password: e.password.clone(),
                        lease_ttl: Some(e.lease_ttl as i64),
                        renew_margin: Some(e.renew_margin as i64),
                    }
                },
                kubernetes: RawKube {
                    kubeconfig: self.datastore.kubernetes.kubeconfig.clone(),
                    net_conf: self.datastore.kubernetes.net_conf.clone(),
                },
            },
            health: RawHealth {
                listen: Some(
                    self.health
                        .listen
                        .map_or_else(|| "off".to_string(), |a| a.to_string()),
                ),
            },
            cni: RawCni {
                enabled: Some(self.cni.enabled),
                socket: Some(self.cni.socket.clone()),
                data_dir: Some(self.cni.data_dir.clone()),
            },
            peers: self
                .peers
                .iter()
                .map(|p| RawPeer {
                    name: p.name.clone(),
                    public_ip: p.public_ip.to_string(),
                    subnet: p.subnet.to_string(),
                    vtep_mac: Some(p.vtep_mac.to_string()),
                })
                .collect(),
        };
        // Serialising plain strings, integers and tables cannot fail; should a future field break
        // that, say so in the output rather than panic.
        toml::to_string_pretty(&raw).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_toml_string())
    }
}
