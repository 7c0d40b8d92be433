#!/usr/bin/env bash
# Runs each fuzz target (fuzz/fuzz_targets) for a bounded time with cargo fuzz (libFuzzer).
#   ./scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
# Installs cargo-fuzz from crates.io when it is missing. libFuzzer wants a nightly compiler;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain take its flags, so no other toolchain is needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-60}

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in $(cargo fuzz list); do
    printf '==> fuzzing %s for %ss\n' "$target" "$seconds" >&2
    if ! cargo fuzz run --release "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        printf 'fuzz target %s failed; the input is under fuzz/artifacts/%s\n' "$target" "$target" >&2
        exit 1
    fi
    grep -E '^Done [0-9]+ runs' "$log" >&2 || tail -n 3 "$log" >&2
done
printf '==> every target ran %ss without a crash\n' "$seconds" >&2
