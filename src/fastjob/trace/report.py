"""The self-contained HTML report: inline SVG, no script, no external file.

Inline SVG rather than a plotting library: the chart is two step lines, two
bands and a lane chart, ~150 lines of code, and the page then opens offline
with nothing to install; a plotting library would add a dependency (or a
megabyte of inlined JavaScript) for no extra information.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .chrome import SpanRecord
from .summary import HEADROOM_CPU, SATURATED_CPU, Series, TraceSummary, effective_steps, segments

__all__ = ["find_chromium", "render_report", "screenshot"]

W, LEFT, RIGHT = 1100, 60, 60
PLOT_W = W - LEFT - RIGHT
CHART_H = 260
MAX_POINTS = 2400  # above this many steps, draw per-pixel time-weighted means

SLOT_FILL, SLOT_LINE = "#9ecae1", "#2171b5"
CPU_LINE = "#e6550d"
EFF_LINE = "#54278f"
HEAD_FILL, SAT_FILL = "#31a354", "#de2d26"

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1150px}
h1{font-size:20px;margin:0 0 4px} .sub{color:#555;margin:0 0 12px;word-break:break-all}
table{border-collapse:collapse;margin:12px 0} td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums} .key span{display:inline-block;width:12px;height:12px;
margin:0 4px 0 14px;vertical-align:-1px} svg text{font:11px system-ui,sans-serif;fill:#333}
.note{color:#8a5a00} details{margin-top:10px;color:#444}
"""


def _f(x: float) -> str:
    return f"{x:.1f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _ticks(span: float) -> list[float]:
    """About 10 round tick positions over [0, span] seconds."""
    if span <= 0:
        return [0.0]
    raw = span / 10
    mag = 10 ** int(f"{raw:e}".split("e")[1])
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(span / step) + 1)]


def _step_path(
    pts: Sequence[tuple[float, float]], x_of: Callable[[float], float], y_of: Callable[[float], float]
) -> str:
    out: list[str] = []
    for i, (t, v) in enumerate(pts):
        x, y = x_of(t), y_of(v)
        if i == 0:
            out.append(f"M{_f(x)},{_f(y)}")
        else:
            out.append(f"H{_f(x)}V{_f(y)}")
    return "".join(out)


def _bucket(
    t0: float, t1: float, steps: Sequence[tuple[float, float, float]], n: int
) -> list[tuple[float, float]]:
    """Time-weighted mean of a step function in ``n`` equal buckets."""
    width = (t1 - t0) / n
    acc = [0.0] * n
    for a, b, v in steps:
        i = max(0, int((a - t0) / width))
        while a < b and i < n:
            edge = min(b, t0 + (i + 1) * width)
            acc[i] += v * (edge - a)
            a = edge
            i += 1
    return [(t0 + i * width, acc[i] / width) for i in range(n)]


def render_report(
    *,
    summary: TraceSummary,
    title: str,
    command: str | None,
    unix_t0: float,
    t0: float,
    t_end: float,
    series: Series,
    spans: Sequence[SpanRecord],
) -> str:
    """The whole HTML page as a string."""
    cpu_start, cpu_t, cpu_v = series.cpu_start, series.cpu_t, series.cpu_v
    dur = max(t_end - t0, 1e-6)
    jobs = summary.jobs
    top = 20
    y_max = max(jobs, summary.peak_in_use, 1)

    def x_of(t: float) -> float:
        return LEFT + PLOT_W * min(max(t - t0, 0.0), dur) / dur

    def y_slots(v: float) -> float:
        return top + CHART_H * (1 - v / y_max)

    def y_cpu(c: float) -> float:
        return top + CHART_H * (1 - c)

    svg: list[str] = []
    # Background bands: headroom and saturation along the time axis.
    band_y = top + CHART_H + 6
    segs = list(segments(t0, t_end, series))
    runs: list[list[Any]] = []  # [start, end, color], adjacent equal colours merged
    for a, b, v, cpu in segs:
        color = None
        if cpu is not None and v < jobs and cpu < HEADROOM_CPU:
            color = HEAD_FILL
        elif cpu is not None and v >= jobs and cpu >= SATURATED_CPU:
            color = SAT_FILL
        if runs and runs[-1][2] == color and runs[-1][1] == a:
            runs[-1][1] = b
        else:
            runs.append([a, b, color])
    for a, b, color in runs:
        if color:
            svg.append(f'<rect x="{_f(x_of(a))}" y="{band_y}" width="{max(0.6, x_of(b) - x_of(a)):.2f}" '
                       f'height="10" fill="{color}"/>')
    # Grid and axes.
    for k in range(y_max + 1):
        if y_max > 16 and k % max(1, y_max // 8):
            continue
        y = y_slots(k)
        svg.append(f'<line x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{_f(y)}" y2="{_f(y)}" stroke="#eee"/>')
        svg.append(f'<text x="{LEFT - 6}" y="{_f(y + 4)}" text-anchor="end">{k}</text>')
    for p in (0, 25, 50, 75, 100):
        y = y_cpu(p / 100)
        svg.append(f'<text x="{LEFT + PLOT_W + 6}" y="{_f(y + 4)}" fill="{CPU_LINE}">{p}%</text>')
    for tick in _ticks(dur):
        x = x_of(t0 + tick)
        svg.append(f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{top}" y2="{top + CHART_H}" stroke="#f3f3f3"/>')
        svg.append(f'<text x="{_f(x)}" y="{band_y + 24}" text-anchor="middle">{tick:g} s</text>')
    # Slots in use: a filled step area.
    steps = [(a, b, float(v)) for a, b, v, _ in segs]
    if len(steps) > MAX_POINTS:
        pts = _bucket(t0, t_end, steps, PLOT_W)
    else:
        pts = [(a, v) for a, _, v in steps]
    if pts:
        pts.append((t_end, pts[-1][1]))
        path = _step_path(pts, x_of, y_slots)
        base = _f(y_slots(0))
        svg.append(f'<path d="{path}V{base}H{_f(x_of(t0))}Z" fill="{SLOT_FILL}" fill-opacity="0.75"/>')
        svg.append(f'<path d="{path}" fill="none" stroke="{SLOT_LINE}" stroke-width="1.5"/>')
    # Pool size line.
    y = y_slots(jobs)
    svg.append(f'<line x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{_f(y)}" y2="{_f(y)}" stroke="{SLOT_LINE}" '
               'stroke-dasharray="4 3"/>')
    # Effective size (a governed or resized pool): a thick step line, with
    # the limits in force as tooltips.
    esteps = list(effective_steps(t0, t_end, series))
    if esteps:
        epts = [(a, float(e)) for a, _, e, _ in esteps]
        epts.append((t_end, epts[-1][1]))
        svg.append(f'<path d="{_step_path(epts, x_of, y_slots)}" fill="none" stroke="{EFF_LINE}" '
                   'stroke-width="2.5" stroke-opacity="0.9"/>')
        for a, b, e, why in esteps:
            if e < jobs:
                tip = html.escape(f"effective {e} of {jobs}: limited by {', '.join(why) or 'resize'}")
                svg.append(f'<rect x="{_f(x_of(a))}" y="{top}" width="{max(0.6, x_of(b) - x_of(a)):.2f}" '
                           f'height="4" fill="{EFF_LINE}" fill-opacity="0.5"><title>{tip}</title></rect>')
    # CPU busy: a step line.
    if cpu_start is not None and len(cpu_t):
        csteps: list[tuple[float, float, float]] = []
        prev = cpu_start
        for t, c in zip(cpu_t, cpu_v):
            csteps.append((prev, t, c))
            prev = t
        cpts = (_bucket(t0, t_end, csteps, PLOT_W) if len(csteps) > MAX_POINTS
                else [(a, c) for a, _, c in csteps])
        cpts.append((csteps[-1][1], csteps[-1][2]))
        svg.append(f'<path d="{_step_path(cpts, x_of, y_cpu)}" fill="none" stroke="{CPU_LINE}" '
                   'stroke-width="1.5"/>')
    svg.append(f'<rect x="{LEFT}" y="{top}" width="{PLOT_W}" height="{CHART_H}" fill="none" stroke="#999"/>')
    svg.append(f'<text x="14" y="{top + CHART_H / 2}" transform="rotate(-90 14 {top + CHART_H / 2})" '
               'text-anchor="middle">slots in use</text>')
    svg.append(f'<text x="{W - 12}" y="{top + CHART_H / 2}" transform="rotate(90 {W - 12} '
               f'{top + CHART_H / 2})" text-anchor="middle" fill="{CPU_LINE}">CPU busy</text>')
    chart_h = band_y + 34
    chart = f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{chart_h}" role="img">' \
            f'<title>slots in use and CPU busy over time</title>{"".join(svg)}</svg>'

    # Job lanes.
    lanes_svg = ""
    if spans:
        n_lanes = max(s.lane for s in spans)
        lane_h = 18 if n_lanes <= 16 else max(4, 300 // n_lanes)
        parts: list[str] = []
        for s in spans:
            x = x_of(s.start)
            w = max(1.0, x_of(s.end) - x)
            y = 4 + (s.lane - 1) * lane_h
            label = html.escape(s.name)
            tip = html.escape(f"{s.name}\n{s.end - s.start:.3f} s from {s.start - t0:.3f} s")
            parts.append(f'<g><title>{tip}</title><rect x="{_f(x)}" y="{y}" width="{w:.2f}" '
                         f'height="{lane_h - 3}" rx="2" fill="#756bb1" fill-opacity="0.8"/>')
            if w > 40 and lane_h >= 14:
                chars = int(w / 6.5)
                text = label if len(s.name) <= chars else html.escape(s.name[: max(1, chars - 1)]) + "…"
                parts.append(f'<text x="{_f(x + 3)}" y="{y + lane_h - 7}" style="fill:#fff">{text}</text>')
            parts.append("</g>")
        for lane in range(1, n_lanes + 1):
            parts.append(f'<text x="{LEFT - 6}" y="{4 + (lane - 1) * lane_h + lane_h - 7}" '
                         f'text-anchor="end">{lane}</text>')
        h = 8 + n_lanes * lane_h
        lanes_svg = (f'<h2 style="font-size:16px">Jobs ({len(spans)})</h2>'
                     f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" role="img">'
                     f'<title>job spans</title>{"".join(parts)}</svg>')

    rows = [
        ("wall time", f"{summary.wall_time:.2f} s"),
        ("pool size (slots)", str(jobs)),
        ("slots in use: mean / peak", f"{summary.mean_in_use:.2f} / {summary.peak_in_use}"),
        ("at least one slot idle", _pct(summary.idle_share)),
        (f"parallelism headroom: a slot idle and CPU &lt; {100 * HEADROOM_CPU:.0f}% busy",
         _pct(summary.headroom_share)),
        (f"saturated: all slots busy and CPU &ge; {100 * SATURATED_CPU:.0f}% busy",
         _pct(summary.saturated_share)),
        ("mean CPU busy", f"{_pct(summary.mean_cpu)} of {summary.cpu_count} core(s)"
         if summary.mean_cpu is not None else "n/a"),
        *([("effective size: mean / min", f"{summary.mean_effective:.2f} / {summary.min_effective}"),
           ("limits held slots back", _held(summary))] if summary.mean_effective is not None else []),
        ("job spans", str(summary.spans)),
        ("sampler", f"{summary.samples} samples, {100 * summary.sampler_cost:.2f}% of one core"),
    ]
    table = "".join(f'<tr><th>{k}</th><td class="n">{v}</td></tr>' for k, v in rows)
    notes = "".join(f'<p class="note">note: {html.escape(n)}</p>' for n in summary.notes)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_t0))
    cmd = f'<p class="sub"><code>{html.escape(command)}</code></p>' if command else ""
    key = (f'<p class="key"><span style="background:{SLOT_FILL};border:1px solid {SLOT_LINE}"></span>slots in use'
           f'<span style="border-top:2px dashed {SLOT_LINE};height:0"></span>pool size'
           + (f'<span style="background:{EFF_LINE};height:3px"></span>effective size (limits)'
              if len(series.eff_v) else "")
           + f'<span style="background:{CPU_LINE};height:2px"></span>CPU busy (all cores)'
           f'<span style="background:{HEAD_FILL}"></span>headroom'
           f'<span style="background:{SAT_FILL}"></span>saturated</p>')
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{cmd}<p class=\"sub\">recorded {when}</p>"
        f"{key}{chart}{lanes_svg}<table>{table}</table>{notes}"
        "<details><summary>How to read this</summary><p>A <b>slot</b> is one job the jobserver allows "
        "at a time (the pool size is the <code>-j</code> value). <b>Parallelism headroom</b> is the share "
        "of wall time in which at least one slot sat idle while the machine's CPU was less than half busy: "
        "work that could have run then did not exist yet (a dependency chain, a serial link step, one "
        "big crate), so more parallelism <i>inside</i> the running jobs (e.g. rustc threads) would have "
        "found free cores. <b>Saturated</b> is the share in which every slot was taken and the CPU was "
        "busy: extra threads there only compete for cores.</p></details></body></html>"
    )


def _held(summary: TraceSummary) -> str:
    if summary.held_back_time <= 0:
        return "never"
    share = summary.held_back_time / summary.wall_time if summary.wall_time > 0 else 0.0
    why = ", ".join(f"{html.escape(n)} {t:.2f} s" for n, t in summary.held_back_by)
    return f"{summary.held_back_time:.2f} s ({100 * share:.1f}%): {why}"


def find_chromium() -> str | None:
    """A headless-capable Chromium or Chrome on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html_path: str | os.PathLike[str], png_path: str | os.PathLike[str], *,
               width: int = 1200, height: int = 800, timeout: float = 60) -> None:
    """Render ``html_path`` in headless Chromium to ``png_path`` (raises
    FileNotFoundError when no Chromium is installed)."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
    url = Path(html_path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="fastjob-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--screenshot={Path(png_path).resolve()}", f"--window-size={width},{height}", url]
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)
    if not Path(png_path).exists():
        raise RuntimeError(f"chromium wrote no screenshot for {url}")
