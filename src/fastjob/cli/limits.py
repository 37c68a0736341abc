"""The governor's options of ``fastjob run`` and ``fastjob parallel``:
``-l/--load-average``, ``--min-free-memory SIZE``, ``--max-pressure
memory=PCT,cpu=PCT``."""

from __future__ import annotations

# Not typing.TYPE_CHECKING: typing is not imported on fastjob run's path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from .._governor import Limits

# argparse and the governor are imported only when an option is parsed or a
# limit is given: ``fastjob run -j8 -- make`` needs neither.

__all__ = ["add_limit_options", "limits_from_args", "parse_pressure", "size_arg"]


def size_arg(text: str) -> int:
    """argparse type: bytes or '4G' / '512M' / '1.5GiB'."""
    import argparse

    from .._governor import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pct(text: str, what: str) -> float:
    import argparse

    try:
        v = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}={text!r}: not a percentage") from None
    if not 0 <= v <= 100:
        raise argparse.ArgumentTypeError(f"{what}={text!r}: a percentage is from 0 to 100")
    return v


def parse_pressure(text: str) -> dict[str, float]:
    """'memory=20,cpu=80' -> {'memory': 20.0, 'cpu': 80.0} (either may be left out)."""
    import argparse

    out: dict[str, float] = {}
    for part in text.split(","):
        key, eq, value = part.strip().partition("=")
        key = key.strip().lower()
        if not eq or key not in ("memory", "cpu"):
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r}: use memory=PCT and/or cpu=PCT, e.g. memory=20,cpu=80"
            )
        if key in out:
            raise argparse.ArgumentTypeError(f"{key}= is given twice")
        out[key] = _pct(value.strip(), key)
    return out


def _load(text: str) -> float:
    import argparse

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a load average") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the load average limit must be > 0")
    return v


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """Add the governor's options to ``parser`` (run and parallel)."""
    g = parser.add_argument_group(
        "limits (a pool fastjob creates shrinks while one is exceeded; see docs/governor.md)"
    )
    g.add_argument(
        "-l", "--load-average", type=_load, metavar="LOAD", dest="load_average",
        help="hold job slots back while the 1-minute load average is above LOAD "
        "(make's and ninja's -l, applied to the whole pool and everything in it)",
    )
    g.add_argument(
        "--min-free-memory", type=size_arg, metavar="SIZE", dest="min_free_memory",
        help="hold job slots back while MemAvailable is below SIZE (bytes, or e.g. 4G, 512M); "
        "with little room above SIZE at the start (under 512 MiB per slot) the pool starts at one slot and grows as memory allows",
    )
    g.add_argument(
        "--max-pressure", type=parse_pressure, metavar="memory=PCT,cpu=PCT", dest="max_pressure",
        help="hold job slots back while the Linux pressure stall (PSI 'some avg10') of "
        "memory and/or CPU is above PCT percent",
    )


def limits_from_args(args: argparse.Namespace) -> Limits | None:
    """The Limits the options ask for, or None when none is given."""
    pressure: dict[str, float] = getattr(args, "max_pressure", None) or {}
    load = getattr(args, "load_average", None)
    memory = getattr(args, "min_free_memory", None)
    if load is None and memory is None and not pressure:
        return None  # without importing the governor
    from .._governor import Limits

    limits = Limits(
        load_average=load,
        min_free_memory=memory,
        max_memory_pressure=pressure.get("memory"),
        max_cpu_pressure=pressure.get("cpu"),
    )
    return limits if limits else None
