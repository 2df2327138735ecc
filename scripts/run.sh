#!/bin/sh
# Installs what the gateway needs on Debian 12, builds it and starts it on
# its embedded defaults (loopback 127.0.0.1:17670). Extra arguments are
# passed to openshell-gateway, e.g. scripts/run.sh --log-level debug
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/install-deps.sh" run
"$top/scripts/build.sh" "$top/build"
# Plaintext h2c on loopback until TLS material is configured
# (--tls-cert/--tls-key, see docs/configuration.md).
exec "$top/build/openshell-gateway" --disable-tls "$@"
