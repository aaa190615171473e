//! The VXLAN UDP socket: where encapsulated packets from peers arrive.
//!
//! Every worker binds its own socket to the same address with `SO_REUSEPORT`, so the kernel
//! spreads flows over the workers by a hash of the 4-tuple (`socket(7)`); since peers vary the
//! outer source port per inner flow (RFC 7348 §5, as the kernel VXLAN driver and Weft do), one
//! busy peer still spreads. Datagrams are received in batches with `recvmmsg(2)` into slots
//! allocated once, each at offset [`HEADROOM`](crate::forward::HEADROOM) so the core can decapsulate and answer in place. The
//! kernel has already checked the outer IPv4 and UDP headers; the bytes start at the VXLAN header
//! ([`Ingress::VxlanUdp`](crate::forward::Ingress::VxlanUdp)).
//!
//! With `UDP_GRO` ([`VxlanSocket::enable_gro`]) the kernel merges a flow's consecutive datagrams
//! into one receive of up to 64 KiB; [`RecvMeta::segment`] says where to cut it.
//!
//! Sending goes through [`VxlanSender`], a small pool of UDP sockets that sends a flow's
//! equal-sized datagrams as one `UDP_SEGMENT` train (UDP GSO). Between two Weft nodes a train
//! crosses the underlay as one buffer and arrives as one merged receive.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::batch::{send_batch_with_policy, set_buffer, Buffer, MmsgBatch, SendReport};
pub use super::batch::{RecvBatch, RecvMeta};
use super::steer;
use super::sys::{self, TrainBatch};

/// A nonblocking UDP socket bound for VXLAN.
#[derive(Debug)]
pub struct VxlanSocket {
    sock: UdpSocket,
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
        batch.recv_from(self.sock.as_fd())
    }

    /// Steers the datagrams of this socket's `SO_REUSEPORT` group by flow ([`steer`]): socket
    /// `i` of the group (the `i`-th bound) receives the flows worker `i` handles, the same
    /// worker the pod ports hand the flows' other direction to. Set once, on any socket of the
    /// group, after all `workers` are bound; without it the kernel spreads by its own hash.
    pub fn steer(&self, workers: usize) -> io::Result<()> {
        // The program sees the datagram from its UDP payload on: VXLAN (8) and the inner
        // Ethernet header (14) come before the inner IPv4 header.
        let prog = steer::flow_program(8 + 14, workers, steer::Tail::Index);
        sys::set_program(
            self.sock.as_fd(),
            libc::SOL_SOCKET,
            sys::SO_ATTACH_REUSEPORT_CBPF,
            &prog,
        )
    }

    /// Asks the kernel to merge consecutive datagrams of one flow before handing them over
    /// (`UDP_GRO`, Linux 5.0): one receive then brings up to 64 KiB, described by
    /// [`RecvMeta::segment`]. Slots must then hold 64 KiB after the headroom, or merged
    /// datagrams arrive truncated. Fails on kernels without it; the socket then works as before.
    pub fn enable_gro(&self) -> io::Result<()> {
        sys::setsockopt_int(self.sock.as_fd(), sys::SOL_UDP, sys::UDP_GRO, 1)
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

/// The largest UDP payload one `UDP_SEGMENT` send may carry: an IPv4 datagram's 65535 bytes
/// less the IPv4 and UDP headers.
pub const MAX_TRAIN_BYTES: usize = 65_535 - 20 - 8;
/// Segments per `UDP_SEGMENT` send: the kernel's `UDP_MAX_SEGMENTS` before Linux 6.11 raised it.
pub const MAX_TRAIN_SEGMENTS: usize = 64;

/// One VXLAN datagram to send: its UDP payload (VXLAN header onward), where to, and the flow
/// hash that picks the source port.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// The peer's underlay address and VXLAN port.
    pub dst: SocketAddrV4,
    /// The inner flow's hash (the core's outer source port); the same flow always leaves through
    /// the same socket, so from the same source port, in order.
    pub flow: u16,
    /// VXLAN header and inner frame, or its first part.
    pub payload: &'a [u8],
    /// The rest of the datagram, sent right after `payload` from where it lies (a second iovec);
    /// empty for none. A segment of a super-frame is its headers in `payload` and its data here.
    pub tail: &'a [u8],
}

impl Datagram<'_> {
    /// The datagram's length: `payload` and `tail`.
    pub fn len(&self) -> usize {
        self.payload.len() + self.tail.len()
    }

    /// Whether the datagram is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// iovecs it takes.
    fn pieces(&self) -> usize {
        1 + usize::from(!self.tail.is_empty())
    }
}

/// Sends VXLAN datagrams through a small pool of UDP sockets, gathering consecutive equal-sized
/// datagrams of one flow into `UDP_SEGMENT` trains (UDP GSO, Linux 4.18): one `sendmmsg(2)`
/// entry and one trip through the stack for up to [`MAX_TRAIN_SEGMENTS`] packets, cut by the
/// NIC or at the last moment by the kernel. Pieces are sent from where they lie (one iovec
/// each): nothing is copied.
///
/// The kernel builds the outer IPv4 and UDP headers (DF clear, as Linux's `flannel.1` sends; a
/// computed UDP checksum, RFC 7348 §5 allows either). The source port is the socket's own, an
/// ephemeral one per pool entry, chosen per flow by [`Datagram::flow`], which keeps the ECMP
/// entropy RFC 7348 §5 asks for at the granularity of the pool.
///
/// If the kernel refuses a train (`EIO`: the route's device cannot checksum, or an `IPsec`
/// policy; `EINVAL` on kernels without UDP GSO) GSO is turned off for this sender and the
/// refusal is reported once ([`SendReport::gso_disabled`]); the datagrams of that train are
/// dropped, later ones go singly.
#[derive(Debug)]
pub struct VxlanSender {
    socks: Vec<OwnedFd>,
    gso: bool,
}

impl VxlanSender {
    /// `pool` nonblocking UDP sockets bound to `src` with an ephemeral port each, with `sndbuf`
    /// bytes of send buffer, DF clear. `gso` false never sends trains.
    pub fn new(src: Ipv4Addr, pool: usize, sndbuf: usize, gso: bool) -> io::Result<VxlanSender> {
        let mut socks = Vec::with_capacity(pool.max(1));
        for _ in 0..pool.max(1) {
            let fd = sys::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
            set_buffer(fd.as_fd(), Buffer::Send, sndbuf)?;
            sys::setsockopt_int(
                fd.as_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DONT,
            )?;
            sys::bind_v4(fd.as_fd(), SocketAddrV4::new(src, 0))?;
            socks.push(fd);
        }
        // Probe: a kernel without UDP GSO refuses the option itself.
        let gso = gso
            && socks.first().is_some_and(|fd| {
                sys::setsockopt_int(fd.as_fd(), sys::SOL_UDP, sys::UDP_SEGMENT, 0).is_ok()
            });
        Ok(VxlanSender { socks, gso })
    }

    /// Whether trains are sent.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// The local addresses of the pool's sockets.
    pub fn local_addrs(&self) -> Vec<SocketAddrV4> {
        self.socks
            .iter()
            .filter_map(|fd| sys::local_addr_v4(fd.as_fd()).ok())
            .collect()
    }

    /// Sends `items` in order without blocking: consecutive items with the same destination and
    /// flow whose payloads are all as long as the first (the last may be shorter) go as one train.
    pub fn send_iter<'a, I>(&mut self, items: I) -> SendReport
    where
        I: IntoIterator<Item = Datagram<'a>>,
    {
        let mut report = SendReport::default();
        let mut batch = TrainBatch::new();
        let mut batch_sock = 0usize;
        // The open train: destination, socket, segment size, segments, bytes.
        let mut open: Option<(SocketAddrV4, usize, usize, usize, usize)> = None;
        let n = self.socks.len().max(1);
        for d in items {
            let sock = usize::from(d.flow) % n;
            let len = d.len();
            let pieces = d.pieces();
            if let Some((dst, s, seg, count, bytes)) = open.as_mut() {
                let joins = self.gso
                    && *dst == d.dst
                    && *s == sock
                    && len <= *seg
                    && *count < MAX_TRAIN_SEGMENTS
                    && *bytes + len <= MAX_TRAIN_BYTES
                    && batch.has_room(pieces);
                if joins {
                    add(&mut batch, &d);
                    *count += 1;
                    *bytes += len;
                    if len < *seg {
                        // A short segment can only be a train's last.
                        batch.end(train_segment(*seg, *count));
                        open = None;
                    }
                    continue;
                }
            }
            if let Some((_, _, seg, count, _)) = open.take() {
                batch.end(train_segment(seg, count));
            }
            if batch.len() > 0 && (batch_sock != sock || !batch.begin(d.dst, pieces)) {
                self.flush(&mut batch, batch_sock, &mut report);
                batch.clear();
            }
            if batch.len() == 0 && !batch.begin(d.dst, pieces) {
                report.dropped += 1;
                continue;
            }
            batch_sock = sock;
            add(&mut batch, &d);
            open = Some((d.dst, sock, len, 1, len));
        }
        if let Some((_, _, seg, count, _)) = open.take() {
            batch.end(train_segment(seg, count));
        }
        if batch.len() > 0 {
            self.flush(&mut batch, batch_sock, &mut report);
        }
        report
    }

    /// Sends every closed message of `batch` through socket `sock`; a train the kernel refuses
    /// (`EIO`, `EINVAL`) turns GSO off for this sender.
    fn flush(&mut self, batch: &mut TrainBatch<'_>, sock: usize, report: &mut SendReport) {
        let Some(fd) = self.socks.get(sock) else {
            for i in 0..batch.len() {
                report.dropped += batch.weigh(i).0;
            }
            return;
        };
        let gso = &mut self.gso;
        let mut disabled = None;
        send_batch_with_policy(fd.as_fd(), batch, report, |b, i, e| {
            let refused =
                b.is_train(i) && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL));
            if refused && *gso {
                *gso = false;
                disabled = Some(e.to_string());
            }
        });
        if disabled.is_some() {
            report.gso_disabled = disabled;
        }
    }
}

/// Appends the pieces of `d` to the open message of `batch`, which has room for them.
fn add<'a>(batch: &mut TrainBatch<'a>, d: &Datagram<'a>) {
    batch.add(d.payload);
    if !d.tail.is_empty() {
        batch.add(d.tail);
    }
}

/// The `UDP_SEGMENT` value for a train of `count` segments of `seg` bytes: none for one.
fn train_segment(seg: usize, count: usize) -> u16 {
    if count > 1 {
        u16::try_from(seg).unwrap_or(0)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::HEADROOM;

    /// A VXLAN payload around an inner IPv4/UDP header `src:sport -> dst:dport`.
    fn vxlan_payload(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 8 + 14 + 28];
        p[0] = 0x08;
        p[8 + 12..8 + 14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut p[22..];
        ip[0] = 0x45;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        ip[20..22].copy_from_slice(&sport.to_be_bytes());
        ip[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_steered_reuseport_group_hands_each_flow_to_the_socket_the_hash_names() {
        let first = VxlanSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 0, 0).unwrap();
        let addr = first.local_addr().unwrap();
        let second = VxlanSocket::bind(addr, 0, 0).unwrap();
        first.steer(2).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // 32 flows, each once in each direction, with the socket the hash names for the flow.
        let mut sent = Vec::new();
        for i in 0..32u16 {
            let (x, y) = ([10, 244, 1, 2 + i as u8], [10, 244, 2, 7]);
            let (px, py) = (40_000 + i * 7, 53);
            let w = steer::flow_worker(x, y, Some((px, py)), 2);
            sent.push((vxlan_payload(x, y, px, py), w));
            sent.push((vxlan_payload(y, x, py, px), w));
        }
        for (d, _) in &sent {
            tx.send_to(d, addr).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut batch = RecvBatch::new(64, HEADROOM + 2048);
        let mut got = [Vec::new(), Vec::new()];
        for (k, sock) in [&first, &second].into_iter().enumerate() {
            let n = sock.recv_batch(&mut batch).unwrap();
            for i in 0..n {
                let (meta, slot) = batch.get(i).unwrap();
                got[k].push(slot[HEADROOM..HEADROOM + meta.len].to_vec());
            }
        }
        assert_eq!(
            got[0].len() + got[1].len(),
            sent.len(),
            "every datagram once"
        );
        for (i, (d, w)) in sent.iter().enumerate() {
            assert!(got[*w].contains(d), "datagram {i} on socket {w}");
        }
        assert!(
            !got[0].is_empty() && !got[1].is_empty(),
            "both sockets used"
        );
    }

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

    fn recv_all(
        sock: &VxlanSocket,
        batch: &mut RecvBatch,
        want_bytes: usize,
    ) -> Vec<(RecvMeta, Vec<u8>)> {
        let mut got = Vec::new();
        let mut bytes = 0;
        for _ in 0..200 {
            let n = sock.recv_batch(batch).expect("recv");
            for i in 0..n {
                let (meta, slot) = batch.get(i).expect("datagram");
                bytes += meta.len;
                got.push((meta, slot[HEADROOM..HEADROOM + meta.len].to_vec()));
            }
            if bytes >= want_bytes {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        got
    }

    /// Five full datagrams and a short one of one flow, some gathered from two pieces: one
    /// train. Received without GRO they are six datagrams, byte-exact and in order; with GRO one
    /// merged datagram says so.
    #[test]
    fn trains_arrive_as_the_datagrams_they_were_cut_from() {
        let payloads: Vec<Vec<u8>> = (0u8..6)
            .map(|i| vec![i; if i == 5 { 300 } else { 1000 }])
            .collect();
        let total: usize = payloads.iter().map(Vec::len).sum();
        for gro in [false, true] {
            let rx = VxlanSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1 << 20, 0)
                .expect("bind receiver");
            if gro {
                rx.enable_gro().expect("UDP_GRO (Linux 5.0)");
            }
            let dst = rx.local_addr().expect("addr");
            let mut tx = VxlanSender::new(Ipv4Addr::LOCALHOST, 2, 1 << 20, true).expect("sender");
            assert!(tx.gso(), "UDP_SEGMENT (Linux 4.18) refused");
            // Every other datagram in two pieces, as a gathered segment goes: headers, data.
            let report = tx.send_iter(payloads.iter().enumerate().map(|(i, p)| {
                let (payload, tail) = p.split_at(if i % 2 == 1 { 50 } else { p.len() });
                Datagram {
                    dst,
                    flow: 7,
                    payload,
                    tail,
                }
            }));
            assert_eq!((report.sent, report.dropped), (6, 0), "{report:?}");
            assert_eq!(report.sent_bytes, total + 6 * 28);
            let mut batch = RecvBatch::new(8, HEADROOM + 65_536);
            let got = recv_all(&rx, &mut batch, total);
            let src = tx.local_addrs()[7 % 2];
            assert!(got.iter().all(|(m, _)| m.src == src), "one flow, one port");
            let joined: Vec<u8> = got.iter().flat_map(|(_, b)| b.clone()).collect();
            assert_eq!(joined, payloads.concat());
            if gro {
                assert_eq!(
                    got.len(),
                    1,
                    "merged: {:?}",
                    got.iter().map(|g| g.0).collect::<Vec<_>>()
                );
                assert_eq!((got[0].0.len, got[0].0.segment), (total, 1000));
            } else {
                let lens: Vec<usize> = got.iter().map(|(m, _)| m.len).collect();
                assert_eq!(lens, vec![1000, 1000, 1000, 1000, 1000, 300]);
                assert!(got.iter().all(|(m, _)| m.segment == 0));
            }
        }
    }

    /// Flows leave by their pool socket; a size change or another flow ends a train; with GSO
    /// off every datagram goes singly.
    #[test]
    fn flows_keep_their_port_and_trains_break_where_they_must() {
        let rx = VxlanSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1 << 20, 0)
            .expect("bind receiver");
        let dst = rx.local_addr().expect("addr");
        for gso in [true, false] {
            let mut tx = VxlanSender::new(Ipv4Addr::LOCALHOST, 3, 1 << 20, gso).expect("sender");
            let ports = tx.local_addrs();
            let items: Vec<(u16, Vec<u8>)> = vec![
                (1, vec![1; 800]),
                (1, vec![2; 800]),
                (2, vec![3; 800]),
                (1, vec![4; 900]),
                (1, vec![5; 100]),
            ];
            let report = tx.send_iter(items.iter().map(|(flow, p)| Datagram {
                dst,
                flow: *flow,
                payload: p,
                tail: &[],
            }));
            assert_eq!((report.sent, report.dropped), (5, 0), "{report:?}");
            let mut batch = RecvBatch::new(8, HEADROOM + 65_536);
            let total: usize = items.iter().map(|(_, p)| p.len()).sum();
            let got = recv_all(&rx, &mut batch, total);
            assert_eq!(got.len(), 5);
            for ((flow, p), (meta, bytes)) in items.iter().zip(&got) {
                assert_eq!(bytes, p);
                assert_eq!(meta.src, ports[usize::from(*flow) % 3]);
            }
        }
        // Where the trains broke, seen by a GRO receiver, which gets each train whole: flow 1's
        // two 800s; flow 2 alone; flow 1's 900 with the shorter 100 as its last segment.
        let rx = VxlanSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1 << 20, 0)
            .expect("bind GRO receiver");
        rx.enable_gro().expect("UDP_GRO (Linux 5.0)");
        let dst = rx.local_addr().expect("addr");
        let mut tx = VxlanSender::new(Ipv4Addr::LOCALHOST, 3, 1 << 20, true).expect("sender");
        let items: [(u16, usize); 5] = [(1, 800), (1, 800), (2, 800), (1, 900), (1, 100)];
        let payloads: Vec<Vec<u8>> = items.iter().map(|&(_, n)| vec![7; n]).collect();
        let report = tx.send_iter(items.iter().zip(&payloads).map(|(&(flow, _), p)| Datagram {
            dst,
            flow,
            payload: p,
            tail: &[],
        }));
        assert_eq!((report.sent, report.dropped), (5, 0), "{report:?}");
        let mut batch = RecvBatch::new(8, HEADROOM + 65_536);
        let got = recv_all(&rx, &mut batch, 3400);
        let shapes: Vec<(usize, usize)> = got.iter().map(|(m, _)| (m.len, m.segment)).collect();
        assert_eq!(shapes, vec![(1600, 800), (800, 0), (1000, 900)]);
    }
}
