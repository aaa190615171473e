//! IP in IP (RFC 2003): an outer IPv4 header, protocol 4, in front of an unchanged inner IPv4
//! datagram. This is Calico's `ipipMode` and Linux's `tunl0`.
//!
//! There is no header of its own, so there is no view type: the outer header is an
//! [`Ipv4Packet`], and this module holds the rules that tie the two headers together.
//!
//! - Encapsulation (RFC 2003 §3.1): [`IpipRepr::for_inner`] copies the inner TOS byte into the outer
//!   header (DSCP and ECN alike, the "normal mode" of RFC 6040 §4.1), copies DF from the inner
//!   header (a DF datagram must not be fragmented by the tunnel either, so path MTU discovery
//!   sees the tunnel's 20-byte [`OVERHEAD`]), and uses the tunnel's own TTL, not the inner one.
//! - Decapsulation: [`parse_outer`] checks the outer header (protocol 4, checksum, not a fragment:
//!   Weft does not reassemble, and a fragment's payload is not a whole inner datagram), and
//!   [`inner`] additionally checks that the inner datagram is well formed and exactly fills the
//!   outer payload, so nothing past the inner datagram is silently dropped or trusted.

use std::net::Ipv4Addr;

use super::ipv4::{self, protocol, Ipv4Packet, Ipv4Repr};
use super::{Error, Result};

/// Bytes IP-in-IP adds: one IPv4 header without options. The tunnel MTU is the underlay MTU minus
/// this (Calico's `tunl0` is 1480 on a 1500-byte underlay).
pub const OVERHEAD: usize = ipv4::HEADER_LEN;

/// The outer header of an IP-in-IP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpipRepr {
    /// Tunnel entry point (this node's underlay address).
    pub src_addr: Ipv4Addr,
    /// Tunnel exit point (the peer node's underlay address).
    pub dst_addr: Ipv4Addr,
    /// The tunnel's TTL.
    pub ttl: u8,
    /// TOS byte, copied from the inner header.
    pub tos: u8,
    /// Don't Fragment, copied from the inner header.
    pub dont_frag: bool,
    /// Identification of the outer datagram.
    pub ident: u16,
    /// Length of the inner datagram (its `total_len`), i.e. the outer payload length.
    pub inner_len: usize,
}

impl IpipRepr {
    /// The outer header for carrying `inner` from `src` to `dst` (RFC 2003 §3.1): TOS and DF
    /// copied from `inner`, TTL and identification chosen by the tunnel (pass
    /// [`ipv4::DEFAULT_TTL`] unless configured otherwise), payload length = inner `total_len`.
    ///
    /// `inner` should be a checked packet; only its header fields are read.
    pub fn for_inner<T: AsRef<[u8]> + ?Sized>(
        inner: &Ipv4Packet<&T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
        ident: u16,
    ) -> IpipRepr {
        IpipRepr {
            src_addr: src,
            dst_addr: dst,
            ttl,
            tos: inner.tos(),
            dont_frag: inner.dont_frag(),
            ident,
            inner_len: usize::from(inner.total_len()),
        }
    }

    /// The length of the whole outer datagram: [`OVERHEAD`] + `inner_len`.
    pub const fn buffer_len(&self) -> usize {
        OVERHEAD + self.inner_len
    }

    fn outer_repr(&self) -> Ipv4Repr {
        Ipv4Repr {
            src_addr: self.src_addr,
            dst_addr: self.dst_addr,
            protocol: protocol::IPIP,
            payload_len: self.inner_len,
            ttl: self.ttl,
            tos: self.tos,
            ident: self.ident,
            dont_frag: self.dont_frag,
        }
    }

    /// Writes the 20-byte outer header (protocol 4, `total_len` = 20 + `inner_len`, checksum
    /// filled) at the start of `outer`; the inner datagram is expected right after it and is not
    /// touched.
    ///
    /// # Panics
    /// When the buffer is shorter than [`OVERHEAD`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, outer: &mut Ipv4Packet<T>) {
        self.outer_repr().emit(outer);
    }
}

/// Reads the outer header of an IP-in-IP datagram. Checks, in order: the lengths and version of
/// [`Ipv4Packet::new_checked`] (so an unchecked view is safe), protocol 4 ([`Error::Unsupported`]
/// otherwise), the header checksum ([`Error::Checksum`]), and that the datagram is not a fragment
/// ([`Error::Unsupported`]: Weft does not reassemble, and a fragment does not hold a whole inner
/// datagram).
pub fn parse_outer<T: AsRef<[u8]>>(outer: &Ipv4Packet<T>) -> Result<IpipRepr> {
    outer.check_version_and_len()?;
    if outer.protocol() != protocol::IPIP {
        return Err(Error::Unsupported);
    }
    if !outer.verify_checksum() {
        return Err(Error::Checksum);
    }
    if outer.is_fragment() {
        return Err(Error::Unsupported);
    }
    Ok(IpipRepr {
        src_addr: outer.src_addr(),
        dst_addr: outer.dst_addr(),
        ttl: outer.ttl(),
        tos: outer.tos(),
        dont_frag: outer.dont_frag(),
        ident: outer.ident(),
        inner_len: outer.payload().len(),
    })
}

/// The inner datagram of an IP-in-IP datagram, borrowed from the outer buffer.
///
/// Checks [`parse_outer`], then that the outer payload is a well-formed IPv4 datagram (version 4,
/// sane header length) whose `total_len` equals the outer payload length. An inner datagram shorter
/// than 20 bytes is [`Error::Truncated`]; any other disagreement between the inner length fields
/// and the outer payload is [`Error::Malformed`]: the outer header is complete, so it is the inner
/// header that lies.
pub fn inner<'a, T: AsRef<[u8]> + ?Sized>(
    outer: &Ipv4Packet<&'a T>,
) -> Result<Ipv4Packet<&'a [u8]>> {
    parse_outer(outer)?;
    // `into_inner` on a copy of the view yields the buffer for 'a, not for the borrow of `outer`.
    let bytes: &'a [u8] = outer.into_inner().as_ref();
    // `parse_outer` has checked the lengths, so this range is within the buffer.
    let payload = &bytes[outer.header_len()..usize::from(outer.total_len())];
    let packet = Ipv4Packet::new_checked(payload).map_err(|err| match err {
        Error::Truncated if payload.len() >= ipv4::HEADER_LEN => Error::Malformed,
        other => other,
    })?;
    if usize::from(packet.total_len()) != payload.len() {
        return Err(Error::Malformed);
    }
    Ok(packet)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ping of `ipv4::tests` (10.244.1.2 -> 10.244.2.3, DF, TTL 64) carried by Calico-style
    /// IPIP from node 192.168.64.2 to node 192.168.64.3; outer checksum computed independently.
    const TUNNELLED_PING: [u8; 56] = [
        // Outer header.
        0x45, 0x00, // version 4, IHL 5; TOS copied from the inner header
        0x00, 0x38, // total length 56 = 20 + 36
        0xbe, 0xef, // identification (the tunnel's own)
        0x40, 0x00, // DF copied from the inner header
        0x40, // TTL 64 (the tunnel's own)
        0x04, // protocol: IP in IP
        0x7a, 0x7c, // header checksum
        192, 168, 64, 2, // tunnel entry
        192, 168, 64, 3, // tunnel exit
        // Inner datagram, unchanged.
        0x45, 0x00, 0x00, 0x24, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x01, 0x05, 0xa7, 10, 244, 1, 2, 10,
        244, 2, 3, 0x08, 0x00, 0x71, 0x12, 0x12, 0x34, 0x00, 0x01, b'w', b'e', b'f', b't', b'-',
        b'p', b'i', b'n',
    ];

    const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 2);
    const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 3);

    fn repr() -> IpipRepr {
        IpipRepr {
            src_addr: NODE_A,
            dst_addr: NODE_B,
            ttl: 64,
            tos: 0,
            dont_frag: true,
            ident: 0xbeef,
            inner_len: 36,
        }
    }

    #[test]
    fn encapsulation_is_byte_exact() {
        let inner = Ipv4Packet::new_checked(&TUNNELLED_PING[20..]).expect("valid inner");
        let r = IpipRepr::for_inner(&inner, NODE_A, NODE_B, ipv4::DEFAULT_TTL, 0xbeef);
        assert_eq!(r, repr());
        assert_eq!(r.buffer_len(), 56);
        let mut out = [0u8; 56];
        out[20..].copy_from_slice(&TUNNELLED_PING[20..]);
        r.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, TUNNELLED_PING);
    }

    #[test]
    fn tos_and_df_follow_the_inner_header() {
        let mut inner_bytes = [0u8; 36];
        inner_bytes.copy_from_slice(&TUNNELLED_PING[20..]);
        let mut inner = Ipv4Packet::new_unchecked(&mut inner_bytes[..]);
        inner.set_tos(0xb9); // DSCP EF, ECN ECT(1)
        inner.set_flags_and_frag(false, false, 0);
        inner.set_ttl(3); // the inner TTL does not leak into the outer header
        let inner = Ipv4Packet::new_checked(&inner_bytes[..]).expect("valid");
        let r = IpipRepr::for_inner(&inner, NODE_A, NODE_B, 64, 7);
        assert_eq!((r.tos, r.dont_frag, r.ttl), (0xb9, false, 64));
    }

    #[test]
    fn decapsulation_yields_the_inner_datagram() {
        let outer = Ipv4Packet::new_checked(&TUNNELLED_PING[..]).expect("valid");
        assert_eq!(parse_outer(&outer), Ok(repr()));
        let datagram = inner(&outer).expect("valid inner");
        assert_eq!(datagram.into_inner(), &TUNNELLED_PING[20..]);
        assert_eq!(datagram.dst_addr(), Ipv4Addr::new(10, 244, 2, 3));
        // Link-layer padding after the outer datagram is not part of the inner one.
        let mut padded = [0u8; 64];
        padded[..56].copy_from_slice(&TUNNELLED_PING);
        let outer = Ipv4Packet::new_checked(&padded[..]).expect("valid");
        assert_eq!(inner(&outer).map(|p| p.into_inner().len()), Ok(36));
    }

    /// Applies `edit` to a copy of the fixture and refills the outer checksum.
    fn edited(edit: impl FnOnce(&mut [u8])) -> [u8; 56] {
        let mut b = TUNNELLED_PING;
        edit(&mut b);
        Ipv4Packet::new_unchecked(&mut b[..]).fill_checksum();
        b
    }

    #[test]
    fn outer_errors() {
        for len in 0..TUNNELLED_PING.len() {
            let view = Ipv4Packet::new_unchecked(&TUNNELLED_PING[..len]);
            assert_eq!(parse_outer(&view), Err(Error::Truncated), "{len}");
            assert_eq!(inner(&view).err(), Some(Error::Truncated), "{len}");
        }
        let udp = edited(|b| b[9] = protocol::UDP);
        assert_eq!(
            parse_outer(&Ipv4Packet::new_unchecked(&udp[..])),
            Err(Error::Unsupported)
        );
        let mut bad_sum = TUNNELLED_PING;
        bad_sum[11] ^= 1;
        assert_eq!(
            parse_outer(&Ipv4Packet::new_unchecked(&bad_sum[..])),
            Err(Error::Checksum)
        );
        assert_eq!(
            inner(&Ipv4Packet::new_unchecked(&bad_sum[..])).err(),
            Some(Error::Checksum)
        );
        let first_fragment = edited(|b| b[6] = 0x20); // MF
        assert_eq!(
            parse_outer(&Ipv4Packet::new_unchecked(&first_fragment[..])),
            Err(Error::Unsupported)
        );
        let later_fragment = edited(|b| b[7] = 0x01); // offset 8
        assert_eq!(
            inner(&Ipv4Packet::new_unchecked(&later_fragment[..])).err(),
            Some(Error::Unsupported)
        );
        let v6 = edited(|b| b[0] = 0x65);
        assert_eq!(
            parse_outer(&Ipv4Packet::new_unchecked(&v6[..])),
            Err(Error::Malformed)
        );
    }

    #[test]
    fn inner_errors() {
        let inner_of = |b: &[u8]| inner(&Ipv4Packet::new_unchecked(b)).err();
        // Inner version 6.
        assert_eq!(inner_of(&edited(|b| b[20] = 0x65)), Some(Error::Malformed));
        // Inner IHL 3.
        assert_eq!(inner_of(&edited(|b| b[20] = 0x43)), Some(Error::Malformed));
        // Inner total length claims 37 of 36 bytes: it lies, the outer is complete.
        assert_eq!(inner_of(&edited(|b| b[23] = 37)), Some(Error::Malformed));
        // Inner total length claims 35: one byte of the outer payload would go unaccounted.
        assert_eq!(inner_of(&edited(|b| b[23] = 35)), Some(Error::Malformed));
        // Outer payload of 10 bytes: too short for any inner header.
        let runt = edited(|b| b[3] = 30);
        assert_eq!(inner_of(&runt), Some(Error::Truncated));
        assert_eq!(
            parse_outer(&Ipv4Packet::new_unchecked(&runt[..])).map(|r| r.inner_len),
            Ok(10)
        );
    }
}
