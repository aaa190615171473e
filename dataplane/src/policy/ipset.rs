//! Sets of IPv4 addresses as sorted, disjoint, non-adjacent inclusive ranges.
//!
//! A NetworkPolicy peer list compiles to one [`IpSet`]: pod and namespace selectors become the
//! selected pods' addresses, an `ipBlock` becomes its CIDR with the `except` prefixes cut out as
//! holes. Ranges rather than prefixes because `except` leaves holes that are not prefixes of the
//! block's length, and because the union of many rules' sets (the index in
//! [`table`](super::table)) is a sweep over range boundaries. Membership is one binary search.

use core::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// A set of IPv4 addresses, kept as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct IpSet {
    /// `(first, last)`, both inclusive, sorted by `first`; two ranges never touch or overlap.
    ranges: Box<[(u32, u32)]>,
}

impl IpSet {
    /// The empty set.
    pub fn empty() -> IpSet {
        IpSet::default()
    }

    /// Every IPv4 address (`0.0.0.0/0`).
    pub fn all() -> IpSet {
        IpSet {
            ranges: Box::new([(0, u32::MAX)]),
        }
    }

    /// The addresses of `prefix`.
    pub fn from_prefix(prefix: Ipv4Net) -> IpSet {
        IpSet {
            ranges: Box::new([prefix_range(prefix)]),
        }
    }

    /// An `ipBlock`: the addresses of `cidr` except those of any prefix in `except`. An `except`
    /// prefix reaching outside `cidr` only removes the part inside it (the API server refuses
    /// such blocks; we do not rely on it).
    pub fn from_block(cidr: Ipv4Net, except: &[Ipv4Net]) -> IpSet {
        let holes = IpSet::from_ranges(except.iter().map(|&p| prefix_range(p)));
        IpSet::from_prefix(cidr).difference(&holes)
    }

    /// The set of these addresses.
    pub fn from_addrs(addrs: impl IntoIterator<Item = Ipv4Addr>) -> IpSet {
        IpSet::from_ranges(addrs.into_iter().map(|a| {
            let a = u32::from(a);
            (a, a)
        }))
    }

    /// The union of arbitrary inclusive ranges (`first > last` ranges are ignored).
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u32, u32)>) -> IpSet {
        let mut v: Vec<(u32, u32)> = ranges.into_iter().filter(|r| r.0 <= r.1).collect();
        v.sort_unstable();
        let mut out: Vec<(u32, u32)> = Vec::with_capacity(v.len());
        for (first, last) in v {
            match out.last_mut() {
                // Overlapping or adjacent: merge. `prev.1 + 1` cannot overflow here because a
                // range ending at u32::MAX leaves nothing after it to sort later.
                Some(prev) if u64::from(first) <= u64::from(prev.1) + 1 => {
                    prev.1 = prev.1.max(last);
                }
                _ => out.push((first, last)),
            }
        }
        IpSet {
            ranges: out.into_boxed_slice(),
        }
    }

    /// True when `addr` is in the set.
    #[inline]
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let a = u32::from(addr);
        let i = self.ranges.partition_point(|&(first, _)| first <= a);
        i > 0 && self.ranges[i - 1].1 >= a
    }

    /// True when the set holds no address.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The inclusive ranges, sorted, disjoint and non-adjacent.
    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.ranges
    }

    /// The addresses in either set.
    pub fn union(&self, other: &IpSet) -> IpSet {
        IpSet::from_ranges(self.ranges.iter().chain(other.ranges.iter()).copied())
    }

    /// The addresses in both sets.
    pub fn intersection(&self, other: &IpSet) -> IpSet {
        let (a, b) = (&self.ranges, &other.ranges);
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < a.len() && j < b.len() {
            let first = a[i].0.max(b[j].0);
            let last = a[i].1.min(b[j].1);
            if first <= last {
                out.push((first, last));
            }
            if a[i].1 < b[j].1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        // Pieces of disjoint, sorted inputs are disjoint and sorted; they may touch only where
        // an input range did not, so no merge is needed.
        IpSet {
            ranges: out.into_boxed_slice(),
        }
    }

    /// The addresses in `self` but not in `other`.
    pub fn difference(&self, other: &IpSet) -> IpSet {
        let mut out = Vec::new();
        let mut j = 0;
        for &(first, last) in self.ranges.iter() {
            let mut cur = u64::from(first);
            let last = u64::from(last);
            while j < other.ranges.len() && u64::from(other.ranges[j].1) < cur {
                j += 1;
            }
            let mut k = j;
            while cur <= last && k < other.ranges.len() && u64::from(other.ranges[k].0) <= last {
                let (hole_first, hole_last) =
                    (u64::from(other.ranges[k].0), u64::from(other.ranges[k].1));
                if hole_first > cur {
                    out.push((cur as u32, (hole_first - 1) as u32));
                }
                cur = cur.max(hole_last + 1);
                k += 1;
            }
            if cur <= last {
                out.push((cur as u32, last as u32));
            }
        }
        IpSet {
            ranges: out.into_boxed_slice(),
        }
    }
}

/// The inclusive address range of a prefix.
fn prefix_range(prefix: Ipv4Net) -> (u32, u32) {
    (u32::from(prefix.network()), u32::from(prefix.broadcast()))
}

impl fmt::Display for IpSet {
    /// Formats as a comma-separated list of `a.b.c.d` or `a.b.c.d-e.f.g.h` ranges, `(none)`
    /// when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ranges.is_empty() {
            return f.write_str("(none)");
        }
        for (i, &(first, last)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if first == last {
                write!(f, "{}", Ipv4Addr::from(first))?;
            } else {
                write!(f, "{}-{}", Ipv4Addr::from(first), Ipv4Addr::from(last))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test prefix")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    #[test]
    fn block_with_except_has_holes() {
        // The REFERENCE example: 172.17.0.0/16 except 172.17.1.0/24.
        let s = IpSet::from_block(net("172.17.0.0/16"), &[net("172.17.1.0/24")]);
        assert!(s.contains(ip("172.17.0.0")));
        assert!(s.contains(ip("172.17.0.255")));
        assert!(!s.contains(ip("172.17.1.0")));
        assert!(!s.contains(ip("172.17.1.255")));
        assert!(s.contains(ip("172.17.2.0")));
        assert!(s.contains(ip("172.17.255.255")));
        assert!(!s.contains(ip("172.16.255.255")));
        assert!(!s.contains(ip("172.18.0.0")));
        assert_eq!(
            s.to_string(),
            "172.17.0.0-172.17.0.255,172.17.2.0-172.17.255.255"
        );
    }

    #[test]
    fn except_edges_and_whole_space() {
        let s = IpSet::from_block(
            net("0.0.0.0/0"),
            &[
                net("0.0.0.0/8"),
                net("255.255.255.255/32"),
                net("10.0.0.0/8"),
            ],
        );
        assert!(!s.contains(ip("0.1.2.3")));
        assert!(s.contains(ip("1.0.0.0")));
        assert!(!s.contains(ip("10.200.0.1")));
        assert!(s.contains(ip("11.0.0.0")));
        assert!(s.contains(ip("255.255.255.254")));
        assert!(!s.contains(ip("255.255.255.255")));
        // An except covering the whole block leaves nothing; one outside it changes nothing.
        assert!(IpSet::from_block(net("10.1.0.0/16"), &[net("10.0.0.0/8")]).is_empty());
        assert_eq!(
            IpSet::from_block(net("10.1.0.0/16"), &[net("192.168.0.0/16")]),
            IpSet::from_prefix(net("10.1.0.0/16"))
        );
    }

    #[test]
    fn addresses_merge_into_ranges() {
        let s = IpSet::from_addrs([
            ip("10.0.0.3"),
            ip("10.0.0.1"),
            ip("10.0.0.2"),
            ip("10.0.0.9"),
        ]);
        assert_eq!(s.to_string(), "10.0.0.1-10.0.0.3,10.0.0.9");
        assert_eq!(IpSet::empty().to_string(), "(none)");
        assert!(IpSet::all().contains(ip("0.0.0.0")));
        assert!(IpSet::all().contains(ip("255.255.255.255")));
    }

    fn arb_set() -> impl Strategy<Value = (IpSet, Vec<(u32, u32)>)> {
        // Small address space so that ranges overlap, touch and nest often.
        prop::collection::vec((0u32..200, 0u32..20), 0..8).prop_map(|v| {
            let raw: Vec<(u32, u32)> = v.into_iter().map(|(a, l)| (a, a + l)).collect();
            (IpSet::from_ranges(raw.iter().copied()), raw)
        })
    }

    fn in_raw(raw: &[(u32, u32)], a: u32) -> bool {
        raw.iter().any(|&(f, l)| f <= a && a <= l)
    }

    proptest! {
        #[test]
        fn set_algebra_matches_a_linear_reference(
            (a, ra) in arb_set(),
            (b, rb) in arb_set(),
        ) {
            let (u, i, d) = (a.union(&b), a.intersection(&b), a.difference(&b));
            for set in [&a, &b, &u, &i, &d] {
                // Canonical: sorted, disjoint, not adjacent.
                for w in set.ranges().windows(2) {
                    prop_assert!(u64::from(w[0].1) + 1 < u64::from(w[1].0));
                }
            }
            for x in 0u32..230 {
                let addr = Ipv4Addr::from(x);
                let (ina, inb) = (in_raw(&ra, x), in_raw(&rb, x));
                prop_assert_eq!(a.contains(addr), ina);
                prop_assert_eq!(u.contains(addr), ina || inb);
                prop_assert_eq!(i.contains(addr), ina && inb);
                prop_assert_eq!(d.contains(addr), ina && !inb);
            }
        }
    }
}
