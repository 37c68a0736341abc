"""rustc given a jobserver whose fds are closed: rustc's own warning, and
``fastjob doctor`` explaining the same environment."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import PY, SCRIPTS, clean_env, run, rustc_bin

pytestmark = pytest.mark.interop

# What make 4.3 hands a recipe line without '+': fds 3 and 4 are not open.
BROKEN = " -j2 --jobserver-auth=3,4"


def _broken_env() -> dict[str, str]:
    return clean_env({"MAKEFLAGS": BROKEN})


def test_rustc_warns_on_closed_fds(tmp_path: Path) -> None:
    rustc = rustc_bin()
    src = tmp_path / "lib.rs"
    src.write_text("pub fn f() -> u32 { 1 }\n")
    # subprocess closes every fd above 2, so 3 and 4 are closed in rustc.
    done = run(
        [rustc, "--crate-type", "lib", "--out-dir", str(tmp_path), str(src)],
        env=_broken_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (
        f'warning: failed to connect to jobserver from environment variable `MAKEFLAGS="{BROKEN}"`'
        in done.stderr
    ), done.stderr
    assert "cannot open file descriptor 3" in done.stderr
    assert "Bad file descriptor (os error 9)" in done.stderr
    # fastjob, in a child with the same environment, says the same thing plus the fix.
    fj = run([PY, str(SCRIPTS / "check_env.py"), str(tmp_path / "fj.json")], env=_broken_env())
    assert fj.returncode == 0, fj.stderr
    report = json.loads((tmp_path / "fj.json").read_text())
    assert report["client"] is None
    [(category, message)] = report["warnings"]
    assert category == "JobserverWarning"
    for shared in (
        "failed to connect to jobserver from environment variable `MAKEFLAGS=",
        "cannot open file descriptor 3",
        "Bad file descriptor (os error 9)",
    ):
        assert shared in message and shared in done.stderr, (shared, message)
    assert "'+'" in message
    assert report["strict"][0] == "BadFdError"


def test_doctor_explains_closed_fds() -> None:
    if importlib.util.find_spec("fastjob.cli") is None:
        pytest.skip("fastjob.cli is not available yet (the `fastjob doctor` CLI issue)")
    done = subprocess.run(
        [sys.executable, "-m", "fastjob", "doctor"],
        env=_broken_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = done.stdout + done.stderr
    assert "Traceback" not in out, out
    assert "MAKEFLAGS" in out, out
    assert "fd 3" in out or "descriptor 3" in out, out
    assert "Bad file descriptor" in out, out  # the same diagnosis as rustc's
    assert "'+'" in out, out  # and the fix: mark the recipe line recursive
    assert done.returncode != 0, out  # a named but unusable jobserver is a finding
