//! UDP (RFC 768) over IPv4: the transport of VXLAN.
//!
//! [`UdpPacket::new_checked`] checks that the length field covers the 8-byte header and fits the
//! buffer; [`UdpPacket::payload`] then ends where the length field says, not where the buffer does.
//!
//! The checksum covers an IPv4 pseudo-header, so the checksum methods take the addresses. Over IPv4
//! a zero checksum field means "not computed" (RFC 768), and Linux VXLAN devices send exactly that
//! by default (`udpcsum` off), as flannel's do: [`UdpChecksum::Zero`] lets Weft match them, and
//! [`UdpChecksum::Compute`] writes a correct one. A computed checksum of zero is sent as `0xffff`
//! (RFC 768) so it is not mistaken for "none". A userspace encapsulator never leaves a checksum
//! wrong, which is what bit flannel and Calico after NAT with offload (flannel #1279).
//!
//! Contract: once [`UdpPacket::new_checked`] (or [`UdpPacket::check_len`]) has succeeded, no
//! accessor panics.

use std::net::Ipv4Addr;

use super::checksum;
use super::ipv4::protocol;
use super::{Error, Result};

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

pub(crate) mod field {
    use core::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
    pub const PAYLOAD: usize = 8;
}

/// A zero-copy view of a UDP datagram in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer or one whose
    /// length field lies.
    pub const fn new_unchecked(buffer: T) -> UdpPacket<T> {
        UdpPacket { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<UdpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks buffer >= 8 bytes ([`Error::Truncated`]), length field >= 8 ([`Error::Malformed`])
    /// and length field <= buffer ([`Error::Truncated`]). A longer buffer is fine.
    pub fn check_len(&self) -> Result<()> {
        let buffer_len = self.buffer.as_ref().len();
        if buffer_len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let len = usize::from(self.len());
        if len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len > buffer_len {
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

    /// The source port.
    pub fn src_port(&self) -> u16 {
        self.read_u16(field::SRC_PORT)
    }

    /// The destination port.
    pub fn dst_port(&self) -> u16 {
        self.read_u16(field::DST_PORT)
    }

    /// The length field: header plus payload, in bytes.
    #[allow(clippy::len_without_is_empty)] // a header field, not a container length
    pub fn len(&self) -> u16 {
        self.read_u16(field::LENGTH)
    }

    /// The checksum field; zero means none was computed.
    pub fn checksum(&self) -> u16 {
        self.read_u16(field::CHECKSUM)
    }

    /// The payload, up to the length field.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..usize::from(self.len())]
    }

    /// True when the checksum field is zero ("none", allowed over IPv4) or right for the
    /// pseudo-header of `src` and `dst`, the header and the payload.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let len = self.len();
        let acc = checksum::pseudo_header_v4(src, dst, protocol::UDP, len);
        let acc = checksum::accumulate(acc, &self.buffer.as_ref()[..usize::from(len)]);
        checksum::fold(acc) == !0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    fn write_u16(&mut self, range: core::ops::Range<usize>, value: u16) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the source port.
    pub fn set_src_port(&mut self, port: u16) {
        self.write_u16(field::SRC_PORT, port);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, port: u16) {
        self.write_u16(field::DST_PORT, port);
    }

    /// Sets the length field.
    pub fn set_len(&mut self, len: u16) {
        self.write_u16(field::LENGTH, len);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        self.write_u16(field::CHECKSUM, value);
    }

    /// Computes the checksum over the pseudo-header, the header and the payload (up to the length
    /// field) and writes it, `0xffff` in place of a computed zero.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let len = self.len();
        let acc = checksum::pseudo_header_v4(src, dst, protocol::UDP, len);
        let acc = checksum::accumulate(acc, &self.buffer.as_ref()[..usize::from(len)]);
        let value = match !checksum::fold(acc) {
            0 => 0xffff,
            value => value,
        };
        self.set_checksum(value);
    }

    /// The payload, writable, up to the length field.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[field::PAYLOAD..end]
    }
}

/// Whether [`UdpRepr::emit`] computes a checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UdpChecksum {
    /// Write zero, "no checksum" (RFC 768), as Linux VXLAN devices do by default.
    Zero,
    /// Compute the checksum over the payload already in the buffer.
    Compute,
}

/// The UDP header fields that are not derived from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl UdpRepr {
    /// Parses `packet` carried between `src` and `dst`, checking its length first so an unchecked
    /// view is safe too. Fails with [`Error::Checksum`] when a non-zero checksum is wrong.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &UdpPacket<&T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Result<UdpRepr> {
        packet.check_len()?;
        if !packet.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        Ok(UdpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
        })
    }

    /// Bytes of a datagram with `payload_len` bytes of payload.
    pub const fn buffer_len(&self, payload_len: usize) -> usize {
        HEADER_LEN + payload_len
    }

    /// Writes the header: ports, length = 8 + `payload_len`, and the checksum as `checksum` asks.
    /// With [`UdpChecksum::Compute`] the payload must already be in place, so the usual order is:
    /// write the payload, then emit the UDP header, then the IP header.
    ///
    /// # Panics
    /// When the buffer is shorter than 8 + `payload_len`. In debug builds, also when the length
    /// does not fit the 16-bit field.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut UdpPacket<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        payload_len: usize,
        checksum: UdpChecksum,
    ) {
        debug_assert!(
            payload_len <= usize::from(u16::MAX) - HEADER_LEN,
            "UDP payload of {payload_len} bytes does not fit"
        );
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len((HEADER_LEN + payload_len) as u16);
        match checksum {
            UdpChecksum::Zero => packet.set_checksum(0),
            UdpChecksum::Compute => packet.fill_checksum(src, dst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 3);

    /// A datagram from 192.168.64.2:40000 to 192.168.64.3:8472 (flannel's VXLAN port) carrying
    /// "hello, weft!", checksum computed independently.
    const DATAGRAM: [u8; 20] = [
        0x9c, 0x40, // source port 40000
        0x21, 0x18, // destination port 8472
        0x00, 0x14, // length 20
        0x03, 0x1a, // checksum
        b'h', b'e', b'l', b'l', b'o', b',', b' ', b'w', b'e', b'f', b't', b'!',
    ];

    #[test]
    fn parses_every_field() {
        let p = UdpPacket::new_checked(&DATAGRAM[..]).expect("valid");
        assert_eq!(p.src_port(), 40000);
        assert_eq!(p.dst_port(), 8472);
        assert_eq!(p.len(), 20);
        assert_eq!(p.checksum(), 0x031a);
        assert_eq!(p.payload(), b"hello, weft!");
        assert!(p.verify_checksum(SRC, DST));
        // The pseudo-header matters: swapping in another address breaks the checksum.
        assert!(!p.verify_checksum(SRC, Ipv4Addr::new(192, 168, 64, 4)));
        assert_eq!(
            UdpRepr::parse(&p, SRC, DST),
            Ok(UdpRepr {
                src_port: 40000,
                dst_port: 8472
            })
        );
    }

    #[test]
    fn emit_is_byte_exact() {
        let repr = UdpRepr {
            src_port: 40000,
            dst_port: 8472,
        };
        assert_eq!(repr.buffer_len(12), 20);
        let mut out = [0u8; 20];
        out[8..].copy_from_slice(b"hello, weft!");
        repr.emit(
            &mut UdpPacket::new_unchecked(&mut out[..]),
            SRC,
            DST,
            12,
            UdpChecksum::Compute,
        );
        assert_eq!(out, DATAGRAM);
        repr.emit(
            &mut UdpPacket::new_unchecked(&mut out[..]),
            SRC,
            DST,
            12,
            UdpChecksum::Zero,
        );
        assert_eq!(&out[6..8], &[0, 0]);
        // Zero means "none" and verifies.
        assert_eq!(
            UdpRepr::parse(&UdpPacket::new_checked(&out[..]).expect("valid"), SRC, DST),
            Ok(repr)
        );
    }

    #[test]
    fn computed_zero_is_sent_as_all_ones() {
        // Pick a payload word that makes the sum come out at 0xffff, i.e. a checksum of 0.
        let mut out = [0u8; 10];
        let repr = UdpRepr {
            src_port: 1,
            dst_port: 2,
        };
        repr.emit(
            &mut UdpPacket::new_unchecked(&mut out[..]),
            SRC,
            DST,
            2,
            UdpChecksum::Compute,
        );
        let check = u16::from_be_bytes([out[6], out[7]]);
        // Adding the old checksum as payload makes the total sum all ones.
        out[8..].copy_from_slice(&check.to_be_bytes());
        repr.emit(
            &mut UdpPacket::new_unchecked(&mut out[..]),
            SRC,
            DST,
            2,
            UdpChecksum::Compute,
        );
        assert_eq!(&out[6..8], &[0xff, 0xff]);
        assert!(UdpPacket::new_checked(&out[..])
            .expect("valid")
            .verify_checksum(SRC, DST));
    }

    #[test]
    fn errors() {
        for len in 0..DATAGRAM.len() {
            assert_eq!(
                UdpPacket::new_checked(&DATAGRAM[..len]).err(),
                Some(Error::Truncated)
            );
            assert_eq!(
                UdpRepr::parse(&UdpPacket::new_unchecked(&DATAGRAM[..len]), SRC, DST).err(),
                Some(Error::Truncated)
            );
        }
        let mut short_len = DATAGRAM;
        short_len[5] = 7;
        assert_eq!(
            UdpPacket::new_checked(&short_len[..]).err(),
            Some(Error::Malformed)
        );
        let mut long_len = DATAGRAM;
        long_len[5] = 21;
        assert_eq!(
            UdpPacket::new_checked(&long_len[..]).err(),
            Some(Error::Truncated)
        );
        let mut bad = DATAGRAM;
        bad[19] ^= 0x20;
        let p = UdpPacket::new_checked(&bad[..]).expect("valid");
        assert_eq!(UdpRepr::parse(&p, SRC, DST), Err(Error::Checksum));
    }

    #[test]
    fn trailing_bytes_are_not_payload() {
        let mut padded = [0xeeu8; 26];
        padded[..20].copy_from_slice(&DATAGRAM);
        let p = UdpPacket::new_checked(&padded[..]).expect("valid");
        assert_eq!(p.payload(), b"hello, weft!");
        assert!(p.verify_checksum(SRC, DST));
    }
}
