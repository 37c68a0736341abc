"""``fastjob run`` end to end: the real console script in a subprocess."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FASTJOB, TIMEOUT, clean_env, debian_make, read_pty

PY = sys.executable



def default_signals() -> None:
    """preexec_fn: SIGINT/SIGTERM/SIGHUP at their defaults in the child, so a
    suite started under nohup (SIGHUP ignored) or from a script's background
    job (SIGINT ignored) tests the same thing as one started from a terminal."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def fastjob(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FASTJOB, *args],
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        preexec_fn=default_signals,
    )


def test_exit_status_is_the_commands() -> None:
    r = fastjob("run", "-j2", "--", "sh", "-c", "exit 7")
    assert r.returncode == 7
    assert r.stderr == ""


def test_killed_by_a_signal_is_128_plus_n() -> None:
    r = fastjob("run", "-j2", "--", "sh", "-c", "kill -TERM $$")
    assert r.returncode == 128 + signal.SIGTERM


def test_command_not_found_is_127() -> None:
    r = fastjob("run", "-j2", "--", "no-such-command-fastjob")
    assert r.returncode == 127
    assert r.stderr.strip() == "fastjob: no-such-command-fastjob: command not found"


def test_new_pipe_pool_is_handed_to_the_command() -> None:
    code = (
        "import os, fastjob; c = fastjob.from_env(strict=True); "
        "print(c.style, c.available(), c.jobs); "
        "print(os.environ['MFLAGS']); print(os.environ.get('CARGO_MAKEFLAGS'))"
    )
    r = fastjob("run", "-j4", "--", PY, "-c", code)
    assert r.returncode == 0, r.stderr
    first, mflags, cargo = r.stdout.splitlines()
    assert first == "pipe 3 4"
    assert "--jobserver-auth=" in mflags and "-j4" in mflags
    assert cargo == "None"  # never exported: it would go stale below a child make -jN


def test_fifo_pool_exists_while_running_and_is_removed_after() -> None:
    code = (
        "import os, fastjob; c = fastjob.from_env(strict=True); "
        "print(os.environ['MAKEFLAGS'].split('fifo:')[1]); print(c.available())"
    )
    r = fastjob("run", "-j3", "--style", "fifo", "--", PY, "-c", code)
    assert r.returncode == 0, r.stderr
    path, free = r.stdout.split()
    assert free == "2"
    assert not os.path.exists(path)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_is_forwarded_and_fifo_removed(sig: signal.Signals) -> None:
    script = 'echo "$$ ${MAKEFLAGS##*fifo:}"; exec sleep 60'
    with subprocess.Popen(
        [*FASTJOB, "run", "-j2", "--style", "fifo", "--", "sh", "-c", script],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,
    ) as p:
        try:
            assert p.stdout is not None
            ready, _, _ = select.select([p.stdout], [], [], TIMEOUT)
            assert ready, "the command never started"
            pid, path = p.stdout.readline().split()
            assert os.path.exists(path)
            p.send_signal(sig)
            rc = p.wait(TIMEOUT)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert rc == 128 + sig
    assert not os.path.exists(path)
    assert not os.path.exists(os.path.dirname(path))
    # The sleep got the signal too (forwarded to its process group) and was reaped.
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)


def test_missing_tokens_are_reported_and_restored() -> None:
    code = (
        "import os, re; r = int(re.search(r'auth=(\\d+),', os.environ['MAKEFLAGS']).group(1)); "
        "os.read(r, 2)"
    )
    r = fastjob("run", "-j9", "--", PY, "-c", code)
    assert r.returncode == 0
    assert r.stderr == "fastjob: 2 jobserver tokens were not returned (pool 6, expected 8)\n"


def test_extra_tokens_are_reported_and_removed() -> None:
    code = (
        "import os; p = os.environ['MAKEFLAGS'].split('fifo:')[1]; "
        "w = os.open(p, os.O_WRONLY); os.write(w, b'+')"
    )
    r = fastjob("run", "-j9", "--style", "fifo", "--", PY, "-c", code)
    assert r.returncode == 0
    assert r.stderr == "fastjob: 1 extra jobserver token was found (pool 9, expected 8) and removed\n"


def test_without_j_an_inherited_jobserver_is_joined() -> None:
    inner = " ".join([*FASTJOB, "run", "--", "sh", "-c", "'echo \"$MAKEFLAGS\"'"])
    r = fastjob("run", "-j3", "--style", "fifo", "--", "sh", "-c", f'echo "$MAKEFLAGS"; {inner}')
    assert r.returncode == 0, r.stderr
    outer, joined = r.stdout.splitlines()
    assert "fifo:" in outer
    assert joined == outer
    assert r.stderr == ""


def test_broken_inherited_jobserver_warns_and_uses_a_new_pool() -> None:
    env = clean_env(MAKEFLAGS=" -j4 --jobserver-auth=97,98")
    r = fastjob("run", "--", PY, "-c", "import fastjob; print(fastjob.from_env(strict=True).style)", env=env)
    assert r.returncode == 0
    assert r.stdout.strip() == "pipe"
    assert r.stderr.startswith("fastjob: warning: failed to connect to jobserver")
    assert "fastjob doctor" in r.stderr


@pytest.mark.interop
@pytest.mark.skipif(debian_make() is None, reason="needs GNU make 4.3")
def test_real_make_under_fastjob_run_uses_the_pool(tmp_path: Path) -> None:
    fj = " ".join(FASTJOB)
    (tmp_path / "Makefile").write_text(f"all:\n\t+{fj} doctor --json > doctor.json\n")
    r = fastjob("run", "-j4", "--", str(debian_make()), "-s", "-C", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "jobserver unavailable" not in r.stderr
    d = json.loads((tmp_path / "doctor.json").read_text())
    assert d["verdict"] == "usable"
    assert d["tokens_free"] == 3


BAD = [
    (["run"], "no COMMAND"),
    (["run", "--"], "no COMMAND"),
    (["run", "-j", "0", "--", "true"], "at least 1"),
    (["run", "-j", "-3", "--", "true"], "at least 1"),
    (["run", "-j", "abc", "--", "true"], "not a number"),
    (["run", "-j", "99999999999", "--", "true"], "at most"),
    (["run", "-j", str(2**64), "--", "true"], "at most"),
    (["run", "--bogus", "--", "true"], "unrecognized option"),
    (["run", "--style", "sem", "--", "true"], "invalid choice"),
    (["run", "--", ""], "empty"),
    (["frobnicate"], "invalid choice"),
    ([], "a command is required"),
]


@pytest.mark.parametrize(("args", "words"), BAD, ids=[" ".join(a) or "nothing" for a, _ in BAD])
def test_bad_input_is_one_line_and_status_2(args: list[str], words: str) -> None:
    r = fastjob(*args)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert words in lines[0]
    assert "Traceback" not in r.stderr


def test_python_m_fastjob_is_the_same_program() -> None:
    r = subprocess.run(
        [PY, "-m", "fastjob", "run", "-j2", "--", "sh", "-c", "exit 3"],
        env=clean_env(),
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 3
    a = subprocess.run([PY, "-m", "fastjob", "--help"], env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT)
    b = fastjob("--help")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout


@pytest.mark.parametrize("cmd", ["run", "doctor", "parallel"])
def test_help_has_examples(cmd: str) -> None:
    r = fastjob(cmd, "--help", env=clean_env(COLUMNS="100"))
    assert r.returncode == 0
    assert "examples:" in r.stdout
    assert f"fastjob {cmd}" in r.stdout
    assert "exit status:" in r.stdout


def _session_members(sid: int) -> list[int]:
    """Pids whose session id is sid (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    out.append(int(entry))
            except OSError:
                pass
    return out


def test_command_reading_the_terminal_is_given_it() -> None:
    """COMMAND runs in its own process group; when it reads the terminal
    (SIGTTIN) fastjob makes it the foreground group instead of hanging."""
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()

    def controlling_tty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        with subprocess.Popen(
            [*FASTJOB, "run", "-j2", "--", "sh", "-c", "read x; echo got-$x"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=clean_env(),
            start_new_session=True,
            preexec_fn=controlling_tty,
        ) as p:
            os.close(slave)
            slave = -1
            os.write(master, b"hello\n")
            try:
                rc = p.wait(TIMEOUT)
            finally:
                if p.poll() is None:
                    # never hang the suite: kill fastjob and every process of
                    # its session (the command may sit stopped in its own group)
                    for pid in _session_members(p.pid):
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except OSError:
                            pass
                    p.kill()
                    p.wait(TIMEOUT)
            seen = read_pty(master, 0.2)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert rc == 0
    assert b"got-hello" in seen


def test_a_duplicate_signal_is_forwarded_once() -> None:
    """timeout -s INT signals fastjob and then its process group: the
    command must see that SIGINT once; a different (or later) signal is
    forwarded as usual."""
    code = (
        "import signal, sys\n"
        "def on(sig, frame):\n"
        "    print(signal.Signals(sig).name, flush=True)\n"
        "    if sig == signal.SIGTERM: sys.exit(0)\n"
        "signal.signal(signal.SIGINT, on)\n"
        "signal.signal(signal.SIGTERM, on)\n"
        "print('up', flush=True)\n"
        "while True: signal.pause()\n"
    )
    with subprocess.Popen(
        [*FASTJOB, "run", "-j2", "--", PY, "-c", code],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,
    ) as p:
        try:
            assert p.stdout is not None
            assert select.select([p.stdout], [], [], TIMEOUT)[0], "the command never started"
            assert p.stdout.readline() == "up\n"
            p.send_signal(signal.SIGINT)
            assert select.select([p.stdout], [], [], TIMEOUT)[0], "SIGINT never forwarded"
            assert p.stdout.readline() == "SIGINT\n"
            p.send_signal(signal.SIGINT)  # the duplicate, a few ms later
            time.sleep(0.2)  # time for it to arrive, were it forwarded
            p.send_signal(signal.SIGTERM)
            rest, err = p.communicate(timeout=TIMEOUT)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert rest == "SIGTERM\n", err
    assert p.returncode == 0
