#!/usr/bin/env python3
"""Time to first event of concurrent streams, direct to the emulator and through the gateway.

Each of C workers sends streaming chat requests one after another over its own keep-alive
loopback connection, and records when the first event arrives (TTFT) and when the stream ends.
Each target is warmed up first (2 s by default; not counted): C connections opened at once, and a
proxy's first connections upstream, are a start-up cost that would otherwise be the whole p99 (16
of about 900 streams at c16). That first round's slowest TTFT is printed in a column of its own,
so it is not hidden either. Then the targets take turns in short slices (1 s, ABBA order, each
slice's first streams spread over a stream's length as in a steady state), so that the machine's
drifts in speed land on every target alike. The emulator paces its chunks
(`[emulator:chunk_ms=N]` in the prompt), as a real model does, so a socket that holds small
writes back (Nagle's algorithm waiting for a delayed ACK) shows up as a TTFT tail. Standard
library only; loopback targets only.

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
        # A server may close a connection left idle while other targets had their turn (its
        # keep-alive timeout): open a new one, as a client's pool would, before the clock starts.
        if self.writer is not None and self.reader.at_eof():
            self.writer.close()
            self.writer = None
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\nauthorization: Bearer {key}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode() + body
        for fresh in (False, True):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            started = time.perf_counter()
            self.writer.write(head)
            await self.writer.drain()
            status = await self.reader.readline()
            if status or fresh:
                break
            # The server closed the kept connection as the request went out (its keep-alive
            # timeout raced the request): as a client's pool does, send it again on a new
            # connection, the clock started afresh.
            self.writer.close()
            self.writer = None
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


class Target:
    """One target's connections (kept open across slices) and what its streams measured."""

    def __init__(self, name, url, key, model, conc, chunk_ms, tokens, first_byte_ms):
        u = urllib.parse.urlsplit(url)
        if u.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("loopback targets only")
        self.name, self.key = name, key
        self.path = u.path.rstrip("/") + "/chat/completions"
        prompt = f"[emulator:first_byte_ms={first_byte_ms},chunk_ms={chunk_ms},tokens={tokens}] Hello"
        self.body = json.dumps({"model": model, "stream": True,
                                "messages": [{"role": "user", "content": prompt}]}).encode()
        self.conns = [Conn(u.hostname, u.port) for _ in range(conc)]
        # How long a stream lasts upstream: each counted slice spreads its connections' first
        # streams over it, as they are spread in a steady state (started together, C streams
        # would arrive at once in every slice and make a tail of their own). The warm-up starts
        # them together: that is the first round, a burst of new connections.
        self.period = (first_byte_ms + tokens * chunk_ms) / 1e3
        self.ttft, self.total, self.first_round = [], [], []

    async def slice(self, secs, counted):
        """Every connection streams one request after another for `secs` seconds (the last
        ones finish after). Recorded when `counted`; in the warm-up, only each connection's
        first stream is kept, as the first round."""
        deadline = time.perf_counter() + secs

        async def worker(i, conn):
            if counted:
                await asyncio.sleep(i * self.period / len(self.conns))
            first = True
            while time.perf_counter() < deadline:
                f, t = await conn.stream(self.path, self.key, self.body)
                if counted:
                    self.ttft.append(f)
                    self.total.append(t)
                elif first:
                    self.first_round.append(f)
                first = False

        await asyncio.gather(*(worker(i, c) for i, c in enumerate(self.conns)))


async def run(targets, warmup, duration, slice_secs):
    """Warms each target up in turn, then gives them `slice_secs` each in alternating order
    (ABBA...) until each has had `duration` seconds: a drift of the machine's speed lands on
    every target alike, where back-to-back runs put it on one."""
    for t in targets:
        await t.slice(warmup, counted=False)
    rounds = max(1, round(duration / slice_secs))
    for r in range(rounds):
        for t in (targets if r % 2 == 0 else targets[::-1]):
            await t.slice(duration / rounds, counted=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", required=True, help="NAME=BASE_URL (…/v1)")
    ap.add_argument("--key", action="append", help="API key per target, in order (default: the emulator's)")
    ap.add_argument("--model", default="gpt-4o-mini")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=10, help="seconds counted per target")
    ap.add_argument("--slice", type=float, default=1,
                    help="targets take turns in slices of this many seconds (ABBA order)")
    ap.add_argument("--warmup", type=float, default=2, help="seconds of streams not counted, first")
    ap.add_argument("--chunk-ms", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--first-byte-ms", type=int, default=5,
                    help="upstream wait between its headers and its first event")
    a = ap.parse_args()
    keys = a.key or []
    print(f"streams at concurrency {a.concurrency}: headers, {a.first_byte_ms} ms, then {a.tokens} chunks "
          f"{a.chunk_ms} ms apart; {a.warmup:g} s warm-up per target, then {a.duration:g} s counted per "
          f"target in turns of {a.slice:g} s; 'added' is over the first target")
    print(f"{'target':<10} {'streams':>8} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'total p50 ms':>13} "
          f"{'total p99 ms':>13} {'added TTFT p50':>15} {'added TTFT p99':>15} {'added total p50':>16} "
          f"{'first round max':>16}")
    targets = []
    for i, t in enumerate(a.target):
        name, url = t.split("=", 1)
        key = keys[i] if i < len(keys) else "sk-emulator-openai"
        targets.append(Target(name, url, key, a.model, a.concurrency, a.chunk_ms, a.tokens,
                              a.first_byte_ms))
    asyncio.run(run(targets, a.warmup, a.duration, a.slice))
    base = None
    for t in targets:
        row = [percentile(t.ttft, 50), percentile(t.ttft, 99), percentile(t.total, 50),
               percentile(t.total, 99)]
        base = base or row
        added = "" if row is base else (f" {(row[0] - base[0]) * 1e3:>+15.2f} {(row[1] - base[1]) * 1e3:>+15.2f}"
                                        f" {(row[2] - base[2]) * 1e3:>+16.2f}")
        print(f"{t.name:<10} {len(t.ttft):>8} {row[0]*1e3:>12.2f} {row[1]*1e3:>12.2f} {row[2]*1e3:>13.2f} "
              f"{row[3]*1e3:>13.2f}{added or ' ' * 48} {max(t.first_round, default=float('nan'))*1e3:>16.2f}", flush=True)

if __name__ == "__main__":
    main()
