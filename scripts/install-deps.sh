#!/bin/sh
# Install the Debian 12 packages the gateway needs to build, run and be tested.
# Idempotent: packages already present are skipped by apt. Needs root (or sudo).
set -eu

BUILD_PKGS="build-essential autoconf automake libtool pkg-config \
  libevent-dev libnghttp2-dev libprotobuf-c-dev protobuf-c-compiler \
  protobuf-compiler libprotobuf-dev libssl-dev libpq-dev libjansson-dev \
  zlib1g-dev libssh-dev"
RUN_PKGS="postgresql openssl openssh-client"
TEST_PKGS="libcmocka-dev python3-grpcio python3-protobuf protobuf-compiler-grpc \
  python3-pytest nghttp2-client clang clang-format libclang-rt-14-dev libfuzzer-14-dev \
  procps util-linux systemd"

case "${1:-run}" in
run) PKGS="$BUILD_PKGS $RUN_PKGS" ;;
test) PKGS="$BUILD_PKGS $RUN_PKGS $TEST_PKGS" ;;
*) echo "usage: $0 [run|test]" >&2; exit 2 ;;
esac

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "install-deps: installing:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
