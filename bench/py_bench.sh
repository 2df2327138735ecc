#!/usr/bin/env bash
# bench/py_bench.sh SCRIPT.py [args] - runs one of the Python benchmarks in
# bench/ with Debian's python3, installing what they need first (unless
# NO_INSTALL=1). Every environment knob of the script passes through; see
# the docstring at the top of each script. events_bench.sh and
# driver_bench.sh are the named entry points.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
NO_INSTALL=${NO_INSTALL:-0}
PY=/usr/bin/python3
script=${1:?usage: bench/py_bench.sh SCRIPT.py [args]}
shift

log() { printf '%s\n' "[${script%.py}] $*" >&2; }

need=""
"$PY" -c 'import grpc, google.protobuf, pytest' 2>/dev/null \
    || need="$need python3-grpcio python3-protobuf python3-pytest"
command -v protoc >/dev/null 2>&1 || need="$need protobuf-compiler"
[ -x /usr/bin/grpc_python_plugin ] || need="$need protobuf-compiler-grpc"
[ -x /usr/lib/postgresql/15/bin/pgbench ] || need="$need postgresql-15"
command -v taskset >/dev/null 2>&1 || need="$need util-linux"
command -v runuser >/dev/null 2>&1 || need="$need util-linux"
if [ -n "$need" ]; then
    [ "$NO_INSTALL" = 1 ] && { log "missing packages:$need"; exit 1; }
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo -n"
    log "installing:$need"
    timeout 300 $sudo_cmd apt-get update -qq >&2 || true
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive timeout 600 $sudo_cmd apt-get install -y -qq $need >&2
fi
cd "$root"
[ -x build/openshell-gateway ] || { log "build first: scripts/build.sh"; exit 1; }
exec "$PY" "bench/$script" "$@"
