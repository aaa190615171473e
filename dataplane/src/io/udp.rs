//! The VXLAN UDP socket: where encapsulated packets from peers arrive.
//!
//! Every worker binds its own socket to the same address with `SO_REUSEPORT`, so the kernel
//! spreads flows over the workers by a hash of the 4-tuple (`socket(7)`); since peers vary the
//! outer source port per inner flow (RFC 7348 §5, as the kernel VXLAN driver and Weft do), one
//! busy peer still spreads. Datagrams are received in batches with `recvmmsg(2)` into slots
//! allocated once, each at offset [`HEADROOM`] so the core can decapsulate and answer in place. The
//! kernel has already checked the outer IPv4 and UDP headers; the bytes start at the VXLAN header
//! ([`Ingress::VxlanUdp`](crate::forward::Ingress::VxlanUdp)).
//!
//! Sending goes through [`RawSender`](super::raw::RawSender), not this socket, so that the outer
//! source port is the flow hash rather than this socket's port.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::{sys, Slots};
use crate::forward::HEADROOM;

/// A nonblocking UDP socket bound for VXLAN.
#[derive(Debug)]
pub struct VxlanSocket {
    sock: UdpSocket,
}

/// What arrived in one slot of a [`RecvBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes written at [`HEADROOM`] in the slot (cut to the slot if `truncated`).
    pub len: usize,
    /// The sender's underlay address and port.
    pub src: SocketAddrV4,
    /// The datagram was larger than the slot and was cut (`MSG_TRUNC`); a worker drops it as
    /// [`DropReason::TooBig`](crate::drop::DropReason::TooBig).
    pub truncated: bool,
}

impl RecvMeta {
    const EMPTY: RecvMeta = RecvMeta {
        len: 0,
        src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        truncated: false,
    };
}

/// Preallocated slots and headers for [`VxlanSocket::recv_batch`].
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

    /// The slots, to read back what the core left in them.
    pub fn slots(&self) -> &Slots {
        &self.slots
    }
}

impl VxlanSocket {
    /// A nonblocking UDP socket bound to `addr` with `SO_REUSEPORT` (so every worker can bind the
    /// same address), and receive and send buffers of `rcvbuf` and `sndbuf` bytes (0 leaves the
    /// kernel default). As root the sizes are forced past `net.core.rmem_max`/`wmem_max`
    /// (`SO_RCVBUFFORCE`); otherwise they are capped there.
    pub fn bind(addr: SocketAddrV4, rcvbuf: usize, sndbuf: usize) -> io::Result<VxlanSocket> {
        let fd = sys::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
        sys::setsockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        set_buffer(fd.as_fd(), Buffer::Receive, rcvbuf)?;
        set_buffer(fd.as_fd(), Buffer::Send, sndbuf)?;
        sys::bind_v4(fd.as_fd(), addr)?;
        Ok(VxlanSocket {
            sock: UdpSocket::from(fd),
        })
    }

    /// Receives up to `batch.capacity()` waiting datagrams in one `recvmmsg(2)`, without
    /// waiting. Returns how many arrived (0 when none was waiting); see [`RecvBatch::iter_mut`].
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.received = 0;
        let slot_size = batch.slots.slot_size();
        let n = batch.scratch.recvmmsg(
            self.sock.as_fd(),
            batch.slots.raw_mut(),
            slot_size,
            HEADROOM,
            &mut batch.meta,
        )?;
        batch.received = n;
        Ok(n)
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddrV4> {
        match self.sock.local_addr()? {
            std::net::SocketAddr::V4(a) => Ok(a),
            std::net::SocketAddr::V6(_) => Err(io::Error::other("VXLAN socket is not IPv4")),
        }
    }

    /// The receive buffer size the kernel granted (twice what was asked, as `socket(7)` says).
    pub fn recv_buffer_size(&self) -> io::Result<usize> {
        let n = sys::getsockopt_int(self.sock.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// The underlying socket, e.g. to send a datagram in a test.
    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }
}

impl AsFd for VxlanSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl From<VxlanSocket> for OwnedFd {
    fn from(s: VxlanSocket) -> OwnedFd {
        s.sock.into()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_allocates_once_and_starts_empty() {
        let mut b = RecvBatch::new(4, HEADROOM + 100);
        assert_eq!(b.capacity(), 4);
        assert!(b.is_empty());
        assert!(b.get(0).is_none());
        assert_eq!(b.iter_mut().count(), 0);
        assert_eq!(b.slots().len(), 4);
    }

    #[test]
    #[should_panic(expected = "leaves no room")]
    fn batch_rejects_slots_without_room() {
        let _ = RecvBatch::new(1, HEADROOM);
    }

    #[test]
    fn loopback_batch_receive_reports_source_length_and_truncation() {
        // Works unprivileged in whatever namespace the test runs in: 127.0.0.1 always exists.
        let sock = VxlanSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1 << 16, 0)
            .expect("bind loopback");
        let dst = sock.local_addr().expect("local addr");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("sender");
        let src = match tx.local_addr().expect("sender addr") {
            std::net::SocketAddr::V4(a) => a,
            std::net::SocketAddr::V6(_) => unreachable!("bound to IPv4"),
        };
        tx.send_to(&[1, 2, 3], dst).expect("send small");
        tx.send_to(&[9; 64], dst).expect("send big");
        let mut batch = RecvBatch::new(4, HEADROOM + 32);
        let mut got = 0;
        for _ in 0..100 {
            got = sock.recv_batch(&mut batch).expect("recv");
            if got > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut metas = Vec::new();
        for (_, meta, slot) in batch.iter_mut() {
            metas.push((meta, slot[HEADROOM..HEADROOM + meta.len].to_vec()));
        }
        if got < 2 {
            // The second datagram may land after the first call; fetch it.
            for _ in 0..100 {
                if sock.recv_batch(&mut batch).expect("recv") > 0 {
                    let (meta, slot) = batch.get(0).expect("one datagram");
                    metas.push((meta, slot[HEADROOM..HEADROOM + meta.len].to_vec()));
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        assert_eq!(metas.len(), 2);
        assert_eq!(metas[0].0.src, src);
        assert_eq!(metas[0].1, vec![1, 2, 3]);
        assert!(!metas[0].0.truncated);
        assert!(metas[1].0.truncated);
        assert_eq!(metas[1].0.len, 32);
        assert_eq!(sock.recv_batch(&mut batch).expect("empty"), 0);
    }
}
