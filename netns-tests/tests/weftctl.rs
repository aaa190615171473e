//! `weftctl status` and `weftctl show` against real agents on the etcd datastore in lab
//! namespaces: healthy exits 0; etcd stopped exits 1 naming the datastore, and 0 again once it is
//! back; a lease taken over by another node exits 1 naming the lease; no agent exits 1 saying so.
//! `-o json` carries the same verdict for scripts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use control::datastore::flannel;
use control::tooling::lab::{Lab, NodeKind};
use netns_tests::{require_root, weftd_path};
use serde_json::Value;

fn weftctl_path() -> PathBuf {
    let p = weftd_path().with_file_name("weftctl");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p control --bins` (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Runs `weftctl --socket <socket> <args>`: exit code and stdout.
fn weftctl(socket: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(weftctl_path())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run weftctl");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Polls `weftctl status` until it exits `code`; returns its output, failing after `limit`.
fn status_until(socket: &Path, code: i32, limit: Duration, what: &str) -> String {
    let start = Instant::now();
    loop {
        let (c, out) = weftctl(socket, &["status"]);
        if c == code {
            return out;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: weftctl status still exits {c} after {limit:?}:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn status_is_0_when_healthy_and_1_when_the_datastore_or_the_lease_is_gone() {
    require_root();
    let mut lab = Lab::new(&weftd_path()).expect("lab");
    // A short TTL so a lost lease is noticed at the next renewal (every ~2 s).
    lab.start_etcd(4, 2)
        .expect("etcd in the underlay namespace");
    for i in 1..=2 {
        lab.add_node(i, NodeKind::Weft).expect("weft node");
    }
    lab.start().expect("agents start from etcd");
    let sock = lab.nodes[0].ctl_socket.clone();

    // Healthy: exit 0, one screen naming what an operator checks.
    let out = status_until(&sock, 0, Duration::from_secs(10), "start-up");
    for needle in [
        "HEALTHY",
        "datastore  etcd",
        "connected",
        &lab.nodes[0].subnet.to_string(),
        "held",
        "backend    vxlan vni 1 port 8472",
        "mtu        weft.1",
        "peers      1;",
        "drops",
    ] {
        assert!(out.contains(needle), "{needle:?} missing in\n{out}");
    }
    let (code, json) = weftctl(&sock, &["status", "-o", "json"]);
    assert_eq!(code, 0, "{json}");
    let v: Value = serde_json::from_str(&json).expect("status JSON");
    assert_eq!(v["healthy"], true);
    assert_eq!(v["peers"], 1);
    assert_eq!(v["datastore"]["connected"], true);
    assert_eq!(v["lease"]["subnet"], lab.nodes[0].subnet.to_string());
    assert_eq!(
        v["tables"]["routes"].as_u64(),
        Some(2),
        "own subnet + one peer"
    );
    assert!(v["counters"]["drops"]
        .as_object()
        .is_some_and(|d| !d.is_empty()));
    // show is weftd show.
    let (code, show) = weftctl(&sock, &["show"]);
    assert_eq!(code, 0);
    assert!(show.contains("# ip route (Weft FIB)"), "{show}");
    assert!(show.contains(&lab.nodes[1].subnet.to_string()), "{show}");

    // etcd stopped: the watch breaks, the node keeps forwarding but misses changes: exit 1.
    lab.etcd_mut().expect("etcd").stop();
    let out = status_until(&sock, 1, Duration::from_secs(15), "etcd stopped");
    assert!(
        out.contains("UNHEALTHY") && out.contains("NOT CONNECTED"),
        "{out}"
    );
    let (code, json) = weftctl(&sock, &["status", "-o", "json"]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&json).expect("status JSON");
    assert_eq!(v["healthy"], false);
    assert!(
        v["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("etcd")),
        "{v}"
    );

    // etcd back: healthy again once the watch is re-established (backoff at most 5 s).
    lab.etcd_mut().expect("etcd").restart().expect("etcd back");
    status_until(&sock, 0, Duration::from_secs(20), "etcd restarted");

    // Another node's value on our lease key: the next renewal finds it taken.
    let key = flannel::lease_key(flannel::DEFAULT_PREFIX, lab.nodes[0].subnet);
    let thief = flannel::vxlan_lease_value(
        "192.168.77.99".parse().expect("ip"),
        1,
        control::config::vtep_mac_for("thief"),
    );
    lab.etcd()
        .expect("etcd")
        .put(&key, &thief, None)
        .expect("overwrite the lease");
    let out = status_until(&sock, 1, Duration::from_secs(15), "lease taken");
    assert!(
        out.contains("NOT HELD") && out.contains("lease not held"),
        "{out}"
    );

    // No agent: exit 1, saying so, in both formats.
    lab.stop_agent(0, libc::SIGTERM);
    let (code, out) = weftctl(&sock, &["status"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("UNHEALTHY") && out.contains("cannot reach weftd"),
        "{out}"
    );
    let (code, json) = weftctl(&sock, &["status", "-o", "json"]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["healthy"], false);
}
