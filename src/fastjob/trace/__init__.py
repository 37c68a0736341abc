"""Utilization traces of a jobserver pool.

``Recorder`` samples how many of the pool's slots are in use (pool size minus
the free tokens, counted with FIONREAD: it never takes a token) and the
system's CPU use (/proc/stat, Linux), records one span per job it is told
about, and writes Chrome Trace Event JSON (Perfetto, chrome://tracing), a
self-contained HTML report and a summary::

    with fastjob.Server(4) as server:
        with Recorder(server, implicit=True) as rec:
            subprocess.run(["make"], env=server.env(), pass_fds=server.pass_fds)
        rec.write_trace("trace.json"); rec.write_report("report.html")
        print(rec.format_summary(), file=sys.stderr)

Jobs this process runs are recorded with ``rec.span(name)`` around the job
(after its token is held) or ``await rec.run_process(cmd, client=...)``.
"""

from __future__ import annotations

import json
import os
import shlex
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Callable

from .. import _version
from .chrome import SpanRecord, chrome_trace
from .report import render_report
from .sampler import CpuReader, Sampler, open_cpu_reader
from .summary import HEADROOM_CPU, SATURATED_CPU, Series, TraceSummary, summarize
from ..client import Client
from ..server import Server

__all__ = ["HEADROOM_CPU", "SATURATED_CPU", "Recorder", "SpanRecord", "TraceSummary"]

CommandLike = Any  # str | bytes | Sequence[str | bytes | PathLike]


def command_name(command: CommandLike) -> str:
    """A one-line display name for a command (a string or an argv list)."""
    if isinstance(command, bytes):
        return command.decode(errors="replace")
    if isinstance(command, str):
        return command
    return shlex.join(os.fsdecode(a) if isinstance(a, bytes) else os.fspath(a) for a in command)


class Recorder:
    """Record a pool's occupancy, CPU use and job spans while it is active.

    ``pool`` is a :class:`fastjob.Server` or a :class:`fastjob.Client`
    (``jobs`` defaults to its pool size).  Slots in use are
    ``jobs - 1 - free_tokens`` plus the implicit slot, which counts as busy
    when ``implicit`` is True (a command such as ``fastjob run``'s child, or
    the build this client runs inside, holds it), never when False, and, with
    None (the default), when this process's client holds its implicit token
    (Server: right for ``JobGroup`` / ``run_process``; Client: treated as True).

    Sampling: every ``interval`` s while the pool changes, stretching up to
    ``max_interval`` s while it does not; CPU every ``cpu_interval`` s
    (``cpu=False`` skips it).  ``trace`` / ``report`` paths are written and
    the summary is printed to ``summary_file`` (e.g. ``sys.stderr``) when the
    ``with`` block ends; ``on_summary`` is called with the
    :class:`TraceSummary`.
    """

    def __init__(
        self,
        pool: Server | Client,
        *,
        jobs: int | None = None,
        implicit: bool | None = None,
        command: CommandLike | None = None,
        interval: float = 0.005,
        max_interval: float = 0.025,
        cpu_interval: float = 0.1,
        cpu: bool = True,
        trace: str | os.PathLike[str] | None = None,
        report: str | os.PathLike[str] | None = None,
        summary_file: IO[str] | None = None,
        on_summary: Callable[[TraceSummary], object] | None = None,
    ) -> None:
        self._server: Server | None = None
        if isinstance(pool, Server):
            client = pool.client
            n: int | None = pool.jobs if jobs is None else jobs
            self._available: Callable[[], int | None] = _guarded(pool)
            self._server = pool
        elif isinstance(pool, Client):
            client = pool
            n = pool.jobs if jobs is None else jobs
            self._available = pool.available
            if implicit is None:
                implicit = True
        else:
            raise TypeError(f"Recorder needs a fastjob.Server or Client, not {type(pool).__name__}")
        if n is None or n < 1:
            raise ValueError("the pool size is unknown: pass jobs=N")
        if not interval > 0 or not cpu_interval > 0:
            raise ValueError("interval and cpu_interval must be > 0")
        self.jobs: int = n
        self.command = None if command is None else command_name(command)
        self._client = client
        self._implicit = implicit
        self._interval, self._max_interval, self._cpu_interval = interval, max_interval, cpu_interval
        self._want_cpu = cpu
        self._trace_path, self._report_path = trace, report
        self._summary_file, self._on_summary = summary_file, on_summary
        self._lock = threading.Lock()
        self._spans: list[SpanRecord] = []
        self._lanes: list[bool] = []  # lane i+1 busy?
        self._notes: list[str] = []
        self._sampler: Sampler | None = None
        self._cpu: CpuReader | None = None
        self._t0 = self._t_end = 0.0
        self._unix_t0 = 0.0
        self._running = False
        self._summary: TraceSummary | None = None

    # -- sampling ------------------------------------------------------------------
    def _in_use(self) -> int:
        server = self._server
        if server is not None:
            # Tokens in circulation, not jobs - 1: a resized or governed pool
            # withholds some (and one resized up has more).
            size = server._size
            with size._lock:
                free = self._available()
                circulating = size.total - size.withheld
            top = max(self.jobs, size.jobs)
        else:
            free = self._available()
            circulating = self.jobs - 1
            top = self.jobs
        if free is None:
            raise RuntimeError("the pool's free tokens cannot be counted")
        implicit = self._implicit
        if implicit is None:
            implicit = self._client.statistics().implicit_held
        return max(0, min(top, circulating - free + int(implicit)))

    def _size_now(self) -> tuple[int, tuple[str, ...]]:
        assert self._server is not None
        size = self._server._size
        return size.effective, size.limited_by

    def start(self) -> Recorder:
        """Start sampling (the ``with`` block does this)."""
        if self._running or self._sampler is not None:
            raise RuntimeError("a Recorder records once: make a new one")
        if self._available() is None:
            raise RuntimeError(
                "cannot count this pool's free tokens (FIONREAD unsupported here); no trace possible"
            )
        if self._want_cpu:
            self._cpu, note = open_cpu_reader()
            if note:
                self._notes.append(note)
        else:
            self._notes.append("CPU use not sampled (cpu=False)")
        self._sampler = Sampler(self._in_use, self._cpu, interval=self._interval,
                                max_interval=self._max_interval, cpu_interval=self._cpu_interval,
                                read_size=self._size_now if self._server is not None else None)
        self._t0 = self._sampler.start()
        self._unix_t0 = time.time() - (time.monotonic() - self._t0)  # wall clock at t0
        self._running = True
        return self

    def stop(self) -> TraceSummary:
        """Stop sampling and return the summary (idempotent)."""
        if self._summary is not None:
            return self._summary
        if self._sampler is None:
            raise RuntimeError("the Recorder was never started")
        self._t_end = self._sampler.stop()
        self._running = False
        if self._cpu is not None:
            self._cpu.close()
        if self._sampler.error is not None:
            self._notes.append(f"sampling stopped early: {self._sampler.error!r}")
        with self._lock:
            open_spans = sum(self._lanes)
        if open_spans:
            self._notes.append(f"{open_spans} span(s) still open at the end were not recorded")
        self._summary = self._compute_summary()
        return self._summary

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._running

    # -- spans ---------------------------------------------------------------------
    def _take_lane(self) -> int:
        with self._lock:
            for i, busy in enumerate(self._lanes):
                if not busy:
                    self._lanes[i] = True
                    return i + 1
            self._lanes.append(True)
            return len(self._lanes)

    def _free_lane(self, lane: int) -> None:
        with self._lock:
            self._lanes[lane - 1] = False

    def add_span(self, name: str, start: float, end: float, *, lane: int | None = None,
                 args: dict[str, Any] | None = None) -> None:
        """Record a finished job: ``start``/``end`` are ``time.monotonic()``
        values.  Without ``lane`` it goes to the first lane free of overlap."""
        if end < start:
            raise ValueError("a span cannot end before it starts")
        with self._lock:
            if lane is None:
                lane = self._lane_for(start, end)
            self._spans.append(SpanRecord(name, start, end, lane, dict(args or {})))

    def _lane_for(self, start: float, end: float) -> int:
        taken = {s.lane for s in self._spans if s.start < end and s.end > start}
        lane = 1
        while lane in taken:
            lane += 1
        return lane

    @contextmanager
    def span(self, name: CommandLike, *, args: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """``with rec.span(cmd) as args:`` time one job; put extra details
        (e.g. ``args["returncode"] = 0``) in the yielded dict.  Usable from
        any thread and inside async code (it never awaits)."""
        extra: dict[str, Any] = dict(args or {})
        label = command_name(name)
        lane = self._take_lane()
        start = time.monotonic()
        try:
            yield extra
        except BaseException as exc:
            extra.setdefault("error", type(exc).__name__)
            raise
        finally:
            end = time.monotonic()
            self._free_lane(lane)
            with self._lock:
                self._spans.append(SpanRecord(label, start, end, lane, extra))

    async def run_process(
        self,
        command: CommandLike,
        *,
        client: Client | None = None,
        share_jobserver: bool = True,
        check: bool = True,
        name: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """:func:`fastjob.run_process`, recording the child's lifetime (from
        after its token is held to its exit) as a span."""
        import anyio

        from ..process import _merge_fds, child_env

        client = self._client if client is None else client
        env, fds = child_env(client, share_jobserver, kwargs.pop("env", None))
        _merge_fds(kwargs, fds)
        async with client.token():
            with self.span(name if name is not None else command) as extra:
                result = await anyio.run_process(command, check=False, env=env, **kwargs)
                extra["returncode"] = result.returncode
        if check:
            result.check_returncode()
        return result

    # -- results -------------------------------------------------------------------
    def _finished(self) -> Sampler:
        if self._sampler is None or self._running:
            raise RuntimeError("stop the Recorder (leave its with block) first")
        return self._sampler

    def _spans_clipped(self) -> list[SpanRecord]:
        out = []
        with self._lock:
            spans = list(self._spans)
        for s in spans:
            a, b = max(s.start, self._t0), min(s.end, self._t_end)
            if b >= a:
                out.append(SpanRecord(s.name, a, b, s.lane, s.args))
        return sorted(out, key=lambda s: (s.start, s.lane))

    def _series(self) -> Series:
        s = self._finished()
        cpu_start = s.cpu_start if self._cpu is not None else None
        return Series(s.occ_t, s.occ_v, cpu_start, s.cpu_t, s.cpu_v, s.eff_t, s.eff_v, s.eff_why)

    def _compute_summary(self) -> TraceSummary:
        s = self._finished()
        return summarize(
            jobs=self.jobs, t_start=self._t0, t_end=self._t_end, series=self._series(),
            cpu_count=os.cpu_count(), samples=s.samples,
            sampler_cpu_seconds=s.thread_cpu, spans=len(self._spans_clipped()), notes=self._notes,
            governed=self._server is not None and self._server.limits is not None,
        )

    def summary(self) -> TraceSummary:
        """The :class:`TraceSummary` (after stop)."""
        return self.stop() if self._summary is None else self._summary

    def format_summary(self) -> str:
        """The summary as the text printed to stderr."""
        return self.summary().format()

    @property
    def t0(self) -> float:
        """``time.monotonic()`` when recording started."""
        return self._t0

    @property
    def unix_t0(self) -> float:
        """``time.time()`` at the same instant as :attr:`t0`."""
        return self._unix_t0

    @property
    def occupancy(self) -> list[tuple[float, int]]:
        """(monotonic time, slots in use) change points; each value holds
        until the next point, the last one until the end."""
        s = self._finished()
        return list(zip(s.occ_t, s.occ_v))

    @property
    def effective(self) -> list[tuple[float, int, tuple[str, ...]]]:
        """(monotonic time, effective size, limits in force) change points of
        a Server's pool (empty for a Client: its owner's size is unknown)."""
        s = self._finished()
        return list(zip(s.eff_t, s.eff_v, s.eff_why))

    @property
    def cpu(self) -> list[tuple[float, float, float]]:
        """(start, end, busy fraction) intervals of system CPU use."""
        s = self._finished()
        if self._cpu is None:
            return []
        starts = [s.cpu_start, *s.cpu_t[:-1]]
        return list(zip(starts, s.cpu_t, s.cpu_v))

    @property
    def spans(self) -> list[SpanRecord]:
        """Recorded job spans, by start time (clipped to the recording)."""
        self._finished()
        return self._spans_clipped()

    def chrome_trace(self) -> dict[str, Any]:
        """The trace in Chrome Trace Event Format (a JSON-ready dict)."""
        self._finished()
        other: dict[str, Any] = {"fastjob_version": _version.__version__,
                                 "command": self.command, "cpu_count": os.cpu_count(),
                                 "summary": _summary_dict(self.summary())}
        return chrome_trace(
            jobs=self.jobs, t0=self._t0, t_end=self._t_end, unix_t0=self._unix_t0,
            series=self._series(), spans=self._spans_clipped(), other=other,
        )

    def write_trace(self, path: str | os.PathLike[str]) -> None:
        """Write the Chrome Trace Event JSON to ``path``."""
        data = self.chrome_trace()
        Path(path).write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")

    def report_html(self, title: str | None = None) -> str:
        """The self-contained HTML report as a string."""
        return render_report(
            summary=self.summary(), title=title or f"fastjob trace: pool of {self.jobs}",
            command=self.command, unix_t0=self._unix_t0, t0=self._t0, t_end=self._t_end,
            series=self._series(), spans=self._spans_clipped(),
        )

    def write_report(self, path: str | os.PathLike[str], title: str | None = None) -> None:
        """Write the HTML report to ``path``."""
        Path(path).write_text(self.report_html(title), encoding="utf-8")

    # -- context manager -------------------------------------------------------------
    def _finish(self) -> None:
        summary = self.stop()
        if self._trace_path is not None:
            self.write_trace(self._trace_path)
        if self._report_path is not None:
            self.write_report(self._report_path)
        if self._summary_file is not None:
            print(summary.format(), file=self._summary_file, flush=True)
        if self._on_summary is not None:
            self._on_summary(summary)

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._finish()

    async def __aenter__(self) -> Recorder:
        return self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._finish()

    def __repr__(self) -> str:
        state = "recording" if self._running else ("done" if self._summary else "new")
        return f"<fastjob.trace.Recorder jobs={self.jobs} {state}>"


def _guarded(server: Server) -> Callable[[], int | None]:
    """FIONREAD on the server's pool, refusing once it is closed (its fd
    number may already name another file)."""
    count = server._transport.available

    def available() -> int | None:
        if server._closed:
            raise RuntimeError("the pool was closed while recording")
        return count()

    return available


def _summary_dict(s: TraceSummary) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(s)
    d["notes"] = list(s.notes)
    d["sampler_cost"] = s.sampler_cost
    return d


def load_trace(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a trace written by :meth:`Recorder.write_trace`."""
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return data

