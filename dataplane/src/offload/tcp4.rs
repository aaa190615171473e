//! The few IPv4 and TCP header facts segmentation and coalescing need, read from raw bytes.
//!
//! [`Tcp4::parse`] checks everything the other offload modules index by, so after it succeeds the
//! offsets it returns are inside the packet.

use std::net::Ipv4Addr;

use super::OffloadError;
use crate::wire::checksum;

/// IPv4 header field offsets (RFC 791 §3.1).
pub(crate) mod ip {
    pub const TOS: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    /// The DF bit in the flags/fragment-offset word.
    pub const DF: u16 = 0x4000;
    /// MF and the fragment offset.
    pub const FRAG_MASK: u16 = 0x3fff;
}

/// TCP header field offsets and flags (RFC 793 §3.1, RFC 3168 §6.1 for ECE/CWR).
pub(crate) mod tcp {
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const CHECKSUM: usize = 16;
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK_FLAG: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const CWR: u8 = 0x80;
    pub const MIN_LEN: usize = 20;
}

/// IPv4 protocol number of TCP.
pub(crate) const PROTO_TCP: u8 = 6;

/// The IPv4 protocol number of UDP.
pub(crate) const PROTO_UDP: u8 = 17;

/// UDP header field offsets (RFC 768).
pub(crate) mod udp {
    pub const LEN: usize = 4;
    pub const CHECKSUM: usize = 6;
    pub const HDR_LEN: usize = 8;
}

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
        let (ip_len, total) = ipv4_unfragmented(pkt, PROTO_TCP, OffloadError::NotTcp)?;
        if total < ip_len + tcp::MIN_LEN {
            return Err(OffloadError::Truncated);
        }
        let tcp_len = usize::from(pkt[ip_len + tcp::DATA_OFF] >> 4) * 4;
        if tcp_len < tcp::MIN_LEN {
            return Err(OffloadError::NotTcp);
        }
        if ip_len + tcp_len > total {
            return Err(OffloadError::Truncated);
        }
        Ok(Tcp4 {
            ip_len,
            tcp_len,
            total,
        })
    }

    /// Checks `pkt` is an unfragmented IPv4/UDP datagram whose headers fit its total length,
    /// which fits `pkt`; the layout's `tcp_len` is then the 8-byte UDP header.
    pub(crate) fn parse_udp(pkt: &[u8]) -> Result<Tcp4, OffloadError> {
        let (ip_len, total) = ipv4_unfragmented(pkt, PROTO_UDP, OffloadError::NotUdp)?;
        if total < ip_len + udp::HDR_LEN {
            return Err(OffloadError::Truncated);
        }
        Ok(Tcp4 {
            ip_len,
            tcp_len: udp::HDR_LEN,
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
}

/// Checks `pkt` is an unfragmented IPv4 packet of protocol `proto` (else `wrong`) whose total
/// length fits `pkt`; returns its header length and total length.
fn ipv4_unfragmented(
    pkt: &[u8],
    proto: u8,
    wrong: OffloadError,
) -> Result<(usize, usize), OffloadError> {
    if pkt.len() < 20 {
        return Err(OffloadError::Truncated);
    }
    if pkt[0] >> 4 != 4 {
        return Err(OffloadError::NotIpv4);
    }
    let ip_len = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(be16(pkt, ip::TOTAL_LEN));
    if ip_len < 20 || total < ip_len {
        return Err(OffloadError::NotIpv4);
    }
    if total > pkt.len() {
        return Err(OffloadError::Truncated);
    }
    if pkt[ip::PROTOCOL] != proto {
        return Err(wrong);
    }
    if be16(pkt, ip::FLAGS_FRAG) & ip::FRAG_MASK != 0 {
        return Err(OffloadError::Fragment);
    }
    Ok((ip_len, total))
}

/// The big-endian `u16` at `at`. Callers index only inside a checked header.
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The big-endian `u32` at `at`.
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Source and destination addresses of a checked IPv4 header.
pub(crate) fn addrs(pkt: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
    let a = |at: usize| Ipv4Addr::new(pkt[at], pkt[at + 1], pkt[at + 2], pkt[at + 3]);
    (a(ip::SRC), a(ip::DST))
}

/// Recomputes the IPv4 header checksum of `hdr` (the whole header, options included).
pub(crate) fn fill_ip_checksum(hdr: &mut [u8]) {
    hdr[ip::CHECKSUM..ip::CHECKSUM + 2].fill(0);
    let c = checksum::checksum(hdr);
    hdr[ip::CHECKSUM..ip::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
}

/// The unfolded pseudo-header sum of a TCP segment of `tcp_len` bytes (RFC 793 §3.1).
pub(crate) fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, tcp_len: usize) -> u32 {
    // tcp_len fits u16: it is bounded by an IPv4 total length.
    checksum::pseudo_header_v4(src, dst, PROTO_TCP, tcp_len as u16)
}
