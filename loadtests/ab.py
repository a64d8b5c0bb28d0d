#!/usr/bin/env python3
"""Interleaved A/B: two or more gateway variants kept running side by side, measured in
alternating short rounds, compared round by round.

This machine's speed drifts by 10-35% over minutes (other tenants of the host), more than
the effects we measure. run.sh and otel.sh measure each target once, in sequence, so a drift
lands on one target only. Here every variant is measured once in every round (order
alternating, ABBA...), rounds are short, and what is reported is the median over rounds of
each variant's figure divided by the first variant's in the same round: a drift moves both
sides of a ratio alike.

A variant is `NAME=SPEC`: SPEC is shell words, leading `KEY=VALUE` words are its environment,
then the binary (`main` for target/release/switchyard), then arguments added after
`serve --tenants T --listen 127.0.0.1:0 --workers 1`. `{grpc}` or `{http}` in a SPEC starts an
OTLP receiver on core 1 (`--receiver`: loadtests/otlp_sink.rs by default, or
tests/otlp/receiver.py) and stands for its OTLP/gRPC or OTLP/HTTP port. The SPEC `nginx`
is a blind nginx reverse proxy to the emulator, configured as run.sh's yardstick; the SPEC
`floor` is loadtests/floor_proxy.rs (the actix-web + awc stack doing only what a proxy must;
build it with `cargo build --release --example floor-proxy`). Examples:

  loadtests/ab.py 'base=/tmp/switchyard-old' 'main=main --ledger off --no-watch'
  loadtests/ab.py 'off=main --ledger off' \\
      'all=OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{grpc} OTEL_EXPORTER_OTLP_PROTOCOL=grpc main --ledger off'
  loadtests/ab.py 'off=main --ledger off' 'http=OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{http} main --ledger off'
  loadtests/ab.py 'nginx=nginx' 'main=main'
  loadtests/ab.py 'nginx=nginx' 'floor=floor' 'main=main --ledger off --no-watch'
  loadtests/ab.py --ttft 1 --rounds 10 --secs 2 'nginx=nginx' 'floor=floor' 'main=main --ledger off'

Proxies (1 worker each) are pinned to core 0 and only one is loaded at a time; the emulator,
the receiver and oha share core 1. CPU per request is the proxy's on-CPU time over all its
threads and child processes (/proc/PID/task/*/schedstat, nanoseconds) divided by the 200
answers of the round; its split into user and kernel time comes from /proc/PID/stat's clock
ticks. Wake-ups per request are its threads' context switches (voluntary and not, from
/proc/PID/task/*/status) over the round's answers: unlike CPU time, they hardly move with the
machine's speed, so they show a change in how threads hand work to each other on a noisy
machine; `--threads` splits both figures by thread name. The p99 latency is oha's for each
round, and "p99 added" its difference from the first variant's in the same round (with nginx
first: what the gateway adds to the tail beyond a blind proxy; design.md's bar, under 1 ms at
c64, is over the emulator direct, which run.sh measures). Every answer must be a 200.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "target" / "release" / "switchyard"
FLOOR = REPO / "target" / "release" / "examples" / "floor-proxy"
SINK = REPO / "target" / "release" / "examples" / "otlp-sink"


def wait_line(path, pattern, timeout=60.0):
    """The first line of the file at `path` matching `pattern`, waiting up to `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                m = re.search(pattern, line)
                if m:
                    return m
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {pattern!r} in {path}:\n{path.read_text(errors='replace')}")


def family(pid):
    """`pid` and its child processes (nginx: the master and its worker)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return [pid, *kids]


def task_stats(task):
    """(name, on-CPU ns, context switches) of one thread (/proc/PID/task/TID), or None when it
    has gone."""
    try:
        status = (task / "status").read_text().splitlines()
        ns = int((task / "schedstat").read_text().split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return None
    name = status[0].split(None, 1)[1] if len(status[0].split()) > 1 else "?"
    return name, ns, sum(int(line.split()[1]) for line in status if "ctxt_switches:" in line)


def cpu(pid):
    """(on-CPU ns, user ticks, kernel ticks, context switches) of `pid`'s threads and child
    processes."""
    ns = user = sys_ = switches = 0
    for p in family(pid):
        for task in Path(f"/proc/{p}/task").iterdir():
            if stats := task_stats(task):
                ns, switches = ns + stats[1], switches + stats[2]
        # Fields 14 and 15 (utime, stime, all threads); split after the command's ')'.
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        user, sys_ = user + int(fields[11]), sys_ + int(fields[12])
    return ns, user, sys_, switches


def threads(pid):
    """{thread name: [on-CPU ns, context switches]} of `pid`'s threads (`--threads`)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        if stats := task_stats(task):
            row = out.setdefault(stats[0], [0, 0])
            row[0] += stats[1]
            row[1] += stats[2]
    return out


class Bench:
    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.procs = []
        self.oha = shutil.which("oha") or str(Path.home() / ".cargo/bin/oha")

    def start(self, name, cmd, env=None, core=1, ready=None):
        out = self.work / f"{name}.out"
        p = subprocess.Popen(
            ["taskset", "-c", str(core), *cmd],
            stdout=out.open("w"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if name == "receiver" else subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn", **(env or {})},
        )
        self.procs.append(p)
        return p, (wait_line(out, ready) if ready else None)

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()

    def load(self, url, key, secs):
        """oha at the configured concurrency for `secs` s; returns the number of answers and
        their p99 latency in ms."""
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Hello"}],
            "stream": self.args.stream,
        }
        out = subprocess.run(
            ["taskset", "-c", "1", self.oha, "--no-tui", "-z", f"{secs}s", "-w", "-t", "10s",
             "-c", str(self.args.conc), "--worker-threads", "1", "-m", "POST",
             *(["-q", str(self.args.rate)] if self.args.rate else []),
             "-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json",
             "-d", json.dumps(body), "--output-format", "json", url],
            capture_output=True, text=True, check=True,
        ).stdout
        result = json.loads(out)
        codes = result.get("statusCodeDistribution") or {}
        bad = {k: v for k, v in codes.items() if k != "200"}
        if bad:
            sys.exit(f"non-200 answers from {url}: {bad}")
        p99 = (result.get("latencyPercentiles") or {}).get("p99")
        if p99 is None:
            sys.exit(f"oha gave no p99 for {url}")
        return int(codes.get("200", 0)), p99 * 1e3


NGINX_CONF = """worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    upstream emulator {{
        server {upstream};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://emulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def start_nginx(bench, emu):
    """run.sh's yardstick: a blind nginx reverse proxy to the emulator, 1 worker, core 0."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    d = bench.work / "nginx"
    d.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (d / "nginx.conf").write_text(NGINX_CONF.format(
        dir=d, upstream=emu.removeprefix("http://"), port=port))
    p, _ = bench.start("nginx", [nginx, "-e", str(d / "error.log"), "-p", str(d),
                                 "-c", str(d / "nginx.conf")], core=0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return p, f"http://127.0.0.1:{port}/v1/chat/completions"
        time.sleep(0.05)
    sys.exit(f"nginx did not listen on {port}: {(d / 'error.log').read_text()}")


def spread(values):
    """(median, lower quartile, upper quartile) of per-round figures."""
    xs = sorted(values)
    return statistics.median(xs), xs[len(xs) // 4], xs[(3 * len(xs)) // 4]


def parse_variant(text, ports):
    name, _, spec = text.partition("=")
    if not name or not spec:
        sys.exit(f"a variant is NAME=SPEC, got {text!r}")
    for protocol, port in ports.items():
        spec = spec.replace("{" + protocol + "}", port)
    words = shlex.split(spec)
    env = {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        k, _, v = words.pop(0).partition("=")
        env[k] = v
    if not words:
        sys.exit(f"variant {name}: no binary in {spec!r}")
    binary = str(BIN) if words[0] == "main" else words[0]
    return name, env, binary, words[1:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="+", help="NAME=SPEC (the first is the reference)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--secs", type=float, default=3, help="measured seconds per variant a round")
    ap.add_argument("--conc", type=int, default=64)
    ap.add_argument("--stream", action="store_true", help="unpaced streams instead of answers")
    ap.add_argument("--receiver", choices=("sink", "python"), default="sink",
                    help="the OTLP receiver `{grpc}` and `{http}` start: loadtests/otlp_sink.rs (default; light "
                         "enough not to slow oha and the emulator beside it) or "
                         "tests/otlp/receiver.py")
    ap.add_argument("--threads", action="store_true",
                    help="also each thread's CPU and context switches per answer, by thread name")
    ap.add_argument("--rate", type=int, default=0,
                    help="cap the load at this many requests/s (0: as fast as it goes). CPU per "
                         "request depends on the load (a busier server batches more), so "
                         "variants that reach different throughputs compare fairly only capped")
    ap.add_argument("--ttft", type=int, default=0, metavar="C",
                    help="instead of oha's load, loadtests/ttft.py's paced streams at concurrency "
                         "C, the emulator itself first as `direct`; counts --rounds x --secs "
                         "seconds per target")
    args = ap.parse_args()
    if len(args.variants) < 2 and not args.ttft:
        sys.exit("give at least two variants")
    py = os.environ.get("SWITCHYARD_TEST_PYTHON", sys.executable)
    work = Path(tempfile.mkdtemp(prefix="switchyard-ab."))
    bench = Bench(args, work)
    try:
        _, m = bench.start("emulator", [str(BIN), "emulate", "--listen", "127.0.0.1:0",
                                        "--workers", "1"], ready=r"emulator listening on (\S+)")
        emu = m.group(1)
        ports, receiver = {}, None
        if any("{grpc}" in v or "{http}" in v for v in args.variants):
            if args.receiver == "sink":
                if not SINK.exists():
                    sys.exit(f"{SINK} not found: cargo build --release --example otlp-sink")
                cmd = [str(SINK)]
            else:
                cmd = [py, str(REPO / "tests/otlp/receiver.py"), "--count-only"]
            receiver, m = bench.start("receiver", cmd, ready=r"grpc=(\d+) http=(\d+)")
            ports = {"grpc": m.group(1), "http": m.group(2)}
        tenants = work / "tenants"
        tenants.mkdir()
        (tenants / "bench.toml").write_text(
            "[[api_keys]]\nname = \"bench\"\n"
            f"sha256 = \"{__import__('hashlib').sha256(b'sk-bench').hexdigest()}\"\n"
            "[providers.openai]\ntype = \"openai\"\napi_key_env = \"BENCH_OPENAI_KEY\"\n"
            f"base_url = \"{emu}/v1\"\n[proxies.chat]\n[[proxies.chat.routes]]\n"
            "name = \"mini\"\nprovider = \"openai\"\nmodel = \"gpt-4o-mini\"\n"
        )
        gateways = []
        for text in args.variants:
            label, _, spec = text.partition("=")
            if spec == "nginx":
                p, url = start_nginx(bench, emu)
                gateways.append((label, p, url, "sk-emulator-openai"))
                continue
            if spec == "floor":
                p, m = bench.start(
                    label,
                    [str(FLOOR), "--listen", "127.0.0.1:0", "--upstream", f"{emu}/v1",
                     "--key", "sk-emulator-openai"],
                    core=0, ready=r"floor proxy listening on (\S+)",
                )
                gateways.append((label, p, f"{m.group(1)}/bench/chat/v1/chat/completions",
                                 "sk-bench"))
                continue
            name, env, binary, extra = parse_variant(text, ports)
            env = {"BENCH_OPENAI_KEY": "sk-emulator-openai", **env}
            p, m = bench.start(
                name,
                [binary, "serve", "--tenants", str(tenants), "--listen", "127.0.0.1:0",
                 "--workers", "1", *extra],
                env=env, core=0, ready=r"switchyard listening on (\S+)",
            )
            gateways.append((name, p, f"{m.group(1)}/bench/chat/v1/chat/completions", "sk-bench"))
        names = [g[0] for g in gateways]
        if args.ttft:
            # Paced streams instead of oha: the emulator first (as `direct`, the base of every
            # "added" column), then each variant, in turns, from core 1.
            base = lambda url: url.removesuffix("/chat/completions")
            cmd = ["taskset", "-c", "1", sys.executable, str(REPO / "loadtests/ttft.py"),
                   "--concurrency", str(args.ttft), "--duration", str(args.secs * args.rounds),
                   "--target", f"direct={emu}/v1", "--key", "sk-emulator-openai"]
            for name, _, url, key in gateways:
                cmd += ["--target", f"{name}={base(url)}", "--key", key]
            subprocess.run(cmd, check=True)
            return
        for _, _, url, key in gateways:
            bench.load(url, key, 2)  # warm-up: connections, caches, the allocator's pages
        # per round: (req/s, CPU µs per request, user ticks, kernel ticks, switches per request,
        # p99 ms)
        rows = {n: [] for n in names}
        # per variant and thread name: (CPU µs per request, switches per request) per round
        per_thread = {n: {} for n in names}
        for r in range(args.rounds):
            order = gateways if r % 2 == 0 else gateways[::-1]
            for name, p, url, key in order:
                h0 = threads(p.pid) if args.threads else {}
                c0, t0 = cpu(p.pid), time.monotonic()
                n, p99 = bench.load(url, key, args.secs)
                c1, t1 = cpu(p.pid), time.monotonic()
                h1 = threads(p.pid) if args.threads else {}
                for t, (ns, sw) in h1.items():
                    was = h0.get(t, [0, 0])
                    per_thread[name].setdefault(t, []).append(((ns - was[0]) / 1e3 / n,
                                                               (sw - was[1]) / n))
                rows[name].append((n / (t1 - t0), (c1[0] - c0[0]) / 1e3 / n,
                                   c1[1] - c0[1], c1[2] - c0[2], (c1[3] - c0[3]) / n, p99))
            print(f"round {r + 1:2}: " + "  ".join(
                f"{n} {rows[n][-1][0]:7.0f} req/s {rows[n][-1][1]:6.2f} µs {rows[n][-1][4]:5.2f} sw "
                f"p99 {rows[n][-1][5]:5.2f} ms"
                for n in names),
                flush=True)
        if receiver:
            # Its CPU over the whole run, and what it received (printed when stdin closes).
            used = cpu(receiver.pid)[0] / 1e9
            receiver.stdin.close()
            receiver.wait(30)
            got = (work / "receiver.out").read_text().splitlines()[1:]
            print(f"receiver ({args.receiver}): {', '.join(got) or 'no count'}, "
                  f"{used:.2f} s of CPU")
    finally:
        bench.stop()
        shutil.rmtree(work, ignore_errors=True)

    mode = "unpaced streams" if args.stream else "whole answers"
    if args.rate:
        mode += f" capped at {args.rate} req/s"
    print(f"\n{args.rounds} rounds of {args.secs:g} s per variant, {mode} at c{args.conc}, "
          f"order alternating; ratios are per round against {names[0]}, then the median")
    print(f"{'variant':<10} {'req/s':>8} {'CPU µs/req':>11} {'kernel':>7} {'switches/req':>13} "
          f"{'p99 ms':>7} {'req/s ratio':>24} {'CPU ratio':>24} {'p99 added ms':>24}")
    ref = rows[names[0]]
    for n in names:
        rps = statistics.median(x[0] for x in rows[n])
        cpu_us = statistics.median(x[1] for x in rows[n])
        kernel = sum(x[3] for x in rows[n]) / max(1, sum(x[2] + x[3] for x in rows[n]))
        switches = statistics.median(x[4] for x in rows[n])
        p99 = statistics.median(x[5] for x in rows[n])
        line = f"{n:<10} {rps:8.0f} {cpu_us:11.2f} {kernel:7.0%} {switches:13.3f} {p99:7.2f}"
        if n != names[0]:
            for i in (0, 1):
                m, q1, q3 = spread(a[i] / b[i] - 1 for a, b in zip(rows[n], ref))
                line += f" {m:+7.1%} [{q1:+.1%}, {q3:+.1%}]"
            m, q1, q3 = spread(a[5] - b[5] for a, b in zip(rows[n], ref))
            line += f" {m:+7.2f} [{q1:+.2f}, {q3:+.2f}]"
        print(line)
    if args.threads:
        print("\nper thread (medians over rounds): CPU µs/req, switches/req")
        for n in names:
            print(f"{n:<10} " + "  ".join(
                f"{t} {statistics.median(x[0] for x in v):.2f} "
                f"{statistics.median(x[1] for x in v):.4f}"
                for t, v in sorted(per_thread[n].items()) if any(x[0] or x[1] for x in v)))
    print("(kernel: the share of its CPU time spent in the kernel, all rounds; switches/req: its "
          "threads' context switches per answer, median over rounds; p99: oha's, median over "
          "rounds; ratio and p99 added: per round against the first variant, median, then "
          "[lower quartile, upper quartile] over rounds)")


if __name__ == "__main__":
    main()
