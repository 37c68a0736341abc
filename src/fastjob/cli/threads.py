"""``fastjob threads``: run one command with as many slots as the build has
free right now, and tell it how many through the usual thread-count
variables.

It waits for ``--min`` slots (the job's own slot counts as one), then takes
whatever else is free at that moment, up to ``--max`` (default: the CPU
count), without waiting further.  COMMAND runs holding them, with the count
in FASTJOB_THREADS, OMP_NUM_THREADS, RAYON_NUM_THREADS and each ``--export
VAR``; they go back when it exits.  The count is for thread pools that do
not speak the jobserver themselves (OpenMP, rayon, a test runner's -n): a
command that takes jobserver tokens of its own should not be run this way.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pool import Pool

THREAD_VARIABLES = ("FASTJOB_THREADS", "OMP_NUM_THREADS", "RAYON_NUM_THREADS")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

DESCRIPTION = __doc__.split("\n\n", 1)[1] if __doc__ else ""
EPILOG = """\
examples:
  fastjob threads -- ./simulate --threads '$FASTJOB_THREADS'
  +fastjob threads --max 8 --export NPROC -- sh -c 'pytest -n $NPROC'   (a make recipe)
  fastjob threads --min 2 -- cargo test --release                      (rayon: RAYON_NUM_THREADS)

exit status:
  COMMAND's (128+N when signal N killed it); 2 for bad usage."""


def add_parser(sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter] | object) -> None:  # type: ignore[type-arg]
    """Register ``fastjob threads`` on the CLI's subparsers."""
    p = sub.add_parser(
        "threads",
        help="run a command with as many slots as are free now (exported as thread counts)",
        usage="fastjob threads [--min N] [--max N] [--export VAR]... -- COMMAND [ARG...]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=formatter,  # type: ignore[arg-type]
    )
    p.add_argument("--min", type=_count, default=1, metavar="N",
                   help="wait until at least N slots are held (default 1: the job's own)")
    p.add_argument("--max", type=_count, default=None, metavar="N",
                   help="take at most N slots in all (default: the number of CPUs)")
    p.add_argument("--export", action="append", default=[], metavar="VAR",
                   help="also set VAR to the count (repeatable)")
    p.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def _count(text: str) -> int:
    from . import positive_count

    return positive_count(text, "slots")


def check(ns: argparse.Namespace) -> tuple[list[str], int, int, list[str]] | str:
    """(command, min, max, exports) from the parsed options, or the message
    of a usage error."""
    command = list(ns.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command or not command[0]:
        return "no COMMAND given after --"
    most = ns.max if ns.max is not None else os.cpu_count() or 1
    if ns.min > most:
        return f"--min {ns.min} is more than --max {most}"
    for var in ns.export:
        if not _VARIABLE_NAME.fullmatch(var):
            return f"--export {var!r} is not a variable name"
    return command, ns.min, most, list(ns.export)


@contextmanager
def hold_slots(pool: Pool, least: int, most: int, exports: Sequence[str]) -> Iterator[dict[str, str]]:
    """Hold ``least`` slots (waiting for them) plus whatever else is free now,
    up to ``most``; yields the variables that carry the count."""
    client = pool.client
    base = client.acquire_many_blocking(least)
    try:
        extra = client.try_acquire_up_to(most - least) if most > least else None
        try:
            count = str(len(base) + (len(extra) if extra is not None else 0))
            yield {var: count for var in (*THREAD_VARIABLES, *exports)}
        finally:
            if extra is not None:
                extra.release()
    finally:
        base.release()


def threads(command: Sequence[str], least: int, most: int, exports: Sequence[str]) -> int:
    """Run ``command`` holding between ``least`` and ``most`` slots of the
    inherited pool (or of a new one of the CPU count when there is none);
    returns its exit status."""
    from .run import run

    return run(command, hold=lambda pool: hold_slots(pool, least, most, exports))
