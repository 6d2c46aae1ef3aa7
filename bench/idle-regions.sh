#!/usr/bin/env bash
# What idle regions cost (issue 17): CPU of three idle 3-member clusters
# measured over the same window — etcd, Cairn with one data region, and
# Cairn split by hand into REGIONS data regions — from each member's
# /proc/PID/stat (user + system time). Every region is its own Raft group
# with its own heartbeats, closed-timestamp ticks and background checks,
# so this is the price of a region that takes no traffic.
#
#   bench/idle-regions.sh                 # ~3 min
#   REGIONS=500 WINDOW=120 bench/idle-regions.sh
#   WATCH=1 bench/idle-regions.sh         # every key watched, as under Kubernetes
#
# Env: REGIONS (200), WINDOW (seconds measured, 60), SETTLE (seconds to
# wait after the splits, 20), PROFILE (release), CAIRN (a cairn binary to
# measure instead of building this tree), WATCH (1: an `etcdctl watch`
# over every key on each member of each cluster, opened before settling).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REGIONS=${REGIONS:-200}; WINDOW=${WINDOW:-60}; SETTLE=${SETTLE:-20}; PROFILE=${PROFILE:-release}
# shellcheck source=bench/need.sh
source bench/need.sh
need etcd:etcd-server python3:python3
[ -n "${WATCH:-}" ] && need etcdctl:etcd-client
if [ -z "${CAIRN:-}" ]; then
  if [ "$PROFILE" = release ]; then cargo build --release -q -p cairn; else cargo build -q -p cairn; fi
  CAIRN=$ROOT/target/$PROFILE/cairn
fi
# shellcheck source=bench/cluster.sh
source bench/cluster.sh

start_cluster etcd 3 etcd
start_cluster cairn 3 one
# Split by hand, small and cold: no merging back (the default merges them).
SERVE_ARGS="--region-merge-bytes 0" start_cluster cairn 3 many
# Split points spread over the keyspace: k0001 … k0199 give 200 regions.
"$CAIRN" regions --endpoints "$ENDPOINTS_many" split \
  $(seq -f 'k%04g' 1 $((REGIONS - 1))) > /dev/null
listed=$("$CAIRN" regions --endpoints "$ENDPOINTS_many" | wc -l) || listed=0
echo "split into $((listed - 1)) data regions; settling ${SETTLE}s"
if [ -n "${WATCH:-}" ]; then
  watch_every_key etcd one many
  echo "watching every key on each member"
fi
sleep "$SETTLE"

declare -A before
for c in etcd one many; do v=PIDS_$c; before[$c]=$(ticks "${!v}"); done
sleep "$WINDOW"
hz=$(getconf CLK_TCK)
echo "| cluster (3 members) | CPU over ${WINDOW}s, % of one core |"
echo "|---|---:|"
for c in etcd one many; do
  v=PIDS_$c; after=$(ticks "${!v}")
  pct=$(python3 -c "print('%.1f' % (100 * ($after - ${before[$c]}) / $hz / $WINDOW))")
  case $c in etcd) name=etcd ;; one) name="Cairn, 1 data region" ;; many) name="Cairn, $REGIONS data regions" ;; esac
  echo "| $name | $pct |"
done
