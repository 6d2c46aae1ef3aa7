#!/usr/bin/env bash
# Runs every test: unit, golden scripts, in-process clusters, multi-process
# clusters, and real-client compatibility (which installs etcdctl, etcd and
# protoc if missing), Patroni failing PostgreSQL over (installs patroni and
# PostgreSQL if missing), the short robustness set, then a smoke run of the
# side-by-side benchmark.
set -euo pipefail
cd "$(dirname "$0")"
# One-shot builds gain nothing from incremental caches, which cost gigabytes.
export CARGO_INCREMENTAL=0
disk() { echo "== at ${SECONDS}s, disk before $1: $(df -h --output=avail . | tail -1) free, target $(du -sh target 2>/dev/null | cut -f1)"; }
disk "cargo test"
cargo test --workspace
# The cluster tests again, on secured clusters: TLS on client and peer ports
# (separate CAs), client certificates required, auth on; every test client
# is `root` by its certificate (crates/cairn-testkit/src/secured.rs).
disk "secured cluster tests"
CAIRN_TEST_SECURED=1 cargo test -p cairn-testkit -p cairn
# The suites written against one region again, on a keyspace cut into 63
# regions that go on splitting past 4 KiB (crates/cairn-testkit/src/
# many_regions.rs): splitting must change nothing a client can see. (The
# region suites lay out their own regions; fuzz only feeds bad input.)
disk "many-regions cluster tests"
CAIRN_TEST_REGIONS=1 cargo test -p cairn-testkit --test cluster --test watch \
  --test watch_guarantees --test lease_lock_election --test coordination_safety \
  --test maintenance --test bad_input --test auth --test compaction_sweeps
# And the multi-process tests (SIGKILL, SIGSTOP, restarts), their `cairn
# serve` members cut the same way.
CAIRN_TEST_REGIONS=1 cargo test -p cairn --test process_cluster
disk "compat"
tests/compat/run.sh
# A real HA tool on the JSON gateway: Patroni fails PostgreSQL over, on etcd
# and on Cairn, losing no committed row.
disk "patroni"
tests/patroni/run.sh
# Robustness: seeded torture runs under faults, checked for linearizability
# and watch guarantees, and the planted bug that must be caught.
disk "robustness"
tests/robustness/run.sh
disk "bench smoke"
# Benchmark smoke run: tiny totals, checks `cairn bench` and the comparison
# script end to end (any failed request fails it); numbers are not judged.
SMOKE=$(mktemp -d)
QUICK=1 OUT="$SMOKE/benchmarks.md" CHARTS="$SMOKE/charts" RESULTS="$SMOKE/results.jsonl" bench/compare.sh
grep -q '| put c=200 |' "$SMOKE/benchmarks.md"
# And the secured comparison (TLS, client certificates, auth on; the
# bench's --cacert/--cert/--key flags) end to end.
QUICK=1 RESULTS="$SMOKE/secured.jsonl" bench/secured.sh > "$SMOKE/secured.md"
grep -q '| range-l c=50 | auth |' "$SMOKE/secured.md"
test -s "$SMOKE/charts/put.png"
rm -rf "$SMOKE"
echo "== all tests passed in ${SECONDS}s"
