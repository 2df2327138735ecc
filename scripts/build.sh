#!/bin/sh
# Configure and build into a build directory (default: build/).
#   scripts/build.sh [BUILD_DIR] [configure options...]
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-"$top/build"}
[ $# -gt 0 ] && shift
cd "$top"
if [ ! -x configure ] || [ configure.ac -nt configure ] || [ Makefile.am -nt configure ]; then
    autoreconf -fi >/dev/null
fi
mkdir -p "$dir"
cd "$dir"
# Reconfigure when the options changed.
stamp="$*"
if [ ! -f Makefile ] || [ "$(cat .configure-args 2>/dev/null)" != "$stamp" ]; then
    "$top/configure" --quiet "$@"
    printf '%s' "$stamp" > .configure-args
fi
make -j"$(nproc)" --no-print-directory
