#!/usr/bin/env python3
"""Turn the raw oha JSON of a loadtests/run.sh run into the comparison table.

    report.py check FILE     exit 1 unless every request in FILE got a 200 (prints what failed)
    report.py brief FILE     one line: requests, req/s, p50, p99
    report.py report DIR     the full table for a results directory; exit 3 if the bar is missed
    report.py perf FILE      summarise `perf report --sort dso,symbol` output: by binary, by crate

DIR holds scenarios.tsv (target, mode, concurrency, oha JSON file, proxy CPU ticks or "-"),
meta.txt (key=value facts about the run) and the oha JSON files. Standard library only.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

# The bar, checked at this scenario: non-streaming at concurrency 64.
BAR_MODE, BAR_CONC = "plain", 64
BAR_ADDED_P99_MS = 1.0  # gateway p99 - direct p99 must stay under this
BAR_THROUGHPUT_RATIO = 0.5  # gateway req/s must be at least this share of direct's
AIM_CPU_MS_PER_REQ = 0.1  # an aim, not a bar
NOISE_WARN_PCT = 5.0  # CPU share taken by non-benchmark processes above which a run is suspect

TARGETS = ("direct", "nginx", "gateway", "baseline", "noledger", "azure", "gemini", "bedrock")
# The gateway routing the same request to each provider on the emulator (run.sh PROVIDER_TARGETS).
PROVIDERS = ("noledger", "azure", "gemini", "bedrock")
PROVIDER_LABEL = {
    "gateway": "OpenAI (passthrough)",
    "noledger": "OpenAI, --ledger off",
    "azure": "Azure OpenAI (passthrough)",
    "gemini": "Gemini (translated)",
    "bedrock": "Bedrock (translated, SigV4)",
}
AIM_TRANSLATION_MS = 0.1  # translation (and signing) CPU per request above OpenAI passthrough
BAR_LEDGER_THROUGHPUT_DROP = 0.10  # issue 9: throughput at c64 with governance on vs off
MODE_LABEL = {"plain": "non-stream", "stream": "stream"}


@dataclass
class Run:
    target: str
    mode: str
    conc: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_req: float | None
    core_pct: float | None  # the proxy's CPU time as a share of its one core: ~100 = saturated
    other_pct: float | None  # CPU taken by processes not in the benchmark, % of the machine


def load(path: Path) -> dict:
    with path.open() as f:
        return json.load(f)


def failures(data: dict) -> list[str]:
    """Why this oha run does not count as all-successful; empty when it does."""
    problems = []
    codes = data.get("statusCodeDistribution") or {}
    ok = codes.get("200", 0)
    for code, n in sorted(codes.items()):
        if code != "200":
            problems.append(f"{n} responses with HTTP {code}")
    for err, n in sorted((data.get("errorDistribution") or {}).items()):
        problems.append(f"{n} errors: {err}")
    if ok == 0:
        problems.append("no successful request at all")
    return problems


def stats(data: dict) -> tuple[int, float, float, float]:
    """(requests, req/s, p50 ms, p99 ms). Counts only 200s; the rate is over oha's wall time,
    which with -w includes the requests finishing after the deadline."""
    requests = int((data.get("statusCodeDistribution") or {}).get("200", 0))
    total_s = float(data["summary"]["total"])
    pct = data["latencyPercentiles"]  # seconds, unrounded (metrics.latency_ms rounds to 1 µs)
    return requests, requests / total_s, pct["p50"] * 1e3, pct["p99"] * 1e3


def read_meta(results: Path) -> dict[str, str]:
    meta = {}
    path = results / "meta.txt"
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                meta[key.strip()] = value.strip()
    return meta


def read_runs(results: Path, clk_tck: int, nproc: int) -> list[Run]:
    runs = []
    with (results / "scenarios.tsv").open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            data = load(results / row["file"])
            problems = failures(data)
            if problems:
                raise SystemExit(f"{row['file']}: " + "; ".join(problems))
            requests, rps, p50, p99 = stats(data)
            cpu = core = None
            if row["cpu_ticks"] not in ("", "-"):
                cpu = int(row["cpu_ticks"]) * 1e3 / clk_tck / requests
                core = 100.0 * int(row["cpu_ticks"]) / clk_tck / float(data["summary"]["total"])
            other = None
            if row.get("other_ticks") not in (None, "", "-"):
                capacity = float(data["summary"]["total"]) * nproc * clk_tck
                other = 100.0 * int(row["other_ticks"]) / capacity
            runs.append(
                Run(row["target"], row["mode"], int(row["concurrency"]), requests, rps, p50, p99, cpu, core, other)
            )
    return runs


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain text table: first column left-aligned, the rest right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        out = []
        for i, (cell, w) in enumerate(zip(cells, widths)):
            out.append(cell.ljust(w) if i == 0 else cell.rjust(w))
        return "  ".join(out).rstrip()

    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


def f2(x: float) -> str:
    return f"{x:.2f}"


def f3(x: float) -> str:
    return f"{x:.3f}"


def signed(x: float) -> str:
    return f"{x:+.3f}"


def report(results: Path) -> int:
    meta = read_meta(results)
    clk_tck = int(meta.get("clk_tck", "100"))
    runs = read_runs(results, clk_tck, int(meta.get("nproc", "2")))
    by = {(r.target, r.mode, r.conc): r for r in runs}
    scenarios = []
    for r in runs:
        if (r.mode, r.conc) not in scenarios:
            scenarios.append((r.mode, r.conc))

    print(f"Switchyard proxy overhead — {meta.get('date', '?')}, {meta.get('duration_s', '?')} s per scenario "
          f"(+{meta.get('warmup_s', '?')} s warm-up), {meta.get('nproc', '?')} cores: {meta.get('cpu_model', '?')}")
    print("proxies (nginx, gateway) on core 0; emulator + oha on core 1; 1 worker each; all 200s checked")
    print(f"switchyard {meta.get('binary', '?')} (tree {meta.get('git', '?')}); {meta.get('nginx', '?')}; {meta.get('oha', '?')}")
    print()

    rows = []
    for mode, conc in scenarios:
        for target in TARGETS:
            r = by.get((target, mode, conc))
            if r is None:
                continue
            rows.append([
                target, MODE_LABEL.get(mode, mode), str(conc), str(r.requests), f"{r.rps:.0f}",
                f3(r.p50_ms), f3(r.p99_ms), "-" if r.cpu_ms_per_req is None else f"{r.cpu_ms_per_req:.4f}",
                "-" if r.core_pct is None else f"{r.core_pct:.0f}",
                "-" if r.other_pct is None else f"{r.other_pct:.1f}",
            ])
    print(table(
        ["target", "mode", "conc", "requests", "req/s", "p50 ms", "p99 ms", "CPU ms/req", "core %", "noise %"],
        rows,
    ))
    print("CPU ms/req: the proxy's user+system time per request; core %: that time as a share of its one core")
    print("(~100 = the proxy is the bottleneck); noise %: CPU taken by processes outside the benchmark")
    noisy = [r for r in runs if r.other_pct is not None and r.other_pct > NOISE_WARN_PCT]
    if noisy:
        print(f"WARNING: other processes used more than {NOISE_WARN_PCT:g}% of the machine during "
              f"{len(noisy)} scenario(s) (noise % column); those numbers are skewed: rerun on an idle machine")
    print()

    print("Gateway overhead (added latency in ms; throughput as a share of the reference)")
    rows = []
    for mode, conc in scenarios:
        d, n, gw = (by.get((t, mode, conc)) for t in ("direct", "nginx", "gateway"))
        if gw is None or d is None or n is None:
            continue
        rows.append([
            MODE_LABEL.get(mode, mode), str(conc),
            signed(gw.p50_ms - d.p50_ms), signed(gw.p99_ms - d.p99_ms), f2(gw.rps / d.rps),
            signed(gw.p50_ms - n.p50_ms), signed(gw.p99_ms - n.p99_ms), f2(gw.rps / n.rps),
            signed(n.p50_ms - d.p50_ms), signed(n.p99_ms - d.p99_ms),
        ])
    print(table(
        ["mode", "conc", "+p50 vs direct", "+p99 vs direct", "req/s x direct",
         "+p50 vs nginx", "+p99 vs nginx", "req/s x nginx", "(nginx +p50)", "(nginx +p99)"],
        rows,
    ))
    print()

    if any(r.target == "baseline" for r in runs):
        print(f"Gateway against the baseline build ({meta.get('baseline', '?')}), same run")
        rows = []
        for mode, conc in scenarios:
            gw, bl = by.get(("gateway", mode, conc)), by.get(("baseline", mode, conc))
            if gw is None or bl is None:
                continue
            cpu = "-"
            if gw.cpu_ms_per_req is not None and bl.cpu_ms_per_req:
                cpu = f"{gw.cpu_ms_per_req:.4f} vs {bl.cpu_ms_per_req:.4f} ({gw.cpu_ms_per_req / bl.cpu_ms_per_req - 1:+.0%})"
            rows.append([
                MODE_LABEL.get(mode, mode), str(conc), f2(gw.rps / bl.rps),
                signed(gw.p50_ms - bl.p50_ms), signed(gw.p99_ms - bl.p99_ms), cpu,
            ])
        print(table(["mode", "conc", "req/s x baseline", "+p50 ms", "+p99 ms", "CPU ms/req (gateway vs baseline)"], rows))
        print()

    if any(r.target in PROVIDERS for r in runs):
        print("Per provider: the same gateway and request, routed to each provider on the emulator")
        rows = []
        for mode, conc in scenarios:
            base, d = by.get(("gateway", mode, conc)), by.get(("direct", mode, conc))
            present = [p for p in PROVIDERS if (p, mode, conc) in by]
            if base is None or d is None or not present:
                continue
            for target in ("gateway", *present):
                r = by[(target, mode, conc)]
                extra = "-"
                if target not in ("gateway", "noledger") and r.cpu_ms_per_req is not None and base.cpu_ms_per_req is not None:
                    delta = r.cpu_ms_per_req - base.cpu_ms_per_req
                    extra = f"{delta:+.4f} ({'ok' if delta < AIM_TRANSLATION_MS else 'OVER'}: < {AIM_TRANSLATION_MS:g})"
                rows.append([
                    PROVIDER_LABEL[target], MODE_LABEL.get(mode, mode), str(conc), f"{r.rps:.0f}",
                    signed(r.p50_ms - d.p50_ms), signed(r.p99_ms - d.p99_ms),
                    "-" if r.cpu_ms_per_req is None else f"{r.cpu_ms_per_req:.4f}", extra,
                ])
        print(table(["provider", "mode", "conc", "req/s", "+p50 vs direct", "+p99 vs direct",
                     "CPU ms/req", "CPU vs OpenAI passthrough"], rows))
        print("(direct is the emulator's OpenAI endpoint; the emulator answers every provider at about the same cost)")
        for mode, conc in scenarios:
            on, off = by.get(("gateway", mode, conc)), by.get(("noledger", mode, conc))
            if on is None or off is None or on.cpu_ms_per_req is None or off.cpu_ms_per_req is None:
                continue
            drop = 1 - on.rps / off.rps
            verdict = "ok" if drop < BAR_LEDGER_THROUGHPUT_DROP else "MISSED"
            print(f"Ledger (SQLite) cost, {MODE_LABEL.get(mode, mode)} c{conc}: CPU "
                  f"{on.cpu_ms_per_req - off.cpu_ms_per_req:+.4f} ms/req, throughput {-drop:+.0%} "
                  f"(bar: drop < {BAR_LEDGER_THROUGHPUT_DROP:.0%} at c64: {verdict})")
        print()

    if "gateway_vmhwm_kb" in meta:
        print(f"Gateway memory: RSS after start {int(meta.get('gateway_rss_start_kb', 0)) / 1024:.1f} MiB, "
              f"peak (VmHWM) at end {int(meta['gateway_vmhwm_kb']) / 1024:.1f} MiB")

    rc = 0
    gw, d = by.get(("gateway", BAR_MODE, BAR_CONC)), by.get(("direct", BAR_MODE, BAR_CONC))
    if gw is None or d is None:
        print(f"BAR: not measured (no {BAR_MODE} c{BAR_CONC} scenario for gateway and direct)")
        rc = 3
    else:
        added = gw.p99_ms - d.p99_ms
        ratio = gw.rps / d.rps
        ok = added < BAR_ADDED_P99_MS and ratio >= BAR_THROUGHPUT_RATIO
        print(f"{'PASS' if ok else 'FAIL'}: non-stream c{BAR_CONC}: gateway p99 added {added:+.3f} ms "
              f"(bar < {BAR_ADDED_P99_MS:g} ms: {'ok' if added < BAR_ADDED_P99_MS else 'MISSED'}), "
              f"throughput {ratio:.0%} of direct (bar >= {BAR_THROUGHPUT_RATIO:.0%}: "
              f"{'ok' if ratio >= BAR_THROUGHPUT_RATIO else 'MISSED'})")
        if not ok:
            rc = 3
        if gw.cpu_ms_per_req is not None:
            met = gw.cpu_ms_per_req < AIM_CPU_MS_PER_REQ
            others = ", ".join(
                f"{MODE_LABEL.get(r.mode, r.mode)} c{r.conc} {r.cpu_ms_per_req:.4f}"
                for r in runs if r.target == "gateway" and r.cpu_ms_per_req is not None
            )
            print(f"AIM {'met' if met else 'not met'}: gateway CPU {gw.cpu_ms_per_req:.4f} ms/request at "
                  f"non-stream c{BAR_CONC} (aim < {AIM_CPU_MS_PER_REQ:g} ms; all: {others})")
    return rc


PERF_LINE = re.compile(r"^\s*([0-9.]+)%\s+(\S+)\s+\[(.)\]\s+(.*?)\s*$")
RUST_PATH = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)::")


def perf_summary(path: Path) -> str:
    """Self time by binary, and inside the gateway's binary by crate (the first path segment of
    the symbol: for `<T as Trait>::f` that is T's crate). Kernel time is split no further."""
    by_dso: dict[str, float] = {}
    by_crate: dict[str, float] = {}
    top: list[tuple[float, str, str]] = []
    for line in path.read_text().splitlines():
        m = PERF_LINE.match(line)
        if not m:
            continue
        pct, dso, _kind, sym = float(m[1]), m[2], m[3], m[4]
        by_dso[dso] = by_dso.get(dso, 0.0) + pct
        top.append((pct, dso, sym))
        if dso == "switchyard":
            crate = RUST_PATH.search(sym)
            key = crate[1] if crate else "(other)"
            by_crate[key] = by_crate.get(key, 0.0) + pct
    out = ["by binary: " + ", ".join(f"{d} {p:.1f}%" for d, p in sorted(by_dso.items(), key=lambda kv: -kv[1]))]
    if by_crate:
        out.append("inside switchyard, by crate: " + ", ".join(
            f"{c} {p:.1f}%" for c, p in sorted(by_crate.items(), key=lambda kv: -kv[1]) if p >= 0.5))
    out.append("top symbols:")
    for pct, dso, sym in sorted(top, key=lambda t: -t[0])[:20]:
        out.append(f"  {pct:5.2f}%  {dso:<18} {sym[:110]}")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("check", "brief", "report", "perf"):
        print(__doc__, file=sys.stderr)
        return 2
    cmd, arg = argv[1], Path(argv[2])
    if cmd == "check":
        problems = failures(load(arg))
        for p in problems:
            print(f"{arg.name}: {p}", file=sys.stderr)
        return 1 if problems else 0
    if cmd == "perf":
        print(perf_summary(arg))
        return 0
    if cmd == "brief":
        requests, rps, p50, p99 = stats(load(arg))
        print(f"{requests} req, {rps:.0f} req/s, p50 {p50:.3f} ms, p99 {p99:.3f} ms")
        return 0
    return report(arg)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
