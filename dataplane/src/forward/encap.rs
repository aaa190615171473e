//! Writing and removing tunnel headers in place.
//!
//! Encapsulation writes the outer headers into the headroom in front of the inner packet, so the
//! payload is never copied; decapsulation only moves the start offset. These are
//! the building blocks of [`super::forward`] and are public so they can be measured on their own.

use std::net::Ipv4Addr;

use crate::drop::DropReason;
use crate::wire::ipip;
use crate::wire::ipv4::{self, Ipv4Packet, Ipv4Repr};
use crate::wire::udp::{UdpChecksum, UdpPacket, UdpRepr};
use crate::wire::{
    ethernet, EtherType, EthernetAddress, EthernetFrame, EthernetRepr, VxlanPacket, VxlanRepr,
};

/// Bytes from the outer IPv4 header to the VXLAN header: outer IPv4 (20) + UDP (8). A shell that
/// sends through a UDP socket sends the encapsulated packet from this offset on.
pub const VXLAN_UDP_PAYLOAD_OFFSET: usize = 28;

/// Where VXLAN headers go: the parameters of one encapsulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanEncap {
    /// VXLAN network identifier.
    pub vni: u32,
    /// Inner source MAC: our VTEP MAC.
    pub src_mac: EthernetAddress,
    /// Inner destination MAC: the peer's VTEP MAC (a kernel VTEP drops frames not addressed to it).
    pub dst_mac: EthernetAddress,
    /// Outer source: our underlay address.
    pub src_addr: Ipv4Addr,
    /// Outer destination: the peer's underlay address.
    pub dst_addr: Ipv4Addr,
    /// UDP destination port (flannel 8472).
    pub dst_port: u16,
    /// Outer TTL.
    pub ttl: u8,
    /// Outer UDP checksum policy.
    pub udp_checksum: UdpChecksum,
}

/// Bytes VXLAN puts in front of the inner IPv4 packet: outer IPv4 20, UDP 8, VXLAN 8, Ethernet 14.
pub const VXLAN_OVERHEAD: usize = crate::wire::vxlan::OVERHEAD_V4;
/// Bytes IP-in-IP puts in front of the inner IPv4 packet.
pub const IPIP_OVERHEAD: usize = crate::wire::ipip::OVERHEAD;

/// The range of UDP source ports VXLAN flows are spread over: Linux's default
/// `ip_local_port_range`, which is what the kernel's `udp_flow_src_port` uses for `flannel.1`.
pub const SRC_PORT_MIN: u16 = 32768;
/// Exclusive upper end of the source port range.
pub const SRC_PORT_END: u16 = 61000;

/// The outer UDP source port for the inner IPv4 packet `inner`: a hash of its flow (addresses,
/// protocol and, for unfragmented TCP, UDP and SCTP, the ports), so one flow keeps one port and
/// underlay ECMP and RSS spread flows (RFC 7348 §5, "Source Port").
#[inline]
pub fn flow_src_port(inner: &[u8]) -> u16 {
    let hash = flow_hash(inner);
    let span = u64::from(SRC_PORT_END - SRC_PORT_MIN);
    // Multiply-shift maps the 32-bit hash onto the range without a division, as the kernel does.
    SRC_PORT_MIN + ((u64::from(hash) * span) >> 32) as u16
}

/// A 32-bit hash of the inner IPv4 flow. Reads only bytes that exist: a too-short packet hashes
/// what it has.
#[inline]
pub fn flow_hash(inner: &[u8]) -> u32 {
    if inner.len() < ipv4::HEADER_LEN {
        return 0;
    }
    let word = |i: usize| u32::from_be_bytes([inner[i], inner[i + 1], inner[i + 2], inner[i + 3]]);
    let src = word(12);
    let dst = word(16);
    let proto = inner[9];
    let ihl = usize::from(inner[0] & 0x0f) * 4;
    let unfragmented = inner[6] & 0x3f == 0 && inner[7] == 0;
    let ports = if unfragmented
        && matches!(proto, ipv4::protocol::TCP | ipv4::protocol::UDP | 132)
        && inner.len() >= ihl + 4
        && ihl >= ipv4::HEADER_LEN
    {
        word(ihl)
    } else {
        0
    };
    let mut h =
        (u64::from(src) << 32 | u64::from(dst)) ^ (u64::from(ports) << 8 | u64::from(proto));
    // A 64-bit finaliser (the murmur3 fmix64 constants): every input bit reaches every output bit.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h as u32
}

/// Wraps the inner IPv4 packet at `buf[start..start + len]` in VXLAN, writing the inner Ethernet,
/// VXLAN, UDP and outer IPv4 headers into the 50 bytes in front of it. Returns the start of the
/// outer IPv4 header and the new length.
///
/// The outer header follows Linux's `flannel.1`: DF clear, TOS 0, the given TTL; its identification
/// is derived from the inner one and the flow so fragments of distinct flows do not collide.
#[inline]
pub fn vxlan_encap(
    buf: &mut [u8],
    start: usize,
    len: usize,
    p: &VxlanEncap,
    src_port: u16,
) -> Result<(usize, usize), DropReason> {
    let Some(outer) = start.checked_sub(VXLAN_OVERHEAD) else {
        return Err(DropReason::NoHeadroom);
    };
    let total = len + VXLAN_OVERHEAD;
    if total > usize::from(u16::MAX) || buf.len() < start + len {
        return Err(DropReason::TooBig);
    }
    let inner_ident = u16::from_be_bytes([buf[start + 4], buf[start + 5]]);
    let pkt = &mut buf[outer..start + len];

    let (ip_hdr, rest) = pkt.split_at_mut(ipv4::HEADER_LEN);
    let (udp_part, rest) = rest.split_at_mut(8);
    let (vxlan_hdr, rest) = rest.split_at_mut(8);
    let (eth_hdr, _inner) = rest.split_at_mut(ethernet::HEADER_LEN);

    EthernetRepr {
        src_addr: p.src_mac,
        dst_addr: p.dst_mac,
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(eth_hdr));
    VxlanRepr { vni: p.vni }.emit(&mut VxlanPacket::new_unchecked(vxlan_hdr));

    Ipv4Repr {
        src_addr: p.src_addr,
        dst_addr: p.dst_addr,
        protocol: ipv4::protocol::UDP,
        payload_len: total - ipv4::HEADER_LEN,
        ttl: p.ttl,
        tos: 0,
        ident: inner_ident ^ src_port.rotate_left(5),
        dont_frag: false,
    }
    .emit(&mut Ipv4Packet::new_unchecked(ip_hdr));
    let repr = UdpRepr {
        src_port,
        dst_port: p.dst_port,
    };
    let payload_len = total - ipv4::HEADER_LEN - 8;
    match p.udp_checksum {
        // A zero checksum needs only the header in the view.
        UdpChecksum::Zero => repr.emit(
            &mut UdpPacket::new_unchecked(udp_part),
            p.src_addr,
            p.dst_addr,
            payload_len,
            UdpChecksum::Zero,
        ),
        // A computed one covers the payload, so the view must span it.
        UdpChecksum::Compute => repr.emit(
            &mut UdpPacket::new_unchecked(&mut buf[outer + ipv4::HEADER_LEN..start + len]),
            p.src_addr,
            p.dst_addr,
            payload_len,
            UdpChecksum::Compute,
        ),
    }
    Ok((outer, total))
}

/// Checks a VXLAN packet (VXLAN header onward, as a UDP socket delivers it) against our VNI and
/// VTEP MAC and returns the offset and length of the inner IPv4 packet within `pkt`.
#[inline]
pub fn vxlan_decap(
    pkt: &[u8],
    vni: u32,
    vtep_mac: EthernetAddress,
) -> Result<(usize, usize), DropReason> {
    let vxlan = VxlanPacket::new_checked(pkt).map_err(|_| DropReason::Truncated)?;
    let repr = VxlanRepr::parse(&vxlan).map_err(|_| DropReason::VxlanFlags)?;
    if repr.vni != vni {
        return Err(DropReason::VxlanVni);
    }
    let eth = EthernetFrame::new_checked(vxlan.payload()).map_err(|_| DropReason::Truncated)?;
    if eth.dst_addr() != vtep_mac {
        return Err(DropReason::VxlanInnerMac);
    }
    if eth.ethertype() != EtherType::Ipv4 {
        return Err(DropReason::NotIpv4);
    }
    let offset = 8 + ethernet::HEADER_LEN;
    Ok((offset, pkt.len() - offset))
}

/// Wraps the inner IPv4 packet at `buf[start..start + len]` in an outer IPv4 header with protocol
/// 4 (RFC 2003 §3.1: TOS copied from the inner header, DF copied from the inner header, the
/// tunnel's own TTL). Returns the start of the outer header and the new length.
#[inline]
pub fn ipip_encap(
    buf: &mut [u8],
    start: usize,
    len: usize,
    src_addr: Ipv4Addr,
    dst_addr: Ipv4Addr,
    ttl: u8,
) -> Result<(usize, usize), DropReason> {
    let Some(outer) = start.checked_sub(IPIP_OVERHEAD) else {
        return Err(DropReason::NoHeadroom);
    };
    let total = len + IPIP_OVERHEAD;
    if total > usize::from(u16::MAX) || buf.len() < start + len {
        return Err(DropReason::TooBig);
    }
    let repr = {
        let inner = Ipv4Packet::new_unchecked(&buf[start..start + len]);
        // RFC 2003 §3.1 (TOS and DF from the inner header). The outer identification reuses the
        // inner one: the core keeps no per-packet counter.
        ipip::IpipRepr::for_inner(&inner, src_addr, dst_addr, ttl, inner.ident())
    };
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[outer..start]));
    Ok((outer, total))
}
