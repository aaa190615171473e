//! Wire formats, one module per format, after smoltcp's `wire`.
//!
//! Each module offers a zero-copy view `XxxPacket<T: AsRef<[u8]>>` (or `Frame`) with
//! `new_unchecked`, `new_checked` and `check_len`, getters on `AsRef` and setters on `AsMut`, and a
//! small `XxxRepr` with `parse`, `buffer_len` and `emit`.
//!
//! The contract: untrusted bytes enter only through `new_checked` (or `check_len`); once that has
//! succeeded, no accessor of the view panics, whatever the bytes say. Malformed input is an
//! [`Error`] value, never a panic. Accessors of a view made with `new_unchecked` may panic on a
//! short buffer, which is what the `_unchecked` in the name warns of.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod ipip;
pub mod ipv4;
pub mod tcp;
pub mod udp;
pub mod vxlan;

use core::fmt;
use core::str::FromStr;

pub use arp::{ArpOperation, ArpPacket, ArpRepr};
pub use ethernet::{EtherType, EthernetFrame, EthernetRepr};
pub use icmpv4::{Icmpv4Packet, Icmpv4Repr};
pub use ipv4::{Ipv4Packet, Ipv4Repr};
pub use tcp::TcpPacket;
pub use udp::{UdpPacket, UdpRepr};
pub use vxlan::{VxlanPacket, VxlanRepr};

/// Why a buffer could not be read as the format asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than the header, or than a length field inside it says.
    #[error("truncated packet")]
    Truncated,
    /// A field holds a value the format does not allow (bad version, header length, flags, ...).
    #[error("malformed packet")]
    Malformed,
    /// The checksum does not match the contents.
    #[error("checksum mismatch")]
    Checksum,
    /// Well formed, but a variant Weft does not handle (an ARP for another hardware type, ...).
    #[error("unsupported packet")]
    Unsupported,
}

/// Result of parsing a wire format.
pub type Result<T> = core::result::Result<T, Error>;

/// A 48-bit IEEE 802 MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    /// The broadcast address `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);

    /// Reads an address from the first six bytes of `data`.
    ///
    /// # Panics
    /// When `data` is shorter than six bytes; callers pass slices of a checked view.
    pub fn from_bytes(data: &[u8]) -> EthernetAddress {
        let mut bytes = [0u8; 6];
        bytes.copy_from_slice(&data[..6]);
        EthernetAddress(bytes)
    }

    /// The six bytes of the address.
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    /// True for `ff:ff:ff:ff:ff:ff`.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// True when the group bit (the least significant bit of the first byte) is set.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True for an individual (unicast) address.
    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// True when the locally administered bit is set, as it is for every MAC Weft derives.
    pub const fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid MAC address {0:?}: expected six hex bytes separated by ':', like c6:d2:32:6f:8f:44"
)]
pub struct ParseMacError(pub String);

impl FromStr for EthernetAddress {
    type Err = ParseMacError;

    fn from_str(s: &str) -> core::result::Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in bytes.iter_mut() {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(EthernetAddress(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_through_text() {
        let mac: EthernetAddress = "c6:d2:32:6f:8f:44".parse().expect("valid MAC");
        assert_eq!(mac.0, [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]);
        assert_eq!(mac.to_string(), "c6:d2:32:6f:8f:44");
        assert!(mac.is_unicast() && mac.is_local());
        for bad in [
            "",
            "c6:d2:32:6f:8f",
            "c6:d2:32:6f:8f:44:00",
            "c6:d2:32:6f:8f:4",
            "zz:d2:32:6f:8f:44",
        ] {
            assert!(bad.parse::<EthernetAddress>().is_err(), "{bad:?} parsed");
        }
    }
}
