# Clusters for the benchmark scripts (sourced; needs CAIRN set): fresh
# etcd or Cairn clusters of N members on loopback ports, killed on exit.
#
#   [SERVE_ARGS="..."] start_cluster SYSTEM NODES NAME [SECURITY]
#       # sets ENDPOINTS_<NAME>, PIDS_<NAME>, DIRS_<NAME>, CREDS_<NAME>;
#       # SERVE_ARGS go to every member's command line
#   stop_cluster NAME
#   ticks PIDS                # summed utime + stime of the processes
#       # (comma-separated PIDs, as PIDS_<NAME>), in clock ticks
#   watch_every_key NAME...   # an `etcdctl watch --prefix ""` on every
#       # member of each cluster, as Kubernetes watches every key (needs
#       # etcdctl), until the script ends
#
# SECURITY is `plain` (the default), `tls` (TLS on the client and peer
# ports under separate CAs, client certificates required, as
# docs/security.md sets up), or `auth` (tls, and auth on: the benchmark's
# client is the non-root user `bench` by its certificate's common name,
# with readwrite on every key from "0" — so each request passes a
# permission check, not root's shortcut). CREDS_<NAME> holds the
# `cairn bench` flags that reach it (empty for plain). `auth` needs etcdctl.
# Data goes under BENCH_DIR (default /tmp): large loads set it to a disk.
# KEEP=1 keeps it (members' logs included) after the script ends.
WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/bench.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# A free port not handed out before in this run (the kernel may give a
# closed port again at once); the list is a file, as callers are subshells.
port() {
  local p
  while :; do
    p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    grep -qx "$p" "$WORK/ports" 2>/dev/null || { echo "$p" >> "$WORK/ports"; echo "$p"; return; }
  done
}

# The throwaway CAs and certificates of secured clusters, made once.
pki() {
  PKI=$WORK/pki
  [ -e "$PKI/ca.pem" ] && return
  "$CAIRN" certs --dir "$PKI" member root bench > /dev/null
  "$CAIRN" certs --dir "$PKI/peer" member > /dev/null
}

start_cluster() {
  local sys=$1 n=$2 name=$3 security=${4:-plain} initial="" i scheme=http creds=""
  local -a cports=() pports=() pids=() dirs=() tls=() extra=()
  read -r -a extra <<< "${SERVE_ARGS:-}"
  if [ "$security" != plain ]; then
    pki; scheme=https
    tls=(--cert-file "$PKI/member.pem" --key-file "$PKI/member-key.pem"
      --trusted-ca-file "$PKI/ca.pem" --client-cert-auth
      --peer-cert-file "$PKI/peer/member.pem" --peer-key-file "$PKI/peer/member-key.pem"
      --peer-trusted-ca-file "$PKI/peer/ca.pem" --peer-client-cert-auth)
    creds="--cacert $PKI/ca.pem --cert $PKI/bench.pem --key $PKI/bench-key.pem"
  fi
  for i in $(seq "$n"); do cports+=("$(port)"); pports+=("$(port)"); done
  for i in $(seq "$n"); do initial+="${initial:+,}m$i=$scheme://127.0.0.1:${pports[$((i-1))]}"; done
  for i in $(seq "$n"); do
    local c=${cports[$((i-1))]} p=${pports[$((i-1))]} d=$WORK/$name/m$i
    mkdir -p "$d"; dirs+=("$d")
    local -a common=(--name "m$i" --data-dir "$d"
      --listen-client-urls "$scheme://127.0.0.1:$c" --advertise-client-urls "$scheme://127.0.0.1:$c"
      --listen-peer-urls "$scheme://127.0.0.1:$p" --initial-advertise-peer-urls "$scheme://127.0.0.1:$p"
      --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token "bench-$name"
      ${tls[@]+"${tls[@]}"} ${extra[@]+"${extra[@]}"})
    if [ "$sys" = etcd ]; then
      etcd "${common[@]}" > "$WORK/$name-m$i.log" 2>&1 &
    else
      "$CAIRN" serve "${common[@]}" > "$WORK/$name-m$i.log" 2>&1 &
    fi
    pids+=($!); PIDS+=($!); disown $!
  done
  local eps prefix=""; [ "$scheme" = https ] && prefix=https://
  eps=$(printf "${prefix}127.0.0.1:%s," "${cports[@]}"); eps=${eps%,}
  printf -v "ENDPOINTS_$name" '%s' "$eps"
  printf -v "PIDS_$name" '%s' "$(IFS=,; echo "${pids[*]}")"
  printf -v "DIRS_$name" '%s' "$(IFS=,; echo "${dirs[*]}")"
  printf -v "CREDS_$name" '%s' "$creds"
  # Ready when a linearizable read succeeds (cairn bench waits for that).
  # shellcheck disable=SC2086
  "$CAIRN" bench --endpoints "$eps" $creds range bench-ready --total 1 --output json > /dev/null
  if [ "$security" = auth ]; then
    local -a root=(etcdctl --endpoints "$eps" --cacert "$PKI/ca.pem" --cert "$PKI/root.pem" --key "$PKI/root-key.pem")
    "${root[@]}" user add root --new-user-password=rootpw --interactive=false > /dev/null
    "${root[@]}" auth enable > /dev/null
    "${root[@]}" user add bench --new-user-password=benchpw --interactive=false > /dev/null
    "${root[@]}" role add bench > /dev/null
    "${root[@]}" role grant-permission bench readwrite 0 --from-key > /dev/null
    "${root[@]}" user grant-role bench bench > /dev/null
    # shellcheck disable=SC2086
    "$CAIRN" bench --endpoints "$eps" $creds range bench-ready --total 1 --output json > /dev/null
  fi
}

ticks() {
  local p t=0
  for p in ${1//,/ }; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}

watch_every_key() {
  local name ev ep
  for name in "$@"; do
    ev="ENDPOINTS_$name"
    for ep in ${!ev//,/ }; do
      ETCDCTL_API=3 etcdctl --endpoints "$ep" watch --prefix "" > /dev/null 2>&1 &
      PIDS+=($!); disown $!
    done
  done
}

stop_cluster() {
  local name=$1 p; local pv="PIDS_$name"
  for p in ${!pv//,/ }; do kill -9 "$p" 2>/dev/null || true; done
}
