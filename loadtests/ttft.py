#!/usr/bin/env python3
"""Time to first event of concurrent streams, direct to the emulator and through the gateway.

Each of C workers opens a streaming chat request over a fresh loopback connection, records
when the first `data:` event arrives (TTFT) and when the stream ends, and starts again until
the duration is up. The emulator paces its chunks (`[emulator:chunk_ms=N]` in the prompt), as
a real model does, so a socket that holds small writes back (Nagle's algorithm waiting for a
delayed ACK) shows up as a TTFT tail. Standard library only; loopback targets only.

    loadtests/ttft.py --target direct=http://127.0.0.1:9001/v1 \
        --target gateway=http://127.0.0.1:8080/acme/assistant/v1 --key sk-acme-demo
"""
import argparse
import asyncio
import json
import time
import urllib.parse


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


async def one_stream(host, port, path, key, body):
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    first = None
    seen = b""
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        seen += chunk
        if first is None and b"\ndata:" in seen:
            first = time.perf_counter()
        if b"data: [DONE]" in seen:
            break
    done = time.perf_counter()
    writer.close()
    if not seen.startswith(b"HTTP/1.1 200") or b"data: [DONE]" not in seen or first is None:
        raise RuntimeError(f"bad stream: {seen[:300]!r}")
    return first - started, done - started


async def run(url, key, model, conc, duration, chunk_ms, tokens):
    u = urllib.parse.urlsplit(url)
    path = u.path.rstrip("/") + "/chat/completions"
    prompt = f"[emulator:chunk_ms={chunk_ms},tokens={tokens}] Hello"
    body = json.dumps({"model": model, "stream": True,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    ttft, total = [], []
    deadline = time.perf_counter() + duration

    async def worker():
        while time.perf_counter() < deadline:
            f, t = await one_stream(u.hostname, u.port, path, key, body)
            ttft.append(f)
            total.append(t)

    await asyncio.gather(*(worker() for _ in range(conc)))
    return ttft, total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", required=True, help="NAME=BASE_URL (…/v1)")
    ap.add_argument("--key", action="append", help="API key per target, in order (default: the emulator's)")
    ap.add_argument("--model", default="gpt-4o-mini")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--chunk-ms", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=20)
    a = ap.parse_args()
    keys = a.key or []
    print(f"streams at concurrency {a.concurrency}, {a.tokens} chunks {a.chunk_ms} ms apart, {a.duration:.0f} s each")
    print(f"{'target':<10} {'streams':>8} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'total p50 ms':>13} {'total p99 ms':>13}")
    for i, t in enumerate(a.target):
        name, url = t.split("=", 1)
        if not urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("loopback targets only")
        key = keys[i] if i < len(keys) else "sk-emulator-openai"
        ttft, total = asyncio.run(run(url, key, a.model, a.concurrency, a.duration, a.chunk_ms, a.tokens))
        print(f"{name:<10} {len(ttft):>8} {percentile(ttft, 50)*1e3:>12.2f} {percentile(ttft, 99)*1e3:>12.2f} "
              f"{percentile(total, 50)*1e3:>13.2f} {percentile(total, 99)*1e3:>13.2f}")


if __name__ == "__main__":
    main()
