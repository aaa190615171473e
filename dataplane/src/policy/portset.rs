//! The protocols and destination ports a rule admits.
//!
//! A NetworkPolicy rule with no `ports` admits every protocol and port, ICMP included; a rule
//! with `ports` admits only the listed (protocol, port range) pairs, so it never matches ICMP or
//! any protocol without ports (Kubernetes defines NetworkPolicy for TCP, UDP and SCTP only; what
//! a port-less rule does with other protocols is left to the plugin, and Weft, like Calico, lets
//! it admit them).

use core::fmt;

/// An IP protocol number (IANA "Assigned Internet Protocol Numbers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(pub u8);

impl Protocol {
    /// ICMP (RFC 792).
    pub const ICMP: Protocol = Protocol(1);
    /// TCP (RFC 9293).
    pub const TCP: Protocol = Protocol(6);
    /// UDP (RFC 768).
    pub const UDP: Protocol = Protocol(17);
    /// SCTP (RFC 9260).
    pub const SCTP: Protocol = Protocol(132);

    /// True for the protocols NetworkPolicy `ports` can name: TCP, UDP and SCTP.
    pub const fn has_ports(self) -> bool {
        matches!(self, Protocol::TCP | Protocol::UDP | Protocol::SCTP)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Protocol::ICMP => f.write_str("ICMP"),
            Protocol::TCP => f.write_str("TCP"),
            Protocol::UDP => f.write_str("UDP"),
            Protocol::SCTP => f.write_str("SCTP"),
            Protocol(n) => write!(f, "proto {n}"),
        }
    }
}

/// One entry of a rule's `ports`: a protocol and an inclusive destination port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// The first port admitted (`port`).
    pub first: u16,
    /// The last port admitted (`endPort`, or `port` again when there is none).
    pub last: u16,
}

impl PortRange {
    /// Every port of `protocol` (a `ports` entry with a protocol and no `port`).
    pub const fn all(protocol: Protocol) -> PortRange {
        PortRange {
            protocol,
            first: 0,
            last: u16::MAX,
        }
    }

    /// The single port `port` of `protocol`.
    pub const fn single(protocol: Protocol, port: u16) -> PortRange {
        PortRange {
            protocol,
            first: port,
            last: port,
        }
    }

    /// True when the range admits `port` of `protocol`.
    #[inline]
    pub fn contains(&self, protocol: Protocol, port: u16) -> bool {
        self.protocol == protocol && self.first <= port && port <= self.last
    }
}

/// What a rule admits besides its peers: everything, or a list of port ranges.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortSet {
    /// The rule has no `ports`: every protocol, every port, ICMP included.
    Any,
    /// Only these (protocol, port range) pairs; an empty list admits nothing (a named port that
    /// resolved to no container port).
    Ranges(Box<[PortRange]>),
}

impl PortSet {
    /// The set of these ranges, sorted and without duplicates.
    pub fn ranges(ranges: impl IntoIterator<Item = PortRange>) -> PortSet {
        let mut v: Vec<PortRange> = ranges.into_iter().filter(|r| r.first <= r.last).collect();
        v.sort_unstable();
        v.dedup();
        PortSet::Ranges(v.into_boxed_slice())
    }

    /// True when the set admits `port` of `protocol`. A protocol without ports (ICMP) is
    /// admitted only by [`PortSet::Any`].
    #[inline]
    pub fn contains(&self, protocol: Protocol, port: u16) -> bool {
        match self {
            PortSet::Any => true,
            PortSet::Ranges(r) => {
                protocol.has_ports() && r.iter().any(|r| r.contains(protocol, port))
            }
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.first, self.last) {
            (0, u16::MAX) => write!(f, "{}", self.protocol),
            (a, b) if a == b => write!(f, "{}/{a}", self.protocol),
            (a, b) => write!(f, "{}/{a}-{b}", self.protocol),
        }
    }
}

impl fmt::Display for PortSet {
    /// `any`, or a comma-separated list such as `TCP/80,UDP/5000-5010`; `(none)` when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSet::Any => f.write_str("any"),
            PortSet::Ranges(r) if r.is_empty() => f.write_str("(none)"),
            PortSet::Ranges(r) => {
                for (i, range) in r.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{range}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_with_end_port_are_inclusive() {
        let s = PortSet::ranges([
            PortRange {
                protocol: Protocol::TCP,
                first: 32000,
                last: 32768,
            },
            PortRange::single(Protocol::UDP, 53),
        ]);
        assert!(!s.contains(Protocol::TCP, 31999));
        assert!(s.contains(Protocol::TCP, 32000));
        assert!(s.contains(Protocol::TCP, 32768));
        assert!(!s.contains(Protocol::TCP, 32769));
        assert!(s.contains(Protocol::UDP, 53));
        assert!(!s.contains(Protocol::TCP, 53));
        assert!(!s.contains(Protocol::SCTP, 53));
        assert_eq!(s.to_string(), "TCP/32000-32768,UDP/53");
    }

    #[test]
    fn icmp_matches_only_a_rule_without_ports() {
        assert!(PortSet::Any.contains(Protocol::ICMP, 0));
        assert!(PortSet::Any.contains(Protocol(47), 0));
        let all_tcp = PortSet::ranges([PortRange::all(Protocol::TCP)]);
        assert!(all_tcp.contains(Protocol::TCP, 0));
        assert!(all_tcp.contains(Protocol::TCP, 65535));
        assert!(!all_tcp.contains(Protocol::ICMP, 0));
        assert!(!all_tcp.contains(Protocol::UDP, 80));
        assert_eq!(all_tcp.to_string(), "TCP");
        let none = PortSet::ranges([]);
        assert!(!none.contains(Protocol::TCP, 80));
        assert_eq!(none.to_string(), "(none)");
    }

    #[test]
    fn sctp_is_not_tcp() {
        // Upstream e2e: "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP'".
        let s = PortSet::ranges([PortRange::single(Protocol::SCTP, 81)]);
        assert!(s.contains(Protocol::SCTP, 81));
        assert!(!s.contains(Protocol::TCP, 81));
    }
}
