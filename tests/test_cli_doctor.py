"""``fastjob doctor`` end to end: every diagnosis comes from the real situation
(real make recipes with and without '+', closed and reused fds, a FIFO left
behind by a killed make, make's own "-2,-2")."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import FASTJOB, FJ, TIMEOUT, clean_env, debian_make, gnumake44

import fastjob

needs_make43 = pytest.mark.skipif(debian_make() is None, reason="needs GNU make 4.3")
needs_make44 = pytest.mark.skipif(gnumake44() is None, reason="needs GNU make 4.4")



def doctor(env: dict[str, str], *args: str, pass_fds: tuple[int, ...] = ()) -> tuple[int, dict[str, Any]]:
    r = subprocess.run(
        [*FASTJOB, "doctor", "--json", *args],
        env=env,
        pass_fds=pass_fds,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert "Traceback" not in r.stderr
    return r.returncode, json.loads(r.stdout)


def make_recipe(make: str, tmp_path: Path, line: str, *make_args: str) -> tuple[int, dict[str, Any]]:
    """Run ``line`` as the recipe of a real make; it writes doctor's JSON to
    out.json and its exit status to rc."""
    (tmp_path / "Makefile").write_text(f"all:\n\t{line} > out.json; echo $$? > rc\n")
    r = subprocess.run(
        [make, "-s", *make_args, "-C", str(tmp_path)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 0, r.stderr
    rc = int((tmp_path / "rc").read_text())
    return rc, json.loads((tmp_path / "out.json").read_text())


@pytest.mark.interop
@needs_make43
def test_recursive_recipe_line_is_usable(tmp_path: Path) -> None:
    rc, d = make_recipe(str(debian_make()), tmp_path, f"+{FJ} doctor --json", "-j4")
    assert rc == 0
    assert d["verdict"] == "usable"
    assert d["variable"] == "MAKEFLAGS"
    assert d["style"] == "pipe" and d["jobs"] == 4
    r, w = d["fds"]
    assert r["open"] and r["kind"] == "pipe" and r["access"] == "read-only"
    assert w["open"] and w["access"] == "write-only"
    assert r["nonblocking"] is True  # make 4.3 sets O_NONBLOCK on the shared read end
    assert d["same_pipe"] is True
    assert d["tokens_free"] == 3
    assert d["fix"] == ""


@pytest.mark.interop
@needs_make43
def test_recipe_line_without_plus_has_closed_fds(tmp_path: Path) -> None:
    rc, d = make_recipe(str(debian_make()), tmp_path, f"{FJ} doctor --json", "-j4")
    assert rc == 1
    assert d["verdict"] == "broken"
    assert [f["open"] for f in d["fds"]] == [False, False]
    assert "closed" in d["problem"] and "recursive" in d["problem"]
    assert "'+'" in d["fix"] and "$(MAKE)" in d["fix"]


@pytest.mark.interop
@needs_make43
def test_reused_fd_is_named(tmp_path: Path) -> None:
    rc, d = make_recipe(str(debian_make()), tmp_path, f"{FJ} doctor --json 3<Makefile", "-j4")
    assert rc == 1
    read = d["fds"][0]
    assert read["open"] and read["kind"] == "regular file"
    assert read["target"].endswith("Makefile")
    assert "reused" in d["problem"]


@pytest.mark.interop
@needs_make44
def test_make44_disables_a_non_recursive_pipe_recipe(tmp_path: Path) -> None:
    rc, d = make_recipe(
        str(gnumake44()), tmp_path, f"{FJ} doctor --json", "-j2", "--jobserver-style=pipe"
    )
    assert rc == 2
    assert d["verdict"] == "none"
    assert d["style"] == "disabled"
    assert "-2,-2" in d["value"]
    assert "'+'" in d["fix"]


@pytest.mark.interop
@needs_make44
def test_make44_plus_from_a_variable_is_explained(tmp_path: Path) -> None:
    """make 4.4.1 keeps the fds open for a line whose '+' comes from a
    variable but writes `--jobserver-auth=3,4 --jobserver-auth=-2,-2`: the
    last one wins; doctor says why and how to fix it."""
    (tmp_path / "Makefile").write_text(
        f"P := +\nall:\n\t$(P){FJ} doctor --json > out.json; echo $$? > rc\n"
    )
    r = subprocess.run(
        [str(gnumake44()), "-s", "-j2", "--jobserver-style=pipe", "-C", str(tmp_path)],
        env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert r.returncode == 0, r.stderr
    d = json.loads((tmp_path / "out.json").read_text())
    assert int((tmp_path / "rc").read_text()) == 2 and d["style"] == "disabled"
    assert "--jobserver-auth=3,4 --jobserver-auth=-2,-2" in d["value"]
    assert "named twice" in d["problem"] and "last --jobserver-auth wins" in d["problem"]
    assert "comes from a variable" in d["problem"]
    assert any("open here" in n for n in d["notes"])
    assert any("one job at a time" in n for n in d["notes"])
    assert "literally" in d["fix"]


@pytest.mark.interop
@needs_make44
def test_make44_non_recursive_pipe_line_named_twice(tmp_path: Path) -> None:
    rc, d = make_recipe(
        str(gnumake44()), tmp_path, f"{FJ} doctor --json", "-j2", "--jobserver-style=pipe"
    )
    assert rc == 2 and "named twice" in d["problem"]
    assert "closed the fds" in d["problem"] and "'+'" in d["fix"]


def test_two_auth_options_last_one_disabled() -> None:
    rc, d = doctor(clean_env(MAKEFLAGS=" -j2 --jobserver-auth=3,4 --jobserver-auth=-2,-2"))
    assert rc == 2 and d["style"] == "disabled"
    assert "named twice" in d["problem"]


def test_negative_fds_mean_disabled_on_purpose() -> None:
    rc, d = doctor(clean_env(MAKEFLAGS=" -j2 --jobserver-auth=-2,-2"))
    assert rc == 2 and d["style"] == "disabled"


def test_no_jobserver_at_all() -> None:
    rc, d = doctor(clean_env())
    assert rc == 2
    assert d["verdict"] == "none" and d["variable"] is None
    assert "fastjob run" in d["fix"]


def test_makeflags_without_a_jobserver() -> None:
    rc, d = doctor(clean_env(MAKEFLAGS="k"))
    assert rc == 2
    assert "names no jobserver" in d["problem"]


def test_malformed_value_is_broken() -> None:
    rc, d = doctor(clean_env(MAKEFLAGS=" -j4 --jobserver-auth=3,x"))
    assert rc == 1
    assert d["variable"] == "MAKEFLAGS"


def test_python_parent_without_pass_fds() -> None:
    with fastjob.Server(3) as server:
        rc, d = doctor(server.env(clean_env()))
    assert rc == 1
    assert [f["open"] for f in d["fds"]] == [False, False]
    assert "pass_fds" in d["fix"]


def test_python_parent_with_pass_fds_and_nothing_consumed() -> None:
    with fastjob.Server(5) as server:
        rc, d = doctor(server.env(clean_env()), pass_fds=server.pass_fds)
        assert server.available() == 4
    assert rc == 0
    assert d["tokens_free"] == 4
    assert d["fds"][0]["nonblocking"] is False


def test_live_fifo_through_fastjob_run() -> None:
    r = subprocess.run(
        [*FASTJOB, "run", "-j3", "--style", "fifo", "--", *FASTJOB, "doctor", "--json"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["style"] == "fifo"
    f = d["fifo"]
    assert f["exists"] and f["is_fifo"] and f["openable"] and f["yours"]
    assert f["has_writer"] is True
    assert f["mode"] == "prw-------"
    assert d["tokens_free"] == 2
    assert r.stderr == ""  # nothing taken, nothing missing


def test_fifo_that_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "GMfifo999999999"
    rc, d = doctor(clean_env(MAKEFLAGS=f" -j2 --jobserver-auth=fifo:{path}"))
    assert rc == 1
    assert d["fifo"]["exists"] is False
    assert "does not exist" in d["problem"]
    assert "sandbox" in d["fix"]


def test_path_that_is_not_a_fifo(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.write_text("")
    rc, d = doctor(clean_env(MAKEFLAGS=f" -j2 --jobserver-auth=fifo:{path}"))
    assert rc == 1
    assert d["fifo"]["is_fifo"] is False and "not a FIFO" in d["problem"]


@pytest.mark.interop
@needs_make44
def test_stale_fifo_left_by_a_killed_make(tmp_path: Path) -> None:
    r, w = os.pipe()
    (tmp_path / "Makefile").write_text(f'all:\n\t+echo "$$MAKEFLAGS" > /dev/fd/{w}; sleep 60\n')
    make = subprocess.Popen(
        [str(gnumake44()), "-s", "-j3", "-C", str(tmp_path)],
        env=clean_env(),
        pass_fds=(w,),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(w)
    path = None
    try:
        assert select.select([r], [], [], TIMEOUT)[0], "make never ran the recipe"
        flags = os.read(r, 4096).decode().strip()
        path = flags.split("fifo:")[1].split()[0]
        os.killpg(make.pid, signal.SIGKILL)  # SIGKILL: make cannot remove its FIFO
        make.wait(TIMEOUT)
        assert os.path.exists(path)
        rc, d = doctor(clean_env(MAKEFLAGS=flags))
        assert rc == 1
        assert d["fifo"]["has_writer"] is False
        assert d["fifo"]["creator_pid"] == make.pid and d["fifo"]["creator_alive"] is False
        assert "stale" in d["problem"]
        assert os.path.exists(path)  # doctor reports, it does not remove
    finally:
        os.close(r)
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
        if path and os.path.exists(path):
            os.unlink(path)


@needs_make43
def test_text_output_reads_like_a_report(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text(f"all:\n\t{FJ} doctor; true\n")
    r = subprocess.run(
        [str(debian_make()), "-s", "-j4", "-C", str(tmp_path)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    out = r.stdout
    assert out.splitlines()[0].split() == ["variable", "MAKEFLAGS"]
    assert "read fd 3" in out and "closed (Bad file descriptor" in out
    assert "verdict: BROKEN:" in out
    assert "fix: " in out
