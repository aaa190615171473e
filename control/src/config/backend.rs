//! `[backend]`: which encapsulation, and its parameters.

use serde::{Deserialize, Serialize};

use super::{
    in_range, invalid, ConfigError, DEFAULT_PORT, DEFAULT_VNI, IPIP_OVERHEAD, MAX_MTU, MAX_VNI,
    MIN_MTU, VXLAN_OVERHEAD,
};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub(super) kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) encapsulation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) vni: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) mtu: Option<toml::Value>,
}

/// Which backend the node runs (flannel's `Backend.Type` and lease `BackendType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendKind {
    /// VXLAN, wire-compatible with flannel's vxlan backend (and Calico's `vxlanMode`).
    Vxlan,
    /// IP-in-IP (RFC 2003, IP protocol 4), flannel's `ipip` backend and Calico's `ipipMode`,
    /// carried in userspace: no `ipip` kernel module.
    Ipip,
    /// No encapsulation: each peer's pod subnet routed via its public IP, which must be on a
    /// directly connected underlay subnet (flannel's `host-gw`).
    HostGw,
}

impl BackendKind {
    /// Every backend, for messages.
    pub const ALL: [BackendKind; 3] = [BackendKind::Vxlan, BackendKind::Ipip, BackendKind::HostGw];

    /// flannel's name: `vxlan`, `ipip`, `host-gw` (`Backend.Type`, lease `BackendType`).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Vxlan => "vxlan",
            BackendKind::Ipip => "ipip",
            BackendKind::HostGw => "host-gw",
        }
    }

    /// The backend flannel calls `name`.
    pub fn from_name(name: &str) -> Option<BackendKind> {
        BackendKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Bytes the encapsulation adds in front of a pod packet (the MTU it costs).
    pub fn overhead(self) -> u32 {
        match self {
            BackendKind::Vxlan => VXLAN_OVERHEAD,
            BackendKind::Ipip => IPIP_OVERHEAD,
            BackendKind::HostGw => 0,
        }
    }

    /// The TUN device's name: `weft.<vni>` for VXLAN (as flannel names `flannel.<vni>`),
    /// `weft.ipip`, `weft.hostgw`.
    pub fn tun_name(self, vni: u32) -> String {
        match self {
            BackendKind::Vxlan => format!("weft.{vni}"),
            BackendKind::Ipip => "weft.ipip".to_string(),
            BackendKind::HostGw => "weft.hostgw".to_string(),
        }
    }
}

/// When a tunnel backend encapsulates (Calico's `ipipMode` / `vxlanMode` values; flannel's
/// `DirectRouting: true` is `CrossSubnet`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Encapsulation {
    /// Every peer through the tunnel.
    Always,
    /// Peers whose public IP is on this node's underlay subnet are routed natively (a kernel
    /// route via the peer); the others through the tunnel.
    CrossSubnet,
    /// Every peer routed natively, as host-gw: peers off the underlay subnet are refused.
    Never,
}

impl Encapsulation {
    /// Calico's spelling: `Always`, `CrossSubnet`, `Never`.
    pub fn name(self) -> &'static str {
        match self {
            Encapsulation::Always => "Always",
            Encapsulation::CrossSubnet => "CrossSubnet",
            Encapsulation::Never => "Never",
        }
    }

    /// The mode Calico spells `name`.
    pub fn from_name(name: &str) -> Option<Encapsulation> {
        [
            Encapsulation::Always,
            Encapsulation::CrossSubnet,
            Encapsulation::Never,
        ]
        .into_iter()
        .find(|e| e.name() == name)
    }
}

/// The tunnel MTU setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mtu {
    /// Underlay interface MTU minus the encapsulation overhead (50 for VXLAN over IPv4).
    Auto,
    /// A fixed tunnel MTU.
    Fixed(u32),
}

/// `[backend]`: encapsulation parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSection {
    /// The backend type.
    pub kind: BackendKind,
    /// When to encapsulate (vxlan and ipip; host-gw never does).
    pub encapsulation: Encapsulation,
    /// VXLAN network identifier.
    pub vni: u32,
    /// VXLAN UDP destination port.
    pub port: u16,
    /// Tunnel MTU.
    pub mtu: Mtu,
}

/// Validates `[backend]`.
pub(super) fn validate(raw: &RawBackend) -> Result<BackendSection, ConfigError> {
    let kind_name = raw.kind.as_deref().unwrap_or("vxlan");
    let kind = BackendKind::from_name(kind_name)
        .ok_or_else(|| ConfigError::UnsupportedBackend(kind_name.to_string()))?;
    let encapsulation = match (kind, raw.encapsulation.as_deref()) {
        (BackendKind::HostGw, None | Some("Never")) => Encapsulation::Never,
        (BackendKind::HostGw, Some(other)) => {
            return Err(invalid(
                "backend.encapsulation",
                format!("{other:?} with type \"host-gw\", which never encapsulates; leave it out or use a tunnel type (\"vxlan\", \"ipip\")"),
            ))
        }
        (_, None) => Encapsulation::Always,
        (_, Some(name)) => Encapsulation::from_name(name).ok_or_else(|| {
            invalid(
                "backend.encapsulation",
                format!("{name:?} is not one of \"Always\", \"CrossSubnet\", \"Never\" (Calico's names, case as written)"),
            )
        })?,
    };
    let vni = in_range(
        "backend.vni",
        raw.vni.unwrap_or(i64::from(DEFAULT_VNI)),
        0,
        i64::from(MAX_VNI),
    )? as u32;
    let port = in_range(
        "backend.port",
        raw.port.unwrap_or(i64::from(DEFAULT_PORT)),
        1,
        65535,
    )? as u16;
    let mtu = match &raw.mtu {
        None => Mtu::Auto,
        Some(toml::Value::String(s)) if s == "auto" => Mtu::Auto,
        Some(toml::Value::Integer(n)) => {
            Mtu::Fixed(in_range("backend.mtu", *n, i64::from(MIN_MTU), i64::from(MAX_MTU))? as u32)
        }
        Some(other) => {
            return Err(invalid(
                "backend.mtu",
                format!("{other} is neither \"auto\" nor a number {MIN_MTU}..={MAX_MTU}"),
            ))
        }
    };
    let backend = BackendSection {
        kind,
        encapsulation,
        vni,
        port,
        mtu,
    };
    Ok(backend)
}

impl From<&BackendSection> for RawBackend {
    fn from(s: &BackendSection) -> RawBackend {
        RawBackend {
            kind: Some(s.kind.name().to_string()),
            encapsulation: Some(s.encapsulation.name().to_string()),
            vni: Some(i64::from(s.vni)),
            port: Some(i64::from(s.port)),
            mtu: Some(match s.mtu {
                Mtu::Auto => toml::Value::String("auto".into()),
                Mtu::Fixed(n) => toml::Value::Integer(i64::from(n)),
            }),
        }
    }
}
