#!/usr/bin/env bash
# Side-by-side benchmark: real etcd vs Cairn on this machine, same tool
# (`cairn bench`), same durability (both fsync every commit group), runs
# interleaved (etcd, Cairn, etcd, Cairn, …) so machine drift cancels out.
# Starts a 1-node and a 3-node cluster of each on loopback, runs every
# workload on both sizes, loads LOAD_KEYS keys of 256 B into fresh 1-node
# servers for the footprint, and writes the generated section of OUT plus
# PNG charts in CHARTS.
#
#   bench/compare.sh                 # full run (~20 min on 2 cores)
#   QUICK=1 OUT=/tmp/b.md CHARTS=/tmp/b bench/compare.sh   # CI smoke run
#
# Env: ROUNDS (2), SCALE (1: multiplies request totals), LOAD_KEYS (1000000),
# NODES ("1 3"), OUT (docs/benchmarks.md), CHARTS (docs/bench),
# RESULTS (the JSON lines; default target/bench/results-DATE.jsonl), ONLY (run only cases whose name matches
# this regex, e.g. ONLY='^put'), PROFILE (release; QUICK uses the debug
# build: the smoke run checks the tool and script, not speed), CAIRN (a
# cairn binary to measure instead of building this tree).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ -n "${QUICK:-}" ]; then
  ROUNDS=${ROUNDS:-1}; SCALE=${SCALE:-0.01}; LOAD_KEYS=${LOAD_KEYS:-2000}; PROFILE=${PROFILE:-debug}
fi
PROFILE=${PROFILE:-release}
ROUNDS=${ROUNDS:-2}
SCALE=${SCALE:-1}
LOAD_KEYS=${LOAD_KEYS:-1000000}
NODES=${NODES:-1 3}
OUT=${OUT:-docs/benchmarks.md}
CHARTS=${CHARTS:-docs/bench}
ONLY=${ONLY:-.}

# --- what we need: etcd (Debian's etcd-server) and a font for the charts ---
# shellcheck source=bench/need.sh
source bench/need.sh
need etcd:etcd-server /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf:fonts-dejavu-core python3:python3

if [ -z "${CAIRN:-}" ]; then
  if [ "$PROFILE" = release ]; then cargo build --release -q -p cairn; else cargo build -q -p cairn; fi
  CAIRN=$ROOT/target/$PROFILE/cairn
fi
mkdir -p target/bench
RESULTS=${RESULTS:-$ROOT/target/bench/results-$(date -u +%Y%m%dT%H%M%S).jsonl}
: > "$RESULTS"
scaled() { python3 -c "import sys; print(max(20, int($1 * $SCALE)))"; }
# shellcheck source=bench/cluster.sh
source bench/cluster.sh

# bench SYSTEM NODES FAMILY CASE ROUND -- cairn-bench args...
bench() {
  local sys=$1 n=$2 family=$3 case=$4 round=$5; shift 6
  local name="${sys}${n}"; local ev="ENDPOINTS_$name" pv="PIDS_$name" dv="DIRS_$name"
  local tags=(--tag "system=$sys" --tag "nodes=$n" --tag "family=$family" --tag "case=$case" --tag "round=$round")
  "$CAIRN" bench --endpoints "${!ev}" --output json "${tags[@]}" "$@" >> "$RESULTS"
  "$CAIRN" bench --output json "${tags[@]}" footprint --pids "${!pv}" --data-dirs "${!dv}" >> "$RESULTS"
}

# --- facts about this run ---
# awk reads all of etcd's output: with `head -1` etcd could die of SIGPIPE
# writing its later lines, failing the pipeline under pipefail (seen in CI).
ETCD_VERSION=$(etcd --version | awk 'NR == 1 {print $NF}')
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//' || echo unknown)
printf '{"workload":"info","tags":{"etcd":"%s","cpu":"%s","cores":"%s","date":"%s","cairn commit":"%s"},"ok":0,"seconds":0,"ops_per_sec":0}\n' \
  "$ETCD_VERSION" "$CPU" "$(nproc)" "$(date -u +%Y-%m-%dT%H:%MZ)" "$(git rev-parse --short HEAD 2>/dev/null || echo none)" >> "$RESULTS"
"$CAIRN" bench --output json fsync --dir "$WORK" --total "$(scaled 1000)" >> "$RESULTS"

# --- the cases: "family|case|cairn-bench args" ---
# Writes and linearizable reads go to the leader, so a ratio never depends
# on which node each system happened to elect: a read served by a follower
# adds a forwarded read-index round trip in both (measured separately in
# docs/benchmarks.md). Serializable reads spread over every node.
PUT="--key-size 8 --val-size 256 --key-space-size 100000"
CASES=(
  "put|put c=1|--target-leader --clients 1 --conns 1 put --total $(scaled 3000) $PUT"
  "put|put c=10|--target-leader --clients 10 --conns 1 put --total $(scaled 10000) $PUT"
  "put|put c=50|--target-leader --clients 50 --conns 5 put --total $(scaled 30000) $PUT"
  "put|put c=200|--target-leader --clients 200 --conns 20 put --total $(scaled 40000) $PUT"
  "range-l|range-l c=1|--target-leader --clients 1 --conns 1 range 00000001 --total $(scaled 5000)"
  "range-l|range-l c=10|--target-leader --clients 10 --conns 2 range 00000001 --total $(scaled 20000)"
  "range-l|range-l c=50|--target-leader --clients 50 --conns 6 range 00000001 --total $(scaled 40000)"
  "range-l|range-l c=200|--target-leader --clients 200 --conns 21 range 00000001 --total $(scaled 40000)"
  "range-s|range-s c=10|--consistency s --clients 10 --conns 2 range 00000001 --total $(scaled 20000)"
  "range-s|range-s c=50|--consistency s --clients 50 --conns 6 range 00000001 --total $(scaled 40000)"
  "range-s|range-s c=200|--consistency s --clients 200 --conns 21 range 00000001 --total $(scaled 40000)"
  "txn-put|txn-put c=50|--target-leader --clients 50 --conns 5 txn-put --total $(scaled 30000) $PUT"
  "txn-put|txn-put c=200|--target-leader --clients 200 --conns 20 txn-put --total $(scaled 40000) $PUT"
  "txn-mixed|txn-mixed c=50 rw=1|--clients 50 --conns 6 txn-mixed --total $(scaled 30000) --rw-ratio 1 $PUT"
  "watch-latency|watch 100 watchers, 1000 puts/s|--clients 10 --conns 2 watch-latency --put-total $(scaled 5000) --put-rate 1000 --streams 10 --watchers-per-stream 10 --val-size 256"
  "lease-keepalive|keep-alive c=50|--clients 50 --conns 5 lease-keepalive --total $(scaled 50000)"
)

for n in $NODES; do
  start_cluster etcd "$n" "etcd$n"
  start_cluster cairn "$n" "cairn$n"
  # Seed the key the range workloads read.
  for sys in etcd cairn; do
    ev="ENDPOINTS_${sys}${n}"
    "$CAIRN" bench --endpoints "${!ev}" --output json put --total 1 --key-size 8 --val-size 256 --sequential-keys --key-space-size 1 >/dev/null
  done
  for round in $(seq "$ROUNDS"); do
    for c in "${CASES[@]}"; do
      IFS='|' read -r family case args <<< "$c"
      [[ "$case" =~ $ONLY ]] || continue
      for sys in etcd cairn; do
        echo "[$n node(s), round $round] $sys: $case" >&2
        # shellcheck disable=SC2086
        bench "$sys" "$n" "$family" "$case" "$round" -- $args
      done
    done
  done
  stop_cluster "etcd$n"; stop_cluster "cairn$n"
done

# --- footprint after loading keys, each system in a fresh 1-node server ---
if [[ "load" =~ $ONLY ]] || [ "$ONLY" = . ]; then
  for sys in etcd cairn; do
    start_cluster "$sys" 1 "load$sys"
    ev="ENDPOINTS_load$sys"; pv="PIDS_load$sys"; dv="DIRS_load$sys"
    echo "[load] $sys: $LOAD_KEYS keys of 256 B" >&2
    tags=(--tag "system=$sys" --tag nodes=1 --tag family=load --tag "case=$LOAD_KEYS keys x 256 B" --tag round=1)
    "$CAIRN" bench --endpoints "${!ev}" --output json "${tags[@]}" --clients 200 --conns 20 \
      put --total "$LOAD_KEYS" --key-size 16 --val-size 256 --key-space-size "$LOAD_KEYS" --sequential-keys > /dev/null
    sleep 5 # let background flushes/compactions settle before measuring
    "$CAIRN" bench --output json "${tags[@]}" footprint --pids "${!pv}" --data-dirs "${!dv}" --keys "$LOAD_KEYS" >> "$RESULTS"
    stop_cluster "load$sys"
  done
fi

"$CAIRN" bench report --results "$RESULTS" --out "$OUT" --charts "$CHARTS" \
  --command "${QUICK:+QUICK=1 }ROUNDS=$ROUNDS SCALE=$SCALE LOAD_KEYS=$LOAD_KEYS bench/compare.sh"
echo "results: $RESULTS" >&2
