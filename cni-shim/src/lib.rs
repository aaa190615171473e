//! The `weft` CNI plugin and the CNI types it shares with the node agent.
//!
//! The plugin is a thin shim (the issue's contract, and Calico's and Cilium's design): it checks
//! what it can check alone — the environment, the JSON on stdin, the `cniVersion` — answers
//! VERSION itself, and forwards every other verb over the agent's unix socket ([`wire`]), printing
//! the agent's result or error. The agent (`control::cni`) does the plumbing and the IPAM. So the
//! plugin needs no async runtime and no netlink: it starts in about a millisecond.
//!
//! [`spec`] holds the CNI types; [`run`] is the whole plugin, with the process environment and
//! stdin passed in so tests can drive it.
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::Path;

pub mod spec;
pub mod wire;

use spec::{code, CniError, CniVersion, Command, Invocation, NetConf};

/// The agent's CNI socket when the network configuration names none.
pub const DEFAULT_SOCKET: &str = "/run/weft/cni.sock";

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Standard output: a result, an error object, or nothing.
    pub stdout: String,
    /// Exit status: 0 on success, 1 with an error object on stdout.
    pub exit: u8,
}

impl Outcome {
    fn ok(json: Option<&serde_json::Value>) -> Outcome {
        Outcome {
            stdout: json.map(pretty).unwrap_or_default(),
            exit: 0,
        }
    }

    fn error(e: &CniError, version: CniVersion) -> Outcome {
        Outcome {
            stdout: pretty(&e.to_json(version)),
            exit: 1,
        }
    }
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

/// The version an error is stamped with: the configuration's when it is one Weft speaks.
fn error_version(stdin: &str) -> CniVersion {
    serde_json::from_str::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().and_then(CniVersion::parse))
        .unwrap_or(spec::LATEST)
}

/// Runs the plugin: `var` reads the environment, `stdin` is the network configuration.
pub fn run(var: impl Fn(&str) -> Option<String>, stdin: &mut dyn Read) -> Outcome {
    // VERSION needs nothing but the verb (its stdin, `{"cniVersion": ...}`, may be absent).
    if var("CNI_COMMAND").as_deref() == Some("VERSION") {
        return Outcome::ok(Some(&spec::version_info()));
    }
    let mut text = String::new();
    if let Err(e) = stdin.read_to_string(&mut text) {
        let err = CniError::new(
            code::IO_FAILURE,
            format!("cannot read the network configuration from stdin: {e}"),
        );
        return Outcome::error(&err, spec::LATEST);
    }
    let version = error_version(&text);
    let env = match Invocation::from_env(&var) {
        Ok(env) => env,
        Err(e) => return Outcome::error(&e, version),
    };
    if env.command == Command::Version {
        return Outcome::ok(Some(&spec::version_info()));
    }
    let config: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) => {
            // NetConf::parse words the decode error.
            let e = NetConf::parse(&text).err().unwrap_or_else(|| {
                CniError::new(code::DECODE, "the network configuration is not JSON")
            });
            return Outcome::error(&e, version);
        }
    };
    let conf = match NetConf::from_value(&config) {
        Ok(c) => c,
        Err(e) => return Outcome::error(&e, version),
    };
    let socket = conf.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into());
    let status = env.command == Command::Status;
    let request = wire::Request { env, config };
    match wire::call(Path::new(&socket), &request) {
        Ok(wire::Reply::Ok(result)) => Outcome::ok(result.as_ref()),
        Ok(wire::Reply::Error(e)) => Outcome::error(&e, conf.cni_version),
        Err(mut e) => {
            // For STATUS an absent agent is the spec's "plugin not available" (50), which is
            // what a runtime turns into the node's NetworkReady=false.
            if status && e.code == code::TRY_AGAIN_LATER {
                e.code = code::NOT_AVAILABLE;
            }
            Outcome::error(&e, conf.cni_version)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::time::{Duration, Instant};

    use super::*;

    fn env(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    fn add_env() -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", "ADD".into()),
            ("CNI_CONTAINERID", "c1".into()),
            ("CNI_NETNS", "/var/run/netns/c1".into()),
            ("CNI_IFNAME", "eth0".into()),
        ]
    }

    fn parse(o: &Outcome) -> serde_json::Value {
        serde_json::from_str(&o.stdout).expect("stdout is JSON")
    }

    #[test]
    fn version_is_answered_locally() {
        let o = run(
            env(vec![("CNI_COMMAND", "VERSION".into())]),
            &mut "".as_bytes(),
        );
        assert_eq!(o.exit, 0);
        assert_eq!(parse(&o), spec::version_info());
    }

    #[test]
    fn malformed_stdin_is_a_decode_error() {
        let o = run(env(add_env()), &mut "{\"cniVersion\": ".as_bytes());
        assert_eq!(o.exit, 1);
        assert_eq!(parse(&o)["code"], code::DECODE);
    }

    #[test]
    fn env_errors_carry_the_config_version() {
        let o = run(
            env(vec![("CNI_COMMAND", "ADD".into())]),
            &mut r#"{"cniVersion":"0.4.0","name":"n","type":"weft"}"#.as_bytes(),
        );
        let v = parse(&o);
        assert_eq!((o.exit, v["code"].as_u64()), (1, Some(4)));
        assert_eq!(v["cniVersion"], "0.4.0");
    }

    fn unique_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("weft-shim-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn missing_agent_is_try_again_later_at_once() {
        let dir = unique_dir("missing");
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","type":"weft","socket":"{}/none.sock"}}"#,
            dir.display()
        );
        let start = Instant::now();
        let o = run(env(add_env()), &mut conf.as_bytes());
        assert!(start.elapsed() < Duration::from_secs(1));
        let v = parse(&o);
        assert_eq!(v["code"], code::TRY_AGAIN_LATER);
        assert!(
            v["msg"]
                .as_str()
                .unwrap_or_default()
                .contains("does not exist"),
            "{v}"
        );
        assert!(
            v["details"].as_str().unwrap_or_default().contains("[cni]"),
            "{v}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn status_without_agent_is_not_available() {
        let dir = unique_dir("status");
        let conf = format!(
            r#"{{"cniVersion":"1.1.0","name":"n","type":"weft","socket":"{}/none.sock"}}"#,
            dir.display()
        );
        let o = run(
            env(vec![("CNI_COMMAND", "STATUS".into())]),
            &mut conf.as_bytes(),
        );
        assert_eq!((o.exit, parse(&o)["code"].as_u64()), (1, Some(50)));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn hung_agent_is_try_again_later_within_a_second() {
        let dir = unique_dir("hung");
        let path = dir.join("hung.sock");
        // Listening but never accepting: the kernel completes the connection, nobody answers.
        let _listener = UnixListener::bind(&path).expect("bind");
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","type":"weft","socket":"{}"}}"#,
            path.display()
        );
        let start = Instant::now();
        let o = run(env(add_env()), &mut conf.as_bytes());
        let took = start.elapsed();
        assert!(took < Duration::from_secs(1), "took {took:?}");
        let v = parse(&o);
        assert_eq!(v["code"], code::TRY_AGAIN_LATER, "{v}");
        assert!(
            v["msg"].as_str().unwrap_or_default().contains("hung"),
            "{v}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
