#!/usr/bin/env bash
# What trace export costs: the gateway under the same load with export off, then on with no
# trace sampled (`parentbased_traceidratio` 0: the cost of an unsampled request), every trace
# sampled, and 10% sampled (OTLP/gRPC to a real receiver on loopback, tests/otlp/receiver.py in
# count-only mode).
#
# Non-streaming chat at concurrency 64 for DURATION seconds per run, hey as the load generator.
# The gateway (1 worker) runs alone on core 0; the emulator, the receiver and hey share core 1.
# Prints req/s and the gateway's CPU (utime+stime from /proc) per request for both runs, and
# the ratios. Every process started here is stopped on exit.
#
# With --rate N the load is capped at N requests/s in all, so that every run does the same work
# per second: CPU per request is then comparable across runs even when the load core is busy
# (uncapped, a slower run batches less and spends more CPU per request).
#
# With --ledger off the gateways run without the usage ledger, whose own CPU per request (a
# commit every 10 ms, shared by however many rows came in) varies with the load and blurs a
# small difference.
#
# Usage: loadtests/otel.sh [--bin PATH] [--rate N] [--ledger off|sqlite] [DURATION]   (needs target/release/switchyard, or the
#        binary PATH names, e.g. another build to compare; hey; and a Python with
#        opentelemetry-proto and grpcio: SWITCHYARD_TEST_PYTHON or python3)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BIN="$REPO/target/release/switchyard"
RATE=()
LEDGER=sqlite
while [[ "${1:-}" == --* ]]; do
    case "$1" in
        --bin) BIN="$2" ;;
        # hey's -q is per worker.
        --rate) RATE=(-q "$(( ($2 + 63) / 64 ))") ;;
        --ledger) LEDGER="$2" ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
done
PY="${SWITCHYARD_TEST_PYTHON:-python3}"
DURATION="${1:-10}"
CLK_TCK="$(getconf CLK_TCK)"
[[ -x "$BIN" ]] || { echo "build first: cargo build --release --bin switchyard" >&2; exit 1; }
command -v hey >/dev/null || { echo "hey is needed (apt-get install hey)" >&2; exit 1; }

# shellcheck source=loadtests/bench-env.sh
source "$HERE/bench-env.sh"
start_emulator
start_receiver
write_bench_tenant

BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'

ledger_arg() { [[ "$LEDGER" == off ]] && echo off || echo "sqlite://$WORK/ledger-$1.db"; }

# run NAME [ENV...]: one gateway, warm-up, one measured run; prints "NAME req/s cpu_ms/req".
run() {
    local name="$1"; shift
    env BENCH_OPENAI_KEY=sk-emulator-openai RUST_LOG=warn "$@" \
        taskset -c 0 "$BIN" serve --tenants "$WORK/tenants" --listen 127.0.0.1:0 --workers 1 \
        --no-watch --ledger "$(ledger_arg "$name")" >"$WORK/gw-$name.out" 2>"$WORK/gw-$name.err" &
    local pid=$!
    PIDS+=("$pid")
    local gw
    gw="$(wait_line "$WORK/gw-$name.out" 'switchyard listening on' | sed 's/.*on //')"
    local url="$gw/bench/chat/v1/chat/completions"
    taskset -c 1 hey -z 2s -c 64 -m POST -H "Authorization: Bearer sk-bench" \
        -T application/json -d "$BODY" "$url" >/dev/null
    local before after
    before="$(awk '{print $14+$15}' "/proc/$pid/stat")"
    taskset -c 1 timeout $((DURATION + 30)) hey -z "${DURATION}s" -c 64 "${RATE[@]}" -m POST \
        -H "Authorization: Bearer sk-bench" -T application/json -d "$BODY" "$url" >"$WORK/hey-$name.txt"
    after="$(awk '{print $14+$15}' "/proc/$pid/stat")"
    local ok rps
    ok="$(grep -E '^\s+\[200\]' "$WORK/hey-$name.txt" | awk '{print $2}')"
    rps="$(grep 'Requests/sec' "$WORK/hey-$name.txt" | awk '{print $2}')"
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    awk -v n="$name" -v r="$rps" -v t=$((after - before)) -v ok="${ok:-0}" -v hz="$CLK_TCK" \
        'BEGIN { printf "%s %.0f %.4f %d\n", n, r, (t * 1000 / hz) / ok, ok }'
}

OTLP=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$GRPC" OTEL_EXPORTER_OTLP_PROTOCOL=grpc)
OFF="$(run off)"
NONE="$(run none "${OTLP[@]}" OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0)"
ON="$(run all "${OTLP[@]}")"
TENTH="$(run tenth "${OTLP[@]}" OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.1)"
exec 3>&-
sleep 0.5
SPANS="$(grep -m1 '^spans' "$WORK/rx.out" | awk '{print $2}' || echo '?')"
echo "export: off; none = parentbased_traceidratio 0; all = every trace sampled; tenth = parentbased_traceidratio 0.1"
printf '%-8s %10s %12s %10s\n' export req/s "CPU ms/req" requests
for r in "$OFF" "$NONE" "$ON" "$TENTH"; do
    echo "$r" | awk '{printf "%-8s %10s %12s %10s\n", $1, $2, $3, $4}'
done
echo "spans received by the OTLP receiver (all export runs, warm-ups included): $SPANS"
for r in "$NONE" "$ON" "$TENTH"; do
    awk -v a="$OFF" -v b="$r" 'BEGIN { split(a, x, " "); split(b, y, " ");
        printf "%s vs off: throughput %+.1f%%, CPU per request %+.1f%%\n",
            y[1], (y[2] / x[2] - 1) * 100, (y[3] / x[3] - 1) * 100 }'
done
