//! Benchmarks of the forwarding tables: compiled-FIB lookups at 100, 10,000 and 100,000 routes,
//! compiling a 5,000-peer FIB (part of building every snapshot), and the neighbour and FDB
//! lookups a VXLAN packet makes after the route.
//!
//! Lookup benches run over a fixed array of 1,024 addresses that all hit, and declare
//! `Throughput::Elements(1024)`: criterion's `time` is per 1,024 lookups, its `thrpt` in
//! elements/s, so ns per lookup = time / 1024 = 1e9 / thrpt.
//! - `fib_lookup/throughput`: independent lookups, as a worker resolving a batch of packets does;
//!   the CPU overlaps their cache misses.
//! - `fib_lookup/latency`: each address depends on the previous answer, so the figure is the full
//!   dependent-load latency of one lookup.

use std::hint::black_box;
use std::net::Ipv4Addr;

use benches::{prefix, Rng};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dataplane::fdb::{Fdb, FdbEntry};
use dataplane::fib::{CompiledFib, Fib, NextHop};
use dataplane::neigh::{LearntNeighbors, NeighborTable};
use dataplane::time::Instant;
use dataplane::wire::EthernetAddress;
use dataplane::PortId;
use ipnet::Ipv4Net;

/// Lookups per measured iteration.
const BATCH: usize = 1024;

/// A FIB of exactly `n` routes shaped like a big flannel/Calico node: mostly /24 pod subnets inside
/// 10.0.0.0/8, some shorter aggregates (/8 to /23, in and outside 10/8), some longer blocks and
/// host routes (/25 to /32).
fn routes(n: usize, seed: u64) -> Fib {
    let mut rng = Rng(seed);
    let mut fib = Fib::new();
    fib.insert(
        prefix(0, 0),
        NextHop::Direct {
            gateway: Ipv4Addr::new(192, 168, 0, 1),
        },
    );
    while fib.len() < n {
        let in_ten = 0x0a00_0000 | (rng.next_u32() & 0x00ff_ffff);
        let roll = rng.below(100);
        let (addr, len) = if roll < 75 {
            (in_ten, 24)
        } else if roll < 80 {
            let addr = if rng.below(2) == 0 {
                in_ten
            } else {
                rng.next_u32()
            };
            (addr, 8 + rng.below(16) as u8)
        } else {
            (in_ten, 25 + rng.below(8) as u8)
        };
        let p = prefix(addr, len);
        let next_hop = match rng.below(4) {
            0 => NextHop::Local {
                port: PortId(rng.below(64) as u16),
            },
            1 => NextHop::Ipip {
                remote: Ipv4Addr::from(rng.next_u32()),
            },
            _ => NextHop::Vxlan {
                gateway: p.network(),
            },
        };
        fib.insert(p, next_hop);
    }
    fib
}

/// `BATCH` addresses, each inside a randomly chosen route of `fib` other than the default, so
/// every lookup walks the trie as deep as its match.
fn hitting_addresses(fib: &Fib, seed: u64) -> Vec<Ipv4Addr> {
    let mut rng = Rng(seed);
    let all: Vec<Ipv4Net> = fib
        .iter()
        .map(|r| r.prefix)
        .filter(|p| p.prefix_len() > 0)
        .collect();
    (0..BATCH)
        .map(|_| {
            let p = all[rng.below(all.len() as u32) as usize];
            let host_bits = !u32::from(p.netmask());
            Ipv4Addr::from(u32::from(p.network()) | (rng.next_u32() & host_bits))
        })
        .collect()
}

fn fib_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("fib_lookup");
    group.throughput(Throughput::Elements(BATCH as u64));
    for n in [100usize, 10_000, 100_000] {
        let fib = routes(n, 0x5eed_0000 + n as u64);
        let compiled: CompiledFib = fib.compile();
        let addrs = hitting_addresses(&fib, 0xadd2_e55e);
        assert!(addrs.iter().all(|&a| compiled.lookup(a).is_some()));
        eprintln!(
            "fib {n} routes: {} chunks, {} KiB",
            compiled.chunk_count(),
            compiled.memory_bytes() / 1024
        );
        group.bench_with_input(BenchmarkId::new("throughput", n), &addrs, |b, addrs| {
            b.iter(|| {
                let mut hits = 0usize;
                for &a in addrs {
                    if let Some(r) = compiled.lookup(black_box(a)) {
                        hits += usize::from(r.prefix.prefix_len());
                    }
                }
                hits
            })
        });
        group.bench_with_input(BenchmarkId::new("latency", n), &addrs, |b, addrs| {
            b.iter(|| {
                let mut i = 0usize;
                for _ in 0..BATCH {
                    let r = compiled.lookup(addrs[i]);
                    // Prefix lengths are at most 32, so the shift always yields 0, but the
                    // compiler cannot know: the next lookup waits for this one.
                    let dep = r.map_or(0, |r| usize::from(r.prefix.prefix_len()) >> 6);
                    i = (i + 1 + dep) & (BATCH - 1);
                }
                i
            })
        });
    }
    group.finish();
}

fn fib_compile(c: &mut Criterion) {
    // One /24 per peer in a 10.0.0.0/8 cluster CIDR, a VXLAN route each, like flannel at 5,000 nodes.
    let mut fib = Fib::new();
    for i in 0..5_000u32 {
        let gw = Ipv4Addr::from(0x0a00_0000 | (i << 8));
        fib.insert(prefix(u32::from(gw), 24), NextHop::Vxlan { gateway: gw });
    }
    fib.insert(prefix(0x0a00_0000, 8), NextHop::Blackhole);
    c.bench_function("fib_compile/5000", |b| b.iter(|| black_box(&fib).compile()));
}

fn neigh_and_fdb_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("l2_lookup");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut neigh = NeighborTable::new();
    let mut fdb = Fdb::new();
    for i in 0..5_000u32 {
        let gw = Ipv4Addr::from(0x0a00_0000 | (i << 8));
        let b = i.to_be_bytes();
        let mac = EthernetAddress([0x02, 0x42, b[0], b[1], b[2], b[3]]);
        neigh.insert_permanent(gw, mac, None);
        fdb.insert(
            mac,
            FdbEntry::Remote {
                vtep: Ipv4Addr::from(0xc0a8_0000 | i),
            },
        );
    }
    let mut rng = Rng(0x1234_5678);
    let ips: Vec<Ipv4Addr> = (0..BATCH)
        .map(|_| Ipv4Addr::from(0x0a00_0000 | (rng.below(5_000) << 8)))
        .collect();
    group.bench_function("neigh_then_fdb/5000", |b| {
        b.iter(|| {
            let mut found = 0usize;
            for &ip in &ips {
                if let Some(mac) = neigh.lookup(black_box(ip)) {
                    found += usize::from(fdb.lookup(mac).is_some());
                }
            }
            found
        })
    });
    group.finish();
}

/// The learnt table as a worker uses it for a pod's floating addresses: a lookup for a packet
/// to one (8 learnt), and a confirmation from a packet sent by one (an entry already there).
fn learnt_neighbours(c: &mut Criterion) {
    let mut group = c.benchmark_group("learnt");
    group.throughput(Throughput::Elements(1));
    let learnt = LearntNeighbors::default();
    let now = Instant::from_secs(1);
    let mac = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
    for i in 0..8u8 {
        learnt.confirm(
            Ipv4Addr::new(10, 244, 1, 200 + i),
            PortId(u16::from(i) + 1),
            mac,
            now,
        );
    }
    let vip = Ipv4Addr::new(10, 244, 1, 207);
    group.bench_function("lookup/8", |b| {
        b.iter(|| learnt.lookup(black_box(vip), now))
    });
    group.bench_function("confirm_refresh/8", |b| {
        b.iter(|| learnt.confirm(black_box(vip), PortId(8), mac, now))
    });
    group.finish();
}

criterion_group!(
    benches,
    fib_lookup,
    fib_compile,
    neigh_and_fdb_lookup,
    learnt_neighbours
);
criterion_main!(benches);
