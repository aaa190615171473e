//! `weftctl policy`: what this node's NetworkPolicy does with a flow, and why.

use std::net::Ipv4Addr;

use dataplane::policy::{Decision, Direction, PolicySet, Protocol};
use dataplane::snapshot::PolicyHook;
use serde::{Deserialize, Serialize};

/// A flow to explain: `protocol` (`tcp`, `udp`, `sctp`, `icmp` or a number) to `port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyQuery {
    /// The source address.
    pub src: Ipv4Addr,
    /// The destination address.
    pub dst: Ipv4Addr,
    /// The protocol.
    pub protocol: String,
    /// The destination port (0 for protocols without ports).
    pub port: u16,
}

/// The connection table's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackView {
    /// Entries it holds at most.
    pub capacity: usize,
    /// Flows it has admitted.
    pub inserted: u64,
    /// Live entries it replaced to make room.
    pub evicted: u64,
    /// Flows it had no room for (allowed, not tracked).
    pub refused: u64,
}

/// The answer to a [`PolicyQuery`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReply {
    /// Whether this node enforces NetworkPolicy at all (`[policy] source`).
    pub enforced: bool,
    /// Where the policies come from (`kubernetes`, `dir /etc/weft/policies`).
    #[serde(default)]
    pub source: String,
    /// The NetworkPolicies (`namespace/name`) of the set in force.
    #[serde(default)]
    pub policies: Vec<String>,
    /// The generation of the set in force.
    pub generation: u64,
    /// This node's pods some policy isolates.
    pub isolated_pods: usize,
    /// Distinct rules of the set.
    pub rules: usize,
    /// The connection table.
    pub conntrack: Option<ConntrackView>,
    /// The decision at the source, in words.
    pub egress: String,
    /// The decision at the destination, in words.
    pub ingress: String,
    /// Whether a new flow like the query would pass this node.
    pub allowed: bool,
    /// A query that could not be answered (an unknown protocol).
    pub error: Option<String>,
}

/// Parses `tcp`, `udp`, `sctp`, `icmp` (any case) or an IP protocol number.
pub fn parse_protocol(s: &str) -> Option<Protocol> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Some(Protocol::TCP),
        "udp" => Some(Protocol::UDP),
        "sctp" => Some(Protocol::SCTP),
        "icmp" => Some(Protocol::ICMP),
        n => n.parse().ok().map(Protocol),
    }
}

fn words(set: &PolicySet, d: Decision, direction: Direction, pod: Ipv4Addr) -> String {
    let side = match direction {
        Direction::Egress => "egress",
        Direction::Ingress => "ingress",
    };
    match d {
        Decision::NotIsolated => format!(
            "{side} at {pod}: not isolated on this node (no policy selects it for {side}, or it is not this node's pod)"
        ),
        Decision::Allow { rule } => format!(
            "{side} at {pod}: allowed by {}",
            set.rule(rule)
                .map_or_else(|| format!("rule #{}", rule.0), ToString::to_string)
        ),
        Decision::Deny => format!(
            "{side} at {pod}: DENIED: isolated for {side}, and no rule of the policies selecting it allows this"
        ),
    }
}

/// Explains `q` against the hook in force (`None`: no policy on this node); `source` and
/// `policies` say where the set came from and what it holds.
pub fn explain(
    hook: Option<&PolicyHook>,
    source: &str,
    policies: Vec<String>,
    q: &PolicyQuery,
) -> PolicyReply {
    let Some(hook) = hook else {
        return PolicyReply {
            egress: "no NetworkPolicy on this node ([policy] source is \"none\")".into(),
            allowed: true,
            ..PolicyReply::default()
        };
    };
    let set = &hook.set;
    let stats = hook.conntrack.stats();
    let mut reply = PolicyReply {
        enforced: true,
        source: source.to_string(),
        policies,
        generation: set.generation(),
        isolated_pods: set.pods().count(),
        rules: set.rule_count(),
        conntrack: Some(ConntrackView {
            capacity: hook.conntrack.capacity(),
            inserted: stats.inserted,
            evicted: stats.evicted,
            refused: stats.refused,
        }),
        ..PolicyReply::default()
    };
    let Some(protocol) = parse_protocol(&q.protocol) else {
        reply.error = Some(format!(
            "protocol {:?} is not tcp, udp, sctp, icmp or a protocol number",
            q.protocol
        ));
        return reply;
    };
    let port = if protocol.has_ports() { q.port } else { 0 };
    let flow = set.decide_flow(q.src, q.dst, protocol, port);
    reply.egress = words(set, flow.egress, Direction::Egress, q.src);
    reply.ingress = words(set, flow.ingress, Direction::Ingress, q.dst);
    reply.allowed = flow.allows();
    reply
}
