"""``fastjob parallel`` against real GNU parallel: the same command lines,
the same output lines (sorted where GNU's order is free, exactly with -k)
and the same exit statuses.

Needs GNU parallel (Debian ``parallel``; .ci/run installs it).  Skipped when
it is missing, except under FASTJOB_INTEROP_REQUIRED=1 (CI), where a missing
GNU parallel fails the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import FASTJOB, TIMEOUT, clean_env


def _gnu_parallel() -> str | None:
    path = shutil.which("parallel")
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    # moreutils installs a different program under the same name
    return path if "GNU parallel" in out.stdout else None


GNU = _gnu_parallel()


@pytest.fixture(autouse=True)
def _need_gnu_parallel() -> None:
    if GNU is not None:
        return
    why = "GNU parallel is not installed (Debian: apt-get install parallel)"
    if os.environ.get("FASTJOB_INTEROP_REQUIRED") == "1":
        pytest.fail(f"{why}; FASTJOB_INTEROP_REQUIRED=1 forbids skipping")
    pytest.skip(why)


def both(
    args: list[str], stdin: bytes = b"", cwd: Path | None = None
) -> tuple[subprocess.CompletedProcess[bytes], subprocess.CompletedProcess[bytes]]:
    """(GNU parallel's result, fastjob parallel's) for one command line.
    GNU runs its commands with /bin/sh, as fastjob does."""
    env = clean_env(PARALLEL_SHELL="/bin/sh")
    env.pop("PARALLEL", None)  # no default options from the environment
    results = []
    for argv in ([str(GNU), "--will-cite", *args], [*FASTJOB, "parallel", *args]):
        results.append(
            subprocess.run(
                argv, input=stdin, env=env, capture_output=True, timeout=TIMEOUT, cwd=cwd
            )
        )
    return results[0], results[1]


def same(args: list[str], stdin: bytes = b"", ordered: bool | None = None, cwd: Path | None = None) -> bytes:
    """Assert both give the same exit status and stdout lines; fastjob's stdout."""
    gnu, fj = both(args, stdin, cwd)
    assert fj.returncode == gnu.returncode, (gnu.returncode, fj.returncode, fj.stderr.decode(errors="replace"))
    if ordered is None:
        ordered = "-k" in args or "--keep-order" in args
    g, f = gnu.stdout.split(b"\n"), fj.stdout.split(b"\n")
    if not ordered:
        g, f = sorted(g), sorted(f)
    assert f == g, (gnu.stdout, fj.stdout)
    return fj.stdout


PATHS = ["/a/b/c.tar.gz", "d.txt", "x y/z", "noext", "/", ".bashrc", "a.b/c", "dir/", "./e.f"]

CASES: dict[str, tuple[list[str], bytes]] = {
    "template without {} gets the argument appended": (["-j2", "echo", ":::", "a", "b", "c"], b""),
    "two sources: every combination": (["-k", "-j3", "echo", ":::", "a", "b", ":::", "1", "2", "3"], b""),
    "three sources": (["-k", "echo", ":::", "a", "b", ":::", "1", "2", ":::", "x", "y"], b""),
    "linked source :::+": (["-k", "echo", ":::", "a", "b", "c", ":::+", "1", "2", "3"], b""),
    "linked source shorter": (["-k", "echo", ":::", "a", "b", "c", ":::+", "1", "2"], b""),
    "replacement strings": (["-k", "echo", "{} {.} {/} {//} {/.}", ":::", *PATHS], b""),
    "job number": (["-k", "echo", "{#}-{}", ":::", "a", "b", "c"], b""),
    "{#} alone suppresses appending": (["-k", "echo", "{#}", ":::", "a", "b"], b""),
    "job slot with -j1": (["-j1", "-k", "echo", "{%}", ":::", "a", "b", "c"], b""),
    "positional": (["-k", "echo", "{2}-{1} {1.} {2/}", ":::", "a.x", "b.y", ":::", "p/q", "r/s"], b""),
    "-n 2 appended": (["-k", "-n2", "echo", ":::", "1", "2", "3", "4", "5"], b""),
    "-n 2 positional": (["-k", "-n", "2", "echo", "{2}-{1}", ":::", "a", "b", "c", "d"], b""),
    "-n 2 two sources": (["-k", "-n2", "echo", "{}", ":::", "a", ":::", "1", "2"], b""),
    "-n 3 {}": (["-k", "--max-args", "3", "echo", "[{}]", ":::", *"abcdefg"], b""),
    "quoting of special arguments": (["-k", "echo", ":::", "a b", "*", "$x", "it's", ";ls", "", "a\\b", "`x`"], b""),
    "template is shell text": (["-k", "echo {} | tr a-z A-Z", ":::", "abc", "def"], b""),
    "arguments are the commands without a template": (["-k", ":::", "echo a", "echo b; echo c"], b""),
    "two sources are one command": (["-k", ":::", "echo", "printf", ":::", "x"], b""),
    "stdin lines are commands": ([], b"echo one\necho two\n\necho three\n"),
    "stdin lines are arguments": (["-k", "echo", "x{}y"], b"a\n\nb\n"),
    "no final newline": (["-k", "echo"], b"a\nb"),
    "split on newline only": ([], b"echo one\x1cecho INJECTED\x0becho X\x0c\x85\r\n"),
    "NUL-separated with -0": (["-0", "-k", "printf", "'[%s]\\n'"], b"a b\0c\nd\0e"),
    "NUL-separated with --null": (["--null", "-k", "echo"], b"x\0y\0"),
    "non-UTF-8 bytes": (["-k", "echo"], b"\xff\xfe\n\xe9t\xe9\n"),
    "non-UTF-8 commands": ([], b"printf '\\377\\n'; echo \xe9\n"),
    "exit statuses: the number of failures": (["exit {}", ":::", "0", "1", "2", "0", "3"], b""),
    "more than 100 failures is 101": (["-j4", "false", ":::", *map(str, range(105))], b""),
    "killed by a signal counts as failed": (["kill -9 $$", ":::", "1", "2"], b""),
    "every job runs after a failure": (["-j1", "-k", "echo {}; exit {}", ":::", "0", "3", "0", "4"], b""),
    "--halt soon,fail=1": (["-j1", "-k", "--halt", "soon,fail=1", "echo {}; exit {}", ":::", "0", "3", "0", "0"], b""),
    "--halt now,fail=1": (["-j1", "-k", "--halt", "now,fail=1", "echo {}; exit {}", ":::", "0", "3", "0"], b""),
    "--halt soon,fail=2": (["-j1", "-k", "--halt", "soon,fail=2", "echo {}; exit {}", ":::", "0", "3", "5", "0"], b""),
    "--halt now,success=1": (["-j1", "-k", "--halt", "now,success=1", "echo {}; exit {}", ":::", "1", "0", "1"], b""),
    "--halt soon,done=2": (["-j1", "-k", "--halt", "soon,done=2", "echo {}; exit {}", ":::", "0", "2", "0"], b""),
    "--halt 2 (legacy now,fail=1)": (["-j1", "-k", "--halt", "2", "exit {}", ":::", "0", "4", "0"], b""),
    "--halt -1 (legacy soon,success=1)": (["-j1", "-k", "--halt", "-1", "exit {}", ":::", "3", "0", "4"], b""),
    "--halt now,fail=1 status of a killed job": (["-j1", "--halt", "now,fail=1", "kill -9 $$", ":::", "1", "2"], b""),
    "--halt soon,fail=3": (["-j1", "--halt", "soon,fail=3", "exit {}", ":::", "7", "8", "9", "0"], b""),
    "--halt soon,success=2": (["-j1", "--halt", "soon,success=2", "exit {}", ":::", "0", "5", "0", "0"], b""),
    "--halt soon,done=1": (["-j1", "--halt", "soon,done=1", "exit {}", ":::", "7", "0"], b""),
    "--halt soon,done=3": (["-j1", "--halt", "soon,done=3", "exit {}", ":::", "7", "0", "9", "0"], b""),
    "--halt never": (["-j1", "--halt", "never", "exit {}", ":::", "0", "4", "5"], b""),
    "--dry-run": (["--dry-run", "echo", "{}", ":::", "b c", "$HOME", "it's", "", "a*", ";ls"], b""),
    "--dry-run appends": (["--dry-run", "-n2", "gzip", "-9", ":::", "a", "b c", "d"], b""),
    "--tag": (["-k", "--tag", "echo", ":::", "a", "b", ":::", "1", "2"], b""),
    "--tag with stdin commands": (["-k", "--tag"], b"echo x\necho y\n"),
    "-k with jobs finishing out of order": (["-j4", "-k", "sleep 0.{}; echo {}", ":::", "3", "2", "1", "0"], b""),
    "--timeout": (["-k", "--timeout", "0.5", "sleep {}; echo {}", ":::", "0.1", "10"], b""),
    "stdout and stderr of a job": (["-k", "echo out-{}; echo err-{} >&2", ":::", "a", "b"], b""),
    "output without final newline": (["-k", "printf", "%s", ":::", "a", "b"], b""),
    "empty input": (["echo"], b""),
    "empty ::: source": (["echo", ":::"], b""),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_output_and_status_as_gnu_parallel(case: str) -> None:
    args, stdin = CASES[case]
    same(args, stdin)


def test_input_files(tmp_path: Path) -> None:
    (tmp_path / "f1").write_bytes(b"1\n2\n")
    (tmp_path / "f2").write_bytes(b"x\ny\n\n")
    (tmp_path / "cmds").write_bytes(b"echo c1\necho c2\n")
    same(["-k", "echo", "::::", "f1", "f2"], cwd=tmp_path)
    same(["-k", "echo", "::::", "f1", "::::+", "f2"], cwd=tmp_path)
    same(["-k", "-a", "f1", "-a", "f2", "echo"], cwd=tmp_path)
    same(["-k", "-a", "f1", "echo", ":::", "p", "q"], cwd=tmp_path)
    same(["-k", "echo", ":::", "A", "::::", "f1"], cwd=tmp_path)
    same(["-k", "-a", "cmds"], cwd=tmp_path)
    same(["-k", "--arg-file", "-", "echo"], stdin=b"s1\ns2\n", cwd=tmp_path)
    same(["-k", "echo", "::::", "-", "f1"], stdin=b"s1\n", cwd=tmp_path)


def test_joblog_columns(tmp_path: Path) -> None:
    args = ["-j1", "--timeout", "1", "sleep {}; exit {}", ":::", "0", "3", "20"]
    logs = []
    for name in ("gnu", "fj"):
        log = tmp_path / name
        gnu, fj = both(["--joblog", str(log), *args]) if name == "gnu" else (None, None)
        if name == "fj":
            r = subprocess.run(
                [*FASTJOB, "parallel", "--joblog", str(log), *args],
                env=clean_env(),
                capture_output=True,
                timeout=TIMEOUT,
            )
            assert r.returncode == 2
        logs.append([line.split("\t") for line in log.read_text().splitlines()])
    gnu_rows, fj_rows = logs
    assert fj_rows[0] == gnu_rows[0]
    assert len(fj_rows) == len(gnu_rows) == 4
    for g, f in zip(gnu_rows[1:], fj_rows[1:]):
        assert f[0] == g[0] and f[1] == g[1]  # Seq, Host
        assert f[4:] == g[4:]  # Send Receive Exitval Signal Command
        assert len(f[2].split(".")[1]) == 3 and len(f[3]) == len(g[3])  # the time formats
        float(f[2])
        float(f[3])


def test_unsupported_option_names_it() -> None:
    gnu, fj = both(["--pipe", "cat"], b"x\n")
    assert gnu.returncode == 0  # GNU parallel has it
    assert fj.returncode == 2
    lines = fj.stderr.decode().splitlines()
    assert len(lines) == 1 and "unsupported option '--pipe'" in lines[0]
