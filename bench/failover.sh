#!/usr/bin/env bash
# How long writes stall when the leading member dies (issue 17): real etcd
# beside Cairn split into REGIONS data regions that hibernate, each a fresh
# 3-member cluster on loopback per round.
#
# Each round, for each system:
#   1. start the cluster (Cairn: split by hand into REGIONS data regions,
#      then SETTLE seconds so that they fall asleep);
#   2. put one probe key per region to be measured, then start a put load
#      of LOAD_RATE/s over the whole key space through the two members that
#      will stay (so the regions sleep under writes, as session 31 made
#      them), and let it run LEAD seconds;
#   3. SIGKILL the member that leads (etcd: the leader; Cairn: the first
#      data region's leader, which also leads the meta region and its TSO
#      unless leadership moved);
#   4. put every probe key, over and over through the two members left
#      (etcdctl, 500 ms dial and command timeouts), until each succeeds.
# Probe keys: etcd, PROBES keys spread over the key space; Cairn, up to
# PROBES keys each in a data region the killed member led (so each one's
# followers must notice and elect). Reported per system, medians over the
# rounds: time from the kill to the first probe written, to the median
# probe, to the last.
#
#   bench/failover.sh                   # ~4 min on 2 cores
#   REGIONS=400 ROUNDS=5 bench/failover.sh
#
# VICTIM=other (Cairn only) kills instead a member that leads data regions
# but not the first one, whose leader keeps the meta region and its TSO:
# the sleeping regions' failover without the meta region's.
#
# Env: REGIONS (100), ROUNDS (3), PROBES (12), LOAD_RATE (300), LEAD (8),
# SETTLE (20), PROFILE (release), CAIRN (a cairn binary to measure instead
# of building this tree), RESULTS (JSON lines; default
# target/bench/failover-DATE.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REGIONS=${REGIONS:-100}; ROUNDS=${ROUNDS:-3}; PROBES=${PROBES:-12}; VICTIM=${VICTIM:-leader}
LOAD_RATE=${LOAD_RATE:-300}; LEAD=${LEAD:-8}; SETTLE=${SETTLE:-20}; PROFILE=${PROFILE:-release}
# shellcheck source=bench/need.sh
source bench/need.sh
need etcd:etcd-server etcdctl:etcd-client python3:python3
if [ -z "${CAIRN:-}" ]; then
  if [ "$PROFILE" = release ]; then cargo build --release -q -p cairn; else cargo build -q -p cairn; fi
  CAIRN=$ROOT/target/$PROFILE/cairn
fi
mkdir -p target/bench
RESULTS=${RESULTS:-$ROOT/target/bench/failover-$(date -u +%Y%m%dT%H%M%S).jsonl}
: > "$RESULTS"
# shellcheck source=bench/cluster.sh
source bench/cluster.sh
export ETCDCTL_API=3
SPACE=100000

# The member ID (decimal) that endpoint $1 reports as its leader, and its own.
leader_of() { etcdctl --endpoints "$1" endpoint status -w json | python3 -c \
  'import json,sys; s=json.load(sys.stdin)[0]["Status"]; print(s["leader"], s["header"]["member_id"])'; }

measure() {
  local sys=$1 name=$2 ev pv
  ev="ENDPOINTS_$name"; pv="PIDS_$name"
  local -a eps pids
  IFS=, read -r -a eps <<< "${!ev}"; IFS=, read -r -a pids <<< "${!pv}"
  local leader="" victim="" i me said
  local -a ids
  for i in "${!eps[@]}"; do
    read -r said me < <(leader_of "${eps[$i]}") || continue
    ids[i]=$me
    [ "$said" = "$me" ] && { victim=$i; leader=$me; }
  done
  [ -n "$victim" ] || { echo "$sys: no member says it leads" >&2; return 1; }
  if [ "$VICTIM" = other ]; then
    # The next member: it leads data regions, not the first one (nor,
    # unless leadership moved, the meta region).
    victim=$(((victim + 1) % ${#eps[@]})); leader=${ids[$victim]}
  fi
  local survivors="" probes
  for i in "${!eps[@]}"; do [ "$i" = "$victim" ] || survivors+="${survivors:+,}${eps[$i]}"; done
  if [ "$sys" = etcd ]; then
    probes=$(for i in $(seq 0 $((PROBES - 1))); do printf '%08d ' $((i * SPACE / PROBES + 7)); done)
  else
    # Data regions the victim leads (the listing's LEADER is hex), one key each.
    probes=$("$CAIRN" regions --endpoints "${!ev}" | python3 -c '
import random, sys
want, n = format(int(sys.argv[1]), "x"), int(sys.argv[2])
rows = [l.split() for l in sys.stdin.readlines()[1:]]
keys = [r[1] for r in rows if r[4] == want and r[1] != "(start)"]
random.seed(7); random.shuffle(keys); print(" ".join(sorted(keys[:n])))' "$leader" "$PROBES")
    led=$("$CAIRN" regions --endpoints "${!ev}" | awk -v w="$(printf '%x' "$leader")" 'NR>1 && $5==w' | wc -l)
    echo "[round $round] $sys: the victim leads $led of $REGIONS data regions" >&2
  fi
  [ -n "$probes" ] || { echo "$sys: no probe keys (the victim leads no data region)" >&2; return 1; }
  for k in $probes; do etcdctl --endpoints "$survivors" put "$k" before > /dev/null; done
  "$CAIRN" bench --endpoints "$survivors" --clients 8 --conns 2 --allow-errors --output json \
    put --rate "$LOAD_RATE" --total $((LOAD_RATE * (LEAD + 30))) --key-size 8 --val-size 256 \
    --key-space-size "$SPACE" > /dev/null 2>&1 &
  local load=$!
  PIDS+=("$load")
  sleep "$LEAD"
  echo "[round $round] $sys: killing member $((victim + 1)) (pid ${pids[$victim]})" >&2
  python3 - "${pids[$victim]}" "$survivors" "$sys" "$round" $probes >> "$RESULTS" <<'PY'
import json, os, signal, subprocess, sys, threading, time
pid, eps, system, rnd, keys = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
done, attempts = {}, {}
GIVE_UP = 60.0  # a region never back fails the round, not hangs the script
def probe(k, t0):
    n = 0
    while time.monotonic() - t0 < GIVE_UP:
        n += 1
        r = subprocess.run(["etcdctl", "--endpoints", eps, "--dial-timeout", "500ms",
                            "--command-timeout", "500ms", "put", k, "after"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if r.returncode == 0:
            done[k], attempts[k] = time.monotonic() - t0, n
            return
        time.sleep(0.02)
t0 = time.monotonic()
os.kill(pid, signal.SIGKILL)
ts = [threading.Thread(target=probe, args=(k, t0)) for k in keys]
for t in ts: t.start()
for t in ts: t.join()
s = sorted(done.values())
if len(s) < len(keys):
    sys.exit(f"{len(keys) - len(s)} of {len(keys)} probes took no write within {GIVE_UP:.0f} s")
print(json.dumps({"system": system, "round": int(rnd), "probes": len(s),
                  "first_s": s[0], "median_s": s[len(s) // 2], "last_s": s[-1],
                  "attempts": sum(attempts.values())}))
PY
  kill "$load" 2>/dev/null || true; wait "$load" 2>/dev/null || true
  tail -1 "$RESULTS" >&2
}

for round in $(seq "$ROUNDS"); do
  # A cluster of its own each round (a name of its own: fresh data dirs).
  if [ "$VICTIM" = leader ]; then
    start_cluster etcd 3 "etcd$round"
    measure etcd "etcd$round"
    stop_cluster "etcd$round"
  fi
  # Split by hand, small and cold: no merging back (the default merges them).
  SERVE_ARGS="--region-merge-bytes 0" start_cluster cairn 3 "cairn$round"
  ev="ENDPOINTS_cairn$round"
  # shellcheck disable=SC2046
  "$CAIRN" regions --endpoints "${!ev}" split \
    $(for i in $(seq 1 $((REGIONS - 1))); do printf '%08d ' $((i * SPACE / REGIONS)); done) > /dev/null 2>&1
  echo "[round $round] split into $REGIONS data regions; settling ${SETTLE}s" >&2
  sleep "$SETTLE"
  measure cairn "cairn$round"
  stop_cluster "cairn$round"
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs.setdefault(r["system"], []).append(r)
print("| system | rounds | probes per round | first write after the kill (s) | median probe (s) | last probe (s) |")
print("|---|---:|---:|---:|---:|---:|")
for sysname, rs in runs.items():
    med = lambda f: statistics.median(r[f] for r in rs)
    rng = lambda f: f"{min(r[f] for r in rs):.2f}–{max(r[f] for r in rs):.2f}"
    probes = "–".join(sorted({str(r["probes"]) for r in rs}))
    print(f"| {sysname} | {len(rs)} | {probes} | {med('first_s'):.2f} ({rng('first_s')}) | "
          f"{med('median_s'):.2f} ({rng('median_s')}) | {med('last_s'):.2f} ({rng('last_s')}) |")
PY
echo "results: $RESULTS"
