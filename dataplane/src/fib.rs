//! The IPv4 forwarding information base: longest-prefix match from `/0` to `/32`.
//!
//! # What this module promises
//!
//! - [`Fib`] is the control side's routing table, the userspace analogue of the main table that
//!   flannel programs with `ip route`: one [`NextHop`] per prefix, prefixes canonicalised (host bits
//!   cleared, as the kernel refuses `10.0.0.1/24` and `ip route` prints `10.0.0.0/24`), ordered by
//!   address then length for dumps.
//! - [`CompiledFib`] is the immutable form a worker reads from a snapshot. Its
//!   [`lookup`](CompiledFib::lookup) returns exactly what a linear scan for the longest matching
//!   prefix would (the property test in `tests/fib_props.rs` checks this), in at most three dependent
//!   table loads plus the route fetch, with no allocation and no branch on prefix length.
//!
//! # Why a compiled multibit trie
//!
//! Linux resolves routes with an LC-trie (`net/ipv4/fib_trie.c`) that is updated in place under
//! RCU. Weft's workers instead read tables that the control side rebuilds and publishes whole
//!, so the lookup structure can be optimised for reading alone. It is DPDK's
//! `rte_lpm` DIR-24-8 scheme with strides 16-8-8 instead of 24-8: a 64 Ki-entry first level is
//! 256 KiB rather than 64 MiB, so compiling one for a snapshot costs microseconds, not the time it
//! takes to write 64 MiB, while a lookup still takes at most three loads.
//!
//! # Encoding
//!
//! Every table entry is a `u32`:
//!
//! | bit 31 | bits 0..=30 | meaning |
//! |--------|-------------|---------|
//! | 0      | 0           | no route covers these addresses |
//! | 0      | `i + 1`     | route `i` of [`CompiledFib::routes`] is the longest match |
//! | 1      | `c`         | look in chunk `c` with the next 8 bits of the address |
//!
//! Level 1 is indexed by the top 16 bits of the address. Chunks are 256-entry arrays in one pool;
//! a chunk referenced from level 1 is indexed by bits 8..16 (level 2), a chunk referenced from a
//! level-2 chunk by bits 0..8 (level 3). Level-3 entries never carry the chunk bit.
//!
//! A prefix of length `l` is *expanded* over the entries it covers at the level whose stride
//! contains bit `l`: a `/12` fills 16 level-1 entries, a `/20` 16 entries of a level-2 chunk, a
//! `/32` one entry of a level-3 chunk. Routes are written shortest prefix first, so a longer prefix
//! overwrites the shorter ones it is nested in; a chunk created under an entry starts as 256 copies
//! of the entry it replaces, so addresses the longer prefix does not cover keep their shorter match.
//! Because every prefix of length `<= 16` is written before any chunk exists, and every prefix of
//! length `<= 24` before any level-3 chunk exists, an expansion never lands on a chunk pointer.

use core::fmt;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::PortId;

/// Where packets matching a route go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// Deliver on a local port: the TUN device toward the node's bridge, or a pod port.
    Local {
        /// The port to deliver on.
        port: PortId,
    },
    /// Encapsulate in VXLAN toward a remote node, as flannel's
    /// `<subnet> via <subnet>.0 dev flannel.1 onlink`: the inner destination MAC comes from the
    /// neighbour entry of `gateway`, the remote VTEP from the FDB entry of that MAC.
    Vxlan {
        /// The remote node's `<subnet>.0` address, never on any local link (hence `onlink`).
        gateway: Ipv4Addr,
    },
    /// Encapsulate in IP-in-IP (RFC 2003) toward the underlay address `remote`, as Calico's
    /// `via <node IP> dev tunl0 onlink`.
    Ipip {
        /// The remote node's underlay address, the outer destination.
        remote: Ipv4Addr,
    },
    /// Route natively over the underlay via `gateway`, as flannel's host-gw backend and its
    /// VXLAN `DirectRouting` option do for peers on a directly connected subnet.
    Direct {
        /// The underlay next hop.
        gateway: Ipv4Addr,
    },
    /// Drop silently, as Calico's blackhole route for each local IPAM block.
    Blackhole,
}

impl fmt::Display for NextHop {
    /// Formats the next hop the way `ip route` prints the part after the prefix, with the
    /// encapsulation in parentheses; device names belong to the agent, so ports print as `portN`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NextHop::Local { port } => write!(f, "dev {port}"),
            NextHop::Vxlan { gateway } => write!(f, "via {gateway} onlink (vxlan)"),
            NextHop::Ipip { remote } => write!(f, "via {remote} onlink (ipip)"),
            NextHop::Direct { gateway } => write!(f, "via {gateway}"),
            NextHop::Blackhole => f.write_str("blackhole"),
        }
    }
}

/// One entry of the FIB: a prefix and where matching packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    /// The destination prefix, host bits cleared.
    pub prefix: Ipv4Net,
    /// Where packets matching `prefix` go.
    pub next_hop: NextHop,
}

impl fmt::Display for Route {
    /// Formats like a line of `ip route`: `10.244.2.0/24 via 10.244.2.0 onlink (vxlan)`, and
    /// `blackhole 10.244.0.0/24` with the type first as iproute2 prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.next_hop {
            NextHop::Blackhole => write!(f, "blackhole {}", self.prefix),
            nh => write!(f, "{} {nh}", self.prefix),
        }
    }
}

/// The control side's routing table: mutable, canonical, cheap to edit; [`compile`](Fib::compile)
/// it into a [`CompiledFib`] for the workers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fib {
    /// Keyed by truncated prefix; `Ipv4Net`'s derived order is address, then length.
    routes: BTreeMap<Ipv4Net, NextHop>,
}

impl Fib {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the next hop of `prefix` (host bits are cleared first), returning the one it replaced.
    pub fn insert(&mut self, prefix: Ipv4Net, next_hop: NextHop) -> Option<NextHop> {
        self.routes.insert(prefix.trunc(), next_hop)
    }

    /// Removes the route for exactly `prefix` (host bits cleared), returning its next hop.
    pub fn remove(&mut self, prefix: Ipv4Net) -> Option<NextHop> {
        self.routes.remove(&prefix.trunc())
    }

    /// Replaces the whole table with `routes`; when a prefix repeats, the last one wins.
    pub fn replace_all(&mut self, routes: impl IntoIterator<Item = Route>) {
        self.routes.clear();
        for route in routes {
            self.insert(route.prefix, route.next_hop);
        }
    }

    /// The next hop of exactly `prefix` (host bits cleared), not a longest-prefix match.
    pub fn get(&self, prefix: Ipv4Net) -> Option<NextHop> {
        self.routes.get(&prefix.trunc()).copied()
    }

    /// All routes, sorted by network address, then prefix length.
    pub fn iter(&self) -> impl Iterator<Item = Route> + '_ {
        self.routes
            .iter()
            .map(|(&prefix, &next_hop)| Route { prefix, next_hop })
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Builds the immutable lookup structure (see the module docs for the encoding).
    ///
    /// Costs one 256 KiB level-1 table plus 1 KiB per chunk; linear in the number of routes and
    /// in the number of entries their prefixes expand to.
    ///
    /// # Panics
    /// Never in practice: it would need 2^31 routes (tens of GiB of `BTreeMap`).
    pub fn compile(&self) -> CompiledFib {
        CompiledFib::build(self.iter().collect())
    }
}

impl<'a> IntoIterator for &'a Fib {
    type Item = Route;
    type IntoIter = Box<dyn Iterator<Item = Route> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl FromIterator<Route> for Fib {
    fn from_iter<I: IntoIterator<Item = Route>>(iter: I) -> Self {
        let mut fib = Fib::new();
        fib.replace_all(iter);
        fib
    }
}

/// Entries in the level-1 table: one per value of the top 16 address bits.
const L1_ENTRIES: usize = 1 << 16;
/// Entries in a level-2 or level-3 chunk: one per value of an address byte.
const CHUNK_ENTRIES: usize = 1 << 8;
/// Set in an entry that points at a chunk rather than a route.
const CHUNK_BIT: u32 = 1 << 31;
/// The chunk index or route index + 1 in an entry.
const INDEX_MASK: u32 = !CHUNK_BIT;

/// A level-2 or level-3 table.
type Chunk = [u32; CHUNK_ENTRIES];

/// The level-1 table. A fixed-size array, so indexing it with a 16-bit value needs no bounds check.
type Level1 = Box<[u32; L1_ENTRIES]>;

/// A zeroed level-1 table, allocated directly on the heap (it is too big for a test thread's stack).
fn zeroed_level1() -> Level1 {
    vec![0u32; L1_ENTRIES]
        .into_boxed_slice()
        .try_into()
        .expect("a Vec of L1_ENTRIES converts to a Box<[u32; L1_ENTRIES]>")
}

/// The immutable, lookup-optimised form of a [`Fib`]: a DIR-16-8-8 multibit trie (see the module
/// docs). The default value is empty: every lookup answers `None`.
pub struct CompiledFib {
    /// Indexed by the top 16 address bits.
    level1: Level1,
    /// Level-2 and level-3 chunks, one pool; an entry's depth says which level a chunk is.
    chunks: Vec<Chunk>,
    /// Sorted like [`Fib::iter`]; entries store indices into it, plus one.
    routes: Vec<Route>,
}

impl CompiledFib {
    /// Builds the trie over `routes`, which must be truncated, distinct, and sorted like
    /// [`Fib::iter`] (as `Fib::compile` guarantees).
    fn build(routes: Vec<Route>) -> CompiledFib {
        // Shortest prefixes first so longer ones overwrite them; stable, so ties keep their order
        // (equal-length distinct prefixes are disjoint, so their order does not matter anyway).
        let mut order: Vec<usize> = (0..routes.len()).collect();
        order.sort_by_key(|&i| routes[i].prefix.prefix_len());

        let mut level1 = zeroed_level1();
        let mut chunks: Vec<Chunk> = Vec::new();
        for i in order {
            let route = &routes[i];
            let value = u32::try_from(i + 1)
                .ok()
                .filter(|v| v & CHUNK_BIT == 0)
                .expect("a FIB holds fewer than 2^31 routes");
            let addr = u32::from(route.prefix.network());
            let len = route.prefix.prefix_len();
            let i1 = (addr >> 16) as usize;
            let i2 = ((addr >> 8) & 0xff) as usize;
            let i3 = (addr & 0xff) as usize;
            if len <= 16 {
                fill(&mut level1[i1..i1 + (1 << (16 - len))], value);
                continue;
            }
            let c2 = descend(&mut level1[i1], &mut chunks);
            if len <= 24 {
                fill(&mut chunks[c2][i2..i2 + (1 << (24 - len))], value);
                continue;
            }
            let parent = chunks[c2][i2];
            let c3 = descend_from(parent, &mut chunks);
            chunks[c2][i2] = CHUNK_BIT | chunk_index(c3);
            fill(&mut chunks[c3][i3..i3 + (1 << (32 - len))], value);
        }
        CompiledFib {
            level1,
            chunks,
            routes,
        }
    }

    /// The route with the longest prefix containing `addr`, if any.
    ///
    /// At most three dependent loads (level 1, level 2, level 3) and the route fetch. The
    /// level-1 index is 16 bits into a 2^16 array and chunk offsets are 8 bits into 2^8 arrays,
    /// so the only bounds checks left are on chunk numbers, which always pass.
    #[inline]
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<&Route> {
        let a = u32::from(addr);
        let mut entry = self.level1[(a >> 16) as usize];
        if entry & CHUNK_BIT != 0 {
            entry = self.chunks[(entry & INDEX_MASK) as usize][((a >> 8) & 0xff) as usize];
            if entry & CHUNK_BIT != 0 {
                entry = self.chunks[(entry & INDEX_MASK) as usize][(a & 0xff) as usize];
            }
        }
        // Entry 0 ("no route") wraps to usize::MAX, which `get` rejects: no extra branch.
        self.routes.get((entry as usize).wrapping_sub(1))
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when there are no routes, so every lookup answers `None`.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// All routes, sorted like [`Fib::iter`]: by network address, then prefix length.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The number of level-2 and level-3 chunks, for diagnostics.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Heap bytes held by the lookup structure: level 1, the chunks and the route array.
    pub fn memory_bytes(&self) -> usize {
        core::mem::size_of::<[u32; L1_ENTRIES]>()
            + self.chunks.capacity() * core::mem::size_of::<Chunk>()
            + self.routes.capacity() * core::mem::size_of::<Route>()
    }
}

/// Writes a route value over a prefix's expansion. The shortest-first build order means no chunk
/// pointer can be in the way (see the module docs); the assertion guards that argument.
fn fill(entries: &mut [u32], value: u32) {
    debug_assert!(entries.iter().all(|e| e & CHUNK_BIT == 0));
    entries.fill(value);
}

/// The chunk `entry` points at, creating it (inheriting `entry`) and pointing `entry` at it when
/// `entry` is a route.
fn descend(entry: &mut u32, chunks: &mut Vec<Chunk>) -> usize {
    let c = descend_from(*entry, chunks);
    *entry = CHUNK_BIT | chunk_index(c);
    c
}

/// The chunk an entry with value `entry` points at, or a new one filled with `entry`.
fn descend_from(entry: u32, chunks: &mut Vec<Chunk>) -> usize {
    if entry & CHUNK_BIT != 0 {
        (entry & INDEX_MASK) as usize
    } else {
        chunks.push([entry; CHUNK_ENTRIES]);
        chunks.len() - 1
    }
}

/// `c` as an entry's index field. There are at most 2^16 level-2 chunks and 2^24 level-3 chunks.
fn chunk_index(c: usize) -> u32 {
    let c = u32::try_from(c).expect("at most 2^16 + 2^24 chunks exist");
    debug_assert_eq!(c & CHUNK_BIT, 0);
    c
}

impl Default for CompiledFib {
    fn default() -> Self {
        CompiledFib {
            level1: zeroed_level1(),
            chunks: Vec::new(),
            routes: Vec::new(),
        }
    }
}

impl Clone for CompiledFib {
    // By hand: cloning a `Box<[u32; 65536]>` through `Box::new` may build the copy on the stack.
    fn clone(&self) -> Self {
        let mut level1 = zeroed_level1();
        level1.copy_from_slice(&self.level1[..]);
        CompiledFib {
            level1,
            chunks: self.chunks.clone(),
            routes: self.routes.clone(),
        }
    }
}

impl fmt::Debug for CompiledFib {
    // The tables are 256 KiB and up; print their shape, not their contents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledFib")
            .field("routes", &self.routes.len())
            .field("chunks", &self.chunks.len())
            .field("memory_bytes", &self.memory_bytes())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test prefix")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    fn port(n: u16) -> NextHop {
        NextHop::Local { port: PortId(n) }
    }

    /// The prefix `lookup(addr)` picks, as a string, or "none".
    fn hit(fib: &CompiledFib, addr: &str) -> String {
        fib.lookup(ip(addr))
            .map_or_else(|| "none".to_string(), |r| r.prefix.to_string())
    }

    #[test]
    fn insert_replace_remove() {
        let mut fib = Fib::new();
        assert!(fib.is_empty());
        assert_eq!(fib.insert(net("10.244.1.0/24"), port(1)), None);
        assert_eq!(fib.insert(net("10.244.1.0/24"), port(2)), Some(port(1)));
        assert_eq!(fib.len(), 1);
        assert_eq!(fib.get(net("10.244.1.0/24")), Some(port(2)));
        assert_eq!(fib.get(net("10.244.1.0/25")), None, "get is exact, not LPM");
        assert_eq!(fib.remove(net("10.244.1.0/24")), Some(port(2)));
        assert_eq!(fib.remove(net("10.244.1.0/24")), None);
        assert!(fib.is_empty());
    }

    #[test]
    fn host_bits_are_cleared() {
        let mut fib = Fib::new();
        fib.insert(net("10.244.1.77/24"), port(1));
        assert_eq!(fib.get(net("10.244.1.0/24")), Some(port(1)));
        assert_eq!(fib.get(net("10.244.1.200/24")), Some(port(1)));
        assert_eq!(
            fib.iter().next().map(|r| r.prefix),
            Some(net("10.244.1.0/24"))
        );
        assert_eq!(fib.remove(net("10.244.1.1/24")), Some(port(1)));
    }

    #[test]
    fn iter_is_sorted_by_address_then_length() {
        let fib: Fib = [
            "10.0.0.0/8",
            "0.0.0.0/0",
            "10.0.0.0/16",
            "9.255.0.0/16",
            "10.0.0.0/24",
        ]
        .iter()
        .map(|p| Route {
            prefix: net(p),
            next_hop: NextHop::Blackhole,
        })
        .collect();
        let got: Vec<String> = fib.iter().map(|r| r.prefix.to_string()).collect();
        assert_eq!(
            got,
            [
                "0.0.0.0/0",
                "9.255.0.0/16",
                "10.0.0.0/8",
                "10.0.0.0/16",
                "10.0.0.0/24"
            ]
        );
        let compiled = fib.compile();
        assert_eq!(compiled.routes(), fib.iter().collect::<Vec<_>>().as_slice());
    }

    #[test]
    fn replace_all_drops_old_routes_and_last_duplicate_wins() {
        let mut fib = Fib::new();
        fib.insert(net("10.1.0.0/16"), port(1));
        fib.replace_all([
            Route {
                prefix: net("10.2.0.0/16"),
                next_hop: port(2),
            },
            Route {
                prefix: net("10.2.0.0/16"),
                next_hop: port(3),
            },
        ]);
        assert_eq!(fib.len(), 1);
        assert_eq!(fib.get(net("10.1.0.0/16")), None);
        assert_eq!(fib.get(net("10.2.0.0/16")), Some(port(3)));
    }

    #[test]
    fn empty_and_default_answer_none() {
        let empty = CompiledFib::default();
        assert!(empty.is_empty());
        for a in ["0.0.0.0", "10.0.0.1", "255.255.255.255"] {
            assert_eq!(hit(&empty, a), "none");
        }
        assert_eq!(hit(&Fib::new().compile(), "1.2.3.4"), "none");
    }

    #[test]
    fn default_route_covers_everything() {
        let mut fib = Fib::new();
        fib.insert(
            net("0.0.0.0/0"),
            NextHop::Direct {
                gateway: ip("192.168.0.1"),
            },
        );
        let c = fib.compile();
        for a in ["0.0.0.0", "10.0.0.1", "128.0.0.0", "255.255.255.255"] {
            assert_eq!(hit(&c, a), "0.0.0.0/0");
        }
        assert_eq!(c.chunk_count(), 0);
    }

    #[test]
    fn host_routes_at_the_edges_of_the_address_space() {
        let mut fib = Fib::new();
        fib.insert(net("0.0.0.0/32"), port(1));
        fib.insert(net("255.255.255.255/32"), port(2));
        fib.insert(net("10.244.1.7/32"), port(3));
        let c = fib.compile();
        assert_eq!(hit(&c, "0.0.0.0"), "0.0.0.0/32");
        assert_eq!(hit(&c, "0.0.0.1"), "none");
        assert_eq!(hit(&c, "255.255.255.255"), "255.255.255.255/32");
        assert_eq!(hit(&c, "255.255.255.254"), "none");
        assert_eq!(hit(&c, "10.244.1.7"), "10.244.1.7/32");
        assert_eq!(hit(&c, "10.244.1.6"), "none");
        assert_eq!(hit(&c, "10.244.1.8"), "none");
    }

    #[test]
    fn nested_prefixes_at_all_three_levels() {
        // One chain of nested prefixes crossing every stride boundary, plus siblings.
        let chain = [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.240.0.0/12",
            "10.244.0.0/16",
            "10.244.0.0/17",
            "10.244.16.0/20",
            "10.244.17.0/24",
            "10.244.17.0/25",
            "10.244.17.64/26",
            "10.244.17.66/31",
            "10.244.17.67/32",
        ];
        let mut fib = Fib::new();
        for (i, p) in chain.iter().enumerate() {
            fib.insert(net(p), port(i as u16));
        }
        let c = fib.compile();
        let cases = [
            ("10.244.17.67", "10.244.17.67/32"),
            ("10.244.17.66", "10.244.17.66/31"),
            ("10.244.17.65", "10.244.17.64/26"),
            ("10.244.17.127", "10.244.17.64/26"),
            ("10.244.17.63", "10.244.17.0/25"),
            ("10.244.17.128", "10.244.17.0/24"),
            ("10.244.17.255", "10.244.17.0/24"),
            ("10.244.18.0", "10.244.16.0/20"),
            ("10.244.31.255", "10.244.16.0/20"),
            ("10.244.32.0", "10.244.0.0/17"),
            ("10.244.127.255", "10.244.0.0/17"),
            ("10.244.128.0", "10.244.0.0/16"),
            ("10.245.0.0", "10.240.0.0/12"),
            ("10.239.255.255", "10.0.0.0/8"),
            ("11.0.0.0", "0.0.0.0/0"),
        ];
        for (addr, want) in cases {
            assert_eq!(hit(&c, addr), want, "lookup({addr})");
        }
        // One level-2 chunk (10.244/16) and one level-3 chunk (10.244.17/24).
        assert_eq!(c.chunk_count(), 2);
        // Each route's next hop survived the trip through the trie.
        for (i, p) in chain.iter().enumerate() {
            let r = c
                .routes()
                .iter()
                .find(|r| r.prefix == net(p))
                .expect("compiled");
            assert_eq!(r.next_hop, port(i as u16), "{p}");
        }
    }

    #[test]
    fn longer_prefix_inserted_before_shorter_still_wins() {
        // The map order is irrelevant: compile sorts by length.
        let mut fib = Fib::new();
        fib.insert(net("10.244.1.128/25"), port(3));
        fib.insert(net("10.244.1.0/24"), port(2));
        fib.insert(net("10.0.0.0/8"), port(1));
        let c = fib.compile();
        assert_eq!(hit(&c, "10.244.1.200"), "10.244.1.128/25");
        assert_eq!(hit(&c, "10.244.1.100"), "10.244.1.0/24");
        assert_eq!(hit(&c, "10.244.2.1"), "10.0.0.0/8");
    }

    #[test]
    fn removing_a_more_specific_route_uncovers_the_shorter_one() {
        let mut fib = Fib::new();
        fib.insert(net("10.244.0.0/16"), NextHop::Blackhole);
        fib.insert(
            net("10.244.2.0/24"),
            NextHop::Vxlan {
                gateway: ip("10.244.2.0"),
            },
        );
        assert_eq!(hit(&fib.compile(), "10.244.2.9"), "10.244.2.0/24");
        fib.remove(net("10.244.2.0/24"));
        assert_eq!(hit(&fib.compile(), "10.244.2.9"), "10.244.0.0/16");
    }

    #[test]
    fn flannel_like_table() {
        // Own subnet on the TUN, one VXLAN route per remote node, the cluster CIDR blackholed.
        let mut fib = Fib::new();
        fib.insert(net("10.244.0.0/16"), NextHop::Blackhole);
        fib.insert(net("10.244.1.0/24"), port(0));
        for n in 2..=200u8 {
            let gw = Ipv4Addr::new(10, 244, n, 0);
            fib.insert(
                Ipv4Net::new(gw, 24).expect("valid"),
                NextHop::Vxlan { gateway: gw },
            );
        }
        let c = fib.compile();
        assert_eq!(c.len(), 201);
        assert_eq!(
            c.lookup(ip("10.244.1.5")).map(|r| r.next_hop),
            Some(port(0))
        );
        assert_eq!(
            c.lookup(ip("10.244.77.5")).map(|r| r.next_hop),
            Some(NextHop::Vxlan {
                gateway: ip("10.244.77.0")
            })
        );
        assert_eq!(
            c.lookup(ip("10.244.201.5")).map(|r| r.next_hop),
            Some(NextHop::Blackhole)
        );
        assert_eq!(hit(&c, "10.245.0.1"), "none");
        assert!(c.memory_bytes() >= 256 * 1024);
        let clone = c.clone();
        assert_eq!(clone.routes(), c.routes());
        assert_eq!(hit(&clone, "10.244.77.5"), "10.244.77.0/24");
    }

    #[test]
    fn display_like_ip_route() {
        let show = |p: &str, nh| {
            Route {
                prefix: net(p),
                next_hop: nh,
            }
            .to_string()
        };
        assert_eq!(
            show(
                "10.244.2.0/24",
                NextHop::Vxlan {
                    gateway: ip("10.244.2.0")
                }
            ),
            "10.244.2.0/24 via 10.244.2.0 onlink (vxlan)"
        );
        assert_eq!(
            show(
                "10.244.2.0/26",
                NextHop::Ipip {
                    remote: ip("192.168.1.2")
                }
            ),
            "10.244.2.0/26 via 192.168.1.2 onlink (ipip)"
        );
        assert_eq!(
            show(
                "10.244.3.0/24",
                NextHop::Direct {
                    gateway: ip("192.168.1.3")
                }
            ),
            "10.244.3.0/24 via 192.168.1.3"
        );
        assert_eq!(show("10.244.1.0/24", port(1)), "10.244.1.0/24 dev port1");
        assert_eq!(
            show("10.244.0.0/16", NextHop::Blackhole),
            "blackhole 10.244.0.0/16"
        );
        let c = Fib::new().compile();
        assert!(format!("{c:?}").starts_with("CompiledFib {"));
    }
}
