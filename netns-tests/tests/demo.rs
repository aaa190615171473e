//! The README's first command, `weftd demo`, run as a newcomer runs it: it must build its
//! cluster, show every step working (pings, TCP, NetworkPolicy allowing one pod and blocking
//! another) and leave nothing behind.

use std::process::Command;

use netns_tests::{require_root, weftd_path};

/// The named network namespaces, as `ip netns` lists them.
fn lab_namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list (iproute2; scripts/deps.sh installs it)");
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
}
