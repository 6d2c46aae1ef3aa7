# Installs the Debian packages a benchmark script needs, if missing
# (sourced): each argument is WHAT:PACKAGE, WHAT a command or an absolute
# path that the package provides.
#
#   need etcd:etcd-server etcdctl:etcd-client
need() {
  local missing=() p what
  for p in "$@"; do
    what=${p%%:*}
    if [[ $what == /* ]]; then [ -e "$what" ] || missing+=("${p#*:}")
    else command -v "$what" >/dev/null || missing+=("${p#*:}"); fi
  done
  [ ${#missing[@]} -eq 0 ] && return
  local sudo=""; if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo=sudo; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}
