//! `[node]`: this node's name, underlay address and (static datastore) pod subnet.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{invalid, parse_ip, parse_subnet, ConfigError, DatastoreKind};
use crate::autodetect::AutodetectMethod;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    // Optional in the file: a DaemonSet's shared config leaves it to `--node-name` / NODE_NAME.
    #[serde(default)]
    pub(super) name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) public_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) autodetect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) subnet: Option<String>,
}

/// How the node's public (underlay) address is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicAddress {
    /// Given in `node.public_ip`.
    Static(Ipv4Addr),
    /// Found at start-up with `node.autodetect`.
    Autodetect(AutodetectMethod),
}

/// `[node]`: this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSection {
    /// The node's name, unique in the cluster; the seed of its VTEP MAC.
    pub name: String,
    /// The underlay address, or how to find it.
    pub public_address: PublicAddress,
    /// This node's pod subnet: given with the static datastore; `None` with etcd (it comes from
    /// the lease) and Kubernetes (from the Node's `spec.podCIDR`).
    pub subnet: Option<Ipv4Net>,
}

/// Validates `[node]`; `node.subnet` belongs only to the static datastore (`kind`) and must lie
/// inside `network`.
pub(super) fn validate(
    raw: &RawNode,
    network: Ipv4Net,
    kind: DatastoreKind,
) -> Result<NodeSection, ConfigError> {
    if raw.name.trim().is_empty() {
        return Err(invalid(
            "node.name",
            "missing or empty; set it in the file or with --node-name (env NODE_NAME)",
        ));
    }
    let public_address = match (&raw.public_ip, &raw.autodetect) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "node",
                "set either public_ip or autodetect, not both",
            ))
        }
        (Some(ip), None) => PublicAddress::Static(parse_ip("node.public_ip", ip)?),
        (None, method) => PublicAddress::Autodetect(
            method
                .as_deref()
                .unwrap_or("first-found")
                .parse()
                .map_err(|e| invalid("node.autodetect", format!("{e}")))?,
        ),
    };
    let subnet = match (kind, &raw.subnet) {
        (DatastoreKind::Static, Some(s)) => Some(parse_subnet("node.subnet", s, network)?),
        (DatastoreKind::Static, None) => return Err(invalid(
            "node.subnet",
            "missing; the static datastore needs this node's pod subnet, e.g. \"10.244.1.0/24\"",
        )),
        (kind, Some(_)) => {
            return Err(invalid(
                "node.subnet",
                format!(
                    "set only with the static datastore; with {} the subnet comes from {}",
                    kind.name(),
                    if kind == DatastoreKind::Etcd {
                        "the node's lease"
                    } else {
                        "the Node's spec.podCIDR"
                    }
                ),
            ))
        }
        (_, None) => None,
    };
    Ok(NodeSection {
        name: raw.name.trim().to_string(),
        public_address,
        subnet,
    })
}

impl From<&NodeSection> for RawNode {
    fn from(s: &NodeSection) -> RawNode {
        let (public_ip, autodetect) = match &s.public_address {
            PublicAddress::Static(ip) => (Some(ip.to_string()), None),
            PublicAddress::Autodetect(m) => (None, Some(m.to_string())),
        };
        RawNode {
            name: s.name.clone(),
            public_ip,
            autodetect,
            subnet: s.subnet.map(|s| s.to_string()),
        }
    }
}
