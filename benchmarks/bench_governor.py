"""A mixed build under a fixed -j against the governed pool: peak memory and
makespan side by side.

The build: many small "compile" jobs (50 ms of CPU, ~20 MB each) and a few
memory-heavy "link" jobs, each after its share of compiles, that grow to
LINK_MB of touched memory over ~1.6 s and hold it for a second, all run by
``fastjob parallel -j8``.  The contenders:

* ``fixed -j8``: ``fastjob parallel -j8`` (what make -j8 would do);
* ``governed``: the same with ``--min-free-memory FLOOR``, FLOOR set so that
  about one and a half links fit above it: MemAvailable at the start minus
  1.5 links.  That is little room per slot, so the pool starts slowly
  (docs/governor.md, "The start");
* ``governed, room``: ``--min-free-memory`` at a quarter of MemAvailable at
  the start (at least 512 MiB per slot above it): the limit is satisfied at
  the start, so the pool starts at full size and should cost nothing
  against ``fixed -j8`` (only when memory really runs short does it act).

Measured per round, the contenders alternating (the order rotates every round):
makespan (wall time of the whole command), the largest drop of the system's
MemAvailable below its value at the round's start (sampled every 20 ms; other
processes on the machine add noise, hence the medians), and the most links
that ran at once (from the jobs' own start/end stamps: noise-free).

    python benchmarks/bench_governor.py [--quick] [--rounds N] [--link-mb MB] [--json FILE]
    python benchmarks/bench_governor.py --picture docs/governor.png   # one governed run's report
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import shutil
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from _common import PY, impl_env, machine, md_table, summary

# the jobs need no fastjob: any python3 on PATH will do, and the label stays short
PY_NAME = "python3" if shutil.which("python3") else PY

SMALL = textwrap.dedent("""
    import sys, time
    b = bytearray(20 << 20)
    for i in range(0, len(b), 4096):
        b[i] = 1
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
""")

LINK = textwrap.dedent("""
    import os, sys, time
    mb, stamp = int(sys.argv[1]), sys.argv[2]
    with open(stamp, "a") as f:
        f.write(f"+ {time.time()}\\n")
    chunks = []
    for _ in range(mb // 64):
        b = bytearray(64 << 20)
        for i in range(0, len(b), 4096):
            b[i] = 1
        chunks.append(b)
        time.sleep(0.1)   # a linker's memory grows as it reads objects
    time.sleep(1.0)
    with open(stamp, "a") as f:
        f.write(f"- {time.time()}\\n")
""")


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def peak_links(stamp: Path) -> int:
    events = []
    for line in stamp.read_text().splitlines():
        kind, t = line.split()
        events.append((float(t), 1 if kind == "+" else -1))
    now = peak = 0
    for _, d in sorted(events, key=lambda e: (e[0], e[1])):
        now += d
        peak = max(peak, now)
    return peak


def one_round(name: str, argv: list[str], stamp: Path, cwd: str) -> dict[str, float]:
    stamp.write_text("")
    base = mem_available()
    low = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            low[0] = min(low[0], mem_available())
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       env=impl_env("native"), cwd=cwd, timeout=900)
    dt = time.perf_counter() - t0
    stop.set()
    t.join()
    if r.returncode != 0:
        raise RuntimeError(f"{name} failed: {r.stderr[-2000:]}")
    return {"makespan": dt, "peak_mem_drop": float(base - low[0]), "peak_links": peak_links(stamp)}


def write_lines(tmp: str, stamp: Path, n_small: int, n_link: int, link_mb: int) -> Path:
    small, linkf = Path(tmp, "small.py"), Path(tmp, "link.py")
    small.write_text(SMALL)
    linkf.write_text(LINK)
    # each link follows its share of compiles, as in a build of several binaries
    per = n_small // n_link
    lines = []
    for _ in range(n_link):
        # relative names (the commands run in ``tmp``): short labels in the report
        lines += [f"{PY_NAME} small.py"] * per + [f"{PY_NAME} link.py {link_mb} {stamp.name}"]
    cmds = Path(tmp, "cmds")
    cmds.write_text("\n".join(lines) + "\n")
    return cmds


def picture(png: str, link_mb: int, log: Any) -> None:
    """One governed run of the build with --report, rendered to ``png``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from fastjob.trace.report import screenshot

    with tempfile.TemporaryDirectory(prefix="fj-governor-") as tmp:
        stamp = Path(tmp, "links")
        stamp.write_text("")
        cmds = write_lines(tmp, stamp, 48, 4, link_mb)
        floor = mem_available() - int(1.5 * (link_mb << 20))
        html = Path(tmp, "report.html")
        argv = [PY, "-m", "fastjob", "parallel", "-j8", "--no-progress", "--min-free-memory",
                str(floor), "--report", str(html), "-a", str(cmds)]
        r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env=impl_env("native"), cwd=tmp, timeout=900)
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-2000:])
        log(r.stderr.strip())
        screenshot(html, png, width=1200, height=760)
    log(f"wrote {png}")


def measure(quick: bool, rounds: int | None, link_mb: int, log: Any) -> dict[str, Any]:
    n_small, n_link = (24, 3) if quick else (48, 4)
    rounds = rounds or 3
    link = link_mb << 20
    results: dict[str, list[dict[str, float]]] = {"fixed -j8": [], "governed": [],
                                                  "governed, room": []}
    floors = []
    with tempfile.TemporaryDirectory(prefix="fj-governor-") as tmp:
        stamp = Path(tmp, "links")
        cmds = write_lines(tmp, stamp, n_small, n_link, link_mb)
        for rnd in range(rounds):
            order = ["fixed -j8", "governed", "governed, room"]
            order = order[rnd % 3:] + order[:rnd % 3]  # each contender in each place
            for name in order:
                argv = [PY, "-m", "fastjob", "parallel", "-j8", "--no-progress", "-a", str(cmds)]
                if name == "governed":
                    floor = mem_available() - int(1.5 * link)
                    floors.append(floor)
                    argv[4:4] = ["--min-free-memory", str(floor)]
                elif name == "governed, room":
                    floor = mem_available() // 4
                    if mem_available() - floor < 8 * (512 << 20):
                        raise SystemExit("'governed, room' needs 4 GiB of MemAvailable or more")
                    argv[4:4] = ["--min-free-memory", str(floor)]
                res = one_round(name, argv, stamp, tmp)
                results[name].append(res)
                log(f"  round {rnd + 1}/{rounds} {name}: {res['makespan']:.2f} s, "
                    f"MemAvailable -{res['peak_mem_drop'] / 2**30:.2f} GiB, "
                    f"{res['peak_links']:.0f} link(s) at once")
    out: dict[str, Any] = {
        "params": {"small_jobs": n_small, "link_jobs": n_link, "link_mb": link_mb, "jobs": 8,
                   "rounds": rounds, "floor_below_start_gib": 1.5 * link / 2**30},
        "results": {},
    }
    for name, rs in results.items():
        out["results"][name] = {k: summary([r[k] for r in rs]) for k in rs[0]}
    return out


def table(res: dict[str, Any]) -> str:
    r = res["results"]
    fixed = r["fixed -j8"]
    rows = []
    for name, m in r.items():
        def cell(key: str, scale: float, unit: str, fmt: str = ".2f") -> str:
            v = m[key]["median"] / scale
            ratio = m[key]["median"] / fixed[key]["median"] if fixed[key]["median"] else float("nan")
            return f"{v:{fmt}} {unit} ({ratio:.2f}x)"

        rows.append([name, cell("makespan", 1, "s"), cell("peak_mem_drop", 2**30, "GiB"),
                     f"{m['peak_links']['median']:.0f}"])
    return md_table(["pool", "makespan (median)", "peak MemAvailable drop (median)",
                     "links at once (median)"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--link-mb", type=int, default=1024)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--picture", metavar="PNG", help="only render one governed run's report")
    a = ap.parse_args()
    if not sys.platform.startswith("linux"):
        raise SystemExit("bench_governor needs Linux (/proc/meminfo)")
    if a.picture:
        picture(a.picture, a.link_mb, lambda m: print(m, file=sys.stderr))
        return
    res = {"machine": machine(),
           "governor": measure(a.quick, a.rounds, a.link_mb, lambda m: print(m, file=sys.stderr))}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    print(table(res["governor"]))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
