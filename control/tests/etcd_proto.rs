//! The etcd client's protobuf and gRPC code, `control/src/etcd/generated/*.rs`, is generated
//! from the trimmed etcd protos in `control/proto/` and committed: building Weft needs no
//! `protoc`, no build script and no proto compiler. This test generates it again, in pure Rust
//! (`protox` parses the protos, `tonic-prost-build` writes the code, into a temporary
//! directory), and fails when a committed file differs, so the protos and the code cannot drift
//! apart.
//!
//! After changing a `.proto` file, or upgrading tonic or prost, regenerate the committed files:
//!
//! ```sh
//! WEFT_REGEN_PROTO=1 cargo test -p control --test etcd_proto
//! ```
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is the test failing

use std::path::{Path, PathBuf};

/// The protos, relative to `control/proto` (which is also the import root, as upstream's).
const PROTOS: &[&str] = &[
    "etcd/api/mvccpb/kv.proto",
    "etcd/api/etcdserverpb/rpc.proto",
];
/// The files generated from them, one per protobuf package.
const GENERATED: &[&str] = &["mvccpb.rs", "etcdserverpb.rs"];

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Generates the client code from the protos into `out`.
fn generate(out: &Path) {
    let root = manifest_dir().join("proto");
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    let fds = protox::compile(&files, [&root]).unwrap_or_else(|e| panic!("control/proto: {e}"));
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .out_dir(out)
        .compile_fds(fds)
        .unwrap();
}

#[test]
fn committed_etcd_client_code_matches_the_protos() {
    let tmp = std::env::temp_dir().join(format!("weft-etcd-proto-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    generate(&tmp);
    let mut produced: Vec<String> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    produced.sort();
    let mut expected: Vec<String> = GENERATED.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(produced, expected, "files generated from control/proto");

    let committed = manifest_dir().join("src/etcd/generated");
    let regen = std::env::var_os("WEFT_REGEN_PROTO").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for name in GENERATED {
        let fresh = std::fs::read(tmp.join(name)).unwrap();
        let path = committed.join(name);
        if std::fs::read(&path).ok().as_deref() == Some(&fresh[..]) {
            continue;
        }
        if regen {
            std::fs::write(&path, &fresh).unwrap();
            eprintln!("rewrote control/src/etcd/generated/{name}");
        } else {
            stale.push(*name);
        }
    }
    std::fs::remove_dir_all(&tmp).unwrap();
    assert!(
        stale.is_empty(),
        "control/src/etcd/generated: {} differ from what control/proto generates; \
         regenerate with `WEFT_REGEN_PROTO=1 cargo test -p control --test etcd_proto` and commit",
        stale.join(", ")
    );
}
