//! `[[peers]]`: the remote nodes of the static datastore.

use std::net::Ipv4Addr;

use dataplane::wire::EthernetAddress;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{
    invalid, parse_ip, parse_mac, parse_subnet, validate_node_name, vtep_mac_for, ConfigError,
    DatastoreKind, NodeSection,
};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    pub(super) name: String,
    pub(super) public_ip: String,
    pub(super) subnet: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) vtep_mac: Option<String>,
}

/// `[[peers]]`: a remote node of the static datastore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's node name.
    pub name: String,
    /// The peer's underlay address (flannel's `PublicIP`).
    pub public_ip: Ipv4Addr,
    /// The peer's pod subnet.
    pub subnet: Ipv4Net,
    /// The peer's VTEP MAC (flannel's `VtepMAC`).
    pub vtep_mac: EthernetAddress,
}

/// Validates `[[peers]]`: only with the static datastore (`kind`); names, subnets (inside
/// `network`) and VTEP MACs unique, and none of them this `node`'s.
pub(super) fn validate(
    raw: &[RawPeer],
    node: &NodeSection,
    network: Ipv4Net,
    kind: DatastoreKind,
) -> Result<Vec<PeerConfig>, ConfigError> {
    if kind != DatastoreKind::Static && !raw.is_empty() {
        return Err(invalid(
            "peers",
            format!(
                "[[peers]] are the static datastore's; with {} the peers come from the datastore",
                kind.name()
            ),
        ));
    }
    let own_mac = vtep_mac_for(&node.name);
    let mut peers: Vec<PeerConfig> = Vec::with_capacity(raw.len());
    for (i, p) in raw.iter().enumerate() {
        let f = |name: &str| format!("peers[{i}].{name}");
        validate_node_name(&f("name"), &p.name)?;
        let name = p.name.trim().to_string();
        if name == node.name {
            return Err(ConfigError::Duplicate {
                field: f("name"),
                value: name,
                other_field: "node.name".into(),
            });
        }
        if let Some(j) = peers.iter().position(|q| q.name == name) {
            return Err(ConfigError::Duplicate {
                field: f("name"),
                value: name,
                other_field: format!("peers[{j}].name"),
            });
        }
        let public_ip = parse_ip(&f("public_ip"), &p.public_ip)?;
        let subnet = parse_subnet(&f("subnet"), &p.subnet, network)?;
        if let Some(own) = node.subnet {
            if subnet.contains(&own) || own.contains(&subnet) {
                return Err(ConfigError::Overlap {
                    field: f("subnet"),
                    subnet,
                    other_field: "node.subnet".into(),
                    other: own,
                });
            }
        }
        if let Some((j, q)) = peers
            .iter()
            .enumerate()
            .find(|(_, q)| q.subnet.contains(&subnet) || subnet.contains(&q.subnet))
        {
            return Err(ConfigError::Overlap {
                field: f("subnet"),
                subnet,
                other_field: format!("peers[{j}].subnet"),
                other: q.subnet,
            });
        }
        let vtep_mac = match &p.vtep_mac {
            Some(s) => parse_mac(&f("vtep_mac"), s)?,
            None => vtep_mac_for(&name),
        };
        if vtep_mac == own_mac {
            return Err(ConfigError::Duplicate {
                field: f("vtep_mac"),
                value: vtep_mac.to_string(),
                other_field: "node (its derived VTEP MAC)".into(),
            });
        }
        if let Some(j) = peers.iter().position(|q| q.vtep_mac == vtep_mac) {
            return Err(ConfigError::Duplicate {
                field: f("vtep_mac"),
                value: vtep_mac.to_string(),
                other_field: format!("peers[{j}].vtep_mac"),
            });
        }
        peers.push(PeerConfig {
            name,
            public_ip,
            subnet,
            vtep_mac,
        });
    }
    Ok(peers)
}

impl From<&PeerConfig> for RawPeer {
    fn from(s: &PeerConfig) -> RawPeer {
        RawPeer {
            name: s.name.clone(),
            public_ip: s.public_ip.to_string(),
            subnet: s.subnet.to_string(),
            vtep_mac: Some(s.vtep_mac.to_string()),
        }
    }
}
