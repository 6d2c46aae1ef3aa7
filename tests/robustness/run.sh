#!/usr/bin/env bash
# The short, seeded robustness set CI runs (docs/robustness.md):
#   1. in-process cluster, every in-process fault (partitions, message loss,
#      crash-restart of a node and of the leader);
#   2. `cairn serve` processes, every process fault (SIGKILL of a node, of
#      the leader, of all nodes at once; SIGSTOP pauses; restarts with a
#      crash point armed inside the node);
#   3. every named regression scenario (one per etcd bug class), briefly;
#   4. the planted bugs must be caught on every seed tried: linearizable
#      reads without read-index (feature `planted-stale-read`), and lease
#      renewals without the leadership check (`planted-unconfirmed-renewal`,
#      caught by the lease checker in the isolated-leader scenario).
# Each run records a history, checks linearizability and the watch
# guarantees, and fails on any violation. Reproduce a run with its --seed.
# Test builds (crash points, the planted bug) share target/robustness; each
# binary is copied out before the next build replaces it.
set -euo pipefail
cd "$(dirname "$0")/../.."
export RUST_BACKTRACE=0
DURATION=${DURATION:-20s}
SCENARIO_DURATION=${SCENARIO_DURATION:-10s}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
export CARGO_TARGET_DIR=target/robustness
mkdir -p "$CARGO_TARGET_DIR"

cargo build -q -p cairn --features failpoints
BIN=$CARGO_TARGET_DIR/cairn-failpoints
cp "$CARGO_TARGET_DIR/debug/cairn" "$BIN"
echo "== in-process, all faults"
$BIN torture --duration "$DURATION" --seed 11 --nemesis all --history "$OUT/h11.jsonl"
echo "== processes, all faults (crash points included)"
$BIN torture --duration "$DURATION" --seed 12 --cluster process --nemesis all --history "$OUT/h12.jsonl"
# The recorded history checks the same way from the command line.
$BIN check linearizable "$OUT/h12.resolved.jsonl"

seed=30
for scenario in $($BIN torture --scenario list | awk '/^[a-z]/ {print $1}'); do
  seed=$((seed + 1))
  echo "== scenario $scenario (seed $seed)"
  $BIN torture --duration "$SCENARIO_DURATION" --seed "$seed" --scenario "$scenario" \
    --history "$OUT/s$seed.jsonl"
done

echo "== planted bug: stale linearizable reads must be caught"
cargo build -q -p cairn --features planted-stale-read
PLANTED=$CARGO_TARGET_DIR/cairn-planted
cp "$CARGO_TARGET_DIR/debug/cairn" "$PLANTED"
for seed in 21 22 23; do
  if $PLANTED torture --duration 10s --seed "$seed" --nemesis partition \
      --history "$OUT/p$seed.jsonl" > "$OUT/p$seed.log" 2>&1; then
    cat "$OUT/p$seed.log"
    echo "FAIL: planted bug not caught with seed $seed"
    exit 1
  fi
  grep -q "linearizable: NO" "$OUT/p$seed.log" || { cat "$OUT/p$seed.log"; echo "FAIL: seed $seed failed for another reason"; exit 1; }
  echo "seed $seed: caught"
done

echo "== planted bug: renewals on a deposed leader must be caught"
cargo build -q -p cairn --features planted-unconfirmed-renewal
RENEWAL=$CARGO_TARGET_DIR/cairn-planted-renewal
cp "$CARGO_TARGET_DIR/debug/cairn" "$RENEWAL"
for seed in 41 42 43; do
  if $RENEWAL torture --duration 20s --seed "$seed" --scenario lease-renewed-by-isolated-leader \
      --history "$OUT/r$seed.jsonl" > "$OUT/r$seed.log" 2>&1; then
    cat "$OUT/r$seed.log"
    echo "FAIL: planted renewal bug not caught with seed $seed"
    exit 1
  fi
  grep -qE "(lease safety|mutual exclusion): VIOLATED" "$OUT/r$seed.log" || { cat "$OUT/r$seed.log"; echo "FAIL: seed $seed failed for another reason"; exit 1; }
  echo "seed $seed: caught"
done
