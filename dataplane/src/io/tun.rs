//! A multi-queue TUN device: the node's tunnel device, in the role `flannel.1` plays for flannel.
//!
//! The device is opened with `IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE` (Linux
//! `Documentation/networking/tuntap.rst`): packets are bare IPv4 (no packet-information prefix),
//! and each queue is its own file, so each worker reads and writes its own queue without sharing.
//! The kernel picks a queue per flow on transmit. The device is *not* persistent: it disappears
//! when the last queue closes, so a crashed agent leaves nothing behind and a restarted one simply
//! creates it again. Addresses, MTU and link state are the agent's business (netlink), not ours.
//!
//! **Offloads.** [`TunDevice::create_with`] can open the device with `IFF_VNET_HDR` and enable
//! `TUN_F_CSUM | TUN_F_TSO4` (`TUNSETOFFLOAD`), as wireguard-go and tun-rs do: every read then
//! starts with a virtio-net header ([`crate::offload::vnet`]) and may carry a TCP super-frame of up
//! to 64 KiB, and every write must start with one (all zeros for a plain packet, which
//! [`TunQueue::write`] adds). The header is 10 bytes (`TUNSETVNETHDRSZ`) in little-endian order
//! (`TUNSETVNETLE`, a no-op on little-endian hosts). Whether the kernel takes all of that is probed
//! on the first queue; if any step fails the device is created again without offloads, so
//! [`TunDevice::offload`] says what the queues actually do. `TUN_F_TSO6` is not requested: the pod
//! network is IPv4.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::sys;
use crate::offload::{GATHER_PARTS, VNET_HDR_LEN};

/// The clone device every TUN queue is opened from.
const CLONE_DEVICE: &str = "/dev/net/tun";

/// The most queues the kernel allows per device (`MAX_TAP_QUEUES`).
pub const MAX_QUEUES: usize = 256;

/// The offloads to ask for when creating a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TunOffload {
    /// `IFF_VNET_HDR` with checksum offload and IPv4 TSO (`TUN_F_CSUM | TUN_F_TSO4`).
    pub tso4: bool,
    /// With `tso4`, UDP segmentation too (`TUN_F_USO4 | TUN_F_USO6`, Linux 6.2): pods' UDP GSO
    /// sends reach Weft as one super-frame. A kernel that refuses it leaves TSO in place.
    pub uso4: bool,
}

impl TunOffload {
    /// Plain packets, no virtio-net header.
    pub const NONE: TunOffload = TunOffload {
        tso4: false,
        uso4: false,
    };
    /// Virtio-net headers, checksum offload and IPv4 TSO.
    pub const TSO4: TunOffload = TunOffload {
        tso4: true,
        uso4: false,
    };
    /// Virtio-net headers, checksum offload, IPv4 TSO and UDP segmentation.
    pub const TSO4_USO4: TunOffload = TunOffload {
        tso4: true,
        uso4: true,
    };
}

/// A TUN device and its queues.
#[derive(Debug)]
pub struct TunDevice {
    name: String,
    queues: Vec<TunQueue>,
    offload: TunOffload,
}

/// One queue of a TUN device: a nonblocking file that reads and writes whole IPv4 packets, each
/// behind a virtio-net header when the device was created with offloads.
#[derive(Debug)]
pub struct TunQueue {
    file: File,
    vnet_hdr: bool,
}

/// All zeros: a plain packet with a complete checksum.
const ZERO_VNET_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

impl TunDevice {
    /// Creates TUN device `name` with `queues` queues (at least one), each opened nonblocking.
    ///
    /// Fails if a device of that name exists and is not a multi-queue TUN device we may attach to,
    /// or without `CAP_NET_ADMIN`. The device lives in the calling thread's network namespace and
    /// vanishes when every queue is closed.
    pub fn create(name: &str, queues: usize) -> io::Result<TunDevice> {
        Self::create_with(name, queues, TunOffload::NONE)
    }

    /// Like [`TunDevice::create`], asking for `offload`. If the kernel refuses a step of it, the
    /// device is created without offloads and the refusal logged once to stderr;
    /// [`TunDevice::offload`] tells which happened.
    pub fn create_with(name: &str, queues: usize, offload: TunOffload) -> io::Result<TunDevice> {
        if !offload.tso4 {
            return Self::open(name, queues, TunOffload::NONE);
        }
        match Self::open(name, queues, offload) {
            Ok(dev) => Ok(dev),
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => Err(e),
            Err(e) => {
                // Off the hot path, once per device: the agent has no logger in this crate.
                eprintln!("weft: TUN offloads unavailable on {name} ({e}); using plain packets");
                Self::open(name, queues, TunOffload::NONE)
            }
        }
    }

    fn open(name: &str, queues: usize, offload: TunOffload) -> io::Result<TunDevice> {
        let vnet_hdr = offload.tso4;
        let mut uso4 = false;
        if queues == 0 || queues > MAX_QUEUES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a TUN device needs 1 to {MAX_QUEUES} queues, not {queues}"),
            ));
        }
        let mut flags = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE;
        if vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        let mut name = name.to_owned();
        let mut opened: Vec<TunQueue> = Vec::with_capacity(queues);
        for i in 0..queues {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(CLONE_DEVICE)?;
            // The kernel may expand a `%d` in the first name; later queues attach by the result.
            name = sys::tun_set_iff(file.as_fd(), &name, flags)?;
            if vnet_hdr && i == 0 {
                // Device-wide settings, made once; later queues share them.
                sys::tun_set_int(file.as_fd(), libc::TUNSETVNETHDRSZ, VNET_HDR_LEN as i32)?;
                sys::tun_set_int(file.as_fd(), libc::TUNSETVNETLE, 1)?;
                let tso = libc::TUN_F_CSUM | libc::TUN_F_TSO4;
                // The kernel takes USO4 only with USO6 and refuses unknown flags with EINVAL
                // (before 6.2): then TSO alone.
                uso4 = offload.uso4
                    && sys::tun_set_offload(
                        file.as_fd(),
                        tso | libc::TUN_F_USO4 | libc::TUN_F_USO6,
                    )
                    .is_ok();
                if !uso4 {
                    sys::tun_set_offload(file.as_fd(), tso)?;
                }
            }
            opened.push(TunQueue { file, vnet_hdr });
        }
        Ok(TunDevice {
            name,
            queues: opened,
            offload: TunOffload {
                tso4: vnet_hdr,
                uso4,
            },
        })
    }

    /// The offloads the queues use.
    pub fn offload(&self) -> TunOffload {
        self.offload
    }

    /// The device's name, as the kernel settled it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's interface index, looked up by name in the calling thread's network namespace
    /// (`if_nametoindex(3)`).
    pub fn ifindex(&self) -> io::Result<u32> {
        sys::if_nametoindex(&self.name)
    }

    /// The queues.
    pub fn queues(&self) -> &[TunQueue] {
        &self.queues
    }

    /// The queues, to hand one to each worker. The device lives while any of them is open.
    pub fn into_queues(self) -> Vec<TunQueue> {
        self.queues
    }
}

impl TunQueue {
    /// Whether every read starts with, and every raw write must start with, a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Reads one packet into `buf`, behind its virtio-net header if [`vnet_hdr`](Self::vnet_hdr);
    /// `WouldBlock` when none is waiting. A packet longer than `buf` is cut to fit, so make `buf`
    /// at least the device MTU (plus the header and 64 KiB with offloads).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one plain IPv4 packet (a complete checksum, no GSO), which enters the kernel's stack
    /// as if received on the device; with offloads an all-zero virtio-net header goes in front.
    /// Returns the packet bytes written.
    pub fn write(&self, pkt: &[u8]) -> io::Result<usize> {
        if !self.vnet_hdr {
            return (&self.file).write(pkt);
        }
        let n = (&self.file).write_vectored(&[IoSlice::new(&ZERO_VNET_HDR), IoSlice::new(pkt)])?;
        Ok(n.saturating_sub(VNET_HDR_LEN))
    }

    /// Writes `bytes` as they are: a virtio-net header and a packet (possibly a GSO super-frame)
    /// on a queue with offloads, a plain packet otherwise.
    pub fn write_raw(&self, bytes: &[u8]) -> io::Result<usize> {
        (&self.file).write(bytes)
    }

    /// Writes `head` (a virtio-net header and the packet's first bytes) followed by `parts` as
    /// one packet with one `writev(2)`: a super-frame whose payload lies elsewhere. At most
    /// [`GATHER_PARTS`] parts; more is `InvalidInput` and nothing is written.
    pub fn write_gathered<'a>(
        &self,
        head: &'a [u8],
        parts: impl IntoIterator<Item = &'a [u8]>,
    ) -> io::Result<usize> {
        let mut iov = [IoSlice::new(&[]); 1 + GATHER_PARTS];
        iov[0] = IoSlice::new(head);
        let mut n = 1;
        for p in parts {
            let Some(slot) = iov.get_mut(n) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "more pieces than a gathered TUN write takes",
                ));
            };
            *slot = IoSlice::new(p);
            n += 1;
        }
        (&self.file).write_vectored(&iov[..n])
    }
}

impl AsFd for TunQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl From<TunQueue> for OwnedFd {
    fn from(q: TunQueue) -> OwnedFd {
        q.file.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_queue_counts_and_names() {
        for n in [0, MAX_QUEUES + 1] {
            let err = TunDevice::create("wt0", n).expect_err("bad queue count");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        let err = sys::if_nametoindex("a-name-longer-than-15").expect_err("too long");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = sys::if_nametoindex("a/b").expect_err("slash");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
