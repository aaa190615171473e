//! `weft`, the CNI plugin: see the library ([`cni_shim`]) for what it does.
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let outcome = cni_shim::run(|k| std::env::var(k).ok(), &mut std::io::stdin().lock());
    let mut out = std::io::stdout().lock();
    // Nothing sensible is left to do when stdout is gone; the exit status still tells.
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    ExitCode::from(outcome.exit)
}
