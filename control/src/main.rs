//! `weftd`, the Weft node agent. The agent itself arrives with the weftd issue; until then this
//! binary only says so, rather than pretending to run.
#![forbid(unsafe_code)]

fn main() {
    eprintln!(
        "weftd {}: the node agent is not implemented yet; run `cargo bench -p benches` to exercise the dataplane",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
