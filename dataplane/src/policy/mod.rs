//! Kubernetes NetworkPolicy in the switch: the compiled rules, the decision, and the connection
//! tracking that lets replies through.
//!
//! # What this module promises
//!
//! - [`table`]: a [`PolicySet`] is the compiled, immutable policy of one node (the control side
//!   compiles it from NetworkPolicies, Pods and Namespaces; `control::policy`). For each local
//!   pod it says whether the pod is isolated for ingress and for egress, and the allow rules of
//!   each isolated direction: a peer set ([`IpSet`]) times a port set ([`PortSet`]), each rule
//!   naming its origin ([`RuleId`]: policy, direction, index). [`PolicySet::decide`] is a pure
//!   function of the set and the packet's addresses, protocol and port, and answers
//!   [`Decision::Allow`] (naming the rule), [`Decision::Deny`] or [`Decision::NotIsolated`]
//!   (Kubernetes' default allow for pods no policy selects for that direction).
//! - [`conntrack`]: a bounded flow table shared by the workers without locks on the lookup path,
//!   so that replies of allowed connections pass (Kubernetes requires it: "replies of allowed
//!   connections", REFERENCE.md). TCP, UDP, SCTP, ICMP echo and other protocols, with
//!   Linux-like states and timeouts; when full it evicts what Linux's `early_drop` would and
//!   refuses (and counts) rather than evict a live established flow.
//! - [`filter`](mod@filter): the two put together for one packet, [`filter()`]: a tracked flow passes
//!   on a conntrack hit; a new flow is decided by policy at both ends and tracked when allowed.
//!   What a policy change does to established flows is the caller's choice per call
//!   ([`OnPolicyChange`]). [`admit_ipv4`] is the same for a packet's bytes, as the routing step
//!   asks it.
//!
//! Everything here is pure: the time is an argument, nothing reads a clock, makes a syscall or,
//! on the per-packet path, allocates or takes a lock.

pub mod conntrack;
pub mod filter;
pub mod ipset;
pub mod portset;
pub mod table;

pub use conntrack::{Conntrack, ConntrackConfig, FlowKey, Timeouts};
pub use filter::{admit_ipv4, filter, FlowVerdict, OnPolicyChange, PacketFlow};
pub use ipset::IpSet;
pub use portset::{PortRange, PortSet, Protocol};
pub use table::{
    Decision, Direction, FlowDecision, PodPolicy, PolicySet, PolicySetBuilder, Rule, RuleId,
    RuleRef, RuleTable,
};
