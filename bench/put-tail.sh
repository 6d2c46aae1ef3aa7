#!/usr/bin/env bash
# The put tail under accumulated data, beside etcd (docs/benchmarks.md,
# "What is left in the tail"). Per round, on fresh 1-node servers: etcd,
# then Cairn once per entry of CAIRN_ARGS; each preloads PRE keys, then
# runs TOTAL puts with 200 clients over the same key space and prints
# throughput, p50/p99/p99.9 and disk. TRACE=1 also records every fsync or
# fdatasync slower than 15 ms inside Cairn's server during the measured puts
# (`perf trace`, needs root) and prints their durations.
#
# Env: ROUNDS (2), PRE (300000), TOTAL (100000),
#      CAIRN_ARGS (extra serve args per Cairn variant, ';'-separated; default one
#      variant with none). Example:
#   CAIRN_ARGS='--snapshot-count 10000;--snapshot-count 100000' bench/put-tail.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-2}; PRE=${PRE:-300000}; TOTAL=${TOTAL:-100000}
IFS=';' read -r -a VARIANTS <<< "${CAIRN_ARGS:-}"
[ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=("")
command -v etcd >/dev/null || { echo "needs etcd (apt-get install etcd-server)" >&2; exit 1; }
cargo build --release -q -p cairn
CAIRN=$ROOT/target/release/cairn
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

run() {
  local sys=$1 extra=$2 round=$3 c p d pid tp="" r
  c=$(port); p=$(port); d=$(mktemp -d "$WORK/d.XXXX")
  local common=(--name m1 --data-dir "$d"
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c"
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p"
    --initial-cluster "m1=http://127.0.0.1:$p" --initial-cluster-state new)
  if [ "$sys" = etcd ]; then
    etcd "${common[@]}" > "$d.log" 2>&1 &
  else
    # shellcheck disable=SC2086 # $extra is a list of serve arguments
    "$CAIRN" serve "${common[@]}" $extra > "$d.log" 2>&1 &
  fi
  pid=$!
  "$CAIRN" bench --endpoints "127.0.0.1:$c" range ready --total 1 --output json > /dev/null
  "$CAIRN" bench --endpoints "127.0.0.1:$c" --clients 200 --conns 20 --output json \
    put --total "$PRE" --key-size 16 --val-size 256 --key-space-size "$PRE" --sequential-keys > /dev/null
  if [ "${TRACE:-}" = 1 ] && [ "$sys" = cairn ]; then
    perf trace -p "$pid" -e fdatasync,fsync --duration 15 -o "$d.trace" & tp=$!
    sleep 1
  fi
  r=$("$CAIRN" bench --endpoints "127.0.0.1:$c" --target-leader --clients 200 --conns 20 --output json \
    put --total "$TOTAL" --key-size 16 --val-size 256 --key-space-size "$PRE")
  if [ -n "$tp" ]; then kill -INT "$tp"; wait "$tp" || true; fi
  echo "round $round $sys ${extra:+($extra) }$(python3 -c '
import json, sys
j = json.loads(sys.argv[1]); l = j["latency_ms"]
print("%.0f ops/s  p50 %.1f  p99 %.1f  p99.9 %.1f ms" % (j["ops_per_sec"], l["p50"], l["p99"], l["p999"]))' "$r")  disk $(du -sm "$d" | cut -f1) MB"
  if [ -n "$tp" ]; then
    echo "  slow syncs: $(sed -nE 's/.*\( *([0-9.]+) ms\): ([a-z:-]+)[^ ]* (f[a-z]*sync).*/\3 by \2 \1 ms;/p' "$d.trace" | tr '\n' ' ')"
  fi
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$d" "$d.log" "$d.trace"
}

for round in $(seq "$ROUNDS"); do
  run etcd "" "$round"
  for v in "${VARIANTS[@]}"; do run cairn "$v" "$round"; done
done
