"""Run by a cargo build script (build.rs): join cargo's pool with fastjob.

Writes $FJ_BS_OUT (JSON): which variable named the pool, whether MAKEFLAGS
was set at all, the pool style, and how many tokens it took; each token
holder is logged to $FJ_LOG so it counts in the build's overlap.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from job import stamp  # noqa: E402

import fastjob  # noqa: E402
from fastjob._discovery import find_jobserver  # noqa: E402


def main() -> int:
    log = os.environ["FJ_LOG"]
    found = find_jobserver()
    client = fastjob.from_env(strict=True)
    assert client is not None, "cargo gave the build script no jobserver"
    tokens = []
    # The implicit token (the build script's own job slot) and one from the pool.
    for _ in range(2):
        tokens.append(client.acquire_blocking(timeout=60))
        stamp(log, "start", f"bs-{os.getpid()}-{len(tokens)}")
    pool = sum(not t.implicit for t in tokens)
    for i, tok in enumerate(tokens, 1):
        stamp(log, "end", f"bs-{os.getpid()}-{i}")
        tok.release()
    report = {
        "variable": None if found is None else found[0],
        "cargo_makeflags": os.environ.get("CARGO_MAKEFLAGS"),
        "makeflags": os.environ.get("MAKEFLAGS"),
        "style": client.style,
        "pool_tokens": pool,
        "held_at_end": client.statistics().tokens_held,
    }
    client.close()
    with open(os.environ["FJ_BS_OUT"], "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
