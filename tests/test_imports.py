"""``import fastjob`` is cheap: the namespace is lazy, and the CLI's
subcommands import only what they use (checked in fresh interpreters)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import TIMEOUT, clean_env

import fastjob

HEAVY = ("asyncio", "anyio", "dataclasses", "inspect")


def imported_by(*args: str, status: int = 0) -> set[str]:
    """Modules a fresh ``python -X importtime ARGS`` imported (its stderr)."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == status, r.stderr[-2000:]
    names = set()
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def test_import_fastjob_imports_no_event_loop_machinery() -> None:
    code = "import sys, fastjob; print(' '.join(sorted(sys.modules)))"
    r = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert not {m for m in loaded if m.startswith("fastjob.")} - {"fastjob._errors", "fastjob._version"}


def test_every_public_name_resolves_lazily() -> None:
    code = (
        "import sys, fastjob\n"
        "for name in fastjob.__all__: getattr(fastjob, name)\n"
        "ns = {}\n"
        "exec('from fastjob import *', ns)\n"
        "missing = set(fastjob.__all__) - set(ns)\n"
        "assert not missing, missing\n"
        "assert set(fastjob.__all__) <= set(dir(fastjob))\n"
        "print('asyncio' in sys.modules)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert r.returncode == 0, r.stderr
    # Even every public name loaded: asyncio comes only with the first async call.
    assert r.stdout.strip() == "False"


def test_lazy_names_are_the_real_objects() -> None:
    from fastjob.client import Client
    from fastjob.server import Server

    assert fastjob.Server is Server
    assert fastjob.Client is Client
    from fastjob import Server as S2

    assert S2 is Server


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        fastjob.no_such_thing  # noqa: B018


def test_version_and_help_import_no_event_loop() -> None:
    for args in (["--version"], ["--help"], ["parallel", "--help"]):
        names = top(imported_by("-m", "fastjob", *args))
        assert not names & {"asyncio", "anyio", "trio"}, (args, sorted(names & {"asyncio", "anyio"}))


def _client_imports_anyio() -> bool:
    names = top(imported_by("-c", "import fastjob.client"))
    return "anyio" in names


def test_run_and_doctor_import_no_event_loop() -> None:
    assert not _client_imports_anyio(), "fastjob.client imports anyio at import time"
    names = top(imported_by("-m", "fastjob", "run", "-j2", "--", "true"))
    assert not names & {"asyncio", "anyio", "trio"}, sorted(names & {"asyncio", "anyio"})
    names = top(imported_by("-m", "fastjob", "doctor", status=2))  # 2: no jobserver here
    assert not names & {"asyncio", "anyio", "trio"}, sorted(names & {"asyncio", "anyio"})


def test_cli_run_modules_do_not_import_anyio_themselves() -> None:
    """What fastjob.cli.run adds over the library layer it needs."""
    base = imported_by("-c", "import fastjob.cli.pool")
    run = imported_by("-c", "import fastjob.cli, fastjob.cli.run")
    added = top(run - base)
    assert not added & {"asyncio", "anyio", "trio"}, sorted(added)
