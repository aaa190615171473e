//! The Kubernetes datastore without an API server (none can be installed here): the Node ->
//! lease translation as pure functions over realistic Node JSON, then the real kube client,
//! watcher and patch path against an in-test HTTP server that speaks the Node API (GET, list,
//! chunked watch, merge and strategic-merge PATCH). What this leaves unproven is listed in the
//! README ("Kubernetes datastore").
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is the test failing

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
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
use serde_json::{json, Value};

/// A Node as the API server returns it, flannel-annotated when `flannel` is given (public IP,
/// VTEP MAC, backend type).
fn node_json(
    name: &str,
    ip: &str,
    pod_cidr: Option<&str>,
    flannel: Option<(&str, &str, &str)>,
) -> Value {
    let mut annotations = json!({
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
    });
    if let Some((public_ip, mac, backend)) = flannel {
        let a = annotations.as_object_mut().unwrap();
        a.insert(ANN_BACKEND_TYPE.into(), json!(backend));
        if backend == "vxlan" {
            a.insert(
                ANN_BACKEND_DATA.into(),
                json!(format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}")),
            );
        } else {
            a.insert(ANN_BACKEND_DATA.into(), json!("null"));
        }
        a.insert(ANN_PUBLIC_IP.into(), json!(public_ip));
        a.insert(ANN_KUBE_SUBNET_MANAGER.into(), json!("true"));
    }
    let mut spec = json!({ "providerID": format!("kind://docker/kind/{name}") });
    if let Some(c) = pod_cidr {
        spec["podCIDR"] = json!(c);
        spec["podCIDRs"] = json!([c]);
    }
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": format!("7d3c9a2e-0000-4000-8000-{:012}", name.len()),
            "resourceVersion": "1000",
            "creationTimestamp": "2026-11-01T10:00:00Z",
            "labels": {
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
            },
            "annotations": annotations,
        },
        "spec": spec,
        "status": {
            "capacity": {"cpu": "2", "memory": "24576Mi", "pods": "110"},
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "kubelet is posting ready status",
                 "lastHeartbeatTime": "2026-11-01T10:05:00Z", "lastTransitionTime": "2026-11-01T10:00:10Z"},
            ],
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "machineID": "0", "systemUUID": "0", "bootID": "0",
                "kernelVersion": "6.18.0", "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.7.24", "kubeletVersion": "v1.34.1",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
        },
    })
}

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
    };
    let peers = peers_of(&own, &leases_of_nodes(&nodes));
    assert_eq!(peers.len(), 2, "b and e: {peers:?}");
    let t = reconcile(&own, &peers);
    assert_eq!(t.fib.len(), 3);

    // Our own annotations are flannel's, byte for byte.
    let ann = own_annotations(
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

// ---- a small API server speaking the Node API ---------------------------------------------

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    content_type: String,
    body: String,
}

#[derive(Default)]
struct ApiState {
    nodes: Mutex<Vec<Value>>,
    requests: Mutex<Vec<Recorded>>,
    watchers: Mutex<Vec<Sender<String>>>,
    rv: Mutex<u64>,
}

struct ApiServer {
    port: u16,
    state: Arc<ApiState>,
    stop: Arc<AtomicBool>,
}

impl ApiServer {
    fn start(nodes: Vec<Value>) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ApiState::default());
        *state.nodes.lock().unwrap() = nodes;
        *state.rv.lock().unwrap() = 1000;
        let stop = Arc::new(AtomicBool::new(false));
        listener.set_nonblocking(true).unwrap();
        {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let (state, stop) = (state.clone(), stop.clone());
                            std::thread::spawn(move || serve_conn(s, &state, &stop));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        }
        ApiServer { port, state, stop }
    }

    fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\nusers:\n- name: test\n  user:\n    token: test-token\n",
                self.port
            ),
        )
        .unwrap();
        path
    }

    /// Sends a watch event to every open watch (waits for one to be open).
    fn event(&self, kind: &str, mut obj: Value) {
        let t = Instant::now();
        while self.state.watchers.lock().unwrap().is_empty() {
            assert!(t.elapsed() < Duration::from_secs(5), "no watch opened");
            std::thread::sleep(Duration::from_millis(10));
        }
        let rv = {
            let mut rv = self.state.rv.lock().unwrap();
            *rv += 1;
            *rv
        };
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let line = json!({"type": kind, "object": obj}).to_string() + "\n";
        self.state
            .watchers
            .lock()
            .unwrap()
            .retain(|w| w.send(line.clone()).is_ok());
    }

    fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.state.watchers.lock().unwrap().clear();
    }
}

fn respond(s: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    write!(
        s,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        if status == 200 { "OK" } else { "Not Found" },
        body.len()
    )
}

fn serve_conn(stream: TcpStream, state: &ApiState, stop: &AtomicBool) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let (mut len, mut ctype) = (0usize, String::new());
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "content-type" => ctype = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        state.requests.lock().unwrap().push(Recorded {
            method: method.clone(),
            path: path.to_string(),
            content_type: ctype,
            body: body.clone(),
        });
        let find = |name: &str| {
            state
                .nodes
                .lock()
                .unwrap()
                .iter()
                .find(|n| n["metadata"]["name"] == name)
                .cloned()
        };
        let r = match (method.as_str(), path) {
            ("GET", "/api/v1/nodes") if query.contains("watch=true") => {
                let (tx, rx) = channel();
                state.watchers.lock().unwrap().push(tx);
                stream_watch(&mut out, &rx, stop);
                return;
            }
            ("GET", "/api/v1/nodes") => {
                let list = json!({
                    "kind": "NodeList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": state.rv.lock().unwrap().to_string()},
                    "items": *state.nodes.lock().unwrap(),
                });
                respond(&mut out, 200, &list.to_string())
            }
            (m, p) if p.starts_with("/api/v1/nodes/") => {
                let rest = &p["/api/v1/nodes/".len()..];
                let name = rest.trim_end_matches("/status");
                match find(name) {
                    None => respond(
                        &mut out,
                        404,
                        &json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,
                                "message": format!("nodes \"{name}\" not found")}).to_string(),
                    ),
                    Some(mut n) => {
                        if m == "PATCH" {
                            // Annotations merge (strategic merge of a map is a merge).
                            let patch: Value = serde_json::from_str(&body).unwrap_or_default();
                            if let Some(a) = patch["metadata"]["annotations"].as_object() {
                                for (k, v) in a {
                                    n["metadata"]["annotations"][k] = v.clone();
                                }
                            }
                            let mut nodes = state.nodes.lock().unwrap();
                            for x in nodes.iter_mut() {
                                if x["metadata"]["name"] == name {
                                    *x = n.clone();
                                }
                            }
                        }
                        respond(&mut out, 200, &n.to_string())
                    }
                }
            }
            _ => respond(&mut out, 404, "{}"),
        };
        if r.is_err() {
            return;
        }
    }
}

fn stream_watch(out: &mut TcpStream, rx: &Receiver<String>, stop: &AtomicBool) {
    if write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .is_err()
    {
        return;
    }
    let _ = out.flush();
    while !stop.load(Ordering::Relaxed) {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if write!(out, "{:x}\r\n{line}\r\n", line.len()).is_err() {
                    return;
                }
                let _ = out.flush();
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    let _ = write!(out, "0\r\n\r\n");
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
    let want = own_annotations(Ipv4Addr::new(192, 168, 50, 1), 1, vtep_mac_for("node-a"));
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
