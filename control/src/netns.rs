//! Named network namespaces, made the way `ip netns add` makes them, so `ip -n NAME ...` and every
//! other iproute2-compatible tool see ours.
//!
//! A named namespace is a bind mount of a namespace file (`/proc/thread-self/ns/net` of a thread that
//! unshared) onto an empty file `/run/netns/NAME`. Like iproute2 (`ip/ipnetns.c`, `netns_add`), the
//! directory `/run/netns` is made a *shared* mount first, bind-mounting it onto itself when it is not
//! a mount point yet, so namespaces created later propagate into mount namespaces cloned earlier
//! (a container runtime's, for example).
//!
//! `setns(2)` moves only the calling thread. [`NetNs::run`] therefore runs its closure on a fresh
//! scoped thread that enters the namespace and then ends, as aya's integration tests do
//! (`test/integration-test/src/netns.rs`); the caller's thread never changes namespace. Anything
//! created on that thread that is bound to a namespace at creation (a netlink socket, a UDP socket)
//! stays in that namespace when it is later used from other threads.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::sys;

/// Where iproute2 keeps named network namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// The name cannot be a file name under `/run/netns`.
    #[error("invalid network namespace name {0:?}: use 1-64 characters, none of them '/' and not '.' or '..'")]
    InvalidName(String),
    /// `/run/netns/NAME` already exists.
    #[error("network namespace {0:?} already exists; pick another name or delete it with `ip netns del {0}`")]
    Exists(String),
    /// `/run/netns/NAME` does not exist or cannot be opened.
    #[error("cannot open network namespace {name:?} ({path}): {source}; check `ip netns list`")]
    Open {
        /// The namespace name.
        name: String,
        /// Its file.
        path: PathBuf,
        /// The error from open(2).
        source: io::Error,
    },
    /// The file exists but is no network namespace.
    #[error("{0} is not a network namespace (expected a bind mount like /var/run/netns/NAME or /proc/PID/ns/net)")]
    NotNetworkNamespace(String),
    /// A step of creating, entering or deleting a namespace failed.
    #[error("network namespace {name:?}: {step} failed: {source}; this needs root (CAP_SYS_ADMIN) and a writable /run")]
    Syscall {
        /// The namespace name.
        name: String,
        /// What was being done, e.g. "unshare(CLONE_NEWNET)".
        step: &'static str,
        /// The error from the kernel.
        source: io::Error,
    },
}

/// A named network namespace, open. Created namespaces are deleted on drop unless
/// [`NetNs::keep`] was called; opened ones are never deleted by drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
    file: File,
    delete_on_drop: bool,
}

fn validate_name(name: &str) -> Result<(), NetNsError> {
    if name.is_empty() || name.len() > 64 || name.contains('/') || name == "." || name == ".." {
        return Err(NetNsError::InvalidName(name.to_string()));
    }
    Ok(())
}

/// Makes `/run/netns` exist and be a shared mount, exactly as iproute2's `netns_add` does: try
/// `mount --make-shared`; if that fails with EINVAL (not a mount point), bind it onto itself once
/// and try again.
fn prepare_run_dir(name: &str) -> Result<(), NetNsError> {
    let dir = Path::new(NETNS_RUN_DIR);
    let err = |step, source| NetNsError::Syscall {
        name: name.to_string(),
        step,
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| err("mkdir /run/netns", e))?;
    let mut bound = false;
    loop {
        match sys::mount(Path::new("none"), dir, libc::MS_SHARED | libc::MS_REC) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !bound => {
                sys::mount(dir, dir, libc::MS_BIND | libc::MS_REC)
                    .map_err(|e| err("bind mount /run/netns onto itself", e))?;
                bound = true;
            }
            Err(e) => return Err(err("mount --make-shared /run/netns", e)),
        }
    }
}

impl NetNs {
    /// Creates the named namespace `name`, like `ip netns add NAME`.
    pub fn create(name: &str) -> Result<NetNs, NetNsError> {
        validate_name(name)?;
        prepare_run_dir(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        let err = |step, source| NetNsError::Syscall {
            name: name.to_string(),
            step,
            source,
        };
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(NetNsError::Exists(name.to_string()))
            }
            Err(e) => return Err(err("create the mount point file", e)),
        }
        // A helper thread unshares (changing only itself) and bind-mounts its new namespace; the
        // namespace lives on through the mount after the thread ends.
        let result = std::thread::scope(|s| {
            s.spawn(|| -> Result<(), NetNsError> {
                sys::unshare_net().map_err(|e| err("unshare(CLONE_NEWNET)", e))?;
                sys::mount(Path::new("/proc/thread-self/ns/net"), &path, libc::MS_BIND)
                    .map_err(|e| err("bind mount the new namespace", e))
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        if let Err(e) = result {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        match File::open(&path) {
            Ok(file) => Ok(NetNs {
                name: name.to_string(),
                path,
                file,
                delete_on_drop: true,
            }),
            Err(source) => {
                let _ = sys::umount_detach(&path);
                let _ = fs::remove_file(&path);
                Err(NetNsError::Open {
                    name: name.to_string(),
                    path,
                    source,
                })
            }
        }
    }

    /// Opens the existing named namespace `name` (`/run/netns/NAME`). Dropping the result does not
    /// delete the namespace.
    pub fn open(name: &str) -> Result<NetNs, NetNsError> {
        validate_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        let file = File::open(&path).map_err(|source| NetNsError::Open {
            name: name.to_string(),
            path: path.clone(),
            source,
        })?;
        Ok(NetNs {
            name: name.to_string(),
            path,
            file,
            delete_on_drop: false,
        })
    }

    /// Opens the network namespace file at `path` — a runtime's `CNI_NETNS`, such as
    /// `/var/run/netns/NAME` or `/proc/PID/ns/net` — and checks that it is one. Dropping the
    /// result does not delete anything; [`NetNs::name`] is the path.
    pub fn open_path(path: &Path) -> Result<NetNs, NetNsError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|source| NetNsError::Open {
            name: name.clone(),
            path: path.to_path_buf(),
            source,
        })?;
        // A namespace file lives on nsfs; setns(2) then tells a network namespace from others.
        if !sys::is_namespace_file(&file).unwrap_or(false) {
            return Err(NetNsError::NotNetworkNamespace(name));
        }
        Ok(NetNs {
            name,
            path: path.to_path_buf(),
            file,
            delete_on_drop: false,
        })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file, `/run/netns/NAME`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open namespace file: pass it to `setns(2)` or to [`crate::netlink::Netlink::move_to_netns`].
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Keeps the namespace when this handle is dropped.
    pub fn keep(&mut self) {
        self.delete_on_drop = false;
    }

    /// Runs `f` on a new thread inside the namespace and returns its result. The calling thread's
    /// namespace does not change. A panic in `f` is resumed on the calling thread.
    pub fn run<F, R>(&self, f: F) -> Result<R, NetNsError>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        std::thread::scope(|s| {
            s.spawn(|| {
                sys::setns_net(self.file.as_fd()).map_err(|source| NetNsError::Syscall {
                    name: self.name.clone(),
                    step: "setns(CLONE_NEWNET)",
                    source,
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Deletes the namespace like `ip netns del`: detaches the mount and removes the file. The
    /// namespace itself lives on while anything (a process, an open descriptor) still holds it.
    pub fn delete(mut self) -> Result<(), NetNsError> {
        self.delete_on_drop = false;
        self.remove()
    }

    fn remove(&self) -> Result<(), NetNsError> {
        let err = |step, source| NetNsError::Syscall {
            name: self.name.clone(),
            step,
            source,
        };
        match sys::umount_detach(&self.path) {
            Ok(()) => {}
            // Not mounted (EINVAL) or already gone (ENOENT): nothing left to detach.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
            Err(e) => return Err(err("umount2(MNT_DETACH)", e)),
        }
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err("remove the namespace file", e)),
        }
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.delete_on_drop {
            if let Err(e) = self.remove() {
                tracing::warn!("could not delete network namespace: {e}");
            }
        }
    }
}

/// Spawns `cmd` with its network namespace set to `ns` (the child calls `setns` between fork and
/// exec, like `ip netns exec` without the mount-namespace part). The hook stays on `cmd`: spawn
/// it again only while `ns` is still open.
pub fn spawn_in_netns(cmd: &mut Command, ns: &NetNs) -> io::Result<Child> {
    sys::pre_exec_setns(cmd, ns.as_fd());
    cmd.spawn()
}
