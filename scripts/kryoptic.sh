#!/usr/bin/env bash
# Builds kryoptic's PKCS#11 module (tests/kryoptic) and prints its path. Installs the build
# dependencies it lacks (OpenSSL and SQLite headers, libclang for bindgen) with apt-get.
# About two minutes on two cores the first time; afterwards cargo finds it built.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

need=()
for package in libssl-dev libsqlite3-dev libclang-dev pkg-config; do
    dpkg -s "$package" >/dev/null 2>&1 || need+=("$package")
done
apt_install "${need[@]}"
cargo build --release --quiet --manifest-path tests/kryoptic/Cargo.toml --target-dir target/kryoptic >&2
echo "$PWD/target/kryoptic/release/libkryoptic_pkcs11.so"
