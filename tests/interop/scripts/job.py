"""A measured job: ``job.py LOG SECONDS [TAG]`` appends ``start <t> <pid> <tag>``,
sleeps, appends ``end <t> <pid> <tag>``.  Runs with ``python -S`` (no fastjob
import) so it starts fast; other scripts import :func:`stamp` from here.

Each line is one ``write()`` on an ``O_APPEND`` descriptor, so lines from
concurrent processes never interleave.  ``t`` is CLOCK_MONOTONIC, which is
system-wide on Linux, so stamps from different processes compare.
"""

from __future__ import annotations

import os
import sys
import time


def stamp(log: str, kind: str, tag: str) -> None:
    """Append one ``kind t pid tag`` line to ``log`` with a single write."""
    line = f"{kind} {time.monotonic():.6f} {os.getpid()} {tag}\n".encode()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    log, seconds = argv[1], float(argv[2])
    tag = argv[3] if len(argv) > 3 else f"job-{os.getpid()}"
    stamp(log, "start", tag)
    time.sleep(seconds)
    stamp(log, "end", tag)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
