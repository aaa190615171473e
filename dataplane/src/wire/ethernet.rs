//! Ethernet II frames (RFC 894): destination MAC, source MAC, EtherType, payload.
//!
//! Weft meets Ethernet in two places: the inner frame of a VXLAN packet (RFC 7348 §5, where the
//! source is the sending VTEP's MAC and the destination the receiver's, as flannel programs it) and
//! frames on pod interfaces. Only Ethernet II is understood: a type/length field below 0x0600
//! (IEEE 802.3 length) is reported as [`EtherType::Unknown`], not decoded, and 802.1Q tags are not
//! stripped (a VXLAN inner frame carries none).
//!
//! The frame check sequence is not part of the buffer: every source of frames Weft reads (TAP, raw
//! sockets, VXLAN payloads) delivers frames without it.
//!
//! Contract: once [`EthernetFrame::new_checked`] (or [`EthernetFrame::check_len`]) has succeeded, no
//! accessor panics.

use super::{Error, EthernetAddress, Result};

/// Length of the Ethernet II header: two addresses and the EtherType.
pub const HEADER_LEN: usize = 14;

mod field {
    use core::ops::Range;

    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: usize = 14;
}

/// The EtherType of a frame (IEEE registry; the values Weft acts on are named).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EtherType {
    /// 0x0800, Internet Protocol version 4.
    Ipv4,
    /// 0x0806, Address Resolution Protocol (RFC 826).
    Arp,
    /// 0x86DD, Internet Protocol version 6.
    Ipv6,
    /// Any other value, kept so a frame can be re-emitted unchanged.
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(value: u16) -> Self {
        match value {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86dd => EtherType::Ipv6,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(value: EtherType) -> Self {
        match value {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Unknown(other) => other,
        }
    }
}

/// A zero-copy view of an Ethernet II frame in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` without checking it; accessors may panic if it is shorter than
    /// [`HEADER_LEN`].
    pub const fn new_unchecked(buffer: T) -> EthernetFrame<T> {
        EthernetFrame { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<EthernetFrame<T>> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Fails with [`Error::Truncated`] when the buffer cannot hold the header. Every header field
    /// is fixed-size, so this is the only check there is.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// Gives back the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The destination MAC address.
    pub fn dst_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::DESTINATION])
    }

    /// The source MAC address.
    pub fn src_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::SOURCE])
    }

    /// The EtherType (or an 802.3 length, reported as [`EtherType::Unknown`]).
    pub fn ethertype(&self) -> EtherType {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        EtherType::from(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Everything after the header, including any padding up to the 60-byte minimum frame size
    /// (Ethernet has no length field; the upper layer's own length tells padding apart).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC address.
    pub fn set_dst_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(addr.as_bytes());
    }

    /// Sets the source MAC address.
    pub fn set_src_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(addr.as_bytes());
    }

    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&u16::from(ethertype).to_be_bytes());
    }

    /// Everything after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// The header of an Ethernet II frame, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthernetRepr {
    /// Source MAC address.
    pub src_addr: EthernetAddress,
    /// Destination MAC address.
    pub dst_addr: EthernetAddress,
    /// What the payload is.
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Reads the header of `frame`, checking its length first so an unchecked view is safe too.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(frame: &EthernetFrame<&T>) -> Result<EthernetRepr> {
        frame.check_len()?;
        Ok(EthernetRepr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    /// Bytes [`emit`](Self::emit) writes: the header only.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `frame`; the payload is untouched.
    ///
    /// # Panics
    /// When the frame's buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Ethernet header of a broadcast ARP request from 52:54:00:12:34:56, padded to the 60-byte
    /// minimum as a NIC delivers it (the ARP body itself is in `arp::tests`).
    const ARP_BROADCAST: [u8; 60] = {
        let mut f = [0u8; 60];
        let hdr = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // destination: broadcast
            0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // source: a QEMU-style MAC
            0x08, 0x06, // EtherType: ARP
        ];
        let mut i = 0;
        while i < hdr.len() {
            f[i] = hdr[i];
            i += 1;
        }
        f
    };

    /// An inner VXLAN frame header as flannel sends it: VTEP MAC to VTEP MAC, IPv4.
    const VTEP_TO_VTEP: [u8; 14] = [
        0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44, // destination: receiver's VtepMAC
        0x9a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, // source: sender's VtepMAC
        0x08, 0x00, // EtherType: IPv4
    ];

    #[test]
    fn parses_broadcast_arp_frame() {
        let frame = EthernetFrame::new_checked(&ARP_BROADCAST[..]).expect("valid frame");
        assert_eq!(frame.dst_addr(), EthernetAddress::BROADCAST);
        assert_eq!(
            frame.src_addr(),
            EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
        );
        assert_eq!(frame.ethertype(), EtherType::Arp);
        assert_eq!(frame.payload().len(), 46);
    }

    #[test]
    fn repr_round_trip_is_byte_exact() {
        let frame = EthernetFrame::new_checked(&VTEP_TO_VTEP[..]).expect("valid frame");
        let repr = EthernetRepr::parse(&frame).expect("parses");
        assert_eq!(
            repr,
            EthernetRepr {
                src_addr: EthernetAddress([0x9a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]),
                dst_addr: EthernetAddress([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]),
                ethertype: EtherType::Ipv4,
            }
        );
        assert_eq!(repr.buffer_len(), HEADER_LEN);
        let mut out = [0u8; HEADER_LEN];
        repr.emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
        assert_eq!(out, VTEP_TO_VTEP);
        assert!(frame.payload().is_empty());
    }

    #[test]
    fn short_buffers_are_truncated() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&VTEP_TO_VTEP[..len]).err(),
                Some(Error::Truncated)
            );
            assert_eq!(
                EthernetRepr::parse(&EthernetFrame::new_unchecked(&VTEP_TO_VTEP[..len])).err(),
                Some(Error::Truncated)
            );
        }
    }

    #[test]
    fn ethertype_values_round_trip() {
        for v in [0x0800u16, 0x0806, 0x86dd, 0x8100, 0x0000, 0x05dc, 0xffff] {
            assert_eq!(u16::from(EtherType::from(v)), v);
        }
        assert_eq!(EtherType::from(0x8100), EtherType::Unknown(0x8100));
    }

    #[test]
    fn setters_write_in_place() {
        let mut buf = [0u8; 20];
        let mut frame = EthernetFrame::new_checked(&mut buf[..]).expect("long enough");
        frame.set_ethertype(EtherType::Unknown(0x88cc));
        frame.payload_mut().copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(frame.ethertype(), EtherType::Unknown(0x88cc));
        assert_eq!(&buf[12..], &[0x88, 0xcc, 1, 2, 3, 4, 5, 6]);
    }
}
