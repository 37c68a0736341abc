"""Never more jobs than slots, against real make (issue 12, items 1 and 2).

- A jobserver named but unusable (make 4.3: a recipe line without ``+``
  still sees ``--jobserver-auth=3,4`` but the fds are closed; make 4.4.1
  ``--jobserver-style=pipe``: ``-2,-2`` appended) means one job at a time,
  as make does: ``fastjob.connect()``, ``fastjob run`` and ``fastjob
  parallel`` without ``-j`` run serially and say why.  Measured: the peak
  overlap of the start/end stamps is 1.
- An explicit ``-j N`` / ``connect(jobs=N)`` keeps its meaning (a new pool)
  but warns when it leaves a usable jobserver.
- ``fastjob run -j8 -- make -j2``: fastjob clients in the inner make's
  recipes (and a ``+cargo build`` there) stay within the inner pool of 2,
  also when a stale CARGO_MAKEFLAGS naming the outer pool is inherited.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fastjob

from .conftest import (
    PY,
    SCRIPTS,
    OverlapLog,
    cargo_bin,
    clean_env,
    job_cmd,
    make43,
    make44,
    q,
    run,
    write_makefile,
)

try:
    from conftest import FASTJOB
except ImportError:  # pragma: no cover - another import mode
    FASTJOB = [PY, "-m", "fastjob"]

pytestmark = pytest.mark.interop

CONNECT_JOB = SCRIPTS / "connect_job.py"
FJ = " ".join(q(a) for a in FASTJOB)
HOLDERS = 4


def connect_line(log: OverlapLog, tag: str, jobs: int | None = None) -> str:
    extra = f" {jobs}" if jobs is not None else ""
    return f"{q(PY)} {q(CONNECT_JOB)} {q(log)} {HOLDERS} 0.2 {tag}{extra}"


MAKES = [
    pytest.param(lambda: (make43(), []), "closed fds", id="make4.3"),
    pytest.param(lambda: (make44(), ["--jobserver-style=pipe"]), "-2,-2", id="make4.4.1-pipe"),
]


@pytest.mark.parametrize(("make", "why"), MAKES)
def test_connect_in_a_recipe_without_plus_is_serial(
    tmp_path: Path, overlap_log: OverlapLog, make: object, why: str
) -> None:
    tool, args = make()  # type: ignore[operator]
    write_makefile(tmp_path / "Makefile", {"a": connect_line(overlap_log, "a")}, ["a"])
    done = run([tool, "-s", "-j4", *args, "-C", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    assert overlap_log.starts() == HOLDERS
    assert overlap_log.max_overlap() == 1, overlap_log.summary()  # one job at a time
    assert "pool style=pipe jobs=1" in done.stdout
    err = done.stderr
    assert "JobserverWarning" in err and "one job at a time" in err, err
    assert "'+'" in err  # the fix
    if why == "-2,-2":
        assert "disabled on purpose" in err
    else:
        assert "Bad file descriptor" in err


@pytest.mark.parametrize(("make", "why"), MAKES)
@pytest.mark.parametrize("command", ["run", "parallel"])
def test_fastjob_cli_in_a_recipe_without_plus_is_serial(
    tmp_path: Path, overlap_log: OverlapLog, make: object, why: str, command: str
) -> None:
    tool, args = make()  # type: ignore[operator]
    if command == "run":
        # the command under `fastjob run` is a fastjob client of the pool it got
        inner = f"{q(PY)} {q(SCRIPTS / 'client_job.py')} sync {HOLDERS} {q(overlap_log)} {q(tmp_path / 'r.json')} 0.2"
        line = f"{FJ} run -- {inner}"
    else:
        (tmp_path / "cmds.txt").write_text(
            "".join(job_cmd(overlap_log.path, f"p{i}", 0.2) + "\n" for i in range(HOLDERS))
        )
        line = f"{FJ} parallel < {q(tmp_path / 'cmds.txt')}"
    write_makefile(tmp_path / "Makefile", {"a": line}, ["a"])
    done = run([tool, "-s", "-j4", *args, "-C", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    assert overlap_log.starts() == HOLDERS
    assert overlap_log.max_overlap() == 1, overlap_log.summary()
    assert "one job at a time" in done.stderr and "fastjob doctor" in done.stderr, done.stderr


def test_make44_fifo_recipe_without_plus_joins_make(tmp_path: Path, overlap_log: OverlapLog) -> None:
    """make 4.4.1's FIFO reaches every recipe (no fds to close): connect()
    joins it, so the client runs in parallel but within make's -j."""
    write_makefile(tmp_path / "Makefile", {"a": connect_line(overlap_log, "a")}, ["a"])
    done = run([make44(), "-s", "-j3", "-C", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    assert "JobserverWarning" not in done.stderr
    assert "pool style=fifo jobs=3" in done.stdout
    assert 1 < overlap_log.max_overlap() <= 3, overlap_log.summary()


def test_make43_recipe_with_plus_joins(tmp_path: Path, overlap_log: OverlapLog) -> None:
    write_makefile(tmp_path / "Makefile", {"a": "+" + connect_line(overlap_log, "a")}, ["a"])
    done = run([make43(), "-s", "-j3", "-C", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    assert "JobserverWarning" not in done.stderr
    assert 1 < overlap_log.max_overlap() <= 3, overlap_log.summary()


# -- an explicit -j leaves a usable jobserver, with a warning ---------------------------------
def test_connect_jobs_forced_in_a_recursive_recipe(tmp_path: Path, overlap_log: OverlapLog) -> None:
    write_makefile(tmp_path / "Makefile", {"a": "+" + connect_line(overlap_log, "a", jobs=4)}, ["a"])
    done = run([make43(), "-s", "-j2", "-C", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    assert "forced" in done.stderr and "leaving the jobserver" in done.stderr, done.stderr
    assert "jobs=4" in done.stdout
    assert overlap_log.max_overlap() <= 4, overlap_log.summary()


def test_fastjob_run_j_forced_in_a_recursive_recipe(tmp_path: Path) -> None:
    write_makefile(tmp_path / "Makefile", {"a": f"+{FJ} run -j3 -- true"}, ["a"])
    done = run([make43(), "-s", "-j2", "-C", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    assert "-j3 forced" in done.stderr, done.stderr
    # and without -j there is nothing to warn about
    write_makefile(tmp_path / "Makefile", {"a": f"+{FJ} run -- true"}, ["a"])
    done = run([make43(), "-s", "-j2", "-C", str(tmp_path)])
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr


# -- item 1: the inner make's pool is the one its recipes use ---------------------------------
def _inner_make_tree(tmp_path: Path, log: OverlapLog, make: str, n: int = 4) -> Path:
    rules = {
        f"c{i}": "+" + f"{q(PY)} {q(SCRIPTS / 'client_job.py')} sync 3 {q(log)} {q(tmp_path / f'c{i}.json')} 0.2"
        for i in range(n)
    }
    return write_makefile(tmp_path / "Makefile", rules, list(rules))


@pytest.mark.parametrize("stale", [False, True], ids=["clean", "stale-CARGO_MAKEFLAGS"])
def test_fastjob_run_j8_make_j2_stays_within_the_inner_pool(
    tmp_path: Path, overlap_log: OverlapLog, stale: bool
) -> None:
    """`fastjob run -j8 -- make -j2`: the make starts a pool of its own (2);
    its fastjob-client recipes must never run more than 2 token holders at
    once (they ran 9 when CARGO_MAKEFLAGS still named the outer pool)."""
    make = make43()
    _inner_make_tree(tmp_path, overlap_log, make)
    env = clean_env()
    with fastjob.Server(8) as outer:
        if stale:
            # inherited from somewhere above: names a pool (the outer one)
            env["CARGO_MAKEFLAGS"] = outer.env({})["MAKEFLAGS"]
        done = run(
            [*FASTJOB, "run", "-j8", "--", make, "-s", "-j2", "-C", str(tmp_path)],
            env=env,
            pass_fds=outer.pass_fds,
            timeout=180,
        )
    assert done.returncode == 0, done.stderr
    assert overlap_log.starts() == 12
    peak = overlap_log.max_overlap()
    assert peak <= 2, overlap_log.summary()
    assert peak == 2, overlap_log.summary()  # and the inner pool was used
    assert "INTERNAL" not in done.stderr
    for i in range(4):
        r = json.loads((tmp_path / f"c{i}.json").read_text())
        assert r["held_at_end"] == 0


def test_cargo_build_inside_make_j2_stays_within_it(
    tmp_path: Path, overlap_log: OverlapLog, request: pytest.FixtureRequest
) -> None:
    """`fastjob run -j8 -- make -j2` with a `+cargo build` recipe: cargo
    joins the inner make's pool (2), not the outer one (8): at most 2 rustc
    at once (6 were measured when CARGO_MAKEFLAGS went stale)."""
    cargo = cargo_bin()
    from .test_cargo import LEAVES, _cargo_env, _crate

    ws = tmp_path / "ws"
    for leaf in LEAVES:
        _crate(ws, leaf, [])
    _crate(ws, "app", list(LEAVES), kind="bin")
    members = ", ".join(f'"{m}"' for m in [*LEAVES, "app"])
    (ws / "Cargo.toml").write_text(f'[workspace]\nmembers = [{members}]\nresolver = "2"\n')
    env = _cargo_env(tmp_path, overlap_log)
    write_makefile(
        tmp_path / "Makefile", {"build": f"+{q(cargo)} build --offline --manifest-path {q(ws / 'Cargo.toml')}"}, ["build"]
    )
    done = run(
        [*FASTJOB, "run", "-j8", "--", make43(), "-s", "-j2", "-C", str(tmp_path)],
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert overlap_log.starts("rustc-") >= len(LEAVES) + 1
    assert overlap_log.max_overlap("rustc-") <= 2, overlap_log.summary()
