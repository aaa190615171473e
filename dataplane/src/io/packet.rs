//! A pod port: an `AF_PACKET` socket on the host end of a pod's veth, so the pod's frames come to
//! Weft's switch instead of the kernel's bridge.
//!
//! The socket is set up as userspace switches on veths set theirs (OVS's netdev, VPP's
//! host-interface):
//!
//! - `PACKET_VNET_HDR`: each frame comes with a virtio-net header in front, so a pod's TSO and
//!   USO super-frames arrive whole (one receive for up to 64 KiB) with their checksum left partial,
//!   and frames sent may be super-frames the veth hands the pod as one GSO packet;
//! - `PACKET_IGNORE_OUTGOING` (Linux 4.20): frames leaving the veth, Weft's own sends among them,
//!   are not looped back to the socket;
//! - `PACKET_QDISC_BYPASS`: sends go straight to the veth's transmit, no qdisc;
//! - promiscuous membership: Weft answers the pod's ARP with a MAC of its own, not the veth's, so
//!   the kernel classes the pod's frames as `PACKET_OTHERHOST` and its IP stack drops them
//!   unrouted; only Weft forwards them.
//!
//! With several workers a port has one socket per worker, joined in a `PACKET_FANOUT_CBPF` group
//! whose program is [`steer`]'s flow hash: the kernel hands each frame to the socket of the
//! worker that also receives the flow's other direction from the underlay, and one pod's flows
//! spread over all workers. Socket `i` is worker `i`'s; any of them sends.
//!
//! Receive is batched `recvmmsg(2)` into the worker's preallocated slots, not an mmap'ed
//! `TPACKET_V3` ring: a V3 ring hands a block to userspace only when the block fills or its
//! retire timer fires (1 ms at the least), so a sparse flow such as a ping or a request/response
//! would wait up to a millisecond per hop, and a ring large enough for 64 KiB super-frames costs a
//! megabyte per port where the slots are per worker. The copy count is the same (the kernel copies
//! each frame once, into the ring or into the slot). Sends are batched `sendmmsg(2)`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::batch::{set_buffer, Buffer, RecvBatch};
use super::{steer, sys};
use crate::offload::vnet::VNET_HDR_LEN;

/// Bytes of the socket receive buffer a port asks for: room for a few super-frames while its
/// worker is busy elsewhere.
pub const DEFAULT_RCVBUF: usize = 1 << 20;

/// One pod port: one socket, received from by one worker, or one socket per worker in a fanout
/// group ([`PacketPort::open_steered`]), each received from by its worker. Any worker sends.
#[derive(Debug)]
pub struct PacketPort {
    /// One socket per receiving worker (one in all with a single worker); the first sends.
    fds: Vec<OwnedFd>,
    ifindex: u32,
    name: String,
}

/// What [`PacketPort::stats`] read: frames queued to the socket and dropped for want of buffer
/// space, since the previous read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketStats {
    /// Frames the kernel queued to the socket.
    pub packets: u32,
    /// Frames the kernel dropped: the receive buffer was full.
    pub drops: u32,
}

impl PacketPort {
    /// Opens a port on interface `ifname` (in the calling thread's network namespace) with a
    /// receive buffer of `rcvbuf` bytes (0: the kernel default), one socket, received from by one
    /// worker.
    pub fn open(ifname: &str, rcvbuf: usize) -> io::Result<PacketPort> {
        PacketPort::open_steered(ifname, rcvbuf, 1)
    }

    /// Opens a port with one socket per worker (`workers` of them, each with a receive buffer of
    /// `rcvbuf` bytes), steered by flow ([`steer`]) when there are several: socket `i` receives
    /// the frames of the flows worker `i` handles.
    pub fn open_steered(ifname: &str, rcvbuf: usize, workers: usize) -> io::Result<PacketPort> {
        let ctx = |what: &str| {
            let what = what.to_string();
            let name = ifname.to_string();
            move |e: io::Error| {
                io::Error::new(e.kind(), format!("AF_PACKET port {name}: {what}: {e}"))
            }
        };
        let ifindex = sys::if_nametoindex(ifname).map_err(ctx("no such interface"))?;
        let n = workers.max(1);
        let mut fds = Vec::with_capacity(n);
        let mut group: Option<i32> = None;
        for _ in 0..n {
            let fd = open_socket(ifindex, rcvbuf, n > 1).map_err(ctx("setup"))?;
            if n > 1 {
                group = Some(join_fanout(fd.as_fd(), group, n).map_err(ctx("fanout group"))?);
                // In the group now: frames reach this socket only when the program says so.
                sys::detach_filter(fd.as_fd()).map_err(ctx("SO_DETACH_FILTER"))?;
            }
            fds.push(fd);
        }
        Ok(PacketPort {
            fds,
            ifindex,
            name: ifname.to_string(),
        })
    }

    /// How many sockets receive from this port: 1, or one per worker.
    pub fn receivers(&self) -> usize {
        self.fds.len()
    }

    /// Socket `i`, to poll it; the first when there is no such socket.
    pub fn receiver(&self, i: usize) -> BorrowedFd<'_> {
        self.fds.get(i).unwrap_or(&self.fds[0]).as_fd()
    }

    /// Like [`PacketPort::recv_batch`], from socket `i`.
    pub fn recv_batch_on(&self, i: usize, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.recv_from(self.receiver(i))
    }

    /// The interface's index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Receives up to `batch.capacity()` waiting frames in one `recvmmsg(2)`, without waiting;
    /// how many arrived. Each slot holds, at [`HEADROOM`](crate::forward::HEADROOM), a
    /// virtio-net header ([`VNET_HDR_LEN`] bytes) and the Ethernet frame.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.recv_from(self.receiver(0))
    }

    /// Sends the Ethernet `frames`, each behind the virtio-net header `vnet` ([`PLAIN`] for
    /// plain frames), in as few `sendmmsg(2)` calls as it takes; how many the kernel took. Stops
    /// at the first call that takes none (a full device queue) or fails.
    pub fn send_batch(&self, vnet: &[u8; VNET_HDR_LEN], frames: &[&[u8]]) -> io::Result<usize> {
        let mut sent = 0;
        while sent < frames.len() {
            let n = sys::sendmmsg_frames(self.receiver(0), vnet, &frames[sent..])?;
            if n == 0 {
                break;
            }
            sent += n;
        }
        Ok(sent)
    }

    /// Sends one frame gathered from `pieces` (the first [`VNET_HDR_LEN`] bytes of them its
    /// virtio-net header), with one `sendmsg(2)` and no copy in userspace: a super-frame merged
    /// from payloads where they lie.
    pub fn send_gathered(&self, pieces: &[&[u8]]) -> io::Result<usize> {
        sys::sendmsg_pieces(self.receiver(0), pieces)
    }

    /// Frames queued and dropped by the kernel since the previous call (`PACKET_STATISTICS`).
    pub fn stats(&self) -> io::Result<PacketStats> {
        let mut total = PacketStats::default();
        for fd in &self.fds {
            let (packets, drops) = sys::packet_stats(fd.as_fd())?;
            total.packets = total.packets.saturating_add(packets);
            total.drops = total.drops.saturating_add(drops);
        }
        Ok(total)
    }
}

impl AsFd for PacketPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.receiver(0)
    }
}

/// Puts `fd` in the steering fanout group `group` of `workers` sockets, or, with no group yet,
/// makes one (the kernel picks an unused id) and sets its program; returns the group's id.
fn join_fanout(fd: BorrowedFd<'_>, group: Option<i32>, workers: usize) -> io::Result<i32> {
    let ctx =
        |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let cbpf = sys::PACKET_FANOUT_CBPF << 16;
    if let Some(id) = group {
        sys::setsockopt_int(fd, libc::SOL_PACKET, sys::PACKET_FANOUT, id | cbpf)
            .map_err(ctx("PACKET_FANOUT (joining)"))?;
        return Ok(id);
    }
    let unique = sys::PACKET_FANOUT_FLAG_UNIQUEID << 16;
    sys::setsockopt_int(fd, libc::SOL_PACKET, sys::PACKET_FANOUT, cbpf | unique)
        .map_err(ctx("PACKET_FANOUT (a new group)"))?;
    let prog = steer::flow_program(steer::NET_OFF, workers, steer::Tail::Index);
    sys::set_program(fd, libc::SOL_PACKET, sys::PACKET_FANOUT_DATA, &prog)
        .map_err(ctx("PACKET_FANOUT_DATA (the steering program)"))?;
    let got = sys::getsockopt_int(fd, libc::SOL_PACKET, sys::PACKET_FANOUT)
        .map_err(ctx("PACKET_FANOUT (reading the group id)"))?;
    Ok(got & 0xffff)
}

/// One configured, bound socket on interface `ifindex`. With `hold` it drops every frame (a
/// filter returning 0) until the caller has put it in its fanout group and detached the filter,
/// so no frame reaches it outside the group.
fn open_socket(ifindex: u32, rcvbuf: usize, hold: bool) -> io::Result<OwnedFd> {
    let ctx =
        |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    // Protocol 0 until bound: nothing is queued to the socket before its options are set.
    let fd = sys::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)
        .map_err(ctx("socket(AF_PACKET) (needs CAP_NET_RAW)"))?;
    let opt =
        |name, what| sys::setsockopt_int(fd.as_fd(), libc::SOL_PACKET, name, 1).map_err(ctx(what));
    opt(libc::PACKET_VNET_HDR, "PACKET_VNET_HDR")?;
    opt(
        libc::PACKET_IGNORE_OUTGOING,
        "PACKET_IGNORE_OUTGOING (Linux 4.20)",
    )?;
    opt(libc::PACKET_QDISC_BYPASS, "PACKET_QDISC_BYPASS")?;
    set_buffer(fd.as_fd(), Buffer::Receive, rcvbuf).map_err(ctx("SO_RCVBUF"))?;
    sys::packet_promisc(fd.as_fd(), ifindex).map_err(ctx("promiscuous membership"))?;
    if hold {
        sys::attach_filter(fd.as_fd(), &[steer::insn(steer::RET_K, 0, 0, 0)]).map_err(ctx(
            "SO_ATTACH_FILTER (holding frames until the fanout join)",
        ))?;
    }
    sys::bind_packet(fd.as_fd(), ifindex).map_err(ctx("bind"))?;
    Ok(fd)
}

/// A zero virtio-net header: a plain frame with a complete checksum.
pub const PLAIN: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
