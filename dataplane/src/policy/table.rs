//! The compiled, immutable policy a worker decides from: per local pod and direction, whether the
//! pod is isolated and the rules that allow traffic.
//!
//! # What this module promises
//!
//! - [`PolicySet::decide`] answers one direction at one pod: [`Decision::NotIsolated`] when no
//!   policy isolates the pod in that direction (Kubernetes' default allow), else
//!   [`Decision::Allow`] naming the first rule, in the order the control side gave them, that
//!   admits the remote address, protocol and destination port, else [`Decision::Deny`].
//!   [`PolicySet::decide_flow`] combines both ends: a connection needs the source's egress and
//!   the destination's ingress (REFERENCE.md "Kubernetes NetworkPolicy"); an end that is not a
//!   local pod is decided by its own node.
//! - A decision costs one hash lookup of the pod and two binary searches, whatever the number of
//!   rules: each [`RuleTable`] carries an index that cuts the IPv4 space at every boundary of
//!   every rule's peer set and, for each resulting interval, a port map giving the first rule
//!   for any (protocol, port). Nothing on the decision path allocates, locks or reads a clock.
//! - The index is built from, and tested against, the plain list of rules
//!   ([`RuleTable::first_match_linear`] is the reference it must agree with).
//! - Pods whose rules are identical share one table (the control side compiles per pod, but a
//!   namespace-wide policy gives every pod in the namespace the same rules).

use core::fmt;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::ipset::IpSet;
use super::portset::{PortSet, Protocol};

/// Which way traffic crosses the pod whose policy is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Into the pod: the remote address is the source, the port is the pod's.
    Ingress,
    /// Out of the pod: the remote address is the destination, the port is the remote's.
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// Where a rule came from, for explaining a decision and labelling per-rule counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleId {
    /// Rule `index` (from 0) of the `ingress` or `egress` list of NetworkPolicy
    /// `namespace`/`name`.
    Policy {
        /// The policy's namespace.
        namespace: String,
        /// The policy's name.
        name: String,
        /// The list the rule is in.
        direction: Direction,
        /// The rule's position in that list.
        index: u32,
    },
    /// Kubernetes' standing exception: traffic between a pod and its own node is always allowed.
    Node,
}

impl fmt::Display for RuleId {
    /// `x/allow-web ingress[0]`, or `node`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleId::Policy {
                namespace,
                name,
                direction,
                index,
            } => write!(f, "{namespace}/{name} {direction}[{index}]"),
            RuleId::Node => f.write_str("node"),
        }
    }
}

/// A rule's number in its [`PolicySet`]: `Copy`, dense from 0, so a decision can name the rule
/// and index per-rule counters without allocating. [`PolicySet::rule`] gives its [`RuleId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef(pub u32);

/// One compiled allow rule: traffic from (ingress) or to (egress) an address in `peers`, on a
/// protocol and port in `ports`. A NetworkPolicy rule with named ports may compile to several
/// of these sharing one `rule` (each named port resolves to a number per destination pod).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// The rule it was compiled from.
    pub rule: RuleRef,
    /// The remote addresses the rule admits.
    pub peers: IpSet,
    /// The protocols and destination ports the rule admits.
    pub ports: PortSet,
}

impl Rule {
    /// True when the rule admits traffic with `remote`, `protocol` and destination `port`.
    #[inline]
    pub fn matches(&self, remote: Ipv4Addr, protocol: Protocol, port: u16) -> bool {
        self.ports.contains(protocol, port) && self.peers.contains(remote)
    }
}

/// The answer for one direction at one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The pod is isolated in this direction and `rule` allows the traffic.
    Allow {
        /// The first rule that admits it.
        rule: RuleRef,
    },
    /// The pod is isolated in this direction and no rule admits the traffic.
    Deny,
    /// No policy isolates the pod in this direction (or it is not a local pod): allowed.
    NotIsolated,
}

impl Decision {
    /// True unless the decision is [`Decision::Deny`].
    #[inline]
    pub fn allows(self) -> bool {
        !matches!(self, Decision::Deny)
    }
}

/// The answer for a connection: the source's egress and the destination's ingress, each decided
/// where that pod is local ([`Decision::NotIsolated`] where it is not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowDecision {
    /// Egress at the source pod.
    pub egress: Decision,
    /// Ingress at the destination pod.
    pub ingress: Decision,
}

impl FlowDecision {
    /// True when both ends allow the connection.
    #[inline]
    pub fn allows(self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

/// "No rule" in the index's `u32` slots.
const NONE: u32 = u32::MAX;

/// A pod's rules for one direction, with the index that decides in logarithmic time.
#[derive(Debug, Clone)]
pub struct RuleTable {
    rules: Box<[Rule]>,
    index: Index,
}

/// The IPv4 space cut into intervals on which the set of rules whose peers cover them is
/// constant, each pointing to the port map of that set.
#[derive(Debug, Clone)]
struct Index {
    /// Interval starts, ascending; `starts[0] == 0`, so every address falls in one.
    starts: Box<[u32]>,
    /// Per interval, its port map in `port_maps`, or [`NONE`] when no rule's peers cover it.
    maps: Box<[u32]>,
    port_maps: Box<[PortMap]>,
}

/// For one set of rules: the first rule admitting each (protocol, port).
#[derive(Debug, Clone)]
struct PortMap {
    /// TCP, UDP and SCTP, in that order.
    by_protocol: [PortIntervals; 3],
    /// The first rule without `ports`, which alone admits protocols that have no ports.
    portless: u32,
}

/// Ports 0..=65535 cut into intervals, each with the first rule (position in the table)
/// admitting it or [`NONE`].
#[derive(Debug, Clone)]
struct PortIntervals {
    /// Ascending; `starts[0] == 0`.
    starts: Box<[u16]>,
    rules: Box<[u32]>,
}

impl PortIntervals {
    #[inline]
    fn lookup(&self, port: u16) -> u32 {
        let i = self.starts.partition_point(|&s| s <= port);
        // starts[0] == 0, so i >= 1.
        self.rules[i - 1]
    }
}

fn protocol_slot(protocol: Protocol) -> Option<usize> {
    match protocol {
        Protocol::TCP => Some(0),
        Protocol::UDP => Some(1),
        Protocol::SCTP => Some(2),
        _ => None,
    }
}

impl RuleTable {
    /// A table of `rules`, earlier rules taking precedence when several match. An empty list is
    /// an isolated pod that nothing may reach (a default-deny policy).
    pub fn new(rules: Vec<Rule>) -> RuleTable {
        let index = Index::build(&rules);
        RuleTable {
            rules: rules.into_boxed_slice(),
            index,
        }
    }

    /// The rules, in precedence order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The first rule admitting `remote`, `protocol` and destination `port`, through the index.
    #[inline]
    pub fn first_match(&self, remote: Ipv4Addr, protocol: Protocol, port: u16) -> Option<RuleRef> {
        let ix = &self.index;
        let a = u32::from(remote);
        let i = ix.starts.partition_point(|&s| s <= a);
        // starts[0] == 0, so i >= 1.
        let map = ix.maps[i - 1];
        if map == NONE {
            return None;
        }
        let pm = &ix.port_maps[map as usize];
        let pos = match protocol_slot(protocol) {
            Some(slot) => pm.by_protocol[slot].lookup(port),
            None => pm.portless,
        };
        (pos != NONE).then(|| self.rules[pos as usize].rule)
    }

    /// The first rule admitting the traffic, by scanning every rule: the reference the index is
    /// tested against, and the way to explain a decision rule by rule.
    pub fn first_match_linear(
        &self,
        remote: Ipv4Addr,
        protocol: Protocol,
        port: u16,
    ) -> Option<RuleRef> {
        self.rules
            .iter()
            .find(|r| r.matches(remote, protocol, port))
            .map(|r| r.rule)
    }
}

impl Index {
    fn build(rules: &[Rule]) -> Index {
        // Interval boundaries: 0, and every range's first address and one past its last.
        let mut cuts: Vec<u32> = vec![0];
        for r in rules {
            for &(first, last) in r.peers.ranges() {
                cuts.push(first);
                if let Some(next) = last.checked_add(1) {
                    cuts.push(next);
                }
            }
        }
        cuts.sort_unstable();
        cuts.dedup();

        // Where each rule's coverage starts and stops, as interval numbers.
        let mut adds: Vec<Vec<u32>> = vec![Vec::new(); cuts.len()];
        let mut removes: Vec<Vec<u32>> = vec![Vec::new(); cuts.len() + 1];
        for (pos, r) in rules.iter().enumerate() {
            let pos = pos as u32;
            for &(first, last) in r.peers.ranges() {
                let from = cuts.partition_point(|&c| c < first);
                let to = match last.checked_add(1) {
                    Some(next) => cuts.partition_point(|&c| c < next),
                    None => cuts.len(),
                };
                adds[from].push(pos);
                removes[to].push(pos);
            }
        }

        // Sweep, interning each distinct set of covering rules as one port map.
        let mut active: BTreeSet<u32> = BTreeSet::new();
        let mut interned: HashMap<Vec<u32>, u32> = HashMap::new();
        let mut port_maps: Vec<PortMap> = Vec::new();
        let mut starts: Vec<u32> = Vec::new();
        let mut maps: Vec<u32> = Vec::new();
        for (i, &cut) in cuts.iter().enumerate() {
            for pos in &removes[i] {
                active.remove(pos);
            }
            active.extend(adds[i].iter().copied());
            let map = if active.is_empty() {
                NONE
            } else {
                let key: Vec<u32> = active.iter().copied().collect();
                match interned.get(&key) {
                    Some(&m) => m,
                    None => {
                        let m = port_maps.len() as u32;
                        port_maps.push(PortMap::build(rules, &key));
                        interned.insert(key, m);
                        m
                    }
                }
            };
            if maps.last() != Some(&map) {
                starts.push(cut);
                maps.push(map);
            }
        }
        Index {
            starts: starts.into_boxed_slice(),
            maps: maps.into_boxed_slice(),
            port_maps: port_maps.into_boxed_slice(),
        }
    }
}

impl PortMap {
    /// The port map of the rules at positions `active` (ascending).
    fn build(rules: &[Rule], active: &[u32]) -> PortMap {
        let portless = active
            .iter()
            .copied()
            .find(|&pos| rules[pos as usize].ports == PortSet::Any)
            .unwrap_or(NONE);
        let by_protocol = [Protocol::TCP, Protocol::UDP, Protocol::SCTP].map(|proto| {
            let mut ranges: Vec<(u16, u16, u32)> = Vec::new();
            for &pos in active {
                match &rules[pos as usize].ports {
                    PortSet::Any => ranges.push((0, u16::MAX, pos)),
                    PortSet::Ranges(rs) => ranges.extend(
                        rs.iter()
                            .filter(|r| r.protocol == proto)
                            .map(|r| (r.first, r.last, pos)),
                    ),
                }
            }
            PortIntervals::build(ranges)
        });
        PortMap {
            by_protocol,
            portless,
        }
    }
}

impl PortIntervals {
    /// Cuts the port space at every range's ends and gives each piece the smallest rule
    /// position covering it: a sweep with a min-heap of the ranges open at each point.
    fn build(mut ranges: Vec<(u16, u16, u32)>) -> PortIntervals {
        let mut cuts: Vec<u32> = vec![0];
        for &(first, last, _) in &ranges {
            cuts.push(u32::from(first));
            cuts.push(u32::from(last) + 1);
        }
        cuts.sort_unstable();
        cuts.dedup();
        cuts.retain(|&c| c <= u32::from(u16::MAX));
        ranges.sort_unstable_by_key(|&(first, _, _)| first);

        let mut open: BinaryHeap<Reverse<(u32, u16)>> = BinaryHeap::new(); // (position, last)
        let mut next = 0;
        let mut starts: Vec<u16> = Vec::new();
        let mut rules: Vec<u32> = Vec::new();
        for &cut in &cuts {
            let cut = cut as u16;
            while next < ranges.len() && ranges[next].0 <= cut {
                open.push(Reverse((ranges[next].2, ranges[next].1)));
                next += 1;
            }
            while open.peek().is_some_and(|&Reverse((_, last))| last < cut) {
                open.pop();
            }
            let rule = open.peek().map_or(NONE, |&Reverse((pos, _))| pos);
            if rules.last() != Some(&rule) {
                starts.push(cut);
                rules.push(rule);
            }
        }
        PortIntervals {
            starts: starts.into_boxed_slice(),
            rules: rules.into_boxed_slice(),
        }
    }
}

/// A local pod's isolation: a table per direction it is isolated in, `None` where it is not.
#[derive(Debug, Clone, Default)]
pub struct PodPolicy {
    /// The ingress rules, when some policy isolates the pod for ingress.
    pub ingress: Option<Arc<RuleTable>>,
    /// The egress rules, when some policy isolates the pod for egress.
    pub egress: Option<Arc<RuleTable>>,
}

impl PodPolicy {
    /// The table for `direction`.
    pub fn table(&self, direction: Direction) -> Option<&RuleTable> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// The compiled policy of one node: every local pod that some policy isolates, keyed by its
/// IPv4 address, and the rule ids decisions refer to. Immutable; a policy change is a new set
/// with a higher [`generation`](PolicySet::generation), published to the workers by swapping a
/// pointer like the forwarding snapshot.
#[derive(Debug, Default)]
pub struct PolicySet {
    generation: u64,
    pods: FxHashMap<Ipv4Addr, PodPolicy>,
    rule_ids: Box<[RuleId]>,
    /// New flows each rule admitted, by [`RuleRef`] (counted by [`PolicySet::count`]).
    hits: Box<[AtomicU64]>,
}

impl PolicySet {
    /// A set isolating nothing: every decision is [`Decision::NotIsolated`].
    pub fn empty(generation: u64) -> PolicySet {
        PolicySet {
            generation,
            ..PolicySet::default()
        }
    }

    /// The generation the control side gave this set; conntrack entries record it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The id of `rule`, `None` for a number not from this set.
    pub fn rule(&self, rule: RuleRef) -> Option<&RuleId> {
        self.rule_ids.get(rule.0 as usize)
    }

    /// The number of distinct rule ids (`RuleRef`s run from 0 to this, exclusive).
    pub fn rule_count(&self) -> usize {
        self.rule_ids.len()
    }

    /// Counts one new flow admitted by `rule` (one relaxed atomic add; first packets only).
    #[inline]
    pub fn count(&self, rule: RuleRef) {
        if let Some(h) = self.hits.get(rule.0 as usize) {
            h.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The new flows each rule admitted since this set was built, with the rule's id.
    pub fn hits(&self) -> impl Iterator<Item = (&RuleId, u64)> + '_ {
        self.rule_ids
            .iter()
            .zip(self.hits.iter())
            .map(|(id, h)| (id, h.load(Ordering::Relaxed)))
    }

    /// The isolation of local pod `pod`, `None` when no policy isolates it.
    pub fn pod(&self, pod: Ipv4Addr) -> Option<&PodPolicy> {
        self.pods.get(&pod)
    }

    /// The isolated local pods, in no particular order.
    pub fn pods(&self) -> impl Iterator<Item = (Ipv4Addr, &PodPolicy)> + '_ {
        self.pods.iter().map(|(&ip, p)| (ip, p))
    }

    /// The decision for traffic in `direction` at local pod `local`, with `remote` the other
    /// end and `port` the destination port (`0` for protocols without ports).
    #[inline]
    pub fn decide(
        &self,
        direction: Direction,
        local: Ipv4Addr,
        remote: Ipv4Addr,
        protocol: Protocol,
        port: u16,
    ) -> Decision {
        match self.pods.get(&local).and_then(|p| p.table(direction)) {
            None => Decision::NotIsolated,
            Some(table) => match table.first_match(remote, protocol, port) {
                Some(rule) => Decision::Allow { rule },
                None => Decision::Deny,
            },
        }
    }

    /// The decision for a connection from `src` to `dst` on `protocol` and destination `port`:
    /// egress at `src` and ingress at `dst`, each where that pod is local.
    #[inline]
    pub fn decide_flow(
        &self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: Protocol,
        port: u16,
    ) -> FlowDecision {
        FlowDecision {
            egress: self.decide(Direction::Egress, src, dst, protocol, port),
            ingress: self.decide(Direction::Ingress, dst, src, protocol, port),
        }
    }
}

/// Builds a [`PolicySet`]: rule ids are numbered as they are registered, identical rule lists
/// share one [`RuleTable`].
#[derive(Debug, Default)]
pub struct PolicySetBuilder {
    generation: u64,
    rule_ids: Vec<RuleId>,
    refs: HashMap<RuleId, RuleRef>,
    tables: HashMap<Vec<Rule>, Arc<RuleTable>>,
    pods: FxHashMap<Ipv4Addr, PodPolicy>,
}

impl PolicySetBuilder {
    /// A builder for a set of generation `generation`.
    pub fn new(generation: u64) -> PolicySetBuilder {
        PolicySetBuilder {
            generation,
            ..PolicySetBuilder::default()
        }
    }

    /// The number for `id`, registering it on first use.
    pub fn rule_ref(&mut self, id: RuleId) -> RuleRef {
        if let Some(&r) = self.refs.get(&id) {
            return r;
        }
        let r = RuleRef(self.rule_ids.len() as u32);
        self.rule_ids.push(id.clone());
        self.refs.insert(id, r);
        r
    }

    /// Isolates local pod `pod` in `direction` with `rules` (in precedence order; empty denies
    /// everything), replacing what an earlier call set for that pod and direction.
    pub fn isolate(&mut self, pod: Ipv4Addr, direction: Direction, rules: Vec<Rule>) {
        let table = match self.tables.get(&rules) {
            Some(t) => t.clone(),
            None => {
                let t = Arc::new(RuleTable::new(rules.clone()));
                self.tables.insert(rules, t.clone());
                t
            }
        };
        let entry = self.pods.entry(pod).or_default();
        match direction {
            Direction::Ingress => entry.ingress = Some(table),
            Direction::Egress => entry.egress = Some(table),
        }
    }

    /// The finished set.
    pub fn build(self) -> PolicySet {
        let hits = self.rule_ids.iter().map(|_| AtomicU64::new(0)).collect();
        PolicySet {
            generation: self.generation,
            pods: self.pods,
            rule_ids: self.rule_ids.into_boxed_slice(),
            hits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::portset::PortRange;
    use ipnet::Ipv4Net;
    use proptest::prelude::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test prefix")
    }

    fn policy_rule(name: &str, index: u32) -> RuleId {
        RuleId::Policy {
            namespace: "x".into(),
            name: name.into(),
            direction: Direction::Ingress,
            index,
        }
    }

    #[test]
    fn not_isolated_isolated_allow_and_deny() {
        let mut b = PolicySetBuilder::new(7);
        let web = b.rule_ref(policy_rule("web", 0));
        let pod = ip("10.244.1.2");
        b.isolate(
            pod,
            Direction::Ingress,
            vec![Rule {
                rule: web,
                peers: IpSet::from_block(net("10.244.0.0/16"), &[net("10.244.9.0/24")]),
                ports: PortSet::ranges([PortRange::single(Protocol::TCP, 80)]),
            }],
        );
        let set = b.build();
        assert_eq!(set.generation(), 7);
        let client = ip("10.244.2.5");
        assert_eq!(
            set.decide(Direction::Ingress, pod, client, Protocol::TCP, 80),
            Decision::Allow { rule: web }
        );
        assert_eq!(
            set.decide(Direction::Ingress, pod, client, Protocol::TCP, 81),
            Decision::Deny
        );
        assert_eq!(
            set.decide(Direction::Ingress, pod, client, Protocol::UDP, 80),
            Decision::Deny
        );
        assert_eq!(
            set.decide(Direction::Ingress, pod, client, Protocol::ICMP, 0),
            Decision::Deny,
            "a rule with ports never admits ICMP"
        );
        assert_eq!(
            set.decide(Direction::Ingress, pod, ip("10.244.9.9"), Protocol::TCP, 80),
            Decision::Deny,
            "except hole"
        );
        assert_eq!(
            set.decide(Direction::Egress, pod, client, Protocol::TCP, 80),
            Decision::NotIsolated,
            "isolated for ingress only"
        );
        assert_eq!(
            set.decide(Direction::Ingress, client, pod, Protocol::TCP, 80),
            Decision::NotIsolated,
            "a pod no policy selects"
        );
        assert_eq!(set.rule(web), Some(&policy_rule("web", 0)));
        assert_eq!(
            set.rule(web).map(ToString::to_string).as_deref(),
            Some("x/web ingress[0]")
        );
        assert_eq!(set.rule(RuleRef(9)), None);
    }

    #[test]
    fn flows_need_both_ends() {
        let mut b = PolicySetBuilder::new(1);
        let (a, c) = (ip("10.0.0.1"), ip("10.0.0.2"));
        // a may only talk to c on TCP 443; c is isolated for ingress with nothing allowed.
        let r = b.rule_ref(policy_rule("a-out", 0));
        b.isolate(
            a,
            Direction::Egress,
            vec![Rule {
                rule: r,
                peers: IpSet::from_addrs([c]),
                ports: PortSet::ranges([PortRange::single(Protocol::TCP, 443)]),
            }],
        );
        b.isolate(c, Direction::Ingress, vec![]);
        let set = b.build();
        let d = set.decide_flow(a, c, Protocol::TCP, 443);
        assert_eq!(d.egress, Decision::Allow { rule: r });
        assert_eq!(d.ingress, Decision::Deny);
        assert!(!d.allows());
        let remote = ip("192.0.2.1");
        assert!(!set.decide_flow(a, remote, Protocol::TCP, 443).allows());
        assert!(set.decide_flow(remote, a, Protocol::TCP, 22).allows());
    }

    #[test]
    fn portless_rule_admits_icmp_and_wins_by_order() {
        let mut b = PolicySetBuilder::new(1);
        let first = b.rule_ref(policy_rule("ports", 0));
        let second = b.rule_ref(policy_rule("all", 0));
        let pod = ip("10.0.0.1");
        b.isolate(
            pod,
            Direction::Ingress,
            vec![
                Rule {
                    rule: first,
                    peers: IpSet::all(),
                    ports: PortSet::ranges([PortRange::all(Protocol::UDP)]),
                },
                Rule {
                    rule: second,
                    peers: IpSet::from_prefix(net("10.0.0.0/8")),
                    ports: PortSet::Any,
                },
            ],
        );
        let set = b.build();
        let d = |remote: &str, proto, port| {
            set.decide(Direction::Ingress, pod, ip(remote), proto, port)
        };
        assert_eq!(
            d("10.1.1.1", Protocol::UDP, 53),
            Decision::Allow { rule: first }
        );
        assert_eq!(
            d("10.1.1.1", Protocol::TCP, 53),
            Decision::Allow { rule: second }
        );
        assert_eq!(
            d("10.1.1.1", Protocol::ICMP, 0),
            Decision::Allow { rule: second }
        );
        assert_eq!(d("192.0.2.1", Protocol::ICMP, 0), Decision::Deny);
        assert_eq!(
            d("192.0.2.1", Protocol::UDP, 9),
            Decision::Allow { rule: first }
        );
    }

    #[test]
    fn identical_rule_lists_share_a_table() {
        let mut b = PolicySetBuilder::new(1);
        let r = b.rule_ref(policy_rule("ns-wide", 0));
        let rules = vec![Rule {
            rule: r,
            peers: IpSet::all(),
            ports: PortSet::Any,
        }];
        b.isolate(ip("10.0.0.1"), Direction::Ingress, rules.clone());
        b.isolate(ip("10.0.0.2"), Direction::Ingress, rules);
        assert_eq!(b.rule_ref(policy_rule("ns-wide", 0)), r, "ids are interned");
        let set = b.build();
        let t1 = set.pod(ip("10.0.0.1")).and_then(|p| p.ingress.clone());
        let t2 = set.pod(ip("10.0.0.2")).and_then(|p| p.ingress.clone());
        assert!(matches!((t1, t2), (Some(a), Some(b)) if Arc::ptr_eq(&a, &b)));
        assert_eq!(set.rule_count(), 1);
        assert_eq!(set.pods().count(), 2);
    }

    #[test]
    fn boundaries_at_the_ends_of_the_spaces() {
        let table = RuleTable::new(vec![
            Rule {
                rule: RuleRef(0),
                peers: IpSet::from_prefix(net("255.255.255.0/24")),
                ports: PortSet::ranges([PortRange {
                    protocol: Protocol::TCP,
                    first: 65000,
                    last: 65535,
                }]),
            },
            Rule {
                rule: RuleRef(1),
                peers: IpSet::from_prefix(net("0.0.0.0/32")),
                ports: PortSet::ranges([PortRange::single(Protocol::SCTP, 0)]),
            },
        ]);
        let m = |a: &str, p, port| table.first_match(ip(a), p, port);
        assert_eq!(m("255.255.255.255", Protocol::TCP, 65535), Some(RuleRef(0)));
        assert_eq!(m("255.255.255.255", Protocol::TCP, 64999), None);
        assert_eq!(m("255.255.254.255", Protocol::TCP, 65535), None);
        assert_eq!(m("0.0.0.0", Protocol::SCTP, 0), Some(RuleRef(1)));
        assert_eq!(m("0.0.0.0", Protocol::SCTP, 1), None);
        assert_eq!(m("0.0.0.1", Protocol::SCTP, 0), None);
        assert_eq!(
            RuleTable::new(vec![]).first_match(ip("1.2.3.4"), Protocol::TCP, 1),
            None
        );
    }

    fn arb_rules() -> impl Strategy<Value = Vec<Rule>> {
        let peers = prop::collection::vec((0u32..64, 0u32..16), 0..4)
            .prop_map(|v| IpSet::from_ranges(v.into_iter().map(|(a, l)| (a, a + l))));
        let range = (0usize..3, 0u16..12, 0u16..6).prop_map(|(p, first, len)| PortRange {
            protocol: [Protocol::TCP, Protocol::UDP, Protocol::SCTP][p],
            first,
            last: first + len,
        });
        let ports = prop_oneof![
            1 => Just(PortSet::Any),
            4 => prop::collection::vec(range, 0..4).prop_map(PortSet::ranges),
        ];
        prop::collection::vec((peers, ports), 0..12).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (peers, ports))| Rule {
                    // Several compiled rules may share an id, as named ports make them.
                    rule: RuleRef((i / 2) as u32),
                    peers,
                    ports,
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn index_agrees_with_a_linear_scan(rules in arb_rules()) {
            let table = RuleTable::new(rules);
            for a in 0u32..90 {
                for proto in [Protocol::TCP, Protocol::UDP, Protocol::SCTP, Protocol::ICMP] {
                    for port in 0u16..20 {
                        let remote = Ipv4Addr::from(a);
                        prop_assert_eq!(
                            table.first_match(remote, proto, port),
                            table.first_match_linear(remote, proto, port),
                            "{} {} {}", remote, proto, port
                        );
                    }
                }
            }
        }
    }
}
