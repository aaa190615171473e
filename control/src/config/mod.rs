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
//! cpu_wakeup_latency_us = 0    # default unset: while running, hold a PM QoS CPU latency request
//!                              # (/dev/cpu_dma_latency; system-wide) so woken workers run sooner
//! pod_ports = "switch"         # default: pod veths are ports of Weft's own switch (AF_PACKET),
//!                              # no bridge; "bridge": pods on the kernel bridge
//! neigh_reachable_ms = 30000   # default: a learnt floating address is REACHABLE this long...
//! neigh_stale_ms = 60000       # default: ...then STALE this long more, then gone
//!
//! [policy]
//! source = "kubernetes"        # default "none" ("dir" when dir is set): NetworkPolicy (switch mode)
//!                              # from the API server's Pods, Namespaces and NetworkPolicies...
//! dir = "/etc/weft/policies"   # ...or from a directory of manifests, re-read on change
//! established = "recheck"      # default: a policy change cuts connections it denies; "keep"
//! conntrack_max = 262144       # default: flows tracked at most
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
//!
//! One module per section holds its raw form, its validated type, its `validate` and the way
//! back to TOML (`From<&Section> for RawSection`): [`node`](NodeSection), `network`, `backend`,
//! `dataplane`, `datastore`, `health`, `cni`, `peers`. [`Config::from_toml_str`] calls them in
//! turn, passing each what it checks against (the network for subnets, the datastore kind for
//! `node.subnet` and `[[peers]]`, the VNI for the bridge name, the control socket for the CNI
//! socket).

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ::dataplane::wire::EthernetAddress;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

mod backend;
mod cni;
mod dataplane;
mod datastore;
mod health;
mod network;
mod node;
mod peers;
mod policy;

use backend::RawBackend;
pub use backend::{BackendKind, BackendSection, Encapsulation, Mtu};
pub use cni::CniSection;
use cni::RawCni;
use dataplane::RawDataplane;
pub use dataplane::{DataplaneSection, PodPortMode, DEFAULT_BUSY_POLL_US};
use datastore::RawDatastore;
pub use datastore::{DatastoreKind, DatastoreSection, EtcdSection, KubeSection};
pub use health::HealthSection;
use health::RawHealth;
pub use network::NetworkSection;
use network::RawNetwork;
use node::RawNode;
pub use node::{NodeSection, PublicAddress};
pub use peers::PeerConfig;
use peers::RawPeer;
use policy::RawPolicy;
pub use policy::{PolicySection, PolicySource, DEFAULT_CONNTRACK_MAX};

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

// ---- raw (serde) form: what the file says, before validation; each section's is beside it.

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
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    peers: Vec<RawPeer>,
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
    /// `[policy]`.
    pub policy: PolicySection,
    /// `[[peers]]` (static datastore).
    pub peers: Vec<PeerConfig>,
}

/// FNV-1a 64 over the concatenation of `parts`, then the splitmix64 finaliser: a hash that is
/// the same in every build and process, for names derived from names (VTEP MACs, pod veths).
/// Changing it changes every node's VTEP MAC and every pod's host veth name.
pub(crate) fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h
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
    let b = stable_hash(&[b"weft-vtep:", node_name.as_bytes()]).to_be_bytes();
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
        // Section by section, each beside its type; what one section's checks need of another's
        // (the network for subnets, the datastore for node.subnet and [[peers]]) is passed in.
        let network = network::validate(&raw.network)?;
        let datastore = datastore::validate(&raw.datastore)?;
        let node = node::validate(&raw.node, network.network, datastore.kind)?;
        let health = health::validate(&raw.health)?;
        let backend = backend::validate(&raw.backend)?;
        let dataplane = dataplane::validate(&raw.dataplane, backend.vni)?;
        let cni = cni::validate(&raw.cni, &dataplane.control_socket)?;
        let peers = peers::validate(&raw.peers, &node, network.network, datastore.kind)?;
        let policy = policy::validate(&raw.policy)?;
        if policy.source != PolicySource::None && dataplane.pod_ports == PodPortMode::Bridge {
            return Err(invalid(
                match policy.source {
                    PolicySource::Dir(_) => "policy.dir",
                    _ => "policy.source",
                },
                "NetworkPolicy needs switch mode ([dataplane] pod_ports = \"switch\"): on the kernel bridge, traffic between a node's pods never passes through Weft",
            ));
        }
        Ok(Config {
            policy,
            node,
            network,
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
        let raw = RawConfig {
            node: RawNode::from(&self.node),
            network: RawNetwork::from(&self.network),
            backend: RawBackend::from(&self.backend),
            dataplane: RawDataplane::from(&self.dataplane),
            datastore: RawDatastore::from(&self.datastore),
            health: RawHealth::from(&self.health),
            cni: RawCni::from(&self.cni),
            policy: RawPolicy::from(&self.policy),
            peers: self.peers.iter().map(RawPeer::from).collect(),
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
