#!/usr/bin/env bash
# Memory under paginated ranges, beside etcd (docs/benchmarks.md, "Memory
# under paginated ranges"). For each system in turn (etcd, then Cairn), on a
# fresh 1-node server on free loopback ports with a temp data dir: load KEYS
# keys of VAL_SIZE random bytes (Txns of 64 puts), then run three workloads
# of CLIENTS concurrent clients doing ranges with `limit` LIMIT over the
# loaded prefix while sampling the server's RSS every 100 ms:
#   slices      each client pages through its own 1/CLIENTS of the keys
#               (together: every key once; runs to the end, so it has a time)
#   paginate    each client pages through the whole prefix from its start
#               (capped at DURATION s: a limited range still walks the rest of
#               the span, so a full pass is O(keys^2 / limit) work)
#   first-page  each client asks for the first page over and over: every
#               request's span is every key (the case that used to load the
#               whole span per request), DURATION s
# and prints a table: RSS at rest before each workload, peak during it
# (sampled, and the kernel's VmHWM reset at its start), pages, time.
#
#   bench/paginated-rss.sh          # ~9 min on 2 cores
#   KEYS=20000 DURATION=10 bench/paginated-rss.sh   # smoke run
#
# Env: KEYS (150000), VAL_SIZE (4096), CLIENTS (50), LIMIT (10),
# DURATION (45), SYSTEMS ("etcd cairn"), CAIRN (target/release/cairn; built
# with `cargo build --release -p cairn` if absent), CAIRN_ARGS (more flags
# of `cairn serve`, e.g. "--region-split-bytes 8MiB" for a span across
# regions), RESULTS (JSON lines; default
# target/bench/paginated-rss-DATE.jsonl).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
KEYS=${KEYS:-150000}; VAL_SIZE=${VAL_SIZE:-4096}; CLIENTS=${CLIENTS:-50}
LIMIT=${LIMIT:-10}; DURATION=${DURATION:-45}; SYSTEMS=${SYSTEMS:-etcd cairn}

# shellcheck source=bench/need.sh
source "$ROOT/bench/need.sh"
need etcd:etcd-server etcdctl:etcd-client
PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python python3 -c "import etcd3" 2>/dev/null \
  || python3 -m pip install -q "etcd3==0.12.0"
CAIRN=${CAIRN:-$ROOT/target/release/cairn}
[ -x "$CAIRN" ] || cargo build --release -q -p cairn
HELPER=$ROOT/bench/paginated_rss.py

WORK=$(mktemp -d)
mkdir -p target/bench
RESULTS=${RESULTS:-$ROOT/target/bench/paginated-rss-$(date -u +%Y%m%dT%H%M%S).jsonl}
: > "$RESULTS"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

for sys in $SYSTEMS; do
  c=$(port); p=$(port); d=$WORK/$sys; mkdir -p "$d"
  common=(--name m1 --data-dir "$d"
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c"
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p"
    --initial-cluster "m1=http://127.0.0.1:$p" --initial-cluster-state new)
  if [ "$sys" = etcd ]; then
    etcd "${common[@]}" --quota-backend-bytes $((8 << 30)) > "$WORK/$sys.log" 2>&1 &
  else
    # shellcheck disable=SC2086 # CAIRN_ARGS is a list of flags
    "$CAIRN" serve "${common[@]}" ${CAIRN_ARGS:-} > "$WORK/$sys.log" 2>&1 &
  fi
  pid=$!; PIDS+=("$pid")
  "$CAIRN" bench --endpoints "127.0.0.1:$c" range ready --total 1 --output json > /dev/null
  echo "[$sys] loading $KEYS keys x $VAL_SIZE B" >&2
  python3 "$HELPER" load "127.0.0.1:$c" --keys "$KEYS" --val-size "$VAL_SIZE" >&2
  sleep 5 # let background flushes/compactions settle
  if [ "$sys" != etcd ]; then
    echo "[$sys] $("$CAIRN" regions --endpoints "127.0.0.1:$c" | tail -n +2 | wc -l) regions" >&2
  fi
  for mode in slices paginate first-page; do
    echo "[$sys] $mode: $CLIENTS clients, limit $LIMIT" >&2
    r=$(python3 "$HELPER" run "127.0.0.1:$c" --pid "$pid" --mode "$mode" --keys "$KEYS" \
      --clients "$CLIENTS" --limit "$LIMIT" --duration "$DURATION")
    echo "$r" >&2
    python3 -c 'import json,sys; j=json.loads(sys.argv[1]); j["system"]=sys.argv[2]; j["disk_mb"]=int(sys.argv[3]); print(json.dumps(j))' \
      "$r" "$sys" "$(du -sm "$d" | cut -f1)" >> "$RESULTS"
  done
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$d"
done

python3 - "$RESULTS" "$KEYS" "$VAL_SIZE" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
mb = lambda b: "%.0f" % (b / 2**20) if b is not None else "-"
print(f"\n{int(sys.argv[2])} keys x {int(sys.argv[3])} B; RSS in MiB (anon + file-backed)\n")
print("| workload | system | RSS at rest | peak RSS (sampled) | peak VmHWM | peak anon | peak file | pages | keys returned | seconds | pages/s |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for mode in ("slices", "paginate", "first-page"):
    for r in (x for x in rows if x["mode"] == mode):
        secs = f'{r["seconds"]}' + (" (cap)" if r["capped"] and mode != "first-page" else "")
        print(f'| {mode} | {r["system"]} | {mb(r["base_rss"])} ({mb(r["base_anon"])} + {mb(r["base_file"])}) '
              f'| {mb(r["peak_rss"])} | {mb(r["hwm"])} | {mb(r["peak_anon"])} | {mb(r["peak_file"])} '
              f'| {r["pages"]} | {r["kvs"]} | {secs} | {r["pages"] / r["seconds"]:.1f} |'
              + (f' errors: {r["errors"]} ({r["first_error"]})' if r["errors"] else ""))
for mode in ("slices", "paginate", "first-page"):
    e = [x for x in rows if x["mode"] == mode and x["system"] == "etcd"]
    c = [x for x in rows if x["mode"] == mode and x["system"] == "cairn"]
    if e and c:
        e, c = e[0], c[0]
        print(f'{mode}: Cairn/etcd peak RSS {c["peak_rss"] / e["peak_rss"]:.2f}x, '
              f'growth over rest {mb(c["peak_rss"] - c["base_rss"])} vs {mb(e["peak_rss"] - e["base_rss"])} MiB, '
              f'pages/s {c["pages"] / c["seconds"]:.1f} vs {e["pages"] / e["seconds"]:.1f}')
print(f"\nresults: {sys.argv[1]}")
EOF
