#!/usr/bin/env bash
# The test command (README, CI): format check, lints as errors, then every test in the workspace.
# Fails fast; each step is announced and timed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

total_start=$SECONDS

run() {
    local name=$1
    shift
    echo "== ${name}: $*"
    local start=$SECONDS
    "$@"
    echo "== ${name}: ok in $((SECONDS - start))s"
}

run fmt cargo fmt --all -- --check
run clippy cargo clippy --workspace --all-targets -- -D warnings
# The namespace tests run the weftd binary itself; build it first (cargo test alone need not).
run build cargo build --workspace --bins
run test cargo test --workspace

echo "== all steps passed in $((SECONDS - total_start))s"
