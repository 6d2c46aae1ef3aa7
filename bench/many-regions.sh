#!/usr/bin/env bash
# What hundreds of regions cost a request that touches one (issue 17):
# one-key puts and reads against real etcd, Cairn with two data regions
# (split once: every linearizable read already takes a TSO read timestamp,
# as with any number of regions) and Cairn split by hand into REGIONS data
# regions, the benchmark's keys spread over all of them. Two regions
# against many isolates what the number of regions costs per request
# (routing, response headers, the auth check). Three 3-member clusters on
# loopback, runs interleaved so machine drift cancels out.
#
#   bench/many-regions.sh                     # ~8 min on 2 cores
#   REGIONS=800 ROUNDS=5 bench/many-regions.sh
#
# Env: REGIONS (400), ROUNDS (3), TOTAL (requests per run, 20000),
# CLIENTS (16), SETTLE (seconds after the splits, 20), PROFILE (release),
# CAIRN (a cairn binary to measure instead of building this tree), RESULTS
# (JSON lines; default target/bench/many-regions-DATE.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REGIONS=${REGIONS:-400}; ROUNDS=${ROUNDS:-3}; TOTAL=${TOTAL:-20000}; CLIENTS=${CLIENTS:-16}
SETTLE=${SETTLE:-20}; PROFILE=${PROFILE:-release}
# shellcheck source=bench/need.sh
source bench/need.sh
need etcd:etcd-server python3:python3
if [ -z "${CAIRN:-}" ]; then
  if [ "$PROFILE" = release ]; then cargo build --release -q -p cairn; else cargo build -q -p cairn; fi
  CAIRN=$ROOT/target/$PROFILE/cairn
fi
mkdir -p target/bench
RESULTS=${RESULTS:-$ROOT/target/bench/many-regions-$(date -u +%Y%m%dT%H%M%S).jsonl}
: > "$RESULTS"
# shellcheck source=bench/cluster.sh
source bench/cluster.sh

SPACE=100000
start_cluster etcd 3 etcd
# Split by hand, small and cold: no merging back (the default merges them).
SERVE_ARGS="--region-merge-bytes 0" start_cluster cairn 3 two
SERVE_ARGS="--region-merge-bytes 0" start_cluster cairn 3 many
# The benchmark's keys are 8-digit numbers below SPACE: split points spread
# evenly over them.
"$CAIRN" regions --endpoints "$ENDPOINTS_two" split "$(printf '%08d' $((SPACE / 2)))" > /dev/null
# shellcheck disable=SC2046
"$CAIRN" regions --endpoints "$ENDPOINTS_many" split \
  $(for i in $(seq 1 $((REGIONS - 1))); do printf '%08d ' $((i * SPACE / REGIONS)); done) > /dev/null
listed=$("$CAIRN" regions --endpoints "$ENDPOINTS_many" | wc -l) || listed=0
echo "split into $((listed - 1)) data regions; settling ${SETTLE}s" >&2
sleep "$SETTLE"

SHAPE="--key-size 8 --val-size 256 --key-space-size $SPACE"
# One run of `cairn bench` against system $1, tagged with the case and round.
run() {
  local sys=$1 case=$2; shift 2
  local ev="ENDPOINTS_$sys"
  echo "[round $round] $sys: $case" >&2
  "$CAIRN" bench --endpoints "${!ev}" --output json --clients "$CLIENTS" --conns 4 \
    --tag "system=$sys" --tag "case=$case" --tag "round=$round" --allow-errors "$@" >> "$RESULTS"
}
for round in $(seq "$ROUNDS"); do
  for sys in etcd two many; do
    # shellcheck disable=SC2086
    run "$sys" "put c=$CLIENTS" put --total "$TOTAL" $SHAPE
    run "$sys" "range one key c=$CLIENTS" range 00012345 --total "$TOTAL"
    run "$sys" "serializable range one key c=$CLIENTS" range 00012345 --consistency s --total "$TOTAL"
  done
done
listed=$("$CAIRN" regions --endpoints "$ENDPOINTS_many" | wc -l) || listed=0

python3 - "$RESULTS" "$((listed - 1))" <<'PY'
import json, statistics, sys
runs, errors = {}, {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    t = r.get("tags", {})
    lat = r.get("latency_ms", {}) or {}
    runs.setdefault(t["case"], {}).setdefault(t["system"], []).append((r["ops_per_sec"], lat.get("p99")))
    errors[t["system"]] = errors.get(t["system"], 0) + sum(r.get("errors", {}).values())
print(f"| case | etcd ops/s | Cairn, 2 regions | Cairn, {sys.argv[2]} regions | 2 regions / etcd | {sys.argv[2]} / 2 regions | p99 ms (etcd, 2, {sys.argv[2]}) |")
print("|---|---:|---:|---:|---:|---:|---|")
for case, s in runs.items():
    med = {k: statistics.median(x for x, _ in v) for k, v in s.items()}
    p99 = {k: statistics.median(p for _, p in v if p is not None) if any(p is not None for _, p in v) else float("nan") for k, v in s.items()}
    print(f"| {case} | {med['etcd']:.0f} | {med['two']:.0f} | {med['many']:.0f} | "
          f"{med['two']/med['etcd']:.2f} | {med['many']/med['two']:.2f} | "
          f"{p99['etcd']:.1f}, {p99['two']:.1f}, {p99['many']:.1f} |")
print()
print("failed requests (all runs): " + ", ".join(f"{k} {v}" for k, v in errors.items()))
PY
echo "results: $RESULTS"
