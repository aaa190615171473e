//! TCP (RFC 793 §3.1, RFC 3168 §6.1 for ECE/CWR) headers: what segmentation and coalescing read
//! and rewrite. Weft never terminates TCP; it cuts a pod's super-frames into segments and merges
//! segments back, so it needs the sequence number, the flags, the header length and the checksum.
//!
//! [`TcpPacket::new_checked`] checks that the buffer holds the 20-byte fixed header and that the
//! data offset covers it and fits the buffer; after that no accessor panics. The buffer is the TCP
//! segment as the IPv4 total length bounds it: [`TcpPacket::payload`] is the rest of the buffer.
//!
//! The checksum covers an IPv4 pseudo-header, so the checksum methods take the addresses.

use std::net::Ipv4Addr;

use super::checksum;
use super::ipv4::protocol;
use super::{Error, Result};

/// Length of the TCP header without options.
pub const HEADER_LEN: usize = 20;

/// Byte offsets of the header's fields, for code that sums or compares them as words
/// (incremental checksums over a run of segments).
pub mod field {
    use core::ops::Range;

    /// Source port.
    pub const SRC_PORT: Range<usize> = 0..2;
    /// Destination port.
    pub const DST_PORT: Range<usize> = 2..4;
    /// Sequence number.
    pub const SEQ_NUM: Range<usize> = 4..8;
    /// Acknowledgment number.
    pub const ACK_NUM: Range<usize> = 8..12;
    /// Data offset (high nibble) and reserved bits, then the flags byte: one 16-bit word.
    pub const OFF_FLAGS: Range<usize> = 12..14;
    /// The flags byte alone.
    pub const FLAGS: usize = 13;
    /// Receive window.
    pub const WINDOW: Range<usize> = 14..16;
    /// Checksum.
    pub const CHECKSUM: Range<usize> = 16..18;
    /// Urgent pointer.
    pub const URGENT: Range<usize> = 18..20;
}

/// The flag bits of [`TcpPacket::flags`].
pub mod flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronise sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push.
    pub const PSH: u8 = 0x08;
    /// The acknowledgment number is significant.
    pub const ACK: u8 = 0x10;
    /// The urgent pointer is significant.
    pub const URG: u8 = 0x20;
    /// ECN echo (RFC 3168).
    pub const ECE: u8 = 0x40;
    /// Congestion window reduced (RFC 3168).
    pub const CWR: u8 = 0x80;
}

/// A zero-copy view of a TCP segment in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer or one whose
    /// data offset lies.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> TcpPacket<T> {
        TcpPacket { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<TcpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks buffer >= 20 bytes ([`Error::Truncated`]), data offset >= 5 words
    /// ([`Error::Malformed`]) and header within the buffer ([`Error::Truncated`]).
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
        Ok(())
    }

    /// Gives back the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn read_u16(&self, at: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    #[inline]
    fn read_u32(&self, at: usize) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// The source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        self.read_u16(field::SRC_PORT.start)
    }

    /// The destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        self.read_u16(field::DST_PORT.start)
    }

    /// The sequence number.
    #[inline]
    pub fn seq_number(&self) -> u32 {
        self.read_u32(field::SEQ_NUM.start)
    }

    /// The acknowledgment number.
    #[inline]
    pub fn ack_number(&self) -> u32 {
        self.read_u32(field::ACK_NUM.start)
    }

    /// The header length in bytes (data offset × 4), options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::OFF_FLAGS.start] >> 4) * 4
    }

    /// The data offset and flags as one word, as the checksum sums it.
    #[inline]
    pub fn offset_flags_word(&self) -> u16 {
        self.read_u16(field::OFF_FLAGS.start)
    }

    /// The flag bits ([`flags`]).
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The receive window.
    #[inline]
    pub fn window_len(&self) -> u16 {
        self.read_u16(field::WINDOW.start)
    }

    /// The checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        self.read_u16(field::CHECKSUM.start)
    }

    /// The options: the header past its fixed 20 bytes.
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The payload: the buffer past the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// Whether the checksum over the pseudo-header of `src` → `dst` and the whole buffer holds.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let b = self.buffer.as_ref();
        let Ok(len) = u16::try_from(b.len()) else {
            return false;
        };
        let acc = checksum::pseudo_header_v4(src, dst, protocol::TCP, len);
        checksum::fold(checksum::accumulate(acc, b)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    #[inline]
    fn write_u16(&mut self, at: usize, v: u16) {
        self.buffer.as_mut()[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the source port.
    #[inline]
    pub fn set_src_port(&mut self, port: u16) {
        self.write_u16(field::SRC_PORT.start, port);
    }

    /// Sets the destination port.
    #[inline]
    pub fn set_dst_port(&mut self, port: u16) {
        self.write_u16(field::DST_PORT.start, port);
    }

    /// Sets the sequence number.
    #[inline]
    pub fn set_seq_number(&mut self, seq: u32) {
        self.buffer.as_mut()[field::SEQ_NUM].copy_from_slice(&seq.to_be_bytes());
    }

    /// Sets the acknowledgment number.
    #[inline]
    pub fn set_ack_number(&mut self, ack: u32) {
        self.buffer.as_mut()[field::ACK_NUM].copy_from_slice(&ack.to_be_bytes());
    }

    /// Sets the header length in bytes (a multiple of 4, 20..=60), keeping the reserved bits.
    #[inline]
    pub fn set_header_len(&mut self, len: usize) {
        let b = &mut self.buffer.as_mut()[field::OFF_FLAGS.start];
        *b = (*b & 0x0f) | (((len / 4) as u8) << 4);
    }

    /// Sets the flag bits ([`flags`]).
    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the receive window.
    #[inline]
    pub fn set_window_len(&mut self, window: u16) {
        self.write_u16(field::WINDOW.start, window);
    }

    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        self.write_u16(field::CHECKSUM.start, value);
    }

    /// Computes and writes the checksum over the pseudo-header of `src` → `dst` and the whole
    /// buffer.
    ///
    /// # Panics
    ///
    /// If the buffer is longer than 65,535 bytes, which no TCP segment over IPv4 is.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let b = self.buffer.as_ref();
        let len = u16::try_from(b.len()).expect("a TCP segment over IPv4 fits 65,535 bytes");
        let acc = checksum::pseudo_header_v4(src, dst, protocol::TCP, len);
        let c = !checksum::fold(checksum::accumulate(acc, b));
        self.set_checksum(c);
    }

    /// The payload, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let at = self.header_len();
        &mut self.buffer.as_mut()[at..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);

    fn segment(payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN + 4 + payload.len()];
        let mut p = TcpPacket::new_unchecked(&mut b[..]);
        p.set_src_port(40000);
        p.set_dst_port(5201);
        p.set_seq_number(0xdead_beef);
        p.set_ack_number(7);
        p.set_header_len(HEADER_LEN + 4);
        p.set_flags(flags::ACK | flags::PSH);
        p.set_window_len(512);
        p.payload_mut().copy_from_slice(payload);
        p.fill_checksum(SRC, DST);
        b
    }

    #[test]
    fn fields_round_trip_and_the_checksum_verifies() {
        let b = segment(b"hello");
        let p = TcpPacket::new_checked(&b[..]).expect("valid");
        assert_eq!(p.src_port(), 40000);
        assert_eq!(p.dst_port(), 5201);
        assert_eq!(p.seq_number(), 0xdead_beef);
        assert_eq!(p.ack_number(), 7);
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.flags(), flags::ACK | flags::PSH);
        assert_eq!(p.offset_flags_word(), 0x6018);
        assert_eq!(p.window_len(), 512);
        assert_eq!(p.options(), &[0, 0, 0, 0]);
        assert_eq!(p.payload(), b"hello");
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(SRC, Ipv4Addr::new(10, 244, 2, 4)));
    }

    #[test]
    fn the_checksum_matches_etherparse() {
        let payload = b"checksum me";
        let b = segment(payload);
        let ours = TcpPacket::new_unchecked(&b[..]).checksum();
        let hdr = etherparse::TcpHeader::from_slice(&b)
            .expect("etherparse parses it")
            .0;
        let theirs = hdr
            .calc_checksum_ipv4_raw(SRC.octets(), DST.octets(), payload)
            .expect("checksum");
        assert_eq!(ours, theirs);
    }

    #[test]
    fn short_or_lying_headers_are_errors_not_panics() {
        assert_eq!(
            TcpPacket::new_checked(&[0u8; 19][..]).err(),
            Some(Error::Truncated)
        );
        let mut b = segment(b"x");
        b[field::OFF_FLAGS.start] = 0x40; // data offset 4 words: below the fixed header
        assert_eq!(TcpPacket::new_checked(&b[..]).err(), Some(Error::Malformed));
        b[field::OFF_FLAGS.start] = 0xf0; // 60 bytes: past the 25-byte buffer
        assert_eq!(TcpPacket::new_checked(&b[..]).err(), Some(Error::Truncated));
    }
}
