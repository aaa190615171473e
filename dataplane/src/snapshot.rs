//! The tables the forwarding core reads, as immutable snapshots.
//!
//! The control side owns a mutable [`Tables`] (FIB, neighbours, FDB, ports and the node's tunnel
//! parameters). Each change is published by compiling a new [`Snapshot`] and swapping it into a
//! [`SnapshotCell`]; workers load the current snapshot once per batch with one atomic read and never
//! take a lock. A worker that still holds an older snapshot finishes its batch on
//! it; the old snapshot is freed when the last reader lets go.

use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use ipnet::Ipv4Net;

use crate::fdb::{Fdb, FdbEntry};
use crate::fib::{CompiledFib, Fib, NextHop};
use crate::neigh::{LearntNeighbors, NeighborTable};
use crate::policy::{Conntrack, OnPolicyChange, PolicySet};
use crate::wire::udp::UdpChecksum;
use crate::wire::{vxlan, EthernetAddress};
use crate::PortId;

/// How a local port carries packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// IPv4 packets without a link header: a TUN device. Weft acts as the tunnel *device* behind
    /// it, as `flannel.1` does: the kernel routes into and out of it, so Weft does not decrement TTL.
    L3,
    /// Ethernet frames with the port's own MAC: a pod veth read with AF_PACKET. Weft acts as the
    /// pod's router there, so it decrements TTL and resolves the pod's MAC in the neighbour table.
    L2 {
        /// The MAC Weft answers ARP with and sends frames from on this port.
        mac: EthernetAddress,
        /// The pod behind the port: frames from any other source MAC or IPv4 address are
        /// dropped as spoofed (Calico's default). `None` accepts any source.
        pod: Option<PodAddr>,
    },
}

/// The one pod on an L2 port: the addresses its frames must come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAddr {
    /// The pod's IPv4 address.
    pub ip: Ipv4Addr,
    /// The MAC of the pod's `eth0`.
    pub mac: EthernetAddress,
    /// Further source addresses the pod may send from (Calico's `allowedSourcePrefixes`, for a
    /// floating VIP); where one of them is, is learnt from the wire.
    pub extra: SourcePrefixes,
}

impl PodAddr {
    /// A pod that sends only from `ip`.
    pub fn new(ip: Ipv4Addr, mac: EthernetAddress) -> Self {
        PodAddr {
            ip,
            mac,
            extra: SourcePrefixes::NONE,
        }
    }
}

/// A pod's allowed extra source prefixes: at most [`SourcePrefixes::MAX`], inline, so a port
/// stays `Copy` and the anti-spoofing check reads no heap.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct SourcePrefixes {
    /// `(network, mask)` as host-order integers; the first `len` are used.
    nets: [(u32, u32); SourcePrefixes::MAX],
    len: u8,
}

impl SourcePrefixes {
    /// The most prefixes one pod may have.
    pub const MAX: usize = 8;

    /// No extra prefixes.
    pub const NONE: SourcePrefixes = SourcePrefixes {
        nets: [(0, 0); SourcePrefixes::MAX],
        len: 0,
    };

    /// The set of `prefixes`; `None` when there are more than [`SourcePrefixes::MAX`].
    pub fn new(prefixes: &[Ipv4Net]) -> Option<Self> {
        if prefixes.len() > Self::MAX {
            return None;
        }
        let mut s = Self::NONE;
        for (slot, p) in s.nets.iter_mut().zip(prefixes) {
            let p = p.trunc();
            *slot = (u32::from(p.network()), u32::from(p.netmask()));
        }
        s.len = prefixes.len() as u8;
        Some(s)
    }

    /// True when `ip` is inside one of the prefixes.
    #[inline]
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        self.nets[..usize::from(self.len)]
            .iter()
            .any(|&(net, mask)| ip & mask == net)
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The prefixes.
    pub fn iter(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        self.nets[..usize::from(self.len)]
            .iter()
            .map(|&(net, mask)| {
                Ipv4Net::new(Ipv4Addr::from(net), mask.count_ones() as u8)
                    .expect("a mask has at most 32 bits")
            })
    }
}

impl core::fmt::Debug for SourcePrefixes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A local port as the forwarding core sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    /// How the port carries packets.
    pub kind: PortKind,
    /// The largest IPv4 packet the port takes, in bytes.
    pub mtu: u16,
}

/// The node's own tunnel parameters: everything in a forwarding decision that is not a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeConfig {
    /// VXLAN network identifier; flannel's default is 1.
    pub vni: u32,
    /// VXLAN UDP destination port; flannel's default is 8472 (IANA's 4789 is Calico's).
    pub vxlan_port: u16,
    /// Our VTEP MAC: the inner source MAC we send and the inner destination MAC we accept.
    pub vtep_mac: EthernetAddress,
    /// Our underlay (public) address: the outer source of everything we encapsulate.
    pub underlay_addr: Ipv4Addr,
    /// The tunnel device's own address (flannel: `<subnet>.0`); the source of our ICMP errors.
    pub tunnel_addr: Ipv4Addr,
    /// MTU of the underlay path; tunnel MTUs follow from it (REFERENCE.md "Overheads").
    pub underlay_mtu: u16,
    /// TTL of the outer header we write; the kernel's default is 64.
    pub outer_ttl: u8,
    /// Outer UDP checksum of VXLAN packets: zero, as RFC 7348 §5 recommends, or computed.
    pub udp_checksum: UdpChecksum,
}

impl NodeConfig {
    /// A configuration with flannel's defaults (VNI 1, port 8472, underlay MTU 1500).
    pub fn flannel_defaults(
        vtep_mac: EthernetAddress,
        underlay_addr: Ipv4Addr,
        tunnel_addr: Ipv4Addr,
    ) -> Self {
        NodeConfig {
            vni: 1,
            vxlan_port: vxlan::FLANNEL_PORT,
            vtep_mac,
            underlay_addr,
            tunnel_addr,
            underlay_mtu: 1500,
            outer_ttl: 64,
            udp_checksum: UdpChecksum::Zero,
        }
    }

    /// The largest inner packet a VXLAN peer can be sent: underlay MTU - 50.
    pub fn vxlan_mtu(&self) -> u16 {
        self.underlay_mtu.saturating_sub(vxlan::OVERHEAD_V4 as u16)
    }

    /// The largest inner packet an IP-in-IP peer can be sent: underlay MTU - 20.
    pub fn ipip_mtu(&self) -> u16 {
        self.underlay_mtu
            .saturating_sub(crate::wire::ipip::OVERHEAD as u16)
    }
}

/// NetworkPolicy on a node that enforces it: the compiled set, the connection table the
/// workers share (it outlives every set), and what a changed set does to established flows.
#[derive(Debug, Clone)]
pub struct PolicyHook {
    /// The node's compiled policy.
    pub set: Arc<PolicySet>,
    /// The flows the workers track.
    pub conntrack: Arc<Conntrack>,
    /// Keep or re-check established flows when `set` is newer than their admission.
    pub on_change: OnPolicyChange,
}

/// The mutable tables the control side edits before publishing a [`Snapshot`].
#[derive(Debug, Clone)]
pub struct Tables {
    /// The node's tunnel parameters.
    pub node: NodeConfig,
    /// Routes.
    pub fib: Fib,
    /// Neighbours (ARP).
    pub neigh: NeighborTable,
    /// MAC to VTEP or local port.
    pub fdb: Fdb,
    /// The neighbours the workers learn, shared by every snapshot compiled from these tables.
    pub learnt: Arc<LearntNeighbors>,
    /// NetworkPolicy, on a node that enforces it; `None`: every flow passes, nothing is tracked.
    pub policy: Option<PolicyHook>,
    ports: Vec<Option<Port>>,
}

impl Tables {
    /// Empty tables for a node.
    pub fn new(node: NodeConfig) -> Self {
        Tables {
            node,
            fib: Fib::new(),
            neigh: NeighborTable::new(),
            fdb: Fdb::new(),
            learnt: Arc::new(LearntNeighbors::default()),
            policy: None,
            ports: Vec::new(),
        }
    }

    /// Adds or replaces local port `id`.
    pub fn set_port(&mut self, id: PortId, port: Port) {
        let i = usize::from(id.0);
        if self.ports.len() <= i {
            self.ports.resize(i + 1, None);
        }
        self.ports[i] = Some(port);
    }

    /// Removes local port `id`.
    pub fn remove_port(&mut self, id: PortId) -> Option<Port> {
        self.ports.get_mut(usize::from(id.0)).and_then(Option::take)
    }

    /// The local ports, in id order.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, Port)> + '_ {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.map(|p| (PortId(i as u16), p)))
    }

    /// Programs a remote VXLAN node the way flannel programs `flannel.1` for it, in flannel's order:
    /// neighbour `<subnet>.0 lladdr <vtep_mac> PERMANENT`, FDB `<vtep_mac> dst <public_ip>`, route
    /// `<subnet> via <subnet>.0 onlink`.
    pub fn add_vxlan_peer(
        &mut self,
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
        vtep_mac: EthernetAddress,
    ) {
        let subnet = subnet.trunc();
        let gateway = subnet.network();
        self.neigh.insert_permanent(gateway, vtep_mac, None);
        self.fdb
            .insert(vtep_mac, FdbEntry::Remote { vtep: public_ip });
        self.fib.insert(subnet, NextHop::Vxlan { gateway });
    }

    /// Removes what [`Tables::add_vxlan_peer`] programmed for `subnet`: route, neighbour and the
    /// FDB entry of the neighbour's MAC. Returns whether there was such a peer.
    pub fn remove_vxlan_peer(&mut self, subnet: Ipv4Net) -> bool {
        let subnet = subnet.trunc();
        let gateway = subnet.network();
        let route = self.fib.remove(subnet);
        if let Some(n) = self.neigh.remove(gateway) {
            self.fdb.remove(n.mac);
        }
        route.is_some()
    }

    /// Compiles the tables into a snapshot for the workers.
    pub fn snapshot(&self) -> Snapshot {
        let mut learnable: Vec<SourcePrefixes> = self
            .ports()
            .filter_map(|(_, p)| match p.kind {
                PortKind::L2 { pod: Some(pod), .. } if !pod.extra.is_empty() => Some(pod.extra),
                _ => None,
            })
            .collect();
        learnable.dedup();
        Snapshot {
            node: self.node,
            fib: self.fib.compile(),
            neigh: self.neigh.clone(),
            fdb: self.fdb.clone(),
            learnt: Arc::clone(&self.learnt),
            policy: self.policy.clone(),
            learnable,
            ports: self.ports.clone(),
        }
    }
}

/// An immutable, compiled copy of the tables: what a forwarding decision reads.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The node's tunnel parameters.
    pub node: NodeConfig,
    /// The compiled FIB.
    pub fib: CompiledFib,
    /// Neighbours.
    pub neigh: NeighborTable,
    /// MAC to VTEP or local port.
    pub fdb: Fdb,
    /// The neighbours the workers learn (shared, not a copy).
    pub learnt: Arc<LearntNeighbors>,
    /// NetworkPolicy, on a node that enforces it.
    pub policy: Option<PolicyHook>,
    /// The allowed extra source prefixes of the pods: the only addresses worth looking up in
    /// `learnt`. Empty on a node where no pod has any, so the lookup costs nothing there.
    learnable: Vec<SourcePrefixes>,
    ports: Vec<Option<Port>>,
}

impl Snapshot {
    /// Local port `id`, if it exists.
    #[inline]
    pub fn port(&self, id: PortId) -> Option<&Port> {
        self.ports.get(usize::from(id.0)).and_then(Option::as_ref)
    }

    /// True when `ip` is inside some pod's allowed extra source prefixes, so it may be learnt.
    #[inline]
    pub fn learnable(&self, ip: Ipv4Addr) -> bool {
        !self.learnable.is_empty() && self.learnable.iter().any(|s| s.contains(ip))
    }
}

/// Where the control side publishes snapshots and workers load them, without locks.
#[derive(Debug)]
pub struct SnapshotCell {
    current: ArcSwap<Snapshot>,
}

impl SnapshotCell {
    /// A cell holding `first`.
    pub fn new(first: Snapshot) -> Self {
        SnapshotCell {
            current: ArcSwap::from_pointee(first),
        }
    }

    /// Makes `next` the snapshot every later [`SnapshotCell::load`] sees.
    pub fn publish(&self, next: Snapshot) {
        self.current.store(Arc::new(next));
    }

    /// The current snapshot, cheaply: hold it for one batch, not longer.
    #[inline]
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`, for holders that outlive a batch.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }
}
