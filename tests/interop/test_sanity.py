"""The overlap measurement can fail: without a jobserver limiting them, the
same workloads the other tests run do exceed N, and the log shows it."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import OverlapLog, job_cmd, make43, ninja_bin, run, write_makefile

pytestmark = pytest.mark.interop

N = 3  # the pool size the other tests use
JOBS = 8


def test_make_without_jobserver_exceeds_n(tmp_path: Path, overlap_log: OverlapLog) -> None:
    make = make43()
    rules = {f"m{i}": job_cmd(overlap_log.path, f"m{i}", 0.4) for i in range(JOBS)}
    mk = write_makefile(tmp_path / "Makefile", rules, list(rules))
    done = run([make, "-s", "-j", str(JOBS), "-f", str(mk)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert overlap_log.starts() == JOBS
    assert overlap_log.max_overlap() > N, overlap_log.summary()


def test_ninja_without_jobserver_exceeds_n(tmp_path: Path, overlap_log: OverlapLog) -> None:
    nj = ninja_bin()
    lines = ["rule job", "  command = $cmd"]
    for i in range(JOBS):
        lines += [f"build o{i}: job", f"  cmd = {job_cmd(overlap_log.path, f'n{i}', 0.4)}"]
    (tmp_path / "build.ninja").write_text("\n".join(lines) + "\n")
    done = run([nj, "-j", str(JOBS)], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert overlap_log.max_overlap() > N, overlap_log.summary()
