#!/usr/bin/env bash
# Installs what the tests need (Debian/Ubuntu), then runs rustfmt, clippy and every test.
# CI (.ci/run) calls it on a fresh Debian 12 machine as root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

step "checking system packages"
missing=()
{ command -v softhsm2-util && find_softhsm; } >/dev/null || missing+=(softhsm2)
{ command -v pkcs11-tool && find_spy; } >/dev/null || missing+=(opensc)
command -v openssl >/dev/null || missing+=(openssl)
command -v socat >/dev/null || missing+=(socat)
command -v cc >/dev/null || missing+=(gcc) # builds the fault-injecting PKCS#11 module of the tests
command -v setpriv >/dev/null || missing+=(util-linux)
{ command -v systemd-socket-activate && command -v systemd-analyze; } >/dev/null || missing+=(systemd)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
apt_install "${missing[@]}"

step "checking python modules (PyJWT, cryptography, python-pkcs11)"
if ! python3 -c 'import jwt, cryptography, pkcs11; jwt.PyJWT' >/dev/null 2>&1; then
    pip_install PyJWT cryptography python-pkcs11
    python3 -c 'import jwt, cryptography, pkcs11; jwt.PyJWT' || die "python3 still cannot import jwt, cryptography or pkcs11"
fi

JWT_AGENT_TEST_MODULE=$(find_softhsm) || die "libsofthsm2.so not found"
JWT_AGENT_TEST_SPY=$(find_spy) || die "pkcs11-spy.so not found"
export JWT_AGENT_TEST_MODULE JWT_AGENT_TEST_SPY
step "SoftHSM module: $JWT_AGENT_TEST_MODULE"
step "PKCS#11 spy:    $JWT_AGENT_TEST_SPY"

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    command -v rustup >/dev/null || die "cargo fmt and cargo clippy are needed (rustfmt, clippy)"
    step "rustup component add rustfmt clippy"
    rustup component add rustfmt clippy
fi

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --release --all-targets -- -D warnings"
cargo clippy --release --all-targets -- -D warnings

# scripts/bench.sh runs outside CI; what it builds and runs must not rot: the report's Python
# compiles, and the ceiling program builds warning-free and prints its ratio.
step "the benchmark's helpers (scripts/bench_report.py, scripts/ceiling.c)"
python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read())' scripts/bench_report.py
helpers=$(mktemp -d)
cc -O2 -Wall -Wextra -Werror -pthread -o "$helpers/ceiling" scripts/ceiling.c
"$helpers/ceiling" 1 50 | python3 -c 'import json, sys; r = json.load(sys.stdin); assert 0 < r["ratio"] < 2 and r["round_trip_us"] > 0, r'
rm -rf "$helpers"

# The quickstart types the demo token's PINs at softhsm2-util's prompts (scripts/at_prompts.py):
# the token must take them, and they must not show on the output.
step "scripts/at_prompts.py (the quickstart's token, PINs off the command line)"
prompts=$(mktemp -d)
printf 'directories.tokendir = %s\nobjectstore.backend = file\n' "$prompts" >"$prompts/softhsm2.conf"
printf '%s\n' so-pin-4711 so-pin-4711 user-pin-0815 user-pin-0815 |
    SOFTHSM2_CONF="$prompts/softhsm2.conf" python3 scripts/at_prompts.py \
        softhsm2-util --init-token --free --label prompts 2>"$prompts/out"
! grep -q -e so-pin-4711 -e user-pin-0815 "$prompts/out" || die "at_prompts.py showed a PIN"
SOFTHSM2_CONF="$prompts/softhsm2.conf" pkcs11-tool --module "$JWT_AGENT_TEST_MODULE" --token-label prompts \
    --login --pin user-pin-0815 --list-objects >/dev/null || die "the token made through at_prompts.py takes no login"
rm -rf "$prompts"

# macOS is where Apple release machines run: it must never silently stop building. Its code is
# type-checked here for both Mac architectures (nothing is linked or run).
for target in aarch64-apple-darwin x86_64-apple-darwin; do
    if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
        command -v rustup >/dev/null || die "rustup is needed to add the $target target"
        step "rustup target add $target"
        rustup target add "$target"
    fi
    step "cargo clippy --target $target --all-targets -- -D warnings"
    cargo clippy --target "$target" --all-targets -- -D warnings
done

step "cargo test --release (SoftHSM)"
cargo test --release

step "building the .deb and running the packaged binary"
deb=$(scripts/package.sh | tail -n 1)
scripts/check_package.sh "$deb"

# The same integration tests against a second PKCS#11 implementation, so that token quirks show.
step "building kryoptic, the second PKCS#11 implementation"
kryoptic=$(./scripts/kryoptic.sh)
step "cargo test --release (kryoptic: $kryoptic)"
JWT_AGENT_TEST_BACKEND=kryoptic JWT_AGENT_TEST_MODULE=$kryoptic \
    cargo test --release --test signing --test protocol --test keys --test apple --test policy \
    --test lifecycle --test faults --test hardening --test ecosystem --test trust --test services \
    --test exchange

# And a TPM, the third: swtpm with tpm2-pkcs11 through tpm2-abrmd, started here and stopped after.
# What a TPM cannot do (import, P-521, EdDSA, seeing keys added by another process before a
# restart) the tests expect refused in one sentence.
step "starting a software TPM (swtpm, tpm2-abrmd, tpm2-pkcs11)"
scripts/tpm.sh install
tpm_dir=$(mktemp -d /tmp/jwt-agent-tpm.XXXXXX)
chmod 755 "$tpm_dir" # the D-Bus socket in it serves the daemons the tests run as nobody, too
trap 'scripts/tpm.sh stop "$tpm_dir" >/dev/null 2>&1 || true; rm -rf "$tpm_dir"' EXIT
eval "$(scripts/tpm.sh start "$tpm_dir")"
step "cargo test --release (TPM: $TPM_PKCS11_MODULE)"
JWT_AGENT_TEST_BACKEND=tpm JWT_AGENT_TEST_MODULE=$TPM_PKCS11_MODULE \
    cargo test --release --test signing --test protocol --test keys --test apple --test policy \
    --test lifecycle --test faults --test hardening --test ecosystem --test trust --test services \
    --test exchange
scripts/tpm.sh stop "$tpm_dir"

step "all tests passed"
