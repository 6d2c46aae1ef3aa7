#!/usr/bin/env bash
# Runs every test: unit, golden scripts, in-process clusters, multi-process
# clusters, and real-client compatibility (which installs etcdctl, etcd and
# protoc if missing).
set -euo pipefail
cd "$(dirname "$0")"
cargo test --workspace
tests/compat/run.sh
