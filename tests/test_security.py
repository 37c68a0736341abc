"""Nothing outside the build can reach the pool.

* A FIFO pool is created 0600 in a fresh 0700 directory owned by the user,
  never at a predictable shared path.
* A FIFO owned by another user is refused unless the user opts in.
* Pool fds are close-on-exec: an unrelated child sees neither the fds nor the
  variables; a child meant to share the pool sees both.
* A token byte is only ever one opaque byte: every value works, and release
  writes back exactly the byte read.
"""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
import tempfile
from collections import Counter

import anyio
import pytest

import fastjob

PROBE = r"""
import json, os, sys
fds = {}
for name in os.listdir("/proc/self/fd"):
    try:
        st = os.stat(f"/proc/self/fd/{name}")
    except OSError:
        continue
    fds[name] = [st.st_dev, st.st_ino]
env = {k: v for k, v in os.environ.items() if k in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS")}
print(json.dumps({"fds": fds, "env": env}))
"""


def probe(**kw: object) -> dict[str, dict[str, object]]:
    import json

    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True,
        **kw,  # type: ignore[arg-type]
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def pool_inodes(server: fastjob.Server) -> set[tuple[int, int]]:
    fd = server._transport.read_fd
    st = os.fstat(fd)
    return {(st.st_dev, st.st_ino)}


# -- the FIFO's place and mode -----------------------------------------------------------
def test_fifo_private_dir_and_mode() -> None:
    with fastjob.Server(3, style="fifo") as a, fastjob.Server(3, style="fifo") as b:
        for s in (a, b):
            path = str(s.path)
            d = os.path.dirname(path)
            dst = os.lstat(d)
            fst = os.lstat(path)
            assert stat.S_ISDIR(dst.st_mode) and stat.S_IMODE(dst.st_mode) == 0o700
            assert dst.st_uid == os.geteuid()
            assert stat.S_ISFIFO(fst.st_mode) and stat.S_IMODE(fst.st_mode) == 0o600
            assert fst.st_uid == os.geteuid()
            # In the temp dir, in a directory of its own whose name is random.
            assert os.path.dirname(d) == os.path.realpath(tempfile.gettempdir()) or \
                os.path.dirname(d) == tempfile.gettempdir()
            assert os.path.basename(d) not in (f"GMfifo{os.getpid()}", str(os.getpid()))
            assert str(os.getpid()) not in os.path.basename(d)
        # Two pools: two fresh directories.
        assert os.path.dirname(str(a.path)) != os.path.dirname(str(b.path))
        paths = [str(a.path), str(b.path)]
    for p in paths:  # removed with its directory at close
        assert not os.path.exists(p) and not os.path.exists(os.path.dirname(p))


def test_fifo_mode_ignores_umask() -> None:
    old = os.umask(0)
    try:
        with fastjob.Server(2, style="fifo") as s:
            assert stat.S_IMODE(os.lstat(str(s.path)).st_mode) == 0o600
            assert stat.S_IMODE(os.lstat(os.path.dirname(str(s.path))).st_mode) == 0o700
    finally:
        os.umask(old)


# -- foreign FIFOs ---------------------------------------------------------------------------
@pytest.fixture
def foreign_fifo() -> tuple[fastjob.Server, str]:  # type: ignore[misc]
    if os.geteuid() != 0:
        pytest.skip("needs root to give a FIFO to another user")
    with fastjob.Server(3, style="fifo") as server:
        path = str(server.path)
        os.chown(path, 65534, 65534)
        try:
            yield server, path
        finally:
            os.chown(path, 0, 0)


def test_foreign_fifo_refused(foreign_fifo: tuple[fastjob.Server, str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    server, path = foreign_fifo
    monkeypatch.delenv("FASTJOB_ALLOW_FOREIGN_FIFO", raising=False)
    with pytest.raises(fastjob.ForeignFifoError, match="uid 65534"):
        fastjob.from_env(environ=server.env(), strict=True)
    with pytest.warns(fastjob.JobserverWarning, match="allow_foreign"):
        assert fastjob.from_env(environ=server.env()) is None
    monkeypatch.setenv("FASTJOB_ALLOW_FOREIGN_FIFO", "0")
    with pytest.raises(fastjob.ForeignFifoError):
        fastjob.from_env(environ=server.env(), strict=True)


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_foreign_fifo_opt_in(foreign_fifo: tuple[fastjob.Server, str], how: str,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    server, path = foreign_fifo
    if how == "argument":
        client = fastjob.from_env(environ=server.env(), strict=True, allow_foreign=True)
    else:
        monkeypatch.setenv("FASTJOB_ALLOW_FOREIGN_FIFO", "1")
        client = fastjob.from_env(environ=server.env(), strict=True)
    assert client is not None
    with client:
        tok = client.acquire_blocking(timeout=5)
        tok.release()


# -- close-on-exec and what an unrelated child sees -------------------------------------
@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_pool_fds_close_on_exec(style: str) -> None:
    with fastjob.Server(3, style=style) as server:
        # Every fd naming the pool in this process is FD_CLOEXEC.
        inodes = pool_inodes(server)
        ours = []
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                st = os.fstat(fd)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in inodes:
                ours.append(fd)
                assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, fd
        assert ours
        # Even a careless spawn (close_fds=False) passes nothing.
        seen = probe(close_fds=False)
        child_inodes = {tuple(v) for v in seen["fds"].values()}  # type: ignore[union-attr]
        assert not inodes & child_inodes
        assert seen["env"] == {}


def test_unrelated_child_sees_nothing_sharing_child_sees_pool() -> None:
    """run_process(share_jobserver=False) strips the variables and passes no
    fds even when this process runs inside a jobserver; the positive control
    (share_jobserver=True) shows the probe would have seen them."""
    with fastjob.Server(3) as server:
        client = fastjob.from_env(environ=server.env(), strict=True)
        assert client is not None
        inodes = pool_inodes(server)
        env = server.env()  # as if we were a recipe of make -j3

        async def main() -> tuple[str, str]:
            a = await fastjob.run_process(
                [sys.executable, "-c", PROBE], client=client, share_jobserver=False,
                env=env, stdout=subprocess.PIPE,
            )
            b = await fastjob.run_process(
                [sys.executable, "-c", PROBE], client=client, share_jobserver=True,
                env=env, stdout=subprocess.PIPE,
            )
            return a.stdout.decode(), b.stdout.decode()

        import json

        unrelated, sharing = (json.loads(x) for x in anyio.run(main))
        # Other make flags may stay; no variable names a jobserver any more.
        for value in unrelated["env"].values():
            assert "jobserver" not in value and fastjob.parse_makeflags(value) is None
        assert not inodes & {tuple(v) for v in unrelated["fds"].values()}
        assert set(sharing["env"]) == {"MAKEFLAGS", "MFLAGS"}
        assert inodes & {tuple(v) for v in sharing["fds"].values()}
        client.close()


def test_private_fds_of_a_client_are_cloexec() -> None:
    """The private descriptions a client opens (/proc/self/fd reopen) are
    close-on-exec too, while the inherited fds are left as they were."""
    r, w = os.pipe()
    os.set_inheritable(r, True)
    os.set_inheritable(w, True)
    os.write(w, b"++")
    try:
        before = {fd: fcntl.fcntl(fd, fcntl.F_GETFD) for fd in (r, w)}
        client = fastjob.from_env(environ={"MAKEFLAGS": f"-j3 --jobserver-auth={r},{w}"},
                                  strict=True)
        assert client is not None
        rfd = client._t.read_fd
        if rfd not in (r, w):
            assert fcntl.fcntl(rfd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert {fd: fcntl.fcntl(fd, fcntl.F_GETFD) for fd in (r, w)} == before
        client.close()
    finally:
        os.close(r)
        os.close(w)


def test_a_servers_own_client_writes_through_a_private_nonblocking_writer() -> None:
    """The Server's client writes tokens back with a plain write(2) on a
    private O_NONBLOCK, close-on-exec description of the pool's write end
    (closed before the Server's fds); a client of inherited fds writes to
    the shared end (a writer of its own would keep a dead pool alive)."""
    with fastjob.Server(3, style="pipe") as s:
        t = s.client._t
        if t.strategy != "proc-reopen":
            pytest.skip(f"strategy {t.strategy}: no private descriptions")
        fd = t.private_write_fd
        r, w = s.pass_fds
        assert fd not in (r, w, -1)
        assert os.fstat(fd).st_ino == os.fstat(w).st_ino
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert not fcntl.fcntl(w, fcntl.F_GETFL) & os.O_NONBLOCK  # the shared end: untouched
        got = [s.client.try_acquire() for _ in range(3)]
        for tok in got:
            assert tok is not None
            tok.release()
        assert s.statistics().free == 2
        c = fastjob.from_env(environ=s.env(), strict=True)
        assert c is not None
        assert c._t.private_write_fd == -1
        c.close()


# -- token bytes are opaque --------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["proc-reopen", "rwf-nowait", "thread"])
def test_every_byte_value_is_one_token(strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool holding all 256 byte values (NUL, newline, 0xff, '-', ...) gives
    256 tokens, each released as exactly the byte read."""
    monkeypatch.setenv("FASTJOB_WAIT_STRATEGY", strategy)
    r, w = os.pipe()
    everything = bytes(range(256))
    os.write(w, everything)
    try:
        client = fastjob.from_env(
            environ={"MAKEFLAGS": f"-j257 --jobserver-auth={r},{w}"}, strict=True,
            implicit_token=False,
        )
        assert client is not None
        toks = [client.acquire_blocking(timeout=5) for _ in range(256)]
        got = b"".join(t.byte or b"" for t in toks)
        assert sorted(got) == sorted(everything)
        assert client.try_acquire() is None
        for t in toks:
            t.release()
        back = os.read(r, 1024)
        assert Counter(back) == Counter(everything)
        client.close()
    finally:
        os.close(r)
        os.close(w)


def test_bytes_written_by_others_are_not_interpreted() -> None:
    """A hostile peer writes bytes that look like text, numbers or escape
    sequences: each is one token, nothing more (no parsing, no growth)."""
    with fastjob.Server(1) as server:  # an empty pool
        other = fastjob.from_env(environ=server.env(), strict=True)
        assert other is not None
        junk = b"\x1b[2J9999\n\0-1" + "é".encode()
        for b in junk:
            other._t.write(b)
        assert server.available() == len(junk)
        toks = [server.client.acquire_blocking(timeout=5) for _ in range(len(junk) + 1)]
        assert toks[0].implicit
        assert b"".join(t.byte or b"" for t in toks[1:]) == junk
        for t in toks:
            t.release()
        assert server.reconcile() == -len(junk)
        assert server.available() == 0
        other.close()
