//! What `weftd show` reports: the node's tables and counters as plain views of a published
//! snapshot ([`tables_view`]), rendered as `ip route` / `ip neigh` / `bridge fdb` would
//! ([`ShowReply::render`]) or serialised as JSON. The control socket ([`ctl`](crate::ctl)) carries
//! them; [`status`](crate::status) builds its health reply on them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use dataplane::drop::Counters;
use dataplane::fdb::FdbEntry;
use dataplane::fib::NextHop;
use dataplane::snapshot::Snapshot;
use dataplane::time::Instant;
use serde::{Deserialize, Serialize};

/// The node's identity and tunnel parameters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// Underlay address.
    pub public_ip: Ipv4Addr,
    /// This node's pod subnet.
    pub subnet: String,
    /// Cluster network.
    pub network: String,
    /// VTEP MAC.
    pub vtep_mac: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// VXLAN UDP port.
    pub port: u16,
    /// The TUN device standing in for `flannel.<vni>`.
    pub tun: String,
    /// Its MTU.
    pub tun_mtu: u16,
    /// Underlay MTU.
    pub underlay_mtu: u16,
    /// Worker threads.
    pub workers: usize,
}

/// One FIB route, as `ip route` would print it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteView {
    /// Destination prefix.
    pub dst: String,
    /// Gateway, if any.
    pub via: Option<Ipv4Addr>,
    /// Device name.
    pub dev: String,
    /// `onlink` flag (the flannel VXLAN route form).
    pub onlink: bool,
    /// `local`, `vxlan`, `ipip`, `direct` or `blackhole`.
    pub kind: String,
}

/// One neighbour entry, as `ip neigh` would print it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NeighView {
    /// Address.
    pub ip: Ipv4Addr,
    /// Device name.
    pub dev: String,
    /// Link-layer address.
    pub lladdr: String,
    /// PERMANENT, REACHABLE, STALE.
    pub state: String,
}

/// One FDB entry, as `bridge fdb` would print it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FdbView {
    /// MAC address.
    pub mac: String,
    /// Device name.
    pub dev: String,
    /// Remote VTEP, for remote entries.
    pub dst: Option<Ipv4Addr>,
}

/// Packet and byte counts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct TrafficView {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Counters merged over all workers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CountersView {
    /// From local ports (TUN).
    pub rx_local: TrafficView,
    /// From the underlay.
    pub rx_underlay: TrafficView,
    /// To local ports.
    pub tx_local: TrafficView,
    /// Into the underlay.
    pub tx_underlay: TrafficView,
    /// ICMP errors and ARP replies generated.
    pub replies: u64,
    /// TSO super-frames from the TUN sent gathered (no userspace copy of their payload).
    #[serde(default)]
    pub gathered_sends: u64,
    /// Merged UDP GRO datagrams written to the TUN gathered (no userspace copy).
    #[serde(default)]
    pub gathered_writes: u64,
    /// Drops by reason (every reason listed, zeros included, so scripts can rely on the keys).
    pub drops: BTreeMap<String, u64>,
}

impl From<&Counters> for CountersView {
    fn from(c: &Counters) -> Self {
        let t = |t: dataplane::drop::Traffic| TrafficView {
            packets: t.packets,
            bytes: t.bytes,
        };
        CountersView {
            rx_local: t(c.rx_local),
            rx_underlay: t(c.rx_underlay),
            tx_local: t(c.tx_local),
            tx_underlay: t(c.tx_underlay),
            replies: c.replies,
            gathered_sends: c.gathered_sends,
            gathered_writes: c.gathered_writes,
            drops: dataplane::drop::DropReason::ALL
                .iter()
                .map(|r| (r.label().to_string(), c.drops(*r)))
                .collect(),
        }
    }
}

/// The answer to [`Request::Show`](crate::ctl::Request::Show).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShowReply {
    /// Node facts.
    pub node: NodeView,
    /// Routes.
    pub routes: Vec<RouteView>,
    /// Neighbours.
    pub neighbors: Vec<NeighView>,
    /// FDB.
    pub fdb: Vec<FdbView>,
    /// Counters.
    pub counters: CountersView,
}

/// Builds the [`ShowReply`] views of a snapshot; `dev` names the TUN device, `port_dev` a pod
/// port's device (its host veth, switch mode) by port id.
pub fn tables_view(
    snap: &Snapshot,
    dev: &str,
    port_dev: impl Fn(dataplane::PortId) -> Option<String>,
    now: Instant,
) -> (Vec<RouteView>, Vec<NeighView>, Vec<FdbView>) {
    let dev_of = |port: Option<dataplane::PortId>| {
        port.and_then(&port_dev).unwrap_or_else(|| dev.to_string())
    };
    let routes = snap
        .fib
        .routes()
        .iter()
        .map(|r| {
            let (via, onlink, kind, port) = match r.next_hop {
                NextHop::Local { port } => (None, false, "local", Some(port)),
                NextHop::Vxlan { gateway } => (Some(gateway), true, "vxlan", None),
                NextHop::Ipip { remote } => (Some(remote), true, "ipip", None),
                NextHop::Direct { gateway } => (Some(gateway), false, "direct", None),
                NextHop::Blackhole => (None, false, "blackhole", None),
            };
            RouteView {
                dst: r.prefix.to_string(),
                via,
                dev: dev_of(port),
                onlink,
                kind: kind.to_string(),
            }
        })
        .collect();
    let mut neighbors: Vec<NeighView> = snap
        .neigh
        .iter()
        .map(|(ip, n)| NeighView {
            ip,
            dev: dev_of(n.port),
            lladdr: n.mac.to_string(),
            state: "PERMANENT".to_string(),
        })
        .collect();
    neighbors.extend(snap.learnt.entries(now).into_iter().map(|e| NeighView {
        ip: e.ip,
        dev: dev_of(Some(e.port)),
        lladdr: e.mac.to_string(),
        state: e.state.to_string(),
    }));
    neighbors.sort_by_key(|n| n.ip);
    let fdb = snap
        .fdb
        .iter()
        .map(|(mac, e)| FdbView {
            mac: mac.to_string(),
            dev: dev.to_string(),
            dst: match e {
                FdbEntry::Remote { vtep } => Some(vtep),
                FdbEntry::Local { .. } => None,
            },
        })
        .collect();
    (routes, neighbors, fdb)
}

impl ShowReply {
    /// Renders the reply the way `ip route`, `ip neigh` and `bridge fdb` print, then the counters.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let n = &self.node;
        let _ = writeln!(
            s,
            "node {} public-ip {} subnet {} network {} vtep {} vni {} port {} dev {} mtu {} (underlay {}) workers {}",
            n.name, n.public_ip, n.subnet, n.network, n.vtep_mac, n.vni, n.port, n.tun, n.tun_mtu, n.underlay_mtu, n.workers
        );
        let _ = writeln!(s, "# ip route (Weft FIB)");
        for r in &self.routes {
            match (r.kind.as_str(), r.via) {
                ("blackhole", _) => {
                    let _ = writeln!(s, "blackhole {}", r.dst);
                }
                (_, Some(via)) => {
                    let _ = writeln!(
                        s,
                        "{} via {} dev {}{}",
                        r.dst,
                        via,
                        r.dev,
                        if r.onlink { " onlink" } else { "" }
                    );
                }
                (_, None) => {
                    let _ = writeln!(s, "{} dev {}", r.dst, r.dev);
                }
            }
        }
        let _ = writeln!(s, "# ip neigh (Weft neighbours)");
        for e in &self.neighbors {
            let _ = writeln!(s, "{} dev {} lladdr {} {}", e.ip, e.dev, e.lladdr, e.state);
        }
        let _ = writeln!(s, "# bridge fdb (Weft FDB)");
        for e in &self.fdb {
            match e.dst {
                Some(dst) => {
                    let _ = writeln!(s, "{} dev {} dst {} self permanent", e.mac, e.dev, dst);
                }
                None => {
                    let _ = writeln!(s, "{} dev {} self permanent", e.mac, e.dev);
                }
            }
        }
        let c = &self.counters;
        let _ = writeln!(s, "# counters");
        let _ = writeln!(
            s,
            "rx local {} pkts {} bytes | rx underlay {} pkts {} bytes | tx local {} pkts {} bytes | tx underlay {} pkts {} bytes | replies {} | gathered sends {} writes {}",
            c.rx_local.packets, c.rx_local.bytes, c.rx_underlay.packets, c.rx_underlay.bytes,
            c.tx_local.packets, c.tx_local.bytes, c.tx_underlay.packets, c.tx_underlay.bytes, c.replies,
            c.gathered_sends, c.gathered_writes
        );
        let drops: Vec<String> = c
            .drops
            .iter()
            .filter(|(_, &v)| v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if drops.is_empty() {
            let _ = writeln!(s, "drops: none");
        } else {
            let _ = writeln!(s, "drops: {}", drops.join(" "));
        }
        s
    }
}
