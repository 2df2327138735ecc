#!/usr/bin/env bash
# bench/h2load_grpc.sh - gRPC load benchmark of openshell-gateway with h2load.
#
# Measures, against a gateway pinned to one CPU (h2load pinned to another):
#   * unary /openshell.v1.OpenShell/Health at several clients x streams:
#     req/s, p50/p99 latency (from h2load's per-request log), server CPU
#     microseconds per request (utime+stime+cutime+cstime from /proc/PID/stat
#     of the server and its descendants, i.e. the embedded PostgreSQL too);
#   * server streaming /openshell.diag.v1.Diagnostics/Stream: messages/s and
#     server CPU microseconds per message;
#   * a reference in the same run: nghttpd serving a small canned file, hit by
#     h2load GET with the same concurrency, so ratios come from one run.
# Each measured configuration is repeated REPEAT times; the table shows medians.
#
# Environment (defaults in brackets):
#   DURATION [10]      seconds of each measured unary run (h2load -D)
#   WARMUP [2]         seconds of the warm-up run before each measured run
#   REPEAT [3]         repetitions of every measured configuration
#   CONFIGS ["1x1 16x8 64x16"]  clients x streams-per-client
#   STREAM_COUNT [100000] STREAM_SIZE [64]  Diagnostics/Stream request
#   STREAM_REQS [64]   streams per streaming run (h2load -n, -c 1 -m 8)
#   SERVER_CPU [0] CLIENT_CPU [1]   CPUs for taskset
#   GATEWAY [build/openshell-gateway]   gateway binary
#   OUT [bench/results/latest.md]       where the markdown table goes
#   NOISE_MAX [30]     a measured unary run during which other processes took
#                      more than this % of the server's CPU is run again ...
#   NOISE_RETRIES [1]  ... at most this many times (0 = never); the last try counts
#   NO_REFERENCE [0]   1 skips the nghttpd reference runs
#   NO_INSTALL [0]     1 never runs apt-get
# Everything listens on 127.0.0.1 only. Every process started here is
# stopped by PID on exit; every wait is bounded.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
REPEAT=${REPEAT:-3}
CONFIGS=${CONFIGS:-"1x1 16x8 64x16"}
STREAM_COUNT=${STREAM_COUNT:-100000}
STREAM_SIZE=${STREAM_SIZE:-64}
STREAM_REQS=${STREAM_REQS:-64}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
GATEWAY=${GATEWAY:-$root/build/openshell-gateway}
OUT=${OUT:-$root/bench/results/latest.md}
NOISE_MAX=${NOISE_MAX:-30}
NOISE_RETRIES=${NOISE_RETRIES:-1}
NO_REFERENCE=${NO_REFERENCE:-0}
NO_INSTALL=${NO_INSTALL:-0}

cmdline="DURATION=$DURATION WARMUP=$WARMUP REPEAT=$REPEAT CONFIGS=\"$CONFIGS\" STREAM_REQS=$STREAM_REQS NOISE_MAX=$NOISE_MAX NOISE_RETRIES=$NOISE_RETRIES bench/h2load_grpc.sh${*:+ $*}"

log() { printf '%s\n' "[bench] $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- tools
need_pkgs=""
command -v h2load >/dev/null 2>&1 || need_pkgs="$need_pkgs nghttp2-client"
command -v taskset >/dev/null 2>&1 || need_pkgs="$need_pkgs util-linux"
if [ "$NO_REFERENCE" != 1 ] && ! command -v nghttpd >/dev/null 2>&1 \
    && [ ! -x /usr/sbin/nghttpd ]; then
    need_pkgs="$need_pkgs nghttp2-server"
fi
if [ -n "$need_pkgs" ]; then
    [ "$NO_INSTALL" = 1 ] && die "missing packages:$need_pkgs"
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo -n"
    log "installing:$need_pkgs"
    # shellcheck disable=SC2086
    timeout 300 $sudo_cmd apt-get update -qq >&2 || true
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive timeout 600 $sudo_cmd apt-get install -y -qq $need_pkgs >&2 \
        || die "apt-get install failed"
fi
NGHTTPD=$(command -v nghttpd 2>/dev/null || echo /usr/sbin/nghttpd)
[ -x "$GATEWAY" ] || die "gateway binary not found: $GATEWAY (make -C build)"
[ "$(nproc)" -ge 2 ] || log "warning: fewer than 2 CPUs; server and client share a CPU"

CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- cleanup
tmp=$(mktemp -d /tmp/h2load_grpc.XXXXXX)
pids=""
cleanup() {
    set +e
    for p in $pids; do
        if kill -0 "$p" 2>/dev/null; then
            kill -TERM "$p" 2>/dev/null
            i=0
            # the gateway drains (grace 10 s) and stops its PostgreSQL first
            while kill -0 "$p" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
            kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
        fi
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Run a private copy of the gateway: a concurrent rebuild of build/ must not
# swap or remove the binary under the benchmark.
cp "$GATEWAY" "$tmp/openshell-gateway"
gw_version=$("$tmp/openshell-gateway" --version 2>&1 | head -n 1)
gw_sum=$(sha256sum "$GATEWAY" | cut -c1-12)

# ---------------------------------------------------------------- bodies
# gRPC framing: 1 byte compressed flag, 4 bytes big-endian length, message.
printf '\000\000\000\000\000' > "$tmp/health.bin"    # empty HealthRequest
# StreamRequest{count=1, size=2} as protobuf, built from the env values.
varint_oct() {   # prints a protobuf varint as printf octal escapes
    v=$1; s=""
    while :; do
        b=$((v & 127)); v=$((v >> 7))
        [ $v -gt 0 ] && b=$((b | 128))
        s="$s$(printf '\\%03o' $b)"
        [ $v -gt 0 ] || break
    done
    printf '%s' "$s"
}
msg="\\010$(varint_oct "$STREAM_COUNT")\\020$(varint_oct "$STREAM_SIZE")"
# shellcheck disable=SC2059
printf "$msg" > "$tmp/stream.msg"
mlen=$(wc -c < "$tmp/stream.msg")
# shellcheck disable=SC2059
{ printf '\000'; printf "$(printf '\\%03o\\%03o\\%03o\\%03o' \
    $((mlen >> 24 & 255)) $((mlen >> 16 & 255)) $((mlen >> 8 & 255)) $((mlen & 255)))"; \
  cat "$tmp/stream.msg"; } > "$tmp/stream.bin"
log "stream request body: $(od -An -tx1 "$tmp/stream.bin" | tr -s ' ')"
# Canned file for nghttpd: same payload size as a framed HealthResponse (14 bytes).
mkdir -p "$tmp/htdocs"
printf 'ok-canned-14b\n' > "$tmp/htdocs/canned.txt"

# ---------------------------------------------------------------- helpers
cpu_busy() {   # busy ticks (user nice system irq softirq) of one CPU, /proc/stat
    awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 }' /proc/stat
}

# CPU ticks of a process tree: utime+stime+cutime+cstime (fields 14-17 of
# /proc/PID/stat) of PID and of every live descendant, so that the gateway's
# children (its embedded PostgreSQL) count too, live or already reaped.
# Prints "TREE_TICKS ROOT_ONLY_TICKS" (ROOT_ONLY = utime+stime of PID alone).
cpu_ticks() {
    cat /proc/[0-9]*/stat 2>/dev/null | awk -v root="$1" '
        { pid = $1; rest = $0; sub(/^.*\) /, "", rest); split(rest, f, " ")
          pp[pid] = f[2]; t[pid] = f[12] + f[13] + f[14] + f[15]
          if (pid == root) own = f[12] + f[13] }
        END { for (p in t) { q = p; n = 0
                  while (q != root && (q in pp) && n < 64) { q = pp[q]; n++ }
                  if (q == root) sum += t[p] }
              print sum + 0, own + 0 }'
}

start_gateway() {
    mkdir -p "$tmp/state"
    # the embedded PostgreSQL runs as user postgres and must traverse $tmp
    chmod 711 "$tmp"
    taskset -c "$SERVER_CPU" "$tmp/openshell-gateway" --disable-tls --bind-address 127.0.0.1 \
        --port 0 --enable-diagnostics --log-level info --state-dir "$tmp/state" \
        2> "$tmp/gateway.err" &
    gw_pid=$!
    pids="$pids $gw_pid"
    i=0; gw_port=""
    while [ $i -lt 600 ]; do
        gw_port=$(sed -n 's/.*event=gateway\.listening .* port=\([0-9][0-9]*\).*/\1/p' \
            "$tmp/gateway.err" | head -n 1)
        [ -n "$gw_port" ] && break
        kill -0 "$gw_pid" 2>/dev/null || { cat "$tmp/gateway.err" >&2; die "gateway exited"; }
        sleep 0.1; i=$((i + 1))
    done
    [ -n "$gw_port" ] || { cat "$tmp/gateway.err" >&2; die "gateway did not listen in 60 s"; }
    log "gateway pid $gw_pid port $gw_port (CPU $SERVER_CPU)"
}

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_nghttpd() {
    ng_port=$(free_port)
    taskset -c "$SERVER_CPU" "$NGHTTPD" --no-tls -a 127.0.0.1 -d "$tmp/htdocs" "$ng_port" \
        > "$tmp/nghttpd.out" 2>&1 &
    ng_pid=$!
    pids="$pids $ng_pid"
    i=0
    while [ $i -lt 100 ]; do
        if timeout 5 h2load -n 1 -c 1 "http://127.0.0.1:$ng_port/canned.txt" 2>/dev/null \
            | grep -q '1 succeeded'; then break; fi
        kill -0 "$ng_pid" 2>/dev/null || { cat "$tmp/nghttpd.out" >&2; die "nghttpd exited"; }
        sleep 0.1; i=$((i + 1))
    done
    [ $i -lt 100 ] || die "nghttpd did not answer in 10 s"
    log "nghttpd pid $ng_pid port $ng_port (CPU $SERVER_CPU)"
}

grpc_h=(-H 'content-type: application/grpc' -H 'te: trailers')

# h2load_run OUTFILE ARGS... : pinned, bounded, fails on any failed request.
h2load_run() {
    out=$1; shift
    limit=$((DURATION + WARMUP + 60))
    # The wrapper shell reports its children's CPU time (cutime+cstime, fields
    # 16 and 17 of its own /proc/PID/stat) once h2load has been reaped: that is
    # the client's CPU time for this run.
    # shellcheck disable=SC2016
    if ! taskset -c "$CLIENT_CPU" bash -c '
            out=$1 limit=$2; shift 2
            timeout "$limit" h2load "$@" > "$out" 2>&1; rc=$?
            sed "s/^.*) //" "/proc/$$/stat" | awk "{print \$14 + \$15}" > "$out.cpu"
            exit $rc' h2load-wrap "$out" "$limit" "$@"; then
        tail -n 20 "$out" >&2; die "h2load failed: $*"
    fi
    check_h2load "$out"
}

check_h2load() {
    f=$1
    line=$(grep '^requests:' "$f") || { cat "$1" >&2; die "no summary in h2load output"; }
    # shellcheck disable=SC2086
    set -- $line   # requests: T total, S started, D done, OK succeeded, F failed, E errored, TO timeout
    ok=$8; failed=${10}; errored=${12}; tmo=${14}
    codes=$(grep '^status codes:' "$f")
    two=$(echo "$codes" | awk '{print $3}')
    if [ "$failed" != 0 ] || [ "$errored" != 0 ] || [ "$tmo" != 0 ] || [ "$two" != "$ok" ] \
        || [ "$ok" = 0 ]; then
        log "$line"; log "$codes"; die "h2load reported failures (see above)"
    fi
}

h2_ok() { grep '^requests:' "$1" | awk '{print $8}'; }
h2_rps() { sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$1"; }
h2_elapsed_s() {   # "finished in 3.01s," / "finished in 146.58ms,"
    sed -n 's/^finished in \([0-9.]*\)\([mu]*s\),.*/\1 \2/p' "$1" \
        | awk '{v=$1; if ($2=="ms") v/=1e3; else if ($2=="us") v/=1e6; printf "%.6f\n", v}'
}

# percentiles of column 3 (microseconds) of an h2load log, status 200 only
lat_pcts() {
    awk -F'\t' '$2 == 200 {print $3}' "$1" | sort -n > "$tmp/lat.sorted"
    n=$(wc -l < "$tmp/lat.sorted")
    [ "$n" -gt 0 ] || { echo "nan nan"; return; }
    awk -v n="$n" 'BEGIN { i50 = int(n * 0.50 + 0.999999); i99 = int(n * 0.99 + 0.999999)
                           if (i50 < 1) i50 = 1; if (i99 < 1) i99 = 1 }
                   NR == i50 { p50 = $1 } NR == i99 { p99 = $1 }
                   END { print p50, p99 }' "$tmp/lat.sorted"
}

# results are appended as "key value" lines; medians computed at the end
res="$tmp/results.txt"
: > "$res"
: > "$tmp/runs.md"
record() { echo "$1 $2" >> "$res"; }

# unary_run LABEL PID URL C M EXTRA-ARGS... : warm-up + measured run
unary_run() {
    label=$1 spid=$2 url=$3 c=$4 m=$5; shift 5
    h2load_run "$tmp/warm.out" -D "$WARMUP" -c "$c" -m "$m" "$@" "$url"
    try=0
    while :; do
        rm -f "$tmp/lat.log"
        read -r t0 o0 <<< "$(cpu_ticks "$spid")"
        b0=$(cpu_busy "$SERVER_CPU"); k0=$(cpu_busy "$CLIENT_CPU"); w0=$EPOCHREALTIME
        h2load_run "$tmp/run.out" -D "$DURATION" -c "$c" -m "$m" --log-file="$tmp/lat.log" "$@" "$url"
        read -r t1 o1 <<< "$(cpu_ticks "$spid")"
        b1=$(cpu_busy "$SERVER_CPU"); k1=$(cpu_busy "$CLIENT_CPU"); w1=$EPOCHREALTIME
        # CPU shares are taken over the wall time between the two readings
        wall=$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.6f", b - a }')
        cl=$(cat "$tmp/run.out.cpu")
        ok=$(h2_ok "$tmp/run.out"); rps=$(h2_rps "$tmp/run.out")
        el=$(h2_elapsed_s "$tmp/run.out")
        # % of the server's CPU used by anything else than the server
        other=$(awk -v a="$t0" -v b="$t1" -v c="$b0" -v d="$b1" -v hz="$CLK_TCK" -v e="$wall" \
            'BEGIN { o = ((d - c) - (b - a)) / hz / e * 100; if (o < 0) o = 0; printf "%.0f", o }')
        if [ "$other" -le "$NOISE_MAX" ] || [ "$try" -ge "$NOISE_RETRIES" ]; then break; fi
        try=$((try + 1))
        log "$label: other processes took ${other}% of CPU $SERVER_CPU; measuring again"
    done
    record "$label.retry" "$try"
    # shellcheck disable=SC2046
    set -- $(lat_pcts "$tmp/lat.log")
    p50=$1 p99=$2
    cpu_us=$(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" -v n="$ok" \
        'BEGIN { printf "%.2f", (b - a) * 1e6 / hz / n }')
    own_us=$(awk -v a="$o0" -v b="$o1" -v hz="$CLK_TCK" -v n="$ok" \
        'BEGIN { printf "%.2f", (b - a) * 1e6 / hz / n }')
    record "$label.own" "$own_us"
    util=$(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" -v e="$wall" \
        'BEGIN { printf "%.0f", (b - a) / hz / e * 100 }')
    record "$label.rps" "$rps"; record "$label.p50" "$p50"; record "$label.p99" "$p99"
    # client CPU% (h2load) and CPU% of the server's CPU used by anything else
    cutil=$(awk -v t="$cl" -v hz="$CLK_TCK" -v e="$wall" 'BEGIN { printf "%.0f", t / hz / e * 100 }')
    # % of the client's CPU used by anything else than h2load
    cother=$(awk -v a="$k0" -v b="$k1" -v t="$cl" -v hz="$CLK_TCK" -v e="$wall" \
        'BEGIN { o = ((b - a) - t) / hz / e * 100; if (o < 0) o = 0; printf "%.0f", o }')
    record "$label.cother" "$cother"
    record "$label.cpu" "$cpu_us"; record "$label.util" "$util"; record "$label.n" "$ok"
    record "$label.cutil" "$cutil"; record "$label.other" "$other"
    printf '| %s | %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n' "$rep" "${label%%.*}" \
        "${label#*.}" "$rps" "$p50" "$p99" "$cpu_us" "$cutil" "$other" "$cother" "$try" >> "$tmp/runs.md"
    log "$label: ${rps} req/s p50 ${p50}us p99 ${p99}us server ${cpu_us} us/req (process alone ${own_us}; ${util}% CPU)" \
        "n=$ok client ${cutil}% CPU, others on server CPU ${other}%, on client CPU ${cother}%"
}

stream_run() {
    local rep=$1
    url="http://127.0.0.1:$gw_port/openshell.diag.v1.Diagnostics/Stream"
    h2load_run "$tmp/warm.out" -n 8 -c 1 -m 8 -d "$tmp/stream.bin" "${grpc_h[@]}" "$url"
    read -r t0 o0 <<< "$(cpu_ticks "$gw_pid")"
    h2load_run "$tmp/run.out" -n "$STREAM_REQS" -c 1 -m 8 -d "$tmp/stream.bin" "${grpc_h[@]}" "$url"
    read -r t1 o1 <<< "$(cpu_ticks "$gw_pid")"
    ok=$(h2_ok "$tmp/run.out"); el=$(h2_elapsed_s "$tmp/run.out")
    [ "$ok" = "$STREAM_REQS" ] || die "stream: $ok of $STREAM_REQS streams succeeded"
    # every chunk is >= 5 (frame) + 2 (seq) + 2 + size bytes; check the data volume
    data=$(sed -n 's/^traffic:.* total, .*headers.*, [0-9.]*[KMG]*B (\([0-9]*\)) data.*/\1/p' "$tmp/run.out")
    msgs=$((ok * STREAM_COUNT))
    if [ -n "$data" ] && [ "$data" -lt $((msgs * (STREAM_SIZE + 9))) ]; then
        die "stream: only $data data bytes for $msgs messages"
    fi
    mps=$(awk -v n="$msgs" -v e="$el" 'BEGIN { printf "%.0f", n / e }')
    cpu_us=$(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" -v n="$msgs" \
        'BEGIN { printf "%.4f", (b - a) * 1e6 / hz / n }')
    mbps=$(awk -v d="$data" -v e="$el" 'BEGIN { printf "%.0f", d / e / 1048576 }')
    record stream.mps "$mps"; record stream.cpu "$cpu_us"; record stream.mbps "$mbps"
    record stream.el "$el"
    log "stream rep $rep: $msgs msgs in ${el}s = $mps msg/s, server $cpu_us us/msg, $mbps MiB/s data"
}

median() {   # median of the recorded values of one key
    awk -v k="$1" '$1 == k { print $2 }' "$res" | sort -g \
        | awk '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit }
                 if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
spread() {   # min-max of one key ("int": rounded)
    awk -v k="$1" '$1 == k { print $2 }' "$res" | sort -g \
        | awk -v r="${2:-}" '{ if (r == "int") $1 = sprintf("%.0f", $1) }
                             NR == 1 { lo = $1 } { hi = $1 }
                             END { if (NR) print lo "–" hi; else print "-" }'
}

# ---------------------------------------------------------------- run
start_gateway
health_url="http://127.0.0.1:$gw_port/openshell.v1.OpenShell/Health"

# Pre-flight: one real gRPC client call must end with grpc-status 0 (OK).
if /usr/bin/python3 -c 'import grpc' 2>/dev/null; then
    timeout 30 /usr/bin/python3 - "$gw_port" <<'PY' >&2 || die "grpcio pre-flight failed"
import sys, grpc
port, size = sys.argv[1], 64
ch = grpc.insecure_channel("127.0.0.1:" + port)
ident = lambda b: b
health = ch.unary_unary("/openshell.v1.OpenShell/Health",
                        request_serializer=ident, response_deserializer=ident)
resp, call = health.with_call(b"", timeout=5)
assert call.code() == grpc.StatusCode.OK, call.code()
stream = ch.unary_stream("/openshell.diag.v1.Diagnostics/Stream",
                         request_serializer=ident, response_deserializer=ident)
req = bytes([0x08, 100, 0x10, size])  # StreamRequest{count=100, size=64}
it = stream(req, timeout=10)
n = sum(1 for _ in it)
assert n == 100 and it.code() == grpc.StatusCode.OK, (n, it.code())
print("[bench] pre-flight: Health grpc-status OK (%d-byte response), Stream 100/100 OK"
      % len(resp))
PY
elif command -v nghttp >/dev/null 2>&1; then
    timeout 30 nghttp -v -d "$tmp/health.bin" -H 'content-type: application/grpc' \
        -H 'te: trailers' "$health_url" > "$tmp/nghttp.out" 2>&1 || true
    grep -q 'grpc-status: 0' "$tmp/nghttp.out" || { cat "$tmp/nghttp.out" >&2; die "no grpc-status 0"; }
    log "pre-flight: Health grpc-status 0 (nghttp)"
else
    log "warning: neither python3-grpcio nor nghttp found; grpc-status not checked"
fi

[ "$NO_REFERENCE" = 1 ] || start_nghttpd

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
t_start=$(date +%s)
rep=1
while [ $rep -le "$REPEAT" ]; do
    for cfg in $CONFIGS; do
        c=${cfg%x*}; m=${cfg#*x}
        unary_run "gw.$cfg" "$gw_pid" "$health_url" "$c" "$m" -d "$tmp/health.bin" "${grpc_h[@]}"
        if [ "$NO_REFERENCE" != 1 ]; then
            unary_run "ng.$cfg" "$ng_pid" "http://127.0.0.1:$ng_port/canned.txt" "$c" "$m"
        fi
    done
    stream_run "$rep"
    rep=$((rep + 1))
done
t_end=$(date +%s)
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
kill -0 "$gw_pid" 2>/dev/null || die "gateway died during the run"
gw_rss=$(awk '/^VmHWM/ {print $2}' "/proc/$gw_pid/status")
gw_threads=$(awk '/^Threads/ {print $2}' "/proc/$gw_pid/status")

mkdir -p "$(dirname "$OUT")"
{
    echo "## h2load gRPC benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- command: \`$cmdline\`"
    echo "- machine: nproc=$(nproc), kernel $(uname -r) ($(uname -m)), CPU: $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1)"
    echo "- tools: $(h2load --version | head -n 1), $gw_version (binary sha256 $gw_sum…)$([ "$NO_REFERENCE" = 1 ] || echo ", $("$NGHTTPD" --version | head -n 1)")"
    echo "- server pinned to CPU $SERVER_CPU, h2load (1 thread) pinned to CPU $CLIENT_CPU; loopback h2c"
    echo "- unary: ${WARMUP} s warm-up + ${DURATION} s measured run per configuration; medians of $REPEAT runs (min–max in brackets); wall time $((t_end - t_start)) s"
    echo "- server CPU/req = Δ(utime+stime+cutime+cstime) of the server process and its descendants (the gateway's embedded PostgreSQL; /proc/PID/stat fields 14-17, CLK_TCK=$CLK_TCK) over the measured run ÷ successful requests; \"process alone\" = Δ(utime+stime) of the server process only; \"CPU%\" = that CPU time ÷ wall time of the run"
    echo "- load average (1/5/15 min) at start: $load_start, at end: $load_end; \"others\" columns: how much of the server's (client's) CPU other processes took during each measured run (busy ticks of that CPU in /proc/stat minus the server's (h2load's) own); a run with more than ${NOISE_MAX}% on the server CPU was measured again up to $NOISE_RETRIES time(s) ($(awk '$1 ~ /\.retry$/ { n += $2 } END { print n + 0 }' "$res") re-run(s) in total)"
    echo "- \"capacity\" = 1e6 ÷ server CPU µs/req: the req/s one fully busy server core would sustain at that per-request cost (robust to other load on the machine, unlike req/s)"
    echo "- gateway after the run: ${gw_threads} thread(s), peak RSS ${gw_rss} KiB"
    echo
    echo "### Unary \`/openshell.v1.OpenShell/Health\` (gateway) vs nghttpd canned 14-byte file (GET)"
    echo
    echo "| server | clients×streams | req/s | p50 µs | p99 µs | server CPU µs/req | process alone µs/req | capacity req/s/core | server CPU% | h2load CPU% | others on server CPU % | others on client CPU % |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for cfg in $CONFIGS; do
        for s in gw ng; do
            [ "$s" = ng ] && [ "$NO_REFERENCE" = 1 ] && continue
            name=gateway; [ "$s" = ng ] && name=nghttpd
            k="$s.$cfg"
            printf '| %s | %s | %s (%s) | %s | %s | %s (%s) | %s | %s | %s | %s | %s | %s |\n' "$name" "$cfg" \
                "$(median "$k.rps" | awk '{printf "%.0f", $1}')" "$(spread "$k.rps" int)" \
                "$(median "$k.p50")" "$(median "$k.p99")" \
                "$(median "$k.cpu")" "$(spread "$k.cpu")" "$(median "$k.own")" \
                "$(median "$k.cpu" | awk '{printf "%.0f", 1e6 / $1}')" "$(median "$k.util")" \
                "$(median "$k.cutil")" "$(median "$k.other")" "$(median "$k.cother")"
        done
    done
    if [ "$NO_REFERENCE" != 1 ]; then
        echo
        echo "### Gateway ÷ nghttpd (same run, medians)"
        echo
        echo "| clients×streams | CPU µs/req ratio | req/s ratio |"
        echo "|---|---:|---:|"
        for cfg in $CONFIGS; do
            printf '| %s | %s | %s |\n' "$cfg" \
                "$(awk -v a="$(median "gw.$cfg.cpu")" -v b="$(median "ng.$cfg.cpu")" 'BEGIN { printf "%.2f×", a / b }')" \
                "$(awk -v a="$(median "gw.$cfg.rps")" -v b="$(median "ng.$cfg.rps")" 'BEGIN { printf "%.2f×", a / b }')"
        done
    fi
    echo
    echo "### Server streaming \`/openshell.diag.v1.Diagnostics/Stream\` (count=$STREAM_COUNT, size=$STREAM_SIZE)"
    echo
    echo "h2load \`-n $STREAM_REQS -c 1 -m 8\`: $((STREAM_REQS * STREAM_COUNT)) messages per run."
    echo
    echo "| messages/s | server CPU µs/msg | data MiB/s | elapsed s |"
    echo "|---:|---:|---:|---:|"
    printf '| %s (%s) | %s (%s) | %s | %s |\n' \
        "$(median stream.mps)" "$(spread stream.mps)" "$(median stream.cpu)" "$(spread stream.cpu)" \
        "$(median stream.mbps)" "$(median stream.el)"
    echo
    echo "<details><summary>Every measured unary run (gw = gateway, ng = nghttpd)</summary>"
    echo
    echo "| rep | server | clients×streams | req/s | p50 µs | p99 µs | server CPU µs/req | h2load CPU% | others on server CPU % | others on client CPU % | re-runs |"
    echo "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    cat "$tmp/runs.md"
    echo
    echo "</details>"
} > "$tmp/table.md"

cp "$tmp/table.md" "$OUT"
cat "$tmp/table.md"
log "written to $OUT"
