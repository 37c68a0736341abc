"""fastjob.trace: occupancy/CPU sampling, spans, Chrome trace JSON, HTML report."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path
from typing import Any

import anyio
import pytest

SLACK = float(os.environ.get("FASTJOB_TRACE_SLACK", "0.1"))

import fastjob
from fastjob.trace.report import find_chromium, screenshot
from fastjob.trace.summary import Series, summarize
from fastjob.trace import Recorder, TraceSummary

from conftest import debian_make, gnumake44

SLACK = 0.06  # sampling error: max_interval (25 ms) plus scheduling delay on a loaded machine


# -- helpers -----------------------------------------------------------------------------
def validate_chrome_trace(data: dict[str, Any]) -> None:
    """Check the Trace Event Format: object form, required keys and types per
    phase, non-decreasing timestamps."""
    assert isinstance(data, dict) and isinstance(data["traceEvents"], list)
    assert data.get("displayTimeUnit") in ("ms", "ns")
    last = float("-inf")
    for ev in data["traceEvents"]:
        assert isinstance(ev["name"], str) and ev["name"]
        assert ev["ph"] in ("M", "C", "X"), ev
        assert isinstance(ev["pid"], int) and isinstance(ev["tid"], int)
        assert isinstance(ev["ts"], (int, float)) and ev["ts"] >= 0
        assert ev["ts"] >= last, f"timestamps go backwards at {ev}"
        last = ev["ts"]
        args = ev.get("args", {})
        assert isinstance(args, dict)
        if ev["ph"] == "X":
            assert isinstance(ev["dur"], (int, float)) and ev["dur"] >= 0
        elif ev["ph"] == "C":
            assert args and all(isinstance(v, (int, float)) for v in args.values()), ev
        else:
            assert ev["name"] in ("process_name", "thread_name", "thread_sort_index")
    json.dumps(data)  # serialisable as it stands


def occupancy_in(rec: Recorder, a: float, b: float) -> set[int]:
    """Every value the slots-in-use step function takes in [a, b] (monotonic)."""
    occ = rec.occupancy
    values = {v for t, v in occ if a <= t <= b}
    before = [v for t, v in occ if t <= a]
    if before:
        values.add(before[-1])
    return values


def to_mono(rec: Recorder, unix: float) -> float:
    return rec.t0 + (unix - rec.unix_t0)


MAKEFILE = """\
all: p1 p2 p3 p4
serial:
\t@date +%s.%N > serial.start; sleep 0.8; date +%s.%N > serial.end
p%: serial
\t@date +%s.%N > $@.start; timeout 0.8 sh -c 'while :; do :; done' || true; date +%s.%N > $@.end
"""


# -- a known workload -------------------------------------------------------------------------
@pytest.mark.interop
@pytest.mark.parametrize("tool", ["make4.3-pipe", "make4.4-fifo"])
def test_make_serial_then_parallel(tmp_path: Path, tool: str) -> None:
    make, style = (debian_make(), "pipe") if tool == "make4.3-pipe" else (gnumake44(), "fifo")
    if make is None:
        pytest.skip(f"{tool} not installed")
    (tmp_path / "Makefile").write_text(MAKEFILE)
    with fastjob.Server(4, style=style) as server:
        with Recorder(server, implicit=True, command=[make]) as rec:
            subprocess.run([make], cwd=tmp_path, env=server.env(), pass_fds=server.pass_fds,
                           check=True, timeout=30)
        assert server.available() == 3  # the sampler never took a token
    stamp = {p.name: to_mono(rec, float(p.read_text())) for p in tmp_path.iterdir()
             if p.suffix in (".start", ".end")}
    # Serial phase: one slot (make's implicit one) in use.
    assert occupancy_in(rec, stamp["serial.start"] + SLACK, stamp["serial.end"] - SLACK) == {1}
    # Parallel phase: all four.
    par_a = max(stamp[f"p{i}.start"] for i in range(1, 5))
    par_b = min(stamp[f"p{i}.end"] for i in range(1, 5))
    assert par_b - par_a > 0.4
    assert occupancy_in(rec, par_a + SLACK, par_b - SLACK) == {4}
    # And it drops back before the end.
    assert rec.occupancy[-1][1] < 4
    s = rec.summary()
    assert s.jobs == 4 and s.peak_in_use == 4
    serial_share = (stamp["serial.end"] - stamp["serial.start"]) / s.wall_time
    assert s.idle_share == pytest.approx(serial_share, abs=0.1)
    assert 1.0 < s.mean_in_use < 3.5
    if sys.platform.startswith("linux"):
        # Four busy loops on this machine's cores: the parallel phase is saturated.
        assert s.saturated_share is not None and s.saturated_share > 0.2
        assert s.headroom_share is not None and s.headroom_share <= s.idle_share


@pytest.mark.anyio
async def test_run_process_spans_match_job_stamps(tmp_path: Path) -> None:
    results: dict[str, tuple[float, float]] = {}
    with fastjob.Server(3) as server:
        async with Recorder(server) as rec:

            async def job(i: int) -> None:
                cmd = ["sh", "-c", "date +%s.%N; sleep 0.15; date +%s.%N", f"job{i}"]
                out = await rec.run_process(cmd, client=server.client, stdout=subprocess.PIPE)
                a, b = out.stdout.split()
                results[f"job{i}"] = (to_mono(rec, float(a)), to_mono(rec, float(b)))

            async with anyio.create_task_group() as tg:
                for i in range(6):
                    tg.start_soon(job, i)
        assert server.available() == 2
    spans = rec.spans
    assert len(spans) == 6 and all(s.args["returncode"] == 0 for s in spans)
    assert {s.lane for s in spans} <= {1, 2, 3}
    # Each job's own stamps lie inside its span, a few ms from its ends.
    for name, (a, b) in results.items():
        s = next(s for s in spans if s.name.endswith(name))
        # a few ms on a quiet machine; the slack is for a loaded 2-core CI box
        assert s.start - 0.001 <= a <= s.start + SLACK, (s.start, a)
        assert s.end - SLACK <= b <= s.end + 0.001, (s.end, b)
    assert rec.summary().peak_in_use == 3  # two pool tokens + the implicit one
    assert rec.summary().spans == 6


@pytest.mark.anyio
async def test_jobgroup_spans(tmp_path: Path) -> None:
    with fastjob.Server(2) as server:
        async with Recorder(server) as rec:
            async with fastjob.JobGroup(server.client) as group:
                for i in range(4):
                    cmd = ["sleep", "0.1"]

                    async def one(cmd: list[str] = cmd) -> None:
                        with rec.span(cmd):
                            await anyio.run_process(cmd)

                    await group.spawn(one)
    spans = rec.spans
    assert [s.name for s in spans] == ["sleep 0.1"] * 4
    assert {s.lane for s in spans} == {1, 2}
    # At most two at once: a pool of two slots.
    edges = sorted([(s.start, 1) for s in spans] + [(s.end, -1) for s in spans])
    depth = peak = 0
    for _, d in edges:
        depth += d
        peak = max(peak, depth)
    assert peak == 2


# -- the JSON ----------------------------------------------------------------------------------
def test_chrome_trace_json_is_valid(tmp_path: Path) -> None:
    with fastjob.Server(3) as server:
        with Recorder(server) as rec:
            tok = server.client.acquire_blocking(5)
            with rec.span(["echo", "hi there"], args={"k": 1}):
                time.sleep(0.05)
            tok.release()
            rec.add_span("late job", time.monotonic() - 0.02, time.monotonic())
        path = tmp_path / "t.json"
        rec.write_trace(path)
    data = json.loads(path.read_text())
    validate_chrome_trace(data)
    kinds = {(e["ph"], e["name"]) for e in data["traceEvents"]}
    assert ("C", "slots in use") in kinds and ("X", "echo 'hi there'") in kinds
    if sys.platform.startswith("linux"):
        assert ("C", "CPU busy %") in kinds
    x = next(e for e in data["traceEvents"] if e["name"] == "echo 'hi there'")
    assert 45_000 <= x["dur"] <= 200_000 and x["args"] == {"k": 1} and x["cat"] == "job"
    slots = [e["args"]["slots"] for e in data["traceEvents"] if e["name"] == "slots in use"]
    assert slots[0] == 0 and max(slots) == 1  # the implicit token, held for the span
    assert data["otherData"]["jobs"] == 3
    assert data["otherData"]["summary"]["spans"] == 2


# -- the summary -------------------------------------------------------------------------------
def test_summary_arithmetic() -> None:
    # 4 slots: 1 in use for 1 s, then 4 for 1 s; CPU 20%, 60%, 95%, 50% per half second.
    series = Series(occ_t=[0.0, 1.0], occ_v=[1, 4],
                    cpu_start=0.0, cpu_t=[0.5, 1.0, 1.5, 2.0], cpu_v=[0.2, 0.6, 0.95, 0.5])
    s = summarize(jobs=4, t_start=0.0, t_end=2.0, series=series,
                  cpu_count=2, samples=10, sampler_cpu_seconds=0.001, spans=0)
    assert s.wall_time == 2.0 and s.peak_in_use == 4
    assert s.mean_in_use == pytest.approx(2.5)
    assert s.idle_share == pytest.approx(0.5)
    assert s.headroom_share == pytest.approx(0.25)  # idle slot and CPU 20%: [0, 0.5)
    assert s.saturated_share == pytest.approx(0.25)  # all busy and CPU 95%: [1, 1.5)
    assert s.mean_cpu == pytest.approx((0.2 + 0.6 + 0.95 + 0.5) / 4)
    text = s.format()
    assert "headroom" in text and "25.0%" in text and "pool of 4" in text


def test_no_cpu_data_says_so() -> None:
    with fastjob.Server(2) as server:
        with Recorder(server, cpu=False) as rec:
            time.sleep(0.02)
    s = rec.summary()
    assert s.headroom_share is None and s.saturated_share is None and s.mean_cpu is None
    assert "n/a" in s.format() and "CPU use not sampled" in s.format()
    assert s.idle_share == pytest.approx(1.0)


def test_context_manager_outputs(tmp_path: Path) -> None:
    got: list[TraceSummary] = []
    with fastjob.Server(2) as server:
        with open(tmp_path / "summary.txt", "w") as out:
            with Recorder(server, trace=tmp_path / "t.json", report=tmp_path / "r.html",
                          summary_file=out, on_summary=got.append, command="true"):
                time.sleep(0.02)
    assert len(got) == 1 and got[0].jobs == 2
    assert (tmp_path / "summary.txt").read_text().startswith("fastjob trace:")
    validate_chrome_trace(json.loads((tmp_path / "t.json").read_text()))
    page = (tmp_path / "r.html").read_text()
    assert "<svg" in page and "<script" not in page and "http" not in page.replace(
        "http://www.w3.org/2000/svg", "")


def test_recorder_on_a_client_counts_its_implicit_slot() -> None:
    with fastjob.Server(3) as server:
        with Recorder(server.client) as rec:  # a Client: the implicit slot is busy
            time.sleep(0.02)
        assert rec.occupancy[0][1] == 1
        with pytest.raises(RuntimeError):
            rec.start()
    with pytest.raises(TypeError):
        Recorder(object())  # type: ignore[arg-type]


# -- the sampler's cost ---------------------------------------------------------------------
def test_sampler_cost_on_an_idle_pool() -> None:
    seconds = float(os.environ.get("FASTJOB_TRACE_IDLE_SECONDS", "3"))
    with fastjob.Server(4) as server:
        with Recorder(server) as rec:
            time.sleep(seconds)
        assert server.available() == 3
        assert server.client.statistics().tokens_acquired == 0  # never took a token
    s = rec.summary()
    # Measured 0.6% on a quiet box (docs/trace.md); the bound catches a
    # sampler gone busy, not the noise of a loaded one.
    assert s.sampler_cost < 0.03, f"sampler used {100 * s.sampler_cost:.2f}% of one core"
    assert s.samples >= 0.5 * seconds / 0.025  # it did sample throughout (half: a loaded box)
    print(f"\nsampler cost on a {seconds:g} s idle run: {100 * s.sampler_cost:.3f}% of one core, "
          f"{s.samples} samples")


# -- the HTML report in a real browser ------------------------------------------------------------
def _png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes) into rows of pixels."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    height = depth = ctype = 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
    assert depth == 8 and ctype in (2, 6)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    i = 0
    for _ in range(height):
        f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line) if bpp == 3 else bytes(
            v for k in range(width) for v in line[k * 4:k * 4 + 3]))
        prev = line
    return width, height, rows


def _count_near(rows: list[bytes], rgb: tuple[int, int, int], tol: int = 12) -> int:
    n = 0
    for row in rows:
        for k in range(0, len(row), 3):
            if all(abs(row[k + j] - rgb[j]) <= tol for j in range(3)):
                n += 1
    return n


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    with fastjob.Server(4) as server:
        with Recorder(server, command="demo") as rec:
            toks = []
            for _ in range(4):
                with rec.span(f"job {len(toks)}"):
                    toks.append(server.client.acquire_blocking(5))
                    time.sleep(0.1)
            for t in toks:
                t.release()
            time.sleep(0.1)
    html = tmp_path / "r.html"
    png = tmp_path / "r.png"
    rec.write_report(html)
    screenshot(html, png, width=1200, height=800)
    width, height, rows = _png_pixels(png)
    assert (width, height) == (1200, 800)
    # The slots-in-use area (#9ecae1 at 75% on white), the span bars
    # (#756bb1 at 80%) and the summary table text are on screen.
    area = _count_near(rows, (182, 215, 233))
    bars = _count_near(rows, (145, 137, 193))
    assert area > 20_000, f"only {area} chart-area pixels: the chart did not render"
    assert bars > 1_000, f"only {bars} span pixels"


# -- the CLI ---------------------------------------------------------------------------------------
def _cli_has_trace() -> bool:
    try:
        out = subprocess.run([sys.executable, "-m", "fastjob", "run", "--help"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--trace" in out.stdout


needs_cli = pytest.mark.skipif(not _cli_has_trace(), reason="CLI has no --trace yet")


@needs_cli
@pytest.mark.interop
def test_cli_run_trace_and_report(tmp_path: Path) -> None:
    make = debian_make() or gnumake44()
    if make is None:
        pytest.skip("no GNU make")
    (tmp_path / "Makefile").write_text(MAKEFILE)
    out = subprocess.run(
        [sys.executable, "-m", "fastjob", "run", "-j4", "--trace", "t.json", "--report", "r.html",
         "--", make],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    assert "parallelism headroom" in out.stderr
    data = json.loads((tmp_path / "t.json").read_text())
    validate_chrome_trace(data)
    assert data["otherData"]["jobs"] == 4
    unix0 = data["otherData"]["unix_time_start"]
    stamp = {p.name: (float(p.read_text()) - unix0) * 1e6 for p in tmp_path.iterdir()
             if p.suffix in (".start", ".end")}
    counters = [(e["ts"], e["args"]["slots"]) for e in data["traceEvents"]
                if e["name"] == "slots in use"]

    def values(a: float, b: float) -> set[int]:
        vs = {v for t, v in counters if a <= t <= b}
        vs.update(v for t, v in [c for c in counters if c[0] <= a][-1:])  # the value at a
        return vs

    us = SLACK * 1e6
    assert values(stamp["serial.start"] + us, stamp["serial.end"] - us) == {1}
    par_a = max(stamp[f"p{i}.start"] for i in range(1, 5))
    par_b = min(stamp[f"p{i}.end"] for i in range(1, 5))
    assert values(par_a + us, par_b - us) == {4}
    assert "<svg" in (tmp_path / "r.html").read_text()


@needs_cli
def test_cli_parallel_trace_spans(tmp_path: Path) -> None:
    lines = "".join(f"sh -c 'date +%s.%N > s{i}; sleep 0.2; date +%s.%N > e{i}'\n" for i in range(6))
    out = subprocess.run(
        [sys.executable, "-m", "fastjob", "parallel", "-j3", "--trace", "t.json"],
        cwd=tmp_path, input=lines, capture_output=True, text=True, timeout=60, check=True)
    assert "parallelism headroom" in out.stderr
    data = json.loads((tmp_path / "t.json").read_text())
    validate_chrome_trace(data)
    unix0 = data["otherData"]["unix_time_start"]
    spans = [e for e in data["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == 6
    for i in range(6):
        a = (float((tmp_path / f"s{i}").read_text()) - unix0) * 1e6
        b = (float((tmp_path / f"e{i}").read_text()) - unix0) * 1e6
        span = next(e for e in spans if f"> s{i};" in e["name"])
        assert span["ts"] - 2_000 <= a <= span["ts"] + SLACK * 1e6
        assert span["ts"] + span["dur"] - SLACK * 1e6 <= b <= span["ts"] + span["dur"] + 2_000
    assert max(e["args"]["slots"] for e in data["traceEvents"] if e["name"] == "slots in use") == 3


def test_module_is_importable_standalone() -> None:
    code = "import fastjob.trace as t; print(t.Recorder.__name__)"
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=30, check=True)
    assert out.stdout.strip() == "Recorder"


def test_pool_closed_while_recording_stops_sampling() -> None:
    server = fastjob.Server(2)
    rec = Recorder(server).start()
    server.close()
    time.sleep(0.06)
    s = rec.stop()
    assert any("closed" in n for n in s.notes)
