#!/usr/bin/env bash
# bench/driver_bench.sh - runs bench/driver_bench.py with Debian's python3,
# installing what it needs first (unless NO_INSTALL=1). Every environment
# knob of driver_bench.py (N, C, D, WARMUP, REPEAT, PARTS, OUT, ...) passes
# through; see the docstring at the top of driver_bench.py.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
NO_INSTALL=${NO_INSTALL:-0}
PY=/usr/bin/python3

log() { printf '%s\n' "[driver-bench] $*" >&2; }

need=""
"$PY" -c 'import grpc, google.protobuf, pytest' 2>/dev/null \
    || need="$need python3-grpcio python3-protobuf python3-pytest"
command -v protoc >/dev/null 2>&1 || need="$need protobuf-compiler"
[ -x /usr/bin/grpc_python_plugin ] || need="$need protobuf-compiler-grpc"
[ -x /usr/lib/postgresql/15/bin/initdb ] || need="$need postgresql-15"
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
[ -x "$root/build/openshell-gateway" ] || { log "build first: scripts/build.sh"; exit 1; }
cd "$root"
exec "$PY" bench/driver_bench.py "$@"
