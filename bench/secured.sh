#!/usr/bin/env bash
# What TLS and auth cost, beside etcd (docs/benchmarks.md, "TLS and auth
# on"). Starts 3-node etcd and Cairn clusters in three modes each (see
# bench/cluster.sh): plain; tls (TLS on client and peer ports, client
# certificates required); auth (tls, and auth on, the client a non-root
# user with a permission, so each request is checked). Runs the same
# workloads on all six, interleaved (etcd plain, Cairn plain, etcd tls, …)
# so machine drift cancels out, and prints a Markdown table of medians:
# each system's ops/s per mode, Cairn/etcd, and each mode against the same
# system's plain run.
#
#   ROUNDS=3 bench/secured.sh          # ~15 min on 2 cores
#   QUICK=1 bench/secured.sh           # smoke run (debug build, tiny totals)
#
# Env: ROUNDS (3), SCALE (1), NODES (3), PROFILE (release), RESULTS (JSON
# lines; default target/bench/secured-DATE.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ -n "${QUICK:-}" ]; then ROUNDS=${ROUNDS:-1}; SCALE=${SCALE:-0.01}; PROFILE=${PROFILE:-debug}; fi
ROUNDS=${ROUNDS:-3}; SCALE=${SCALE:-1}; NODES=${NODES:-3}; PROFILE=${PROFILE:-release}

# shellcheck source=bench/need.sh
source bench/need.sh
need etcd:etcd-server etcdctl:etcd-client
if [ "$PROFILE" = release ]; then cargo build --release -q -p cairn; else cargo build -q -p cairn; fi
CAIRN=$ROOT/target/$PROFILE/cairn
mkdir -p target/bench
RESULTS=${RESULTS:-$ROOT/target/bench/secured-$(date -u +%Y%m%dT%H%M%S).jsonl}
: > "$RESULTS"
scaled() { python3 -c "import sys; print(max(20, int($1 * $SCALE)))"; }
# shellcheck source=bench/cluster.sh
source bench/cluster.sh

PUT="--key-size 8 --val-size 256 --key-space-size 100000"
CASES=(
  "put c=1|--target-leader --clients 1 --conns 1 put --total $(scaled 2000) $PUT"
  "put c=50|--target-leader --clients 50 --conns 5 put --total $(scaled 20000) $PUT"
  "range-l c=1|--target-leader --clients 1 --conns 1 range 00000001 --total $(scaled 4000)"
  "range-l c=50|--target-leader --clients 50 --conns 6 range 00000001 --total $(scaled 40000)"
  "range-s c=50|--consistency s --clients 50 --conns 6 range 00000001 --total $(scaled 40000)"
)
MODES=(plain tls auth)
for mode in "${MODES[@]}"; do
  for sys in etcd cairn; do
    start_cluster "$sys" "$NODES" "${sys}_$mode" "$mode"
    ev="ENDPOINTS_${sys}_$mode"; cv="CREDS_${sys}_$mode"
    # shellcheck disable=SC2086
    "$CAIRN" bench --endpoints "${!ev}" ${!cv} --output json put --total 1 --key-size 8 --val-size 256 \
      --sequential-keys --key-space-size 1 > /dev/null
  done
done
for round in $(seq "$ROUNDS"); do
  for c in "${CASES[@]}"; do
    IFS='|' read -r case args <<< "$c"
    for mode in "${MODES[@]}"; do
      for sys in etcd cairn; do
        echo "[round $round] $sys $mode: $case" >&2
        ev="ENDPOINTS_${sys}_$mode"; cv="CREDS_${sys}_$mode"
        # shellcheck disable=SC2086
        "$CAIRN" bench --endpoints "${!ev}" ${!cv} --output json --tag "system=$sys" --tag "mode=$mode" \
          --tag "case=$case" --tag "round=$round" $args >> "$RESULTS"
      done
    done
  done
done

python3 - "$RESULTS" "$ROUNDS" "$NODES" <<'PY'
import json, statistics, sys
from collections import defaultdict
runs = defaultdict(list)
cases = []
for line in open(sys.argv[1]):
    r = json.loads(line)
    t = r["tags"]
    if t["case"] not in cases:
        cases.append(t["case"])
    runs[(t["case"], t["mode"], t["system"])].append(r)
def med(case, mode, sys, f):
    return statistics.median(f(r) for r in runs[(case, mode, sys)])
ops = lambda r: r["ops_per_sec"]
p99 = lambda r: r["latency_ms"]["p99"]
print(f"{sys.argv[3]} nodes each, median of {sys.argv[2]} rounds; ops/s, p99 in ms.\n")
print("| case | mode | etcd ops/s | Cairn ops/s | Cairn/etcd | etcd p99 | Cairn p99 | etcd vs its plain | Cairn vs its plain |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for case in cases:
    for mode in ("plain", "tls", "auth"):
        e, c = med(case, mode, "etcd", ops), med(case, mode, "cairn", ops)
        ep, cp = med(case, "plain", "etcd", ops), med(case, "plain", "cairn", ops)
        print(f"| {case} | {mode} | {e:.0f} | {c:.0f} | {c / e:.2f} | {med(case, mode, 'etcd', p99):.2f} "
              f"| {med(case, mode, 'cairn', p99):.2f} | {e / ep:.2f} | {c / cp:.2f} |")
PY
echo "results: $RESULTS" >&2
