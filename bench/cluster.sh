# Clusters for the benchmark scripts (sourced; needs CAIRN set): fresh
# etcd or Cairn clusters of N members on loopback ports, killed on exit.
#
#   start_cluster SYSTEM NODES NAME   # sets ENDPOINTS_<NAME>, PIDS_<NAME>, DIRS_<NAME>
#   stop_cluster NAME
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_cluster SYSTEM NODES NAME -> sets ENDPOINTS_<NAME>, PIDS_<NAME>, DIRS_<NAME>
start_cluster() {
  local sys=$1 n=$2 name=$3 initial="" i
  local -a cports=() pports=() pids=() dirs=()
  for i in $(seq "$n"); do cports+=("$(port)"); pports+=("$(port)"); done
  for i in $(seq "$n"); do initial+="${initial:+,}m$i=http://127.0.0.1:${pports[$((i-1))]}"; done
  for i in $(seq "$n"); do
    local c=${cports[$((i-1))]} p=${pports[$((i-1))]} d=$WORK/$name/m$i
    mkdir -p "$d"; dirs+=("$d")
    local -a common=(--name "m$i" --data-dir "$d"
      --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c"
      --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p"
      --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token "bench-$name")
    if [ "$sys" = etcd ]; then
      etcd "${common[@]}" > "$WORK/$name-m$i.log" 2>&1 &
    else
      "$CAIRN" serve "${common[@]}" > "$WORK/$name-m$i.log" 2>&1 &
    fi
    pids+=($!); PIDS+=($!); disown $!
  done
  local eps; eps=$(printf '127.0.0.1:%s,' "${cports[@]}"); eps=${eps%,}
  printf -v "ENDPOINTS_$name" '%s' "$eps"
  printf -v "PIDS_$name" '%s' "$(IFS=,; echo "${pids[*]}")"
  printf -v "DIRS_$name" '%s' "$(IFS=,; echo "${dirs[*]}")"
  # Ready when a linearizable read succeeds (cairn bench waits for that).
  "$CAIRN" bench --endpoints "$eps" range bench-ready --total 1 --output json > /dev/null
}

stop_cluster() {
  local name=$1 p; local pv="PIDS_$name"
  for p in ${!pv//,/ }; do kill -9 "$p" 2>/dev/null || true; done
}
