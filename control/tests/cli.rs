//! The `weftd` command line: an invalid config exits 2 and names the field; `--print-config`
//! prints the effective configuration; `show` without an agent says what to check.

use std::process::Command;

fn weftd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weftd"))
}

fn write_config(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with(text)
}

/// A file removed on drop, without a dependency for it.
mod tempfile_path {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    pub struct TempPath(pub PathBuf);

    impl TempPath {
        pub fn with(text: &str) -> TempPath {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "weftd-cli-{}-{}.toml",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&p, text).expect("write temp config");
            TempPath(p)
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

const GOOD: &str = r#"
[node]
name = "node-a"
public_ip = "192.168.50.1"
subnet = "10.244.1.0/24"

[[peers]]
name = "node-b"
public_ip = "192.168.50.2"
subnet = "10.244.2.0/24"
"#;

#[test]
fn invalid_config_exits_2_and_names_the_field() {
    let bad = GOOD.replace("10.244.2.0/24", "10.245.2.0/24");
    let cfg = write_config(&bad);
    let out = weftd()
        .args(["run", "--config"])
        .arg(&cfg.0)
        .output()
        .expect("run weftd");
    assert_eq!(out.status.code(), Some(2), "exit status");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("peers[0].subnet"),
        "stderr names the field: {err}"
    );
    assert!(
        err.contains("10.245.2.0/24"),
        "stderr names the value: {err}"
    );

    let cfg = write_config("[node]\nname = \"x\"\nsubnet = \"10.244.1.0/24\"\nbogus = 1\n");
    let out = weftd()
        .args(["run", "--config"])
        .arg(&cfg.0)
        .output()
        .expect("run weftd");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));

    let cfg = write_config(&format!("{GOOD}\n").replacen(
        "[node]",
        "[network]\nip_masq = \"yes\"\n\n[node]",
        1,
    ));
    let out = weftd()
        .args(["run", "--config"])
        .arg(&cfg.0)
        .output()
        .expect("run weftd");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ip_masq"), "stderr names the field: {err}");

    let out = weftd()
        .args(["run", "--config", "/nonexistent/weftd.toml"])
        .output()
        .expect("run weftd");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/weftd.toml"));
}

#[test]
fn print_config_fills_in_defaults() {
    let cfg = write_config(GOOD);
    let out = weftd()
        .args(["run", "--print-config", "--config"])
        .arg(&cfg.0)
        .output()
        .expect("run weftd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "10.244.0.0/16",
        "vni = 1",
        "port = 8472",
        "weft0",
        "vtep_mac",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
}

#[test]
fn show_without_an_agent_says_what_to_check() {
    let out = weftd()
        .args(["show", "--socket", "/nonexistent/weftd.sock"])
        .output()
        .expect("run weftd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is weftd running"), "{err}");
}

#[test]
fn run_flags_override_the_file_and_are_validated_like_it() {
    let minimal = "[node]\nname = \"node-a\"\npublic_ip = \"192.168.50.1\"\n";
    let cfg = write_config(minimal);
    let out = weftd()
        .args(["run", "--print-config", "--datastore", "etcd"])
        .args([
            "--etcd-endpoints",
            "http://10.0.0.1:2379,http://10.0.0.2:2379",
        ])
        .args([
            "--etcd-prefix",
            "/x/network",
            "--subnet-file",
            "/tmp/x/subnet.env",
        ])
        .args(["--health-listen", "127.0.0.1:9999", "--config"])
        .arg(&cfg.0)
        .output()
        .expect("run weftd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "type = \"etcd\"",
        "\"http://10.0.0.2:2379\"",
        "prefix = \"/x/network\"",
        "subnet_file = \"/tmp/x/subnet.env\"",
        "listen = \"127.0.0.1:9999\"",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    // A static datastore without node.subnet: exit 2 naming the field.
    let out = weftd()
        .args(["run", "--datastore", "static", "--config"])
        .arg(&cfg.0)
        .output()
        .expect("run weftd");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("node.subnet"));
}

#[test]
fn node_name_comes_from_the_flag_or_node_name_env_when_the_file_has_none() {
    // A DaemonSet's shared config: no name in the file.
    let cfg = write_config("[node]\nsubnet = \"10.244.1.0/24\"\n");
    let out = weftd()
        .args(["run", "--print-config", "--config"])
        .arg(&cfg.0)
        .env("NODE_NAME", "node-from-env")
        .output()
        .expect("run weftd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("name = \"node-from-env\""));
    // The flag wins over the environment.
    let out = weftd()
        .args([
            "run",
            "--print-config",
            "--node-name",
            "node-flag",
            "--config",
        ])
        .arg(&cfg.0)
        .env("NODE_NAME", "node-from-env")
        .output()
        .expect("run weftd");
    assert!(String::from_utf8_lossy(&out.stdout).contains("name = \"node-flag\""));
    // Neither: exit 2 naming the field and both ways to set it.
    let out = weftd()
        .args(["run", "--print-config", "--config"])
        .arg(&cfg.0)
        .env_remove("NODE_NAME")
        .output()
        .expect("run weftd");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node.name") && err.contains("--node-name") && err.contains("NODE_NAME"),
        "{err}"
    );
}

#[test]
fn ip_masq_flag_overrides_the_file() {
    let cfg = write_config(GOOD);
    let out = weftd()
        .args(["run", "--print-config", "--ip-masq", "false", "--config"])
        .arg(&cfg.0)
        .output()
        .expect("run weftd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ip_masq = false"));
    let out = weftd()
        .args(["run", "--print-config", "--config"])
        .arg(&cfg.0)
        .output()
        .expect("run weftd");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ip_masq = true"));
}
