"""from_env() against real inherited fds in real child processes."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastjob

PROBE = textwrap.dedent(
    """
    import json, sys, warnings, fcntl, os
    import fastjob
    strict = sys.argv[1] == "strict"
    fds = [int(x) for x in sys.argv[2:]]
    before = {fd: (fcntl.fcntl(fd, fcntl.F_GETFL), fcntl.fcntl(fd, fcntl.F_GETFD)) for fd in fds}
    out = {"client": None, "warnings": [], "error": None, "message": None}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            c = fastjob.from_env(strict=strict)
            if c is not None:
                t1 = c.try_acquire(); t2 = c.try_acquire()
                out["client"] = [c.style, t1 is not None and t1.implicit, t2 is not None and not t2.implicit]
                t1.release(); t2.release(); c.close()
        except fastjob.JobserverError as exc:
            out["error"] = type(exc).__name__
            out["message"] = str(exc)
    out["warnings"] = [(w.category.__name__, str(w.message)) for w in caught]
    after = {fd: (fcntl.fcntl(fd, fcntl.F_GETFL), fcntl.fcntl(fd, fcntl.F_GETFD)) for fd in fds}
    out["flags_unchanged"] = before == after
    print(json.dumps(out))
    """
)


def probe(env_value: str, pass_fds: tuple[int, ...] = (), *, strict: bool = False, var: str = "MAKEFLAGS") -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS")}
    env[var] = env_value
    res = subprocess.run(
        [sys.executable, "-c", PROBE, "strict" if strict else "lax", *map(str, pass_fds)],
        env=env,
        pass_fds=pass_fds,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_valid_pipe_is_joined_and_flags_untouched(server: fastjob.Server) -> None:
    r, w = server.pass_fds
    out = probe(f" -j3 --jobserver-auth={r},{w}", (r, w))
    assert out["client"] == ["pipe", True, True]
    assert out["warnings"] == [] and out["flags_unchanged"]
    assert server.available() == 2


def test_valid_pipe_with_nonblocking_shared_description(server: fastjob.Server) -> None:
    # make >= 4.3 sets O_NONBLOCK on the shared read end: must still work, untouched
    r, w = server.pass_fds
    os.set_blocking(r, False)
    try:
        out = probe(f" -j3 --jobserver-auth={r},{w}", (r, w))
    finally:
        os.set_blocking(r, True)
    assert out["client"] == ["pipe", True, True] and out["flags_unchanged"]


def test_cargo_makeflags_is_preferred(server: fastjob.Server) -> None:
    r, w = server.pass_fds
    out = probe(f"-j --jobserver-fds={r},{w} --jobserver-auth={r},{w}", (r, w), var="CARGO_MAKEFLAGS")
    assert out["client"] == ["pipe", True, True]


def test_closed_fd_warns_with_fix_and_strict_raises() -> None:
    out = probe(" -j4 --jobserver-auth=57,58")
    assert out["client"] is None and out["error"] is None
    [(cat, msg)] = out["warnings"]
    assert cat == "JobserverWarning"
    assert "failed to connect to jobserver from environment variable `MAKEFLAGS=" in msg
    assert "57" in msg and "Bad file descriptor" in msg and "'+'" in msg
    strict = probe(" -j4 --jobserver-auth=57,58", strict=True)
    assert strict["error"] == "BadFdError"


def test_fd_reused_by_regular_file(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_text("data")
    fd = os.open(f, os.O_RDONLY)
    fd2 = os.open(f, os.O_WRONLY)
    try:
        out = probe(f" -j2 --jobserver-auth={fd},{fd2}", (fd, fd2), strict=True)
    finally:
        os.close(fd)
        os.close(fd2)
    assert out["error"] == "NotAPipeError" and "regular file" in out["message"]


def test_fd_is_a_socket() -> None:
    a, b = socket.socketpair()
    try:
        out = probe(f" -j2 --jobserver-auth={a.fileno()},{b.fileno()}", (a.fileno(), b.fileno()), strict=True)
    finally:
        a.close()
        b.close()
    assert out["error"] == "NotAPipeError" and "socket" in out["message"]


def test_ends_of_two_different_pipes() -> None:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        out = probe(f" -j2 --jobserver-auth={r1},{w2}", (r1, w2), strict=True)
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)
    assert out["error"] == "PipeMismatchError"


def test_swapped_ends() -> None:
    r, w = os.pipe()
    try:
        out = probe(f" -j2 --jobserver-auth={w},{r}", (r, w), strict=True)
    finally:
        os.close(r)
        os.close(w)
    assert out["error"] == "BadFdError" and "swapped" in out["message"]


@pytest.mark.parametrize("value", [" -j2 --jobserver-auth=-2,-2", "-j2 --jobserver-auth=3,4 --jobserver-auth=-2,-2", "-j4", ""])
def test_disabled_or_absent_is_silent(value: str) -> None:
    out = probe(value)
    assert out == {"client": None, "warnings": [], "error": None, "message": None, "flags_unchanged": True}


def test_missing_fifo(tmp_path: Path) -> None:
    out = probe(f" -j2 --jobserver-auth=fifo:{tmp_path}/nope", strict=True)
    assert out["error"] == "FifoError" and "does not exist" in out["message"]
    lax = probe(f" -j2 --jobserver-auth=fifo:{tmp_path}/nope")
    assert lax["warnings"][0][0] == "JobserverWarning" and "sandbox" in lax["warnings"][0][1]


def test_fifo_path_not_a_fifo(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    out = probe(f" -j2 --jobserver-auth=fifo:{tmp_path}/file", strict=True)
    assert out["error"] == "FifoError" and "regular file" in out["message"]
    out = probe(f" -j2 --jobserver-auth=fifo:{tmp_path}", strict=True)
    assert out["error"] == "FifoError" and "directory" in out["message"]


def test_fifo_of_a_live_server_is_joined() -> None:
    with fastjob.Server(3, style="fifo") as s:
        out = probe(f" -j3 --jobserver-auth=fifo:{s.path}")
        assert out["client"] == ["fifo", True, True] and out["warnings"] == []
        assert s.available() == 2


def test_fifo_permission_denied(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        fifo = tmp_path / "f"
        os.mkfifo(fifo, 0o000)
        out = probe(f" -j2 --jobserver-auth=fifo:{fifo}", strict=True)
        assert out["error"] == "FifoError" and "Permission denied" in out["message"]
        return
    # root ignores modes: run the probe as nobody against a FIFO it may not open
    fifo = tmp_path / "f"
    os.mkfifo(fifo, 0o600)
    os.chmod(tmp_path, 0o755)
    env = {k: v for k, v in os.environ.items() if k != "MAKEFLAGS"}
    env["MAKEFLAGS"] = f" -j2 --jobserver-auth=fifo:{fifo}"
    env["FASTJOB_ALLOW_FOREIGN_FIFO"] = "1"
    try:
        res = subprocess.run(
            [sys.executable, "-c", PROBE, "strict"], env=env, capture_output=True, text=True, timeout=60, user=65534
        )
    except PermissionError:
        pytest.skip("cannot run Python as uid 65534 here")
    if res.returncode != 0:
        pytest.skip(f"Python does not run as uid 65534 here: {res.stderr.strip()[-200:]}")
    out = json.loads(res.stdout)
    assert out["error"] == "FifoError" and "Permission denied" in out["message"]


def test_invalid_auth_names_the_variable() -> None:
    out = probe(" -j2 --jobserver-auth=3,x", strict=True)
    assert out["error"] == "InvalidAuthError" and "MAKEFLAGS" in out["message"]


def test_inherited_fds_stay_inheritable_and_open(server: fastjob.Server) -> None:
    # the child joins, closes its client; the fds must still be open and not CLOEXEC
    r, w = server.pass_fds
    code = textwrap.dedent(
        f"""
        import fcntl, os, fastjob
        c = fastjob.from_env(strict=True)
        c.close()
        for fd in ({r}, {w}):
            os.fstat(fd)
            assert not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, fd
        print("ok")
        """
    )
    env = server.env()
    res = subprocess.run([sys.executable, "-c", code], env=env, pass_fds=(r, w), capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "ok", res.stderr
    assert fcntl.fcntl(r, fcntl.F_GETFL) & os.O_NONBLOCK == 0
