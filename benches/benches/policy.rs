//! NetworkPolicy in the switch: the first-packet decision with 1,000 rules selecting the pod,
//! and the per-packet cost of an established flow (a conntrack hit).
//!
//! Lookup benches run over fixed arrays of 1,024 inputs and declare `Throughput::Elements(1024)`:
//! criterion's `time` is per 1,024 operations, so ns per operation = time / 1024 = 1e9 / thrpt.
//! - `policy_decide/1000_rules`: `PolicySet::decide` for one direction at a pod whose ingress
//!   table holds 1,000 rules (pod /32s, namespace-sized /24s, ipBlocks with excepts; single
//!   ports, endPort ranges, port-less rules), half the inputs allowed and half denied.
//! - `policy_decide/flow_1000_rules`: `decide_flow`, both ends local and isolated (two lookups),
//!   which is what a new connection between two local pods costs.
//! - `conntrack/hit_established`: `Conntrack::track` of an established TCP flow's ACKs, in a
//!   table holding 100,000 flows, alternating directions; `now` advances 1 µs per packet.
//! - `conntrack/filter_established`: the same through `policy::filter` with the 1,000-rule set
//!   (the hit plus the generation check).
//! - `conntrack/admit_established`: what the routing step pays per packet of an established
//!   flow, `policy::admit_ipv4` of the packet's bytes (an IPv4/TCP ACK with timestamps): the
//!   parse (`PacketFlow::of_ipv4`), then `policy::filter` as above.
//! - `policy_compile/1000_rules`: building the 1,000-rule table and its index (control side).

use std::hint::black_box;
use std::net::Ipv4Addr;

use benches::{prefix, Rng};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataplane::policy::{
    admit_ipv4, filter, Conntrack, ConntrackConfig, Direction, FlowKey, IpSet, OnPolicyChange,
    PacketFlow, PolicySet, PolicySetBuilder, PortRange, PortSet, Protocol, Rule, RuleId, RuleTable,
};
use dataplane::time::Instant;
use dataplane::wire::tcp::flags::{ACK, SYN};

const BATCH: usize = 1024;
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);

/// 1,000 rules as a big namespace's policies compile: mostly pod addresses (sets of a few /32s
/// in 10.244.0.0/16) on one or two ports, some namespace-sized /24 sets, some ipBlocks with
/// excepts, some endPort ranges and a few port-less rules.
fn rules(b: &mut PolicySetBuilder, rng: &mut Rng) -> Vec<Rule> {
    (0..1000u32)
        .map(|i| {
            let rule = b.rule_ref(RuleId::Policy {
                namespace: format!("ns{}", i % 50),
                name: format!("policy{}", i / 4),
                direction: Direction::Ingress,
                index: i % 4,
            });
            let peers = match rng.below(10) {
                0..=5 => IpSet::from_addrs(
                    (0..1 + rng.below(4)).map(|_| Ipv4Addr::from(0x0af4_0000 | rng.below(1 << 16))),
                ),
                6 | 7 => IpSet::from_prefix(prefix(0x0af4_0000 | (rng.below(256) << 8), 24)),
                _ => {
                    let block = prefix(rng.next_u32(), 8 + rng.below(8) as u8);
                    let hole = prefix(u32::from(block.network()) | rng.below(1 << 16), 24);
                    IpSet::from_block(block, &[hole])
                }
            };
            let port = 1000 + rng.below(2000) as u16;
            let ports = match rng.below(10) {
                0 => PortSet::Any,
                1 | 2 => PortSet::ranges([PortRange {
                    protocol: Protocol::TCP,
                    first: port,
                    last: port + 100,
                }]),
                3 => PortSet::ranges([
                    PortRange::single(Protocol::UDP, port),
                    PortRange::single(Protocol::TCP, port),
                ]),
                _ => PortSet::ranges([PortRange::single(Protocol::TCP, port)]),
            };
            Rule { rule, peers, ports }
        })
        .collect()
}

/// The node's set: `POD` isolated for ingress with the 1,000 rules, and `CLIENT` isolated for
/// egress with the same rules (so a flow between them is decided at both ends).
fn policy_set() -> (PolicySet, Vec<Rule>) {
    let mut b = PolicySetBuilder::new(1);
    let rules = rules(&mut b, &mut Rng(0x5eed));
    b.isolate(POD, Direction::Ingress, rules.clone());
    b.isolate(CLIENT, Direction::Egress, rules.clone());
    (b.build(), rules)
}

/// 1,024 (remote, protocol, port) inputs: half picked to match some rule, half random.
fn inputs(rules: &[Rule]) -> Vec<(Ipv4Addr, Protocol, u16)> {
    let mut rng = Rng(0xfeed);
    (0..BATCH)
        .map(|i| {
            if i % 2 == 0 {
                let r = &rules[rng.below(rules.len() as u32) as usize];
                let (first, _) = r.peers.ranges()[0];
                let (protocol, port) = match &r.ports {
                    PortSet::Any => (Protocol::TCP, 443),
                    PortSet::Ranges(p) => (p[0].protocol, p[0].first),
                };
                (Ipv4Addr::from(first), protocol, port)
            } else {
                let protocol =
                    [Protocol::TCP, Protocol::UDP, Protocol::ICMP][rng.below(3) as usize];
                (
                    Ipv4Addr::from(0x0af4_0000 | rng.below(1 << 16)),
                    protocol,
                    1000 + rng.below(2000) as u16,
                )
            }
        })
        .collect()
}

fn bench_decide(c: &mut Criterion) {
    let (set, rules) = policy_set();
    let inputs = inputs(&rules);
    let allowed = inputs
        .iter()
        .filter(|&&(remote, proto, port)| {
            set.decide(Direction::Ingress, POD, remote, proto, port)
                .allows()
        })
        .count();
    assert!(
        allowed > BATCH / 3 && allowed < BATCH * 9 / 10,
        "{allowed} allowed"
    );

    let mut g = c.benchmark_group("policy_decide");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("1000_rules", |b| {
        b.iter(|| {
            for &(remote, proto, port) in &inputs {
                black_box(set.decide(Direction::Ingress, POD, black_box(remote), proto, port));
            }
        })
    });
    g.bench_function("flow_1000_rules", |b| {
        b.iter(|| {
            for &(_, proto, port) in &inputs {
                black_box(set.decide_flow(CLIENT, black_box(POD), proto, port));
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("policy_compile");
    g.sample_size(20);
    g.bench_function("1000_rules", |b| {
        b.iter(|| black_box(RuleTable::new(black_box(rules.clone()))))
    });
    g.finish();
}

fn flow(i: u32) -> FlowKey {
    FlowKey {
        src: Ipv4Addr::from(0x0af4_0000 | (i >> 8)),
        dst: POD,
        protocol: Protocol::TCP,
        src_port: 10_000 + (i & 0xff) as u16,
        dst_port: 80,
    }
}

fn bench_conntrack(c: &mut Criterion) {
    let ct = Conntrack::new(ConntrackConfig {
        seed: 0x0123_4567_89ab_cdef,
        ..ConntrackConfig::default()
    });
    let t0 = Instant::from_secs(1000);
    const FLOWS: u32 = 100_000;
    for i in 0..FLOWS {
        let k = flow(i);
        ct.insert(&k, SYN, 1, t0);
        ct.track(&k.reversed(), SYN | ACK, t0);
        ct.track(&k, ACK, t0);
    }
    assert_eq!(ct.stats().refused, 0);
    let mut rng = Rng(0xc0ffee);
    let packets: Vec<FlowKey> = (0..BATCH)
        .map(|i| {
            let k = flow(rng.below(FLOWS));
            if i % 2 == 0 {
                k
            } else {
                k.reversed()
            }
        })
        .collect();

    let mut g = c.benchmark_group("conntrack");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut now = t0.as_micros();
    g.bench_function("hit_established", |b| {
        b.iter(|| {
            for k in &packets {
                now += 1;
                black_box(ct.track(black_box(k), ACK, Instant::from_micros(now)));
            }
        })
    });
    let (set, _) = policy_set();
    g.bench_function("filter_established", |b| {
        b.iter(|| {
            for k in &packets {
                now += 1;
                let p = PacketFlow {
                    key: *k,
                    tcp_flags: ACK,
                };
                black_box(filter(
                    &set,
                    &ct,
                    black_box(&p),
                    Instant::from_micros(now),
                    OnPolicyChange::Recheck,
                ));
            }
        })
    });
    let ips: Vec<[u8; IP_TCP_LEN]> = packets.iter().map(ack_packet).collect();
    g.bench_function("admit_established", |b| {
        b.iter(|| {
            for ip in &ips {
                now += 1;
                black_box(admit_ipv4(
                    &set,
                    &ct,
                    black_box(ip),
                    Instant::from_micros(now),
                    OnPolicyChange::Recheck,
                ));
            }
        })
    });
    g.finish();
}

/// An IPv4 header and a TCP header with the timestamp option: a bare ACK.
const IP_TCP_LEN: usize = 20 + 32;

/// The bytes of a bare ACK of flow `k`.
fn ack_packet(k: &FlowKey) -> [u8; IP_TCP_LEN] {
    let mut out = Vec::with_capacity(IP_TCP_LEN);
    etherparse::PacketBuilder::ipv4(k.src.octets(), k.dst.octets(), 64)
        .tcp(k.src_port, k.dst_port, 1, 64_000)
        .ack(1)
        .options(&[etherparse::TcpOptionElement::Timestamp(1, 2)])
        .expect("the timestamp option fits")
        .write(&mut out, &[])
        .expect("write to a Vec");
    out.try_into().expect("20 + 32 bytes")
}

criterion_group!(benches, bench_decide, bench_conntrack);
criterion_main!(benches);
