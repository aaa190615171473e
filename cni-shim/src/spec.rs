//! The CNI contract as Weft speaks it (containernetworking/cni SPEC.md, spec 1.1.0, and the result
//! shapes of every version since 0.3.0): versions, well-known error codes, the environment a
//! runtime sets, the network configuration on stdin, and the ADD result with its per-version JSON.
//!
//! Hand-written rather than taken from a crate: the Rust CNI crates on crates.io (`cni-plugin`, last
//! released for spec 1.0.0 in 2021) know neither STATUS nor GC nor the 1.1.0 result fields, and
//! pull in async runtimes or regex engines a plugin that must start in a millisecond does not need.
//! What is here is small: serde types plus the conversion table of SPEC.md "Result Types".
//!
//! Nothing in this module does I/O: the shim (`main.rs`) and the agent (`control::cni`) share it.

use std::fmt;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The spec version Weft implements and answers VERSION with.
pub const LATEST: CniVersion = CniVersion::V1_1_0;

/// A CNI spec version whose result shape Weft can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    /// 0.3.0: the rich result (interfaces, ips with `version`, routes, dns) and chaining.
    V0_3_0,
    /// 0.3.1: a typo fix of 0.3.0; the same shapes.
    V0_3_1,
    /// 0.4.0: CHECK, and prevResult on DEL.
    V0_4_0,
    /// 1.0.0: configuration lists only; `ips[].version` removed.
    V1_0_0,
    /// 1.1.0: STATUS and GC; `interfaces[].mtu` (and `socketPath`, `pciID`, route attributes).
    V1_1_0,
}

impl CniVersion {
    /// Every supported version, oldest first (the VERSION answer's `supportedVersions`).
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    /// Parses `"1.0.0"` and friends; `None` for a version Weft does not speak.
    pub fn parse(s: &str) -> Option<CniVersion> {
        CniVersion::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Before 1.0.0 each `ips[]` entry carries `"version": "4"` or `"6"`.
    pub fn ips_carry_version(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// From 1.1.0 on an interface may carry its `mtu`.
    pub fn interfaces_carry_mtu(self) -> bool {
        self >= CniVersion::V1_1_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The VERSION answer: `{"cniVersion":"1.1.0","supportedVersions":[...]}`.
pub fn version_info() -> Value {
    json!({
        "cniVersion": LATEST.as_str(),
        "supportedVersions": CniVersion::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
    })
}

/// Error codes: 1-99 are the spec's well-known codes, 100 and up are Weft's own.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist (the runtime need not clean up).
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (CNI_COMMAND, CNI_CONTAINERID, ...).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (for Weft: the IPAM state could not be read or written).
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (stdin is not JSON, or not the expected shape).
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: the agent is unreachable or not ready, or the node subnet has no free
    /// address left (pods leaving free addresses; the runtime retries).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot service ADD requests.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: not available, and existing containers may have limited connectivity.
    pub const NOT_AVAILABLE_LIMITED: u32 = 51;
    /// Weft: an interface named CNI_IFNAME already exists in the container's namespace.
    pub const IFNAME_EXISTS: u32 = 100;
    /// Weft: CHECK found the container's networking not as ADD left it.
    pub const CHECK_FAILED: u32 = 101;
    /// Weft: the kernel refused a netlink request while plumbing or removing a container.
    pub const PLUMBING: u32 = 102;
    /// Internal error.
    pub const INTERNAL: u32 = 999;
}

/// A CNI error: printed on stdout as `{"cniVersion","code","msg","details"}` with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    /// The error code ([`code`]).
    pub code: u32,
    /// What is wrong, in one sentence that names the field or variable.
    pub msg: String,
    /// What to check or do about it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with code `code` and message `msg`.
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds the details: what to check.
    pub fn details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The JSON printed on stdout, stamped with `version`.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut v = json!({
            "cniVersion": version.as_str(),
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// The CNI verb of `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container; idempotent.
    Del,
    /// Verify an attachment.
    Check,
    /// Is the plugin ready for ADD?
    Status,
    /// Release everything not listed as a valid attachment.
    Gc,
    /// Which spec versions are supported.
    Version,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// The verb as the runtime spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parameters a runtime passes in the environment, validated for the verb.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (required for ADD, DEL, CHECK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// `CNI_NETNS` (required for ADD and CHECK; optional for DEL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// `CNI_IFNAME` (required for ADD, DEL, CHECK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// `CNI_ARGS`, `K=V;K=V` (Kubernetes passes `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<String>,
}

fn invalid_env(var: &str, msg: impl fmt::Display) -> CniError {
    CniError::new(code::INVALID_ENV, format!("{var}: {msg}"))
}

/// Checks a container ID against the spec: `[A-Za-z0-9][A-Za-z0-9_.-]*`.
pub fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Checks an interface name against the spec and the kernel: 1-15 bytes, not `.` or `..`, no
/// `/`, `:` or whitespace.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

impl Invocation {
    /// Reads and validates the environment through `var` (`std::env::var` in the shim): which
    /// variables the verb requires (SPEC.md "Parameters": ADD and CHECK need CNI_CONTAINERID,
    /// CNI_NETNS and CNI_IFNAME; DEL needs CNI_CONTAINERID and CNI_IFNAME; STATUS, GC and VERSION
    /// need none) and their syntax. An empty variable counts as absent.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        let command = match get("CNI_COMMAND") {
            None => return Err(invalid_env(
                "CNI_COMMAND",
                "not set; a container runtime sets it to ADD, DEL, CHECK, STATUS, GC or VERSION",
            )),
            Some(c) => Command::parse(&c).ok_or_else(|| {
                invalid_env(
                    "CNI_COMMAND",
                    format!(
                        "{c:?} is not a CNI verb; expected ADD, DEL, CHECK, STATUS, GC or VERSION"
                    ),
                )
            })?,
        };
        let inv = Invocation {
            command,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
        };
        inv.validate()?;
        Ok(inv)
    }

    /// Checks the fields for the verb (the agent checks again what reaches it over the socket).
    pub fn validate(&self) -> Result<(), CniError> {
        let needs_container = matches!(self.command, Command::Add | Command::Del | Command::Check);
        let needs_netns = matches!(self.command, Command::Add | Command::Check);
        let verb = self.command;
        if needs_container {
            match &self.container_id {
                None => {
                    return Err(invalid_env(
                        "CNI_CONTAINERID",
                        format!("not set; {verb} needs the container ID"),
                    ))
                }
                Some(id) if !valid_container_id(id) => {
                    return Err(invalid_env(
                        "CNI_CONTAINERID",
                        format!("{id:?} is not a valid container ID: it must start with a letter or digit, followed by letters, digits, '_', '.' or '-'"),
                    ))
                }
                Some(_) => {}
            }
            match &self.ifname {
                None => {
                    return Err(invalid_env(
                        "CNI_IFNAME",
                        format!("not set; {verb} needs the interface name inside the container"),
                    ))
                }
                Some(name) if !valid_ifname(name) => {
                    return Err(invalid_env(
                        "CNI_IFNAME",
                        format!("{name:?} is not a valid interface name: 1-15 bytes, not '.' or '..', no '/', ':' or whitespace"),
                    ))
                }
                Some(_) => {}
            }
        }
        if needs_netns {
            match &self.netns {
                None => {
                    return Err(invalid_env(
                        "CNI_NETNS",
                        format!("not set; {verb} needs the path of the container's network namespace"),
                    ))
                }
                Some(path) if !path.starts_with('/') => {
                    return Err(invalid_env(
                        "CNI_NETNS",
                        format!("{path:?} is not an absolute path to a network namespace (like /var/run/netns/NAME or /proc/PID/ns/net)"),
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(args) = &self.args {
            if let Some(pair) = args.split(';').find(|p| !p.is_empty() && !p.contains('=')) {
                return Err(invalid_env(
                    "CNI_ARGS",
                    format!("{pair:?} is not a KEY=VALUE pair; CNI_ARGS is KEY=VALUE pairs separated by ';'"),
                ));
            }
        }
        Ok(())
    }

    /// The value of `key` in `CNI_ARGS` (`KEY=VALUE` pairs separated by `;`), if it is there and
    /// not empty.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .as_deref()?
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty())
    }

    /// The container ID; validated present for ADD, DEL and CHECK.
    pub fn container_id(&self) -> &str {
        self.container_id.as_deref().unwrap_or_default()
    }

    /// The interface name; validated present for ADD, DEL and CHECK.
    pub fn ifname(&self) -> &str {
        self.ifname.as_deref().unwrap_or_default()
    }
}

/// One entry of GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    /// The container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name inside the container.
    pub ifname: String,
}

/// The fields of the network configuration (stdin) that Weft reads. Unknown fields are ignored:
/// runtimes add `runtimeConfig`, `args` and capability keys, which the plugin need not know.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion`: the version the result must be in.
    pub cni_version: CniVersion,
    /// `name`: the network name.
    pub name: String,
    /// `socket` (Weft's own field): the agent's CNI socket; default [`crate::DEFAULT_SOCKET`].
    pub socket: Option<String>,
    /// `prevResult`, as the runtime passed it (CHECK and DEL).
    pub prev_result: Option<Value>,
    /// `dns`: echoed in the ADD result.
    pub dns: Option<Value>,
    /// GC's `cni.dev/valid-attachments`.
    pub valid_attachments: Option<Vec<Attachment>>,
    /// `runtimeConfig.bandwidth`: the `bandwidth` capability, when the conflist gives it to weft
    /// and the pod has limits (Kubernetes' `kubernetes.io/ingress-bandwidth` and
    /// `egress-bandwidth` annotations).
    pub bandwidth: Option<Bandwidth>,
    /// Further source prefixes the pod may send from, beyond its own address (Calico's
    /// `allowedSourcePrefixes`, for a floating VIP such as keepalived's): the union of the
    /// network's `allowedSourcePrefixes` and the attachment's `args.cni.allowedSourcePrefixes`
    /// (Multus passes a pod's `cni-args` there). Weft's plugin only; empty for other plugins.
    pub allowed_sources: Vec<Ipv4Net>,
}

/// The most allowed source prefixes one attachment may have (they are checked inline on every
/// frame from the pod).
pub const MAX_ALLOWED_SOURCES: usize = 8;

/// Reads a list of IPv4 prefixes (`"10.0.0.5/32"`, or a bare address for its /32) at `key`.
fn allowed_sources(value: Option<&Value>, key: &str) -> Result<Vec<Ipv4Net>, CniError> {
    let list = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(invalid_config(format!(
                "{key}: {other} is not a list of IPv4 prefixes like [\"10.244.1.200/32\"]"
            )))
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let text = v.as_str().ok_or_else(|| {
                invalid_config(format!("{key}[{i}]: {v} is not a string like \"10.244.1.200/32\""))
            })?;
            text.parse::<Ipv4Net>()
                .or_else(|_| text.parse::<std::net::Ipv4Addr>().map(Ipv4Net::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    invalid_config(format!(
                        "{key}[{i}]: {text:?} is not an IPv4 prefix like \"10.244.1.200/32\" or an IPv4 address"
                    ))
                })
        })
        .collect()
}

/// The `bandwidth` capability, as the runtime passes it in `runtimeConfig` and as the
/// `bandwidth` plugin reads it: rates in bits per second, bursts in bits. Ingress is into the
/// pod, egress out of it. A direction with rate and burst 0 (or absent) is not limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bandwidth {
    /// Into the pod, bits per second.
    #[serde(default)]
    pub ingress_rate: u64,
    /// Into the pod, bucket size in bits.
    #[serde(default)]
    pub ingress_burst: u64,
    /// Out of the pod, bits per second.
    #[serde(default)]
    pub egress_rate: u64,
    /// Out of the pod, bucket size in bits.
    #[serde(default)]
    pub egress_burst: u64,
}

impl Bandwidth {
    /// The lowest rate taken, bits per second.
    pub const MIN_RATE: u64 = 1_000;

    /// Whether neither direction is limited.
    pub fn is_unlimited(&self) -> bool {
        self.ingress_rate == 0 && self.egress_rate == 0
    }

    /// Checks the pairs as the `bandwidth` plugin does (a rate needs a burst, a burst a rate);
    /// the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        for (dir, rate, burst) in [
            ("ingress", self.ingress_rate, self.ingress_burst),
            ("egress", self.egress_rate, self.egress_burst),
        ] {
            match (rate, burst) {
                (0, 0) => {}
                (0, _) => {
                    return Err(format!(
                        "runtimeConfig.bandwidth.{dir}Burst is set but {dir}Rate is not; a burst needs a rate in bits per second"
                    ))
                }
                (_, 0) => {
                    return Err(format!(
                        "runtimeConfig.bandwidth.{dir}Rate is set but {dir}Burst is not; a rate needs a burst in bits"
                    ))
                }
                (r, _) if r < Self::MIN_RATE => {
                    return Err(format!(
                        "runtimeConfig.bandwidth.{dir}Rate: {r} is below {} bits per second",
                        Self::MIN_RATE
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The keys of a plugin configuration weft reads or lets through: the spec's (`type`, `name`,
/// `cniVersion`, `capabilities`, `runtimeConfig`, `args`, `prevResult`, `dns`), GC's
/// `cni.dev/valid-attachments`, and weft's own `socket`. Any other key is refused by name rather
/// than ignored: a Calico- or flannel-style `ipam`, `mtu` or `policy` section would otherwise
/// look honoured while doing nothing.
pub const KNOWN_KEYS: [&str; 11] = [
    "type",
    "allowedSourcePrefixes",
    "socket",
    "name",
    "cniVersion",
    "capabilities",
    "runtimeConfig",
    "args",
    "prevResult",
    "dns",
    "cni.dev/valid-attachments",
];

fn unknown_key(key: &str) -> String {
    let why = match key {
        "ipam" => "weft allocates pod addresses from the node's subnet itself (its lease or the Node's podCIDR) and runs no IPAM plugin; remove the ipam section",
        "mtu" => "weft gives pods the tunnel MTU itself ([backend] mtu of weftd's config); remove the key",
        "policy" | "kubernetes" => "weft does not enforce NetworkPolicy from the CNI configuration; remove the key",
        "ipMasq" | "isGateway" | "hairpinMode" | "bridge" | "isDefaultGateway" => "weftd does this itself ([network] ip_masq, hairpin on every port, its own bridge or switch); remove the key",
        _ => "not an option of the weft plugin",
    };
    format!(
        "{key}: {why} (weft reads only socket and the spec's keys: {})",
        KNOWN_KEYS.join(", ")
    )
}

fn invalid_config(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

impl NetConf {
    /// Parses the configuration text from stdin.
    pub fn parse(text: &str) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("the network configuration on stdin is not valid JSON: {e}"),
            )
            .details("a runtime passes the network configuration (one plugin entry of the conflist, with name and cniVersion) as JSON on stdin")
        })?;
        NetConf::from_value(&value)
    }

    /// Reads the fields Weft needs from an already parsed configuration of the weft plugin;
    /// a key weft does not implement is an error naming it.
    pub fn from_value(value: &Value) -> Result<NetConf, CniError> {
        if let Some(key) = value
            .as_object()
            .and_then(|o| o.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())))
        {
            return Err(invalid_config(unknown_key(key)));
        }
        let mut conf = Self::from_value_any_plugin(value)?;
        let mut sources =
            allowed_sources(value.get("allowedSourcePrefixes"), "allowedSourcePrefixes")?;
        let from_args = value
            .get("args")
            .and_then(|a| a.get("cni"))
            .and_then(|c| c.get("allowedSourcePrefixes"));
        for n in allowed_sources(from_args, "args.cni.allowedSourcePrefixes")? {
            if !sources.contains(&n) {
                sources.push(n);
            }
        }
        if sources.len() > MAX_ALLOWED_SOURCES {
            return Err(invalid_config(format!(
                "allowedSourcePrefixes: {} prefixes (network and args.cni together); at most {MAX_ALLOWED_SOURCES} are allowed per pod",
                sources.len()
            )));
        }
        conf.allowed_sources = sources;
        Ok(conf)
    }

    /// Like [`NetConf::from_value`] for another plugin's entry of a conflist: the common fields
    /// checked, its own keys left alone.
    pub fn from_value_any_plugin(value: &Value) -> Result<NetConf, CniError> {
        let obj = value.as_object().ok_or_else(|| {
            CniError::new(
                code::DECODE,
                "the network configuration on stdin is not a JSON object",
            )
        })?;
        let cni_version = match obj.get("cniVersion") {
            None => return Err(invalid_config(
                "cniVersion: missing; the configuration must say which CNI spec version it uses",
            )),
            Some(Value::String(s)) => CniVersion::parse(s).ok_or_else(|| {
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!(
                        "cniVersion: {s:?} is not supported; weft supports {}",
                        supported_list()
                    ),
                )
            })?,
            Some(other) => {
                return Err(invalid_config(format!(
                    "cniVersion: {other} is not a string like \"1.0.0\""
                )))
            }
        };
        let name = match obj.get("name") {
            Some(Value::String(s)) if valid_container_id(s) => s.clone(),
            Some(Value::String(s)) => {
                return Err(invalid_config(format!(
                "name: {s:?} is not a valid network name: it must start with a letter or digit, followed by letters, digits, '_', '.' or '-'"
            )))
            }
            Some(other) => return Err(invalid_config(format!("name: {other} is not a string"))),
            None => return Err(invalid_config("name: missing; the network needs a name")),
        };
        let socket = match obj.get("socket") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.starts_with('/') => Some(s.clone()),
            Some(other) => {
                return Err(invalid_config(format!(
                    "socket: {other} is not an absolute path to the weftd CNI socket (default {})",
                    crate::DEFAULT_SOCKET
                )))
            }
        };
        let prev_result = obj.get("prevResult").filter(|v| !v.is_null()).cloned();
        let dns = obj.get("dns").filter(|v| !v.is_null()).cloned();
        let valid_attachments = match obj.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value::<Vec<Attachment>>(v.clone()).map_err(|e| {
                    CniError::new(
                        code::DECODE,
                        format!("cni.dev/valid-attachments: {e}; expected a list of {{\"containerID\", \"ifname\"}}"),
                    )
                })?,
            ),
        };
        let bandwidth = match obj.get("runtimeConfig").and_then(|r| r.get("bandwidth")) {
            None | Some(Value::Null) => None,
            Some(v) => {
                let bw: Bandwidth = serde_json::from_value(v.clone()).map_err(|e| {
                    invalid_config(format!(
                        "runtimeConfig.bandwidth: {e}; expected {{\"ingressRate\", \"ingressBurst\", \"egressRate\", \"egressBurst\"}} as non-negative integers (bits per second, bits)"
                    ))
                })?;
                bw.validate().map_err(invalid_config)?;
                (!bw.is_unlimited()).then_some(bw)
            }
        };
        Ok(NetConf {
            cni_version,
            name,
            socket,
            prev_result,
            dns,
            valid_attachments,
            bandwidth,
            allowed_sources: Vec::new(),
        })
    }
}

fn supported_list() -> String {
    CniVersion::ALL
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// An interface of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// MTU (emitted from 1.1.0 on).
    pub mtu: Option<u32>,
    /// The network namespace path for container interfaces; `None` for host ones.
    pub sandbox: Option<String>,
}

/// An IP configuration of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with prefix length, `10.244.1.5/24`.
    pub address: String,
    /// Gateway.
    pub gateway: Option<String>,
    /// Index into the result's interfaces.
    pub interface: Option<usize>,
}

/// A route of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix, `0.0.0.0/0`.
    pub dst: String,
    /// Next hop.
    pub gw: Option<String>,
}

/// The result of ADD, independent of the version it is printed in.
#[derive(Debug, Clone, PartialEq)]
pub struct AddResult {
    /// Interfaces created: the host veth (no sandbox) and the container's (sandbox = netns path).
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<IpConfig>,
    /// Routes in the container.
    pub routes: Vec<Route>,
    /// DNS settings (the network configuration's `dns`, echoed), or none.
    pub dns: Option<Value>,
}

impl AddResult {
    /// The result JSON in the shape of `version` (SPEC.md "Result"; conversions as libcni's
    /// `types/040` and `types/100` do them): before 1.0.0 every `ips[]` entry carries `"version"`;
    /// from 1.1.0 interfaces carry `mtu`.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), i.name.clone().into());
                if !i.mac.is_empty() {
                    o.insert("mac".into(), i.mac.clone().into());
                }
                if let (Some(mtu), true) = (i.mtu, version.interfaces_carry_mtu()) {
                    o.insert("mtu".into(), mtu.into());
                }
                if let Some(sandbox) = &i.sandbox {
                    o.insert("sandbox".into(), sandbox.clone().into());
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.ips_carry_version() {
                    let v = if ip.address.contains(':') { "6" } else { "4" };
                    o.insert("version".into(), v.into());
                }
                o.insert("address".into(), ip.address.clone().into());
                if let Some(gw) = &ip.gateway {
                    o.insert("gateway".into(), gw.clone().into());
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), i.into());
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), r.dst.clone().into());
                if let Some(gw) = &r.gw {
                    o.insert("gw".into(), gw.clone().into());
                }
                Value::Object(o)
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), version.as_str().into());
        out.insert("interfaces".into(), interfaces.into());
        out.insert("ips".into(), ips.into());
        if !routes.is_empty() {
            out.insert("routes".into(), routes.into());
        }
        out.insert(
            "dns".into(),
            self.dns
                .clone()
                .unwrap_or_else(|| Value::Object(Map::new())),
        );
        Value::Object(out)
    }

    /// Reads a result in any supported version's shape (a `prevResult`). Unknown fields are
    /// ignored; `ips[].version` and `interfaces[].mtu` are accepted whatever the version.
    pub fn from_json(value: &Value) -> Result<AddResult, CniError> {
        let bad = |what: &str| {
            CniError::new(
                code::DECODE,
                format!("prevResult: {what}; expected a CNI result with interfaces and ips"),
            )
        };
        let obj = value.as_object().ok_or_else(|| bad("not a JSON object"))?;
        let list = |key: &str| -> Result<Vec<Value>, CniError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => Ok(a.clone()),
                Some(_) => Err(bad(&format!("{key} is not a list"))),
            }
        };
        let string = |o: &Value, key: &str| o.get(key).and_then(Value::as_str).map(str::to_string);
        let mut interfaces = Vec::new();
        for (n, i) in list("interfaces")?.iter().enumerate() {
            let name = string(i, "name")
                .ok_or_else(|| bad(&format!("interfaces[{n}].name is missing")))?;
            interfaces.push(Interface {
                name,
                mac: string(i, "mac").unwrap_or_default(),
                mtu: i
                    .get("mtu")
                    .and_then(Value::as_u64)
                    .and_then(|m| u32::try_from(m).ok()),
                sandbox: string(i, "sandbox").filter(|s| !s.is_empty()),
            });
        }
        let mut ips = Vec::new();
        for (n, ip) in list("ips")?.iter().enumerate() {
            let address = string(ip, "address")
                .ok_or_else(|| bad(&format!("ips[{n}].address is missing")))?;
            ips.push(IpConfig {
                address,
                gateway: string(ip, "gateway"),
                interface: ip
                    .get("interface")
                    .and_then(Value::as_u64)
                    .and_then(|i| usize::try_from(i).ok()),
            });
        }
        let mut routes = Vec::new();
        for (n, r) in list("routes")?.iter().enumerate() {
            let dst =
                string(r, "dst").ok_or_else(|| bad(&format!("routes[{n}].dst is missing")))?;
            routes.push(Route {
                dst,
                gw: string(r, "gw"),
            });
        }
        Ok(AddResult {
            interfaces,
            ips,
            routes,
            dns: obj.get("dns").filter(|v| !v.is_null()).cloned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AddResult {
        AddResult {
            interfaces: vec![
                Interface {
                    name: "weft0123456789a".into(),
                    mac: "0a:58:0a:f4:01:05".into(),
                    mtu: Some(1450),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:f4:01:06".into(),
                    mtu: Some(1450),
                    sandbox: Some("/var/run/netns/blue".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.5/24".into(),
                gateway: Some("10.244.1.1".into()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some("10.244.1.1".into()),
            }],
            dns: None,
        }
    }

    #[test]
    fn result_shapes_per_version() {
        let r = sample();
        let v030 = r.to_json(CniVersion::V0_3_0);
        assert_eq!(
            v030,
            json!({
                "cniVersion": "0.3.0",
                "interfaces": [
                    {"name": "weft0123456789a", "mac": "0a:58:0a:f4:01:05"},
                    {"name": "eth0", "mac": "0a:58:0a:f4:01:06", "sandbox": "/var/run/netns/blue"}
                ],
                "ips": [{"version": "4", "address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
                "dns": {}
            })
        );
        // 0.3.1 and 0.4.0 have the same shape, only the version differs.
        for v in [CniVersion::V0_3_1, CniVersion::V0_4_0] {
            let mut expect = v030.clone();
            expect["cniVersion"] = v.as_str().into();
            assert_eq!(r.to_json(v), expect, "{v}");
        }
        let v100 = r.to_json(CniVersion::V1_0_0);
        assert_eq!(v100["cniVersion"], "1.0.0");
        assert!(
            v100["ips"][0].get("version").is_none(),
            "1.0.0 drops ips[].version"
        );
        assert!(v100["interfaces"][1].get("mtu").is_none(), "mtu is 1.1.0's");
        assert_eq!(v100["ips"][0]["interface"], 1);
        let v110 = r.to_json(CniVersion::V1_1_0);
        assert_eq!(v110["interfaces"][0]["mtu"], 1450);
        assert_eq!(v110["interfaces"][1]["mtu"], 1450);
        assert!(
            v110["interfaces"][0].get("sandbox").is_none(),
            "host veth has no sandbox"
        );
        assert_eq!(v110["interfaces"][1]["sandbox"], "/var/run/netns/blue");
    }

    #[test]
    fn cni_args_are_read_by_key() {
        let env = Invocation {
            command: Command::Add,
            container_id: None,
            netns: None,
            ifname: None,
            args: Some(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=;K8S_POD_INFRA_CONTAINER_ID=c1"
                    .into(),
            ),
        };
        assert_eq!(env.arg("K8S_POD_NAMESPACE"), Some("x"));
        assert_eq!(env.arg("K8S_POD_NAME"), None, "empty is absent");
        assert_eq!(env.arg("K8S_POD_UID"), None);
        assert_eq!(Invocation { args: None, ..env }.arg("IgnoreUnknown"), None);
    }

    #[test]
    fn results_round_trip_from_every_version() {
        let r = sample();
        for v in CniVersion::ALL {
            let back = AddResult::from_json(&r.to_json(v)).expect("parses");
            assert_eq!(back.interfaces[1].sandbox, r.interfaces[1].sandbox);
            assert_eq!(back.ips, r.ips, "{v}");
            assert_eq!(back.routes, r.routes, "{v}");
            let expect_mtu = if v.interfaces_carry_mtu() {
                Some(1450)
            } else {
                None
            };
            assert_eq!(back.interfaces[0].mtu, expect_mtu, "{v}");
        }
        assert_eq!(
            AddResult::from_json(&json!({"ips": [{"gateway": "1.2.3.4"}]}))
                .expect_err("no address")
                .code,
            code::DECODE
        );
    }

    #[test]
    fn version_answer() {
        assert_eq!(
            version_info(),
            json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
        assert_eq!(CniVersion::parse("0.2.0"), None);
        assert_eq!(CniVersion::parse("1.0.0"), Some(CniVersion::V1_0_0));
    }

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn environment_per_verb() {
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"),
        ];
        let inv = Invocation::from_env(env(&add)).expect("valid ADD");
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.container_id(), "abc123");

        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "CNI_COMMAND: not set"),
            (
                &[("CNI_COMMAND", "add")],
                "CNI_COMMAND: \"add\" is not a CNI verb",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x"),
                ],
                "CNI_CONTAINERID: not set",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "-x"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x"),
                ],
                "CNI_CONTAINERID: \"-x\" is not a valid",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a/b"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x"),
                ],
                "CNI_CONTAINERID: \"a/b\"",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_NETNS", "/x"),
                ],
                "CNI_IFNAME: not set",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "a-very-long-name0"),
                    ("CNI_NETNS", "/x"),
                ],
                "CNI_IFNAME: \"a-very-long-name0\"",
            ),
            (
                &[
                    ("CNI_COMMAND", "CHECK"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "eth0"),
                ],
                "CNI_NETNS: not set",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "netns"),
                ],
                "CNI_NETNS: \"netns\" is not an absolute path",
            ),
            (
                &[
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_ARGS", "A=1;oops"),
                ],
                "CNI_ARGS: \"oops\"",
            ),
        ];
        for (vars, want) in cases {
            let e = Invocation::from_env(env(vars)).expect_err(want);
            assert_eq!(e.code, code::INVALID_ENV, "{want}");
            assert!(
                e.msg.starts_with(want),
                "{:?} does not start with {want:?}",
                e.msg
            );
        }
        // DEL needs no netns; STATUS, GC and VERSION need nothing else.
        Invocation::from_env(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .expect("DEL without netns");
        for verb in ["STATUS", "GC", "VERSION"] {
            Invocation::from_env(env(&[("CNI_COMMAND", verb)])).expect(verb);
        }
    }

    #[test]
    fn network_config_errors_name_the_field() {
        let e = NetConf::parse("{not json").expect_err("decode");
        assert_eq!(e.code, code::DECODE);
        assert!(e.msg.contains("not valid JSON"), "{}", e.msg);
        let e = NetConf::parse(r#"{"name":"n"}"#).expect_err("no version");
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.starts_with("cniVersion: missing"));
        let e = NetConf::parse(r#"{"cniVersion":"0.2.0","name":"n"}"#).expect_err("old");
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert!(
            e.msg.contains("0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"),
            "{}",
            e.msg
        );
        let e = NetConf::parse(r#"{"cniVersion":"1.0.0","name":"n","socket":"rel"}"#)
            .expect_err("relative socket");
        assert!(e.msg.starts_with("socket:"));
        let e = NetConf::parse(r#"{"cniVersion":"1.0.0"}"#).expect_err("no name");
        assert!(e.msg.starts_with("name: missing"));
        let c = NetConf::parse(
            r#"{"cniVersion":"1.1.0","name":"weft","type":"weft","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .expect("GC config");
        assert_eq!(
            c.valid_attachments,
            Some(vec![Attachment {
                container_id: "a".into(),
                ifname: "eth0".into()
            }])
        );
    }

    #[test]
    fn the_bandwidth_capability_is_read_and_checked() {
        let conf = |bw: &str| {
            format!(
                r#"{{"cniVersion":"1.0.0","name":"weft","type":"weft","capabilities":{{"bandwidth":true}},"runtimeConfig":{{"bandwidth":{bw}}}}}"#
            )
        };
        let c = NetConf::parse(&conf(
            r#"{"ingressRate":8000000,"ingressBurst":1000000,"egressRate":4000000,"egressBurst":500000}"#,
        ))
        .expect("limits");
        assert_eq!(
            c.bandwidth,
            Some(Bandwidth {
                ingress_rate: 8_000_000,
                ingress_burst: 1_000_000,
                egress_rate: 4_000_000,
                egress_burst: 500_000,
            })
        );
        // One direction only, and no limits at all (kubelet passes zeros for a pod without).
        let c = NetConf::parse(&conf(r#"{"egressRate":4000000,"egressBurst":500000}"#))
            .expect("egress only");
        assert_eq!(c.bandwidth.map(|b| b.ingress_rate), Some(0));
        let c = NetConf::parse(&conf(r#"{"ingressRate":0,"ingressBurst":0}"#)).expect("zeros");
        assert_eq!(c.bandwidth, None);
        for (bw, needle) in [
            (r#"{"ingressRate":8000000}"#, "ingressBurst"),
            (r#"{"egressBurst":5}"#, "egressRate"),
            (r#"{"ingressRate":10,"ingressBurst":10}"#, "below 1000"),
            (r#"{"ingressRate":-1,"ingressBurst":10}"#, "non-negative"),
            (
                r#"{"ingresRate":1000000,"ingressBurst":10}"#,
                "unknown field",
            ),
        ] {
            let e = NetConf::parse(&conf(bw)).expect_err(bw);
            assert_eq!(e.code, code::INVALID_CONFIG, "{bw}");
            assert!(e.msg.contains("runtimeConfig.bandwidth"), "{bw}: {}", e.msg);
            assert!(e.msg.contains(needle), "{bw}: {}", e.msg);
        }
    }

    #[test]
    fn allowed_source_prefixes_come_from_the_network_and_the_attachment() {
        let conf = |top: &str, args: &str| {
            format!(r#"{{"cniVersion":"1.0.0","name":"weft","type":"weft"{top}{args}}}"#)
        };
        let net = |s: &str| s.parse::<Ipv4Net>().expect("prefix");
        let c = NetConf::parse(&conf("", "")).expect("none");
        assert!(c.allowed_sources.is_empty());
        // The network's, then the attachment's (Multus cni-args), a bare address as its /32,
        // host bits cleared, repeats dropped.
        let c = NetConf::parse(&conf(
            r#","allowedSourcePrefixes":["10.244.1.200/32","192.168.9.7/24"]"#,
            r#","args":{"cni":{"allowedSourcePrefixes":["10.244.1.201","10.244.1.200/32"]}}"#,
        ))
        .expect("both");
        assert_eq!(
            c.allowed_sources,
            [
                net("10.244.1.200/32"),
                net("192.168.9.0/24"),
                net("10.244.1.201/32")
            ]
        );
        let nine: Vec<String> = (0..9).map(|i| format!("\"10.0.0.{i}\"")).collect();
        let nine = format!(r#","allowedSourcePrefixes":[{}]"#, nine.join(","));
        for (top, args, needle) in [
            (
                r#","allowedSourcePrefixes":"10.0.0.1/32""#,
                "",
                "allowedSourcePrefixes: ",
            ),
            (
                r#","allowedSourcePrefixes":[7]"#,
                "",
                "allowedSourcePrefixes[0]",
            ),
            (
                "",
                r#","args":{"cni":{"allowedSourcePrefixes":["10.0.0.1/32","fd00::1/128"]}}"#,
                "args.cni.allowedSourcePrefixes[1]",
            ),
            (
                "",
                r#","args":{"cni":{"allowedSourcePrefixes":["10.0.0.1/33"]}}"#,
                "IPv4 prefix",
            ),
            (nine.as_str(), "", "at most 8"),
        ] {
            let text = conf(top, args);
            let e = NetConf::parse(&text).expect_err(&text);
            assert_eq!(e.code, code::INVALID_CONFIG, "{text}");
            assert!(e.msg.contains(needle), "{text}: {}", e.msg);
        }
    }

    #[test]
    fn keys_weft_does_not_implement_are_refused_by_name() {
        // A Calico-style plugin entry: ipam, mtu and policy would be silently ignored otherwise.
        for (key, value, hint) in [
            (
                "ipam",
                r#"{"type":"calico-ipam"}"#,
                "allocates pod addresses",
            ),
            ("mtu", "1440", "tunnel MTU"),
            ("policy", r#"{"type":"k8s"}"#, "NetworkPolicy"),
            ("log_level", r#""info""#, "not an option"),
        ] {
            let text =
                format!(r#"{{"cniVersion":"1.0.0","name":"weft","type":"weft","{key}":{value}}}"#);
            let e = NetConf::parse(&text).expect_err(key);
            assert_eq!(e.code, code::INVALID_CONFIG, "{key}");
            assert!(e.msg.starts_with(&format!("{key}: ")), "{}", e.msg);
            assert!(e.msg.contains(hint), "{}", e.msg);
        }
        // What libcni adds, and the shipped conflist's keys, pass.
        NetConf::parse(
            r#"{"cniVersion":"1.0.0","name":"weft","type":"weft","socket":"/run/weft/cni.sock","capabilities":{"portMappings":true},"runtimeConfig":{},"args":{},"dns":{}}"#,
        )
        .expect("known keys");
    }

    #[test]
    fn error_json() {
        let e = CniError::new(code::TRY_AGAIN_LATER, "agent unreachable").details("check weftd");
        assert_eq!(
            e.to_json(CniVersion::V1_0_0),
            json!({"cniVersion": "1.0.0", "code": 11, "msg": "agent unreachable", "details": "check weftd"})
        );
        assert!(CniError::new(1, "x")
            .to_json(LATEST)
            .get("details")
            .is_none());
    }
}
