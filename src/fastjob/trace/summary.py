"""Summary figures of a trace: time-weighted statistics over step functions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["HEADROOM_CPU", "SATURATED_CPU", "Series", "TraceSummary", "segments", "summarize"]

HEADROOM_CPU = 0.5  # "CPU below 50% busy"
SATURATED_CPU = 0.9  # "CPU saturated": at least 90% busy


@dataclass(frozen=True)
class TraceSummary:
    """What a trace says about a build (shares are fractions of wall time, 0..1;
    the CPU-based ones are None when CPU use was not sampled)."""

    wall_time: float
    jobs: int
    mean_in_use: float
    peak_in_use: int
    idle_share: float
    headroom_share: float | None
    saturated_share: float | None
    mean_cpu: float | None
    cpu_count: int | None
    samples: int
    sampler_cpu_seconds: float
    spans: int
    notes: tuple[str, ...] = ()
    #: the governed pool's effective size (None when not sampled: a joined pool)
    mean_effective: float | None = None
    min_effective: int | None = None
    #: seconds in which the effective size was below ``jobs``, and by which
    #: limits ("resize" where no limit was in force: a smaller size was asked)
    held_back_time: float = 0.0
    held_back_by: tuple[tuple[str, float], ...] = ()
    #: the pool had Limits (the held-back line is printed even when 0 s)
    governed: bool = False

    @property
    def sampler_cost(self) -> float:
        """The sampler's CPU time as a fraction of one core over the wall time."""
        return self.sampler_cpu_seconds / self.wall_time if self.wall_time > 0 else 0.0

    def format(self) -> str:
        """The multi-line text ``fastjob`` prints to stderr."""

        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.1f}%"

        lines = [
            f"fastjob trace: {self.wall_time:.2f} s wall, pool of {self.jobs} slot(s)",
            f"  slots in use: mean {self.mean_in_use:.2f}, peak {self.peak_in_use}",
            f"  at least one slot idle:                     {pct(self.idle_share)} of wall time",
            f"  parallelism headroom (idle slot, CPU <{100 * HEADROOM_CPU:.0f}%): "
            f"{pct(self.headroom_share)}",
            f"  saturated (all slots busy, CPU >={100 * SATURATED_CPU:.0f}%):     "
            f"{pct(self.saturated_share)}",
        ]
        if self.mean_cpu is not None:
            lines.append(f"  CPU: mean {pct(self.mean_cpu)} busy over {self.cpu_count} core(s)")
        if self.mean_effective is not None and (self.governed or self.held_back_time > 0):
            lines.append(self.format_held_back())
        lines.append(
            f"  {self.spans} job span(s); sampler: {self.samples} samples, "
            f"{100 * self.sampler_cost:.2f}% of one core"
        )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


    def format_held_back(self) -> str:
        """The line about the effective size and the limits."""
        if self.held_back_time <= 0 or self.mean_effective is None:
            return f"  limits held no slot back (effective size stayed {self.jobs})"
        share = self.held_back_time / self.wall_time if self.wall_time > 0 else 0.0
        why = ", ".join(f"{name} {t:.2f} s" for name, t in self.held_back_by)
        return (
            f"  limits held slots back for {self.held_back_time:.2f} s ({100 * share:.1f}% of "
            f"wall time: {why}); effective size mean {self.mean_effective:.2f}, "
            f"min {self.min_effective} of {self.jobs}"
        )


@dataclass(frozen=True)
class Series:
    """The sampled step functions: occupancy change points (``occ_t``,
    ``occ_v``) and CPU intervals (``cpu_v[i]`` covers (``cpu_t[i-1]``,
    ``cpu_t[i]``], the first starting at ``cpu_start``; None: CPU not sampled)."""

    occ_t: Sequence[float]
    occ_v: Sequence[int]
    cpu_start: float | None
    cpu_t: Sequence[float]
    cpu_v: Sequence[float]
    #: the effective size's change points and the limits in force then
    #: (empty: not sampled)
    eff_t: Sequence[float] = ()
    eff_v: Sequence[int] = ()
    eff_why: Sequence[tuple[str, ...]] = ()


def effective_steps(
    t_start: float, t_end: float, series: Series
) -> Iterator[tuple[float, float, int, tuple[str, ...]]]:
    """(a, b, effective, limited_by) intervals covering [t_start, t_end]."""
    pts = list(zip(series.eff_t, series.eff_v, series.eff_why))
    for i, (t, v, why) in enumerate(pts):
        a = max(t, t_start)
        b = min(pts[i + 1][0] if i + 1 < len(pts) else t_end, t_end)
        if b > a:
            yield a, b, v, why


def segments(
    t_start: float, t_end: float, series: Series
) -> Iterator[tuple[float, float, int, float | None]]:
    """Elementary intervals (a, b, slots_in_use, cpu_busy_or_None) covering
    [t_start, t_end] where both step functions are constant."""
    occ_t, occ_v, cpu_start = series.occ_t, series.occ_v, series.cpu_start
    cpu_t, cpu_v = series.cpu_t, series.cpu_v
    cuts = {t_start, t_end}
    cuts.update(t for t in occ_t if t_start < t < t_end)
    if cpu_start is not None:
        cuts.update(t for t in (cpu_start, *cpu_t) if t_start < t < t_end)
    points = sorted(cuts)
    oi, ci = 0, 0
    n_occ, n_cpu = len(occ_t), len(cpu_t)
    for a, b in zip(points, points[1:]):
        while oi + 1 < n_occ and occ_t[oi + 1] <= a:
            oi += 1
        v = occ_v[oi] if n_occ else 0
        cpu: float | None = None
        if cpu_start is not None and a >= cpu_start:
            while ci < n_cpu and cpu_t[ci] <= a:
                ci += 1
            if ci < n_cpu:
                cpu = cpu_v[ci]
        yield a, b, v, cpu


def summarize(
    *,
    jobs: int,
    t_start: float,
    t_end: float,
    series: Series,
    cpu_count: int | None,
    samples: int,
    sampler_cpu_seconds: float,
    spans: int,
    notes: Sequence[str] = (),
    governed: bool = False,
) -> TraceSummary:
    """Compute a :class:`TraceSummary` from the sampled step functions."""
    occ_t, occ_v, cpu_start, cpu_t = series.occ_t, series.occ_v, series.cpu_start, series.cpu_t
    wall = max(0.0, t_end - t_start)
    area = idle = head = sat = cpu_area = cpu_known = 0.0
    for a, b, v, cpu in segments(t_start, t_end, series):
        d = b - a
        area += v * d
        free = v < jobs
        if free:
            idle += d
        if cpu is not None:
            cpu_known += d
            cpu_area += cpu * d
            if free and cpu < HEADROOM_CPU:
                head += d
            if not free and cpu >= SATURATED_CPU:
                sat += d
    has_cpu = cpu_start is not None and len(cpu_t) > 0 and cpu_known > 0

    def share(x: float) -> float:
        return x / wall if wall > 0 else 0.0

    peak = max((v for t, v in zip(occ_t, occ_v) if t <= t_end), default=0)
    mean_eff: float | None = None
    min_eff: int | None = None
    held = 0.0
    by: dict[str, float] = {}
    if len(series.eff_v):
        eff_area = 0.0
        for a, b, e, why in effective_steps(t_start, t_end, series):
            eff_area += e * (b - a)
            min_eff = e if min_eff is None else min(min_eff, e)
            if e < jobs:
                held += b - a
                for name in why or ("resize",):
                    by[name] = by.get(name, 0.0) + (b - a)
        mean_eff = share(eff_area)
    return TraceSummary(
        wall_time=wall,
        jobs=jobs,
        mean_in_use=share(area),
        peak_in_use=peak,
        idle_share=share(idle),
        headroom_share=share(head) if has_cpu else None,
        saturated_share=share(sat) if has_cpu else None,
        mean_cpu=cpu_area / cpu_known if has_cpu else None,
        cpu_count=cpu_count,
        samples=samples,
        sampler_cpu_seconds=sampler_cpu_seconds,
        spans=spans,
        notes=tuple(notes),
        mean_effective=mean_eff,
        min_effective=min_eff,
        held_back_time=held,
        held_back_by=tuple(sorted(by.items(), key=lambda kv: -kv[1])),
        governed=governed,
    )
