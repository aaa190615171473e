//! Watching a manifest directory: the NetworkPolicy source of the etcd and static datastores.
//!
//! The directory is polled twice a second (names, sizes and modification times of its YAML
//! files, through symlinks, so a ConfigMap volume's atomic swap is seen). A change is loaded
//! whole and published; a load that fails is logged with the file, document and field, and
//! the set in force stays until the directory is fixed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use super::Manifests;
use crate::datastore::TableInputs;

/// How often the directory is looked at.
pub const POLL: Duration = Duration::from_millis(500);

/// What the directory's YAML files look like from outside: name, size, modification time.
type Signature = Vec<(String, u64, Option<SystemTime>)>;

fn signature(dir: &Path) -> std::io::Result<Signature> {
    let mut sig = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) || name.starts_with("..") {
            continue;
        }
        let meta = std::fs::metadata(entry.path())?;
        sig.push((name, meta.len(), meta.modified().ok()));
    }
    sig.sort();
    Ok(sig)
}

/// Loads `dir` now (a failure is logged; nothing from it is in force then) and returns the
/// manifests, with the signature they were read at.
fn load(dir: &Path) -> (Option<Manifests>, Option<Signature>) {
    let sig = signature(dir).ok();
    match Manifests::load_dir(dir) {
        Ok(m) => {
            tracing::info!(
                dir = %dir.display(),
                policies = m.policies.len(),
                namespaces = m.namespaces.len(),
                pods = m.pods.len(),
                "NetworkPolicy manifests loaded"
            );
            (Some(m), sig)
        }
        Err(e) => {
            tracing::error!("NetworkPolicy manifests not applied: {e}");
            (None, sig)
        }
    }
}

/// The first load of `dir`, for the agent's start: the manifests, or none when the directory
/// cannot be loaded (logged).
pub fn initial(dir: &Path) -> Option<Manifests> {
    load(dir).0
}

/// Watches `dir` until `stop`, publishing each change through `inputs`.
pub fn spawn(
    dir: PathBuf,
    inputs: Arc<TableInputs>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("weft-policy".into())
        .spawn(move || {
            let mut seen = signature(&dir).ok();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(POLL);
                let now = signature(&dir).ok();
                if now == seen {
                    continue;
                }
                let (manifests, sig) = load(&dir);
                seen = sig;
                if let Some(m) = manifests {
                    inputs.set_policy_manifests(m);
                }
            }
        })
}
