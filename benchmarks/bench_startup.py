"""Start-up: how long the CLI and ``import fastjob`` take, beside make.

Contenders, run in alternated rounds (every round runs each once, in an
order that rotates from round to round, so that load from other processes
on the machine falls on all of them alike):

* ``python -c pass``: the interpreter's own start-up, the floor;
* ``python -c "import fastjob"``;
* ``python -c "import re"``: the floor of every console script, since the
  wrapper pip writes (``bin/fastjob``) imports re before fastjob;
* ``fastjob --version``: the console script, no work;
* ``fastjob run -j2 -- true``: a new pool of 2, its control socket, the
  command spawned and reaped, the pool accounted for and closed;
* ``make -f /dev/null``: GNU make starting and finding nothing to do.

Each process is started with ``os.posix_spawn`` and reaped with
``os.wait4``: the wall time from spawn to reap, and the child's CPU (user +
system) from its rusage.  Reported: medians (and quartiles) per contender,
ratios of medians, and the median over rounds of the paired difference
``import fastjob`` minus ``python -c pass`` (the issue's measure).

The package is byte-compiled first (``python -m compileall -q``): the
environment of these sessions sets PYTHONDONTWRITEBYTECODE=1, under which an
import would compile every module from source on every run and this would
measure the compiler, not the start-up a user sees (pip writes the .pyc
files at install time).

    python benchmarks/bench_startup.py [--rounds N] [--impl native|pure] [--json FILE]
                                       [--baseline OTHER/src]

``--baseline`` adds ``fastjob --version`` and ``fastjob run -j2 -- true``
of another checkout (its ``src`` directory, put first on PYTHONPATH and
started through a copy of pip's console-script wrapper) to the same
alternated rounds: before/after figures from one run.  E.g.::

    mkdir /tmp/base && git archive BASE_COMMIT src | tar -x -C /tmp/base
    cp src/_fastjob*.so /tmp/base/src/     # the same native core
    python benchmarks/bench_startup.py --baseline /tmp/base/src
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import PY, impl_env, machine, md_table, summary

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def fastjob_script() -> str:
    """The console script beside this interpreter (the venv's), else on PATH."""
    beside = Path(PY).parent / "fastjob"
    if beside.exists():
        return str(beside)
    found = shutil.which("fastjob")
    if found is None:
        sys.exit("bench_startup: no fastjob console script (pip install -e .)")
    return found


#: the console script pip writes (bin/fastjob), run with any checkout's fastjob
WRAPPER = """\
import re
import sys
from fastjob.cli import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""


def contenders(baseline: Path | None = None) -> list[tuple[str, list[str]]]:
    fj = fastjob_script()
    out = [
        ("python -c pass", [PY, "-c", "pass"]),
        ('python -c "import fastjob"', [PY, "-c", "import fastjob"]),
        # the floor of any console script pip writes: it imports re first
        ('python -c "import re"', [PY, "-c", "import re"]),
        ("fastjob --version", [fj, "--version"]),
        ("fastjob run -j2 -- true", [fj, "run", "-j2", "--", "true"]),
    ]
    if baseline is not None:
        wrapper = baseline / "_bench_fastjob_wrapper.py"
        wrapper.write_text(WRAPPER)
        out.append(("baseline: fastjob --version", [PY, str(wrapper), "--version"]))
        out.append(("baseline: fastjob run -j2 -- true", [PY, str(wrapper), "run", "-j2", "--", "true"]))
    make = shutil.which("make")
    if make is not None:
        out.append(("make -f /dev/null", [make, "-f", "/dev/null"]))
    return out


def once(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, child CPU seconds, exit status) of one run."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        actions = [
            (os.POSIX_SPAWN_DUP2, devnull, 0),
            (os.POSIX_SPAWN_DUP2, devnull, 1),
            (os.POSIX_SPAWN_DUP2, devnull, 2),
        ]
        t0 = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - t0
    finally:
        os.close(devnull)
    return wall, usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status)


def compile_package(src: Path) -> None:
    subprocess.run([PY, "-m", "compileall", "-q", str(src / "fastjob")], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--impl", choices=("native", "pure"), default="native")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--baseline", metavar="SRC", type=Path, help="another checkout's src directory")
    args = ap.parse_args()

    compile_package(SRC)
    if args.baseline is not None:
        compile_package(args.baseline)
    env = impl_env(args.impl)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    env.pop("FASTJOB_CONTROL", None)
    cs = contenders(args.baseline)
    base_env = dict(env)
    if args.baseline is not None:
        base_env["PYTHONPATH"] = str(args.baseline.resolve())
    wall: dict[str, list[float]] = {name: [] for name, _ in cs}
    cpu: dict[str, list[float]] = {name: [] for name, _ in cs}
    def env_of(name: str) -> dict[str, str]:
        return base_env if name.startswith("baseline: ") else env

    for name, argv in cs:  # warm-up: page cache, the .pyc files
        once(argv, env_of(name))
    expected = {"make -f /dev/null": 2}  # make: "No targets.  Stop."
    for r in range(args.rounds):
        k = r % len(cs)
        for name, argv in cs[k:] + cs[:k]:
            w, c, status = once(argv, env_of(name))
            if status != expected.get(name, 0):
                sys.exit(f"bench_startup: {name!r} exited {status}")
            wall[name].append(w * 1e3)
            cpu[name].append(c * 1e3)

    base = "python -c pass"
    med = {name: summary(xs)["median"] for name, xs in wall.items()}
    make_med = med.get("make -f /dev/null")
    rows = []
    for name, _ in cs:
        s = summary(wall[name])
        rows.append([
            f"`{name}`",
            f"{s['median']:.1f}",
            f"{s['q1']:.1f}-{s['q3']:.1f}",
            f"{summary(cpu[name])['median']:.1f}",
            f"{s['median'] / med[base]:.2f}x",
            f"{s['median'] / make_med:.1f}x" if make_med else "-",
        ])
    diffs = [a - b for a, b in zip(wall['python -c "import fastjob"'], wall[base])]
    cpu_diffs = [a - b for a, b in zip(cpu['python -c "import fastjob"'], cpu[base])]
    print(f"fastjob start-up, {args.rounds} alternated rounds, {args.impl} core, medians")
    print(md_table(
        ["command", "wall ms", "wall q1-q3", "CPU ms", "/ python -c pass", "/ make"], rows
    ))
    print()
    if args.baseline is not None:
        for what in ("fastjob --version", "fastjob run -j2 -- true"):
            print(f"{what}: this checkout / baseline = {med[what] / med['baseline: ' + what]:.2f}x")
    print(
        f"import fastjob minus python -c pass (paired, per round): "
        f"wall {summary(diffs)['median']:.1f} ms, CPU {summary(cpu_diffs)['median']:.1f} ms"
    )
    if args.json:
        data: dict[str, Any] = {
            "machine": machine(),
            "rounds": args.rounds,
            "impl": args.impl,
            "wall_ms": {name: summary(xs) for name, xs in wall.items()},
            "cpu_ms": {name: summary(xs) for name, xs in cpu.items()},
            "import_minus_pass_ms": {"wall": summary(diffs), "cpu": summary(cpu_diffs)},
            "baseline": str(args.baseline) if args.baseline else None,
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
