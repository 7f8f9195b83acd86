#!/usr/bin/env sh
# Installs a kinfra binary built from this checkout into /usr/local/bin and the systemd unit.
# Usage (as root, from the repository root): sh deploy/install.sh
set -eu
cargo build --release --bin kinfra
install -m 0755 target/release/kinfra /usr/local/bin/kinfra
install -d -m 0755 /srv/kinfra
install -m 0644 deploy/kinfra.service /etc/systemd/system/kinfra.service
if command -v systemctl >/dev/null 2>&1; then systemctl daemon-reload; fi
echo "Installed /usr/local/bin/kinfra. Put kinfra.toml in /srv/kinfra, then: systemctl enable --now kinfra"
