#!/usr/bin/env bash
# bench/events_bench.sh - the lifecycle events benchmark (bench/events_bench.py;
# knobs: DURATION, REPEAT, WRITERS, LAT_SUBS, OUT, ...), packages installed first.
exec "$(dirname "$0")/py_bench.sh" events_bench.py "$@"
