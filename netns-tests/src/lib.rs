//! Helpers for integration tests in network namespaces. The namespaces themselves are built by
//! `control::lab`, which the demo and the benchmark harness share; this crate adds what only tests
//! need.
#![forbid(unsafe_code)]

use std::path::PathBuf;

pub mod capture;
pub mod cni;
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

/// The `weft` CNI plugin binary built beside `weftd` (`cargo build --workspace --bins`).
pub fn weft_plugin_path() -> PathBuf {
    let path = weftd_path().with_file_name("weft");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p cni-shim --bin weft` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Where Debian's `containernetworking-plugins` installs the reference plugins.
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";

/// The `CNI_PATH` of the tests: the built `weft` plugin's directory, then the reference plugins.
/// Fails (never skips) when the reference plugins the tests chain are missing.
pub fn cni_path() -> Vec<PathBuf> {
    for plugin in ["portmap", "bandwidth", "bridge", "host-local"] {
        let p = std::path::Path::new(SYSTEM_CNI_DIR).join(plugin);
        assert!(
            p.is_file(),
            "{} is missing: install Debian's containernetworking-plugins (.ci/run does)",
            p.display()
        );
    }
    let weft = weft_plugin_path();
    vec![
        weft.parent().expect("target dir").to_path_buf(),
        PathBuf::from(SYSTEM_CNI_DIR),
    ]
}
