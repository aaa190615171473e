#!/usr/bin/env bash
# The test command (README, CI): installs the system packages the tests need (once; a second run
# installs nothing), then format check, lints as errors, and every test in the workspace.
# Run it as root: the namespace tests need root and fail (never skip) without it.
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

run deps ./scripts/deps.sh

# A clean run writes about 3.1 GiB under target/; say so up front rather than fail with ENOSPC.
mkdir -p target
free_kib=$(df -Pk target | awk 'NR == 2 { print $4 }')
if [[ -n "${free_kib}" && "${free_kib}" -lt $((4 * 1024 * 1024)) ]]; then
    echo "warning: only $((free_kib / 1024)) MiB free for target/; a clean run needs about 3.5 GiB (cargo clean frees old builds)"
fi

if [[ -e /proc/modules ]]; then
    # Usually built in or autoloaded; a missing one shows up as a test failure with a clear error.
    for m in vxlan tun veth bridge; do
        modprobe "$m" 2>/dev/null || echo "modprobe $m: failed (built in or unavailable)"
    done
fi
[[ -e /dev/net/tun ]] || echo "warning: /dev/net/tun is missing; the TUN tests will fail"

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    run rust-components rustup component add rustfmt clippy
fi

run fmt cargo fmt --all -- --check
run clippy cargo clippy --workspace --all-targets -- -D warnings
run doc env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
# The namespace tests run the weftd binary itself; build it first (cargo test alone need not).
run build cargo build --workspace --bins
run test cargo test --workspace

echo "== all steps passed in $((SECONDS - total_start))s"
