//! The crate's only `unsafe`: thin wrappers over the Linux syscalls the I/O shell needs.
//!
//! Each wrapper turns a C return value into an `io::Result`, and a raw fd into an [`OwnedFd`] on
//! the line after the syscall that made it (after rust-vmm). Nothing here decides
//! policy: retries, drops and counting live in the safe modules around it.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::marker::PhantomData;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;

use libc::{c_int, c_void, socklen_t};

/// What arrived in one slot of a [`RecvBatch`](super::batch::RecvBatch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes written at `HEADROOM` in the slot (cut to the slot if `truncated`).
    pub len: usize,
    /// The sender's underlay address and port.
    pub src: SocketAddrV4,
    /// The datagram was larger than the slot and was cut (`MSG_TRUNC`); a worker drops it as
    /// [`DropReason::TooBig`](crate::drop::DropReason::TooBig).
    pub truncated: bool,
    /// With `UDP_GRO` on ([`VxlanSocket::enable_gro`](super::udp::VxlanSocket::enable_gro)): the kernel merged datagrams of one flow,
    /// each `segment` bytes but the last, into this one. 0 when nothing was merged.
    pub segment: usize,
}

impl RecvMeta {
    pub(crate) const EMPTY: RecvMeta = RecvMeta {
        len: 0,
        src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        truncated: false,
        segment: 0,
    };
}

/// Turns a negative C return value into the thread's `errno`.
fn cvt(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Moves the calling *thread* into a new, empty network namespace (`unshare(CLONE_NEWNET)`).
///
/// Only the calling thread changes namespace; sockets and devices it creates afterwards belong to
/// the new namespace, as do processes it spawns. The namespace lives while a thread is in it or a
/// socket or TUN queue created in it is open. Meant for tests and tools, as in aya's netns tests.
pub fn unshare_net() -> io::Result<()> {
    // SAFETY: unshare takes no pointers; CLONE_NEWNET affects only the calling thread's namespaces.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
    Ok(())
}

/// A NUL-terminated interface name, checked the way the kernel's `dev_valid_name` checks it, so
/// that a bad name is an `InvalidInput` error here rather than a puzzling `EINVAL` from an ioctl.
fn ifname(name: &str) -> io::Result<CString> {
    let bad = name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?} (1-15 bytes, no '/', ':' or whitespace)"),
        ));
    }
    CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// `ioctl(fd, TUNSETIFF)`: attaches the `/dev/net/tun` file `fd` to interface `name` (creating it
/// if needed) with `flags`. Returns the name the kernel settled on (it expands a `%d`).
pub(crate) fn tun_set_iff(fd: BorrowedFd<'_>, name: &str, flags: c_int) -> io::Result<String> {
    let cname = ifname(name)?;
    // SAFETY: ifreq is a plain C struct (a name array and a union of integers and plain structs),
    // for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(cname.as_bytes_with_nul()) {
        *dst = src as libc::c_char;
    }
    // IFF_* flags fit a c_short by definition of the ioctl ABI.
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: fd is an open /dev/net/tun file for the duration of the borrow; TUNSETIFF reads and
    // writes exactly one `struct ifreq`, which `req` is, and keeps no pointer to it.
    cvt(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETIFF,
            &mut req as *mut libc::ifreq,
        )
    })?;
    let actual: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&actual).into_owned())
}

/// `ioctl(fd, TUNSETOFFLOAD, flags)`: which offloads (`TUN_F_*`) the kernel may use in packets it
/// hands this TUN device's reader. The argument is passed by value, not by pointer.
pub(crate) fn tun_set_offload(fd: BorrowedFd<'_>, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: fd is an open TUN file for the borrow; TUNSETOFFLOAD takes an integer argument and
    // dereferences nothing.
    cvt(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    })?;
    Ok(())
}

/// An `ioctl` on a TUN file whose argument is a pointer to one `int` the kernel reads
/// (`TUNSETVNETHDRSZ`, `TUNSETVNETLE`).
pub(crate) fn tun_set_int(
    fd: BorrowedFd<'_>,
    request: libc::Ioctl,
    value: c_int,
) -> io::Result<()> {
    // SAFETY: fd is an open TUN file for the borrow; the request reads exactly one int through
    // the pointer, which points at a live local, and keeps no pointer after returning.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), request, &value as *const c_int) })?;
    Ok(())
}

/// `if_nametoindex(3)`, in the calling thread's network namespace.
pub(crate) fn if_nametoindex(name: &str) -> io::Result<u32> {
    let cname = ifname(name)?;
    // SAFETY: cname is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(index)
    }
}

/// `socket(2)`, always close-on-exec and nonblocking.
pub(crate) fn socket(domain: c_int, ty: c_int, protocol: c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            ty | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            protocol,
        )
    })?;
    // SAFETY: socket just returned this fd, so it is open and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt(2)` with an `int` value.
pub(crate) fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    value: c_int,
) -> io::Result<()> {
    // SAFETY: the option value points to a live c_int of the length passed; fd is open for the
    // borrow; the kernel copies the value and keeps no pointer.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const c_int).cast::<c_void>(),
            mem::size_of::<c_int>() as socklen_t,
        )
    })?;
    Ok(())
}

/// `setsockopt(SO_ATTACH_FILTER)`: runs the classic BPF program `prog` on every packet queued to
/// the socket; a packet for which it returns 0 is not queued.
pub(crate) fn attach_filter(fd: BorrowedFd<'_>, prog: &[libc::sock_filter]) -> io::Result<()> {
    set_program(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, prog)
}

/// `SO_ATTACH_REUSEPORT_CBPF` (linux/asm-generic/socket.h).
pub(crate) const SO_ATTACH_REUSEPORT_CBPF: c_int = 51;
/// `PACKET_FANOUT` and `PACKET_FANOUT_DATA` (linux/if_packet.h).
pub(crate) const PACKET_FANOUT: c_int = 18;
pub(crate) const PACKET_FANOUT_DATA: c_int = 22;
/// Fanout mode "a classic BPF program picks the socket", and the flag asking the kernel for an
/// unused group id.
pub(crate) const PACKET_FANOUT_CBPF: c_int = 6;
pub(crate) const PACKET_FANOUT_FLAG_UNIQUEID: c_int = 0x2000;

/// `setsockopt(fd, level, name, &sock_fprog)`: hands the classic BPF program `prog` to the
/// kernel as a socket filter, a reuseport group's selector or a fanout group's demultiplexer.
pub(crate) fn set_program(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    prog: &[libc::sock_filter],
) -> io::Result<()> {
    let len = u16::try_from(prog.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: fprog points at `len` live instructions borrowed for the call and is itself live
    // for the length passed; the kernel copies the program and keeps no pointer into it.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&fprog as *const libc::sock_fprog).cast::<c_void>(),
            mem::size_of::<libc::sock_fprog>() as socklen_t,
        )
    })?;
    Ok(())
}

/// `setsockopt(SO_DETACH_FILTER)`: removes the socket's filter.
pub(crate) fn detach_filter(fd: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DETACH_FILTER, 0)
}

/// `getsockopt(2)` of an `int` option.
pub(crate) fn getsockopt_int(fd: BorrowedFd<'_>, level: c_int, name: c_int) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = mem::size_of::<c_int>() as socklen_t;
    // SAFETY: value and len are live locals of the sizes the kernel is told; fd is open.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut c_int).cast::<c_void>(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// The kernel's form of an IPv4 socket address.
fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// Reads back a `sockaddr_in` the kernel filled in; anything not AF_INET becomes `0.0.0.0:0`.
fn from_sockaddr_in(sa: &libc::sockaddr_in, len: socklen_t) -> SocketAddrV4 {
    if (len as usize) < mem::size_of::<libc::sockaddr_in>()
        || c_int::from(sa.sin_family) != libc::AF_INET
    {
        return SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    }
    SocketAddrV4::new(
        Ipv4Addr::from(sa.sin_addr.s_addr.to_ne_bytes()),
        u16::from_be(sa.sin_port),
    )
}

/// `bind(2)` to an IPv4 address.
pub(crate) fn bind_v4(fd: BorrowedFd<'_>, addr: SocketAddrV4) -> io::Result<()> {
    let sa = sockaddr_in(addr);
    // SAFETY: sa is a live sockaddr_in of the length passed; fd is open; bind copies the address.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast::<libc::sockaddr>(),
            mem::size_of::<libc::sockaddr_in>() as socklen_t,
        )
    })?;
    Ok(())
}

/// `getsockname(2)` of an IPv4 socket.
pub(crate) fn local_addr_v4(fd: BorrowedFd<'_>) -> io::Result<SocketAddrV4> {
    // SAFETY: sockaddr_in is a plain C struct for which all-zero bytes are valid.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_in>() as socklen_t;
    // SAFETY: sa and len are live locals of the sizes the kernel is told; fd is open.
    cvt(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut sa as *mut libc::sockaddr_in).cast::<libc::sockaddr>(),
            &mut len,
        )
    })?;
    Ok(from_sockaddr_in(&sa, len))
}

/// Points `hdrs[range]` at the matching `iovs` and `addrs` entries (one iovec and one
/// `sockaddr_in` per message, no control data), as both `recvmmsg` and `sendmmsg` need. The
/// pointers are only stored here; they are dereferenced by the kernel during the call that follows,
/// while the caller still borrows all three arrays.
fn link_headers(
    hdrs: &mut [libc::mmsghdr],
    iovs: &mut [libc::iovec],
    addrs: &mut [libc::sockaddr_in],
    range: std::ops::Range<usize>,
) {
    let iovs = iovs.as_mut_ptr();
    let addrs = addrs.as_mut_ptr();
    for (i, h) in hdrs
        .iter_mut()
        .enumerate()
        .take(range.end)
        .skip(range.start)
    {
        h.msg_len = 0;
        h.msg_hdr.msg_name = addrs.wrapping_add(i).cast::<c_void>();
        h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as socklen_t;
        h.msg_hdr.msg_iov = iovs.wrapping_add(i);
        h.msg_hdr.msg_iovlen = 1;
        h.msg_hdr.msg_control = ptr::null_mut();
        h.msg_hdr.msg_controllen = 0;
        h.msg_hdr.msg_flags = 0;
    }
}

/// The header arrays `recvmmsg(2)` fills, allocated once.
///
/// They hold raw pointers into the caller's buffers, but only for the duration of one
/// [`RecvScratch::recvmmsg`] call: every pointer is rewritten right before the syscall and never
/// read by Rust afterwards.
pub(crate) struct RecvScratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in>,
    ctrl: Vec<CmsgBuf>,
}

/// `setsockopt`/`cmsg` level and names from `linux/udp.h`, which libc does not export for glibc.
pub(crate) const SOL_UDP: c_int = 17;
/// Send: cut a datagram into segments of this many payload bytes (Linux 4.18).
pub(crate) const UDP_SEGMENT: c_int = 103;
/// Receive: let the kernel merge a flow's datagrams; the segment size arrives as a cmsg (Linux 5.0).
pub(crate) const UDP_GRO: c_int = 104;

/// Room for one control message carrying an `int` (`CMSG_SPACE(4)` is 24 on 64-bit Linux), aligned
/// as `cmsghdr` must be.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CmsgBuf([u8; 32]);

impl CmsgBuf {
    const ZERO: CmsgBuf = CmsgBuf([0; 32]);
}

/// Reads the `UDP_GRO` segment size out of a received message's control data, 0 when absent.
fn gro_segment_size(h: &libc::msghdr) -> usize {
    if h.msg_control.is_null() || h.msg_controllen < mem::size_of::<libc::cmsghdr>() {
        return 0;
    }
    // SAFETY: msg_control points at the CmsgBuf this message was given (live, aligned, 32 bytes)
    // and msg_controllen is what the kernel wrote into it, at most that; CMSG_FIRSTHDR/NXTHDR
    // stay inside msg_controllen and CMSG_DATA is read only when the header says it holds an int.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == SOL_UDP
                && (*c).cmsg_type == UDP_GRO
                && (*c).cmsg_len as usize >= libc::CMSG_LEN(mem::size_of::<c_int>() as u32) as usize
            {
                let v = ptr::read_unaligned(libc::CMSG_DATA(c).cast::<c_int>());
                return usize::try_from(v).unwrap_or(0);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    0
}

// SAFETY: the raw pointers inside are scratch values that are set from live `&mut` borrows at the
// start of each `recvmmsg` call and dead after it; no pointer is ever dereferenced by Rust, so
// moving the arrays to another thread cannot create shared access to anything.
unsafe impl Send for RecvScratch {}

impl std::fmt::Debug for RecvScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvScratch")
            .field("capacity", &self.hdrs.len())
            .finish()
    }
}

impl RecvScratch {
    /// Headers for up to `n` datagrams per call.
    pub(crate) fn new(n: usize) -> Self {
        // SAFETY: mmsghdr, iovec and sockaddr_in are plain C structs (integers and raw pointers)
        // for which all-zero bytes are a valid value.
        let (hdr, iov, addr) = unsafe {
            (
                mem::zeroed::<libc::mmsghdr>(),
                mem::zeroed::<libc::iovec>(),
                mem::zeroed::<libc::sockaddr_in>(),
            )
        };
        RecvScratch {
            hdrs: vec![hdr; n],
            iovs: vec![iov; n],
            addrs: vec![addr; n],
            ctrl: vec![CmsgBuf::ZERO; n],
        }
    }

    /// `recvmmsg(fd, MSG_DONTWAIT)`: receives up to `out.len()` datagrams, datagram `i` into
    /// `bufs[i * slot_size + offset..(i + 1) * slot_size]`, and describes it in `out[i]`. Returns
    /// how many arrived; `EAGAIN` is `Ok(0)`.
    pub(crate) fn recvmmsg(
        &mut self,
        fd: BorrowedFd<'_>,
        bufs: &mut [u8],
        slot_size: usize,
        offset: usize,
        out: &mut [RecvMeta],
    ) -> io::Result<usize> {
        if offset >= slot_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "receive offset leaves no room in the slot",
            ));
        }
        let mut n = 0;
        for ((slot, iov), addr) in bufs
            .chunks_exact_mut(slot_size)
            .zip(self.iovs.iter_mut())
            .zip(self.addrs.iter_mut())
            .take(out.len())
        {
            let room = &mut slot[offset..];
            *iov = libc::iovec {
                iov_base: room.as_mut_ptr().cast::<c_void>(),
                iov_len: room.len(),
            };
            *addr = sockaddr_in(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        link_headers(&mut self.hdrs, &mut self.iovs, &mut self.addrs, 0..n);
        for (h, c) in self.hdrs.iter_mut().zip(self.ctrl.iter_mut()).take(n) {
            h.msg_hdr.msg_control = c.0.as_mut_ptr().cast::<c_void>();
            h.msg_hdr.msg_controllen = c.0.len();
        }
        // SAFETY: hdrs[..n] each point at a live sockaddr_in (addrs[i]) of the length given, a
        // live iovec (iovs[i]) describing a disjoint, writable part of `bufs`, which is mutably
        // borrowed for the whole call, and a live control buffer (ctrl[i]) of the length given;
        // n <= hdrs.len(); fd is open; no timeout pointer. The kernel keeps none of these pointers
        // after returning.
        let ret = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(err);
        }
        let got = ret as usize;
        for ((meta, h), addr) in out
            .iter_mut()
            .zip(self.hdrs.iter())
            .zip(self.addrs.iter())
            .take(got)
        {
            *meta = RecvMeta {
                len: h.msg_len as usize,
                src: from_sockaddr_in(addr, h.msg_hdr.msg_namelen),
                truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                segment: gro_segment_size(&h.msg_hdr),
            };
        }
        Ok(got)
    }
}

/// Datagrams one `sendmmsg(2)` call carries at most; the headers live on the stack.
pub const SEND_CHUNK: usize = 64;

/// Up to [`SEND_CHUNK`] IPv4 datagrams queued for one `sendmmsg(2)`, on the stack: no allocation.
///
/// `'a` is the lifetime of the packet bytes; the pointers to the headers' own arrays are written
/// only inside [`SendScratch::sendmmsg`], so the struct may be moved freely between calls.
pub(crate) struct SendScratch<'a> {
    hdrs: [libc::mmsghdr; SEND_CHUNK],
    iovs: [libc::iovec; SEND_CHUNK],
    addrs: [libc::sockaddr_in; SEND_CHUNK],
    len: usize,
    _bufs: PhantomData<&'a [u8]>,
}

impl<'a> SendScratch<'a> {
    /// An empty batch.
    pub(crate) fn new() -> Self {
        // SAFETY: mmsghdr, iovec and sockaddr_in are plain C structs (integers and raw pointers)
        // for which all-zero bytes are a valid value.
        let (hdr, iov, addr) = unsafe {
            (
                mem::zeroed::<libc::mmsghdr>(),
                mem::zeroed::<libc::iovec>(),
                mem::zeroed::<libc::sockaddr_in>(),
            )
        };
        SendScratch {
            hdrs: [hdr; SEND_CHUNK],
            iovs: [iov; SEND_CHUNK],
            addrs: [addr; SEND_CHUNK],
            len: 0,
            _bufs: PhantomData,
        }
    }

    /// Queued datagrams.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether another datagram fits.
    pub(crate) fn is_full(&self) -> bool {
        self.len == SEND_CHUNK
    }

    /// Forgets every queued datagram.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// Queues `pkt` for `dst` (port 0: a raw socket has none). Returns false, queuing nothing,
    /// when the batch is full.
    pub(crate) fn push(&mut self, dst: Ipv4Addr, pkt: &'a [u8]) -> bool {
        if self.is_full() {
            return false;
        }
        self.iovs[self.len] = libc::iovec {
            // The kernel only reads through this pointer (sendmmsg), so casting away const is sound.
            iov_base: pkt.as_ptr().cast_mut().cast::<c_void>(),
            iov_len: pkt.len(),
        };
        self.addrs[self.len] = sockaddr_in(SocketAddrV4::new(dst, 0));
        self.len += 1;
        true
    }

    /// The length of queued datagram `i`.
    pub(crate) fn packet_len(&self, i: usize) -> usize {
        self.iovs.get(i).map_or(0, |iov| iov.iov_len)
    }

    /// `sendmmsg(fd, MSG_DONTWAIT)` of the queued datagrams from index `first` on. Returns how
    /// many the kernel took, in order; an error means datagram `first` itself failed.
    pub(crate) fn sendmmsg(&mut self, fd: BorrowedFd<'_>, first: usize) -> io::Result<usize> {
        if first >= self.len {
            return Ok(0);
        }
        link_headers(
            &mut self.hdrs,
            &mut self.iovs,
            &mut self.addrs,
            first..self.len,
        );
        // SAFETY: hdrs[first..len] each point at a live sockaddr_in and a live iovec inside self,
        // which is mutably borrowed for the call; each iovec points at packet bytes borrowed for
        // 'a, which outlives self; first < len <= SEND_CHUNK; fd is open. The kernel only reads
        // the packets, writes msg_len, and keeps no pointer after returning.
        let ret = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr().wrapping_add(first),
                (self.len - first) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        Ok(cvt(ret)? as usize)
    }
}

/// Messages one [`TrainBatch`] carries at most.
pub const TRAIN_MSGS: usize = 64;
/// Payload pieces (iovecs) one [`TrainBatch`] carries at most, over all its messages.
pub const TRAIN_IOVS: usize = 512;

/// Up to [`TRAIN_MSGS`] UDP messages for one `sendmmsg(2)`, each gathered from up to
/// [`TRAIN_IOVS`] pieces in all and optionally cut by the kernel into segments of a fixed size
/// (`UDP_SEGMENT`, a "GSO train"). On the stack: no allocation.
///
/// Built with [`TrainBatch::begin`], [`TrainBatch::add`] and [`TrainBatch::end`]; the pointers
/// between the arrays are written only inside [`TrainBatch::sendmmsg`], so the struct may move.
pub(crate) struct TrainBatch<'a> {
    hdrs: [libc::mmsghdr; TRAIN_MSGS],
    iovs: [libc::iovec; TRAIN_IOVS],
    addrs: [libc::sockaddr_in; TRAIN_MSGS],
    ctrl: [CmsgBuf; TRAIN_MSGS],
    /// Per message: first iovec, iovec count, bytes, segment size (0: none).
    first_iov: [usize; TRAIN_MSGS],
    n_iov: [usize; TRAIN_MSGS],
    bytes: [usize; TRAIN_MSGS],
    segment: [u16; TRAIN_MSGS],
    msgs: usize,
    used_iovs: usize,
    open: bool,
    _bufs: PhantomData<&'a [u8]>,
}

impl<'a> TrainBatch<'a> {
    /// An empty batch.
    pub(crate) fn new() -> Self {
        // SAFETY: mmsghdr, iovec and sockaddr_in are plain C structs (integers and raw pointers)
        // for which all-zero bytes are a valid value.
        let (hdr, iov, addr) = unsafe {
            (
                mem::zeroed::<libc::mmsghdr>(),
                mem::zeroed::<libc::iovec>(),
                mem::zeroed::<libc::sockaddr_in>(),
            )
        };
        TrainBatch {
            hdrs: [hdr; TRAIN_MSGS],
            iovs: [iov; TRAIN_IOVS],
            addrs: [addr; TRAIN_MSGS],
            ctrl: [CmsgBuf::ZERO; TRAIN_MSGS],
            first_iov: [0; TRAIN_MSGS],
            n_iov: [0; TRAIN_MSGS],
            bytes: [0; TRAIN_MSGS],
            segment: [0; TRAIN_MSGS],
            msgs: 0,
            used_iovs: 0,
            open: false,
            _bufs: PhantomData,
        }
    }

    /// Closed messages.
    pub(crate) fn len(&self) -> usize {
        self.msgs
    }

    /// Forgets every message.
    pub(crate) fn clear(&mut self) {
        self.msgs = 0;
        self.used_iovs = 0;
        self.open = false;
    }

    /// Opens a message to `dst` with room for `pieces` pieces. False (nothing opened) when no
    /// message or not that many pieces would fit.
    pub(crate) fn begin(&mut self, dst: SocketAddrV4, pieces: usize) -> bool {
        if self.open || self.msgs == TRAIN_MSGS || self.used_iovs + pieces > TRAIN_IOVS {
            return false;
        }
        self.addrs[self.msgs] = sockaddr_in(dst);
        self.first_iov[self.msgs] = self.used_iovs;
        self.n_iov[self.msgs] = 0;
        self.bytes[self.msgs] = 0;
        self.segment[self.msgs] = 0;
        self.open = true;
        true
    }

    /// Whether `pieces` more pieces fit in the open message.
    pub(crate) fn has_room(&self, pieces: usize) -> bool {
        self.open && self.used_iovs + pieces <= TRAIN_IOVS
    }

    /// Appends `piece` to the open message. False (nothing added) when there is no room.
    pub(crate) fn add(&mut self, piece: &'a [u8]) -> bool {
        if !self.has_room(1) {
            return false;
        }
        self.iovs[self.used_iovs] = libc::iovec {
            // The kernel only reads through this pointer (sendmmsg), so casting away const is sound.
            iov_base: piece.as_ptr().cast_mut().cast::<c_void>(),
            iov_len: piece.len(),
        };
        self.used_iovs += 1;
        self.n_iov[self.msgs] += 1;
        self.bytes[self.msgs] += piece.len();
        true
    }

    /// Closes the open message; `segment` > 0 asks the kernel to cut it into datagrams of that
    /// many bytes (the last may be shorter). An empty message is discarded.
    pub(crate) fn end(&mut self, segment: u16) {
        if !self.open {
            return;
        }
        self.open = false;
        if self.n_iov[self.msgs] == 0 {
            return;
        }
        self.segment[self.msgs] = segment;
        self.msgs += 1;
    }

    /// Whether closed message `i` is a train (sent with `UDP_SEGMENT`).
    pub(crate) fn is_train(&self, i: usize) -> bool {
        self.segment.get(i).is_some_and(|&s| s > 0)
    }

    /// The datagrams closed message `i` becomes on the wire.
    pub(crate) fn message_segments(&self, i: usize) -> usize {
        match self.segment.get(i) {
            Some(&s) if s > 0 => self.message_bytes(i).div_ceil(usize::from(s)),
            Some(_) => 1,
            None => 0,
        }
    }

    /// Bytes of closed message `i`.
    pub(crate) fn message_bytes(&self, i: usize) -> usize {
        self.bytes.get(i).copied().unwrap_or(0)
    }

    /// `sendmmsg(fd, MSG_DONTWAIT)` of the closed messages from index `first` on. Returns how
    /// many the kernel took, in order; an error means message `first` itself failed.
    pub(crate) fn sendmmsg(&mut self, fd: BorrowedFd<'_>, first: usize) -> io::Result<usize> {
        if first >= self.msgs {
            return Ok(0);
        }
        let iovs = self.iovs.as_mut_ptr();
        for i in first..self.msgs {
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast::<c_void>();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as socklen_t;
            h.msg_hdr.msg_iov = iovs.wrapping_add(self.first_iov[i]);
            h.msg_hdr.msg_iovlen = self.n_iov[i];
            h.msg_hdr.msg_flags = 0;
            if self.segment[i] == 0 {
                h.msg_hdr.msg_control = ptr::null_mut();
                h.msg_hdr.msg_controllen = 0;
                continue;
            }
            let buf = &mut self.ctrl[i];
            h.msg_hdr.msg_control = buf.0.as_mut_ptr().cast::<c_void>();
            // SAFETY: CMSG_SPACE only computes a size.
            h.msg_hdr.msg_controllen =
                unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
            // SAFETY: msg_control points at buf (32 bytes, 8-aligned) and msg_controllen is
            // CMSG_SPACE(2) = 24 <= 32, so CMSG_FIRSTHDR returns a header inside buf, and the u16
            // written at CMSG_DATA lies inside CMSG_LEN(2) of it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                (*c).cmsg_level = SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as usize;
                ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), self.segment[i]);
            }
        }
        // SAFETY: hdrs[first..msgs] each point at a live sockaddr_in, a live run of iovecs and,
        // for trains, a live control buffer inside self, which is mutably borrowed for the call;
        // each iovec points at bytes borrowed for 'a, which outlives self; first < msgs <=
        // TRAIN_MSGS; fd is open. The kernel only reads them, writes msg_len, and keeps no pointer.
        let ret = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr().wrapping_add(first),
                (self.msgs - first) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        Ok(cvt(ret)? as usize)
    }
}

/// `bind(2)` of an `AF_PACKET` socket to interface `ifindex`, receiving every protocol.
pub(crate) fn bind_packet(fd: BorrowedFd<'_>, ifindex: u32) -> io::Result<()> {
    // SAFETY: sockaddr_ll is a plain C struct (integers and a byte array) for which all-zero
    // bytes are a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sa.sll_ifindex = i32::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
    // SAFETY: sa is a live sockaddr_ll of the length passed; fd is open for the borrow; the
    // kernel copies the address.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
            mem::size_of::<libc::sockaddr_ll>() as socklen_t,
        )
    })?;
    Ok(())
}

/// `PACKET_ADD_MEMBERSHIP` with `PACKET_MR_PROMISC` on `ifindex`: the interface is promiscuous
/// while this socket is open (the kernel counts and undoes it when the socket closes).
pub(crate) fn packet_promisc(fd: BorrowedFd<'_>, ifindex: u32) -> io::Result<()> {
    let mreq = libc::packet_mreq {
        mr_ifindex: i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?,
        mr_type: libc::PACKET_MR_PROMISC as u16,
        mr_alen: 0,
        mr_address: [0; 8],
    };
    // SAFETY: mreq is a live packet_mreq of the length passed; fd is open; the kernel copies it.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            (&mreq as *const libc::packet_mreq).cast::<c_void>(),
            mem::size_of::<libc::packet_mreq>() as socklen_t,
        )
    })?;
    Ok(())
}

/// `getsockopt(PACKET_STATISTICS)`: frames queued and dropped since the last call (the kernel
/// resets the counters on each read).
pub(crate) fn packet_stats(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    let mut st = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = mem::size_of::<libc::tpacket_stats>() as socklen_t;
    // SAFETY: st and len are live locals of the sizes the kernel is told; fd is open.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats).cast::<c_void>(),
            &mut len,
        )
    })?;
    Ok((st.tp_packets, st.tp_drops))
}

/// `sendmmsg(2)` of up to [`SEND_CHUNK`] frames on a bound `AF_PACKET` socket (no address: the
/// bound interface), `MSG_DONTWAIT`, each sent as `head` followed by the frame (gathered, two
/// iovecs). Returns how many the kernel took; `EAGAIN` is `Ok(0)`.
pub(crate) fn sendmmsg_frames(
    fd: BorrowedFd<'_>,
    head: &[u8],
    frames: &[&[u8]],
) -> io::Result<usize> {
    let n = frames.len().min(SEND_CHUNK);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: mmsghdr and iovec are plain C structs (integers and raw pointers) for which
    // all-zero bytes are a valid value.
    let mut hdrs: [libc::mmsghdr; SEND_CHUNK] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut iovs: [[libc::iovec; 2]; SEND_CHUNK] = unsafe { mem::zeroed() };
    for (i, f) in frames.iter().take(n).enumerate() {
        iovs[i] = [
            libc::iovec {
                iov_base: head.as_ptr().cast_mut().cast::<c_void>(),
                iov_len: head.len(),
            },
            libc::iovec {
                iov_base: f.as_ptr().cast_mut().cast::<c_void>(),
                iov_len: f.len(),
            },
        ];
    }
    let iov_ptr = iovs.as_mut_ptr();
    for (i, h) in hdrs.iter_mut().take(n).enumerate() {
        h.msg_hdr.msg_iov = iov_ptr.wrapping_add(i).cast::<libc::iovec>();
        h.msg_hdr.msg_iovlen = 2;
    }
    // SAFETY: hdrs[..n] each point at two live iovecs (iovs[i], contiguous) describing `head`
    // and a frame, both borrowed for the call (the kernel only reads them); no names, no control
    // data; n <= SEND_CHUNK; fd is open. The kernel keeps no pointer after returning.
    let ret = unsafe {
        libc::sendmmsg(
            fd.as_raw_fd(),
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(ret as usize)
}

/// `eventfd(2)`, nonblocking: a counter a thread writes to wake another out of its wait.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: eventfd just returned this fd, so it is open and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to the eventfd `fd` (makes it readable).
pub(crate) fn eventfd_wake(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64, as an eventfd requires; fd is open for the borrow.
    // A full counter (EAGAIN) means it is readable already, which is all a wake needs.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast::<c_void>(), 8) };
}

/// Reads the eventfd `fd` back to zero (not readable), if it was set.
pub(crate) fn eventfd_clear(fd: BorrowedFd<'_>) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64, as an eventfd requires; fd is open for the borrow.
    // EAGAIN (already zero) is fine.
    let _ = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast::<c_void>(), 8) };
}

/// A level-triggered `epoll(7)` set: each fd added with a caller's token, which [`Epoll::wait`]
/// hands back for every fd that is readable (or in error, or hung up). Its cost per wait is the
/// ready fds', not the watched ones' as with `poll(2)`.
pub(crate) struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    /// An empty set; one wait reports at most `capacity` ready fds (the rest stay ready for the
    /// next, level-triggered).
    pub(crate) fn new(capacity: usize) -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: epoll_create1 just returned this fd, so it is open and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let events = vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)];
        Ok(Epoll { fd, events })
    }

    /// Watches `fd` for input, reported as `token`. The caller keeps `fd` open while it is in the
    /// set (a closed fd leaves the set by itself).
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: ev is a live epoll_event the kernel reads during the call; both fds are open
        // for their borrows.
        cvt(unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        })
        .map(drop)
    }

    /// `epoll_wait(2)` at most `timeout_ms` (0: just look); the tokens of the fds that are ready.
    /// An interrupted wait reports none.
    pub(crate) fn wait(&mut self, timeout_ms: c_int) -> io::Result<impl Iterator<Item = u64> + '_> {
        let cap = c_int::try_from(self.events.len()).unwrap_or(c_int::MAX);
        // SAFETY: events is a live, exclusively borrowed array of cap epoll_event structs the
        // kernel fills; the epoll fd is ours and open.
        let ret = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                cap,
                timeout_ms,
            )
        };
        let n = if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
            0
        } else {
            ret as usize
        };
        // Copied out: epoll_event is packed on x86_64, so its fields take no references.
        Ok(self.events[..n].iter().map(|e| e.u64))
    }
}

/// `sendmsg(2)` of one message gathered from `pieces` (at most [`MAX_PIECES`]) on a bound
/// `AF_PACKET` socket, `MSG_DONTWAIT`. Returns the bytes sent.
pub(crate) fn sendmsg_pieces(fd: BorrowedFd<'_>, pieces: &[&[u8]]) -> io::Result<usize> {
    if pieces.len() > MAX_PIECES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "more pieces than one gathered send takes",
        ));
    }
    // SAFETY: iovec is a plain C struct (a pointer and a length) for which all-zero bytes are a
    // valid value.
    let mut iovs: [libc::iovec; MAX_PIECES] = unsafe { mem::zeroed() };
    for (iov, p) in iovs.iter_mut().zip(pieces) {
        *iov = libc::iovec {
            iov_base: p.as_ptr().cast_mut().cast::<c_void>(),
            iov_len: p.len(),
        };
    }
    // SAFETY: msghdr is a plain C struct for which all-zero bytes are a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = iovs.as_mut_ptr();
    msg.msg_iovlen = pieces.len();
    // SAFETY: msg points at `pieces.len()` live iovecs describing byte slices borrowed for the
    // call (the kernel only reads them); no name, no control data; fd is open for the borrow.
    let ret = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret as usize)
}

/// Pieces one [`sendmsg_pieces`] call takes: a virtio-net header, an Ethernet header, IPv4 and
/// transport headers, and up to 64 payload pieces.
pub(crate) const MAX_PIECES: usize = 3 + 64;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn an_epoll_set_reports_a_ready_fd_by_its_token_until_it_is_read() {
        let (quiet, loud) = (eventfd().expect("eventfd"), eventfd().expect("eventfd"));
        let mut set = Epoll::new(4).expect("epoll");
        set.add(quiet.as_fd(), 7).expect("add");
        set.add(loud.as_fd(), 9).expect("add");
        assert_eq!(set.wait(0).expect("wait").count(), 0);
        eventfd_wake(loud.as_fd());
        // Level-triggered: still ready on the second look, gone once read.
        for _ in 0..2 {
            assert_eq!(set.wait(0).expect("wait").collect::<Vec<_>>(), [9]);
        }
        eventfd_clear(loud.as_fd());
        assert_eq!(set.wait(0).expect("wait").count(), 0);
    }
}
