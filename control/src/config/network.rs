//! `[network]`: the cluster network and egress masquerade.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{invalid, parse_net, ConfigError, DEFAULT_NETWORK};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) ip_masq: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) masq_backend: Option<String>,
}

/// `[network]`: the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSection {
    /// The cluster network every pod subnet lies in (flannel's `Network`).
    pub network: Ipv4Net,
    /// Masquerade pod traffic that leaves the cluster network (flannel's `--ip-masq`).
    pub ip_masq: bool,
    /// Which firewall tool writes the masquerade rules.
    pub masq_backend: crate::masq::BackendChoice,
}

/// Validates `[network]`.
pub(super) fn validate(raw: &RawNetwork) -> Result<NetworkSection, ConfigError> {
    // The network first: every subnet is checked against it.
    let network = parse_net(
        "network.network",
        raw.network.as_deref().unwrap_or(DEFAULT_NETWORK),
    )?;
    if network.prefix_len() > 28 {
        return Err(invalid(
            "network.network",
            format!(
                "{network} is too small for a cluster; flannel rejects networks longer than /28"
            ),
        ));
    }
    Ok(NetworkSection {
        network,
        ip_masq: raw.ip_masq.unwrap_or(true),
        masq_backend: match raw.masq_backend.as_deref() {
            None => crate::masq::BackendChoice::Auto,
            Some(v) => crate::masq::BackendChoice::parse(v).ok_or_else(|| {
                invalid(
                    "network.masq_backend",
                    format!("{v:?} is not one of \"auto\", \"iptables\", \"nftables\""),
                )
            })?,
        },
    })
}

impl From<&NetworkSection> for RawNetwork {
    fn from(s: &NetworkSection) -> RawNetwork {
        RawNetwork {
            network: Some(s.network.to_string()),
            ip_masq: Some(s.ip_masq),
            masq_backend: Some(s.masq_backend.name().to_string()),
        }
    }
}
