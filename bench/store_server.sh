#!/usr/bin/env bash
# Store write latency, embedded vs a SurrealDB server: runs the store bench
# (crates/kinfra-store/examples/store_bench.rs) with a third row through `kinfra-surreal-server`
# (the surrealdb-server crate at the embedded engine's version, surrealkv on the same
# filesystem, fsync every commit, on loopback). Results go to bench/store.md by hand.
#
#   bench/store_server.sh            # N = 2000 updates per row, in a temp dir
#   N=500 DIR=/var/tmp/x bench/store_server.sh
#
# Needs: cargo. Builds both in release. The server started here is stopped on exit (by PID).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-2000}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d "${DIR:-${TMPDIR:-/tmp}}/store-server-bench.XXXXXX")
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

cd "$ROOT"
# One build, so the SurrealDB crates are compiled once for both.
cargo build --release -p kinfra-surreal-server -p kinfra-store \
  --bin kinfra-surreal-server --example store_bench

PASS=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
KINFRA_SURREAL_USER=root KINFRA_SURREAL_PASS=$PASS \
  "$TARGET_DIR/release/kinfra-surreal-server" --bind 127.0.0.1:0 --path "$WORK/server" \
  > "$WORK/server.out" &
SERVER_PID=$!
ADDR=
for _ in $(seq 600); do
  ADDR=$(sed -n 's/^kinfra-surreal-server listening on //p' "$WORK/server.out" | head -1)
  [ -n "$ADDR" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "kinfra-surreal-server exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$ADDR" ] || { echo "kinfra-surreal-server did not start within 60 s" >&2; exit 1; }

STORE_BENCH_URL="ws://$ADDR" STORE_BENCH_USER=root STORE_BENCH_PASS=$PASS \
  "$TARGET_DIR/release/examples/store_bench" "$WORK/bench" "$N"
