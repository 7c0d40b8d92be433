#!/usr/bin/env bash
# Installs what the tests need (Debian/Ubuntu), then runs rustfmt, clippy and every test.
# CI (.ci/run) calls it on a fresh Debian 12 machine as root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Prints the first argument that is an existing file.
first_file() {
    local f
    for f in "$@"; do [ -f "$f" ] && { printf '%s\n' "$f"; return 0; }; done
    return 1
}
# shellcheck disable=SC2046  # dpkg -L paths have no spaces; globs that match nothing are skipped
find_softhsm() {
    first_file $(dpkg -L libsofthsm2 softhsm2 2>/dev/null | grep '/libsofthsm2\.so$') \
        /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
        /usr/lib/*/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so
}
# shellcheck disable=SC2046
find_spy() {
    first_file $(dpkg -L opensc-pkcs11 opensc 2>/dev/null | grep '/pkcs11/pkcs11-spy\.so$') \
        /usr/lib/*/pkcs11/pkcs11-spy.so /usr/lib/pkcs11/pkcs11-spy.so /usr/lib/*/pkcs11-spy.so
}

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
if [ "${#missing[@]}" -gt 0 ]; then
    install=(apt-get install -y --no-install-recommends "${missing[@]}")
    if [ "$(id -u)" -ne 0 ]; then
        printf 'missing: %s; install them with:\n  sudo apt-get update && sudo %s\n' \
            "${missing[*]}" "${install[*]}" >&2
        exit 1
    fi
    step "installing ${missing[*]}"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive "${install[@]}" >&2
fi

step "checking python modules (PyJWT, cryptography, python-pkcs11)"
if ! python3 -c 'import jwt, cryptography, pkcs11; jwt.PyJWT' >/dev/null 2>&1; then
    step "pip install PyJWT cryptography python-pkcs11"
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    if ! out=$(python3 -m pip install --quiet PyJWT cryptography python-pkcs11 2>&1); then
        if grep -q externally-managed-environment <<<"$out"; then
            python3 -m pip install --quiet --break-system-packages PyJWT cryptography python-pkcs11
        else
            printf '%s\n' "$out" >&2
            die "pip could not install PyJWT, cryptography and python-pkcs11"
        fi
    fi
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

step "cargo test --release (SoftHSM)"
cargo test --release

# The same integration tests against a second PKCS#11 implementation, so that token quirks show.
step "building kryoptic, the second PKCS#11 implementation"
kryoptic=$(./scripts/kryoptic.sh)
step "cargo test --release (kryoptic: $kryoptic)"
JWT_AGENT_TEST_BACKEND=kryoptic JWT_AGENT_TEST_MODULE=$kryoptic \
    cargo test --release --test signing --test protocol --test keys --test apple --test policy \
    --test lifecycle --test faults --test hardening --test ecosystem

step "all tests passed"
