//! ICMPv4 (RFC 792), with the next-hop MTU of Fragmentation Needed (RFC 1191 §4).
//!
//! Weft answers echo requests addressed to itself and originates the errors a router owes the
//! sender: Destination Unreachable (no route; Fragmentation Needed when a DF datagram does not fit
//! the tunnel MTU, which is what makes path MTU discovery work through the 50-byte VXLAN or
//! 20-byte IPIP overhead) and Time Exceeded (TTL ran out).
//!
//! ICMP has no length field: the message is the whole IP payload, so the view spans the whole
//! buffer and the checksum covers all of it. Slice the buffer to the IP payload before wrapping it.
//!
//! Contract: once [`Icmpv4Packet::new_checked`] (or [`Icmpv4Packet::check_len`]) has succeeded, no
//! accessor panics.

use super::checksum;
use super::{Error, Result};

/// Length of the fixed ICMP header: type, code, checksum and the 4-byte "rest of header".
pub const HEADER_LEN: usize = 8;

/// ICMP message types (RFC 792) Weft reads or writes.
pub mod msg_type {
    /// Echo Reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination Unreachable.
    pub const DST_UNREACHABLE: u8 = 3;
    /// Echo Request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time Exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
}

/// Codes of Destination Unreachable (RFC 792, RFC 1191).
pub mod dst_unreachable {
    /// No route to the destination network.
    pub const NET_UNREACHABLE: u8 = 0;
    /// The destination host cannot be reached.
    pub const HOST_UNREACHABLE: u8 = 1;
    /// The protocol is not supported by the destination.
    pub const PROTO_UNREACHABLE: u8 = 2;
    /// No listener on the destination port.
    pub const PORT_UNREACHABLE: u8 = 3;
    /// Fragmentation needed and DF set; carries the next-hop MTU (RFC 1191).
    pub const FRAG_NEEDED: u8 = 4;
}

/// Codes of Time Exceeded (RFC 792).
pub mod time_exceeded {
    /// TTL reached zero in transit.
    pub const TTL_EXCEEDED: u8 = 0;
    /// Fragment reassembly timed out.
    pub const FRAG_REASSEMBLY: u8 = 1;
}

mod field {
    use core::ops::Range;

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    /// The 4-byte "rest of header": identifier and sequence number for echo, unused (zero) for
    /// errors except the next-hop MTU of Fragmentation Needed.
    pub const REST: Range<usize> = 4..8;
    pub const ECHO_IDENT: Range<usize> = 4..6;
    pub const ECHO_SEQNO: Range<usize> = 6..8;
    pub const NEXT_HOP_MTU: Range<usize> = 6..8;
    pub const DATA: usize = 8;
}

/// A zero-copy view of an ICMPv4 message; the buffer is exactly the message (the IP payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic if it is shorter than
    /// [`HEADER_LEN`].
    pub const fn new_unchecked(buffer: T) -> Icmpv4Packet<T> {
        Icmpv4Packet { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Icmpv4Packet<T>> {
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

    fn read_u16(&self, range: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[range];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The message type; see [`msg_type`].
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// The message code; see [`dst_unreachable`] and [`time_exceeded`].
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        self.read_u16(field::CHECKSUM)
    }

    /// The echo identifier (meaningful for echo request and reply).
    pub fn echo_ident(&self) -> u16 {
        self.read_u16(field::ECHO_IDENT)
    }

    /// The echo sequence number (meaningful for echo request and reply).
    pub fn echo_seq_no(&self) -> u16 {
        self.read_u16(field::ECHO_SEQNO)
    }

    /// The next-hop MTU (meaningful for Fragmentation Needed, RFC 1191 §4; zero from
    /// pre-RFC 1191 routers).
    pub fn next_hop_mtu(&self) -> u16 {
        self.read_u16(field::NEXT_HOP_MTU)
    }

    /// Everything after the 8-byte header: echo data, or the invoking datagram of an error.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA..]
    }

    /// True when the whole message sums to all ones, i.e. the checksum is right.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(self.buffer.as_ref()) == !0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    fn write_u16(&mut self, range: core::ops::Range<usize>, value: u16) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the message type.
    pub fn set_msg_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::TYPE] = value;
    }

    /// Sets the message code.
    pub fn set_msg_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        self.write_u16(field::CHECKSUM, value);
    }

    /// Sets the echo identifier.
    pub fn set_echo_ident(&mut self, value: u16) {
        self.write_u16(field::ECHO_IDENT, value);
    }

    /// Sets the echo sequence number.
    pub fn set_echo_seq_no(&mut self, value: u16) {
        self.write_u16(field::ECHO_SEQNO, value);
    }

    /// Sets the next-hop MTU (bytes 6..8).
    pub fn set_next_hop_mtu(&mut self, value: u16) {
        self.write_u16(field::NEXT_HOP_MTU, value);
    }

    /// Zeroes bytes 4..8, which RFC 792 marks "unused" (must be zero) for error messages.
    pub fn clear_rest_of_header(&mut self) {
        self.buffer.as_mut()[field::REST].fill(0);
    }

    /// Everything after the header, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA..]
    }

    /// Computes the checksum over the whole buffer and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let value = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(value);
    }
}

/// An ICMPv4 message Weft understands, borrowing its data from the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Icmpv4Repr<'a> {
    /// Echo Request (type 8, code 0).
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Data to be echoed back.
        data: &'a [u8],
    },
    /// Echo Reply (type 0, code 0).
    EchoReply {
        /// Identifier, copied from the request.
        ident: u16,
        /// Sequence number, copied from the request.
        seq_no: u16,
        /// Data, copied from the request.
        data: &'a [u8],
    },
    /// Destination Unreachable (type 3).
    DstUnreachable {
        /// See [`dst_unreachable`].
        code: u8,
        /// Bytes 6..8: the next-hop MTU for [`dst_unreachable::FRAG_NEEDED`], written as given
        /// (callers pass zero for other codes).
        next_hop_mtu: u16,
        /// The invoking datagram: its IP header and leading payload, verbatim.
        original: &'a [u8],
    },
    /// Time Exceeded (type 11).
    TimeExceeded {
        /// See [`time_exceeded`].
        code: u8,
        /// The invoking datagram: its IP header and leading payload, verbatim.
        original: &'a [u8],
    },
}

impl<'a> Icmpv4Repr<'a> {
    /// Parses `packet`, checking its length first so an unchecked view is safe too.
    ///
    /// Fails with [`Error::Checksum`] when the checksum is wrong, [`Error::Malformed`] for an echo
    /// with a non-zero code, and [`Error::Unsupported`] for any other message type.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Icmpv4Packet<&'a T>) -> Result<Icmpv4Repr<'a>> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        // Borrow the data for 'a (the buffer's lifetime), not for the view's.
        let buffer: &'a T = packet.buffer;
        let data = &buffer.as_ref()[field::DATA..];
        match (packet.msg_type(), packet.msg_code()) {
            (msg_type::ECHO_REQUEST, 0) => Ok(Icmpv4Repr::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            }),
            (msg_type::ECHO_REPLY, 0) => Ok(Icmpv4Repr::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            }),
            (msg_type::ECHO_REQUEST | msg_type::ECHO_REPLY, _) => Err(Error::Malformed),
            (msg_type::DST_UNREACHABLE, code) => Ok(Icmpv4Repr::DstUnreachable {
                code,
                next_hop_mtu: packet.next_hop_mtu(),
                original: data,
            }),
            (msg_type::TIME_EXCEEDED, code) => Ok(Icmpv4Repr::TimeExceeded {
                code,
                original: data,
            }),
            _ => Err(Error::Unsupported),
        }
    }

    /// Bytes [`emit`](Self::emit) writes: the header and the data or original datagram.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Icmpv4Repr::EchoRequest { data, .. } | Icmpv4Repr::EchoReply { data, .. } => {
                    data.len()
                }
                Icmpv4Repr::DstUnreachable { original, .. }
                | Icmpv4Repr::TimeExceeded { original, .. } => original.len(),
            }
    }

    /// Writes the message into `packet` and fills the checksum. The checksum covers the whole
    /// buffer, so the view must span exactly [`buffer_len`](Self::buffer_len) bytes.
    ///
    /// # Panics
    /// When the buffer's length differs from `buffer_len()`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Icmpv4Packet<T>) {
        match *self {
            Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } => {
                packet.set_msg_type(msg_type::ECHO_REQUEST);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
                packet.data_mut().copy_from_slice(data);
            }
            Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            } => {
                packet.set_msg_type(msg_type::ECHO_REPLY);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
                packet.data_mut().copy_from_slice(data);
            }
            Icmpv4Repr::DstUnreachable {
                code,
                next_hop_mtu,
                original,
            } => {
                packet.set_msg_type(msg_type::DST_UNREACHABLE);
                packet.set_msg_code(code);
                // RFC 1191 §4: bytes 4..6 stay unused (zero), 6..8 carry the MTU.
                packet.clear_rest_of_header();
                packet.set_next_hop_mtu(next_hop_mtu);
                packet.data_mut().copy_from_slice(original);
            }
            Icmpv4Repr::TimeExceeded { code, original } => {
                packet.set_msg_type(msg_type::TIME_EXCEEDED);
                packet.set_msg_code(code);
                packet.clear_rest_of_header();
                packet.data_mut().copy_from_slice(original);
            }
        }
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The echo request of `ping -c1 10.244.2.3`: ident 0x1234, seq 1, 8 bytes of data, checksum
    /// computed independently.
    const ECHO_REQUEST: [u8; 16] = [
        0x08, // type: echo request
        0x00, // code
        0x71, 0x12, // checksum
        0x12, 0x34, // identifier
        0x00, 0x01, // sequence number
        b'w', b'e', b'f', b't', b'-', b'p', b'i', b'n', // data
    ];

    /// The invoking datagram quoted in the error fixtures: the IPv4 header of the ping plus the
    /// first 8 bytes of its payload (RFC 792's minimum quote).
    const QUOTE: [u8; 28] = [
        0x45, 0x00, 0x00, 0x24, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x01, 0x05, 0xa7, 10, 244, 1, 2, 10,
        244, 2, 3, 0x08, 0x00, 0x71, 0x12, 0x12, 0x34, 0x00, 0x01,
    ];

    #[test]
    fn parses_echo_request() {
        let p = Icmpv4Packet::new_checked(&ECHO_REQUEST[..]).expect("valid");
        assert_eq!(p.msg_type(), msg_type::ECHO_REQUEST);
        assert_eq!(p.msg_code(), 0);
        assert_eq!(p.checksum(), 0x7112);
        assert_eq!(p.echo_ident(), 0x1234);
        assert_eq!(p.echo_seq_no(), 1);
        assert_eq!(p.data(), b"weft-pin");
        assert!(p.verify_checksum());
        let repr = Icmpv4Repr::parse(&p).expect("supported");
        assert_eq!(
            repr,
            Icmpv4Repr::EchoRequest {
                ident: 0x1234,
                seq_no: 1,
                data: b"weft-pin"
            }
        );
        let mut out = [0u8; 16];
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, ECHO_REQUEST);
    }

    #[test]
    fn echo_reply_differs_in_type_and_checksum_only() {
        let reply = Icmpv4Repr::EchoReply {
            ident: 0x1234,
            seq_no: 1,
            data: b"weft-pin",
        };
        let mut out = [0u8; 16];
        reply.emit(&mut Icmpv4Packet::new_unchecked(&mut out[..]));
        // Type 8 -> 0 lowers the first word by 0x0800, so the checksum rises by 0x0800.
        let mut expected = ECHO_REQUEST;
        expected[0] = 0;
        expected[2..4].copy_from_slice(&0x7912u16.to_be_bytes());
        assert_eq!(out, expected);
        let p = Icmpv4Packet::new_checked(&out[..]).expect("valid");
        assert_eq!(Icmpv4Repr::parse(&p), Ok(reply));
    }

    #[test]
    fn frag_needed_round_trip() {
        let repr = Icmpv4Repr::DstUnreachable {
            code: dst_unreachable::FRAG_NEEDED,
            next_hop_mtu: 1450,
            original: &QUOTE,
        };
        assert_eq!(repr.buffer_len(), 36);
        let mut out = [0xaau8; 36];
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut out[..]));
        assert_eq!(&out[..2], &[3, 4]);
        assert_eq!(&out[4..8], &[0, 0, 0x05, 0xaa]); // unused zero, MTU 1450
        assert_eq!(&out[8..], &QUOTE);
        let p = Icmpv4Packet::new_checked(&out[..]).expect("valid");
        assert!(p.verify_checksum());
        assert_eq!(p.next_hop_mtu(), 1450);
        assert_eq!(Icmpv4Repr::parse(&p), Ok(repr));
    }

    #[test]
    fn time_exceeded_round_trip() {
        let repr = Icmpv4Repr::TimeExceeded {
            code: time_exceeded::TTL_EXCEEDED,
            original: &QUOTE,
        };
        let mut out = [0xaau8; 36];
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut out[..]));
        assert_eq!(&out[..2], &[11, 0]);
        assert_eq!(&out[4..8], &[0; 4]);
        let p = Icmpv4Packet::new_checked(&out[..]).expect("valid");
        assert_eq!(Icmpv4Repr::parse(&p), Ok(repr));
    }

    #[test]
    fn errors() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Icmpv4Packet::new_checked(&ECHO_REQUEST[..len]).err(),
                Some(Error::Truncated)
            );
            assert_eq!(
                Icmpv4Repr::parse(&Icmpv4Packet::new_unchecked(&ECHO_REQUEST[..len])).err(),
                Some(Error::Truncated)
            );
        }
        let mut bad = ECHO_REQUEST;
        bad[15] ^= 0x01;
        let p = Icmpv4Packet::new_checked(&bad[..]).expect("long enough");
        assert!(!p.verify_checksum());
        assert_eq!(Icmpv4Repr::parse(&p), Err(Error::Checksum));

        // Echo request with code 1 (checksum fixed up): malformed.
        let mut coded = ECHO_REQUEST;
        let mut p = Icmpv4Packet::new_unchecked(&mut coded[..]);
        p.set_msg_code(1);
        p.fill_checksum();
        assert_eq!(
            Icmpv4Repr::parse(&Icmpv4Packet::new_unchecked(&coded[..])),
            Err(Error::Malformed)
        );

        // Timestamp request (type 13): unsupported.
        let mut ts = ECHO_REQUEST;
        let mut p = Icmpv4Packet::new_unchecked(&mut ts[..]);
        p.set_msg_type(13);
        p.fill_checksum();
        assert_eq!(
            Icmpv4Repr::parse(&Icmpv4Packet::new_unchecked(&ts[..])),
            Err(Error::Unsupported)
        );
    }
}
