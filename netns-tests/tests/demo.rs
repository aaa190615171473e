//! The README's first command, `weftd demo`, run as a newcomer runs it: it must build its
//! cluster, show every step working (pings, TCP, NetworkPolicy allowing one pod and blocking
//! another) and leave nothing behind; with `--keep` the cluster stays up until Ctrl-C removes
//! it.

use std::process::Command;

use netns_tests::{require_root, weftd_path};

/// The named network namespaces, as `ip netns` lists them.
fn lab_namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list (iproute2; scripts/deps.sh installs it)");
    assert!(
        out.status.success(),
        "ip netns list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn weftd_demo_runs_every_step_and_cleans_up() {
    require_root();
    let before = lab_namespaces();
    let out = Command::new(weftd_path())
        .args(["demo", "--seconds", "1"])
        .output()
        .expect("run weftd demo");
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "weftd demo failed:\n{err}");
    for step in 1..=7 {
        assert!(
            err.contains(&format!("[{step}/7]")),
            "step {step} missing:\n{err}"
        );
    }
    assert_eq!(err.matches("reply in").count(), 6, "six pings:\n{err}");
    assert!(err.contains("Gbit/s"), "{err}");
    assert!(
        err.contains("TCP 5201: connects (ingress at")
            && err.contains("allowed by lab/server-from-client ingress[0]"),
        "the client connects, and why:\n{err}"
    );
    assert!(
        err.contains("TCP 5201: blocked (ingress at") && err.contains("DENIED"),
        "the other pod is blocked, and why:\n{err}"
    );
    assert_eq!(
        stdout.matches("# ip route (Weft FIB)").count(),
        3,
        "{stdout}"
    );
    // Nothing left: the namespaces it made are gone.
    let after = lab_namespaces();
    let left: Vec<_> = after.iter().filter(|n| !before.contains(n)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");

    // With --keep the cluster stays up (its namespaces listed) until Ctrl-C removes it all.
    let log = std::env::temp_dir().join(format!("weft-demo-keep-{}.log", std::process::id()));
    let mut child = Command::new(weftd_path())
        .args(["demo", "--seconds", "1", "--keep"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("demo log"))
        .spawn()
        .expect("run weftd demo --keep");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("--keep: leaving the cluster up")
    {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "weftd demo --keep ended early:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "demo --keep not up in 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let up: Vec<_> = lab_namespaces()
        .into_iter()
        .filter(|n| !before.contains(n))
        .collect();
    // The underlay, three nodes and a pod on each.
    assert!(up.len() >= 7, "the kept cluster's namespaces: {up:?}");
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(kill.success());
    let status = child.wait().expect("wait for the demo");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(status.success(), "{status}:\n{text}");
    let left: Vec<_> = lab_namespaces()
        .into_iter()
        .filter(|n| !before.contains(n))
        .collect();
    assert!(left.is_empty(), "namespaces left after Ctrl-C: {left:?}");
}
