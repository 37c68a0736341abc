"""connect() and ``client=None`` (issue 12, items 2, 5 and 14), each in a
fresh process so the process-wide pool starts unset:

- the first connect() establishes the process's pool; connect() and
  ``client=None`` (run_process, JobGroup) return it; a later connect(jobs=M)
  of another size warns instead of making a second pool;
- a jobserver named but unusable (closed fds, ``-2,-2``) gives a pool of 1,
  with a warning that says why and the fix; an explicit jobs= leaving a
  usable jobserver warns;
- the warnings point at the caller's line.
"""

from __future__ import annotations

import json

import pytest

import fastjob
from conftest import clean_env, run_python

PRELUDE = """
import json, sys, warnings
import fastjob
warnings.simplefilter("always")
out = {}
def caught(fn):
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        value = fn()
    return value, [(w.category.__name__, str(w.message), w.filename, w.lineno) for w in ws]
"""


def probe(code: str, env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> dict:
    res = run_python(PRELUDE + code + "\nprint(json.dumps(out))\n", env=env, pass_fds=pass_fds, check=False)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_client_none_is_the_pool_connect_established() -> None:
    out = probe(
        """
import anyio, sys
c = fastjob.connect(3)
out["jobs"] = c.jobs
out["same"] = fastjob.connect() is c
c5, ws = caught(lambda: fastjob.connect(5))
out["later_same"] = c5 is c
out["later_warnings"] = ws
async def main():
    res = await fastjob.run_process(
        [sys.executable, "-c", "import os; print(os.environ['MAKEFLAGS'])"], stdout=-1)
    out["child_makeflags"] = res.stdout.decode().strip()
    async with fastjob.JobGroup() as g:
        out["group_same"] = g.client is c
anyio.run(main)
out["ours"] = c.env({})["MAKEFLAGS"]
""",
        clean_env(),
    )
    assert out["jobs"] == 3 and out["same"] and out["later_same"] and out["group_same"]
    assert out["child_makeflags"] == out["ours"].strip()  # run_process ran on the pool of 3
    assert "-j3" in out["ours"]
    [(cat, msg, _, _)] = out["later_warnings"]
    assert cat == "JobserverWarning" and "connect(jobs=5)" in msg and "already uses a pool" in msg


def test_connect_same_jobs_twice_is_silent() -> None:
    out = probe(
        """
c, ws = caught(lambda: (fastjob.connect(2), fastjob.connect(2), fastjob.connect()))
out["same"] = c[0] is c[1] is c[2]
out["warnings"] = ws
""",
        clean_env(),
    )
    assert out["same"] and out["warnings"] == []


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (" -j4 --jobserver-auth=50,51", "Bad file descriptor"),  # a recipe line without '+'
        (" -j4 --jobserver-auth=3,4 --jobserver-auth=-2,-2", "disabled on purpose"),  # make 4.4
        (" -j2 --jobserver-auth=-2,-2", "disabled on purpose"),
        (" -j4 --jobserver-auth=fifo:/nonexistent/fifo", "does not exist"),
    ],
)
def test_named_but_unusable_is_a_pool_of_one(value: str, why: str) -> None:
    out = probe(
        """
c, ws = caught(lambda: fastjob.connect())
out["warnings"] = ws
out["jobs"] = c.jobs
t1 = c.try_acquire(); t2 = c.try_acquire()
out["tokens"] = [t1 is not None and t1.implicit, t2 is None]
t1.release()
""",
        clean_env(MAKEFLAGS=value),
    )
    assert out["jobs"] == 1 and out["tokens"] == [True, True]  # the implicit slot only
    [(cat, msg, filename, _)] = out["warnings"]
    assert cat == "JobserverWarning"
    assert why in msg and "one job at a time" in msg and "Fix:" in msg, msg
    assert filename == "<string>"  # the caller's line, not fastjob's


def test_explicit_jobs_leaving_a_usable_jobserver_warns() -> None:
    with fastjob.Server(3) as server:
        out = probe(
            """
c, ws = caught(lambda: fastjob.connect(jobs=5))
out["jobs"] = c.jobs
out["warnings"] = ws
out["makeflags"] = c.env({})["MAKEFLAGS"]
""",
            server.env(clean_env()),
            pass_fds=server.pass_fds,
        )
        inherited = server.env({})["MAKEFLAGS"]
    assert out["jobs"] == 5 and out["makeflags"] != inherited
    [(cat, msg, filename, _)] = out["warnings"]
    assert cat == "JobserverWarning" and "forced" in msg and "MAKEFLAGS" in msg
    assert filename == "<string>"


def test_usable_jobserver_is_joined_silently() -> None:
    with fastjob.Server(3) as server:
        out = probe(
            """
c, ws = caught(lambda: fastjob.connect())
out["warnings"] = ws
out["makeflags"] = c.env({})["MAKEFLAGS"]
""",
            server.env(clean_env()),
            pass_fds=server.pass_fds,
        )
    assert out["warnings"] == []


def test_warnings_point_at_the_callers_line() -> None:
    out = probe(
        """
import os
os.environ["MAKEFLAGS"] = " -j4 --jobserver-auth=50,51"
line = sys._getframe().f_lineno + 1
_, ws = caught(lambda: fastjob.from_env())
out["from_env"] = [ws[0][2], ws[0][3] - line]
toks = []
def lose_a_token():
    with fastjob.Server(3) as s:  # __exit__ -> close() complains
        os.read(s.pass_fds[0], 1)  # a token a killed child took with it
_, ws = caught(lose_a_token)
out["close"] = [[w[0], w[2]] for w in ws if "not returned" in w[1]]
""",
        clean_env(),
    )
    assert out["from_env"] == ["<string>", 0]
    assert out["close"] == [["TokenLeakWarning", "<string>"]]  # not server.py's __exit__


@pytest.mark.parametrize(("jobs", "exc"), [(0, ValueError), ("4", TypeError), (True, TypeError)])
def test_connect_rejects_bad_jobs(jobs: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        fastjob.connect(jobs)  # type: ignore[arg-type]


def test_server_is_accepted_for_client() -> None:
    out = probe(
        """
import anyio, sys
s = fastjob.Server(2)
async def main():
    res = await fastjob.run_process([sys.executable, "-c", "import os; print(os.environ['MAKEFLAGS'])"], client=s, stdout=-1)
    out["mf"] = res.stdout.decode().strip()
anyio.run(main)
out["ours"] = s.env({})["MAKEFLAGS"]
s.close()
""",
        clean_env(),
    )
    assert out["mf"] == out["ours"].strip()
