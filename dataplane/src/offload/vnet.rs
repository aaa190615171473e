//! The virtio-net header (`struct virtio_net_hdr`, virtio spec 1.x §5.1.6, Linux
//! `include/uapi/linux/virtio_net.h`) that a TUN device opened with `IFF_VNET_HDR` puts in front
//! of every packet it hands out and expects in front of every packet written to it.
//!
//! ```text
//!  0        1          2        4          6           8            10
//!  | flags  | gso_type | hdr_len | gso_size | csum_start | csum_offset |
//! ```
//!
//! Byte order: the TUN driver converts the 16-bit fields with `tun16_to_cpu`, which is
//! little-endian when the host is little-endian or after `TUNSETVNETLE`, and big-endian only
//! after `TUNSETVNETBE`. Weft always reads and writes them little-endian (the virtio 1.x order)
//! and the I/O shell issues `TUNSETVNETLE` when it enables offloads, so this holds on any host.
//!
//! After [`VnetHeader::check_len`] succeeds no accessor panics (smoltcp's contract).

use super::OffloadError;

/// Bytes in a virtio-net header without the `num_buffers` field (`struct virtio_net_hdr`).
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` holds only the
/// pseudo-header sum; the rest is left to whoever consumes the packet (`CHECKSUM_PARTIAL`).
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was verified (never set by a TUN device; ignored).
pub const F_DATA_VALID: u8 = 2;

/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP` (UFO, obsolete).
pub const GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO).
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`: or-ed into `gso_type` when the flow uses ECN (the first segment
/// carries CWR).
pub const GSO_ECN: u8 = 0x80;

mod field {
    use core::ops::Range;
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Range<usize> = 2..4;
    pub const GSO_SIZE: Range<usize> = 4..6;
    pub const CSUM_START: Range<usize> = 6..8;
    pub const CSUM_OFFSET: Range<usize> = 8..10;
}

/// A zero-copy view of a virtio-net header at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VnetHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VnetHeader<T> {
    /// Wraps `buffer` without checking its length; accessors panic if it is shorter than
    /// [`VNET_HDR_LEN`].
    pub const fn new_unchecked(buffer: T) -> Self {
        VnetHeader { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, OffloadError> {
        let h = Self::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }

    /// Fails unless the buffer holds a whole header.
    pub fn check_len(&self) -> Result<(), OffloadError> {
        if self.buffer.as_ref().len() < VNET_HDR_LEN {
            Err(OffloadError::Truncated)
        } else {
            Ok(())
        }
    }

    /// Gives back the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn u16_at(&self, r: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_le_bytes([b[0], b[1]])
    }

    /// The `flags` byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The `gso_type` byte, ECN bit included.
    pub fn gso_type(&self) -> u8 {
        self.buffer.as_ref()[field::GSO_TYPE]
    }

    /// `hdr_len`: the bytes of headers in front of the payload (a hint; the kernel's is not
    /// always exact, so [`segment`](super::segment) recomputes it from the packet).
    pub fn hdr_len(&self) -> u16 {
        self.u16_at(field::HDR_LEN)
    }

    /// `gso_size`: the payload bytes of each segment but the last.
    pub fn gso_size(&self) -> u16 {
        self.u16_at(field::GSO_SIZE)
    }

    /// `csum_start`: where the checksummed range starts (the transport header).
    pub fn csum_start(&self) -> u16 {
        self.u16_at(field::CSUM_START)
    }

    /// `csum_offset`: where in that range the checksum field is (16 for TCP, 6 for UDP).
    pub fn csum_offset(&self) -> u16 {
        self.u16_at(field::CSUM_OFFSET)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VnetHeader<T> {
    fn set_u16_at(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_le_bytes());
    }

    /// Sets `flags`.
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    /// Sets `gso_type`.
    pub fn set_gso_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::GSO_TYPE] = v;
    }

    /// Sets `hdr_len`.
    pub fn set_hdr_len(&mut self, v: u16) {
        self.set_u16_at(field::HDR_LEN, v);
    }

    /// Sets `gso_size`.
    pub fn set_gso_size(&mut self, v: u16) {
        self.set_u16_at(field::GSO_SIZE, v);
    }

    /// Sets `csum_start`.
    pub fn set_csum_start(&mut self, v: u16) {
        self.set_u16_at(field::CSUM_START, v);
    }

    /// Sets `csum_offset`.
    pub fn set_csum_offset(&mut self, v: u16) {
        self.set_u16_at(field::CSUM_OFFSET, v);
    }
}

/// What a packet's GSO type asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gso {
    /// A plain packet.
    None,
    /// An IPv4/TCP super-frame to cut into `gso_size` segments.
    TcpV4,
    /// UDP fragmentation offload (not enabled by Weft; parsed so it can be refused by name).
    Udp,
    /// An IPv6/TCP super-frame (not enabled by Weft).
    TcpV6,
    /// UDP segmentation offload (USO): a pod's UDP GSO send, with `TUN_F_USO4`.
    UdpL4,
}

/// A parsed virtio-net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VnetRepr {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the transport checksum is partial (pseudo-header only).
    pub needs_csum: bool,
    /// The GSO type, without its ECN bit.
    pub gso: Gso,
    /// The `VIRTIO_NET_HDR_GSO_ECN` bit.
    pub ecn: bool,
    /// Header bytes in front of the payload.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Start of the checksummed range.
    pub csum_start: u16,
    /// Offset of the checksum field within that range.
    pub csum_offset: u16,
}

impl VnetRepr {
    /// The all-zero header: a plain packet with a complete checksum.
    pub const NONE: VnetRepr = VnetRepr {
        needs_csum: false,
        gso: Gso::None,
        ecn: false,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Parses a header; an unknown GSO type is an error, unknown flag bits are ignored.
    pub fn parse<T: AsRef<[u8]>>(h: &VnetHeader<T>) -> Result<VnetRepr, OffloadError> {
        h.check_len()?;
        let raw = h.gso_type();
        let gso = match raw & !GSO_ECN {
            GSO_NONE => Gso::None,
            GSO_TCPV4 => Gso::TcpV4,
            GSO_UDP => Gso::Udp,
            GSO_TCPV6 => Gso::TcpV6,
            GSO_UDP_L4 => Gso::UdpL4,
            _ => return Err(OffloadError::UnsupportedGso(raw)),
        };
        Ok(VnetRepr {
            needs_csum: h.flags() & F_NEEDS_CSUM != 0,
            gso,
            ecn: raw & GSO_ECN != 0,
            hdr_len: h.hdr_len(),
            gso_size: h.gso_size(),
            csum_start: h.csum_start(),
            csum_offset: h.csum_offset(),
        })
    }

    /// Parses the header at the start of `bytes`.
    pub fn parse_bytes(bytes: &[u8]) -> Result<VnetRepr, OffloadError> {
        VnetRepr::parse(&VnetHeader::new_checked(bytes)?)
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub const fn buffer_len(&self) -> usize {
        VNET_HDR_LEN
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `h`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut VnetHeader<T>) {
        let gso = match self.gso {
            Gso::None => GSO_NONE,
            Gso::TcpV4 => GSO_TCPV4,
            Gso::Udp => GSO_UDP,
            Gso::TcpV6 => GSO_TCPV6,
            Gso::UdpL4 => GSO_UDP_L4,
        };
        h.set_flags(if self.needs_csum { F_NEEDS_CSUM } else { 0 });
        h.set_gso_type(gso | if self.ecn { GSO_ECN } else { 0 });
        h.set_hdr_len(self.hdr_len);
        h.set_gso_size(self.gso_size);
        h.set_csum_start(self.csum_start);
        h.set_csum_offset(self.csum_offset);
    }

    /// The header as bytes.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0; VNET_HDR_LEN];
        self.emit(&mut VnetHeader::new_unchecked(&mut b[..]));
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_kernel_tso_header_little_endian() {
        // What a TUN hands out for a 3-segment TSO frame: NEEDS_CSUM, TCPV4, hdr_len 66,
        // gso_size 1398, csum_start 20, csum_offset 16.
        let bytes = [0x01, 0x01, 66, 0, 0x76, 0x05, 20, 0, 16, 0];
        let r = VnetRepr::parse_bytes(&bytes).expect("valid header");
        assert_eq!(
            r,
            VnetRepr {
                needs_csum: true,
                gso: Gso::TcpV4,
                ecn: false,
                hdr_len: 66,
                gso_size: 1398,
                csum_start: 20,
                csum_offset: 16,
            }
        );
        assert_eq!(r.to_bytes(), bytes);
        assert_eq!(VnetRepr::NONE.to_bytes(), [0; VNET_HDR_LEN]);
    }

    #[test]
    fn ecn_bit_and_bad_input() {
        let r = VnetRepr::parse_bytes(&[0, 0x81, 0, 0, 0, 0, 0, 0, 0, 0]).expect("valid");
        assert!(r.ecn && r.gso == Gso::TcpV4);
        assert_eq!(r.to_bytes()[1], 0x81);
        assert_eq!(
            VnetRepr::parse_bytes(&[0, 9, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(OffloadError::UnsupportedGso(9))
        );
        assert_eq!(VnetRepr::parse_bytes(&[0; 9]), Err(OffloadError::Truncated));
        // DATA_VALID is ignored.
        let r = VnetRepr::parse_bytes(&[F_DATA_VALID, 0, 0, 0, 0, 0, 0, 0, 0, 0]).expect("valid");
        assert_eq!(r, VnetRepr::NONE);
    }
}
