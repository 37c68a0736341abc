"""``connect_job.py LOG N SECONDS TAG [JOBS]``: ``fastjob.connect()`` (or
``connect(jobs=JOBS)``) the way a library user would, then run N token
holders at once in threads, each logging ``start``/``end`` to LOG while it
holds its token.  Prints the pool it got (style and -j) on stdout; warnings
go to stderr as Python shows them."""

from __future__ import annotations

import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from job import stamp  # noqa: E402

import fastjob  # noqa: E402


def main() -> int:
    log, n, seconds, tag = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    jobs = int(sys.argv[5]) if len(sys.argv) > 5 else None
    client = fastjob.connect() if jobs is None else fastjob.connect(jobs)
    done = threading.Event()

    def one(i: int) -> None:
        with client.acquire_blocking(timeout=60):
            stamp(log, "start", f"{tag}-{i}")
            done.wait(seconds)
            stamp(log, "end", f"{tag}-{i}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"pool style={client.style} jobs={client.jobs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
