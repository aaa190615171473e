//! The IPv4 neighbour table: IPv4 address to MAC, the userspace analogue of `ip neigh`.
//!
//! # What this module promises
//!
//! - Flannel's VXLAN backend installs one `<remote subnet>.0 lladdr <VtepMAC> PERMANENT` entry per
//!   remote node and disables learning on `flannel.1`; those entries are
//!   [`insert_permanent`](NeighborTable::insert_permanent)ed or
//!   [`replace_permanent`](NeighborTable::replace_permanent)d by the control side, and nothing
//!   the dataplane learns ever overrides them (the kernel likewise refuses to let ARP replace a
//!   `NUD_PERMANENT` entry).
//! - Entries learned from ARP on local ports age like Linux's: an entry confirmed less than
//!   `reachable_time` ago is usable ([`NeighborAnswer::Found`], `REACHABLE`); after that and for
//!   `gc_stale_time` more it is still usable but should be re-confirmed
//!   ([`NeighborAnswer::Stale`], `STALE`); after that it is gone ([`NeighborAnswer::NotFound`]) and
//!   [`expire`](NeighborTable::expire) removes it. The defaults are Linux's
//!   `base_reachable_time` (30 s) and `gc_stale_time` (60 s) from `/proc/sys/net/ipv4/neigh/*`;
//!   unlike Linux, the reachable time is not randomised, because nothing here sends unicast probes
//!   that would synchronise.
//! - Time is always an argument (smoltcp's `poll(timestamp)` habit): the table never reads a clock,
//!   so lookups are pure and aging is tested with explicit instants.

use core::fmt;
use std::net::Ipv4Addr;

use rustc_hash::FxHashMap;

use crate::time::{Duration, Instant};
use crate::wire::EthernetAddress;
use crate::PortId;

/// How a neighbour entry came to be, which decides how it ages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NeighState {
    /// Installed by the control side (flannel's `PERMANENT` VTEP entries); never ages, never
    /// overridden by learning.
    Permanent,
    /// Learned from the wire; usable while `confirmed` is recent enough.
    Reachable {
        /// When the mapping was last confirmed by a packet from the neighbour.
        confirmed: Instant,
    },
}

/// One neighbour entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Neighbor {
    /// The neighbour's link-layer address.
    pub mac: EthernetAddress,
    /// Permanent or learned, and when it was confirmed.
    pub state: NeighState,
    /// The local port the neighbour is reached through, when it is on one; `None` for VTEP
    /// entries, which are reached through the overlay.
    pub port: Option<PortId>,
}

/// The answer to a neighbour lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NeighborAnswer {
    /// A permanent entry, or a learned one confirmed within `reachable_time`.
    Found(EthernetAddress),
    /// A learned entry past `reachable_time` but within `gc_stale_time` after it: usable, but the
    /// caller may want to re-confirm it (Linux sends a probe and keeps using the address).
    Stale(EthernetAddress),
    /// No usable entry: resolving the address is the caller's business (flannel does no L3-miss
    /// handling, so for VTEP gateways this means the control side has not programmed the peer).
    NotFound,
}

/// Linux's `base_reachable_time` default.
const DEFAULT_REACHABLE_TIME: Duration = Duration::from_secs(30);
/// Linux's `gc_stale_time` default.
const DEFAULT_GC_STALE_TIME: Duration = Duration::from_secs(60);

/// How fresh a learned entry is at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    Permanent,
    Reachable,
    Stale,
    Expired,
}

/// The neighbour table (see the module docs for its aging rules).
#[derive(Debug, Clone)]
pub struct NeighborTable {
    entries: FxHashMap<Ipv4Addr, Neighbor>,
    /// A learned entry younger than this is `Found`.
    reachable_time: Duration,
    /// `reachable_time + gc_stale_time`: a learned entry younger than this is `Stale`, older gone.
    stale_until: Duration,
}

impl Default for NeighborTable {
    fn default() -> Self {
        Self::with_aging(DEFAULT_REACHABLE_TIME, DEFAULT_GC_STALE_TIME)
    }
}

impl NeighborTable {
    /// An empty table with Linux's default aging (30 s reachable, 60 s more stale).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty table whose learned entries are `Found` for `reachable` after confirmation, then
    /// `Stale` for `gc_stale` more, then gone.
    pub fn with_aging(reachable: Duration, gc_stale: Duration) -> Self {
        NeighborTable {
            entries: FxHashMap::default(),
            reachable_time: reachable,
            stale_until: Duration::from_micros(
                reachable.as_micros().saturating_add(gc_stale.as_micros()),
            ),
        }
    }

    /// How long a learned entry stays `Found` after confirmation.
    pub fn reachable_time(&self) -> Duration {
        self.reachable_time
    }

    /// How long a learned entry stays `Stale` after it stops being `Found`.
    pub fn gc_stale_time(&self) -> Duration {
        Duration::from_micros(self.stale_until.as_micros() - self.reachable_time.as_micros())
    }

    /// Installs a permanent entry (flannel's `lladdr <VtepMAC> PERMANENT`), replacing whatever was
    /// there, learned or permanent; returns the replaced entry.
    pub fn insert_permanent(
        &mut self,
        ip: Ipv4Addr,
        mac: EthernetAddress,
        port: Option<PortId>,
    ) -> Option<Neighbor> {
        self.entries.insert(
            ip,
            Neighbor {
                mac,
                state: NeighState::Permanent,
                port,
            },
        )
    }

    /// Records that `ip` was seen at `mac` on `port` at `now`, creating or refreshing a learned
    /// entry. Does nothing to a permanent entry: the control side's word wins over the wire's.
    pub fn learn(
        &mut self,
        ip: Ipv4Addr,
        mac: EthernetAddress,
        port: Option<PortId>,
        now: Instant,
    ) {
        let learned = Neighbor {
            mac,
            state: NeighState::Reachable { confirmed: now },
            port,
        };
        self.entries
            .entry(ip)
            .and_modify(|n| {
                if n.state != NeighState::Permanent {
                    *n = learned;
                }
            })
            .or_insert(learned);
    }

    /// Removes the entry for `ip`, permanent or learned, returning it.
    pub fn remove(&mut self, ip: Ipv4Addr) -> Option<Neighbor> {
        self.entries.remove(&ip)
    }

    /// Replaces every permanent entry with `entries` (all permanent) and keeps the learned ones,
    /// except those whose address one of `entries` now claims. When an address repeats, the last
    /// one wins.
    pub fn replace_permanent(
        &mut self,
        entries: impl IntoIterator<Item = (Ipv4Addr, EthernetAddress, Option<PortId>)>,
    ) {
        self.entries.retain(|_, n| n.state != NeighState::Permanent);
        for (ip, mac, port) in entries {
            self.insert_permanent(ip, mac, port);
        }
    }

    /// The entry for `ip` as stored, whatever its age.
    pub fn get(&self, ip: Ipv4Addr) -> Option<&Neighbor> {
        self.entries.get(&ip)
    }

    /// The MAC to use for `ip` at `now` (see [`NeighborAnswer`]).
    #[inline]
    pub fn lookup(&self, ip: Ipv4Addr, now: Instant) -> NeighborAnswer {
        match self.entries.get(&ip) {
            None => NeighborAnswer::NotFound,
            Some(n) => match self.freshness(n, now) {
                Freshness::Permanent | Freshness::Reachable => NeighborAnswer::Found(n.mac),
                Freshness::Stale => NeighborAnswer::Stale(n.mac),
                Freshness::Expired => NeighborAnswer::NotFound,
            },
        }
    }

    /// Removes the learned entries that `lookup` at `now` would no longer answer, returning how
    /// many it removed. Permanent entries stay.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        let stale_until = self.stale_until;
        self.entries.retain(|_, n| match n.state {
            NeighState::Permanent => true,
            NeighState::Reachable { confirmed } => now.saturating_since(confirmed) < stale_until,
        });
        before - self.entries.len()
    }

    /// The state of the entry for `ip` at `now` as `ip neigh` names it: `PERMANENT`, `REACHABLE`
    /// or `STALE`; `NONE` (Linux's `NUD_NONE`) when there is no usable entry.
    pub fn state_name(&self, ip: Ipv4Addr, now: Instant) -> &'static str {
        match self.entries.get(&ip).map(|n| self.freshness(n, now)) {
            Some(Freshness::Permanent) => "PERMANENT",
            Some(Freshness::Reachable) => "REACHABLE",
            Some(Freshness::Stale) => "STALE",
            Some(Freshness::Expired) | None => "NONE",
        }
    }

    /// All entries, sorted by address.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, Neighbor)> + '_ {
        let mut all: Vec<(Ipv4Addr, Neighbor)> =
            self.entries.iter().map(|(&ip, &n)| (ip, n)).collect();
        all.sort_unstable_by_key(|&(ip, _)| ip);
        all.into_iter()
    }

    /// The number of entries, including learned ones past their time that `expire` has not yet
    /// removed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the table holds no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[inline]
    fn freshness(&self, n: &Neighbor, now: Instant) -> Freshness {
        match n.state {
            NeighState::Permanent => Freshness::Permanent,
            NeighState::Reachable { confirmed } => {
                let age = now.saturating_since(confirmed);
                if age < self.reachable_time {
                    Freshness::Reachable
                } else if age < self.stale_until {
                    Freshness::Stale
                } else {
                    Freshness::Expired
                }
            }
        }
    }
}

impl fmt::Display for Neighbor {
    /// Formats the time-independent part of an `ip neigh` line: `lladdr <mac>` and the port;
    /// the state needs `now`, see [`NeighborTable::state_name`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(port) = self.port {
            write!(f, "dev {port} ")?;
        }
        write!(f, "lladdr {}", self.mac)
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

    #[test]
    fn permanent_entries_never_age() {
        let mut t = NeighborTable::new();
        assert_eq!(t.insert_permanent(ip("10.244.2.0"), mac(2), None), None);
        let later = T0 + Duration::from_secs(1_000_000);
        assert_eq!(
            t.lookup(ip("10.244.2.0"), later),
            NeighborAnswer::Found(mac(2))
        );
        assert_eq!(t.state_name(ip("10.244.2.0"), later), "PERMANENT");
        assert_eq!(t.expire(later), 0);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn learned_entry_goes_reachable_stale_gone() {
        let mut t = NeighborTable::new();
        let a = ip("10.244.1.5");
        t.learn(a, mac(5), Some(PortId(3)), T0);
        let at = |s: u64| T0 + Duration::from_secs(s);
        let micro = Duration::from_micros(1);
        assert_eq!(t.lookup(a, T0), NeighborAnswer::Found(mac(5)));
        assert_eq!(t.state_name(a, T0), "REACHABLE");
        // A clock that went backwards is treated as age zero.
        assert_eq!(t.lookup(a, Instant::ZERO), NeighborAnswer::Found(mac(5)));
        let just_before_stale = Instant::from_micros(at(30).as_micros() - 1);
        assert_eq!(
            t.lookup(a, just_before_stale),
            NeighborAnswer::Found(mac(5))
        );
        assert_eq!(t.lookup(a, at(30)), NeighborAnswer::Stale(mac(5)));
        assert_eq!(t.state_name(a, at(30)), "STALE");
        let just_before_gone = Instant::from_micros(at(90).as_micros() - 1);
        assert_eq!(t.lookup(a, just_before_gone), NeighborAnswer::Stale(mac(5)));
        assert_eq!(t.expire(just_before_gone), 0);
        assert_eq!(t.lookup(a, at(90)), NeighborAnswer::NotFound);
        assert_eq!(t.state_name(a, at(90)), "NONE");
        assert_eq!(t.len(), 1, "lookup does not remove");
        assert_eq!(t.expire(at(90) + micro), 1);
        assert!(t.is_empty());
        assert_eq!(t.get(a), None);
    }

    #[test]
    fn learning_refreshes_and_moves() {
        let mut t = NeighborTable::with_aging(Duration::from_secs(5), Duration::from_secs(10));
        assert_eq!(t.reachable_time(), Duration::from_secs(5));
        assert_eq!(t.gc_stale_time(), Duration::from_secs(10));
        let a = ip("10.244.1.9");
        t.learn(a, mac(1), Some(PortId(1)), T0);
        let t6 = T0 + Duration::from_secs(6);
        assert_eq!(t.lookup(a, t6), NeighborAnswer::Stale(mac(1)));
        // Re-confirmed, from a new MAC on a new port (a pod restarted with the same IP).
        t.learn(a, mac(2), Some(PortId(2)), t6);
        assert_eq!(t.lookup(a, t6), NeighborAnswer::Found(mac(2)));
        assert_eq!(
            t.get(a),
            Some(&Neighbor {
                mac: mac(2),
                state: NeighState::Reachable { confirmed: t6 },
                port: Some(PortId(2)),
            })
        );
        assert_eq!(t.expire(T0 + Duration::from_secs(15)), 0);
        assert_eq!(t.expire(t6 + Duration::from_secs(15)), 1);
    }

    #[test]
    fn learn_never_overrides_permanent() {
        let mut t = NeighborTable::new();
        let gw = ip("10.244.2.0");
        t.insert_permanent(gw, mac(2), None);
        t.learn(gw, mac(66), Some(PortId(9)), T0);
        let n = t.get(gw).expect("present");
        assert_eq!(n.mac, mac(2));
        assert_eq!(n.state, NeighState::Permanent);
        assert_eq!(n.port, None);
        // But a permanent insert does override a learned entry.
        let pod = ip("10.244.1.3");
        t.learn(pod, mac(3), Some(PortId(1)), T0);
        let old = t.insert_permanent(pod, mac(4), Some(PortId(1)));
        assert_eq!(old.map(|n| n.mac), Some(mac(3)));
        assert_eq!(t.state_name(pod, T0), "PERMANENT");
    }

    #[test]
    fn replace_permanent_keeps_learned() {
        let mut t = NeighborTable::new();
        t.insert_permanent(ip("10.244.2.0"), mac(2), None);
        t.insert_permanent(ip("10.244.3.0"), mac(3), None);
        t.learn(ip("10.244.1.5"), mac(5), Some(PortId(1)), T0);
        t.learn(ip("10.244.1.6"), mac(6), Some(PortId(1)), T0);
        t.replace_permanent([
            (ip("10.244.3.0"), mac(33), None),
            (ip("10.244.4.0"), mac(4), None),
            (ip("10.244.1.6"), mac(16), Some(PortId(1))),
        ]);
        let got: Vec<(Ipv4Addr, EthernetAddress, bool)> = t
            .iter()
            .map(|(ip, n)| (ip, n.mac, n.state == NeighState::Permanent))
            .collect();
        assert_eq!(
            got,
            [
                (ip("10.244.1.5"), mac(5), false),
                (ip("10.244.1.6"), mac(16), true),
                (ip("10.244.3.0"), mac(33), true),
                (ip("10.244.4.0"), mac(4), true),
            ]
        );
        assert_eq!(t.remove(ip("10.244.4.0")).map(|n| n.mac), Some(mac(4)));
        assert_eq!(t.remove(ip("10.244.4.0")), None);
        assert_eq!(t.lookup(ip("10.244.4.0"), T0), NeighborAnswer::NotFound);
    }

    #[test]
    fn display() {
        let n = Neighbor {
            mac: mac(2),
            state: NeighState::Permanent,
            port: Some(PortId(1)),
        };
        assert_eq!(n.to_string(), "dev port1 lladdr 02:00:00:00:00:02");
        let n = Neighbor { port: None, ..n };
        assert_eq!(n.to_string(), "lladdr 02:00:00:00:00:02");
    }
}
