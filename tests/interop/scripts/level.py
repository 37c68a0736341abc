"""The fastjob client in the middle of a nested build.

``level.py LOG OUT SECONDS MAKE SUBDIR``: join the pool (from_env, strict),
then at once run two sub-jobs of its own (token holders logged to LOG) and a
child make (``MAKE -C SUBDIR``) through ``fastjob.run_process`` with the
jobserver shared, so the child make draws from the same pool.  Writes a JSON
report: tokens taken, tokens still held at the end, the child make's stderr.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from job import stamp  # noqa: E402

import anyio  # noqa: E402

import fastjob  # noqa: E402


def main() -> int:
    log, out, seconds, make, subdir = sys.argv[1:6]
    secs = float(seconds)
    client = fastjob.from_env(strict=True)
    assert client is not None
    report: dict[str, object] = {"style": client.style}
    me = f"mid{os.getpid()}"

    async def own(i: int) -> None:
        async with client.token():
            stamp(log, "start", f"{me}-{i}")
            await anyio.sleep(secs)
            stamp(log, "end", f"{me}-{i}")

    async def child_make() -> None:
        # Holds one token for the child make (its implicit one) and shares the pool.
        done = await fastjob.run_process(
            [make, "--no-print-directory", "-C", subdir], client=client, check=False
        )
        report["make_rc"] = done.returncode
        report["make_stderr"] = done.stderr.decode(errors="replace")

    async def run_all() -> None:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(child_make)
                for i in range(2):
                    tg.start_soon(own, i)

    anyio.run(run_all)
    stats = client.statistics()
    report.update(held_at_end=stats.tokens_held, acquired=stats.tokens_acquired)
    client.close()
    with open(out, "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
