#!/usr/bin/env bash
# End-to-end cost of semantic routing on a cache hit, next to model-based routing, in one run.
#
# One gateway (`--workers 1`, pinned to core 0, embedding pool of 1 thread) serves a tenant with
# two proxies in front of the emulator (core 1, with the load generator): `model` (routing by
# the `model` field) and `semantic` (3 topics of 8 utterances and a fallback). Both get the same
# chat request; the semantic proxy sees the same text every time, so after the first request
# every decision is a request-cache hit. Targets alternate (model, semantic, model, semantic)
# so drift on a shared machine shows. Reported per run: req/s, p50/p99 (hey), and the gateway's
# CPU per request (utime+stime of the whole process, embedding pool included, from /proc).
#
# With BASELINE_BIN=path/to/an/older/switchyard, that binary serves the model proxy too (its own
# gateway, same core, same flags) as a third target, `model@baseline`: the "no more CPU than
# before" check in the same run.
#
# Usage: loadtests/semantic.sh [--duration S] [--concurrency C] [--no-build]
# Needs: hey (Debian package `hey`), taskset, curl; the model (scripts/fetch-model).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BIN="$REPO/target/release/switchyard"
DURATION=10
CONC=16
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --concurrency) CONC="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v hey >/dev/null || { echo "hey is missing: apt-get install -y hey" >&2; exit 2; }
[ "$BUILD" = 1 ] && (cd "$REPO" && cargo build --release --locked --bin switchyard)
"$REPO/scripts/fetch-model"
export SWITCHYARD_EMBEDDING_MODEL_DIR="$REPO/.models/all-MiniLM-L6-v2"

TMP="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

cat > "$TMP/bench.toml" <<'TOML'
[[api_keys]]
name = "bench"
sha256 = "b40ea9a3ac5e2a5bc2b6a61b9edd4a87e3c04fcd3e6dbe2ac6d9c06b0ea4f33e"
[providers.openai]
type = "openai"
api_key_env = "BENCH_KEY"
base_url_env = "BENCH_BASE_URL"
[proxies.model]
[[proxies.model.routes]]
name = "only"
provider = "openai"
model = "gpt-4o-mini"
[proxies.semantic]
routing = "semantic"
fallback = "general"
[[proxies.semantic.routes]]
name = "billing"
provider = "openai"
model = "gpt-4o-mini"
[[proxies.semantic.routes.topics]]
name = "invoices"
utterances = ["why was I charged twice this month", "I need a copy of my last invoice", "can you explain the charges on my bill", "how do I update the credit card on my account", "when will my next payment be taken", "I want a refund for my subscription", "what does the pro plan cost per month", "my payment failed, what should I do"]
[[proxies.semantic.routes]]
name = "technical"
provider = "openai"
model = "gpt-4o"
[[proxies.semantic.routes.topics]]
name = "troubleshooting"
utterances = ["the app crashes when I open it", "I get a 500 error when calling the API", "how do I reset my password", "the sync keeps failing with a timeout", "my webhook is not receiving any events", "the page loads forever and never finishes", "how do I configure single sign-on", "the export to CSV produces an empty file"]
[[proxies.semantic.routes]]
name = "general"
provider = "openai"
model = "gpt-4.1-mini"
[[proxies.semantic.deny_topics]]
name = "legal-advice"
utterances = ["can I sue my landlord for not returning my deposit", "is it legal to record a phone call without consent", "how do I write a will without a lawyer", "what are my rights if I get fired without notice"]
TOML
KEY="sk-semantic-bench"
printf %s "$KEY" | sha256sum | awk '{print $1}' > "$TMP/sha"
sed -i "s/b40ea9a3ac5e2a5bc2b6a61b9edd4a87e3c04fcd3e6dbe2ac6d9c06b0ea4f33e/$(cat "$TMP/sha")/" "$TMP/bench.toml"

# Reads "PREFIX http://ADDR" from a process's stdout file.
wait_addr() { for _ in $(seq 1 200); do a="$(grep -o "$2http://[0-9.:]*" "$1" | head -1 | sed "s|$2||")"; [ -n "$a" ] && { echo "$a"; return; }; sleep 0.1; done; echo "no address in $1" >&2; exit 1; }

taskset -c 1 "$BIN" emulate --listen 127.0.0.1:0 --workers 1 > "$TMP/emu.out" 2>&1 &
PIDS+=($!)
EMU="$(wait_addr "$TMP/emu.out" "emulator listening on ")"
BENCH_KEY=sk-emulator-openai BENCH_BASE_URL="$EMU/v1" RUST_LOG=warn \
  taskset -c 0 "$BIN" serve --tenants "$TMP" --listen 127.0.0.1:0 --workers 1 \
  --embedding-threads 1 --no-embedding-cache > "$TMP/gw.out" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)
GW="$(wait_addr "$TMP/gw.out" "switchyard listening on ")"
for _ in $(seq 1 300); do curl -sf "$GW/readyz" >/dev/null && break; sleep 0.1; done
BASE_PID=""
if [ -n "${BASELINE_BIN:-}" ]; then
  mkdir -p "$TMP/base"
  # The model proxy only: an older binary may not serve semantic proxies.
  awk '/^\[proxies.semantic/{exit} {print}' "$TMP/bench.toml" > "$TMP/base/bench.toml"
  BENCH_KEY=sk-emulator-openai BENCH_BASE_URL="$EMU/v1" RUST_LOG=warn \
    taskset -c 0 "$BASELINE_BIN" serve --tenants "$TMP/base" --listen 127.0.0.1:0 --workers 1 \
    > "$TMP/base.out" 2>&1 &
  BASE_PID=$!
  PIDS+=($BASE_PID)
  BASE_GW="$(wait_addr "$TMP/base.out" "switchyard listening on ")"
fi

BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"I was billed twice for my plan this month, can I get a refund?"}]}'
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
CLK="$(getconf CLK_TCK)"
printf '| proxy | run | req/s | p50 ms | p99 ms | gateway CPU ms/req |\n|---|---|---|---|---|---|\n'
for run in 1 2; do
  targets="model semantic"
  [ -n "$BASE_PID" ] && targets="model model@baseline semantic"
  for proxy in ${ORDER:-$targets}; do
    pid="$GW_PID"
    URL="$GW/bench/$proxy/v1/chat/completions"
    if [ "$proxy" = "model@baseline" ]; then
      pid="$BASE_PID"
      URL="$BASE_GW/bench/model/v1/chat/completions"
    fi
    code="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$BODY" "$URL")"
    [ "$code" = 200 ] || { echo "$proxy answered $code" >&2; exit 1; }
    t0="$(ticks "$pid")"
    taskset -c 1 hey -z "${DURATION}s" -c "$CONC" -m POST -T application/json \
      -H "Authorization: Bearer $KEY" -d "$BODY" "$URL" > "$TMP/hey.out"
    t1="$(ticks "$pid")"
    n="$(awk '/\[200\]/{print $2}' "$TMP/hey.out")"
    total="$(grep -oE '\[[0-9]+\][[:space:]]+[0-9]+ responses' "$TMP/hey.out" | awk '{s+=$2} END{print s}')"
    [ "$n" = "$total" ] || { echo "$proxy: non-200 answers" >&2; cat "$TMP/hey.out" >&2; exit 1; }
    rps="$(awk '/Requests\/sec/{print $2}' "$TMP/hey.out")"
    p50="$(awk '/ 50% in/{print $3*1000}' "$TMP/hey.out")"
    p99="$(awk '/ 99% in/{print $3*1000}' "$TMP/hey.out")"
    cpu="$(awk -v d="$((t1 - t0))" -v c="$CLK" -v n="$n" 'BEGIN{printf "%.4f", d*1000/c/n}')"
    printf '| %s | %s | %s | %s | %s | %s |\n' "$proxy" "$run" "$rps" "$p50" "$p99" "$cpu"
  done
done
