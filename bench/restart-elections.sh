#!/usr/bin/env bash
# Elections a member's restart causes in the regions it does not lead
# (issue 17): a 3-member Cairn split into REGIONS data regions that
# hibernate; member 3 is SIGKILLed and started again at once. Its
# replicas start awake with Raft's election timer running; their leaders
# sleep, and learn of the restart from the members' beats (a new boot id)
# once the restarted member serves its peers. A replica that campaigns
# before it hears its leader moves leadership for nothing. Reported per
# round: regions whose leader changed among those member 3 did not lead,
# and the seconds from the restart to its first answered read.
#
#   CAIRN=<binary> REGIONS=200 ROUNDS=3 bench/restart-elections.sh
#
# Env: REGIONS (200), ROUNDS (3), SETTLE (20), CAIRN (default: build this
# tree, release).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REGIONS=${REGIONS:-200}; ROUNDS=${ROUNDS:-3}; SETTLE=${SETTLE:-20}
if [ -z "${CAIRN:-}" ]; then cargo build --release -q -p cairn; CAIRN=$ROOT/target/release/cairn; fi
# shellcheck source=bench/cluster.sh
source bench/cluster.sh
SPACE=100000
leaders() { "$CAIRN" regions --endpoints "$1" | awk 'NR>1 {print $1, $5}' | sort; }
for round in $(seq "$ROUNDS"); do
  SERVE_ARGS="--region-merge-bytes 0" start_cluster cairn 3 "r$round"
  ev="ENDPOINTS_r$round"; pv="PIDS_r$round"
  IFS=, read -r -a eps <<< "${!ev}"; IFS=, read -r -a pids <<< "${!pv}"
  # shellcheck disable=SC2046
  "$CAIRN" regions --endpoints "${!ev}" split \
    $(for i in $(seq 1 $((REGIONS - 1))); do printf '%08d ' $((i * SPACE / REGIONS)); done) > /dev/null 2>&1
  sleep "$SETTLE"
  victim=${pids[2]}
  me=$(etcdctl --endpoints "${eps[2]}" endpoint status -w json \
    | python3 -c 'import json,sys; print(format(json.load(sys.stdin)[0]["Status"]["header"]["member_id"], "x"))')
  before=$(leaders "${eps[0]},${eps[1]}")
  mapfile -d '' cmd < "/proc/$victim/cmdline"
  kill -9 "$victim"; wait "$victim" 2>/dev/null || true
  t0=$(date +%s.%N)
  "${cmd[@]}" > "$WORK/r$round-m3-again.log" 2>&1 &
  again=$!; PIDS+=("$again"); disown "$again"
  until etcdctl --endpoints "${eps[2]}" --command-timeout 500ms get probe > /dev/null 2>&1; do sleep 0.05; done
  up=$(python3 -c "import time; print(f'{time.time() - $t0:.2f}')")
  sleep 10
  after=$(leaders "${eps[0]},${eps[1]}")
  python3 - "$me" "$up" "$round" <<PY
import sys
me, up, rnd = sys.argv[1], sys.argv[2], sys.argv[3]
before = dict(l.split() for l in """$before""".splitlines())
after = dict(l.split() for l in """$after""".splitlines())
others = [r for r, l in before.items() if l != me]
moved = [r for r in others if after.get(r) != before[r]]
print(f"round {rnd}: member {me} restarted, answering after {up} s; "
      f"{len(moved)} of {len(others)} regions it did not lead changed leader")
PY
  kill -9 "$again" 2>/dev/null || true
  stop_cluster "r$round"
done
