//! The IPv4 neighbour tables, the userspace analogue of `ip neigh`: address to MAC.
//!
//! # What this module promises
//!
//! - [`NeighborTable`] holds the entries the control side programs, all `PERMANENT`: flannel's
//!   one `<remote subnet>.0 lladdr <VtepMAC>` entry per remote VXLAN node (learning is off on
//!   `flannel.1`), and in switch mode each pod's address with the MAC of its `eth0`, from the
//!   CNI ADD that made the interface. It lives in the immutable snapshot, so it never ages.
//! - [`LearntNeighbors`] holds what the workers learn from the wire: the extra addresses a pod
//!   may send from (its allowed source prefixes, say a keepalived VIP), on the port that last
//!   announced them, in a gratuitous ARP or as the source of a packet. It is shared by every
//!   snapshot and every worker: lookups and refreshes are lock-free (one atomic load of the
//!   entry list, one atomic store of the confirmation time), and only a new or moved entry
//!   copies the list (read-copy-update), which happens when an address moves, not per packet.
//! - Learnt entries age like Linux's: confirmed less than `reachable` ago, an entry is
//!   [`NeighborAnswer::Found`] (`REACHABLE`); for `gc_stale` more it is still used but
//!   [`NeighborAnswer::Stale`] (`STALE`); after that it is gone, and
//!   [`LearntNeighbors::expire`] removes it. The defaults are Linux's `base_reachable_time`
//!   (30 s) and `gc_stale_time` (60 s) from `/proc/sys/net/ipv4/neigh/*`; unlike Linux, the
//!   reachable time is not randomised, because nothing here sends unicast probes that would
//!   synchronise.
//! - A learnt entry never stands in for a permanent one: the forwarding core consults the
//!   learnt table only for addresses inside some pod's allowed source prefixes and not routed
//!   to a pod of their own (the kernel likewise refuses to let ARP replace a `NUD_PERMANENT`
//!   entry).
//! - Time is always an argument (smoltcp's `poll(timestamp)` habit): neither table reads a
//!   clock, so aging is tested with explicit instants.

use core::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;

use crate::time::{Duration, Instant};
use crate::wire::EthernetAddress;
use crate::PortId;

/// One permanent neighbour entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Neighbor {
    /// The neighbour's link-layer address.
    pub mac: EthernetAddress,
    /// The local port the neighbour is reached through, when it is on one; `None` for VTEP
    /// entries, which are reached through the overlay.
    pub port: Option<PortId>,
}

/// The answer to a learnt-neighbour lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NeighborAnswer {
    /// Confirmed within `reachable`.
    Found(EthernetAddress),
    /// Past `reachable` but within `gc_stale` after it: still used (Linux keeps using a `STALE`
    /// entry while it re-confirms it).
    Stale(EthernetAddress),
}

/// The permanent neighbour table (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct NeighborTable {
    entries: FxHashMap<Ipv4Addr, Neighbor>,
}

impl NeighborTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs a permanent entry (flannel's `lladdr <VtepMAC> PERMANENT`), replacing whatever was
    /// there; returns the replaced entry.
    pub fn insert_permanent(
        &mut self,
        ip: Ipv4Addr,
        mac: EthernetAddress,
        port: Option<PortId>,
    ) -> Option<Neighbor> {
        self.entries.insert(ip, Neighbor { mac, port })
    }

    /// Removes the entry for `ip`, returning it.
    pub fn remove(&mut self, ip: Ipv4Addr) -> Option<Neighbor> {
        self.entries.remove(&ip)
    }

    /// Replaces every entry with `entries`. When an address repeats, the last one wins.
    pub fn replace_permanent(
        &mut self,
        entries: impl IntoIterator<Item = (Ipv4Addr, EthernetAddress, Option<PortId>)>,
    ) {
        self.entries.clear();
        for (ip, mac, port) in entries {
            self.insert_permanent(ip, mac, port);
        }
    }

    /// The entry for `ip`.
    pub fn get(&self, ip: Ipv4Addr) -> Option<&Neighbor> {
        self.entries.get(&ip)
    }

    /// The MAC of `ip`, if the table has it.
    #[inline]
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<EthernetAddress> {
        self.entries.get(&ip).map(|n| n.mac)
    }

    /// All entries, sorted by address.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, Neighbor)> + '_ {
        let mut all: Vec<(Ipv4Addr, Neighbor)> =
            self.entries.iter().map(|(&ip, &n)| (ip, n)).collect();
        all.sort_unstable_by_key(|&(ip, _)| ip);
        all.into_iter()
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the table holds no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Display for Neighbor {
    /// Formats the part of an `ip neigh` line after the address: `dev <port> lladdr <mac>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(port) = self.port {
            write!(f, "dev {port} ")?;
        }
        write!(f, "lladdr {}", self.mac)
    }
}

/// How long learnt entries live: `reachable`, then `gc_stale` more as `STALE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aging {
    /// A learnt entry confirmed less than this ago is `REACHABLE` (Linux's `base_reachable_time`).
    pub reachable: Duration,
    /// How long it stays `STALE` after that before it is gone (Linux's `gc_stale_time`).
    pub gc_stale: Duration,
}

impl Default for Aging {
    /// Linux's defaults: 30 s reachable, 60 s more stale.
    fn default() -> Self {
        Aging {
            reachable: Duration::from_secs(30),
            gc_stale: Duration::from_secs(60),
        }
    }
}

/// How fresh a learnt entry is at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    Reachable,
    Stale,
    Expired,
}

impl Aging {
    fn freshness(self, confirmed_micros: u64, now: Instant) -> Freshness {
        let age = now.as_micros().saturating_sub(confirmed_micros);
        let reachable = self.reachable.as_micros();
        if age < reachable {
            Freshness::Reachable
        } else if age < reachable.saturating_add(self.gc_stale.as_micros()) {
            Freshness::Stale
        } else {
            Freshness::Expired
        }
    }

    /// A refresh closer than this to the last one is not written: a busy flow from a learnt
    /// address then costs one atomic load per packet, not a store to a shared cache line.
    fn refresh_step(self) -> u64 {
        self.reachable.as_micros() / 16
    }
}

/// What [`LearntNeighbors::confirm`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learning {
    /// The address was not in the table; now it is.
    New,
    /// The address was learnt on another port or MAC; it moved here.
    Moved {
        /// The port it was on.
        from: PortId,
    },
    /// The entry was already this; its confirmation time moved on.
    Refreshed,
    /// The table is full of live entries: not learnt (counted in
    /// [`LearntNeighbors::refused`]).
    Refused,
}

/// One learnt entry as [`LearntNeighbors::entries`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearntEntry {
    /// The learnt address.
    pub ip: Ipv4Addr,
    /// The port it was last announced on.
    pub port: PortId,
    /// The MAC it was announced from.
    pub mac: EthernetAddress,
    /// `REACHABLE` or `STALE`, as `ip neigh` names them.
    pub state: &'static str,
}

#[derive(Debug)]
struct Learnt {
    ip: Ipv4Addr,
    port: PortId,
    mac: EthernetAddress,
    /// Microseconds on the caller's clock; only ever moves forward.
    confirmed: AtomicU64,
}

/// The table of learnt neighbours, shared by all workers (see the module docs).
#[derive(Debug)]
pub struct LearntNeighbors {
    entries: ArcSwap<Vec<Arc<Learnt>>>,
    aging: Aging,
    capacity: usize,
    refused: AtomicU64,
}

impl Default for LearntNeighbors {
    fn default() -> Self {
        Self::new(Aging::default(), Self::DEFAULT_CAPACITY)
    }
}

impl LearntNeighbors {
    /// The default bound on live entries. Only addresses inside some pod's allowed source
    /// prefixes are ever learnt, so this bounds what a pod with a wide prefix can make the
    /// table hold, not what normal use needs.
    pub const DEFAULT_CAPACITY: usize = 256;

    /// An empty table aging entries by `aging`, holding at most `capacity` live ones.
    pub fn new(aging: Aging, capacity: usize) -> Self {
        LearntNeighbors {
            entries: ArcSwap::from_pointee(Vec::new()),
            aging,
            capacity,
            refused: AtomicU64::new(0),
        }
    }

    /// How entries age.
    pub fn aging(&self) -> Aging {
        self.aging
    }

    /// Records that `ip` was announced from `mac` on `port` at `now`: creates, moves or
    /// refreshes its entry. When the table is full, expired entries make room first; if none
    /// has expired, the address is refused.
    pub fn confirm(
        &self,
        ip: Ipv4Addr,
        port: PortId,
        mac: EthernetAddress,
        now: Instant,
    ) -> Learning {
        let now_us = now.as_micros();
        {
            let cur = self.entries.load();
            if let Some(e) = cur.iter().find(|e| e.ip == ip) {
                if e.port == port && e.mac == mac {
                    let last = e.confirmed.load(Ordering::Relaxed);
                    if now_us.saturating_sub(last) >= self.aging.refresh_step() {
                        e.confirmed.fetch_max(now_us, Ordering::Relaxed);
                    }
                    return Learning::Refreshed;
                }
            }
        }
        // A new or moved entry: copy the list (rare, see the module docs).
        let mut outcome = Learning::Refused;
        self.entries.rcu(|cur| {
            let old = cur.iter().find(|e| e.ip == ip);
            let mut next: Vec<Arc<Learnt>> = cur
                .iter()
                .filter(|e| e.ip != ip)
                .filter(|e| {
                    self.aging
                        .freshness(e.confirmed.load(Ordering::Relaxed), now)
                        != Freshness::Expired
                })
                .cloned()
                .collect();
            if old.is_none() && next.len() >= self.capacity {
                outcome = Learning::Refused;
                return Arc::clone(cur);
            }
            outcome = match old {
                Some(o) if o.port == port && o.mac == mac => Learning::Refreshed,
                Some(o) => Learning::Moved { from: o.port },
                None => Learning::New,
            };
            next.push(Arc::new(Learnt {
                ip,
                port,
                mac,
                confirmed: AtomicU64::new(now_us),
            }));
            Arc::new(next)
        });
        if outcome == Learning::Refused {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    /// The port and MAC `ip` was learnt on, if its entry is live at `now`.
    #[inline]
    pub fn lookup(&self, ip: Ipv4Addr, now: Instant) -> Option<(PortId, NeighborAnswer)> {
        let cur = self.entries.load();
        let e = cur.iter().find(|e| e.ip == ip)?;
        match self
            .aging
            .freshness(e.confirmed.load(Ordering::Relaxed), now)
        {
            Freshness::Reachable => Some((e.port, NeighborAnswer::Found(e.mac))),
            Freshness::Stale => Some((e.port, NeighborAnswer::Stale(e.mac))),
            Freshness::Expired => None,
        }
    }

    /// Removes the entries that [`LearntNeighbors::lookup`] at `now` would no longer answer;
    /// returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        self.retain(|e| {
            self.aging
                .freshness(e.confirmed.load(Ordering::Relaxed), now)
                != Freshness::Expired
        })
    }

    /// Removes every entry learnt on `port` (its pod is gone, and the port id may be reused);
    /// returns how many.
    pub fn forget_port(&self, port: PortId) -> usize {
        self.retain(|e| e.port != port)
    }

    fn retain(&self, keep: impl Fn(&Learnt) -> bool) -> usize {
        let mut removed = 0;
        self.entries.rcu(|cur| {
            let next: Vec<Arc<Learnt>> = cur.iter().filter(|e| keep(e)).cloned().collect();
            removed = cur.len() - next.len();
            if removed == 0 {
                Arc::clone(cur)
            } else {
                Arc::new(next)
            }
        });
        removed
    }

    /// The live entries at `now`, sorted by address.
    pub fn entries(&self, now: Instant) -> Vec<LearntEntry> {
        let cur = self.entries.load();
        let mut all: Vec<LearntEntry> = cur
            .iter()
            .filter_map(|e| {
                let state = match self
                    .aging
                    .freshness(e.confirmed.load(Ordering::Relaxed), now)
                {
                    Freshness::Reachable => "REACHABLE",
                    Freshness::Stale => "STALE",
                    Freshness::Expired => return None,
                };
                Some(LearntEntry {
                    ip: e.ip,
                    port: e.port,
                    mac: e.mac,
                    state,
                })
            })
            .collect();
        all.sort_unstable_by_key(|e| e.ip);
        all
    }

    /// How many addresses were not learnt because the table was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    fn mac(last: u8) -> EthernetAddress {
        EthernetAddress([0x02, 0, 0, 0, 0, last])
    }

    const T0: Instant = Instant::from_secs(1000);

    fn at(s: u64) -> Instant {
        T0 + Duration::from_secs(s)
    }

    #[test]
    fn permanent_entries_replace_and_remove() {
        let mut t = NeighborTable::new();
        assert_eq!(t.insert_permanent(ip("10.244.2.0"), mac(2), None), None);
        assert_eq!(t.lookup(ip("10.244.2.0")), Some(mac(2)));
        t.insert_permanent(ip("10.244.3.0"), mac(3), None);
        t.replace_permanent([
            (ip("10.244.3.0"), mac(33), None),
            (ip("10.244.1.6"), mac(16), Some(PortId(1))),
        ]);
        let got: Vec<(Ipv4Addr, EthernetAddress)> = t.iter().map(|(ip, n)| (ip, n.mac)).collect();
        assert_eq!(
            got,
            [(ip("10.244.1.6"), mac(16)), (ip("10.244.3.0"), mac(33))]
        );
        assert_eq!(t.lookup(ip("10.244.2.0")), None);
        assert_eq!(t.remove(ip("10.244.3.0")).map(|n| n.mac), Some(mac(33)));
        assert_eq!(t.remove(ip("10.244.3.0")), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn learnt_entry_goes_reachable_stale_gone() {
        let t = LearntNeighbors::default();
        let a = ip("10.244.1.200");
        assert_eq!(t.confirm(a, PortId(3), mac(5), T0), Learning::New);
        assert_eq!(
            t.lookup(a, T0),
            Some((PortId(3), NeighborAnswer::Found(mac(5))))
        );
        // A clock that went backwards is treated as age zero.
        assert_eq!(
            t.lookup(a, Instant::ZERO),
            Some((PortId(3), NeighborAnswer::Found(mac(5))))
        );
        let just_before_stale = Instant::from_micros(at(30).as_micros() - 1);
        assert_eq!(
            t.lookup(a, just_before_stale).map(|(_, n)| n),
            Some(NeighborAnswer::Found(mac(5)))
        );
        assert_eq!(
            t.lookup(a, at(30)).map(|(_, n)| n),
            Some(NeighborAnswer::Stale(mac(5)))
        );
        assert_eq!(t.entries(at(30))[0].state, "STALE");
        let just_before_gone = Instant::from_micros(at(90).as_micros() - 1);
        assert_eq!(t.expire(just_before_gone), 0);
        assert_eq!(t.lookup(a, at(90)), None);
        assert!(t.entries(at(90)).is_empty());
        assert_eq!(t.expire(at(90)), 1);
        assert_eq!(t.lookup(a, T0), None, "expire removed it");
    }

    #[test]
    fn learning_refreshes_and_moves() {
        let aging = Aging {
            reachable: Duration::from_secs(5),
            gc_stale: Duration::from_secs(10),
        };
        let t = LearntNeighbors::new(aging, 8);
        assert_eq!(t.aging(), aging);
        let a = ip("10.244.1.9");
        t.confirm(a, PortId(1), mac(1), T0);
        assert_eq!(
            t.lookup(a, at(6)).map(|(_, n)| n),
            Some(NeighborAnswer::Stale(mac(1)))
        );
        assert_eq!(t.confirm(a, PortId(1), mac(1), at(6)), Learning::Refreshed);
        assert_eq!(
            t.lookup(a, at(6)).map(|(_, n)| n),
            Some(NeighborAnswer::Found(mac(1)))
        );
        // A refresh within the step is not written, and is not needed.
        assert_eq!(
            t.confirm(a, PortId(1), mac(1), at(6) + Duration::from_millis(10)),
            Learning::Refreshed
        );
        // The address moved to another pod (a VIP failing over).
        assert_eq!(
            t.confirm(a, PortId(2), mac(2), at(7)),
            Learning::Moved { from: PortId(1) }
        );
        assert_eq!(
            t.entries(at(7)),
            [LearntEntry {
                ip: a,
                port: PortId(2),
                mac: mac(2),
                state: "REACHABLE"
            }]
        );
        assert_eq!(t.forget_port(PortId(1)), 0);
        assert_eq!(t.forget_port(PortId(2)), 1);
        assert_eq!(t.lookup(a, at(7)), None);
    }

    #[test]
    fn a_full_table_makes_room_from_expired_entries_only() {
        let aging = Aging {
            reachable: Duration::from_secs(1),
            gc_stale: Duration::from_secs(1),
        };
        let t = LearntNeighbors::new(aging, 2);
        t.confirm(ip("10.0.0.1"), PortId(1), mac(1), T0);
        t.confirm(ip("10.0.0.2"), PortId(1), mac(1), at(1));
        assert_eq!(
            t.confirm(ip("10.0.0.3"), PortId(1), mac(1), at(1)),
            Learning::Refused
        );
        assert_eq!(t.refused(), 1);
        // At T0 + 2 s the first has expired: it makes room.
        assert_eq!(
            t.confirm(ip("10.0.0.3"), PortId(1), mac(1), at(2)),
            Learning::New
        );
        let ips: Vec<Ipv4Addr> = t.entries(at(2)).iter().map(|e| e.ip).collect();
        assert_eq!(ips, [ip("10.0.0.2"), ip("10.0.0.3")]);
        // An address already held is never refused, even when full.
        assert_eq!(
            t.confirm(ip("10.0.0.2"), PortId(2), mac(2), at(2)),
            Learning::Moved { from: PortId(1) }
        );
    }

    #[test]
    fn workers_learn_concurrently_without_losing_entries() {
        let t = Arc::new(LearntNeighbors::default());
        let threads: Vec<_> = (0..4u8)
            .map(|w| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    for i in 0..50u8 {
                        let a = Ipv4Addr::new(10, 1, w, i);
                        t.confirm(a, PortId(u16::from(w)), mac(w), T0);
                        assert!(t.lookup(a, T0).is_some());
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().expect("worker thread");
        }
        assert_eq!(t.entries(T0).len(), 200);
    }

    #[test]
    fn display() {
        let n = Neighbor {
            mac: mac(2),
            port: Some(PortId(1)),
        };
        assert_eq!(n.to_string(), "dev port1 lladdr 02:00:00:00:00:02");
        let n = Neighbor { port: None, ..n };
        assert_eq!(n.to_string(), "lladdr 02:00:00:00:00:02");
    }
}
