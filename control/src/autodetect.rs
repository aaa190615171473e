//! Finding the node's public (underlay) address the way Calico's `IP_AUTODETECTION_METHOD` does,
//! and the interface and MTU behind an address (needed for `mtu = "auto"`: tunnel MTU = underlay
//! MTU - 50).
//!
//! Methods, spelled as Calico spells them:
//! - `first-found`: the first global unicast IPv4 address, in interface index order, on an interface
//!   that is up and not virtual. Virtual interfaces are recognised by name, as Calico does
//!   (`autodetection.DEFAULT_INTERFACES_TO_EXCLUDE`), plus Weft's own ([`EXCLUDED_INTERFACES`]).
//! - `can-reach=IP`: the source address the kernel picks to reach IP, found by `connect(2)` on a UDP
//!   socket (which sends nothing) and `getsockname(2)`.
//! - `interface=REGEX`: the first address on an interface whose name matches REGEX. As in Calico the
//!   regex is not anchored (`eth.*` also matches `veth0`); write `^eth.*` to anchor it.
//!
//! Interfaces and addresses come from netlink dumps of the calling thread's network namespace.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::str::FromStr;

use ipnet::Ipv4Net;
use regex::Regex;

use crate::netlink::{Netlink, NetlinkError};

/// Name patterns of interfaces `first-found` skips: Calico's list plus Weft's own devices.
pub const EXCLUDED_INTERFACES: &[&str] = &[
    "^docker.*",
    "^cbr.*",
    "^dummy.*",
    "^virbr.*",
    "^lxcbr.*",
    "^veth.*",
    "^lo$",
    "^cali.*",
    "^tunl.*",
    "^flannel.*",
    "^kube-ipvs.*",
    "^cni.*",
    "^vxlan.calico.*",
    "^vxlan-v6.calico.*",
    "^wireguard.cali.*",
    "^wg-v6.cali.*",
    "^nodelocaldns.*",
    "^weft.*",
];

/// Why autodetection failed or a method string is invalid.
#[derive(Debug, thiserror::Error)]
pub enum AutodetectError {
    /// The method string is not one of the supported forms.
    #[error("unknown autodetection method {0:?}: use \"first-found\", \"can-reach=IP\" or \"interface=REGEX\"")]
    UnknownMethod(String),
    /// `can-reach=` is followed by something that is not an IPv4 address.
    #[error("can-reach={0:?}: not an IPv4 address (hostnames are not resolved); write e.g. can-reach=8.8.8.8")]
    BadCanReach(String),
    /// `interface=` is followed by an invalid regular expression.
    #[error("interface={pattern:?}: invalid regular expression: {source}")]
    BadRegex {
        /// The pattern as written.
        pattern: String,
        /// The regex compiler's complaint.
        #[source]
        source: regex::Error,
    },
    /// No interface qualified.
    #[error("autodetection method {method} found no IPv4 address; check `ip -4 addr` (interfaces must be up and not excluded), or set node.public_ip")]
    NotFound {
        /// The method, as written.
        method: String,
    },
    /// The kernel has no route to the `can-reach` target.
    #[error("can-reach={target}: no route to it ({source}); check the default route, or set node.public_ip")]
    Unreachable {
        /// The target address.
        target: Ipv4Addr,
        /// The error from connect(2).
        #[source]
        source: std::io::Error,
    },
    /// No interface holds the given address.
    #[error("no interface holds {0}; check node.public_ip against `ip -4 addr`")]
    NoInterfaceFor(Ipv4Addr),
    /// A netlink dump failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// How to find the node's public address.
#[derive(Debug, Clone)]
pub enum AutodetectMethod {
    /// `first-found`: the first address on a non-virtual interface.
    FirstFound,
    /// `can-reach=IP`: the source address of the route to IP.
    CanReach(Ipv4Addr),
    /// `interface=REGEX`: the first address on an interface whose name matches.
    Interface(Regex),
}

impl PartialEq for AutodetectMethod {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::FirstFound, Self::FirstFound) => true,
            (Self::CanReach(a), Self::CanReach(b)) => a == b,
            (Self::Interface(a), Self::Interface(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Eq for AutodetectMethod {}

impl FromStr for AutodetectMethod {
    type Err = AutodetectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "first-found" {
            return Ok(Self::FirstFound);
        }
        if let Some(target) = s.strip_prefix("can-reach=") {
            return target
                .trim()
                .parse()
                .map(Self::CanReach)
                .map_err(|_| AutodetectError::BadCanReach(target.to_string()));
        }
        if let Some(pattern) = s.strip_prefix("interface=") {
            return Regex::new(pattern).map(Self::Interface).map_err(|source| {
                AutodetectError::BadRegex {
                    pattern: pattern.to_string(),
                    source,
                }
            });
        }
        Err(AutodetectError::UnknownMethod(s.to_string()))
    }
}

impl fmt::Display for AutodetectMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FirstFound => f.write_str("first-found"),
            Self::CanReach(ip) => write!(f, "can-reach={ip}"),
            Self::Interface(re) => write!(f, "interface={}", re.as_str()),
        }
    }
}

fn is_candidate(ip: Ipv4Addr) -> bool {
    !(ip.is_loopback() || ip.is_link_local() || ip.is_unspecified() || ip.is_multicast())
}

/// Finds the node's public address with `method`, in the calling thread's network namespace.
/// Returns the address, the interface holding it and that interface's MTU.
pub fn detect(method: &AutodetectMethod) -> Result<(Ipv4Addr, String, u32), AutodetectError> {
    detect_with(&Netlink::new()?, method)
}

/// [`detect`] through an existing netlink handle (and in its namespace, except for `can-reach`,
/// whose UDP socket is opened in the calling thread's namespace).
pub fn detect_with(
    nl: &Netlink,
    method: &AutodetectMethod,
) -> Result<(Ipv4Addr, String, u32), AutodetectError> {
    let not_found = || AutodetectError::NotFound {
        method: method.to_string(),
    };
    match method {
        AutodetectMethod::CanReach(target) => {
            let ip = source_address_for(*target)?;
            let (ifname, mtu) = interface_of_with(nl, ip)?;
            Ok((ip, ifname, mtu))
        }
        AutodetectMethod::FirstFound | AutodetectMethod::Interface(_) => {
            let excluded: Vec<Regex> = EXCLUDED_INTERFACES
                .iter()
                .map(|p| Regex::new(p).expect("EXCLUDED_INTERFACES are valid regexes"))
                .collect();
            let links = nl.links()?;
            let addrs = nl.addresses()?;
            for link in links.iter().filter(|l| l.up && !l.loopback) {
                let wanted = match method {
                    AutodetectMethod::Interface(re) => re.is_match(&link.name),
                    _ => !excluded.iter().any(|re| re.is_match(&link.name)),
                };
                if !wanted {
                    continue;
                }
                if let Some(a) = addrs
                    .iter()
                    .find(|a| a.index == link.index && is_candidate(a.addr.addr()))
                {
                    return Ok((a.addr.addr(), link.name.clone(), link.mtu));
                }
            }
            Err(not_found())
        }
    }
}

/// The source address the kernel would use to reach `target`: `connect(2)` a UDP socket (no packet
/// is sent) and read its local address.
pub fn source_address_for(target: Ipv4Addr) -> Result<Ipv4Addr, AutodetectError> {
    let unreachable = |source| AutodetectError::Unreachable { target, source };
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(unreachable)?;
    // Port 9 (discard): any port works, nothing is sent.
    socket.connect((target, 9)).map_err(unreachable)?;
    match socket.local_addr().map_err(unreachable)? {
        SocketAddr::V4(a) => Ok(*a.ip()),
        SocketAddr::V6(_) => Err(AutodetectError::NotFound {
            method: format!("can-reach={target}"),
        }),
    }
}

/// The interface holding `addr` and its MTU, in the calling thread's network namespace.
pub fn interface_of(addr: Ipv4Addr) -> Result<(String, u32), AutodetectError> {
    interface_of_with(&Netlink::new()?, addr)
}

/// The subnet of the interface address `addr` (e.g. `192.168.77.0/24` for 192.168.77.3/24): the
/// underlay peers are directly reachable in, for host-gw and `CrossSubnet`.
pub fn subnet_of(addr: Ipv4Addr) -> Result<Ipv4Net, AutodetectError> {
    Netlink::new()?
        .addresses()?
        .into_iter()
        .find(|a| a.addr.addr() == addr)
        .map(|a| a.addr.trunc())
        .ok_or(AutodetectError::NoInterfaceFor(addr))
}

/// [`interface_of`] through an existing netlink handle.
pub fn interface_of_with(nl: &Netlink, addr: Ipv4Addr) -> Result<(String, u32), AutodetectError> {
    let found = nl
        .addresses()?
        .into_iter()
        .find(|a| a.addr.addr() == addr)
        .ok_or(AutodetectError::NoInterfaceFor(addr))?;
    let mtu = nl.link_mtu(&found.ifname)?;
    Ok((found.ifname, mtu))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap in a test is the test failing
mod tests {
    use super::*;

    #[test]
    fn parses_calico_spellings() {
        assert_eq!(
            "first-found".parse::<AutodetectMethod>().unwrap(),
            AutodetectMethod::FirstFound
        );
        assert_eq!(
            "can-reach=1.2.3.4".parse::<AutodetectMethod>().unwrap(),
            AutodetectMethod::CanReach(Ipv4Addr::new(1, 2, 3, 4))
        );
        let m: AutodetectMethod = "interface=eth.*".parse().unwrap();
        assert_eq!(m.to_string(), "interface=eth.*");
        assert!(matches!(
            "can-reach=example.com".parse::<AutodetectMethod>(),
            Err(AutodetectError::BadCanReach(_))
        ));
        assert!(matches!(
            "interface=(".parse::<AutodetectMethod>(),
            Err(AutodetectError::BadRegex { .. })
        ));
        assert!(matches!(
            "cidr=10.0.0.0/8".parse::<AutodetectMethod>(),
            Err(AutodetectError::UnknownMethod(_))
        ));
    }

    #[test]
    fn excluded_patterns_match_virtual_names() {
        let excluded: Vec<Regex> = EXCLUDED_INTERFACES
            .iter()
            .map(|p| Regex::new(p).unwrap())
            .collect();
        for name in [
            "docker0",
            "cbr0",
            "veth1234",
            "lo",
            "cni0",
            "flannel.1",
            "tunl0",
            "cali123",
            "vxlan.calico",
            "weft.1",
            "weft0",
        ] {
            assert!(excluded.iter().any(|re| re.is_match(name)), "{name}");
        }
        for name in ["eth0", "ens3", "enp0s31f6", "wlan0", "bond0", "local0"] {
            assert!(!excluded.iter().any(|re| re.is_match(name)), "{name}");
        }
    }
}
