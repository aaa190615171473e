//! Batching over `sys`'s `mmsg` scratch arrays: receive batches into preallocated slots, the one
//! drop policy every batched sender shares, and socket buffer sizing.
//!
//! The layers of `io`, bottom up: `sys` (the only `unsafe`: syscalls and the
//! `mmsghdr` arrays), this module (safe batching policy over them), the sockets and devices
//! ([`udp`](super::udp), [`raw`](super::raw), [`ipip`](super::ipip), [`packet`](super::packet),
//! [`tun`](super::tun)), and [`worker`](super::worker) on top. Each layer imports only from the
//! layers below it.

use std::io;
use std::os::fd::BorrowedFd;

pub use super::sys::RecvMeta;
use super::sys::{self, SendScratch, TrainBatch};
use super::Slots;
use crate::forward::HEADROOM;

/// Preallocated slots and headers for [`VxlanSocket::recv_batch`](super::udp::VxlanSocket::recv_batch).
#[derive(Debug)]
pub struct RecvBatch {
    slots: Slots,
    meta: Vec<RecvMeta>,
    received: usize,
    scratch: sys::RecvScratch,
}

impl RecvBatch {
    /// Room for `n` datagrams of up to `slot_size - HEADROOM` bytes each, allocated now and never
    /// again.
    ///
    /// # Panics
    ///
    /// If `n` is zero or `slot_size` leaves no room after [`HEADROOM`]: a configuration bug.
    pub fn new(n: usize, slot_size: usize) -> Self {
        assert!(n > 0, "a receive batch needs at least one slot");
        assert!(
            slot_size > HEADROOM,
            "slot_size {slot_size} leaves no room after the {HEADROOM}-byte headroom"
        );
        RecvBatch {
            slots: Slots::new(n, slot_size),
            meta: vec![RecvMeta::EMPTY; n],
            received: 0,
            scratch: sys::RecvScratch::new(n),
        }
    }

    /// How many datagrams a call receives at most.
    pub fn capacity(&self) -> usize {
        self.meta.len()
    }

    /// How many datagrams the last call received.
    pub fn len(&self) -> usize {
        self.received
    }

    /// Whether the last call received nothing.
    pub fn is_empty(&self) -> bool {
        self.received == 0
    }

    /// Datagram `i` of the last call: its description and its whole slot (the payload is at
    /// `slot[HEADROOM..HEADROOM + meta.len]`).
    pub fn get(&self, i: usize) -> Option<(RecvMeta, &[u8])> {
        if i >= self.received {
            return None;
        }
        Some((*self.meta.get(i)?, self.slots.slot(i)?))
    }

    /// The datagrams of the last call, with their slots writable (for the core to rewrite them in
    /// place), as `(slot index, meta, slot)`.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, RecvMeta, &mut [u8])> + '_ {
        self.slots
            .iter_mut()
            .zip(self.meta.iter())
            .take(self.received)
            .enumerate()
            .map(|(i, (slot, meta))| (i, *meta, slot))
    }

    /// What arrived in slot `i` in the last call.
    pub fn meta(&self, i: usize) -> Option<RecvMeta> {
        if i >= self.received {
            return None;
        }
        self.meta.get(i).copied()
    }

    /// Slot `i`, writable.
    pub fn slot_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        self.slots.slot_mut(i)
    }

    /// Receives up to [`RecvBatch::capacity`] waiting datagrams from `fd` in one `recvmmsg(2)`,
    /// without waiting; how many arrived.
    pub(crate) fn recv_from(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.received = 0;
        let slot_size = self.slots.slot_size();
        let n = self.scratch.recvmmsg(
            fd,
            self.slots.raw_mut(),
            slot_size,
            HEADROOM,
            &mut self.meta,
        )?;
        self.received = n;
        Ok(n)
    }

    /// The slots, to read back what the core left in them.
    pub fn slots(&self) -> &Slots {
        &self.slots
    }
}

/// What became of a batch.
#[derive(Debug, Default)]
pub struct SendReport {
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// Their bytes, from the IPv4 header on.
    pub sent_bytes: usize,
    /// Datagrams dropped because a send failed.
    pub dropped: usize,
    /// The last error that caused a drop.
    pub last_error: Option<io::Error>,
    /// Set when a [`VxlanSender`](super::udp::VxlanSender) turned GSO off because the kernel
    /// refused a train: the error, to be reported once.
    pub gso_disabled: Option<String>,
}

/// A queue of `sendmmsg(2)` messages, as the senders' scratch arrays hold them.
pub(crate) trait MmsgBatch {
    /// Queued messages.
    fn len(&self) -> usize;
    /// `sendmmsg` from message `first` on; how many the kernel took, or message `first`'s error.
    fn sendmmsg(&mut self, fd: BorrowedFd<'_>, first: usize) -> io::Result<usize>;
    /// Message `i` on the wire: (datagrams, bytes from the IPv4 header on).
    fn weigh(&self, i: usize) -> (usize, usize);
}

/// Sends everything in `batch` through `fd`, with the senders' one drop policy: a full socket
/// buffer or device queue drops the rest of the batch; any other error drops only the message
/// it concerns (after `refused` has seen it); `EINTR` is retried three times. Each pass either
/// sends or drops at least one message, so it ends.
pub(crate) fn send_batch_with_policy<B: MmsgBatch>(
    fd: BorrowedFd<'_>,
    batch: &mut B,
    report: &mut SendReport,
    mut refused: impl FnMut(&B, usize, &io::Error),
) {
    let drop_from = |batch: &B, from: usize, report: &mut SendReport| {
        for i in from..batch.len() {
            report.dropped += batch.weigh(i).0;
        }
    };
    let mut next = 0;
    let mut interrupted = 0;
    while next < batch.len() {
        match batch.sendmmsg(fd, next) {
            Ok(0) => {
                // Not documented to happen with a non-empty batch; do not loop on it.
                drop_from(batch, next, report);
                return;
            }
            Ok(k) => {
                for i in next..(next + k).min(batch.len()) {
                    let (datagrams, bytes) = batch.weigh(i);
                    report.sent += datagrams;
                    report.sent_bytes += bytes;
                }
                next += k;
            }
            // MSG_DONTWAIT makes EINTR unlikely; retry a few times, then treat it as fatal.
            Err(e) if e.kind() == io::ErrorKind::Interrupted && interrupted < 3 => {
                interrupted += 1;
            }
            Err(e) if is_congestion(&e) => {
                // The rest of the batch would fail the same way, one syscall each.
                drop_from(batch, next, report);
                report.last_error = Some(e);
                return;
            }
            Err(e) => {
                // An error about this message (EMSGSIZE, ENETUNREACH, EPERM from a firewall, a
                // refused GSO train): drop it and go on with the next.
                refused(batch, next, &e);
                report.dropped += batch.weigh(next).0;
                report.last_error = Some(e);
                next += 1;
            }
        }
    }
}

/// `EAGAIN` (socket send buffer full) or `ENOBUFS` (device queue full or no memory).
pub(crate) fn is_congestion(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
}

impl MmsgBatch for SendScratch<'_> {
    fn len(&self) -> usize {
        SendScratch::len(self)
    }
    fn sendmmsg(&mut self, fd: BorrowedFd<'_>, first: usize) -> io::Result<usize> {
        SendScratch::sendmmsg(self, fd, first)
    }
    fn weigh(&self, i: usize) -> (usize, usize) {
        (1, self.packet_len(i))
    }
}

impl MmsgBatch for TrainBatch<'_> {
    fn len(&self) -> usize {
        TrainBatch::len(self)
    }
    fn sendmmsg(&mut self, fd: BorrowedFd<'_>, first: usize) -> io::Result<usize> {
        TrainBatch::sendmmsg(self, fd, first)
    }
    /// Datagrams on the wire, and their bytes with the IPv4 and UDP headers the kernel adds.
    fn weigh(&self, i: usize) -> (usize, usize) {
        let segments = self.message_segments(i);
        (segments, self.message_bytes(i) + segments * (20 + 8))
    }
}

/// Which socket buffer to size.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Buffer {
    Receive,
    Send,
}

/// Sets a socket buffer to `bytes` (0: leave it): `SO_*BUFFORCE` first, which ignores the sysctl
/// cap but needs `CAP_NET_ADMIN`, then the capped `SO_*BUF`.
pub(crate) fn set_buffer(fd: BorrowedFd<'_>, which: Buffer, bytes: usize) -> io::Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    // The kernel doubles the value and takes an int; clamp rather than overflow.
    let value = libc::c_int::try_from(bytes.min(i32::MAX as usize / 2)).unwrap_or(i32::MAX / 2);
    let (force, plain) = match which {
        Buffer::Receive => (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        Buffer::Send => (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    };
    sys::setsockopt_int(fd, libc::SOL_SOCKET, force, value)
        .or_else(|_| sys::setsockopt_int(fd, libc::SOL_SOCKET, plain, value))
}
