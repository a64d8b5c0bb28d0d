#!/usr/bin/env python3
"""Time to first event of concurrent streams, direct to the emulator and through the gateway.

Each of C workers sends streaming chat requests one after another over its own keep-alive
loopback connection, and records when the first event arrives (TTFT) and when the stream ends,
until the duration is up. Streams that start in the warm-up (2 s by default) are not counted, as
in the other scenarios: C connections opened at once, and a proxy's first connections upstream,
are a start-up cost that would otherwise be the whole p99 (16 of about 900 streams at c16). That
first round's slowest TTFT is printed in a column of its own, so it is not hidden either. The emulator paces its chunks (`[emulator:chunk_ms=N]` in the prompt), as
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


class Conn:
    """One keep-alive connection. Reusing it is what exposes delayed-ACK stalls: a fresh
    connection starts in quick-ACK mode and hides them."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def stream(self, path, key, body):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        started = time.perf_counter()
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\nauthorization: Bearer {key}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        status = await self.reader.readline()
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        first = None
        seen = b""
        if "content-length" in headers:
            seen = await self.reader.readexactly(int(headers["content-length"]))
            first = time.perf_counter()
        else:
            while True:  # chunked
                size = int((await self.reader.readline()).strip() or b"0", 16)
                if size == 0:
                    await self.reader.readline()
                    break
                data = await self.reader.readexactly(size + 2)
                if first is None:
                    first = time.perf_counter()
                seen += data[:-2]
        done = time.perf_counter()
        if headers.get("connection") == "close":
            self.writer.close()
            self.writer = None
        if not status.startswith(b"HTTP/1.1 200") or b"data: [DONE]" not in seen:
            raise RuntimeError(f"bad stream: {status!r} {seen[:300]!r}")
        return first - started, done - started


async def run(url, key, model, conc, warmup, duration, chunk_ms, tokens, first_byte_ms):
    u = urllib.parse.urlsplit(url)
    path = u.path.rstrip("/") + "/chat/completions"
    prompt = f"[emulator:first_byte_ms={first_byte_ms},chunk_ms={chunk_ms},tokens={tokens}] Hello"
    body = json.dumps({"model": model, "stream": True,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    ttft, total, first_round = [], [], []
    start = time.perf_counter()
    counted, deadline = start + warmup, start + warmup + duration

    async def worker():
        conn = Conn(u.hostname, u.port)
        f, _ = await conn.stream(path, key, body)
        first_round.append(f)
        while (now := time.perf_counter()) < deadline:
            f, t = await conn.stream(path, key, body)
            if now >= counted:
                ttft.append(f)
                total.append(t)

    await asyncio.gather(*(worker() for _ in range(conc)))
    return ttft, total, max(first_round)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", required=True, help="NAME=BASE_URL (…/v1)")
    ap.add_argument("--key", action="append", help="API key per target, in order (default: the emulator's)")
    ap.add_argument("--model", default="gpt-4o-mini")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=10, help="seconds counted per target")
    ap.add_argument("--warmup", type=float, default=2, help="seconds of streams not counted, first")
    ap.add_argument("--chunk-ms", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--first-byte-ms", type=int, default=5,
                    help="upstream wait between its headers and its first event")
    a = ap.parse_args()
    keys = a.key or []
    print(f"streams at concurrency {a.concurrency}: headers, {a.first_byte_ms} ms, then {a.tokens} chunks "
          f"{a.chunk_ms} ms apart; {a.warmup:g} s warm-up, then {a.duration:g} s counted per target; "
          f"'added' is over the first target")
    print(f"{'target':<10} {'streams':>8} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'total p50 ms':>13} "
          f"{'total p99 ms':>13} {'added TTFT p50':>15} {'added TTFT p99':>15} {'added total p50':>16} "
          f"{'first round max':>16}")
    base = None
    for i, t in enumerate(a.target):
        name, url = t.split("=", 1)
        if not urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("loopback targets only")
        key = keys[i] if i < len(keys) else "sk-emulator-openai"
        ttft, total, cold = asyncio.run(run(url, key, a.model, a.concurrency, a.warmup, a.duration,
                                            a.chunk_ms, a.tokens, a.first_byte_ms))
        row = [percentile(ttft, 50), percentile(ttft, 99), percentile(total, 50), percentile(total, 99)]
        base = base or row
        added = "" if row is base else (f" {(row[0] - base[0]) * 1e3:>+15.2f} {(row[1] - base[1]) * 1e3:>+15.2f}"
                                        f" {(row[2] - base[2]) * 1e3:>+16.2f}")
        print(f"{name:<10} {len(ttft):>8} {row[0]*1e3:>12.2f} {row[1]*1e3:>12.2f} {row[2]*1e3:>13.2f} "
              f"{row[3]*1e3:>13.2f}{added or ' ' * 48} {cold*1e3:>16.2f}", flush=True)


if __name__ == "__main__":
    main()
