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

pub use super::batch::SendReport;
use super::batch::{send_batch_with_policy, set_buffer, Buffer};
use super::sys::{self, SendScratch};

pub use super::sys::SEND_CHUNK;

/// A raw IPv4 socket that sends packets from their IPv4 header on.
#[derive(Debug)]
pub struct RawSender {
    fd: OwnedFd,
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
