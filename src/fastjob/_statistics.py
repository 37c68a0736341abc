"""The frozen snapshots that ``statistics()`` returns.

A module of their own, imported on the first ``statistics()`` call, because
importing dataclasses costs milliseconds that ``import fastjob`` and every
``fastjob run`` would otherwise pay.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClientStatistics", "ServerStatistics"]


@dataclass(frozen=True)
class ClientStatistics:
    """A snapshot of one client's state (see :meth:`fastjob.Client.statistics`)."""

    tokens_held: int
    implicit_held: bool
    tasks_waiting: int
    tokens_acquired: int
    wait_strategy: str


@dataclass(frozen=True)
class ServerStatistics:
    """A snapshot of a Server's pool (see :meth:`fastjob.Server.statistics`).

    ``jobs``: the size asked for (``Server(jobs)`` or the last ``resize``);
    ``effective``: the size allowed right now (at most ``jobs``, lowered by
    the limits); ``free``: tokens in the pool now (None if unknowable);
    ``withheld``: tokens the server holds out of circulation; ``limited_by``:
    the limits holding slots back now ("load", "memory", "memory-pressure",
    "cpu-pressure"; "memory" also while a pool with little room above its
    memory floor starts slowly), empty when none does.
    """

    jobs: int
    effective: int
    free: int | None
    withheld: int
    limited_by: tuple[str, ...]
