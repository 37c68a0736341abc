"""parse_makeflags on every form real tools write, and on malformed values."""

from __future__ import annotations

import pytest

import fastjob
from fastjob import InvalidAuthError, JobserverAuth, parse_makeflags
from fastjob._makeflags import format_makeflags, jobserver_env, scan_makeflags, strip_jobserver


@pytest.mark.parametrize(
    ("value", "style", "fds", "path", "jobs", "dry_run"),
    [
        ("--jobserver-fds=3,4 -j", "pipe", (3, 4), None, None, False),  # make <= 4.1
        (" -j4 --jobserver-auth=3,4", "pipe", (3, 4), None, 4, False),  # make 4.2/4.3
        ("k -j4 --jobserver-auth=3,4", "pipe", (3, 4), None, 4, False),  # -k
        ("kw -j4 --jobserver-auth=3,4", "pipe", (3, 4), None, 4, False),  # $(MAKE) child
        ("n -j2 --jobserver-auth=5,6", "pipe", (5, 6), None, 2, True),  # dry run
        (" -j3 --jobserver-auth=fifo:/tmp/GMfifo13206", "fifo", None, "/tmp/GMfifo13206", 3, False),
        ("-j2 --jobserver-auth=3,4 --jobserver-auth=7,8", "pipe", (7, 8), None, 2, False),
        ("-j --jobserver-fds=6,7 --jobserver-auth=6,7", "pipe", (6, 7), None, None, False),  # cargo
        ("-j --jobserver-fds=fifo:/t/p --jobserver-auth=fifo:/t/p", "fifo", None, "/t/p", None, False),
        (" -j8 --jobserver-auth=fifo:/tmp/a\\ b", "fifo", None, "/tmp/a b", 8, False),  # escaped space
        (" --jobserver-auth=3,4 -- CFLAGS=-O2\\ -g --jobserver-auth=9,9", "pipe", (3, 4), None, None, False),
        ("--jobserver-fds=10,11 --jobserver-auth=12,13", "pipe", (12, 13), None, None, False),
        ("-j16 --jobs=4 --jobserver-auth=3,4", "pipe", (3, 4), None, 4, False),
        ("-n -j2 --jobserver-auth=3,4", "pipe", (3, 4), None, 2, True),  # MFLAGS style
    ],
)
def test_forms_in_the_wild(
    value: str, style: str, fds: tuple[int, int] | None, path: str | None, jobs: int | None, dry_run: bool
) -> None:
    auth = parse_makeflags(value)
    assert auth is not None
    assert auth.style == style
    if fds:
        assert (auth.read_fd, auth.write_fd) == fds
    assert auth.path == path
    assert auth.jobs == jobs
    assert auth.dry_run == dry_run


def test_windows_semaphore_name() -> None:
    auth = parse_makeflags(" -j4 --jobserver-auth=gmake_semaphore_1234")
    assert auth is not None and auth.style == "sem" and auth.name == "gmake_semaphore_1234"


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "-j4",
        "k -j4",
        " -j",
        "--jobs=8",
        "-- --jobserver-auth=3,4",  # only in the overrides
        " -j4 -- FOO=--jobserver-auth=3,4",
        "-j2 --jobserver-auth=-2,-2",  # disabled on purpose
        "-j2 --jobserver-auth=3,4 --jobserver-auth=-2,-2",  # make 4.4 pipe, non-recursive
        "--jobserver-fds=-1,-1",
        "--jobserver-auth=-2,5",
    ],
)
def test_no_jobserver(value: str) -> None:
    assert parse_makeflags(value) is None


def test_disabled_is_reported_by_scan() -> None:
    parsed = scan_makeflags("-j2 --jobserver-auth=3,4 --jobserver-auth=-2,-2")
    assert parsed.auth is None and parsed.disabled and parsed.jobs == 2


MALFORMED = [
    "--jobserver-auth=",
    "--jobserver-auth=3",
    "--jobserver-auth=3,",
    "--jobserver-auth=,4",
    "--jobserver-auth=a,b",
    "--jobserver-auth=3,4,5",
    "--jobserver-auth=3;4",
    "--jobserver-auth=3.0,4",
    "--jobserver-auth=0x3,4",
    "--jobserver-auth=+3,4",
    "--jobserver-auth=3 ,4",
    "--jobserver-auth=99999999999999999999,4",
    "--jobserver-auth=3,99999999999",
    "--jobserver-auth=fifo:",
    "--jobserver-auth=fifo:/tmp/a\0b",
    "--jobserver-fds=",
    "--jobserver-fds=x,y",
    "--jobserver-auth=1_0,4",
    "--jobserver-auth=٣,٤",  # non-ASCII digits
    "--jobserver-auth=3,4 --jobserver-auth=garbage,",
    "-jabc --jobserver-auth=3,4",
    "-j-3 --jobserver-auth=3,4",
    "--jobs=x --jobserver-auth=3,4",
    "--jobserver-auth=-",
    "--jobserver-auth=12abc",
    "--jobserver-auth=\x01\x02",
    "--jobserver-auth=3,4\x00",
    "--jobserver-auth=,",
    "--jobserver-auth=--",
    "--jobserver-auth=1,2,",
    "--jobserver-auth=0-1",
]


@pytest.mark.parametrize("value", MALFORMED)
def test_malformed_values_raise_invalid_auth(value: str) -> None:
    with pytest.raises(InvalidAuthError) as info:
        parse_makeflags(value)
    assert isinstance(info.value, fastjob.JobserverError)
    assert str(info.value)


def test_bytes_and_wrong_types() -> None:
    assert parse_makeflags(b" -j2 --jobserver-auth=3,4") == parse_makeflags(" -j2 --jobserver-auth=3,4")
    with pytest.raises(InvalidAuthError):
        parse_makeflags(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "auth",
    [
        JobserverAuth("pipe", read_fd=3, write_fd=4),
        JobserverAuth("fifo", path="/tmp/dir with space/fifo"),
        JobserverAuth("fifo", path="/tmp/back\\slash"),
        JobserverAuth("sem", name="gmake_semaphore_77"),
    ],
)
def test_format_round_trips(auth: JobserverAuth) -> None:
    for value in (format_makeflags(auth, 5), format_makeflags(auth, 5, mflags=True)):
        back = parse_makeflags(value)
        assert back is not None
        assert (back.style, back.read_fd, back.write_fd, back.path, back.name, back.jobs) == (
            auth.style,
            auth.read_fd,
            auth.write_fd,
            auth.path,
            auth.name,
            5,
        )


def test_pipe_format_has_both_spellings_auth_last() -> None:
    value = format_makeflags(JobserverAuth("pipe", read_fd=3, write_fd=4), 4)
    assert value == " -j4 --jobserver-fds=3,4 --jobserver-auth=3,4"
    env = jobserver_env(JobserverAuth("pipe", read_fd=3, write_fd=4), 4)
    assert env["MAKEFLAGS"] == value and env["MFLAGS"].startswith("-j4")
    # make never rewrites CARGO_MAKEFLAGS: exporting it would go stale below a child make -jN
    assert "CARGO_MAKEFLAGS" not in env


def test_strip_jobserver_keeps_the_rest() -> None:
    assert strip_jobserver("k -j4 --jobserver-auth=3,4 -- A=1") == "k -j4 -- A=1"
    assert "jobserver" not in strip_jobserver(" -j --jobserver-fds=fifo:/a\\ b --jobserver-auth=fifo:/a\\ b")
