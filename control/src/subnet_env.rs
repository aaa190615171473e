//! flannel's `subnet.env` (`--subnet-file`, default `/run/flannel/subnet.env`): what the flannel
//! CNI plugin and other node tools read to learn the node's pod subnet and MTU.
//!
//! Keys and order exactly as flanneld writes them:
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.1.1/24
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=false
//! ```
//!
//! `FLANNEL_SUBNET` is the subnet's first host address with the subnet's length. The file is
//! written atomically: a temporary file in the same directory, fsync, rename, fsync of the
//! directory, so a reader (or a crash) never sees half a file.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

/// flannel's default path.
pub const DEFAULT_PATH: &str = "/run/flannel/subnet.env";

/// The contents of a subnet.env.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`.
    pub network: Ipv4Net,
    /// The node's subnet (written as its first host address, `FLANNEL_SUBNET`).
    pub subnet: Ipv4Net,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`.
    pub ipmasq: bool,
}

/// Why subnet.env could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct WriteError {
    /// The file.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

impl SubnetEnv {
    /// The file's text, in flannel's key order.
    pub fn render(&self) -> String {
        let first_host = Ipv4Addr::from(u32::from(self.subnet.network()).wrapping_add(1));
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network,
            first_host,
            self.subnet.prefix_len(),
            self.mtu,
            self.ipmasq
        )
    }

    /// Writes the file atomically (temporary file, fsync, rename, directory fsync), creating its
    /// directory.
    pub fn write(&self, path: &Path) -> Result<(), WriteError> {
        let err = |source| WriteError {
            path: path.to_path_buf(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "subnet.env".into());
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(self.render().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(err)
    }
}

/// The subnet a previous subnet.env recorded (`FLANNEL_SUBNET`), if the file exists and holds one.
/// flannel prefers it when re-acquiring a lease after a restart.
pub fn previous_subnet(path: &Path) -> Option<Ipv4Net> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .and_then(|v| v.trim().parse::<Ipv4Net>().ok())
        .map(|n| n.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_flannels_keys_in_order_and_round_trips_the_subnet() {
        let env = SubnetEnv {
            network: "10.244.0.0/16".parse().expect("net"),
            subnet: "10.244.1.0/24".parse().expect("net"),
            mtu: 1450,
            ipmasq: false,
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        let dir = std::env::temp_dir().join(format!("weft-subnet-env-{}", std::process::id()));
        let path = dir.join("sub/subnet.env");
        env.write(&path).expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), env.render());
        assert_eq!(previous_subnet(&path), Some(env.subnet));
        // Nothing else left in the directory (the temporary file was renamed).
        let entries: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("dir")
            .collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(previous_subnet(&dir.join("missing")), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
