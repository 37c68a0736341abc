"""Async benchmarks: uncontended ``async with client.token()`` cycle, hand-off
latency across processes, CPU burned while waiting, and release-to-wake
cost with 1 / 100 / 10,000 waiting tasks (plus memory per waiting task).

Every fastjob figure is taken native and pure (``FASTJOB_NO_EXTENSIONS=1``)
in alternating subprocesses, next to asyncio.Semaphore, anyio.CapacityLimiter
and a raw ``os.read`` + ``os.write`` pair measured in the same workers.

    python benchmarks/bench_async.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from _common import (
    HERE,
    IMPLS,
    PY,
    TOKENPOOL_NOTE,
    build_c,
    build_rust,
    fmt_ns,
    have_tokenpool,
    impl_env,
    machine,
    md_table,
    run_worker,
    summary,
)

BACKENDS = ("asyncio", "trio")


# ======================================================================================
# 1. uncontended cycle (worker)
# ======================================================================================
def _cycle_worker(n: int, batches: int) -> dict[str, Any]:
    import anyio
    import asyncio
    import trio

    import fastjob

    server = fastjob.Server(jobs=2)
    client = server.client
    r, w = server.pass_fds
    results: dict[str, list[float]] = {}

    async def fj_cycle() -> None:
        token = client.token
        for _ in range(n):
            async with token():
                pass

    async def fj_pool() -> None:
        held = client.try_acquire()  # hold the implicit token: every cycle reads the pipe
        assert held is not None and held.implicit
        try:
            probe = client.try_acquire()
            assert probe is not None and not probe.implicit
            probe.release()
            await fj_cycle()
        finally:
            held.release()

    async def raw_pair() -> None:
        read, write = os.read, os.write
        for _ in range(n):
            write(w, read(r, 1))

    def limiter_case() -> Callable[[], Any]:
        async def run() -> None:
            lim = anyio.CapacityLimiter(1)
            for _ in range(n):
                async with lim:
                    pass

        return run

    async def asyncio_sem() -> None:
        sem = asyncio.Semaphore(1)
        for _ in range(n):
            async with sem:
                pass

    async def trio_sem() -> None:
        sem = trio.Semaphore(1)
        for _ in range(n):
            async with sem:
                pass

    cases: dict[str, dict[str, Callable[[], Any]]] = {
        "asyncio": {
            "implicit": fj_cycle,
            "pool": fj_pool,
            "asyncio.Semaphore": asyncio_sem,
            "anyio.CapacityLimiter": limiter_case(),
            "raw_pair": raw_pair,
        },
        "trio": {
            "implicit": fj_cycle,
            "pool": fj_pool,
            "trio.Semaphore": trio_sem,
            "anyio.CapacityLimiter": limiter_case(),
            "raw_pair": raw_pair,
        },
    }

    async def batch(backend: str, b: int, warm: bool) -> None:
        names = list(cases[backend])
        order = names[b % len(names):] + names[: b % len(names)]
        for name in order:
            t0 = time.perf_counter_ns()
            await cases[backend][name]()
            dt = time.perf_counter_ns() - t0
            if not warm:
                results.setdefault(f"{backend}/{name}", []).append(dt / n)

    for b in range(batches + 1):
        for backend in (BACKENDS if b % 2 else BACKENDS[::-1]):
            anyio.run(batch, backend, b, b == 0, backend=backend)
    server.close()
    return {"native": fastjob.NATIVE, "ns_per_cycle": results}


def measure_cycle(quick: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    rounds = 2 if quick else 5
    n = 3000 if quick else 10000
    batches = 2 if quick else 4
    samples: dict[str, list[float]] = {}
    for rnd in range(rounds):
        for impl in IMPLS if rnd % 2 == 0 else IMPLS[::-1]:
            res = run_worker("bench_async.py", ["cycle", str(n), str(batches)], impl)
            for name, xs in res["ns_per_cycle"].items():
                backend, what = name.split("/", 1)
                if what in ("implicit", "pool"):
                    key = f"{backend}/{what}/{impl}"
                else:
                    key = name  # independent of fastjob's implementation: pool both workers
                samples.setdefault(key, []).extend(xs)
        log(f"  async cycle round {rnd + 1}/{rounds} done")
    return {
        "params": {"rounds": rounds, "iterations_per_batch": n, "batches_per_round": batches},
        "ns_per_cycle": {k: summary(v) for k, v in samples.items()},
    }


# ======================================================================================
# 2 + 3. hand-off latency and CPU while waiting (process B = worker, A = harness)
# ======================================================================================
def _send_result(out: int, t1: int, cpu: int) -> None:
    os.write(out, struct.pack("=qq", t1, cpu))


def _handoff_worker(mode: str, ctl_in: int, ctl_out: int) -> None:
    """Process B: per round, say 'ready', wait for a token, report when it came."""
    if mode.startswith("tokenpool"):
        import gnumake_tokenpool

        interval = float(mode.split(":", 1)[1])
        jc = gnumake_tokenpool.JobClient()
        while os.read(ctl_in, 1) == b"g":
            cpu0 = time.process_time_ns()
            os.write(ctl_out, b"r")
            while (tok := jc.acquire()) is None:
                time.sleep(interval)  # the polling loop its users must write
            t1 = time.perf_counter_ns()
            cpu = time.process_time_ns() - cpu0
            jc.release(tok)
            _send_result(ctl_out, t1, cpu)
        return

    if mode.startswith("raw-"):
        _raw_handoff_worker(mode, ctl_in, ctl_out)
        return

    import fastjob

    client = fastjob.from_env(strict=True)
    assert client is not None
    implicit = client.try_acquire()  # this process's own job slot: keep it
    assert implicit is not None and implicit.implicit
    if mode == "blocking":
        while os.read(ctl_in, 1) == b"g":
            cpu0 = time.process_time_ns()
            os.write(ctl_out, b"r")
            tok = client.acquire_blocking()
            t1 = time.perf_counter_ns()
            cpu = time.process_time_ns() - cpu0
            tok.release()
            _send_result(ctl_out, t1, cpu)
        implicit.release()
        client.close()
        return

    import anyio

    async def main() -> None:
        while os.read(ctl_in, 1) == b"g":  # blocks the loop on purpose: nothing else runs
            cpu0 = time.process_time_ns()
            os.write(ctl_out, b"r")
            tok = await client.acquire()
            t1 = time.perf_counter_ns()
            cpu = time.process_time_ns() - cpu0
            tok.release()
            _send_result(ctl_out, t1, cpu)

    anyio.run(main, backend=mode)
    implicit.release()
    client.close()


def _raw_handoff_worker(mode: str, ctl_in: int, ctl_out: int) -> None:
    """Floors in Python: a blocking os.read, and asyncio's add_reader + os.read."""
    from fastjob import parse_makeflags

    auth = parse_makeflags(os.environ["MAKEFLAGS"])
    assert auth is not None and auth.read_fd is not None and auth.write_fd is not None
    r, w = auth.read_fd, auth.write_fd
    if mode == "raw-blocking":
        while os.read(ctl_in, 1) == b"g":
            cpu0 = time.process_time_ns()
            os.write(ctl_out, b"r")
            b = os.read(r, 1)
            t1 = time.perf_counter_ns()
            cpu = time.process_time_ns() - cpu0
            os.write(w, b)
            _send_result(ctl_out, t1, cpu)
        return
    import asyncio

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pr = os.open(f"/proc/self/fd/{r}", os.O_RDONLY | os.O_NONBLOCK)
        while os.read(ctl_in, 1) == b"g":
            cpu0 = time.process_time_ns()
            os.write(ctl_out, b"r")
            fut = loop.create_future()
            loop.add_reader(pr, fut.set_result, None)
            await fut
            loop.remove_reader(pr)
            b = os.read(pr, 1)
            t1 = time.perf_counter_ns()
            cpu = time.process_time_ns() - cpu0
            os.write(w, b)
            _send_result(ctl_out, t1, cpu)
        os.close(pr)

    asyncio.run(main())


def _read_exact(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError("hand-off worker exited")
        buf += chunk
    return buf


def handoff(
    argv: list[str],
    *,
    env: dict[str, str],
    rounds: int,
    delay: float,
    style: str = "pipe",
    nonblocking_shared: bool = False,
) -> dict[str, list[int]]:
    """Process A: hold the pool's only token, let B start waiting, release it
    with one write(2) after ``delay`` s, and collect B's (latency, CPU).

    ``argv`` may contain {r} {w} {cin} {cout}: the pool fds and B's control fds.
    """
    tmp = None
    if style == "fifo":
        tmp = tempfile.mkdtemp(prefix="fj-bench-")
        path = os.path.join(tmp, "pool.fifo")
        os.mkfifo(path, 0o600)
        r = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # keeps the FIFO alive
        w = r
        makeflags = f" -j2 --jobserver-auth=fifo:{path}"
        fds: tuple[int, ...] = ()
    else:
        r, w = os.pipe()
        os.set_inheritable(r, True)
        os.set_inheritable(w, True)
        if nonblocking_shared:
            os.set_blocking(r, False)  # what make >= 4.3 does to the shared description
        makeflags = f" -j2 --jobserver-auth={r},{w}"
        fds = (r, w)
    cin_r, cin_w = os.pipe()
    cout_r, cout_w = os.pipe()
    args = [a.format(r=r, w=w, cin=cin_r, cout=cout_w) for a in argv]
    env = dict(env, MAKEFLAGS=makeflags)
    proc = subprocess.Popen(args, env=env, pass_fds=fds + (cin_r, cout_w))
    os.close(cin_r)
    os.close(cout_w)
    lat: list[int] = []
    cpu: list[int] = []
    try:
        for _ in range(rounds):
            os.write(cin_w, b"g")
            if _read_exact(cout_r, 1) != b"r":
                raise RuntimeError("protocol error")
            time.sleep(delay)  # let B settle into its wait (a benchmark, not a test)
            t0 = time.perf_counter_ns()
            os.write(w, b"+")
            t1, c = struct.unpack("=qq", _read_exact(cout_r, 16))
            lat.append(t1 - t0)
            cpu.append(c)
            # B wrote the token back before answering: take it again.
            select.select([r], [], [], 10)
            os.read(r, 1)
        os.write(cin_w, b"q")
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for fd in {r, w, cin_w, cout_r}:
            os.close(fd)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"latency_ns": lat, "cpu_ns": cpu}


def handoff_contenders() -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """name -> how to run process B; plus notes on skipped contenders."""
    me = str(HERE / "bench_async.py")
    out: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}

    def fj(mode: str, impl: str, strategy: str) -> dict[str, Any]:
        extra = {} if strategy == "proc-reopen" else {"FASTJOB_WAIT_STRATEGY": strategy}
        return {
            "argv": [PY, me, "--worker", "handoff", mode, "{cin}", "{cout}"],
            "env": impl_env(impl, extra),
            "style": "fifo" if strategy == "fifo-private" else "pipe",
            "nonblocking_shared": strategy == "shared-nonblocking",
        }

    for strategy in ("proc-reopen", "rwf-nowait", "shared-nonblocking", "thread", "fifo-private"):
        out[f"fastjob asyncio native, {strategy}"] = fj("asyncio", "native", strategy)
    out["fastjob asyncio pure, proc-reopen"] = fj("asyncio", "pure", "proc-reopen")
    out["fastjob trio native, proc-reopen"] = fj("trio", "native", "proc-reopen")
    out["fastjob `acquire_blocking` native"] = fj("blocking", "native", "proc-reopen")
    out["fastjob `acquire_blocking` pure"] = fj("blocking", "pure", "proc-reopen")
    for raw, what in (("raw-blocking", "raw Python blocking `os.read`"),
                      ("raw-asyncio", "raw Python asyncio `add_reader` + `os.read`")):  # fmt: skip
        out[what] = {"argv": [PY, me, "--worker", "handoff", raw, "{cin}", "{cout}"], "env": impl_env("native")}
    c = build_c("waiter")
    if c is not None:
        out["blocking C reader"] = {"argv": [str(c), "{r}", "{w}", "{cin}", "{cout}"], "env": impl_env("native")}
    else:
        notes["blocking C reader"] = "skipped: no C compiler"
    rust, rust_note = build_rust()
    if rust is not None:
        out["Rust `jobserver` crate `acquire`"] = {
            "argv": [str(rust), "wait", "{cin}", "{cout}"], "env": impl_env("native")
        }
    else:
        notes["Rust `jobserver` crate `acquire`"] = rust_note
    if have_tokenpool():
        for interval in ("0.01", "0.001"):
            out[f"gnumake-tokenpool, poll every {float(interval) * 1000:g} ms"] = {
                "argv": [PY, me, "--worker", "handoff", f"tokenpool:{interval}", "{cin}", "{cout}"],
                "env": impl_env("native"),
            }
    else:
        notes["gnumake-tokenpool"] = TOKENPOOL_NOTE
    return out, notes


def measure_handoff(quick: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Table 2: many short hand-offs per contender; contenders alternate in
    chunks so drift on the machine hits them all alike."""
    contenders, notes = handoff_contenders()
    chunks = 2 if quick else 4
    per_chunk = 10 if quick else 60
    warm = 3
    lat: dict[str, list[int]] = {k: [] for k in contenders}
    for ch in range(chunks):
        names = list(contenders) if ch % 2 == 0 else list(contenders)[::-1]
        for name in names:
            spec = contenders[name]
            res = handoff(
                spec["argv"], env=spec["env"], rounds=per_chunk + warm, delay=0.004,
                style=spec.get("style", "pipe"), nonblocking_shared=spec.get("nonblocking_shared", False),
            )  # fmt: skip
            lat[name].extend(res["latency_ns"][warm:])
        log(f"  hand-off chunk {ch + 1}/{chunks} done")
    return {
        "params": {"chunks": chunks, "handoffs_per_chunk": per_chunk, "release_delay_s": 0.004},
        "latency_ns": {k: summary([float(x) for x in v]) for k, v in lat.items()},
        "notes": notes,
    }


def measure_wait_cpu(quick: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Table 3: every contender waits ``wait`` s for a token, all at once
    (each on its own pool; waiting processes leave the cores idle), several
    instances each; CPU time of B from 'ready' to token."""
    contenders, notes = handoff_contenders()
    wait = 1.0 if quick else 5.0
    copies = 1 if quick else 3
    jobs = [(name, i) for i in range(copies) for name in contenders]
    cpu: dict[str, list[int]] = {k: [] for k in contenders}

    def one(job: tuple[str, int]) -> tuple[str, list[int]]:
        name, _ = job
        spec = contenders[name]
        # round 1: warm-up (imports, first registration); round 2: the long wait
        res = handoff(spec["argv"], env=spec["env"], rounds=1, delay=0.05,
                      style=spec.get("style", "pipe"), nonblocking_shared=spec.get("nonblocking_shared", False))  # fmt: skip
        del res
        res = handoff(spec["argv"], env=spec["env"], rounds=2, delay=wait,
                      style=spec.get("style", "pipe"), nonblocking_shared=spec.get("nonblocking_shared", False))  # fmt: skip
        return name, res["cpu_ns"][1:]

    with ThreadPoolExecutor(max_workers=len(jobs)) as ex:
        for name, xs in ex.map(one, jobs):
            cpu[name].extend(xs)
    log("  waiting-CPU pass done")
    return {
        "params": {"wait_s": wait, "instances": copies, "note": "all contenders wait at the same time"},
        "cpu_ns": {k: summary([float(x) for x in v]) for k, v in cpu.items()},
        "notes": notes,
    }


# ======================================================================================
# 3b. CPU per hand-off per extra waiting process (N processes, one waiting task each)
# ======================================================================================
def _herd_worker(ctl_in: int, res_out: int, cpu_out: int, mode: str = "asyncio") -> None:
    """One waiting process: acquire, report, keep the token (the harness makes
    a new one each round), wait again; at 'q' report its CPU and release all.
    ``mode`` "blocking": a thread waits in acquire_blocking instead."""
    import anyio

    import fastjob

    client = fastjob.from_env(strict=True)
    assert client is not None
    implicit = client.try_acquire()  # this process's own slot: keep it
    assert implicit is not None and implicit.implicit
    kept: list[Any] = []
    if mode == "blocking":
        import threading

        def waiter_thread() -> None:
            while True:
                kept.append(client.acquire_blocking())
                os.write(res_out, b"g")

        threading.Thread(target=waiter_thread, daemon=True).start()
        os.write(res_out, b"r")
        c0 = time.process_time_ns()
        while (b := os.read(ctl_in, 1)) == b"m":
            c0 = time.process_time_ns()
        os.write(cpu_out, struct.pack("=q", time.process_time_ns() - c0))
        for t in kept:
            t.release()
        implicit.release()
        os._exit(0)  # the waiting thread stays in its wait

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            async def waiter() -> None:
                while True:
                    kept.append(await client.acquire())
                    os.write(res_out, b"g")

            tg.start_soon(waiter)
            os.write(res_out, b"r")
            while True:
                await anyio.wait_readable(ctl_in)
                if os.read(ctl_in, 1) == b"m":  # the rounds start now
                    cpu0[0] = time.process_time_ns()
                    continue
                break  # 'q': stop
            cpu = time.process_time_ns() - cpu0[0]
            tg.cancel_scope.cancel()
        os.write(cpu_out, struct.pack("=q", cpu))  # its own pipe: others may still report

    cpu0 = [time.process_time_ns()]
    anyio.run(main)
    for t in kept:
        t.release()
    implicit.release()
    client.close()


def herd(n_procs: int, rounds: int, impl: str = "native", gap: float = 0.002, mode: str = "asyncio") -> float:
    """CPU (ns, all waiting processes together) per hand-off with n_procs
    processes each waiting with one task on one pipe pool; each round the
    harness writes one new token and one waiter takes it."""
    r, w = os.pipe()
    res_r, res_w = os.pipe()
    procs = []
    ctls = []
    cpus = []
    env = impl_env(impl, {"MAKEFLAGS": f"-j{n_procs + 1} --jobserver-auth={r},{w}"})
    try:
        for _ in range(n_procs):
            cr, cw = os.pipe()
            pr, pw = os.pipe()
            ctls.append(cw)
            cpus.append(pr)
            procs.append(subprocess.Popen(
                [PY, str(HERE / "bench_async.py"), "--worker", "herd", str(cr), str(res_w), str(pw), mode],
                env=env, pass_fds=(r, w, cr, res_w, pw)))  # fmt: skip
            os.close(cr)
            os.close(pw)
        for _ in range(n_procs):
            assert os.read(res_r, 1) == b"r"
        time.sleep(0.3)  # every process is waiting now
        for cw in ctls:
            os.write(cw, b"m")
        time.sleep(0.05)
        for _ in range(rounds):
            os.write(w, b"+")
            assert os.read(res_r, 1) == b"g"
            time.sleep(gap)  # the herd settles (the losers went back to waiting)
        for cw in ctls:
            os.write(cw, b"q")
        total = 0
        for pr in cpus:
            total += struct.unpack("=q", _read_exact(pr, 8))[0]
        for p in procs:
            p.wait(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for fd in (r, w, res_r, res_w, *ctls, *cpus):
            os.close(fd)
    return total / rounds


def measure_herd(quick: bool = False, log: Callable[[str], None] = print, mode: str = "asyncio") -> dict[str, Any]:
    """CPU per hand-off per extra waiting process: (cpu(N) - cpu(1)) / (N - 1)."""
    rounds = 150 if quick else 600
    reps = 2 if quick else 4
    n = 4
    per: dict[str, list[float]] = {"1": [], str(n): []}
    for rep in range(reps):
        for k in (1, n) if rep % 2 == 0 else (n, 1):
            per[str(k)].append(herd(k, rounds, mode=mode))
    log(f"  herd pass ({mode}) done")
    m1 = statistics_median(per["1"])
    mn = statistics_median(per[str(n)])
    return {
        "params": {"processes": n, "rounds": rounds, "reps": reps, "impl": f"native, {mode}, proc-reopen"},
        "cpu_ns_per_handoff": {k: summary(v) for k, v in per.items()},
        "extra_per_process_ns": (mn - m1) / (n - 1),
    }


def statistics_median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def herd_line(h: dict[str, Any]) -> str:
    n = h["params"]["processes"]
    c = h["cpu_ns_per_handoff"]
    x = h["extra_per_process_ns"] / 1000
    how = "threads in `acquire_blocking`" if "blocking" in h["params"]["impl"] else "asyncio tasks"
    return (f"- CPU per hand-off ({how}), all waiters together: 1 waiting process {fmt_ns(c['1']['median'])}, "
            f"{n} waiting processes {fmt_ns(c[str(n)]['median'])}: {x:.1f} µs per extra waiting process "
            f"(target <= 10 µs: {'meets' if x <= 10 else 'MISSES'}).")


# ======================================================================================
# 4. scale in one process (worker)
# ======================================================================================
def _scale_worker(backend: str, counts: list[int], rounds: int, mem: bool = True) -> dict[str, Any]:
    import anyio

    import fastjob

    out: dict[str, Any] = {"native": fastjob.NATIVE, "wake_ns": {}, "bytes_per_waiter": {}}

    async def wake_cost(kind: str, n_waiters: int) -> list[float]:
        """Main holds the only free slot; n tasks wait; main releases it and
        the oldest waiter notes when its acquire returned, hands the token
        back to main and queues again, so n tasks wait every round."""
        server = None
        if kind == "fastjob":
            server = fastjob.Server(jobs=2)
            client = server.client
            implicit = client.try_acquire()  # implicit held by main for the whole run
            held: Any = client.try_acquire()  # the pool token main hands out
            assert implicit is not None and held is not None and not held.implicit

            async def acquire() -> Any:
                return await client.acquire()

            def waiting() -> int:
                return client.statistics().tasks_waiting

            def release(tok: Any) -> None:
                tok.release()
        else:
            lim = anyio.CapacityLimiter(1)
            owner = object()
            await lim.acquire_on_behalf_of(owner)
            held = owner

            async def acquire() -> Any:
                me = object()
                await lim.acquire_on_behalf_of(me)
                return me

            def waiting() -> int:
                return lim.statistics().tasks_waiting

            def release(tok: Any) -> None:
                lim.release_on_behalf_of(tok)

        got: list[tuple[int, Any]] = []
        ev: list[anyio.Event] = [anyio.Event()]
        stop = False

        async def waiter() -> None:
            while True:
                tok = await acquire()
                t1 = time.perf_counter_ns()
                if stop:  # wind down by passing the slot along (no mass cancellation)
                    release(tok)
                    return
                got.append((t1, tok))
                ev[0].set()

        samples: list[float] = []
        async with anyio.create_task_group() as tg:
            for _ in range(n_waiters):
                tg.start_soon(waiter)
            for i in range(rounds + 3):
                while waiting() < n_waiters:
                    await anyio.sleep(0)
                ev[0] = anyio.Event()
                t0 = time.perf_counter_ns()
                release(held)
                await ev[0].wait()
                t1, held = got.pop()
                if i >= 3:
                    samples.append(float(t1 - t0))
            stop = True
            release(held)
        if server is not None:
            implicit.release()
            server.close()
        return samples

    async def memory(kind: str, n: int) -> float:
        import tracemalloc

        server = fastjob.Server(jobs=2) if kind == "fastjob" else None
        hold = []
        if server is not None:
            client = server.client
            hold = [client.try_acquire(), client.try_acquire()]
        block = anyio.Event()

        async def task() -> None:
            if server is not None:
                tok = await client.acquire()
                tok.release()
            else:
                await block.wait()

        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(task)
            while server is not None and client.statistics().tasks_waiting < n:
                await anyio.sleep(0)
            for _ in range(5):
                await anyio.sleep(0)
            used = tracemalloc.get_traced_memory()[0] - base
            tracemalloc.stop()
            # wind down: each waiter takes the slot and passes it on
            block.set()
            if hold and hold[1] is not None:
                hold.pop().release()
        for t in hold:
            if t is not None:
                t.release()
        if server is not None:
            server.close()
        return used / n

    async def main() -> None:
        for n in counts:
            for kind in ("fastjob", "anyio.CapacityLimiter") if n % 2 else ("anyio.CapacityLimiter", "fastjob"):
                out["wake_ns"].setdefault(kind, {})[str(n)] = await wake_cost(kind, n)
        if mem:
            for kind in ("fastjob", "bare task on anyio.Event"):
                out["bytes_per_waiter"][kind] = await memory(kind, max(counts))

    anyio.run(main, backend=backend)
    return out


def measure_scale(quick: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    counts = [1, 100, 10000]
    rounds = 20 if quick else 100
    reps = 1 if quick else 2
    impls = ("native",) if quick else IMPLS
    wake: dict[str, list[float]] = {}
    mem: dict[str, list[float]] = {}
    for rep in range(reps):
        for impl in impls if rep % 2 == 0 else impls[::-1]:
            for backend in BACKENDS:
                res = run_worker(
                    "bench_async.py",
                    ["scale", backend, ",".join(map(str, counts)), str(rounds), str(int(rep == 0))],
                    impl,
                )
                for kind, per_n in res["wake_ns"].items():
                    tag = f"{backend}/fastjob {impl}" if kind == "fastjob" else f"{backend}/{kind}"
                    for n, xs in per_n.items():
                        wake.setdefault(f"{tag}/{n}", []).extend(xs)
                for kind, b in res["bytes_per_waiter"].items():
                    tag = f"{backend}/fastjob {impl}" if kind == "fastjob" else f"{backend}/{kind}"
                    mem.setdefault(tag, []).append(b)
        log(f"  scale rep {rep + 1}/{reps} done")
    return {
        "params": {"waiters": counts, "wakeups_per_count": rounds, "reps": reps, "impls": list(impls),
                   "released": "a pool token, written to the pipe by the main task"},  # fmt: skip
        "wake_ns": {k: summary(v) for k, v in wake.items()},
        "bytes_per_waiter": {k: summary(v) for k, v in mem.items()},
    }


# ======================================================================================
# tables
# ======================================================================================
def cycle_rows(res: dict[str, Any], raw: float) -> list[list[str]]:
    s = res["ns_per_cycle"]
    rows = []
    for backend in BACKENDS:
        keys = [
            (f"{backend}/implicit/native", f"fastjob native `async with client.token()` on {backend}, implicit token"),
            (f"{backend}/implicit/pure", f"fastjob pure `async with client.token()` on {backend}, implicit token"),
            (f"{backend}/pool/native", f"fastjob native `async with client.token()` on {backend}, pool token"),
            (f"{backend}/pool/pure", f"fastjob pure `async with client.token()` on {backend}, pool token"),
            (f"{backend}/asyncio.Semaphore", "asyncio.Semaphore `async with` (in-process floor)"),
            (f"{backend}/trio.Semaphore", "trio.Semaphore `async with` (in-process floor)"),
            (f"{backend}/anyio.CapacityLimiter", f"anyio.CapacityLimiter `async with` on {backend} (in-process floor)"),
            (f"{backend}/raw_pair", f"raw Python `os.read`+`os.write` pair (inside a {backend} task)"),
        ]  # fmt: skip
        for key, label in keys:
            if key in s:
                m = s[key]
                rows.append([label, fmt_ns(m["median"]), f"{fmt_ns(m['q1'])} – {fmt_ns(m['q3'])}",
                             f"{m['median'] / raw:.2f}x"])  # fmt: skip
    return rows


def cycle_verdict(res: dict[str, Any]) -> list[str]:
    s = res["ns_per_cycle"]
    sem = s["asyncio/asyncio.Semaphore"]["median"]
    out = []
    targets = {"implicit": 0.8, "pool": 1.3}  # issue 13
    for impl in IMPLS:
        for what, target in targets.items():
            x = s[f"asyncio/{what}/{impl}"]["median"] / sem
            ok = "meets" if x <= target else "MISSES"
            out.append(f"- asyncio {impl} {what}-token cycle = {x:.2f}x asyncio.Semaphore "
                       f"(target <= {target}x{'' if impl == 'native' else ', set for native'}: {ok}).")
    return out


def handoff_table(h: dict[str, Any], cpu: dict[str, Any] | None) -> str:
    lat = h["latency_ns"]
    c_ref = lat.get("blocking C reader", {}).get("median")
    rows = []
    for name, m in sorted(lat.items(), key=lambda kv: kv[1]["median"]):
        row = [name, fmt_ns(m["median"]), fmt_ns(m["p99"]), f"{fmt_ns(m['q1'])} – {fmt_ns(m['q3'])}"]
        row.append(f"{m['median'] / c_ref:.2f}x" if c_ref else "n/a")
        rows.append(row)
    return md_table(["process B waits with", "median", "p99", "IQR", "median vs blocking C reader"], rows)


def cpu_table(cpu: dict[str, Any]) -> str:
    wait = cpu["params"]["wait_s"]
    rows = []
    for name, m in sorted(cpu["cpu_ns"].items(), key=lambda kv: kv[1].get("median", 0)):
        if not m.get("n"):
            continue
        rows.append([name, f"{m['median'] / 1e6:.2f} ms", f"{m['min'] / 1e6:.2f} – {m['max'] / 1e6:.2f} ms"])
    return md_table([f"process B waits {wait:g} s with", "CPU time (median)", "min – max"], rows)


def scale_table(sc: dict[str, Any]) -> str:
    w = sc["wake_ns"]
    counts = sc["params"]["waiters"]
    tags = sorted({k.rsplit("/", 1)[0] for k in w})
    rows = []
    for tag in tags:
        row = [tag.replace("/", ": ", 1)]
        for n in counts:
            m = w.get(f"{tag}/{n}")
            row.append(f"{fmt_ns(m['median'])} ({fmt_ns(m['q1'])} – {fmt_ns(m['q3'])})" if m else "n/a")
        first, last = w.get(f"{tag}/{counts[0]}"), w.get(f"{tag}/{counts[-1]}")
        row.append(f"{last['median'] / first['median']:.2f}x" if first and last else "n/a")
        mem = sc["bytes_per_waiter"].get(tag)
        row.append(f"{mem['median']:.0f} B" if mem else "")
        rows.append(row)
    for tag, mem in sc["bytes_per_waiter"].items():
        if not any(k.startswith(tag + "/") for k in w):
            rows.append([tag.replace("/", ": ", 1)] + [""] * (len(counts) + 1) + [f"{mem['median']:.0f} B"])
    heads = ["contender"] + [f"{n:,} waiting (median, IQR)" for n in counts]
    heads += [f"{counts[-1]:,} vs {counts[0]}", "memory per waiting task"]
    return md_table(heads, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    if a.worker:
        kind, *rest = a.worker
        if kind == "cycle":
            print(json.dumps(_cycle_worker(int(rest[0]), int(rest[1]))))
        elif kind == "handoff":
            _handoff_worker(rest[0], int(rest[1]), int(rest[2]))
        elif kind == "herd":
            _herd_worker(int(rest[0]), int(rest[1]), int(rest[2]), rest[3])
        elif kind == "scale":
            print(json.dumps(_scale_worker(rest[0], [int(x) for x in rest[1].split(",")], int(rest[2]), rest[3] == "1")))
        return
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)  # noqa: E731
    res = {
        "machine": machine(),
        "async_cycle": measure_cycle(a.quick, log),
        "handoff": measure_handoff(a.quick, log),
        "wait_cpu": measure_wait_cpu(a.quick, log),
        "herd": measure_herd(a.quick, log),
        "herd_blocking": measure_herd(a.quick, log, mode="blocking"),
        "scale": measure_scale(a.quick, log),
    }
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    raw = res["async_cycle"]["ns_per_cycle"]["asyncio/raw_pair"]["median"]
    print(md_table(["contender", "median / cycle", "IQR", "vs raw Python pair"], cycle_rows(res["async_cycle"], raw)))
    print("\n".join(cycle_verdict(res["async_cycle"])))
    print()
    print(handoff_table(res["handoff"], res["wait_cpu"]))
    print()
    print(cpu_table(res["wait_cpu"]))
    print()
    print(herd_line(res["herd"]))
    print(herd_line(res["herd_blocking"]))
    print()
    print(scale_table(res["scale"]))


if __name__ == "__main__":
    main()
