"""The governor: Limits, the hysteresis rule through the seam (injected
readings and clock), and every limit against the real /proc source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import fastjob
from fastjob._governor import Governor, ProcSource, Readings, parse_size

from conftest import FASTJOB

LINUX = sys.platform.startswith("linux")
needs_proc = pytest.mark.skipif(not LINUX, reason="reads /proc")


class FakeSource:
    def __init__(self, r: Readings) -> None:
        self.r = r
        self.platform = "linux"

    def read(self) -> Readings:
        return self.r


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# -- Limits -------------------------------------------------------------------------
def test_parse_size() -> None:
    assert parse_size("4G") == 4 << 30
    assert parse_size("512M") == 512 << 20
    assert parse_size("1.5GiB") == int(1.5 * (1 << 30))
    assert parse_size("100k") == 100 << 10
    assert parse_size("1000000") == 1000000
    assert parse_size(4096) == 4096
    for bad in ("4X", "", "G", "-1G", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(TypeError):
        parse_size(True)


def test_limits_validate_and_normalise() -> None:
    lim = fastjob.Limits(load_average=2, min_free_memory="2G", max_memory_pressure=10,
                         max_cpu_pressure=80.5)
    assert lim.min_free_memory == 2 << 30 and lim.load_average == 2.0
    assert lim.names() == ("load", "memory", "memory-pressure", "cpu-pressure")
    assert not fastjob.Limits()
    with pytest.raises(ValueError, match="percentage"):
        fastjob.Limits(max_cpu_pressure=120)
    with pytest.raises(ValueError, match="> 0"):
        fastjob.Limits(load_average=0)
    with pytest.raises(ValueError, match="memory size"):
        fastjob.Limits(min_free_memory="lots")
    with pytest.raises(TypeError):
        fastjob.Server(2, limits={"load_average": 1})  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        lim.load_average = 3  # type: ignore[misc]  # frozen


def test_statistics_is_frozen() -> None:
    with fastjob.Server(3) as s:
        st = s.statistics()
        assert isinstance(st, fastjob.ServerStatistics)
        with pytest.raises(AttributeError):
            st.jobs = 4  # type: ignore[misc]


# -- the rule, through the seam ------------------------------------------------------------
@pytest.fixture
def pool() -> Iterator[fastjob.Server]:
    with fastjob.Server(6) as s:
        yield s


def test_shrinks_one_slot_per_tick_never_below_one(pool: fastjob.Server) -> None:
    src = FakeSource(Readings(load=9.0))
    clock = FakeClock()
    g = Governor(fastjob.Limits(load_average=2.0), pool._size, source=src, clock=clock)
    g.prepare()  # the first reading is over already: one slot less
    assert pool.statistics().effective == 5
    for want in (4, 3, 2, 1, 1, 1):
        clock.t += 0.25
        g.step()
        st = pool.statistics()
        assert st.effective == want and st.limited_by == ("load",)
    assert pool.available() == 0 and pool.withheld == 5
    assert pool.jobs == 6  # the size asked for is unchanged


def test_grows_only_after_two_calm_seconds_one_slot_at_a_time(pool: fastjob.Server) -> None:
    src = FakeSource(Readings(cpu_pressure=90.0))
    clock = FakeClock()
    g = Governor(fastjob.Limits(max_cpu_pressure=50), pool._size, source=src, clock=clock)
    g.prepare()
    for _ in range(4):
        clock.t += 0.25
        g.step()
    assert pool.statistics().effective == 1
    src.r = Readings(cpu_pressure=10.0)
    history = []
    for _ in range(int(12 / 0.25)):
        clock.t += 0.25
        g.step()
        history.append(pool.statistics().effective)
    # grows at 2 s, 4 s, ... : never two slots within 2 s
    assert history[6] == 1 and history[7] == 2  # 2.0 s after the last excess
    assert history[15] == 3 and history[14] == 2
    assert history[-1] == 6
    assert pool.statistics().limited_by == ()
    # one bad reading restarts the clock
    src.r = Readings(cpu_pressure=70.0)
    clock.t += 0.25
    g.step()
    assert pool.statistics().effective == 5
    src.r = Readings(cpu_pressure=10.0)
    for _ in range(7):
        clock.t += 0.25
        g.step()
    assert pool.statistics().effective == 5
    clock.t += 0.25
    g.step()
    assert pool.statistics().effective == 6


def test_limits_satisfied_at_start_give_the_full_size(pool: fastjob.Server) -> None:
    """Plenty of memory (and every other limit met): no slow start, nothing
    reported as limiting."""
    src = FakeSource(Readings(load=0.1, mem_available=64 << 30, memory_pressure=0.0,
                              cpu_pressure=0.0))
    clock = FakeClock()
    g = Governor(fastjob.Limits(load_average=4, min_free_memory="4G", max_memory_pressure=20,
                                max_cpu_pressure=50), pool._size, source=src, clock=clock)
    g.prepare()
    st = pool.statistics()
    assert (st.jobs, st.effective, st.free, st.withheld, st.limited_by) == (6, 6, 5, 0, ())
    for _ in range(12):
        clock.t += 0.25
        g.step()
        assert pool.statistics().effective == 6 and pool.statistics().limited_by == ()
    # the first excess: the rule, one slot per tick, named for what it is
    src.r = Readings(load=0.1, mem_available=3 << 30, memory_pressure=0.0, cpu_pressure=0.0)
    clock.t += 0.25
    g.step()
    st = pool.statistics()
    assert st.effective == 5 and st.limited_by == ("memory",)


def test_just_enough_room_per_slot_is_a_full_start(pool: fastjob.Server) -> None:
    from fastjob._governor import SLOW_START_ROOM

    floor = 4 << 30
    g = Governor(fastjob.Limits(min_free_memory=floor), pool._size,
                 source=FakeSource(Readings(mem_available=floor + 6 * SLOW_START_ROOM)),
                 clock=FakeClock())
    g.prepare()
    assert pool.statistics().effective == 6 and pool.statistics().limited_by == ()
    with fastjob.Server(6) as other:  # one byte less room: a slow start
        g = Governor(fastjob.Limits(min_free_memory=floor), other._size,
                     source=FakeSource(Readings(mem_available=floor + 6 * SLOW_START_ROOM - 1)),
                     clock=FakeClock())
        g.prepare()
        assert other.statistics().effective == 1
        assert other.statistics().limited_by == ("memory",)


def test_little_room_above_the_floor_is_a_slow_start_named_memory(pool: fastjob.Server) -> None:
    """1 GiB above a 4 GiB floor for 6 slots: start at one slot, grow by the
    hysteresis rule, and name the limit it guards, "memory" (limited_by
    keeps to the contract's four names), until the pool is whole."""
    src = FakeSource(Readings(mem_available=5 << 30, memory_pressure=0.0))
    clock = FakeClock()
    g = Governor(fastjob.Limits(min_free_memory="4G", max_memory_pressure=20), pool._size,
                 source=src, clock=clock)
    g.prepare()
    st = pool.statistics()
    assert (st.effective, st.withheld, st.limited_by) == (1, 5, ("memory",))
    history = []
    for _ in range(8):
        clock.t += 0.25
        g.step()
        history.append(pool.statistics())
    assert [h.effective for h in history] == [1] * 7 + [2]  # after 2 calm seconds
    assert all(h.limited_by == ("memory",) for h in history)
    src.r = Readings(mem_available=3 << 30, memory_pressure=30.0)
    clock.t += 0.25
    g.step()
    st = pool.statistics()
    assert st.effective == 1 and st.limited_by == ("memory", "memory-pressure")
    src.r = Readings(mem_available=5 << 30, memory_pressure=0.0)
    for _ in range(int(5 * 2.0 / 0.25)):
        clock.t += 0.25
        g.step()
    st = pool.statistics()
    assert st.effective == 6 and st.limited_by == () and st.withheld == 0


def test_memory_below_the_floor_at_start_is_one_slot_named_memory(pool: fastjob.Server) -> None:
    src = FakeSource(Readings(load=9.0, mem_available=3 << 30))
    g = Governor(fastjob.Limits(load_average=4, min_free_memory="4G"), pool._size,
                 source=src, clock=FakeClock())
    g.prepare()
    st = pool.statistics()
    assert (st.effective, st.withheld, st.limited_by) == (1, 5, ("load", "memory"))


def test_never_below_one_slot_from_a_slow_start(pool: fastjob.Server) -> None:
    src = FakeSource(Readings(mem_available=(4 << 30) + 1))
    clock = FakeClock()
    g = Governor(fastjob.Limits(min_free_memory="4G"), pool._size, source=src, clock=clock)
    g.prepare()
    src.r = Readings(mem_available=1 << 20)
    for _ in range(10):
        clock.t += 0.25
        g.step()
        assert pool.statistics().effective == 1
    assert pool.statistics().limited_by == ("memory",)


def test_resize_under_a_cap_keeps_the_cap(pool: fastjob.Server) -> None:
    src = FakeSource(Readings(load=9.0))
    g = Governor(fastjob.Limits(load_average=1.0), pool._size, source=src, clock=FakeClock())
    g.prepare()
    g.step()
    assert pool.statistics().effective == 4
    pool.resize(10)
    st = pool.statistics()
    assert (st.jobs, st.effective) == (10, 4)
    pool.resize(3)
    assert pool.statistics().effective == 3


def test_missing_psi_is_said_once_and_ignored(tmp_path: Path) -> None:
    (tmp_path / "loadavg").write_text("0.50 0.40 0.30 1/100 42\n")
    (tmp_path / "meminfo").write_text("MemTotal: 100 kB\nMemAvailable:    2048 kB\n")
    src = ProcSource(root=str(tmp_path), platform="linux")
    assert src.read() == Readings(load=0.5, mem_available=2048 * 1024)
    with fastjob.Server(4) as s:
        g = Governor(fastjob.Limits(load_average=4, max_cpu_pressure=10, max_memory_pressure=10),
                     s._size, source=src, clock=FakeClock())
        with pytest.warns(fastjob.JobserverWarning, match="memory-pressure, cpu-pressure ignored"):
            g.prepare()
        assert g.active == ("load",) and g.unsupported == ("memory-pressure", "cpu-pressure")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for _ in range(3):
                g.step()  # no second warning
        assert s.statistics().effective == 4


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_other_platforms_say_which_limits_are_unsupported(platform: str) -> None:
    src = ProcSource(platform=platform)
    r = src.read()
    assert r.mem_available is None and r.memory_pressure is None and r.cpu_pressure is None
    with fastjob.Server(2) as s:
        g = Governor(fastjob.Limits(min_free_memory="1G", max_cpu_pressure=5), s._size,
                     source=src)
        with pytest.warns(fastjob.JobserverWarning, match=f"cannot be read on {platform}"):
            g.prepare()
        assert g.active == ()


def test_psi_file_parsing(tmp_path: Path) -> None:
    (tmp_path / "pressure").mkdir()
    (tmp_path / "pressure" / "cpu").write_text(
        "some avg10=12.34 avg60=1.00 avg300=0.50 total=1\nfull avg10=0.00 avg60=0 avg300=0 total=0\n"
    )
    assert ProcSource(root=str(tmp_path), platform="linux").pressure("cpu") == 12.34


@needs_proc
def test_real_memory_plentiful_at_start_is_the_full_size() -> None:
    """The real /proc source, a floor far below MemAvailable: full size from
    the first moment, nothing limiting, and it stays so."""
    with fastjob.Server(4, limits=fastjob.Limits(min_free_memory="1M")) as s:
        st = s.statistics()
        assert (st.jobs, st.effective, st.free, st.withheld, st.limited_by) == (4, 4, 3, 0, ())
        time.sleep(0.6)
        st = s.statistics()
        assert (st.effective, st.withheld, st.limited_by) == (4, 0, ())


@needs_proc
def test_real_memory_little_room_is_a_slow_start() -> None:
    avail = _meminfo_available()
    floor = avail - (256 << 20)  # 256 MiB of room for 4 slots
    with fastjob.Server(4, limits=fastjob.Limits(min_free_memory=floor)) as s:
        st = s.statistics()
        assert st.effective == 1 and st.withheld == 3
        # a slow start, or the floor crossed if something took the 256 MiB
        assert st.limited_by == ("memory",)


def test_governor_thread_runs_in_the_server() -> None:
    # a real Server(limits=...) with the real source: a floor nobody can meet
    with fastjob.Server(4, limits=fastjob.Limits(min_free_memory=1 << 60)) as s:
        assert s.limits is not None and s.limits.min_free_memory == 1 << 60
        time.sleep(0.6)
        st = s.statistics()
        assert st.effective == 1 and st.limited_by == ("memory",) and st.withheld == 3


# -- each limit against the real /proc source -----------------------------------------------
def _meminfo_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable")


@needs_proc
def test_real_memory_reading_over_and_under_the_floor() -> None:
    src = ProcSource()
    avail = src.mem_available()
    assert avail is not None and abs(avail - _meminfo_available()) < (1 << 30)
    with fastjob.Server(3) as s:
        clock = FakeClock()
        g = Governor(fastjob.Limits(min_free_memory=avail * 4), s._size, clock=clock)
        g.prepare()
        clock.t += 5
        g.step()
        assert s.statistics().effective == 1 and s.statistics().limited_by == ("memory",)
        g.limits = fastjob.Limits(min_free_memory="1M")
        clock.t += 2
        g.step()
        assert s.statistics().effective == 2


def _burners(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


@pytest.fixture
def cpu_load() -> Iterator[None]:
    procs = _burners(3)
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


@needs_proc
@pytest.mark.skipif(not os.path.exists("/proc/pressure/cpu"), reason="no PSI")
def test_real_cpu_pressure(cpu_load: None) -> None:
    src = ProcSource()
    deadline = time.monotonic() + 30
    while (src.pressure("cpu") or 0) <= 1.0:  # 3 busy processes on 2 cores stall
        assert time.monotonic() < deadline, "no CPU pressure under load"
        time.sleep(0.2)
    with fastjob.Server(4) as s:
        g = Governor(fastjob.Limits(max_cpu_pressure=0.5), s._size, clock=FakeClock())
        g.prepare()
        g.step()
        st = s.statistics()
        assert st.effective == 2 and st.limited_by == ("cpu-pressure",)


@needs_proc
@pytest.mark.skipif(not os.path.exists("/proc/pressure/memory"), reason="no PSI")
def test_real_memory_pressure_reading() -> None:
    text = Path("/proc/pressure/memory").read_text()
    some = float(text.split("avg10=")[1].split()[0])
    got = ProcSource().pressure("memory")
    assert got is not None and 0 <= got <= 100 and abs(got - some) < 20
    with fastjob.Server(3) as s:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # readable: no "ignored" warning
            g = Governor(fastjob.Limits(max_memory_pressure=100), s._size, clock=FakeClock())
            g.prepare()
        assert g.active == ("memory-pressure",)
        g.step()
        assert s.statistics().effective == 3  # 100% is never exceeded


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


@needs_proc
def test_load_average_limit_against_real_cpu_load(cpu_load: None) -> None:
    """`fastjob run -l` with real load: the pool is held at one slot."""
    deadline = time.monotonic() + 90
    while _loadavg() < 0.6:  # the 1-minute average rises slowly
        assert time.monotonic() < deadline, "load average did not rise"
        time.sleep(0.5)
    limit = 0.3
    script = textwrap.dedent("""
        import json, subprocess, time
        time.sleep(1.5)
        print(subprocess.run(%r, capture_output=True, text=True).stdout, end="")
    """) % ([*FASTJOB, "status", "--json"],)
    out = subprocess.run([*FASTJOB, "run", "-j4", "-l", str(limit), "--", sys.executable, "-c",
                          script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert _loadavg() > limit
    assert st["effective"] == 1 and st["limited_by"] == ["load"] and st["withheld"] == 3


# -- a real memory-hungry build under --min-free-memory ---------------------------------------
JOB = textwrap.dedent("""
    import sys, time
    mb = int(sys.argv[1])
    chunks = []
    for _ in range(mb // 32):          # touch every page, 32 MB at a time
        b = bytearray(32 << 20)
        for i in range(0, len(b), 4096):
            b[i] = 1
        chunks.append(b)
        time.sleep(0.01)
    time.sleep(0.8)
""")

DRIVER = textwrap.dedent("""
    import subprocess, sys, threading
    import fastjob
    n, mb, job = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    client = fastjob.from_env(strict=True)
    def one():
        with client.acquire_blocking():
            subprocess.run([sys.executable, "-c", job, str(mb)], check=True)
    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads: t.start()
    for t in threads: t.join()
""")


@needs_proc
def test_memory_hungry_build_stays_near_the_floor(tmp_path: Path) -> None:
    job_mb, n_jobs = 320, 10
    job = job_mb << 20
    avail0 = _meminfo_available()
    # room for about 3 jobs above the floor: all 10 at once would go 7 jobs below it
    floor = avail0 - int(3.5 * job)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(_meminfo_available())
            time.sleep(0.02)

    t = threading.Thread(target=sample)
    t.start()
    try:
        out = subprocess.run(
            [*FASTJOB, "run", "-j8", "--min-free-memory", str(floor), "--",
             sys.executable, "-c", DRIVER, str(n_jobs), str(job_mb), JOB],
            capture_output=True, text=True, timeout=240,
        )
    finally:
        stop.set()
        t.join()
    assert out.returncode == 0, out.stderr
    lowest = min(samples)
    print("memory test:", avail0 >> 20, floor >> 20, lowest >> 20, "MiB")
    # the floor is crossed by at most about one job (plus what others on this
    # machine did meanwhile)
    assert lowest >= floor - int(1.25 * job), (avail0, floor, lowest)
    assert avail0 - lowest >= 1.5 * job  # and jobs did run side by side


# -- --trace / --report of a governed pool ----------------------------------------------------
def test_trace_shows_effective_size_and_held_back_time(tmp_path: Path) -> None:
    from fastjob.trace import Recorder

    with fastjob.Server(4) as s:
        with Recorder(s, implicit=False) as rec:
            time.sleep(0.1)
            s.resize(2)
            time.sleep(0.2)
            s.resize(4)
            time.sleep(0.1)
        eff = [e for _, e, _ in rec.effective]
        assert eff == [4, 2, 4]
        summary = rec.summary()
        assert summary.min_effective == 2 and 0.15 < summary.held_back_time < 1.0
        assert [name for name, _ in summary.held_back_by] == ["resize"]
        assert "limits held slots back for" in summary.format()
        data = rec.chrome_trace()
        names = {(e["ph"], e["name"]) for e in data["traceEvents"]}
        assert ("C", "effective size") in names and ("X", "held back by resize") in names
        assert "effective size (limits)" in rec.report_html()


def test_cli_trace_of_a_governed_run(tmp_path: Path) -> None:
    trace, report = tmp_path / "t.json", tmp_path / "r.html"
    out = subprocess.run(
        [*FASTJOB, "run", "-j4", "--min-free-memory", str(1 << 60), "--trace", str(trace),
         "--report", str(report), "--", sys.executable, "-c", "import time; time.sleep(0.8)"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "limits held slots back for" in out.stderr and "memory" in out.stderr
    assert "min 1 of 4" in out.stderr
    data = json.loads(trace.read_text())
    assert {e["args"]["slots"] for e in data["traceEvents"] if e["name"] == "effective size"} == {1}
    held = [e for e in data["traceEvents"] if e["name"] == "held back by memory"]
    assert held and sum(e["dur"] for e in held) > 0.5e6
    html = report.read_text()
    assert "limits held slots back" in html and "memory" in html


def test_ungoverned_summary_has_no_limits_line() -> None:
    out = subprocess.run([*FASTJOB, "run", "-j2", "--trace", os.devnull, "--", "true"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "limits" not in out.stderr


# -- the CLI options ------------------------------------------------------------------------
def test_cli_limit_options_parse_into_limits() -> None:
    from fastjob.cli import build_parser
    from fastjob.cli.limits import limits_from_args

    p = build_parser()
    for cmd in (["run", "-j2"], ["parallel", "-j2"]):
        ns = p.parse_args([*cmd, "-l", "3.5", "--min-free-memory", "2G",
                           "--max-pressure", "memory=20,cpu=80%"])
        assert limits_from_args(ns) == fastjob.Limits(
            load_average=3.5, min_free_memory=2 << 30, max_memory_pressure=20, max_cpu_pressure=80)
        assert limits_from_args(p.parse_args(cmd)) is None
    ns = p.parse_args(["run", "--max-pressure", "cpu=5"])
    assert limits_from_args(ns) == fastjob.Limits(max_cpu_pressure=5)


@pytest.mark.parametrize("bad", [["-l", "0"], ["--min-free-memory", "4X"],
                                 ["--max-pressure", "disk=5"], ["--max-pressure", "cpu=101"],
                                 ["--max-pressure", "cpu=1,cpu=2"]])
def test_cli_bad_limit_is_one_line_exit_2(bad: list[str]) -> None:
    out = subprocess.run([*FASTJOB, "run", "-j2", *bad, "--", "true"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr


def test_cli_limits_inside_another_jobserver_need_j() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS")}
    code = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"
    # a fastjob pool outside, `fastjob run -l` without -j inside it
    out = subprocess.run([*FASTJOB, "run", "-j2", "--", sys.executable, "-c", code,
                          *FASTJOB, "run", "-l", "4", "--", "true"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 1 and "give -j N as well" in out.stderr
