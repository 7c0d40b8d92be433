# shellcheck shell=bash
# Shared by the scripts: messages, finding PKCS#11 modules, installing what is missing.
# Sourced, not run.

step() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Prints the first argument that is an existing file.
first_file() {
    local f
    for f in "$@"; do [ -f "$f" ] && { printf '%s\n' "$f"; return 0; }; done
    return 1
}

# shellcheck disable=SC2046  # dpkg -L paths have no spaces; globs that match nothing are skipped
# Debian's paths, then Homebrew's (Apple silicon, then Intel Macs).
find_softhsm() {
    first_file $(dpkg -L libsofthsm2 softhsm2 2>/dev/null | grep '/libsofthsm2\.so$') \
        /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
        /usr/lib/*/softhsm/libsofthsm2.so /opt/homebrew/lib/softhsm/libsofthsm2.so \
        /usr/local/lib/softhsm/libsofthsm2.so
}

# shellcheck disable=SC2046
find_spy() {
    first_file $(dpkg -L opensc-pkcs11 opensc 2>/dev/null | grep '/pkcs11/pkcs11-spy\.so$') \
        /usr/lib/*/pkcs11/pkcs11-spy.so /usr/lib/pkcs11/pkcs11-spy.so /usr/lib/*/pkcs11-spy.so
}

# Installs the Debian packages named, if any: as root with apt-get, else says the sudo command.
# On macOS it names the Homebrew formulas instead (softhsm2 is `softhsm` there).
apt_install() {
    [ "$#" -gt 0 ] || return 0
    if [ "$(uname -s)" = Darwin ]; then
        local formulas=("${@/softhsm2/softhsm}")
        die "missing: ${formulas[*]}; install them with: brew install ${formulas[*]}"
    fi
    local install=(apt-get install -y --no-install-recommends "$@")
    if [ "$(id -u)" -ne 0 ]; then
        printf 'missing: %s; install them with:\n  sudo apt-get update && sudo %s\n' "$*" "${install[*]}" >&2
        exit 1
    fi
    step "installing $*"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive "${install[@]}" >&2
}

# pip-installs the Python packages named, also where Debian marks its Python externally managed.
pip_install() {
    local out
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    step "pip install $*"
    if ! out=$(python3 -m pip install --quiet "$@" 2>&1); then
        grep -q externally-managed-environment <<<"$out" || { printf '%s\n' "$out" >&2; die "pip could not install $*"; }
        python3 -m pip install --quiet --break-system-packages "$@"
    fi
}
