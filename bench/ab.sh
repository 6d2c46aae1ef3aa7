#!/usr/bin/env bash
# A/B of two Cairn binaries on this machine: one cluster of each, started
# side by side, the same `cairn bench` cases run interleaved (A, B, A, B, …)
# so machine drift cancels out. For telling a change's cost from noise
# (docs/benchmarks.md); etcd is not involved.
#
#   A=/tmp/cairn-old B=target/release/cairn bench/ab.sh
#
# Env: A, B (binaries; required), NODES (3), ROUNDS (4), CASES (a regex over
# the case names below; default: every case), RESULTS (JSON lines; default
# target/bench/ab-DATE.jsonl). Prints each system's median ops/s per case
# and the ratio B/A.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${A:?set A to the baseline binary}" "${B:?set B to the binary under test}"
NODES=${NODES:-3}; ROUNDS=${ROUNDS:-4}; ONLY=${CASES:-.}
RESULTS=${RESULTS:-$ROOT/target/bench/ab-$(date -u +%Y%m%dT%H%M%S).jsonl}
mkdir -p "$(dirname "$RESULTS")"
# WORK, PIDS (killed on exit) and port().
# shellcheck source=bench/cluster.sh
source "$ROOT/bench/cluster.sh"

# start NAME BINARY -> sets ENDPOINTS_<NAME>
start() {
  local name=$1 bin=$2 initial="" i
  local -a cports=() pports=()
  for i in $(seq "$NODES"); do cports+=("$(port)"); pports+=("$(port)"); done
  for i in $(seq "$NODES"); do initial+="${initial:+,}m$i=http://127.0.0.1:${pports[$((i-1))]}"; done
  for i in $(seq "$NODES"); do
    local c=${cports[$((i-1))]} p=${pports[$((i-1))]} d=$WORK/$name/m$i
    mkdir -p "$d"
    "$bin" serve --name "m$i" --data-dir "$d" \
      --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
      --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
      --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token "ab-$name" \
      > "$WORK/$name-m$i.log" 2>&1 &
    PIDS+=($!)
  done
  local eps; eps=$(printf '127.0.0.1:%s,' "${cports[@]}"); eps=${eps%,}
  printf -v "ENDPOINTS_$name" '%s' "$eps"
  "$B" bench --endpoints "$eps" range ab-ready --total 1 --output json > /dev/null
  "$B" bench --endpoints "$eps" --output json put --total 1 --key-size 8 --val-size 256 \
    --sequential-keys --key-space-size 1 > /dev/null
}

PUT="--key-size 8 --val-size 256 --key-space-size 100000"
CASES_ALL=(
  "put c=1|--target-leader --clients 1 --conns 1 put --total 3000 $PUT"
  "put c=50|--target-leader --clients 50 --conns 5 put --total 30000 $PUT"
  "txn-put c=50|--target-leader --clients 50 --conns 5 txn-put --total 30000 $PUT"
  "range-l c=50|--target-leader --clients 50 --conns 6 range 00000001 --total 40000"
  # Connections spread over every member: two reads in three are forwarded
  # to the leader (its read index).
  "range-l any member c=50|--clients 50 --conns 6 range 00000001 --total 40000"
  # Puts with 4 streams of 10 watchers each on them (the watch path).
  "watch c=16|--clients 16 --conns 4 watch-latency --put-total 20000 --streams 4 --watchers-per-stream 10"
)

start a "$A"
start b "$B"
for round in $(seq "$ROUNDS"); do
  for c in "${CASES_ALL[@]}"; do
    IFS='|' read -r case args <<< "$c"
    [[ "$case" =~ $ONLY ]] || continue
    for sys in a b; do
      ev="ENDPOINTS_$sys"
      echo "[round $round] $sys: $case" >&2
      # shellcheck disable=SC2086
      "$B" bench --endpoints "${!ev}" --output json --tag "system=$sys" --tag "case=$case" \
        --tag "round=$round" $args >> "$RESULTS"
    done
  done
done

python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    t = r.get("tags", {})
    runs.setdefault(t["case"], {}).setdefault(t["system"], []).append(r["ops_per_sec"])
print("| case | A ops/s (each round) | B ops/s (each round) | B/A of medians |")
print("|---|---|---|---:|")
for case, s in runs.items():
    a, b = s.get("a", []), s.get("b", [])
    fmt = lambda xs: ", ".join(f"{x:.0f}" for x in xs)
    ratio = statistics.median(b) / statistics.median(a) if a and b else float("nan")
    print(f"| {case} | {fmt(a)} | {fmt(b)} | {ratio:.2f} |")
EOF
echo "results: $RESULTS"
