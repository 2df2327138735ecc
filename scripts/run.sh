#!/bin/sh
# Installs what the gateway needs on Debian 12, builds it, creates the local
# TLS bundle on first run (a CA, server and client certificates and the
# sandbox-token key; see `openshell-gateway generate-certs`) and starts the
# gateway on https://127.0.0.1:17670 with TLS and mTLS, its embedded
# PostgreSQL and the process driver. Extra arguments are passed to
# openshell-gateway, e.g. scripts/run.sh --log-level debug
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/install-deps.sh" run
"$top/scripts/build.sh" "$top/build"
# Idempotent: an existing bundle is left alone, a partial one is refused.
"$top/build/openshell-gateway" generate-certs
exec "$top/build/openshell-gateway" "$@"
