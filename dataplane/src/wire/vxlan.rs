//! VXLAN (RFC 7348 §5): an 8-byte header in front of an inner Ethernet frame, carried in UDP.
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//!
//! Receive follows the RFC's "MUST be ignored on receipt" for every reserved bit and every flag but
//! I: only the I flag (VNI valid) is required, as the Linux `vxlan` driver that flannel and Calico
//! use does by default. Send writes flags `0x08` and zeroes every reserved bit ("MUST be set to
//! zero on transmission"). The UDP port is not in this header: flannel uses [`FLANNEL_PORT`],
//! Calico and the IANA assignment [`IANA_PORT`].
//!
//! Contract: once [`VxlanPacket::new_checked`] (or [`VxlanPacket::check_len`]) has succeeded, no
//! accessor panics.

use super::{Error, Result};

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;

/// UDP port of flannel's `vxlan` backend (the Linux kernel's historical default).
pub const FLANNEL_PORT: u16 = 8472;

/// UDP port assigned by IANA (RFC 7348 §5), Calico's default.
pub const IANA_PORT: u16 = 4789;

/// The largest VNI: the field is 24 bits wide.
pub const VNI_MAX: u32 = 0xff_ffff;

/// Bytes VXLAN adds around an inner IPv4 datagram: outer IPv4 header (20, no options) + UDP (8) +
/// VXLAN (8) + inner Ethernet header (14). The tunnel MTU is the underlay MTU minus this, which is
/// how flannel sizes `flannel.1` (1450 on a 1500-byte underlay).
pub const OVERHEAD_V4: usize = 20 + 8 + HEADER_LEN + 14;

/// The I flag: "MUST be set to 1 for a valid VNI" (RFC 7348 §5).
pub const FLAG_I: u8 = 0x08;

mod field {
    use core::ops::Range;

    pub const FLAGS: usize = 0;
    pub const RESERVED1: Range<usize> = 1..4;
    pub const VNI: Range<usize> = 4..7;
    pub const RESERVED2: usize = 7;
    pub const PAYLOAD: usize = 8;
}

/// A zero-copy view of a VXLAN header and the inner frame after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps `buffer` without checking it; accessors may panic if it is shorter than
    /// [`HEADER_LEN`].
    pub const fn new_unchecked(buffer: T) -> VxlanPacket<T> {
        VxlanPacket { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len). Flags are not checked here; see
    /// [`VxlanRepr::parse`].
    pub fn new_checked(buffer: T) -> Result<VxlanPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Fails with [`Error::Truncated`] when the buffer is shorter than the 8-byte header.
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

    /// The flags byte (I is [`FLAG_I`]; the other bits are reserved).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// True when the I flag is set, i.e. the VNI is valid.
    pub fn has_vni(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// The 24-bit VXLAN Network Identifier.
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The 24 reserved bits after the flags byte (zero from a conforming sender).
    pub fn reserved1(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::RESERVED1];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The reserved byte after the VNI (zero from a conforming sender).
    pub fn reserved2(&self) -> u8 {
        self.buffer.as_ref()[field::RESERVED2]
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Sets the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the VNI. Only the low 24 bits are written: a larger value is a caller bug, caught by a
    /// debug assertion, and truncated in release builds rather than spilling into the reserved
    /// byte.
    pub fn set_vni(&mut self, vni: u32) {
        debug_assert!(vni <= VNI_MAX, "VNI {vni:#x} wider than 24 bits");
        let b = (vni & VNI_MAX).to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..]);
    }

    /// Zeroes both reserved fields (not the reserved flag bits; see [`set_flags`](Self::set_flags)).
    pub fn clear_reserved(&mut self) {
        let buf = self.buffer.as_mut();
        buf[field::RESERVED1].fill(0);
        buf[field::RESERVED2] = 0;
    }

    /// The inner Ethernet frame, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// A VXLAN header, parsed: all it carries is the VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VxlanRepr {
    /// The VXLAN Network Identifier, at most [`VNI_MAX`].
    pub vni: u32,
}

impl VxlanRepr {
    /// Parses the header, checking its length first so an unchecked view is safe too. Fails with
    /// [`Error::Malformed`] when the I flag is clear; every other flag and reserved bit is ignored
    /// (RFC 7348 §5).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &VxlanPacket<&T>) -> Result<VxlanRepr> {
        packet.check_len()?;
        if !packet.has_vni() {
            return Err(Error::Malformed);
        }
        Ok(VxlanRepr { vni: packet.vni() })
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header: flags `0x08`, reserved fields zero, the VNI. The inner frame is not
    /// touched.
    ///
    /// # Panics
    /// When the buffer is shorter than [`HEADER_LEN`]; in debug builds, when the VNI exceeds
    /// [`VNI_MAX`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VxlanPacket<T>) {
        packet.set_flags(FLAG_I);
        packet.clear_reserved();
        packet.set_vni(self.vni);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header flannel's default `flannel.1` (VNI 1) puts in front of every inner frame.
    const VNI_1: [u8; 8] = [
        0x08, // flags: I
        0x00, 0x00, 0x00, // reserved
        0x00, 0x00, 0x01, // VNI 1
        0x00, // reserved
    ];

    /// Calico's `vxlan.calico` (VNI 4096) followed by the first bytes of an inner frame.
    const VNI_4096: [u8; 12] = [
        0x08, 0x00, 0x00, 0x00, // flags, reserved
        0x00, 0x10, 0x00, 0x00, // VNI 4096, reserved
        0xc6, 0xd2, 0x32, 0x6f, // inner frame (start of the destination MAC)
    ];

    #[test]
    fn parses_flannel_header() {
        let p = VxlanPacket::new_checked(&VNI_1[..]).expect("valid");
        assert_eq!(p.flags(), 0x08);
        assert!(p.has_vni());
        assert_eq!(p.vni(), 1);
        assert_eq!(p.reserved1(), 0);
        assert_eq!(p.reserved2(), 0);
        assert!(p.payload().is_empty());
        assert_eq!(VxlanRepr::parse(&p), Ok(VxlanRepr { vni: 1 }));
    }

    #[test]
    fn emit_is_byte_exact() {
        let mut out = [0xffu8; 12];
        out[8..].copy_from_slice(&VNI_4096[8..]);
        let repr = VxlanRepr { vni: 4096 };
        assert_eq!(repr.buffer_len(), 8);
        repr.emit(&mut VxlanPacket::new_unchecked(&mut out[..]));
        assert_eq!(out, VNI_4096);
        let p = VxlanPacket::new_checked(&out[..]).expect("valid");
        assert_eq!(p.payload(), &[0xc6, 0xd2, 0x32, 0x6f]);
    }

    #[test]
    fn reserved_bits_are_ignored_on_receipt() {
        // Every reserved flag bit and reserved byte set: still VNI 0xabcdef.
        let buf = [0xff, 0xff, 0xff, 0xff, 0xab, 0xcd, 0xef, 0xff];
        let p = VxlanPacket::new_checked(&buf[..]).expect("valid");
        assert_eq!(p.reserved1(), 0xff_ffff);
        assert_eq!(p.reserved2(), 0xff);
        assert_eq!(VxlanRepr::parse(&p), Ok(VxlanRepr { vni: 0xab_cdef }));
    }

    #[test]
    fn errors() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                VxlanPacket::new_checked(&VNI_1[..len]).err(),
                Some(Error::Truncated)
            );
            assert_eq!(
                VxlanRepr::parse(&VxlanPacket::new_unchecked(&VNI_1[..len])).err(),
                Some(Error::Truncated)
            );
        }
        // I flag clear (all other flag bits set): the VNI is not valid.
        let mut no_i = VNI_1;
        no_i[0] = 0xf7;
        let p = VxlanPacket::new_checked(&no_i[..]).expect("long enough");
        assert_eq!(VxlanRepr::parse(&p), Err(Error::Malformed));
    }

    #[test]
    fn max_vni_round_trips_and_overhead_is_flannels() {
        let mut out = [0u8; 8];
        VxlanRepr { vni: VNI_MAX }.emit(&mut VxlanPacket::new_unchecked(&mut out[..]));
        assert_eq!(out, [0x08, 0, 0, 0, 0xff, 0xff, 0xff, 0]);
        assert_eq!(OVERHEAD_V4, 50);
        assert_eq!(1500 - OVERHEAD_V4, 1450);
    }
}
