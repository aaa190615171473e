//! Sending encapsulated packets into the underlay through a raw IPv4 socket.
//!
//! The core hands the shell a whole outer packet (IPv4, UDP, VXLAN, inner Ethernet, inner IPv4).
//! Sending it through `socket(AF_INET, SOCK_RAW, IPPROTO_RAW)`, which implies `IP_HDRINCL`
//! (`raw(7)`), keeps the outer UDP source port the core chose from the inner flow hash, as the
//! kernel VXLAN driver does (RFC 7348 §5: it lets the underlay's ECMP spread our flows); a UDP
//! socket would stamp its own port on every packet. The kernel still routes and resolves the
//! next hop (ARP) on the underlay, fills in an IP ID of 0 and the header checksum, and refuses
//! (`EMSGSIZE`) rather than fragments a packet above the route's MTU.
//!
//! Sends are batched with `sendmmsg(2)`, [`SEND_CHUNK`] per call, with headers on the stack: no
//! allocation per call. Nothing here waits or retries forever: a full socket buffer or qdisc
//! (`EAGAIN`, `ENOBUFS`) drops the rest of the batch, any other error drops the one datagram it
//! concerns, and the [`SendReport`] says how many went and how many were dropped.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::sys::{self, SendScratch};
use super::udp::{set_buffer, Buffer};

pub use super::sys::SEND_CHUNK;

/// A raw IPv4 socket that sends packets from their IPv4 header on.
#[derive(Debug)]
pub struct RawSender {
    fd: OwnedFd,
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

impl RawSender {
    /// A nonblocking `IPPROTO_RAW` socket (needs `CAP_NET_RAW`) with a send buffer of `sndbuf`
    /// bytes (0 leaves the kernel default; forced past `wmem_max` as root, as for
    /// [`VxlanSocket::bind`](super::udp::VxlanSocket::bind)).
    pub fn new(sndbuf: usize) -> io::Result<RawSender> {
        let fd = sys::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
        set_buffer(fd.as_fd(), Buffer::Send, sndbuf)?;
        Ok(RawSender { fd })
    }

    /// Sends each `(next hop, IPv4 packet)` toward its next hop; see [`RawSender::send_iter`].
    pub fn send_batch(&self, msgs: &[(Ipv4Addr, &[u8])]) -> SendReport {
        self.send_iter(msgs.iter().copied())
    }

    /// Sends each `(next hop, IPv4 packet)`, in order, [`SEND_CHUNK`] per `sendmmsg(2)`, without
    /// allocating and without blocking. The packet's own destination is what the underlay sees;
    /// the next hop is the address the kernel routes by (for VXLAN they are the same).
    pub fn send_iter<'a, I>(&self, msgs: I) -> SendReport
    where
        I: IntoIterator<Item = (Ipv4Addr, &'a [u8])>,
    {
        let mut report = SendReport::default();
        let mut batch = SendScratch::new();
        let mut msgs = msgs.into_iter();
        loop {
            batch.clear();
            for (dst, pkt) in msgs.by_ref() {
                batch.push(dst, pkt);
                if batch.is_full() {
                    break;
                }
            }
            if batch.len() == 0 {
                return report;
            }
            let full = batch.is_full();
            self.flush(&mut batch, &mut report);
            if !full {
                return report;
            }
        }
    }

    /// Sends everything queued in `batch`, recording the outcome in `report`.
    fn flush(&self, batch: &mut SendScratch<'_>, report: &mut SendReport) {
        send_batch_with_policy(self.fd.as_fd(), batch, report, |_, _, _| {});
    }
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

impl AsFd for RawSender {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<RawSender> for OwnedFd {
    fn from(s: RawSender) -> OwnedFd {
        s.fd
    }
}
