//! The upstream NetworkPolicy e2e suite's model (kubernetes `test/e2e/network/netpol`), run
//! as data: the namespaces, pods and cases, with each case's truth table. `control::policy`'s
//! model test runs them through the compiler and the dataplane's decision; `netns-tests` runs
//! them through real namespaces and the switch.
//!
//! Namespaces x, y and z (labels `ns: <name>` and `kubernetes.io/metadata.name: <name>`) hold
//! pods a, b and c (label `pod: <name>`), each serving ports 80 and 81 on TCP, UDP and SCTP with
//! container ports named `serve-<port>-<protocol>`, as the upstream model's pods do. Pods a, b
//! and c of every namespace run on nodes 1, 2 and 3 (addresses `10.244.<node>.<namespace>`), so
//! each probe is decided as the cluster would: egress on the source's node, ingress on the
//! destination's, each compiled for its own local pods. A probe from one pod to another is
//! allowed when both allow.
//!
//! Each case is one of the upstream suite's (named as its `It(...)`), its policies written as
//! the manifests the upstream Go code builds, and its expectation written the way upstream
//! writes it (`ExpectPeer`, `ExpectAllIngress`, ...), extended from the one probe upstream makes
//! to all six (TCP, UDP, SCTP × 80, 81). Cases marked "(Weft)" are not upstream's: `endPort`, a
//! DNS-like egress rule, policy-type defaulting and unions the brief asks for. As upstream
//! (`ignoreLoopback`), a pod's traffic to itself is not compared: it never leaves the pod's
//! network namespace, so the switch never sees it.

use std::net::Ipv4Addr;

use dataplane::policy::Protocol;

/// The namespaces.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The pods of each namespace.
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// The number of pods.
pub const N: usize = 9;

/// Pod `i` of the 9: namespace `i / 3`, pod `i % 3`.
pub fn pod_name(i: usize) -> String {
    format!("{}/{}", NAMESPACES[i / 3], PODS[i % 3])
}

/// The model's address of pod `i` (on node `i % 3`).
pub fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, (i % 3) as u8 + 1, (i / 3) as u8 + 1)
}

/// The node (0, 1, 2) pod `i` runs on.
pub fn node_of(i: usize) -> usize {
    i % 3
}

/// The Namespaces and Pods, pods at the model's addresses.
pub fn cluster_yaml() -> String {
    cluster_yaml_at(pod_ip)
}

/// The Namespaces and Pods (labels, named container ports, `status.podIP` from `ip_of`).
pub fn cluster_yaml_at(ip_of: impl Fn(usize) -> Ipv4Addr) -> String {
    let mut y = String::new();
    for ns in NAMESPACES {
        y += &format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {{ns: {ns}, kubernetes.io/metadata.name: {ns}}}\n"
        );
    }
    for i in 0..N {
        let (ns, pod) = (NAMESPACES[i / 3], PODS[i % 3]);
        y += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}\nspec:\n  containers:\n"
        );
        for port in [80, 81] {
            for proto in ["TCP", "UDP", "SCTP"] {
                let lower = proto.to_lowercase();
                y += &format!(
                    "  - name: cont-{port}-{lower}\n    ports: [{{name: serve-{port}-{lower}, containerPort: {port}, protocol: {proto}}}]\n"
                );
            }
        }
        let ip = ip_of(i);
        y += &format!("status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n");
    }
    y
}

/// One kind of probe: a protocol and a destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// 80 or 81.
    pub port: u16,
}

impl Probe {
    /// True for `protocol` on `port`.
    pub fn is(self, protocol: Protocol, port: u16) -> bool {
        self.protocol == protocol && self.port == port
    }
}

/// Every probe of a case.
pub const PROBES: [Probe; 6] = [
    Probe {
        protocol: Protocol::TCP,
        port: 80,
    },
    Probe {
        protocol: Protocol::TCP,
        port: 81,
    },
    Probe {
        protocol: Protocol::UDP,
        port: 80,
    },
    Probe {
        protocol: Protocol::UDP,
        port: 81,
    },
    Probe {
        protocol: Protocol::SCTP,
        port: 80,
    },
    Probe {
        protocol: Protocol::SCTP,
        port: 81,
    },
];

const TCP: Protocol = Protocol::TCP;
const UDP: Protocol = Protocol::UDP;
const SCTP: Protocol = Protocol::SCTP;

/// The upstream `Reachability` truth table: `m[from][to]`, built with the same verbs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachability {
    /// `m[from][to]`: the probe connects.
    pub m: [[bool; N]; N],
}

/// `"x/a"`, `"x/*"`, `"*/a"` or `"*/*"` (upstream's `Peer{Namespace, Pod}`).
fn matches(pattern: &str, i: usize) -> bool {
    let (ns, pod) = pattern.split_once('/').expect("ns/pod pattern");
    (ns == "*" || ns == NAMESPACES[i / 3]) && (pod == "*" || pod == PODS[i % 3])
}

impl Reachability {
    /// Every pair `allowed`.
    pub fn new(allowed: bool) -> Reachability {
        Reachability {
            m: [[allowed; N]; N],
        }
    }

    /// Upstream's `expect_peer`.
    pub fn expect_peer(&mut self, from: &str, to: &str, allowed: bool) {
        for f in 0..N {
            for t in 0..N {
                if matches(from, f) && matches(to, t) {
                    self.m[f][t] = allowed;
                }
            }
        }
    }

    /// Upstream's `expect`.
    pub fn expect(&mut self, from: &str, to: &str, allowed: bool) {
        self.expect_peer(from, to, allowed);
    }

    /// Upstream's `expect_all_ingress`.
    pub fn expect_all_ingress(&mut self, to: &str, allowed: bool) {
        self.expect_peer("*/*", to, allowed);
    }

    /// Upstream's `expect_all_egress`.
    pub fn expect_all_egress(&mut self, from: &str, allowed: bool) {
        self.expect_peer(from, "*/*", allowed);
    }

    /// The table as upstream prints it (`.` connects, `X` does not, `-` self).
    pub fn render(&self) -> String {
        let mut s = String::from("-");
        for t in 0..N {
            s += &format!("\t{}", pod_name(t));
        }
        for f in 0..N {
            s += &format!("\n{}", pod_name(f));
            for t in 0..N {
                let c = if f == t {
                    "-"
                } else if self.m[f][t] {
                    "."
                } else {
                    "X"
                };
                s += &format!("\t{c}");
            }
        }
        s
    }
}

/// One case: its policies, and how its truth table differs from everything-connects.
#[derive(Debug)]
pub struct Case {
    /// Upstream's `It(...)`, or a Weft case marked so.
    pub name: &'static str,
    /// The NetworkPolicy manifests.
    pub policies: &'static str,
    /// Edits an all-true table into the case's truth table for a probe.
    pub expect: fn(Probe, &mut Reachability),
}

impl Case {
    /// The policies with each `{ns/pod}` replaced by that pod's address from `ip_of` (the cases'
    /// `ipBlock`s name pods, whose addresses differ between the model and a real cluster).
    pub fn policies_at(&self, ip_of: impl Fn(usize) -> Ipv4Addr) -> String {
        let mut s = self.policies.to_string();
        for i in 0..N {
            s = s.replace(&format!("{{{}}}", pod_name(i)), &ip_of(i).to_string());
        }
        s
    }

    /// The truth table of `probe`.
    pub fn expected(&self, probe: Probe) -> Reachability {
        let mut r = Reachability::new(true);
        (self.expect)(probe, &mut r);
        r
    }
}

/// The cases.
pub const CASES: &[Case] = &[
    Case {
        name: "no policy: everything reaches everything",
        policies: "",
        expect: |_, _| {},
    },
    Case {
        name: "should support a 'default-deny-ingress' policy",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec: {podSelector: {}}
",
        expect: |_, r| r.expect_peer("*/*", "x/*", false),
    },
    Case {
        name: "should support a 'default-deny-all' policy",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
",
        expect: |_, r| {
            r.expect_peer("*/*", "x/*", false);
            r.expect_peer("x/*", "*/*", false);
        },
    },
    Case {
        name: "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-a-allows-x-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
",
        expect: |_, r| {
            r.expect_all_ingress("x/a", false);
            r.expect("x/b", "x/a", true);
        },
    },
    Case {
        name: "should enforce policy to allow ingress traffic for a target",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-to-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {}, namespaceSelector: {}}]}]
",
        expect: |_, r| {
            r.expect_all_ingress("x/b", false);
            r.expect_all_ingress("x/c", false);
        },
    },
    Case {
        name: "should enforce policy to allow ingress traffic from pods in all namespaces",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-another-ns, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {}}}]}]
",
        expect: |_, _| {},
    },
    Case {
        name: "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
",
        expect: |_, r| {
            r.expect_peer("x/*", "x/a", false);
            r.expect_peer("z/*", "x/a", false);
        },
    },
    Case {
        name: "should enforce policy based on PodSelector with MatchExpressions",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-a-allows-x-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]
",
        expect: |_, r| {
            r.expect_all_ingress("x/a", false);
            r.expect("x/b", "x/a", true);
        },
    },
    Case {
        name: "should enforce policy based on NamespaceSelector with MatchExpressions",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-match-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [y]}]
",
        expect: |_, r| {
            r.expect_peer("x/*", "x/a", false);
            r.expect_peer("z/*", "x/a", false);
        },
    },
    Case {
        name: "should enforce policy based on PodSelector or NamespaceSelector",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-match-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
    - podSelector: {matchLabels: {pod: b}}
",
        expect: |_, r| {
            r.expect("x/a", "x/a", false);
            r.expect("x/c", "x/a", false);
        },
    },
    Case {
        name: "should enforce policy based on PodSelector and NamespaceSelector",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-podselector-and-nsselector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
      podSelector: {matchLabels: {pod: b}}
",
        expect: |_, r| {
            r.expect_all_ingress("x/a", false);
            r.expect("y/b", "x/a", true);
            r.expect("z/b", "x/a", true);
        },
    },
    Case {
        name: "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-z-pod-b-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
      podSelector:
        matchExpressions: [{key: pod, operator: In, values: [b, c]}]
",
        expect: |_, r| {
            r.expect_peer("x/*", "x/a", false);
            r.expect("y/a", "x/a", false);
            r.expect("z/a", "x/a", false);
        },
    },
    Case {
        name: "should enforce policy based on any PodSelectors",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-x-pod-b-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}, {podSelector: {matchLabels: {pod: c}}}]
",
        expect: |_, r| {
            r.expect_all_ingress("x/a", false);
            r.expect("x/b", "x/a", true);
            r.expect("x/c", "x/a", true);
        },
    },
    Case {
        name: "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-pod-a-via-namespace-pod-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
      podSelector: {matchLabels: {pod: a}}
",
        expect: |_, r| {
            r.expect_all_ingress("x/a", false);
            r.expect("y/a", "x/a", true);
        },
    },
    Case {
        name: "should enforce policy based on Ports",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
    ports: [{port: 81, protocol: TCP}]
",
        expect: |p, r| {
            r.expect_all_ingress("x/a", false);
            if p.is(TCP, 81) {
                r.expect_peer("y/*", "x/a", true);
            }
        },
    },
    Case {
        name: "should enforce multiple, stacked policies with overlapping podSelectors",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
    ports: [{port: 81, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
    ports: [{port: 80, protocol: TCP}]
",
        expect: |p, r| {
            r.expect_all_ingress("x/a", false);
            if p.protocol == TCP {
                r.expect_peer("y/*", "x/a", true);
            }
        },
    },
    Case {
        name: "should support allow-all policy",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {}
  ingress: [{}]
",
        expect: |_, _| {},
    },
    Case {
        name: "should allow ingress access on one named port",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: serve-81-tcp}]}]
",
        expect: |p, r| {
            if !p.is(TCP, 81) {
                r.expect_peer("*/*", "x/*", false);
            }
        },
    },
    Case {
        name: "should allow ingress access from namespace on one named port",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
    ports: [{port: serve-80-tcp, protocol: TCP}]
",
        expect: |p, r| {
            r.expect_all_ingress("x/a", false);
            if p.is(TCP, 80) {
                r.expect_peer("y/*", "x/a", true);
            }
        },
    },
    Case {
        name: "should allow egress access on one named port",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-egress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: serve-80-tcp}]}]
",
        expect: |p, r| {
            if !p.is(TCP, 80) {
                r.expect_peer("x/*", "*/*", false);
            }
        },
    },
    Case {
        name: "should deny ingress from pods on other namespaces",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-empty-policy, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {matchLabels: {}}}]}]
",
        expect: |_, r| {
            r.expect_peer("y/*", "x/*", false);
            r.expect_peer("z/*", "x/*", false);
        },
    },
    Case {
        name: "should deny egress from pods based on PodSelector",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress-pod-a, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}
",
        expect: |_, r| r.expect_all_egress("x/a", false),
    },
    Case {
        name: "should deny egress from all pods in a namespace",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress-ns-x, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}
",
        expect: |_, r| r.expect_peer("x/*", "*/*", false),
    },
    Case {
        name: "should work with Ingress, Egress specified together",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-pod-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress, Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
  egress: [{ports: [{port: 80}]}]
",
        expect: |p, r| {
            r.expect_all_ingress("x/a", false);
            if !p.is(TCP, 80) {
                r.expect_all_egress("x/a", false);
            }
            r.expect("x/b", "x/a", true);
        },
    },
    Case {
        name: "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-to-ns-y-pod-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
      podSelector: {matchLabels: {pod: a}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-xa-on-ya-match-selector, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
      podSelector: {matchLabels: {pod: a}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-xa-on-yb-match-selector, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
      podSelector: {matchLabels: {pod: a}}
",
        expect: |_, r| {
            r.expect_peer("x/a", "*/*", false);
            r.expect_peer("*/*", "y/a", false);
            r.expect_peer("x/a", "y/a", true);
            r.expect_peer("*/*", "y/b", false);
        },
    },
    Case {
        name: "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-to-ns-y-pod-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
      podSelector: {matchLabels: {pod: a}}
",
        expect: |_, r| {
            r.expect_all_egress("x/a", false);
            r.expect("x/a", "y/a", true);
        },
    },
    Case {
        name: "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ingress-by-proto, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{protocol: TCP}]}]
",
        expect: |p, r| {
            if p.protocol != TCP {
                r.expect_all_ingress("x/a", false);
            }
        },
    },
    Case {
        name: "should enforce multiple ingress policies with ingress allow-all policy taking precedence (port 80 only)",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ingress-port-80, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80}]}]
",
        expect: |p, r| {
            if !p.is(TCP, 80) {
                r.expect_peer("*/*", "x/*", false);
            }
        },
    },
    Case {
        name: "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ingress-port-80, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ingress, namespace: x}
spec:
  podSelector: {}
  ingress: [{}]
",
        expect: |_, _| {},
    },
    Case {
        name: "should enforce multiple egress policies with egress allow-all policy taking precedence (port 80 only)",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-egress-port-80, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: 80}]}]
",
        expect: |p, r| {
            if !p.is(TCP, 80) {
                r.expect_peer("x/*", "*/*", false);
            }
        },
    },
    Case {
        name: "should enforce multiple egress policies with egress allow-all policy taking precedence",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-egress-port-80, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-egress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{}]
",
        expect: |_, _| {},
    },
    Case {
        name: "should allow egress access to server in CIDR block",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-cidr-egress-rule, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: '{y/b}/32'}}]}]
",
        expect: |_, r| {
            r.expect_all_egress("x/a", false);
            r.expect("x/a", "y/b", true);
        },
    },
    Case {
        name: "should enforce except clause while egress access to server in CIDR block",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-cidr-egress-rule, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.244.0.0/16, except: ['{x/b}/32']}}]}]
",
        expect: |_, r| r.expect("x/a", "x/b", false),
    },
    Case {
        name: "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-cidr-egress-rule, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.244.0.0/16, except: ['{x/b}/32']}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-to-x-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: '{x/b}/32'}}]}]
",
        expect: |_, _| {},
    },
    Case {
        name: "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-egress-for-target, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress-via-label-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
",
        expect: |_, r| r.expect_all_ingress("x/a", false),
    },
    Case {
        name: "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-only-sctp-ingress-on-port-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 81, protocol: SCTP}]}]
",
        expect: |p, r| {
            r.expect_peer("*/*", "x/*", false);
            if p.is(SCTP, 81) {
                r.expect_all_ingress("x/a", true);
            }
        },
    },
    Case {
        name: "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-only-sctp-ingress-on-port-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 80, protocol: SCTP}]}]
",
        expect: |p, r| {
            if !p.is(SCTP, 80) {
                r.expect_all_ingress("x/a", false);
            }
        },
    },
    Case {
        name: "should not allow access by TCP when a policy specifies only UDP",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-only-udp-ingress-on-port-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 81, protocol: UDP}]}]
",
        expect: |p, r| {
            if !p.is(UDP, 81) {
                r.expect_all_ingress("x/a", false);
            }
        },
    },
    Case {
        name: "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector-for-immutable-ns-label, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]
",
        expect: |_, r| {
            r.expect_peer("x/*", "x/a", false);
            r.expect_peer("z/*", "x/a", false);
        },
    },
    Case {
        name: "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-match-selector-for-immutable-ns-label, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]
",
        expect: |_, r| r.expect_peer("x/a", "y/*", false),
    },
    Case {
        name: "(Weft) endPort: a TCP port range from one namespace",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-range-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 80, endPort: 81}]
",
        expect: |p, r| {
            r.expect_all_ingress("x/a", false);
            if p.protocol == TCP {
                r.expect_peer("y/*", "x/a", true);
            }
        },
    },
    Case {
        name: "(Weft) egress only to a DNS-like port: UDP 80 in namespace z",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns-like, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: z}}}]
    ports: [{protocol: UDP, port: 80}]
",
        expect: |p, r| {
            r.expect_peer("x/*", "*/*", false);
            if p.is(UDP, 80) {
                r.expect_peer("x/*", "z/*", true);
            }
        },
    },
    Case {
        name: "(Weft) policyTypes [Egress] only: the ingress rules are not applied",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
  egress: [{}]
",
        expect: |_, _| {},
    },
    Case {
        name: "(Weft) default policyTypes: an empty egress list does not isolate egress",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: empty-lists, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: []
  egress: []
",
        expect: |_, r| r.expect_all_ingress("x/a", false),
    },
    Case {
        name: "(Weft) two policies selecting one pod: their union is allowed",
        policies: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 81, protocol: UDP}]}]
",
        expect: |p, r| {
            r.expect_all_ingress("x/a", false);
            if p.is(TCP, 80) {
                r.expect_peer("y/*", "x/a", true);
            }
            if p.is(UDP, 81) {
                r.expect("x/b", "x/a", true);
            }
        },
    },
];
