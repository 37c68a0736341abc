"""fastjob as the server: GNU make 4.3 / 4.4.1 and ninja run as children of
a ``fastjob.Server`` pool and must stay within it and give every token back."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

import anyio
import pytest

import fastjob

from .conftest import (
    OverlapLog,
    assert_no_token_complaint,
    clean_env,
    job_cmd,
    make43,
    make44,
    ninja_bin,
    write_makefile,
)

pytestmark = pytest.mark.interop

N = 3
JOBS = 8


def _launch(server: fastjob.Server, cmd: list[str], how: str, cwd: Path) -> tuple[int, str]:
    """Start cmd in the pool: through fastjob.run_process (holds a token for
    the child) or through Server.env() + pass_fds with subprocess."""
    if how == "run_process":

        async def main() -> subprocess.CompletedProcess[bytes]:
            with anyio.fail_after(90):
                return await fastjob.run_process(
                    cmd, client=server.client, check=False, cwd=cwd, env=clean_env()
                )

        done = anyio.run(main)
        return done.returncode, (done.stdout + done.stderr).decode(errors="replace")
    plain = subprocess.run(
        cmd,
        env=server.env(clean_env()),
        pass_fds=server.pass_fds,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
    )
    return plain.returncode, plain.stdout + plain.stderr


def _check_pool(server: fastjob.Server, log: OverlapLog) -> None:
    peak = log.max_overlap()
    assert log.starts() == JOBS
    assert 2 <= peak <= N, log.summary()
    assert server.available() == N - 1  # every token is back


MAKE_CASES = [
    pytest.param(make43, "pipe", "run_process", id="make4.3-pipe-run_process"),
    pytest.param(make43, "pipe", "env+pass_fds", id="make4.3-pipe-env"),
    pytest.param(make44, "pipe", "run_process", id="make4.4.1-pipe-run_process"),
    pytest.param(make44, "fifo", "run_process", id="make4.4.1-fifo-run_process"),
    pytest.param(make44, "fifo", "env+pass_fds", id="make4.4.1-fifo-env"),
]


@pytest.mark.parametrize(("locate", "style", "how"), MAKE_CASES)
def test_make_child_stays_in_pool(
    tmp_path: Path, overlap_log: OverlapLog, locate: Callable[[], str], style: str, how: str
) -> None:
    make = locate()
    rules = {f"m{i}": job_cmd(overlap_log.path, f"m{i}") for i in range(JOBS)}
    mk = write_makefile(tmp_path / "Makefile", rules, list(rules))
    with fastjob.Server(N, style=style) as server:
        # No -j on the command line: the child make takes its width from the pool.
        rc, out = _launch(server, [make, "-s", "-f", str(mk)], how, tmp_path)
        assert rc == 0, out
        assert_no_token_complaint(out)
        _check_pool(server, overlap_log)


@pytest.mark.parametrize("how", ["run_process", "env+pass_fds"])
@pytest.mark.parametrize("style", ["fifo", "pipe"])
def test_ninja_child_stays_in_pool(
    tmp_path: Path, overlap_log: OverlapLog, style: str, how: str
) -> None:
    nj = ninja_bin()
    lines = ["rule job", "  command = $cmd"]
    for i in range(JOBS):
        lines += [f"build o{i}: job", f"  cmd = {job_cmd(overlap_log.path, f'n{i}')}"]
    (tmp_path / "build.ninja").write_text("\n".join(lines) + "\n")
    with fastjob.Server(N, style=style) as server:
        # No -j: ninja's own default on this machine would be cpu_count + 2.
        rc, out = _launch(server, [nj], how, tmp_path)
        assert rc == 0, out
        assert "Jobserver mode detected" in out, out  # ninja really joined
        _check_pool(server, overlap_log)
