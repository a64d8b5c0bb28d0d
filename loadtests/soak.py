#!/usr/bin/env python3
"""Soak: the gateway under a steady, mixed load for a set time, with its resources sampled.

Starts `switchyard emulate` and `switchyard serve` (the release build unless --bin says
otherwise) on loopback, then sends requests at a fixed rate, each drawn from a mix:

    plain        chat, non-streaming                          -> 200
    stream       chat, streaming                              -> 200 ending in [DONE]
    responses    Responses, streaming                         -> 200 ending in response.completed
    hangup       stream paced 50 ms/chunk, client closes after the first event
    slow-hangup  non-streaming with 2 s upstream latency, client closes after 100 ms
    fault-503    upstream 503 every attempt                   -> 503 (after the retries)
    fault-429    upstream 429 with retry-after 0              -> 429
    fault-drop   stream the upstream drops after 3 chunks     -> 200 ending in an error event
    bad-json     a body that is not JSON                      -> 400
    gemini       chat, streaming, translated to Gemini        -> 200 ending in [DONE]
    bedrock      Responses, non-streaming, translated to Bedrock (SigV4) and stored
                                                              -> 200 response object

Every request's outcome is checked against its kind; anything else counts as an error. Every
`--sample` seconds the gateway's RSS, open file descriptors and established connections to
the emulator are read from /proc. At the end it prints the curve and a verdict: no unexpected
outcome, RSS at the end within 10% of its value after warm-up, and no more descriptors open
at the end than after warm-up. Loopback only; the load loop is bounded by --duration.

    loadtests/soak.py --duration 3600            # the record
    loadtests/soak.py --duration 120 --rate 100  # smoke
"""
import argparse
import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
EMULATOR_KEY = "sk-emulator-openai"
GEMINI_KEY = "AIzaSy-switchyard-emulator-gemini-key0"
AWS_KEY_ID = "AKIAEMULATORBEDROCK0"
AWS_SECRET = "emulator/Bedrock/SecretAccessKey/000000000"
KEY = "sk-soak"

MIX = [  # (kind, weight)
    ("plain", 40), ("stream", 20), ("responses", 10), ("hangup", 8), ("slow-hangup", 2),
    ("fault-503", 5), ("fault-429", 5), ("fault-drop", 5), ("bad-json", 5),
    ("gemini", 5), ("bedrock", 5),
]


def spawn(args, env, prefix):
    proc = subprocess.Popen(args, env={**os.environ, **env, "RUST_LOG": "warn"},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return proc, line[len(prefix):].strip().removeprefix("http://")
        if not line and proc.poll() is not None:
            break
    proc.kill()
    sys.exit(f"{args[1]} did not start")


def request_for(kind):
    chat = lambda text, stream=False: ("/soak/chat/v1/chat/completions", json.dumps(
        {"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": text}]}))
    return {
        "plain": lambda: chat("Hello"),
        "stream": lambda: chat("Hello", True),
        "responses": lambda: ("/soak/chat/v1/responses",
                              json.dumps({"model": "gpt-4o-mini", "input": "Hello", "stream": True})),
        "hangup": lambda: chat("[emulator:chunk_ms=50,tokens=40] Hello", True),
        "slow-hangup": lambda: chat("[emulator:latency_ms=2000] Hello"),
        "fault-503": lambda: chat("[emulator:status=503] Hello"),
        "fault-429": lambda: chat("[emulator:status=429,retry_after=0] Hello"),
        "fault-drop": lambda: chat("[emulator:drop=3] Hello", True),
        "bad-json": lambda: ("/soak/chat/v1/chat/completions", "{not json"),
        "gemini": lambda: ("/soak/gemini/v1/chat/completions", json.dumps(
            {"model": "gemini-2.5-flash", "stream": True, "messages": [{"role": "user", "content": "Hello"}]})),
        "bedrock": lambda: ("/soak/claude/v1/responses",
                            json.dumps({"model": "claude", "input": "Hello"})),
    }[kind]()


def expected(kind, status, body):
    text = body.decode(errors="replace")
    return {
        "plain": status == 200 and '"chat.completion"' in text,
        "stream": status == 200 and text.rstrip().endswith("data: [DONE]"),
        "responses": status == 200 and "event: response.completed" in text,
        "fault-503": status == 503,
        "fault-429": status == 429,
        "fault-drop": status == 200 and "upstream_stream_interrupted" in text and "[DONE]" not in text,
        "bad-json": status == 400 and "invalid_json" in text,
        "gemini": status == 200 and text.rstrip().endswith("data: [DONE]"),
        "bedrock": status == 200 and '"object":"response"' in text and '"status":"completed"' in text,
    }[kind]


async def one(addr, kind):
    host, port = addr.rsplit(":", 1)
    path, body = request_for(kind)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write((f"POST {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {KEY}\r\n"
                      f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
                      f"connection: close\r\n\r\n{body}").encode())
        await writer.drain()
        if kind == "slow-hangup":
            await asyncio.sleep(0.1)
            return True
        if kind == "hangup":
            got = b""
            while b"\ndata:" not in got and b"data:" not in got[:200]:
                chunk = await asyncio.wait_for(reader.read(4096), 10)
                if not chunk:
                    return False
                got += chunk
            return got.startswith(b"HTTP/1.1 200")
        raw = await asyncio.wait_for(reader.read(-1), 30)
        head, _, rest = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
        if b"transfer-encoding: chunked" in head.lower():
            out, data = b"", rest
            while data:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line or b"0", 16)
                if size == 0:
                    break
                out, data = out + data[:size], data[size + 2:]
            rest = out
        return expected(kind, status, rest)
    finally:
        writer.close()


def sample(pid, emu_port):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    upstream = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "01" and int(parts[2].rsplit(":", 1)[1], 16) == emu_port and parts[9] in inodes:
                upstream += 1
    return rss, fds, upstream


async def soak(addr, pid, emu_port, duration, rate, every, warmup):
    kinds = [k for k, w in MIX for _ in range(w)]
    counts = {k: [0, 0] for k, _ in MIX}  # kind -> [sent, unexpected]
    samples, tasks = [], set()
    start = time.monotonic()
    next_sample = start
    rng = random.Random(7)

    async def run(kind):
        try:
            ok = await one(addr, kind)
        except Exception:
            ok = False
        counts[kind][0] += 1
        if not ok:
            counts[kind][1] += 1

    n = 0
    while (now := time.monotonic()) < start + duration:
        if now >= next_sample:
            samples.append((now - start, *sample(pid, emu_port)))
            next_sample += every
        task = asyncio.create_task(run(rng.choice(kinds)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
    if tasks:
        await asyncio.wait(tasks, timeout=40)
    await asyncio.sleep(6)  # idle keep-alive upstream connections close after their timeout
    samples.append((time.monotonic() - start, *sample(pid, emu_port)))
    return counts, samples


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=120, help="seconds of load (3600 for the record)")
    ap.add_argument("--rate", type=float, default=100, help="requests started per second")
    ap.add_argument("--sample", type=float, default=10, help="seconds between resource samples")
    ap.add_argument("--warmup", type=float, default=None, help="seconds after which RSS is the reference (default: 20%% of the duration)")
    ap.add_argument("--bin", default=os.path.join(REPO, "target", "release", "switchyard"))
    a = ap.parse_args()
    warmup = a.warmup if a.warmup is not None else a.duration * 0.2

    emu, emu_addr = spawn([a.bin, "emulate", "--listen", "127.0.0.1:0", "--workers", "1"], {},
                          "emulator listening on ")
    tenants = tempfile.mkdtemp(prefix="switchyard-soak-")
    with open(os.path.join(tenants, "soak.toml"), "w") as f:
        f.write(f"""[[api_keys]]
name = "soak"
sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"
[providers.openai]
type = "openai"
base_url = "http://{emu_addr}/v1"
api_key_env = "SOAK_OPENAI_KEY"
max_retries = 1
circuit_failures = 0
[proxies.chat]
[[proxies.chat.routes]]
name = "mini"
provider = "openai"
model = "gpt-4o-mini"
[providers.gemini]
type = "gemini"
base_url = "http://{emu_addr}"
api_key_env = "SOAK_GEMINI_KEY"
max_retries = 1
[proxies.gemini]
[[proxies.gemini.routes]]
name = "flash"
provider = "gemini"
model = "gemini-2.5-flash"
[providers.bedrock]
type = "bedrock"
region = "us-east-1"
endpoint = "http://{emu_addr}"
access_key_id_env = "SOAK_AWS_KEY_ID"
secret_access_key_env = "SOAK_AWS_SECRET"
max_retries = 1
[proxies.claude]
[[proxies.claude.routes]]
name = "claude"
provider = "bedrock"
model = "claude"
target_model = "anthropic.claude-3-5-sonnet-20240620-v1:0"
""")
    # A small response store, so it fills up during the warm-up and the soak shows it stays
    # within its bound (Bedrock's Responses answers are stored).
    gw, gw_addr = spawn([a.bin, "serve", "--tenants", tenants, "--listen", "127.0.0.1:0", "--workers", "1",
                         "--response-store-mib", "2"],
                        {"SOAK_OPENAI_KEY": EMULATOR_KEY, "SOAK_GEMINI_KEY": GEMINI_KEY,
                         "SOAK_AWS_KEY_ID": AWS_KEY_ID, "SOAK_AWS_SECRET": AWS_SECRET},
                        "switchyard listening on ")
    try:
        counts, samples = asyncio.run(soak(gw_addr, gw.pid, int(emu_addr.rsplit(":", 1)[1]),
                                           a.duration, a.rate, a.sample, warmup))
    finally:
        gw.kill()
        emu.kill()

    print(f"soak: {a.duration:.0f} s at {a.rate:.0f} requests/s, gateway {gw_addr}, emulator {emu_addr}")
    print(f"{'kind':<12} {'sent':>8} {'unexpected':>11}")
    for kind, (sent, bad) in counts.items():
        print(f"{kind:<12} {sent:>8} {bad:>11}")
    print(f"\n{'t s':>7} {'RSS MiB':>8} {'fds':>5} {'upstream conns':>15}")
    for t, rss, fds, up in samples:
        print(f"{t:>7.0f} {rss / 1024:>8.1f} {fds:>5} {up:>15}")
    ref = next((s for s in samples if s[0] >= warmup), samples[0])
    end = samples[-1]
    unexpected = sum(b for _, b in counts.values())
    rss_change = end[1] / ref[1] - 1
    print(f"\nRSS after warm-up ({ref[0]:.0f} s): {ref[1] / 1024:.1f} MiB; at the end: {end[1] / 1024:.1f} MiB ({rss_change:+.1%})")
    # Descriptors: the first requests open a few for good (the runtime's, the resolver's), so
    # the reference is after warm-up too; at the end no request is in flight.
    fds_ok = end[2] <= ref[2]
    print(f"fds: {ref[2]} after warm-up, {end[2]} at the end; upstream connections at the end: {end[3]}")
    ok = unexpected == 0 and abs(rss_change) <= 0.10 and fds_ok
    print(f"{'PASS' if ok else 'FAIL'}: {unexpected} unexpected outcomes; RSS within 10% of warm-up: "
          f"{abs(rss_change) <= 0.10}; descriptors no more than after warm-up: {fds_ok}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
