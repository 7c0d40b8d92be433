#!/usr/bin/env bash
# A software TPM as a PKCS#11 token (tpm2-pkcs11), for tests. Installs what it lacks with apt-get.
#
#   scripts/tpm.sh start DIR                       swtpm + private D-Bus + tpm2-abrmd, state in DIR;
#                                                  prints `export NAME=value` lines as its last lines
#   scripts/tpm.sh token DIR LABEL PINFILE SOPINFILE
#                                                  adds a token to the store DIR/store, its PINs
#                                                  the first lines of those files
#   scripts/tpm.sh env DIR                         prints the export lines again
#   scripts/tpm.sh stop DIR                        stops what start started
#   scripts/tpm.sh install                         only installs the packages
#
# Typical use: eval "$(scripts/tpm.sh start "$dir")"; scripts/tpm.sh token "$dir" t pin so-pin.
# Everything talks over unix sockets in DIR (or in a short folder under /tmp when DIR's path is
# long or has spaces or commas), so runs in parallel do not collide. Progress goes to stderr, logs
# to DIR/*.log; the TPM state (DIR/state) and the store (DIR/store) outlast stop and a new start.
# TPM_START_TIMEOUT (seconds, default 30) bounds each wait.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TIMEOUT=${TPM_START_TIMEOUT:-30}
TCTI=tabrmd:bus_type=session

# shellcheck disable=SC2046  # dpkg -L paths have no spaces
find_tpm2_pkcs11() {
    first_file $(dpkg -L libtpm2-pkcs11-1 2>/dev/null | grep '/pkcs11/libtpm2_pkcs11\.so$') \
        /usr/lib/*/pkcs11/libtpm2_pkcs11.so /usr/lib/*/libtpm2_pkcs11.so.1 \
        /usr/lib/pkcs11/libtpm2_pkcs11.so /usr/local/lib/libtpm2_pkcs11.so
}

# shellcheck disable=SC2046
have_lib() { first_file /usr/lib/*/"$1" /usr/lib/"$1" /usr/local/lib/"$1" >/dev/null; }

install_missing() {
    local need=()
    command -v swtpm >/dev/null || need+=(swtpm)
    { command -v tpm2-abrmd || [ -x /usr/sbin/tpm2-abrmd ]; } >/dev/null || need+=(tpm2-abrmd)
    have_lib libtss2-tcti-tabrmd.so.0 || need+=(libtss2-tcti-tabrmd0)
    have_lib libtss2-tcti-swtpm.so.0 || need+=(libtss2-tcti-swtpm0) # abrmd's link to swtpm
    command -v tpm2_getcap >/dev/null || need+=(tpm2-tools)        # readiness checks, tpm2_ptool
    find_tpm2_pkcs11 >/dev/null || need+=(libtpm2-pkcs11-1)
    # tpm2_ptool is Debian's python (/usr/bin/python3); its package depends on the python modules
    # it needs (tpm2-pytss, cryptography, pyyaml, bcrypt, pyasn1), so no pip here.
    command -v tpm2_ptool >/dev/null || need+=(libtpm2-pkcs11-tools)
    command -v dbus-daemon >/dev/null || need+=(dbus-daemon)
    command -v pkcs11-tool >/dev/null || need+=(opensc)
    apt_install "${need[@]}"
    tpm2_ptool --help >/dev/null 2>&1 || die "tpm2_ptool does not run: try apt-get install --reinstall python3-tpm2-pkcs11-tools"
}

# Absolute path of the folder DIR.
dir_arg() {
    [ -n "${1:-}" ] || die "usage: $0 start|token|env|stop DIR ..."
    [ -d "$1" ] || die "no folder $1"
    (cd "$1" && pwd)
}

# True while pid $1 runs and its command line has $2 (a pid file may outlive its process).
alive() {
    local pid=$1 name=$2 state
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [ "$state" != Z ] || return 1 # a zombie has exited already
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$name"
}

# wait_for WHAT PID NAME LOG CMD...: polls CMD until it succeeds, PID dies, or the timeout.
wait_for() {
    local what=$1 pid=$2 name=$3 log=$4 deadline=$((SECONDS + TIMEOUT))
    shift 4
    until "$@" >/dev/null 2>&1; do
        alive "$pid" "$name" || { tail -n 20 "$log" >&2 || true; die "$what exited during startup (log: $log)"; }
        [ "$SECONDS" -lt "$deadline" ] || { tail -n 20 "$log" >&2 || true; die "$what not ready after ${TIMEOUT}s (log: $log)"; }
        sleep 0.1
    done
}

# export NAME=value, the value bare when it is plain (easy for a program to read), else quoted.
export_line() {
    if [[ $2 =~ ^[A-Za-z0-9_./:=,+@%-]*$ ]]; then
        printf 'export %s=%s\n' "$1" "$2"
    else
        printf "export %s='%s'\n" "$1" "${2//\'/\'\\\'\'}"
    fi
}

print_env() {
    local dir=$1 module
    module=$(find_tpm2_pkcs11) || die "libtpm2_pkcs11.so not found"
    export_line TPM_PKCS11_MODULE "$module"
    export_line TPM2_PKCS11_TCTI "$TCTI"
    export_line TPM2TOOLS_TCTI "$TCTI" # tpm2-tools, and tpm2_ptool's own ESAPI
    export_line DBUS_SESSION_BUS_ADDRESS "$(head -n 1 "$dir/dbus.address")"
    export_line TPM2_PKCS11_STORE "$dir/store"
    export_line TPM2_PKCS11_LOG_LEVEL 0 # errors only: its warnings are noise for callers
    export_line TSS2_LOG all+ERROR      # tpm2-tss likewise
}

load_env() {
    [ -s "$1/env" ] || die "$1 has no running TPM: run $0 start $1 first"
    # shellcheck disable=SC1091
    . "$1/env"
}

cmd_start() {
    local dir sock state pid name started=$EPOCHREALTIME
    [ -z "${1:-}" ] || mkdir -p "$1"
    dir=$(dir_arg "${1:-}")
    install_missing
    for name in swtpm dbus tabrmd; do
        if [ -s "$dir/$name.pid" ] && alive "$(cat "$dir/$name.pid")" ""; then
            die "a TPM already runs in $dir: run $0 stop $dir first"
        fi
    done
    rm -f "$dir/env" "$dir/dbus.address" "$dir/sockdir"
    mkdir -p "$dir/state" "$dir/store"
    # A unix socket path has at most 107 bytes, and swtpm's options, the TCTI string and the D-Bus
    # address split on commas: for a long or unusual DIR, sockets and a link to the state go to a
    # short folder.
    sock=$dir state=$dir/state
    if [ "${#dir}" -gt 80 ] || ! [[ $dir =~ ^[A-Za-z0-9_./-]+$ ]]; then
        sock=$(mktemp -d /tmp/tpm.XXXXXX)
        echo "$sock" >"$dir/sockdir"
        ln -s "$dir/state" "$sock/state"
        state=$sock/state
    fi
    # A half start leaves nothing running: die exits, and this stops what had started.
    # shellcheck disable=SC2064  # $dir expands now
    trap "[ \$? -eq 0 ] || cmd_stop $(printf %q "$dir") >/dev/null 2>&1" EXIT

    # Background processes get /dev/null and log files, never our stdout: a caller reading our
    # output with $(...) would otherwise wait for them to exit.
    step "starting swtpm"
    rm -f "$sock/swtpm.sock" "$sock/swtpm.sock.ctrl"
    swtpm socket --tpm2 --tpmstate dir="$state" \
        --server type=unixio,path="$sock/swtpm.sock" --ctrl type=unixio,path="$sock/swtpm.sock.ctrl" \
        --flags not-need-init,startup-clear \
        </dev/null >>"$dir/swtpm.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/swtpm.pid"
    # The swtpm server takes one client at a time: this probe must end before abrmd connects.
    wait_for swtpm "$pid" swtpm "$dir/swtpm.log" \
        timeout 5 tpm2_getcap -T "swtpm:path=$sock/swtpm.sock" properties-fixed

    step "starting a private D-Bus bus"
    cat >"$dir/dbus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=$sock/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <!-- Any local user may use this TPM: the tests run daemons as nobody too. -->
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
EOF
    rm -f "$sock/bus"
    # --nofork keeps $! the daemon's pid; it writes the address once it listens.
    dbus-daemon --config-file="$dir/dbus.conf" --nofork --nopidfile --print-address=3 \
        3>"$dir/dbus.address" </dev/null >>"$dir/dbus.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/dbus.pid"
    wait_for dbus-daemon "$pid" dbus-daemon "$dir/dbus.log" test -s "$dir/dbus.address"
    DBUS_SESSION_BUS_ADDRESS=$(head -n 1 "$dir/dbus.address")
    export DBUS_SESSION_BUS_ADDRESS

    step "starting tpm2-abrmd"
    local abrmd=(tpm2-abrmd)
    command -v tpm2-abrmd >/dev/null || abrmd=(/usr/sbin/tpm2-abrmd)
    [ "$(id -u)" -ne 0 ] || abrmd+=(--allow-root) # it refuses root otherwise
    # The most abrmd allows (defaults 27): each process that loaded tpm2-pkcs11 holds a connection,
    # and every key it generates or uses holds transient objects until it logs out or finalizes.
    "${abrmd[@]}" --session --logger=stdout --max-connections=100 --max-transients=100 \
        --tcti="swtpm:path=$sock/swtpm.sock" </dev/null >>"$dir/tabrmd.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/tabrmd.pid"
    wait_for tpm2-abrmd "$pid" tpm2-abrmd "$dir/tabrmd.log" \
        timeout 5 tpm2_getcap -T "$TCTI" properties-fixed
    # A TPM counts wrong PINs against its dictionary-attack protection and then refuses every
    # authorization for a while; the tests try wrong PINs on purpose, so this TPM forgives them.
    timeout 5 tpm2_dictionarylockout -T "$TCTI" --clear-lockout >/dev/null
    timeout 5 tpm2_dictionarylockout -T "$TCTI" --setup-parameters --max-tries=100000 \
        --recovery-time=1 --lockout-recovery-time=1 >/dev/null

    print_env "$dir" >"$dir/env"
    trap - EXIT
    step "TPM ready in $(awk "BEGIN {printf \"%.2f\", $EPOCHREALTIME - $started}")s ($dir)"
    cat "$dir/env"
}

cmd_token() {
    [ "$#" -eq 4 ] || die "usage: $0 token DIR LABEL PINFILE SOPINFILE"
    local dir label=$2 userpin sopin pid
    userpin=$(head -n 1 "$3") || die "cannot read the PIN file $3"
    sopin=$(head -n 1 "$4") || die "cannot read the SO PIN file $4"
    dir=$(dir_arg "$1")
    install_missing
    load_env "$dir"
    mkdir -p "$TPM2_PKCS11_STORE"
    # One primary key holds every token: reuse it if an earlier token made it.
    pid=$(tpm2_ptool listprimaries --path "$TPM2_PKCS11_STORE" 2>/dev/null | awk '/id:/ {print $NF; exit}') || true
    if [ -z "$pid" ]; then
        step "tpm2_ptool init"
        pid=$(tpm2_ptool init --path "$TPM2_PKCS11_STORE" | awk '/id:/ {print $NF; exit}')
        [ -n "$pid" ] || die "tpm2_ptool init printed no primary id"
    fi
    step "tpm2_ptool addtoken --pid=$pid --label=$label"
    # tpm2_ptool takes PINs on its command line only (where ps shows them): test tokens only.
    tpm2_ptool addtoken --path "$TPM2_PKCS11_STORE" --pid="$pid" --label="$label" \
        --userpin="$userpin" --sopin="$sopin" >&2
    pkcs11-tool --module "$TPM_PKCS11_MODULE" -L 2>&1 |
        LABEL=$label awk -F': ' '/token label/ { sub(/ +$/, "", $2); if ($2 == ENVIRON["LABEL"]) found = 1 }
            END { exit !found }' ||
        die "pkcs11-tool -L does not list the token $label"
    step "token $label ready"
}

cmd_stop() {
    local dir name pid deadline
    [ -z "${1:-}" ] || [ -d "$1" ] || return 0 # nothing was started there
    dir=$(dir_arg "${1:-}")
    # Clients first, the TPM last; each by its recorded pid, and only if it is still that program.
    for name in tabrmd:tpm2-abrmd dbus:dbus-daemon swtpm:swtpm; do
        pid=$(cat "$dir/${name%%:*}.pid" 2>/dev/null) || continue
        if alive "$pid" "${name#*:}"; then
            kill -TERM "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 10))
            while alive "$pid" "${name#*:}" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
            if alive "$pid" "${name#*:}"; then kill -KILL "$pid" 2>/dev/null || true; fi
        fi
        rm -f "$dir/${name%%:*}.pid"
    done
    if [ -s "$dir/sockdir" ]; then
        rm -rf "$(cat "$dir/sockdir")"
    fi
    rm -f "$dir/env" "$dir/sockdir" "$dir/dbus.address" "$dir/swtpm.sock" "$dir/swtpm.sock.ctrl" "$dir/bus"
    step "TPM in $dir stopped"
}

case "${1:-}" in
start) cmd_start "${@:2}" ;;
token) cmd_token "${@:2}" ;;
env)
    dir=$(dir_arg "${2:-}")
    load_env "$dir"
    cat "$dir/env"
    ;;
stop) cmd_stop "${@:2}" ;;
install) install_missing ;;
*) die "usage: $0 start DIR | token DIR LABEL USERPIN SOPIN | env DIR | stop DIR | install" ;;
esac
