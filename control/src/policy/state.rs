//! The agent's NetworkPolicy state: the manifests last loaded, joined with the node's pods and
//! compiled into the [`PolicyHook`] each published snapshot carries.
//!
//! - Pods come from two places. The manifests may hold Pod objects (labels, and for pods on
//!   other nodes `status.podIP`); the CNI server knows this node's pods by address and by the
//!   namespace and name the runtime passed in `CNI_ARGS`. A local pod takes its labels from the
//!   manifest Pod of the same namespace and name, and its address from the CNI server; a local
//!   pod no manifest names is a pod without labels in its namespace (a `podSelector: {}`
//!   selects it); a local pod the runtime did not name is in no namespace, so no policy
//!   selects it.
//! - Every compile gets a new generation, so an established flow meets the newer set at its
//!   next packet (re-checked, with `established = "recheck"`). A publish that changes neither
//!   the manifests nor the node's pods (a peer came or went) compiles nothing.
//! - A set that does not compile is refused with the object and field named in the log, and
//!   the last good one stays in force: a typo never opens or closes the node.

use std::net::Ipv4Addr;
use std::sync::Arc;

use dataplane::policy::{Conntrack, ConntrackConfig, OnPolicyChange, PolicySet, Timeouts};
use dataplane::snapshot::PolicyHook;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{compile_with, CompileOptions, Manifests};
use crate::cni::ipam::PodName;

/// A pod of this node, as the CNI server attached it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPod {
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its namespace and name, when the runtime passed them.
    pub name: Option<PodName>,
}

/// See the module docs.
#[derive(Debug)]
pub struct PolicyState {
    manifests: Manifests,
    generation: u64,
    conntrack: Arc<Conntrack>,
    on_change: OnPolicyChange,
    node_addrs: Vec<Ipv4Addr>,
    last: Arc<PolicySet>,
    /// New flows each rule admitted under the sets before `last`, by rule id: the rule
    /// counters stay monotonic across recompiles.
    folded: std::collections::BTreeMap<String, u64>,
    /// The local pods `last` was compiled for, `None` when the manifests changed since: a
    /// publish that changes neither (a peer came or went) reuses the set, so established
    /// flows are not re-checked for nothing.
    compiled_for: Option<Vec<LocalPod>>,
    /// The NetworkPolicies (`namespace/name`) `last` was compiled from.
    in_force: Vec<String>,
}

impl PolicyState {
    /// No manifests yet; flows tracked in a table of `conntrack_max` entries; the node's own
    /// addresses `node_addrs` always reach its pods (kubelet's probes).
    pub fn new(conntrack_max: usize, on_change: OnPolicyChange, node_addrs: Vec<Ipv4Addr>) -> Self {
        PolicyState {
            manifests: Manifests::default(),
            generation: 0,
            conntrack: Arc::new(Conntrack::new(ConntrackConfig {
                capacity: conntrack_max,
                timeouts: Timeouts::default(),
                seed: rand::random(),
            })),
            on_change,
            node_addrs,
            last: Arc::new(PolicySet::empty(0)),
            folded: std::collections::BTreeMap::new(),
            compiled_for: None,
            in_force: Vec::new(),
        }
    }

    /// Replaces the manifests (the next [`PolicyState::hook`] compiles them).
    pub fn set_manifests(&mut self, manifests: Manifests) {
        self.manifests = manifests;
        self.compiled_for = None;
    }

    /// The NetworkPolicies (`namespace/name`, sorted) of the set in force.
    pub fn in_force(&self) -> &[String] {
        &self.in_force
    }

    /// The flows tracked.
    pub fn conntrack(&self) -> &Arc<Conntrack> {
        &self.conntrack
    }

    /// New flows each rule admitted since the agent started, by rule id (`x/web ingress[0]`,
    /// `node`): what `/metrics` reports.
    pub fn rule_flows(&self) -> std::collections::BTreeMap<String, u64> {
        let mut all = self.folded.clone();
        for (rule, n) in self.last.hits() {
            *all.entry(rule.to_string()).or_default() += n;
        }
        all
    }

    /// Compiles the manifests for the node's pods `local` and returns the hook to publish; on a
    /// compile error, logs it and returns the last good set. With the manifests and `local` as
    /// at the last call, the last set is returned as it is.
    pub fn hook(&mut self, local: &[LocalPod]) -> PolicyHook {
        if self.compiled_for.as_deref() != Some(local) {
            self.compile(local);
            self.compiled_for = Some(local.to_vec());
        }
        PolicyHook {
            set: Arc::clone(&self.last),
            conntrack: Arc::clone(&self.conntrack),
            on_change: self.on_change,
        }
    }

    fn compile(&mut self, local: &[LocalPod]) {
        let pods = join(&self.manifests.pods, local);
        let ips: Vec<Ipv4Addr> = local.iter().map(|p| p.ip).collect();
        self.generation += 1;
        let options = CompileOptions {
            generation: self.generation,
            node_addrs: self.node_addrs.clone(),
        };
        match compile_with(
            &self.manifests.policies,
            &pods,
            &self.manifests.namespaces,
            &ips,
            &options,
        ) {
            Ok(set) => {
                // Flows a worker admits on the old set after this read are not counted.
                for (rule, n) in self.last.hits() {
                    *self.folded.entry(rule.to_string()).or_default() += n;
                }
                self.last = Arc::new(set);
                let mut names: Vec<String> = self
                    .manifests
                    .policies
                    .iter()
                    .map(|p| {
                        format!(
                            "{}/{}",
                            p.metadata.namespace.as_deref().unwrap_or("default"),
                            p.metadata.name.as_deref().unwrap_or_default()
                        )
                    })
                    .collect();
                names.sort();
                self.in_force = names;
            }
            Err(e) => tracing::error!("NetworkPolicy not applied, the previous set stays: {e}"),
        }
    }
}

/// The manifests' pods with this node's pods joined in (see the module docs).
pub fn join(manifest_pods: &[Pod], local: &[LocalPod]) -> Vec<Pod> {
    let mut pods: Vec<Pod> = manifest_pods.to_vec();
    for l in local {
        let Some(name) = &l.name else { continue };
        let ip = Some(l.ip.to_string());
        let named = |p: &Pod| {
            p.metadata.name.as_deref() == Some(name.name.as_str())
                && p.metadata.namespace.as_deref().unwrap_or("default") == name.namespace
        };
        match pods.iter_mut().find(|p| named(p)) {
            Some(p) => {
                let status = p.status.get_or_insert_with(PodStatus::default);
                status.pod_ip = ip;
                status.pod_ips = None;
            }
            None => pods.push(Pod {
                metadata: ObjectMeta {
                    name: Some(name.name.clone()),
                    namespace: Some(name.namespace.clone()),
                    ..ObjectMeta::default()
                },
                status: Some(PodStatus {
                    pod_ip: ip,
                    ..PodStatus::default()
                }),
                ..Pod::default()
            }),
        }
    }
    pods
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn named(ns: &str, name: &str) -> Option<PodName> {
        Some(PodName {
            namespace: ns.into(),
            name: name.into(),
        })
    }

    #[test]
    fn local_pods_take_labels_from_the_manifests_and_addresses_from_the_cni_server() {
        let manifest = Pod {
            metadata: ObjectMeta {
                namespace: Some("x".into()),
                name: Some("a".into()),
                labels: Some(BTreeMap::from([("pod".to_string(), "a".to_string())])),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                pod_ip: Some("10.9.9.9".into()),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        let local = [
            LocalPod {
                ip: Ipv4Addr::new(10, 244, 1, 2),
                name: named("x", "a"),
            },
            LocalPod {
                ip: Ipv4Addr::new(10, 244, 1, 3),
                name: named("x", "unlisted"),
            },
            LocalPod {
                ip: Ipv4Addr::new(10, 244, 1, 4),
                name: None,
            },
        ];
        let pods = join(&[manifest], &local);
        assert_eq!(pods.len(), 2, "the unnamed pod is in no namespace");
        let ip = |p: &Pod| p.status.as_ref().and_then(|s| s.pod_ip.clone());
        assert_eq!(
            ip(&pods[0]).as_deref(),
            Some("10.244.1.2"),
            "the CNI server's address wins"
        );
        assert_eq!(
            pods[0].metadata.labels.as_ref().map(|l| l["pod"].as_str()),
            Some("a")
        );
        assert_eq!(pods[1].metadata.name.as_deref(), Some("unlisted"));
        assert_eq!(pods[1].metadata.labels, None);
        assert_eq!(ip(&pods[1]).as_deref(), Some("10.244.1.3"));
    }

    #[test]
    fn rule_counters_survive_a_recompile() {
        let mut st = PolicyState::new(1024, OnPolicyChange::Recheck, vec![]);
        st.set_manifests(
            Manifests::from_str(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x, name: web}\nspec:\n  podSelector: {}\n  ingress: [{}]\n",
                std::path::Path::new("p.yaml"),
            )
            .expect("manifest"),
        );
        let local = [LocalPod {
            ip: Ipv4Addr::new(10, 244, 1, 2),
            name: named("x", "a"),
        }];
        let hook = st.hook(&local);
        let rule = match hook.set.decide(
            dataplane::policy::Direction::Ingress,
            local[0].ip,
            Ipv4Addr::new(10, 244, 2, 9),
            dataplane::policy::Protocol::TCP,
            80,
        ) {
            dataplane::policy::Decision::Allow { rule } => rule,
            d => panic!("allowed, got {d:?}"),
        };
        hook.set.count(rule);
        hook.set.count(rule);
        st.hook(&local).set.count(rule);
        assert_eq!(st.rule_flows().get("x/web ingress[0]"), Some(&3));
    }

    #[test]
    fn a_publish_that_changes_no_input_reuses_the_set() {
        let mut st = PolicyState::new(1024, OnPolicyChange::Recheck, vec![]);
        let local = [LocalPod {
            ip: Ipv4Addr::new(10, 244, 1, 2),
            name: named("x", "a"),
        }];
        let first = st.hook(&local);
        assert!(
            Arc::ptr_eq(&first.set, &st.hook(&local).set),
            "same inputs, same set"
        );
        let more = [
            local[0].clone(),
            LocalPod {
                ip: Ipv4Addr::new(10, 244, 1, 3),
                name: named("x", "b"),
            },
        ];
        let second = st.hook(&more);
        assert!(
            second.set.generation() > first.set.generation(),
            "a new pod recompiles"
        );
        st.set_manifests(Manifests::default());
        assert!(
            st.hook(&more).set.generation() > second.set.generation(),
            "new manifests too"
        );
    }

    #[test]
    fn a_set_that_does_not_compile_leaves_the_last_good_one() {
        let mut st = PolicyState::new(1024, OnPolicyChange::Recheck, vec![]);
        let good = Manifests::from_str(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x, name: deny}\nspec: {podSelector: {}}\n",
            std::path::Path::new("good.yaml"),
        )
        .expect("manifest");
        st.set_manifests(good);
        let local = [LocalPod {
            ip: Ipv4Addr::new(10, 244, 1, 2),
            name: named("x", "a"),
        }];
        let first = st.hook(&local);
        assert!(first.set.pod(local[0].ip).is_some(), "isolated");
        let bad = Manifests::from_str(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x, name: bad}\nspec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: not-a-cidr}}]}]\n",
            std::path::Path::new("bad.yaml"),
        )
        .expect("parses; the compile refuses it");
        st.set_manifests(bad);
        let second = st.hook(&local);
        assert!(
            Arc::ptr_eq(&first.set, &second.set),
            "the last good set stays"
        );
    }
}
