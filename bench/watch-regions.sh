#!/usr/bin/env bash
# How long a watch over several regions waits for its events (issue 17):
# `cairn bench watch-latency` (put sent → every watcher holds its event)
# against real etcd, against Cairn with one data region, and against Cairn
# split inside the watched prefix into REGIONS regions, of which the puts
# land in one and the rest stay idle — so each event waits until every idle
# region in the watch has resolved past it (closed timestamps,
# `node::closes`, hurried by the watch: `node::close_hurry`). Three
# 3-member clusters on loopback, runs interleaved so drift cancels out; the
# CPU each cluster used over its runs is reported beside the latency.
#
#   bench/watch-regions.sh                    # ~6 min on 2 cores
#   REGIONS=64 A=/tmp/cairn-old bench/watch-regions.sh
#
# Env: ROUNDS (3), REGIONS (8), PROFILE (release), RESULTS (JSON lines;
# default target/bench/watch-regions-DATE.jsonl), A (another cairn binary:
# a fourth cluster, split alike, runs every case too — "manyA" — for a
# before/after in the same run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}; REGIONS=${REGIONS:-8}; PROFILE=${PROFILE:-release}
# shellcheck source=bench/need.sh
source bench/need.sh
need etcd:etcd-server python3:python3
if [ "$PROFILE" = release ]; then cargo build --release -q -p cairn; else cargo build -q -p cairn; fi
CAIRN=$ROOT/target/$PROFILE/cairn
mkdir -p target/bench
RESULTS=${RESULTS:-$ROOT/target/bench/watch-regions-$(date -u +%Y%m%dT%H%M%S).jsonl}
: > "$RESULTS"
# shellcheck source=bench/cluster.sh
source bench/cluster.sh

# The puts' keys are bench-watch/<digits>: split points after them leave
# every put in the first region of the watched prefix.
splits=$(for i in $(seq 1 $((REGIONS - 1))); do printf 'bench-watch/x%04d ' "$i"; done)
start_cluster etcd 3 etcd
start_cluster cairn 3 one
# Split by hand, small and cold: no merging back (the default merges them).
SERVE_ARGS="--region-merge-bytes 0" start_cluster cairn 3 many
# shellcheck disable=SC2086
"$CAIRN" regions --endpoints "$ENDPOINTS_many" split $splits > /dev/null
SYSTEMS="etcd one many"
if [ -n "${A:-}" ]; then
  B_CAIRN=$CAIRN; CAIRN=$A
  SERVE_ARGS="--region-merge-bytes 0" start_cluster cairn 3 manyA
  CAIRN=$B_CAIRN
  # shellcheck disable=SC2086
  "$CAIRN" regions --endpoints "$ENDPOINTS_manyA" split $splits > /dev/null
  SYSTEMS="$SYSTEMS manyA"
fi
echo "split into $REGIONS regions under the watched prefix; settling 10s"
sleep 10

# One run of `cairn bench` against system $1, tagged with the case, the
# round and the CPU its cluster used over the run (seconds).
run() {
  local sys=$1 case=$2; shift 2
  local ev="ENDPOINTS_$sys" pv="PIDS_$sys" before after
  echo "[round $round] $sys: $case" >&2
  before=$(ticks "${!pv}")
  "$CAIRN" bench --endpoints "${!ev}" --output json --tag "system=$sys" --tag "case=$case" \
    --tag "round=$round" --allow-errors "$@" > "$WORK/run.json"
  after=$(ticks "${!pv}")
  python3 - "$WORK/run.json" "$(( after - before ))" "$(getconf CLK_TCK)" >> "$RESULTS" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read())
r.setdefault("tags", {})["cpu_s"] = "%.2f" % (int(sys.argv[2]) / int(sys.argv[3]))
print(json.dumps(r))
PY
}
for round in $(seq "$ROUNDS"); do
  for sys in $SYSTEMS; do
    run "$sys" "50 puts/s, 1 stream of 10 watchers" --clients 1 --conns 1 \
      watch-latency --put-total 500 --put-rate 50 --streams 1 --watchers-per-stream 10 --val-size 256
    run "$sys" "1000 puts/s, 10 streams of 10 watchers" --clients 10 --conns 2 \
      watch-latency --put-total 5000 --put-rate 1000 --streams 10 --watchers-per-stream 10 --val-size 256
  done
done
"$CAIRN" regions --endpoints "$ENDPOINTS_many" | head -3

python3 - "$RESULTS" "$REGIONS" <<'PY'
import json, statistics, sys
runs, errors = {}, {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    t = r["tags"]
    lat = r.get("latency_ms", {}) or {}
    runs.setdefault(t["case"], {}).setdefault(t["system"], []).append(
        (r["ops_per_sec"], lat.get("p50"), lat.get("p99"), float(t["cpu_s"])))
    errors[t["system"]] = errors.get(t["system"], 0) + sum(r.get("errors", {}).values())
names = {"etcd": "etcd", "one": "Cairn, 1 region", "many": f"Cairn, {sys.argv[2]} regions",
         "manyA": f"Cairn A, {sys.argv[2]} regions"}
print("| case | system | puts/s | event delay p50 / p99 ms | CPU s per run (3 members) |")
print("|---|---|---:|---|---:|")
for case, s in runs.items():
    for k, v in s.items():
        med = lambda i: statistics.median(x[i] for x in v if x[i] is not None)
        print(f"| {case} | {names[k]} | {med(0):.0f} | {med(1):.2f} / {med(2):.2f} | {med(3):.1f} |")
print()
print("failed requests (all runs): " + ", ".join(f"{k} {v}" for k, v in errors.items()))
PY
echo "results: $RESULTS"
