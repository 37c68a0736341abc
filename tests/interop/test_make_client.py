"""fastjob as a client of GNU make 4.3 and 4.4.1.

A ``make -jN`` runs its own measured jobs beside ``+`` recipes that run a
fastjob client (sync threads, asyncio or trio); together they must never
have more than N jobs running, make must not complain about its tokens, and
the shared pipe's flags must be the same before and after.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest

from .conftest import (
    JOB_SECONDS,
    PY,
    SCRIPTS,
    OverlapLog,
    assert_no_token_complaint,
    job_cmd,
    make43,
    make44,
    q,
    run,
    write_makefile,
)

pytestmark = pytest.mark.interop

N = 3
SUBJOBS = 4  # per client: longer than make's own jobs, so clients must use pool tokens

#: (id, locate make, extra make args, expected pool style)
MAKES = [
    ("make4.3", make43, [], "pipe"),
    ("make4.4.1-fifo", make44, [], "fifo"),
    ("make4.4.1-pipe", make44, ["--jobserver-style=pipe"], "pipe"),
]


@pytest.mark.parametrize("mode", ["sync", "asyncio", "trio"])
@pytest.mark.parametrize(("locate", "args", "style"), [m[1:] for m in MAKES], ids=[m[0] for m in MAKES])
def test_client_in_recursive_recipe(
    tmp_path: Path,
    overlap_log: OverlapLog,
    locate: Callable[[], str],
    args: list[str],
    style: str,
    mode: str,
) -> None:
    make = locate()
    client = f"{q(PY)} {q(SCRIPTS / 'client_job.py')} {mode} {SUBJOBS} {q(overlap_log)}"
    rules = {
        # '+' marks the line recursive: make passes its jobserver fds to it.
        "c1": f"+{client} {q(tmp_path / 'c1.json')} {JOB_SECONDS}",
        "c2": f"+{client} {q(tmp_path / 'c2.json')} {JOB_SECONDS}",
    }
    rules.update({f"m{i}": job_cmd(overlap_log.path, f"m{i}") for i in range(4)})
    mk = write_makefile(tmp_path / "Makefile", rules, ["c1", "m0", "m1", "c2", "m2", "m3"])
    done = run([make, *args, "-s", f"-j{N}", "-f", str(mk)], cwd=tmp_path, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_no_token_complaint(done.stdout + done.stderr)

    reports = [json.loads((tmp_path / f"c{i}.json").read_text()) for i in (1, 2)]
    assert overlap_log.starts() == 4 + 2 * SUBJOBS
    peak = overlap_log.max_overlap()
    assert peak <= N, overlap_log.summary()
    assert peak >= 2, overlap_log.summary()  # the build did run in parallel
    # fastjob got tokens from make's pool, and gave every one back.
    assert sum(r["pool_tokens"] for r in reports) >= 1, reports
    for r in reports:
        assert r["style"] == style
        assert r["held_at_end"] == 0
        assert r["flags_before"] == r["flags_after"], r  # O_NONBLOCK etc. untouched
        if locate is make43:
            # make 4.3 makes the shared read end non-blocking itself.
            assert r["flags_before"][0] & os.O_NONBLOCK


def _plain_reports(tmp_path: Path, make: str, args: list[str]) -> dict[str, dict[str, Any]]:
    check = f"{q(PY)} {q(SCRIPTS / 'check_env.py')}"
    rules = {
        # no '+': make 4.3 closes its fds for this child; 4.4 says -2,-2.
        "closed": f"{check} {q(tmp_path / 'closed.json')}",
        # the same, with the fd numbers reused by unrelated files.
        "reused": f"{check} {q(tmp_path / 'reused.json')} 3</ 4</dev/null",
    }
    mk = write_makefile(tmp_path / "Makefile", rules, list(rules))
    done = run([make, *args, "-s", f"-j{N}", "-f", str(mk)], cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_no_token_complaint(done.stdout + done.stderr)
    return {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in rules}


def test_make43_plain_recipe_warns_with_the_fix(tmp_path: Path) -> None:
    reports = _plain_reports(tmp_path, make43(), [])
    for name, expected in (("closed", "BadFdError"), ("reused", "NotAPipeError")):
        r = reports[name]
        assert "--jobserver-auth=3,4" in r["MAKEFLAGS"]
        assert r["client"] is None
        assert len(r["warnings"]) == 1, r
        category, message = r["warnings"][0]
        assert category == "JobserverWarning"
        assert "failed to connect to jobserver from environment variable `MAKEFLAGS=" in message
        assert "'+'" in message  # names the fix
        assert r["strict"][0] == expected, r
        assert "'+'" in r["strict"][1]
    assert "Bad file descriptor" in reports["closed"]["warnings"][0][1]
    assert "not a pipe" in reports["reused"]["warnings"][0][1]


def test_make44_pipe_plain_recipe_minus_two_is_silent(tmp_path: Path) -> None:
    reports = _plain_reports(tmp_path, make44(), ["--jobserver-style=pipe"])
    for r in reports.values():
        assert "--jobserver-auth=-2,-2" in r["MAKEFLAGS"]
        assert r["client"] is None
        assert r["warnings"] == []
        assert r["strict"] is None  # disabled on purpose is not an error


def test_make44_fifo_plain_recipe_still_joins(tmp_path: Path) -> None:
    # make 4.4's FIFO is reached by path, so even a non-recursive recipe can join.
    reports = _plain_reports(tmp_path, make44(), [])
    for r in reports.values():
        assert "--jobserver-auth=fifo:" in r["MAKEFLAGS"]
        assert r["client"] == "fifo"
        assert r["warnings"] == []
        assert r["strict"] == ["Client", "fifo"]
