//! The forwarding database: where a MAC address lives, the userspace analogue of `bridge fdb`.
//!
//! # What this module promises
//!
//! Flannel's VXLAN backend runs `flannel.1` with learning off and installs, per remote node, one
//! `<VtepMAC> dst <PublicIP>` entry: that is [`FdbEntry::Remote`], and it is the only way a VTEP
//! MAC resolves to an underlay address (no L2-miss handling, no flooding). [`FdbEntry::Local`]
//! covers MACs reached through a local port. The table is exact-match, written only by the control
//! side, and never ages, since flannel's entries are all static (`bridge fdb` shows them
//! `self permanent`).

use core::fmt;
use std::net::Ipv4Addr;

use rustc_hash::FxHashMap;

use crate::wire::EthernetAddress;
use crate::PortId;

/// Where frames for a MAC address go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FdbEntry {
    /// Behind a remote VTEP: encapsulate toward `vtep` (flannel's `dst <PublicIP>`).
    Remote {
        /// The remote node's underlay address, the outer IPv4 destination.
        vtep: Ipv4Addr,
    },
    /// On a local port.
    Local {
        /// The port the MAC is reached through.
        port: PortId,
    },
}

impl fmt::Display for FdbEntry {
    /// Formats the part of a `bridge fdb` line after the MAC: `dst 192.168.1.2` or `dev port1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdbEntry::Remote { vtep } => write!(f, "dst {vtep}"),
            FdbEntry::Local { port } => write!(f, "dev {port}"),
        }
    }
}

/// The forwarding database (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fdb {
    entries: FxHashMap<EthernetAddress, FdbEntry>,
}

impl Fdb {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets where `mac` lives, returning the entry it replaced.
    pub fn insert(&mut self, mac: EthernetAddress, entry: FdbEntry) -> Option<FdbEntry> {
        self.entries.insert(mac, entry)
    }

    /// Removes the entry for `mac`, returning it.
    pub fn remove(&mut self, mac: EthernetAddress) -> Option<FdbEntry> {
        self.entries.remove(&mac)
    }

    /// Replaces the whole table with `entries`; when a MAC repeats, the last one wins.
    pub fn replace_all(&mut self, entries: impl IntoIterator<Item = (EthernetAddress, FdbEntry)>) {
        self.entries.clear();
        self.entries.extend(entries);
    }

    /// Where `mac` lives, if the table knows.
    #[inline]
    pub fn lookup(&self, mac: EthernetAddress) -> Option<FdbEntry> {
        self.entries.get(&mac).copied()
    }

    /// All entries, sorted by MAC.
    pub fn iter(&self) -> impl Iterator<Item = (EthernetAddress, FdbEntry)> + '_ {
        let mut all: Vec<(EthernetAddress, FdbEntry)> =
            self.entries.iter().map(|(&m, &e)| (m, e)).collect();
        all.sort_unstable_by_key(|&(m, _)| m);
        all.into_iter()
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl FromIterator<(EthernetAddress, FdbEntry)> for Fdb {
    fn from_iter<I: IntoIterator<Item = (EthernetAddress, FdbEntry)>>(iter: I) -> Self {
        let mut fdb = Fdb::new();
        fdb.replace_all(iter);
        fdb
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> EthernetAddress {
        EthernetAddress([0x02, 0, 0, 0, 0, last])
    }

    fn remote(last: u8) -> FdbEntry {
        FdbEntry::Remote {
            vtep: Ipv4Addr::new(192, 168, 1, last),
        }
    }

    #[test]
    fn insert_replace_remove() {
        let mut fdb = Fdb::new();
        assert!(fdb.is_empty());
        assert_eq!(fdb.insert(mac(2), remote(2)), None);
        assert_eq!(fdb.insert(mac(2), remote(22)), Some(remote(2)));
        assert_eq!(fdb.lookup(mac(2)), Some(remote(22)));
        assert_eq!(fdb.lookup(mac(3)), None);
        assert_eq!(fdb.len(), 1);
        assert_eq!(fdb.remove(mac(2)), Some(remote(22)));
        assert_eq!(fdb.remove(mac(2)), None);
        assert!(fdb.is_empty());
    }

    #[test]
    fn replace_all_and_sorted_iter() {
        let mut fdb = Fdb::new();
        fdb.insert(mac(9), remote(9));
        fdb.replace_all([
            (mac(4), remote(4)),
            (mac(1), FdbEntry::Local { port: PortId(1) }),
            (mac(4), remote(44)),
        ]);
        let got: Vec<_> = fdb.iter().collect();
        assert_eq!(
            got,
            [
                (mac(1), FdbEntry::Local { port: PortId(1) }),
                (mac(4), remote(44))
            ]
        );
        assert_eq!(fdb.lookup(mac(9)), None);
        let same: Fdb = got.into_iter().collect();
        assert_eq!(same, fdb);
    }

    #[test]
    fn display_like_bridge_fdb() {
        assert_eq!(remote(2).to_string(), "dst 192.168.1.2");
        assert_eq!(FdbEntry::Local { port: PortId(3) }.to_string(), "dev port3");
    }
}
