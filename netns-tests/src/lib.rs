//! Helpers for integration tests in network namespaces. The namespaces themselves are built by
//! `control::tooling::lab`, which the demo and the benchmark harness share; this crate adds what only tests
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

/// Pings `dst` from the lab pod `src` until a reply, three tries of a second each (the first
/// packet of a pair may wait for ARP on the bridges); panics with the last result.
pub fn ping_ok(lab: &control::tooling::lab::Lab, src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr) {
    let pod = lab.pod(src).expect("pod");
    let mut last = control::tooling::lab::PingResult::Timeout;
    for _ in 0..3 {
        last = pod.ping(dst, 56, false, std::time::Duration::from_secs(1));
        if last.is_reply() {
            return;
        }
    }
    panic!("ping {src} -> {dst}: {last:?}");
}

/// Runs `program args` inside `ns` and returns its stdout; panics with its stderr when it fails
/// and names the program when it cannot run (scripts/deps.sh installs the tools the tests use).
pub fn ns_command(ns: &control::netns::NetNs, program: &str, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = control::netns::spawn_in_netns(&mut cmd, ns)
        .and_then(|c| c.wait_with_output())
        .unwrap_or_else(|e| panic!("{program} (install it; scripts/deps.sh does): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Bytes of the byte-exact transfers the tests run (100 MB).
pub const TRANSFER: usize = 100 << 20;
/// Bytes per write and per comparison in [`transfer`].
const CHUNK: usize = 256 << 10;

/// The pattern's bytes at `offset..offset + out.len()` for `seed`: a cheap keyed hash per 8-byte
/// word, so any range can be produced on both ends without holding the whole transfer.
fn fill(seed: u64, offset: usize, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        let pos = (offset + i) as u64;
        let mut x = (pos / 8) ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 31;
        *b = (x >> ((pos % 8) * 8)) as u8;
    }
}

/// Sends `bytes` over TCP from lab pod `src` to lab pod `dst` (listening on `port`) and checks
/// every byte as it arrives; panics on a difference, a short transfer or a stall of 20 s.
pub fn transfer(
    lab: &control::tooling::lab::Lab,
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    port: u16,
    bytes: usize,
) {
    use std::io::{Read, Write};
    use std::time::Duration;
    let seed = u64::from(u32::from(src)) << 32 | u64::from(u32::from(dst));
    let listener = lab.pod(dst).expect("pod").listen(port).expect("listen");
    let rx = std::thread::spawn(move || -> Result<usize, String> {
        let (mut c, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        c.set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; CHUNK];
        let mut want = vec![0u8; CHUNK];
        let mut at = 0usize;
        loop {
            let n = c.read(&mut buf).map_err(|e| format!("read at {at}: {e}"))?;
            if n == 0 {
                return Ok(at);
            }
            fill(seed, at, &mut want[..n]);
            if buf[..n] != want[..n] {
                let i = (0..n).find(|&i| buf[i] != want[i]).unwrap_or(0);
                return Err(format!("byte {} differs", at + i));
            }
            at += n;
        }
    });
    let mut c = lab
        .pod(src)
        .expect("pod")
        .connect(
            std::net::SocketAddrV4::new(dst, port),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("connect {src} -> {dst}: {e}"));
    let mut chunk = vec![0u8; CHUNK];
    let mut at = 0;
    while at < bytes {
        let n = CHUNK.min(bytes - at);
        fill(seed, at, &mut chunk[..n]);
        c.write_all(&chunk[..n])
            .unwrap_or_else(|e| panic!("send {src} -> {dst} at {at}: {e}"));
        at += n;
    }
    drop(c);
    let got = rx.join().expect("receiver thread");
    assert_eq!(got, Ok(bytes), "TCP {src} -> {dst}");
}
