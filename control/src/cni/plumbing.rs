//! A pod's link to the node, as flannel's delegated `bridge` plugin makes it: a veth pair whose
//! host end is a port of the node bridge and whose container end carries the pod address, with a
//! default route via the bridge's `<subnet>.1`. All netlink (no `ip`), and the container
//! namespace is entered only on a short-lived thread ([`NetNs::run`]) that opens a netlink socket
//! there; the socket stays bound to that namespace when used from the caller's thread.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use dataplane::wire::EthernetAddress;
use ipnet::Ipv4Net;

use crate::netlink::{Netlink, NetlinkError};
use crate::netns::{NetNs, NetNsError};

/// Prefix of every host veth Weft creates (Calico's are `cali*`, flannel's bridge's `veth*`).
pub const HOST_VETH_PREFIX: &str = "weft";

/// Why plumbing a pod failed.
#[derive(Debug, thiserror::Error)]
pub enum PlumbError {
    /// The container's network namespace cannot be used.
    #[error("CNI_NETNS: {0}")]
    Netns(#[from] NetNsError),
    /// An interface named CNI_IFNAME is already there.
    #[error("CNI_IFNAME: an interface named {ifname:?} already exists in {netns}; the runtime must pass a name the container does not use")]
    IfnameExists {
        /// The interface name.
        ifname: String,
        /// The namespace path.
        netns: String,
    },
    /// The kernel refused a request.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// The host veth name for an attachment: `weft` + 11 hex digits of a hash of the container ID and
/// interface name (15 bytes, the kernel's limit). Derived, not random, so DEL finds the link even
/// when it has no other record of it. FNV-1a 64 with the splitmix64 finaliser, as the VTEP MAC.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    format!(
        "{HOST_VETH_PREFIX}{:011x}",
        attachment_hash(container_id, ifname) >> 20
    )
}

/// The host veth's MAC: locally administered unicast, from the same hash as its name, so the
/// bridge's ports never share one and ADD need not read it back.
pub fn host_veth_mac(container_id: &str, ifname: &str) -> EthernetAddress {
    let b = attachment_hash(container_id, ifname).to_le_bytes();
    EthernetAddress([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
}

/// The pod interface's MAC: `0a:58:` and the four bytes of its address, the scheme kubenet and
/// the CNI bridge plugin used, unique per address and readable in `ip neigh`.
pub fn pod_mac(ip: Ipv4Addr) -> EthernetAddress {
    let o = ip.octets();
    EthernetAddress([0x0a, 0x58, o[0], o[1], o[2], o[3]])
}

fn attachment_hash(container_id: &str, ifname: &str) -> u64 {
    crate::config::stable_hash(&[container_id.as_bytes(), b"/", ifname.as_bytes()])
}

/// What to build for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    /// Host end of the veth.
    pub host_veth: String,
    /// Its MAC.
    pub host_mac: EthernetAddress,
    /// The container interface's MAC.
    pub container_mac: EthernetAddress,
    /// Container end: `CNI_IFNAME`.
    pub ifname: String,
    /// The pod's address with the node subnet's prefix length, e.g. `10.244.1.5/24`.
    pub addr: Ipv4Net,
    /// The default gateway, `<subnet>.1`.
    pub gateway: Ipv4Addr,
    /// MTU of both ends: the tunnel MTU.
    pub mtu: u32,
    /// The node bridge (bridge mode).
    pub bridge: String,
    /// Switch mode: the host end joins no bridge (Weft's switch reads it), the pod has a /32 and
    /// a default route via [`SWITCH_GATEWAY`] on the link.
    pub switch: bool,
}

/// The pods' gateway in switch mode, as Calico's: a link-local address on no interface, which
/// Weft answers ARP for with [`SWITCH_GATEWAY_MAC`].
pub const SWITCH_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The MAC Weft answers a switch-mode pod's ARP with, on every port (Calico's `ee:ee:ee:ee:ee:ee`,
/// locally administered unicast). The same on every node and across restarts, so a pod's ARP
/// entry for its gateway never goes stale; it is not the host veth's own MAC, so the kernel
/// classes the pod's frames as for another host and leaves them to Weft.
pub const SWITCH_GATEWAY_MAC: EthernetAddress = EthernetAddress([0xee; 6]);

/// A netlink handle inside the namespace `ns`, opened on a thread that entered it.
pub fn netlink_in(ns: &NetNs) -> Result<Netlink, PlumbError> {
    Ok(ns.run(Netlink::new)??)
}

/// The default route.
fn default_route() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("0.0.0.0/0 is valid")
}

/// Builds the pod's link. `nl` is the node's handle. Eight netlink round trips: look up the
/// bridge, create the pair (host end configured, peer created in the namespace with its name, MAC
/// and MTU), look up the host end and turn hairpin on, then inside the namespace look up the peer's index, add the address, set it up, add
/// the default route. On failure it deletes the pair again, so nothing is left behind.
pub fn attach(nl: &Netlink, ns: &NetNs, plan: &PodPlan) -> Result<(), PlumbError> {
    let cnl = netlink_in(ns)?;
    let bridge = if plan.switch {
        None
    } else {
        Some(
            nl.link_index(&plan.bridge)?
                .ok_or_else(|| NetlinkError::NoSuchLink(plan.bridge.clone()))?,
        )
    };
    // The caller removed any stale host end under the server's lock, so EEXIST can only mean
    // that CNI_IFNAME is taken inside the container.
    if let Err(e) = nl.create_pod_veth(
        &plan.host_veth,
        plan.host_mac,
        &plan.ifname,
        plan.container_mac,
        ns.as_fd(),
        plan.mtu,
        bridge,
    ) {
        if e.errno() == Some(libc::EEXIST) && nl.link(&plan.host_veth)?.is_none() {
            return Err(PlumbError::IfnameExists {
                ifname: plan.ifname.clone(),
                netns: ns.path().display().to_string(),
            });
        }
        return Err(e.into());
    }
    let configure = || -> Result<(), PlumbError> {
        if plan.switch {
            quiet_host_end(&plan.host_veth);
        } else {
            // Hairpin, so a pod reaches itself through a Service address (see
            // `set_hairpin_index`).
            nl.set_hairpin(&plan.host_veth, true)?;
        }
        let index = cnl
            .link_index(&plan.ifname)?
            .ok_or_else(|| NetlinkError::NoSuchLink(plan.ifname.clone()))?;
        cnl.add_address_index(index, &plan.ifname, plan.addr)?;
        cnl.set_up_index(index, &plan.ifname)?;
        cnl.replace_route_index(
            default_route(),
            index,
            &plan.ifname,
            Some(plan.gateway),
            plan.switch,
        )?;
        Ok(())
    };
    configure().inspect_err(|_| {
        if let Err(e) = nl.delete_link(&plan.host_veth) {
            tracing::warn!(veth = %plan.host_veth, "rollback: cannot delete the veth: {e}");
        }
    })
}

/// In switch mode the kernel must leave the host end to Weft: it answers no ARP there
/// (`arp_ignore = 8`) and sends no IPv6 there (router and neighbour solicitations a pod would see
/// as noise). Best effort: a sysctl that cannot be written is logged, not fatal.
fn quiet_host_end(host_veth: &str) {
    for (key, value) in [
        (format!("net/ipv4/conf/{host_veth}/arp_ignore"), "8"),
        (format!("net/ipv6/conf/{host_veth}/disable_ipv6"), "1"),
    ] {
        let path = std::path::Path::new("/proc/sys").join(&key);
        if path.exists() {
            if let Err(e) = std::fs::write(&path, value) {
                tracing::warn!(sysctl = %key, "switch mode: cannot set {value}: {e}");
            }
        }
    }
}

/// Removes the pod's link: deleting the host end deletes the pair. Nothing to do when it is gone.
/// Only a veth is deleted: a link of another kind under the derived name is left alone.
pub fn detach(nl: &Netlink, host_veth: &str) -> Result<(), NetlinkError> {
    match nl.link(host_veth)? {
        Some(l) if l.kind.as_deref() == Some("veth") => nl.delete_link(host_veth),
        Some(l) => {
            tracing::warn!(
                link = host_veth,
                kind = l.kind.as_deref().unwrap_or("device"),
                "not deleting a non-veth link that has a Weft veth name"
            );
            Ok(())
        }
        None => Ok(()),
    }
}

/// CHECK: the host end is an up veth on the bridge; in the container, `ifname` is up with the
/// pod address, the MTU, and a default route via the gateway (other routes, added by chained
/// plugins, are allowed). Returns what differs.
pub fn check(nl: &Netlink, ns: &NetNs, plan: &PodPlan) -> Result<Vec<String>, PlumbError> {
    let mut wrong = Vec::new();
    let bridge = if plan.switch {
        None
    } else {
        nl.link_index(&plan.bridge)?
    };
    match nl.link(&plan.host_veth)? {
        None => wrong.push(format!("host veth {} is missing", plan.host_veth)),
        Some(l) => {
            if l.kind.as_deref() != Some("veth") {
                wrong.push(format!("{} is not a veth", plan.host_veth));
            }
            if plan.switch && l.master.is_some() {
                wrong.push(format!(
                    "{} is a bridge port; in switch mode it is Weft's",
                    plan.host_veth
                ));
            }
            if !plan.switch && (bridge.is_none() || l.master != bridge) {
                wrong.push(format!(
                    "{} is not a port of {}",
                    plan.host_veth, plan.bridge
                ));
            }
            if !l.up {
                wrong.push(format!("{} is down", plan.host_veth));
            }
        }
    }
    let cnl = netlink_in(ns)?;
    match cnl.link(&plan.ifname)? {
        None => wrong.push(format!(
            "{} is missing in {}",
            plan.ifname,
            ns.path().display()
        )),
        Some(l) => {
            if !l.up {
                wrong.push(format!("{} is down", plan.ifname));
            }
            if l.mtu != plan.mtu {
                wrong.push(format!(
                    "{} has MTU {}, not {}",
                    plan.ifname, l.mtu, plan.mtu
                ));
            }
            let has_addr = cnl
                .addresses()?
                .iter()
                .any(|a| a.ifname == plan.ifname && a.addr == plan.addr);
            if !has_addr {
                wrong.push(format!("{} lacks address {}", plan.ifname, plan.addr));
            }
            let has_route = cnl.routes()?.iter().any(|r| {
                r.dst == default_route()
                    && r.gateway == Some(plan.gateway)
                    && r.dev.as_deref() == Some(plan.ifname.as_str())
            });
            if !has_route {
                wrong.push(format!(
                    "no default route via {} dev {}",
                    plan.gateway, plan.ifname
                ));
            }
        }
    }
    Ok(wrong)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_fit_and_differ() {
        let a = host_veth_name("0123456789abcdef", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("weft"));
        assert!(cni_shim::spec::valid_ifname(&a));
        assert_eq!(a, host_veth_name("0123456789abcdef", "eth0"), "stable");
        assert_ne!(a, host_veth_name("0123456789abcdef", "eth1"));
        assert_ne!(a, host_veth_name("0123456789abcdeg", "eth0"));
        let mac = host_veth_mac("0123456789abcdef", "eth0");
        assert!(
            !mac.is_multicast() && mac.0[0] & 0x02 != 0,
            "locally administered unicast"
        );
        assert_eq!(
            pod_mac(Ipv4Addr::new(10, 244, 1, 5)).to_string(),
            "0a:58:0a:f4:01:05"
        );
        let names: std::collections::HashSet<String> = (0..10_000)
            .map(|n| host_veth_name(&format!("c{n}"), "eth0"))
            .collect();
        assert_eq!(names.len(), 10_000);
    }
}
