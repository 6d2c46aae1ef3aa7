#!/usr/bin/env bash
# What a Txn across regions costs (issue 17): the same multi-key Txns —
# `cairn bench txn-put --txn-ops N --spread`, op i's key under its own
# first byte — against real etcd, against Cairn with one data region
# (every txn one Raft proposal, 1PC), and against Cairn split at `b` … `h`
# (each op in its own region: a two-phase commit across N regions). Three
# 3-member clusters on loopback, runs interleaved (etcd, one region, eight
# regions, …) so machine drift cancels out.
#
#   bench/regions.sh          # ~10 min on 2 cores
#   WORKLOAD=read bench/regions.sh
#
# WORKLOAD=read measures what a linearizable read costs instead: `cairn
# bench range` of one key (`d`: one region either way, but with several
# regions every linearizable read takes a TSO read timestamp and catches
# its region up to it) and of `[b, h)` (six regions: a read at one
# timestamp, merged; 120 keys of 256 bytes), linearizable and
# serializable (served by the member alone, at the revision its regions
# resolved: no TSO round, no leader).
#
# Env: ROUNDS (3), TOTAL (requests per run at 16 clients, 50 for reads;
# 1 client runs a tenth), PROFILE (release), RESULTS (JSON lines; default
# target/bench/regions-DATE.jsonl), A (another cairn binary: a fourth
# cluster, split as the eight-region one, runs every case too — "eightA" —
# for an A/B of the path across regions in the same run), B (the binary
# of every other Cairn cluster instead of this tree's build; run an A/B
# twice, swapped, since each cluster's leaders land where they land),
# OPS (the Txn sizes: "2 8"), CLIENTS ("1 16"; 1 client runs a tenth).
# Prints ops/s medians and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}; TOTAL=${TOTAL:-6000}; PROFILE=${PROFILE:-release}
# shellcheck source=bench/need.sh
source bench/need.sh
need etcd:etcd-server python3:python3
if [ -n "${B:-}" ]; then
  CAIRN=$B
else
  if [ "$PROFILE" = release ]; then cargo build --release -q -p cairn; else cargo build -q -p cairn; fi
  CAIRN=$ROOT/target/$PROFILE/cairn
fi
mkdir -p target/bench
RESULTS=${RESULTS:-$ROOT/target/bench/regions-$(date -u +%Y%m%dT%H%M%S).jsonl}
: > "$RESULTS"
# shellcheck source=bench/cluster.sh
source bench/cluster.sh

start_cluster etcd 3 etcd
start_cluster cairn 3 one
# Split by hand, small and cold: no merging back (the default merges them).
SERVE_ARGS="--region-merge-bytes 0" start_cluster cairn 3 eight
"$CAIRN" regions --endpoints "$ENDPOINTS_eight" split b c d e f g h
SYSTEMS="etcd one eight"
if [ -n "${A:-}" ]; then
  B_CAIRN=$CAIRN; CAIRN=$A
  SERVE_ARGS="--region-merge-bytes 0" start_cluster cairn 3 eightA
  CAIRN=$B_CAIRN
  "$CAIRN" regions --endpoints "$ENDPOINTS_eightA" split b c d e f g h
  SYSTEMS="$SYSTEMS eightA"
fi

SHAPE="--key-size 8 --val-size 256 --key-space-size 100000"
# One run of `cairn bench` against system $1 with the rest as its args,
# tagged with the case and round.
run() {
  local sys=$1 case=$2 clients=$3; shift 3
  local ev="ENDPOINTS_$sys"
  echo "[round $round] $sys: $case" >&2
  "$CAIRN" bench --endpoints "${!ev}" --output json --clients "$clients" --conns "$(( clients < 4 ? clients : 4 ))" \
    --tag "system=$sys" --tag "case=$case" --tag "round=$round" --allow-errors "$@" >> "$RESULTS"
}
if [ "${WORKLOAD:-txn}" = read ]; then
  for sys in $SYSTEMS; do
    # The keys to read: 20 under every first byte a … h.
    # shellcheck disable=SC2086
    round=0 run "$sys" load 4 txn-put --txn-ops 8 --spread --total 20 $SHAPE
  done
  for round in $(seq "$ROUNDS"); do
    for clients in 1 50; do
      total=$((TOTAL * 5)); [ "$clients" = 1 ] && total=$((TOTAL / 2))
      for sys in $SYSTEMS; do
        run "$sys" "range one key c=$clients" "$clients" range d --total "$total"
        run "$sys" "range [b, h) c=$clients" "$clients" range b h --total "$((total / 5))"
        run "$sys" "serializable range [b, h) c=$clients" "$clients" range b h --consistency s --total "$((total / 5))"
      done
    done
  done
fi
for round in $(seq "$ROUNDS"); do
  [ "${WORKLOAD:-txn}" = read ] && break
  for ops in ${OPS:-2 8}; do
    for clients in ${CLIENTS:-1 16}; do
      total=$TOTAL; [ "$clients" = 1 ] && total=$((TOTAL / 10))
      for sys in $SYSTEMS; do
        # shellcheck disable=SC2086
        run "$sys" "txn-put ops=$ops c=$clients" "$clients" txn-put --txn-ops "$ops" --spread --total "$total" $SHAPE
      done
    done
  done
done
"$CAIRN" regions --endpoints "$ENDPOINTS_eight"

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
runs, errors = {}, {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    t = r.get("tags", {})
    lat = r.get("latency_ms", {}) or {}
    if t["case"] == "load":
        continue
    runs.setdefault(t["case"], {}).setdefault(t["system"], []).append((r["ops_per_sec"], lat.get("p99")))
    errors[t["system"]] = errors.get(t["system"], 0) + sum(r.get("errors", {}).values())
print("| case | etcd ops/s | Cairn, 1 region | Cairn, 8 regions | 1 region / etcd | 8 regions / 1 region | p99 ms (etcd, 1, 8) |")
print("|---|---:|---:|---:|---:|---:|---|")
for case, s in runs.items():
    med = {k: statistics.median(x for x, _ in v) for k, v in s.items()}
    p99 = {k: statistics.median(p for _, p in v if p is not None) if any(p is not None for _, p in v) else float("nan") for k, v in s.items()}
    print(f"| {case} | {med['etcd']:.0f} | {med['one']:.0f} | {med['eight']:.0f} | "
          f"{med['one']/med['etcd']:.2f} | {med['eight']/med['one']:.2f} | "
          f"{p99['etcd']:.1f}, {p99['one']:.1f}, {p99['eight']:.1f} |")
if any("eightA" in s for s in runs.values()):
    print()
    print("| case | 8 regions, A | 8 regions, this build | this / A | p99 ms (A, this) |")
    print("|---|---:|---:|---:|---|")
    for case, s in runs.items():
        a = statistics.median(x for x, _ in s["eightA"]); b = statistics.median(x for x, _ in s["eight"])
        pa = statistics.median(p for _, p in s["eightA"] if p is not None); pb = statistics.median(p for _, p in s["eight"] if p is not None)
        print(f"| {case} | {a:.0f} | {b:.0f} | {b/a:.2f} | {pa:.1f}, {pb:.1f} |")
print()
print("failed requests (all runs): " + ", ".join(f"{k} {v}" for k, v in errors.items()))
PY
echo "results: $RESULTS"
