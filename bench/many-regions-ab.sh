#!/usr/bin/env bash
# A/B of two Cairn binaries at many regions (issue 17): two 3-member
# clusters side by side, each split by hand into REGIONS data regions,
# then one-key puts spread over every region and a one-key linearizable
# range, interleaved (A, B, A, B, ...) so machine drift cancels out.
#
#   A=/tmp/cairn-old B=target/release/cairn bench/many-regions-ab.sh
#
# Env: A, B (binaries; required), REGIONS (400), ROUNDS (3), CLIENTS (16),
# WATCH (1: an `etcdctl watch --prefix ""` on every member of both
# clusters throughout, as Kubernetes watches every key; each put then
# reaches three watchers over every region).
# Prints every run's `cairn bench` summary line, and with WATCH the CPU
# each cluster's members used over the runs (% of one core, summed).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${A:?set A to the baseline binary}" "${B:?set B to the binary under test}"
REGIONS=${REGIONS:-400}; ROUNDS=${ROUNDS:-3}; CLIENTS=${CLIENTS:-16}
SPACE=100000
# shellcheck source=bench/need.sh
source bench/need.sh
# shellcheck source=bench/cluster.sh
source bench/cluster.sh
CAIRN=$A SERVE_ARGS="--region-merge-bytes 0" start_cluster cairn 3 a
CAIRN=$B SERVE_ARGS="--region-merge-bytes 0" start_cluster cairn 3 b
# The keys are 8-digit numbers below SPACE: split points spread evenly.
# shellcheck disable=SC2046
points=$(for i in $(seq 1 $((REGIONS - 1))); do printf '%08d ' $((i * SPACE / REGIONS)); done)
# shellcheck disable=SC2086
"$B" regions --endpoints "$ENDPOINTS_a" split $points > /dev/null 2>&1 &
# shellcheck disable=SC2086
"$B" regions --endpoints "$ENDPOINTS_b" split $points > /dev/null 2>&1
wait
if [ -n "${WATCH:-}" ]; then
  need etcdctl:etcd-client
  watch_every_key a b
  echo "watching every key on each member"
fi
sleep 15
declare -A cpu=([a]=0 [b]=0) wall=([a]=0 [b]=0)
for round in $(seq "$ROUNDS"); do
  for sys in a b; do
    ev="ENDPOINTS_$sys"
    for case in put range; do
      if [ "$case" = put ]; then
        args="put --total 20000 --key-size 8 --val-size 256 --key-space-size $SPACE"
      else
        args="range 00012345 --total 20000"
      fi
      pv="PIDS_$sys"
      t0=$(ticks "${!pv}"); s0=$(date +%s%N)
      # shellcheck disable=SC2086
      line=$("$B" bench --endpoints "${!ev}" --clients "$CLIENTS" --conns 4 $args 2>&1 | grep -E "ok |p99" | tr '\n' ' ')
      cpu[$sys]=$((cpu[$sys] + $(ticks "${!pv}") - t0)); wall[$sys]=$((wall[$sys] + $(date +%s%N) - s0))
      echo "round $round $sys $case: $line"
    done
  done
done
hz=$(getconf CLK_TCK)
for sys in a b; do
  # ticks / hz over wall seconds, as % of one core.
  echo "cpu $sys: $(( cpu[$sys] * 100 * 1000000000 / hz / wall[$sys] ))% of one core over the runs (members summed)"
done
