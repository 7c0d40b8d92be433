#!/usr/bin/env bash
# jwt-agent quickstart, for a fresh Debian/Ubuntu machine (as root, or after the sudo command it
# prints), or a Mac with Homebrew (`brew install softhsm` first). Installs SoftHSM if missing, builds, makes a SoftHSM token, starts the agent, imports a
# demo Apple-style .p8 key with `jwt-agent import`, signs an App Store Connect token and verifies
# it with openssl.
# Safe to run again: it keeps the token and key, and restarts the agent.
# Progress goes to stderr; the token alone goes to stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

TOKEN_LABEL=jwt-agent-demo
KEY=DEMOKEY001
ISSUER=57246542-96fe-1a63-e053-0824d011072a
BIN=target/release/jwt-agent

# --- 1. System packages -------------------------------------------------------------------------
step "checking SoftHSM, OpenSSL, python3"
missing=()
{ command -v softhsm2-util && find_softhsm; } >/dev/null || missing+=(softhsm2)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
command -v cc >/dev/null || missing+=(gcc)
apt_install "${missing[@]}"
command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs, then run this again"
MODULE=$(find_softhsm) || die "libsofthsm2.so not found; reinstall the softhsm2 package (brew install softhsm on a Mac)"

# --- 2. Build -----------------------------------------------------------------------------------
step "cargo build --release"
cargo build --release >&2

# --- 3. SoftHSM token, in a private folder ------------------------------------------------------
DIR="${XDG_DATA_HOME:-$HOME/.local/share}/jwt-agent/softhsm"
PINFILE="$DIR/pin"
SOPINFILE="$DIR/so-pin"
PUBKEY="$DIR/$KEY.pub.pem"
umask 077
mkdir -p "$DIR/tokens"
chmod 0700 "$DIR" "$DIR/tokens"
template=$(<softhsm/softhsm2.conf.in)
printf '%s\n' "${template//@TOKENDIR@/"$DIR/tokens"}" >"$DIR/softhsm2.conf"
export SOFTHSM2_CONF="$DIR/softhsm2.conf"
step "SoftHSM config: $SOFTHSM2_CONF"

for f in "$PINFILE" "$SOPINFILE"; do
    [ -s "$f" ] || openssl rand -hex 8 | tr -d '\n' >"$f"
    chmod 0600 "$f"
done

slots=$(softhsm2-util --show-slots)
if grep -Eq "^[[:space:]]*Label:[[:space:]]+${TOKEN_LABEL}[[:space:]]*\$" <<<"$slots"; then
    step "token $TOKEN_LABEL exists"
else
    step "creating token $TOKEN_LABEL (user PIN in $PINFILE)"
    # softhsm2-util takes the PINs on its command line (where ps shows them) or at the terminal:
    # they are typed at its prompts, on a terminal of their own.
    { cat "$SOPINFILE"; echo; cat "$SOPINFILE"; echo; cat "$PINFILE"; echo; cat "$PINFILE"; echo; } |
        python3 scripts/at_prompts.py softhsm2-util --init-token --free --label "$TOKEN_LABEL"
    rm -f "$PUBKEY" # a key from an earlier token is gone with it
fi

# --- 4. Start (or restart) the agent ------------------------------------------------------------
SOCK="${XDG_RUNTIME_DIR:+$XDG_RUNTIME_DIR/jwt-agent/agent.sock}"
SOCK="${SOCK:-/tmp/jwt-agent-$(id -u)/agent.sock}"
if "$BIN" status --socket "$SOCK" >/dev/null 2>&1; then
    step "stopping the running agent"
    "$BIN" stop --socket "$SOCK" >&2
fi
step "starting the agent on $SOCK"
agent_env=$("$BIN" start --module "$MODULE" --token "$TOKEN_LABEL" --pin-file "$PINFILE" --socket "$SOCK") ||
    die "the agent did not start (see the message above)"
eval "$agent_env" >&2 # sets JWT_AGENT_SOCK, prints the agent's pid

# --- 5. Demo Apple-style key (.p8), imported then destroyed ---------------------------------------
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
if [ -s "$PUBKEY" ] && "$BIN" pubkey "$KEY" >/dev/null 2>&1; then
    step "key $KEY already on the token"
else
    P8="$TMP/AuthKey_$KEY.p8"
    step "making demo key $P8 (P-256 PKCS#8, like Apple's)"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$P8"
    openssl pkey -in "$P8" -pubout -out "$PUBKEY"
    step "importing it: jwt-agent import $P8"
    "$BIN" import "$P8" >&2 || { rm -f "$PUBKEY"; die "jwt-agent import failed"; }
    shred -u "$P8"
fi

# --- 6. Sign an App Store Connect token, verify it independently --------------------------------
step "signing an App Store Connect token with $KEY"
TOKEN=$("$BIN" sign --key "$KEY" --kid "$KEY" --iss "$ISSUER" --aud appstoreconnect-v1 --ttl 20m)

step "verifying it with openssl against $PUBKEY"
python3 - "$TOKEN" "$TMP" "$KEY" "$ISSUER" <<'PY'
import base64, json, sys, time

token, tmp, kid, iss = sys.argv[1:5]

def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

def fail(msg):
    sys.exit("token check failed: " + msg)

parts = token.split(".")
if len(parts) != 3:
    fail("not a compact JWS (header.payload.signature)")
header, claims, sig = json.loads(b64url(parts[0])), json.loads(b64url(parts[1])), b64url(parts[2])
for name, want in (("alg", "ES256"), ("kid", kid), ("typ", "JWT")):
    if header.get(name) != want:
        fail(f"header {name} is {header.get(name)!r}, expected {want!r}")
if claims.get("aud") != "appstoreconnect-v1" or claims.get("iss") != iss:
    fail(f"unexpected aud/iss in {claims}")
iat, exp = claims.get("iat"), claims.get("exp")
if not isinstance(iat, int) or not isinstance(exp, int) or not 0 < exp - iat <= 1200:
    fail(f"iat/exp must be integers with exp - iat <= 1200 s: {claims}")
if exp <= time.time():
    fail("already expired")
if len(sig) != 64:
    fail(f"ES256 signature must be 64 bytes r||s, got {len(sig)}")

def der_len(n):
    return bytes([n]) if n < 0x80 else bytes([0x81, n])

def der_int(b):
    b = b.lstrip(b"\0") or b"\0"   # minimal encoding...
    if b[0] & 0x80:
        b = b"\0" + b              # ...but never negative
    return b"\x02" + der_len(len(b)) + b

body = der_int(sig[:32]) + der_int(sig[32:])
with open(f"{tmp}/sig.der", "wb") as f:
    f.write(b"\x30" + der_len(len(body)) + body)
with open(f"{tmp}/input", "wb") as f:
    f.write(f"{parts[0]}.{parts[1]}".encode("ascii"))
print(f"==> header {json.dumps(header)}\n==> claims {json.dumps(claims)}", file=sys.stderr)
PY
verified=$(openssl dgst -sha256 -verify "$PUBKEY" -signature "$TMP/sig.der" "$TMP/input" 2>&1) || true
[ "$verified" = "Verified OK" ] || die "openssl did not verify the signature: $verified"
step "openssl: $verified"

printf '%s\n' "$TOKEN"

cat >&2 <<EOF

The agent is running (pid in the line above). To use it from another shell:

  export SOFTHSM2_CONF=$SOFTHSM2_CONF
  export JWT_AGENT_SOCK=$SOCK
  TOKEN=\$($BIN sign --key $KEY --kid $KEY --iss $ISSUER --aud appstoreconnect-v1 --ttl 20m)
  curl -H "Authorization: Bearer \$TOKEN" https://api.appstoreconnect.apple.com/v1/apps
      # an example only: this demo key is not registered with Apple, so Apple answers 401
  $BIN stop            # stops the agent
EOF
