#!/usr/bin/env bash
# The short, seeded robustness set CI runs (docs/robustness.md):
#   1. in-process cluster, every in-process fault (partitions, message loss,
#      crash-restart of a node and of the leader);
#   2. `cairn serve` processes, every process fault (SIGKILL of a node, of
#      the leader, of all nodes at once; SIGSTOP pauses; restarts with a
#      crash point armed inside the node);
#   2b. both again on secured clusters (`--secured`: TLS on both ports,
#      client certificates, auth on), and in-process once more with splits
#      and merges (the access lanes then write by Txns across regions);
#   3. every named regression scenario (one per etcd bug class), briefly,
#      and hibernating regions under leader crashes for longer; crash
#      points placed one at a time where a run once found a member that
#      could not start again (crates/cairn/tests/crash_points.rs);
#   4. the planted bugs (`cairn_raft::planted`: built in with the feature
#      `planted`, each on only when `CAIRN_PLANTED` names it) must be caught
#      on every seed tried (or, where marked, on one seed at least):
#      linearizable reads without read-index (`stale-read`), and lease
#      renewals without the leadership check (`unconfirmed-renewal`,
#      caught by the lease checker in the isolated-leader scenario; on one
#      seed at least), and lock grants to a waiter whose key vanished
#      (`vanished-waiter`, caught by the mutual-exclusion checker;
#      on one seed at least), and a Lock retried with the holder's lease
#      whose clean-up deletes the held key (`relock-clean-up`, likewise),
#      and writes applied behind
#      the auth fence (`unfenced-auth`, caught by the access
#      checker on a secured cluster; on one seed at least, see below), and
#      a lease-index trim that drops entries it never looked up
#      (`blind-lease-trim`, caught by the lease-access checker on a
#      secured cluster), and
#      hibernating followers never woken under a dead leader
#      (`sleepy-followers`, caught by the sleepers checker; on one
#      seed at least).
# Each run records a history, checks linearizability and the watch
# guarantees, and fails on any violation. Reproduce a run with its --seed.
# One test build (crash points and planted bugs compiled in, every one off
# unless asked for) in target/robustness serves every run.
set -euo pipefail
cd "$(dirname "$0")/../.."
export RUST_BACKTRACE=0
DURATION=${DURATION:-20s}
SCENARIO_DURATION=${SCENARIO_DURATION:-10s}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
export CARGO_TARGET_DIR=target/robustness
# A planted bug is on only where expect_caught asks for it.
unset CAIRN_PLANTED
mkdir -p "$CARGO_TARGET_DIR"

cargo build -q -p cairn --features failpoints,planted
BIN=$CARGO_TARGET_DIR/cairn-robustness
cp "$CARGO_TARGET_DIR/debug/cairn" "$BIN"
echo "== [${SECONDS}s] in-process, all faults"
$BIN torture --duration "$DURATION" --seed 11 --nemesis all --history "$OUT/h11.jsonl"
echo "== [${SECONDS}s] processes, all faults (crash points included)"
$BIN torture --duration "$DURATION" --seed 12 --cluster process --nemesis all --history "$OUT/h12.jsonl"
# The recorded history checks the same way from the command line.
$BIN check linearizable "$OUT/h12.resolved.jsonl"

echo "== [${SECONDS}s] secured (TLS on both ports, client certificates, auth on), in-process, all faults"
$BIN torture --secured --duration "$DURATION" --seed 13 --nemesis all --history "$OUT/h13.jsonl"
echo "== [${SECONDS}s] secured, in-process, all faults with splits and merges (access lanes' Txns across regions)"
$BIN torture --secured --duration "$DURATION" --seed 15 --nemesis all,split,merge --history "$OUT/h15.jsonl"
echo "== [${SECONDS}s] secured, processes, all faults (crash points included)"
$BIN torture --secured --duration "$DURATION" --seed 14 --cluster process --nemesis all \
  --history "$OUT/h14.jsonl"

seed=30
for scenario in $($BIN torture --scenario list | awk '/^[a-z]/ {print $1}'); do
  seed=$((seed + 1))
  # Needs its faults held longer than 10 s: run for 60 s below.
  [ "$scenario" = sleeping-regions-under-faults ] && continue
  echo "== [${SECONDS}s] scenario $scenario (seed $seed)"
  $BIN torture --duration "$SCENARIO_DURATION" --seed "$seed" --scenario "$scenario" \
    --history "$OUT/s$seed.jsonl"
done

echo "== [${SECONDS}s] crash points placed one at a time (crates/cairn/tests/crash_points.rs)"
cargo test -q -p cairn --features failpoints,planted --test crash_points

# expect_caught [--once] BUG VERDICT_REGEX SEEDS TORTURE_ARGS...: turns the
# planted BUG on (in the members a run starts, too) and requires every
# seed's run to fail with
# VERDICT — or with --once, one seed's (stopping there): for a bug that
# shows only when a fault meets the right moment, caught in most runs, not
# all (docs/robustness.md gives the rates).
expect_caught() {
  local once=false
  if [ "$1" = --once ]; then once=true; shift; fi
  local feature=$1 verdict=$2 seeds=$3
  shift 3
  for seed in $seeds; do
    local log=$OUT/$feature-$seed.log
    if CAIRN_PLANTED=$feature $BIN torture --seed "$seed" --history "$OUT/$feature-$seed.jsonl" "$@" > "$log" 2>&1; then
      if $once; then echo "seed $seed: not caught"; continue; fi
      cat "$log"
      echo "FAIL: planted bug $feature not caught with seed $seed"
      exit 1
    fi
    grep -qE "$verdict" "$log" || { cat "$log"; echo "FAIL: seed $seed failed for another reason"; exit 1; }
    echo "seed $seed: caught"
    if $once; then return 0; fi
  done
  if $once; then echo "FAIL: planted bug $feature caught on none of seeds $seeds"; exit 1; fi
}

echo "== [${SECONDS}s] sleeping regions, longer: a dead leader's hibernating regions elect another"
$BIN torture --duration 60s --seed 1906 --scenario sleeping-regions-under-faults \
  --history "$OUT/sleepers.jsonl"

echo "== [${SECONDS}s] planted bug: stale linearizable reads must be caught"
expect_caught stale-read "linearizable: NO" "21 22 23" --duration 10s --nemesis partition

echo "== [${SECONDS}s] planted bug: renewals on a deposed leader must be caught"
expect_caught --once unconfirmed-renewal "(lease safety|mutual exclusion): VIOLATED" "41 42 43" \
  --duration 20s --scenario lease-renewed-by-isolated-leader

echo "== [${SECONDS}s] planted bug: a lock granted to a waiter whose key vanished must be caught"
expect_caught --once vanished-waiter "mutual exclusion: VIOLATED" "61 62 63" \
  --duration 40s --lockers 8 --locks 1 --scenario lock-waiter-lost-its-lease

echo "== [${SECONDS}s] planted bug: a Lock retried with the holder's lease and given up that deletes the held key must be caught"
expect_caught --once relock-clean-up "mutual exclusion: VIOLATED" "7 8 9" \
  --duration 60s --nemesis none --lockers 6 --locks 1 --lease-clients 0

echo "== [${SECONDS}s] planted bug: a write checked against a revoked permission applied behind the auth fence must be caught"
expect_caught --once unfenced-auth "access control: VIOLATED" "91 92 93 94 95 96" \
  --duration 30s --scenario permission-revoked-under-faults --access-users 6 --lease-users 0 --lockers 0 --lease-clients 0

echo "== [${SECONDS}s] planted bug: a lease-index trim that drops keys it never looked up must be caught"
expect_caught --once blind-lease-trim "lease access: VIOLATED" "71 72 73" \
  --secured --duration 20s --nemesis partition --access-users 0 --lockers 0 --lease-clients 0

echo "== [${SECONDS}s] planted bug: watch events of a transaction in key order, not op order, must be caught"
# One region (no split): the region's order is what the watcher gets. Over
# several regions the watch hub merges by (revision, sub, key), which puts
# a region's mis-ordered events right again — there a split-up bank showed
# the bug only for a transfer made before the splits (missed on seed 2411).
expect_caught key-ordered-events "bank: VIOLATED: bank watch" "2411 2412" \
  --duration 10s --bank-accounts 8 --nemesis partition,crash

echo "== [${SECONDS}s] planted bug: followers of a hibernating region left asleep under a dead leader must be caught"
expect_caught --once sleepy-followers "sleepers: VIOLATED" "1905 1907 1908 1909 1910" \
  --duration 60s --scenario sleeping-regions-under-faults
