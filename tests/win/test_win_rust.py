"""The Rust `jobserver` crate (0.1.24, what cargo and rustc use) and fastjob
on one Windows semaphore pool, in both directions.  The peer is
tests/win/rust_peer.rs, cross-built by scripts/test_windows.sh and named in
FASTJOB_WIN_RUST_PEER.  Overlap is measured from start and end stamps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fastjob

from .conftest import JOB_PY, JOB_SECONDS, max_overlap, missing, read_stamps, windows_only

pytestmark = windows_only
TIMEOUT = 120


def rust_peer() -> str:
    path = os.environ.get("FASTJOB_WIN_RUST_PEER", "")
    if not path or not Path(path).exists():
        missing("the Rust jobserver peer (FASTJOB_WIN_RUST_PEER; scripts/test_windows.sh builds it)")
    return path


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL")}


def test_rust_client_joins_a_fastjob_server(tmp_path: Path) -> None:
    """fastjob Server(3) -> the crate's Client::from_env: 8 jobs, 3 at once."""
    peer = rust_peer()
    with fastjob.Server(3) as server:
        done = subprocess.run([peer, "client", "8", str(tmp_path)], env=server.env(_clean_env()),
                              capture_output=True, text=True, timeout=TIMEOUT,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stdout + done.stderr
        assert server.available() == 2
    spans = read_stamps(tmp_path)
    assert len(spans) == 8 and max_overlap(spans) == 3


CHILD = """\
import sys, anyio, fastjob
out, n, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = fastjob.from_env(strict=True)
assert c.style == "sem", c.style
async def main():
    async with fastjob.JobGroup(c) as group:
        for i in range(n):
            group.start_soon(fastjob.run_process,
                             [sys.executable, "job.py", f"{out}/{i}.stamp", seconds])
anyio.run(main)
c.close()
"""


def test_fastjob_joins_a_rust_pool(tmp_path: Path) -> None:
    """The crate's Client::new(2) (as cargo -j makes it: 2 tokens, the
    child's own slot on top) -> a fastjob child in CARGO_MAKEFLAGS: 8 jobs,
    3 at once, and every token back in the Rust pool afterwards."""
    peer = rust_peer()
    (tmp_path / "job.py").write_text(JOB_PY)
    (tmp_path / "child.py").write_text(CHILD)
    done = subprocess.run([peer, "server", "2", sys.executable, "child.py", str(tmp_path), "8", JOB_SECONDS],
                          env=_clean_env(), cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rust server: 2 token(s) back" in done.stdout
    spans = read_stamps(tmp_path)
    assert len(spans) == 8 and max_overlap(spans) == 3
