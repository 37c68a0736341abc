"""``fastjob status`` and ``fastjob resize``: ask the owner of the pool this
process is in (over FASTJOB_CONTROL, or ``--pid``) for its size, or to
change it.  For a pool fastjob does not own (make, cargo) status reports what
can be seen from here: style, -j, free tokens."""

from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any

from .._control import ENV, ControlError, ControlRefused, find_by_pid, request
from .._discovery import find_jobserver, from_env
from .._errors import JobserverError, JobserverWarning

__all__ = ["KEYS", "resize", "status"]

#: the keys of ``fastjob status --json``, exactly
KEYS = ("style", "jobs", "effective", "free", "withheld", "limited_by", "owner_pid", "fastjob")


class _Usage(Exception):
    """A one-line error, exit status 2."""


def _control_path(pid: int | None) -> str | None:
    if pid is not None:
        return find_by_pid(pid)
    path = os.environ.get(ENV, "")
    return path or None


def _env_pool(quiet: bool) -> tuple[dict[str, Any], object] | None:
    """What this process can see of the jobserver its environment names:
    (report, identity), or None when none is named (or, ``quiet``, when it
    is unusable here: fds not inherited, while the owner can still answer)."""
    found = find_jobserver()
    if found is None or found[2] is None:
        return None
    var, _value, auth, _disabled = found
    assert auth is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", JobserverWarning)
        client = from_env(implicit_token=False)
    if client is None:
        if quiet:
            return None
        why = next((str(w.message) for w in caught), "it cannot be used")
        raise _Usage(f"the jobserver named in {var} is unusable: {why} ('fastjob doctor' explains)")
    try:
        report: dict[str, Any] = {
            "style": client.style, "jobs": auth.jobs, "effective": None,
            "free": client.available(), "withheld": None, "limited_by": [],
            "owner_pid": None, "fastjob": False,
        }
        return report, client._pool_key
    finally:
        client.close()


def _owner_report(path: str, msg: dict[str, Any]) -> tuple[dict[str, Any], object]:
    st = request(path, msg)
    ident = st.get("identity")
    report = {k: st.get(k) for k in KEYS if k != "fastjob"}
    report["fastjob"] = True
    return report, tuple(ident) if isinstance(ident, list) else None


def _format(r: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        return "unknown" if v is None else str(v)

    limited = ", ".join(r["limited_by"]) if r["limited_by"] else "nothing"
    lines = [
        f"pool:       {'a fastjob pool' if r['fastjob'] else 'not a fastjob pool (make, cargo, ...)'}",
        f"style:      {r['style']}",
        f"jobs:       {show(r['jobs'])}",
        f"effective:  {show(r['effective'])}",
        f"free:       {show(r['free'])}",
        f"withheld:   {show(r['withheld'])}",
        f"limited by: {limited if r['fastjob'] else 'unknown'}",
        f"owner pid:  {show(r['owner_pid'])}",
    ]
    return "\n".join(lines)


def status(*, as_json: bool = False, pid: int | None = None) -> int:
    """Print the pool's state; 0, or 2 with a one-line error."""
    try:
        path = _control_path(pid)
        env_pool = _env_pool(quiet=path is not None) if pid is None else None
        report: dict[str, Any] | None = None
        if path is not None:
            owner, ident = _owner_report(path, {"op": "status"})
            # A make -jN between us and the owner made a pool of its own: that
            # is the one this process uses.
            if env_pool is None or ident is None or env_pool[1] == ident:
                report = owner
        if report is None:
            if env_pool is None:
                raise _Usage(
                    f"no jobserver here: neither {ENV} nor MAKEFLAGS/MFLAGS/CARGO_MAKEFLAGS "
                    "names one (run this inside 'fastjob run', a make recipe, or give --pid)"
                )
            report = env_pool[0]
    except (_Usage, ControlError, JobserverError) as exc:
        sys.stderr.write(f"fastjob status: error: {exc}\n")
        return 2
    if as_json:
        sys.stdout.write(json.dumps({k: report[k] for k in KEYS}) + "\n")
    else:
        sys.stdout.write(_format(report) + "\n")
    return 0


def resize(jobs: int, *, pid: int | None = None) -> int:
    """Ask the owner to resize; 0, 1 when it refused, 2 without an owner."""
    try:
        path = _control_path(pid)
        if path is None:
            raise _Usage(
                f"{ENV} is not set: 'fastjob resize' works inside a pool fastjob owns "
                "('fastjob run -jN -- ...'), or give --pid of its owner"
            )
        report, _ = _owner_report(path, {"op": "resize", "jobs": jobs})
    except ControlRefused as exc:
        sys.stderr.write(f"fastjob resize: error: {exc}\n")
        return 1
    except (_Usage, ControlError, JobserverError) as exc:
        sys.stderr.write(f"fastjob resize: error: {exc}\n")
        return 2
    sys.stdout.write(
        f"fastjob: pool of pid {report['owner_pid']} resized to {report['jobs']} "
        f"(effective {report['effective']}, free {report['free']}, withheld {report['withheld']})\n"
    )
    return 0
