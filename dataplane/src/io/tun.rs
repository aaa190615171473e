//! A multi-queue TUN device: the node's tunnel device, in the role `flannel.1` plays for flannel.
//!
//! The device is opened with `IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE` (Linux
//! `Documentation/networking/tuntap.rst`): packets are bare IPv4 (no packet-information prefix),
//! and each queue is its own file, so each worker reads and writes its own queue without sharing.
//! The kernel picks a queue per flow on transmit. The device is *not* persistent: it disappears
//! when the last queue closes, so a crashed agent leaves nothing behind and a restarted one simply
//! creates it again. Addresses, MTU and link state are the agent's business (netlink), not ours.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::sys;

/// The clone device every TUN queue is opened from.
const CLONE_DEVICE: &str = "/dev/net/tun";

/// The most queues the kernel allows per device (`MAX_TAP_QUEUES`).
pub const MAX_QUEUES: usize = 256;

/// A TUN device and its queues.
#[derive(Debug)]
pub struct TunDevice {
    name: String,
    queues: Vec<TunQueue>,
}

/// One queue of a TUN device: a nonblocking file that reads and writes whole IPv4 packets.
#[derive(Debug)]
pub struct TunQueue {
    file: File,
}

impl TunDevice {
    /// Creates TUN device `name` with `queues` queues (at least one), each opened nonblocking.
    ///
    /// Fails if a device of that name exists and is not a multi-queue TUN device we may attach to,
    /// or without `CAP_NET_ADMIN`. The device lives in the calling thread's network namespace and
    /// vanishes when every queue is closed.
    pub fn create(name: &str, queues: usize) -> io::Result<TunDevice> {
        if queues == 0 || queues > MAX_QUEUES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a TUN device needs 1 to {MAX_QUEUES} queues, not {queues}"),
            ));
        }
        let flags = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE;
        let mut name = name.to_owned();
        let mut opened = Vec::with_capacity(queues);
        for _ in 0..queues {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(CLONE_DEVICE)?;
            // The kernel may expand a `%d` in the first name; later queues attach by the result.
            name = sys::tun_set_iff(file.as_fd(), &name, flags)?;
            opened.push(TunQueue { file });
        }
        Ok(TunDevice {
            name,
            queues: opened,
        })
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
    /// Reads one packet into `buf`; `WouldBlock` when none is waiting. A packet longer than `buf`
    /// is cut to fit, so make `buf` at least the device MTU.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one IPv4 packet, which enters the kernel's stack as if received on the device.
    pub fn write(&self, pkt: &[u8]) -> io::Result<usize> {
        (&self.file).write(pkt)
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
