#!/usr/bin/env bash
# A first side-by-side figure: 1-node etcd vs 1-node Cairn on this machine,
# same load generator, runs interleaved (etcd, cairn, etcd, cairn, ...) so
# machine drift cancels out. Both fsync every commit group (etcd by default;
# Cairn always). Prints one JSON line per run.
#
# bench/quick-compare.sh [SECONDS] [ROUNDS]
# WORKLOADS='put 50 10;keepalive 50 10' selects workloads (op clients conns [serializable]).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-2}
command -v etcd >/dev/null || { echo "needs etcd (apt-get install etcd-server)"; exit 1; }
cargo build --release -q -p cairn
cargo build --release -q -p cairn-testkit --example quickbench
BENCH=target/release/examples/quickbench
WORK=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

EC=$(port); EP=$(port); CC=$(port); CP=$(port)
etcd --name e --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$EC" --advertise-client-urls "http://127.0.0.1:$EC" \
  --listen-peer-urls "http://127.0.0.1:$EP" --initial-advertise-peer-urls "http://127.0.0.1:$EP" \
  --initial-cluster "e=http://127.0.0.1:$EP" > "$WORK/etcd.log" 2>&1 &
PIDS+=($!)
target/release/cairn serve --name c --data-dir "$WORK/cairn" --listen-client-urls "http://127.0.0.1:$CC" \
  --listen-peer-urls "http://127.0.0.1:$CP" --initial-advertise-peer-urls "http://127.0.0.1:$CP" > "$WORK/cairn.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$CC) 2>/dev/null && (echo > /dev/tcp/127.0.0.1/$EC) 2>/dev/null && break; sleep 0.2; done
sleep 2

ETCD_PID=${PIDS[0]}; CAIRN_PID=${PIDS[1]}
run() { # name endpoint op clients conns [serializable]
  local pid=$ETCD_PID; [ "$1" = cairn ] && pid=$CAIRN_PID
  local out; out=$(BENCH_SERVER_PID=$pid "$BENCH" "$2" "$3" "$4" "$5" "$SECS" ${6:-})
  echo "{\"system\":\"$1\",${out#\{}"
}
for r in $(seq "$ROUNDS"); do
  IFS=';' read -ra LIST <<< "${WORKLOADS:-put 1 1;put 50 10;put 200 20;range 50 10;range 50 10 serializable;watch-latency 1 1;watch-latency 50 10;keepalive 50 10}"
  for w in "${LIST[@]}"; do
    set -- $w
    run etcd "127.0.0.1:$EC" "$@"
    run cairn "127.0.0.1:$CC" "$@"
  done
done
# Memory per idle watcher: 10,000 watchers over 100 streams, RSS growth.
[ -n "${SKIP_WATCHERS:-}" ] && exit 0
run etcd "127.0.0.1:$EC" watchers 10000 100
run cairn "127.0.0.1:$CC" watchers 10000 100
