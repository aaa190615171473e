//! ARP (RFC 826), for Ethernet and IPv4 only.
//!
//! Weft answers ARP on pod interfaces (Calico-style proxy ARP for the `169.254.1.1` gateway) and
//! never needs another hardware or protocol type, so the view assumes the 28-byte Ethernet/IPv4
//! layout: the address fields sit at fixed offsets. [`ArpRepr::parse`] is where that assumption is
//! checked: it refuses any packet whose hardware type, protocol type or address lengths say
//! otherwise with [`Error::Unsupported`].
//!
//! Contract: once [`ArpPacket::new_checked`] (or [`ArpPacket::check_len`]) has succeeded, no
//! accessor panics. The accessors read the Ethernet/IPv4 offsets whatever the length fields say.

use std::net::Ipv4Addr;

use super::ethernet::EtherType;
use super::{Error, EthernetAddress, Result};

/// Length of an Ethernet/IPv4 ARP packet: 8 fixed bytes, two 6-byte MACs, two 4-byte addresses.
pub const HEADER_LEN: usize = 28;

/// `ar$hrd` value for Ethernet (RFC 826; IANA ARP hardware types).
pub const HARDWARE_ETHERNET: u16 = 1;

mod field {
    use core::ops::Range;

    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    // The rest assumes hlen = 6 and plen = 4, which `ArpRepr::parse` enforces.
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// The ARP opcode (`ar$op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ArpOperation {
    /// 1: who has `target_protocol_addr`?
    Request,
    /// 2: `source_protocol_addr` is at `source_hardware_addr`.
    Reply,
    /// Any other opcode (RARP, InARP, ...), kept verbatim.
    Unknown(u16),
}

impl From<u16> for ArpOperation {
    fn from(value: u16) -> Self {
        match value {
            1 => ArpOperation::Request,
            2 => ArpOperation::Reply,
            other => ArpOperation::Unknown(other),
        }
    }
}

impl From<ArpOperation> for u16 {
    fn from(value: ArpOperation) -> Self {
        match value {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
            ArpOperation::Unknown(other) => other,
        }
    }
}

/// A zero-copy view of an Ethernet/IPv4 ARP packet in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

fn read_u16(buf: &[u8], range: core::ops::Range<usize>) -> u16 {
    let b = &buf[range];
    u16::from_be_bytes([b[0], b[1]])
}

fn read_ipv4(buf: &[u8], range: core::ops::Range<usize>) -> Ipv4Addr {
    let b = &buf[range];
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps `buffer` without checking it; accessors may panic if it is shorter than
    /// [`HEADER_LEN`].
    pub const fn new_unchecked(buffer: T) -> ArpPacket<T> {
        ArpPacket { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<ArpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Fails with [`Error::Truncated`] when the buffer is shorter than the 28 bytes of an
    /// Ethernet/IPv4 ARP packet. Longer buffers (Ethernet padding) are fine.
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

    /// Hardware type (`ar$hrd`); [`HARDWARE_ETHERNET`] for the packets Weft handles.
    pub fn hardware_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HTYPE)
    }

    /// Protocol type (`ar$pro`), from the EtherType space.
    pub fn protocol_type(&self) -> EtherType {
        EtherType::from(read_u16(self.buffer.as_ref(), field::PTYPE))
    }

    /// Hardware address length (`ar$hln`).
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    /// Protocol address length (`ar$pln`).
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    /// Opcode (`ar$op`).
    pub fn operation(&self) -> ArpOperation {
        ArpOperation::from(read_u16(self.buffer.as_ref(), field::OPER))
    }

    /// Sender hardware address (`ar$sha`).
    pub fn source_hardware_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::SHA])
    }

    /// Sender protocol address (`ar$spa`).
    pub fn source_protocol_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::SPA)
    }

    /// Target hardware address (`ar$tha`); meaningless (usually zero) in a request.
    pub fn target_hardware_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::THA])
    }

    /// Target protocol address (`ar$tpa`).
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::TPA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Sets the hardware type.
    pub fn set_hardware_type(&mut self, value: u16) {
        self.buffer.as_mut()[field::HTYPE].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the protocol type.
    pub fn set_protocol_type(&mut self, value: EtherType) {
        self.buffer.as_mut()[field::PTYPE].copy_from_slice(&u16::from(value).to_be_bytes());
    }

    /// Sets the hardware address length.
    pub fn set_hardware_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::HLEN] = value;
    }

    /// Sets the protocol address length.
    pub fn set_protocol_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::PLEN] = value;
    }

    /// Sets the opcode.
    pub fn set_operation(&mut self, value: ArpOperation) {
        self.buffer.as_mut()[field::OPER].copy_from_slice(&u16::from(value).to_be_bytes());
    }

    /// Sets the sender hardware address.
    pub fn set_source_hardware_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(addr.as_bytes());
    }

    /// Sets the sender protocol address.
    pub fn set_source_protocol_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA].copy_from_slice(&addr.octets());
    }

    /// Sets the target hardware address.
    pub fn set_target_hardware_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::THA].copy_from_slice(addr.as_bytes());
    }

    /// Sets the target protocol address.
    pub fn set_target_protocol_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA].copy_from_slice(&addr.octets());
    }
}

/// An ARP packet, parsed. Only the Ethernet/IPv4 combination exists; the enum leaves room for
/// others without breaking matches elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArpRepr {
    /// ARP over Ethernet for IPv4 addresses (`ar$hrd` 1, `ar$pro` 0x0800, lengths 6 and 4).
    EthernetIpv4 {
        /// Request, reply or another opcode.
        operation: ArpOperation,
        /// Sender MAC.
        source_hardware_addr: EthernetAddress,
        /// Sender IPv4 address.
        source_protocol_addr: Ipv4Addr,
        /// Target MAC (zero in a request).
        target_hardware_addr: EthernetAddress,
        /// Target IPv4 address.
        target_protocol_addr: Ipv4Addr,
    },
}

impl ArpRepr {
    /// Parses `packet`, checking its length first so an unchecked view is safe too.
    ///
    /// Fails with [`Error::Unsupported`] unless the packet is Ethernet/IPv4 ARP: hardware type 1,
    /// protocol type 0x0800, hardware length 6 and protocol length 4. Unknown opcodes are kept.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &ArpPacket<&T>) -> Result<ArpRepr> {
        packet.check_len()?;
        if packet.hardware_type() != HARDWARE_ETHERNET
            || packet.protocol_type() != EtherType::Ipv4
            || packet.hardware_len() != 6
            || packet.protocol_len() != 4
        {
            return Err(Error::Unsupported);
        }
        Ok(ArpRepr::EthernetIpv4 {
            operation: packet.operation(),
            source_hardware_addr: packet.source_hardware_addr(),
            source_protocol_addr: packet.source_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        })
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub const fn buffer_len(&self) -> usize {
        match self {
            ArpRepr::EthernetIpv4 { .. } => HEADER_LEN,
        }
    }

    /// Writes the whole 28-byte packet into the start of `packet`.
    ///
    /// # Panics
    /// When the packet's buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        match *self {
            ArpRepr::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                target_hardware_addr,
                target_protocol_addr,
            } => {
                packet.set_hardware_type(HARDWARE_ETHERNET);
                packet.set_protocol_type(EtherType::Ipv4);
                packet.set_hardware_len(6);
                packet.set_protocol_len(4);
                packet.set_operation(operation);
                packet.set_source_hardware_addr(source_hardware_addr);
                packet.set_source_protocol_addr(source_protocol_addr);
                packet.set_target_hardware_addr(target_hardware_addr);
                packet.set_target_protocol_addr(target_protocol_addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "Who has 169.254.1.1? Tell 10.244.1.2", as a pod sends it for its Calico-style gateway.
    const REQUEST: [u8; 28] = [
        0x00, 0x01, // hardware type: Ethernet
        0x08, 0x00, // protocol type: IPv4
        0x06, // hardware length
        0x04, // protocol length
        0x00, 0x01, // operation: request
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // sender MAC
        10, 244, 1, 2, // sender IPv4
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // target MAC: unknown
        169, 254, 1, 1, // target IPv4
    ];

    /// The proxy-ARP reply: "169.254.1.1 is at ee:ee:ee:ee:ee:ee".
    const REPLY: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, //
        0x00, 0x02, // operation: reply
        0xee, 0xee, 0xee, 0xee, 0xee, 0xee, // sender MAC: the host veth
        169, 254, 1, 1, // sender IPv4
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // target MAC: the pod
        10, 244, 1, 2, // target IPv4
    ];

    fn pod_mac() -> EthernetAddress {
        EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
    }

    #[test]
    fn parses_request_fields() {
        let p = ArpPacket::new_checked(&REQUEST[..]).expect("valid");
        assert_eq!(p.hardware_type(), 1);
        assert_eq!(p.protocol_type(), EtherType::Ipv4);
        assert_eq!(p.hardware_len(), 6);
        assert_eq!(p.protocol_len(), 4);
        assert_eq!(p.operation(), ArpOperation::Request);
        assert_eq!(p.source_hardware_addr(), pod_mac());
        assert_eq!(p.source_protocol_addr(), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(p.target_hardware_addr(), EthernetAddress([0; 6]));
        assert_eq!(p.target_protocol_addr(), Ipv4Addr::new(169, 254, 1, 1));
    }

    #[test]
    fn reply_round_trip_is_byte_exact() {
        let repr =
            ArpRepr::parse(&ArpPacket::new_checked(&REPLY[..]).expect("valid")).expect("supported");
        assert_eq!(
            repr,
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: EthernetAddress([0xee; 6]),
                source_protocol_addr: Ipv4Addr::new(169, 254, 1, 1),
                target_hardware_addr: pod_mac(),
                target_protocol_addr: Ipv4Addr::new(10, 244, 1, 2),
            }
        );
        assert_eq!(repr.buffer_len(), 28);
        let mut out = [0xaau8; 28];
        repr.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
        assert_eq!(out, REPLY);
    }

    #[test]
    fn padded_request_parses() {
        // A request as it leaves a NIC: padded to the 46-byte minimum Ethernet payload.
        let mut padded = [0u8; 46];
        padded[..28].copy_from_slice(&REQUEST);
        let repr = ArpRepr::parse(&ArpPacket::new_checked(&padded[..]).expect("valid"));
        assert!(matches!(
            repr,
            Ok(ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                ..
            })
        ));
    }

    #[test]
    fn short_buffers_are_truncated() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                ArpPacket::new_checked(&REQUEST[..len]).err(),
                Some(Error::Truncated)
            );
            assert_eq!(
                ArpRepr::parse(&ArpPacket::new_unchecked(&REQUEST[..len])).err(),
                Some(Error::Truncated)
            );
        }
    }

    #[test]
    fn other_hardware_or_protocol_is_unsupported() {
        // (byte offset, value): htype 6 (IEEE 802), ptype IPv6, hlen 8, plen 16.
        for (offset, value) in [(1usize, 6u8), (2, 0x86), (4, 8), (5, 16)] {
            let mut buf = REQUEST;
            buf[offset] = value;
            let packet = ArpPacket::new_checked(&buf[..]).expect("long enough");
            assert_eq!(
                ArpRepr::parse(&packet),
                Err(Error::Unsupported),
                "offset {offset}"
            );
        }
    }

    #[test]
    fn unknown_opcode_is_kept() {
        let mut buf = REQUEST;
        buf[7] = 9; // InARP request (RFC 2390)
        let repr = ArpRepr::parse(&ArpPacket::new_checked(&buf[..]).expect("valid"));
        assert!(matches!(
            repr,
            Ok(ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Unknown(9),
                ..
            })
        ));
        assert_eq!(u16::from(ArpOperation::from(9)), 9);
    }
}
