//! A small stand-in for the Kubernetes API server, for tests (no API server can be installed
//! here): Nodes (`GET /api/v1/nodes/{name}`, PATCH of a Node or its status: annotations merged,
//! every change a MODIFIED watch event, as the real server sends), and cluster-wide list and
//! chunked watch, with replay from a `resourceVersion`, of Nodes, Pods, Namespaces and
//! NetworkPolicies (the collections Weft's watchers follow). It records every request so tests can
//! check what a client sent. It can listen inside a lab namespace so `weftd` agents reach it over
//! the underlay.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control::datastore::flannel::{
    ANN_BACKEND_DATA, ANN_BACKEND_TYPE, ANN_KUBE_SUBNET_MANAGER, ANN_PUBLIC_IP,
};
use serde_json::{json, Value};

/// A Node as the API server returns it (labels, annotations, spec, status as a kind/kubeadm
/// cluster shows them), flannel-annotated when `flannel` is given: (public IP, VTEP MAC, backend
/// type).
pub fn node_json(
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
        let a = annotations
            .as_object_mut()
            .expect("annotations is the object built above");
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

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Content-Type header.
    pub content_type: String,
    /// Body.
    pub body: String,
}

/// The collections served: (list path, object kind).
const COLLECTIONS: [(&str, &str); 4] = [
    ("/api/v1/nodes", "Node"),
    ("/api/v1/pods", "Pod"),
    ("/api/v1/namespaces", "Namespace"),
    (
        "/apis/networking.k8s.io/v1/networkpolicies",
        "NetworkPolicy",
    ),
];

/// The collection an object of `kind` is in.
fn collection_of(kind: &str) -> &'static str {
    COLLECTIONS
        .iter()
        .find(|(_, k)| *k == kind)
        .map(|(c, _)| *c)
        .unwrap_or_else(|| panic!("the test API server serves no {kind:?} objects"))
}

/// Whether two objects are the same one (namespace and name).
fn same_object(a: &Value, b: &Value) -> bool {
    a["metadata"]["name"] == b["metadata"]["name"]
        && a["metadata"]["namespace"] == b["metadata"]["namespace"]
}

#[derive(Debug, Default)]
struct Store {
    /// Objects by collection path.
    objects: std::collections::BTreeMap<&'static str, Vec<Value>>,
    rv: u64,
    /// Every change as a watch line, by resourceVersion and collection, for replay.
    history: Vec<(u64, &'static str, String)>,
    watchers: Vec<(&'static str, Sender<String>)>,
}

impl Store {
    /// Records a change: bumps the resourceVersion, stamps it on `obj`, keeps the event and
    /// sends it to every open watch of the collection.
    fn change(&mut self, collection: &'static str, kind: &str, mut obj: Value) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let line = json!({"type": kind, "object": obj}).to_string() + "\n";
        self.history.push((self.rv, collection, line.clone()));
        self.watchers
            .retain(|(c, w)| *c != collection || w.send(line.clone()).is_ok());
        obj
    }

    fn nodes(&mut self) -> &mut Vec<Value> {
        self.objects.entry("/api/v1/nodes").or_default()
    }

    /// `ADDED` and `MODIFIED` replace (or add) the object, `DELETED` removes it.
    fn apply(&mut self, kind: &str, obj: Value) {
        let collection = collection_of(obj["kind"].as_str().unwrap_or("Node"));
        self.objects
            .entry(collection)
            .or_default()
            .retain(|o| !same_object(o, &obj));
        let obj = self.change(collection, kind, obj);
        if kind != "DELETED" {
            self.objects.entry(collection).or_default().push(obj);
        }
    }
}

#[derive(Debug, Default)]
struct ApiState {
    store: Mutex<Store>,
    requests: Mutex<Vec<Recorded>>,
    /// Down: every request gets 503 and open watches end (an API server restart).
    down: AtomicBool,
}

/// The stand-in API server; stops accepting when dropped.
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddrV4,
    state: Arc<ApiState>,
    stop: Arc<AtomicBool>,
}

impl ApiServer {
    /// Listens on 127.0.0.1 (a free port) serving `nodes`.
    pub fn start(nodes: Vec<Value>) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        Self::serve(listener, nodes)
    }

    /// Listens on `ip` inside namespace `ns` (e.g. a lab's underlay, 192.168.77.254), so agents
    /// in the lab's nodes reach it.
    pub fn start_in(ns: &control::netns::NetNs, ip: Ipv4Addr, nodes: Vec<Value>) -> ApiServer {
        let listener = ns
            .run(move || TcpListener::bind(SocketAddrV4::new(ip, 0)))
            .expect("enter namespace")
            .expect("bind in namespace");
        Self::serve(listener, nodes)
    }

    fn serve(listener: TcpListener, nodes: Vec<Value>) -> ApiServer {
        let addr = match listener.local_addr().expect("local addr") {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("IPv4 listener expected, got {other}"),
        };
        let state = Arc::new(ApiState::default());
        {
            let mut st = state.store.lock().expect("lock");
            st.rv = 1000;
            *st.nodes() = nodes;
        }
        let stop = Arc::new(AtomicBool::new(false));
        listener.set_nonblocking(true).expect("nonblocking");
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
        ApiServer { addr, state, stop }
    }

    /// Serves Nodes `node-1`..`node-{nodes}` (underlay 192.168.77.i, podCIDR 10.244.i.0/24, not
    /// yet annotated) inside `lab`'s underlay, where its etcd would be, and points the lab's
    /// agents at it (`LabDatastore::Kubernetes`).
    pub fn for_lab(lab: &mut control::tooling::lab::Lab, nodes: u8) -> ApiServer {
        let api = ApiServer::start_in(
            lab.underlay(),
            control::tooling::lab::ETCD_IP,
            (1..=nodes)
                .map(|i| {
                    node_json(
                        &format!("node-{i}"),
                        &format!("192.168.77.{i}"),
                        Some(&format!("10.244.{i}.0/24")),
                        None,
                    )
                })
                .collect(),
        );
        lab.datastore = control::tooling::lab::LabDatastore::Kubernetes {
            kubeconfig: api.kubeconfig(lab.dir()),
        };
        api
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Writes a kubeconfig pointing at the server (plain HTTP, a bearer token) into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("kubeconfig-{}", self.addr.port()));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\nusers:\n- name: test\n  user:\n    token: test-token\n",
                self.addr
            ),
        )
        .expect("write kubeconfig");
        path
    }

    /// Applies a change as the API server would and sends it to every watch of the object's
    /// collection (by its `kind`; a Node without one): `ADDED` and `MODIFIED` replace (or add)
    /// the object, `DELETED` removes it.
    pub fn event(&self, kind: &str, obj: Value) {
        self.events(vec![(kind, obj)]);
    }

    /// [`ApiServer::event`] for several changes at once: no request sees some of them only.
    pub fn events(&self, changes: Vec<(&str, Value)>) {
        let mut st = self.state.store.lock().expect("lock");
        for (kind, obj) in changes {
            st.apply(kind, obj);
        }
    }

    /// Takes the server down (every request 503, open watches closed) or back up. Changes
    /// made while down are kept, for the clients' relists and replays.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::Relaxed);
        if down {
            self.state.store.lock().expect("lock").watchers.clear();
        }
    }

    /// Waits until at least one watch is open.
    pub fn wait_for_watch(&self, timeout: Duration) {
        self.wait_for_watches(1, timeout);
    }

    /// Waits until at least `n` watches are open.
    pub fn wait_for_watches(&self, n: usize, timeout: Duration) {
        let t = Instant::now();
        while self.state.store.lock().expect("lock").watchers.len() < n {
            assert!(
                t.elapsed() < timeout,
                "fewer than {n} watches opened within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The objects of `kind` as stored now.
    pub fn objects(&self, kind: &str) -> Vec<Value> {
        let st = self.state.store.lock().expect("lock");
        st.objects
            .get(collection_of(kind))
            .cloned()
            .unwrap_or_default()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// The Node called `name` as stored now.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.state
            .store
            .lock()
            .expect("lock")
            .nodes()
            .iter()
            .find(|n| n["metadata"]["name"] == name)
            .cloned()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut st) = self.state.store.lock() {
            st.watchers.clear();
        }
    }
}

fn respond(s: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    write!(
        s,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        match status {
            200 => "OK",
            503 => "Service Unavailable",
            _ => "Not Found",
        },
        body.len()
    )
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

fn serve_conn(stream: TcpStream, state: &ApiState, stop: &AtomicBool) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
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
        state.requests.lock().expect("lock").push(Recorded {
            method: method.clone(),
            path: path.to_string(),
            content_type: ctype,
            body: body.clone(),
        });
        if state.down.load(Ordering::Relaxed) {
            let body = json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"ServiceUnavailable","code":503,
                              "message": "the test API server is down"}).to_string();
            if respond(&mut out, 503, &body).is_err() {
                return;
            }
            continue;
        }
        let listed = COLLECTIONS.iter().find(|(c, _)| *c == path);
        let r = match (method.as_str(), listed) {
            ("GET", Some(&(collection, _))) if query_param(query, "watch") == Some("true") => {
                let from: u64 = query_param(query, "resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let (tx, rx) = channel();
                {
                    // Replay and register under one lock: no change falls between them.
                    let mut st = state.store.lock().expect("lock");
                    for (rv, c, line) in &st.history {
                        if *rv > from && *c == collection {
                            let _ = tx.send(line.clone());
                        }
                    }
                    st.watchers.push((collection, tx));
                }
                stream_watch(&mut out, &rx, stop, &state.down);
                return;
            }
            ("GET", Some(&(collection, kind))) => {
                let st = state.store.lock().expect("lock");
                let list = json!({
                    "kind": format!("{kind}List"),
                    "apiVersion": if kind == "NetworkPolicy" { "networking.k8s.io/v1" } else { "v1" },
                    "metadata": {"resourceVersion": st.rv.to_string()},
                    "items": st.objects.get(collection).cloned().unwrap_or_default(),
                });
                drop(st);
                respond(&mut out, 200, &list.to_string())
            }
            (m, None) if path.starts_with("/api/v1/nodes/") => {
                let rest = &path["/api/v1/nodes/".len()..];
                let name = rest.trim_end_matches("/status");
                let mut st = state.store.lock().expect("lock");
                match st
                    .nodes()
                    .iter()
                    .position(|n| n["metadata"]["name"] == name)
                {
                    None => {
                        drop(st);
                        respond(
                            &mut out,
                            404,
                            &json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,
                                    "message": format!("nodes \"{name}\" not found")}).to_string(),
                        )
                    }
                    Some(i) => {
                        let mut n = st.nodes()[i].clone();
                        if m == "PATCH" {
                            // Annotations merge (a strategic merge of a map is a merge); a
                            // condition replaces the one of its type.
                            let patch: Value = serde_json::from_str(&body).unwrap_or_default();
                            if let Some(a) = patch["metadata"]["annotations"].as_object() {
                                for (k, v) in a {
                                    n["metadata"]["annotations"][k] = v.clone();
                                }
                            }
                            if let Some(cs) = patch["status"]["conditions"].as_array() {
                                for c in cs {
                                    let conds = n["status"]["conditions"]
                                        .as_array_mut()
                                        .expect("conditions array");
                                    conds.retain(|x| x["type"] != c["type"]);
                                    conds.push(c.clone());
                                }
                            }
                            n = st.change("/api/v1/nodes", "MODIFIED", n);
                            st.nodes()[i] = n.clone();
                        }
                        drop(st);
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

fn stream_watch(out: &mut TcpStream, rx: &Receiver<String>, stop: &AtomicBool, down: &AtomicBool) {
    if write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .is_err()
    {
        return;
    }
    let _ = out.flush();
    while !stop.load(Ordering::Relaxed) && !down.load(Ordering::Relaxed) {
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
