#!/usr/bin/env bash
# Instructions per request: the gateway's user-space instructions (every thread), counted by
# valgrind's callgrind over N non-streaming chat requests at concurrency 8 (N a multiple of 8), after 304 requests
# of warm-up that are not counted. Unlike CPU time, the count repeats to a fraction of a
# percent whatever else the machine is doing, so two builds (or two settings) compare on a
# noisy machine. It overweights what a CPU does in one instruction but valgrind emulates in
# many (`rep stosb` memsets, SHA-NI hashing): confirm a relative weight with `perf` before
# acting on it.
#
# The emulator (1 worker) and hey run on core 1; the gateway under valgrind on core 0, with one
# worker and the tenant of loadtests/otel.sh (one OpenAI route to the emulator).
#
# Usage: loadtests/callgrind.sh [--bin PATH] [-n N] [--ledger off|sqlite] [--otel off|all|none|tenth]
#                               [--tokens N] [--stream on] [--keep DIR] [--floor on]
#   --ledger  sqlite (default): a SQLite ledger in a temporary directory; off: --ledger off
#   --otel    off (default); all / none / tenth: OTLP/gRPC to tests/otlp/receiver.py with every
#             trace, none, or 10% sampled (needs a Python with opentelemetry-proto and grpcio:
#             SWITCHYARD_TEST_PYTHON or python3)
#   --tokens  answers of N words (the emulator's `tokens` marker in the prompt; default: its
#             12-word answer)
#   --stream  on: streamed answers (`"stream": true`), each relayed event by event
#   --keep    copy the callgrind output there (for callgrind_annotate)
#   --floor   on: count loadtests/floor_proxy.rs instead (the actix-web + awc stack doing only what
#             a proxy must; `cargo build --release --example floor-proxy`)
# Prints one line: "instructions/request N (total T over R requests)".
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BIN="$REPO/target/release/switchyard"
N=2000
LEDGER=sqlite
OTEL=off
KEEP=""
PROMPT="Hello"
STREAM=false
FLOOR=false
while (($#)); do
    case "$1" in
        --bin) BIN="$2" ;;
        -n) N="$2" ;;
        --ledger) LEDGER="$2" ;;
        --otel) OTEL="$2" ;;
        --keep) KEEP="$2" ;;
        --tokens) PROMPT="Hello [emulator:tokens=$2]" ;;
        --stream) [[ "$2" == on ]] && STREAM=true ;;
        --floor) [[ "$2" == on ]] && FLOOR=true ;;
        *) sed -n '2,/^set/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
    shift 2
done
PY="${SWITCHYARD_TEST_PYTHON:-python3}"
[[ -x "$BIN" ]] || { echo "build first: cargo build --release --bin switchyard" >&2; exit 1; }
for tool in valgrind callgrind_control hey taskset; do
    command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install valgrind hey)" >&2; exit 1; }
done

# shellcheck source=loadtests/bench-env.sh
source "$HERE/bench-env.sh"
start_emulator

ENV=(BENCH_OPENAI_KEY=sk-emulator-openai RUST_LOG=warn)
case "$OTEL" in
    off) ;;
    all | none | tenth)
        start_receiver
        ENV+=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$GRPC" OTEL_EXPORTER_OTLP_PROTOCOL=grpc)
        case "$OTEL" in
            none) ENV+=(OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0) ;;
            tenth) ENV+=(OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.1) ;;
        esac
        ;;
    *) echo "--otel is off, all, none or tenth" >&2; exit 2 ;;
esac
case "$LEDGER" in
    sqlite) LEDGER_ARG="sqlite://$WORK/ledger.db" ;;
    off) LEDGER_ARG=off ;;
    *) echo "--ledger is off or sqlite" >&2; exit 2 ;;
esac

write_bench_tenant

if $FLOOR; then
    taskset -c 0 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.out" \
        "$REPO/target/release/examples/floor-proxy" --listen 127.0.0.1:0 --upstream "$EMU/v1" \
        --key sk-emulator-openai >"$WORK/gw.out" 2>"$WORK/gw.err" &
else
    env "${ENV[@]}" taskset -c 0 valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$WORK/cg.out" \
        "$BIN" serve --tenants "$WORK/tenants" --listen 127.0.0.1:0 --workers 1 --no-watch \
        --ledger "$LEDGER_ARG" >"$WORK/gw.out" 2>"$WORK/gw.err" &
fi
GW=$!
PIDS+=("$GW")
URL="$(wait_line "$WORK/gw.out" 'listening on' | sed 's/.*on //')/bench/chat/v1/chat/completions"
BODY='{"model":"gpt-4o-mini","stream":'"$STREAM"',"messages":[{"role":"user","content":"'"$PROMPT"'"}]}'
load() {
    taskset -c 1 hey -n "$1" -c 8 -m POST -H "Authorization: Bearer sk-bench" \
        -T application/json -d "$BODY" "$URL" >"$WORK/hey.txt"
    local ok
    ok="$(grep -E '^\s+\[200\]' "$WORK/hey.txt" | awk '{print $2}')"
    [[ "${ok:-0}" == "$1" ]] || { echo "expected $1 answers of 200:" >&2; cat "$WORK/hey.txt" >&2; exit 1; }
}
load 304
sleep 0.5
callgrind_control -i on "$GW" >/dev/null 2>&1
load "$N"
# Let the ledger's and the exporter's rounds for these requests run (they are counted too).
sleep 1.5
callgrind_control -i off "$GW" >/dev/null 2>&1
kill -TERM "$GW"; wait "$GW" 2>/dev/null || true
TOTAL="$(awk '/^totals:/ {print $2; exit}' "$WORK/cg.out")"
[[ -n "$KEEP" ]] && mkdir -p "$KEEP" && cp "$WORK/cg.out" "$KEEP/"
awk -v t="$TOTAL" -v n="$N" 'BEGIN { printf "instructions/request %.0f (total %d over %d requests)\n", t / n, t, n }'
