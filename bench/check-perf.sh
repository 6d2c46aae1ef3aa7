#!/usr/bin/env bash
# `etcdctl check perf` beside etcd: a fresh 3-member etcd and a fresh
# 3-member Cairn on loopback, one after the other, each given etcdctl's
# own 60 s load (LOAD: s, m, l or xl) and its verdict (throughput, slowest
# request, standard deviation). etcdctl's thresholds are absolute, so on a
# shared 2-core machine read them beside etcd's, not alone.
#
#   bench/check-perf.sh              # LOAD=s, release build
set -euo pipefail
cd "$(dirname "$0")/.."
LOAD=${LOAD:-s}
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then cargo build --release -q -p cairn; else cargo build -q -p cairn; fi
CAIRN=$PWD/target/$PROFILE/cairn
# shellcheck source=bench/cluster.sh
source bench/cluster.sh
for sys in etcd cairn; do
  start_cluster "$sys" 3 "$sys"
  ev="ENDPOINTS_$sys"
  echo "== $sys (3 members), etcdctl check perf --load $LOAD"
  etcdctl --endpoints "${!ev}" check perf --load "$LOAD" 2>&1 | tr '\r' '\n' | grep -E '^(PASS|FAIL)' || true
  stop_cluster "$sys"
done
