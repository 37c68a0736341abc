"""Hostile and broken MAKEFLAGS: a table of values, each with the outcome it
must have.  Every case runs with strict=True (the specific error, or the
result) and strict=False (a JobserverWarning and None instead of an error),
bounded in time, and leaves the inherited fds open with their flags as they
were.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import fastjob
from fastjob import (
    BadFdError,
    FifoError,
    ForeignFifoError,
    InvalidAuthError,
    JobserverClosedError,
    NotAPipeError,
    PipeMismatchError,
    UnsupportedPlatformError,
)

CLIENT = "client"  # joins and can cycle a token
NONE = "none"  # no jobserver named (or disabled on purpose): None, no warning


class Env:
    """Every kind of fd and path a MAKEFLAGS value can point at."""

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.fds: list[int] = []
        self.keep: list[Any] = []
        self.r, self.w = self.pipe(tokens=2)
        self.r2, self.w2 = self.pipe(tokens=2)
        self.file = self.fd(os.open(os.path.join(tmp, "regular"), os.O_RDWR | os.O_CREAT))
        self.dir = self.fd(os.open(tmp, os.O_RDONLY | os.O_DIRECTORY))
        self.devnull = self.fd(os.open(os.devnull, os.O_RDWR))
        a, b = socket.socketpair()
        self.keep += [a, b]
        self.sock = a.fileno()
        m, s = os.openpty()
        self.pty = self.fd(m)
        self.fd(s)
        self.eventfd = self.fd(os.eventfd(0)) if hasattr(os, "eventfd") else self.devnull
        ep = select.epoll()
        self.keep.append(ep)
        self.epoll = ep.fileno()
        self.memfd = self.fd(os.memfd_create("x")) if hasattr(os, "memfd_create") else self.file
        # A named FIFO opened read-write: one fd that is both ends of one pipe.
        self.fifo_path = os.path.join(tmp, "rdwr.fifo")
        os.mkfifo(self.fifo_path, 0o600)
        self.fifo_rdwr = self.fd(os.open(self.fifo_path, os.O_RDWR))
        os.write(self.fifo_rdwr, b"++")
        # fifo: paths of every kind
        self.server = fastjob.Server(3, style="fifo")
        self.live_fifo = str(self.server.path)
        self.stale_fifo = os.path.join(tmp, "stale.fifo")
        os.mkfifo(self.stale_fifo, 0o600)
        self.link = os.path.join(tmp, "link.fifo")
        os.symlink(self.live_fifo, self.link)
        self.regular = os.path.join(tmp, "regular")
        self.sockpath = os.path.join(tmp, "sock")
        us = socket.socket(socket.AF_UNIX)
        us.bind(self.sockpath)
        self.keep.append(us)
        self.foreign = os.path.join(tmp, "foreign.fifo")
        os.mkfifo(self.foreign, 0o600)
        os.chown(self.foreign, 65534, 65534)
        self.spaced_dir = os.path.join(tmp, "with space")
        os.mkdir(self.spaced_dir)
        self.spaced = os.path.join(self.spaced_dir, "back\\slash.fifo")
        os.mkfifo(self.spaced, 0o600)
        self.spaced_w = self.fd(os.open(self.spaced, os.O_RDWR))  # a live writer
        os.write(self.spaced_w, b"+")
        self.unused = 900
        while True:
            try:
                os.fstat(self.unused)
                self.unused += 1
            except OSError:
                break

    def fd(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def pipe(self, tokens: int) -> tuple[int, int]:
        r, w = os.pipe()
        self.fd(r)
        self.fd(w)
        os.write(w, b"+" * tokens)
        return r, w

    def close(self) -> None:
        self.server.close()
        for fd in self.fds:
            os.close(fd)
        for k in self.keep:
            k.close()


def esc(path: str) -> str:
    return path.replace("\\", "\\\\").replace(" ", "\\ ")


@dataclass
class Case:
    id: str
    makeflags: Callable[[Env], dict[str, str] | str]
    expect: str | type[BaseException]


def A(text: str) -> Callable[[Env], str]:
    """A MAKEFLAGS value with {r},{w},{r2},... filled from Env."""
    return lambda e: text.format(**{k: getattr(e, k) for k in dir(e) if not k.startswith("_")})


CASES = [
    # -- nothing named, or disabled on purpose --------------------------------
    Case("empty", A(""), NONE),
    Case("spaces", A("   \t  "), NONE),
    Case("j-only", A(" -j4"), NONE),
    Case("garbage-words", A("kw !!! @@@ ### -- --jobserver-auth={r},{w}"), NONE),
    Case("after-double-dash", A(" -j2 -- --jobserver-auth={r},{w}"), NONE),
    Case("disabled-neg-2", A("-j2 --jobserver-auth=-2,-2"), NONE),
    Case("disabled-neg-read", A("--jobserver-auth=-1,{w}"), NONE),
    Case("disabled-last-wins", A("--jobserver-auth={r},{w} --jobserver-auth=-2,-2"), NONE),
    Case("huge-garbage", lambda e: "x" * 1_000_000, NONE),
    Case("option-lookalike", A("--jobserver-authx={r},{w}"), NONE),
    # -- malformed option text ------------------------------------------------
    Case("empty-auth", A("--jobserver-auth="), InvalidAuthError),
    Case("one-number", A("--jobserver-auth=3"), InvalidAuthError),
    Case("three-numbers", A("--jobserver-auth=3,4,5"), InvalidAuthError),
    Case("letters", A("--jobserver-auth=a,b"), InvalidAuthError),
    Case("space-split", A("--jobserver-auth={r}, {w}"), InvalidAuthError),
    Case("plus-signs", A("--jobserver-auth=+{r},+{w}"), InvalidAuthError),
    Case("fullwidth-digits", A("--jobserver-auth=\uff13,\uff14"), InvalidAuthError),
    Case("huge-fd-number", A("--jobserver-auth=99999999999999999999,4"), InvalidAuthError),
    Case("bad-j", A("-jfoo --jobserver-auth={r},{w}"), InvalidAuthError),
    Case("unicode-j", A("-j\u0664 --jobserver-auth={r},{w}"), InvalidAuthError),
    Case("fifo-no-path", A("--jobserver-auth=fifo:"), InvalidAuthError),
    Case("nul-in-path", A("--jobserver-auth=fifo:/tmp/a\0b"), InvalidAuthError),
    Case("nul-in-fds", A("--jobserver-auth={r}\0,{w}"), InvalidAuthError),
    Case("last-wins-bad", A("--jobserver-auth={r},{w} --jobserver-auth=x,y"), InvalidAuthError),
    Case(
        "semaphore-on-posix", A("--jobserver-auth=gmake_semaphore_1234"), UnsupportedPlatformError
    ),
    # -- fds that are not a usable pipe ----------------------------------------
    Case("closed-fds", A("--jobserver-auth={unused},{unused}"), BadFdError),
    Case("max-fd", A("--jobserver-auth=2147483647,2147483647"), BadFdError),
    Case("read-closed", A("--jobserver-auth={unused},{w}"), BadFdError),
    Case("write-closed", A("--jobserver-auth={r},{unused}"), BadFdError),
    Case("regular-file", A("--jobserver-auth={file},{file}"), NotAPipeError),
    Case("directory", A("--jobserver-auth={dir},{dir}"), NotAPipeError),
    Case("char-device", A("--jobserver-auth={devnull},{devnull}"), NotAPipeError),
    Case("socket", A("--jobserver-auth={sock},{sock}"), NotAPipeError),
    Case("pty", A("--jobserver-auth={pty},{pty}"), NotAPipeError),
    Case("eventfd", A("--jobserver-auth={eventfd},{eventfd}"), NotAPipeError),
    Case("epoll", A("--jobserver-auth={epoll},{epoll}"), NotAPipeError),
    Case("memfd", A("--jobserver-auth={memfd},{memfd}"), NotAPipeError),
    Case("pipe-and-file", A("--jobserver-auth={r},{file}"), NotAPipeError),
    Case("file-and-pipe", A("--jobserver-auth={dir},{w}"), NotAPipeError),
    Case("same-fd-read-end", A("--jobserver-auth={r},{r}"), BadFdError),
    Case("same-fd-write-end", A("--jobserver-auth={w},{w}"), BadFdError),
    Case("swapped", A("--jobserver-auth={w},{r}"), BadFdError),
    Case("two-pipes", A("--jobserver-auth={r},{w2}"), PipeMismatchError),
    Case("two-pipes-other", A("--jobserver-auth={r2},{w}"), PipeMismatchError),
    Case("two-pipes-swapped", A("--jobserver-auth={w2},{r}"), PipeMismatchError),
    # -- fifo: paths that are not a usable FIFO --------------------------------
    Case("fifo-missing", lambda e: f"--jobserver-auth=fifo:{e.tmp}/nope", FifoError),
    Case("fifo-directory", lambda e: f"--jobserver-auth=fifo:{e.tmp}", FifoError),
    Case("fifo-symlink", lambda e: f"--jobserver-auth=fifo:{e.link}", FifoError),
    Case("fifo-regular", lambda e: f"--jobserver-auth=fifo:{e.regular}", FifoError),
    Case("fifo-device", A("--jobserver-auth=fifo:/dev/null"), FifoError),
    Case("fifo-socket", lambda e: f"--jobserver-auth=fifo:{e.sockpath}", FifoError),
    Case("fifo-notdir", lambda e: f"--jobserver-auth=fifo:{e.regular}/x", FifoError),
    Case("fifo-too-long", lambda e: "--jobserver-auth=fifo:/" + "a/" * 3000, FifoError),
    Case("fifo-name-too-long", lambda e: f"--jobserver-auth=fifo:{e.tmp}/{'n' * 300}", FifoError),
    Case("fifo-stale", lambda e: f"--jobserver-auth=fifo:{e.stale_fifo}", JobserverClosedError),
    Case("fifo-foreign", lambda e: f"--jobserver-auth=fifo:{e.foreign}", ForeignFifoError),
    # -- usable, in every spelling ------------------------------------------------
    Case("make43", A(" -j4 --jobserver-auth={r},{w}"), CLIENT),
    Case("make41-fds", A("--jobserver-fds={r},{w} -j"), CLIENT),
    Case("cargo", A("-j --jobserver-fds={r},{w} --jobserver-auth={r},{w}"), CLIENT),
    Case("fds-bad-auth-good", A("--jobserver-fds=x,y --jobserver-auth={r},{w}"), CLIENT),
    Case("last-wins-good", A("--jobserver-auth=-2,-2 --jobserver-auth={r},{w}"), CLIENT),
    Case("flags-k", A("kw -j4 --jobserver-auth={r},{w}"), CLIENT),
    Case("dry-run", A("n -j4 --jobserver-auth={r},{w}"), CLIENT),
    Case("leading-zeros", A("--jobserver-auth=00{r},000{w}"), CLIENT),
    Case("huge-j", A("-j99999999999999999999 --jobserver-auth={r},{w}"), CLIENT),
    Case("tabs", A("\t-j2\t--jobserver-auth={r},{w}\t"), CLIENT),
    Case("fifo-rdwr-one-fd", A("--jobserver-auth={fifo_rdwr},{fifo_rdwr}"), CLIENT),
    Case("fifo-live", lambda e: f" -j3 --jobserver-auth=fifo:{e.live_fifo}", CLIENT),
    Case("fifo-escaped", lambda e: f"--jobserver-auth=fifo:{esc(e.spaced)}", CLIENT),
    # -- which variable ------------------------------------------------------------
    Case(
        "cargo-wins",
        lambda e: {"CARGO_MAKEFLAGS": f"-j --jobserver-auth={e.r},{e.w}", "MAKEFLAGS": "-j1"},
        CLIENT,
    ),
    Case(
        "first-naming-one",
        lambda e: {"CARGO_MAKEFLAGS": "-j4", "MAKEFLAGS": f"--jobserver-auth={e.r},{e.w}"},
        CLIENT,
    ),
    Case(
        "cargo-broken-first",
        lambda e: {
            "CARGO_MAKEFLAGS": "--jobserver-auth=x,y",
            "MAKEFLAGS": f"--jobserver-auth={e.r},{e.w}",
        },
        InvalidAuthError,
    ),
    Case("mflags-only", lambda e: {"MFLAGS": f"-j2 --jobserver-auth={e.r},{e.w}"}, CLIENT),
]


@pytest.fixture(scope="module")
def hostile_env() -> Iterator[Env]:
    with tempfile.TemporaryDirectory() as tmp:
        e = Env(tmp)
        try:
            yield e
        finally:
            e.close()


@pytest.fixture
def deadline() -> Iterator[None]:
    """Every case must finish in bounded time (no hang on a hostile value)."""

    def boom(signum: int, frame: Any) -> None:
        raise TimeoutError("hostile case hung")

    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, 10)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def flags_of(fds: list[int]) -> dict[int, tuple[int, int]]:
    out = {}
    for fd in fds:
        out[fd] = (fcntl.fcntl(fd, fcntl.F_GETFL), fcntl.fcntl(fd, fcntl.F_GETFD))
    return out


def test_catalogue_size() -> None:
    assert len(CASES) >= 50
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile(case: Case, hostile_env: Env, deadline: None) -> None:
    value = case.makeflags(hostile_env)
    environ = value if isinstance(value, dict) else {"MAKEFLAGS": value}
    before = flags_of(hostile_env.fds)
    if isinstance(case.expect, type):
        with pytest.raises(case.expect) as info:
            fastjob.from_env(environ=environ, strict=True)
        # The most specific kind, not a parent of it.
        assert type(info.value) is case.expect, info.value
        assert str(info.value)
        with pytest.warns(fastjob.JobserverWarning):
            assert fastjob.from_env(environ=environ) is None
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            client = fastjob.from_env(environ=environ, strict=True)
        if case.expect == NONE:
            assert client is None
        else:
            assert client is not None
            with client:
                first = client.try_acquire()
                assert first is not None
                # The implicit token, unless this process already has that
                # pool's implicit token (the catalogue's own FIFO server).
                assert first.implicit == (case.id != "fifo-live")
                second = client.acquire_blocking(timeout=5)
                assert second.byte is not None and len(second.byte) == 1
                second.release()
                first.release()
    # Nothing inherited was closed or had its flags changed.
    assert flags_of(hostile_env.fds) == before


def test_non_utf8_environment(hostile_env: Env) -> None:
    """Non-UTF-8 bytes in MAKEFLAGS (also in a FIFO path) reach a child as
    os.environ's surrogate escapes; fastjob joins the pool all the same."""
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(os.fsencode(tmp), b"gm\xff\xfe.fifo")
        os.mkfifo(path, 0o600)
        keep = os.open(path, os.O_RDWR)
        os.write(keep, b"+")
        code = (
            "import fastjob, os\n"
            "c = fastjob.from_env(strict=True)\n"
            "t = c.try_acquire(); u = c.acquire_blocking(timeout=5)\n"
            "print(c.style, t.implicit, u.byte); u.release(); t.release(); c.close()\n"
        )
        for value in (
            b"\xff\xfe -j2 --jobserver-auth=fifo:" + path,
            b"k\xe9 --jobserver-auth=fifo:" + path + b" -- X=\xff",
        ):
            env = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
            env[b"MAKEFLAGS"] = value
            out = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, timeout=60
            )
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == b"fifo True b'+'"
        # And garbage bytes that name nothing are no jobserver at all.
        env = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
        env[b"MAKEFLAGS"] = b"\xff\x80\xc3 --jobserver-auth=\xff,\xfe"
        out = subprocess.run(
            [sys.executable, "-c", "import fastjob\ntry:\n fastjob.from_env(strict=True)\n"
             "except fastjob.InvalidAuthError as e: print('invalid')"],
            env=env, capture_output=True, timeout=60,
        )
        assert out.stdout.strip() == b"invalid", out.stderr
        os.close(keep)
    finally:
        import shutil

        shutil.rmtree(tmp)


def test_unreadable_fifo_as_other_user() -> None:
    """A 0600 FIFO of another user: refused as foreign; when the user opts in,
    the kernel still denies it and the error says so (no hang).  Runs in a
    forked child that drops root for uid 65534."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    with fastjob.Server(2, style="fifo") as server:
        os.chmod(os.path.dirname(str(server.path)), 0o755)  # let nobody reach the FIFO
        environ = server.env()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: no pytest machinery from here on, only os._exit
            code = 1
            try:
                os.close(r)
                os.setgid(65534)
                os.setuid(65534)
                names = []
                for allow in (False, True):
                    try:
                        fastjob.from_env(environ=environ, strict=True, allow_foreign=allow)
                        names.append("joined")
                    except fastjob.JobserverError as exc:
                        names.append(type(exc).__name__)
                os.write(w, " ".join(names).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        try:
            with os.fdopen(r, "rb") as f:
                got = f.read().decode()
        finally:
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert got.split() == ["ForeignFifoError", "FifoError"]
        st = os.stat(str(server.path))
        assert stat.S_IMODE(st.st_mode) == 0o600
