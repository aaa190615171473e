//! Helpers shared by the namespace tests: a root check that fails (never skips), unique names, and
//! running `ip`/`bridge` (tests may spawn them; library code never does).
#![allow(dead_code)] // each test file uses a different subset

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Fails the test with a clear message unless running as root: CI runs as root and these tests
/// must run there, so a silent skip would hide a broken environment.
pub fn require_root() {
    assert_eq!(
        control::sys::effective_uid(),
        0,
        "this test creates network namespaces and must run as root (CI does); rerun with sudo"
    );
}

/// A namespace or interface name unique across concurrently running tests and processes:
/// `wt-<pid>-<n>`.
pub fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "wt-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command to completion, failing the test with its stderr when it fails; returns stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip -n NS ARGS...`.
pub fn ip(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}
