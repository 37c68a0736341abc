"""run_process / open_process: a child that holds its slots for its lifetime.

With ``share_jobserver=True`` the child also gets the pool (MAKEFLAGS and
MFLAGS and, for pipe style, the inherited fds), so a child make, cargo or
ninja uses the held token as its implicit one and takes further tokens from
the pool.  With ``share_jobserver=False`` it gets no jobserver and no ``-j``
(a child make runs serially, as make does for a non-recursive recipe).

The child runs in a process group of its own.  Cancelled (a timeout, a
cancel scope, an exception in the ``open_process`` block), its group gets
SIGTERM, SIGKILL after :data:`fastjob._spawn.TERM_GRACE` (0.5 s), the child
is reaped, and the slots are released only once no process of the group
runs.  On Linux children are started with posix_spawn and awaited through a
pidfd on the event loop (see :mod:`fastjob._spawn`); elsewhere with
:func:`anyio.open_process` in a new session.
"""

from __future__ import annotations

import os
import subprocess
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import IO, Any

import anyio
from anyio.abc import Process

from . import _spawn
from ._makeflags import child_environment
from ._slot import check_weight, child_slot, resolve_client
from .client import Client
from .server import Server

__all__ = ["child_env", "open_process", "run_process"]

Command = str | bytes | Sequence[str | bytes | os.PathLike[str]]
Stdio = int | IO[Any] | None

# anyio keywords for Windows (startupinfo, creationflags): they take the
# portable path.  The POSIX ones posix_spawn cannot express take the Popen
# start of the fast path.
_ANYIO_ONLY = ("startupinfo", "creationflags")
_POPEN = ("user", "group", "extra_groups", "umask")


def child_env(
    client: Client, share_jobserver: bool, env: Mapping[str, str] | None
) -> tuple[dict[str, str], tuple[int, ...]]:
    """(environment, pass_fds) for a child of ``client``'s pool; isolated
    (no jobserver, no ``-j``, no fds) when ``share_jobserver`` is False."""
    if share_jobserver:
        return client.env(None if env is None else dict(env)), client.pass_fds
    return child_environment(env, None), ()


# The last environment built for env=None, as bytes (what posix_spawn
# passes on without encoding it again): (client, jobs, share_jobserver,
# os.environ's contents then, the environment).  Building it costs more than
# the spawn itself; it is rebuilt when os.environ or the pool changes.
_EnvKey = tuple["weakref.ref[Client]", "int | None", bool, dict[bytes, bytes]]
_last_env: tuple[_EnvKey, dict[bytes, bytes]] | None = None
_environ_data: dict[bytes, bytes] | None = getattr(os.environ, "_data", None)


def _fast_env(client: Client, share_jobserver: bool, env: Mapping[str, str] | None) -> Mapping[Any, Any]:
    """The child's environment for the fast path: as :func:`child_env`, but
    reused while nothing it depends on has changed (env=None only)."""
    global _last_env
    if env is not None or _environ_data is None:
        return child_env(client, share_jobserver, env)[0]
    last = _last_env
    if last is not None:
        (ref, jobs, share, data), built = last
        if ref() is client and jobs == client.jobs and share == share_jobserver and data == _environ_data:
            return built
    made = child_env(client, share_jobserver, None)[0]
    built = {os.fsencode(k): os.fsencode(v) for k, v in made.items()}
    _last_env = ((weakref.ref(client), client.jobs, share_jobserver, dict(_environ_data)), built)
    return built


def _merge_fds(kwargs: dict[str, Any], fds: tuple[int, ...]) -> None:
    extra = tuple(kwargs.pop("pass_fds", ()))
    kwargs["pass_fds"] = tuple(dict.fromkeys(extra + fds))


def _close_fds(client: Client, share_jobserver: bool, pass_fds: Sequence[int]) -> tuple[int, ...]:
    """fds the child must not inherit: what this process inherited (make's
    pool fds in a ``+`` recipe, say; subprocess's close_fds=True) and, when
    not sharing, the pool's fds."""
    inherited = _spawn._inheritable_fds()
    if share_jobserver or not client.pass_fds:
        return inherited
    return inherited + client.pass_fds


def _split(kwargs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(Popen-only keywords, fast path usable).  Unknown keywords are a
    TypeError now, as they would be from anyio."""
    popen: dict[str, Any] = {}
    fast = _spawn.fast_path()
    for key in list(kwargs):
        if key in _POPEN:
            popen[key] = kwargs.pop(key)
        elif key in _ANYIO_ONLY:
            fast = False
        else:
            raise TypeError(f"run_process/open_process got an unexpected keyword argument {key!r}")
    return popen, fast



def _prepare(
    client: Client | Server | None,
    weight: int,
    share_jobserver: bool,
    pass_fds: Sequence[int],
    kwargs: dict[str, Any],
) -> tuple[Client, dict[str, Any], bool, tuple[int, ...]]:
    """What run_process and open_process check and work out first: the
    client, the Popen-only keywords, whether the fast path applies, and
    every fd the child inherits."""
    resolved = resolve_client(client)
    check_weight(weight, resolved)
    popen, fast = _split(kwargs)
    fds = resolved.pass_fds if share_jobserver else ()
    all_fds = tuple(dict.fromkeys((*pass_fds, *fds))) if fds else tuple(pass_fds)
    return resolved, popen, fast, all_fds

async def run_process(
    command: Command,
    *,
    client: Client | Server | None = None,
    share_jobserver: bool = True,
    check: bool = True,
    weight: int = 1,
    input: bytes | None = None,
    stdin: Stdio = None,
    stdout: Stdio = subprocess.PIPE,
    stderr: Stdio = subprocess.PIPE,
    cwd: str | bytes | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    start_new_session: bool = False,
    **kwargs: Any,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``command`` holding ``weight`` slots for its lifetime and return a
    :class:`subprocess.CompletedProcess`, like :func:`anyio.run_process`
    (same keyword arguments and defaults: stdout and stderr are captured;
    pass ``stdout=None`` / ``stderr=None`` to inherit them).

    ``client=None`` means the pool this process already uses: the enclosing
    JobGroup's client, else the process default of :func:`fastjob.connect`;
    a :class:`Server` stands for its ``.client``.  Inside a JobGroup task the
    child uses that task's token as one of its slots.  With ``check=True`` a
    non-zero exit raises :class:`subprocess.CalledProcessError` whose message
    ends with the tail of the captured stderr.  ``weight > 1`` takes that many
    slots at once (``Client.acquire_many``), for jobs that need several cores
    or much memory.  A str or bytes command runs through ``/bin/sh -c``.

    Cancelling stops the child's whole process group (SIGTERM, SIGKILL after
    0.5 s) before the slots are released.
    """
    client, popen, fast, all_fds = _prepare(client, weight, share_jobserver, pass_fds, kwargs)
    async with child_slot(client, weight):
        if fast:
            return await _spawn.run_child(
                command, _fast_env(client, share_jobserver, env), input=input, stdin=stdin, stdout=stdout, stderr=stderr,
                check=check, cwd=cwd, pass_fds=all_fds,
                close_fds=_close_fds(client, share_jobserver, all_fds),
                start_new_session=start_new_session, popen_kwargs=popen,
            )  # fmt: skip
        return await _run_portable(
            command, child_env(client, share_jobserver, env)[0], input=input, stdin=stdin, stdout=stdout, stderr=stderr,
            check=check, cwd=cwd, pass_fds=all_fds, kwargs={**popen, **kwargs},
        )  # fmt: skip


async def _run_portable(
    command: Command,
    env: dict[str, str],
    *,
    input: bytes | None,
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
    check: bool,
    cwd: Any,
    pass_fds: tuple[int, ...],
    kwargs: dict[str, Any],
) -> subprocess.CompletedProcess[bytes]:
    """anyio's run_process, in a session of its own (so the group can be
    stopped), with the group stop on cancellation."""
    if input is not None and stdin is not None:
        raise ValueError("give either input or stdin, not both")
    with _named(command):
        process = await anyio.open_process(
            command, stdin=subprocess.PIPE if input is not None else stdin, stdout=stdout,
            stderr=stderr, cwd=cwd, env=env, pass_fds=pass_fds, start_new_session=True, **kwargs,
        )  # fmt: skip
    out: list[bytes] = []
    err: list[bytes] = []

    async def drain(stream: anyio.abc.ByteReceiveStream, into: list[bytes]) -> None:
        async for chunk in stream:
            into.append(chunk)

    try:
        async with anyio.create_task_group() as tg:
            if process.stdout is not None:
                tg.start_soon(drain, process.stdout, out)
            if process.stderr is not None:
                tg.start_soon(drain, process.stderr, err)
            if process.stdin is not None and input is not None:
                await process.stdin.send(input)
                await process.stdin.aclose()
            rc = await process.wait()
    except BaseException:
        await _spawn.PortableChild.stop(process)
        with anyio.CancelScope(shield=True):
            await process.aclose()
        raise
    await process.aclose()
    stdout_b = b"".join(out) if process.stdout is not None else None
    stderr_b = b"".join(err) if process.stderr is not None else None
    if check:
        _spawn.check_returncode(command, rc, stdout_b, stderr_b)
    return subprocess.CompletedProcess(command, rc, stdout_b, stderr_b)


@contextmanager
def _named(command: Command) -> Iterator[None]:
    """A FileNotFoundError that does not say which program (uvloop's) gets
    its name."""
    try:
        yield
    except FileNotFoundError as exc:
        if exc.filename is not None or isinstance(command, (str, bytes)):
            raise
        program = os.fsdecode(next(iter(command), ""))
        raise FileNotFoundError(exc.errno, exc.strerror, program) from None


@asynccontextmanager
async def open_process(
    command: Command,
    *,
    client: Client | Server | None = None,
    share_jobserver: bool = True,
    weight: int = 1,
    stdin: Stdio = subprocess.PIPE,
    stdout: Stdio = subprocess.PIPE,
    stderr: Stdio = subprocess.PIPE,
    cwd: str | bytes | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    start_new_session: bool = False,
    **kwargs: Any,
) -> AsyncIterator[Process]:
    """``async with open_process(cmd) as proc:`` a running child holding
    ``weight`` slots; ``proc`` is an :class:`anyio.abc.Process` (pid,
    returncode, wait(), send_signal/terminate/kill, stdin/stdout/stderr
    streams; all three are pipes by default, as in :func:`anyio.open_process`).

    Leaving the block normally waits for the child, then releases the slots.
    When the block raises or is cancelled, the child's process group gets
    SIGTERM, then SIGKILL after 0.5 s, is reaped, and only then are the slots
    released.  ``client`` and ``share_jobserver`` as in :func:`run_process`.
    """
    client, popen, fast, all_fds = _prepare(client, weight, share_jobserver, pass_fds, kwargs)
    async with child_slot(client, weight):
        if fast:
            proc = _spawn.open_child(
                command, _fast_env(client, share_jobserver, env), stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd,
                pass_fds=all_fds, close_fds=_close_fds(client, share_jobserver, all_fds),
                start_new_session=start_new_session, popen_kwargs=popen,
            )  # fmt: skip
            try:
                yield proc
            except BaseException:
                await proc.stop()
                proc.close_streams()
                raise
            with anyio.CancelScope(shield=True):
                # Shielded so the slots are never released while the child runs.
                await proc.aclose()
            return
        with _named(command):
            process = await anyio.open_process(
                command, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd,
                env=child_env(client, share_jobserver, env)[0],
                pass_fds=all_fds, start_new_session=True, **popen, **kwargs,
            )  # fmt: skip
        try:
            yield process
        except BaseException:
            await _spawn.PortableChild.stop(process)
            with anyio.CancelScope(shield=True):
                await process.aclose()
            raise
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()
