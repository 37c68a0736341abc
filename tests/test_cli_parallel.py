"""``fastjob parallel`` end to end: the real console script in a subprocess."""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FASTJOB, FJ, TIMEOUT, clean_env, debian_make, read_pty

import fastjob

# A job that logs when it starts and ends (ns clock), to measure concurrency.
SPAN = "echo S $(date +%s%N); sleep 0.2; echo E $(date +%s%N)"



def default_signals() -> None:
    """preexec_fn: SIGINT/SIGTERM/SIGHUP at their defaults in the child, so a
    suite started under nohup (SIGHUP ignored) or from a script's background
    job (SIGINT ignored) tests the same thing as one started from a terminal."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def parallel(
    *args: str, stdin: str | bytes = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [*FASTJOB, "parallel", *args],
        input=stdin.encode() if isinstance(stdin, str) else stdin,
        env=clean_env() if env is None else env,
        capture_output=True,
        timeout=TIMEOUT,
        preexec_fn=default_signals,
    )
    return subprocess.CompletedProcess(
        r.args, r.returncode, os.fsdecode(r.stdout), os.fsdecode(r.stderr)
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
    # as in GNU parallel, the empty line is an (empty) argument too
    assert sorted(r.stdout.splitlines()) == ["\tgot ", "x\tgot x", "y\tgot y"]


def test_at_most_n_at_once(spawn_env: dict[str, str]) -> None:
    r = parallel("-j2", stdin=f"{SPAN}\n" * 6, env=spawn_env)
    assert r.returncode == 0, r.stderr
    assert max_overlap(r.stdout) == 2


def test_exit_status_counts_failures_with_keep_going(spawn_env: dict[str, str]) -> None:
    r = parallel("-j2", "--keep-going", stdin="false\ntrue\nexit 3\ntrue\nfalse\n", env=spawn_env)
    assert r.returncode == 3
    assert r.stderr.count("fastjob: exit status") == 3


def test_every_command_runs_after_a_failure_by_default() -> None:
    r = parallel("-j1", stdin="false\necho one\necho two\n")
    assert r.returncode == 1
    assert r.stdout == "one\ntwo\n"
    assert "not started" not in r.stderr


def test_halt_soon_stops_scheduling_after_the_first_failure() -> None:
    r = parallel("-j1", "--halt", "soon,fail=1", stdin="exit 4\necho one\necho two\n")
    assert r.returncode == 4  # the failing command's status, as in GNU parallel
    assert r.stdout == ""
    assert "2 commands not started" in r.stderr


def test_halt_now_kills_the_running_commands(spawn_env: dict[str, str]) -> None:
    r = parallel("-j2", "--halt", "now,fail=1", "-k", stdin="exec sleep 30\nsleep 0.3; exit 5\n", env=spawn_env)
    assert r.returncode == 5
    assert "timed out" not in r.stderr


def test_keep_going_cancels_halt() -> None:
    r = parallel("-j1", "--halt", "soon,fail=1", "--keep-going", stdin="false\necho one\n")
    assert r.returncode == 1
    assert r.stdout == "one\n"


def test_timeout_kills_and_counts_as_failed(spawn_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "log"
    r = parallel("--timeout", "0.3", "--joblog", str(log), "sleep", ":::", "0", "30", env=spawn_env)
    assert r.returncode == 1
    assert "fastjob: timed out: sleep 30" in r.stderr
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    assert rows[0] == "Seq Host Starttime JobRuntime Send Receive Exitval Signal Command".split()
    by_cmd = {row[8]: row for row in rows[1:]}
    assert by_cmd["sleep 30"][6:8] == ["-1", "15"]
    assert by_cmd["sleep 0"][6:8] == ["0", "0"]


def test_exit_status_is_capped_at_101() -> None:
    r = parallel("-j2", stdin="exit 1\n" * 105)
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
            preexec_fn=default_signals,
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


@pytest.mark.parametrize("flag", ["--progress", "--bar", "--eta"])
def test_progress_flags_force_the_progress_line(flag: str) -> None:
    r = parallel(flag, "true", ":::", "1", "2")
    assert r.returncode == 0
    assert "2/2 done" in r.stderr


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
    (["-a", "/", "echo", "{}"], "cannot read /"),
    (["-a", "/nonexistent/fastjob", "echo", "{}"], "No such file"),
    (["echo", "::::", "/nonexistent/fastjob"], "No such file"),
    (["echo", "::::"], "needs at least one FILE"),
    (["-j", "0"], "at least 1"),
    (["-j", "abc"], "not a number"),
    (["-j", "99999999999"], "at most"),
    (["-n", "0", "echo"], "from 1 to"),
    (["--timeout", "50%", "sleep", "1"], "not a number of seconds"),
    (["--halt", "sometimes", "true"], "unsupported --halt value"),
    (["--halt", "now,fail=10%", "true"], "percentages are not supported"),
    (["--frobnicate"], "unsupported option '--frobnicate'"),
    (["--pipe", "cat"], "unsupported option '--pipe'"),
    (["-X", "echo"], "unsupported option '-X'"),
    (["-a", "-", "-a", "-", "echo"], "only once"),
]


@pytest.mark.parametrize(("args", "words"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_status_2(args: list[str], words: str) -> None:
    r = parallel(*args, stdin="echo hi\n")
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert words in lines[0]
    assert r.stdout == ""


def test_nul_separated_input_with_null() -> None:
    r = parallel("-0", "-k", "printf", "'[%s]\\n'", stdin=b"a b\0c\nd\0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "[a b]\n[c\nd]\n"


def test_nul_in_input_without_null_is_one_line_and_status_2() -> None:
    r = parallel("echo", stdin=b"a\0b\n")
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1
    assert "-0/--null" in r.stderr
    assert r.stdout == ""
    assert "Warning" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("sep", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r"])
def test_input_is_split_on_newline_only(sep: str) -> None:
    r = parallel(stdin=f"echo one{sep}echo INJECTED\n".encode())
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.encode().split(b"\n")) == 2  # one command, one line of output
    assert r.stdout.startswith("one")


def test_non_utf8_arguments_never_traceback(spawn_env: dict[str, str]) -> None:
    bad = os.fsdecode(b"caf\xe9")
    r = parallel(
        "--tag", "-k", "echo x{}; exit 3", ":::", bad, env=spawn_env
    )
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stdout.encode(errors="surrogateescape") == b"caf\xe9\txcaf\xe9\n"
    missing = parallel("--tag", os.fsdecode(b"no-such-\xff"), ":::", bad, env=spawn_env)
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr
    assert "not found" in missing.stderr


def test_non_utf8_input_lines_reach_the_command_byte_for_byte() -> None:
    r = parallel("-k", "printf", "'%s\\n'", stdin=b"\xff\xfe\n\xe9t\xe9\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.encode(errors="surrogateescape") == b"\xff\xfe\n\xe9t\xe9\n"


def test_dry_run_runs_nothing(tmp_path: Path) -> None:
    r = parallel("--dry-run", "touch", str(tmp_path / "{}"), ":::", "a", "b")
    assert r.returncode == 0
    assert r.stdout.splitlines() == [f"touch {tmp_path}/a", f"touch {tmp_path}/b"]
    assert not list(tmp_path.iterdir())


def test_keep_order_writes_in_input_order(spawn_env: dict[str, str]) -> None:
    r = parallel("-j4", "-k", "sleep 0.{}; echo {}", ":::", "3", "2", "1", "0", env=spawn_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "3\n2\n1\n0\n"


def test_job_slots_never_exceed_the_pool() -> None:
    r = parallel("-j2", "echo {%}", ":::", *"abcdefgh")
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) <= {"1", "2"}


def test_a_duplicate_signal_is_not_escalated(spawn_env: dict[str, str]) -> None:
    """timeout -s INT delivers SIGINT to fastjob and again to its process
    group: the jobs must get SIGINT once, not SIGKILL."""
    script = (
        "trap 'echo INT > /dev/fd/{w}; sleep 0.3; echo INT-{}; exit 7' INT; "
        "echo up > /dev/fd/{w}; sleep 30 & wait"
    )
    r, w = os.pipe()
    try:
        with subprocess.Popen(
            [*FASTJOB, "parallel", "-j2", "-k", script.replace("{w}", str(w)), ":::", "a", "b"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=spawn_env,
            pass_fds=(w,),
            preexec_fn=default_signals,
        ) as p:
            os.close(w)
            w = -1
            seen = b""
            while seen.count(b"up") < 2:
                assert select.select([r], [], [], TIMEOUT)[0], "jobs never started"
                seen += os.read(r, 64)
            p.send_signal(signal.SIGINT)
            while b"INT" not in seen:  # forwarded: a job's trap runs
                assert select.select([r], [], [], TIMEOUT)[0], "SIGINT never forwarded"
                seen += os.read(r, 64)
            # the same event again, as timeout's kill(0, SIGINT) delivers it,
            # a few ms after the first: not a reason to SIGKILL the jobs
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=TIMEOUT)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert p.returncode == 128 + signal.SIGINT
    assert out.decode().splitlines() == ["INT-a", "INT-b"], err.decode()


def test_timeout_s_int_stops_jobs_with_sigint(spawn_env: dict[str, str]) -> None:
    """The real thing: timeout(1) signals fastjob and its process group."""
    timeout = shutil.which("timeout")
    if timeout is None:
        pytest.skip("needs coreutils timeout")
    script = "trap 'sleep 0.3; echo INT-{}; exit 7' INT; sleep 30 & wait"
    r = subprocess.run(
        [timeout, "-s", "INT", "4", *FASTJOB, "parallel", "-j2", "-k", script, ":::", "a", "b"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=spawn_env,
        timeout=TIMEOUT,
        preexec_fn=default_signals,
    )
    assert r.returncode == 124  # timeout's status when it had to signal
    assert r.stdout.decode().splitlines() == ["INT-a", "INT-b"], r.stderr.decode()


def test_a_later_signal_kills(spawn_env: dict[str, str]) -> None:
    script = "trap '' INT; echo up > /dev/fd/{w}; sleep 30 & wait; sleep 30"
    r, w = os.pipe()
    try:
        with subprocess.Popen(
            [*FASTJOB, "parallel", "-j2", script.replace("{w}", str(w)), ":::", "a", "b"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=spawn_env,
            pass_fds=(w,),
            preexec_fn=default_signals,
        ) as p:
            os.close(w)
            w = -1
            up = b""
            while up.count(b"up") < 2:
                assert select.select([r], [], [], TIMEOUT)[0], "jobs never started"
                up += os.read(r, 64)
            p.send_signal(signal.SIGINT)  # ignored by the jobs (trap '')
            # a person pressing Ctrl-C again, later: escalates to SIGKILL
            deadline = time.monotonic() + TIMEOUT
            while p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.6)
                p.send_signal(signal.SIGINT)
            p.communicate(timeout=TIMEOUT)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert p.returncode == 128 + signal.SIGINT


def test_duplicate_window_rule() -> None:
    """The rule itself, without processes: repeats inside the window are
    ignored, the first one after it kills."""
    from fastjob.cli import parallel as par

    killed: list[int] = []

    class Fake(par.Runner):
        def __init__(self) -> None:
            self.signalled = 0
            self._first_signal = 0.0
            self.stopping = False
            self._acquirer_scope = None
            self.active = 1
            self.next = self.total = 0
            self._all_done = None

        def _kill_all(self, signum: int) -> None:
            killed.append(signum)

    f = Fake()
    f.on_signal(signal.SIGINT, 100.0)
    f.on_signal(signal.SIGINT, 100.01)
    f.on_signal(signal.SIGTERM, 100.4)
    assert killed == [signal.SIGINT]
    f.on_signal(signal.SIGINT, 100.0 + par.DUPLICATE_WINDOW + 0.01)
    assert killed == [signal.SIGINT, signal.SIGKILL]


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="the callback path needs pidfd (Linux)")
@pytest.mark.parametrize("backend", ["", "uvloop"])
def test_one_callback_per_job_and_direct_token_hand_off(
    backend: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """In process: 24 jobs at -j4 run without a task per job, and an ended
    job's token goes to the next command without going through the pool
    (4 tokens acquired in all, not 24)."""
    import asyncio

    from fastjob.cli.parallel import Spec, Template, parallel

    if backend:
        pytest.importorskip("uvloop")
    monkeypatch.setenv("FASTJOB_PARALLEL_BACKEND", backend)
    monkeypatch.delenv("FASTJOB_PARALLEL_SPAWN", raising=False)
    for var in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS"):
        monkeypatch.delenv(var, raising=False)
    tasks: list[int] = []
    acquired: list[int] = []
    spec = Spec([[str(i)] for i in range(24)], Template(["sleep 0.02 #"]), jobs=4)
    spec.on_job.append(lambda rec: tasks.append(len(asyncio.all_tasks())))
    spec.on_stop.append(lambda pool: acquired.append(pool.client.statistics().tokens_acquired))
    assert parallel(spec) == 0
    assert len(tasks) == 24
    # the main task, the signal watcher and the one acquirer: no job tasks
    assert max(tasks) <= 3, tasks
    assert acquired == [4]
