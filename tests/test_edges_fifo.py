"""FIFO edges (issue 12, items 6-9): a file swapped in at the FIFO path
between check and open is refused (no forged byte handed out, no token
written into an impostor); a release under fd pressure keeps its byte; a
Server dropped without close() frees its fds and directory; a FIFO Server
whose creation fails leaves nothing in TMPDIR."""

from __future__ import annotations

import gc
import warnings
import os
import stat
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import fastjob
from fastjob._core import transport as transport_mod
from fastjob._core.transport import FifoTransport

from conftest import run_python

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"))


def fifo_content(fd: int) -> bytes:
    """What a FIFO we read non-blocking holds (b"" when empty)."""
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""


@pytest.fixture
def fifo_server() -> Iterator[fastjob.Server]:
    with fastjob.Server(3, style="fifo") as s:
        yield s


def _impostor_fifo(where: Path) -> tuple[str, int]:
    """Another FIFO with a reader of our own (so a writer could open it):
    (path, read fd)."""
    path = str(where / "impostor.fifo")
    os.mkfifo(path, 0o600)
    return path, os.open(path, os.O_RDONLY | os.O_NONBLOCK)


def _swap_in(path: str, make: Callable[[str], None]) -> Callable[[], None]:
    """Move the real FIFO aside and put make(path) in its place; returns
    the function that puts the real one back."""
    aside = path + ".real"
    os.rename(path, aside)
    make(path)

    def restore() -> None:
        if os.path.lexists(path):
            os.unlink(path)
        os.rename(aside, path)

    return restore


# -- item 6: swapped between the check (lstat) and the open ------------------------------
def _regular_with_forged_bytes(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"FFFF")
    os.chmod(path, 0o600)


def _symlink_to(target: str) -> Callable[[str], None]:
    return lambda path: os.symlink(target, path)


@pytest.mark.parametrize("kind", ["regular file", "symlink", "another FIFO"])
def test_swap_after_check_is_refused(
    fifo_server: fastjob.Server, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path passes lstat, then another process swaps it: the open must
    notice (fstat of the opened fd) and refuse, reading nothing."""
    path = str(fifo_server.path)
    imp_path, imp_r = _impostor_fifo(tmp_path)
    restore: list[Callable[[], None]] = []
    makers: dict[str, Callable[[str], None]] = {
        "regular file": _regular_with_forged_bytes,
        "symlink": _symlink_to(imp_path),
        "another FIFO": lambda p: os.mkfifo(p, 0o600),
    }
    real_check = FifoTransport._stat_checked

    def check_then_swap(p: str, allow_foreign: bool) -> os.stat_result:
        st = real_check(p, allow_foreign)
        restore.append(_swap_in(p, makers[kind]))  # the race, made certain
        return st

    monkeypatch.setattr(FifoTransport, "_stat_checked", staticmethod(check_then_swap))
    try:
        with pytest.raises(fastjob.FifoError, match="replaced"):
            fastjob.from_env(environ=fifo_server.env(), strict=True)
    finally:
        for r in restore:
            r()
    assert fifo_content(imp_r) == b""  # nothing was written into the impostor
    os.close(imp_r)
    assert fifo_server.available() == 2


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_swap_to_another_users_fifo_is_foreign(
    fifo_server: fastjob.Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(fifo_server.path)
    restore: list[Callable[[], None]] = []
    real_check = FifoTransport._stat_checked

    def foreign(p: str) -> None:
        os.mkfifo(p, 0o666)
        os.chown(p, 65534, 65534)

    def check_then_swap(p: str, allow_foreign: bool) -> os.stat_result:
        st = real_check(p, allow_foreign)
        restore.append(_swap_in(p, foreign))
        return st

    monkeypatch.setattr(FifoTransport, "_stat_checked", staticmethod(check_then_swap))
    try:
        with pytest.raises(fastjob.ForeignFifoError, match="uid 65534"):
            fastjob.from_env(environ=fifo_server.env(), strict=True)
    finally:
        for r in restore:
            r()


@pytest.mark.parametrize("via", ["own-fd", "path"])
def test_writer_reopen_checks_what_it_opened(
    fifo_server: fastjob.Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    """The liveness check closes and reopens the writer.  Through our own
    read fd (Linux /proc) the path does not matter: the release writes into
    the real FIFO.  By path (no /proc), an impostor put at the path meanwhile
    gets no token: the release that cannot write keeps its token held (and
    raises), and succeeds once the FIFO is back."""
    if via == "path":
        real_open = os.open

        def no_proc(p: str, flags: int, *a: int) -> int:
            if p.startswith("/proc/self/fd/"):
                raise OSError(2, "No such file or directory")
            return real_open(p, flags, *a)

        monkeypatch.setattr(transport_mod.os, "open", no_proc)
    client = fastjob.from_env(environ=fifo_server.env(), strict=True, implicit_token=False)
    assert client is not None
    with client:
        pool_tok = client.acquire_blocking(timeout=5)
        assert fifo_server.available() == 1
        imp_path, imp_r = _impostor_fifo(tmp_path)
        path = str(fifo_server.path)
        restore = _swap_in(path, lambda p: os.rename(imp_path, p))
        try:
            transport = client._t
            assert isinstance(transport, FifoTransport)
            transport._check_writers()
            if via == "path" or not sys.platform.startswith("linux"):
                with pytest.raises(fastjob.FifoError, match="replaced by another FIFO"):
                    pool_tok.release()
                assert not pool_tok.released  # still held: its byte is not lost
            else:
                pool_tok.release()  # the writer is the real FIFO's, whatever the path is
            assert fifo_content(imp_r) == b""  # the impostor got nothing
        finally:
            os.close(imp_r)
            os.unlink(path)
            restore()
        pool_tok.release()
        assert pool_tok.released
    assert fifo_server.available() == 2


def test_swapping_thread_never_forges_or_loses(fifo_server: fastjob.Server, tmp_path: Path) -> None:
    """A thread keeps renaming a regular file full of forged bytes, a
    symlink and another FIFO over the path while clients connect, take and
    give back tokens: every token handed out is a real one ('+'), nothing is
    written into an impostor, and the pool ends full."""
    path = str(fifo_server.path)
    aside = path + ".real"
    forged = str(tmp_path / "forged")
    with open(forged, "wb") as f:
        f.write(b"F" * 4096)
    other = str(tmp_path / "other.fifo")
    os.mkfifo(other, 0o600)
    other_r = os.open(other, os.O_RDONLY | os.O_NONBLOCK)
    link = str(tmp_path / "link")
    os.symlink(other, link)
    impostors = [forged, link, other]
    stop = threading.Event()
    swaps = [0]

    def swapper() -> None:
        i = 0
        while not stop.is_set():
            imp = impostors[i % 3]
            i += 1
            os.rename(path, aside)
            os.rename(imp, path)
            os.rename(path, imp)
            os.rename(aside, path)
            swaps[0] += 1
            stop.wait(0.001)  # the real FIFO in place for a while: checks pass, opens race

    th = threading.Thread(target=swapper)
    th.start()
    seen: set[bytes] = set()
    connected = 0
    env = fifo_server.env()
    clients: list[fastjob.Client] = []
    unreleased: list[fastjob.Token] = []
    try:
        # Until enough of both happened (not a count of tries: a failed try is
        # fast, and 300 of them can fit in one scheduling slice of the swapper).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (connected < 100 or swaps[0] < 50):
            try:
                c = fastjob.from_env(environ=env, strict=True, implicit_token=False)
            except fastjob.JobserverError:
                continue  # refused: the path was an impostor at that moment
            assert c is not None
            connected += 1
            clients.append(c)
            t = c.try_acquire()
            if t is not None:
                seen.add(t.byte or b"")
                try:
                    t.release()
                except fastjob.JobserverError:
                    unreleased.append(t)  # its writer was refused: still held
            if len(clients) > 4:
                clients.pop(0).close()
    finally:
        stop.set()
        th.join(30)
    for t in unreleased:
        assert not t.released
        t.release()  # the real FIFO is back at the path
    for c in clients:
        c.close()
    assert swaps[0] > 0 and connected > 0
    assert seen <= {b"+"}, f"forged bytes handed out: {seen}"
    with open(forged, "rb") as f:
        assert f.read() == b"F" * 4096
    assert fifo_content(other_r) == b""
    os.close(other_r)
    assert fifo_server.available() == 2


# -- item 7: a release under fd pressure -------------------------------------------------
RELEASE_UNDER_PRESSURE = """
import os, resource, sys, fastjob
c = fastjob.from_env(strict=True)
toks = [c.acquire_blocking(timeout=5) for _ in range(2)]   # implicit + one pool byte
assert sum(not t.implicit for t in toks) == 1
t = c._t
try:
    c.acquire_blocking(timeout=0.01)   # the pool is empty; this makes the thread's wake pipe
except TimeoutError:
    pass
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
# Every slot below the FIFO's fds taken and the limit set there: no new
# descriptor can be opened, and closing the writer frees none below it.
lo = min(t._rfd, t._wfd)
filler = []
while True:
    fd = os.open(os.devnull, os.O_RDONLY)
    if fd > lo:
        os.close(fd)
        break
    filler.append(fd)
resource.setrlimit(resource.RLIMIT_NOFILE, (lo, hard))
try:
    os.dup(0)
except OSError:
    pass
else:
    sys.exit("the limit did not bite")
try:
    c.acquire_blocking(timeout=2.5)   # waits through liveness checks (1 s)
except TimeoutError:
    pass
t.check_alive()                        # and once more, directly
for tok in toks:
    tok.release()                      # must write its byte with the writer it kept
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
c.close()
print("released")
"""


def test_fifo_release_under_fd_pressure_keeps_its_byte(fifo_server: fastjob.Server) -> None:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("counts fds through /proc")
    env = fifo_server.env()
    out = run_python(RELEASE_UNDER_PRESSURE, env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert "released" in out.stdout
    assert fifo_server.available() == 2  # the pool byte came back


def test_release_that_cannot_write_keeps_the_token(
    fifo_server: fastjob.Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback when the writer is gone and cannot be reopened (both
    freed slots taken by other threads): release() raises and the token
    stays held, so a later release (or close) still returns its byte."""
    client = fastjob.from_env(environ=fifo_server.env(), strict=True, implicit_token=False)
    assert client is not None
    with client:
        tok = client.acquire_blocking(timeout=5)
        t = client._t
        assert isinstance(t, FifoTransport)
        real_open = os.open

        def no_writer(p: str, flags: int, *a: int) -> int:
            if (p == t.path or p.startswith("/proc/self/fd/")) and flags & os.O_WRONLY:
                raise OSError(24, "Too many open files")
            return real_open(p, flags, *a)

        monkeypatch.setattr(transport_mod.os, "open", no_writer)
        t._check_writers()  # gives the writer up and cannot get it back
        with pytest.raises(fastjob.FifoError, match="Too many open files"):
            tok.release()
        assert not tok.released
        assert client.statistics().tokens_held == 1
        monkeypatch.setattr(transport_mod.os, "open", real_open)
        tok.release()
        assert tok.released
    assert fifo_server.available() == 2


# -- item 8: a Server dropped without close() ----------------------------------------------
@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_dropped_server_frees_fds_and_files(style: str) -> None:
    gc.collect()
    before = open_fds()
    dirs = []
    with pytest.warns(ResourceWarning, match="unclosed <fastjob.Server"):
        for _ in range(20):
            s = fastjob.Server(3, style=style)
            if s.path:
                dirs.append(os.path.dirname(s.path))
            del s
        gc.collect()
    assert open_fds() <= before
    assert not [d for d in dirs if os.path.exists(d)]


def test_server_lives_as_long_as_its_client() -> None:
    """The finalizer must not close a pool whose client is still in use."""
    client = fastjob.Server(3, style="fifo").client
    gc.collect()
    tok = client.acquire_blocking(timeout=5)
    tok2 = client.acquire_blocking(timeout=5)
    tok2.release()
    tok.release()
    with pytest.warns(ResourceWarning):
        del client, tok, tok2
        gc.collect()


# -- item 9: a FIFO Server whose creation fails ---------------------------------------------
CREATE_UNDER_PRESSURE = """
import os, resource, tempfile, fastjob
tempfile.gettempdir()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
results = []
for spare in range(6):
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    fds = []
    try:
        while True:
            fds.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    for _ in range(spare):
        os.close(fds.pop())
    try:
        s = fastjob.Server(3, style="fifo")
    except (OSError, fastjob.JobserverError) as exc:
        results.append("failed")
    else:
        results.append("ok")
        for fd in fds:
            os.close(fd)
        fds = []
        s.close()
    for fd in fds:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
print(" ".join(results))
"""


def test_failed_fifo_server_leaves_nothing(tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    out = run_python(CREATE_UNDER_PRESSURE, env=env)
    results = out.stdout.split()
    assert "failed" in results and "ok" in results, out.stdout  # both paths ran
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("client_first", [True, False])
def test_dropped_server_warns_once_whichever_is_finalized_first(client_first: bool) -> None:
    """A Server and its client are one garbage cycle; the collector may run
    either finalizer first.  Either way: one ResourceWarning, the Server's,
    and the pool's fds are freed."""
    gc.collect()
    before = open_fds()
    s = fastjob.Server(3)
    c = s.client
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = (c, s) if client_first else (s, c)
        first.__del__()  # what the collector does, in this order
        second.__del__()
    kinds = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert len(kinds) == 1 and "unclosed <fastjob.Server" in kinds[0], kinds
    assert c.closed
    del s, c, first, second
    gc.collect()
    assert open_fds() <= before
