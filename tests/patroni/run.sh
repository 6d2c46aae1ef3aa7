#!/usr/bin/env bash
# A real program built on etcd, end to end: Patroni (PostgreSQL high
# availability over its etcd3 DCS, i.e. the JSON gateway) bootstraps, takes
# synchronous commits and fails over after its leader is killed — on etcd,
# then on a 3-node Cairn (run.py). Installs patroni and PostgreSQL if
# missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
missing=()
command -v patroni >/dev/null || missing+=(patroni)
[ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build -p cairn
python3 tests/patroni/run.py target/debug/cairn "$@"
