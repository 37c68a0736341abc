"""``check_env.py OUT``: what from_env() does in this process, as JSON.

Records the jobserver variables, the result and warnings of ``from_env()``,
and what ``from_env(strict=True)`` raises (or returns).
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import fastjob


def main() -> int:
    report: dict[str, object] = {
        var: os.environ.get(var) for var in ("CARGO_MAKEFLAGS", "MAKEFLAGS", "MFLAGS")
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client = fastjob.from_env()
    report["client"] = None if client is None else client.style
    report["warnings"] = [[w.category.__name__, str(w.message)] for w in caught]
    if client is not None:
        client.close()
    try:
        strict = fastjob.from_env(strict=True)
    except fastjob.JobserverError as exc:
        report["strict"] = [type(exc).__name__, str(exc)]
    else:
        report["strict"] = None if strict is None else ["Client", strict.style]
        if strict is not None:
            strict.close()
    with open(sys.argv[1], "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
