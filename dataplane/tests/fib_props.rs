//! Property tests of the compiled FIB against the simplest possible reference: a linear scan over
//! `Fib::iter` for the longest prefix containing the address (what flannel's old udp backend did
//! per packet). Prefix sets are clustered around a few base addresses and biased to the lengths
//! flannel and Calico use (/8, /16, /24, /32, and Calico's /26), so prefixes nest across all three
//! trie levels; probes include every prefix's network and broadcast addresses and their neighbours.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use dataplane::fib::{CompiledFib, Fib, NextHop, Route};
use dataplane::PortId;
use ipnet::Ipv4Net;
use proptest::prelude::*;

/// The longest-prefix match by linear scan.
fn reference(fib: &Fib, addr: Ipv4Addr) -> Option<Route> {
    fib.iter()
        .filter(|r| r.prefix.contains(&addr))
        .max_by_key(|r| r.prefix.prefix_len())
}

/// Network, broadcast and their neighbours for every prefix, plus the extremes.
fn boundary_probes(fib: &Fib) -> Vec<Ipv4Addr> {
    let mut probes = vec![Ipv4Addr::new(0, 0, 0, 0), Ipv4Addr::BROADCAST];
    for r in fib.iter() {
        let lo = u32::from(r.prefix.network());
        let hi = u32::from(r.prefix.broadcast());
        for a in [
            lo.wrapping_sub(1),
            lo,
            lo.wrapping_add(1),
            hi.wrapping_sub(1),
            hi,
            hi.wrapping_add(1),
        ] {
            probes.push(Ipv4Addr::from(a));
        }
    }
    probes
}

/// Checks `compiled` against the reference over `fib` for `probes`, and its route list.
fn check(fib: &Fib, compiled: &CompiledFib, probes: &[Ipv4Addr]) -> Result<(), TestCaseError> {
    prop_assert_eq!(compiled.len(), fib.len());
    let expected: Vec<Route> = fib.iter().collect();
    prop_assert_eq!(compiled.routes(), expected.as_slice());
    for &addr in probes {
        prop_assert_eq!(
            compiled.lookup(addr).copied(),
            reference(fib, addr),
            "lookup({})",
            addr
        );
    }
    Ok(())
}

fn prefix_len() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => Just(8u8),
        3 => Just(16u8),
        4 => Just(24u8),
        3 => Just(32u8),
        1 => Just(26u8),
        4 => 0u8..=32,
    ]
}

fn next_hop() -> impl Strategy<Value = NextHop> {
    prop_oneof![
        any::<u16>().prop_map(|p| NextHop::Local { port: PortId(p) }),
        any::<u32>().prop_map(|a| NextHop::Vxlan {
            gateway: Ipv4Addr::from(a)
        }),
        any::<u32>().prop_map(|a| NextHop::Ipip {
            remote: Ipv4Addr::from(a)
        }),
        any::<u32>().prop_map(|a| NextHop::Direct {
            gateway: Ipv4Addr::from(a)
        }),
        Just(NextHop::Blackhole),
    ]
}

/// A few cluster bases; one of them is in 10.0.0.0/8 like a typical cluster CIDR.
fn bases() -> impl Strategy<Value = Vec<u32>> {
    (
        0x0a00_0000u32..0x0b00_0000,
        prop::collection::vec(any::<u32>(), 0..3),
    )
        .prop_map(|(ten, mut rest)| {
            rest.push(ten);
            rest
        })
}

/// An address near one of `bases`: the base with its low `spread` bits randomised.
fn near(bases: &[u32], pick: usize, noise: u32, spread: u32) -> u32 {
    let base = bases[pick % bases.len()];
    let mask = if spread >= 32 {
        u32::MAX
    } else {
        (1u32 << spread) - 1
    };
    (base & !mask) | (noise & mask)
}

/// Raw material for one prefix: (base pick, noise, spread, length, next hop).
type RawRoute = (usize, u32, u32, u8, NextHop);

fn raw_route() -> impl Strategy<Value = RawRoute> {
    (
        any::<usize>(),
        any::<u32>(),
        prop_oneof![3 => 0u32..=16, 1 => 0u32..=32],
        prefix_len(),
        next_hop(),
    )
}

fn to_route(bases: &[u32], (pick, noise, spread, len, next_hop): RawRoute) -> Route {
    let addr = Ipv4Addr::from(near(bases, pick, noise, spread));
    Route {
        prefix: Ipv4Net::new(addr, len)
            .expect("length is at most 32")
            .trunc(),
        next_hop,
    }
}

/// Random probes: uniformly anywhere, and clustered around the bases.
fn random_probes() -> impl Strategy<Value = Vec<(bool, usize, u32, u32)>> {
    prop::collection::vec((any::<bool>(), any::<usize>(), any::<u32>(), 0u32..=20), 64)
}

fn materialise_probes(bases: &[u32], raw: &[(bool, usize, u32, u32)]) -> Vec<Ipv4Addr> {
    raw.iter()
        .map(|&(uniform, pick, noise, spread)| {
            Ipv4Addr::from(if uniform {
                noise
            } else {
                near(bases, pick, noise, spread)
            })
        })
        .collect()
}

/// One edit of the table.
#[derive(Debug, Clone)]
enum Op {
    Insert(RawRoute),
    /// Remove the n-th current route (mod the count), or a random prefix when empty.
    RemoveExisting(usize),
    /// Remove a prefix that is probably absent.
    RemoveRandom(RawRoute),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => raw_route().prop_map(Op::Insert),
        3 => any::<usize>().prop_map(Op::RemoveExisting),
        1 => raw_route().prop_map(Op::RemoveRandom),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn compiled_lookup_is_longest_prefix_match(
        bases in bases(),
        raw in prop::collection::vec(raw_route(), 0..120),
        probes in random_probes(),
    ) {
        let fib: Fib = raw.into_iter().map(|r| to_route(&bases, r)).collect();
        let compiled = fib.compile();
        let mut all = boundary_probes(&fib);
        all.extend(materialise_probes(&bases, &probes));
        check(&fib, &compiled, &all)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn insert_remove_sequences_match_a_map_model(
        bases in bases(),
        ops in prop::collection::vec(op(), 1..40),
        probes in random_probes(),
    ) {
        let mut fib = Fib::new();
        let mut model: BTreeMap<Ipv4Net, NextHop> = BTreeMap::new();
        let random = materialise_probes(&bases, &probes);
        for op in ops {
            match op {
                Op::Insert(raw) => {
                    let r = to_route(&bases, raw);
                    prop_assert_eq!(
                        fib.insert(r.prefix, r.next_hop),
                        model.insert(r.prefix, r.next_hop)
                    );
                }
                Op::RemoveExisting(n) => {
                    let victim = model.keys().nth(n % model.len().max(1)).copied();
                    if let Some(prefix) = victim {
                        prop_assert_eq!(fib.remove(prefix), model.remove(&prefix));
                        prop_assert_eq!(fib.get(prefix), None);
                    }
                }
                Op::RemoveRandom(raw) => {
                    let prefix = to_route(&bases, raw).prefix;
                    prop_assert_eq!(fib.remove(prefix), model.remove(&prefix));
                }
            }
            let from_model: Vec<Route> = model
                .iter()
                .map(|(&prefix, &next_hop)| Route { prefix, next_hop })
                .collect();
            prop_assert_eq!(fib.iter().collect::<Vec<_>>(), from_model);
            let mut all = boundary_probes(&fib);
            all.extend_from_slice(&random);
            check(&fib, &fib.compile(), &all)?;
        }
    }
}
