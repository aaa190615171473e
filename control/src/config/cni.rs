//! `[cni]`: the server the `weft` CNI plugin talks to.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError, DEFAULT_CNI_SOCKET, DEFAULT_DATA_DIR};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCni {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) socket: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) data_dir: Option<PathBuf>,
}

/// `[cni]`: the server the `weft` CNI plugin talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniSection {
    /// Serve the plugin (on by default).
    pub enabled: bool,
    /// The unix socket the plugin connects to; its network config's `socket` must name it.
    pub socket: PathBuf,
    /// Where the pod address allocations are kept (`cni-ipam.json` and `cni-ipam.journal`).
    pub data_dir: PathBuf,
}

/// Validates `[cni]`; its socket must not be the agent's `control_socket`.
pub(super) fn validate(raw: &RawCni, control_socket: &Path) -> Result<CniSection, ConfigError> {
    let absolute = |field: &str, path: PathBuf| {
        if path.is_absolute() {
            Ok(path)
        } else {
            Err(invalid(
                field,
                format!("{} is not an absolute path", path.display()),
            ))
        }
    };
    let cni = CniSection {
        enabled: raw.enabled.unwrap_or(true),
        socket: absolute(
            "cni.socket",
            raw.socket
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CNI_SOCKET)),
        )?,
        data_dir: absolute(
            "cni.data_dir",
            raw.data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        )?,
    };
    if cni.enabled && cni.socket == *control_socket {
        return Err(invalid(
            "cni.socket",
            format!(
                "{} is also dataplane.control_socket; the two sockets need different paths",
                cni.socket.display()
            ),
        ));
    }
    Ok(cni)
}

impl From<&CniSection> for RawCni {
    fn from(s: &CniSection) -> RawCni {
        RawCni {
            enabled: Some(s.enabled),
            socket: Some(s.socket.clone()),
            data_dir: Some(s.data_dir.clone()),
        }
    }
}
