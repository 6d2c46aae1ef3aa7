#!/usr/bin/env bash
# Writes while a large history is compacted, beside etcd in one run: each
# system (3 members on this machine) gets VERSIONS puts over KEYS keys
# (so all but KEYS versions are compacted away), then a put run of TOTAL
# puts to the same keys, alone ("quiet") and with a compaction of that
# history asked for 1 s into it ("compacting"). Reports the put runs'
# ops/s, p99 and max, and how long the Compact call took (`etcdctl
# compaction`, not physical: answered once applied). Systems run in turn,
# each on a fresh cluster, ROUNDS times.
#
#   CAIRN=target/release/cairn [OLD=/tmp/cairn-before] bench/compaction.sh
#
# Env: CAIRN (required; also runs the benchmark), OLD (a second Cairn
# binary, e.g. the one before a change), KEYS (1000), VERSIONS (300000),
# TOTAL (60000), CLIENTS (50), ROUNDS (2), ETCD (0: leave etcd out),
# RESULTS (JSON lines; default target/bench/compaction-DATE.jsonl).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${CAIRN:?set CAIRN to a cairn binary}"
KEYS=${KEYS:-1000}; VERSIONS=${VERSIONS:-300000}; TOTAL=${TOTAL:-60000}
CLIENTS=${CLIENTS:-50}; ROUNDS=${ROUNDS:-2}
RESULTS=${RESULTS:-$ROOT/target/bench/compaction-$(date -u +%Y%m%dT%H%M%S).jsonl}
mkdir -p "$(dirname "$RESULTS")"
# shellcheck source=bench/cluster.sh
source "$ROOT/bench/cluster.sh"
BENCH=$CAIRN
SYSTEMS=(cairn); [ -n "${OLD:-}" ] && SYSTEMS=(old cairn)
[ "${ETCD:-1}" = 0 ] || SYSTEMS=(etcd "${SYSTEMS[@]}")
SHAPE="--key-size 8 --val-size 64 --key-space-size $KEYS"

run() {
  local name=$1 case=$2 ev="ENDPOINTS_$1"
  # shellcheck disable=SC2086
  "$BENCH" bench --endpoints "${!ev}" --output json --clients "$CLIENTS" --conns 5 \
    --tag "system=$name" --tag "case=$case" --tag "round=$round" --allow-errors \
    put --total "$TOTAL" $SHAPE >> "$RESULTS"
}

for round in $(seq "$ROUNDS"); do
  for sys in "${SYSTEMS[@]}"; do
    kind=cairn; [ "$sys" = etcd ] && kind=etcd
    if [ "$sys" = old ]; then CAIRN=$OLD; else CAIRN=$BENCH; fi
    start_cluster "$kind" 3 "$sys"
    CAIRN=$BENCH
    ev="ENDPOINTS_$sys"
    echo "[round $round] $sys: $VERSIONS puts over $KEYS keys" >&2
    # shellcheck disable=SC2086
    "$BENCH" bench --endpoints "${!ev}" --output json --clients 100 --conns 10 \
      put --total "$VERSIONS" $SHAPE > /dev/null
    run "$sys" quiet
    rev=$(etcdctl --endpoints "${!ev}" get x -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])')
    (
      sleep 1
      start=$(date +%s.%N)
      etcdctl --endpoints "${!ev}" --command-timeout 120s compaction "$rev" > /dev/null
      end=$(date +%s.%N)
      python3 -c "import json,sys; print(json.dumps({'workload':'compact','tags':{'system':'$sys','round':'$round'},'ms':($end-$start)*1000}))" >> "$RESULTS"
    ) &
    compactor=$!
    run "$sys" compacting
    wait "$compactor"
    stop_cluster "$sys"
  done
done

python3 - "$RESULTS" "${SYSTEMS[@]}" <<'PY'
import json, statistics, sys
systems = sys.argv[2:]
runs, compact = {}, {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    t = r["tags"]
    if r["workload"] == "compact":
        compact.setdefault(t["system"], []).append(r["ms"])
        continue
    lat = r["latency_ms"]
    runs.setdefault((t["system"], t["case"]), []).append(
        (r["ops_per_sec"], lat["p99"], lat["max"], sum(r.get("errors", {}).values())))
med = lambda xs: statistics.median(xs)
print("| system | Compact call ms | put ops/s quiet | compacting | p99 ms quiet | compacting | max ms quiet | compacting | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for s in systems:
    q, c = runs.get((s, "quiet"), []), runs.get((s, "compacting"), [])
    if not q or not c:
        continue
    f = lambda rs, i: med([r[i] for r in rs])
    print(f"| {s} | {med(compact[s]):.0f} | {f(q,0):.0f} | {f(c,0):.0f} | {f(q,1):.1f} | {f(c,1):.1f} | {f(q,2):.0f} | {f(c,2):.0f} | {sum(r[3] for r in q + c)} |")
print(f"\n(medians of {len(runs.get((systems[0], 'quiet'), []))} rounds; every run in {sys.argv[1]})")
PY
