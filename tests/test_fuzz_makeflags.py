"""Hypothesis fuzz of the MAKEFLAGS parser: it never raises anything but
JobserverError (InvalidAuthError), never hangs, and reads back what
format_makeflags writes."""

from __future__ import annotations

import os
import time

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fastjob
from fastjob import InvalidAuthError, JobserverAuth, JobserverError
from fastjob._makeflags import scan_makeflags, strip_jobserver

EXAMPLES = int(os.environ.get("FASTJOB_FUZZ_EXAMPLES", "400"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=1000, suppress_health_check=[HealthCheck.too_slow]
)

# Pieces real MAKEFLAGS are made of, to reach deep into the parser.
WORDS = st.sampled_from(
    [
        "-j", "-j4", "-j99999999999999999999", "--jobs=3", "--jobs", "k", "kw", "n", "-n",
        "--", "--jobserver-auth=", "--jobserver-auth=3,4", "--jobserver-fds=3,4",
        "--jobserver-auth=-2,-2", "--jobserver-auth=fifo:", "--jobserver-auth=fifo:/tmp/x",
        "--jobserver-auth=gmake_semaphore_1", "\\", "\\ ", "\t", " ", ",", "fifo:", "\0",
        "X=a\\ b", "--jobserver-auth=3,", "--jobserver-auth=,4", "=", "-", "\udcff", "\u0663",
    ]
)
MAKEFLAGS_TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(WORDS, st.text(max_size=12)), max_size=12).map(" ".join),
    st.lists(st.one_of(WORDS, st.text(max_size=12)), max_size=12).map("".join),
)


def check_parse(value: str | bytes) -> None:
    t0 = time.monotonic()
    try:
        auth = fastjob.parse_makeflags(value)
    except JobserverError as exc:
        assert isinstance(exc, InvalidAuthError)
        assert str(exc)
    else:
        assert auth is None or isinstance(auth, JobserverAuth)
        if auth is not None:
            assert auth.style in ("pipe", "fifo", "sem")
            if auth.style == "pipe":
                assert auth.read_fd is not None and auth.read_fd >= 0
                assert auth.write_fd is not None and auth.write_fd >= 0
            elif auth.style == "fifo":
                assert auth.path and "\0" not in auth.path
            else:
                assert auth.name
    # Linear-time parser: a 200-character value takes microseconds.
    assert time.monotonic() - t0 < 0.5


@FUZZ
@given(MAKEFLAGS_TEXT)
@example(" -j4 --jobserver-auth=3,4")
@example("--jobserver-auth=fifo:/tmp/a\\")
@example("\\")
@example("--jobserver-auth=\\")
@example("--jobserver-auth=3,4 -- --jobserver-auth=x")
def test_parse_never_raises_anything_else(value: str) -> None:
    check_parse(value)


@FUZZ
@given(st.binary(max_size=200))
def test_parse_bytes(value: bytes) -> None:
    check_parse(value)


@FUZZ
@given(MAKEFLAGS_TEXT)
@example("--\\jobserver-auth=0,0")  # found by this fuzz: make drops the backslash
@example("-\\-jobserver-fds=3,4 -\\j4")
@example("--jobs 4 -j 3 --jobserver-auth=3,4")
@example("x\n--jobserver-auth=3,4")  # a newline separates words
def test_strip_jobserver_total(value: str) -> None:
    """strip_jobserver never fails, and what it leaves names no jobserver
    (it reads words exactly as scan_makeflags does); with parallelism=True
    it leaves no -j either."""
    out = strip_jobserver(value)
    try:
        parsed = scan_makeflags(out)
    except InvalidAuthError:
        return  # e.g. a bad -j value it does not touch
    assert parsed.auth is None and not parsed.disabled
    try:
        parsed = scan_makeflags(strip_jobserver(value, parallelism=True))
    except InvalidAuthError:
        return
    assert parsed.auth is None and not parsed.disabled and parsed.jobs is None


def test_escaped_option_is_stripped() -> None:
    """The hypothesis example, spelled out: both sides see the option."""
    value = "--\\jobserver-auth=0,0"
    auth = fastjob.parse_makeflags(value)
    assert auth is not None and auth.fds == (0, 0)
    assert strip_jobserver(value) == ""
    assert strip_jobserver("k --\\jobserver-auth=0,0 X\\ Y") == "k X\\ Y"


def test_huge_value_is_fast() -> None:
    value = " ".join(["--jobserver-auth=3,4", "x\\ y"] * 100_000)
    t0 = time.monotonic()
    auth = fastjob.parse_makeflags(value)
    assert auth is not None and (auth.read_fd, auth.write_fd) == (3, 4)
    assert time.monotonic() - t0 < 5


# -- round trip -------------------------------------------------------------------------
FDS = st.integers(0, 2**31 - 1)
PATHS = st.text(
    st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1, max_size=60
)
SEM_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,40}", fullmatch=True).filter(
    lambda s: not s.startswith("fifo:")
)
JOBS = st.one_of(st.none(), st.integers(1, 10**6))


@st.composite
def auths(draw: st.DrawFn) -> JobserverAuth:
    style = draw(st.sampled_from(["pipe", "fifo", "sem"]))
    jobs = draw(JOBS)
    if style == "pipe":
        return JobserverAuth("pipe", read_fd=draw(FDS), write_fd=draw(FDS), jobs=jobs)
    if style == "fifo":
        return JobserverAuth("fifo", path=draw(PATHS), jobs=jobs)
    return JobserverAuth("sem", name=draw(SEM_NAMES), jobs=jobs)


def same(a: JobserverAuth, b: JobserverAuth | None) -> None:
    assert b is not None
    assert (a.style, a.read_fd, a.write_fd, a.path, a.name, a.jobs) == (
        b.style, b.read_fd, b.write_fd, b.path, b.name, b.jobs,
    )


@FUZZ
@example(JobserverAuth("fifo", path="/tmp/a\nb"), "", [])  # newline: found by this fuzz
@example(JobserverAuth("fifo", path="/t b\\ \t"), "k", ["X=1"])
@given(auths(), st.sampled_from(["", "k", "kw", "n"]), st.lists(WORDS, max_size=3))
def test_round_trip(auth: JobserverAuth, flags: str, overrides: list[str]) -> None:
    text = fastjob.format_makeflags(auth)
    same(auth, fastjob.parse_makeflags(text))
    # make prepends its flag cluster and appends variable overrides.
    if flags:
        same(auth, fastjob.parse_makeflags(flags + text))
    tail = " -- " + " ".join(o.replace(" ", "\\ ") for o in overrides if o.strip())
    same(auth, fastjob.parse_makeflags(text + tail))
    mflags = fastjob.format_makeflags(auth, mflags=True)
    same(auth, fastjob.parse_makeflags(mflags))
    # And the environment a child gets names the same pool in every variable.
    for var, value in fastjob._makeflags.jobserver_env(auth).items():
        same(auth, fastjob.parse_makeflags(value))
