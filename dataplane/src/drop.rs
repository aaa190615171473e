//! Why a packet was dropped, and the per-worker counters those reasons index.
//!
//! A [`DropReason`] is `Copy` and converts to a dense index, so the hot path counts a drop with one
//! array increment and no lock; each worker owns its [`Counters`] and the agent merges them when
//! they are read.

use core::fmt;

macro_rules! drop_reasons {
    ($( $(#[doc = $doc:literal])* $name:ident => $label:literal, )*) => {
        /// Why the forwarding core dropped (or answered instead of forwarding) a packet.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum DropReason {
            $( $(#[doc = $doc])* $name, )*
        }

        impl DropReason {
            /// Every reason, in index order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];

            /// A stable snake_case name, used as the `reason` label of the drop counters.
            pub const fn label(self) -> &'static str {
                match self {
                    $( DropReason::$name => $label, )*
                }
            }
        }
    };
}

drop_reasons! {
    /// Shorter than the headers it claims to carry.
    Truncated => "truncated",
    /// An IPv4 header with a bad version, header length or total length.
    Ipv4Malformed => "ipv4_malformed",
    /// An IPv4 header checksum that does not match.
    Ipv4Checksum => "ipv4_checksum",
    /// An Ethernet frame, encapsulated payload or TUN packet that is neither IPv4 nor ARP (e.g. the
    /// kernel's IPv6 router solicitations on the TUN device).
    NotIpv4 => "not_ipv4",
    /// A broadcast, multicast or otherwise non-unicast IPv4 destination, or a martian source.
    NotUnicast => "not_unicast",
    /// A frame on an L2 port addressed to a MAC that is not the port's.
    OtherHost => "other_host",
    /// An ARP packet Weft does not answer (not a request, not Ethernet/IPv4, or for the asker itself).
    ArpIgnored => "arp_ignored",
    /// An underlay datagram that is not for our tunnel (other address, protocol or UDP port).
    UnderlayNotForUs => "underlay_not_for_us",
    /// An outer UDP header that is malformed or whose non-zero checksum is wrong.
    UdpMalformed => "udp_malformed",
    /// A VXLAN header without the I flag (RFC 7348 §5).
    VxlanFlags => "vxlan_flags",
    /// A VXLAN header carrying a VNI other than ours.
    VxlanVni => "vxlan_vni",
    /// An inner Ethernet frame not addressed to our VTEP MAC (a kernel VTEP drops these too).
    VxlanInnerMac => "vxlan_inner_mac",
    /// An IP-in-IP packet whose inner header is malformed or lies about its length (RFC 2003).
    IpipMalformed => "ipip_malformed",
    /// A decapsulated packet that would leave through a tunnel again instead of a local port.
    NotLocal => "not_local",
    /// A packet that would leave on the port it came in on.
    Hairpin => "hairpin",
    /// No FIB route matches the destination (an unknown remote subnet).
    NoRoute => "no_route",
    /// The destination matched a blackhole route.
    Blackhole => "blackhole",
    /// No usable neighbour (ARP) entry for the next hop.
    NeighborMissing => "neighbor_missing",
    /// No FDB entry gives the VTEP of the next hop's MAC.
    FdbMissing => "fdb_missing",
    /// TTL reached zero; a time-exceeded error was sent when allowed.
    TtlExceeded => "ttl_exceeded",
    /// Larger than the egress MTU with DF set; a fragmentation-needed error was sent when allowed.
    FragNeeded => "frag_needed",
    /// Larger than the egress MTU without DF; Weft does not fragment.
    TooBig => "too_big",
    /// A frame from a pod port whose source MAC, or IPv4 or ARP sender address, is not the pod's
    /// own (anti-spoofing).
    Spoofed => "spoofed",
    /// ARP or broadcast frames from a pod port beyond its rate limit.
    RateLimited => "rate_limited",
    /// Frames to or from a pod beyond its bandwidth limit (the CNI `bandwidth` capability), in
    /// switch mode.
    BandwidthLimited => "bandwidth_limited",
    /// A new flow to or from a pod that a Kubernetes NetworkPolicy isolates, allowed by none of
    /// its rules; or an established flow a changed policy no longer allows.
    PolicyDenied => "policy_denied",
    /// The caller's buffer has too little headroom for the outer headers (a bug in the I/O shell).
    NoHeadroom => "no_headroom",
    /// The I/O shell could not carry out the verdict: a write to a local port or a send into the
    /// underlay failed (full socket buffer or device queue, device down, no underlay route), or
    /// the egress port is not one the worker has a handle for.
    IoError => "io_error",
    /// A TUN read with offloads whose virtio-net header or TCP super-frame could not be handled
    /// (an unknown GSO type, a zero segment size, a checksum offset outside the packet, a
    /// super-frame that is not well-formed IPv4/TCP); counted once per read.
    OffloadMalformed => "offload_malformed",
}

impl DropReason {
    /// How many reasons there are; the length of a counter array.
    pub const COUNT: usize = DropReason::ALL.len();

    /// The dense index of this reason, `0..COUNT`.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// One worker's packet counters. Plain integers: a worker owns its counters and the agent reads a
/// copy, so nothing here is atomic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    /// Drops by reason, indexed by [`DropReason::index`].
    pub drops: [u64; DropReason::COUNT],
    /// Packets and bytes handed to the core from local ports (TUN, pods).
    pub rx_local: Traffic,
    /// Packets and bytes handed to the core from the underlay.
    pub rx_underlay: Traffic,
    /// Packets and bytes the core sent to local ports.
    pub tx_local: Traffic,
    /// Packets and bytes the core sent into the underlay.
    pub tx_underlay: Traffic,
    /// ICMP errors and ARP replies generated.
    pub replies: u64,
    /// Times the kernel refused a UDP GSO train and the sender went on without GSO.
    pub gso_fallbacks: u64,
    /// TSO super-frames read from the TUN whose segments left gathered: headers written apart,
    /// payload sent from the read buffer (no userspace copy).
    pub gathered_sends: u64,
    /// Merged UDP GRO datagrams written to the TUN as one gathered super-frame (no userspace
    /// copy).
    pub gathered_writes: u64,
}

/// A packet and byte count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Packets.
    pub packets: u64,
    /// Bytes, counting from the IPv4 header (or the Ethernet header on L2 ports).
    pub bytes: u64,
}

impl Traffic {
    /// Counts one packet of `len` bytes.
    #[inline]
    pub fn add(&mut self, len: usize) {
        self.packets += 1;
        self.bytes += len as u64;
    }

    fn merge(&mut self, other: &Traffic) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            drops: [0; DropReason::COUNT],
            rx_local: Traffic::default(),
            rx_underlay: Traffic::default(),
            tx_local: Traffic::default(),
            tx_underlay: Traffic::default(),
            replies: 0,
            gso_fallbacks: 0,
            gathered_sends: 0,
            gathered_writes: 0,
        }
    }
}

impl Counters {
    /// Counts one drop.
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason.index()] += 1;
    }

    /// The number of drops for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// All drops, whatever the reason.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Adds another worker's counters to these.
    pub fn merge(&mut self, other: &Counters) {
        for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
            *a += b;
        }
        self.rx_local.merge(&other.rx_local);
        self.rx_underlay.merge(&other.rx_underlay);
        self.tx_local.merge(&other.tx_local);
        self.tx_underlay.merge(&other.tx_underlay);
        self.replies += other.replies;
        self.gso_fallbacks += other.gso_fallbacks;
        self.gathered_sends += other.gathered_sends;
        self.gathered_writes += other.gathered_writes;
    }

    /// The non-zero drop counters, for display.
    pub fn nonzero_drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|&r| (r, self.drops(r)))
            .filter(|&(_, n)| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_labels_unique() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::COUNT);
    }

    #[test]
    fn merge_adds_everything() {
        let mut a = Counters::default();
        let mut b = Counters::default();
        a.drop(DropReason::NoRoute);
        b.drop(DropReason::NoRoute);
        b.drop(DropReason::VxlanVni);
        b.rx_underlay.add(100);
        b.replies = 2;
        a.merge(&b);
        assert_eq!(a.drops(DropReason::NoRoute), 2);
        assert_eq!(a.drops(DropReason::VxlanVni), 1);
        assert_eq!(a.total_drops(), 3);
        assert_eq!(
            a.rx_underlay,
            Traffic {
                packets: 1,
                bytes: 100
            }
        );
        assert_eq!(a.replies, 2);
        assert_eq!(a.nonzero_drops().count(), 2);
    }
}
