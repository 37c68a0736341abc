"""Start-up: what ``import fastjob`` and the common ``fastjob run`` path load,
checked in fresh interpreters (no timings: benchmarks/bench_startup.py
measures those).  Each module named here costs milliseconds of every run."""

from __future__ import annotations

import subprocess
from pathlib import Path
import sys

import pytest
from conftest import FASTJOB, TIMEOUT, clean_env

#: never loaded by ``import fastjob``
NOT_BY_IMPORT = ("asyncio", "anyio", "trio", "argparse", "dataclasses", "inspect", "subprocess", "typing")

#: never loaded by ``fastjob run -j2 -- true`` (the pool, its control socket,
#: the spawn, the accounting).  What it still loads beyond the interpreter's
#: own: re (the console script pip writes imports it), signal and enum,
#: threading, weakref, select, struct, fcntl, termios, math, _socket, the
#: native core, and ctypes (the pure core's signal mask around
#: Client.statistics(), called by the end-of-run accounting).
NOT_BY_RUN = NOT_BY_IMPORT + (
    "contextlib", "tempfile", "shutil", "random", "socket", "selectors", "json", "glob",
    "locale", "bz2", "lzma", "ctypes.util", "fastjob._governor", "fastjob.process",
    "fastjob.group", "fastjob.trace", "fastjob.cli.limits", "fastjob.cli.threads",
    "fastjob.cli.parallel", "fastjob.cli.doctor",
)


def _script_argv(*args: str) -> list[str]:
    """The console script (as users run it) under ``python -X importtime``."""
    if len(FASTJOB) == 1:
        return [sys.executable, "-X", "importtime", FASTJOB[0], *args]
    return [sys.executable, "-X", "importtime", "-m", "fastjob", *args]


def loaded(argv: list[str], status: int = 0, env: dict[str, str] | None = None) -> set[str]:
    """Every module a fresh ``python -X importtime ...`` imported."""
    r = subprocess.run(
        argv, env=clean_env() if env is None else env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert r.returncode == status, r.stderr[-3000:]
    names = set()
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    assert "fastjob" in names or "-c" in argv, "no import was recorded: is -X importtime on?"
    return names


def test_import_fastjob_loads_none_of_the_heavy_modules() -> None:
    code = "import sys, fastjob; print(' '.join(sorted(sys.modules)))"
    r = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert r.returncode == 0, r.stderr
    mods = set(r.stdout.split())
    assert "fastjob" in mods
    assert not mods & set(NOT_BY_IMPORT), sorted(mods & set(NOT_BY_IMPORT))


@pytest.mark.parametrize("impl", ["native", "pure"])
def test_fastjob_run_loads_only_what_it_uses(impl: str) -> None:
    env = clean_env(FASTJOB_NO_EXTENSIONS="1") if impl == "pure" else clean_env()
    mods = loaded(_script_argv("run", "-j2", "--", "true"), env=env)
    assert "fastjob.cli.run" in mods and "fastjob.server" in mods  # it did run
    assert not mods & set(NOT_BY_RUN), sorted(mods & set(NOT_BY_RUN))


def test_fastjob_run_fifo_takes_no_argparse_nor_tempfile() -> None:
    mods = loaded(_script_argv("run", "-j3", "--style", "fifo", "--", "true"))
    assert not mods & {"argparse", "subprocess", "tempfile", "asyncio", "anyio"}


def test_a_limit_option_goes_through_argparse_and_loads_the_governor() -> None:
    """The fast path takes no limit option: -l must still work (argparse
    parses it, the governor is imported and started)."""
    mods = loaded(_script_argv("run", "-j2", "-l", "1000", "--", "true"))
    assert {"argparse", "fastjob._governor", "fastjob.cli.limits"} <= mods


def test_version_loads_neither_argparse_nor_the_library() -> None:
    mods = loaded(_script_argv("--version"))
    assert "argparse" not in mods
    assert not {m for m in mods if m.startswith("fastjob.")} - {"fastjob.cli", "fastjob._errors", "fastjob._version"}


def test_help_and_errors_are_still_argparse() -> None:
    mods = loaded(_script_argv("run", "--help"))
    assert "argparse" in mods
    mods = loaded(_script_argv("run", "-j", "0", "--", "true"), status=2)
    assert "argparse" in mods


def test_doctor_takes_no_argparse() -> None:
    mods = loaded(_script_argv("doctor"), status=2)  # 2: no jobserver here
    assert "fastjob.cli.doctor" in mods
    assert not mods & {"argparse", "asyncio", "anyio", "subprocess"}


def test_statistics_are_frozen_dataclasses_loaded_on_demand() -> None:
    """DESIGN.md: statistics() returns frozen dataclasses; dataclasses is
    imported only when a snapshot is taken, not by ``import fastjob``."""
    import dataclasses

    import fastjob

    with fastjob.Server(2) as server:
        for snap in (server.client.statistics(), server.statistics()):
            assert dataclasses.is_dataclass(snap)
            assert dataclasses.asdict(snap) == {f.name: getattr(snap, f.name) for f in dataclasses.fields(snap)}
            first = dataclasses.fields(snap)[0].name
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(snap, first, 0)
        assert isinstance(server.statistics(), fastjob.ServerStatistics)
        assert isinstance(server.client.statistics(), fastjob.client.ClientStatistics)


def test_rustc_wrapper_passing_a_query_through_loads_no_argparse_json_or_subprocess(tmp_path: Path) -> None:
    """The wrapper runs once per rustc call cargo makes; a query (-vV) is
    handed straight to rustc (here a stand-in that prints its argv)."""
    fake = tmp_path / "rustc"
    fake.write_text("#!/bin/sh\necho rustc-args: \"$@\"\n")
    fake.chmod(0o755)
    code = (
        "import sys, atexit\n"
        "from fastjob.cli import rustc_wrapper\n"
        "import os\n"
        "heavy = sorted({'argparse', 'json', 'subprocess', 'asyncio', 'anyio', 'dataclasses'} & set(sys.modules))\n"
        "os.write(2, ('heavy=' + ','.join(heavy) + '\\n').encode())\n"
        f"rustc_wrapper.main([{str(fake)!r}, '-vV'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert "heavy=\n" in r.stderr, r.stderr
    assert r.stdout.strip() == "rustc-args: -vV"
