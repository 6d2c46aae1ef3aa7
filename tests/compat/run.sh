#!/usr/bin/env bash
# Real-client compatibility: etcdctl and the etcd-client crate against real
# etcd and against Cairn, side by side. Installs what it needs (Debian
# packages etcd-client, etcd-server, protobuf-compiler, openssl; PyPI etcd3 and
# prometheus_client, whose parser reads /metrics).
set -euo pipefail
cd "$(dirname "$0")/../.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
missing=()
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v openssl >/dev/null || missing+=(openssl)   # RSA keys for the JWT session
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python python3 -c "import etcd3" 2>/dev/null || python3 -m pip install -q "etcd3==0.12.0"
python3 -c "import prometheus_client" 2>/dev/null || python3 -m pip install -q "prometheus_client==0.21.1"
# The Debian package may start a system etcd on the default ports; the
# comparison uses its own etcd on free ports, so that one is left alone.

cargo build -p cairn
python3 tests/compat/compat.py target/debug/cairn "$@"
