"""Makespan of real jobs: many ~10 ms commands at -j2/-j4/-j8 through
``fastjob parallel``, ``JobGroup`` + ``run_process``, ``make -jN`` (a
generated Makefile) and ``xargs -P N``, next to the ideal.

Two kinds of job: ``sleep 0.01`` (waiting, so more jobs than cores help) and
``burn 10`` (a C program that burns 10 ms of CPU time, standing in for a tiny
compile; the ideal for it is bounded by the cores).  Every contender is timed
as a whole command from the outside, so interpreter start-up counts.

    python benchmarks/bench_makespan.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from _common import PY, build_c, impl_env, machine, md_table, summary

HERE = Path(__file__).resolve().parent


def have_cli() -> bool:
    """``fastjob parallel`` exists once fastjob.cli can be imported."""
    out = subprocess.run([PY, "-c", "import fastjob.cli"], capture_output=True, env=impl_env("native"))
    return out.returncode == 0


def _jobgroup_worker(jobs: int, cmdfile: str) -> None:
    import anyio

    import fastjob

    commands = [line.split() for line in Path(cmdfile).read_text().splitlines() if line]

    async def main() -> None:
        with fastjob.Server(jobs=jobs) as server:
            client = server.client
            # Inside a JobGroup task, fastjob.run_process uses the task's token
            # for the child (and hands the child the pool).
            run = functools.partial(fastjob.run_process, client=client)
            async with fastjob.JobGroup(client) as group:
                for argv in commands:
                    await group.spawn(run, argv)

    anyio.run(main)


Argv = Callable[[int, Path, Path, str], list[str]]


def _contenders(cli: bool) -> dict[str, Argv]:
    """name -> (N, command file, Makefile, program) -> argv.  stdin is the
    command file, except for xargs which reads one argument per line."""
    out: dict[str, Argv] = {
        "make -jN": lambda n, cmds, mk, prog: ["make", f"-j{n}", "-s", "-f", str(mk)],
        "xargs -P N": lambda n, cmds, mk, prog: ["xargs", "-P", str(n), "-n", "1", prog],
        "JobGroup + run_process": lambda n, cmds, mk, prog: [
            PY, str(HERE / "bench_makespan.py"), "--worker", str(n), str(cmds)
        ],
    }  # fmt: skip
    if cli:
        out["fastjob parallel"] = lambda n, cmds, mk, prog: [PY, "-m", "fastjob", "parallel", "-j", str(n)]
    return out


def measure(quick: bool = False, log: Callable[[str], None] = print, reps: int | None = None) -> dict[str, Any]:
    n_jobs = 200 if quick else 1000
    levels = [4] if quick else [2, 4, 8]
    reps = reps or (1 if quick else 2)
    job_ms = 10.0
    burn = build_c("burn")
    kinds = {"sleep 0.01": ("sleep", "0.01")}
    notes: dict[str, str] = {}
    if burn is not None:
        kinds["burn 10 ms CPU"] = (str(burn), f"{job_ms:g}")
    else:
        notes["burn"] = "skipped: no C compiler for the CPU job"
    cli = have_cli()
    if not cli:
        notes["fastjob parallel"] = "skipped: fastjob.cli is not importable in this checkout yet"
    contenders = _contenders(cli)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    times: dict[str, list[float]] = {}
    env = impl_env("native")
    with tempfile.TemporaryDirectory(prefix="fj-makespan-") as tmp:
        files = {}
        for kind, (prog, arg) in kinds.items():
            cmd = f"{prog} {arg}"
            cmds = Path(tmp, f"{len(files)}.cmds")
            cmds.write_text("".join(f"{cmd}\n" for _ in range(n_jobs)))
            Path(f"{cmds}.args").write_text("".join(f"{arg}\n" for _ in range(n_jobs)))
            mk = Path(tmp, f"{len(files)}.mk")
            targets = " ".join(f"j{i}" for i in range(n_jobs))
            body = "".join(f"j{i}:\n\t@{cmd}\n" for i in range(n_jobs))
            mk.write_text(f".PHONY: all {targets}\nall: {targets}\n{body}")
            files[kind] = (cmds, mk)
        for rep in range(reps):
            for n in levels:
                for kind, (cmds, mk) in files.items():
                    names = list(contenders)
                    k = (rep + n) % len(names)
                    for name in names[k:] + names[:k]:
                        argv = contenders[name](n, cmds, mk, kinds[kind][0])
                        feed = f"{cmds}.args" if name.startswith("xargs") else cmds
                        with open(feed, "rb") as stdin:
                            t0 = time.perf_counter()
                            r = subprocess.run(argv, stdin=stdin, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.PIPE, env=env, timeout=600, cwd=tmp)  # fmt: skip
                            dt = time.perf_counter() - t0
                        if r.returncode != 0:
                            raise RuntimeError(f"{name} -j{n} {kind} failed: {r.stderr.decode()[-1000:]}")
                        times.setdefault(f"{kind}/{n}/{name}", []).append(dt)
            log(f"  makespan rep {rep + 1}/{reps} done")
    ideal = {}
    for kind in kinds:
        for n in levels:
            par = min(n, cores) if kind.startswith("burn") else n
            ideal[f"{kind}/{n}"] = n_jobs * job_ms / 1000 / par
    return {
        "params": {"jobs": n_jobs, "levels": levels, "reps": reps, "job_ms": job_ms, "cores": cores},
        "seconds": {k: summary(v) for k, v in times.items()},
        "ideal_seconds": ideal,
        "notes": notes,
    }


def table(res: dict[str, Any]) -> str:
    s = res["seconds"]
    rows = []
    names = sorted({k.split("/", 2)[2] for k in s}, key=lambda x: (x != "make -jN", x))
    for key, ideal in res["ideal_seconds"].items():
        kind, n = key.split("/")
        make = s.get(f"{key}/make -jN")
        row = [kind, f"-j{n}"]
        for name in names:
            m = s.get(f"{key}/{name}")
            if m is None:
                row.append("n/a")
                continue
            ratio = f" ({m['median'] / make['median']:.2f}x)" if make else ""
            spread = f", {m['min']:.2f}–{m['max']:.2f}" if m["n"] > 1 else ""
            row.append(f"{m['median']:.2f} s{ratio}{spread}")
        row.append(f"{ideal:.2f} s" + (f" ({ideal / make['median']:.2f}x)" if make else ""))
        rows.append(row)
    return md_table(["jobs", "-j"] + names + ["ideal"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    if a.worker:
        _jobgroup_worker(int(a.worker[0]), a.worker[1])
        return
    res = {"machine": machine(), "makespan": measure(a.quick, lambda m: print(m, file=sys.stderr), a.reps)}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    print(table(res["makespan"]))
    for k, v in res["makespan"]["notes"].items():
        print(f"- {k}: {v}")


if __name__ == "__main__":
    main()
