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
//! Receive is batched `recvmmsg(2)` into the worker's preallocated slots, not an mmap'ed
//! `TPACKET_V3` ring: a V3 ring hands a block to userspace only when the block fills or its
//! retire timer fires (1 ms at the least), so a sparse flow such as a ping or a request/response
//! would wait up to a millisecond per hop, and a ring large enough for 64 KiB super-frames costs a
//! megabyte per port where the slots are per worker. The copy count is the same (the kernel copies
//! each frame once, into the ring or into the slot). Sends are batched `sendmmsg(2)`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::batch::{set_buffer, Buffer, RecvBatch};
use super::sys;
use crate::offload::vnet::VNET_HDR_LEN;

/// Bytes of the socket receive buffer a port asks for: room for a few super-frames while its
/// worker is busy elsewhere.
pub const DEFAULT_RCVBUF: usize = 1 << 20;

/// One pod port's socket. Receive from one worker only (the port's owner); send from any.
#[derive(Debug)]
pub struct PacketPort {
    fd: OwnedFd,
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
    /// receive buffer of `rcvbuf` bytes (0: the kernel default).
    pub fn open(ifname: &str, rcvbuf: usize) -> io::Result<PacketPort> {
        let ctx = |what: &str| {
            let what = what.to_string();
            let name = ifname.to_string();
            move |e: io::Error| {
                io::Error::new(e.kind(), format!("AF_PACKET port {name}: {what}: {e}"))
            }
        };
        let ifindex = sys::if_nametoindex(ifname).map_err(ctx("no such interface"))?;
        // Protocol 0 until bound: nothing is queued to the socket before its options are set.
        let fd = sys::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)
            .map_err(ctx("socket(AF_PACKET) (needs CAP_NET_RAW)"))?;
        sys::setsockopt_int(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)
            .map_err(ctx("PACKET_VNET_HDR"))?;
        sys::setsockopt_int(
            fd.as_fd(),
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            1,
        )
        .map_err(ctx("PACKET_IGNORE_OUTGOING (Linux 4.20)"))?;
        sys::setsockopt_int(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1)
            .map_err(ctx("PACKET_QDISC_BYPASS"))?;
        set_buffer(fd.as_fd(), Buffer::Receive, rcvbuf).map_err(ctx("SO_RCVBUF"))?;
        sys::packet_promisc(fd.as_fd(), ifindex).map_err(ctx("promiscuous membership"))?;
        sys::bind_packet(fd.as_fd(), ifindex).map_err(ctx("bind"))?;
        Ok(PacketPort {
            fd,
            ifindex,
            name: ifname.to_string(),
        })
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
        batch.recv_from(self.fd.as_fd())
    }

    /// Sends the Ethernet `frames`, each behind the virtio-net header `vnet` ([`PLAIN`] for
    /// plain frames), in as few `sendmmsg(2)` calls as it takes; how many the kernel took. Stops
    /// at the first call that takes none (a full device queue) or fails.
    pub fn send_batch(&self, vnet: &[u8; VNET_HDR_LEN], frames: &[&[u8]]) -> io::Result<usize> {
        let mut sent = 0;
        while sent < frames.len() {
            let n = sys::sendmmsg_frames(self.fd.as_fd(), vnet, &frames[sent..])?;
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
        sys::sendmsg_pieces(self.fd.as_fd(), pieces)
    }

    /// Frames queued and dropped by the kernel since the previous call (`PACKET_STATISTICS`).
    pub fn stats(&self) -> io::Result<PacketStats> {
        let (packets, drops) = sys::packet_stats(self.fd.as_fd())?;
        Ok(PacketStats { packets, drops })
    }
}

impl AsFd for PacketPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A zero virtio-net header: a plain frame with a complete checksum.
pub const PLAIN: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
