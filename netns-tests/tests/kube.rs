//! The Kubernetes datastore without an API server (none can be installed here): the Node ->
//! lease translation as pure functions over realistic Node JSON, then the real kube client,
//! watcher and patch path against an in-test HTTP server that speaks the Node API (GET, list,
//! chunked watch, strategic-merge PATCH; `netns_tests::kube_api`), and real `weftd` agents in
//! Kubernetes mode in lab namespaces against the same server. What this leaves unproven is
//! listed in the README ("Datastores").
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is the test failing

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::config::{vtep_mac_for, Config};
use control::datastore::flannel::{
    ANN_BACKEND_DATA, ANN_BACKEND_TYPE, ANN_KUBE_SUBNET_MANAGER, ANN_PUBLIC_IP,
};
use control::datastore::kube::{self, lease_of_node, leases_of_nodes, own_annotations};
use control::datastore::{peers_of, reconcile, OwnNode, PeerSync};
use control::metrics::Metrics;
use dataplane::snapshot::SnapshotCell;
use dataplane::wire::EthernetAddress;
use k8s_openapi::api::core::v1::Node;
use netns_tests::kube_api::{node_json, ApiServer, Recorded};
use serde_json::{json, Value};

fn node(v: &Value) -> Node {
    serde_json::from_value(v.clone()).unwrap()
}

const MAC_B: &str = "c6:d2:32:6f:8f:44";

#[test]
fn leases_from_nodes_follow_flannels_annotations() {
    let b = node(&node_json(
        "b",
        "192.168.50.2",
        Some("10.244.2.0/24"),
        Some(("192.168.50.2", MAC_B, "vxlan")),
    ));
    let l = lease_of_node(&b)
        .unwrap()
        .expect("annotated node has a lease");
    assert_eq!(l.subnet, "10.244.2.0/24".parse().unwrap());
    assert_eq!(l.public_ip, Ipv4Addr::new(192, 168, 50, 2));
    assert_eq!(l.vtep_mac, Some(MAC_B.parse().unwrap()));
    assert_eq!((l.backend_type.as_str(), l.vni), ("vxlan", Some(1)));

    // Not managed by a kube subnet manager, or no podCIDR yet: no lease.
    let plain = node(&node_json("c", "192.168.50.3", Some("10.244.3.0/24"), None));
    assert_eq!(lease_of_node(&plain).unwrap(), None);
    let no_cidr = node(&node_json(
        "d",
        "192.168.50.4",
        None,
        Some(("192.168.50.4", MAC_B, "vxlan")),
    ));
    assert_eq!(lease_of_node(&no_cidr).unwrap(), None);
    // podCIDRs only (dual stack, v6 first): the IPv4 entry.
    let mut dual = node_json(
        "e",
        "192.168.50.5",
        None,
        Some(("192.168.50.5", "0e:00:00:00:00:05", "vxlan")),
    );
    dual["spec"]["podCIDRs"] = json!(["fd00:10:244:5::/64", "10.244.5.0/24"]);
    assert_eq!(
        lease_of_node(&node(&dual)).unwrap().unwrap().subnet,
        "10.244.5.0/24".parse().unwrap()
    );
    // A host-gw node is a lease but not a VXLAN peer.
    let hg = node(&node_json(
        "f",
        "192.168.50.6",
        Some("10.244.6.0/24"),
        Some(("192.168.50.6", "", "host-gw")),
    ));
    assert_eq!(lease_of_node(&hg).unwrap().unwrap().vtep_mac, None);
    // Malformed annotations are errors naming the node.
    let mut bad = node_json(
        "g",
        "192.168.50.7",
        Some("10.244.7.0/24"),
        Some(("192.168.50.7", MAC_B, "vxlan")),
    );
    bad["metadata"]["annotations"][ANN_BACKEND_DATA] = json!("{not json");
    assert!(lease_of_node(&node(&bad)).unwrap_err().contains("Node g"));
    let mut bad_ip = node_json(
        "h",
        "x",
        Some("10.244.8.0/24"),
        Some(("not-an-ip", MAC_B, "vxlan")),
    );
    bad_ip["metadata"]["annotations"][ANN_PUBLIC_IP] = json!("not-an-ip");
    assert!(lease_of_node(&node(&bad_ip))
        .unwrap_err()
        .contains("public-ip"));

    // Reconcile over the whole set: only b is a VXLAN peer of node a.
    let nodes: Vec<Node> = [b, plain, no_cidr, node(&dual), hg, node(&bad)]
        .into_iter()
        .collect();
    let own = OwnNode {
        subnet: "10.244.1.0/24".parse().unwrap(),
        public_ip: Ipv4Addr::new(192, 168, 50, 1),
        vtep_mac: vtep_mac_for("a"),
        vni: 1,
        vxlan_port: 8472,
        underlay_mtu: 1500,
        tun_mtu: 1450,
        backend: control::config::BackendKind::Vxlan,
        encapsulation: control::config::Encapsulation::Always,
        underlay: "192.168.0.0/16".parse().expect("net"),
    };
    let peers = peers_of(&own, &leases_of_nodes(&nodes));
    assert_eq!(peers.len(), 2, "b and e: {peers:?}");
    let t = reconcile(&own, &peers);
    assert_eq!(t.fib.len(), 3);

    // Our own annotations are flannel's, byte for byte.
    let ann = own_annotations(
        control::config::BackendKind::Vxlan,
        Ipv4Addr::new(192, 168, 50, 1),
        1,
        EthernetAddress([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]),
    );
    assert_eq!(
        ann[ANN_BACKEND_DATA],
        r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#
    );
    assert_eq!(ann[ANN_BACKEND_TYPE], "vxlan");
    assert_eq!(ann[ANN_PUBLIC_IP], "192.168.50.1");
    assert_eq!(ann[ANN_KUBE_SUBNET_MANAGER], "true");
}

fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(10), "{what}: timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn kube_client_annotates_sets_condition_and_follows_nodes_through_the_api() {
    let mac_c = "0e:00:00:00:00:03";
    let api = ApiServer::start(vec![
        node_json("node-a", "192.168.50.1", Some("10.244.1.0/24"), None),
        node_json(
            "node-b",
            "192.168.50.2",
            Some("10.244.2.0/24"),
            Some(("192.168.50.2", MAC_B, "vxlan")),
        ),
        node_json("node-c", "192.168.50.3", Some("10.244.3.0/24"), None),
    ]);
    let dir = std::env::temp_dir().join(format!("weft-kube-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = Config::from_toml_str(&format!(
        "[node]\nname = \"node-a\"\npublic_ip = \"192.168.50.1\"\n[datastore]\ntype = \"kubernetes\"\n[datastore.kubernetes]\nkubeconfig = \"{}\"\n",
        api.kubeconfig(&dir).display()
    ))
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let prepared = rt
        .block_on(kube::prepare(&cfg, Ipv4Addr::new(192, 168, 50, 1), &stop))
        .unwrap();
    assert_eq!(prepared.subnet, "10.244.1.0/24".parse().unwrap());
    assert_eq!(prepared.network, "10.244.0.0/16".parse().unwrap());

    // Both patches go to nodes/status as strategic merge patches (flannel's RBAC has no nodes
    // patch): first flannel's four annotations, then the condition.
    let reqs = api.requests();
    assert!(
        !reqs
            .iter()
            .any(|r| r.method == "PATCH" && r.path == "/api/v1/nodes/node-a"),
        "a nodes (not nodes/status) patch needs RBAC flannel does not grant"
    );
    let patches: Vec<&Recorded> = reqs
        .iter()
        .filter(|r| r.method == "PATCH" && r.path == "/api/v1/nodes/node-a/status")
        .collect();
    assert_eq!(patches.len(), 2, "{patches:?}");
    let ann = patches[0];
    assert_eq!(ann.content_type, "application/strategic-merge-patch+json");
    let body: Value = serde_json::from_str(&ann.body).unwrap();
    let want = own_annotations(
        control::config::BackendKind::Vxlan,
        Ipv4Addr::new(192, 168, 50, 1),
        1,
        vtep_mac_for("node-a"),
    );
    assert_eq!(
        body["metadata"]["annotations"],
        serde_json::to_value(&want).unwrap()
    );
    // The condition: a strategic merge patch of nodes/status.
    let st = patches[1];
    assert_eq!(st.content_type, "application/strategic-merge-patch+json");
    let body: Value = serde_json::from_str(&st.body).unwrap();
    let c = &body["status"]["conditions"][0];
    assert_eq!(
        (
            c["type"].as_str(),
            c["status"].as_str(),
            c["reason"].as_str()
        ),
        (
            Some("NetworkUnavailable"),
            Some("False"),
            Some("FlannelIsUp")
        )
    );

    // The watcher: list, then watch events.
    let own = OwnNode {
        subnet: prepared.subnet,
        public_ip: Ipv4Addr::new(192, 168, 50, 1),
        vtep_mac: vtep_mac_for("node-a"),
        vni: 1,
        vxlan_port: 8472,
        underlay_mtu: 1500,
        tun_mtu: 1450,
        backend: control::config::BackendKind::Vxlan,
        encapsulation: control::config::Encapsulation::Always,
        underlay: "192.168.0.0/16".parse().expect("net"),
    };
    let cell = Arc::new(SnapshotCell::new(reconcile(&own, &[]).snapshot()));
    let metrics = Arc::new(Metrics::new());
    let runner = {
        let (cell, metrics, stop, cfg) = (cell.clone(), metrics.clone(), stop.clone(), cfg.clone());
        let client = prepared.client.clone();
        std::thread::spawn(move || {
            let mut sync = PeerSync::new(own, cell, metrics.clone());
            rt.block_on(kube::run(client, &cfg, &mut sync, metrics, stop));
        })
    };
    let routes = |cell: &SnapshotCell| cell.load().fib.len();
    // The list: node-a (after our patch, annotated: ourselves) and node-b are leases; b is a peer.
    wait("initial list programmed", || {
        metrics.tables_programmed.load(Ordering::Relaxed) && routes(&cell) == 2
    });
    // A node joins.
    api.event(
        "ADDED",
        node_json(
            "node-d",
            "192.168.50.4",
            Some("10.244.4.0/24"),
            Some(("192.168.50.4", "0e:00:00:00:00:04", "vxlan")),
        ),
    );
    wait("node-d added", || routes(&cell) == 3);
    // node-c becomes a flannel node (annotated by its own agent).
    api.event(
        "MODIFIED",
        node_json(
            "node-c",
            "192.168.50.3",
            Some("10.244.3.0/24"),
            Some(("192.168.50.3", mac_c, "vxlan")),
        ),
    );
    wait("node-c annotated", || routes(&cell) == 4);
    // node-b moves to a new public IP: its FDB entry follows.
    api.event(
        "MODIFIED",
        node_json(
            "node-b",
            "192.168.50.22",
            Some("10.244.2.0/24"),
            Some(("192.168.50.22", MAC_B, "vxlan")),
        ),
    );
    let mac_b: EthernetAddress = MAC_B.parse().unwrap();
    wait("node-b's new public IP", || {
        matches!(cell.load().fdb.lookup(mac_b),
            Some(dataplane::fdb::FdbEntry::Remote { vtep }) if vtep == Ipv4Addr::new(192, 168, 50, 22))
    });
    // A node leaves.
    api.event(
        "DELETED",
        node_json(
            "node-d",
            "192.168.50.4",
            Some("10.244.4.0/24"),
            Some(("192.168.50.4", "0e:00:00:00:00:04", "vxlan")),
        ),
    );
    wait("node-d deleted", || routes(&cell) == 3);
    // A heartbeat-only update changes nothing and publishes nothing.
    let publishes = metrics.render();
    api.event(
        "MODIFIED",
        node_json(
            "node-c",
            "192.168.50.3",
            Some("10.244.3.0/24"),
            Some(("192.168.50.3", mac_c, "vxlan")),
        ),
    );
    std::thread::sleep(Duration::from_millis(200));
    let count = |t: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix("weft_table_publishes_total "))
            .map(str::to_string)
    };
    assert_eq!(count(&publishes), count(&metrics.render()));
    stop.store(true, Ordering::Relaxed);
    runner.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether node `idx`'s agent programs `subnet` (route, neighbour and FDB entry).
fn programs(lab: &control::tooling::lab::Lab, idx: usize, subnet: ipnet::Ipv4Net) -> bool {
    let show = control::ctl::request_show(&lab.nodes[idx].ctl_socket).unwrap();
    let route = show.routes.iter().any(|r| r.dst == subnet.to_string());
    let neigh = show.neighbors.iter().find(|n| n.ip == subnet.network());
    route && neigh.is_some_and(|n| show.fdb.iter().any(|f| f.mac == n.lladdr))
}

#[test]
fn weftd_agents_in_kubernetes_mode_annotate_their_nodes_and_carry_pod_traffic() {
    use control::tooling::lab::{Lab, NodeKind};
    netns_tests::require_root();
    let mut lab = Lab::new(&netns_tests::weftd_path()).unwrap();
    let api = ApiServer::for_lab(&mut lab, 3);
    for i in 1..=3 {
        lab.add_node(i, NodeKind::Weft).unwrap();
    }
    lab.start().expect("agents start from the Node API");
    for idx in 0..3 {
        assert_eq!(
            lab.nodes[idx].subnet,
            format!("10.244.{}.0/24", idx + 1).parse().unwrap(),
            "subnet = podCIDR"
        );
        lab.add_pod(idx, 2).unwrap();
    }
    // Every Node carries flannel's annotations and NetworkUnavailable=False.
    for n in &lab.nodes {
        let node = api.node(&n.name).unwrap();
        let ann = &node["metadata"]["annotations"];
        assert_eq!(ann[ANN_PUBLIC_IP], json!(n.public_ip.to_string()));
        assert_eq!(ann[ANN_BACKEND_TYPE], json!("vxlan"));
        assert_eq!(ann[ANN_KUBE_SUBNET_MANAGER], json!("true"));
        assert_eq!(
            ann[ANN_BACKEND_DATA],
            json!(format!(
                r#"{{"VNI":1,"VtepMAC":"{}"}}"#,
                vtep_mac_for(&n.name)
            ))
        );
        let cond = node["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "NetworkUnavailable")
            .cloned()
            .unwrap_or_else(|| panic!("{}: no NetworkUnavailable condition", n.name));
        assert_eq!(
            (cond["status"].as_str(), cond["reason"].as_str()),
            (Some("False"), Some("FlannelIsUp"))
        );
    }
    // Every agent learnt the others through the watch (each annotated itself after some of the
    // others had listed), and pods reach each other across nodes.
    for idx in 0..3 {
        wait("peers programmed", || {
            (0..3)
                .filter(|&j| j != idx)
                .all(|j| programs(&lab, idx, lab.nodes[j].subnet))
        });
        let (status, body) = lab.http_get(idx, "/readyz").unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let pods: Vec<Ipv4Addr> = lab.nodes.iter().map(|n| n.pods[0].ip).collect();
    for &src in &pods {
        for &dst in &pods {
            if src != dst {
                let pod = lab.pod(src).unwrap();
                assert!(
                    (0..3).any(|_| pod.ping(dst, 56, false, Duration::from_secs(1)).is_reply()),
                    "ping {src} -> {dst}"
                );
            }
        }
    }
    // A Node deleted: its peer entries go from the others within a second.
    lab.stop_agent(2, libc::SIGKILL);
    let gone = lab.nodes[2].subnet;
    let node3 = api.node("node-3").unwrap();
    let t = Instant::now();
    api.event("DELETED", node3);
    wait("node-3 removed", || {
        !programs(&lab, 0, gone) && !programs(&lab, 1, gone)
    });
    let took = t.elapsed();
    eprintln!("Node deletion propagated to both agents in {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}
