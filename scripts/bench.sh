#!/usr/bin/env bash
# Reproduces the numbers of docs/performance.md on this machine, end to end, on a fresh SoftHSM
# token: `jwt-agent bench --direct` at 1, 2, 4, 8, 16 and 64 connections, the same load on a
# server that does nothing but the work (scripts/ceiling.c: this machine's ceiling), a cache hit,
# the one-shot CLI against a hello-world Rust binary, a shell pipeline of openssl + pkcs11-tool
# and a PyJWT script signing with the .p8 in process, a slow device (the test fault module, 20 ms
# per signature) at 1 to 8 sessions, and the daemon's memory before and after 100,000 signatures.
# It rewrites docs/performance.md. Usage: ./scripts/bench.sh [SECONDS_PER_POINT] (default 5)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-5}
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

missing=()
command -v softhsm2-util >/dev/null || missing+=(softhsm2)
command -v pkcs11-tool >/dev/null || missing+=(opensc)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
command -v hyperfine >/dev/null || missing+=(hyperfine)
command -v chrt >/dev/null || missing+=(util-linux)
apt_install "${missing[@]}"
python3 -c 'import jwt, cryptography' 2>/dev/null || pip_install PyJWT cryptography

module=$(find_softhsm) || die "libsofthsm2.so not found"

step "cargo build --profile dist"
cargo build --profile dist >&2

work=$(mktemp -d)
trap 'target/dist/jwt-agent stop --socket "$work/run/agent.sock" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
mkdir -p "$work/tokens"
sed "s|@TOKENDIR@|$work/tokens|" softhsm/softhsm2.conf.in >"$work/softhsm2.conf"
export SOFTHSM2_CONF="$work/softhsm2.conf"
printf '123456' >"$work/pin"
chmod 600 "$work/pin"
printf '%s\n' 654321 654321 123456 123456 |
    python3 scripts/at_prompts.py softhsm2-util --init-token --free --label bench 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/AuthKey_BENCHKEY01.p8" 2>/dev/null

step "building the fault module (the slow device), the ceiling and a hello-world binary"
cc -shared -fPIC -O2 -o "$work/faulty_pkcs11.so" tests/faulty/faulty_pkcs11.c -ldl -lpthread
cc -O2 -pthread -o "$work/ceiling" scripts/ceiling.c
printf 'fn main() {\n    println!("hello");\n}\n' >"$work/hello.rs"
rustc -O -o "$work/hello" "$work/hello.rs"

step "starting the agent on a fresh SoftHSM token"
eval "$(target/dist/jwt-agent start --module "$module" --token bench --pin-file "$work/pin" \
    --socket "$work/run/agent.sock")" >&2
target/dist/jwt-agent import "$work/AuthKey_BENCHKEY01.p8" >/dev/null

step "measuring (${seconds}s per point)"
python3 scripts/bench_report.py --module "$module" --faulty "$work/faulty_pkcs11.so" \
    --hello "$work/hello" --ceiling "$work/ceiling" --work "$work" --seconds "$seconds" --out docs/performance.md
step "wrote docs/performance.md"
