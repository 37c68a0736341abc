"""``JobGroup`` + ``fastjob.run_process`` against ``make -jN`` running the same
jobs (a generated Makefile), side by side in one run, alternated rounds.

Measures (medians of the rounds, as ratios to make):

A second fastjob contender, plain anyio tasks bounded by a semaphore each
calling run_process, shows run_process's own cost apart from JobGroup's.  A
third, not fastjob at all, is the floor for a Python scheduler on asyncio:
posix_spawn and a pidfd per child driven by loop callbacks alone (no tokens,
no tasks, no capture).

- **scheduler CPU per job**: the CPU time of the scheduling process itself
  (not of its children), per ``true`` job, at -j2 and -j4.  Taken as the
  slope between a run of N jobs and one of N/10, so start-up, imports and
  Makefile parsing cancel out.  make's own CPU is read from
  ``/proc/<make>/stat`` by its last recipe; the worker's from getrusage.
- **makespan** of 3,000 ``true`` at -j4 and of 1,000 ``sleep 0.01`` at -j4:
  the wall time of the whole command, interpreter start-up included.

    python benchmarks/bench_run_process.py [--rounds 3] [--jobs 3000] [--quick]
        [--backend asyncio|uvloop|trio] [--json FILE]

Linux only (make's CPU comes from /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PY = sys.executable
TARGETS = {"cpu": 2.0, "true": 1.3, "sleep": 1.03}


def _worker(jobs: int, n: int, argv: list[str], backend: str, how: str) -> None:
    """n copies of argv at -j jobs through JobGroup + run_process (``how`` =
    "group"), or through plain tasks bounded by an anyio.Semaphore, each
    calling run_process (``how`` = "tasks": run_process's own cost without
    JobGroup's token waits); prints this process's own CPU seconds (user +
    system) when done."""
    if how == "floor":
        _floor(jobs, n, argv)
        return
    import functools

    import anyio

    import fastjob

    async def main() -> None:
        with fastjob.Server(jobs=jobs) as server:
            run = functools.partial(fastjob.run_process, client=server.client)
            if how == "group":
                async with fastjob.JobGroup(server.client) as group:
                    for _ in range(n):
                        await group.spawn(run, argv)
                return
            sem = anyio.Semaphore(jobs)

            async def job() -> None:
                try:
                    await run(argv)
                finally:
                    sem.release()

            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    await sem.acquire()
                    tg.start_soon(job)

    if backend == "uvloop":
        anyio.run(main, backend_options={"use_uvloop": True})
    else:
        anyio.run(main, backend=backend)
    r = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"cpu": r.ru_utime + r.ru_stime}))


def _floor(jobs: int, n: int, argv: list[str]) -> None:
    """The floor for any Python scheduler on asyncio: n copies of argv at -j
    jobs from loop callbacks alone (posix_spawn, a pidfd per child with
    add_reader, waitpid), no tokens, no tasks, no capture; prints this
    process's own CPU seconds like _worker."""
    import asyncio
    import shutil
    import signal

    env = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
    path = shutil.which(argv[0]) or argv[0]
    sigdef = (signal.SIGPIPE, signal.SIGXFSZ)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        left = [n, 0]  # to start, running

        def start() -> None:
            while left[1] < jobs and left[0]:
                left[0] -= 1
                left[1] += 1
                pid = os.posix_spawn(path, argv, env, setpgroup=0, setsigdef=sigdef)
                fd = os.pidfd_open(pid)
                loop.add_reader(fd, exited, fd, pid)
            if not left[0] and not left[1]:
                done.set_result(None)

        def exited(fd: int, pid: int) -> None:
            loop.remove_reader(fd)
            os.close(fd)
            os.waitpid(pid, 0)
            left[1] -= 1
            start()

        start()
        await done

    asyncio.run(main())
    r = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"cpu": r.ru_utime + r.ru_stime}))


def _makefile(d: Path, n: int, cmd: str) -> Path:
    """n jobs of cmd, then a last recipe that copies make's /proc stat."""
    names = " ".join(f"j{i}" for i in range(n))
    body = "".join(f"j{i}:\n\t@{cmd}\n" for i in range(n))
    mk = d / f"{n}-{cmd.replace(' ', '_')}.mk"
    stat = d / "make.stat"
    mk.write_text(
        f".PHONY: all last {names}\nall: last\nlast: {names}\n\t@cat /proc/$$PPID/stat > {stat}\n{body}"
    )
    return mk


def _make_cpu(stat: Path) -> float:
    text = stat.read_bytes()
    fields = text[text.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=900)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"{argv[:4]} failed: {done.stderr.decode()[-2000:]}")
    return wall, done.stdout.decode()


def measure(rounds: int, n: int, backend: str, log: Any = print) -> dict[str, Any]:
    n0 = max(n // 10, 1)
    env = dict(os.environ)
    for var in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS"):
        env.pop(var, None)
    cpu: dict[str, list[float]] = {}
    wall: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="fj-bench-rp-") as tmp:
        d = Path(tmp)
        stat = d / "make.stat"
        mks = {(k, "true"): _makefile(d, k, "true") for k in (n, n0)}
        mks[(1000, "sleep")] = _makefile(d, 1000, "sleep 0.01")

        def make(jobs: int, k: int, kind: str) -> tuple[float, float]:
            w, _ = _run(["make", f"-j{jobs}", "-s", "-f", str(mks[(k, kind)])], env)
            return w, _make_cpu(stat)

        def worker(how: str) -> Any:
            def run(jobs: int, k: int, kind: str) -> tuple[float, float]:
                argv = ["true"] if kind == "true" else ["sleep", "0.01"]
                w, out = _run([PY, __file__, "--worker", str(jobs), str(k), backend, how, *argv], env)
                return w, float(json.loads(out.splitlines()[-1])["cpu"])

            return run

        contenders = {
            "make -jN": make,
            "JobGroup + run_process": worker("group"),
            "tasks + run_process": worker("tasks"),
            "floor: asyncio callbacks": worker("floor"),
        }
        for r in range(rounds):
            k = r % len(contenders)
            names = list(contenders)[k:] + list(contenders)[:k]
            for jobs in (2, 4):
                for name in names:
                    w1, c1 = contenders[name](jobs, n, "true")
                    _, c0 = contenders[name](jobs, n0, "true")
                    cpu.setdefault(f"{name}/-j{jobs}", []).append((c1 - c0) / (n - n0))
                    wall.setdefault(f"{name}/true/-j{jobs}", []).append(w1)
            for name in names:
                w, _ = contenders[name](4, 1000, "sleep")
                wall.setdefault(f"{name}/sleep/-j4", []).append(w)
            log(f"  round {r + 1}/{rounds} done")
    med = {k: statistics.median(v) for k, v in {**cpu, **wall}.items()}
    rows = []
    for name in ("JobGroup + run_process", "tasks + run_process", "floor: asyncio callbacks"):
        for jobs in (2, 4):
            a, b = med[f"{name}/-j{jobs}"], med[f"make -jN/-j{jobs}"]
            rows.append((name, f"scheduler CPU per job, `true`, -j{jobs}", f"{a * 1e6:.0f} µs", f"{b * 1e6:.0f} µs", a / b, TARGETS["cpu"]))
        a, b = med[f"{name}/true/-j4"], med["make -jN/true/-j4"]
        rows.append((name, f"makespan, {n:,} `true`, -j4", f"{a:.2f} s", f"{b:.2f} s", a / b, TARGETS["true"]))
        a, b = med[f"{name}/sleep/-j4"], med["make -jN/sleep/-j4"]
        rows.append((name, "makespan, 1,000 `sleep 0.01`, -j4", f"{a:.2f} s", f"{b:.2f} s", a / b, TARGETS["sleep"]))
    return {
        "params": {"rounds": rounds, "jobs": n, "slope_from": n0, "backend": backend,
                   "cores": os.cpu_count(), "load_average": os.getloadavg()},
        "samples": {"cpu_per_job_s": cpu, "wall_s": wall},
        "rows": [{"contender": c, "measure": m, "fastjob": f, "make": k, "ratio": r, "target": t}
                 for c, m, f, k, r, t in rows],
    }  # fmt: skip


def table(res: dict[str, Any]) -> str:
    out = ["| contender | measure | it | make -jN | ratio | target |", "| --- | --- | --- | --- | --- | --- |"]
    for row in res["rows"]:
        if row["contender"].startswith("floor"):
            target = "(reference: not fastjob)"
        else:
            ok = "met" if row["ratio"] <= row["target"] else "missed"
            target = f"<= {row['target']}x ({ok})"
        out.append(
            f"| {row['contender']} | {row['measure']} | {row['fastjob']} | {row['make']} | "
            f"{row['ratio']:.2f}x | {target} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=3000)
    ap.add_argument("--backend", default="asyncio", choices=["asyncio", "uvloop", "trio"])
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--quick", action="store_true", help="1 round of 1,000 jobs (a smoke run)")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.jobs = 1, 1000
    if a.worker:
        jobs, n, backend, how, *argv = a.worker
        _worker(int(jobs), int(n), argv, backend, how)
        return
    res = measure(a.rounds, a.jobs, a.backend, lambda m: print(m, file=sys.stderr))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    print(f"backend {a.backend}, {a.rounds} alternated rounds, medians; load average {res['params']['load_average']}")
    print(table(res))


if __name__ == "__main__":
    main()
