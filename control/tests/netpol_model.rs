//! The upstream NetworkPolicy e2e model (`control::tooling::netpol_model`) through
//! `compile_with` and the dataplane's decision: each node compiled for its own pods, a probe
//! allowed when egress at its source and ingress at its destination both allow.

use std::net::Ipv4Addr;
use std::path::Path;

use dataplane::policy::{Direction, PolicySet};

use control::policy::{compile_with, CompileOptions, Manifests};
use control::tooling::netpol_model::{
    cluster_yaml, node_of, pod_ip, Case, Probe, Reachability, CASES, N, PROBES,
};

const TCP: dataplane::policy::Protocol = dataplane::policy::Protocol::TCP;

/// The node sets for `policies` with the model's cluster.
fn compile_nodes(policies: &str) -> [PolicySet; 3] {
    let text = format!("{}\n---\n{policies}", cluster_yaml());
    let m =
        Manifests::from_str(&text, Path::new("model.yaml")).expect("the model's manifests load");
    [0, 1, 2].map(|node| {
        let local: Vec<Ipv4Addr> = (0..N).filter(|&i| node_of(i) == node).map(pod_ip).collect();
        let options = CompileOptions {
            generation: 1,
            node_addrs: vec![Ipv4Addr::new(10, 244, node as u8 + 1, 0)],
        };
        compile_with(&m.policies, &m.pods, &m.namespaces, &local, &options)
            .expect("the model's policies compile")
    })
}

fn probe_all(nodes: &[PolicySet; 3], probe: Probe) -> Reachability {
    let mut r = Reachability::new(false);
    for f in 0..N {
        for t in 0..N {
            let (src, dst) = (pod_ip(f), pod_ip(t));
            let egress =
                nodes[node_of(f)].decide(Direction::Egress, src, dst, probe.protocol, probe.port);
            let ingress =
                nodes[node_of(t)].decide(Direction::Ingress, dst, src, probe.protocol, probe.port);
            r.m[f][t] = egress.allows() && ingress.allows();
        }
    }
    r
}

fn run(case: &Case) -> Vec<String> {
    let nodes = compile_nodes(&case.policies_at(pod_ip));
    let mut failures = Vec::new();
    for probe in PROBES {
        let want = case.expected(probe);
        let got = probe_all(&nodes, probe);
        let differs = (0..N).any(|f| (0..N).any(|t| f != t && want.m[f][t] != got.m[f][t]));
        if differs {
            failures.push(format!(
                "{} on {}/{}:\nexpected\n{}\ngot\n{}",
                case.name,
                probe.protocol,
                probe.port,
                want.render(),
                got.render()
            ));
        }
    }
    failures
}

#[test]
fn upstream_truth_tables() {
    assert!(CASES.len() >= 25, "{} cases", CASES.len());
    let failures: Vec<String> = CASES.iter().flat_map(run).collect();
    assert!(
        failures.is_empty(),
        "{} of {} case×probe tables differ:\n\n{}",
        failures.len(),
        CASES.len() * PROBES.len(),
        failures.join("\n\n")
    );
}

#[test]
fn decisions_name_the_rule_that_allowed() {
    let nodes = compile_nodes(&CASES[3].policies_at(pod_ip));
    // x/b -> x/a: x/a is pod a, on node 0; the allowing rule is x/x-a-allows-x-b ingress[0].
    let d = nodes[0].decide(Direction::Ingress, pod_ip(0), pod_ip(1), TCP, 80);
    let dataplane::policy::Decision::Allow { rule } = d else {
        panic!("allowed, got {d:?}");
    };
    assert_eq!(
        nodes[0].rule(rule).map(ToString::to_string).as_deref(),
        Some("x/x-a-allows-x-b ingress[0]")
    );
    // The node's own address reaches an isolated pod.
    let from_node = nodes[0].decide(
        Direction::Ingress,
        pod_ip(0),
        Ipv4Addr::new(10, 244, 1, 0),
        TCP,
        10250,
    );
    let dataplane::policy::Decision::Allow { rule } = from_node else {
        panic!("the node is always allowed, got {from_node:?}");
    };
    assert_eq!(
        nodes[0].rule(rule).map(ToString::to_string).as_deref(),
        Some("node")
    );
}
