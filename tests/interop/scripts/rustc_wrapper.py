"""RUSTC_WRAPPER: ``rustc_wrapper.py RUSTC ARGS...`` logs each compile to
$FJ_LOG (start, then a pause so overlap is measurable, then rustc, then
end).  Queries such as ``rustc -vV`` are passed through unlogged.  The
jobserver fds are kept open for rustc (close_fds=False)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from job import stamp  # noqa: E402


def main() -> int:
    args = sys.argv[1:]
    name = args[args.index("--crate-name") + 1] if "--crate-name" in args else "___"
    if name == "___":
        return subprocess.call(args, close_fds=False)
    log = os.environ["FJ_LOG"]
    tag = f"rustc-{name}-{os.getpid()}"
    stamp(log, "start", tag)
    time.sleep(float(os.environ.get("FJ_RUSTC_PAUSE", "0.2")))
    rc = subprocess.call(args, close_fds=False)
    stamp(log, "end", tag)
    return rc


if __name__ == "__main__":
    sys.exit(main())
