//! `[policy]`: Kubernetes NetworkPolicy, enforced in the switch.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{in_range, invalid, ConfigError};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) established: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) conntrack_max: Option<i64>,
}

/// Where NetworkPolicies (and the Pods and Namespaces they select) come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PolicySource {
    /// None: nothing enforced or tracked (the default without `dir`).
    #[default]
    None,
    /// A directory of YAML manifests (NetworkPolicy, Namespace and Pod objects, several per
    /// file), re-read when it changes: the source of etcd and static clusters.
    Dir(PathBuf),
    /// The Kubernetes API: Pods, Namespaces and NetworkPolicies through watchers, with the
    /// client of `[datastore.kubernetes]` (its kubeconfig, else the service account).
    Kubernetes,
}

impl PolicySource {
    /// The name `policy.source` takes.
    pub fn name(&self) -> &'static str {
        match self {
            PolicySource::None => "none",
            PolicySource::Dir(_) => "dir",
            PolicySource::Kubernetes => "kubernetes",
        }
    }
}

/// `[policy]`: where NetworkPolicies come from and how flows are tracked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySection {
    /// Where the policies come from.
    pub source: PolicySource,
    /// What a policy change does to connections it admitted before: `Recheck` decides them
    /// again at their next packet and cuts those the new policy denies (the default); `Keep`
    /// lets them run until they end (Calico's behaviour).
    pub established: dataplane::policy::OnPolicyChange,
    /// The flows tracked at most (connection table entries, 32 bytes each).
    pub conntrack_max: usize,
}

/// Default of `[policy] conntrack_max`: 262,144 flows, 8 MiB.
pub const DEFAULT_CONNTRACK_MAX: usize = 1 << 18;

/// Validates `[policy]`.
pub(super) fn validate(raw: &RawPolicy) -> Result<PolicySection, ConfigError> {
    use dataplane::policy::OnPolicyChange;
    if let Some(dir) = &raw.dir {
        if !dir.is_absolute() {
            return Err(invalid(
                "policy.dir",
                format!(
                    "{} is not an absolute path to a directory of manifests",
                    dir.display()
                ),
            ));
        }
    }
    let source = match (raw.source.as_deref(), &raw.dir) {
        (None | Some("dir"), Some(dir)) => PolicySource::Dir(dir.clone()),
        (None | Some("none"), None) => PolicySource::None,
        (Some("kubernetes"), None) => PolicySource::Kubernetes,
        (Some("dir"), None) => {
            return Err(invalid(
                "policy.dir",
                "policy.source = \"dir\" needs the directory: dir = \"/etc/weft/policies\"",
            ))
        }
        (Some(s @ ("none" | "kubernetes")), Some(_)) => {
            return Err(invalid(
                "policy.dir",
                format!("is set, but policy.source = {s:?} reads no directory; remove one of them"),
            ))
        }
        (Some(v), _) => {
            return Err(invalid(
                "policy.source",
                format!("{v:?} is not \"none\", \"dir\" or \"kubernetes\""),
            ))
        }
    };
    let established = match raw.established.as_deref() {
        None | Some("recheck") => OnPolicyChange::Recheck,
        Some("keep") => OnPolicyChange::Keep,
        Some(v) => {
            return Err(invalid(
                "policy.established",
                format!("{v:?} is not \"recheck\" or \"keep\""),
            ))
        }
    };
    let conntrack_max = in_range(
        "policy.conntrack_max",
        raw.conntrack_max.unwrap_or(DEFAULT_CONNTRACK_MAX as i64),
        1024,
        1 << 26,
    )? as usize;
    Ok(PolicySection {
        source,
        established,
        conntrack_max,
    })
}

impl From<&PolicySection> for RawPolicy {
    fn from(s: &PolicySection) -> RawPolicy {
        RawPolicy {
            source: Some(s.source.name().to_string()),
            dir: match &s.source {
                PolicySource::Dir(d) => Some(d.clone()),
                _ => None,
            },
            established: Some(
                match s.established {
                    dataplane::policy::OnPolicyChange::Recheck => "recheck",
                    dataplane::policy::OnPolicyChange::Keep => "keep",
                }
                .to_string(),
            ),
            conntrack_max: Some(s.conntrack_max as i64),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const NODE: &str = "[node]\nname = \"a\"\nsubnet = \"10.244.1.0/24\"\n";

    #[test]
    fn policy_settings_are_checked_by_name() {
        let c = Config::from_toml_str(&format!("{NODE}[policy]\ndir = \"/etc/weft/policies\"\n"))
            .expect("valid");
        assert_eq!(
            c.policy.source,
            super::PolicySource::Dir("/etc/weft/policies".into())
        );
        let k = Config::from_toml_str(&format!("{NODE}[policy]\nsource = \"kubernetes\"\n"))
            .expect("valid");
        assert_eq!(k.policy.source, super::PolicySource::Kubernetes);
        assert_eq!(
            Config::from_toml_str(NODE).expect("valid").policy.source,
            super::PolicySource::None
        );
        assert_eq!(c.policy.conntrack_max, super::DEFAULT_CONNTRACK_MAX);
        for (extra, field) in [
            ("[policy]\ndir = \"policies\"\n", "policy.dir"),
            ("[policy]\nestablished = \"drop\"\n", "policy.established"),
            ("[policy]\nconntrack_max = 10\n", "policy.conntrack_max"),
            ("[policy]\nsource = \"calico\"\n", "policy.source"),
            ("[policy]\nsource = \"dir\"\n", "policy.dir"),
            (
                "[policy]\nsource = \"kubernetes\"\ndir = \"/p\"\n",
                "policy.dir",
            ),
            (
                "[dataplane]\npod_ports = \"bridge\"\n[policy]\nsource = \"kubernetes\"\n",
                "policy.source",
            ),
            (
                "[dataplane]\npod_ports = \"bridge\"\n[policy]\ndir = \"/p\"\n",
                "policy.dir",
            ),
        ] {
            let e = Config::from_toml_str(&format!("{NODE}{extra}")).expect_err(extra);
            assert!(e.to_string().contains(field), "{extra}: {e}");
        }
    }
}
