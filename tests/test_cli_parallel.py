"""``fastjob parallel`` end to end: the real console script in a subprocess."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FASTJOB, FJ, TIMEOUT, clean_env, debian_make, read_pty

import fastjob

# A job that logs when it starts and ends (ns clock), to measure concurrency.
SPAN = "echo S $(date +%s%N); sleep 0.2; echo E $(date +%s%N)"



def parallel(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FASTJOB, "parallel", *args],
        input=stdin,
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@pytest.fixture(params=["posix_spawn", "anyio"])
def spawn_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Both ways of starting jobs: posix_spawn + pidfd (Linux) and anyio.open_process."""
    if request.param == "anyio":
        return clean_env(FASTJOB_PARALLEL_SPAWN="anyio")
    return clean_env()


def max_overlap(output: str) -> int:
    events = sorted(
        (int(ts), 1 if kind == "S" else -1)
        for kind, ts in (line.split() for line in output.splitlines() if line[:2] in ("S ", "E "))
    )
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def test_template_and_args_are_quoted() -> None:
    r = parallel("-j3", "printf '%s|\\n' {}", ":::", "a", "b c", "$HOME")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["$HOME|", "a|", "b c|"]
    assert r.stderr == ""  # not a terminal: no progress


def test_lines_from_stdin_output_is_not_interleaved(spawn_env: dict[str, str]) -> None:
    cmds = "".join(f"echo A{i}; sleep 0.05; echo B{i}; echo C{i} >&2\n" for i in range(8))
    r = parallel("-j4", stdin=cmds, env=spawn_env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 16
    for k in range(0, 16, 2):
        assert lines[k][0] == "A" and lines[k + 1] == "B" + lines[k][1:]
    assert sorted(r.stderr.splitlines()) == sorted(f"C{i}" for i in range(8))


def test_template_with_lines_from_a_file(tmp_path: Path) -> None:
    f = tmp_path / "args"
    f.write_text("x\ny\n\n")
    r = parallel("-j2", "--tag", "-a", str(f), "echo", "got", "{}")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["x\tgot x", "y\tgot y"]


def test_at_most_n_at_once(spawn_env: dict[str, str]) -> None:
    r = parallel("-j2", stdin=f"{SPAN}\n" * 6, env=spawn_env)
    assert r.returncode == 0, r.stderr
    assert max_overlap(r.stdout) == 2


def test_exit_status_counts_failures_with_keep_going(spawn_env: dict[str, str]) -> None:
    r = parallel("-j2", "--keep-going", stdin="false\ntrue\nexit 3\ntrue\nfalse\n", env=spawn_env)
    assert r.returncode == 3
    assert r.stderr.count("fastjob: exit status") == 3


def test_first_failure_stops_scheduling() -> None:
    r = parallel("-j1", stdin="false\necho one\necho two\n")
    assert r.returncode == 1
    assert r.stdout == ""
    assert "2 commands not started" in r.stderr


def test_exit_status_is_capped_at_101() -> None:
    r = parallel("-j2", "-k", stdin="exit 1\n" * 105)
    assert r.returncode == 101


def test_command_not_found_counts_as_failed(spawn_env: dict[str, str]) -> None:
    r = parallel("-j2", stdin="no-such-command-fastjob\n", env=spawn_env)
    assert r.returncode == 1
    assert "no-such-command-fastjob: command not found" in r.stderr


def test_empty_input_does_nothing() -> None:
    assert parallel(stdin="").returncode == 0


def test_jobs_get_the_pool() -> None:
    code = f"{sys.executable} -c 'import fastjob; print(fastjob.from_env(strict=True).jobs)'"
    r = parallel("-j3", stdin=code + "\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "3"


@pytest.mark.interop
@pytest.mark.skipif(debian_make() is None, reason="needs GNU make 4.3")
def test_inside_make_shares_makes_budget(tmp_path: Path) -> None:
    (tmp_path / "cmds.txt").write_text(f"{SPAN}; echo \"M $MAKEFLAGS\"\n" * 6)
    (tmp_path / "Makefile").write_text(f"all:\n\t+{FJ} parallel -a cmds.txt\n")
    r = subprocess.run(
        [str(debian_make()), "-s", "-j3", "-C", str(tmp_path)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 0, r.stderr
    assert "jobserver" not in r.stderr
    assert max_overlap(r.stdout) == 3  # make's -j3
    flags = {line for line in r.stdout.splitlines() if line.startswith("M ")}
    assert len(flags) == 1 and "--jobserver-auth=3,4" in flags.pop()  # make's own pool


def test_ctrl_c_stops_everything_and_returns_every_token(spawn_env: dict[str, str]) -> None:
    r, w = os.pipe()
    cmds = "".join(f"echo $$ > /dev/fd/{w}; exec sleep 60\n" for _ in range(6))
    with fastjob.Server(3) as server:
        with subprocess.Popen(
            [*FASTJOB, "parallel"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=server.env(spawn_env),
            pass_fds=(*server.pass_fds, w),
        ) as p:
            os.close(w)
            try:
                assert p.stdin is not None
                p.stdin.write(cmds.encode())
                p.stdin.close()
                pids: list[int] = []
                while len(pids) < 3:  # the pool's 3 slots are all in use
                    assert select.select([r], [], [], TIMEOUT)[0], "jobs never started"
                    pids += [int(x) for x in os.read(r, 1024).split()]
                assert server.available() == 0
                p.send_signal(signal.SIGINT)
                rc = p.wait(TIMEOUT)
            finally:
                os.close(r)
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert rc == 128 + signal.SIGINT
        assert server.available() == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_progress_on_a_terminal() -> None:
    master, slave = pty.openpty()
    try:
        with subprocess.Popen(
            [*FASTJOB, "parallel", "-j2", "true", "{}", ":::", "1", "2", "3"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            env=clean_env(),
        ) as p:
            os.close(slave)
            slave = -1
            assert p.wait(TIMEOUT) == 0
            seen = read_pty(master, 0.5)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert b"3/3 done" in seen
    assert b"0 failed" in seen


def test_no_progress_flag_on_a_terminal() -> None:
    master, slave = pty.openpty()
    try:
        r = subprocess.run(
            [*FASTJOB, "parallel", "--no-progress", "true", "{}", ":::", "1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            env=clean_env(),
            timeout=TIMEOUT,
        )
        assert r.returncode == 0
        assert not select.select([master], [], [], 0)[0]
    finally:
        os.close(master)
        os.close(slave)


BAD = [
    (["echo", ":::", "a"], "no {}"),
    ([":::", "a"], "needs a COMMAND_TEMPLATE"),
    (["-a", "/", "echo", "{}"], "cannot read /"),
    (["-a", "/nonexistent/fastjob", "echo", "{}"], "No such file"),
    (["-j", "0"], "at least 1"),
    (["-j", "abc"], "not a number"),
    (["--frobnicate"], "unrecognized option"),
]


@pytest.mark.parametrize(("args", "words"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_status_2(args: list[str], words: str) -> None:
    r = parallel(*args, stdin="echo hi\n")
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert words in lines[0]
    assert r.stdout == ""
