//! The Kubernetes policy source (`[policy] source = "kubernetes"`): Pods, Namespaces and
//! NetworkPolicies followed through `kube::runtime` watchers (list, then watch; relist with
//! backoff after an error), as Calico's Felix follows them.
//!
//! # What this module promises
//!
//! - The agent starts enforcing only after all three lists are in ([`PolicyWatch::sync`], before
//!   the CNI server attaches or re-adopts a pod): a restart never opens an isolated pod while the
//!   lists load. Until then start-up waits, logging what it waits for.
//! - Every change is applied to a [`ClusterView`]; changes that arrive together (a relist, a
//!   `kubectl apply` of several objects) are gathered and published as one set.
//! - Pods are kept slim (namespace, name, uid, labels, `hostNetwork`, container ports, phase and
//!   addresses: what [`compile`](mod@super::compile) reads), so a large cluster's pods cost little.
//! - A watcher error keeps the view as it was (the set in force stays) and is logged once until
//!   the watcher recovers; a relist replaces that kind's objects as one change.
//! - [`PodGate`]: a CNI ADD for a pod the view has not seen yet (kubelet runs ADD right after
//!   the pod is scheduled, and the watch may lag) waits until the view has it, so the pod's
//!   labels are known before its port is published; see [`PodGate::wait`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};

use super::Manifests;
use crate::cni::ipam::PodName;
use crate::datastore::TableInputs;

/// Every Kubernetes API call this module makes, as RBAC `(resource, verb)` pairs; the
/// ClusterRole in `deploy/kubernetes/weft.yaml` grants these with those of
/// [`crate::datastore::kube::API_CALLS`] (`control/tests/deploy.rs` checks both ways).
pub const API_CALLS: &[(&str, &str)] = &[
    // The three watchers' list and watch, cluster-wide.
    ("pods", "list"),
    ("pods", "watch"),
    ("namespaces", "list"),
    ("namespaces", "watch"),
    ("networkpolicies", "list"),
    ("networkpolicies", "watch"),
];

/// How long a CNI ADD waits for the watchers to show its pod.
pub const POD_WAIT: Duration = Duration::from_secs(10);

/// One watcher event, by kind.
#[derive(Debug)]
pub enum Change {
    /// A Pod event (boxed: a Pod is large, and most events are of pods).
    Pod(Box<Event<Pod>>),
    /// A Namespace event.
    Namespace(Event<Namespace>),
    /// A NetworkPolicy event.
    Policy(Event<NetworkPolicy>),
}

impl Change {
    fn kind(&self) -> Kind {
        match self {
            Change::Pod(_) => Kind::Pods,
            Change::Namespace(_) => Kind::Namespaces,
            Change::Policy(_) => Kind::NetworkPolicies,
        }
    }
}

/// The three kinds followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Pods.
    Pods = 0,
    /// Namespaces.
    Namespaces = 1,
    /// NetworkPolicies.
    NetworkPolicies = 2,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Pods, Kind::Namespaces, Kind::NetworkPolicies];

    /// The resource's plural name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pods => "pods",
            Kind::Namespaces => "namespaces",
            Kind::NetworkPolicies => "networkpolicies",
        }
    }
}

type Key = (String, String);

fn key_of(meta: &ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// One kind's objects as its watcher shows them.
#[derive(Debug)]
struct Tracked<T> {
    objects: BTreeMap<Key, T>,
    /// A relist in progress: the objects seen since its `Init`.
    relisting: Option<BTreeMap<Key, T>>,
    listed: bool,
}

impl<T> Default for Tracked<T> {
    fn default() -> Self {
        Tracked {
            objects: BTreeMap::new(),
            relisting: None,
            listed: false,
        }
    }
}

/// What a kind's objects are to policy: how one is slimmed, and whether two versions differ in
/// what policy reads (by default: kept whole, compared whole).
trait Object: Clone + PartialEq + kube::Resource {
    fn slim(self) -> Self {
        self
    }
    fn same(&self, other: &Self) -> bool {
        self == other
    }
}

impl Object for Pod {
    fn slim(self) -> Self {
        slim(self)
    }
}

impl Object for Namespace {
    fn slim(self) -> Self {
        slim_namespace(self)
    }
}

impl Object for NetworkPolicy {
    /// The resourceVersion changes with every write; the spec is what matters.
    fn same(&self, other: &Self) -> bool {
        self.spec == other.spec && self.metadata.labels == other.metadata.labels
    }
}

impl<T: Object> Tracked<T> {
    /// Applies one event; whether what policy reads changed.
    fn apply(&mut self, event: Event<T>) -> bool {
        match event {
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply(o) => {
                let o = o.slim();
                self.relisting
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key_of(o.meta()), o);
                false
            }
            Event::InitDone => {
                let new = self.relisting.take().unwrap_or_default();
                self.listed = true;
                let changed = self.objects.len() != new.len()
                    || self
                        .objects
                        .iter()
                        .zip(&new)
                        .any(|((ka, a), (kb, b))| ka != kb || !a.same(b));
                self.objects = new;
                changed
            }
            Event::Apply(o) => {
                let o = o.slim();
                let key = key_of(o.meta());
                let before = self.objects.insert(key, o.clone());
                before.is_none_or(|b| !b.same(&o))
            }
            Event::Delete(o) => self.objects.remove(&key_of(o.meta())).is_some(),
        }
    }
}

/// The cluster as the watchers show it: the pure half of this module.
#[derive(Debug, Default)]
pub struct ClusterView {
    pods: Tracked<Pod>,
    namespaces: Tracked<Namespace>,
    policies: Tracked<NetworkPolicy>,
}

impl ClusterView {
    /// Applies one event; whether what policy sees changed.
    pub fn apply(&mut self, change: Change) -> bool {
        match change {
            Change::Pod(e) => self.pods.apply(*e),
            Change::Namespace(e) => self.namespaces.apply(e),
            Change::Policy(e) => self.policies.apply(e),
        }
    }

    fn listed(&self) -> [bool; 3] {
        [
            self.pods.listed,
            self.namespaces.listed,
            self.policies.listed,
        ]
    }

    /// Whether every kind has been listed at least once.
    pub fn synced(&self) -> bool {
        self.listed().iter().all(|&l| l)
    }

    /// The kinds not listed yet.
    pub fn waiting_for(&self) -> Vec<&'static str> {
        let listed = self.listed();
        Kind::ALL
            .iter()
            .filter(|k| !listed[**k as usize])
            .map(|k| k.name())
            .collect()
    }

    /// What the view holds, as the manifests a compile takes.
    pub fn manifests(&self) -> Manifests {
        Manifests {
            policies: self.policies.objects.values().cloned().collect(),
            namespaces: self.namespaces.objects.values().cloned().collect(),
            pods: self.pods.objects.values().cloned().collect(),
        }
    }

    /// The pods the view holds, with their uids, for the [`PodGate`].
    pub fn pod_uids(&self) -> HashMap<Key, Option<String>> {
        self.pods
            .objects
            .iter()
            .map(|(k, p)| (k.clone(), p.metadata.uid.clone()))
            .collect()
    }
}

/// A Pod with only what policy reads: namespace, name, uid and labels; `hostNetwork` and the
/// containers' ports; phase and addresses.
pub fn slim(pod: Pod) -> Pod {
    let Pod {
        metadata,
        spec,
        status,
        ..
    } = pod;
    let ports = |cs: Vec<Container>| -> Vec<Container> {
        cs.into_iter()
            .filter(|c| c.ports.as_ref().is_some_and(|p| !p.is_empty()))
            .map(|c| Container {
                name: c.name,
                ports: c.ports.map(|ps| {
                    ps.into_iter()
                        .map(|p| ContainerPort {
                            name: p.name,
                            container_port: p.container_port,
                            protocol: p.protocol,
                            ..ContainerPort::default()
                        })
                        .collect()
                }),
                ..Container::default()
            })
            .collect()
    };
    Pod {
        metadata: ObjectMeta {
            namespace: metadata.namespace,
            name: metadata.name,
            uid: metadata.uid,
            labels: metadata.labels,
            ..ObjectMeta::default()
        },
        spec: spec.map(|s| PodSpec {
            host_network: s.host_network,
            containers: ports(s.containers),
            init_containers: s.init_containers.map(ports).filter(|c| !c.is_empty()),
            ..PodSpec::default()
        }),
        status: status.map(|s| PodStatus {
            phase: s.phase,
            pod_ip: s.pod_ip,
            pod_ips: s.pod_ips,
            ..PodStatus::default()
        }),
    }
}

fn slim_namespace(ns: Namespace) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: ns.metadata.name,
            labels: ns.metadata.labels,
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// The pods the published policy knows, for CNI ADD to wait on (see the module docs).
#[derive(Debug, Default)]
pub struct PodGate {
    known: Mutex<HashMap<Key, Option<String>>>,
    changed: Condvar,
}

impl PodGate {
    /// Replaces the known pods (after the policy with them was published).
    pub fn set(&self, pods: HashMap<Key, Option<String>>) {
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = pods;
        self.changed.notify_all();
    }

    /// Waits up to `timeout` until the published policy knows the pod `name` (with the uid
    /// `uid`, when the runtime passed `K8S_POD_UID`: a pod recreated under the same name is a
    /// new pod); whether it does.
    pub fn wait(&self, name: &PodName, uid: Option<&str>, timeout: Duration) -> bool {
        let key = (name.namespace.clone(), name.name.clone());
        let deadline = Instant::now() + timeout;
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let ok = match known.get(&key) {
                None => false,
                Some(have) => uid.is_none() || have.as_deref() == uid,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if ok || left.is_zero() {
                return ok;
            }
            known = self
                .changed
                .wait_timeout(known, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

type Changes = BoxStream<'static, Result<Change, (Kind, watcher::Error)>>;

/// The three watchers and the view they keep, publishing into the tables' inputs.
pub struct PolicyWatch {
    stream: Changes,
    view: ClusterView,
    inputs: Arc<TableInputs>,
    gate: Arc<PodGate>,
    failing: [bool; 3],
}

impl std::fmt::Debug for PolicyWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyWatch")
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

impl PolicyWatch {
    /// Watchers of every Pod, Namespace and NetworkPolicy through `client`. Must be created and
    /// run on the runtime the client was built on.
    pub fn new(client: Client, inputs: Arc<TableInputs>) -> PolicyWatch {
        let cfg = watcher::Config::default;
        let pods: Api<Pod> = Api::all(client.clone());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let policies: Api<NetworkPolicy> = Api::all(client);
        let streams: Vec<Changes> = vec![
            watcher::watcher(pods, cfg())
                .default_backoff()
                .map(|r| {
                    r.map(|e| Change::Pod(Box::new(e)))
                        .map_err(|e| (Kind::Pods, e))
                })
                .boxed(),
            watcher::watcher(namespaces, cfg())
                .default_backoff()
                .map(|r| r.map(Change::Namespace).map_err(|e| (Kind::Namespaces, e)))
                .boxed(),
            watcher::watcher(policies, cfg())
                .default_backoff()
                .map(|r| {
                    r.map(Change::Policy)
                        .map_err(|e| (Kind::NetworkPolicies, e))
                })
                .boxed(),
        ];
        PolicyWatch {
            stream: futures::stream::select_all(streams).boxed(),
            view: ClusterView::default(),
            inputs,
            gate: Arc::new(PodGate::default()),
            failing: [false; 3],
        }
    }

    /// The gate CNI ADD waits on.
    pub fn gate(&self) -> Arc<PodGate> {
        self.gate.clone()
    }

    /// Takes one watcher item; whether the view changed. `None` when every watcher ended.
    fn take(&mut self, item: Option<Result<Change, (Kind, watcher::Error)>>) -> Option<bool> {
        match item? {
            Ok(change) => {
                let k = change.kind() as usize;
                if std::mem::take(&mut self.failing[k]) {
                    tracing::info!(kind = Kind::ALL[k].name(), "policy watcher recovered");
                }
                Some(self.view.apply(change))
            }
            Err((kind, e)) => {
                if !std::mem::replace(&mut self.failing[kind as usize], true) {
                    tracing::warn!(
                        "cannot watch {}: {e}; the NetworkPolicy in force stays, retrying (the service account needs list and watch on pods, namespaces and networking.k8s.io networkpolicies: deploy/kubernetes/weft.yaml)",
                        kind.name()
                    );
                }
                Some(false)
            }
        }
    }

    /// Takes whatever else is ready without waiting; whether the view changed.
    fn drain(&mut self) -> bool {
        let mut changed = false;
        while let Some(item) = self.stream.next().now_or_never() {
            match self.take(item) {
                Some(c) => changed |= c,
                None => break,
            }
        }
        changed
    }

    fn publish(&self) {
        self.inputs.set_policy_manifests(self.view.manifests());
        self.gate.set(self.view.pod_uids());
    }

    /// Waits until every kind is listed, then publishes the first set. `Err` when `stop` is set
    /// first or the watchers end.
    pub async fn sync(&mut self, stop: &AtomicBool) -> Result<(), &'static str> {
        let started = Instant::now();
        let mut next_log = Duration::from_secs(5);
        while !self.view.synced() {
            if stop.load(Ordering::Relaxed) {
                return Err("stopped");
            }
            let item = tokio::select! {
                item = self.stream.next() => item,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if started.elapsed() >= next_log {
                        tracing::warn!(
                            waiting_for = ?self.view.waiting_for(),
                            "NetworkPolicy: still waiting for the API server's first lists after {:?}; no pod is attached until they are in",
                            started.elapsed()
                        );
                        next_log *= 2;
                    }
                    continue;
                }
            };
            if self.take(item).is_none() {
                return Err("the policy watchers ended");
            }
        }
        self.drain();
        self.publish();
        let m = self.view.manifests();
        tracing::info!(
            policies = m.policies.len(),
            namespaces = m.namespaces.len(),
            pods = m.pods.len(),
            took = ?started.elapsed(),
            "NetworkPolicy from the Kubernetes API"
        );
        Ok(())
    }

    /// Follows the watchers until `stop`, publishing each change (changes that arrive together,
    /// within a few milliseconds, as one).
    pub async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            let item = tokio::select! {
                item = self.stream.next() => item,
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            };
            let Some(mut changed) = self.take(item) else {
                tracing::error!("the NetworkPolicy watchers ended; the set in force stays");
                return;
            };
            changed |= self.drain();
            if !changed {
                continue;
            }
            // A burst (a relist, several objects applied at once) is published as one set.
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.drain();
            self.publish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::NetworkPolicySpec;

    fn pod(ns: &str, name: &str, label: &str, ip: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(BTreeMap::from([("app".to_string(), label.to_string())])),
                annotations: Some(BTreeMap::from([("a".to_string(), "b".to_string())])),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-1".into()),
                containers: vec![
                    Container {
                        name: "web".into(),
                        image: Some("nginx".into()),
                        ports: Some(vec![ContainerPort {
                            name: Some("http".into()),
                            container_port: 80,
                            host_port: Some(8080),
                            ..ContainerPort::default()
                        }]),
                        ..Container::default()
                    },
                    Container {
                        name: "sidecar".into(),
                        ..Container::default()
                    },
                ],
                ..PodSpec::default()
            }),
            status: ip.map(|ip| PodStatus {
                pod_ip: Some(ip.into()),
                phase: Some("Running".into()),
                host_ip: Some("192.168.1.1".into()),
                ..PodStatus::default()
            }),
        }
    }

    fn policy(ns: &str, name: &str, types: &[&str]) -> NetworkPolicy {
        NetworkPolicy {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(NetworkPolicySpec {
                policy_types: Some(types.iter().map(|t| t.to_string()).collect()),
                ..NetworkPolicySpec::default()
            }),
        }
    }

    #[test]
    fn a_slim_pod_keeps_what_policy_reads_and_nothing_else() {
        let p = slim(pod("x", "a", "web", Some("10.244.1.2")));
        assert_eq!(p.metadata.uid.as_deref(), Some("uid-a"));
        assert!(p.metadata.annotations.is_none() && p.metadata.resource_version.is_none());
        let spec = p.spec.as_ref().expect("spec");
        assert!(spec.node_name.is_none());
        assert_eq!(spec.containers.len(), 1, "containers without ports go");
        let port = &spec.containers[0].ports.as_ref().expect("ports")[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port, port.host_port),
            (Some("http"), 80, None)
        );
        let status = p.status.as_ref().expect("status");
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.2"));
        assert!(status.host_ip.is_none());
    }

    #[test]
    fn the_view_is_synced_after_all_three_lists_and_relists_replace_a_kind_whole() {
        let mut v = ClusterView::default();
        assert_eq!(v.waiting_for(), ["pods", "namespaces", "networkpolicies"]);
        v.apply(Change::Pod(Box::new(Event::Init)));
        v.apply(Change::Pod(Box::new(Event::InitApply(pod(
            "x", "a", "web", None,
        )))));
        v.apply(Change::Pod(Box::new(Event::InitApply(pod(
            "x", "b", "db", None,
        )))));
        assert!(!v.apply(Change::Policy(Event::Init)));
        assert!(
            v.manifests().pods.is_empty(),
            "nothing until the list is done"
        );
        assert!(v.apply(Change::Pod(Box::new(Event::InitDone))));
        assert!(!v.synced());
        v.apply(Change::Namespace(Event::InitDone));
        v.apply(Change::Policy(Event::InitApply(policy(
            "x",
            "deny",
            &["Ingress"],
        ))));
        v.apply(Change::Policy(Event::InitDone));
        assert!(v.synced());
        let m = v.manifests();
        assert_eq!((m.pods.len(), m.policies.len()), (2, 1));
        // A relist after a watch error: x/b is gone, x/c is new, as one change.
        v.apply(Change::Pod(Box::new(Event::Init)));
        v.apply(Change::Pod(Box::new(Event::InitApply(pod(
            "x", "a", "web", None,
        )))));
        v.apply(Change::Pod(Box::new(Event::InitApply(pod(
            "x", "c", "db", None,
        )))));
        assert_eq!(
            v.manifests().pods.len(),
            2,
            "the old list stays during a relist"
        );
        assert!(v.apply(Change::Pod(Box::new(Event::InitDone))));
        let names: Vec<_> = v
            .manifests()
            .pods
            .iter()
            .map(|p| p.metadata.name.clone().expect("name"))
            .collect();
        assert_eq!(names, ["a", "c"]);
        // A relist that finds the same objects changes nothing.
        v.apply(Change::Pod(Box::new(Event::Init)));
        v.apply(Change::Pod(Box::new(Event::InitApply(pod(
            "x", "a", "web", None,
        )))));
        v.apply(Change::Pod(Box::new(Event::InitApply(pod(
            "x", "c", "db", None,
        )))));
        assert!(!v.apply(Change::Pod(Box::new(Event::InitDone))));
    }

    #[test]
    fn only_changes_policy_reads_count_as_changes() {
        let mut v = ClusterView::default();
        assert!(v.apply(Change::Pod(Box::new(Event::Apply(pod(
            "x", "a", "web", None
        ))))));
        // kubelet's status update with the address matters...
        assert!(v.apply(Change::Pod(Box::new(Event::Apply(pod(
            "x",
            "a",
            "web",
            Some("10.244.1.2")
        ))))));
        // ...an annotation or a resourceVersion does not.
        let mut same = pod("x", "a", "web", Some("10.244.1.2"));
        same.metadata.resource_version = Some("8".into());
        same.metadata.annotations = None;
        assert!(!v.apply(Change::Pod(Box::new(Event::Apply(same)))));
        assert!(v.apply(Change::Policy(Event::Apply(policy("x", "p", &["Ingress"])))));
        let mut touched = policy("x", "p", &["Ingress"]);
        touched.metadata.resource_version = Some("9".into());
        assert!(!v.apply(Change::Policy(Event::Apply(touched))));
        assert!(v.apply(Change::Policy(Event::Apply(policy("x", "p", &["Egress"])))));
        assert!(v.apply(Change::Policy(Event::Delete(policy("x", "p", &[])))));
        assert!(!v.apply(Change::Policy(Event::Delete(policy("x", "p", &[])))));
        assert!(v.apply(Change::Pod(Box::new(Event::Delete(pod(
            "x", "a", "", None
        ))))));
    }

    #[test]
    fn the_gate_waits_for_the_pod_and_for_its_uid() {
        let gate = Arc::new(PodGate::default());
        let a = PodName {
            namespace: "x".into(),
            name: "a".into(),
        };
        assert!(!gate.wait(&a, None, Duration::from_millis(20)));
        let g = gate.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            g.set(HashMap::from([(
                ("x".to_string(), "a".to_string()),
                Some("uid-1".to_string()),
            )]));
        });
        let started = Instant::now();
        assert!(gate.wait(&a, Some("uid-1"), Duration::from_secs(5)));
        assert!(started.elapsed() >= Duration::from_millis(90));
        t.join().expect("setter");
        assert!(gate.wait(&a, None, Duration::ZERO));
        assert!(
            !gate.wait(&a, Some("uid-2"), Duration::from_millis(20)),
            "a pod recreated under the same name waits for the new one"
        );
    }
}
