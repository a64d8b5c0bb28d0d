#!/usr/bin/env bash
# Measure what Switchyard's proxying costs, in one run.
#
# Three targets answer the same OpenAI chat request:
#   direct   the emulator itself (the floor: no proxy at all)
#   nginx    a plain nginx reverse proxy in front of the emulator (the "cheap blind proxy" yardstick)
#   gateway  switchyard serve in front of the emulator (auth, tenant/route lookup, body rewrite)
# each under the same load (non-streaming at concurrency 1, 16, 64; streaming at 16), and the
# report (loadtests/report.py) prints req/s, p50/p99 latency, proxy CPU time per request and the
# gateway's overhead relative to direct and to nginx.
#
# All traffic stays on 127.0.0.1 and every load loop is bounded by oha's -z duration plus an
# outer `timeout`. Every process this script starts is stopped on exit, including on failure
# and Ctrl-C.
#
# Usage: loadtests/run.sh [--duration S] [--warmup S] [--wait-idle S] [--no-build] [--perf] [--strict]
#   --duration S  measured seconds per scenario (default 10)
#   --warmup S    unmeasured seconds before each scenario (default 2)
#   --wait-idle S before each scenario, wait up to S seconds for other processes to go quiet
#                 (default 60); a run they disturbed anyway is repeated (3 tries in all)
#   --no-build    use the existing target/release/switchyard
#   --perf        after the table's runs, profile the gateway with `perf record` during one
#                 extra non-stream c64 run (not part of the table) and save where its CPU goes
#   --strict      exit 1 when the latency/throughput bar is missed (default: report only)
#   --baseline BIN  also measure another switchyard binary (e.g. a build of the previous main)
#                 as target "baseline", in the same run, so a change's cost is measured side by
#                 side with what it replaces

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BIN="$REPO/target/release/switchyard"

DURATION=10
WARMUP=2
BUILD=1
STRICT=0
PERF=0

# Cores: the two proxies under test share core 0 (only one is under load at a time); the
# emulator and the load generator share core 1, so a proxy never competes with its own load.
PROXY_CORE=0
LOAD_CORE=1

# The request every scenario sends. Small on purpose: we measure the proxy, not JSON size.
BODY_PLAIN='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'
BODY_STREAM='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}],"stream":true}'
EMULATOR_KEY="sk-emulator-openai"
AZURE_KEY="a2e0c0ffee0e0u1a70r0a2e0c0ffee00"
GEMINI_KEY="AIzaSy-switchyard-emulator-gemini-key0"
GATEWAY_KEY="sk-bench"

# Scenarios: mode:concurrency. Targets run back to back inside each scenario, so that the three
# numbers being compared are taken minutes apart at most.
SCENARIOS=("plain:1" "plain:16" "plain:64" "stream:16")
TARGETS=(direct nginx gateway)
# The same gateway process, the same client request, routed to each other provider on the
# emulator: Azure (passthrough on Azure's URLs), Gemini (translated), Bedrock (translated and
# SigV4-signed; the emulator verifies every signature). Measured at the bar's two
# scenarios only; their CPU per request less the gateway's (OpenAI passthrough) is what
# translation and signing cost.
PROVIDER_TARGETS=(noledger azure gemini bedrock)
PROVIDER_SCENARIOS=("plain:64" "stream:16")

# Noise control: other processes (a compile, a test run) on this machine skew every number.
NOISE_PCT=5        # % of all cores taken by others above which a run counts as noisy
WAIT_IDLE_MAX=60   # seconds to wait for a quiet machine before each scenario
MAX_ATTEMPTS=3     # measured runs per scenario when the previous one was noisy
NPROC="$(nproc)"
CLK_TCK="$(getconf CLK_TCK)"

PIDS=()        # every background process we started, stopped by cleanup()
WORK=""        # temp dir: configs, logs of the servers
EMU_PID="" GW_PID="" NGX_PID="" BL_PID="" NL_PID=""
BASELINE_BIN=""
EMU_ADDR="" GW_ADDR="" NGX_ADDR="" NL_ADDR=""

# The start of a server's error log (where a panic message is) and its end (the exit reason).
show_log() {
    [[ -s "$1" ]] || return 0
    if (( $(wc -l <"$1") > 30 )); then
        head -n 15 "$1" >&2; echo "  [...]" >&2; tail -n 5 "$1" >&2
    else
        cat "$1" >&2
    fi
}

log() { printf '[loadtest %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; }

parse_args() {
    while (($#)); do
        case "$1" in
            --duration) DURATION="${2:?--duration needs seconds}"; shift 2 ;;
            --warmup) WARMUP="${2:?--warmup needs seconds}"; shift 2 ;;
            --wait-idle) WAIT_IDLE_MAX="${2:?--wait-idle needs seconds}"; shift 2 ;;
            --no-build) BUILD=0; shift ;;
            --perf) PERF=1; shift ;;
            --strict) STRICT=1; shift ;;
            --baseline) BASELINE_BIN="${2:?--baseline needs a binary}"; shift 2 ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument: $1" ;;
        esac
    done
    [[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 1 ]] || die "--duration must be a whole number of seconds >= 1"
    [[ "$WARMUP" =~ ^[0-9]+$ ]] || die "--warmup must be a whole number of seconds"
    [[ "$WAIT_IDLE_MAX" =~ ^[0-9]+$ ]] || die "--wait-idle must be a whole number of seconds"
}

# Stop what we started: TERM first (nginx's master takes its worker with it), KILL what lingers.
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for _ in $(seq 1 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        # Keep the server logs next to the results when something went wrong.
        if ((rc != 0)) && [[ -n "${RESULTS:-}" && -d "$RESULTS" ]]; then
            cp "$WORK"/*.log "$RESULTS"/ 2>/dev/null || true
        fi
        rm -rf "$WORK"
    fi
    exit "$rc"
}

# --- tools -----------------------------------------------------------------------------------

ensure_tools() {
    command -v taskset >/dev/null || die "taskset (util-linux) is required"
    command -v curl >/dev/null || die "curl is required"
    command -v python3 >/dev/null || die "python3 is required"
    ((LOAD_CORE < $(nproc))) || die "need at least 2 cores (found $(nproc)): proxy and load are pinned apart"

    if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
        log "installing nginx (Debian package nginx-light)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light \
            || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx
    fi
    NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

    export PATH="$HOME/.cargo/bin:$PATH"
    if ! command -v oha >/dev/null; then
        # Another shell may already be installing it; a second cargo install would race it.
        if pgrep -f "cargo install oha" >/dev/null; then
            log "waiting for a running 'cargo install oha' to finish"
            local waited=0
            while pgrep -f "cargo install oha" >/dev/null; do
                sleep 5
                waited=$((waited + 5))
                ((waited < 1800)) || die "gave up waiting for 'cargo install oha' after 30 min"
            done
        fi
        if ! command -v oha >/dev/null; then
            log "installing oha (cargo install oha --locked)"
            cargo install oha --locked
        fi
    fi
    OHA="$(command -v oha)"
    # The JSON flag changed across oha versions (-j / --json in old ones).
    if "$OHA" --help | grep -q -- '--output-format'; then
        OHA_JSON=(--output-format json)
    elif "$OHA" --help | grep -q -- '--json'; then
        OHA_JSON=(--json)
    else
        die "this oha has no JSON output; install a newer one (cargo install oha --locked)"
    fi
    # -w lets requests in flight at the deadline finish instead of counting as errors.
    "$OHA" --help | grep -q -- '--wait-ongoing-requests-after-deadline' || die "oha too old: no -w"
}

build() {
    if ((BUILD)); then
        log "cargo build --release"
        (cd "$REPO" && cargo build --release)
    fi
    [[ -x "$BIN" ]] || die "$BIN not found (build it, or drop --no-build)"
}

# --- servers ---------------------------------------------------------------------------------

# A free loopback port for nginx (the Rust servers take port 0 and print what they got).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Wait until a server prints "... listening on http://ADDR" on stdout; echo ADDR.
wait_listening() {
    local name="$1" pid="$2" out="$3"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { show_log "${out%.log}.err.log"; die "$name exited during start-up"; }
        local addr
        addr="$(sed -n 's|.*listening on http://\([^ ]*\).*|\1|p' "$out" | head -n1)"
        if [[ -n "$addr" ]]; then
            echo "$addr"
            return
        fi
        sleep 0.1
    done
    die "$name did not report its address within 10 s (see $out)"
}

# Wait until a TCP port accepts connections and the process is still alive half a second
# later: nginx prints nothing when ready, and a Rust server may print its address before a
# worker fails to start.
wait_port() {
    local name="$1" pid="$2" port="$3" errlog="$4"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { show_log "$errlog"; die "$name exited during start-up (log: $errlog)"; }
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            sleep 0.5
            kill -0 "$pid" 2>/dev/null || { show_log "$errlog"; die "$name exited right after start-up"; }
            return
        fi
        sleep 0.1
    done
    die "$name did not open port $port within 10 s"
}

start_emulator() {
    # taskset execs the server, so $! is the server's own pid (what /proc readings need).
    RUST_LOG=warn taskset -c "$LOAD_CORE" "$BIN" emulate --listen 127.0.0.1:0 --workers 1 \
        >"$WORK/emulator.log" 2>"$WORK/emulator.err.log" &
    EMU_PID=$!
    PIDS+=("$EMU_PID")
    EMU_ADDR="$(wait_listening emulator "$EMU_PID" "$WORK/emulator.log")"
    wait_port emulator "$EMU_PID" "${EMU_ADDR##*:}" "$WORK/emulator.err.log"
    log "emulator  pid $EMU_PID on $EMU_ADDR (core $LOAD_CORE)"
}

start_gateway() {
    local name="${1:-gateway}" bin="${2:-$BIN}"
    local tenants="$WORK/tenants-$name"
    mkdir -p "$tenants"
    local sha
    sha="$(printf %s "$GATEWAY_KEY" | sha256sum | cut -d' ' -f1)"
    cat >"$tenants/bench.toml" <<EOF
# Generated by loadtests/run.sh: one key, one proxy per provider kind (all on the emulator).
[[api_keys]]
name = "bench"
sha256 = "$sha"

[providers.openai]
type = "openai"
base_url = "http://$EMU_ADDR/v1"
api_key_env = "BENCH_OPENAI_KEY"

[proxies.chat]
[[proxies.chat.routes]]
name = "mini"
provider = "openai"
model = "gpt-4o-mini"
EOF
    # The baseline is an older build that may predate the other provider kinds: it is only
    # measured on the OpenAI proxy, so it only gets that one.
    [[ "$name" == baseline ]] || cat >>"$tenants/bench.toml" <<EOF

[providers.azure]
type = "azure_openai"
endpoint = "http://$EMU_ADDR"
api_version = "2024-10-21"
api_key_env = "BENCH_AZURE_KEY"

[proxies.azure]
[[proxies.azure.routes]]
name = "mini"
provider = "azure"
model = "gpt-4o-mini"

[providers.gemini]
type = "gemini"
base_url = "http://$EMU_ADDR"
api_key_env = "BENCH_GEMINI_KEY"

[proxies.gemini]
[[proxies.gemini.routes]]
name = "flash"
provider = "gemini"
model = "gpt-4o-mini"
target_model = "gemini-2.5-flash"

[providers.bedrock]
type = "bedrock"
region = "us-east-1"
endpoint = "http://$EMU_ADDR"
access_key_id_env = "BENCH_AWS_KEY_ID"
secret_access_key_env = "BENCH_AWS_SECRET"

[proxies.bedrock]
[[proxies.bedrock.routes]]
name = "claude"
provider = "bedrock"
model = "gpt-4o-mini"
target_model = "anthropic.claude-3-5-sonnet-20240620-v1:0"
EOF
    # The usage ledger in the run's folder (the default is a file in the working directory);
    # "noledger" is the same build with the ledger off, to measure what the ledger costs.
    local ledger=()
    case "$name" in
        baseline) ;;
        noledger) ledger=(--ledger off) ;;
        *) ledger=(--ledger "sqlite://$WORK/$name-ledger.db") ;;
    esac
    BENCH_OPENAI_KEY="$EMULATOR_KEY" BENCH_AZURE_KEY="$AZURE_KEY" BENCH_GEMINI_KEY="$GEMINI_KEY" \
        BENCH_AWS_KEY_ID="AKIAEMULATORBEDROCK0" BENCH_AWS_SECRET="emulator/Bedrock/SecretAccessKey/000000000" \
        RUST_LOG=warn taskset -c "$PROXY_CORE" \
        "$bin" serve --tenants "$tenants" --listen 127.0.0.1:0 --workers 1 "${ledger[@]}" \
        >"$WORK/$name.log" 2>"$WORK/$name.err.log" &
    local pid=$! addr
    PIDS+=("$pid")
    addr="$(wait_listening "$name" "$pid" "$WORK/$name.log")"
    wait_port "$name" "$pid" "${addr##*:}" "$WORK/$name.err.log"
    log "$name   pid $pid on $addr (core $PROXY_CORE)"
    case "$name" in
        baseline) BL_PID=$pid BL_ADDR=$addr ;;
        noledger) NL_PID=$pid NL_ADDR=$addr ;;
        *) GW_PID=$pid GW_ADDR=$addr ;;
    esac
}

start_nginx() {
    local dir="$WORK/nginx" port
    mkdir -p "$dir"
    port="$(free_port)"
    # A blind reverse proxy tuned the way one would for this job: upstream keep-alive (so it
    # does not open a connection per request, as the gateway does not either), HTTP/1.1 to the
    # upstream, no buffering (so SSE chunks pass as they come), no access log (the gateway
    # writes none at RUST_LOG=warn either). Temp paths in our dir so nothing system-wide is used.
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $WORK/nginx.err.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 1000000;
    upstream emulator {
        server $EMU_ADDR;
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://emulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
    # nginx writes start-up errors to stderr and to -e's file: both go to one log, appended.
    # shellcheck disable=SC2094
    taskset -c "$PROXY_CORE" "$NGINX" -e "$WORK/nginx.err.log" -p "$dir" -c "$dir/nginx.conf" \
        >"$WORK/nginx.log" 2>>"$WORK/nginx.err.log" &
    NGX_PID=$!
    PIDS+=("$NGX_PID")
    wait_port nginx "$NGX_PID" "$port" "$WORK/nginx.err.log"
    NGX_ADDR="127.0.0.1:$port"
    log "nginx     pid $NGX_PID on $NGX_ADDR (core $PROXY_CORE, master + 1 worker)"
}

# --- measuring -------------------------------------------------------------------------------

url_of() {
    case "$1" in
        direct) echo "http://$EMU_ADDR/v1/chat/completions" ;;
        nginx) echo "http://$NGX_ADDR/v1/chat/completions" ;;
        gateway) echo "http://$GW_ADDR/bench/chat/v1/chat/completions" ;;
        baseline) echo "http://$BL_ADDR/bench/chat/v1/chat/completions" ;;
        noledger) echo "http://$NL_ADDR/bench/chat/v1/chat/completions" ;;
        *) echo "http://$GW_ADDR/bench/$1/v1/chat/completions" ;;
    esac
}

key_of() {
    # nginx passes the client's Authorization through, so its clients hold the upstream key.
    case "$1" in
        direct | nginx) echo "$EMULATOR_KEY" ;;
        *) echo "$GATEWAY_KEY" ;;
    esac
}

body_of() { [[ "$1" == stream ]] && echo "$BODY_STREAM" || echo "$BODY_PLAIN"; }

# Before measuring, prove each target answers correctly: a 200 with a completion, and for a
# stream the SSE terminator. A load test of a target that answers 401s would measure nothing.
smoke_check() {
    local target="$1" mode out code
    for mode in plain stream; do
        out="$WORK/smoke-$target-$mode.txt"
        code="$(curl -sS -o "$out" -w '%{http_code}' --max-time 10 -X POST "$(url_of "$target")" \
            -H "Authorization: Bearer $(key_of "$target")" -H 'Content-Type: application/json' \
            -d "$(body_of "$mode")")" || die "$target ($mode): request failed"
        [[ "$code" == 200 ]] || { cat "$out" >&2; die "$target ($mode): HTTP $code, expected 200"; }
        if [[ "$mode" == stream ]]; then
            grep -q '^data: \[DONE\]' "$out" || { cat "$out" >&2; die "$target (stream): no 'data: [DONE]'"; }
        else
            grep -q '"choices"' "$out" || { cat "$out" >&2; die "$target (plain): no 'choices' in body"; }
        fi
    done
}

# utime + stime (clock ticks) of a process plus its direct children (nginx: master + worker).
# Fields 14 and 15 of /proc/PID/stat; we split after the last ')' because field 2, the
# command name, may contain spaces.
cpu_ticks() {
    local pid="$1" total=0 p stat rest
    local pids=("$pid")
    # pgrep -P: the children (nginx's worker); none for the gateway, whose threads /proc/PID/stat
    # already sums.
    mapfile -t -O 1 pids < <(pgrep -P "$pid" || true)
    for p in "${pids[@]}"; do
        stat="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
        rest="${stat##*) }"
        read -ra f <<<"$rest"
        # rest starts at field 3 (state), so field 14 is index 11 and field 15 index 12.
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# Busy ticks of the whole machine (all CPUs, from /proc/stat): user+nice+system+irq+softirq+steal.
machine_busy_ticks() { awk '/^cpu /{ print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }

# Sets OWN_TICKS: CPU ticks of everything the benchmark runs, i.e. the three servers plus the
# children this shell has reaped (oha under timeout, and small helpers). The latter come from
# the `times` builtin, which must run in this very shell: in a $(...) subshell it would report
# the subshell's own, empty, children. Hence a global instead of printing the result.
read_own_ticks() {
    times >"$WORK/times.txt"
    local reaped
    reaped="$(awk -v hz="$CLK_TCK" 'NR == 2 {
        t = 0
        for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
        printf "%d\n", t * hz
    }' "$WORK/times.txt")"
    OWN_TICKS=$(( $(cpu_ticks "$EMU_PID") + $(cpu_ticks "$GW_PID") + $(cpu_ticks "$NGX_PID") + reaped ))
    if [[ -n "$BL_PID" ]]; then OWN_TICKS=$(( OWN_TICKS + $(cpu_ticks "$BL_PID") )); fi
    if [[ -n "$NL_PID" ]]; then OWN_TICKS=$(( OWN_TICKS + $(cpu_ticks "$NL_PID") )); fi
}

proxy_pid_of() {
    case "$1" in
        nginx) echo "$NGX_PID" ;;
        gateway) echo "$GW_PID" ;;
        baseline) echo "$BL_PID" ;;
        noledger) echo "$NL_PID" ;;
        direct) echo "" ;;
        *) echo "$GW_PID" ;;
    esac
}

# One oha run, bounded twice: -z stops new requests, -t bounds each request, and `timeout`
# kills oha itself should it ever hang.
oha_run() {
    local target="$1" mode="$2" conc="$3" secs="$4" out="$5"
    timeout --signal=KILL $((secs + 30)) \
        taskset -c "$LOAD_CORE" "$OHA" --no-tui -z "${secs}s" -w -t 10s -c "$conc" \
        --worker-threads 1 -m POST \
        -H "Authorization: Bearer $(key_of "$target")" -H 'Content-Type: application/json' \
        -d "$(body_of "$mode")" "${OHA_JSON[@]}" "$(url_of "$target")" >"$out"
}

# Wait (at most WAIT_IDLE_MAX s) until the rest of the machine is quiet: a compile running
# beside the benchmark on a 2-core box halves a proxy's throughput. Quiet means the machine
# was busy less than NOISE_PCT% over one second, with our own idle servers included.
wait_idle() {
    local waited=0 b0 b1 pct
    while ((waited < WAIT_IDLE_MAX)); do
        b0="$(machine_busy_ticks)"; sleep 1; b1="$(machine_busy_ticks)"
        pct=$(( (b1 - b0) * 100 / (NPROC * CLK_TCK) ))
        ((pct < NOISE_PCT)) && return 0
        ((waited == 0)) && log "  machine busy (${pct}% of all cores, not us): waiting up to ${WAIT_IDLE_MAX}s"
        waited=$((waited + 1))
    done
    log "  machine still busy after ${WAIT_IDLE_MAX}s; measuring anyway (the report flags it)"
}

# One scenario: warm up, then measure with CPU readings around the run. A run during which
# other processes took more than NOISE_PCT% of the machine is repeated (up to MAX_ATTEMPTS in
# all); the last attempt is kept either way, and the report shows its noise.
run_scenario() {
    local target="$1" mode="$2" conc="$3"
    local name="$target-$mode-c$conc"
    local json="$RESULTS/$name.json"
    local pid cpu other before after busy0 own0 busy1 own1 attempt
    pid="$(proxy_pid_of "$target")"

    for ((attempt = 1; attempt <= MAX_ATTEMPTS; attempt++)); do
        wait_idle
        if ((WARMUP > 0)); then
            oha_run "$target" "$mode" "$conc" "$WARMUP" "$WORK/warmup.json"
        fi
        # The proxy's own ticks (its cost per request), and the whole machine's minus everything
        # the benchmark runs, i.e. what something else took meanwhile.
        cpu="-"
        [[ -n "$pid" ]] && before="$(cpu_ticks "$pid")"
        read_own_ticks; own0=$OWN_TICKS; busy0="$(machine_busy_ticks)"
        oha_run "$target" "$mode" "$conc" "$DURATION" "$json"
        busy1="$(machine_busy_ticks)"; read_own_ticks; own1=$OWN_TICKS
        if [[ -n "$pid" ]]; then
            after="$(cpu_ticks "$pid")"
            cpu=$((after - before))
        fi
        other=$(( (busy1 - busy0) - (own1 - own0) ))
        ((other >= 0)) || other=0

        # Every request must have been a 200: a fast error is not a fast proxy.
        python3 "$HERE/report.py" check "$json" || die "$name: not every request succeeded (raw: $json)"
        local pct=$(( other * 100 / (DURATION * NPROC * CLK_TCK) ))
        if ((pct < NOISE_PCT)); then
            break
        fi
        log "  $name: other processes took ${pct}% of the machine meanwhile (attempt $attempt/$MAX_ATTEMPTS)"
    done
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$mode" "$conc" "$name.json" "$cpu" "$other" >>"$RESULTS/scenarios.tsv"
    log "  $name done ($(python3 "$HERE/report.py" brief "$json"))"
}

# Per-thread CPU ticks of a process, one "tid<TAB>name<TAB>ticks" line per thread.
thread_ticks() {
    local t stat rest
    for t in /proc/"$1"/task/*; do
        stat="$(cat "$t/stat" 2>/dev/null)" || continue
        rest="${stat##*) }"
        read -ra f <<<"$rest"
        printf '%s\t%s\t%s\n' "${t##*/}" "$(tr ' ' '_' <"$t/comm")" "$((f[11] + f[12]))"
    done
}

# Where the gateway's CPU goes: a flat perf profile (self time; Rust release builds keep no
# frame pointers, so call graphs would be guesswork) taken during an extra run that is not in
# the table, since sampling costs the profiled process a little. perf itself sits on the load
# core so that it does not compete with the gateway.
profile_gateway() {
    if ! command -v perf >/dev/null; then
        log "perf not found (Debian package linux-perf): skipping --perf"
        return 0
    fi
    local data="$WORK/perf.data"
    log "profiling the gateway with perf (non-stream c64, ${DURATION}s; not part of the table)"
    taskset -c "$LOAD_CORE" timeout --signal=INT $((DURATION + 30)) \
        perf record -F 999 -p "$GW_PID" -o "$data" -- sleep "$DURATION" >/dev/null 2>"$WORK/perf.log" &
    local perf_pid=$!
    PIDS+=("$perf_pid")
    thread_ticks "$GW_PID" >"$WORK/threads0.txt"
    oha_run gateway plain 64 "$DURATION" "$WORK/perf-oha.json"
    thread_ticks "$GW_PID" >"$WORK/threads1.txt"
    wait "$perf_pid" || { cat "$WORK/perf.log" >&2; log "perf record failed: no profile"; return 0; }
    perf report -i "$data" --stdio --no-children --sort dso,symbol 2>/dev/null \
        | grep -v '^#' | sed -e '/^$/d' -e 's/[[:space:]-]*$//' >"$RESULTS/perf-gateway-symbols.txt"
    {
        echo "Gateway CPU profile (perf, self time, non-stream c64; full list: perf-gateway-symbols.txt)"
        python3 "$HERE/report.py" perf "$RESULTS/perf-gateway-symbols.txt"
        echo "CPU by gateway thread during that run (ms of CPU per second of load):"
        join -t $'\t' <(sort "$WORK/threads0.txt") <(sort "$WORK/threads1.txt") \
            | awk -F'\t' -v hz="$CLK_TCK" -v s="$DURATION" -v main="$GW_PID" '{
                d = $5 - $3
                if (d > 0) printf "  %6.0f  %s (tid %s%s)\n", d * 1000 / hz / s, $2, $1, ($1 == main ? ", main thread" : "")
            }' | sort -rn
    } | tee "$RESULTS/perf-gateway.txt" >&2
}

git_version() {
    local rev
    rev="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo uncommitted)"
    [[ -z "$(git -C "$REPO" status --porcelain 2>/dev/null)" ]] || rev="$rev+local-changes"
    echo "$rev"
}

vm_kb() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status"; }

main() {
    parse_args "$@"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    ensure_tools
    build

    RESULTS="$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)"
    mkdir -p "$RESULTS"
    WORK="$(mktemp -d -t switchyard-loadtest.XXXXXX)"
    printf 'target\tmode\tconcurrency\tfile\tcpu_ticks\tother_ticks\n' >"$RESULTS/scenarios.tsv"

    start_emulator
    start_gateway
    start_gateway noledger
    start_nginx
    if [[ -n "$BASELINE_BIN" ]]; then
        start_gateway baseline "$BASELINE_BIN"
        TARGETS+=(baseline)
    fi
    local target
    for target in "${TARGETS[@]}" "${PROVIDER_TARGETS[@]}"; do smoke_check "$target"; done
    local gw_rss_start
    gw_rss_start="$(vm_kb "$GW_PID" VmRSS)"

    local n=$(( ${#SCENARIOS[@]} * ${#TARGETS[@]} + ${#PROVIDER_SCENARIOS[@]} * ${#PROVIDER_TARGETS[@]} ))
    log "running $n scenarios x (${WARMUP}s warm-up + ${DURATION}s measured): at least $(( n * (DURATION + WARMUP + 2) )) s"
    local sc mode conc
    for sc in "${SCENARIOS[@]}"; do
        mode="${sc%%:*}"
        conc="${sc##*:}"
        for target in "${TARGETS[@]}"; do
            run_scenario "$target" "$mode" "$conc"
        done
        if [[ " ${PROVIDER_SCENARIOS[*]} " == *" $sc "* ]]; then
            for target in "${PROVIDER_TARGETS[@]}"; do
                run_scenario "$target" "$mode" "$conc"
            done
        fi
    done

    # Streams paced as a model paces them (20 chunks 5 ms apart), one at a time and 16 at once:
    # the time to the first event shows any socket that holds small writes back (Nagle's
    # algorithm waiting on a delayed ACK), which the back-to-back streams above cannot, and c1
    # shows the latency each hop adds on an otherwise idle core.
    local ttft_args=()
    for target in "${TARGETS[@]}"; do
        ttft_args+=(--target "$target=$(url_of "$target" | sed 's#/chat/completions$##')" --key "$(key_of "$target")")
    done
    : >"$RESULTS/ttft.txt"
    local conc
    for conc in 1 16; do
        log "stream time to first event at c$conc, paced upstream (loadtests/ttft.py, ${WARMUP}s + ${DURATION}s per target)"
        timeout $(((WARMUP + DURATION) * ${#TARGETS[@]} + 60)) taskset -c "$LOAD_CORE" python3 "$HERE/ttft.py" \
            --concurrency "$conc" --warmup "$WARMUP" --duration "$DURATION" --chunk-ms 5 --tokens 20 \
            "${ttft_args[@]}" | tee -a "$RESULTS/ttft.txt"
    done

    # The gateway must still be alive and well after the load.
    kill -0 "$GW_PID" 2>/dev/null || die "gateway died during the run"
    {
        echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "duration_s=$DURATION"
        echo "warmup_s=$WARMUP"
        echo "clk_tck=$(getconf CLK_TCK)"
        echo "nproc=$(nproc)"
        echo "cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
        echo "gateway_rss_start_kb=$gw_rss_start"
        echo "gateway_vmhwm_kb=$(vm_kb "$GW_PID" VmHWM)"
        echo "oha=$("$OHA" --version)"
        echo "nginx=$("$NGINX" -v 2>&1 | sed 's/.*: //')"
        echo "kernel=$(uname -r)"
        echo "git=$(git_version)"
        # The tree may be uncommitted: the binary's hash and build time identify what ran.
        echo "binary=sha256:$(sha256sum "$BIN" | cut -c1-12), built $(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ)"
        if [[ -n "$BASELINE_BIN" ]]; then
            echo "baseline=$BASELINE_BIN sha256:$(sha256sum "$BASELINE_BIN" | cut -c1-12)"
        fi
    } >"$RESULTS/meta.txt"

    # report.py exits 3 when the bar is missed: a result, not a failure, unless --strict.
    local rc=0
    python3 "$HERE/report.py" report "$RESULTS" | tee "$RESULTS/table.txt" || rc=$?
    if ((PERF)); then
        profile_gateway || log "profiling failed; the table above stands"
    fi
    log "raw results: $RESULTS"
    if ((rc == 3)); then
        ((STRICT)) && exit 1
        return 0
    fi
    return "$rc"
}

main "$@"
