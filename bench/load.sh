#!/usr/bin/env bash
# A large load (issue 17): GIB GiB of new keys into a 3-member Cairn
# cluster that splits its regions as they grow, one GiB at a time, then
# etcd (3 members) with its quota at ETCD_GIB GiB (8: etcd's documented
# maximum) loaded the same way until it refuses (NOSPACE). Per GiB: put
# throughput (ops/s and MB/s of values), p99, disk of every member, and for
# Cairn the region count. Prints the first and last GiB's throughput and
# their ratio.
#
#   bench/load.sh                      # 20 GiB; about an hour on 2 cores
#   GIB=2 ETCD_GIB=1 bench/load.sh     # a smoke run
#
# Values are VAL bytes whose first RANDOM_BYTES bytes are random (the rest `v`):
# Cairn's engine compresses values (LZ4), etcd's does not, and three
# members on one machine keep three copies, so incompressible values of
# 20 GiB would need ~60 GiB of disk for Cairn alone. The disk figures say
# what each member holds after compression; the per-GiB figures are taken
# right after each GiB (Raft log and engine journal not yet compacted away),
# the last one 30 s after the load. Data goes under target/bench/ (BENCH_DIR).
#
# Env: GIB (20), ETCD_GIB (8; 0 skips etcd), VAL (65536), RANDOM_BYTES (VAL/4),
# SPLIT (Cairn's --region-split-bytes, 256MiB), CLIENTS (64),
# RESULTS (JSON lines; default target/bench/load-DATE.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GIB=${GIB:-20}; ETCD_GIB=${ETCD_GIB:-8}; VAL=${VAL:-65536}; RANDOM_BYTES=${RANDOM_BYTES:-$((VAL / 4))}
SPLIT=${SPLIT:-256MiB}; CLIENTS=${CLIENTS:-64}
# shellcheck source=bench/need.sh
source bench/need.sh
need etcd:etcd-server python3:python3
cargo build --release -q -p cairn
CAIRN=$ROOT/target/release/cairn
mkdir -p target/bench
RESULTS=${RESULTS:-$ROOT/target/bench/load-$(date -u +%Y%m%dT%H%M%S).jsonl}
: > "$RESULTS"
export BENCH_DIR=${BENCH_DIR:-$ROOT/target/bench}
# shellcheck source=bench/cluster.sh
source bench/cluster.sh
PER_GIB=$(((1 << 30) / VAL))

# Bytes under each member's directory, comma-separated (files the engine
# deletes while du walks are skipped, not fatal).
disk_of() {
  local d
  for d in ${1//,/ }; do { du -sb "$d" 2>/dev/null || true; } | cut -f1; done | paste -sd, -
}

# Data regions Cairn lists (-1 if the listing failed).
region_count() {
  local n
  n=$("$CAIRN" regions --endpoints "$1" 2>/dev/null | wc -l) || n=0
  echo $((n - 1))
}

# load SYSTEM NAME GIB: puts GIB GiB into cluster NAME, one GiB per run of
# `cairn bench put` (new keys each time), one JSON line per GiB.
load() {
  local sys=$1 name=$2 gib=$3 i eps dirs r disk regions
  eps=ENDPOINTS_$name; eps=${!eps}; dirs=DIRS_$name; dirs=${!dirs}
  for i in $(seq 0 $((gib - 1))); do
    if ! r=$("$CAIRN" bench --endpoints "$eps" --clients "$CLIENTS" --conns 8 --output json --allow-errors \
      put --total "$PER_GIB" --key-size 16 --val-size "$VAL" --val-random-bytes "$RANDOM_BYTES" \
      --sequential-keys --key-space-size "$PER_GIB" --key-start $((i * PER_GIB))); then
      echo "$sys: GiB $((i + 1)) refused (bench failed)"; return 0
    fi
    disk=$(disk_of "$dirs")
    regions=0
    if [ "$sys" = cairn ]; then regions=$(region_count "$eps"); fi
    python3 - "$sys" "$((i + 1))" "$VAL" "$disk" "$regions" "$r" >> "$RESULTS" <<'EOF'
import json, sys
sys_, gib, val, disk, regions, r = sys.argv[1:]
j = json.loads(r)
out = {"system": sys_, "gib": int(gib), "ops_per_sec": j["ops_per_sec"],
       "mb_per_sec": j["ops_per_sec"] * int(val) / 1e6, "p99_ms": j["latency_ms"]["p99"],
       "ok": j["ok"], "errors": sum(j.get("errors", {}).values()), "error_codes": j.get("errors", {}), "disk_bytes": [int(x) for x in disk.split(",")],
       "regions": int(regions)}
print(json.dumps(out))
EOF
    tail -1 "$RESULTS" | python3 -c '
import json, sys
j = json.loads(sys.stdin.read())
print("%-5s GiB %2d  %7.0f ops/s  %6.1f MB/s  p99 %7.1f ms  errors %d  disk/member %s GiB  regions %d" % (
    j["system"], j["gib"], j["ops_per_sec"], j["mb_per_sec"], j["p99_ms"], j["errors"],
    "/".join("%.1f" % (d / 2**30) for d in j["disk_bytes"]), j["regions"]))'
    if [ "$(tail -1 "$RESULTS" | python3 -c 'import json,sys; print(json.load(sys.stdin)["errors"])')" != 0 ]; then
      echo "$sys: GiB $((i + 1)) had errors ($(tail -1 "$RESULTS" | python3 -c 'import json,sys; print(json.load(sys.stdin)["error_codes"])')): stopping its load"
      return 0
    fi
  done
}

SERVE_ARGS="--region-split-bytes $SPLIT" start_cluster cairn 3 cairn
load cairn cairn "$GIB"
echo "cairn regions at the end: $(region_count "$ENDPOINTS_cairn")"
sleep 30
echo "cairn disk per member 30 s after the load (bytes): $(disk_of "$DIRS_cairn")"
stop_cluster cairn
rm -rf "$WORK/cairn"
if [ "$ETCD_GIB" -gt 0 ]; then
  SERVE_ARGS="--quota-backend-bytes $((ETCD_GIB << 30))" start_cluster etcd 3 etcd
  load etcd etcd "$((ETCD_GIB + 1))"
  stop_cluster etcd
  rm -rf "$WORK/etcd"
fi
python3 - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for s in ("cairn", "etcd"):
    r = [x for x in rows if x["system"] == s and x["errors"] == 0]
    if len(r) >= 2 and r[0]["mb_per_sec"] > 0:
        print("%s: first GiB %.1f MB/s, last full GiB (%d) %.1f MB/s: ratio %.2f" % (
            s, r[0]["mb_per_sec"], r[-1]["gib"], r[-1]["mb_per_sec"], r[-1]["mb_per_sec"] / r[0]["mb_per_sec"]))
EOF
echo "results: $RESULTS"
