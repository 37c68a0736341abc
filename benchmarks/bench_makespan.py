"""Makespan of real jobs: many ~10 ms commands at -j2/-j4/-j8 through
``fastjob parallel``, ``JobGroup`` + ``run_process``, ``make -jN`` (a
generated Makefile) and ``xargs -P N``, next to the ideal.

Two kinds of job: ``sleep 0.01`` (waiting, so more jobs than cores help) and
``burn 10`` (a C program that burns 10 ms of CPU time, standing in for a tiny
compile; the ideal for it is bounded by the cores).  Every contender is timed
as a whole command from the outside, so interpreter start-up counts.

``--targets`` measures the CLI targets of issue 15 instead, each as a ratio
of medians over alternated rounds (contenders take turns inside every
round, in a rotating order):

- makespan of 3,000 ``true`` at -j4: fastjob parallel / make (<= 1.2x), with
  xargs -P4 and GNU parallel beside them;
- makespan of 1,000 ``sleep 0.01`` at -j4: fastjob parallel / make (<= 1.03x);
- makespan of 1,000 ``true`` at -j4: fastjob parallel / GNU parallel (<= 0.5x);
- wall time of ``fastjob run -- true`` (<= 25 ms) and its ratio to make
  running one ``true``;
- ``import fastjob`` minus ``python -c pass`` (<= 12 ms).

The package is byte-compiled first (``compileall``): a checkout run with
PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module at every
start, which an installed wheel never does.

    python benchmarks/bench_makespan.py [--quick] [--json FILE]
    python benchmarks/bench_makespan.py --targets [--quick] [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import compileall
import functools
import json
import os
import shutil
import statistics
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


# -- the issue-15 CLI targets --------------------------------------------------------
TARGETS = {
    "true3000": ("makespan, 3,000 `true` at -j4: fastjob parallel / make", "fastjob parallel", "make -j4", 1.2),
    "sleep1000": ("makespan, 1,000 `sleep 0.01` at -j4: fastjob parallel / make", "fastjob parallel", "make -j4", 1.03),
    "true1000": ("makespan, 1,000 `true` at -j4: fastjob parallel / GNU parallel", "fastjob parallel", "GNU parallel -j4", 0.5),
}


def _gnu_parallel() -> str | None:
    path = shutil.which("parallel")
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True)
    return path if "GNU parallel" in out.stdout else None


def _makefile(path: Path, command: str, n: int) -> None:
    targets = " ".join(f"j{i}" for i in range(n))
    body = "".join(f"j{i}:\n\t@{command}\n" for i in range(n))
    path.write_text(f".PHONY: all {targets}\nall: {targets}\n{body}")


def _time(argv: list[str], stdin: Path | None, env: dict[str, str], cwd: str) -> float:
    with open(stdin if stdin is not None else os.devnull, "rb") as f:
        t0 = time.perf_counter()
        r = subprocess.run(argv, stdin=f, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           env=env, cwd=cwd, timeout=900)  # fmt: skip
        dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed ({r.returncode}): {r.stderr.decode()[-1000:]}")
    return dt


def measure_targets(quick: bool = False, rounds: int | None = None,
                    log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Ratios of medians over alternated rounds for the issue-15 targets."""
    import fastjob

    compileall.compile_dir(str(Path(fastjob.__file__).parent), quiet=1)
    rounds = rounds or (3 if quick else 7)
    env = impl_env("native")
    gnu = _gnu_parallel()
    fj = [PY, "-m", "fastjob"]
    script = Path(PY).parent / "fastjob"
    if script.exists():
        fj = [str(script)]  # the console script, as a user runs it
    notes: dict[str, str] = {}
    if gnu is None:
        notes["GNU parallel"] = "skipped: GNU parallel is not installed"
    times: dict[str, list[float]] = {}
    n_true = 600 if quick else 3000
    n_sleep = 300 if quick else 1000
    n_gnu = 300 if quick else 1000
    with tempfile.TemporaryDirectory(prefix="fj-targets-") as tmp:
        t = Path(tmp)
        for name, cmd, n in (("true3000", "true", n_true), ("sleep1000", "sleep 0.01", n_sleep),
                             ("true1000", "true", n_gnu)):  # fmt: skip
            (t / f"{name}.cmds").write_text(f"{cmd}\n" * n)
            (t / f"{name}.args").write_text("0.01\n" * n if cmd.startswith("sleep") else "x\n" * n)
            _makefile(t / f"{name}.mk", cmd, n)
        _makefile(t / "one.mk", "true", 1)
        groups: dict[str, dict[str, tuple[list[str], Path | None]]] = {
            "true3000": {
                "make -j4": (["make", "-j4", "-s", "-f", "true3000.mk"], None),
                "fastjob parallel": ([*fj, "parallel", "-j4"], t / "true3000.cmds"),
                "xargs -P4": (["xargs", "-P4", "-n1", "true"], t / "true3000.args"),
            },
            "sleep1000": {
                "make -j4": (["make", "-j4", "-s", "-f", "sleep1000.mk"], None),
                "fastjob parallel": ([*fj, "parallel", "-j4"], t / "sleep1000.cmds"),
                "xargs -P4": (["xargs", "-P4", "-n1", "sleep"], t / "sleep1000.args"),
            },
            "true1000": {
                "fastjob parallel": ([*fj, "parallel", "-j4"], t / "true1000.cmds"),
            },
            "run": {
                "fastjob run -- true": ([*fj, "run", "--", "true"], None),
                "make (one true)": (["make", "-s", "-f", "one.mk"], None),
            },
            "import": {
                "import fastjob": ([PY, "-c", "import fastjob"], None),
                "python -c pass": ([PY, "-c", "pass"], None),
            },
        }
        if gnu is not None:
            groups["true3000"]["GNU parallel -j4"] = ([gnu, "--will-cite", "-j4"], t / "true3000.cmds")
            groups["true1000"]["GNU parallel -j4"] = ([gnu, "--will-cite", "-j4"], t / "true1000.cmds")
        for rnd in range(rounds):
            for group, contenders in groups.items():
                names = list(contenders)
                k = rnd % len(names)
                # start-up measures are short: several samples per round
                reps = 5 if group in ("run", "import") else 1
                for _ in range(reps):
                    for name in names[k:] + names[:k]:
                        argv, stdin = contenders[name]
                        times.setdefault(f"{group}/{name}", []).append(_time(argv, stdin, env, tmp))
            log(f"  targets round {rnd + 1}/{rounds} done")
    med = {k: statistics.median(v) for k, v in times.items()}
    results: list[dict[str, Any]] = []
    for key, (label, ours, theirs, target) in TARGETS.items():
        a, b = med.get(f"{key}/{ours}"), med.get(f"{key}/{theirs}")
        if a is None or b is None:
            continue
        results.append({"measure": label, "ratio": a / b, "target": f"<= {target}x",
                        "met": a / b <= target, "ours_s": a, "theirs_s": b})  # fmt: skip
    run_ms = med["run/fastjob run -- true"] * 1000
    make_ms = med["run/make (one true)"] * 1000
    results.append({"measure": "`fastjob run -- true`, wall; ratio to make", "value_ms": run_ms,
                    "ratio": run_ms / make_ms, "target": "<= 25 ms", "met": run_ms <= 25})  # fmt: skip
    imp_ms = (med["import/import fastjob"] - med["import/python -c pass"]) * 1000
    results.append({"measure": "`import fastjob` minus `python -c pass`", "value_ms": imp_ms,
                    "target": "<= 12 ms", "met": imp_ms <= 12})  # fmt: skip
    return {
        "params": {"rounds": rounds, "quick": quick, "jobs": {"true": n_true, "sleep": n_sleep, "gnu": n_gnu}},
        "seconds": {k: summary(v) for k, v in times.items()},
        "results": results,
        "notes": notes,
    }


def targets_table(res: dict[str, Any]) -> str:
    rows = []
    for r in res["results"]:
        if "value_ms" in r:
            value = f"{r['value_ms']:.1f} ms" + (f" ({r['ratio']:.1f}x make)" if "ratio" in r else "")
        else:
            value = f"{r['ratio']:.2f}x ({r['ours_s']:.2f} s / {r['theirs_s']:.2f} s)"
        rows.append([r["measure"], value, r["target"], "yes" if r["met"] else "NO"])
    return md_table(["measure", "measured (median of alternated rounds)", "target", "met"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--targets", action="store_true", help="measure the issue-15 CLI targets")
    ap.add_argument("--rounds", type=int, help="rounds for --targets (default 7, 3 with --quick)")
    a = ap.parse_args()
    if a.worker:
        _jobgroup_worker(int(a.worker[0]), a.worker[1])
        return
    if a.targets:
        tres = {"machine": machine(), "targets": measure_targets(a.quick, a.rounds, lambda m: print(m, file=sys.stderr))}
        if a.json:
            with open(a.json, "w") as f:
                json.dump(tres, f, indent=2)
        print(targets_table(tres["targets"]))
        for k, v in tres["targets"]["notes"].items():
            print(f"- {k}: {v}")
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
