//! Weft's dataplane: everything between a packet arriving and a packet leaving.
//!
//! - [`wire`]: zero-copy views and `Repr`s of the formats Weft reads and writes, smoltcp-style.
//! - [`fib`], [`neigh`], [`fdb`]: the forwarding tables, the userspace analogues of `ip route`,
//!   `ip neigh` and `bridge fdb` as flannel programs them for `flannel.1`.
//! - [`snapshot`]: immutable compiled tables that workers read without locks while the control side
//!   publishes new versions.
//! - [`forward`]: the forwarding decision as a pure function of bytes, a snapshot and the time.
//! - [`drop`](mod@drop): why a packet was dropped, as a `Copy` enum indexing per-worker counters.
//! - [`offload`]: TUN offloads: the virtio-net header, TCP segmentation and coalescing.
//! - [`police`]: per-pod bandwidth limits (the CNI `bandwidth` capability) as shared token buckets.
//! - [`policy`]: Kubernetes NetworkPolicy: compiled per-pod rules, the allow/deny decision, and the
//!   connection tracking that lets replies of allowed connections through.
//!
//! - [`io`]: the thin I/O shell around the core: TUN queues, batched UDP receive and raw send,
//!   and the worker loop. Its `sys` module holds the crate's only `unsafe` code.
//!
//! Everything but [`io`] is pure: no syscalls, no clock reads; the core takes the time as an
//! argument and the caller's buffers.
#![deny(unsafe_code)]

pub mod drop;
pub mod fdb;
pub mod fib;
pub mod forward;
pub mod io;
pub mod neigh;
pub mod offload;
pub mod police;
pub mod policy;
pub mod snapshot;
pub mod time;
pub mod wire;

/// Identifies a local port: the node's TUN device, or a pod interface attached to the dataplane.
/// The numbering belongs to the agent; the dataplane only compares and returns port ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

impl core::fmt::Display for PortId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "port{}", self.0)
    }
}
