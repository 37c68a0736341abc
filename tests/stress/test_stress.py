"""Multi-process stress: several processes hammer one pool (pipe and fifo,
every wait strategy) with sync, threaded and async cycles and random
cancellations; at the end the pool holds exactly ``jobs - 1`` tokens.

A few seconds in CI; FASTJOB_STRESS_SECONDS=<s> makes each worker run longer
and the ``slow`` test uses 8 processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastjob

WORKER = str(Path(__file__).with_name("worker.py"))
SECONDS = float(os.environ.get("FASTJOB_STRESS_SECONDS", "1.2"))

COMBOS = [
    ("pipe", "proc-reopen"),
    ("pipe", "rwf-nowait"),
    ("pipe", "thread"),
    ("fifo", "fifo-private"),
    ("fifo", "thread"),
]


def record(figures: dict[str, object]) -> None:
    """Append figures to $FASTJOB_FIGURES_FILE (for the closing report)."""
    path = os.environ.get("FASTJOB_FIGURES_FILE")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(figures) + "\n")


def stress(style: str, strategy: str, procs: int, seconds: float, jobs: int) -> None:
    with fastjob.Server(jobs, style=style) as server:
        env = server.env()
        env["FASTJOB_WAIT_STRATEGY"] = strategy
        children = [
            subprocess.Popen(
                [sys.executable, WORKER, str(seconds), str(1000 * i + 17)],
                env=env,
                pass_fds=server.pass_fds,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(procs)
        ]
        results = []
        try:
            for ch in children:
                out, err = ch.communicate(timeout=seconds * 4 + 60)
                assert ch.returncode == 0, f"worker failed:\n{err}"
                results.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for ch in children:
                if ch.poll() is None:
                    ch.kill()
                    ch.wait()
        for r in results:
            assert r["strategy"] == strategy
        # The whole point: every token is back, none extra.
        assert server.available() == jobs - 1
        assert server.reconcile() == 0
        sums: dict[str, int] = {}
        for r in results:
            for k, v in r.items():
                if isinstance(v, int):
                    sums[k] = sums.get(k, 0) + v
        cycles = sums.get("sync", 0) + sums.get("async", 0)
        totals: dict[str, object] = {"test": f"stress-{style}-{strategy}", "procs": procs, **sums}
        totals["cycles"] = cycles
        totals["tokens_lost"] = jobs - 1 - server.available()
        record(totals)
        # Thousands of cycles per process, or the stress did not stress.
        assert cycles >= 1000 * procs, totals


@pytest.mark.parametrize(("style", "strategy"), COMBOS, ids=[f"{a}-{b}" for a, b in COMBOS])
def test_stress(style: str, strategy: str) -> None:
    stress(style, strategy, procs=4, seconds=SECONDS, jobs=3)


@pytest.mark.slow
@pytest.mark.skipif(
    "FASTJOB_STRESS_SECONDS" not in os.environ, reason="set FASTJOB_STRESS_SECONDS for the long run"
)
@pytest.mark.parametrize(("style", "strategy"), COMBOS, ids=[f"{a}-{b}" for a, b in COMBOS])
def test_stress_long(style: str, strategy: str) -> None:
    stress(style, strategy, procs=8, seconds=SECONDS, jobs=5)
