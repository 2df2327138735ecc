#!/usr/bin/env bash
# bench/driver_bench.sh - the compute driver benchmark (bench/driver_bench.py;
# knobs: N, C, D, WARMUP, REPEAT, PARTS, PG_STATS, OUT, ...), packages installed first.
exec "$(dirname "$0")/py_bench.sh" driver_bench.py "$@"
