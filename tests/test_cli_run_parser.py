"""``fastjob run``'s hand parser (the start-up fast path) against argparse.

Whenever :func:`fastjob.cli.parse_run_fast` returns arguments, argparse
must accept the same command line with the same values; when the hand
parser gives up (None) the CLI asks argparse, so errors and unusual
spellings are argparse's by construction.  Checked on the common command
lines (which must take the fast path), on hostile ones and on thousands of
random ones built from a hostile alphabet."""

from __future__ import annotations

import contextlib
import io
import random

import pytest

from fastjob.cli import MAX_JOBS, RunArgs, build_parser, parse_run_fast

Result = tuple[str, object]


def by_argparse(args: list[str]) -> Result:
    """("ok", values) or ("error", status and stderr) of argparse's reading
    of ``fastjob run ARGS``, with the checks of _cmd_run (COMMAND present
    and not empty) and main's (no unrecognized option)."""
    parser = build_parser("run")
    err = io.StringIO()
    out = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            ns, extra = parser.parse_known_args(["run", *args])
    except SystemExit as exc:
        return ("error", (exc.code, err.getvalue(), out.getvalue()))
    if extra:
        return ("error", ("extra", extra))
    command = list(ns.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command or not command[0]:
        return ("error", ("command", command))
    limits = (ns.load_average, ns.min_free_memory, ns.max_pressure)
    return ("ok", (ns.jobs, ns.style, ns.trace, ns.report, list(ns.command), limits))


def fast_values(fast: RunArgs) -> object:
    return (fast.jobs, fast.style, fast.trace, fast.report, fast.command, (None, None, None))


def check(args: list[str]) -> RunArgs | None:
    fast = parse_run_fast(args)
    if fast is not None:
        kind, values = by_argparse(args)
        assert kind == "ok", (args, values)
        assert values == fast_values(fast), args
    return fast


COMMON = [
    ["--", "true"],
    ["true"],
    ["-j2", "--", "true"],
    ["-j", "2", "--", "true"],
    ["-j8", "cargo", "build", "--release"],
    ["--jobs", "4", "--", "make", "-C", "sub"],
    ["--jobs=4", "--", "ninja"],
    ["-j4", "--style", "fifo", "--", "ninja"],
    ["-j4", "--style=pipe", "--", "sh", "-c", "exit 3"],
    ["--trace", "t.json", "--", "true"],
    ["--report=r.html", "-j3", "--", "true"],
    ["-j2", "--trace", "t.json", "--report", "r.html", "--", "make", "-j"],
    ["-j2", "-j3", "--", "true"],  # the last one wins, as with argparse
    ["-j2", "--", "--", "x"],  # the command is "-- x"
    ["-j2", "--", "-x"],  # a command may start with "-" after --
    ["-j2", "true", "-j5", "-x"],  # after COMMAND everything is its own
    ["--trace=", "--", "true"],  # an empty value: no trace, as argparse reads it
    ["--trace=-odd", "--", "true"],
    ["--style", "fifo", "--style", "pipe", "--", "true"],
    [f"-j{MAX_JOBS}", "--", "true"],
    ["-j", "007", "--", "true"],
    ["-j2", "make", "--keep-going", "-s"],  # "--keep-going" is no option of fastjob's
    ["-j2", "--", "make", "--m"],  # after --: nothing is read as an option
]


@pytest.mark.parametrize("args", COMMON, ids=[" ".join(a) for a in COMMON])
def test_common_command_lines_take_the_fast_path_with_argparse_values(args: list[str]) -> None:
    assert check(args) is not None, "the common path went through argparse"


HOSTILE = [
    [],
    ["--"],
    ["-j2"],
    ["-j2", "--"],
    ["--", ""],
    [""],
    ["-j", "0", "--", "true"],
    ["-j", "-3", "--", "true"],
    ["-j-3", "--", "true"],
    ["-j", "abc", "--", "true"],
    ["-jabc", "--", "true"],
    ["-j", str(MAX_JOBS + 1), "--", "true"],
    ["-j", str(2**64), "--", "true"],
    ["-j=2", "--", "true"],
    ["-j2=3", "--", "true"],
    ["-j", "2 ", "--", "true"],
    ["-j", " 2", "--", "true"],
    ["-j", "\u0663", "--", "true"],  # ARABIC-INDIC DIGIT THREE: int() takes it
    ["-j\u0663", "--", "true"],
    ["-j", "1_0", "--", "true"],
    ["-j", "+2", "--", "true"],
    ["--jobs=", "--", "true"],
    ["--jobs", "--", "true"],
    ["--jobs", "--style", "fifo", "--", "true"],
    ["--job", "2", "--", "true"],  # an abbreviation: argparse's business
    ["--jobs2", "--", "true"],
    ["--j=2", "--", "true"],
    ["--style", "sem", "--", "true"],
    ["--style", "FIFO", "--", "true"],
    ["--style=", "--", "true"],
    ["--sty", "fifo", "--", "true"],
    ["--trace", "--", "true"],
    ["--trace", "-x", "--", "true"],
    ["--trace", "", "--", "true"],
    ["--report", "--trace", "t", "--", "true"],
    ["--bogus", "--", "true"],
    ["--bogus=1", "--", "true"],
    ["-x", "--", "true"],
    ["-", "true"],
    ["-5", "true"],
    ["-1.5", "true"],
    ["-h"],
    ["--help"],
    ["--he"],
    ["--version"],
    ["-l", "2", "--", "true"],
    ["-l2", "--", "true"],
    ["--load-average=2", "--", "true"],
    ["--min-free-memory", "1G", "--", "true"],
    ["--max-pressure", "cpu=50", "--", "true"],
    ["--m", "1", "--", "true"],  # ambiguous: --min-free-memory, --max-pressure
    ["=", "true"],
    ["--=", "true"],
    ["---j", "2", "--", "true"],
    ["-j 2", "--", "true"],
    ["-j", "2", "true", "--"],
    [" -j2", "true"],
    ["a b", "c"],
    ["-a b", "c"],
    ["-j2", "\x00"],
    ["-j2", "--", "\n"],
    ["\u2014j2", "--", "true"],  # an em dash: a command named so
    ["-j", "2", "-j", "--", "true"],
    ["--style", "pipe", "--style"],
    ["--report"],
    ["true", "--m"],  # argparse: "ambiguous option" although it is COMMAND's
    ["true", "--="],  # the top-level parser: --help or --version?
    ["true", "--=x"],
    ["true", "--he"],
    ["true", "--ver"],
    ["true", "--jobs=3"],
    ["true", "-j3"],
    ["true", "--mi=1", "--"],
    ["true", "--", "--m"],
    ["-j2", "true", "-j5", "--style", "sem"],
]


@pytest.mark.parametrize("args", HOSTILE, ids=[repr(a) for a in HOSTILE])
def test_hostile_command_lines_agree_with_argparse(args: list[str]) -> None:
    check(args)


def test_the_fast_parser_gives_up_on_what_it_does_not_know() -> None:
    """Not a tautology of check(): these must go to argparse (for its
    messages, its abbreviations and the limit options)."""
    for args in (
        [], ["--"], ["--", ""], ["-j", "0", "--", "true"], ["-j=2", "--", "true"],
        ["--job", "2", "--", "true"], ["-l", "2", "--", "true"], ["-h"], ["--help"],
        ["--trace", "-x", "--", "true"], ["-5", "true"], ["true", "--m"], ["make", "--="],
    ):
        assert parse_run_fast(args) is None, args


ALPHABET = [
    "-j", "-j2", "-j0", "-j=3", "-jx", "-j-1", "--jobs", "--jobs=2", "--jobs=", "--jo",
    "--style", "--style=fifo", "--style=sem", "pipe", "fifo", "sem", "--trace", "--trace=",
    "--trace=t", "--report", "--report=r", "--", "-", "", " ", "true", "sh", "-c", "a b",
    "-x", "-5", "-1.5", "2", "0", "3", str(MAX_JOBS + 1), "-l", "-l1", "--load-average",
    "--min-free-memory", "1G", "--max-pressure", "cpu=5", "-h", "--help", "--version",
    "=", "--=", "\u0663", "-j\u0663", "x=y", "--bogus", "--m", "--he", "--ve", "--release",
    "--=x", "--ma=1",
]


def test_random_command_lines_agree_with_argparse() -> None:
    rng = random.Random(15)
    fast = 0
    for _ in range(4000):
        args = [rng.choice(ALPHABET) for _ in range(rng.randint(0, 7))]
        if check(args) is not None:
            fast += 1
    assert fast > 200, "the random lines never took the fast path: the comparison is empty"


def test_run_args_repr_names_every_value() -> None:
    fast = parse_run_fast(["-j3", "--style", "fifo", "--", "true"])
    assert repr(fast) == (
        "RunArgs(jobs=3, style='fifo', trace=None, report=None, command=['--', 'true'])"
    )


def test_the_long_options_it_knows_are_the_parsers() -> None:
    """parse_run_fast falls back when COMMAND has a word argparse may read as
    an abbreviation: it must know every long option (a new one added to
    ``fastjob run`` or to the top level must be added there too)."""
    from fastjob.cli import _LONG_OPTIONS

    top = build_parser("run")
    run = next(a for a in top._actions if a.dest == "cmd").choices["run"]  # type: ignore[attr-defined, union-attr]
    longs = {
        s for p in (top, run) for a in p._actions for s in a.option_strings if s.startswith("--")
    }
    assert set(_LONG_OPTIONS) == longs
