"""`fastjob status` and `fastjob resize` over the control socket, and their
one-line errors (missing, stale, foreign socket: exit 2)."""

from __future__ import annotations

import json
import os
import shlex
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import fastjob
from fastjob._control import ControlServer, request
from fastjob.cli.status import KEYS

from conftest import FASTJOB, FJ, TIMEOUT, gnumake44

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="AF_UNIX control socket")


def env0(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL", "FASTJOB_CONTROL")}
    env.update(extra)
    return env


def sh(*args: str, script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FASTJOB, *args, "--", "sh", "-c", script], capture_output=True,
                          text=True, timeout=TIMEOUT, env=env or env0())


def fj(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FASTJOB, *args], capture_output=True, text=True, timeout=TIMEOUT,
                          env=env or env0())


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_status_json_inside_fastjob_run(style: str) -> None:
    out = sh("run", "-j4", "--style", style, script=f"echo $PPID; {FJ} status --json")
    assert out.returncode == 0, out.stderr
    ppid, line = out.stdout.splitlines()
    st = json.loads(line)
    assert tuple(st) == KEYS
    assert st == {"style": style, "jobs": 4, "effective": 4, "free": 3, "withheld": 0,
                  "limited_by": [], "owner_pid": int(ppid), "fastjob": True}


def test_control_socket_is_private() -> None:
    out = sh("run", "-j2", script='stat -c "%a %u" "$FASTJOB_CONTROL" "$(dirname "$FASTJOB_CONTROL")"')
    assert out.returncode == 0, out.stderr
    sock_mode, dir_mode = (ln.split() for ln in out.stdout.splitlines())
    assert sock_mode == ["600", str(os.getuid())] and dir_mode == ["700", str(os.getuid())]


def test_status_text_and_resize_from_inside() -> None:
    script = f"{FJ} status; {FJ} resize 2; {FJ} status --json; {FJ} resize 6; {FJ} status --json"
    out = sh("run", "-j4", script=script)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "pool:       a fastjob pool" in lines and "jobs:       4" in lines
    assert "limited by: nothing" in lines
    resized = [ln for ln in lines if "resized to" in ln]
    assert len(resized) == 2 and "resized to 2 (effective 2, free 1, withheld 2)" in resized[0]
    small, big = (json.loads(ln) for ln in lines if ln.startswith("{"))
    assert (small["jobs"], small["effective"], small["free"], small["withheld"]) == (2, 2, 1, 2)
    assert (big["jobs"], big["free"], big["withheld"]) == (6, 5, 0)
    # the pool was accounted for at the end without complaint
    assert "not returned" not in out.stderr and "extra" not in out.stderr


def test_resize_refused_by_the_owner_is_exit_1() -> None:
    # The CLI caps N at 2**20, which a root owner can always hold (it grows
    # the pipe): ask for more through the same client code the CLI runs.
    ask = shlex.quote(
        f"{sys.executable} -c 'import sys; from fastjob.cli import status; "
        "sys.exit(status.resize(10**9))'"
    )
    out = sh("run", "-j2", script=f"sh -c {ask}; echo rc=$?")
    assert "rc=1" in out.stdout, out.stderr
    err = [ln for ln in out.stderr.splitlines() if ln.startswith("fastjob resize")]
    assert len(err) == 1 and "holds only" in err[0], out.stderr


def test_resize_beyond_the_cli_bound_is_a_usage_error() -> None:
    out = sh("run", "-j2", script=f"{FJ} resize 1000000000; echo rc=$?")
    assert "rc=2" in out.stdout
    assert "at most 1048576 jobs" in out.stderr


def test_status_with_limits_shows_limited_by() -> None:
    out = sh("run", "-j3", "--min-free-memory", str(1 << 60),
             script=f"{FJ} status --json")
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["effective"] == 1 and st["limited_by"] == ["memory"] and st["withheld"] == 2


def test_status_by_pid(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = subprocess.Popen([*FASTJOB, "run", "-j5", "--", "sh", "-c",
                             f"touch {shlex.quote(str(ready))}; sleep 30"], env=env0())
    try:
        deadline = time.monotonic() + TIMEOUT
        while not ready.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        out = fj("status", "--json", "--pid", str(proc.pid))
        assert out.returncode == 0, out.stderr
        st = json.loads(out.stdout)
        assert st["owner_pid"] == proc.pid and st["jobs"] == 5 and st["fastjob"] is True
        out = fj("resize", "3", "--pid", str(proc.pid))
        assert out.returncode == 0, out.stderr
        assert json.loads(fj("status", "--json", "--pid", str(proc.pid)).stdout)["jobs"] == 3
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)
    out = fj("status", "--pid", str(proc.pid))
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1
    assert "no fastjob control socket" in out.stderr


MAKEFILE = "all:\n\t+@{fj} status --json\n"


def test_status_in_a_make_pool_is_not_fastjob(tmp_path: Path) -> None:
    make = gnumake44() or "/usr/bin/make"
    if not os.path.exists(make):
        pytest.skip("no GNU make")
    (tmp_path / "Makefile").write_text(MAKEFILE.format(fj=FJ))
    out = subprocess.run([make, "-s", "-j3", "-C", str(tmp_path)], capture_output=True,
                         text=True, timeout=TIMEOUT, env=env0())
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout.strip().splitlines()[-1])
    assert st["fastjob"] is False and st["jobs"] == 3 and st["owner_pid"] is None
    assert st["effective"] is None and isinstance(st["free"], int)


def test_status_under_fastjob_then_make_reports_makes_pool(tmp_path: Path) -> None:
    make = gnumake44() or "/usr/bin/make"
    if not os.path.exists(make):
        pytest.skip("no GNU make")
    (tmp_path / "Makefile").write_text(MAKEFILE.format(fj=FJ))
    out = subprocess.run([*FASTJOB, "run", "-j6", "--", make, "-s", "-j2", "-C", str(tmp_path)],
                         capture_output=True, text=True, timeout=TIMEOUT, env=env0())
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout.strip().splitlines()[-1])
    assert st["fastjob"] is False and st["jobs"] == 2


def test_status_under_fastjob_then_make_joining_reports_fastjob(tmp_path: Path) -> None:
    make = gnumake44() or "/usr/bin/make"
    if not os.path.exists(make):
        pytest.skip("no GNU make")
    (tmp_path / "Makefile").write_text(MAKEFILE.format(fj=FJ))
    # make without -j joins the fastjob pool: the owner answers
    out = subprocess.run([*FASTJOB, "run", "-j6", "--", make, "-s", "-C", str(tmp_path)],
                         capture_output=True, text=True, timeout=TIMEOUT, env=env0())
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout.strip().splitlines()[-1])
    assert st["fastjob"] is True and st["jobs"] == 6


# -- errors: one line, exit 2 ------------------------------------------------------------
def _one_line_exit_2(out: subprocess.CompletedProcess[str], words: str) -> None:
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert len(out.stderr.splitlines()) == 1 and words in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_no_pool_at_all() -> None:
    _one_line_exit_2(fj("status"), "no jobserver here")
    _one_line_exit_2(fj("resize", "3"), "FASTJOB_CONTROL is not set")


def test_missing_socket(tmp_path: Path) -> None:
    env = env0(FASTJOB_CONTROL=str(tmp_path / "gone.sock"))
    _one_line_exit_2(fj("status", env=env), "does not exist")
    _one_line_exit_2(fj("resize", "2", env=env), "does not exist")


def _private_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ctl"
    d.mkdir(mode=0o700)
    return d


def test_stale_socket(tmp_path: Path) -> None:
    path = _private_dir(tmp_path) / "control-1.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))  # bound, never listening: what a killed owner leaves
    s.close()
    os.chmod(path, 0o600)
    env = env0(FASTJOB_CONTROL=str(path))
    _one_line_exit_2(fj("status", env=env), "is stale")
    _one_line_exit_2(fj("resize", "2", env=env), "is stale")


def test_stale_socket_after_the_owner_was_killed(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import os, sys, time, fastjob
        s = fastjob.Server(2)
        print(s.serve_control(), flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=env0())
    assert proc.stdout is not None
    path = proc.stdout.readline().strip()
    assert request(path, {"op": "status"})["jobs"] == 2
    proc.kill()
    proc.wait()
    proc.stdout.close()
    try:
        _one_line_exit_2(fj("status", env=env0(FASTJOB_CONTROL=path)), "is stale")
    finally:
        import shutil

        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def test_not_a_socket(tmp_path: Path) -> None:
    path = _private_dir(tmp_path) / "control-1.sock"
    path.write_text("")
    _one_line_exit_2(fj("status", env=env0(FASTJOB_CONTROL=str(path))), "is not a socket")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_foreign_socket(tmp_path: Path) -> None:
    path = _private_dir(tmp_path) / "control-1.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)
    try:
        os.chown(path, 12345, 12345)
        _one_line_exit_2(fj("status", env=env0(FASTJOB_CONTROL=str(path))), "belongs to uid 12345")
        os.chown(path, 0, 0)
        os.chmod(path.parent, 0o755)
        _one_line_exit_2(fj("status", env=env0(FASTJOB_CONTROL=str(path))), "open to other users")
    finally:
        s.close()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to setuid")
def test_owner_refuses_another_user() -> None:
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="fastjob-test-", dir="/tmp")
    os.chmod(d, 0o777)  # let the other user reach it: the peer check must refuse
    resized: list[int] = []
    srv = ControlServer(d, lambda: {"jobs": 1}, resized.append)
    try:
        os.chmod(srv.path, 0o666)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the other user: a bare socket client, then _exit
            try:
                os.close(r)
                os.setgid(12345)
                os.setuid(12345)
                c = socket.socket(socket.AF_UNIX)
                c.connect(srv.path)
                c.sendall(b'{"op":"resize","jobs":9}\n')
                os.write(w, c.recv(4096))
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            data = f.read()
        os.waitpid(pid, 0)
        reply = json.loads(data)
        assert reply == {"ok": False, "error": "uid 12345 may not control this pool"}
        assert resized == []
    finally:
        srv.close()
        shutil.rmtree(d, ignore_errors=True)
    assert not os.path.exists(srv.path)


def test_control_socket_removed_when_the_server_closes() -> None:
    s = fastjob.Server(3)
    path = s.serve_control()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert s.serve_control() == path  # idempotent
    assert s.control_env({})["FASTJOB_CONTROL"] == path
    s.close()
    assert not os.path.exists(os.path.dirname(path))


def test_bad_requests_get_an_error_reply() -> None:
    with fastjob.Server(3) as s:
        path = s.serve_control()
        for msg in ({"op": "explode"}, {"op": "resize", "jobs": "4"}, {"op": "resize", "jobs": 0}):
            with pytest.raises(fastjob.JobserverError):
                request(path, msg)
        assert request(path, {"op": "status"})["jobs"] == 3
