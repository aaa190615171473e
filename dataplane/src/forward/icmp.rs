//! ICMP errors written in place of the packet that caused them.
//!
//! The error quotes the invoking datagram, which already sits in the buffer: the new IPv4 and ICMP
//! headers (28 bytes) are written in the headroom in front of it and the quote is cut to keep the
//! error within 576 bytes (RFC 1812 §4.3.2.3). Nothing is copied.

use std::net::Ipv4Addr;

use crate::wire::icmpv4::{self, Icmpv4Packet};
use crate::wire::ipv4::{self, Ipv4Packet, Ipv4Repr};

/// The ICMP error to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpError {
    /// Destination unreachable, network unreachable (no route).
    NetUnreachable,
    /// Destination unreachable, fragmentation needed and DF set, with the next-hop MTU (RFC 1191).
    FragNeeded {
        /// The MTU of the hop the packet did not fit.
        mtu: u16,
    },
    /// Time exceeded in transit (TTL reached zero).
    TtlExceeded,
}

/// The largest ICMP error we build, headers included (RFC 1812 §4.3.2.3).
pub const MAX_ERROR_LEN: usize = 576;
/// IPv4 and ICMP headers in front of the quote.
pub const ERROR_HEADER_LEN: usize = ipv4::HEADER_LEN + 8;

/// Whether RFC 1812 §4.3.2.7 allows an ICMP error about the IPv4 packet `orig`: not about an ICMP
/// error, not about a non-first fragment, not to or from a non-unicast address.
pub fn may_send_error(orig: &Ipv4Packet<&[u8]>) -> bool {
    if orig.frag_offset() != 0 {
        return false;
    }
    let src = orig.src_addr();
    let dst = orig.dst_addr();
    if !is_unicast(src) || !is_unicast(dst) {
        return false;
    }
    if orig.protocol() == ipv4::protocol::ICMP {
        let payload = orig.payload();
        match payload.first() {
            // Errors about informational messages are fine; about errors (or unknown), never.
            Some(&t)
                if t == icmpv4::msg_type::ECHO_REQUEST || t == icmpv4::msg_type::ECHO_REPLY => {}
            _ => return false,
        }
    }
    true
}

/// A unicast address a packet may come from or go to (not 0/8, loopback, multicast, broadcast,
/// class E).
pub fn is_unicast(addr: Ipv4Addr) -> bool {
    !(addr.is_unspecified()
        || addr.octets()[0] == 0
        || addr.is_loopback()
        || addr.is_multicast()
        || addr.is_broadcast()
        || addr.octets()[0] >= 240)
}

/// Writes `error` about the IPv4 packet at `buf[start..start + len]` (already checked by the
/// caller) into the headroom in front of it, from `src`, addressed to the packet's source.
/// Returns the start and length of the error, or `None` when RFC 1812 forbids an error about this
/// packet or there is no headroom.
pub fn write_error(
    buf: &mut [u8],
    start: usize,
    len: usize,
    src: Ipv4Addr,
    error: IcmpError,
) -> Option<(usize, usize)> {
    let err_start = start.checked_sub(ERROR_HEADER_LEN)?;
    let (orig_src, orig_len) = {
        let orig = Ipv4Packet::new_checked(&buf[start..start + len]).ok()?;
        if !may_send_error(&orig) {
            return None;
        }
        (orig.src_addr(), len)
    };
    let quote = orig_len.min(MAX_ERROR_LEN - ERROR_HEADER_LEN);
    let total = ERROR_HEADER_LEN + quote;
    let pkt = &mut buf[err_start..err_start + total];
    let (ip_hdr, icmp_part) = pkt.split_at_mut(ipv4::HEADER_LEN);
    {
        let mut icmp = Icmpv4Packet::new_unchecked(&mut *icmp_part);
        let (ty, code, mtu) = match error {
            IcmpError::NetUnreachable => (
                icmpv4::msg_type::DST_UNREACHABLE,
                icmpv4::dst_unreachable::NET_UNREACHABLE,
                0,
            ),
            IcmpError::FragNeeded { mtu } => (
                icmpv4::msg_type::DST_UNREACHABLE,
                icmpv4::dst_unreachable::FRAG_NEEDED,
                mtu,
            ),
            IcmpError::TtlExceeded => (
                icmpv4::msg_type::TIME_EXCEEDED,
                icmpv4::time_exceeded::TTL_EXCEEDED,
                0,
            ),
        };
        // Setters, not `Icmpv4Repr::emit`: the quote is already in place behind the header, and
        // the Repr would copy it onto itself.
        icmp.set_msg_type(ty);
        icmp.set_msg_code(code);
        // Bytes 4..6 are unused (zero); 6..8 carry the next-hop MTU for frag-needed (RFC 1191 §4).
        icmp.set_echo_ident(0);
        icmp.set_next_hop_mtu(mtu);
        icmp.fill_checksum();
    }
    Ipv4Repr {
        src_addr: src,
        dst_addr: orig_src,
        protocol: ipv4::protocol::ICMP,
        payload_len: total - ipv4::HEADER_LEN,
        ttl: ipv4::DEFAULT_TTL,
        // Precedence "internetwork control", as Linux marks the ICMP errors it sends.
        tos: 0xc0,
        ident: 0,
        dont_frag: false,
    }
    .emit(&mut Ipv4Packet::new_unchecked(ip_hdr));
    Some((err_start, total))
}
