//! flannel's formats, byte for byte: the network config JSON (`<prefix>/config`,
//! `net-conf.json`), lease keys and values in etcd, and the Node annotations of
//! `--kube-subnet-mgr` (flannel-io/flannel `pkg/subnet`, `pkg/lease`; REFERENCE.md).
//!
//! Reading follows Go's `encoding/json`, which matches object keys case-insensitively and ignores
//! unknown ones; writing produces exactly the bytes flannel writes (field order included), so a
//! flannel node reading a Weft lease and a Weft node reading a flannel lease agree.

use std::net::Ipv4Addr;

use dataplane::wire::EthernetAddress;
use ipnet::Ipv4Net;
use serde::Serialize;
use serde_json::Value;

use super::{Lease, BACKEND_VXLAN};
use crate::config::BackendKind;

/// flannel's default etcd prefix (`--etcd-prefix`).
pub const DEFAULT_PREFIX: &str = crate::config::DEFAULT_ETCD_PREFIX;
/// flannel's VXLAN UDP port when the config names none (the kernel's default).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// flannel's VNI when the config names none.
pub const DEFAULT_VNI: u32 = 1;
/// Annotation prefix of `--kube-subnet-mgr`.
pub const ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com";
/// `flannel.alpha.coreos.com/backend-type`.
pub const ANN_BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
/// `flannel.alpha.coreos.com/backend-data`: the lease's BackendData JSON.
pub const ANN_BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
/// `flannel.alpha.coreos.com/public-ip`.
pub const ANN_PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
/// `flannel.alpha.coreos.com/kube-subnet-manager`: `"true"` on nodes managed this way.
pub const ANN_KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";
/// `flannel.alpha.coreos.com/public-ip-overwrite`: an operator's override of the public IP.
pub const ANN_PUBLIC_IP_OVERWRITE: &str = "flannel.alpha.coreos.com/public-ip-overwrite";

/// A malformed flannel document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The network config is invalid; the message names the field as flannel does.
    #[error("network config: {0}")]
    Config(String),
    /// A lease value could not be read.
    #[error("lease {key}: {message}")]
    Lease {
        /// The lease key or node name.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn cfg_err(msg: impl Into<String>) -> FormatError {
    FormatError::Config(msg.into())
}

/// The value of key `name` in JSON object `v`, matched case-insensitively as Go does.
fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// The backend section of the network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// `Backend.Type`.
    pub kind: BackendKind,
    /// `Backend.DirectRouting` (vxlan, ipip): peers on this node's underlay subnet are routed
    /// natively, Calico's `CrossSubnet`.
    pub direct_routing: bool,
    /// `Backend.VNI` (default 1).
    pub vni: u32,
    /// `Backend.Port` (default 8472).
    pub port: u16,
}

/// flannel's network config (`<prefix>/config` or `net-conf.json`), IPv4 part, validated and
/// with flannel's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `Network`.
    pub network: Ipv4Net,
    /// `SubnetLen`.
    pub subnet_len: u8,
    /// `SubnetMin`: the first subnet handed out.
    pub subnet_min: Ipv4Addr,
    /// `SubnetMax`: the last subnet handed out.
    pub subnet_max: Ipv4Addr,
    /// `Backend`.
    pub backend: BackendConfig,
}

impl NetworkConfig {
    /// Parses and validates flannel's JSON network config, applying flannel's defaults:
    /// `SubnetLen` 24 for a /22 or larger `Network`, else the network's length + 2; `SubnetMin` the
    /// second subnet (the first is skipped), `SubnetMax` the last; `Backend.Type` `udp` when absent
    /// (flannel's default, which Weft rejects with a clear message).
    pub fn parse(json: &str) -> Result<NetworkConfig, FormatError> {
        let v: Value =
            serde_json::from_str(json).map_err(|e| cfg_err(format!("not valid JSON: {e}")))?;
        if !v.is_object() {
            return Err(cfg_err("not a JSON object"));
        }
        let str_field = |name: &str| -> Result<Option<String>, FormatError> {
            match field(&v, name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(cfg_err(format!("{name}: {other} is not a string"))),
            }
        };
        let bool_field = |name: &str, default: bool| -> Result<bool, FormatError> {
            match field(&v, name) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(cfg_err(format!("{name}: {other} is not true or false"))),
            }
        };
        if !bool_field("EnableIPv4", true)? {
            return Err(cfg_err(
                "EnableIPv4 is false; Weft carries IPv4 pod networks only",
            ));
        }
        if bool_field("EnableIPv6", false)? {
            return Err(cfg_err(
                "EnableIPv6 is true; Weft does not carry IPv6 pod networks yet",
            ));
        }
        let network_s = str_field("Network")?
            .ok_or_else(|| cfg_err("Network is missing (e.g. \"10.244.0.0/16\")"))?;
        let network: Ipv4Net = network_s
            .parse()
            .map_err(|_| cfg_err(format!("Network: {network_s:?} is not an IPv4 CIDR")))?;
        let network = network.trunc();
        if network.prefix_len() > 28 {
            return Err(cfg_err(format!(
                "Network {network} is too small; the minimum useful network prefix is /28"
            )));
        }
        let subnet_len = match field(&v, "SubnetLen") {
            None | Some(Value::Null) => {
                if network.prefix_len() < 23 {
                    24
                } else {
                    network.prefix_len() + 2
                }
            }
            Some(n) => {
                let n = n
                    .as_u64()
                    .ok_or_else(|| cfg_err(format!("SubnetLen: {n} is not a number")))?;
                if n == 0 {
                    if network.prefix_len() < 23 {
                        24
                    } else {
                        network.prefix_len() + 2
                    }
                } else if n > 30 {
                    return Err(cfg_err(format!(
                        "SubnetLen {n} is too long; it must be /30 or shorter"
                    )));
                } else {
                    n as u8
                }
            }
        };
        if subnet_len < network.prefix_len() {
            return Err(cfg_err(format!(
                "Network {network} must be at least as large as SubnetLen /{subnet_len}"
            )));
        }
        let size = 1u64 << (32 - u32::from(subnet_len));
        let first = u64::from(u32::from(network.network()));
        let last = u64::from(u32::from(network.broadcast())) + 1 - size;
        let subnet_addr = |name: &str, default: u64| -> Result<Ipv4Addr, FormatError> {
            match str_field(name)? {
                None => Ok(Ipv4Addr::from(default as u32)),
                Some(s) => {
                    let ip: Ipv4Addr = s
                        .split('/')
                        .next()
                        .unwrap_or_default()
                        .parse()
                        .map_err(|_| cfg_err(format!("{name}: {s:?} is not an IPv4 address")))?;
                    if !network.contains(&ip) {
                        return Err(cfg_err(format!(
                            "{name} {ip} is not within Network {network}"
                        )));
                    }
                    if (u64::from(u32::from(ip)) - first) % size != 0 {
                        return Err(cfg_err(format!(
                            "{name} {ip} is not on a SubnetLen /{subnet_len} boundary"
                        )));
                    }
                    Ok(ip)
                }
            }
        };
        // flannel skips the first subnet unless the network holds a single one.
        let default_min = if last > first { first + size } else { first };
        let subnet_min = subnet_addr("SubnetMin", default_min)?;
        let subnet_max = subnet_addr("SubnetMax", last)?;
        if u32::from(subnet_min) > u32::from(subnet_max) {
            return Err(cfg_err(format!(
                "SubnetMin {subnet_min} is above SubnetMax {subnet_max}"
            )));
        }
        let backend = match field(&v, "Backend") {
            None | Some(Value::Null) => Value::Object(Default::default()),
            Some(b @ Value::Object(_)) => b.clone(),
            Some(other) => return Err(cfg_err(format!("Backend: {other} is not an object"))),
        };
        let kind = match field(&backend, "Type") {
            None | Some(Value::Null) => "udp".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(cfg_err(format!("Backend.Type: {other} is not a string"))),
        };
        let Some(kind) = BackendKind::from_name(&kind) else {
            return Err(cfg_err(format!(
                "Backend.Type {kind:?} is not supported by Weft; it has \"vxlan\", \"ipip\" and \"host-gw\"{}",
                if field(&backend, "Type").is_none() {
                    " (flannel's default when Backend.Type is absent is \"udp\"; set one of them)"
                } else {
                    ""
                }
            )));
        };
        let direct_routing = match field(&backend, "DirectRouting") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(cfg_err(format!(
                    "Backend.DirectRouting: {other} is not true or false"
                )))
            }
        };
        let num = |name: &str, default: u64, max: u64| -> Result<u64, FormatError> {
            match field(&backend, name) {
                None | Some(Value::Null) => Ok(default),
                Some(n) => match n.as_u64() {
                    Some(0) => Ok(default),
                    Some(x) if x <= max => Ok(x),
                    _ => Err(cfg_err(format!(
                        "Backend.{name}: {n} is not a number 0..={max}"
                    ))),
                },
            }
        };
        let vni = num("VNI", u64::from(DEFAULT_VNI), (1 << 24) - 1)? as u32;
        let port = num("Port", u64::from(DEFAULT_VXLAN_PORT), 65535)? as u16;
        Ok(NetworkConfig {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend: BackendConfig {
                kind,
                direct_routing,
                vni,
                port,
            },
        })
    }

    /// The subnets leases are handed out from, `SubnetMin` to `SubnetMax` in order.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let size = 1u64 << (32 - u32::from(self.subnet_len));
        let min = u64::from(u32::from(self.subnet_min));
        let max = u64::from(u32::from(self.subnet_max));
        let len = self.subnet_len;
        (0..)
            .map(move |i| min + i * size)
            .take_while(move |a| *a <= max)
            .map(move |a| Ipv4Net::new(Ipv4Addr::from(a as u32), len).expect("len <= 30"))
    }

    /// Whether `subnet` is one this config hands out (right length, within `SubnetMin..=Max`).
    pub fn holds(&self, subnet: Ipv4Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && self.network.contains(&subnet)
            && u32::from(subnet.network()) >= u32::from(self.subnet_min)
            && u32::from(subnet.network()) <= u32::from(self.subnet_max)
    }

    /// The config as flannel's JSON (for tests and tools that seed a datastore).
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "Network": self.network.to_string(),
            "SubnetLen": self.subnet_len,
            "SubnetMin": self.subnet_min.to_string(),
            "SubnetMax": self.subnet_max.to_string(),
            "Backend": {"Type": self.backend.kind.name(), "VNI": self.backend.vni, "Port": self.backend.port, "DirectRouting": self.backend.direct_routing},
        })
        .to_string()
    }
}

/// The etcd key of the lease on `subnet`: `<prefix>/subnets/10.244.3.0-24`.
pub fn lease_key(prefix: &str, subnet: Ipv4Net) -> String {
    format!(
        "{}/subnets/{}-{}",
        prefix.trim_end_matches('/'),
        subnet.network(),
        subnet.prefix_len()
    )
}

/// The etcd prefix holding every lease: `<prefix>/subnets/`.
pub fn subnets_prefix(prefix: &str) -> String {
    format!("{}/subnets/", prefix.trim_end_matches('/'))
}

/// The etcd key of the network config: `<prefix>/config`.
pub fn config_key(prefix: &str) -> String {
    format!("{}/config", prefix.trim_end_matches('/'))
}

/// The IPv4 subnet a lease key names; dual-stack keys (`10.244.1.0-24&fc00::-64`) give their v4
/// part. `None` for keys that are not leases.
pub fn subnet_of_key(prefix: &str, key: &str) -> Option<Ipv4Net> {
    let rest = key.strip_prefix(&subnets_prefix(prefix))?;
    let v4 = rest.split('&').next()?;
    let (addr, len) = v4.rsplit_once('-')?;
    let net = Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
    (net == net.trunc()).then_some(net)
}

/// flannel's VXLAN BackendData, in its field order.
#[derive(Debug, Serialize)]
struct VxlanBackendData {
    #[serde(rename = "VNI")]
    vni: u32,
    #[serde(rename = "VtepMAC")]
    vtep_mac: String,
}

/// flannel's lease value (`LeaseAttrs`), in its field order; `PublicIPv6` is always written
/// (`null` for IPv4 only) and `BackendData` left out when there is none.
#[derive(Debug, Serialize)]
struct LeaseAttrs<'a> {
    #[serde(rename = "PublicIP")]
    public_ip: String,
    #[serde(rename = "PublicIPv6")]
    public_ipv6: Option<String>,
    #[serde(rename = "BackendType")]
    backend_type: &'a str,
    #[serde(rename = "BackendData", skip_serializing_if = "Option::is_none")]
    backend_data: Option<VxlanBackendData>,
}

/// The BackendData JSON of a VXLAN node: `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`.
pub fn vxlan_backend_data(vni: u32, vtep_mac: EthernetAddress) -> String {
    serde_json::to_string(&VxlanBackendData {
        vni,
        vtep_mac: vtep_mac.to_string(),
    })
    .expect("a struct of a number and a string serialises")
}

/// The lease value flannel writes for a VXLAN node:
/// `{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`.
pub fn vxlan_lease_value(public_ip: Ipv4Addr, vni: u32, vtep_mac: EthernetAddress) -> String {
    serde_json::to_string(&LeaseAttrs {
        public_ip: public_ip.to_string(),
        public_ipv6: None,
        backend_type: BACKEND_VXLAN,
        backend_data: Some(VxlanBackendData {
            vni,
            vtep_mac: vtep_mac.to_string(),
        }),
    })
    .expect("strings and numbers serialise")
}

/// The lease value flannel writes for a node of backend `kind`: [`vxlan_lease_value`] for VXLAN;
/// for ipip and host-gw no `BackendData`:
/// `{"PublicIP":"192.168.64.4","PublicIPv6":null,"BackendType":"ipip"}`.
pub fn lease_value(
    kind: BackendKind,
    public_ip: Ipv4Addr,
    vni: u32,
    vtep_mac: EthernetAddress,
) -> String {
    match kind {
        BackendKind::Vxlan => vxlan_lease_value(public_ip, vni, vtep_mac),
        BackendKind::Ipip | BackendKind::HostGw => serde_json::to_string(&LeaseAttrs {
            public_ip: public_ip.to_string(),
            public_ipv6: None,
            backend_type: kind.name(),
            backend_data: None,
        })
        .expect("strings serialise"),
    }
}

/// The `backend-data` annotation of a node of backend `kind`: [`vxlan_backend_data`] for VXLAN,
/// `null` (flannel's marshalled empty BackendData) for ipip and host-gw.
pub fn backend_data(kind: BackendKind, vni: u32, vtep_mac: EthernetAddress) -> String {
    match kind {
        BackendKind::Vxlan => vxlan_backend_data(vni, vtep_mac),
        BackendKind::Ipip | BackendKind::HostGw => "null".to_string(),
    }
}

/// Reads BackendData: the VNI and VTEP MAC when present (either may be absent for backends other
/// than VXLAN).
pub fn parse_backend_data(v: &Value) -> Result<(Option<u32>, Option<EthernetAddress>), String> {
    if v.is_null() {
        return Ok((None, None));
    }
    if !v.is_object() {
        return Err(format!("BackendData {v} is not an object"));
    }
    let vni = match field(v, "VNI") {
        None | Some(Value::Null) => None,
        Some(n) => Some(
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("BackendData.VNI {n} is not a number"))?,
        ),
    };
    let mac = match field(v, "VtepMAC") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            s.parse::<EthernetAddress>()
                .map_err(|e| format!("BackendData.VtepMAC {s:?}: {e}"))?,
        ),
        Some(other) => return Err(format!("BackendData.VtepMAC {other} is not a string")),
    };
    Ok((vni, mac))
}

/// Reads a lease value (the JSON at a lease key) into a [`Lease`] on `subnet`.
pub fn parse_lease_value(subnet: Ipv4Net, key: &str, value: &[u8]) -> Result<Lease, FormatError> {
    let err = |message: String| FormatError::Lease {
        key: key.to_string(),
        message,
    };
    let v: Value =
        serde_json::from_slice(value).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let public_ip = match field(&v, "PublicIP") {
        Some(Value::String(s)) => s
            .parse::<Ipv4Addr>()
            .map_err(|_| err(format!("PublicIP {s:?} is not an IPv4 address")))?,
        _ => return Err(err("PublicIP is missing".into())),
    };
    let backend_type = match field(&v, "BackendType") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(other) => return Err(err(format!("BackendType {other} is not a string"))),
    };
    let (vni, vtep_mac) =
        parse_backend_data(field(&v, "BackendData").unwrap_or(&Value::Null)).map_err(err)?;
    Ok(Lease {
        subnet,
        public_ip,
        backend_type,
        vni,
        vtep_mac,
        expiration: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: EthernetAddress = EthernetAddress([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]);

    #[test]
    fn lease_value_matches_flannel_byte_for_byte() {
        assert_eq!(
            vxlan_lease_value(Ipv4Addr::new(192, 168, 64, 3), 1, MAC),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
        assert_eq!(
            vxlan_backend_data(1, MAC),
            r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#
        );
    }

    #[test]
    fn ipip_and_host_gw_leases_have_no_backend_data() {
        let ip = Ipv4Addr::new(192, 168, 64, 4);
        assert_eq!(
            lease_value(BackendKind::Ipip, ip, 1, MAC),
            r#"{"PublicIP":"192.168.64.4","PublicIPv6":null,"BackendType":"ipip"}"#
        );
        assert_eq!(
            lease_value(BackendKind::HostGw, ip, 1, MAC),
            r#"{"PublicIP":"192.168.64.4","PublicIPv6":null,"BackendType":"host-gw"}"#
        );
        assert_eq!(
            lease_value(BackendKind::Vxlan, ip, 1, MAC),
            vxlan_lease_value(ip, 1, MAC)
        );
        assert_eq!(backend_data(BackendKind::Ipip, 1, MAC), "null");
        let c = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"ipip","DirectRouting":true}}"#,
        )
        .expect("valid");
        assert_eq!(
            (c.backend.kind, c.backend.direct_routing),
            (BackendKind::Ipip, true)
        );
        let e = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":"yes"}}"#,
        )
        .expect_err("not a bool");
        assert!(e.to_string().contains("Backend.DirectRouting"), "{e}");
    }

    #[test]
    fn lease_values_read_case_insensitively_and_host_gw_has_no_mac() {
        let net: Ipv4Net = "10.244.3.0/24".parse().expect("net");
        let l = parse_lease_value(
            net,
            "k",
            br#"{"publicip":"192.168.64.3","backendtype":"vxlan","backenddata":{"vni":1,"vtepmac":"c6:d2:32:6f:8f:44"}}"#,
        )
        .expect("lease");
        assert_eq!(l.vtep_mac, Some(MAC));
        assert_eq!(l.vni, Some(1));
        let hg = parse_lease_value(
            net,
            "k",
            br#"{"PublicIP":"192.168.64.4","PublicIPv6":null,"BackendType":"host-gw"}"#,
        )
        .expect("lease");
        assert_eq!((hg.backend_type.as_str(), hg.vtep_mac), ("host-gw", None));
        for bad in [
            &br#"{"PublicIP":"x"}"#[..],
            br#"{"BackendType":"vxlan"}"#,
            br#"not json"#,
            br#"{"PublicIP":"1.2.3.4","BackendData":{"VtepMAC":"zz"}}"#,
        ] {
            let e = parse_lease_value(net, "/coreos.com/network/subnets/10.244.3.0-24", bad)
                .expect_err("invalid");
            assert!(e.to_string().contains("10.244.3.0-24"), "{e}");
        }
    }

    #[test]
    fn keys_round_trip_and_dual_stack_keys_give_their_v4_part() {
        let net: Ipv4Net = "10.244.3.0/24".parse().expect("net");
        let key = lease_key(DEFAULT_PREFIX, net);
        assert_eq!(key, "/coreos.com/network/subnets/10.244.3.0-24");
        assert_eq!(subnet_of_key(DEFAULT_PREFIX, &key), Some(net));
        assert_eq!(
            subnet_of_key(
                DEFAULT_PREFIX,
                "/coreos.com/network/subnets/10.244.1.0-24&fc00::-64"
            ),
            Some("10.244.1.0/24".parse().expect("net"))
        );
        assert_eq!(
            subnet_of_key(DEFAULT_PREFIX, "/coreos.com/network/config"),
            None
        );
        assert_eq!(
            subnet_of_key(DEFAULT_PREFIX, "/coreos.com/network/subnets/10.244.1.5-24"),
            None
        );
        assert_eq!(config_key("/x/"), "/x/config");
    }

    #[test]
    fn network_config_defaults_are_flannels() {
        let c = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .expect("config");
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!((c.backend.vni, c.backend.port), (1, 8472));
        assert_eq!(c.subnets().count(), 255);
        // A /24 network: SubnetLen = 26.
        let small = NetworkConfig::parse(
            r#"{"network":"10.1.2.0/24","backend":{"type":"vxlan","vni":4,"port":4789}}"#,
        )
        .expect("config");
        assert_eq!(small.subnet_len, 26);
        assert_eq!(
            small.subnets().map(|s| s.to_string()).collect::<Vec<_>>(),
            ["10.1.2.64/26", "10.1.2.128/26", "10.1.2.192/26"]
        );
        assert_eq!((small.backend.vni, small.backend.port), (4, 4789));
        let ranged = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.12.0","Backend":{"Type":"vxlan"}}"#,
        )
        .expect("config");
        assert_eq!(ranged.subnets().count(), 3);
        assert!(ranged.holds("10.244.11.0/24".parse().expect("net")));
        assert!(!ranged.holds("10.244.13.0/24".parse().expect("net")));
        assert_eq!(NetworkConfig::parse(&ranged.to_json()), Ok(ranged));
    }

    #[test]
    fn invalid_network_configs_name_the_field() {
        for (json, needle) in [
            ("{", "not valid JSON"),
            ("{}", "Network is missing"),
            (
                r#"{"Network":"10.244.0.0/29","Backend":{"Type":"vxlan"}}"#,
                "/28",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}"#,
                "SubnetLen",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetLen":8,"Backend":{"Type":"vxlan"}}"#,
                "SubnetLen",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.7","Backend":{"Type":"vxlan"}}"#,
                "boundary",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMax":"10.245.1.0","Backend":{"Type":"vxlan"}}"#,
                "SubnetMax",
            ),
            (r#"{"Network":"10.244.0.0/16"}"#, "udp"),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#,
                "wireguard",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"Backend":{"Type":"vxlan"}}"#,
                "IPv6",
            ),
        ] {
            let e = NetworkConfig::parse(json).expect_err(json);
            assert!(e.to_string().contains(needle), "{json}: {e}");
        }
    }
}
