//! Where the headers and payload of an IPv4/TCP or IPv4/UDP packet are, checked once through
//! [`wire`](crate::wire) so that segmentation and coalescing can then index inside them.
//!
//! [`Tcp4::parse`] checks everything the other offload modules index by (the IPv4 view, the TCP
//! view's data offset), so after it succeeds the offsets it returns are inside the packet and the
//! `wire` views built on them do not panic.

use std::net::Ipv4Addr;

use super::OffloadError;
use crate::wire::ipv4::{protocol, Ipv4Packet};
use crate::wire::tcp::TcpPacket;
use crate::wire::{checksum, udp, Error};

/// Where the headers and payload of an IPv4/TCP packet are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tcp4 {
    /// IPv4 header bytes (IHL × 4).
    pub ip_len: usize,
    /// TCP header bytes (data offset × 4); 8 for a UDP layout ([`Tcp4::parse_udp`]).
    pub tcp_len: usize,
    /// The IPv4 total length: the packet ends here (trailing bytes are ignored, as `ip_rcv` trims).
    pub total: usize,
}

impl Tcp4 {
    /// Checks `pkt` is an unfragmented IPv4/TCP packet whose headers fit its total length, which
    /// fits `pkt`.
    pub(crate) fn parse(pkt: &[u8]) -> Result<Tcp4, OffloadError> {
        let (ip_len, total) = ipv4_unfragmented(pkt, protocol::TCP, OffloadError::NotTcp)?;
        let tcp = TcpPacket::new_checked(&pkt[ip_len..total]).map_err(|e| match e {
            Error::Truncated => OffloadError::Truncated,
            _ => OffloadError::NotTcp,
        })?;
        Ok(Tcp4 {
            ip_len,
            tcp_len: tcp.header_len(),
            total,
        })
    }

    /// Checks `pkt` is an unfragmented IPv4/UDP datagram whose headers fit its total length,
    /// which fits `pkt`; the layout's `tcp_len` is then the 8-byte UDP header. The UDP length
    /// field is not checked: segmentation rewrites it per segment.
    pub(crate) fn parse_udp(pkt: &[u8]) -> Result<Tcp4, OffloadError> {
        let (ip_len, total) = ipv4_unfragmented(pkt, protocol::UDP, OffloadError::NotUdp)?;
        if total < ip_len + udp::HEADER_LEN {
            return Err(OffloadError::Truncated);
        }
        Ok(Tcp4 {
            ip_len,
            tcp_len: udp::HEADER_LEN,
            total,
        })
    }

    /// IPv4 plus TCP header bytes.
    pub(crate) fn hdr_len(&self) -> usize {
        self.ip_len + self.tcp_len
    }

    /// TCP payload bytes.
    pub(crate) fn payload_len(&self) -> usize {
        self.total - self.hdr_len()
    }

    /// The IPv4 header of `pkt`, which this layout was parsed from.
    #[inline]
    pub(crate) fn ip<'p>(&self, pkt: &'p [u8]) -> Ipv4Packet<&'p [u8]> {
        Ipv4Packet::new_unchecked(&pkt[..self.ip_len])
    }

    /// The TCP header of `pkt`, which this layout was parsed from (the segment up to its end).
    #[inline]
    pub(crate) fn tcp<'p>(&self, pkt: &'p [u8]) -> TcpPacket<&'p [u8]> {
        TcpPacket::new_unchecked(&pkt[self.ip_len..self.total])
    }
}

/// Checks `pkt` is an unfragmented IPv4 packet of protocol `proto` (else `wrong`) whose total
/// length fits `pkt`; returns its header length and total length.
fn ipv4_unfragmented(
    pkt: &[u8],
    proto: u8,
    wrong: OffloadError,
) -> Result<(usize, usize), OffloadError> {
    let ip = Ipv4Packet::new_checked(pkt).map_err(|e| match e {
        Error::Truncated => OffloadError::Truncated,
        _ => OffloadError::NotIpv4,
    })?;
    if ip.protocol() != proto {
        return Err(wrong);
    }
    if ip.is_fragment() {
        return Err(OffloadError::Fragment);
    }
    Ok((ip.header_len(), usize::from(ip.total_len())))
}

/// Source and destination addresses of a checked IPv4 header.
#[inline]
pub(crate) fn addrs(pkt: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
    let ip = Ipv4Packet::new_unchecked(pkt);
    (ip.src_addr(), ip.dst_addr())
}

/// The unfolded pseudo-header sum of a TCP segment of `tcp_len` bytes (RFC 793 §3.1).
pub(crate) fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, tcp_len: usize) -> u32 {
    // tcp_len fits u16: it is bounded by an IPv4 total length.
    checksum::pseudo_header_v4(src, dst, protocol::TCP, tcp_len as u16)
}
