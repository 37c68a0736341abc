"""Four levels deep: fastjob Server -> make -> fastjob client -> make.

Every level runs measured jobs; the whole tree must stay within the pool's
N, and the counts must balance at every level: the inner make and the top
make exit cleanly without token complaints, the fastjob client in the middle
holds nothing at the end, and the server gets every token back.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anyio
import pytest

import fastjob

from .conftest import (
    PY,
    SCRIPTS,
    OverlapLog,
    assert_no_token_complaint,
    clean_env,
    job_cmd,
    make43,
    make44,
    q,
    write_makefile,
)

pytestmark = pytest.mark.interop

N = 3


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_server_make_client_make(tmp_path: Path, overlap_log: OverlapLog, style: str) -> None:
    # pipe: make 4.3 on top, make 4.4.1 inside (two versions in one tree);
    # fifo: make 4.4.1 at both levels (4.3 has no FIFO support).
    top_make = make43() if style == "pipe" else make44()
    inner_make = make44()
    inner = tmp_path / "inner"
    inner.mkdir()
    write_makefile(
        inner / "Makefile",
        {f"i{k}": job_cmd(overlap_log.path, f"inner-{k}") for k in range(4)},
        [f"i{k}" for k in range(4)],
    )
    level = (
        f"+{q(PY)} {q(SCRIPTS / 'level.py')} {q(overlap_log)} {q(tmp_path / 'mid.json')} "
        f"0.15 {q(inner_make)} {q(inner)}"
    )
    rules = {"mid": level, "t0": job_cmd(overlap_log.path, "top-0"), "t1": job_cmd(overlap_log.path, "top-1")}
    mk = write_makefile(tmp_path / "Makefile", rules, ["mid", "t0", "t1"])

    with fastjob.Server(N, style=style) as server:

        async def main() -> subprocess.CompletedProcess[bytes]:
            with anyio.fail_after(90):
                return await fastjob.run_process(
                    [top_make, "-s", "-f", str(mk)],
                    client=server.client,
                    check=False,
                    cwd=tmp_path,
                    env=clean_env(),
                )

        done = anyio.run(main)
        out = (done.stdout + done.stderr).decode(errors="replace")
        assert done.returncode == 0, out
        assert_no_token_complaint(out)  # level 1: the top make
        mid = json.loads((tmp_path / "mid.json").read_text())
        assert mid["style"] == style  # level 2: the fastjob client joined the same pool
        assert mid["make_rc"] == 0, mid
        assert_no_token_complaint(mid["make_stderr"])  # level 3: the inner make
        assert mid["held_at_end"] == 0
        assert mid["acquired"] >= 3  # its two jobs and the token the inner make ran on
        # The whole tree, all levels together.
        assert overlap_log.starts() == 2 + 2 + 4
        assert overlap_log.starts("inner-") == 4 and overlap_log.starts("mid") == 2
        peak = overlap_log.max_overlap()
        assert 2 <= peak <= N, overlap_log.summary()
        assert server.available() == N - 1  # level 0: every token is back
