#!/bin/sh
# Installs the test dependencies on Debian 12, then runs every check:
# unit tests (plain and under ASan/UBSan), the proto contract check, the
# config docs check, the clang-format check, a bounded fuzz smoke run and
# the e2e suite.
# The last line reads "N passed, N failed".
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
"$top/scripts/install-deps.sh" test || { echo "0 passed, 1 failed"; exit 1; }

passed=0
failed=0
note() { printf '\n==== %s\n' "$*"; }
count_cmocka() { # $1 = build dir: add cmocka case counts from the test logs
    p=$(cat "$1"/tests/*.log 2>/dev/null | sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' | awk '{s+=$1} END {print s+0}')
    f=$(cat "$1"/tests/*.log 2>/dev/null | sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' | awk '{s+=$1} END {print s+0}')
    passed=$((passed + p)); failed=$((failed + f))
}
step() { # $1 = name, rest = command; counts as one check
    name=$1; shift
    note "$name"
    if "$@"; then passed=$((passed + 1)); else echo "FAILED: $name"; failed=$((failed + 1)); fi
}

note "build"
if ! scripts/build.sh "$top/build"; then echo "0 passed, 1 failed"; exit 1; fi

note "unit tests"
make -C build check --no-print-directory -j"$(nproc)" >/dev/null 2>&1 || cat build/tests/*.log | grep -E "FAILED|ERROR|error" | head -40
count_cmocka build

note "unit tests under ASan/UBSan"
if scripts/build.sh "$top/build-asan" --enable-asan; then
    ASAN_OPTIONS=detect_leaks=1 make -C build-asan check --no-print-directory -j"$(nproc)" >/dev/null 2>&1 ||
        cat build-asan/tests/*.log | grep -E "FAILED|ERROR|Sanitizer|runtime error" | head -40
    count_cmocka build-asan
else
    failed=$((failed + 1))
fi

step "proto contract check" /usr/bin/python3 scripts/check_proto_contract.py
step "config docs check" sh scripts/check_config_docs.sh build/openshell-gateway
step "format check" make -C build format-check --no-print-directory

if [ "${SKIP_FUZZ:-0}" != 1 ]; then
    step "fuzz smoke" sh -c "scripts/build.sh '$top/build-fuzz' --enable-fuzzing CC=clang >/dev/null && make -C build-fuzz fuzz-smoke FUZZ_SECONDS=${FUZZ_SECONDS:-15} --no-print-directory"
fi

note "e2e"
GATEWAY_BIN="$top/build/openshell-gateway" /usr/bin/python3 -m pytest -q -p no:cacheprovider e2e \
    > build/e2e.log 2>&1
rc=$?
tail -30 build/e2e.log
summary=$(tail -1 build/e2e.log)
count() { echo "$summary" | grep -oE "[0-9]+ $1" | grep -oE '^[0-9]+'; }
ep=$(count passed)
ef=$(count failed)
ee=$(count error)
passed=$((passed + ${ep:-0}))
failed=$((failed + ${ef:-0} + ${ee:-0}))
if [ $rc -ne 0 ] && [ -z "$ef$ee" ]; then failed=$((failed + 1)); fi

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
