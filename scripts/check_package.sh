#!/usr/bin/env bash
# Checks a .deb from scripts/package.sh: its metadata and files, and that the packaged binary
# works end to end (a fresh SoftHSM token, an Apple-style .p8 imported, an App Store Connect
# token signed and verified by PyJWT), its man page and completions included.
#
#   scripts/check_package.sh DEB
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

deb=${1:?usage: $0 DEB}
[ -f "$deb" ] || die "no package $deb"
work=$(mktemp -d)
agent_pid=
cleanup() {
    [ -z "$agent_pid" ] || kill "$agent_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

step "package metadata"
[ "$(dpkg-deb --field "$deb" Package)" = jwt-agent ] || die "the package is not named jwt-agent"
[ "$(dpkg-deb --field "$deb" Architecture)" = "$(dpkg --print-architecture)" ] || die "wrong architecture"
dpkg-deb -x "$deb" "$work/root"
root=$work/root
for file in usr/bin/jwt-agent usr/share/man/man1/jwt-agent.1.gz \
    usr/share/bash-completion/completions/jwt-agent usr/share/zsh/vendor-completions/_jwt-agent \
    usr/share/fish/vendor_completions.d/jwt-agent.fish \
    usr/lib/systemd/system/jwt-agent.service usr/lib/systemd/system/jwt-agent.socket \
    usr/lib/systemd/user/jwt-agent.service usr/lib/systemd/user/jwt-agent.socket; do
    [ -s "$root/$file" ] || die "the package lacks $file"
done
bin=$root/usr/bin/jwt-agent

step "the packaged man page, completions and units"
gzip -dc "$root/usr/share/man/man1/jwt-agent.1.gz" | grep -q '^\.TH' || die "the man page is not roff"
diff <("$bin" completions bash) "$root/usr/share/bash-completion/completions/jwt-agent" >/dev/null ||
    die "the packaged bash completions are not the binary's"
grep -q 'complete -c jwt-agent' "$root/usr/share/fish/vendor_completions.d/jwt-agent.fish" || die "fish completions"
grep -q '^#compdef jwt-agent' "$root/usr/share/zsh/vendor-completions/_jwt-agent" || die "zsh completions"
grep -q 'ExecStart=/usr/bin/jwt-agent ' "$root/usr/lib/systemd/system/jwt-agent.service" ||
    die "the packaged unit does not start /usr/bin/jwt-agent"
"$bin" --version | grep -q "^jwt-agent $(dpkg-deb --field "$deb" Version)$" || die "the binary's version"

step "the packaged binary signs on a fresh SoftHSM token"
module=$(find_softhsm) || die "libsofthsm2.so not found (scripts/test.sh installs it)"
mkdir -p "$work/tokens" && mkdir -m 0700 "$work/run"
sed "s|@TOKENDIR@|$work/tokens|" softhsm/softhsm2.conf.in >"$work/softhsm2.conf"
export SOFTHSM2_CONF=$work/softhsm2.conf JWT_AGENT_SOCK=$work/run/agent.sock
# The PINs typed at softhsm2-util's prompts, as the quickstart does.
printf '%s\n' 654321 654321 123456 123456 |
    python3 scripts/at_prompts.py softhsm2-util --init-token --free --label pkg 2>/dev/null
(umask 077 && echo 123456 >"$work/pin")
"$bin" daemon --module "$module" --token pkg --pin-file "$work/pin" 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 100); do [ -S "$JWT_AGENT_SOCK" ] && break; sleep 0.1; done
[ -S "$JWT_AGENT_SOCK" ] || { cat "$work/agent.log" >&2; die "the packaged daemon did not listen"; }
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/AuthKey_PKG1234567.p8" 2>/dev/null
openssl pkey -pubout -in "$work/AuthKey_PKG1234567.p8" -out "$work/public.pem"
"$bin" import "$work/AuthKey_PKG1234567.p8" >/dev/null
token=$("$bin" sign --key PKG1234567 --preset app-store-connect --iss 57246542-96fe-1a63-e053-0824d011072a)
python3 - "$token" "$work/public.pem" <<'EOF' || die "PyJWT does not accept the packaged binary's token"
import sys, jwt
token, pem = sys.argv[1], open(sys.argv[2]).read()
claims = jwt.decode(token, pem, algorithms=["ES256"], audience="appstoreconnect-v1")
assert jwt.get_unverified_header(token)["kid"] == "PKG1234567"
assert claims["iss"] == "57246542-96fe-1a63-e053-0824d011072a"
EOF
"$bin" stop >/dev/null
wait "$agent_pid" || die "the packaged daemon did not stop cleanly"
agent_pid=
step "the package checks out: $deb"
