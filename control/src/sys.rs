//! The agent's only `unsafe` code: thin wrappers over the few syscalls the standard library does not
//! offer (`setns`, `unshare`, `mount`, `umount2`) and the `pre_exec` hook that enters a network
//! namespace in a child process.
//!
//! Every wrapper is safe to call: it takes owned or borrowed Rust values, converts them to C strings
//! or raw descriptors for the duration of the call, and turns `-1` into [`io::Error`]. Nothing here
//! keeps a raw pointer or a raw descriptor past the call.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {} contains a NUL byte", path.display()),
        )
    })
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Moves the calling *thread* into the network namespace `ns` (`setns(2)` with `CLONE_NEWNET`).
/// Other threads of the process stay where they are.
pub fn setns_net(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns takes a descriptor and a flag; `ns` is a live descriptor borrowed for the call.
    check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })
}

/// Gives the calling *thread* a new, empty network namespace (`unshare(2)` with `CLONE_NEWNET`).
pub fn unshare_net() -> io::Result<()> {
    // SAFETY: unshare takes only a flag and changes only the calling thread's namespace.
    check(unsafe { libc::unshare(libc::CLONE_NEWNET) })
}

/// `mount(source, target, NULL, flags, NULL)`: bind mounts and propagation changes, which need no
/// file system type and no data.
pub fn mount(source: &Path, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let source = cstring(source)?;
    let target = cstring(target)?;
    let fstype = c"none";
    // SAFETY: every pointer is a NUL-terminated string alive for the whole call; data is NULL, which
    // mount(2) accepts for bind mounts and propagation changes.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    })
}

/// `umount2(target, MNT_DETACH)`: lazily detaches the mount at `target`.
pub fn umount_detach(target: &Path) -> io::Result<()> {
    let target = cstring(target)?;
    // SAFETY: `target` is a NUL-terminated string alive for the whole call.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })
}

/// The effective user id of the process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Makes `cmd`, when spawned, enter the network namespace `ns` between fork and exec.
///
/// The child inherits `ns` across fork (close-on-exec only closes it at exec, after the hook ran),
/// so the raw descriptor is valid in the hook as long as `ns` outlives the spawn call, which the
/// caller guarantees by spawning while it still holds the namespace.
pub fn pre_exec_setns(cmd: &mut Command, ns: BorrowedFd<'_>) {
    let fd = ns.as_raw_fd();
    let hook = move || {
        // SAFETY: called in the forked child before exec; setns is async-signal-safe and `fd` is an
        // inherited copy of a descriptor the parent keeps open until spawn returns.
        if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook only calls setns (async-signal-safe) and allocates nothing on success; on
    // failure `last_os_error` reads errno, also async-signal-safe.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// True when the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    effective_uid() == 0
}

/// Sends `signal` to process `pid`; a process that is already gone is not an error worth reporting
/// to callers that only clean up.
pub fn kill(pid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Turns transmit checksum offload of link `ifname` on or off (`ethtool -K <if> tx on|off`, through
/// the legacy `ETHTOOL_STXCSUM` ioctl), in the calling thread's network namespace.
///
/// The lab needs it: a veth hands `CHECKSUM_PARTIAL` packets to its peer unfinished, which a real
/// NIC would complete on the wire. A kernel VXLAN node behind a veth would otherwise send inner
/// TCP checksums that only a kernel receiver (which trusts the skb metadata) accepts.
pub fn set_tx_checksum_offload(ifname: &str, on: bool) -> io::Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let name = ifname.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {ifname:?} is too long"),
        ));
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: u32::from(on),
    };
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value for it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    // SAFETY: SIOCETHTOOL reads `req` (a valid, NUL-terminated ifreq) and the EthtoolValue it points
    // to, both alive on this stack frame for the whole call; the socket fd is open.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) })
}

/// Takes an exclusive advisory lock on `file` without waiting (`flock(LOCK_EX | LOCK_NB)`):
/// `Ok(true)` when taken, `Ok(false)` when another open file description holds it. The lock goes
/// with the file's last descriptor, also when the process dies.
pub fn try_lock_exclusive(file: &std::fs::File) -> io::Result<bool> {
    // SAFETY: flock takes a descriptor and flags; `file` keeps the descriptor open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// True when `file` is a namespace file (`/proc/PID/ns/*` or a bind mount of one): its file
/// system is nsfs (`fstatfs(2)` reports `NSFS_MAGIC`).
pub fn is_namespace_file(file: &std::fs::File) -> io::Result<bool> {
    const NSFS_MAGIC: libc::c_long = 0x6e73_6673;
    // SAFETY: `statfs` is plain old data; all-zero is a valid value for it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes into `st`, a live, properly sized statfs on this stack frame; the
    // descriptor stays open for the call because `file` is borrowed.
    check(unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) })?;
    Ok(st.f_type as libc::c_long == NSFS_MAGIC)
}
