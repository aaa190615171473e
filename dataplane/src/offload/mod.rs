//! TUN offloads: the virtio-net header, TCP segmentation (TSO) and TCP coalescing (GRO), with no
//! I/O, no `unsafe` and no allocation.
//!
//! A TUN device opened with `IFF_VNET_HDR` and told `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4)` hands
//! userspace whole TCP "super-frames" of up to 64 KiB, each behind a [`vnet`] header that says how
//! to cut it into MTU-sized segments, and accepts such super-frames back. One `read(2)` or
//! `write(2)` then moves dozens of packets, and the kernel's stack handles one large packet instead
//! of many small ones. wireguard-go (`tun/offload_linux.go`) and tailscale do the same; this module
//! carries over the kernel facts they rely on, not their code:
//!
//! - [`segment`]: a super-frame read from the TUN becomes MSS-sized segments, as the kernel's
//!   `tcp_gso_segment` would make them: each with a copy of the IPv4 and TCP headers, its own total
//!   length, IP ID (incremented per segment, as the kernel does for TSO), IP header checksum and
//!   sequence number; FIN and PSH only on the last segment, CWR only on the first; a full TCP
//!   checksum (RFC 793 §3.1 pseudo-header, header and payload). A non-GSO packet whose checksum the
//!   kernel left to us (`VIRTIO_NET_HDR_F_NEEDS_CSUM`) is completed in place.
//! - [`coalesce`]: consecutive in-order segments of one TCP flow, decapsulated from one receive
//!   batch, become one super-frame written to the TUN with a `GSO_TCPV4` header and a partial
//!   checksum (`CHECKSUM_PARTIAL`), as the kernel's own GRO (`tcp_gro_receive`) would merge them.
//!
//! - UDP segmentation (USO, `TUN_F_USO4`, Linux 6.2): a UDP super-frame (a pod's `UDP_SEGMENT`
//!   send) becomes its datagrams, as the kernel's `__udp_gso_segment` makes them: each with the
//!   IPv4 header (total length, IP ID + index, checksum), its own UDP length and a complete UDP
//!   checksum (0 sent as `0xffff`, RFC 768).
//!
//! Only IPv4 is handled: Weft's pod network is IPv4, and the TUN is not offered `TUN_F_TSO6`
//! (the kernel takes `TUN_F_USO4` only together with `TUN_F_USO6`; an IPv6 super-frame is
//! dropped as not IPv4).
//! Malformed input is an [`OffloadError`], never a panic; the caller drops and counts it.

pub mod coalesce;
pub mod segment;
mod tcp4;
pub mod vnet;

pub use coalesce::{
    coalesce_tcp4, Coalesced, Coalescer, GatherCoalescer, Gathered, Push, GATHER_PARTS,
    MAX_HDR_LEN, SUPER_FRAME_BUF,
};
pub use segment::{complete_checksum, segment_tcp4, Ipv4Segments};
pub use vnet::{Gso, VnetHeader, VnetRepr, VNET_HDR_LEN};

/// Why a packet could not be segmented, checksummed or coalesced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// Shorter than a virtio-net header, or than the IPv4 and TCP headers it claims to carry.
    #[error("truncated: shorter than the headers it claims to carry")]
    Truncated,
    /// Not an IPv4 packet with a sane header length and total length.
    #[error("not a well-formed IPv4 packet")]
    NotIpv4,
    /// An IPv4 packet that is not TCP, or a TCP header with a data offset below 5 words.
    #[error("not a well-formed TCP segment")]
    NotTcp,
    /// An IPv4 packet that is not UDP where a UDP segmentation offload said it would be.
    #[error("not a UDP datagram")]
    NotUdp,
    /// A fragment: TCP segmentation needs the whole transport header in every piece.
    #[error("an IPv4 fragment cannot be segmented or coalesced")]
    Fragment,
    /// A GSO type this module does not handle (UDP, TCPv6, or unknown).
    #[error("unsupported GSO type {0:#04x}")]
    UnsupportedGso(u8),
    /// A GSO header with a segment size of zero.
    #[error("GSO header with gso_size 0")]
    ZeroGsoSize,
    /// `csum_start`/`csum_offset` point outside the packet.
    #[error("checksum start or offset outside the packet")]
    ChecksumOutOfRange,
    /// The caller's output buffer cannot hold the result.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// Merging would exceed the 65,535-byte IPv4 total length.
    #[error("super-frame would exceed 65535 bytes")]
    TooLong,
    /// Segments that are not consecutive, in-order, coalescable segments of one TCP flow.
    #[error("segments do not coalesce into one super-frame")]
    NotCoalescable,
}
