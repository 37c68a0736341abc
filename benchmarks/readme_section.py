"""Write the README's performance headline from benchmarks/results.json.

Replaces the text between <!-- perf:start --> and <!-- perf:end --> in
README.md; no number in that section is written by hand.

    python benchmarks/readme_section.py          # after python benchmarks/run_all.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- perf:start -->", "<!-- perf:end -->"


def med(section: dict[str, Any], key: str) -> float:
    return float(section[key]["median"])


def us(ns: float) -> str:
    return f"{ns / 1000:.2f} µs"


def render(d: dict[str, Any]) -> str:
    m = d["machine"]
    sync = d["sync_cycle"]["ns_per_cycle"]
    acyc = d["async_cycle"]["ns_per_cycle"]
    hand = d["handoff"]["latency_ns"]
    wait = d["wait_cpu"]["cpu_ns"]
    scale = d["scale"]["wake_ns"]
    mk = d["makespan"]["seconds"]
    raw = med(sync, "raw_pair")
    sem = med(acyc, "asyncio/asyncio.Semaphore")
    c_reader = med(hand, "blocking C reader")
    rows = [
        ("sync cycle, pool token (`try_acquire`+`release`, native)",
         us(med(sync, "pool/native")), f"{med(sync, 'pool/native') / raw:.2f}x raw `os.read`+`os.write` ({us(raw)})"),
        ("sync cycle, pool token, pure Python",
         us(med(sync, "pool/pure")), f"{med(sync, 'pool/pure') / raw:.2f}x raw pair"),
        ("sync cycle, implicit token (no syscall, native)",
         us(med(sync, "implicit/native")), f"{med(sync, 'implicit/native') / raw:.2f}x raw pair"),
        ("`async with client.token()` on asyncio, implicit token (native)",
         us(med(acyc, "asyncio/implicit/native")), f"{med(acyc, 'asyncio/implicit/native') / sem:.2f}x asyncio.Semaphore ({us(sem)})"),
        ("`async with client.token()` on asyncio, pool token (native)",
         us(med(acyc, "asyncio/pool/native")), f"{med(acyc, 'asyncio/pool/native') / sem:.2f}x asyncio.Semaphore"),
        ("hand-off across processes, asyncio (median)",
         us(med(hand, "fastjob asyncio native, proc-reopen")),
         f"{med(hand, 'fastjob asyncio native, proc-reopen') / c_reader:.2f}x a blocking C reader ({us(c_reader)}); "
         f"{med(hand, 'fastjob asyncio native, proc-reopen') / med(hand, 'raw Python asyncio `add_reader` + `os.read`'):.2f}x bare asyncio add_reader"),
        ("hand-off across processes, `acquire_blocking` (median)",
         us(med(hand, "fastjob `acquire_blocking` native")),
         f"{med(hand, 'fastjob `acquire_blocking` native') / c_reader:.2f}x a blocking C reader"),
        ("CPU burnt waiting 5 s (asyncio, worst strategy)",
         f"{max(med(wait, k) for k in wait if k.startswith('fastjob')) / 1e6:.2f} ms", "target < 10 ms"),
        ("release-to-wake, 10,000 waiters vs 1 (asyncio)",
         us(med(scale, "asyncio/fastjob native/10000")),
         f"{med(scale, 'asyncio/fastjob native/10000') / med(scale, 'asyncio/fastjob native/1'):.2f}x the 1-waiter case"),
    ]
    for kind in ("sleep 0.01", "burn 10 ms CPU"):
        key = f"{kind}/4/fastjob parallel"
        if key in mk:
            rows.append((f"1,000 jobs of `{kind}` at -j4: `fastjob parallel` makespan",
                         f"{med(mk, key):.2f} s", f"{med(mk, key) / med(mk, f'{kind}/4/make -jN'):.2f}x `make -j4`"))
    out = [
        f"Measured by `python benchmarks/run_all.py` on {d['date']} ({m['cores']} cores, {m['kernel']}, "
        f"CPython {m['python']}); medians of alternated, repeated runs. Full tables with spreads, p99 and the "
        "other contenders (C, the Rust `jobserver` crate, gnumake-tokenpool, xargs, make): "
        "[docs/performance.md](docs/performance.md).",
        "",
        "| what | fastjob | compared with |",
        "| --- | --- | --- |",
    ]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(out)


def main() -> int:
    data = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print("README.md has no perf markers", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{render(data)}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
