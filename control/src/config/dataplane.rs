//! `[dataplane]`: the local forwarding engine: workers, offloads, how pods attach.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{
    in_range, invalid, validate_ifname, ConfigError, DEFAULT_BRIDGE, DEFAULT_CONTROL_SOCKET,
};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDataplane {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) workers: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) bridge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) control_socket: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) offload: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) gso: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) gro: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) uso: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) busy_poll_us: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) cpu_wakeup_latency_us: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) pod_ports: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) neigh_reachable_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) neigh_stale_ms: Option<i64>,
}

/// `[dataplane]`: the local forwarding engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneSection {
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// The local pod bridge.
    pub bridge: String,
    /// Path of the agent's control socket.
    pub control_socket: PathBuf,
    /// Open the TUN with offloads (`IFF_VNET_HDR`, `TUN_F_CSUM | TUN_F_TSO4`): the kernel hands
    /// the workers 64 KiB TCP super-frames to segment, and takes coalesced ones back, instead of
    /// one syscall per packet. On by default; the agent falls back to plain packets if the kernel
    /// refuses.
    pub offload: bool,
    /// Send a flow's run of equal-sized VXLAN packets as one UDP GSO train (`UDP_SEGMENT`). On by
    /// default; probed at start-up and turned off by itself if the kernel refuses.
    pub gso: bool,
    /// Ask the kernel to merge received VXLAN datagrams of one flow (`UDP_GRO`). On by default;
    /// ignored on kernels without it.
    pub gro: bool,
    /// With `offload`, also offer the TUN UDP segmentation (`TUN_F_USO4`, Linux 6.2), so a pod's
    /// UDP GSO send is one TUN read that Weft cuts into datagrams. On by default; a kernel that
    /// refuses it leaves TSO in place.
    pub uso: bool,
    /// Microseconds a worker keeps polling after moving packets before it sleeps: replies that
    /// come back within it skip the scheduler's wakeup latency, at the cost of that much CPU per
    /// burst. Default 200; 0 always sleeps.
    pub busy_poll_us: u32,
    /// While the agent runs, ask the kernel's PM QoS to keep every CPU's wakeup latency at or
    /// below this many microseconds (it holds `/dev/cpu_dma_latency` open with the value, as
    /// tuned's latency-performance profile does): idle CPUs then stay in shallow idle states, so
    /// a worker woken by a packet runs sooner. 0 keeps idle CPUs polling (lowest latency; on a VM
    /// an idle vCPU then costs the host a core). Unset (the default) asks nothing. System-wide.
    pub cpu_wakeup_latency_us: Option<u32>,
    /// How pods attach: to the kernel bridge, or as ports of Weft's switch.
    pub pod_ports: PodPortMode,
    /// Milliseconds a learnt neighbour (a pod's floating address, switch mode) stays
    /// `REACHABLE` after it was last announced; Linux's `base_reachable_time_ms`. Default 30000.
    pub neigh_reachable_ms: u32,
    /// Milliseconds it then stays `STALE` (still used) before it is gone; Linux's
    /// `gc_stale_time`. Default 60000.
    pub neigh_stale_ms: u32,
}

/// `[dataplane] pod_ports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodPortMode {
    /// Pod veths join the kernel bridge `dataplane.bridge` (flannel's `cni0` model); the kernel
    /// switches same-node traffic and routes the rest into the TUN.
    Bridge,
    /// Pod veths are ports of Weft's switch (AF_PACKET sockets): every pod frame passes through
    /// Weft; no bridge. Pods get a /32 and a default route via 169.254.1.1, which Weft answers
    /// (Calico's routed model). The default.
    #[default]
    Switch,
}

impl PodPortMode {
    /// The config value.
    pub fn name(self) -> &'static str {
        match self {
            PodPortMode::Bridge => "bridge",
            PodPortMode::Switch => "switch",
        }
    }
}

/// Default of `[dataplane] busy_poll_us`.
pub const DEFAULT_BUSY_POLL_US: u32 = 200;

/// Default of `[dataplane] neigh_reachable_ms` (Linux's `base_reachable_time_ms`).
pub const DEFAULT_NEIGH_REACHABLE_MS: u32 = 30_000;

/// Default of `[dataplane] neigh_stale_ms` (Linux's `gc_stale_time`, 60 s).
pub const DEFAULT_NEIGH_STALE_MS: u32 = 60_000;

impl DataplaneSection {
    /// How learnt neighbours age.
    pub fn neigh_aging(&self) -> dataplane::neigh::Aging {
        use dataplane::time::Duration;
        dataplane::neigh::Aging {
            reachable: Duration::from_millis(u64::from(self.neigh_reachable_ms)),
            gc_stale: Duration::from_millis(u64::from(self.neigh_stale_ms)),
        }
    }
}

/// Validates `[dataplane]`; the bridge must not take the name of the TUN of VNI `vni`.
pub(super) fn validate(raw: &RawDataplane, vni: u32) -> Result<DataplaneSection, ConfigError> {
    let workers = in_range("dataplane.workers", raw.workers.unwrap_or(0), 0, 1024)? as usize;
    let bridge = raw
        .bridge
        .clone()
        .unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
    validate_ifname("dataplane.bridge", &bridge)?;
    if bridge == crate::netlink::tun_name(vni) {
        return Err(invalid(
            "dataplane.bridge",
            format!("{bridge:?} is the name of the TUN device; pick another"),
        ));
    }
    let control_socket = raw
        .control_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET));
    if !control_socket.is_absolute() {
        return Err(invalid(
            "dataplane.control_socket",
            format!("{} is not an absolute path", control_socket.display()),
        ));
    }
    let busy_poll_us = match raw.busy_poll_us {
        None => DEFAULT_BUSY_POLL_US,
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|&n| n <= 100_000)
            .ok_or_else(|| {
                invalid(
                    "dataplane.busy_poll_us",
                    format!("{n} is not a number of microseconds in 0..=100000"),
                )
            })?,
    };
    let cpu_wakeup_latency_us = match raw.cpu_wakeup_latency_us {
        None => None,
        Some(n) => Some(in_range("dataplane.cpu_wakeup_latency_us", n, 0, 2_000_000_000)? as u32),
    };
    let millis = |key: &str, v: Option<i64>, default: u32| -> Result<u32, ConfigError> {
        Ok(in_range(key, v.unwrap_or(i64::from(default)), 100, 3_600_000)? as u32)
    };
    let neigh_reachable_ms = millis(
        "dataplane.neigh_reachable_ms",
        raw.neigh_reachable_ms,
        DEFAULT_NEIGH_REACHABLE_MS,
    )?;
    let neigh_stale_ms = millis(
        "dataplane.neigh_stale_ms",
        raw.neigh_stale_ms,
        DEFAULT_NEIGH_STALE_MS,
    )?;
    let dataplane = DataplaneSection {
        neigh_reachable_ms,
        neigh_stale_ms,
        workers,
        bridge,
        control_socket,
        offload: raw.offload.unwrap_or(true),
        gso: raw.gso.unwrap_or(true),
        gro: raw.gro.unwrap_or(true),
        uso: raw.uso.unwrap_or(true),
        busy_poll_us,
        cpu_wakeup_latency_us,
        pod_ports: match raw.pod_ports.as_deref() {
            Some("bridge") => PodPortMode::Bridge,
            None | Some("switch") => PodPortMode::Switch,
            Some(v) => {
                return Err(invalid(
                    "dataplane.pod_ports",
                    format!("{v:?} is not \"bridge\" or \"switch\""),
                ))
            }
        },
    };
    Ok(dataplane)
}

impl From<&DataplaneSection> for RawDataplane {
    fn from(s: &DataplaneSection) -> RawDataplane {
        RawDataplane {
            workers: Some(s.workers as i64),
            bridge: Some(s.bridge.clone()),
            control_socket: Some(s.control_socket.clone()),
            offload: Some(s.offload),
            gso: Some(s.gso),
            gro: Some(s.gro),
            uso: Some(s.uso),
            busy_poll_us: Some(i64::from(s.busy_poll_us)),
            cpu_wakeup_latency_us: s.cpu_wakeup_latency_us.map(i64::from),
            pod_ports: Some(s.pod_ports.name().to_string()),
            neigh_reachable_ms: Some(i64::from(s.neigh_reachable_ms)),
            neigh_stale_ms: Some(i64::from(s.neigh_stale_ms)),
        }
    }
}
