"""The trace sampler: a daemon thread reading pool occupancy (FIONREAD) and
system CPU use (/proc/stat), storing only changes.

Cost model (measured on the 2-core CI VM): one wake-up of a sleeping Python
thread costs 30-50 us of CPU, almost all of it the kernel's timer wake-up and
the GIL hand-over; the FIONREAD itself is < 1 us and a /proc/stat read ~10 us.
So the sampler wakes every ``interval`` (5 ms) while the pool changes and
stretches its sleep, doubling up to ``max_interval`` (25 ms), after
``_QUIET`` unchanged samples; any change snaps it back to ``interval``.  It
only ever *counts* tokens: it never reads a byte from the pool.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from array import array
from collections.abc import Callable

from .._service_thread import start_service_thread

__all__ = ["CpuReader", "Sampler"]

_QUIET = 8  # unchanged samples before the interval stretches
PROC_STAT = "/proc/stat"


class CpuReader:
    """System-wide CPU busy fraction between two reads of /proc/stat."""

    def __init__(self, path: str = PROC_STAT) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._last = self._read()

    def _read(self) -> tuple[int, int]:
        data = os.pread(self._fd, 512, 0)
        fields = [int(x) for x in data[: data.index(b"\n")].split()[1:9]]
        # user nice system idle iowait irq softirq steal (guest is inside user)
        total = sum(fields)
        return total, total - fields[3] - fields[4]

    def busy(self) -> float | None:
        """Busy fraction since the previous call (None when no tick passed)."""
        total, busy = self._read()
        d_total = total - self._last[0]
        if d_total <= 0:
            return None
        d_busy = busy - self._last[1]
        self._last = (total, busy)
        return min(1.0, max(0.0, d_busy / d_total))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def open_cpu_reader() -> tuple[CpuReader | None, str | None]:
    """(reader, None) on Linux, else (None, a note saying why not)."""
    if not sys.platform.startswith("linux"):
        return None, f"CPU use not sampled: /proc/stat is Linux-only (this is {sys.platform})"
    try:
        return CpuReader(), None
    except (OSError, ValueError, IndexError) as exc:
        return None, f"CPU use not sampled: cannot read {PROC_STAT} ({exc})"


class Sampler:
    """Samples ``read_in_use()`` and, if given, ``cpu`` on a daemon thread.

    Occupancy is stored as change points (``occ_t``, ``occ_v``): the value
    holds from its time until the next point.  CPU is stored as
    (``cpu_t``, ``cpu_v``): ``cpu_v[i]`` is the busy fraction over
    (``cpu_t[i-1]``, ``cpu_t[i]``], the first interval starting at ``cpu_start``.
    """

    def __init__(
        self,
        read_in_use: Callable[[], int],
        cpu: CpuReader | None,
        *,
        interval: float,
        max_interval: float,
        cpu_interval: float,
        read_size: Callable[[], tuple[int, tuple[str, ...]]] | None = None,
    ) -> None:
        self._read = read_in_use
        self._read_size = read_size
        self.eff_t = array("d")
        self.eff_v = array("i")
        self.eff_why: list[tuple[str, ...]] = []
        self._cpu = cpu
        self.interval = interval
        self.max_interval = max(interval, max_interval)
        self.cpu_interval = cpu_interval
        self.occ_t = array("d")
        self.occ_v = array("i")
        self.cpu_t = array("d")
        self.cpu_v = array("d")
        self.cpu_start = 0.0
        self.samples = 0
        self.thread_cpu = 0.0  # CPU seconds the sampler thread used
        self.error: BaseException | None = None
        self._stop = False
        self._next_cpu = 0.0
        self._thread = threading.Thread(target=self._run, name="fastjob-trace-sampler", daemon=True)

    def start(self) -> float:
        """Take the first sample here, then start the thread; returns t0."""
        t0 = time.monotonic()
        self._sample(t0)
        if self._cpu is not None:
            self._cpu.busy()  # re-baseline (a no-op when no tick passed since)
            self.cpu_start = t0
            self._next_cpu = t0 + self.cpu_interval
        start_service_thread(self._thread)
        return t0

    def stop(self) -> float:
        """Stop the thread (within ``max_interval``), take a last sample; returns t_end."""
        self._stop = True
        self._thread.join()
        t_end = time.monotonic()
        try:
            self._sample(t_end)
        except Exception:  # pool already closed: keep what we have
            pass
        self._read_cpu(t_end)
        return t_end

    def _sample(self, now: float) -> bool:
        v = self._read()
        self.samples += 1
        changed = False
        if self._read_size is not None:
            e, why = self._read_size()
            if not self.eff_v or self.eff_v[-1] != e or self.eff_why[-1] != why:
                self.eff_t.append(now)
                self.eff_v.append(e)
                self.eff_why.append(why)
                changed = True
        if not self.occ_v or self.occ_v[-1] != v:
            self.occ_t.append(now)
            self.occ_v.append(v)
            return True
        return changed

    def _read_cpu(self, now: float) -> None:
        if self._cpu is None:
            return
        busy = self._cpu.busy()
        if busy is not None:
            self.cpu_t.append(now)
            self.cpu_v.append(busy)
        self._next_cpu = now + self.cpu_interval

    def _run(self) -> None:
        start_cpu = time.thread_time()
        mono, sleep = time.monotonic, time.sleep
        fast, slow = self.interval, self.max_interval
        wait, quiet = fast, 0
        try:
            while True:
                sleep(wait)
                if self._stop:
                    break
                now = mono()
                if self._sample(now):
                    wait, quiet = fast, 0
                else:
                    quiet += 1
                    if quiet >= _QUIET and wait < slow:
                        wait, quiet = min(slow, wait * 2), 0
                if now >= self._next_cpu:
                    self._read_cpu(now)
        except BaseException as exc:  # pool closed under us: stop sampling, keep data
            self.error = exc
        finally:
            self.thread_cpu = time.thread_time() - start_cpu
