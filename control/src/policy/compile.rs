//! NetworkPolicies, Pods and Namespaces to one node's compiled [`PolicySet`].
//!
//! # What this module promises (REFERENCE.md "Kubernetes NetworkPolicy")
//!
//! - A local pod is isolated for a direction when a policy of its namespace selects it
//!   (`podSelector`, empty or absent = every pod) and lists the direction in `policyTypes`;
//!   absent or empty `policyTypes` defaults as the API server does: `Ingress`, plus `Egress` when
//!   the policy has at least one egress rule. A pod no policy isolates for a direction gets no
//!   table for it: [`Decision::NotIsolated`](dataplane::policy::Decision::NotIsolated).
//! - Its rules are those of every such policy, in (namespace, name) order then list order; the
//!   decision names the first rule that allows, and the union of all of them is what is allowed.
//! - A rule's peers are the union of its `from`/`to` entries, every address when there are
//!   none. `podSelector` alone selects pods of the policy's namespace; `namespaceSelector` alone
//!   every pod of the selected namespaces; both together the selected pods of the selected
//!   namespaces. Namespaces carry `kubernetes.io/metadata.name` whether or not the Namespace
//!   object says so (the API server sets it on every namespace, and a namespace Weft has no
//!   object for still has it).
//! - `ipBlock` (`cidr` minus `except`) applies to any address, pod addresses included. Kubernetes
//!   means ipBlocks for cluster-external addresses and leaves pod addresses to the plugin; Weft
//!   does what Calico does and what the upstream e2e suite expects ("should allow egress access to
//!   server in CIDR block" names a pod by its /32). IPv6 blocks cannot match IPv4 traffic and are
//!   skipped.
//! - Ports: `protocol` defaults to TCP; `port` absent is every port of the protocol; `endPort`
//!   makes a range. A named port resolves against container ports (name and protocol both) of
//!   the pod receiving the traffic: the local pod for ingress, for egress each destination pod,
//!   so an egress rule compiles to one rule per port number its destinations use. A name that
//!   resolves nowhere admits nothing. A rule with no `ports` admits every protocol, ICMP too.
//! - Pods with `hostNetwork` are neither targets nor peers (their address is the node's, which
//!   policy does not govern), nor are pods that have finished (`Succeeded`, `Failed`), whose
//!   address may already be someone else's, nor pods with no IPv4 address yet.
//! - Traffic between a pod and its own node is always allowed (Kubernetes): with
//!   [`CompileOptions::node_addrs`] set, every isolated table starts with a rule for them
//!   ([`RuleId::Node`]).
//! - What the API server would refuse is refused ([`CompileError`]), naming the object and the
//!   field: an unknown protocol, policy type or selector operator, a peer with both `ipBlock` and
//!   a selector or with neither, a port out of range, an `endPort` with a named port or below
//!   `port`, a malformed CIDR.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use dataplane::policy::{
    Direction, IpSet, PolicySet, PolicySetBuilder, PortRange, PortSet, Protocol, Rule, RuleId,
    RuleRef,
};
use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::selector::Selector;

/// The label every namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// What the API server would refuse, found while compiling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// A field of an object is invalid.
    #[error("{object}: {field}: {reason}")]
    Invalid {
        /// The object, as `NetworkPolicy x/allow-web`.
        object: String,
        /// The field, as `spec.ingress[0].from[1].ipBlock.cidr`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Knobs of [`compile_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompileOptions {
    /// The generation to stamp on the set (conntrack entries record it).
    pub generation: u64,
    /// The node's own addresses, always allowed to and from its pods.
    pub node_addrs: Vec<Ipv4Addr>,
}

/// [`compile_with`] with generation 0 and no node addresses.
pub fn compile(
    policies: &[NetworkPolicy],
    pods: &[Pod],
    namespaces: &[Namespace],
    local_pods: &[Ipv4Addr],
) -> Result<PolicySet, CompileError> {
    compile_with(
        policies,
        pods,
        namespaces,
        local_pods,
        &CompileOptions::default(),
    )
}

/// Compiles the policy of the node whose pods have the addresses `local_pods` (see the module
/// docs for the semantics).
pub fn compile_with(
    policies: &[NetworkPolicy],
    pods: &[Pod],
    namespaces: &[Namespace],
    local_pods: &[Ipv4Addr],
    options: &CompileOptions,
) -> Result<PolicySet, CompileError> {
    let ns_labels = namespace_labels(namespaces);
    let cluster = Cluster::new(pods, &ns_labels)?;
    let mut b = PolicySetBuilder::new(options.generation);
    let mut sorted: Vec<&NetworkPolicy> = policies.iter().collect();
    sorted.sort_by_key(|p| (namespace_of(p), p.metadata.name.clone().unwrap_or_default()));
    let compiled: Vec<CompiledPolicy> = sorted
        .into_iter()
        .map(|p| CompiledPolicy::new(p, &cluster, &mut b))
        .collect::<Result<_, _>>()?;
    let node_rule = (!options.node_addrs.is_empty()).then(|| Rule {
        rule: b.rule_ref(RuleId::Node),
        peers: IpSet::from_addrs(options.node_addrs.iter().copied()),
        ports: PortSet::Any,
    });

    for &ip in local_pods {
        let Some(pod) = cluster.by_ip.get(&ip).map(|&i| &cluster.pods[i]) else {
            continue;
        };
        for direction in [Direction::Ingress, Direction::Egress] {
            let mut isolated = false;
            let mut rules: Vec<Rule> = node_rule.iter().cloned().collect();
            for p in &compiled {
                if p.namespace != pod.namespace || !p.selects.matches(pod.labels) {
                    continue;
                }
                let Some(list) = p.rules(direction) else {
                    continue;
                };
                isolated = true;
                for r in list {
                    r.emit(direction, pod, &cluster, &mut rules);
                }
            }
            if isolated {
                b.isolate(ip, direction, rules);
            }
        }
    }
    Ok(b.build())
}

fn namespace_of(p: &NetworkPolicy) -> String {
    p.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string())
}

fn namespace_labels(namespaces: &[Namespace]) -> HashMap<String, BTreeMap<String, String>> {
    namespaces
        .iter()
        .filter_map(|ns| {
            let name = ns.metadata.name.clone()?;
            let mut labels = ns.metadata.labels.clone().unwrap_or_default();
            labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
            Some((name, labels))
        })
        .collect()
}

/// A pod as policy sees it.
#[derive(Debug)]
struct PodView<'a> {
    namespace: &'a str,
    labels: &'a BTreeMap<String, String>,
    ns_labels: BTreeMap<String, String>,
    ip: Ipv4Addr,
    /// Named container ports: (name, protocol) → number.
    ports: HashMap<(&'a str, Protocol), u16>,
}

/// Every pod that policy applies to, with lookups compile needs.
#[derive(Debug)]
struct Cluster<'a> {
    pods: Vec<PodView<'a>>,
    by_ip: HashMap<Ipv4Addr, usize>,
    /// Named container ports across the cluster: (name, protocol) → number → pod addresses.
    named: HashMap<(String, Protocol), BTreeMap<u16, Vec<Ipv4Addr>>>,
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl<'a> Cluster<'a> {
    fn new(
        pods: &'a [Pod],
        ns_labels: &HashMap<String, BTreeMap<String, String>>,
    ) -> Result<Cluster<'a>, CompileError> {
        let mut views = Vec::new();
        for pod in pods {
            let Some(view) = pod_view(pod, ns_labels)? else {
                continue;
            };
            views.push(view);
        }
        let by_ip = views.iter().enumerate().map(|(i, p)| (p.ip, i)).collect();
        let mut named: HashMap<(String, Protocol), BTreeMap<u16, Vec<Ipv4Addr>>> = HashMap::new();
        for p in &views {
            for (&(name, protocol), &number) in &p.ports {
                named
                    .entry((name.to_string(), protocol))
                    .or_default()
                    .entry(number)
                    .or_default()
                    .push(p.ip);
            }
        }
        Ok(Cluster {
            pods: views,
            by_ip,
            named,
        })
    }

    /// The addresses of the pods `pod_selector` selects in the namespaces `ns_selector`
    /// selects; `None` for either means "the policy's namespace" and "every pod".
    fn select(
        &self,
        policy_ns: &str,
        pod_selector: Option<&Selector>,
        ns_selector: Option<&Selector>,
    ) -> IpSet {
        IpSet::from_addrs(
            self.pods
                .iter()
                .filter(|p| match ns_selector {
                    None => p.namespace == policy_ns,
                    Some(s) => s.matches(&p.ns_labels),
                })
                .filter(|p| pod_selector.is_none_or(|s| s.matches(p.labels)))
                .map(|p| p.ip),
        )
    }
}

fn pod_view<'a>(
    pod: &'a Pod,
    ns_labels: &HashMap<String, BTreeMap<String, String>>,
) -> Result<Option<PodView<'a>>, CompileError> {
    let meta = &pod.metadata;
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    let object = || format!("Pod {namespace}/{}", meta.name.as_deref().unwrap_or(""));
    let spec = pod.spec.as_ref();
    if spec.is_some_and(|s| s.host_network == Some(true)) {
        return Ok(None);
    }
    let status = pod.status.as_ref();
    if status.is_some_and(|s| matches!(s.phase.as_deref(), Some("Succeeded" | "Failed"))) {
        return Ok(None);
    }
    let ips = status
        .into_iter()
        .flat_map(|s| {
            s.pod_ips
                .iter()
                .flatten()
                .map(|p| p.ip.as_str())
                .chain(s.pod_ip.as_deref())
        })
        .map(|s| {
            s.parse::<std::net::IpAddr>()
                .map_err(|e| CompileError::Invalid {
                    object: object(),
                    field: "status.podIPs".into(),
                    reason: format!("{s:?}: {e}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some(ip) = ips.into_iter().find_map(|a| match a {
        std::net::IpAddr::V4(v4) => Some(v4),
        std::net::IpAddr::V6(_) => None,
    }) else {
        return Ok(None);
    };
    let mut ports = HashMap::new();
    for c in spec.into_iter().flat_map(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
    }) {
        for p in c.ports.iter().flatten() {
            let Some(name) = p.name.as_deref() else {
                continue;
            };
            let field = || format!("spec.containers[{}].ports[{name}]", c.name);
            let protocol =
                protocol(p.protocol.as_deref()).map_err(|reason| CompileError::Invalid {
                    object: object(),
                    field: field(),
                    reason,
                })?;
            let number = u16::try_from(p.container_port)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| CompileError::Invalid {
                    object: object(),
                    field: field(),
                    reason: format!("containerPort {} is not in 1-65535", p.container_port),
                })?;
            ports.insert((name, protocol), number);
        }
    }
    let ns_labels = ns_labels.get(namespace).cloned().unwrap_or_else(|| {
        BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string())])
    });
    Ok(Some(PodView {
        namespace,
        labels: meta.labels.as_ref().unwrap_or(&NO_LABELS),
        ns_labels,
        ip,
        ports,
    }))
}

fn protocol(p: Option<&str>) -> Result<Protocol, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::TCP),
        "UDP" => Ok(Protocol::UDP),
        "SCTP" => Ok(Protocol::SCTP),
        other => Err(format!("unknown protocol {other:?} (TCP, UDP or SCTP)")),
    }
}

/// One policy, checked, with its peers resolved.
#[derive(Debug)]
struct CompiledPolicy {
    namespace: String,
    selects: Selector,
    /// `None` when the policy does not affect ingress.
    ingress: Option<Vec<CompiledRule>>,
    egress: Option<Vec<CompiledRule>>,
}

/// One rule of a policy: its id, its peers and its ports before named ports are resolved.
#[derive(Debug)]
struct CompiledRule {
    rule: RuleRef,
    peers: IpSet,
    /// `None`: the rule has no `ports` (everything).
    ports: Option<Vec<PortRange>>,
    /// Named ports, resolved per receiving pod.
    named: Vec<(String, Protocol)>,
}

impl CompiledPolicy {
    fn new(
        p: &NetworkPolicy,
        cluster: &Cluster<'_>,
        b: &mut PolicySetBuilder,
    ) -> Result<CompiledPolicy, CompileError> {
        let namespace = namespace_of(p);
        let name = p.metadata.name.clone().unwrap_or_default();
        let object = format!("NetworkPolicy {namespace}/{name}");
        let invalid = |field: String, reason: String| CompileError::Invalid {
            object: object.clone(),
            field,
            reason,
        };
        let spec = p.spec.clone().unwrap_or_default();
        let selects = selector(spec.pod_selector.as_ref(), "spec.podSelector", &invalid)?
            .unwrap_or_else(Selector::everything);

        let ingress_rules = spec.ingress.unwrap_or_default();
        let egress_rules = spec.egress.unwrap_or_default();
        let (mut affects_ingress, mut affects_egress) = (false, false);
        match spec.policy_types.as_deref() {
            None | Some([]) => {
                affects_ingress = true;
                affects_egress = !egress_rules.is_empty();
            }
            Some(types) => {
                for (i, t) in types.iter().enumerate() {
                    match t.as_str() {
                        "Ingress" => affects_ingress = true,
                        "Egress" => affects_egress = true,
                        other => {
                            return Err(invalid(
                                format!("spec.policyTypes[{i}]"),
                                format!("unknown policy type {other:?} (Ingress or Egress)"),
                            ))
                        }
                    }
                }
            }
        }

        let mut rule = |direction: Direction,
                        index: usize,
                        peers: Option<&[NetworkPolicyPeer]>,
                        ports: Option<&[NetworkPolicyPort]>|
         -> Result<CompiledRule, CompileError> {
            let (list, peer_list) = match direction {
                Direction::Ingress => ("ingress", "from"),
                Direction::Egress => ("egress", "to"),
            };
            let at = format!("spec.{list}[{index}]");
            let peers = match peers {
                None | Some([]) => IpSet::all(),
                Some(peers) => {
                    let mut set = IpSet::empty();
                    for (j, peer) in peers.iter().enumerate() {
                        let field = format!("{at}.{peer_list}[{j}]");
                        set = set.union(&peer_set(peer, &namespace, cluster, &field, &invalid)?);
                    }
                    set
                }
            };
            let (ports, named) = match ports {
                None | Some([]) => (None, Vec::new()),
                Some(ports) => {
                    let mut ranges = Vec::new();
                    let mut named = Vec::new();
                    for (j, port) in ports.iter().enumerate() {
                        let field = format!("{at}.ports[{j}]");
                        match policy_port(port, &field, &invalid)? {
                            PolicyPort::Range(r) => ranges.push(r),
                            PolicyPort::Named(n, proto) => named.push((n, proto)),
                        }
                    }
                    (Some(ranges), named)
                }
            };
            Ok(CompiledRule {
                rule: b.rule_ref(RuleId::Policy {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    direction,
                    index: index as u32,
                }),
                peers,
                ports,
                named,
            })
        };

        let ingress = if affects_ingress {
            let rules = ingress_rules
                .iter()
                .enumerate()
                .map(|(i, r)| rule(Direction::Ingress, i, r.from.as_deref(), r.ports.as_deref()))
                .collect::<Result<Vec<_>, _>>()?;
            Some(rules)
        } else {
            None
        };
        let egress = if affects_egress {
            let rules = egress_rules
                .iter()
                .enumerate()
                .map(|(i, r)| rule(Direction::Egress, i, r.to.as_deref(), r.ports.as_deref()))
                .collect::<Result<Vec<_>, _>>()?;
            Some(rules)
        } else {
            None
        };
        Ok(CompiledPolicy {
            namespace,
            selects,
            ingress,
            egress,
        })
    }

    fn rules(&self, direction: Direction) -> Option<&[CompiledRule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

impl CompiledRule {
    /// Appends the dataplane rules of this rule at local pod `pod` in `direction`.
    fn emit(
        &self,
        direction: Direction,
        pod: &PodView<'_>,
        cluster: &Cluster<'_>,
        out: &mut Vec<Rule>,
    ) {
        let Some(numeric) = &self.ports else {
            out.push(Rule {
                rule: self.rule,
                peers: self.peers.clone(),
                ports: PortSet::Any,
            });
            return;
        };
        match direction {
            Direction::Ingress => {
                // The receiving pod is the local one: resolve its names.
                let resolved = self.named.iter().filter_map(|(name, proto)| {
                    pod.ports
                        .get(&(name.as_str(), *proto))
                        .map(|&n| PortRange::single(*proto, n))
                });
                let ranges: Vec<PortRange> = numeric.iter().copied().chain(resolved).collect();
                if !ranges.is_empty() {
                    out.push(Rule {
                        rule: self.rule,
                        peers: self.peers.clone(),
                        ports: PortSet::ranges(ranges),
                    });
                }
            }
            Direction::Egress => {
                if !numeric.is_empty() {
                    out.push(Rule {
                        rule: self.rule,
                        peers: self.peers.clone(),
                        ports: PortSet::ranges(numeric.iter().copied()),
                    });
                }
                // The receiving pods are the destinations: one rule per number the name has.
                for (name, proto) in &self.named {
                    let Some(numbers) = cluster.named.get(&(name.clone(), *proto)) else {
                        continue;
                    };
                    for (&number, addrs) in numbers {
                        let peers = self
                            .peers
                            .intersection(&IpSet::from_addrs(addrs.iter().copied()));
                        if !peers.is_empty() {
                            out.push(Rule {
                                rule: self.rule,
                                peers,
                                ports: PortSet::ranges([PortRange::single(*proto, number)]),
                            });
                        }
                    }
                }
            }
        }
    }
}

fn selector(
    s: Option<&LabelSelector>,
    field: &str,
    invalid: &impl Fn(String, String) -> CompileError,
) -> Result<Option<Selector>, CompileError> {
    s.map(|s| Selector::new(s).map_err(|(f, reason)| invalid(format!("{field}.{f}"), reason)))
        .transpose()
}

fn peer_set(
    peer: &NetworkPolicyPeer,
    policy_ns: &str,
    cluster: &Cluster<'_>,
    field: &str,
    invalid: &impl Fn(String, String) -> CompileError,
) -> Result<IpSet, CompileError> {
    let pods = selector(
        peer.pod_selector.as_ref(),
        &format!("{field}.podSelector"),
        invalid,
    )?;
    let nss = selector(
        peer.namespace_selector.as_ref(),
        &format!("{field}.namespaceSelector"),
        invalid,
    )?;
    match (&peer.ip_block, pods.is_some() || nss.is_some()) {
        (Some(_), true) => Err(invalid(
            field.to_string(),
            "ipBlock cannot be combined with podSelector or namespaceSelector".into(),
        )),
        (None, false) => Err(invalid(
            field.to_string(),
            "a peer needs an ipBlock, a podSelector or a namespaceSelector".into(),
        )),
        (None, true) => Ok(cluster.select(policy_ns, pods.as_ref(), nss.as_ref())),
        (Some(block), false) => {
            let cidr_field = format!("{field}.ipBlock.cidr");
            let cidr = match parse_net(&block.cidr, &cidr_field, invalid)? {
                IpNet::V4(v4) => v4,
                // An IPv6 block cannot match IPv4 traffic.
                IpNet::V6(_) => return Ok(IpSet::empty()),
            };
            let mut except: Vec<Ipv4Net> = Vec::new();
            for (i, e) in block.except.iter().flatten().enumerate() {
                let f = format!("{field}.ipBlock.except[{i}]");
                match parse_net(e, &f, invalid)? {
                    IpNet::V4(v4) => except.push(v4),
                    IpNet::V6(_) => {
                        return Err(invalid(
                            f,
                            format!("{e:?} is not an IPv4 prefix, as cidr is"),
                        ))
                    }
                }
            }
            Ok(IpSet::from_block(cidr, &except))
        }
    }
}

fn parse_net(
    s: &str,
    field: &str,
    invalid: &impl Fn(String, String) -> CompileError,
) -> Result<IpNet, CompileError> {
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|e| invalid(field.to_string(), format!("{s:?}: {e}")))
}

enum PolicyPort {
    Range(PortRange),
    Named(String, Protocol),
}

fn policy_port(
    p: &NetworkPolicyPort,
    field: &str,
    invalid: &impl Fn(String, String) -> CompileError,
) -> Result<PolicyPort, CompileError> {
    let proto = protocol(p.protocol.as_deref())
        .map_err(|reason| invalid(format!("{field}.protocol"), reason))?;
    let number = |n: i32, f: &str| {
        u16::try_from(n)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| invalid(format!("{field}.{f}"), format!("{n} is not in 1-65535")))
    };
    match (&p.port, p.end_port) {
        (None, None) => Ok(PolicyPort::Range(PortRange::all(proto))),
        (None, Some(_)) => Err(invalid(
            format!("{field}.endPort"),
            "endPort needs a numeric port".into(),
        )),
        (Some(IntOrString::Int(n)), end) => {
            let first = number(*n, "port")?;
            let last = match end {
                None => first,
                Some(e) => {
                    let last = number(e, "endPort")?;
                    if last < first {
                        return Err(invalid(
                            format!("{field}.endPort"),
                            format!("endPort {last} is below port {first}"),
                        ));
                    }
                    last
                }
            };
            Ok(PolicyPort::Range(PortRange {
                protocol: proto,
                first,
                last,
            }))
        }
        (Some(IntOrString::String(_)), Some(_)) => Err(invalid(
            format!("{field}.endPort"),
            "endPort cannot go with a named port".into(),
        )),
        (Some(IntOrString::String(name)), None) => {
            // IANA_SVC_NAME: at most 15 characters, lowercase letters, digits and '-', with at
            // least one letter (so "80" is not a name).
            let ok = !name.is_empty()
                && name.len() <= 15
                && name
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && name.bytes().any(|c| c.is_ascii_lowercase());
            if !ok {
                return Err(invalid(
                    format!("{field}.port"),
                    format!("{name:?} is neither a port number nor a port name"),
                ));
            }
            Ok(PolicyPort::Named(name.clone(), proto))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::manifests::Manifests;
    use dataplane::policy::Decision;
    use std::path::Path;

    fn load(yaml: &str) -> Manifests {
        Manifests::from_str(yaml, Path::new("test.yaml")).expect("test manifests")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    /// Pods `web` (10.0.0.1, `http` = TCP 8080) and `alt` (10.0.0.2, `http` = TCP 9090) in
    /// namespace `app`, `host` (hostNetwork, 10.0.0.3) and `done` (Succeeded, 10.0.0.4).
    const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: app, labels: {role: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: alt, namespace: app, labels: {role: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: app, labels: {role: web}}
spec: {hostNetwork: true, containers: [{name: c}]}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: app, labels: {role: web}}
spec: {containers: [{name: c}]}
status: {phase: Succeeded, podIP: 10.0.0.4}
";

    fn compile_yaml(policy: &str, local: &[&str]) -> Result<PolicySet, CompileError> {
        let m = load(&format!("{PODS}---\n{policy}"));
        let local: Vec<Ipv4Addr> = local.iter().map(|s| ip(s)).collect();
        compile(&m.policies, &m.pods, &m.namespaces, &local)
    }

    fn error(policy: &str) -> String {
        compile_yaml(policy, &["10.0.0.1"])
            .expect_err("refused")
            .to_string()
    }

    const HEADER: &str =
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: app}\n";

    #[test]
    fn egress_named_port_resolves_per_destination() {
        let set = compile_yaml(
            &format!("{HEADER}spec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress: [{{ports: [{{port: http}}]}}]\n"),
            &["10.0.0.1"],
        )
        .expect("compiles");
        let web = ip("10.0.0.1");
        let d = |dst: &str, port| set.decide(Direction::Egress, web, ip(dst), Protocol::TCP, port);
        assert!(matches!(d("10.0.0.2", 9090), Decision::Allow { .. }));
        assert_eq!(d("10.0.0.2", 8080), Decision::Deny, "alt's http is 9090");
        assert!(matches!(d("10.0.0.1", 8080), Decision::Allow { .. }));
        assert_eq!(
            d("192.0.2.1", 8080),
            Decision::Deny,
            "not a pod: the name means nothing"
        );
        let table = set
            .pod(web)
            .and_then(|p| p.egress.clone())
            .expect("isolated");
        assert_eq!(table.rules().len(), 2, "one rule per port number");
        assert_eq!(table.rules()[0].rule, table.rules()[1].rule, "one id");
    }

    #[test]
    fn host_network_and_finished_pods_are_neither_targets_nor_peers() {
        let set = compile_yaml(
            &format!("{HEADER}spec:\n  podSelector: {{}}\n  ingress: [{{from: [{{podSelector: {{}}}}]}}]\n"),
            &["10.0.0.1", "10.0.0.3", "10.0.0.4"],
        )
        .expect("compiles");
        assert!(set.pod(ip("10.0.0.3")).is_none());
        assert!(set.pod(ip("10.0.0.4")).is_none());
        let d = |src: &str| {
            set.decide(
                Direction::Ingress,
                ip("10.0.0.1"),
                ip(src),
                Protocol::TCP,
                80,
            )
        };
        assert!(d("10.0.0.2").allows());
        assert_eq!(d("10.0.0.3"), Decision::Deny);
        assert_eq!(d("10.0.0.4"), Decision::Deny);
    }

    #[test]
    fn ipv6_blocks_are_skipped_and_host_bits_ignored() {
        let set = compile_yaml(
            &format!("{HEADER}spec:\n  podSelector: {{}}\n  ingress: [{{from: [{{ipBlock: {{cidr: 'fd00::/8'}}}}, {{ipBlock: {{cidr: 192.0.2.77/24, except: [192.0.2.128/25]}}}}]}}]\n"),
            &["10.0.0.1"],
        )
        .expect("compiles");
        let d = |src: &str| {
            set.decide(
                Direction::Ingress,
                ip("10.0.0.1"),
                ip(src),
                Protocol::UDP,
                53,
            )
        };
        assert!(d("192.0.2.1").allows());
        assert!(!d("192.0.2.200").allows());
        assert!(!d("10.0.0.2").allows());
    }

    #[test]
    fn what_the_api_server_refuses_is_refused_with_its_field() {
        let spec = |s: &str| format!("{HEADER}spec:\n{s}");
        assert_eq!(
            error(&spec("  ingress: [{ports: [{protocol: ICMP}]}]\n")),
            "NetworkPolicy app/p: spec.ingress[0].ports[0].protocol: unknown protocol \"ICMP\" (TCP, UDP or SCTP)"
        );
        assert!(error(&spec("  policyTypes: [Both]\n"))
            .contains("spec.policyTypes[0]: unknown policy type"));
        assert!(
            error(&spec("  egress: [{to: [{}]}]\n  policyTypes: [Egress]\n"))
                .contains("spec.egress[0].to[0]: a peer needs")
        );
        assert!(error(&spec(
            "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]\n"
        ))
        .contains("spec.ingress[0].from[0]: ipBlock cannot be combined"));
        assert!(error(&spec(
            "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n"
        ))
        .contains("spec.ingress[0].from[0].ipBlock.cidr"));
        assert!(
            error(&spec("  ingress: [{ports: [{port: 81, endPort: 80}]}]\n"))
                .contains("endPort 80 is below port 81")
        );
        assert!(
            error(&spec("  ingress: [{ports: [{port: http, endPort: 90}]}]\n"))
                .contains("endPort cannot go with a named port")
        );
        assert!(error(&spec("  ingress: [{ports: [{endPort: 90}]}]\n"))
            .contains("endPort needs a numeric port"));
        assert!(error(&spec("  ingress: [{ports: [{port: 0}]}]\n")).contains("0 is not in 1-65535"));
        assert!(error(&spec("  ingress: [{ports: [{port: '80'}]}]\n"))
            .contains("neither a port number nor a port name"));
        assert!(error(&spec(
            "  podSelector: {matchExpressions: [{key: a, operator: Is}]}\n"
        ))
        .contains("spec.podSelector.matchExpressions[0].operator"));
    }

    #[test]
    fn node_rule_comes_first_and_rule_order_is_by_policy_name() {
        let m = load(&format!(
            "{PODS}---\n{}---\n{}",
            HEADER.replace("name: p", "name: b-second")
                + "spec: {podSelector: {}, ingress: [{}]}\n",
            HEADER.replace("name: p", "name: a-first") + "spec: {podSelector: {}, ingress: [{}]}\n",
        ));
        let options = CompileOptions {
            generation: 42,
            node_addrs: vec![ip("10.0.0.254")],
        };
        let set = compile_with(
            &m.policies,
            &m.pods,
            &m.namespaces,
            &[ip("10.0.0.1")],
            &options,
        )
        .expect("compiles");
        assert_eq!(set.generation(), 42);
        let table = set
            .pod(ip("10.0.0.1"))
            .and_then(|p| p.ingress.clone())
            .expect("isolated");
        let ids: Vec<String> = table
            .rules()
            .iter()
            .filter_map(|r| set.rule(r.rule).map(ToString::to_string))
            .collect();
        assert_eq!(
            ids,
            ["node", "app/a-first ingress[0]", "app/b-second ingress[0]"]
        );
    }
}
