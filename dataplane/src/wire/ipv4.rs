//! IPv4 (RFC 791): the header view Weft forwards on, and the header it writes.
//!
//! [`Ipv4Packet::new_checked`] validates everything the accessors rely on: the version is 4, the
//! header length (IHL) is at least 5 words and fits the buffer, and the total length covers the
//! header and fits the buffer. After that no accessor panics, and [`Ipv4Packet::payload`] is exactly
//! the datagram's payload: bytes past `total_len` (Ethernet padding) are excluded.
//!
//! The checksum is not checked by `new_checked`, so a router can still count bad checksums
//! separately; [`Ipv4Repr::parse`] checks it. Options are skipped, never interpreted (RFC 7126
//! recommends routers forward them unprocessed). Fragments parse like any datagram; the tunnel
//! modules decide what to do with them.
//!
//! Forwarding decrements the TTL with an incremental checksum update (RFC 1624) rather than a
//! recomputation: see [`Ipv4Packet::decrement_ttl`].

use std::net::Ipv4Addr;

use super::checksum;
use super::{Error, Result};

/// Length of an IPv4 header without options, which is all Weft emits.
pub const HEADER_LEN: usize = 20;

/// The TTL Weft puts on datagrams it originates (RFC 1700's recommended default, as Linux uses).
pub const DEFAULT_TTL: u8 = 64;

/// IP protocol numbers (IANA "Assigned Internet Protocol Numbers") Weft looks at.
pub mod protocol {
    /// Internet Control Message Protocol (RFC 792).
    pub const ICMP: u8 = 1;
    /// IPv4 encapsulated in IPv4 (RFC 2003), Calico's `ipipMode`.
    pub const IPIP: u8 = 4;
    /// Transmission Control Protocol (RFC 793).
    pub const TCP: u8 = 6;
    /// User Datagram Protocol (RFC 768).
    pub const UDP: u8 = 17;
}

pub(crate) mod field {
    use core::ops::Range;

    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
}

// Bits of the flags/fragment-offset word (RFC 791 §3.1).
const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A zero-copy view of an IPv4 datagram in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer or one whose
    /// length fields lie.
    pub const fn new_unchecked(buffer: T) -> Ipv4Packet<T> {
        Ipv4Packet { buffer }
    }

    /// Wraps `buffer` after checking that it holds a well-formed IPv4 datagram: at least 20 bytes
    /// ([`Error::Truncated`]), version 4 ([`Error::Malformed`]), then [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Ipv4Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_version_and_len()?;
        Ok(packet)
    }

    /// Everything `new_checked` checks, in its order, for the `Repr`s and the tunnel parsers that
    /// accept unchecked views.
    pub(crate) fn check_version_and_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 {
            return Err(Error::Malformed);
        }
        self.check_len()
    }

    /// Checks the length fields against each other and the buffer, which is everything the
    /// accessors need: buffer >= 20 bytes (Truncated), IHL >= 5 (Malformed), header within the
    /// buffer (Truncated), total length >= header length (Malformed), total length within the
    /// buffer (Truncated). The buffer may be longer than the total length (link-layer padding).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if header_len > len {
            return Err(Error::Truncated);
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return Err(Error::Malformed);
        }
        if total_len > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Gives back the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn read_u16(&self, range: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[range];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn read_addr(&self, range: core::ops::Range<usize>) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[range];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// The version field (4 for a checked packet).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The header length in bytes (IHL × 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The type-of-service byte: DSCP in the top six bits, ECN in the bottom two (RFC 2474, 3168).
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    /// The total length of the datagram, header included.
    pub fn total_len(&self) -> u16 {
        self.read_u16(field::LENGTH)
    }

    /// The identification field.
    pub fn ident(&self) -> u16 {
        self.read_u16(field::IDENT)
    }

    /// The Don't Fragment flag.
    pub fn dont_frag(&self) -> bool {
        self.read_u16(field::FLG_OFF) & FLAG_DF != 0
    }

    /// The More Fragments flag.
    pub fn more_frags(&self) -> bool {
        self.read_u16(field::FLG_OFF) & FLAG_MF != 0
    }

    /// The fragment offset in bytes (the field counts 8-byte units).
    pub fn frag_offset(&self) -> u16 {
        (self.read_u16(field::FLG_OFF) & OFFSET_MASK) << 3
    }

    /// True for any fragment, first or later: MF set or a non-zero offset.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// The payload's protocol number; see [`protocol`].
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// The header checksum field.
    pub fn checksum(&self) -> u16 {
        self.read_u16(field::CHECKSUM)
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        self.read_addr(field::SRC_ADDR)
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        self.read_addr(field::DST_ADDR)
    }

    /// True when the header (options included) sums to all ones, i.e. the checksum is right.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(&self.buffer.as_ref()[..self.header_len()]) == !0
    }

    /// The payload: from the end of the header to `total_len`, excluding any padding after it.
    pub fn payload(&self) -> &[u8] {
        let range = self.header_len()..usize::from(self.total_len());
        &self.buffer.as_ref()[range]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn write_u16(&mut self, range: core::ops::Range<usize>, value: u16) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the version field (the IHL nibble is kept).
    pub fn set_version(&mut self, version: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (version << 4);
    }

    /// Sets the header length in bytes; it must be a multiple of 4 between 20 and 60 (the low two
    /// bits are dropped, as the field counts 32-bit words).
    pub fn set_header_len(&mut self, len: usize) {
        debug_assert!(
            (HEADER_LEN..=60).contains(&len) && len % 4 == 0,
            "bad IPv4 header length {len}"
        );
        let words = ((len / 4) & 0x0f) as u8;
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | words;
    }

    /// Sets the type-of-service byte.
    pub fn set_tos(&mut self, tos: u8) {
        self.buffer.as_mut()[field::TOS] = tos;
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, len: u16) {
        self.write_u16(field::LENGTH, len);
    }

    /// Sets the identification field.
    pub fn set_ident(&mut self, ident: u16) {
        self.write_u16(field::IDENT, ident);
    }

    /// Sets the flags and the fragment offset, given in bytes; the offset must be a multiple of 8
    /// (the low three bits are dropped, as the field counts 8-byte units). The reserved flag bit is
    /// cleared (RFC 791: "must be zero").
    pub fn set_flags_and_frag(
        &mut self,
        dont_frag: bool,
        more_frags: bool,
        frag_offset_bytes: u16,
    ) {
        debug_assert!(
            frag_offset_bytes % 8 == 0,
            "fragment offset {frag_offset_bytes} not a multiple of 8"
        );
        let mut word = (frag_offset_bytes >> 3) & OFFSET_MASK;
        if dont_frag {
            word |= FLAG_DF;
        }
        if more_frags {
            word |= FLAG_MF;
        }
        self.write_u16(field::FLG_OFF, word);
    }

    /// Sets the time to live (the checksum is not updated; see
    /// [`decrement_ttl`](Self::decrement_ttl)).
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the protocol number.
    pub fn set_protocol(&mut self, protocol: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol;
    }

    /// Sets the header checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        self.write_u16(field::CHECKSUM, value);
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// Computes the header checksum (options included) and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let value = checksum::checksum(&self.buffer.as_ref()[..self.header_len()]);
        self.set_checksum(value);
    }

    /// Decrements the TTL by one and returns the new value, updating the checksum incrementally
    /// (RFC 1624 eqn. 3 over the TTL|protocol word, as RFC 1812 §5.3.1 allows a router to do).
    ///
    /// An incremental update keeps a wrong checksum wrong instead of silently fixing it, which is
    /// what a router must do (RFC 1812 §4.2.2.5 asks for a bad datagram to be detectable end to
    /// end). The caller checks `ttl() > 1` (or `> 0`) first and answers Time Exceeded otherwise;
    /// a TTL of 0 is left at 0 rather than wrapping to 255.
    pub fn decrement_ttl(&mut self) -> u8 {
        let old_ttl = self.ttl();
        debug_assert!(old_ttl > 0, "decrement_ttl on a datagram with TTL 0");
        let new_ttl = old_ttl.saturating_sub(1);
        let proto = self.protocol();
        let old_word = u16::from_be_bytes([old_ttl, proto]);
        let new_word = u16::from_be_bytes([new_ttl, proto]);
        let check = checksum::update_u16(self.checksum(), old_word, new_word);
        self.set_ttl(new_ttl);
        self.set_checksum(check);
        new_ttl
    }

    /// The payload, writable: from the end of the header to `total_len`.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        &mut self.buffer.as_mut()[range]
    }
}

/// The parts of an IPv4 header Weft reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Payload protocol; see [`protocol`].
    pub protocol: u8,
    /// Payload length in bytes (total length minus header length).
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// Type-of-service byte (DSCP and ECN).
    pub tos: u8,
    /// Identification.
    pub ident: u16,
    /// Don't Fragment flag.
    pub dont_frag: bool,
}

impl Ipv4Repr {
    /// Parses the header of `packet`: the length checks and version of
    /// [`Ipv4Packet::new_checked`] are repeated (so an unchecked view is safe), then the checksum
    /// must be right ([`Error::Checksum`]). Fragments are accepted (MF and the offset are not part
    /// of the `Repr`); options are skipped.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Ipv4Packet<&T>) -> Result<Ipv4Repr> {
        packet.check_version_and_len()?;
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        Ok(Ipv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()) - packet.header_len(),
            ttl: packet.ttl(),
            tos: packet.tos(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
        })
    }

    /// Bytes [`emit`](Self::emit) writes: a header without options.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header (no options, MF clear, offset 0) with `total_len` =
    /// 20 + `payload_len`, and fills its checksum. The payload bytes are not touched.
    ///
    /// # Panics
    /// When the packet's buffer is shorter than [`HEADER_LEN`]. In debug builds, also when
    /// `payload_len` does not fit the 16-bit total length.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        debug_assert!(
            self.payload_len <= usize::from(u16::MAX) - HEADER_LEN,
            "IPv4 payload of {} bytes does not fit",
            self.payload_len
        );
        packet.set_version(4);
        packet.set_header_len(HEADER_LEN);
        packet.set_tos(self.tos);
        packet.set_total_len((HEADER_LEN + self.payload_len) as u16);
        packet.set_ident(self.ident);
        packet.set_flags_and_frag(self.dont_frag, false, 0);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ping -c1 10.244.2.3` from pod 10.244.1.2: an IPv4 header (DF, TTL 64, ICMP) followed by a
    /// 16-byte ICMP echo request, checksums computed independently.
    const PING: [u8; 36] = [
        0x45, // version 4, IHL 5
        0x00, // TOS
        0x00, 0x24, // total length 36
        0x1c, 0x46, // identification
        0x40, 0x00, // DF, offset 0
        0x40, // TTL 64
        0x01, // protocol ICMP
        0x05, 0xa7, // header checksum
        10, 244, 1, 2, // source
        10, 244, 2, 3, // destination
        // ICMP echo request, ident 0x1234, seq 1, data "weft-pin"
        0x08, 0x00, 0x71, 0x12, 0x12, 0x34, 0x00, 0x01, b'w', b'e', b'f', b't', b'-', b'p', b'i',
        b'n',
    ];

    fn ping_repr() -> Ipv4Repr {
        Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 244, 1, 2),
            dst_addr: Ipv4Addr::new(10, 244, 2, 3),
            protocol: protocol::ICMP,
            payload_len: 16,
            ttl: 64,
            tos: 0,
            ident: 0x1c46,
            dont_frag: true,
        }
    }

    #[test]
    fn parses_every_field() {
        let p = Ipv4Packet::new_checked(&PING[..]).expect("valid");
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.tos(), 0);
        assert_eq!(p.total_len(), 36);
        assert_eq!(p.ident(), 0x1c46);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert!(!p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), protocol::ICMP);
        assert_eq!(p.checksum(), 0x05a7);
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 244, 2, 3));
        assert!(p.verify_checksum());
        assert_eq!(p.payload(), &PING[20..]);
        assert_eq!(Ipv4Repr::parse(&p), Ok(ping_repr()));
    }

    #[test]
    fn emit_is_byte_exact() {
        let repr = ping_repr();
        assert_eq!(repr.buffer_len(), 20);
        let mut out = [0xffu8; 36];
        out[20..].copy_from_slice(&PING[20..]);
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, PING);
    }

    #[test]
    fn padding_is_not_payload() {
        // A 36-byte datagram in a 46-byte Ethernet payload: the 10 bytes of padding stay out.
        let mut padded = [0u8; 46];
        padded[..36].copy_from_slice(&PING);
        let p = Ipv4Packet::new_checked(&padded[..]).expect("valid");
        assert_eq!(p.payload(), &PING[20..]);
    }

    #[test]
    fn length_and_version_errors() {
        for len in 0..PING.len() {
            assert_eq!(
                Ipv4Packet::new_checked(&PING[..len]).err(),
                Some(Error::Truncated),
                "{len}"
            );
            assert_eq!(
                Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&PING[..len])).err(),
                Some(Error::Truncated)
            );
        }
        let with = |offset: usize, value: u8| {
            let mut b = PING;
            b[offset] = value;
            b
        };
        // Version 6 in an otherwise valid header.
        let v6 = with(0, 0x65);
        assert_eq!(
            Ipv4Packet::new_checked(&v6[..]).err(),
            Some(Error::Malformed)
        );
        assert_eq!(
            Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&v6[..])).err(),
            Some(Error::Malformed)
        );
        // IHL 4: the header would end before the addresses.
        assert_eq!(
            Ipv4Packet::new_checked(&with(0, 0x44)[..]).err(),
            Some(Error::Malformed)
        );
        // IHL 15 (60 bytes) in a 36-byte buffer.
        assert_eq!(
            Ipv4Packet::new_checked(&with(0, 0x4f)[..]).err(),
            Some(Error::Truncated)
        );
        // Total length 19, below the header length.
        assert_eq!(
            Ipv4Packet::new_checked(&with(3, 19)[..]).err(),
            Some(Error::Malformed)
        );
        // Total length 37, one past the buffer.
        assert_eq!(
            Ipv4Packet::new_checked(&with(3, 37)[..]).err(),
            Some(Error::Truncated)
        );
        // Total length 20, a bare header, is fine.
        let bare = with(3, 20);
        assert_eq!(
            Ipv4Packet::new_checked(&bare[..]).map(|p| p.payload().len()),
            Ok(0)
        );
    }

    #[test]
    fn bad_checksum_is_reported_by_repr() {
        let mut b = PING;
        b[11] ^= 0x01;
        let p = Ipv4Packet::new_checked(&b[..]).expect("structure is fine");
        assert!(!p.verify_checksum());
        assert_eq!(Ipv4Repr::parse(&p), Err(Error::Checksum));
    }

    #[test]
    fn options_are_skipped_and_covered_by_the_checksum() {
        // The PING header with one 4-byte option word (NOP, NOP, NOP, EOL) inserted.
        let mut b = [0u8; 40];
        b[..20].copy_from_slice(&PING[..20]);
        b[20..24].copy_from_slice(&[1, 1, 1, 0]);
        b[24..].copy_from_slice(&PING[20..]);
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_header_len(24);
        p.set_total_len(40);
        p.fill_checksum();
        let p = Ipv4Packet::new_checked(&b[..]).expect("valid");
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.payload(), &PING[20..]);
        assert_eq!(Ipv4Repr::parse(&p).map(|r| r.payload_len), Ok(16));
    }

    #[test]
    fn fragments_parse_and_are_flagged() {
        let mut b = PING;
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_flags_and_frag(false, true, 1480);
        p.fill_checksum();
        let p = Ipv4Packet::new_checked(&b[..]).expect("valid");
        assert!(p.more_frags() && !p.dont_frag() && p.is_fragment());
        assert_eq!(p.frag_offset(), 1480);
        assert!(Ipv4Repr::parse(&p).is_ok());
        // A last fragment: MF clear, offset non-zero.
        let mut b = PING;
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_flags_and_frag(false, false, 8);
        assert!(p.is_fragment());
    }

    #[test]
    fn decrement_ttl_keeps_checksum_valid() {
        let mut b = PING;
        let mut p = Ipv4Packet::new_checked(&mut b[..]).expect("valid");
        for expected in (1..64).rev() {
            assert_eq!(p.decrement_ttl(), expected);
            assert!(p.verify_checksum(), "ttl {expected}");
        }
        let incremental = p.checksum();
        p.fill_checksum();
        assert_eq!(p.checksum(), incremental);
    }

    #[test]
    fn setters_round_trip() {
        let mut b = [0u8; 24];
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_version(4);
        p.set_header_len(20);
        p.set_total_len(24);
        p.set_tos(0xb8);
        p.set_ttl(1);
        p.set_protocol(protocol::UDP);
        p.payload_mut().copy_from_slice(&[9, 8, 7, 6]);
        assert_eq!(
            (p.version(), p.header_len(), p.tos(), p.ttl()),
            (4, 20, 0xb8, 1)
        );
        assert_eq!(p.payload(), &[9, 8, 7, 6]);
    }
}
