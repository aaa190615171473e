//! A CNI driver that behaves as a container runtime does through libcni
//! (containernetworking/cni `libcni/api.go`), for the tests and the CNI benchmark.
//!
//! For a configuration list it runs each plugin binary, found by its `type` in the `CNI_PATH`
//! directories, inside the node's network namespace (where a runtime runs), with the spec's
//! environment (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`,
//! `CNI_PATH`) and the plugin's configuration on stdin: the list's `name` and `cniVersion`
//! injected, `runtimeConfig` holding only the capabilities the plugin declares, and `prevResult`
//! chained from plugin to plugin on ADD. CHECK runs in order and DEL in reverse, both with the
//! final ADD result as `prevResult`, as libcni does with its cached result. An error stops the
//! list, as in libcni.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use control::netns::{spawn_in_netns, NetNs};
use serde_json::{json, Map, Value};

/// One plugin run.
#[derive(Debug, Clone)]
pub struct Exec {
    /// The plugin type.
    pub plugin: String,
    /// Exit status (`None`: killed by a signal).
    pub status: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl Exec {
    /// Exit status 0.
    pub fn ok(&self) -> bool {
        self.status == Some(0)
    }

    /// Stdout as JSON (`Value::Null` when empty or not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
    }

    /// The CNI error code on stdout, if the plugin failed with one.
    pub fn code(&self) -> Option<u64> {
        if self.ok() {
            return None;
        }
        self.json().get("code").and_then(Value::as_u64)
    }

    /// The CNI error message on stdout.
    pub fn msg(&self) -> String {
        self.json()
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }
}

impl std::fmt::Display for Exec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} exited {:?}; stdout: {}; stderr: {}",
            self.plugin,
            self.status,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// What a runtime knows about one attachment (libcni's `RuntimeConf`).
#[derive(Debug, Clone)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: the pod's namespace path.
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// Capability arguments (`portMappings`, `bandwidth`, ...), passed as `runtimeConfig` to the
    /// plugins that declare the capability.
    pub capability_args: Map<String, Value>,
}

impl Attachment {
    /// An attachment of `eth0` in `netns` with Kubernetes-style `CNI_ARGS`.
    pub fn new(container_id: &str, netns: &Path) -> Attachment {
        Attachment {
            container_id: container_id.to_string(),
            netns: netns.to_path_buf(),
            ifname: "eth0".into(),
            args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container_id};K8S_POD_INFRA_CONTAINER_ID={container_id}"
            ),
            capability_args: Map::new(),
        }
    }

    /// Adds a capability argument.
    pub fn with_capability(mut self, name: &str, value: Value) -> Attachment {
        self.capability_args.insert(name.to_string(), value);
        self
    }
}

/// A failed list operation: the plugin that failed and its run.
#[derive(Debug, Clone)]
pub struct ListError {
    /// The verb.
    pub command: String,
    /// The failing plugin's run.
    pub exec: Exec,
}

impl std::fmt::Display for ListError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.command, self.exec)
    }
}

impl std::error::Error for ListError {}

/// The driver: a plugin search path and the namespace plugins run in.
#[derive(Debug)]
pub struct Driver {
    cni_path: Vec<PathBuf>,
    ns: NetNs,
}

impl Driver {
    /// A driver running plugins found in `cni_path` inside the namespace at `node_ns`.
    pub fn new(node_ns: &Path, cni_path: Vec<PathBuf>) -> Driver {
        let ns = NetNs::open_path(node_ns).expect("node namespace opens");
        Driver { cni_path, ns }
    }

    /// The plugin binary for `plugin_type`: the first `CNI_PATH` directory that has it.
    pub fn find(&self, plugin_type: &str) -> PathBuf {
        self.cni_path
            .iter()
            .map(|d| d.join(plugin_type))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "CNI plugin {plugin_type:?} is in none of {:?}; install containernetworking-plugins (.ci/run does) and build the workspace bins",
                    self.cni_path
                )
            })
    }

    fn cni_path_var(&self) -> String {
        self.cni_path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Runs one plugin with exactly `env` (on top of the inherited environment, minus any CNI_*
    /// variable) and `stdin`.
    pub fn exec_raw(&self, plugin_type: &str, env: &[(&str, String)], stdin: &[u8]) -> Exec {
        let mut cmd = Command::new(self.find(plugin_type));
        for (k, _) in std::env::vars() {
            if k.starts_with("CNI_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = spawn_in_netns(&mut cmd, &self.ns)
            .unwrap_or_else(|e| panic!("spawn {plugin_type}: {e}"));
        if let Some(mut input) = child.stdin.take() {
            // A plugin that exits without reading (VERSION) closes the pipe; that is fine.
            let _ = input.write_all(stdin);
        }
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("wait for {plugin_type}: {e}"));
        Exec {
            plugin: plugin_type.to_string(),
            status: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        }
    }

    /// The environment libcni sets for `command` on `att`.
    pub fn env(&self, command: &str, att: Option<&Attachment>) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("CNI_COMMAND", command.to_string()),
            ("CNI_PATH", self.cni_path_var()),
        ];
        if let Some(att) = att {
            env.push(("CNI_CONTAINERID", att.container_id.clone()));
            env.push(("CNI_NETNS", att.netns.display().to_string()));
            env.push(("CNI_IFNAME", att.ifname.clone()));
            env.push(("CNI_ARGS", att.args.clone()));
        }
        env
    }

    /// The configuration libcni gives plugin `plugin` of `list` (libcni `buildOneConfig`).
    pub fn plugin_config(
        list: &Value,
        plugin: &Value,
        att: Option<&Attachment>,
        prev: Option<&Value>,
    ) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        if let (Some(att), Some(caps)) =
            (att, plugin.get("capabilities").and_then(Value::as_object))
        {
            let rc: Map<String, Value> = caps
                .iter()
                .filter(|(_, on)| on.as_bool() == Some(true))
                .filter_map(|(cap, _)| {
                    att.capability_args
                        .get(cap)
                        .map(|v| (cap.clone(), v.clone()))
                })
                .collect();
            if !rc.is_empty() {
                conf["runtimeConfig"] = Value::Object(rc);
            }
        }
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    fn plugins(list: &Value) -> Vec<Value> {
        list["plugins"]
            .as_array()
            .cloned()
            .expect("a conflist has a plugins array")
    }

    fn run_one(
        &self,
        command: &str,
        list: &Value,
        plugin: &Value,
        att: Option<&Attachment>,
        prev: Option<&Value>,
        extra: Option<(&str, Value)>,
    ) -> Exec {
        let mut conf = Self::plugin_config(list, plugin, att, prev);
        if let Some((k, v)) = extra {
            conf[k] = v;
        }
        let ty = plugin["type"].as_str().expect("plugin type").to_string();
        let stdin = serde_json::to_vec(&conf).expect("JSON");
        self.exec_raw(&ty, &self.env(command, att), &stdin)
    }

    /// ADD of the whole list; returns the final result.
    pub fn add(&self, list: &Value, att: &Attachment) -> Result<Value, ListError> {
        let mut prev: Option<Value> = None;
        for plugin in Self::plugins(list) {
            let exec = self.run_one("ADD", list, &plugin, Some(att), prev.as_ref(), None);
            if !exec.ok() {
                return Err(ListError {
                    command: "ADD".into(),
                    exec,
                });
            }
            prev = Some(exec.json());
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// CHECK of the whole list, in order, with the ADD result as prevResult.
    pub fn check(&self, list: &Value, att: &Attachment, result: &Value) -> Result<(), ListError> {
        for plugin in Self::plugins(list) {
            let exec = self.run_one("CHECK", list, &plugin, Some(att), Some(result), None);
            if !exec.ok() {
                return Err(ListError {
                    command: "CHECK".into(),
                    exec,
                });
            }
        }
        Ok(())
    }

    /// CHECK of the one plugin of `list` whose type is `plugin_type`, as in [`Driver::check`].
    pub fn check_one(
        &self,
        list: &Value,
        plugin_type: &str,
        att: &Attachment,
        result: &Value,
    ) -> Exec {
        let plugin = Self::plugins(list)
            .into_iter()
            .find(|p| p["type"] == plugin_type)
            .unwrap_or_else(|| panic!("no {plugin_type} in the list"));
        self.run_one("CHECK", list, &plugin, Some(att), Some(result), None)
    }

    /// DEL of the whole list in reverse order, with the ADD result (if known) as prevResult.
    pub fn del(
        &self,
        list: &Value,
        att: &Attachment,
        result: Option<&Value>,
    ) -> Result<(), ListError> {
        for plugin in Self::plugins(list).iter().rev() {
            let exec = self.run_one("DEL", list, plugin, Some(att), result, None);
            if !exec.ok() {
                return Err(ListError {
                    command: "DEL".into(),
                    exec,
                });
            }
        }
        Ok(())
    }

    /// STATUS of every plugin (libcni `GetStatusNetworkList`).
    pub fn status(&self, list: &Value) -> Result<(), ListError> {
        for plugin in Self::plugins(list) {
            let exec = self.run_one("STATUS", list, &plugin, None, None, None);
            if !exec.ok() {
                return Err(ListError {
                    command: "STATUS".into(),
                    exec,
                });
            }
        }
        Ok(())
    }

    /// GC of every plugin with `cni.dev/valid-attachments` = `valid` (libcni `GCNetworkList`).
    pub fn gc(&self, list: &Value, valid: &[(&str, &str)]) -> Result<(), ListError> {
        let valid: Vec<Value> = valid
            .iter()
            .map(|(c, i)| json!({"containerID": c, "ifname": i}))
            .collect();
        for plugin in Self::plugins(list) {
            let exec = self.run_one(
                "GC",
                list,
                &plugin,
                None,
                None,
                Some(("cni.dev/valid-attachments", Value::Array(valid.clone()))),
            );
            if !exec.ok() {
                return Err(ListError {
                    command: "GC".into(),
                    exec,
                });
            }
        }
        Ok(())
    }
}

/// The shipped conflist (`deploy/10-weft.conflist`) with the weft plugin's `socket` set to
/// `socket`.
pub fn shipped_conflist(socket: &Path) -> Value {
    shipped_conflist_named("10-weft.conflist", socket)
}

/// The shipped list `deploy/<name>` (`10-weft.conflist` for switch mode,
/// `10-weft-bridge.conflist` for bridge mode) with weft's socket set to `socket`.
pub fn shipped_conflist_named(name: &str, socket: &Path) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut list: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let plugins = list["plugins"].as_array_mut().expect("plugins");
    let weft = plugins
        .iter_mut()
        .find(|p| p["type"] == "weft")
        .expect("the conflist has the weft plugin");
    weft["socket"] = socket.display().to_string().into();
    list
}

/// A conflist with only the weft plugin, in spec version `version`.
pub fn weft_only(socket: &Path, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "weft",
        "plugins": [{"type": "weft", "socket": socket.display().to_string()}]
    })
}

/// ADDs `att` (whose netns is `ns`) through the real `weft` plugin with conflist `list`; returns
/// the pod and the ADD result.
pub fn attach(
    d: &Driver,
    list: &serde_json::Value,
    att: &Attachment,
    ns: control::netns::NetNs,
) -> (control::tooling::lab::LabPod, serde_json::Value) {
    let res = d.add(list, att).unwrap_or_else(|e| panic!("{e}"));
    let ip: Ipv4Addr = res["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("address");
    let pod = control::tooling::lab::LabPod {
        ns,
        ip,
        host_veth: res["interfaces"][0]["name"]
            .as_str()
            .expect("host veth")
            .to_string(),
    };
    (pod, res)
}
