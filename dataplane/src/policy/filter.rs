//! Policy and connection tracking together, for one packet: the function the worker calls.
//!
//! # What this module promises
//!
//! - A packet of a tracked flow passes, whichever way it goes: replies of allowed connections
//!   are allowed (Kubernetes requires it), and so are later packets of the original direction.
//! - A packet with no entry starts a flow: [`PolicySet::decide_flow`] decides it at both ends
//!   (egress at the source, ingress at the destination, where each is a local pod). Allowed, it
//!   is tracked (every allowed flow, isolated or not, so that isolating a pod later does not
//!   strand replies of connections it already had); denied, nothing is recorded.
//! - A policy change reaches new flows at once, since they are decided against the set the
//!   caller passes. For established flows Kubernetes leaves the choice to the implementation;
//!   Weft makes it the caller's, per call ([`OnPolicyChange`]): `Keep` is Calico's behaviour
//!   (connections admitted under any earlier policy live on until they end), `Recheck` decides a
//!   flow again, in its original direction, the first time one of its packets meets a newer
//!   generation, and cuts it (removes its entry, drops the packet) if the new policy denies it.
//!   The agent's default is `Recheck`: a policy that stops a connection should stop it.
//! - A flow the table refuses to track (full of live established flows) still passes: policy
//!   allowed it. Its replies are then decided as flows of their own and may be denied; the
//!   refusal is counted by the table.

use std::net::Ipv4Addr;

use super::conntrack::{generation_tag, Conntrack, FlowDirection, FlowKey, Insert, Tracked};
use super::portset::Protocol;
use super::table::{Decision, FlowDecision, PolicySet};
use crate::time::Instant;

/// What the filter needs of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketFlow {
    /// The 5-tuple as the packet travels.
    pub key: FlowKey,
    /// The TCP flags byte (ignored for other protocols).
    pub tcp_flags: u8,
}

impl PacketFlow {
    /// The flow of the IPv4 packet `ip` (header first), or `None` when the header is not
    /// whole. Ports come from the TCP, UDP or SCTP header, the echo identifier from an ICMP
    /// echo or echo reply; a later fragment, which carries no transport header, and protocols
    /// without ports have port 0.
    #[inline]
    pub fn of_ipv4(ip: &[u8]) -> Option<PacketFlow> {
        let (key, l4) = key_and_payload(ip)?;
        let tcp_flags = if key.protocol == Protocol::TCP {
            l4.get(13).copied().unwrap_or(0)
        } else {
            0
        };
        Some(PacketFlow { key, tcp_flags })
    }

    /// For an ICMP error (destination unreachable, time exceeded, parameter problem), the flow
    /// of the packet it is about, as that packet travelled: its header and first 8 bytes are
    /// quoted in the error (RFC 792). `None` for anything else.
    pub fn icmp_error_about(ip: &[u8]) -> Option<FlowKey> {
        let (key, l4) = key_and_payload(ip)?;
        if key.protocol != Protocol::ICMP || !matches!(l4.first(), Some(3 | 11 | 12)) {
            return None;
        }
        key_and_payload(l4.get(8..)?).map(|(k, _)| k)
    }
}

/// The 5-tuple of IPv4 packet `ip`, and its transport bytes (empty for a later fragment).
#[inline]
fn key_and_payload(ip: &[u8]) -> Option<(FlowKey, &[u8])> {
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    if ihl < 20 || ip.len() < ihl {
        return None;
    }
    let protocol = Protocol(ip[9]);
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let later_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0;
    let l4 = if later_fragment { &[][..] } else { &ip[ihl..] };
    let port = |at: usize| {
        l4.get(at..at + 2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
    };
    let (src_port, dst_port) = match protocol {
        p if p.has_ports() => (port(0), port(2)),
        // Echo request (8) and reply (0): the identifier names the flow both ways.
        Protocol::ICMP if matches!(l4.first(), Some(0 | 8)) => (port(4), port(4)),
        _ => (0, 0),
    };
    Some((
        FlowKey {
            src,
            dst,
            protocol,
            src_port,
            dst_port,
        },
        l4,
    ))
}

/// What to do with an established flow when the policy changed since it was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnPolicyChange {
    /// Let it live on (Calico).
    Keep,
    /// Decide it again under the current policy; cut it if that denies it.
    Recheck,
}

/// The filter's answer for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowVerdict {
    /// A packet of a tracked flow: pass.
    Established {
        /// Original direction or reply.
        direction: FlowDirection,
    },
    /// The first packet of a flow policy allows: pass.
    New {
        /// Why it is allowed, at each end.
        decision: FlowDecision,
        /// False when the table refused the entry (see the module docs).
        tracked: bool,
    },
    /// The first packet of a flow policy denies: drop.
    Denied {
        /// Which end denied it.
        decision: FlowDecision,
    },
    /// A packet of an established flow the current policy denies (`Recheck` only): drop; the
    /// entry is gone.
    Cut {
        /// Which end denies it now.
        decision: FlowDecision,
    },
}

impl FlowVerdict {
    /// True when the packet may pass.
    #[inline]
    pub fn passes(&self) -> bool {
        matches!(
            self,
            FlowVerdict::Established { .. } | FlowVerdict::New { .. }
        )
    }
}

/// Whether IPv4 packet `ip` (header first) may pass, filtered against `set` and `ct` at `now`:
/// the question the routing step asks of every packet. A packet of a tracked flow passes, as
/// does an ICMP error about one (path MTU discovery must reach an isolated pod); a new flow
/// passes when policy allows it at both ends, and is then tracked; a packet whose header is not
/// whole does not pass.
#[inline(always)]
pub fn admit_ipv4(
    set: &PolicySet,
    ct: &Conntrack,
    ip: &[u8],
    now: Instant,
    on_change: OnPolicyChange,
) -> bool {
    let Some(flow) = PacketFlow::of_ipv4(ip) else {
        return false;
    };
    if flow.key.protocol == Protocol::ICMP && is_error_about_tracked(ct, ip, now) {
        return true;
    }
    // `filter(..).passes()`, each case answering for itself.
    match established(set, ct, &flow, now, on_change) {
        Ok(_) => true,
        Err(Some(t)) => recheck(set, ct, &flow, t, now).passes(),
        Err(None) => new_flow(set, ct, &flow, now).passes(),
    }
}

/// Whether ICMP packet `ip` is an error about a flow `ct` tracks at `now`.
#[inline(never)]
fn is_error_about_tracked(ct: &Conntrack, ip: &[u8], now: Instant) -> bool {
    PacketFlow::icmp_error_about(ip).is_some_and(|about| ct.get(&about, now).is_some())
}

/// Filters one packet against `set` and `ct` at `now` (see the module docs).
#[inline(always)]
pub fn filter(
    set: &PolicySet,
    ct: &Conntrack,
    packet: &PacketFlow,
    now: Instant,
    on_change: OnPolicyChange,
) -> FlowVerdict {
    match established(set, ct, packet, now, on_change) {
        Ok(direction) => FlowVerdict::Established { direction },
        Err(Some(t)) => recheck(set, ct, packet, t, now),
        Err(None) => new_flow(set, ct, packet, now),
    }
}

/// The per-packet case of [`filter`]: the direction of a packet of a tracked flow that needs no
/// re-check; otherwise the flow's entry, if it has one. Always inlined, with every other case
/// out of line, so that the worker's loop holds only this and its answer stays in registers
/// (a verdict handed back by a call, or merged with one, went through memory).
#[inline(always)]
fn established(
    set: &PolicySet,
    ct: &Conntrack,
    packet: &PacketFlow,
    now: Instant,
    on_change: OnPolicyChange,
) -> Result<FlowDirection, Option<Tracked>> {
    match ct.track(&packet.key, packet.tcp_flags, now) {
        Some(t)
            if on_change == OnPolicyChange::Keep
                || t.generation == generation_tag(set.generation()) =>
        {
            Ok(t.direction)
        }
        other => Err(other),
    }
}

/// [`filter`] for a tracked flow admitted under an older policy generation (`Recheck`): decided
/// again in its original direction, cut if the current policy denies it.
#[inline(never)]
fn recheck(
    set: &PolicySet,
    ct: &Conntrack,
    packet: &PacketFlow,
    t: Tracked,
    now: Instant,
) -> FlowVerdict {
    let key = &packet.key;
    let o = t.original(key);
    let decision = set.decide_flow(o.src, o.dst, o.protocol, o.dst_port);
    if !decision.allows() {
        ct.remove(key);
        return FlowVerdict::Cut { decision };
    }
    // Losing this race only means the next packet checks again.
    ct.set_generation(key, set.generation(), now);
    FlowVerdict::Established {
        direction: t.direction,
    }
}

/// [`filter`] for a packet of no tracked flow: decided by policy, tracked when allowed.
#[inline(never)]
fn new_flow(set: &PolicySet, ct: &Conntrack, packet: &PacketFlow, now: Instant) -> FlowVerdict {
    let key = &packet.key;
    let decision = set.decide_flow(key.src, key.dst, key.protocol, key.dst_port);
    if !decision.allows() {
        return FlowVerdict::Denied { decision };
    }
    let tracked = matches!(
        ct.insert(key, packet.tcp_flags, set.generation(), now),
        Insert::Inserted { .. } | Insert::Exists
    );
    for d in [decision.egress, decision.ingress] {
        if let Decision::Allow { rule } = d {
            set.count(rule);
        }
    }
    FlowVerdict::New { decision, tracked }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::conntrack::ConntrackConfig;
    use crate::policy::ipset::IpSet;
    use crate::policy::portset::{PortRange, PortSet, Protocol};
    use crate::policy::table::{Decision, Direction, PolicySetBuilder, Rule, RuleId};
    use crate::wire::tcp::flags::{ACK, RST, SYN};
    use std::net::Ipv4Addr;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);

    /// Both pods local and isolated both ways; the client may open TCP 80 to the server when
    /// `open`, nothing else is allowed.
    fn policy(generation: u64, open: bool) -> PolicySet {
        let mut b = PolicySetBuilder::new(generation);
        let rules = |b: &mut PolicySetBuilder, direction, peer| {
            if !open {
                return vec![];
            }
            let rule = b.rule_ref(RuleId::Policy {
                namespace: "x".into(),
                name: "web".into(),
                direction,
                index: 0,
            });
            vec![Rule {
                rule,
                peers: IpSet::from_addrs([peer]),
                ports: PortSet::ranges([PortRange::single(Protocol::TCP, 80)]),
            }]
        };
        let egress = rules(&mut b, Direction::Egress, SERVER);
        let ingress = rules(&mut b, Direction::Ingress, CLIENT);
        b.isolate(CLIENT, Direction::Egress, egress);
        b.isolate(CLIENT, Direction::Ingress, vec![]);
        b.isolate(SERVER, Direction::Ingress, ingress);
        b.isolate(SERVER, Direction::Egress, vec![]);
        b.build()
    }

    fn packet(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, tcp_flags: u8) -> PacketFlow {
        PacketFlow {
            key: FlowKey {
                src,
                dst,
                protocol: Protocol::TCP,
                src_port: sport,
                dst_port: dport,
            },
            tcp_flags,
        }
    }

    fn ct() -> Conntrack {
        Conntrack::new(ConntrackConfig {
            capacity: 256,
            ..ConntrackConfig::default()
        })
    }

    const T: Instant = Instant::from_secs(10);

    #[test]
    fn replies_of_allowed_connections_pass() {
        let (set, ct) = (policy(1, true), ct());
        let syn = packet(CLIENT, 40000, SERVER, 80, SYN);
        let v = filter(&set, &ct, &syn, T, OnPolicyChange::Recheck);
        assert!(matches!(v, FlowVerdict::New { tracked: true, decision } if decision.allows()));
        // The server's reply would be denied as a flow of its own (its egress is empty).
        let reply = packet(SERVER, 80, CLIENT, 40000, SYN | ACK);
        assert!(!set
            .decide_flow(SERVER, CLIENT, Protocol::TCP, 40000)
            .allows());
        assert_eq!(
            filter(&set, &ct, &reply, T, OnPolicyChange::Recheck),
            FlowVerdict::Established {
                direction: FlowDirection::Reply
            }
        );
        let ack = packet(CLIENT, 40000, SERVER, 80, ACK);
        assert!(filter(&set, &ct, &ack, T, OnPolicyChange::Recheck).passes());
        // But the server cannot open a connection of its own to the client.
        let back = packet(SERVER, 5000, CLIENT, 80, SYN);
        let v = filter(&set, &ct, &back, T, OnPolicyChange::Recheck);
        assert!(matches!(
            v,
            FlowVerdict::Denied { decision } if decision.egress == Decision::Deny
        ));
        assert!(!v.passes());
        assert_eq!(ct.get(&back.key, T), None, "a denied flow leaves no entry");
    }

    #[test]
    fn policy_change_keep_or_recheck() {
        let ct = ct();
        let open = policy(1, true);
        let syn = packet(CLIENT, 40000, SERVER, 80, SYN);
        filter(&open, &ct, &syn, T, OnPolicyChange::Recheck);
        filter(
            &open,
            &ct,
            &packet(SERVER, 80, CLIENT, 40000, SYN | ACK),
            T,
            OnPolicyChange::Recheck,
        );
        let data = packet(CLIENT, 40000, SERVER, 80, ACK);

        // Generation 2 still allows it: rechecked once, kept, and stamped with generation 2.
        let same = policy(2, true);
        assert!(filter(&same, &ct, &data, T, OnPolicyChange::Recheck).passes());
        assert_eq!(ct.get(&data.key, T).map(|t| t.generation), Some(2));

        // Generation 3 closes it: Keep lets it live, Recheck cuts it.
        let closed = policy(3, false);
        assert!(filter(&closed, &ct, &data, T, OnPolicyChange::Keep).passes());
        let reply = packet(SERVER, 80, CLIENT, 40000, ACK);
        let v = filter(&closed, &ct, &reply, T, OnPolicyChange::Recheck);
        assert!(matches!(v, FlowVerdict::Cut { decision } if !decision.allows()));
        assert_eq!(ct.get(&data.key, T), None);
        // And the next packet is a new flow, denied.
        assert!(matches!(
            filter(&closed, &ct, &data, T, OnPolicyChange::Recheck),
            FlowVerdict::Denied { .. }
        ));
    }

    #[test]
    fn untracked_rst_and_unisolated_flows() {
        let (set, ct) = (PolicySet::empty(1), ct());
        let rst = packet(CLIENT, 1, SERVER, 2, RST);
        assert!(matches!(
            filter(&set, &ct, &rst, T, OnPolicyChange::Recheck),
            FlowVerdict::New { tracked: false, .. }
        ));
        let syn = packet(CLIENT, 1, SERVER, 2, SYN);
        let v = filter(&set, &ct, &syn, T, OnPolicyChange::Recheck);
        assert!(matches!(
            v,
            FlowVerdict::New { tracked: true, decision }
                if decision.egress == Decision::NotIsolated && decision.ingress == Decision::NotIsolated
        ));
    }
}
