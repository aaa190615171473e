//! Kubernetes NetworkPolicy in the switch, in real namespaces: Weft nodes in switch mode reading
//! one manifest directory (`[policy] dir`) or following the (test) Kubernetes API (`[policy]
//! source = "kubernetes"`: the upstream e2e cases and the API-specific test), pods attached
//! through the real `weft` plugin with kubelet's `CNI_ARGS`. Namespaces x and y; pods x/a and x/b on node-1, y/a on node-2.
//! Each case writes the directory, waits for the agents to reload it, and compares the full
//! probe matrix (every pod to every other pod, TCP 80 and 81, UDP 80) with its truth table.
//! Then: established connections are cut by a policy that denies them (`established =
//! "recheck"`), the node still reaches isolated pods (kubelet's probes), and a manifest with a
//! typo leaves the policy in force.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddrV4;
use std::path::Path;
use std::time::{Duration, Instant};

use control::ctl::request_show;
use control::tooling::lab::{Lab, LabPod, NodeKind};
use netns_tests::cni::{attach, Attachment, Driver};
use netns_tests::kube_api::ApiServer;
use netns_tests::{require_root, weftd_path};
use serde_json::{json, Value};

const PODS: [&str; 3] = ["x/a", "x/b", "y/a"];
const PROBES: [(&str, u16); 3] = [("tcp", 80), ("tcp", 81), ("udp", 80)];

use control::tooling::netpol_model::{self as model, CASES, N};

struct Cluster {
    lab: Lab,
    dir: std::path::PathBuf,
    pods: BTreeMap<&'static str, LabPod>,
    _servers: Vec<std::thread::JoinHandle<()>>,
}

/// A TCP echo server and a UDP echo server on the pod's ports 80 and 81.
fn serve(pod: &LabPod) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    for port in [80, 81] {
        let l = pod.listen(port).expect("listen");
        threads.push(std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        }));
    }
    for port in [80, 81] {
        let u = pod.udp(port).expect("udp");
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(&buf[..n], from);
            }
        }));
    }
    threads
}

fn cluster() -> Cluster {
    cluster_with("")
}

/// [`cluster`] with more `[policy]` lines.
fn cluster_with(policy_extra: &str) -> Cluster {
    let (lab, dir) = policy_lab(2, policy_extra);
    let mut pods = BTreeMap::new();
    let mut servers = Vec::new();
    for name in PODS {
        let (ns, pod) = name.split_once('/').expect("ns/name");
        let node = if name == "y/a" { 1 } else { 0 };
        let p = attach_k8s(&lab, node, ns, pod);
        servers.extend(serve(&p));
        pods.insert(name, p);
    }
    Cluster {
        lab,
        dir,
        pods,
        _servers: servers,
    }
}

/// `nodes` Weft nodes in switch mode reading one manifest directory (`[policy] dir`, plus
/// `policy_extra` lines), agents started; the lab and the directory.
fn policy_lab(nodes: u8, policy_extra: &str) -> (Lab, std::path::PathBuf) {
    require_root();
    let mut lab = Lab::new(&weftd_path()).expect("lab");
    lab.switch = true;
    lab.workers = 2;
    let dir = lab.dir().join("policies");
    std::fs::create_dir_all(&dir).expect("policy dir");
    lab.config_extra = format!("[policy]\ndir = \"{}\"\n{policy_extra}", dir.display());
    for n in 1..=nodes {
        lab.add_node(n, NodeKind::Weft).expect("node");
    }
    lab.start().expect("agents start");
    (lab, dir)
}

/// `nodes` Weft nodes in switch mode whose datastore and NetworkPolicy source is the test
/// Kubernetes API server (in the underlay, where the lab's etcd would be), agents started.
fn policy_lab_kube(nodes: u8) -> (Lab, ApiServer) {
    require_root();
    let mut lab = Lab::new(&weftd_path()).expect("lab");
    lab.switch = true;
    lab.workers = 2;
    let api = ApiServer::for_lab(&mut lab, nodes);
    lab.config_extra = "[policy]\nsource = \"kubernetes\"\n".into();
    for n in 1..=nodes {
        lab.add_node(n, NodeKind::Weft).expect("node");
    }
    lab.start().expect("agents start");
    (lab, api)
}

/// The documents of a YAML text as JSON objects (empty documents skipped), with
/// `metadata.namespace` defaulted as `kubectl apply` does for namespaced kinds.
fn objects(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::Value::deserialize(d).expect("YAML"))
        .filter(|v| !v.is_null())
        .map(|v| {
            let mut j: Value = serde_json::to_value(v).expect("YAML as JSON");
            if j["kind"] != "Namespace" && j["metadata"]["namespace"].is_null() {
                j["metadata"]["namespace"] = json!("default");
            }
            j
        })
        .collect()
}

/// The policy reply of every node.
fn policy_replies(lab: &Lab) -> Vec<control::policy::explain::PolicyReply> {
    let q = control::policy::explain::PolicyQuery {
        src: std::net::Ipv4Addr::UNSPECIFIED,
        dst: std::net::Ipv4Addr::UNSPECIFIED,
        protocol: "tcp".into(),
        port: 0,
    };
    lab.nodes
        .iter()
        .map(|n| control::ctl::request_policy(&n.ctl_socket, &q).expect("policy request"))
        .collect()
}

/// Waits until every node's set in force was compiled from exactly the NetworkPolicies `want`
/// (`namespace/name`), as `weftctl policy` reports them.
fn wait_policies(lab: &Lab, want: &[String]) {
    let mut want = want.to_vec();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now: Vec<Vec<String>> = policy_replies(lab)
            .into_iter()
            .map(|r| r.policies)
            .collect();
        if now.iter().all(|p| *p == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agents did not take the API's policies within 5 s: want {want:?}, have {now:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pod `ns/pod` on node `node`, ADDed through the real `weft` plugin with kubelet's
/// `CNI_ARGS`.
fn attach_k8s(lab: &Lab, node: usize, ns: &str, pod: &str) -> LabPod {
    let n = &lab.nodes[node];
    let list = json!({"cniVersion": "1.0.0", "name": "weft",
        "plugins": [{"type": "weft", "socket": n.cni_socket.display().to_string()}]});
    let d = Driver::new(n.ns.path(), netns_tests::cni_path());
    let netns = lab.empty_pod_ns(&format!("{ns}{pod}")).expect("pod ns");
    let mut att = Attachment::new(&format!("np-{ns}-{pod}"), netns.path());
    att.args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}");
    attach(&d, &list, &att, netns).0
}

/// The policy generation in force on each node (every recompile raises it).
fn generations(lab: &Lab) -> Vec<u64> {
    policy_replies(lab)
        .into_iter()
        .map(|r| r.generation)
        .collect()
}

/// Waits until every node has compiled a newer set than `before` (the manifests just written
/// were loaded), so a case is never judged on the previous case's policy.
fn wait_reload(lab: &Lab, before: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = generations(lab);
        if now.iter().zip(before).all(|(n, b)| n > b) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agents did not reload the manifests within 5 s: generations {before:?} -> {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Cluster {
    /// The Namespaces and Pods (labels, addresses: pods on the other node need theirs), then
    /// `policies`, as the one file of the directory.
    fn apply(&self, policies: &str) {
        let mut s = String::new();
        for ns in ["x", "y"] {
            s += &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n---\n");
        }
        for (name, p) in &self.pods {
            let (ns, pod) = name.split_once('/').expect("ns/name");
            s += &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{namespace: {ns}, name: {pod}, labels: {{pod: {pod}}}}}\nstatus: {{podIP: {}}}\n---\n",
                p.ip
            );
        }
        s += policies;
        write_atomically(&self.dir, "cluster.yaml", &s);
    }

    /// Whether `from` reaches `to` by `proto` on `port` (an echo comes back).
    fn probe(&self, from: &str, to: &str, proto: &str, port: u16) -> bool {
        probe(&self.pods[from], self.pods[to].ip, proto, port)
    }

    /// The matrix as `"x/a->x/b tcp/80"` entries that connect.
    fn matrix(&self) -> Vec<String> {
        matrix_where(|from, to, proto, port| self.probe(from, to, proto, port))
    }

    /// Applies `policies`, waits until every agent compiled them, then until the matrix is
    /// `expected` (the workers take the new snapshot at their next batch); panics with both
    /// after 3 s.
    fn expect(&self, case: &str, policies: &str, expected: &[String]) {
        let before = generations(&self.lab);
        self.apply(policies);
        wait_reload(&self.lab, &before);
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut want = expected.to_vec();
        want.sort();
        loop {
            let mut got = self.matrix();
            got.sort();
            if got == want {
                eprintln!(
                    "{case}: {} of {} probes connect, as expected",
                    got.len(),
                    6 * PROBES.len()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{case}:\n  expected {want:?}\n  got      {got:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// Whether `src` reaches `dst` by `proto` ("tcp" or "udp") on `port`: an echo comes back.
fn probe(src: &LabPod, dst: std::net::Ipv4Addr, proto: &str, port: u16) -> bool {
    let addr = SocketAddrV4::new(dst, port);
    let timeout = Duration::from_millis(250);
    match proto {
        "tcp" => src.connect(addr, timeout).is_ok_and(|mut c| echo(&mut c)),
        _ => {
            let u = src.udp(0).expect("udp");
            u.set_read_timeout(Some(timeout)).expect("timeout");
            let mut buf = [0u8; 16];
            u.send_to(b"probe", addr).is_ok() && u.recv_from(&mut buf).is_ok()
        }
    }
}

fn echo(c: &mut std::net::TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_millis(500))).ok();
    let mut buf = [0u8; 4];
    c.write_all(b"ping").is_ok() && c.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

fn write_atomically(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write manifests");
    std::fs::rename(&tmp, dir.join(name)).expect("rename manifests");
}

/// Every probe of the matrix but those `deny` says no to.
fn all_but(deny: impl Fn(&str, &str, &str, u16) -> bool) -> Vec<String> {
    matrix_where(|from, to, proto, port| !deny(from, to, proto, port))
}

/// The probes of the matrix (every pod to every other, each of `PROBES`) that `keep` keeps, as
/// `"x/a->x/b tcp/80"` entries.
fn matrix_where(mut keep: impl FnMut(&str, &str, &str, u16) -> bool) -> Vec<String> {
    let mut v = Vec::new();
    for from in PODS {
        for to in PODS {
            if from == to {
                continue;
            }
            for (proto, port) in PROBES {
                if keep(from, to, proto, port) {
                    v.push(format!("{from}->{to} {proto}/{port}"));
                }
            }
        }
    }
    v
}

const DENY_X_INGRESS: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: deny-ingress}
spec:
  podSelector: {}
---
";

/// x/a takes TCP 80 from pod b of its own namespace.
const A_FROM_B_80: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: a-from-b}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{protocol: TCP, port: 80}]
";

/// The matrix under default-deny in x plus [`A_FROM_B_80`].
fn only_b_to_a_80_in_x() -> Vec<String> {
    all_but(|from, to, proto, port| {
        to.starts_with("x/") && !(from == "x/b" && to == "x/a" && proto == "tcp" && port == 80)
    })
}

fn drops(lab: &Lab, idx: usize, reason: &str) -> u64 {
    let show = request_show(&lab.nodes[idx].ctl_socket).expect("show");
    show.counters.drops.get(reason).copied().unwrap_or(0)
}

#[test]
fn network_policy_cases_match_their_truth_tables_through_the_switch() {
    let c = cluster();
    c.expect(
        "no policy: everything connects",
        "",
        &all_but(|_, _, _, _| false),
    );

    c.expect(
        "default deny ingress in x",
        DENY_X_INGRESS,
        &all_but(|_, to, _, _| to.starts_with("x/")),
    );
    assert!(drops(&c.lab, 0, "policy_denied") > 0);

    c.expect(
        "x/a takes TCP 80 from pod b of its own namespace",
        &format!("{DENY_X_INGRESS}{A_FROM_B_80}"),
        &only_b_to_a_80_in_x(),
    );

    c.expect(
        "x/a takes everything from namespace y (across nodes), nothing from x",
        &format!(
            "{DENY_X_INGRESS}apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{namespace: x, name: a-from-y}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress:
  - from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]
"
        ),
        &all_but(|from, to, _, _| to.starts_with("x/") && !(from == "y/a" && to == "x/a")),
    );

    c.expect(
        "x/b may not send anything (egress isolated, no rule); replies to it are not affected",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: b-no-egress}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
",
        &all_but(|from, _, _, _| from == "x/b"),
    );

    c.expect(
        "y/a may send only UDP to x, by an ipBlock of x/a's /32 with endPort 80-81",
        &format!(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{namespace: y, name: a-udp-out}}
spec:
  podSelector: {{}}
  policyTypes: [Egress]
  egress:
  - to: [{{ipBlock: {{cidr: {}/32}}}}]
    ports: [{{protocol: UDP, port: 80, endPort: 81}}]
",
            c.pods["x/a"].ip
        ),
        &all_but(|from, to, proto, _| from == "y/a" && !(to == "x/a" && proto == "udp")),
    );
}

#[test]
fn a_policy_change_cuts_connections_it_denies_and_the_node_still_reaches_its_pods() {
    let c = cluster();
    c.expect("no policy", "", &all_but(|_, _, _, _| false));
    let server = c.pods["x/a"].ip;
    let mut conn = c.pods["x/b"]
        .connect(SocketAddrV4::new(server, 80), Duration::from_secs(1))
        .expect("x/b -> x/a:80 before any policy");
    assert!(echo(&mut conn), "echo before the policy");

    c.expect(
        "default deny ingress in x",
        DENY_X_INGRESS,
        &all_but(|_, to, _, _| to.starts_with("x/")),
    );
    // Re-checked at its next packet, the established connection is cut.
    assert!(
        !echo(&mut conn),
        "an established connection the new policy denies is cut"
    );

    // weftctl policy says why, naming the side that denies.
    let client = c.pods["x/b"].ip.to_string();
    let weftctl = weftd_path().with_file_name("weftctl");
    let explain = |port: &str| {
        let out = std::process::Command::new(&weftctl)
            .args(["--socket", &c.lab.nodes[0].ctl_socket.display().to_string()])
            .args([
                "policy",
                &client,
                &server.to_string(),
                "--protocol",
                "tcp",
                "--port",
                port,
            ])
            .output()
            .expect("run weftctl (cargo builds it beside weftd)");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = explain("80");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("ingress at {server}: DENIED")),
        "{text}"
    );
    c.expect(
        "x/a takes TCP 80 from x/b",
        &format!("{DENY_X_INGRESS}{A_FROM_B_80}"),
        &only_b_to_a_80_in_x(),
    );
    let (code, text) = explain("80");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("allowed by x/a-from-b ingress[0]"), "{text}");
    // Without a flow: the source and the NetworkPolicies in force.
    let out = std::process::Command::new(&weftctl)
        .args(["--socket", &c.lab.nodes[0].ctl_socket.display().to_string()])
        .arg("policy")
        .output()
        .expect("run weftctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("from dir ") && text.contains("2 NetworkPolicies"),
        "{text}"
    );
    assert!(
        text.contains("  x/a-from-b") && text.contains("  x/deny-ingress"),
        "{text}"
    );
    // weftctl status carries the same in a line.
    let status = control::ctl::request_status(&c.lab.nodes[0].ctl_socket).expect("status");
    let p = status.policy.clone().expect("a policy line in the status");
    assert!(p.source.starts_with("dir ") && p.policies == 2, "{p:?}");
    assert!(
        status.render().contains("policy     dir "),
        "{}",
        status.render()
    );
    // The rule's flows are counted on /metrics.
    let (status, metrics) = c.lab.http_get(0, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    let line = metrics
        .lines()
        .find(|l| l.contains("policy_rule_flows") && l.contains("rule=\"x/a-from-b ingress[0]\""))
        .unwrap_or_else(|| panic!("no counter for the rule in\n{metrics}"));
    let n: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a count");
    assert!(n >= 1, "{line}");
    assert!(
        metrics.contains("conntrack_total{event=\"inserted\"}"),
        "{metrics}"
    );
    c.expect(
        "default deny ingress in x, again",
        DENY_X_INGRESS,
        &all_but(|_, to, _, _| to.starts_with("x/")),
    );

    // Kubelet's probes: the node reaches its isolated pods.
    let node = &c.lab.nodes[0];
    let reached = node
        .ns
        .run(move || {
            std::net::TcpStream::connect_timeout(
                &SocketAddrV4::new(server, 80).into(),
                Duration::from_secs(1),
            )
            .is_ok()
        })
        .expect("enter node");
    assert!(reached, "node-1 -> x/a:80 under default deny");

    // A typo (ingres) is refused with its file and field; the policy in force stays.
    let before = drops(&c.lab, 0, "policy_denied");
    c.apply(&format!(
        "{DENY_X_INGRESS}apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{namespace: x, name: typo}}
spec:
  podSelector: {{}}
  ingres: [{{}}]
"
    ));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !c.probe("y/a", "x/a", "tcp", 80),
        "still denied after a bad manifest"
    );
    assert!(drops(&c.lab, 1, "policy_denied") + drops(&c.lab, 0, "policy_denied") > before);
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    assert!(
        log.contains("ingres") && log.contains("cluster.yaml"),
        "the agent's log names the file and the field"
    );

    // A pod added to x now is isolated from its first packet: its ADD returned only once its
    // policy was in the workers' snapshot.
    let newpod = attach_k8s(&c.lab, 0, "x", "new");
    let _servers = serve(&newpod);
    assert!(
        !probe(&c.pods["y/a"], newpod.ip, "tcp", 80),
        "the new pod of x is reachable before its policy"
    );
    assert!(
        probe(&newpod, c.pods["y/a"].ip, "tcp", 80),
        "its egress is not isolated"
    );
}

/// The upstream e2e model in real namespaces, through the Kubernetes source: 3 switch nodes
/// following the test API server, pods x/a.. z/c with pod `i` on node `i % 3` (as the model
/// places them), every case of `netpol_model::CASES` applied in turn through the API (the last
/// case's policies deleted, this one's added, in one burst) and its 9x9 truth table compared on
/// TCP 80, TCP 81, UDP 80 and UDP 81. SCTP is compared in the model test only: this machine's
/// kernel has no SCTP (`modprobe sctp` finds no module).
#[test]
fn the_upstream_e2e_cases_hold_through_the_switch() {
    let (lab, api) = policy_lab_kube(3);
    // kubelet's order: the Pod object exists, then CNI ADD, then its status carries the address.
    let unplaced = objects(&model::cluster_yaml_at(|_| std::net::Ipv4Addr::UNSPECIFIED));
    api.events(
        unplaced
            .into_iter()
            .map(|mut o| {
                o.as_object_mut().expect("object").remove("status");
                ("ADDED", o)
            })
            .collect(),
    );
    let mut pods: Vec<LabPod> = Vec::new();
    let mut servers = Vec::new();
    for i in 0..N {
        let name = model::pod_name(i);
        let (ns, pod) = name.split_once('/').expect("ns/pod");
        let p = attach_k8s(&lab, model::node_of(i), ns, pod);
        servers.extend(serve(&p));
        pods.push(p);
    }
    let ips: Vec<std::net::Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
    api.events(
        objects(&model::cluster_yaml_at(|i| ips[i]))
            .into_iter()
            .map(|o| ("MODIFIED", o))
            .collect(),
    );
    let probes = [("tcp", 80), ("tcp", 81), ("udp", 80), ("udp", 81)];
    let kind = |proto: &str, port: u16| {
        *model::PROBES
            .iter()
            .find(|p| p.port == port && p.protocol.to_string().eq_ignore_ascii_case(proto))
            .expect("a model probe")
    };
    let pods = std::sync::Arc::new(pods);
    let started = Instant::now();
    let mut compared = 0;
    let mut in_force: Vec<Value> = Vec::new();
    for (n, case) in CASES.iter().enumerate() {
        // Each case's policies get names of their own, so "in force" names one case only.
        let mut changes: Vec<(&str, Value)> = in_force.drain(..).map(|p| ("DELETED", p)).collect();
        for mut p in objects(&case.policies_at(|i| ips[i])) {
            let name = format!("{}-case{n}", p["metadata"]["name"].as_str().expect("name"));
            p["metadata"]["name"] = json!(name);
            in_force.push(p.clone());
            changes.push(("ADDED", p));
        }
        let want: Vec<String> = in_force
            .iter()
            .map(|p| {
                format!(
                    "{}/{}",
                    p["metadata"]["namespace"].as_str().expect("namespace"),
                    p["metadata"]["name"].as_str().expect("name")
                )
            })
            .collect();
        api.events(changes);
        wait_policies(&lab, &want);
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            // Every probe of the case at once: a denied one costs its timeout.
            let handles: Vec<_> = probes
                .iter()
                .flat_map(|&(proto, port)| {
                    (0..N).flat_map(move |f| (0..N).map(move |t| (proto, port, f, t)))
                })
                .filter(|&(_, _, f, t)| f != t)
                .map(|(proto, port, f, t)| {
                    let pods = pods.clone();
                    std::thread::spawn(move || {
                        (proto, port, f, t, probe(&pods[f], pods[t].ip, proto, port))
                    })
                })
                .collect();
            let mut wrong = Vec::new();
            for h in handles {
                let (proto, port, f, t, got) = h.join().expect("probe thread");
                let want = case.expected(kind(proto, port)).m[f][t];
                if got != want {
                    wrong.push(format!(
                        "{} -> {} {proto}/{port}: {} (expected {})",
                        model::pod_name(f),
                        model::pod_name(t),
                        if got { "connects" } else { "blocked" },
                        if want { "connects" } else { "blocked" }
                    ));
                }
            }
            if wrong.is_empty() {
                compared += 1;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "case {n} ({}): {} of {} probes differ:\n{}",
                case.name,
                wrong.len(),
                probes.len() * N * (N - 1),
                wrong.join("\n")
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    eprintln!(
        "{compared} cases x {} probes matched their truth tables in {:.0} s",
        probes.len() * N * (N - 1),
        started.elapsed().as_secs_f64()
    );
    drop(servers);
}

/// `weft_conntrack_total{event=...}` on node `idx`.
fn conntrack_event(lab: &Lab, idx: usize, event: &str) -> u64 {
    let (_, metrics) = lab.http_get(idx, "/metrics").expect("GET /metrics");
    metrics
        .lines()
        .find(|l| l.contains("conntrack_total") && l.contains(&format!("event=\"{event}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no conntrack {event} in\n{metrics}"))
}

#[test]
fn policy_churn_during_a_transfer_and_a_full_connection_table() {
    // The smallest table: 1024 flows.
    let c = cluster_with("conntrack_max = 1024\n");
    let allow_82 = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: a-82-from-b}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{protocol: TCP, port: 82}]
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
---
";
    c.expect(
        "x/a takes TCP 82 from x/b and everything from y",
        &format!("{DENY_X_INGRESS}{allow_82}"),
        &all_but(|from, to, _, _| to.starts_with("x/") && !(from == "y/a" && to == "x/a")),
    );

    // 64 MiB from x/b to x/a:82 while the policy changes 20 times (other namespaces' rules
    // come and go; this flow stays allowed, and is re-checked at each generation).
    const BYTES: usize = 64 << 20;
    let listener = c.pods["x/a"].listen(82).expect("listen 82");
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let (mut got, mut sum, mut buf) = (0usize, 0u64, vec![0u8; 1 << 16]);
        loop {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            for (i, b) in buf[..n].iter().enumerate() {
                let at = got + i;
                assert_eq!(*b, (at % 251) as u8, "byte {at} differs");
            }
            sum += n as u64;
            got += n;
        }
        sum
    });
    let mut conn = c.pods["x/b"]
        .connect(
            SocketAddrV4::new(c.pods["x/a"].ip, 82),
            Duration::from_secs(2),
        )
        .expect("x/b -> x/a:82");
    let sender = std::thread::spawn(move || {
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let mut sent = 0;
        while sent < BYTES {
            // The pattern repeats every 251 bytes: each write starts at the right place in it.
            let off = sent % 251;
            let n = (BYTES - sent).min(chunk.len() - 251);
            conn.write_all(&chunk[off..off + n]).expect("write");
            sent += n;
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    for k in 0..20 {
        let other = if k % 2 == 0 {
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: y, name: churn}\nspec: {podSelector: {}, ingress: [{}]}\n---\n"
        } else {
            ""
        };
        c.apply(&format!("{DENY_X_INGRESS}{allow_82}{other}"));
        std::thread::sleep(Duration::from_millis(200));
    }
    sender.join().expect("sender");
    let received = receiver.join().expect("receiver");
    assert_eq!(
        received as usize, BYTES,
        "the transfer is byte-exact through 20 policy changes"
    );

    // An established connection, then 3000 new UDP flows from y/a to x/a: the table fills.
    let mut kept = c.pods["y/a"]
        .connect(
            SocketAddrV4::new(c.pods["x/a"].ip, 80),
            Duration::from_secs(1),
        )
        .expect("y/a -> x/a:80");
    assert!(echo(&mut kept));
    let inserted = conntrack_event(&c.lab, 0, "inserted");
    let flood = c.pods["y/a"].ns.run({
        let dst = SocketAddrV4::new(c.pods["x/a"].ip, 80);
        move || {
            let socks: Vec<std::net::UdpSocket> = (0..3000)
                .filter_map(|_| std::net::UdpSocket::bind("0.0.0.0:0").ok())
                .collect();
            for s in &socks {
                let _ = s.send_to(b"flood", dst);
            }
            socks.len()
        }
    });
    assert_eq!(flood.expect("enter y/a"), 3000);
    std::thread::sleep(Duration::from_millis(500));
    let full = conntrack_event(&c.lab, 0, "evicted") + conntrack_event(&c.lab, 0, "refused");
    assert!(
        conntrack_event(&c.lab, 0, "inserted") >= inserted + 1000,
        "the flood's flows were admitted"
    );
    assert!(
        full > 0,
        "a 1024-entry table took 3000 flows without evicting or refusing"
    );
    // The established connection was not evicted, and new allowed flows still pass.
    assert!(
        echo(&mut kept),
        "the established connection survives a full table"
    );
    assert!(c.probe("y/a", "x/a", "tcp", 81));
    assert!(
        !c.probe("x/b", "x/a", "tcp", 81),
        "and denied ones are still denied"
    );
}

/// The interfaces of the calling thread's network namespace (`/proc/thread-self/net/dev`: sysfs
/// shows the namespace it was mounted in).
fn links_here() -> usize {
    std::fs::read_to_string("/proc/thread-self/net/dev")
        .expect("/proc/thread-self/net/dev")
        .lines()
        .skip(2)
        .count()
}

/// A Pod object as the API server holds it once scheduled: labels, and the address once
/// kubelet has posted it.
fn pod_object(ns: &str, name: &str, labels: Value, ip: Option<std::net::Ipv4Addr>) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{ns}-{name}"), "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "agnhost"}]},
        "status": {"phase": "Pending"},
    });
    if let Some(ip) = ip {
        p["status"] = json!({"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]});
    }
    p
}

/// The Kubernetes source end to end: two switch nodes following the test API server. A pod's
/// ADD waits until the watcher has its Pod object, so its labels decide its policy from its
/// first packet; a pod whose object never comes is refused with CNI error 11 and leaves
/// nothing behind; an API outage keeps the set in force, and a change made meanwhile arrives
/// when the API is back.
#[test]
fn the_kubernetes_source_holds_an_add_until_its_pod_is_known_and_rides_out_an_outage() {
    let (lab, api) = policy_lab_kube(2);
    let x = json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "x", "labels": {"kubernetes.io/metadata.name": "x"}}});
    api.events(vec![
        ("ADDED", x),
        ("ADDED", pod_object("x", "a", json!({"pod": "a"}), None)),
        ("ADDED", pod_object("x", "b", json!({"pod": "b"}), None)),
    ]);
    let a = attach_k8s(&lab, 0, "x", "a");
    let b = attach_k8s(&lab, 1, "x", "b");
    let mut servers = serve(&a);
    api.events(vec![
        (
            "MODIFIED",
            pod_object("x", "a", json!({"pod": "a"}), Some(a.ip)),
        ),
        (
            "MODIFIED",
            pod_object("x", "b", json!({"pod": "b"}), Some(b.ip)),
        ),
    ]);
    // Pods labelled pod=a take TCP 80 from pods labelled role=client, nothing else.
    let policy = objects(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: a-from-clients}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{protocol: TCP, port: 80}]
",
    )
    .remove(0);
    api.event("ADDED", policy.clone());
    wait_policies(&lab, &["x/a-from-clients".to_string()]);
    let wait_probe = |from: &LabPod, to: std::net::Ipv4Addr, want: bool, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(3);
        while probe(from, to, "tcp", 80) != want {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_probe(&b, a.ip, false, "x/b (no role) is denied x/a:80");

    // A second server pod, x/a2 (pod=a, so isolated), whose ADD runs before its Pod object is
    // in the API: the ADD waits for it, and its first packet meets its policy.
    let started = Instant::now();
    let adding = {
        let lab_nodes = lab.nodes[0].cni_socket.clone();
        let node_ns = lab.nodes[0].ns.path().to_path_buf();
        let netns = lab.empty_pod_ns("xa2").expect("pod ns");
        std::thread::spawn(move || {
            let list = json!({"cniVersion": "1.0.0", "name": "weft",
                "plugins": [{"type": "weft", "socket": lab_nodes.display().to_string()}]});
            let d = Driver::new(&node_ns, netns_tests::cni_path());
            let mut att = Attachment::new("np-x-a2", netns.path());
            att.args =
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a2;K8S_POD_UID=uid-x-a2".into();
            attach(&d, &list, &att, netns).0
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !adding.is_finished(),
        "ADD returned before its Pod object was in the API"
    );
    api.event("ADDED", pod_object("x", "a2", json!({"pod": "a"}), None));
    let a2 = adding.join().expect("ADD of x/a2");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "ADD took {took:?}");
    servers.extend(serve(&a2));
    assert!(
        !probe(&b, a2.ip, "tcp", 80),
        "x/a2's first probe from x/b is denied: its labels were known when its port came up"
    );
    eprintln!("x/a2's ADD waited {took:?} for its Pod object; isolated from its first packet");

    // A client pod (role=client, on node-2): allowed once its address is in the API (kubelet
    // posts it after the ADD returns).
    api.event(
        "ADDED",
        pod_object("x", "c", json!({"pod": "c", "role": "client"}), None),
    );
    let c = attach_k8s(&lab, 1, "x", "c");
    api.event(
        "MODIFIED",
        pod_object("x", "c", json!({"pod": "c", "role": "client"}), Some(c.ip)),
    );
    wait_probe(&c, a.ip, true, "x/c (role=client) reaches x/a:80");
    wait_probe(&c, a2.ip, true, "x/c (role=client) reaches x/a2:80");

    // An ADD whose Pod object never comes: CNI error 11 after the wait, no veth, no address.
    let node_links = || lab.nodes[0].ns.run(links_here).expect("enter node ns");
    // What the IPAM state on disk says (snapshot and journal, read as text).
    let ipam_text = || {
        ["cni-ipam.json", "cni-ipam.journal"]
            .iter()
            .map(|f| std::fs::read_to_string(lab.nodes[0].cni_data_dir.join(f)).unwrap_or_default())
            .collect::<String>()
    };
    let (links_before, show_before) = (
        node_links(),
        request_show(&lab.nodes[0].ctl_socket).expect("show"),
    );
    assert!(
        ipam_text().contains("np-x-a2"),
        "the IPAM state names its pods"
    );
    let list = json!({"cniVersion": "1.0.0", "name": "weft",
        "plugins": [{"type": "weft", "socket": lab.nodes[0].cni_socket.display().to_string()}]});
    let d = Driver::new(lab.nodes[0].ns.path(), netns_tests::cni_path());
    let netns = lab.empty_pod_ns("xghost").expect("pod ns");
    let mut att = Attachment::new("np-x-ghost", netns.path());
    att.args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=ghost".into();
    let t = Instant::now();
    let err = d
        .add(&list, &att)
        .expect_err("ADD of a pod the API does not have");
    let waited = t.elapsed();
    assert_eq!(err.exec.code(), Some(11), "{err}");
    assert!(err.exec.msg().contains("x/ghost"), "{err}");
    assert!(waited >= Duration::from_secs(9), "waited {waited:?}");
    let show_after = request_show(&lab.nodes[0].ctl_socket).expect("show");
    assert_eq!(
        show_after.neighbors.len(),
        show_before.neighbors.len(),
        "no port for the refused pod"
    );
    assert_eq!(node_links(), links_before, "no host veth was left behind");
    let sandbox_links = netns.run(links_here).expect("enter pod ns");
    assert_eq!(sandbox_links, 1, "the refused pod's sandbox has only lo");
    assert!(
        !ipam_text().contains("np-x-ghost"),
        "no address was allocated to the refused pod"
    );
    d.del(&list, &att, None).expect("DEL of the refused pod");
    eprintln!("an ADD without its Pod object was refused with CNI error 11 after {waited:?}");

    // The API goes down: the set in force stays. A change made meanwhile (the policy deleted)
    // reaches the agents once it is back.
    api.set_down(true);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !probe(&b, a.ip, "tcp", 80),
        "still denied while the API is down"
    );
    assert!(
        probe(&c, a.ip, "tcp", 80),
        "still allowed while the API is down"
    );
    api.event("DELETED", policy);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !probe(&b, a.ip, "tcp", 80),
        "the agents cannot see a change while down"
    );
    let back = Instant::now();
    api.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(40);
    while !policy_replies(&lab).iter().all(|r| r.policies.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "the agents did not take the deletion within 40 s of the API's return"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_probe(&b, a.ip, true, "x/b reaches x/a:80 once the policy is gone");
    eprintln!(
        "after the outage the deletion arrived in {:?}",
        back.elapsed()
    );
    drop(servers);
}
