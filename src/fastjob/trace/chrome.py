"""Chrome Trace Event Format (the JSON Perfetto and chrome://tracing open).

One process ("fastjob pool -jN"): counter tracks "slots in use",
"effective size" (a Server's pool; each step held back below -jN is also a
complete event "held back by <limits>" on the pool's track) and "CPU busy %", and one thread per job lane holding complete ("X") events.
Timestamps are microseconds since the recording started; ``otherData``
carries the wall-clock anchor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .summary import Series, effective_steps

__all__ = ["SpanRecord", "chrome_trace"]

PID = 1
POOL_TID = 0


@dataclass(frozen=True)
class SpanRecord:
    """One job: name, monotonic start/end (seconds), display lane, extra args."""

    name: str
    start: float
    end: float
    lane: int
    args: dict[str, Any] = field(default_factory=dict)


def _us(t: float, t0: float) -> float:
    return round((t - t0) * 1e6, 3)


def chrome_trace(
    *,
    jobs: int,
    t0: float,
    t_end: float,
    unix_t0: float,
    series: Series,
    spans: Sequence[SpanRecord],
    other: dict[str, Any],
) -> dict[str, Any]:
    """The trace as a JSON-ready dict (object form, events sorted by ts)."""
    occ_t, occ_v, cpu_start = series.occ_t, series.occ_v, series.cpu_start
    cpu_t, cpu_v = series.cpu_t, series.cpu_v
    meta: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "ts": 0, "pid": PID, "tid": POOL_TID,
         "args": {"name": f"fastjob pool -j{jobs}"}},
        {"name": "thread_name", "ph": "M", "ts": 0, "pid": PID, "tid": POOL_TID,
         "args": {"name": "pool"}},
    ]
    for lane in sorted({s.lane for s in spans}):
        meta.append({"name": "thread_name", "ph": "M", "ts": 0, "pid": PID, "tid": lane,
                     "args": {"name": f"job lane {lane}"}})
        meta.append({"name": "thread_sort_index", "ph": "M", "ts": 0, "pid": PID, "tid": lane,
                     "args": {"sort_index": lane}})
    events: list[dict[str, Any]] = []
    for t, v in zip(occ_t, occ_v):
        if t <= t_end:
            events.append({"name": "slots in use", "ph": "C", "ts": _us(t, t0), "pid": PID,
                           "tid": POOL_TID, "args": {"slots": v}})
    if occ_v:  # close the step so viewers draw the last value to the end
        events.append({"name": "slots in use", "ph": "C", "ts": _us(t_end, t0), "pid": PID,
                       "tid": POOL_TID, "args": {"slots": occ_v[-1]}})
    eff_v = series.eff_v
    for t, e in zip(series.eff_t, eff_v):
        if t <= t_end:
            events.append({"name": "effective size", "ph": "C", "ts": _us(t, t0), "pid": PID,
                           "tid": POOL_TID, "args": {"slots": e}})
    for a, b, e, why in effective_steps(t0, t_end, series):
        if e < jobs:  # a complete event on the pool's track per held-back step
            events.append({"name": "held back by " + (", ".join(why) or "resize"), "cat": "limits",
                           "ph": "X", "ts": _us(a, t0), "dur": round((b - a) * 1e6, 3),
                           "pid": PID, "tid": POOL_TID,
                           "args": {"effective": e, "limited_by": list(why)}})
    if len(eff_v):
        events.append({"name": "effective size", "ph": "C", "ts": _us(t_end, t0), "pid": PID,
                       "tid": POOL_TID, "args": {"slots": eff_v[-1]}})
    if cpu_start is not None and len(cpu_t):
        # A counter value holds from its ts on: cpu_v[i] covers (prev, cpu_t[i]].
        prev: float = cpu_start
        for t, busy in zip(cpu_t, cpu_v):
            events.append({"name": "CPU busy %", "ph": "C", "ts": _us(prev, t0), "pid": PID,
                           "tid": POOL_TID, "args": {"busy": round(100 * busy, 1)}})
            prev = t
        events.append({"name": "CPU busy %", "ph": "C", "ts": _us(prev, t0), "pid": PID,
                       "tid": POOL_TID, "args": {"busy": round(100 * cpu_v[-1], 1)}})
    for s in spans:
        events.append({"name": s.name, "cat": "job", "ph": "X", "ts": _us(s.start, t0),
                       "dur": round(max(0.0, s.end - s.start) * 1e6, 3), "pid": PID,
                       "tid": s.lane, "args": dict(s.args)})
    events.sort(key=lambda e: (e["ts"], e["ph"] != "X"))
    return {
        "traceEvents": meta + events,
        "displayTimeUnit": "ms",
        "otherData": {"unix_time_start": unix_t0, "jobs": jobs,
                      "duration_s": round(t_end - t0, 6), **other},
    }
