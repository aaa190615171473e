//! The forwarding decision: a pure function from (ingress, packet, snapshot, time) to a [`Verdict`].
//!
//! [`forward`] performs no syscall, reads no clock and allocates nothing. It
//! reads and rewrites the caller's buffer in place: the packet sits at `buf[start..start + len]`
//! and the `start` bytes in front of it are headroom for the outer headers ([`HEADROOM`] is enough
//! for every encapsulation and for ICMP errors). The verdict names the bytes to send and where.
//!
//! The model is flannel's `flannel.1` (REFERENCE.md): a packet whose route is
//! `<subnet> via <subnet>.0 onlink` is sent to the VTEP MAC that the neighbour entry of
//! `<subnet>.0` gives, at the underlay address that the FDB entry of that MAC gives. On the way
//! back, a VXLAN frame is accepted only with our VNI and addressed to our VTEP MAC, as a kernel
//! VTEP does, and the inner packet must be routed to a local port.
//!
//! TTL: behind a TUN port Weft is a tunnel *device*, like `flannel.1`: the kernel routes (and
//! decrements TTL) on both sides, so Weft leaves TTL alone and `traceroute` shows the same hops as
//! with flannel. On an L2 (pod) port Weft is the pod's router and decrements TTL (RFC 1812
//! §5.3.1) with an incremental checksum update (RFC 1624), answering time-exceeded at 1.

pub mod arp;
pub mod encap;
pub mod icmp;

use std::net::Ipv4Addr;

use crate::drop::DropReason;
use crate::fdb::FdbEntry;
use crate::fib::NextHop;
use crate::neigh::NeighborAnswer;
use crate::policy::{admit_ipv4, Conntrack, PacketFlow, Protocol};
use crate::snapshot::{Port, PortKind, Snapshot};
use crate::time::Instant;
use crate::wire::ipv4::{self, Ipv4Packet};
use crate::wire::tcp;
use crate::wire::udp::UdpPacket;
use crate::wire::{ethernet, ipip, EtherType, EthernetFrame, EthernetRepr};
use crate::PortId;

pub use encap::{VxlanEncap, VXLAN_UDP_PAYLOAD_OFFSET};
pub use icmp::IcmpError;

/// Headroom a caller leaves in front of every packet. The deepest case is an ICMP error (28 bytes
/// in front of the packet) sent back through VXLAN (50 more), behind an outer Ethernet header (14)
/// for AF_PACKET shells: 92, rounded up to leave room for a virtio-net header.
pub const HEADROOM: usize = 128;

/// Where a packet came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// Read from local port `PortId`: an IPv4 packet on an L3 (TUN) port, an Ethernet frame on an
    /// L2 (pod) port.
    Local(PortId),
    /// Read from the underlay with its outer IPv4 header (a raw socket or AF_PACKET): VXLAN in UDP
    /// or IP-in-IP.
    Underlay,
    /// The payload of a datagram received on the VXLAN UDP socket, from underlay address `src`:
    /// starts at the VXLAN header; the kernel already checked the outer IPv4 and UDP headers.
    VxlanUdp {
        /// The sender's underlay address.
        src: Ipv4Addr,
    },
    /// The inner IPv4 packet of an IP-in-IP datagram whose outer header the shell already
    /// checked (for us, not a fragment, checksum valid: [`ipip_super_frame`] does): a segment
    /// of a merged datagram, routed as a tunnelled packet.
    IpipInner,
}

/// How a packet sent into the underlay is wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// Not at all: a plain IPv4 packet routed via an underlay gateway (host-gw).
    None,
    /// VXLAN in UDP. The bytes start at the outer IPv4 header; a shell that sends through a UDP
    /// socket sends from [`VXLAN_UDP_PAYLOAD_OFFSET`] on, from `src_port` if it can.
    Vxlan {
        /// The flow's UDP source port.
        src_port: u16,
        /// The UDP destination port the outer header names (the node's VXLAN port), so a shell
        /// addresses its socket send without reading the header back.
        dst_port: u16,
    },
    /// IP-in-IP (protocol 4); the bytes start at the outer IPv4 header.
    Ipip,
}

/// What to send, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write `buf[start..start + len]` to local port `port`.
    Deliver {
        /// The egress port.
        port: PortId,
        /// Offset of the first byte to write.
        start: usize,
        /// Bytes to write.
        len: usize,
    },
    /// Send the IPv4 packet `buf[start..start + len]` into the underlay toward `next_hop`.
    Transmit {
        /// The underlay address to send to (the outer destination, or the host-gw gateway).
        next_hop: Ipv4Addr,
        /// Offset of the (outer) IPv4 header.
        start: usize,
        /// Bytes from `start`.
        len: usize,
        /// How the packet is wrapped.
        encap: Encap,
    },
}

/// The outcome of one forwarding decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The packet (its headers possibly rewritten) leaves as the action says.
    Forward(Action),
    /// The packet was answered instead of forwarded: an ARP reply (`cause` is `None`) or an ICMP
    /// error about the drop `cause`, written in its place and routed toward its sender.
    Reply {
        /// Why the original packet was not forwarded, if it was a drop.
        cause: Option<DropReason>,
        /// Where the reply goes.
        action: Action,
    },
    /// Dropped, for this reason.
    Drop(DropReason),
}

impl Verdict {
    /// The drop reason to count, if the original packet was dropped.
    pub fn drop_reason(&self) -> Option<DropReason> {
        match *self {
            Verdict::Forward(_) => None,
            Verdict::Reply { cause, .. } => cause,
            Verdict::Drop(r) => Some(r),
        }
    }

    /// The action to carry out, if anything is to be sent.
    pub fn action(&self) -> Option<Action> {
        match *self {
            Verdict::Forward(a) | Verdict::Reply { action: a, .. } => Some(a),
            Verdict::Drop(_) => None,
        }
    }
}

/// Where an IPv4 packet entered the routing step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// From a local port.
    Port(PortId, PortKind),
    /// Decapsulated from the underlay.
    Tunnel,
    /// An ICMP error we generated: no TTL change, no error about it.
    Generated,
}

/// What the verdict on a super-frame's first segment means for the whole super-frame (a TSO
/// send of a pod or the host, or a datagram the kernel's GRO merged): its segments are one flow
/// with the same headers but for lengths, sequence numbers and checksums, so where the first
/// goes every other goes too; the core says so here, and the worker only carries it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuperFramePlan {
    /// The first is delivered to local port `port`: deliver the whole super-frame there at once
    /// (the port takes offloads, or the worker merges the segments for it).
    Whole {
        /// The port.
        port: PortId,
    },
    /// The first leaves into the underlay: every segment leaves the same way (next hop,
    /// encapsulation, outer headers but for lengths), its TTL one less when `routed`, as the
    /// core made the first's.
    AsTheFirst {
        /// Weft routed the packet (it came from a pod port), so each segment loses a hop.
        routed: bool,
    },
    /// Only the first is decided (dropped, answered, or sent where segments cannot follow it
    /// whole): every other segment goes through [`forward`] itself.
    EachItsOwn,
}

/// The plan for a super-frame from `ingress` whose first segment got `first` (see
/// [`SuperFramePlan`]). `frame` is the super-frame's IPv4 packet (only its headers are read):
/// its TCP header stands for every segment's.
///
/// When the plan lets the other segments follow the first without a decision of their own
/// ([`SuperFramePlan::Whole`], [`SuperFramePlan::AsTheFirst`]), what they carry that the first
/// did not reaches connection tracking here: a FIN. The header of a TSO/GSO send holds the flags
/// of the whole, and its segmentation (Linux `tcp_gso_segment`, [`Ipv4Segments`]) leaves FIN
/// and PSH on the last segment only (RST, SYN and the rest stay on every one, so the first's
/// verdict saw them); without this, a connection a pod ends with its last send would stay
/// ESTABLISHED until the peer's FIN or the timeout.
///
/// [`Ipv4Segments`]: crate::offload::Ipv4Segments
#[inline]
pub fn plan_super_frame(
    snap: &Snapshot,
    ingress: Ingress,
    first: &Verdict,
    frame: &[u8],
    now: Instant,
) -> SuperFramePlan {
    let plan = match *first {
        Verdict::Forward(Action::Deliver { port, .. }) => SuperFramePlan::Whole { port },
        Verdict::Forward(Action::Transmit {
            encap: Encap::Vxlan { .. },
            ..
        }) => SuperFramePlan::AsTheFirst {
            routed: matches!(
                ingress,
                Ingress::Local(p) if matches!(snap.port(p), Some(Port { kind: PortKind::L2 { .. }, .. }))
            ),
        },
        _ => SuperFramePlan::EachItsOwn,
    };
    if let Some(policy) = snap
        .policy
        .as_ref()
        .filter(|_| plan != SuperFramePlan::EachItsOwn)
    {
        track_last_segment(&policy.conntrack, frame, now);
    }
    plan
}

/// Tells `ct` of the FIN on the last segment of TCP super-frame `frame` (see
/// [`plan_super_frame`]), which the first segment's decision did not see. A FIN the first
/// segment carried too (a super-frame of one segment) is seen twice, which changes nothing.
fn track_last_segment(ct: &Conntrack, frame: &[u8], now: Instant) {
    let Some(flow) = PacketFlow::of_ipv4(frame) else {
        return;
    };
    if flow.key.protocol == Protocol::TCP && flow.tcp_flags & tcp::flags::FIN != 0 {
        // No entry (the table refused it): the segments passed on the first's decision all
        // the same, and nothing is to be advanced.
        ct.track(&flow.key, flow.tcp_flags, now);
    }
}

/// Decides what to do with the packet at `buf[start..start + len]` that arrived from `ingress`.
///
/// Rewrites the buffer in place as needed (outer headers into the headroom, TTL, an Ethernet
/// header, an ICMP error or ARP reply in place of the packet) and returns what to send.
#[inline]
pub fn forward(
    snap: &Snapshot,
    ingress: Ingress,
    buf: &mut [u8],
    start: usize,
    len: usize,
    now: Instant,
) -> Verdict {
    if start.checked_add(len).is_none_or(|end| end > buf.len()) {
        return Verdict::Drop(DropReason::Truncated);
    }
    match ingress {
        Ingress::Local(port_id) => {
            let Some(port) = snap.port(port_id).copied() else {
                // A port the snapshot does not know (removed while the packet was in flight).
                return Verdict::Drop(DropReason::OtherHost);
            };
            match port.kind {
                PortKind::L3 => route(snap, Origin::Port(port_id, port.kind), buf, start, len, now),
                PortKind::L2 { mac, pod } => {
                    from_l2(snap, port_id, port, (mac, pod), buf, start, len, now)
                }
            }
        }
        Ingress::Underlay => from_underlay(snap, buf, start, len, now),
        Ingress::VxlanUdp { src: _ } => from_vxlan(snap, buf, start, len, now),
        Ingress::IpipInner => route(snap, Origin::Tunnel, buf, start, len, now),
    }
}

/// A VXLAN packet from the VXLAN header on: checked against our VNI and VTEP MAC, then its inner
/// packet routed. Shared by the UDP-socket and the raw-underlay ingress.
fn from_vxlan(snap: &Snapshot, buf: &mut [u8], start: usize, len: usize, now: Instant) -> Verdict {
    match encap::vxlan_decap(&buf[start..start + len], snap.node.vni, snap.node.vtep_mac) {
        Ok((off, inner_len)) => route(snap, Origin::Tunnel, buf, start + off, inner_len, now),
        Err(reason) => Verdict::Drop(reason),
    }
}

/// An Ethernet frame from a pod port: answer ARP, route IPv4, drop the rest.
#[allow(clippy::too_many_arguments)]
fn from_l2(
    snap: &Snapshot,
    port_id: PortId,
    port: Port,
    (mac, pod): (
        crate::wire::EthernetAddress,
        Option<crate::snapshot::PodAddr>,
    ),
    buf: &mut [u8],
    start: usize,
    len: usize,
    now: Instant,
) -> Verdict {
    let (dst, src, ethertype) = match EthernetFrame::new_checked(&buf[start..start + len]) {
        Ok(eth) => (eth.dst_addr(), eth.src_addr(), eth.ethertype()),
        Err(_) => return Verdict::Drop(DropReason::Truncated),
    };
    if dst != mac && !dst.is_broadcast() {
        return Verdict::Drop(DropReason::OtherHost);
    }
    if let Some(pod) = pod {
        if src != pod.mac {
            return Verdict::Drop(DropReason::Spoofed);
        }
        let sender = match ethertype {
            EtherType::Arp => match arp::sender(&buf[start..start + len]) {
                Some((m, _)) if m != pod.mac => return Verdict::Drop(DropReason::Spoofed),
                s => s.map(|(_, ip)| ip),
            },
            EtherType::Ipv4 => buf
                .get(start + ethernet::HEADER_LEN..start + len)
                .and_then(|ip| Ipv4Packet::new_checked(ip).ok())
                .map(|ip| ip.src_addr()),
            _ => None,
        };
        // An ARP probe's sender is 0.0.0.0 (RFC 5227); it is not answered below either.
        if let Some(ip) = sender {
            if ip != pod.ip && !(ethertype == EtherType::Arp && ip.is_unspecified()) {
                if !pod.extra.contains(ip) {
                    return Verdict::Drop(DropReason::Spoofed);
                }
                // One of the pod's extra addresses (a VIP): it is here now. A gratuitous ARP
                // announces it; any packet from it confirms it.
                snap.learnt.confirm(ip, port_id, src, now);
            }
        }
    }
    match ethertype {
        EtherType::Arp => match arp::proxy_reply(&mut buf[start..start + len], mac) {
            Ok(reply_len) => Verdict::Reply {
                cause: None,
                action: Action::Deliver {
                    port: port_id,
                    start,
                    len: reply_len,
                },
            },
            Err(reason) => Verdict::Drop(reason),
        },
        EtherType::Ipv4 if dst == mac => route(
            snap,
            Origin::Port(port_id, port.kind),
            buf,
            start + ethernet::HEADER_LEN,
            len - ethernet::HEADER_LEN,
            now,
        ),
        EtherType::Ipv4 => Verdict::Drop(DropReason::NotUnicast),
        _ => Verdict::Drop(DropReason::NotIpv4),
    }
}

/// A datagram from the underlay with its outer IPv4 header: VXLAN on our UDP port, or IP-in-IP.
fn from_underlay(
    snap: &Snapshot,
    buf: &mut [u8],
    start: usize,
    len: usize,
    now: Instant,
) -> Verdict {
    let pkt = &buf[start..start + len];
    let outer = match Ipv4Packet::new_checked(pkt) {
        Ok(p) => p,
        Err(crate::wire::Error::Truncated) => return Verdict::Drop(DropReason::Truncated),
        Err(_) => return Verdict::Drop(DropReason::Ipv4Malformed),
    };
    if !outer.verify_checksum() {
        return Verdict::Drop(DropReason::Ipv4Checksum);
    }
    if outer.dst_addr() != snap.node.underlay_addr {
        return Verdict::Drop(DropReason::UnderlayNotForUs);
    }
    if outer.is_fragment() {
        // Reassembly is the kernel's job; a raw-socket reader sees fragments only if the kernel
        // did not reassemble them, and a partial tunnel packet cannot be forwarded.
        return Verdict::Drop(DropReason::UnderlayNotForUs);
    }
    let hlen = outer.header_len();
    let total = usize::from(outer.total_len());
    match outer.protocol() {
        ipv4::protocol::UDP => {
            let (src, dst) = (outer.src_addr(), outer.dst_addr());
            let udp = match UdpPacket::new_checked(outer.payload()) {
                Ok(u) => u,
                Err(crate::wire::Error::Truncated) => return Verdict::Drop(DropReason::Truncated),
                Err(_) => return Verdict::Drop(DropReason::UdpMalformed),
            };
            if udp.dst_port() != snap.node.vxlan_port {
                return Verdict::Drop(DropReason::UnderlayNotForUs);
            }
            if !udp.verify_checksum(src, dst) {
                return Verdict::Drop(DropReason::UdpMalformed);
            }
            let payload_len = usize::from(udp.len()) - 8;
            from_vxlan(snap, buf, start + hlen + 8, payload_len, now)
        }
        ipv4::protocol::IPIP => {
            match ipip::inner(&outer) {
                Ok(_) => {}
                Err(crate::wire::Error::Truncated) => return Verdict::Drop(DropReason::Truncated),
                Err(_) => return Verdict::Drop(DropReason::IpipMalformed),
            }
            route(snap, Origin::Tunnel, buf, start + hlen, total - hlen, now)
        }
        _ => Verdict::Drop(DropReason::UnderlayNotForUs),
    }
}

/// An IP-in-IP datagram the underlay's receive offload (GRO) merged: one outer header around
/// one inner IPv4/TCP packet larger than the tunnel MTU, its TCP checksum left partial (the
/// pseudo-header sum, as the kernel's GRO leaves it). A raw socket hands such a datagram over
/// whole; this is what [`ipip_super_frame`] makes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpipSuperFrame {
    /// Offset in the buffer of the virtio-net header written in front of the inner packet.
    pub start: usize,
    /// Bytes from `start`: the virtio-net header and the inner packet.
    pub len: usize,
    /// The TCP segments it stands for (for counters).
    pub segments: usize,
    /// Inner packet bytes.
    pub inner_len: usize,
}

/// What [`ipip_super_frame`] makes of a merged IP-in-IP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpipMerged {
    /// For the TUN: one write of what lies at the [`IpipSuperFrame`].
    Tun(IpipSuperFrame),
    /// For anywhere else (a pod port in switch mode): the inner TCP super-packet at
    /// `buf[inner]`, to be cut by `vnet` (TCPv4 GSO at the tunnel MTU, offsets from the inner
    /// IPv4 header) as a TSO send from a pod would be, its segments routed by the core from
    /// [`Ingress::IpipInner`].
    Segment {
        /// Where the inner packet lies.
        inner: core::ops::Range<usize>,
        /// How to cut it.
        vnet: crate::offload::VnetRepr,
    },
}

/// If `buf[start..start + len]` is a merged IP-in-IP datagram for us (a TCP super-packet above
/// the tunnel MTU inside, as the kernel's GRO leaves it): when the inner packet goes to the TUN
/// (`port`), writes a virtio-net header (TCPv4 GSO at `gso_size` = port MTU - headers, checksum
/// partial) over the tail of the outer header and says where the result lies
/// ([`IpipMerged::Tun`]): a TUN with offloads takes it in one write and the kernel cuts it up
/// only if it must. Anywhere else, says how to cut it ([`IpipMerged::Segment`]). `Ok(None)` when
/// the datagram is not such a frame (the normal path takes it); an error when it is one that
/// cannot be delivered (not TCP, a fragment, malformed).
pub fn ipip_super_frame(
    snap: &Snapshot,
    buf: &mut [u8],
    start: usize,
    len: usize,
    port: PortId,
) -> Result<Option<IpipMerged>, DropReason> {
    use crate::offload::{Gso, VnetHeader, VnetRepr, VNET_HDR_LEN};
    let Some(mtu) = snap.port(port).map(|p| usize::from(p.mtu)) else {
        return Ok(None);
    };
    // Within the port's MTU plus an outer header: a plain datagram, the normal path's (the
    // test every IP-in-IP datagram meets, so it comes before any parsing).
    if len <= mtu + ipip::OVERHEAD {
        return Ok(None);
    }
    let Some(pkt) = start.checked_add(len).and_then(|end| buf.get(start..end)) else {
        return Err(DropReason::Truncated);
    };
    let Ok(outer) = Ipv4Packet::new_checked(pkt) else {
        return Ok(None);
    };
    let hlen = outer.header_len();
    if outer.protocol() != ipv4::protocol::IPIP || len - hlen <= mtu {
        return Ok(None);
    }
    if !outer.verify_checksum() || outer.dst_addr() != snap.node.underlay_addr {
        return Ok(None);
    }
    let inner = match ipip::inner(&outer) {
        Ok(i) => i,
        Err(crate::wire::Error::Truncated) => return Err(DropReason::Truncated),
        Err(_) => return Err(DropReason::IpipMalformed),
    };
    let (inner_hlen, inner_len) = (inner.header_len(), usize::from(inner.total_len()));
    if inner.protocol() != ipv4::protocol::TCP || inner.is_fragment() || inner_len != len - hlen {
        return Err(DropReason::TooBig);
    }
    let to_tun = snap
        .fib
        .lookup(inner.dst_addr())
        .is_some_and(|r| r.next_hop == NextHop::Local { port });
    let tcp = inner.payload();
    let Some(&off_byte) = tcp.get(12) else {
        return Err(DropReason::Truncated);
    };
    let tcp_hlen = usize::from(off_byte >> 4) * 4;
    let headers = inner_hlen + tcp_hlen;
    if tcp_hlen < 20 || headers >= inner_len || headers + 8 >= mtu || hlen < VNET_HDR_LEN {
        return Err(DropReason::IpipMalformed);
    }
    let gso_size = mtu - headers;
    let vnet = VnetRepr {
        needs_csum: true,
        gso: Gso::TcpV4,
        ecn: false,
        hdr_len: headers as u16,
        gso_size: gso_size as u16,
        csum_start: inner_hlen as u16,
        csum_offset: 16,
    };
    if !to_tun {
        return Ok(Some(IpipMerged::Segment {
            inner: start + hlen..start + len,
            vnet,
        }));
    }
    let vstart = start + hlen - VNET_HDR_LEN;
    vnet.emit(&mut VnetHeader::new_unchecked(
        &mut buf[vstart..vstart + VNET_HDR_LEN],
    ));
    Ok(Some(IpipMerged::Tun(IpipSuperFrame {
        start: vstart,
        len: VNET_HDR_LEN + inner_len,
        segments: (inner_len - headers).div_ceil(gso_size),
        inner_len,
    })))
}

/// The facts of an IPv4 header the routing step needs, read once.
struct Header {
    dst: Ipv4Addr,
    src: Ipv4Addr,
    ttl: u8,
    dont_frag: bool,
    total_len: usize,
}

/// Routes the IPv4 packet at `buf[start..start + len]`.
fn route(
    snap: &Snapshot,
    origin: Origin,
    buf: &mut [u8],
    start: usize,
    len: usize,
    now: Instant,
) -> Verdict {
    // A TUN device also carries the kernel's IPv6 (router solicitations and the like): not ours.
    if buf.get(start).is_some_and(|b| b >> 4 == 6) {
        return Verdict::Drop(DropReason::NotIpv4);
    }
    let hdr = match Ipv4Packet::new_checked(&buf[start..start + len]) {
        Ok(ip) => {
            if origin != Origin::Generated && !ip.verify_checksum() {
                return Verdict::Drop(DropReason::Ipv4Checksum);
            }
            Header {
                dst: ip.dst_addr(),
                src: ip.src_addr(),
                ttl: ip.ttl(),
                dont_frag: ip.dont_frag(),
                total_len: usize::from(ip.total_len()),
            }
        }
        Err(crate::wire::Error::Truncated) => return Verdict::Drop(DropReason::Truncated),
        Err(_) => return Verdict::Drop(DropReason::Ipv4Malformed),
    };
    // Link-layer padding beyond the IPv4 total length is not part of the packet.
    let len = hdr.total_len;
    if !icmp::is_unicast(hdr.dst) || hdr.src.is_multicast() || hdr.src.is_broadcast() {
        return Verdict::Drop(DropReason::NotUnicast);
    }
    // Drops the packet for `cause`, answering its sender with `kind` where RFC 1812 allows.
    let fail = |buf: &mut [u8], cause, kind| error(snap, origin, buf, start, len, now, cause, kind);
    let Some(route) = snap.fib.lookup(hdr.dst) else {
        return fail(buf, DropReason::NoRoute, IcmpError::NetUnreachable);
    };
    let mut next_hop = route.next_hop;
    // An address a pod announced (one of its allowed extra sources) is reached on the port it
    // was learnt on, at the MAC it was announced from, unless a pod has it as its own address
    // (a /32 route of its own).
    let mut learnt_mac = None;
    if route.prefix.prefix_len() < 32 && snap.learnable(hdr.dst) {
        if let Some((port, NeighborAnswer::Found(mac) | NeighborAnswer::Stale(mac))) =
            snap.learnt.lookup(hdr.dst, now)
        {
            next_hop = NextHop::Local { port };
            learnt_mac = Some(mac);
        }
    }
    let egress = match next_hop {
        NextHop::Local { port } => match snap.port(port) {
            Some(&p) => Some((port, p)),
            None => return Verdict::Drop(DropReason::NoRoute),
        },
        _ => None,
    };

    // NetworkPolicy: every flow is tracked, and a new one decided at both ends.
    if let Some(policy) = snap.policy.as_ref().filter(|_| origin != Origin::Generated) {
        let ip = &buf[start..start + len];
        if !admit_ipv4(&policy.set, &policy.conntrack, ip, now, policy.on_change) {
            return Verdict::Drop(DropReason::PolicyDenied);
        }
    }

    // Weft routes (and so owns the TTL) only where it stands in for a router: on pod ports.
    let egress_l2 = matches!(
        egress,
        Some((
            _,
            Port {
                kind: PortKind::L2 { .. },
                ..
            }
        ))
    );
    let routed = origin != Origin::Generated
        && (matches!(origin, Origin::Port(_, PortKind::L2 { .. })) || egress_l2);
    if routed && hdr.ttl <= 1 {
        return fail(buf, DropReason::TtlExceeded, IcmpError::TtlExceeded);
    }

    let mtu = match (next_hop, egress) {
        (_, Some((port, p))) => {
            if origin == Origin::Port(port, p.kind) {
                return Verdict::Drop(DropReason::Hairpin);
            }
            p.mtu
        }
        (NextHop::Blackhole, _) => return Verdict::Drop(DropReason::Blackhole),
        _ if origin == Origin::Tunnel => return Verdict::Drop(DropReason::NotLocal),
        (NextHop::Vxlan { .. }, _) => snap.node.vxlan_mtu(),
        (NextHop::Ipip { .. }, _) => snap.node.ipip_mtu(),
        (NextHop::Direct { .. }, _) => snap.node.underlay_mtu,
        (NextHop::Local { .. }, None) => return Verdict::Drop(DropReason::NoRoute),
    };
    if len > usize::from(mtu) {
        if hdr.dont_frag {
            return fail(buf, DropReason::FragNeeded, IcmpError::FragNeeded { mtu });
        }
        return Verdict::Drop(DropReason::TooBig);
    }
    if routed {
        Ipv4Packet::new_unchecked(&mut buf[start..start + len]).decrement_ttl();
    }

    if let Some((port, p)) = egress {
        return deliver(snap, port, p, buf, start, len, learnt_mac);
    }
    match next_hop {
        // Resolved above: local next hops have returned through `deliver`.
        NextHop::Local { .. } => Verdict::Drop(DropReason::NoRoute),
        NextHop::Vxlan { gateway } => {
            let Some(dst_mac) = snap.neigh.lookup(gateway) else {
                return Verdict::Drop(DropReason::NeighborMissing);
            };
            let vtep = match snap.fdb.lookup(dst_mac) {
                Some(FdbEntry::Remote { vtep }) => vtep,
                _ => return Verdict::Drop(DropReason::FdbMissing),
            };
            let params = VxlanEncap {
                vni: snap.node.vni,
                src_mac: snap.node.vtep_mac,
                dst_mac,
                src_addr: snap.node.underlay_addr,
                dst_addr: vtep,
                dst_port: snap.node.vxlan_port,
                ttl: snap.node.outer_ttl,
                udp_checksum: snap.node.udp_checksum,
            };
            let src_port = encap::flow_src_port(&buf[start..start + len]);
            match encap::vxlan_encap(buf, start, len, &params, src_port) {
                Ok((s, l)) => Verdict::Forward(Action::Transmit {
                    next_hop: vtep,
                    start: s,
                    len: l,
                    encap: Encap::Vxlan {
                        src_port,
                        dst_port: snap.node.vxlan_port,
                    },
                }),
                Err(reason) => Verdict::Drop(reason),
            }
        }
        NextHop::Ipip { remote } => {
            match encap::ipip_encap(
                buf,
                start,
                len,
                snap.node.underlay_addr,
                remote,
                snap.node.outer_ttl,
            ) {
                Ok((s, l)) => Verdict::Forward(Action::Transmit {
                    next_hop: remote,
                    start: s,
                    len: l,
                    encap: Encap::Ipip,
                }),
                Err(reason) => Verdict::Drop(reason),
            }
        }
        NextHop::Direct { gateway } => Verdict::Forward(Action::Transmit {
            next_hop: gateway,
            start,
            len,
            encap: Encap::None,
        }),
        NextHop::Blackhole => Verdict::Drop(DropReason::Blackhole),
    }
}

/// Writes the IPv4 packet to a local port, with an Ethernet header on an L2 port: to the MAC
/// of the destination's neighbour entry, or `learnt`, the MAC the route step found learnt.
fn deliver(
    snap: &Snapshot,
    port: PortId,
    p: Port,
    buf: &mut [u8],
    start: usize,
    len: usize,
    learnt: Option<crate::wire::EthernetAddress>,
) -> Verdict {
    match p.kind {
        PortKind::L3 => Verdict::Forward(Action::Deliver { port, start, len }),
        PortKind::L2 { mac, .. } => {
            let dst = Ipv4Packet::new_unchecked(&buf[start..start + len]).dst_addr();
            let Some(dst_mac) = learnt.or_else(|| snap.neigh.lookup(dst)) else {
                return Verdict::Drop(DropReason::NeighborMissing);
            };
            let Some(eth_start) = start.checked_sub(ethernet::HEADER_LEN) else {
                return Verdict::Drop(DropReason::NoHeadroom);
            };
            EthernetRepr {
                src_addr: mac,
                dst_addr: dst_mac,
                ethertype: EtherType::Ipv4,
            }
            .emit(&mut EthernetFrame::new_unchecked(
                &mut buf[eth_start..start],
            ));
            Verdict::Forward(Action::Deliver {
                port,
                start: eth_start,
                len: len + ethernet::HEADER_LEN,
            })
        }
    }
}

/// Drops the packet for `cause` and, where RFC 1812 allows, answers its sender with `kind`.
#[allow(clippy::too_many_arguments)]
fn error(
    snap: &Snapshot,
    origin: Origin,
    buf: &mut [u8],
    start: usize,
    len: usize,
    now: Instant,
    cause: DropReason,
    kind: IcmpError,
) -> Verdict {
    if origin == Origin::Generated {
        return Verdict::Drop(cause);
    }
    let Some((s, l)) = icmp::write_error(buf, start, len, snap.node.tunnel_addr, kind) else {
        return Verdict::Drop(cause);
    };
    match route(snap, Origin::Generated, buf, s, l, now) {
        Verdict::Forward(action) => Verdict::Reply {
            cause: Some(cause),
            action,
        },
        _ => Verdict::Drop(cause),
    }
}
