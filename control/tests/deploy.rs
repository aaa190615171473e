//! What `deploy/` ships, checked against the code it deploys:
//! - every YAML document parses into its typed Kubernetes object (k8s-openapi) and serialises
//!   back to the same tree, so a misspelt field cannot hide;
//! - every volumeMount has its volume, every volume is mounted, and every path the agent shares
//!   with the host (CNI and control sockets, subnet.env, IPAM state) is a hostPath at that path;
//! - the probes hit the agent's health server on its configured port and paths;
//! - the ConfigMap's conflist is `deploy/10-weft.conflist` byte for byte and a valid CNI network
//!   configuration list, and its weftd.toml is a valid configuration;
//! - the ClusterRole grants exactly `datastore::kube::API_CALLS` and `policy::kube::API_CALLS`,
//!   and those lists are exactly what the code in `datastore/kube.rs` and `policy/kube.rs` calls;
//! - the Dockerfile copies only files that exist or that its build stage builds, and the
//!   manifests run binaries the image has;
//! - the systemd unit and the example configs are valid.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use control::config::{Config, Overrides};
use control::datastore::DatastoreKind;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `*.yaml` / `*.yml` under deploy/.
fn manifests() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read deploy/") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }
    let mut v = Vec::new();
    walk(&repo().join("deploy"), &mut v);
    v.sort();
    assert!(
        v.iter().any(|p| p.ends_with("kubernetes/weft.yaml"))
            && v.iter().any(|p| p.ends_with("kubernetes/weft-etcd.yaml")),
        "{v:?}"
    );
    v
}

/// One manifest's documents as typed objects.
#[derive(Debug, Default)]
struct Manifest {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
    daemon_sets: Vec<DaemonSet>,
}

/// Deserialises `doc` as `T` and checks it serialises back to the same tree: k8s-openapi ignores
/// unknown fields, so a typo (`mountpath`) would otherwise pass unnoticed.
fn typed<T: DeserializeOwned + Serialize>(file: &Path, doc: &Value) -> T {
    let t: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{}: {} does not parse: {e}", file.display(), doc["kind"]));
    let back = serde_json::to_value(&t).expect("serialise");
    assert_eq!(
        &back,
        doc,
        "{}: {} {} has fields its type does not know (or wrong types)",
        file.display(),
        doc["kind"],
        doc["metadata"]["name"]
    );
    t
}

fn load(file: &Path) -> Manifest {
    let text = std::fs::read_to_string(file).expect("read manifest");
    let mut m = Manifest::default();
    for de in serde_yaml::Deserializer::from_str(&text) {
        let yaml = serde_yaml::Value::deserialize(de)
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
        if yaml.is_null() {
            continue;
        }
        let doc: Value = serde_json::to_value(&yaml).expect("YAML to JSON");
        match (doc["apiVersion"].as_str(), doc["kind"].as_str()) {
            (Some("v1"), Some("Namespace")) => m.namespaces.push(typed(file, &doc)),
            (Some("v1"), Some("ServiceAccount")) => m.service_accounts.push(typed(file, &doc)),
            (Some("v1"), Some("ConfigMap")) => m.config_maps.push(typed(file, &doc)),
            (Some("v1"), Some("Secret")) => m.secrets.push(typed(file, &doc)),
            (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRole")) => {
                m.cluster_roles.push(typed(file, &doc))
            }
            (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRoleBinding")) => {
                m.bindings.push(typed(file, &doc))
            }
            (Some("apps/v1"), Some("DaemonSet")) => m.daemon_sets.push(typed(file, &doc)),
            other => panic!("{}: unexpected document {other:?}", file.display()),
        }
    }
    m
}

use serde::Deserialize as _;

fn weft_yaml() -> Manifest {
    load(&repo().join("deploy/kubernetes/weft.yaml"))
}

fn weft_etcd_yaml() -> Manifest {
    load(&repo().join("deploy/kubernetes/weft-etcd.yaml"))
}

fn daemon_set(m: &Manifest) -> &DaemonSet {
    assert_eq!(m.daemon_sets.len(), 1);
    &m.daemon_sets[0]
}

fn pod_spec(m: &Manifest) -> &k8s_openapi::api::core::v1::PodSpec {
    daemon_set(m)
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
}

fn container<'a>(m: &'a Manifest, name: &str) -> &'a Container {
    let spec = pod_spec(m);
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn config_map(m: &Manifest) -> &BTreeMap<String, String> {
    assert_eq!(m.config_maps.len(), 1);
    m.config_maps[0].data.as_ref().expect("ConfigMap data")
}

/// The ConfigMap's weftd.toml, validated as `weftd run --node-name` would (NODE_NAME).
fn agent_config(m: &Manifest) -> Config {
    let text = config_map(m).get("weftd.toml").expect("weftd.toml key");
    let path = std::env::temp_dir().join(format!("weft-deploy-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write");
    let cfg = Config::load_with(
        &path,
        &Overrides {
            node_name: Some("node-a".into()),
            ..Overrides::default()
        },
    );
    let _ = std::fs::remove_file(&path);
    cfg.unwrap_or_else(|e| panic!("the ConfigMap's weftd.toml: {e}"))
}

/// The host path mounted at `mount` in `c`, if the volume is a hostPath.
fn host_path_at(m: &Manifest, c: &Container, mount: &Path) -> Option<String> {
    let vm = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|vm| Path::new(&vm.mount_path) == mount)?;
    let vol = pod_spec(m)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == vm.name)?;
    vol.host_path.as_ref().map(|h| h.path.clone())
}

fn both() -> [(&'static str, Manifest); 2] {
    [
        ("weft.yaml", weft_yaml()),
        ("weft-etcd.yaml", weft_etcd_yaml()),
    ]
}

#[test]
fn every_document_in_deploy_parses_into_its_typed_object() {
    for file in manifests() {
        let m = load(&file);
        assert_eq!(m.namespaces.len(), 1, "{}", file.display());
        assert_eq!(m.service_accounts.len(), 1, "{}", file.display());
        assert_eq!(m.daemon_sets.len(), 1, "{}", file.display());
    }
}

#[test]
fn every_volume_mount_has_its_volume_and_every_volume_is_mounted() {
    for (name, m) in both() {
        let spec = pod_spec(&m);
        let volumes: BTreeSet<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        let mut used = BTreeSet::new();
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            for vm in c.volume_mounts.iter().flatten() {
                assert!(
                    volumes.contains(vm.name.as_str()),
                    "{name}: container {} mounts {}, which is not a volume ({volumes:?})",
                    c.name,
                    vm.name
                );
                used.insert(vm.name.as_str());
            }
        }
        let unused: Vec<_> = volumes.difference(&used).collect();
        assert!(
            unused.is_empty(),
            "{name}: volumes never mounted: {unused:?}"
        );
    }
}

#[test]
fn probes_hit_the_agents_health_endpoints_on_its_port() {
    use control::health::respond;
    use control::metrics::Metrics;
    use std::sync::atomic::Ordering;
    for (name, m) in both() {
        let cfg = agent_config(&m);
        let listen = cfg.health.listen.expect("health server on");
        assert_eq!(
            listen.port(),
            control::config::DEFAULT_HEALTH_LISTEN
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .expect("default port"),
            "{name}: the manifests keep the agent's default health port"
        );
        assert!(
            listen.ip().is_unspecified(),
            "{name}: kubelet probes the node's address"
        );
        assert_eq!(pod_spec(&m).host_network, Some(true), "{name}");
        let c = container(&m, "weftd");
        let probe_of = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            let get = p
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .unwrap_or_else(|| panic!("{name}: httpGet probe missing"));
            assert_eq!(
                get.port,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(
                    listen.port()
                )),
                "{name}"
            );
            get.path.clone().expect("probe path")
        };
        let live = probe_of(&c.liveness_probe);
        let ready = probe_of(&c.readiness_probe);
        // Liveness: 200 from the start. Readiness: 503 until the agent is ready, then 200.
        let metrics = Arc::new(Metrics::new());
        assert_eq!(respond(&live, &metrics).0, 200, "{name}: {live}");
        assert_eq!(respond(&ready, &metrics).0, 503, "{name}: {ready}");
        metrics.lease_held.store(true, Ordering::Relaxed);
        metrics.tables_programmed.store(true, Ordering::Relaxed);
        metrics.subnet_env_written.store(true, Ordering::Relaxed);
        assert_eq!(respond(&ready, &metrics).0, 200, "{name}: {ready}");
    }
}

#[test]
fn the_configmaps_conflist_is_the_shipped_one_and_a_valid_conflist() {
    let shipped = read("deploy/10-weft.conflist");
    for (name, m) in both() {
        let data = config_map(&m);
        let conflist = data.get("10-weft.conflist").expect("10-weft.conflist key");
        assert_eq!(
            conflist, &shipped,
            "{name}: differs from deploy/10-weft.conflist"
        );
        let list = control::install_cni::check_conflist(conflist)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // The plugin talks to the socket the agent serves.
        let cfg = agent_config(&m);
        assert_eq!(
            list["plugins"][0]["socket"].as_str().map(PathBuf::from),
            Some(cfg.cni.socket.clone()),
            "{name}"
        );
        // The init container installs exactly this file, from the ConfigMap's mount.
        let init = container(&m, "install-cni");
        let args: Vec<&str> = init
            .command
            .iter()
            .flatten()
            .chain(init.args.iter().flatten())
            .map(String::as_str)
            .collect();
        assert_eq!(args[..2], ["/usr/local/bin/weftd", "install-cni"], "{name}");
        let flag = |f: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("--{f}=")))
                .unwrap_or_else(|| panic!("{name}: install-cni --{f}"))
        };
        let conflist_path = Path::new(flag("conflist"));
        let mount = init
            .volume_mounts
            .iter()
            .flatten()
            .find(|vm| conflist_path.starts_with(&vm.mount_path))
            .expect("the conflist's mount");
        let vol = pod_spec(&m)
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .expect("volume");
        assert_eq!(
            vol.config_map.as_ref().map(|c| c.name.as_str()),
            m.config_maps[0].metadata.name.as_deref(),
            "{name}"
        );
        assert_eq!(
            conflist_path.file_name().and_then(|f| f.to_str()),
            Some("10-weft.conflist")
        );
        // ... into the host's CNI directories.
        for (f, host) in [
            ("bin-dir", control::install_cni::DEFAULT_BIN_DIR),
            ("conf-dir", control::install_cni::DEFAULT_CONF_DIR),
        ] {
            assert_eq!(
                host_path_at(&m, init, Path::new(flag(f))).as_deref(),
                Some(host),
                "{name}: --{f}"
            );
        }
    }
}

#[test]
fn the_agents_config_is_valid_and_what_it_shares_with_the_host_is_mounted_there() {
    for (name, m) in both() {
        let cfg = agent_config(&m);
        let want = if name == "weft.yaml" {
            DatastoreKind::Kubernetes
        } else {
            DatastoreKind::Etcd
        };
        assert_eq!(cfg.datastore.kind, want, "{name}");
        let c = container(&m, "weftd");
        // The CNI plugin (run by the runtime on the host), weftctl on the host and tools reading
        // subnet.env see these paths; IPAM state must outlive the container.
        let shared = [
            cfg.cni.socket.parent().expect("dir").to_path_buf(),
            cfg.dataplane
                .control_socket
                .parent()
                .expect("dir")
                .to_path_buf(),
            cfg.datastore
                .subnet_file
                .parent()
                .expect("dir")
                .to_path_buf(),
            cfg.cni.data_dir.clone(),
        ];
        for dir in shared {
            assert_eq!(
                host_path_at(&m, c, &dir).as_deref(),
                Some(dir.to_str().expect("utf-8")),
                "{name}: {} must be a hostPath mounted at the same path",
                dir.display()
            );
        }
        assert_eq!(
            host_path_at(&m, c, Path::new("/dev/net/tun")).as_deref(),
            Some("/dev/net/tun"),
            "{name}"
        );
        // Files the config names inside the ConfigMap's mount exist as its keys.
        let data = config_map(&m);
        let cfg_mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|vm| vm.name == "weft-cfg")
            .expect("ConfigMap mount");
        let run_args: Vec<&str> = c.command.iter().flatten().map(String::as_str).collect();
        let config_flag = run_args
            .iter()
            .find_map(|a| a.strip_prefix("--config="))
            .expect("--config");
        let in_cfg = |p: &Path| {
            let rel = p
                .strip_prefix(&cfg_mount.mount_path)
                .unwrap_or_else(|_| panic!("{name}: {} outside the ConfigMap", p.display()));
            assert!(
                data.contains_key(rel.to_str().expect("utf-8")),
                "{name}: no key {}",
                rel.display()
            );
        };
        in_cfg(Path::new(config_flag));
        if let Some(nc) = &cfg.datastore.kubernetes.net_conf {
            in_cfg(nc);
            let text = data
                .get(nc.file_name().and_then(|f| f.to_str()).expect("name"))
                .expect("net-conf.json");
            let net = control::datastore::flannel::NetworkConfig::parse(text)
                .unwrap_or_else(|e| panic!("{name}: net-conf.json: {e}"));
            assert_eq!(net.backend.port, control::config::DEFAULT_PORT);
        }
        // etcd TLS files come from the Secret's mount.
        for f in [
            &cfg.datastore.etcd.ca_file,
            &cfg.datastore.etcd.cert_file,
            &cfg.datastore.etcd.key_file,
        ]
        .into_iter()
        .flatten()
        {
            let vm = c
                .volume_mounts
                .iter()
                .flatten()
                .filter(|vm| f.starts_with(&vm.mount_path))
                .max_by_key(|vm| vm.mount_path.len())
                .unwrap_or_else(|| panic!("{name}: {} is on no mount", f.display()));
            let vol = pod_spec(&m)
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == vm.name)
                .expect("volume");
            assert!(
                vol.secret.is_some(),
                "{name}: {} not from a Secret",
                f.display()
            );
        }
    }
}

#[test]
fn the_daemon_set_is_what_a_flannel_operator_expects() {
    for (name, m) in both() {
        let ds = daemon_set(&m);
        let spec = ds.spec.as_ref().expect("spec");
        let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "{name}");
        assert_eq!(
            strategy
                .rolling_update
                .as_ref()
                .and_then(|r| r.max_unavailable.clone()),
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)),
            "{name}"
        );
        let pod = pod_spec(&m);
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-node-critical")
        );
        let tolerates_all = |effect: &str| {
            pod.tolerations.iter().flatten().any(|t| {
                t.operator.as_deref() == Some("Exists")
                    && t.key.is_none()
                    && t.effect.as_deref() == Some(effect)
            })
        };
        assert!(
            tolerates_all("NoSchedule") && tolerates_all("NoExecute"),
            "{name}"
        );
        // The pod's service account and namespace are the manifest's own.
        let ns = m.namespaces[0].metadata.name.as_deref();
        assert_eq!(ds.metadata.namespace.as_deref(), ns, "{name}");
        assert_eq!(
            pod.service_account_name.as_deref(),
            m.service_accounts[0].metadata.name.as_deref()
        );
        let c = container(&m, "weftd");
        let caps: BTreeSet<&str> = c
            .security_context
            .as_ref()
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.add.as_ref())
            .expect("capabilities")
            .iter()
            .map(String::as_str)
            .collect();
        for cap in ["NET_ADMIN", "NET_RAW"] {
            assert!(caps.contains(cap), "{name}: {cap}");
        }
        let req = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .expect("resource requests");
        assert!(
            req.contains_key("cpu") && req.contains_key("memory"),
            "{name}"
        );
        let node_name = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "NODE_NAME")
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(node_name, Some("spec.nodeName"), "{name}");
        assert_eq!(container(&m, "install-cni").image, c.image, "{name}");
    }
}

/// The API group of each resource the agent uses.
fn api_group(resource: &str) -> &'static str {
    match resource {
        "networkpolicies" => "networking.k8s.io",
        _ => "",
    }
}

/// `(resource, verb)` pairs a ClusterRole grants; wildcards, and resources granted in another
/// API group than their own, are refused.
fn grants(role: &ClusterRole) -> BTreeSet<(String, String)> {
    let mut set = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for r in rule.resources.iter().flatten() {
            let group = r.split('/').next().map_or("", api_group);
            assert_eq!(
                rule.api_groups.as_deref(),
                Some(&[group.to_string()][..]),
                "{r} is granted in another API group than {group:?}"
            );
            for v in &rule.verbs {
                assert!(r != "*" && v != "*", "no wildcards");
                set.insert((r.clone(), v.clone()));
            }
        }
    }
    set
}

/// The two files that call the Kubernetes API, with the calls each declares.
const API_FILES: [(&str, &[(&str, &str)]); 2] = [
    ("datastore/kube.rs", control::datastore::kube::API_CALLS),
    ("policy/kube.rs", control::policy::kube::API_CALLS),
];

fn api_calls() -> BTreeSet<(String, String)> {
    API_FILES
        .iter()
        .flat_map(|(_, calls)| calls.iter())
        .map(|(r, v)| (r.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_cluster_role_grants_exactly_the_agents_api_calls() {
    let m = weft_yaml();
    assert_eq!(m.cluster_roles.len(), 1);
    assert_eq!(grants(&m.cluster_roles[0]), api_calls());
    // Bound to the DaemonSet's service account.
    assert_eq!(m.bindings.len(), 1);
    let b = &m.bindings[0];
    assert_eq!(b.role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(&b.role_ref.name),
        m.cluster_roles[0].metadata.name.as_ref()
    );
    let subject = &b.subjects.as_ref().expect("subjects")[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(
        Some(&subject.name),
        pod_spec(&m).service_account_name.as_ref()
    );
    assert_eq!(
        subject.namespace.as_ref(),
        m.service_accounts[0].metadata.namespace.as_ref()
    );
    // etcd mode makes no API call: no role, no token.
    let e = weft_etcd_yaml();
    assert!(e.cluster_roles.is_empty() && e.bindings.is_empty());
    assert_eq!(
        e.service_accounts[0].automount_service_account_token,
        Some(false)
    );
}

/// The API calls `datastore/kube.rs` and `policy/kube.rs` make, read from their source: the
/// methods called on each `Api<...>` value and the watchers started on one, as RBAC pairs,
/// compared with each file's `API_CALLS`. Any other file of the agent that touches the API fails
/// the test, so the lists cannot miss a call made elsewhere.
#[test]
fn api_calls_is_what_the_code_calls() {
    let src_dir = repo().join("control/src");
    let mut files = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    walk(&src_dir, &mut files);
    let api_files: Vec<PathBuf> = API_FILES.iter().map(|(f, _)| src_dir.join(f)).collect();
    for f in &files {
        if api_files.contains(f) {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("read");
        for needle in ["Api<", "Api::all", "Api::namespaced", "watcher::watcher("] {
            assert!(
                !text.contains(needle),
                "{} uses the Kubernetes API ({needle}); move it to datastore/kube.rs or policy/kube.rs, or teach this test",
                f.display()
            );
        }
    }
    for ((name, declared), path) in API_FILES.iter().zip(&api_files) {
        let derived = calls_in(path);
        let declared: BTreeSet<(String, String)> = declared
            .iter()
            .map(|(r, v)| (r.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            derived, declared,
            "API_CALLS of {name} and the calls in it differ"
        );
    }
}

/// The RBAC pairs the code of one file calls (see [`api_calls_is_what_the_code_calls`]).
fn calls_in(path: &Path) -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(path).expect("read an API file");
    // Strip comments so prose does not count.
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let binding = regex::Regex::new(r"let\s+(\w+)\s*:\s*Api<(\w+)>").expect("regex");
    let mut derived = BTreeSet::new();
    let mut vars = 0;
    let fn_start = regex::Regex::new(r"\n\s*(pub )?(async )?fn ").expect("regex");
    for cap in binding.captures_iter(&code) {
        vars += 1;
        let (var, kind) = (&cap[1], &cap[2]);
        // The binding's scope: from it to the end of its function.
        let after = &code[cap.get(0).expect("match").end()..];
        let scope = &after[..fn_start.find(after).map_or(after.len(), |m| m.start())];
        let resource = match kind {
            "Node" => "nodes",
            "Pod" => "pods",
            "Namespace" => "namespaces",
            "NetworkPolicy" => "networkpolicies",
            other => panic!(
                "{} uses Api<{other}>: add its resource to this test",
                path.display()
            ),
        };
        let call = regex::Regex::new(&format!(r"\b{var}\s*\.\s*(\w+)\s*\(")).expect("regex");
        for c in call.captures_iter(scope) {
            let (sub, verb) = match &c[1] {
                "get" | "get_opt" => ("", "get"),
                "get_status" => ("/status", "get"),
                "list" => ("", "list"),
                "watch" => ("", "watch"),
                "patch" => ("", "patch"),
                "patch_status" => ("/status", "patch"),
                "replace" => ("", "update"),
                "replace_status" => ("/status", "update"),
                "create" => ("", "create"),
                "delete" => ("", "delete"),
                "clone" => continue,
                other => panic!(
                    "{} calls {var}.{other}(): map it to an RBAC verb here",
                    path.display()
                ),
            };
            derived.insert((format!("{resource}{sub}"), verb.to_string()));
        }
        let watcher = regex::Regex::new(&format!(r"watcher::watcher\(\s*{var}\b")).expect("regex");
        if watcher.is_match(scope) {
            derived.insert((resource.to_string(), "list".to_string()));
            derived.insert((resource.to_string(), "watch".to_string()));
        }
    }
    assert!(
        vars >= 2,
        "found {vars} Api bindings in {}; has the code moved?",
        path.display()
    );
    derived
}

/// The Dockerfile's instructions, continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let text = read("deploy/Dockerfile");
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || (l.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(head) = l.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
            continue;
        }
        cur.push_str(l);
        let (ins, rest) = cur.split_once(' ').unwrap_or((&cur, ""));
        out.push((ins.to_uppercase(), rest.trim().to_string()));
        cur.clear();
    }
    out
}

/// Binary targets per package, from `cargo metadata`.
fn bins_of_packages() -> BTreeMap<String, BTreeSet<String>> {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(repo())
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let mut map = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let bins = p["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .filter(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
            })
            .map(|t| t["name"].as_str().expect("name").to_string())
            .collect();
        map.insert(p["name"].as_str().expect("name").to_string(), bins);
    }
    map
}

#[test]
fn the_dockerfile_copies_only_what_exists_or_is_built() {
    let ins = dockerfile();
    let ignore = read(".dockerignore");
    assert!(
        ignore
            .lines()
            .any(|l| l.trim() == "target/" || l.trim() == "target"),
        ".dockerignore must leave out target/ (a host build would be copied into the context)"
    );
    let bins = bins_of_packages();
    let mut stage = String::new();
    let mut workdir = String::from("/");
    let mut built: BTreeSet<String> = BTreeSet::new();
    let mut image: BTreeSet<String> = BTreeSet::new();
    let mut stages = 0;
    for (i, rest) in &ins {
        match i.as_str() {
            "FROM" => {
                stages += 1;
                stage = rest
                    .split_once(" AS ")
                    .or_else(|| rest.split_once(" as "))
                    .map(|(_, s)| s.trim().to_string())
                    .unwrap_or_default();
            }
            "WORKDIR" => workdir = rest.clone(),
            "RUN" if rest.contains("cargo build") => {
                assert!(rest.contains("--release"), "{rest}");
                let words: Vec<&str> = rest.split_whitespace().collect();
                for w in words.windows(2).filter(|w| w[0] == "-p") {
                    for b in bins
                        .get(w[1])
                        .unwrap_or_else(|| panic!("no package {}", w[1]))
                    {
                        built.insert(format!("{workdir}/target/release/{b}"));
                    }
                }
            }
            "COPY" => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                let (from, paths): (Option<&str>, Vec<&str>) =
                    match parts[0].strip_prefix("--from=") {
                        Some(f) => (Some(f), parts[1..].to_vec()),
                        None => (None, parts),
                    };
                let (dst, srcs) = paths.split_last().expect("COPY src dst");
                for src in srcs {
                    match from {
                        Some(f) => {
                            assert_eq!(f, "build");
                            assert!(
                                built.contains(*src),
                                "COPY --from=build {src}: the build stage builds {built:?}"
                            );
                            let name = Path::new(src).file_name().expect("name");
                            image.insert(format!(
                                "{}/{}",
                                dst.trim_end_matches('/'),
                                name.to_str().expect("utf-8")
                            ));
                        }
                        None if *src == "." => {}
                        None => {
                            assert!(
                                repo().join(src).exists(),
                                "COPY {src}: not in the repository"
                            );
                            assert!(
                                !src.starts_with("target"),
                                "COPY {src}: excluded by .dockerignore"
                            );
                        }
                    }
                }
                let _ = &stage;
            }
            _ => {}
        }
    }
    assert_eq!(stages, 2, "multi-stage: build, then runtime");
    // What the manifests run is in the image.
    for (name, m) in both() {
        for c in ["weftd", "install-cni"] {
            let cmd = &container(&m, c).command.as_ref().expect("command")[0];
            assert!(
                image.contains(cmd),
                "{name}: {c} runs {cmd}; the image has {image:?}"
            );
        }
        let init = container(&m, "install-cni");
        let plugin = init
            .command
            .iter()
            .flatten()
            .find_map(|a| a.strip_prefix("--plugin="))
            .expect("--plugin");
        assert!(image.contains(plugin), "{name}: {plugin} not in the image");
    }
    assert!(image.contains("/usr/local/bin/weftctl"));
}

#[test]
fn the_systemd_unit_and_the_example_configs_are_valid() {
    let unit = read("deploy/systemd/weftd.service");
    let mut section = "";
    let mut keys: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        keys.entry((section.to_string(), k.to_string()))
            .or_default()
            .push(v.to_string());
    }
    let get = |s: &str, k: &str| keys.get(&(s.to_string(), k.to_string())).cloned();
    let start = get("[Service]", "ExecStart").expect("ExecStart")[0].clone();
    let words: Vec<&str> = start.split_whitespace().collect();
    assert_eq!(words[..2], ["/usr/local/bin/weftd", "run"]);
    let pre = get("[Service]", "ExecStartPre").expect("ExecStartPre")[0].clone();
    assert!(pre.ends_with("weftd install-cni"), "{pre}");
    assert_eq!(
        get("[Service]", "Restart"),
        Some(vec!["always".to_string()])
    );
    assert!(get("[Install]", "WantedBy").is_some());
    let caps = get("[Service]", "CapabilityBoundingSet").expect("caps")[0].clone();
    for cap in ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN"] {
        assert!(caps.contains(cap), "{cap}");
    }
    // The etcd example is what the unit reads once copied; the full example documents defaults.
    let etcd = Config::load(repo().join("deploy/systemd/weftd-etcd.toml")).expect("etcd example");
    assert_eq!(etcd.datastore.kind, DatastoreKind::Etcd);
    Config::load(repo().join("deploy/weftd.example.toml")).expect("full example");
}

#[test]
fn install_cni_is_atomic_idempotent_and_checks_first() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("weft-install-cni-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tmp");
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let plugin = dir.join("weft-src");
    std::fs::write(&plugin, b"#!/bin/sh\nexit 0\n").expect("plugin");
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = dir.join("opt/cni/bin");
    let conf = dir.join("etc/cni/net.d");
    let run_with = |plugin: &Path, extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weftd"))
            .arg("install-cni")
            .arg(format!("--plugin={}", plugin.display()))
            .arg(format!("--bin-dir={}", bin.display()))
            .arg(format!("--conf-dir={}", conf.display()))
            .args(extra)
            .output()
            .expect("run weftd install-cni");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let run = |extra: &[&str]| run_with(&plugin, extra);
    let (code, out, err) = run(&[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.matches("installed").count(), 2, "{out}");
    let installed = bin.join("weft");
    assert_eq!(
        std::fs::read(&installed).expect("plugin"),
        std::fs::read(&plugin).expect("src")
    );
    assert_eq!(
        std::fs::metadata(&installed)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    let conflist = conf.join("10-weft.conflist");
    assert_eq!(
        std::fs::read_to_string(&conflist).expect("conflist"),
        read("deploy/10-weft.conflist"),
        "the built-in conflist is the shipped one"
    );
    assert_eq!(
        std::fs::metadata(&conflist)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
    // Again: nothing changes, nothing is left behind.
    let (code, out, _) = run(&[]);
    assert_eq!(code, Some(0));
    assert_eq!(out.matches("unchanged").count(), 2, "{out}");
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .expect("dir")
            .map(|e| e.expect("e").file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&bin), ["weft"]);
    assert_eq!(names(&conf), ["10-weft.conflist"]);
    // A bad conflist: a clear error, nothing written.
    std::fs::remove_file(&conflist).expect("rm");
    let bad = dir.join("bad.conflist");
    std::fs::write(
        &bad,
        r#"{"name":"weft","cniVersion":"1.0.0","plugins":[{"type":"portmap"}]}"#,
    )
    .expect("bad");
    let (code, _, err) = run(&[&format!("--conflist={}", bad.display())]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("bad.conflist") && err.contains("exactly one"),
        "{err}"
    );
    assert_eq!(names(&conf), Vec::<String>::new());
    // A missing plugin names the path.
    let (code, _, err) = run_with(Path::new("/nonexistent/weft"), &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent/weft"), "{err}");
    // A config that sorts first (a previous CNI's) is reported.
    std::fs::write(conf.join("05-flannel.conflist"), "{}").expect("flannel");
    let (code, _, err) = run(&[]);
    assert_eq!(code, Some(0));
    assert!(
        err.contains("05-flannel.conflist") && err.contains("warning"),
        "{err}"
    );
}

#[test]
fn the_configuration_doc_lists_every_option_with_its_default() {
    let doc = read("docs/configuration.md");
    let cfg = Config::from_toml_str("[node]\nname = \"a\"\nsubnet = \"10.244.1.0/24\"\n")
        .expect("minimal config");
    let printed: toml::Table = toml::from_str(&cfg.to_toml_string()).expect("--print-config");
    fn flatten(prefix: &str, t: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
        for (k, v) in t {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(t) => flatten(&path, t, out),
                v => out.push((path, v.clone())),
            }
        }
    }
    let mut options = Vec::new();
    flatten("", &printed, &mut options);
    assert!(options.len() > 20, "{options:?}");
    for (path, value) in options {
        let line = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{path}` |")))
            .unwrap_or_else(|| panic!("docs/configuration.md has no row for `{path}`"));
        if ["node.name", "node.subnet"].contains(&path.as_str()) {
            continue;
        }
        assert!(
            line.contains(&format!("`{value}`")),
            "docs/configuration.md: `{path}` should show the default `{value}`: {line}"
        );
    }
    // And every key the annotated example sets is documented.
    let example: toml::Table =
        toml::from_str(&read("deploy/weftd.example.toml")).expect("example TOML");
    let mut keys = Vec::new();
    flatten("", &example, &mut keys);
    for (path, _) in keys {
        // [[peers]] is an array of tables, documented in its own section.
        let path = if path == "peers" {
            "peers.name".to_string()
        } else {
            path
        };
        assert!(
            doc.contains(&format!("`{path}`")),
            "docs/configuration.md lacks `{path}`"
        );
    }
}

#[test]
fn relative_links_in_the_docs_resolve() {
    let link = regex::Regex::new(r"\]\(([^)#:]+)(#[^)]*)?\)").expect("regex");
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.push(repo().join("README.md"));
    for doc in docs {
        let text = std::fs::read_to_string(&doc).expect("read");
        for cap in link.captures_iter(&text) {
            let target = doc.parent().expect("dir").join(&cap[1]);
            assert!(
                target.exists(),
                "{}: link to {} does not resolve",
                doc.display(),
                &cap[1]
            );
        }
    }
}

/// The typed round trip of [`load`] is what catches a misspelt field: k8s-openapi alone would
/// ignore it.
#[test]
fn a_misspelt_field_fails_the_manifest_check() {
    let text = read("deploy/kubernetes/weft.yaml");
    let bad = text.replacen("mountPath: /dev/net/tun", "mountpath: /dev/net/tun", 1);
    assert_ne!(bad, text);
    let path = std::env::temp_dir().join(format!("weft-bad-{}.yaml", std::process::id()));
    std::fs::write(&path, bad).expect("write");
    let result = std::panic::catch_unwind(|| load(&path));
    let _ = std::fs::remove_file(&path);
    assert!(result.is_err(), "a misspelt mountPath went unnoticed");
}
