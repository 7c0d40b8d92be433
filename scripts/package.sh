#!/usr/bin/env bash
# Builds a .deb of jwt-agent: the binary, its man page, bash/zsh/fish completions, the systemd
# units and the example config. Prints the .deb's path as its last line.
#
#   scripts/package.sh [OUT_DIR]     (default: target/debian)
#
# The man page and completions come from the binary itself (`jwt-agent man`, `completions`),
# so they always match its flags.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

out=$(mkdir -p "${1:-target/debian}" && cd "${1:-target/debian}" && pwd)
command -v dpkg-deb >/dev/null || apt_install dpkg
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
[ -n "$version" ] || die "no version in Cargo.toml"

step "cargo build --profile dist"
cargo build --profile dist --locked >&2
binary=target/dist/jwt-agent

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -D -m 0755 "$binary" "$root/usr/bin/jwt-agent"
strip --strip-unneeded "$root/usr/bin/jwt-agent" 2>/dev/null || true

"$binary" man | gzip -9n >"$root/man.1.gz"
install -D -m 0644 "$root/man.1.gz" "$root/usr/share/man/man1/jwt-agent.1.gz"
rm "$root/man.1.gz"
completion() { # SHELL PATH
    mkdir -p "$(dirname "$root/$2")"
    "$binary" completions "$1" >"$root/$2"
    chmod 0644 "$root/$2"
}
completion bash usr/share/bash-completion/completions/jwt-agent
completion zsh usr/share/zsh/vendor-completions/_jwt-agent
completion fish usr/share/fish/vendor_completions.d/jwt-agent.fish

# The units name the binary where a source install puts it; the package puts it in /usr/bin.
unit() { # FILE DEST
    install -D -m 0644 "$1" "$root/$2"
    sed -i 's|/usr/local/bin/jwt-agent|/usr/bin/jwt-agent|g' "$root/$2"
}
for name in jwt-agent.service jwt-agent.socket; do
    unit "contrib/systemd/$name" "usr/lib/systemd/system/$name"
    unit "contrib/systemd/user/$name" "usr/lib/systemd/user/$name"
done
install -D -m 0644 contrib/systemd/config.example.toml "$root/usr/share/doc/jwt-agent/config.example.toml"
install -D -m 0644 README.md "$root/usr/share/doc/jwt-agent/README.md"
cp -r docs "$root/usr/share/doc/jwt-agent/docs"
chmod -R u=rwX,go=rX "$root/usr/share/doc/jwt-agent/docs"

size=$(du -sk "$root/usr" | cut -f1)
mkdir -p "$root/DEBIAN"
cat >"$root/DEBIAN/control" <<EOF
Package: jwt-agent
Version: $version
Architecture: $arch
Maintainer: jwt-agent maintainers <maintainers@jwt-agent.invalid>
Installed-Size: $size
Depends: libc6
Recommends: opensc
Suggests: softhsm2, ykcs11, libtpm2-pkcs11-1
Section: utils
Priority: optional
Description: sign JWTs with keys that never leave a PKCS#11 token
 A daemon holds a logged-in PKCS#11 token (YubiHSM 2, YubiKey, TPM, cloud HSM,
 SoftHSM) and signs JWT signing input inside it; a CLI in the same binary asks
 it for tokens over a Unix socket, ssh-agent style. Presets build the tokens
 Apple's APIs want (App Store Connect, APNs, ...), a config binds each key to
 what it may sign, and every decision is audited.
EOF

deb="$out/jwt-agent_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >&2
step "built $deb"
echo "$deb"
