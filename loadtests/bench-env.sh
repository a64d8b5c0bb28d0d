# Shared by loadtests/otel.sh and loadtests/callgrind.sh (sourced, not run): a temporary
# directory and the processes to stop on exit, the emulator on core 1, the OTLP receiver, and
# the one-route tenant both measure. Expects BIN, REPO and PY to be set.

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# The first line a process prints that matches $2, within $3 tenths of a second (default 600:
# a gateway under valgrind starts slowly).
wait_line() {
    local file="$1" pattern="$2"
    for _ in $(seq "${3:-600}"); do
        if grep -m1 -E "$pattern" "$file" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for $pattern in $file" >&2; cat "$file" >&2; exit 1
}

# Starts the emulator (1 worker, core 1); sets EMU to its base URL.
start_emulator() {
    taskset -c 1 "$BIN" emulate --listen 127.0.0.1:0 --workers 1 >"$WORK/emu.out" 2>/dev/null &
    PIDS+=($!)
    EMU="$(wait_line "$WORK/emu.out" 'emulator listening on' | sed 's/.*on //')"
}

# Starts tests/otlp/receiver.py counting spans (core 1), its stdin held open on fd 3 (close it
# to make it print the count); sets GRPC to its gRPC port.
start_receiver() {
    mkfifo "$WORK/rx.in"
    taskset -c 1 "$PY" "$REPO/tests/otlp/receiver.py" --count-only <"$WORK/rx.in" >"$WORK/rx.out" &
    PIDS+=($!)
    exec 3>"$WORK/rx.in"
    GRPC="$(wait_line "$WORK/rx.out" '^listening' | sed 's/.*grpc=\([0-9]*\).*/\1/')"
}

# $WORK/tenants/bench.toml: key sk-bench, proxy `chat` with one route to the emulator's
# gpt-4o-mini (the gateway needs BENCH_OPENAI_KEY=sk-emulator-openai).
write_bench_tenant() {
    mkdir "$WORK/tenants"
    cat >"$WORK/tenants/bench.toml" <<TOML
[[api_keys]]
name = "bench"
sha256 = "$(printf 'sk-bench' | sha256sum | cut -d' ' -f1)"
[providers.openai]
type = "openai"
api_key_env = "BENCH_OPENAI_KEY"
base_url = "$EMU/v1"
[proxies.chat]
[[proxies.chat.routes]]
name = "mini"
provider = "openai"
model = "gpt-4o-mini"
TOML
}
