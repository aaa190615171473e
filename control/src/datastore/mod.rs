//! Where a node's subnet and its peers come from, and how they become dataplane tables.
//!
//! Three datastores feed one control loop: the static file ([`static_peers`]), etcd v3 in
//! flannel's layout ([`etcd`]) and the Kubernetes Node API in flannel's `--kube-subnet-mgr`
//! layout ([`kube`]). Each speaks its own protocol and hands the loop datastore-neutral
//! [`Lease`]s; [`PeerSync`] keeps the current set and publishes a new table snapshot whenever the
//! peers it programs change. The dataplane never sees an etcd or Kubernetes type: it sees
//! [`Tables`] built by the pure function [`reconcile`].
//!
//! Formats shared with flannel (lease keys and values, the network config, node annotations) live
//! in [`flannel`], byte for byte as flannel writes them, so a cluster can mix flannel and Weft
//! nodes.

pub mod etcd;
pub mod flannel;
pub mod kube;
pub mod static_peers;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use dataplane::fib::NextHop;
use dataplane::neigh::{Aging, LearntNeighbors};
use dataplane::snapshot::{
    NodeConfig, PodAddr, Port, PortKind, SnapshotCell, SourcePrefixes, Tables,
};
use dataplane::wire::EthernetAddress;
use ipnet::Ipv4Net;

pub use crate::config::DatastoreKind;
use crate::config::{BackendKind, Encapsulation};
use crate::metrics::Metrics;

/// flannel's `BackendType` of a VXLAN node.
pub const BACKEND_VXLAN: &str = "vxlan";

/// The backend a node runs with, as the datastore's network config (etcd's `<prefix>/config`,
/// Kubernetes' net-conf.json) or, without one, the config file's `[backend]` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendChoice {
    /// vxlan, ipip or host-gw.
    pub kind: BackendKind,
    /// When to encapsulate.
    pub encapsulation: Encapsulation,
    /// The VXLAN VNI.
    pub vni: u32,
    /// The VXLAN UDP port.
    pub port: u16,
}

impl BackendChoice {
    /// The config file's `[backend]`.
    pub fn of_config(cfg: &crate::config::Config) -> Self {
        BackendChoice {
            kind: cfg.backend.kind,
            encapsulation: cfg.backend.encapsulation,
            vni: cfg.backend.vni,
            port: cfg.backend.port,
        }
    }

    /// flannel's network config `Backend`: `DirectRouting: true` is `CrossSubnet`; host-gw never
    /// encapsulates.
    pub fn of_flannel(b: &flannel::BackendConfig) -> Self {
        let encapsulation = match (b.kind, b.direct_routing) {
            (BackendKind::HostGw, _) => Encapsulation::Never,
            (_, true) => Encapsulation::CrossSubnet,
            (_, false) => Encapsulation::Always,
        };
        BackendChoice {
            kind: b.kind,
            encapsulation,
            vni: b.vni,
            port: b.port,
        }
    }
}

/// One node's claim on a subnet, as every datastore describes it (flannel's `Lease`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The node's pod subnet.
    pub subnet: Ipv4Net,
    /// The node's underlay address (flannel's `PublicIP`).
    pub public_ip: Ipv4Addr,
    /// The backend the node runs (`vxlan`, `host-gw`, ...).
    pub backend_type: String,
    /// The node's VXLAN VNI, when its backend data carries one.
    pub vni: Option<u32>,
    /// The node's VTEP MAC, when its backend data carries one.
    pub vtep_mac: Option<EthernetAddress>,
    /// When the lease runs out; `None` for a reservation or a datastore without expiry.
    pub expiration: Option<SystemTime>,
}

/// A remote node as this node reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// The peer's pod subnet.
    pub subnet: Ipv4Net,
    /// Its underlay address.
    pub public_ip: Ipv4Addr,
    /// How its pods are reached.
    pub via: PeerRoute,
}

/// How a peer's pods are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerRoute {
    /// Through Weft in VXLAN: flannel's neighbour, FDB entry and route, with the peer's VTEP MAC.
    Vxlan(EthernetAddress),
    /// Through Weft in IP-in-IP to its public IP.
    Ipip,
    /// Natively: a kernel route `<subnet> via <public IP>` on the underlay interface (host-gw,
    /// and same-subnet peers under `CrossSubnet`). Not in Weft's tables.
    Direct,
}

impl Peer {
    /// The kernel route a direct peer needs: `(subnet, gateway)`.
    pub fn direct_route(&self) -> Option<(Ipv4Net, Ipv4Addr)> {
        (self.via == PeerRoute::Direct).then_some((self.subnet, self.public_ip))
    }
}

/// What this node is, for [`reconcile`]: its own subnet and tunnel parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnNode {
    /// Our pod subnet (routed to the TUN).
    pub subnet: Ipv4Net,
    /// Our underlay address.
    pub public_ip: Ipv4Addr,
    /// Our VTEP MAC.
    pub vtep_mac: EthernetAddress,
    /// Our VNI.
    pub vni: u32,
    /// The VXLAN UDP port.
    pub vxlan_port: u16,
    /// The underlay MTU.
    pub underlay_mtu: u16,
    /// The TUN's MTU.
    pub tun_mtu: u16,
    /// Our backend.
    pub backend: BackendKind,
    /// When we encapsulate.
    pub encapsulation: Encapsulation,
    /// The underlay interface's subnet (our public IP with its prefix): the peers we can route
    /// to directly.
    pub underlay: Ipv4Net,
}

/// The TUN device's port id in the tables.
pub const TUN_PORT: dataplane::PortId = dataplane::PortId(0);

/// Why a lease is not programmed as a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// It is our own lease.
    Own,
    /// It runs another backend than ours (flannel programs only leases of its own backend).
    Backend,
    /// It must be routed directly (host-gw, `Never`, or `CrossSubnet` treating it as local) but
    /// its public IP is not on our underlay subnet: no route, rather than a black hole.
    NotAdjacent,
    /// Its backend data carries no VTEP MAC.
    NoVtepMac,
    /// Its subnet overlaps ours.
    OverlapsOwn,
}

/// The peer a lease programs, or why it programs none.
pub fn peer_of(own: &OwnNode, lease: &Lease) -> Result<Peer, Skip> {
    if lease.subnet == own.subnet {
        return Err(Skip::Own);
    }
    if lease.subnet.contains(&own.subnet) || own.subnet.contains(&lease.subnet) {
        return Err(Skip::OverlapsOwn);
    }
    if lease.backend_type != own.backend.name() {
        return Err(Skip::Backend);
    }
    let adjacent = own.underlay.contains(&lease.public_ip);
    let direct = match own.encapsulation {
        Encapsulation::Always => own.backend == BackendKind::HostGw,
        Encapsulation::CrossSubnet => adjacent || own.backend == BackendKind::HostGw,
        Encapsulation::Never => true,
    };
    let via = if direct {
        if !adjacent {
            return Err(Skip::NotAdjacent);
        }
        PeerRoute::Direct
    } else {
        match own.backend {
            BackendKind::Vxlan => PeerRoute::Vxlan(lease.vtep_mac.ok_or(Skip::NoVtepMac)?),
            BackendKind::Ipip => PeerRoute::Ipip,
            BackendKind::HostGw => PeerRoute::Direct,
        }
    };
    Ok(Peer {
        subnet: lease.subnet,
        public_ip: lease.public_ip,
        via,
    })
}

/// The peers a set of leases programs, sorted by subnet: the value [`PeerSync`] compares to decide
/// whether the tables changed.
pub fn peers_of<'a>(own: &OwnNode, leases: impl IntoIterator<Item = &'a Lease>) -> Vec<Peer> {
    let mut peers: Vec<Peer> = leases
        .into_iter()
        .filter_map(|l| peer_of(own, l).ok())
        .collect();
    peers.sort();
    peers
}

/// The leases refused because they must be routed directly but are not on our underlay subnet
/// ([`Skip::NotAdjacent`]), as `(subnet, public IP)`, sorted.
pub fn not_adjacent_of<'a>(
    own: &OwnNode,
    leases: impl IntoIterator<Item = &'a Lease>,
) -> Vec<(Ipv4Net, Ipv4Addr)> {
    let mut v: Vec<_> = leases
        .into_iter()
        .filter(|l| peer_of(own, l) == Err(Skip::NotAdjacent))
        .map(|l| (l.subnet, l.public_ip))
        .collect();
    v.sort();
    v
}

/// The kernel routes directly routed peers need, `(subnet, via)`, sorted.
pub fn direct_routes_of(peers: &[Peer]) -> Vec<(Ipv4Net, Ipv4Addr)> {
    peers.iter().filter_map(Peer::direct_route).collect()
}

/// Where [`PeerSync`] sends the full set of direct routes whenever it changes.
pub type DirectRouteSink = std::sync::mpsc::Sender<Vec<(Ipv4Net, Ipv4Addr)>>;

/// The tables a node forwards with: its own subnet to the TUN and, per VXLAN peer, flannel's
/// neighbour `<subnet>.0 lladdr <VtepMAC>`, FDB entry `<VtepMAC> dst <PublicIP>` and route
/// `<subnet> via <subnet>.0 onlink`; per IP-in-IP peer a route `<subnet> via <PublicIP> onlink`
/// in protocol 4. Direct peers are kernel routes, not in these tables. Pure: the same inputs give
/// the same tables.
pub fn reconcile(own: &OwnNode, peers: &[Peer]) -> Tables {
    reconcile_with_pods(own, peers, None)
}

/// A pod attached to Weft's switch (`pod_ports = "switch"`), as the tables need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEntry {
    /// Its port in the tables.
    pub port: dataplane::PortId,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The MAC of the pod's interface.
    pub mac: EthernetAddress,
    /// The MAC Weft answers the pod's ARP with and sends from.
    pub port_mac: EthernetAddress,
    /// The port's MTU.
    pub mtu: u16,
    /// The further source prefixes the pod may send from (`allowedSourcePrefixes`).
    pub extra: SourcePrefixes,
    /// The Kubernetes pod, when the runtime named it: what NetworkPolicy selects.
    pub pod: Option<crate::cni::ipam::PodName>,
}

/// [`reconcile`], with the pods of a switch-mode node (`Some`, possibly empty) or none (bridge
/// mode, `None`).
///
/// In switch mode each pod is a port: `<pod>/32` routes to it, and the neighbour entry of its
/// address is its MAC (permanent: the CNI server made the interface). The node's own subnet is
/// not the TUN's any more but unreachable (no pod there), except `<subnet>.0`, the TUN's address,
/// where the host answers; and everything outside the cluster network, the host's own addresses
/// among it, is reached through the TUN: the kernel routes it on (and masquerades it).
pub fn reconcile_with_pods(
    own: &OwnNode,
    peers: &[Peer],
    pods: Option<&BTreeMap<dataplane::PortId, PodEntry>>,
) -> Tables {
    let mut t = reconcile_peers(own, peers);
    if let Some(pods) = pods {
        let subnet = own.subnet.trunc();
        t.fib.insert(subnet, NextHop::Blackhole);
        t.fib.insert(
            Ipv4Net::from(subnet.network()),
            NextHop::Local { port: TUN_PORT },
        );
        t.fib.insert(
            Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("0.0.0.0/0 is valid"),
            NextHop::Local { port: TUN_PORT },
        );
        for p in pods.values() {
            t.set_port(
                p.port,
                Port {
                    kind: PortKind::L2 {
                        mac: p.port_mac,
                        pod: Some(PodAddr {
                            ip: p.ip,
                            mac: p.mac,
                            extra: p.extra,
                        }),
                    },
                    mtu: p.mtu,
                },
            );
            t.fib
                .insert(Ipv4Net::from(p.ip), NextHop::Local { port: p.port });
            t.neigh.insert_permanent(p.ip, p.mac, Some(p.port));
        }
    }
    t
}

/// What the published tables are built from, shared by the datastore sync (peers) and the CNI
/// server (pods): each change rebuilds and publishes under one lock, so neither loses the
/// other's.
#[derive(Debug)]
pub struct TableInputs {
    own: OwnNode,
    cell: Arc<SnapshotCell>,
    /// What the workers learn; outlives every rebuild of the tables.
    learnt: Arc<LearntNeighbors>,
    state: Mutex<InputState>,
}

#[derive(Debug, Default)]
struct InputState {
    peers: Vec<Peer>,
    /// `None` in bridge mode.
    pods: Option<BTreeMap<dataplane::PortId, PodEntry>>,
    /// NetworkPolicy, on a node with a policy source.
    policy: Option<crate::policy::PolicyState>,
}

impl TableInputs {
    /// Inputs for node `own` publishing into `cell`; `switch` for a switch-mode node.
    pub fn new(own: OwnNode, cell: Arc<SnapshotCell>, switch: bool) -> Self {
        Self::with_aging(own, cell, switch, Aging::default())
    }

    /// Like [`TableInputs::new`], learnt neighbours aging by `aging`.
    pub fn with_aging(own: OwnNode, cell: Arc<SnapshotCell>, switch: bool, aging: Aging) -> Self {
        TableInputs {
            own,
            cell,
            learnt: Arc::new(LearntNeighbors::new(
                aging,
                LearntNeighbors::DEFAULT_CAPACITY,
            )),
            state: Mutex::new(InputState {
                peers: Vec::new(),
                pods: switch.then(BTreeMap::new),
                policy: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InputState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, st: &mut InputState) -> Tables {
        let mut tables = reconcile_with_pods(&self.own, &st.peers, st.pods.as_ref());
        tables.learnt = Arc::clone(&self.learnt);
        if let Some(policy) = st.policy.as_mut() {
            let local: Vec<crate::policy::LocalPod> = st
                .pods
                .iter()
                .flat_map(|p| p.values())
                .map(|p| crate::policy::LocalPod {
                    ip: p.ip,
                    name: p.pod.clone(),
                })
                .collect();
            tables.policy = Some(policy.hook(&local));
        }
        self.cell.publish(tables.snapshot());
        tables
    }

    /// Publishes tables with `peers`; returns them.
    pub fn set_peers(&self, peers: Vec<Peer>) -> Tables {
        let mut st = self.lock();
        st.peers = peers;
        self.publish(&mut st)
    }

    /// Publishes tables with `pod` attached (switch mode; ignored in bridge mode).
    pub fn add_pod(&self, pod: PodEntry) {
        let mut st = self.lock();
        if let Some(pods) = st.pods.as_mut() {
            pods.insert(pod.port, pod);
            self.publish(&mut st);
        }
    }

    /// Publishes tables without port `port`'s pod; returns it.
    pub fn remove_pod(&self, port: dataplane::PortId) -> Option<PodEntry> {
        let mut st = self.lock();
        let gone = st.pods.as_mut()?.remove(&port)?;
        self.publish(&mut st);
        self.learnt.forget_port(port);
        Some(gone)
    }

    /// Turns NetworkPolicy on with `policy` (its manifests, if any, applied at once).
    pub fn enable_policy(&self, policy: crate::policy::PolicyState) {
        let mut st = self.lock();
        st.policy = Some(policy);
        self.publish(&mut st);
    }

    /// New flows each NetworkPolicy rule admitted, and the connection table's figures;
    /// `None` without policy.
    pub fn policy_figures(
        &self,
    ) -> Option<(
        std::collections::BTreeMap<String, u64>,
        dataplane::policy::conntrack::ConntrackStats,
    )> {
        let st = self.lock();
        let p = st.policy.as_ref()?;
        Some((p.rule_flows(), p.conntrack().stats()))
    }

    /// The NetworkPolicies (`namespace/name`) of the set in force; `None` without policy.
    pub fn policies_in_force(&self) -> Option<Vec<String>> {
        Some(self.lock().policy.as_ref()?.in_force().to_vec())
    }

    /// Replaces the NetworkPolicy manifests and publishes what they compile to (policy on).
    pub fn set_policy_manifests(&self, manifests: crate::policy::Manifests) {
        let mut st = self.lock();
        if let Some(p) = st.policy.as_mut() {
            p.set_manifests(manifests);
            self.publish(&mut st);
        }
    }

    /// The neighbours the workers learn.
    pub fn learnt(&self) -> &LearntNeighbors {
        &self.learnt
    }

    /// The attached pods (switch mode).
    pub fn pods(&self) -> Vec<PodEntry> {
        self.lock()
            .pods
            .as_ref()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The lowest port id no pod uses (the TUN is 0).
    pub fn free_port(&self) -> Option<dataplane::PortId> {
        let st = self.lock();
        let used = st.pods.as_ref()?;
        (1..=u16::MAX)
            .map(dataplane::PortId)
            .find(|p| !used.contains_key(p))
    }
}

fn reconcile_peers(own: &OwnNode, peers: &[Peer]) -> Tables {
    let mut node = NodeConfig::flannel_defaults(own.vtep_mac, own.public_ip, own.subnet.network());
    node.vni = own.vni;
    node.vxlan_port = own.vxlan_port;
    node.underlay_mtu = own.underlay_mtu;
    let mut t = Tables::new(node);
    t.set_port(
        TUN_PORT,
        Port {
            kind: PortKind::L3,
            mtu: own.tun_mtu,
        },
    );
    t.fib.insert(own.subnet, NextHop::Local { port: TUN_PORT });
    for p in peers {
        match p.via {
            PeerRoute::Vxlan(mac) => t.add_vxlan_peer(p.subnet, p.public_ip, mac),
            PeerRoute::Ipip => {
                t.fib.insert(
                    p.subnet,
                    NextHop::Ipip {
                        remote: p.public_ip,
                    },
                );
            }
            PeerRoute::Direct => {}
        }
    }
    t
}

/// The control loop's view of the datastore: the current leases, and the peers last published.
///
/// Datastores call [`PeerSync::replace_all`], [`PeerSync::upsert`] and [`PeerSync::remove`] as
/// they learn things, then [`PeerSync::commit`] once per batch; a commit rebuilds and publishes
/// the tables only when the programmed peers changed, so a lease renewal (same subnet, same
/// attributes, new expiry) costs no snapshot.
#[derive(Debug)]
pub struct PeerSync {
    own: OwnNode,
    leases: BTreeMap<Ipv4Net, Lease>,
    published: Vec<Peer>,
    inputs: Arc<TableInputs>,
    metrics: Arc<Metrics>,
    /// When the oldest change not yet published arrived (for the watch-lag metric).
    pending_since: Option<Instant>,
    /// Leases refused as not adjacent at the last commit, to log each refusal once.
    refused: Vec<(Ipv4Net, Ipv4Addr)>,
    /// Where direct routes go (the agent's route programmer); none in tests without one.
    direct: Option<DirectRouteSink>,
}

impl PeerSync {
    /// A sync for node `own` publishing into `cell` (bridge mode; see
    /// [`PeerSync::with_inputs`] for a switch-mode node).
    pub fn new(own: OwnNode, cell: Arc<SnapshotCell>, metrics: Arc<Metrics>) -> Self {
        Self::with_inputs(Arc::new(TableInputs::new(own, cell, false)), metrics)
    }

    /// A sync publishing through `inputs` (shared with the CNI server in switch mode).
    pub fn with_inputs(inputs: Arc<TableInputs>, metrics: Arc<Metrics>) -> Self {
        let own = inputs.own;
        let sync = PeerSync {
            own,
            leases: BTreeMap::new(),
            published: Vec::new(),
            inputs,
            metrics,
            pending_since: None,
            refused: Vec::new(),
            direct: None,
        };
        sync.metrics.set_tables(0, &reconcile(&own, &[]));
        sync
    }

    /// Sends every change of the direct-route set to `sink` (the current set right away).
    pub fn set_direct_sink(&mut self, sink: DirectRouteSink) {
        let _ = sink.send(direct_routes_of(&self.published));
        self.direct = Some(sink);
    }

    /// The node this sync programs for.
    pub fn own(&self) -> &OwnNode {
        &self.own
    }

    /// The current leases, by subnet.
    pub fn leases(&self) -> &BTreeMap<Ipv4Net, Lease> {
        &self.leases
    }

    /// The peers last published.
    pub fn published(&self) -> &[Peer] {
        &self.published
    }

    fn touch(&mut self) {
        self.pending_since.get_or_insert_with(Instant::now);
    }

    /// Replaces the whole lease set (after a list or a re-list).
    pub fn replace_all(&mut self, leases: impl IntoIterator<Item = Lease>) {
        self.leases = leases.into_iter().map(|l| (l.subnet, l)).collect();
        self.touch();
    }

    /// Adds or replaces one lease.
    pub fn upsert(&mut self, lease: Lease) {
        self.leases.insert(lease.subnet, lease);
        self.touch();
    }

    /// Removes the lease of `subnet`.
    pub fn remove(&mut self, subnet: Ipv4Net) {
        self.leases.remove(&subnet);
        self.touch();
    }

    /// Publishes new tables if the programmed peers changed since the last publication. Returns
    /// whether it published.
    pub fn commit(&mut self) -> bool {
        let since = self.pending_since.take();
        let refused = not_adjacent_of(&self.own, self.leases.values());
        for (subnet, ip) in refused.iter().filter(|r| !self.refused.contains(r)) {
            tracing::warn!(
                %subnet,
                public_ip = %ip,
                underlay = %self.own.underlay,
                backend = self.own.backend.name(),
                encapsulation = self.own.encapsulation.name(),
                "peer refused: it must be routed directly but its public IP is not on this node's underlay subnet (no L2 adjacency); its pods are unreachable from here. Use an encapsulating backend or encapsulation = \"CrossSubnet\""
            );
            self.metrics.peer_refused("not_adjacent");
        }
        self.refused = refused;
        let peers = peers_of(&self.own, self.leases.values());
        if peers == self.published {
            return false;
        }
        let direct = direct_routes_of(&peers);
        if direct != direct_routes_of(&self.published) {
            if let Some(sink) = &self.direct {
                let _ = sink.send(direct);
            }
        }
        let tables = self.inputs.set_peers(peers.clone());
        self.metrics.set_tables(peers.len(), &tables);
        if let Some(since) = since {
            self.metrics.observe_watch_lag(since.elapsed());
        }
        let added = peers
            .iter()
            .filter(|p| self.published.binary_search(p).is_err())
            .count();
        let removed = self
            .published
            .iter()
            .filter(|p| peers.binary_search(p).is_err())
            .count();
        tracing::info!(peers = peers.len(), added, removed, "tables published");
        self.published = peers;
        true
    }
}

/// Exponential backoff between reconnection attempts: 100 ms doubling to 5 s, as flannel's etcd
/// watcher backs off.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: std::time::Duration,
}

impl Backoff {
    /// The first delay.
    pub const MIN: std::time::Duration = std::time::Duration::from_millis(100);
    /// The longest delay.
    pub const MAX: std::time::Duration = std::time::Duration::from_secs(5);

    /// A fresh backoff.
    pub fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    /// The delay to wait now; the next one doubles up to [`Backoff::MAX`].
    pub fn next_delay(&mut self) -> std::time::Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }

    /// Back to the first delay after a success.
    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> OwnNode {
        OwnNode {
            subnet: "10.244.1.0/24".parse().expect("net"),
            public_ip: Ipv4Addr::new(192, 168, 1, 1),
            vtep_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            vni: 1,
            vxlan_port: 8472,
            underlay_mtu: 1500,
            tun_mtu: 1450,
            backend: crate::config::BackendKind::Vxlan,
            encapsulation: crate::config::Encapsulation::Always,
            underlay: "192.168.0.0/16".parse().expect("net"),
        }
    }

    fn lease(i: u8, backend: &str) -> Lease {
        Lease {
            subnet: format!("10.244.{i}.0/24").parse().expect("net"),
            public_ip: Ipv4Addr::new(192, 168, 1, i),
            backend_type: backend.into(),
            vni: Some(1),
            vtep_mac: Some(EthernetAddress([2, 0, 0, 0, 0, i])),
            expiration: None,
        }
    }

    /// A lease of `backend` from public IP `ip`, subnet 10.244.`i`.0/24.
    fn lease_at(i: u8, backend: &str, ip: [u8; 4]) -> Lease {
        Lease {
            public_ip: Ipv4Addr::from(ip),
            ..lease(i, backend)
        }
    }

    #[test]
    fn encapsulation_policy_picks_tunnel_or_direct_route_per_peer() {
        use crate::config::{BackendKind as K, Encapsulation as E};
        let at = |backend, encapsulation| OwnNode {
            backend,
            encapsulation,
            underlay: "192.168.1.0/24".parse().expect("net"),
            ..own()
        };
        let near = |b: &str| lease_at(2, b, [192, 168, 1, 2]);
        let far = |b: &str| lease_at(3, b, [192, 168, 2, 3]);
        let via = |o: &OwnNode, l: &Lease| peer_of(o, l).map(|p| p.via);
        let mac = PeerRoute::Vxlan(EthernetAddress([2, 0, 0, 0, 0, 2]));
        let mac3 = PeerRoute::Vxlan(EthernetAddress([2, 0, 0, 0, 0, 3]));

        let o = at(K::Ipip, E::Always);
        assert_eq!(via(&o, &near("ipip")), Ok(PeerRoute::Ipip));
        assert_eq!(via(&o, &far("ipip")), Ok(PeerRoute::Ipip));
        assert_eq!(via(&o, &near("vxlan")), Err(Skip::Backend));
        let o = at(K::Ipip, E::CrossSubnet);
        assert_eq!(via(&o, &near("ipip")), Ok(PeerRoute::Direct));
        assert_eq!(via(&o, &far("ipip")), Ok(PeerRoute::Ipip));
        let o = at(K::Vxlan, E::CrossSubnet);
        assert_eq!(via(&o, &near("vxlan")), Ok(PeerRoute::Direct));
        assert_eq!(via(&o, &far("vxlan")), Ok(mac3));
        let o = at(K::Vxlan, E::Always);
        assert_eq!(via(&o, &near("vxlan")), Ok(mac));
        let o = at(K::Ipip, E::Never);
        assert_eq!(via(&o, &near("ipip")), Ok(PeerRoute::Direct));
        assert_eq!(via(&o, &far("ipip")), Err(Skip::NotAdjacent));
        let o = at(K::HostGw, E::Never);
        assert_eq!(via(&o, &near("host-gw")), Ok(PeerRoute::Direct));
        assert_eq!(via(&o, &far("host-gw")), Err(Skip::NotAdjacent));
        assert_eq!(via(&o, &near("vxlan")), Err(Skip::Backend));

        // Direct peers are kernel routes, not Weft routes; refused ones are neither.
        let leases = [near("host-gw"), far("host-gw")];
        let peers = peers_of(&o, &leases);
        assert_eq!(
            direct_routes_of(&peers),
            vec![(leases[0].subnet, leases[0].public_ip)]
        );
        assert_eq!(
            not_adjacent_of(&o, &leases),
            vec![(leases[1].subnet, leases[1].public_ip)]
        );
        assert_eq!(reconcile(&o, &peers).fib.len(), 1, "own subnet only");
        let o = at(K::Ipip, E::CrossSubnet);
        let leases = [near("ipip"), far("ipip")];
        let t = reconcile(&o, &peers_of(&o, &leases));
        assert_eq!(t.fib.len(), 2, "own subnet and the far ipip peer");
    }

    #[test]
    fn a_refused_peer_is_counted_once_and_direct_routes_reach_the_sink() {
        use crate::config::{BackendKind as K, Encapsulation as E};
        let o = OwnNode {
            backend: K::HostGw,
            encapsulation: E::Never,
            underlay: "192.168.1.0/24".parse().expect("net"),
            ..own()
        };
        let cell = Arc::new(SnapshotCell::new(reconcile(&o, &[]).snapshot()));
        let metrics = Arc::new(Metrics::new());
        let mut sync = PeerSync::new(o, cell, metrics.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        sync.set_direct_sink(tx);
        assert_eq!(rx.try_recv(), Ok(vec![]));
        sync.replace_all([
            lease_at(2, "host-gw", [192, 168, 1, 2]),
            lease_at(3, "host-gw", [192, 168, 2, 3]),
        ]);
        assert!(sync.commit());
        assert_eq!(
            rx.try_recv(),
            Ok(vec![(
                "10.244.2.0/24".parse().expect("net"),
                Ipv4Addr::new(192, 168, 1, 2)
            )])
        );
        sync.upsert(lease_at(4, "host-gw", [192, 168, 1, 4]));
        assert!(sync.commit());
        assert_eq!(rx.try_recv().map(|v| v.len()), Ok(2));
        assert_eq!(
            metrics.peers_refused("not_adjacent"),
            1,
            "refused once, not per commit"
        );
        sync.remove("10.244.3.0/24".parse().expect("net"));
        assert!(!sync.commit(), "the refused peer was never programmed");
        assert!(rx.try_recv().is_err(), "no change to the direct routes");
    }

    #[test]
    fn own_foreign_backend_and_macless_leases_program_nothing() {
        let o = own();
        assert_eq!(peer_of(&o, &lease(1, "vxlan")), Err(Skip::Own));
        assert_eq!(peer_of(&o, &lease(2, "host-gw")), Err(Skip::Backend));
        let mut l = lease(3, "vxlan");
        l.vtep_mac = None;
        assert_eq!(peer_of(&o, &l), Err(Skip::NoVtepMac));
        let mut wide = lease(4, "vxlan");
        wide.subnet = "10.244.0.0/23".parse().expect("net");
        assert_eq!(peer_of(&o, &wide), Err(Skip::OverlapsOwn));
        assert!(peer_of(&o, &lease(5, "vxlan")).is_ok());
    }

    #[test]
    fn reconcile_programs_flannels_three_entries_per_peer() {
        let o = own();
        let leases = [lease(1, "vxlan"), lease(3, "vxlan"), lease(2, "vxlan")];
        let peers = peers_of(&o, &leases);
        assert_eq!(peers.len(), 2);
        assert!(peers[0].subnet < peers[1].subnet, "sorted");
        let t = reconcile(&o, &peers);
        assert_eq!(t.fib.len(), 3, "own subnet + two peers");
        assert_eq!(t.neigh.len(), 2);
        assert_eq!(t.fdb.len(), 2);
        let gw = Ipv4Addr::new(10, 244, 3, 0);
        assert_eq!(
            t.neigh.get(gw).map(|n| n.mac),
            Some(EthernetAddress([2, 0, 0, 0, 0, 3]))
        );
    }

    #[test]
    fn commit_publishes_only_when_peers_change() {
        let o = own();
        let cell = Arc::new(SnapshotCell::new(reconcile(&o, &[]).snapshot()));
        let mut sync = PeerSync::new(o, cell.clone(), Arc::new(Metrics::new()));
        sync.replace_all([lease(1, "vxlan"), lease(2, "vxlan")]);
        assert!(sync.commit());
        assert_eq!(cell.load().fib.len(), 2);
        // A renewal: same attributes, new expiry.
        let mut renewed = lease(2, "vxlan");
        renewed.expiration = Some(SystemTime::now());
        sync.upsert(renewed);
        assert!(!sync.commit());
        // A new VTEP MAC is a change.
        let mut moved = lease(2, "vxlan");
        moved.vtep_mac = Some(EthernetAddress([2, 0, 0, 0, 9, 9]));
        sync.upsert(moved);
        assert!(sync.commit());
        sync.remove("10.244.2.0/24".parse().expect("net"));
        assert!(sync.commit());
        assert_eq!(cell.load().fib.len(), 1);
        assert!(sync.published().is_empty());
    }

    #[test]
    fn backoff_doubles_to_five_seconds_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
