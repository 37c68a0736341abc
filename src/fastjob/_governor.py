"""The governor: lower a pool's size while the machine is overloaded or short
of memory, raise it back afterwards.

Signals (Linux): the 1-minute load average (/proc/loadavg), MemAvailable
(/proc/meminfo) and pressure stall information, ``some avg10`` of
/proc/pressure/memory and /proc/pressure/cpu (a percentage).  macOS and other
POSIX systems have the load average only (``os.getloadavg``); Windows has
none of them.  A limit whose signal cannot be read is named once in a
JobserverWarning and ignored.

The rule (hysteresis), applied every ``tick`` (250 ms):

* if any reading is over its limit, the size allowed (``effective``) drops
  by one slot, never below one, and the calm clock restarts;
* otherwise, when ``effective`` is below ``jobs`` and every reading has
  stayed under its limit for ``calm`` seconds (2 s) since the last change,
  ``effective`` grows by one slot, which restarts the clock.  So growth is
  at most one slot per 2 s, shrinking up to four slots per second.
* The start.  A pool whose limits are all satisfied starts at full size,
  ``limited_by=()``.  A limit already exceeded at the start applies the rule
  at once (one slot less), except the memory floor: MemAvailable already
  below it starts the pool at one slot, ``limited_by`` naming it.  A *slow
  start* is kept for one case only: a memory floor with little room above
  it, less than SLOW_START_ROOM (512 MiB) per slot (``jobs * 512 MiB``).
  Before any job runs nobody knows how much one takes, so with that little
  room the pool starts at one slot and grows by the rule above; it is
  reported as ``limited_by=("memory",)`` (the limit it guards) until the
  pool is whole again.

A slot taken away is withheld by the server as its token comes back; a job
that holds a token keeps it (see _pool_size).
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Protocol

from ._errors import JobserverWarning
from ._service_thread import start_service_thread

__all__ = ["SLOW_START", "Governor", "Limits", "ProcSource", "Readings", "parse_size"]

TICK = 0.25
CALM = 2.0
#: Room above the memory floor per slot below which the pool starts slowly.
SLOW_START_ROOM = 512 << 20
#: What ``limited_by`` says during a slow start (not a limit being exceeded).
SLOW_START = "memory"  # the limit a slow start is for: the contract's names only

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as ``"4G"``, ``"512M"``, ``"1.5GiB"``
    or ``"1000000"`` (K, M, G, T are powers of 1024)."""
    if isinstance(value, bool):
        raise TypeError("a memory size must be an int or a string such as '4G', not a bool")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _SIZE.match(value)
        if m is None:
            raise ValueError(
                f"{value!r} is not a memory size; use bytes or a number with K, M, G "
                "or T (powers of 1024), e.g. '4G'"
            )
        n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    else:
        raise TypeError(f"a memory size must be an int or a string, not {type(value).__name__}")
    if n <= 0:
        raise ValueError(f"a memory size must be positive (got {value!r})")
    return n


def _percent(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a percentage (a number), not {type(value).__name__}")
    if not 0 <= value <= 100 or math.isnan(value):
        raise ValueError(f"{name} must be a percentage from 0 to 100 (got {value!r})")
    return float(value)


@dataclass(frozen=True)
class Limits:
    """When the governor holds slots back (every field is optional):

    ``load_average``: the 1-minute load average above which the pool
    shrinks (make's and ninja's ``-l``); ``min_free_memory``: bytes (or a
    string such as ``"4G"``) of MemAvailable below which it shrinks;
    ``max_memory_pressure`` / ``max_cpu_pressure``: percentages of PSI
    ``some avg10`` above which it shrinks.
    """

    load_average: float | None = None
    min_free_memory: int | str | None = None
    max_memory_pressure: float | None = None
    max_cpu_pressure: float | None = None

    def __post_init__(self) -> None:
        load = self.load_average
        if load is not None:
            if isinstance(load, bool) or not isinstance(load, (int, float)):
                raise TypeError(f"load_average must be a number, not {type(load).__name__}")
            if not load > 0:
                raise ValueError(f"load_average must be > 0 (got {load!r})")
            object.__setattr__(self, "load_average", float(load))
        if self.min_free_memory is not None:
            object.__setattr__(self, "min_free_memory", parse_size(self.min_free_memory))
        object.__setattr__(
            self, "max_memory_pressure", _percent("max_memory_pressure", self.max_memory_pressure)
        )
        object.__setattr__(
            self, "max_cpu_pressure", _percent("max_cpu_pressure", self.max_cpu_pressure)
        )

    @property
    def free_memory_bytes(self) -> int | None:
        """``min_free_memory`` in bytes (always an int after construction)."""
        v = self.min_free_memory
        assert v is None or isinstance(v, int)
        return v

    def names(self) -> tuple[str, ...]:
        """The limits that are set, by their ``limited_by`` names."""
        out = []
        if self.load_average is not None:
            out.append("load")
        if self.min_free_memory is not None:
            out.append("memory")
        if self.max_memory_pressure is not None:
            out.append("memory-pressure")
        if self.max_cpu_pressure is not None:
            out.append("cpu-pressure")
        return tuple(out)

    def __bool__(self) -> bool:
        return bool(self.names())


@dataclass(frozen=True)
class Readings:
    """One sample of the signals (None: cannot be read here)."""

    load: float | None = None
    mem_available: int | None = None
    memory_pressure: float | None = None
    cpu_pressure: float | None = None

    def get(self, name: str) -> float | None:
        """The reading behind a ``limited_by`` name."""
        v: float | int | None = {
            "load": self.load,
            "memory": self.mem_available,
            "memory-pressure": self.memory_pressure,
            "cpu-pressure": self.cpu_pressure,
        }[name]
        return None if v is None else float(v)


class Source(Protocol):
    """Where readings come from (the seam tests inject)."""

    def read(self) -> Readings: ...


class ProcSource:
    """The real signals: /proc on Linux (``root`` for tests), else what the
    OS offers (``os.getloadavg``)."""

    def __init__(self, root: str = "/proc", platform: str = sys.platform) -> None:
        self.root = root
        self.platform = platform

    def _linux(self) -> bool:
        return self.platform.startswith("linux")

    def load(self) -> float | None:
        """The 1-minute load average."""
        if self._linux():
            try:
                with open(os.path.join(self.root, "loadavg"), encoding="ascii") as f:
                    return float(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                return None
        if self.platform == "win32" or not hasattr(os, "getloadavg"):
            return None
        try:
            return os.getloadavg()[0]
        except OSError:
            return None

    def mem_available(self) -> int | None:
        """MemAvailable in bytes (Linux >= 3.14)."""
        if not self._linux():
            return None
        try:
            with open(os.path.join(self.root, "meminfo"), encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        parts = line.split()
                        return int(parts[1]) * (1024 if parts[2:3] == ["kB"] else 1)
        except (OSError, ValueError, IndexError):
            return None
        return None

    def pressure(self, resource: str) -> float | None:
        """``some avg10`` of /proc/pressure/<resource> (Linux >= 4.20 with PSI)."""
        if not self._linux():
            return None
        try:
            with open(os.path.join(self.root, "pressure", resource), encoding="ascii") as f:
                for line in f:
                    if line.startswith("some "):
                        for field in line.split()[1:]:
                            key, _, value = field.partition("=")
                            if key == "avg10":
                                return float(value)
        except (OSError, ValueError):
            return None
        return None

    def read(self) -> Readings:
        return Readings(
            load=self.load(),
            mem_available=self.mem_available(),
            memory_pressure=self.pressure("memory"),
            cpu_pressure=self.pressure("cpu"),
        )


def _unsupported_reason(name: str, platform: str) -> str:
    where = {
        "load": "the load average (/proc/loadavg, getloadavg())",
        "memory": "MemAvailable (/proc/meminfo, Linux >= 3.14)",
        "memory-pressure": "/proc/pressure/memory (Linux >= 4.20 with PSI enabled)",
        "cpu-pressure": "/proc/pressure/cpu (Linux >= 4.20 with PSI enabled)",
    }[name]
    return f"{where} cannot be read on {platform}"


class _SizeLike(Protocol):
    @property
    def jobs(self) -> int: ...

    @property
    def effective(self) -> int: ...

    def set_cap(self, cap: int | None, limited_by: tuple[str, ...] = ()) -> None: ...


class Governor:
    """Applies :class:`Limits` to a pool's size (see the module docstring for
    the rule).  ``source`` and ``clock`` are seams for tests."""

    def __init__(
        self,
        limits: Limits,
        size: _SizeLike,
        *,
        source: Source | None = None,
        tick: float = TICK,
        calm: float = CALM,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._size = size
        self._source: Source = ProcSource() if source is None else source
        self.tick_interval = tick
        self.calm = calm
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.active: tuple[str, ...] = ()  # the limits that can be read here
        self.unsupported: tuple[str, ...] = ()
        self._cap: int | None = None
        self._calm_since = 0.0
        self._last_over: tuple[str, ...] = ()
        self.last: Readings | None = None
        self.error: BaseException | None = None

    def _over(self, r: Readings) -> tuple[str, ...]:
        lim = self.limits
        over = []
        for name in self.active:
            v = r.get(name)
            if v is None:
                continue  # a reading that failed this once: no evidence either way
            if name == "load" and v > (lim.load_average or 0):
                over.append(name)
            elif name == "memory" and v < (lim.free_memory_bytes or 0):
                over.append(name)
            elif name == "memory-pressure" and v > (lim.max_memory_pressure or 0):
                over.append(name)
            elif name == "cpu-pressure" and v > (lim.max_cpu_pressure or 0):
                over.append(name)
        return tuple(over)

    def prepare(self) -> None:
        """Find which limits can be read here (a JobserverWarning, once, for
        those that cannot: they are ignored) and set the starting size."""
        first = self._source.read()
        self.last = first
        active: list[str] = []
        missing: list[str] = []
        for name in self.limits.names():
            (missing if first.get(name) is None else active).append(name)
        self.active, self.unsupported = tuple(active), tuple(missing)
        if missing:
            platform = getattr(self._source, "platform", sys.platform)
            reasons = "; ".join(_unsupported_reason(n, platform) for n in missing)
            warnings.warn(
                f"fastjob: limit(s) {', '.join(missing)} ignored: {reasons}",
                JobserverWarning,
                stacklevel=4,
            )
        self._calm_since = self._clock()
        over = self._over(first)
        if "memory" in over:
            # Below the floor before anything ran: one slot (module docstring).
            self._start_at_one(over)
        elif not over and self._little_room(first):
            self._start_at_one((SLOW_START,))
        else:
            self.step(first)  # full size, or the rule applied to what is exceeded

    def _start_at_one(self, why: tuple[str, ...]) -> None:
        self._cap = 1
        self._last_over = why
        self._size.set_cap(1, why)

    def _little_room(self, r: Readings) -> bool:
        """A memory floor with less than SLOW_START_ROOM per slot above it."""
        floor = self.limits.free_memory_bytes
        if "memory" not in self.active or floor is None or r.mem_available is None:
            return False
        return r.mem_available - floor < self._size.jobs * SLOW_START_ROOM

    def step(self, r: Readings | None = None) -> int | None:
        """One tick: read (or take ``r``), apply the rule; returns the cap."""
        if r is None:
            r = self._source.read()
        self.last = r
        now = self._clock()
        jobs = self._size.jobs
        over = self._over(r)
        cap = self._cap
        if over:
            current = min(jobs, self._size.effective if cap is None else cap)
            cap = max(1, current - 1)
            self._calm_since = now
            self._last_over = over
        elif cap is not None:
            if cap >= jobs:
                cap = None  # nothing held back: a later resize() applies at once
            elif now - self._calm_since >= self.calm:
                cap += 1
                self._calm_since = now
                if cap >= jobs:
                    cap = None
        self._cap = cap
        self._size.set_cap(cap, self._last_over if cap is not None else ())
        return cap

    def start(self) -> None:
        """prepare(), then tick in a daemon thread until stop()."""
        self.prepare()
        if not self.active:
            return
        self._thread = threading.Thread(target=self._run, name="fastjob-governor", daemon=True)
        start_service_thread(self._thread)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.tick_interval):
                self.step()
        except BaseException as exc:  # kept for statistics; the pool keeps its size
            self.error = exc

    def stop(self) -> None:
        """Stop ticking (the size stays as it is)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
