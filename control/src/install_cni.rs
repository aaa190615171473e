//! `weftd install-cni`: puts the `weft` CNI plugin and its network configuration list where the
//! container runtime looks for them (`/opt/cni/bin`, `/etc/cni/net.d`), as the init containers of
//! flannel's and Calico's DaemonSets do with `cp`.
//!
//! What `cp` does not give, and an operator expects:
//! - **Atomic**: each file is written to a temporary file in the destination directory, flushed,
//!   given its mode and renamed over the old one, then the directory is flushed. A runtime never
//!   execs a half-written plugin or reads a half-written conflist, and replacing a plugin that is
//!   running at that moment is safe (rename, not overwrite: no `ETXTBSY`).
//! - **Idempotent**: a destination that already holds the same bytes and mode is left alone, so a
//!   restarted init container changes nothing.
//! - **Checked first**: the conflist is parsed and checked as a CNI network configuration list
//!   (name, a supported `cniVersion`, plugins with a `type`, the `weft` entry's socket) before
//!   anything is written; a bad one leaves the destination untouched.
//! - **Ordered**: the plugin goes in before the conflist, so a runtime that sees the conflist
//!   finds the plugin.
//!
//! The runtime uses the first configuration file of the directory in lexical order; files that
//! sort before ours (a left-over `10-flannel.conflist`, say) are reported, since pods would still
//! be attached by them.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The shipped network configuration list for switch mode, the default (`deploy/10-weft.conflist`:
/// weft with the `bandwidth` capability, then portmap), built in so the binary alone can install
/// it.
pub const SHIPPED_CONFLIST: &str = include_str!("../../deploy/10-weft.conflist");
/// The shipped list for bridge mode (`deploy/10-weft-bridge.conflist`: weft, portmap, and the
/// `bandwidth` plugin, which shapes pods on the bridge with tc).
pub const SHIPPED_BRIDGE_CONFLIST: &str = include_str!("../../deploy/10-weft-bridge.conflist");
/// The file name the conflist is installed as.
pub const CONFLIST_NAME: &str = "10-weft.conflist";
/// The plugin's file name (the `type` in the conflist).
pub const PLUGIN_NAME: &str = "weft";
/// Default plugin directory (the runtime's `CNI_PATH`).
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
/// Default network configuration directory.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";

/// Why the installation failed. Nothing was changed in the destination for the failing file.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The plugin binary to install cannot be read.
    #[error("plugin {path}: {source} (build it with `cargo build --release -p cni-shim`, or pass --plugin)")]
    Plugin {
        /// The source path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The source is not an executable file.
    #[error("plugin {path}: not an executable regular file")]
    NotExecutable {
        /// The source path.
        path: PathBuf,
    },
    /// The conflist to install cannot be read.
    #[error("conflist {path}: {source}")]
    ConflistRead {
        /// The source path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The conflist is not a valid CNI network configuration list.
    #[error("conflist {origin}: {message}")]
    Conflist {
        /// Where it came from (a path or "built-in").
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// Writing into the destination failed.
    #[error("cannot install {path}: {source}")]
    Write {
        /// The destination path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What to install where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallPlan {
    /// The `weft` plugin binary to copy.
    pub plugin: PathBuf,
    /// The conflist to copy; `None` installs [`SHIPPED_CONFLIST`], or with `bridge`
    /// [`SHIPPED_BRIDGE_CONFLIST`].
    pub conflist: Option<PathBuf>,
    /// The built-in list is for bridge mode (`[dataplane] pod_ports = "bridge"`).
    pub bridge: bool,
    /// Plugin directory.
    pub bin_dir: PathBuf,
    /// Network configuration directory.
    pub conf_dir: PathBuf,
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written (new or changed).
    Installed,
    /// Already identical; left alone.
    Unchanged,
}

/// The result of [`install`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    /// The installed plugin and what happened to it.
    pub plugin: (PathBuf, Outcome),
    /// The installed conflist and what happened to it.
    pub conflist: (PathBuf, Outcome),
    /// Configuration files in the conf dir that sort before ours: the runtime would use them.
    pub shadowing: Vec<PathBuf>,
}

/// The plugin beside the running executable (`/usr/local/bin/weft` in the image, the cargo
/// target directory in a build tree).
pub fn default_plugin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(PLUGIN_NAME)))
        .unwrap_or_else(|| PathBuf::from(PLUGIN_NAME))
}

/// Checks `text` as a CNI network configuration list that uses the `weft` plugin: JSON object,
/// `name` valid, `cniVersion` one `weft` speaks, a non-empty `plugins` array whose entries are
/// objects with a string `type`, exactly one of them `weft`, whose configuration (as a runtime
/// would build it: the list's `name` and `cniVersion` added) the plugin accepts. Returns the
/// parsed list.
pub fn check_conflist(text: &str) -> Result<Value, String> {
    let list: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = list
        .as_object()
        .ok_or("not a JSON object; a conflist is {\"name\", \"cniVersion\", \"plugins\": [...]}")?;
    let plugins = obj
        .get("plugins")
        .and_then(Value::as_array)
        .ok_or("plugins: missing or not an array (is this a single-plugin .conf file?)")?;
    if plugins.is_empty() {
        return Err("plugins: empty".into());
    }
    let mut weft = 0;
    for (i, p) in plugins.iter().enumerate() {
        let ty = p
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("plugins[{i}].type: missing or not a string"))?;
        if ty.is_empty() || ty.contains('/') {
            return Err(format!("plugins[{i}].type: {ty:?} is not a plugin name"));
        }
        // The configuration a runtime hands plugin i (libcni's buildOneConfig).
        let mut conf = p.clone();
        for key in ["name", "cniVersion"] {
            if let Some(v) = obj.get(key) {
                conf[key] = v.clone();
            }
        }
        let checked = if ty == PLUGIN_NAME {
            cni_shim::spec::NetConf::from_value(&conf)
        } else {
            cni_shim::spec::NetConf::from_value_any_plugin(&conf)
        }
        .map_err(|e| format!("plugins[{i}] ({ty}): {}", e.msg))?;
        if ty == PLUGIN_NAME {
            weft += 1;
            if i != 0 {
                return Err(format!(
                    "plugins[{i}]: weft must come first; chained plugins (portmap, bandwidth) need its result"
                ));
            }
            let _ = checked;
        }
    }
    if weft != 1 {
        return Err(format!(
            "plugins: {weft} entries of type \"weft\"; exactly one is needed"
        ));
    }
    let claims = |p: &Value| p.pointer("/capabilities/bandwidth") == Some(&Value::Bool(true));
    let weft_claims = plugins.first().is_some_and(claims);
    if weft_claims
        && plugins
            .iter()
            .any(|p| p.get("type") == Some(&"bandwidth".into()))
    {
        return Err("plugins: weft has the bandwidth capability and the bandwidth plugin is chained too; \
            switch mode (the default) shapes pods in weft, so drop the bandwidth plugin; bridge mode \
            shapes them with the plugin, so drop weft's capability (deploy/10-weft-bridge.conflist)"
            .into());
    }
    Ok(list)
}

/// Installs the plugin, then the conflist. See the module documentation.
pub fn install(plan: &InstallPlan) -> Result<InstallReport, InstallError> {
    let plugin_bytes = fs::read(&plan.plugin).map_err(|source| InstallError::Plugin {
        path: plan.plugin.clone(),
        source,
    })?;
    let meta = fs::metadata(&plan.plugin).map_err(|source| InstallError::Plugin {
        path: plan.plugin.clone(),
        source,
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(InstallError::NotExecutable {
            path: plan.plugin.clone(),
        });
    }
    let (origin, text) = match &plan.conflist {
        Some(path) => (
            path.display().to_string(),
            fs::read_to_string(path).map_err(|source| InstallError::ConflistRead {
                path: path.clone(),
                source,
            })?,
        ),
        None if plan.bridge => (
            "built-in (bridge mode)".to_string(),
            SHIPPED_BRIDGE_CONFLIST.to_string(),
        ),
        None => ("built-in".to_string(), SHIPPED_CONFLIST.to_string()),
    };
    check_conflist(&text).map_err(|message| InstallError::Conflist {
        origin: origin.clone(),
        message,
    })?;

    let plugin_dst = plan.bin_dir.join(PLUGIN_NAME);
    let plugin = (
        plugin_dst.clone(),
        install_file(&plugin_dst, &plugin_bytes, 0o755)?,
    );
    let conflist_dst = plan.conf_dir.join(CONFLIST_NAME);
    let conflist = (
        conflist_dst.clone(),
        install_file(&conflist_dst, text.as_bytes(), 0o644)?,
    );
    Ok(InstallReport {
        plugin,
        conflist,
        shadowing: shadowing(&plan.conf_dir, CONFLIST_NAME),
    })
}

/// Network configuration files in `dir` that a runtime would pick before `ours` (libcni reads
/// `*.conf`, `*.conflist` and `*.json` in lexical order and uses the first).
pub fn shadowing(dir: &Path, ours: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let is_conf = [".conf", ".conflist", ".json"]
                .iter()
                .any(|ext| name.ends_with(ext));
            is_conf && !name.starts_with('.') && name < ours
        })
        .collect();
    v.sort();
    v
}

/// Writes `bytes` with `mode` at `dst` by temporary file and rename, unless it is already there.
fn install_file(dst: &Path, bytes: &[u8], mode: u32) -> Result<Outcome, InstallError> {
    let err = |source| InstallError::Write {
        path: dst.to_path_buf(),
        source,
    };
    if let (Ok(old), Ok(meta)) = (fs::read(dst), fs::metadata(dst)) {
        if old == bytes && meta.permissions().mode() & 0o7777 == mode {
            return Ok(Outcome::Unchanged);
        }
    }
    let dir = dst
        .parent()
        .ok_or_else(|| err(std::io::Error::other("no parent directory")))?;
    fs::create_dir_all(dir).map_err(err)?;
    let name = dst.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // A dot name the runtime ignores (libcni skips neither, but no extension matches).
    let tmp = dir.join(format!(".{name}.weft-tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // The umask may have narrowed the mode given at creation.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, dst)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err(e)
    })?;
    Ok(Outcome::Installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_conflists_are_valid() {
        let list = check_conflist(SHIPPED_CONFLIST).expect("valid");
        assert_eq!(list["plugins"][0]["type"], "weft");
        assert_eq!(list["plugins"][0]["capabilities"]["bandwidth"], true);
        let list = check_conflist(SHIPPED_BRIDGE_CONFLIST).expect("valid");
        assert_eq!(list["plugins"][2]["type"], "bandwidth");
    }

    #[test]
    fn bad_conflists_say_what_is_wrong() {
        for (text, needle) in [
            ("nope", "not valid JSON"),
            ("[]", "not a JSON object"),
            (r#"{"name":"n","cniVersion":"1.0.0"}"#, "plugins: missing"),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"weft","ipam":{"type":"host-local"}}]}"#,
                "plugins[0] (weft): ipam: weft allocates pod addresses",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[]}"#,
                "plugins: empty",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"weft","capabilities":{"bandwidth":true}},{"type":"bandwidth","capabilities":{"bandwidth":true}}]}"#,
                "drop the bandwidth plugin",
            ),
            (
                r#"{"name":"n","cniVersion":"9.9.9","plugins":[{"type":"weft"}]}"#,
                "cniVersion",
            ),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"weft"}]}"#,
                "name: missing",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"portmap"}]}"#,
                "exactly one",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"portmap"},{"type":"weft"}]}"#,
                "must come first",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"weft","socket":"rel"}]}"#,
                "socket",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"nope":1}]}"#,
                "plugins[0].type",
            ),
        ] {
            let e = check_conflist(text).expect_err(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
