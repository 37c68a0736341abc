"""``fastjob run`` starts COMMAND with os.posix_spawn (no subprocess import):
the child must get what subprocess.Popen(..., pass_fds=..., restore_signals=
True, process_group=0) gave it.  The real console script in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FASTJOB, TIMEOUT, clean_env

PY = sys.executable

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the posix_spawn path is Linux's")


def fastjob(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FASTJOB, *args],
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        **kw,  # type: ignore[call-overload]
    )


def test_the_command_leads_its_own_process_group() -> None:
    code = "import os; print(os.getpgrp() == os.getpid(), os.getsid(0) == os.getsid(os.getppid()))"
    r = fastjob("run", "-j2", "--", PY, "-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True"]  # its own group, the same session


def _ignored(status: str) -> set[int]:
    mask = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


def test_sigpipe_and_sigxfsz_are_at_their_defaults_in_the_command() -> None:
    """Python ignores SIGPIPE and SIGXFSZ; restore_signals gave the command
    the defaults back (else `yes | head` complains instead of dying)."""
    r = fastjob("run", "-j2", "--", "sh", "-c", "cat /proc/$$/status")
    assert r.returncode == 0, r.stderr
    ignored = _ignored(r.stdout)
    assert signal.SIGPIPE not in ignored and signal.SIGXFSZ not in ignored
    r = fastjob("run", "-j2", "--", "sh", "-c", "yes | head -n1")
    assert (r.returncode, r.stdout, r.stderr) == (0, "y\n", "")


def test_a_signal_ignored_by_fastjobs_parent_stays_ignored() -> None:
    """As with Popen: SIG_IGN survives exec (nohup, a script's background job)."""
    def ignore_hup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    r = fastjob("run", "-j2", "--", "sh", "-c", "cat /proc/$$/status", preexec_fn=ignore_hup)
    assert r.returncode == 0, r.stderr
    assert signal.SIGHUP in _ignored(r.stdout)


def test_inherited_fds_other_than_the_pools_are_closed() -> None:
    """close_fds=True: an fd fastjob inherited (and does not pass on) is not
    the command's; the pool's two fds are, and nothing else above 2."""
    r_fd, w_fd = os.pipe()
    try:
        code = (
            "import os, re; fds = sorted(int(f) for f in os.listdir('/proc/self/fd')); "
            "auth = re.search(r'auth=(\\d+),(\\d+)', os.environ['MAKEFLAGS']); "
            "print(fds, auth.group(1), auth.group(2))"
        )
        r = fastjob("run", "-j2", "--", PY, "-c", code, pass_fds=(r_fd, w_fd))
    finally:
        os.close(r_fd)
        os.close(w_fd)
    assert r.returncode == 0, r.stderr
    listed, rd, wr = r.stdout.rsplit(" ", 2)
    fds = [int(x) for x in listed.strip("[]").split(", ")]
    above = [fd for fd in fds if fd > 2]
    # the pool's two fds, plus the one listdir itself had open
    assert {int(rd), int(wr)} <= set(above), (above, rd, wr)
    assert r_fd not in above and w_fd not in above, (above, r_fd, w_fd)
    assert len(above) <= 3, above  # the pool's two and listdir's own


def test_an_inherited_jobserver_is_passed_on_when_joined() -> None:
    inner = " ".join([*FASTJOB, "run", "--", PY, "-c", "'import fastjob; print(fastjob.from_env(strict=True).available())'"])
    r = fastjob("run", "-j3", "--", "sh", "-c", inner)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2"


def _script(path: Path, text: str, mode: int) -> None:
    path.write_text(text)
    path.chmod(mode)


def test_path_search_uses_the_commands_path_as_subprocess_does(tmp_path: Path) -> None:
    """A non-executable match earlier in PATH is passed over for an
    executable one later (execvp's and subprocess's order), and an empty
    PATH entry is the current directory."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    _script(first / "fj-probe", "#!/bin/sh\necho first\n", 0o644)  # not executable
    _script(second / "fj-probe", "#!/bin/sh\necho second\n", 0o755)
    env = clean_env(PATH=f"{tmp_path / 'missing'}:{first}:{second}:{os.environ['PATH']}")
    r = fastjob("run", "-j2", "--", "fj-probe", env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, "second\n", "")


def test_only_a_non_executable_match_is_126(tmp_path: Path) -> None:
    _script(tmp_path / "fj-probe", "#!/bin/sh\necho never\n", 0o644)
    env = clean_env(PATH=f"{tmp_path}:{os.environ['PATH']}")
    r = fastjob("run", "-j2", "--", "fj-probe", env=env)
    assert r.returncode == 126
    assert r.stderr == "fastjob: cannot run fj-probe: Permission denied\n"


@pytest.mark.parametrize("cmd", ["/etc/passwd/x", "./no-such-dir/cmd", "no-such-command-fastjob"])
def test_not_found_forms_are_127(cmd: str) -> None:
    r = fastjob("run", "-j2", "--", cmd)
    assert r.returncode == 127
    assert r.stderr == f"fastjob: {cmd}: command not found\n"


def test_a_directory_is_126() -> None:
    r = fastjob("run", "-j2", "--", "/")
    assert r.returncode == 126
    assert r.stderr == "fastjob: cannot run /: Permission denied\n"


def test_a_relative_path_runs_from_the_current_directory(tmp_path: Path) -> None:
    _script(tmp_path / "probe.sh", "#!/bin/sh\necho here\n", 0o755)
    r = fastjob("run", "-j2", "--", "./probe.sh", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "here\n")


def test_spawn_passes_fds_and_leaves_them_close_on_exec_here() -> None:
    """The pool's fds are made inheritable only around the spawn, and
    another inheritable fd is closed in the child."""
    from fastjob.cli.run import _spawn, _wait

    r_fd, w_fd = os.pipe()
    stray = os.dup(0)
    os.set_inheritable(stray, True)
    try:
        code = (
            f"import os, sys; os.write({w_fd}, b'seen'); "
            f"sys.exit(3 if os.path.exists('/proc/self/fd/{stray}') else 0)"
        )
        child = _spawn([PY, "-c", code], clean_env(), (w_fd,))
        assert _wait(child) == 0  # the stray fd was closed in the child
        assert os.read(r_fd, 10) == b"seen"  # the passed one was there
        assert not os.get_inheritable(w_fd)  # and is close-on-exec here again
        assert os.get_inheritable(stray)  # ours is left as it was
    finally:
        for fd in (r_fd, w_fd, stray):
            os.close(fd)


def test_wait_reports_a_signal_as_popen_does() -> None:
    from fastjob.cli.run import _spawn, _wait, exit_status

    child = _spawn(["sh", "-c", "kill -TERM $$"], clean_env(), ())
    code = _wait(child)
    assert code == -signal.SIGTERM
    assert exit_status(code) == 128 + signal.SIGTERM
    assert os.getpgid(os.getpid()) != child.pid  # it had its own group


def _console(prelude: str, *args: str) -> subprocess.CompletedProcess[str]:
    """fastjob's main() as the console script calls it (no argv), after
    ``prelude`` ran in the same interpreter."""
    code = (
        "import sys\n" + prelude + "\n"
        f"sys.argv = ['fastjob', *{list(args)!r}]\n"
        "from fastjob.cli import main\n"
        "sys.exit(main())\n"
    )
    return subprocess.run(
        [PY, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT
    )


def test_the_quick_exit_still_runs_atexit_and_flushes_stdout() -> None:
    """fastjob run ends with os._exit (no interpreter teardown), after the
    atexit handlers and with stdout's buffer written."""
    prelude = (
        "import atexit\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "sys.stdout.write('buffered, never flushed\\n')\n"
    )
    r = _console(prelude, "run", "-j2", "--", "sh", "-c", "exit 5")
    assert r.returncode == 5, r.stderr
    assert r.stdout == "buffered, never flushed\natexit ran\n"


def test_the_quick_exit_waits_for_a_running_thread() -> None:
    """A non-daemon thread still running: the normal exit (which waits for
    it), not os._exit."""
    prelude = (
        "import threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done', flush=True))).start()\n"
    )
    r = _console(prelude, "run", "-j2", "--", "true")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "thread done\n"


def test_the_quick_exit_keeps_the_commands_status() -> None:
    r = _console("", "run", "-j2", "--", "sh", "-c", "exit 7")
    assert r.returncode == 7


@pytest.mark.parametrize("fd", [1, 2])
def test_fastjob_run_started_without_stdout_or_stderr(fd: int) -> None:
    """sys.stdout / sys.stderr are None when fd 1 / 2 was closed at start:
    the quick exit must not trip over that."""
    def close_it() -> None:
        os.close(fd)

    keep = subprocess.PIPE
    r = subprocess.run(
        [*FASTJOB, "run", "-j2", "--", "sh", "-c", "exit 4"],
        env=clean_env(), stdout=keep, stderr=keep, timeout=TIMEOUT, preexec_fn=close_it,
    )
    assert r.returncode == 4
    assert b"Traceback" not in (r.stderr or b"") + (r.stdout or b"")


def test_command_not_found_without_stderr_is_still_127() -> None:
    def close_stderr() -> None:
        os.close(2)

    r = subprocess.run(
        [*FASTJOB, "run", "-j2", "--", "no-such-command-fastjob"],
        env=clean_env(), stdout=subprocess.PIPE, timeout=TIMEOUT, preexec_fn=close_stderr,
    )
    assert r.returncode == 127
