#!/bin/sh
# Installs kinfra on a server with systemd: the static binary (built elsewhere by `./x dist`;
# no cargo needed here), the unit deploy/kinfra.service, and a starting config when there is
# none. Then, when systemd runs, `systemctl daemon-reload` and `enable --now kinfra`.
#
# Usage (as root, from an unpacked checkout or release with dist/ and deploy/):
#   sh deploy/install.sh [--binary PATH] [--prefix DIR] [--root DIR] [--no-start]
#
#   --binary PATH  the kinfra binary to install (default: dist/kinfra, else the one
#                  dist/kinfra-*-linux-musl); its SHA-256 is checked against PATH.sha256, or
#                  a dist/*.sha256 line naming it, when one is there
#   --prefix DIR   install the binary into DIR/bin (default /usr/local); the unit's ExecStart
#                  is rewritten to match
#   --root DIR     install under DIR as if it were / (a staging root: no systemctl calls)
#   --no-start     do not run systemctl
#
# Exit codes: 0 installed, 1 a step failed, 2 bad usage or input (missing binary, checksum
# mismatch).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")

binary=""
prefix=/usr/local
root=""
start=yes

usage() {
    sed -n '6,18p' "$0" | sed 's/^# \{0,1\}//'
}

bad_usage() {
    echo "install.sh: $*" >&2
    usage >&2
    exit 2
}

fail() {
    code=$1
    shift
    echo "install.sh: $*" >&2
    exit "$code"
}

while [ $# -gt 0 ]; do
    case $1 in
        --binary) [ $# -ge 2 ] || bad_usage "$1 needs a value"; binary=$2; shift 2 ;;
        --prefix) [ $# -ge 2 ] || bad_usage "$1 needs a value"; prefix=$2; shift 2 ;;
        --root) [ $# -ge 2 ] || bad_usage "$1 needs a value"; root=$2; shift 2 ;;
        --no-start) start=no; shift ;;
        -h|--help) usage; exit 0 ;;
        *) bad_usage "unknown argument: $1" ;;
    esac
done

case $prefix in
    /*) ;;
    *) fail 2 "--prefix must be an absolute path: $prefix" ;;
esac
if [ -n "$root" ]; then
    [ -d "$root" ] || fail 2 "--root $root is not a directory"
    root=$(cd "$root" && pwd)
    start=no
fi

# The binary: --binary, else what `./x dist` wrote.
if [ -z "$binary" ]; then
    binary=$top/dist/kinfra
    if [ ! -e "$binary" ]; then
        for candidate in "$top"/dist/kinfra-*-linux-musl; do
            if [ -f "$candidate" ]; then
                binary=$candidate
                break
            fi
        done
    fi
fi
[ -f "$binary" ] || fail 2 "no kinfra binary at $binary (build it with ./x dist, or pass --binary PATH)"

# Its checksum, when dist/ has one: PATH.sha256 (a bare hash or sha256sum's "HASH  NAME"),
# else a line of any *.sha256 beside it that names the binary.
sha256_of() {
    sha256sum "$1" | cut -d ' ' -f 1
}
expected=""
name=$(basename "$binary")
if [ -f "$binary.sha256" ]; then
    expected=$(cut -d ' ' -f 1 <"$binary.sha256" | head -n 1)
else
    for sums in "$(dirname "$binary")"/*.sha256; do
        [ -f "$sums" ] || continue
        line=$(grep -E "^[0-9a-fA-F]{64} [ *]?(.*/)?$name\$" "$sums" | head -n 1 || true)
        if [ -n "$line" ]; then
            expected=$(echo "$line" | cut -d ' ' -f 1)
            break
        fi
    done
fi
if [ -n "$expected" ]; then
    actual=$(sha256_of "$binary")
    if [ "$actual" != "$expected" ]; then
        fail 2 "SHA-256 of $binary is $actual, but its checksum file says $expected (a damaged or different binary): not installed"
    fi
    echo "install.sh: SHA-256 of $binary checked"
fi

bindir=$root$prefix/bin
unitdir=$root/etc/systemd/system
confdir=$root/etc/kinfra

# The binary goes in under a temporary name first, then is renamed: a running kinfra keeps
# its old file, and nothing is half-written.
install -d -m 0755 "$bindir" "$unitdir" "$confdir"
install -m 0755 "$binary" "$bindir/.kinfra.new"
mv -f "$bindir/.kinfra.new" "$bindir/kinfra"

sed "s|^ExecStart=/usr/local/bin/kinfra |ExecStart=$prefix/bin/kinfra |" \
    "$here/kinfra.service" >"$unitdir/.kinfra.service.new"
chmod 0644 "$unitdir/.kinfra.service.new"
mv -f "$unitdir/.kinfra.service.new" "$unitdir/kinfra.service"

config=$confdir/kinfra.toml
if [ -e "$config" ]; then
    echo "install.sh: kept the existing config $config"
else
    cat >"$config" <<'EOF'
# kinfra's config on this server (written once by deploy/install.sh; it is never
# overwritten). Check a change with `kinfra config check -c /etc/kinfra/kinfra.toml`, apply it
# with `systemctl reload kinfra`; see the services with
# `kinfra runtime status -c /etc/kinfra/kinfra.toml`.

[project]
name = "kinfra"
# The unit's StateDirectory (it also sets KINFRA_PROJECT__STATE_DIR to it); here too, so
# `kinfra runtime ... -c /etc/kinfra/kinfra.toml` finds the control socket.
state_dir = "/var/lib/kinfra"

# The dashboard on this machine only: reach it through an SSH tunnel, or set
# KINFRA_DASHBOARD_TOKEN in the unit before listening beyond loopback.
[dashboard]
listen = "127.0.0.1:9000"

[proxy]
http = "0.0.0.0:80"

# Your services, for example:
# [services.web]
# command = ["/usr/local/bin/my-app", "--port", "${PORT}"]
# port = "auto"
# health = { http = "/healthz" }
#
# [[routes]]
# path = "/"
# service = "web"
EOF
    chmod 0644 "$config"
    echo "install.sh: wrote a starting config $config"
fi

echo "install.sh: installed $bindir/kinfra and $unitdir/kinfra.service"
if [ "$start" = yes ]; then
    # (KINFRA_SYSTEMD_RUN_DIR: for install.sh's own tests.)
    if [ -d "${KINFRA_SYSTEMD_RUN_DIR:-/run/systemd/system}" ]; then
        systemctl daemon-reload
        systemctl enable --now kinfra.service
        echo "install.sh: kinfra is enabled and started (systemctl status kinfra)"
    else
        echo "install.sh: systemd is not running here; start kinfra with: $prefix/bin/kinfra runtime up -c /etc/kinfra/kinfra.toml"
    fi
fi
