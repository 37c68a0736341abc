"""run_process / open_process: a child that holds one token for its lifetime.

With ``share_jobserver=True`` the child also gets the pool (environment and,
for pipe style, the inherited fds), so a child make, cargo or ninja uses the
held token as its implicit one and takes further tokens from the pool.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import Process

from ._slot import child_slot, resolve_client
from ._makeflags import child_environment
from .client import Client
from .server import Server

__all__ = ["child_env", "open_process", "run_process"]

Command = str | bytes | Sequence[str | bytes | os.PathLike[str]]


def child_env(
    client: Client, share_jobserver: bool, env: Mapping[str, str] | None
) -> tuple[dict[str, str], tuple[int, ...]]:
    """(environment, pass_fds) for a child of ``client``'s pool."""
    if share_jobserver:
        return client.env(None if env is None else dict(env)), client.pass_fds
    return child_environment(env, None), ()


def _merge_fds(kwargs: dict[str, Any], fds: tuple[int, ...]) -> None:
    extra = tuple(kwargs.pop("pass_fds", ()))
    kwargs["pass_fds"] = tuple(dict.fromkeys(extra + fds))


async def run_process(
    command: Command,
    *,
    client: Client | Server | None = None,
    share_jobserver: bool = True,
    check: bool = True,
    **kwargs: Any,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``command`` holding one token for its lifetime; like
    :func:`anyio.run_process` (same keyword arguments), returns
    CompletedProcess.  ``client=None`` means the enclosing JobGroup's client,
    else :func:`fastjob.connect`.  Inside a :class:`JobGroup` task the child
    uses that task's token (no second token).
    """
    client = resolve_client(client)
    env, fds = child_env(client, share_jobserver, kwargs.pop("env", None))
    _merge_fds(kwargs, fds)
    async with child_slot(client):
        return await anyio.run_process(command, check=check, env=env, **kwargs)


@asynccontextmanager
async def open_process(
    command: Command,
    *,
    client: Client | Server | None = None,
    share_jobserver: bool = True,
    **kwargs: Any,
) -> AsyncIterator[Process]:
    """``async with open_process(cmd) as proc:`` a running child holding one
    token; on exit the child is waited for (killed if the block is cancelled
    or raises) and the token released."""
    client = resolve_client(client)
    env, fds = child_env(client, share_jobserver, kwargs.pop("env", None))
    _merge_fds(kwargs, fds)
    async with child_slot(client):
        process = await anyio.open_process(command, env=env, **kwargs)
        try:
            yield process
        except BaseException:
            process.kill()
            with anyio.CancelScope(shield=True):
                await process.aclose()
            raise
        else:
            with anyio.CancelScope(shield=True):
                # Waiting is shielded so the token is never released while the
                # child still runs.
                await process.wait()
                await process.aclose()
