//! The I/O shell around the forwarding core: a TUN device, the VXLAN UDP socket, a raw IPv4
//! sender, and the worker loop that moves packets between them through [`forward`].
//!
//! The split follows quinn (`quinn-proto` vs `quinn-udp`) and boringtun (`noise` vs `device`): the
//! core decides and never touches a file descriptor; this module only reads, calls the core and
//! carries out the verdict. All `unsafe` is fenced in the private `sys` module.
//!
//! Layers, bottom up, each importing only from those below: `sys` (syscalls, `mmsghdr` arrays);
//! [`batch`] (receive batches, the senders' drop policy, buffer sizing); the sockets and devices
//! ([`tun`], [`udp`], [`raw`], [`ipip`], [`packet`]); [`worker`] on top.
//!
//! - [`batch`]: preallocated receive slots filled by one `recvmmsg(2)`, and the one policy every
//!   batched sender follows when the kernel takes only part of a `sendmmsg(2)`.
//! - [`tun`]: a multi-queue, non-persistent TUN device, one queue per worker (flannel's
//!   `flannel.1` in the role of the node's tunnel device).
//! - [`udp`]: the VXLAN UDP socket (flannel's port 8472), one per worker with `SO_REUSEPORT` so the
//!   kernel spreads flows; batched receive with `recvmmsg(2)`, merged per flow with `UDP_GRO`.
//!   And the VXLAN sender: a pool of UDP sockets (the source port chosen per flow) sending a
//!   flow's segments as `UDP_SEGMENT` trains (UDP GSO), batched with `sendmmsg(2)`.
//! - [`raw`]: an `IPPROTO_RAW` socket that sends packets from their outer IPv4 header, for
//!   everything that is not VXLAN (IP-in-IP, routed packets); batched with `sendmmsg(2)`.
//! - [`packet`]: a pod port, an `AF_PACKET` socket on the host end of a pod's veth (switch mode):
//!   frames with virtio-net headers, batched `recvmmsg(2)`/`sendmmsg(2)`.
//! - [`worker`]: the per-core loop and its shared state (snapshot cell, stop flag, counters).
//! - [`clock`]: the process-wide monotonic clock the workers hand to the core.
//!
//! Hot-path rules: buffers are allocated once per worker, the snapshot is loaded and the clock
//! read once per wakeup, counters are worker-local and copied out at most every 50 ms, and
//! syscalls are batched where the kernel offers it (TUN reads are not: a TUN without vnet headers
//! has no batch read).
//!
//! [`forward`]: crate::forward::forward

pub mod batch;
pub mod clock;
pub mod ipip;
pub mod packet;
pub mod raw;
pub mod steer;
mod sys;
pub mod tun;
pub mod udp;
pub mod worker;

pub use sys::unshare_net;

/// A fixed set of equal, contiguous packet buffers ("slots"), allocated once.
///
/// A worker reads one packet into each slot at offset [`HEADROOM`](crate::forward::HEADROOM), so
/// the core can write outer headers in front of it in place.
#[derive(Debug)]
pub struct Slots {
    buf: Vec<u8>,
    slot_size: usize,
}

impl Slots {
    /// `n` slots of `slot_size` bytes each, zeroed.
    pub fn new(n: usize, slot_size: usize) -> Self {
        Slots {
            buf: vec![0; n.saturating_mul(slot_size)],
            slot_size,
        }
    }

    /// How many slots there are.
    pub fn len(&self) -> usize {
        self.buf.len().checked_div(self.slot_size).unwrap_or(0)
    }

    /// Whether there are no slots.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The size of each slot.
    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Slot `i`, if it exists.
    pub fn slot(&self, i: usize) -> Option<&[u8]> {
        self.buf.chunks_exact(self.slot_size.max(1)).nth(i)
    }

    /// Slot `i`, writable, if it exists.
    pub fn slot_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        self.buf.chunks_exact_mut(self.slot_size.max(1)).nth(i)
    }

    /// The bytes `start..start + len` of slot `i`, or nothing when that range is not inside it.
    pub fn bytes(&self, i: usize, start: usize, len: usize) -> &[u8] {
        self.slot(i)
            .and_then(|s| s.get(start..start.checked_add(len)?))
            .unwrap_or_default()
    }

    /// All slots, writable, in order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut [u8]> + '_ {
        self.buf.chunks_exact_mut(self.slot_size.max(1))
    }

    /// The whole backing buffer: slot `i` is `[i * slot_size..(i + 1) * slot_size]`.
    pub(crate) fn raw_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_disjoint_and_bounds_checked() {
        let mut s = Slots::new(3, 10);
        assert_eq!(s.len(), 3);
        s.slot_mut(1).expect("slot 1 exists")[0] = 7;
        assert_eq!(s.bytes(1, 0, 1), &[7]);
        assert_eq!(s.bytes(0, 0, 1), &[0]);
        assert!(s.slot(3).is_none());
        assert!(s.bytes(2, 5, 6).is_empty());
        assert!(s.bytes(2, usize::MAX, 2).is_empty());
        assert_eq!(s.iter_mut().count(), 3);
        assert!(Slots::new(0, 10).is_empty());
        assert!(Slots::new(2, 0).is_empty());
    }
}
