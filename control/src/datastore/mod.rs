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
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use dataplane::fib::NextHop;
use dataplane::snapshot::{NodeConfig, Port, PortKind, SnapshotCell, Tables};
use dataplane::wire::EthernetAddress;
use ipnet::Ipv4Net;

use crate::metrics::Metrics;

/// The only backend type Weft programs (flannel's `BackendType`).
pub const BACKEND_VXLAN: &str = "vxlan";

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

/// A remote node as the dataplane programs it: flannel's neighbour, FDB entry and route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// The peer's pod subnet.
    pub subnet: Ipv4Net,
    /// Its underlay address.
    pub public_ip: Ipv4Addr,
    /// Its VTEP MAC.
    pub vtep_mac: EthernetAddress,
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
}

/// The TUN device's port id in the tables.
pub const TUN_PORT: dataplane::PortId = dataplane::PortId(0);

/// Why a lease is not programmed as a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// It is our own lease.
    Own,
    /// Its backend is not VXLAN (a host-gw or ipip node is not reachable through our tunnel).
    Backend,
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
    if lease.backend_type != BACKEND_VXLAN {
        return Err(Skip::Backend);
    }
    let vtep_mac = lease.vtep_mac.ok_or(Skip::NoVtepMac)?;
    Ok(Peer {
        subnet: lease.subnet,
        public_ip: lease.public_ip,
        vtep_mac,
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

/// The tables a node forwards with: its own subnet to the TUN and, per peer, flannel's neighbour
/// `<subnet>.0 lladdr <VtepMAC>`, FDB entry `<VtepMAC> dst <PublicIP>` and route
/// `<subnet> via <subnet>.0 onlink`. Pure: the same inputs give the same tables.
pub fn reconcile(own: &OwnNode, peers: &[Peer]) -> Tables {
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
        t.add_vxlan_peer(p.subnet, p.public_ip, p.vtep_mac);
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
    cell: Arc<SnapshotCell>,
    metrics: Arc<Metrics>,
    /// When the oldest change not yet published arrived (for the watch-lag metric).
    pending_since: Option<Instant>,
}

impl PeerSync {
    /// A sync for node `own` publishing into `cell`; the cell already holds the tables of
    /// `initial` (see [`PeerSync::initial_tables`]).
    pub fn new(own: OwnNode, cell: Arc<SnapshotCell>, metrics: Arc<Metrics>) -> Self {
        let sync = PeerSync {
            own,
            leases: BTreeMap::new(),
            published: Vec::new(),
            cell,
            metrics,
            pending_since: None,
        };
        sync.metrics.set_tables(0, &reconcile(&own, &[]));
        sync
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
        let peers = peers_of(&self.own, self.leases.values());
        if peers == self.published {
            return false;
        }
        let tables = reconcile(&self.own, &peers);
        self.cell.publish(tables.snapshot());
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
