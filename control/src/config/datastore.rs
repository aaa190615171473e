//! `[datastore]`: where the node's subnet and peers come from (static, etcd, Kubernetes), and
//! their settings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{
    in_range, invalid, ConfigError, DEFAULT_ETCD_ENDPOINT, DEFAULT_ETCD_PREFIX, DEFAULT_LEASE_TTL,
    DEFAULT_RENEW_MARGIN,
};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatastore {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub(super) kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) subnet_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) etcd: RawEtcd,
    #[serde(default)]
    pub(super) kubernetes: RawKube,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEtcd {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) endpoints: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) lease_ttl: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) renew_margin: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKube {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) kubeconfig: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) net_conf: Option<PathBuf>,
}

/// Which datastore a node runs with (`[datastore] type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatastoreKind {
    /// Peers listed in the config file.
    Static,
    /// flannel's etcd v3 layout.
    Etcd,
    /// flannel's Kubernetes (`--kube-subnet-mgr`) layout.
    Kubernetes,
}

impl DatastoreKind {
    /// The name used in the config file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DatastoreKind::Static => "static",
            DatastoreKind::Etcd => "etcd",
            DatastoreKind::Kubernetes => "kubernetes",
        }
    }
}

impl std::str::FromStr for DatastoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "static" => Ok(DatastoreKind::Static),
            "etcd" => Ok(DatastoreKind::Etcd),
            "kubernetes" | "kube" => Ok(DatastoreKind::Kubernetes),
            other => Err(format!(
                "{other:?} is not a datastore; use \"static\", \"etcd\" or \"kubernetes\""
            )),
        }
    }
}

/// `[datastore.etcd]`: flannel's etcd v3 layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSection {
    /// Client URLs, `http://` or `https://`.
    pub endpoints: Vec<String>,
    /// Key prefix; the network config is at `<prefix>/config`, leases under `<prefix>/subnets/`.
    pub prefix: String,
    /// CA certificate (PEM) to verify the servers with.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM).
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM).
    pub key_file: Option<PathBuf>,
    /// etcd user name.
    pub username: Option<String>,
    /// etcd password.
    pub password: Option<String>,
    /// TTL of the subnet lease, seconds.
    pub lease_ttl: u64,
    /// Renew the lease when less than this many seconds remain.
    pub renew_margin: u64,
}

/// `[datastore.kubernetes]`: flannel's `--kube-subnet-mgr` layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSection {
    /// A kubeconfig file; `None`: in-cluster config, else `$KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// flannel's `net-conf.json`; `None`: the network and backend come from this file.
    pub net_conf: Option<PathBuf>,
}

/// `[datastore]`: where the node's subnet and its peers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatastoreSection {
    /// Which datastore.
    pub kind: DatastoreKind,
    /// Where flannel's subnet.env is written.
    pub subnet_file: PathBuf,
    /// etcd settings.
    pub etcd: EtcdSection,
    /// Kubernetes settings.
    pub kubernetes: KubeSection,
}

/// Validates `[datastore]` and its `etcd` and `kubernetes` tables.
pub(super) fn validate(raw: &RawDatastore) -> Result<DatastoreSection, ConfigError> {
    let kind: DatastoreKind = raw
        .kind
        .as_deref()
        .unwrap_or("static")
        .trim()
        .parse()
        .map_err(|e: String| invalid("datastore.type", e))?;
    let subnet_file = raw
        .subnet_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::subnet_env::DEFAULT_PATH));
    if subnet_file.as_os_str().is_empty() || subnet_file.file_name().is_none() {
        return Err(invalid(
            "datastore.subnet_file",
            format!("{} is not a file path", subnet_file.display()),
        ));
    }
    let e = &raw.etcd;
    let endpoints = e
        .endpoints
        .clone()
        .unwrap_or_else(|| vec![DEFAULT_ETCD_ENDPOINT.to_string()]);
    if endpoints.is_empty() {
        return Err(invalid(
            "datastore.etcd.endpoints",
            "empty; give at least one URL like \"http://127.0.0.1:2379\"",
        ));
    }
    for (i, ep) in endpoints.iter().enumerate() {
        let rest = ep
            .strip_prefix("http://")
            .or_else(|| ep.strip_prefix("https://"))
            .ok_or_else(|| {
                invalid(
                    format!("datastore.etcd.endpoints[{i}]"),
                    format!("{ep:?} is not an http:// or https:// URL"),
                )
            })?;
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(invalid(
                format!("datastore.etcd.endpoints[{i}]"),
                format!("{ep:?} has no host:port"),
            ));
        }
    }
    let prefix = e
        .prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_ETCD_PREFIX.to_string());
    if !prefix.starts_with('/') {
        return Err(invalid(
            "datastore.etcd.prefix",
            format!("{prefix:?} must start with '/' like flannel's \"/coreos.com/network\""),
        ));
    }
    if e.cert_file.is_some() != e.key_file.is_some() {
        return Err(invalid(
            "datastore.etcd",
            "cert_file and key_file go together; give both or neither",
        ));
    }
    if e.password.is_some() && e.username.is_none() {
        return Err(invalid(
            "datastore.etcd.username",
            "missing; a password needs a user",
        ));
    }
    let lease_ttl = in_range(
        "datastore.etcd.lease_ttl",
        e.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL as i64),
        2,
        10 * 365 * 24 * 3600,
    )? as u64;
    let renew_margin = in_range(
        "datastore.etcd.renew_margin",
        e.renew_margin
            .unwrap_or(DEFAULT_RENEW_MARGIN.min(lease_ttl / 2) as i64),
        1,
        lease_ttl as i64 - 1,
    )? as u64;
    Ok(DatastoreSection {
        kind,
        subnet_file,
        etcd: EtcdSection {
            endpoints,
            prefix: prefix.trim_end_matches('/').to_string(),
            ca_file: e.ca_file.clone(),
            cert_file: e.cert_file.clone(),
            key_file: e.key_file.clone(),
            username: e.username.clone(),
            password: e.password.clone(),
            lease_ttl,
            renew_margin,
        },
        kubernetes: KubeSection {
            kubeconfig: raw.kubernetes.kubeconfig.clone(),
            net_conf: raw.kubernetes.net_conf.clone(),
        },
    })
}

impl From<&DatastoreSection> for RawDatastore {
    fn from(s: &DatastoreSection) -> RawDatastore {
        RawDatastore {
            kind: Some(s.kind.name().to_string()),
            subnet_file: Some(s.subnet_file.clone()),
            etcd: {
                let e = &s.etcd;
                RawEtcd {
                    endpoints: Some(e.endpoints.clone()),
                    prefix: Some(e.prefix.clone()),
                    ca_file: e.ca_file.clone(),
                    cert_file: e.cert_file.clone(),
                    key_file: e.key_file.clone(),
                    username: e.username.clone(),
                    password: e.password.clone(),
                    lease_ttl: Some(e.lease_ttl as i64),
                    renew_margin: Some(e.renew_margin as i64),
                }
            },
            kubernetes: RawKube {
                kubeconfig: s.kubernetes.kubeconfig.clone(),
                net_conf: s.kubernetes.net_conf.clone(),
            },
        }
    }
}
