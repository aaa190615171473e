//! The Kubernetes datastore in flannel's `--kube-subnet-mgr` layout (flannel-io/flannel
//! `pkg/subnet/kube`).
//!
//! - The node's subnet is its Node's `spec.podCIDR` (the first IPv4 of `spec.podCIDRs`), which
//!   kube-controller-manager assigns with `--allocate-node-cidrs`; it must lie in the network.
//! - The network config is flannel's `net-conf.json` when `datastore.kubernetes.net_conf` names
//!   it (the `kube-flannel-cfg` ConfigMap mounted as a file), else `[network]` and `[backend]`.
//! - Our Node is annotated with flannel's `backend-type`, `backend-data`, `public-ip` and
//!   `kube-subnet-manager: "true"`, then its condition `NetworkUnavailable=False` (reason
//!   `FlannelIsUp`); both are strategic merge patches of `nodes/status`, as flannel sends them, so
//!   flannel's RBAC (nodes get/list/watch, nodes/status patch) is all it needs.
//! - Peers are the Nodes carrying `kube-subnet-manager: "true"`, a vxlan backend and a podCIDR,
//!   followed by a `kube::runtime` watcher (list, then watch; relist with backoff on errors).
//!
//! The translation Node -> [`Lease`] is the pure function [`lease_of_node`].

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dataplane::wire::EthernetAddress;
use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde_json::{json, Value};

use super::flannel::{self, NetworkConfig};
use super::{BackendChoice, Backoff, Lease, PeerSync};
use crate::config::{BackendKind, Config};
use crate::metrics::Metrics;

/// Every Kubernetes API call this module makes, as RBAC `(resource, verb)` pairs. The
/// ClusterRole in `deploy/kubernetes/weft.yaml` grants exactly these; `control/tests/deploy.rs`
/// checks the manifest against this list and this list against the calls in this file.
pub const API_CALLS: &[(&str, &str)] = &[
    // prepare: `nodes.get(name)`, the own Node's podCIDR and annotations.
    ("nodes", "get"),
    // run: the watcher's list and watch of every Node.
    ("nodes", "list"),
    ("nodes", "watch"),
    // prepare: `nodes.patch_status(..)`, the annotations and NetworkUnavailable=False.
    ("nodes/status", "patch"),
];

/// Kubernetes datastore errors.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No usable client configuration.
    #[error("no Kubernetes client config: {0} (in a pod: the service account; outside: datastore.kubernetes.kubeconfig, $KUBECONFIG or ~/.kube/config)")]
    Config(String),
    /// An API request failed.
    #[error("Kubernetes API {op}: {source}")]
    Api {
        /// What was being done.
        op: &'static str,
        /// The client error.
        source: kube::Error,
    },
    /// The net-conf file is unreadable or invalid.
    #[error("datastore.kubernetes.net_conf {path}: {message}")]
    NetConf {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The Node's podCIDR lies outside the network.
    #[error("Node {node}: spec.podCIDR {subnet} is not inside the network {network}; the controller manager's --cluster-cidr and flannel's Network must agree")]
    PodCidrOutside {
        /// Node name.
        node: String,
        /// Its podCIDR.
        subnet: Ipv4Net,
        /// The network.
        network: Ipv4Net,
    },
    /// Stopped while waiting.
    #[error("stopped")]
    Stopped,
}

/// What start-up learned from the API server.
pub struct KubePrepared {
    /// The client, for the watcher.
    pub client: Client,
    /// Our podCIDR.
    pub subnet: Ipv4Net,
    /// The network.
    pub network: Ipv4Net,
    /// The backend (net-conf.json's, else the config file's).
    pub backend: BackendChoice,
}

impl std::fmt::Debug for KubePrepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubePrepared")
            .field("subnet", &self.subnet)
            .field("network", &self.network)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// A client from the kubeconfig named in the config, else in-cluster config, else `$KUBECONFIG`
/// or `~/.kube/config` (kube's inference order).
pub async fn client(cfg: &Config) -> Result<Client, KubeError> {
    let config = match &cfg.datastore.kubernetes.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))
}

/// The network and backend: from flannel's net-conf.json when configured, else from the file's
/// `[network]` and `[backend]`.
pub fn network_of(cfg: &Config) -> Result<(Ipv4Net, BackendChoice), KubeError> {
    match &cfg.datastore.kubernetes.net_conf {
        Some(path) => {
            let err = |message: String| KubeError::NetConf {
                path: path.display().to_string(),
                message,
            };
            let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            let net = NetworkConfig::parse(&text).map_err(|e| err(e.to_string()))?;
            Ok((net.network, BackendChoice::of_flannel(&net.backend)))
        }
        None => Ok((cfg.network.network, BackendChoice::of_config(cfg))),
    }
}

/// A Node's IPv4 pod subnet: `spec.podCIDR`, else the first IPv4 entry of `spec.podCIDRs`.
pub fn node_subnet(node: &Node) -> Option<Ipv4Net> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidr
        .iter()
        .chain(spec.pod_cidrs.iter().flatten())
        .find_map(|c| c.parse::<Ipv4Net>().ok())
        .map(|n| n.trunc())
}

fn node_name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or("")
}

/// The lease a Node describes, flannel's way: `None` for a Node not managed by a kube subnet
/// manager (no `kube-subnet-manager: "true"`) or without a podCIDR yet; an error for an annotated
/// Node whose annotations are malformed.
pub fn lease_of_node(node: &Node) -> Result<Option<Lease>, String> {
    let ann = node.metadata.annotations.as_ref();
    let get = |k: &str| ann.and_then(|a| a.get(k)).map(String::as_str);
    if get(flannel::ANN_KUBE_SUBNET_MANAGER) != Some("true") {
        return Ok(None);
    }
    let Some(subnet) = node_subnet(node) else {
        return Ok(None);
    };
    let name = node_name(node);
    let public_ip = get(flannel::ANN_PUBLIC_IP)
        .ok_or_else(|| format!("Node {name}: annotation {} missing", flannel::ANN_PUBLIC_IP))?;
    let public_ip: Ipv4Addr = public_ip.parse().map_err(|_| {
        format!(
            "Node {name}: {} {public_ip:?} is not an IPv4 address",
            flannel::ANN_PUBLIC_IP
        )
    })?;
    let backend_type = get(flannel::ANN_BACKEND_TYPE)
        .unwrap_or_default()
        .to_string();
    let data: Value = match get(flannel::ANN_BACKEND_DATA) {
        None | Some("") | Some("null") => Value::Null,
        Some(s) => serde_json::from_str(s).map_err(|e| {
            format!(
                "Node {name}: {} is not JSON: {e}",
                flannel::ANN_BACKEND_DATA
            )
        })?,
    };
    let (vni, vtep_mac) =
        flannel::parse_backend_data(&data).map_err(|e| format!("Node {name}: {e}"))?;
    Ok(Some(Lease {
        subnet,
        public_ip,
        backend_type,
        vni,
        vtep_mac,
        expiration: None,
    }))
}

/// The leases of a set of Nodes, skipping (with a log line) Nodes whose annotations are
/// malformed.
pub fn leases_of_nodes<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<Lease> {
    nodes
        .into_iter()
        .filter_map(|n| match lease_of_node(n) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("ignoring {e}");
                None
            }
        })
        .collect()
}

/// flannel's annotations for our Node.
pub fn own_annotations(
    backend: BackendKind,
    public_ip: Ipv4Addr,
    vni: u32,
    vtep_mac: EthernetAddress,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            flannel::ANN_BACKEND_TYPE.to_string(),
            backend.name().to_string(),
        ),
        (
            flannel::ANN_BACKEND_DATA.to_string(),
            flannel::backend_data(backend, vni, vtep_mac),
        ),
        (flannel::ANN_PUBLIC_IP.to_string(), public_ip.to_string()),
        (
            flannel::ANN_KUBE_SUBNET_MANAGER.to_string(),
            "true".to_string(),
        ),
    ])
}

/// The (strategic merge) patch setting `annotations` on a Node.
pub fn annotations_patch(annotations: &BTreeMap<String, String>) -> Value {
    json!({ "metadata": { "annotations": annotations } })
}

/// The strategic merge patch of `nodes/status` setting `NetworkUnavailable=False` as flannel
/// does (conditions merge by `type`, so other conditions are untouched).
pub fn network_available_patch(now: &str) -> Value {
    json!({
        "status": {
            "conditions": [{
                "type": "NetworkUnavailable",
                "status": "False",
                "reason": "FlannelIsUp",
                "message": "Weft (flannel-compatible) is running on this node",
                "lastTransitionTime": now,
                "lastHeartbeatTime": now,
            }]
        }
    })
}

fn rfc3339_now() -> String {
    // Seconds since the epoch to a UTC RFC 3339 time, without a date crate.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

async fn sleep_or_stop(d: Duration, stop: &AtomicBool) -> Result<(), KubeError> {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() {
        if stop.load(Ordering::Relaxed) {
            return Err(KubeError::Stopped);
        }
        let s = left.min(step);
        tokio::time::sleep(s).await;
        left -= s;
    }
    Ok(())
}

/// Start-up against the API server: our Node's podCIDR (waited for), our annotations, the
/// NetworkUnavailable=False condition.
pub async fn prepare(
    cfg: &Config,
    public_ip: Ipv4Addr,
    stop: &AtomicBool,
) -> Result<KubePrepared, KubeError> {
    let (network, backend) = network_of(cfg)?;
    let client = client(cfg).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let name = cfg.node.name.as_str();
    let mut backoff = Backoff::new();
    let mut last_msg = String::new();
    let node = loop {
        let msg = match nodes.get(name).await {
            Ok(n) if node_subnet(&n).is_some() => break n,
            Ok(_) => format!("Node {name} has no spec.podCIDR yet (is the controller manager run with --allocate-node-cidrs?)"),
            Err(e) => format!("cannot get Node {name}: {e}"),
        };
        if msg != last_msg {
            tracing::warn!("{msg}; retrying");
            last_msg = msg;
        }
        sleep_or_stop(backoff.next_delay(), stop).await?;
    };
    let subnet = node_subnet(&node).expect("loop ends with a podCIDR");
    if !network.contains(&subnet) {
        return Err(KubeError::PodCidrOutside {
            node: name.to_string(),
            subnet,
            network,
        });
    }
    let wanted = own_annotations(backend.kind, public_ip, backend.vni, cfg.vtep_mac());
    let current = node.metadata.annotations.clone().unwrap_or_default();
    if wanted.iter().any(|(k, v)| current.get(k) != Some(v)) {
        // Through nodes/status, as flannel does, so flannel's RBAC (nodes get/list/watch,
        // nodes/status patch) is all Weft needs.
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Strategic(annotations_patch(&wanted)),
            )
            .await
            .map_err(|source| KubeError::Api {
                op: "annotate Node",
                source,
            })?;
    }
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Strategic(network_available_patch(&rfc3339_now())),
        )
        .await
        .map_err(|source| KubeError::Api {
            op: "set NetworkUnavailable=False",
            source,
        })?;
    tracing::info!(node = name, %subnet, %network, "Node annotated; podCIDR is our subnet");
    Ok(KubePrepared {
        client,
        subnet,
        network,
        backend,
    })
}

/// Follows every Node with a watcher and keeps `sync` current until `stop`.
pub async fn run(
    client: Client,
    cfg: &Config,
    sync: &mut PeerSync,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) {
    let nodes: Api<Node> = Api::all(client);
    let mut stream = watcher::watcher(nodes, watcher::Config::default())
        .default_backoff()
        .boxed();
    // Node name -> the subnet its lease is on, to remove the right lease when a Node changes.
    let mut by_node: HashMap<String, Ipv4Net> = HashMap::new();
    let mut init: Vec<Node> = Vec::new();
    let mut failed = false;
    let _ = cfg;
    loop {
        let next = tokio::select! {
            n = stream.next() => n,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if stop.load(Ordering::Relaxed) { return; }
                continue;
            }
        };
        let Some(ev) = next else {
            tracing::warn!("Node watcher ended");
            return;
        };
        match ev {
            Ok(ev) => {
                if failed {
                    metrics.reconnected();
                    failed = false;
                }
                metrics.datastore_connected.store(true, Ordering::Relaxed);
                match ev {
                    Event::Init => init.clear(),
                    Event::InitApply(n) => init.push(n),
                    Event::InitDone => {
                        by_node = init
                            .iter()
                            .filter_map(|n| {
                                lease_of_node(n)
                                    .ok()
                                    .flatten()
                                    .map(|l| (node_name(n).to_string(), l.subnet))
                            })
                            .collect();
                        sync.replace_all(leases_of_nodes(&init));
                        sync.commit();
                        init.clear();
                        metrics.tables_programmed.store(true, Ordering::Relaxed);
                    }
                    Event::Apply(n) => {
                        let name = node_name(&n).to_string();
                        if let Some(old) = by_node.remove(&name) {
                            sync.remove(old);
                        }
                        match lease_of_node(&n) {
                            Ok(Some(l)) => {
                                by_node.insert(name, l.subnet);
                                sync.upsert(l);
                            }
                            Ok(None) => {}
                            Err(e) => tracing::warn!("ignoring {e}"),
                        }
                        sync.commit();
                    }
                    Event::Delete(n) => {
                        if let Some(old) = by_node.remove(node_name(&n)) {
                            sync.remove(old);
                            sync.commit();
                        }
                    }
                }
            }
            Err(e) => {
                if !failed {
                    tracing::warn!("Node watcher: {e}; keeping the last tables and retrying");
                }
                failed = true;
                metrics.datastore_connected.store(false, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_has_the_right_shape() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        assert!(t.starts_with("20"), "{t}");
    }
}
