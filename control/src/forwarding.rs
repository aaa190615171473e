//! The kernel settings a node's pod path needs, set by `weftd run` at start-up.
//!
//! Pod traffic is routed by the node's kernel between the pod bridge, the tunnel's TUN device and
//! the underlay, so `net.ipv4.ip_forward` must be 1: with it off the kernel drops every packet a pod
//! sends to another node (flannel's documentation asks the operator to set it; Calico's Felix sets
//! it itself, and so does Weft). The sysctl is per network namespace and is written through
//! `/proc/sys` of the agent's own namespace.
//!
//! Reverse-path filtering needs no change: packets from remote pods arrive on the TUN and the route
//! back to their subnet leaves through the same TUN, and direct (host-gw, CrossSubnet) peers arrive
//! on the underlay interface their route uses, so strict `rp_filter` passes both.

use std::path::{Path, PathBuf};

/// `net.ipv4.ip_forward`, as a path under `/proc/sys`.
pub const IP_FORWARD: &str = "net/ipv4/ip_forward";

/// One sysctl that start-up changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlChange {
    /// The key in `sysctl` notation (`net.ipv4.ip_forward`).
    pub key: String,
    /// The value before.
    pub before: String,
    /// The value written.
    pub after: String,
}

/// Why a sysctl could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("sysctl {key}: cannot {op} {}: {source} (weftd needs root or CAP_NET_ADMIN in its network namespace)", path.display())]
pub struct SysctlError {
    /// The key in `sysctl` notation.
    pub key: String,
    /// `read` or `write`.
    pub op: &'static str,
    /// The file under `/proc/sys`.
    pub path: PathBuf,
    /// The OS error.
    pub source: std::io::Error,
}

/// `net/ipv4/ip_forward` → `net.ipv4.ip_forward`.
pub fn dotted(key: &str) -> String {
    key.replace('/', ".")
}

/// Reads a sysctl below `root` (`/proc/sys` on a node), trimmed.
pub fn read(root: &Path, key: &str) -> Result<String, SysctlError> {
    let path = root.join(key);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| SysctlError {
            key: dotted(key),
            op: "read",
            path,
            source,
        })
}

/// Sets `key` to `value` below `root` unless it already holds it; returns the change made.
pub fn ensure(root: &Path, key: &str, value: &str) -> Result<Option<SysctlChange>, SysctlError> {
    let before = read(root, key)?;
    if before == value {
        return Ok(None);
    }
    let path = root.join(key);
    std::fs::write(&path, value).map_err(|source| SysctlError {
        key: dotted(key),
        op: "write",
        path,
        source,
    })?;
    Ok(Some(SysctlChange {
        key: dotted(key),
        before,
        after: value.to_string(),
    }))
}

/// Everything the node's path needs, below `root`: today `net.ipv4.ip_forward = 1`. Returns what
/// was changed (empty when the host already had it), so the caller can log and report it.
pub fn enable(root: &Path) -> Result<Vec<SysctlChange>, SysctlError> {
    Ok(ensure(root, IP_FORWARD, "1")?.into_iter().collect())
}

/// Whether IPv4 forwarding is on below `root`; `None` when it cannot be read.
pub fn ip_forward_on(root: &Path) -> Option<bool> {
    read(root, IP_FORWARD).ok().map(|v| v == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(value: &str) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        std::fs::create_dir_all(d.path().join("net/ipv4")).expect("mkdir");
        std::fs::write(d.path().join(IP_FORWARD), format!("{value}\n")).expect("write");
        d
    }

    /// A directory removed on drop (no tempfile crate in the tree).
    mod tempdir {
        use std::path::{Path, PathBuf};

        pub struct Dir(PathBuf);

        impl Dir {
            pub fn new() -> Dir {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir()
                    .join(format!("weft-forwarding-test-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).expect("mkdir");
                Dir(p)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn off_is_turned_on_and_reported() {
        let d = fake_proc("0");
        let changes = enable(d.path()).expect("enable");
        assert_eq!(
            changes,
            vec![SysctlChange {
                key: "net.ipv4.ip_forward".into(),
                before: "0".into(),
                after: "1".into()
            }]
        );
        assert_eq!(ip_forward_on(d.path()), Some(true));
    }

    #[test]
    fn on_is_left_alone() {
        let d = fake_proc("1");
        assert!(enable(d.path()).expect("enable").is_empty());
    }

    #[test]
    fn missing_file_names_the_key() {
        let d = tempdir::Dir::new();
        let e = enable(d.path()).expect_err("no file");
        assert!(e.to_string().contains("net.ipv4.ip_forward"), "{e}");
        assert_eq!(ip_forward_on(d.path()), None);
    }
}
