"""``fastjob threads``: the count it takes and exports, what it waits for,
that every slot comes back, and its usage errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import fastjob

from conftest import FASTJOB, TIMEOUT, clean_env

SHOW = [sys.executable, "-c",
        "import os; print(*(os.environ.get(v) for v in "
        "('FASTJOB_THREADS', 'OMP_NUM_THREADS', 'RAYON_NUM_THREADS', 'NPROC')))"]


def threads(
    *args: str, server: fastjob.Server | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    env = clean_env() if server is None else server.env(clean_env())
    fds = () if server is None else server.pass_fds
    return subprocess.run(
        [*FASTJOB, "threads", *args], env=env, pass_fds=fds, capture_output=True, text=True,
        timeout=timeout,
    )


def test_takes_every_free_slot_up_to_max_and_gives_them_back() -> None:
    with fastjob.Server(4) as server:
        r = threads("--max", "8", "--export", "NPROC", "--", *SHOW, server=server)
        assert r.returncode == 0, r.stderr
        # its own slot plus the three free tokens
        assert r.stdout.split() == ["4", "4", "4", "4"]
        assert server.available() == 3 and server.reconcile() == 0


def test_max_caps_the_count() -> None:
    with fastjob.Server(4) as server:
        r = threads("--max", "2", "--", *SHOW, server=server)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[:3] == ["2", "2", "2"]
        assert server.available() == 3


def test_full_pool_gives_one_and_does_not_wait() -> None:
    with fastjob.Server(3) as server:
        held = [server.client.try_acquire() for _ in range(3)]
        assert server.available() == 0
        r = threads("--max", "8", "--", *SHOW, server=server)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[0] == "1"
        for t in held:
            assert t is not None
            t.release()
        assert server.available() == 2


def test_min_waits_for_slots() -> None:
    with fastjob.Server(3) as server:
        held = [server.client.try_acquire() for _ in range(3)]
        assert server.available() == 0

        def give_back() -> None:
            time.sleep(0.5)
            for t in held[1:]:
                assert t is not None
                t.release()

        giver = threading.Thread(target=give_back)
        giver.start()
        r = threads("--min", "3", "--max", "3", "--", *SHOW, server=server)
        giver.join()
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[0] == "3"
        assert held[0] is not None
        held[0].release()
        assert server.available() == 2 and server.reconcile() == 0


def test_exit_status_is_the_commands() -> None:
    with fastjob.Server(2) as server:
        r = threads("--", "sh", "-c", "exit 3", server=server)
        assert r.returncode == 3
        r = threads("--", "sh", "-c", "kill -TERM $$", server=server)
        assert r.returncode == 128 + signal.SIGTERM
        assert server.available() == 1


def test_no_jobserver_means_the_cpu_count() -> None:
    r = threads("--", *SHOW)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == str(os.cpu_count())
    r = threads("--max", "1", "--", *SHOW)
    assert r.stdout.split()[0] == "1"


def test_usage_errors_are_one_line() -> None:
    for args, message in [
        (("--min", "3", "--max", "2", "--", "true"), "--min 3 is more than --max 2"),
        (("--export", "1BAD", "--", "true"), "--export '1BAD' is not a variable name"),
        (("--min", "0", "--", "true"), "the number of slots must be at least 1"),
        ((), "no COMMAND given"),
    ]:
        r = threads(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr


def test_min_above_the_pool_size_is_a_usage_error() -> None:
    with fastjob.Server(2) as server:
        r = threads("--min", "3", "--max", "3", "--", "true", server=server)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert server.available() == 1


def test_signal_while_waiting_returns_every_slot() -> None:
    with fastjob.Server(3) as server:
        held = [server.client.try_acquire() for _ in range(3)]
        proc = subprocess.Popen(
            [*FASTJOB, "threads", "--min", "2", "--max", "2", "--", "true"],
            env=server.env(clean_env()), pass_fds=server.pass_fds,
            stderr=subprocess.PIPE, text=True,
            # whatever this test inherited (nohup, a CI runner), SIGINT is default there
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            time.sleep(1.0)  # it waits for a second slot that never comes
            assert proc.poll() is None
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 130, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for t in held:
                assert t is not None
                t.release()
        assert server.available() == 2 and server.reconcile() == 0
