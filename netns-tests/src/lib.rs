//! Helpers for integration tests in network namespaces. The namespaces themselves are built by
//! `control::lab`, which the demo and the benchmark harness share; this crate adds what only tests
//! need.
#![forbid(unsafe_code)]

use std::path::PathBuf;

pub mod kube_api;

/// Fails the test (never skips it) when not running as root: the namespace tests need
/// CAP_SYS_ADMIN and CAP_NET_ADMIN. CI runs as root.
pub fn require_root() {
    assert!(
        control::sys::is_root(),
        "this test needs root (network namespaces, veths, TUN); run it as root, as CI does"
    );
}

/// The `weftd` binary built beside the test executable (`cargo test --workspace` and
/// `cargo build --workspace` build it).
pub fn weftd_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/weftd
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("weftd"))
        .expect("target directory layout");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p control --bin weftd` (scripts/test.sh does)",
        path.display()
    );
    path
}
