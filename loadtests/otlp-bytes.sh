#!/usr/bin/env bash
# Bytes exported a request: N whole-answer chat requests (c8) through the gateway with every
# trace exported to loadtests/otlp_sink.rs, which counts the `ExportTraceServiceRequest` bytes
# it receives (no gRPC or HTTP framing; the resource and scope, once a batch, included). The
# export thread's kernel time (TCP sends on loopback) scales with these bytes.
#
# Usage: loadtests/otlp-bytes.sh [--bin PATH] [-n N] [--protocol http/protobuf|grpc]
#   (`cargo build --release --bin switchyard --example otlp-sink` first)
# Prints one line: "bytes/request B (spans S, bytes T, requests N)".
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BIN="$REPO/target/release/switchyard"
SINK="$REPO/target/release/examples/otlp-sink"
N=3000
PROTOCOL=http/protobuf
while (($#)); do
    case "$1" in
        --bin) BIN="$2" ;;
        -n) N="$2" ;;
        --protocol) PROTOCOL="$2" ;;
        *) sed -n '2,/^set/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
    shift 2
done
PY=python3
[[ -x "$BIN" && -x "$SINK" ]] || { echo "build first (see --help)" >&2; exit 1; }

# shellcheck source=loadtests/bench-env.sh
source "$HERE/bench-env.sh"
start_emulator
mkfifo "$WORK/sink.in"
taskset -c 1 "$SINK" <"$WORK/sink.in" >"$WORK/sink.out" &
PIDS+=($!)
exec 3>"$WORK/sink.in"
PORTS="$(wait_line "$WORK/sink.out" '^listening')"
if [[ "$PROTOCOL" == grpc ]]; then
    ENDPOINT="http://127.0.0.1:$(sed 's/.*grpc=\([0-9]*\).*/\1/' <<<"$PORTS")"
else
    ENDPOINT="http://127.0.0.1:$(sed 's/.*http=\([0-9]*\).*/\1/' <<<"$PORTS")"
fi
write_bench_tenant
env BENCH_OPENAI_KEY=sk-emulator-openai RUST_LOG=warn OTEL_EXPORTER_OTLP_ENDPOINT="$ENDPOINT" \
    OTEL_EXPORTER_OTLP_PROTOCOL="$PROTOCOL" taskset -c 0 \
    "$BIN" serve --tenants "$WORK/tenants" --listen 127.0.0.1:0 --workers 1 --no-watch \
    --ledger off >"$WORK/gw.out" 2>"$WORK/gw.err" &
GW=$!
PIDS+=("$GW")
URL="$(wait_line "$WORK/gw.out" 'listening on' | sed 's/.*on //')/bench/chat/v1/chat/completions"
BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'
taskset -c 1 hey -n "$N" -c 8 -m POST -H "Authorization: Bearer sk-bench" \
    -T application/json -d "$BODY" "$URL" >"$WORK/hey.txt"
OK="$(grep -E '^\s+\[200\]' "$WORK/hey.txt" | awk '{print $2}')"
[[ "${OK:-0}" == "$N" ]] || { echo "expected $N answers of 200:" >&2; cat "$WORK/hey.txt" >&2; exit 1; }
# Shutdown flushes what is queued.
kill -TERM "$GW"; wait "$GW" 2>/dev/null || true
exec 3>&-
wait_line "$WORK/sink.out" '^bytes' >/dev/null
SPANS="$(awk '/^spans/ {print $2}' "$WORK/sink.out")"
BYTES="$(awk '/^bytes/ {print $2}' "$WORK/sink.out")"
awk -v b="$BYTES" -v s="$SPANS" -v n="$N" \
    'BEGIN { printf "bytes/request %.1f (spans %d, bytes %d, requests %d)\n", b / n, s, b, n }'
