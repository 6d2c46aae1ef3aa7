#!/usr/bin/env bash
# Does the leader's log fsync overlap its followers'? (docs/benchmarks.md,
# single-client put on 3 nodes.) Starts a 3-node Cairn cluster, runs
# single-client puts against the leader while `perf trace` records every
# fsync/fdatasync on the machine (needs root), maps the syncing threads to
# the three servers, and prints: put latency, each node's sync count and
# median duration, and for the leader's syncs how often a follower's sync
# started before the leader's had returned (overlap) and the median gap from
# the end of the leader's sync to the start of the next follower sync.
# Cairn only: the same trace of etcd (Go) loses most of the leader's syncs
# (strace counts one fdatasync per put on every etcd node; perf trace saw a
# tenth of them on the leader), so etcd's side is not measured this way.
#
#   bench/replication-trace.sh
# Env: TOTAL (puts, 2000).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TOTAL=${TOTAL:-2000}
command -v perf >/dev/null || { echo "needs perf (linux-perf)" >&2; exit 1; }
command -v etcdctl >/dev/null || { echo "needs etcdctl (apt-get install etcd-client)" >&2; exit 1; }
cargo build --release -q -p cairn
CAIRN=$ROOT/target/release/cairn
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

cports=(); pports=(); initial=""
for i in 1 2 3; do cports+=("$(port)"); pports+=("$(port)"); done
for i in 1 2 3; do initial+="${initial:+,}m$i=http://127.0.0.1:${pports[$((i-1))]}"; done
for i in 1 2 3; do
  c=${cports[$((i-1))]}; p=${pports[$((i-1))]}
  args=(--name "m$i" --data-dir "$WORK/m$i"
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c"
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p"
    --initial-cluster "$initial" --initial-cluster-state new)
  "$CAIRN" serve "${args[@]}" > "$WORK/m$i.log" 2>&1 &
  PIDS+=($!)
done
eps=$(printf '127.0.0.1:%s,' "${cports[@]}"); eps=${eps%,}
"$CAIRN" bench --endpoints "$eps" range ready --total 1 --output json > /dev/null
sleep 3
# Which process leads: Maintenance.Status through etcdctl.
leader=$(ETCDCTL_API=3 etcdctl --endpoints "$eps" endpoint status -w json | python3 -c '
import json, sys
for i, s in enumerate(json.load(sys.stdin)):
    if s["Status"]["leader"] == s["Status"]["header"]["member_id"]:
        print(i)')
# System-wide (threads started after the trace began are seen too);
# threads are mapped to nodes afterwards.
perf trace -a -e fdatasync,fsync -o "$WORK/trace" 2>/dev/null &
tp=$!
sleep 1
r=$("$CAIRN" bench --endpoints "$eps" --target-leader --clients 1 --conns 1 --output json \
  put --total "$TOTAL" --key-size 8 --val-size 256)
kill -INT "$tp"; wait "$tp" || true
tasks=""
for i in 0 1 2; do tasks+="$i:$(ls "/proc/${PIDS[$i]}/task" | tr '\n' ',');"; done
python3 - "$WORK/trace" "$leader" "$tasks" "$r" <<'PY'
import json, re, statistics, sys
path, leader, tasks, result = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
node_of = {}
for part in tasks.strip(";").split(";"):
    i, tids = part.split(":")
    for t in tids.strip(",").split(","):
        node_of[t] = int(i)
starts, syncs = {}, {0: [], 1: [], 2: []}
for line in open(path):
    m = re.match(r"\s*([0-9.]+) \(\s*([0-9.]*)\s*(?:ms)?\): \S+/(\d+) (\.\.\. \[continued\]: )?f\w*sync", line)
    if not m:
        continue
    t, dur, tid, cont = float(m.group(1)), m.group(2), m.group(3), m.group(4)
    n = node_of.get(tid)
    if n is None or not dur:
        continue
    syncs[n].append((t, t + float(dur)))
lat = result["latency_ms"]
print(f"cairn: {result['ops_per_sec']:.0f} puts/s, p50 {lat['p50']:.2f} ms (one client, 3 nodes, leader = node {leader})")
for n, s in syncs.items():
    if s:
        print(f"  node {n}{' (leader)' if n == leader else ''}: {len(s)} syncs, median {statistics.median(e - b for b, e in s):.3f} ms")
followers = sorted(b for n, s in syncs.items() if n != leader for b, _ in s)
overlap, gaps = 0, []
for b, e in syncs[leader]:
    nxt = next((f for f in followers if f >= b), None)
    if nxt is None or nxt - b > 5:
        continue
    if nxt < e:
        overlap += 1
    else:
        gaps.append(nxt - e)
total = overlap + len(gaps)
if total:
    print(f"  a follower's sync began while the leader's ran: {overlap}/{total} ({100 * overlap / total:.0f}%)")
if gaps:
    print(f"  otherwise it began a median {statistics.median(gaps):.3f} ms after the leader's returned")
PY
