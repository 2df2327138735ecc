#!/usr/bin/env bash
# bench/relay_bench.sh - the supervisor relay and session benchmark
# (bench/relay_bench.py; knobs: PARTS, STREAMS, DIRS, BYTES, BYTES_MULTI,
# REPS, WARMUP, EXEC_COUNT, SESSIONS, CHECKPOINTS, PERF, OUT, ...), packages
# installed first. Needs the build's bench/relay-bench (built by `make`).
exec "$(dirname "$0")/py_bench.sh" relay_bench.py "$@"
