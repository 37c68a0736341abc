"""The ``fastjob`` command line (also ``python -m fastjob``).

Argument parsing only; each subcommand's logic lives in its own module.
Bad input is one line on stderr and exit status 2, never a traceback.

Start-up: this module imports neither argparse nor typing.  ``fastjob
--version``, ``fastjob doctor [--json]`` and the common ``fastjob run [-j N]
[--style S] [--trace F] [--report F] -- COMMAND`` are parsed by hand
(:func:`parse_run_fast` gives up on anything else); argparse builds the
parser for --help, errors and every other command line, so the messages
stay argparse's (docs/cli.md, "Start-up").
"""

from __future__ import annotations

import os
import sys

from .._version import __version__

# Not typing.TYPE_CHECKING: importing typing costs more than this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any, NoReturn

    from .parallel import Source

DESCRIPTION = """\
fastjob speaks the GNU make jobserver protocol: the pool of job slots that
make -jN, cargo, ninja and rustc share so that nested builds never run more
than N jobs in all.

A command started by fastjob joins the jobserver fastjob itself inherited
(from make, cargo or another fastjob) or, when there is none or -j is
given, a new pool that fastjob creates and hands to it through MAKEFLAGS,
MFLAGS (never CARGO_MAKEFLAGS) and inherited file descriptors."""

EPILOG = """\
examples:
  fastjob run -j8 -- cargo build
  fastjob doctor
  fastjob parallel -j4 'gzip -9 {}' ::: *.log

'fastjob COMMAND --help' describes each command.

exit status:
  run: the command's (128+N when a signal N killed it); doctor: 0 usable,
  1 named but broken, 2 none; parallel: the number of failed commands
  (at most 101, or GNU parallel's status after --halt); 2 for bad usage."""

RUN_DESCRIPTION = """\
Run COMMAND under a jobserver.  When this process inherited one (it runs in
a recipe of make -jN, under cargo, or under another fastjob) and -j is not
given, COMMAND joins it and runs in this process's job slot.  Otherwise a
new pool of N slots is created (N-1 tokens plus COMMAND's implicit one) and
named to COMMAND in MAKEFLAGS and MFLAGS; a pipe pool's
file descriptors are inherited by COMMAND.

COMMAND runs in its own process group; SIGINT, SIGTERM and SIGHUP sent to
fastjob are forwarded to that group (a signal forwarded less than 0.5 s
before is not forwarded again: timeout -s and kill -- -PGID deliver one
event twice).  When it exits, a new pool is counted
the way make does: tokens that were not returned (a child killed while
holding one) are reported on stderr and put back, extra ones removed; a
FIFO is removed on every exit path short of SIGKILL."""

RUN_EPILOG = """\
examples:
  fastjob run -j8 -- cargo build
      cargo, rustc and build scripts share 8 job slots
  fastjob run -j4 --style fifo -- ninja
      ninja >= 1.13 and make >= 4.4 read the FIFO style
  fastjob run -- make -C sub
      inside a recipe: the sub-make shares the outer make's -j

exit status:
  COMMAND's exit status, 128+N when signal N killed it, 127 when COMMAND
  was not found, 2 for bad usage."""

DOCTOR_DESCRIPTION = """\
Explain the jobserver this process would see: which variable names it
(CARGO_MAKEFLAGS, MAKEFLAGS, MFLAGS, in that order), the value, the parsed
style; for a pipe, whether each fd is open, what it points to, its access
mode, O_NONBLOCK, and whether both fds are one pipe; for a FIFO, whether it
exists, is a FIFO, its permissions, whether it opens and whether its owner
is still alive; the tokens free right now; the verdict; and the fix.

Use it where a tool said "failed to connect to jobserver" (rustc, cargo) or
"jobserver unavailable: using -j1" (make): put `fastjob doctor` in the same
place (the same recipe line, build script or subprocess call).  Nothing is
consumed: tokens are counted, not taken."""

DOCTOR_EPILOG = """\
examples:
  fastjob doctor
  fastjob doctor --json | jq .verdict
  in a Makefile:   +fastjob doctor     (compare with and without the '+')

exit status:
  0 a usable jobserver, 1 one is named but broken, 2 none (or disabled)."""

PARALLEL_DESCRIPTION = """\
Run commands in parallel through the jobserver, with GNU parallel's
command line.  Input comes from ::: ARGS (on the command line), :::: FILE
and -a FILE (one argument per line, or per NUL with -0), else from stdin;
several sources give every combination (the first varying slowest), :::+
and ::::+ link a source to the one before it.  With COMMAND_TEMPLATE each
argument is shell-quoted into the replacement strings {} {.} {/} {//} {/.}
(and {1} {2.} ... by source), {#} is the job number and {%} the job slot;
a template without any gets the arguments appended.  Without a template
each input line is a command.

Commands take their job slots from the inherited jobserver (so
`+fastjob parallel < cmds.txt` in a Makefile shares make's -j budget) or
from a new pool of N slots, and every command gets the pool, so a make or
cargo inside one shares it too.

The output of each command is kept together, written when it ends (stdout
to stdout, stderr to stderr; with -k in input order).  Every command runs,
whatever fails, unless --halt says otherwise.  On a terminal a progress
line shows done, running, failed and the ETA.  SIGINT, SIGTERM and SIGHUP
are forwarded to every running command and stop new ones from starting;
any further signal within 0.5 s of the first is taken as the same event
(timeout -s and kill -- -PGID deliver it twice) and ignored, one arriving
later kills the commands (SIGKILL); every token is returned.  docs/cli.md lists
where fastjob parallel differs from GNU parallel."""

PARALLEL_EPILOG = """\
examples:
  fastjob parallel -j4 gzip -9 ::: *.log
  fastjob parallel -k 'convert {} {.}.png' ::: *.jpg
  fastjob parallel echo {1}-{2} ::: a b ::: 1 2
  find . -name '*.c' -print0 | fastjob parallel -0 cc -c
  fastjob parallel --halt soon,fail=1 --joblog jobs.tsv < cmds.txt
  in a Makefile:   +fastjob parallel -a cmds.txt

exit status:
  the number of failed commands (at most 101); after a --halt, as in GNU
  parallel: the status of the command that triggered fail=1 or done=1, 0
  for success=N, else the number of failed commands; 128+N after signal N;
  2 for bad usage."""

#: The largest -j: a pipe pool holds one byte per slot, and a Linux pipe
#: holds at most 1 MiB (/proc/sys/fs/pipe-max-size's default).
MAX_JOBS = 1 << 20

#: Input-source separators of GNU parallel.
SEPARATORS = (":::", ":::+", "::::", "::::+")


_parser_class: type[argparse.ArgumentParser] | None = None


def _Parser(*args: Any, **kwargs: Any) -> argparse.ArgumentParser:
    """An ArgumentParser whose errors are one line: "fastjob run: error: ...
    (see --help)" (the class is made on first use: argparse is imported only
    when a parser is built)."""
    global _parser_class
    if _parser_class is None:
        import argparse

        class Parser(argparse.ArgumentParser):
            def error(self, message: str) -> NoReturn:
                self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

        _parser_class = Parser
    return _parser_class(*args, **kwargs)


def positive_count(text: str, what: str, most: int | None = None, why: str = "") -> int:
    """An argparse type: a whole number of ``what`` from 1 to ``most``."""
    import argparse

    try:
        n = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of {what}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the number of {what} must be at least 1")
    if most is not None and n > most:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {most} {what}{why}")
    return n


def _jobs(text: str) -> int:
    return positive_count(text, "jobs", MAX_JOBS, " (a pipe pool holds one byte per slot)")


def _count(text: str) -> int:
    import argparse

    try:
        n = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= n <= MAX_JOBS:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number from 1 to {MAX_JOBS}")
    return n


def _seconds(text: str) -> float:
    import argparse

    try:
        t = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds (percentages of the median run time "
            "are not supported)"
        ) from None
    if not 0 < t < 1e9:
        raise argparse.ArgumentTypeError(f"{text!r}: the timeout must be a positive number of seconds")
    return t


def _halt(text: str) -> object:
    import argparse

    from .parallel import parse_halt

    try:
        return parse_halt(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _formatter(prog: str) -> argparse.HelpFormatter:
    import argparse

    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=30)


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    """The options of ``fastjob run`` (a function, so that other option
    groups can be added beside them).  :func:`parse_run_fast` must agree
    with them (tests/test_cli_run_parser.py compares the two)."""
    import argparse

    from .limits import add_limit_options
    run.add_argument(
        "-j", "--jobs", type=_jobs, metavar="N",
        help="create a new pool of N job slots (default: join the inherited "
        "jobserver; one job at a time when one is named but unusable, as make "
        "does; else N = the number of CPUs)",
    )
    run.add_argument(
        "--style", choices=("pipe", "fifo"), default=None,
        help="how a new pool is passed: 'pipe' (two inherited fds, read by every "
        "make, ninja and cargo; the default) or 'fifo' (a named pipe, make >= 4.4 "
        "and ninja >= 1.13)",
    )
    run.add_argument(
        "--trace", metavar="FILE.json",
        help="record the pool's occupancy, CPU use while it runs and write a "
        "Chrome trace (open it in https://ui.perfetto.dev or chrome://tracing); a "
        "summary goes to stderr",
    )
    run.add_argument(
        "--report", metavar="FILE.html",
        help="write the same recording as a self-contained HTML report (chart + summary)",
    )
    add_limit_options(run)
    run.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def add_parallel_arguments(par: argparse.ArgumentParser) -> None:
    """The options of ``fastjob parallel``: GNU parallel's names and meanings."""
    import argparse

    from .limits import add_limit_options
    par.add_argument(
        "-j", "--jobs", type=_jobs, metavar="N",
        help="run in a new pool of N job slots (default: join the inherited "
        "jobserver; one job at a time when one is named but unusable, as make "
        "does; else N = the number of CPUs)",
    )
    par.add_argument(
        "-k", "--keep-order", action="store_true",
        help="write the output of the commands in input order (they still run in parallel)",
    )
    par.add_argument(
        "--halt", type=_halt, default=None, metavar="WHEN,WHAT=N",
        help="stop after N failed (fail=N), succeeded (success=N) or finished (done=N) "
        "commands: 'soon' starts no new ones, 'now' also kills those running "
        "(SIGTERM, then SIGKILL); 'never' (the default) runs them all",
    )
    par.add_argument(
        "--keep-going", action="store_true",
        help="make's spelling of the default: run every command whatever fails "
        "(cancels an earlier --halt)",
    )
    par.add_argument(
        "-a", "--arg-file", action="append", metavar="FILE",
        help="an input source: one argument per line of FILE ('-' is stdin); may be repeated",
    )
    par.add_argument(
        "-0", "--null", action="store_true",
        help="input records end with NUL, not newline (find -print0)",
    )
    par.add_argument(
        "-n", "--max-args", type=_count, default=1, metavar="N",
        help="give each command N arguments (input tuples) at once",
    )
    par.add_argument(
        "--timeout", type=_seconds, metavar="SECONDS",
        help="kill a command (its process group: SIGTERM, then SIGKILL) that runs longer; "
        "it counts as failed",
    )
    par.add_argument(
        "--joblog", metavar="FILE",
        help="write one line per finished command to FILE ('-': stdout) in GNU parallel's "
        "columns: Seq Host Starttime JobRuntime Send Receive Exitval Signal Command",
    )
    par.add_argument(
        "--dry-run", action="store_true", help="print the commands instead of running them"
    )
    par.add_argument(
        "--tag", action="store_true",
        help="prefix each output line with the arguments (or the command) and a tab",
    )
    par.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show done / running / failed / ETA on stderr (default: only when "
        "stderr is a terminal)",
    )
    par.add_argument(
        "--bar", "--eta", dest="progress", action="store_const", const=True,
        help="GNU parallel's spellings of --progress (the same progress line)",
    )
    # GNU parallel asks to be cited unless given this; accepted so that command
    # lines written for it run unchanged.
    par.add_argument("--will-cite", action="store_true", help=argparse.SUPPRESS)
    par.add_argument(
        "--trace", metavar="FILE.json",
        help="record the pool's occupancy, CPU use and one span per job while it runs and write a "
        "Chrome trace (open it in https://ui.perfetto.dev or chrome://tracing); a "
        "summary goes to stderr",
    )
    par.add_argument(
        "--report", metavar="FILE.html",
        help="write the same recording as a self-contained HTML report (chart + summary)",
    )
    add_limit_options(par)
    par.add_argument("template", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, for --help and for tests.  With ``only``, the
    other subcommands get no options (a start-up saving: only the command
    being run is ever parsed)."""
    p = _Parser(
        prog="fastjob",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_formatter,
    )
    p.add_argument("--version", action="version", version=f"fastjob {__version__}")
    sub = p.add_subparsers(
        dest="cmd", metavar="COMMAND", title="commands", parser_class=type(p)
    )
    run = sub.add_parser(
        "run",
        help="run one command under a jobserver (joined or new)",
        usage="fastjob run [-j N] [--style pipe|fifo] [--trace FILE.json] [--report FILE.html] -- COMMAND [ARG...]",
        description=RUN_DESCRIPTION,
        epilog=RUN_EPILOG,
        formatter_class=_formatter,
    )
    if only in (None, "run"):
        add_run_arguments(run)
    doc = sub.add_parser(
        "doctor",
        help="explain the jobserver this process would see, and how to fix it",
        description=DOCTOR_DESCRIPTION,
        epilog=DOCTOR_EPILOG,
        formatter_class=_formatter,
    )
    if only in (None, "doctor"):
        doc.add_argument("--json", action="store_true", help="print one JSON object for machines")
    par = sub.add_parser(
        "parallel",
        help="run many commands through the jobserver, like GNU parallel",
        usage="fastjob parallel [-j N] [-k] [--halt WHEN,WHAT=N] [-n N] [-0] [--tag]\n"
        "                        [--timeout S] [--joblog FILE] [--dry-run] [-a FILE]\n"
        "                        [COMMAND_TEMPLATE ...] [::: ARG ... | :::: FILE ...]",
        description=PARALLEL_DESCRIPTION,
        epilog=PARALLEL_EPILOG,
        formatter_class=_formatter,
    )
    if only in (None, "parallel"):
        add_parallel_arguments(par)
    _add_status_parsers(sub)

    from .threads import add_parser as add_threads_parser

    add_threads_parser(sub, _formatter)
    return p


def _add_status_parsers(sub: Any) -> None:
    st = sub.add_parser(
        "status", help="the size of the pool this process is in (asks its fastjob owner)",
        description="Show the pool's style, jobs, effective size, free and withheld "
        "tokens, the limits holding slots back and the owner's pid, asked over the "
        "control socket named in FASTJOB_CONTROL (or --pid); for a make or cargo pool, "
        "what can be seen from here.  Exit status 2 when there is no pool or its owner "
        "cannot be reached.", formatter_class=_formatter,
    )
    st.add_argument("--json", action="store_true", help="print one JSON object for machines")
    st.add_argument("--pid", type=int, metavar="PID", help="ask the fastjob owner with this pid")
    rs = sub.add_parser(
        "resize", help="ask the fastjob that owns this pool to change its size",
        description="Ask the owner of the pool (FASTJOB_CONTROL, or --pid) to resize it "
        "to N slots: growing is immediate, shrinking withholds tokens as jobs return "
        "them.  Exit status 1 when the owner refused, 2 when it cannot be reached.",
        formatter_class=_formatter,
    )
    rs.add_argument("jobs", type=_jobs, metavar="N", help="the new number of job slots")
    rs.add_argument("--pid", type=int, metavar="PID", help="ask the fastjob owner with this pid")


def _fail(prog: str, message: str) -> NoReturn:
    sys.stderr.write(f"{prog}: error: {message} (see '{prog} --help')\n")
    raise SystemExit(2)


class RunArgs:
    """What :func:`parse_run_fast` read: the attributes of argparse's
    Namespace that ``fastjob run`` uses (no limit option: those go through
    argparse)."""

    __slots__ = ("command", "jobs", "report", "style", "trace")

    def __init__(self) -> None:
        self.jobs: int | None = None
        self.style: str | None = None
        self.trace: str | None = None
        self.report: str | None = None
        self.command: list[str] = []

    def __repr__(self) -> str:
        return (
            f"RunArgs(jobs={self.jobs!r}, style={self.style!r}, trace={self.trace!r}, "
            f"report={self.report!r}, command={self.command!r})"
        )


#: ``fastjob run``'s options that take a value, as parse_run_fast reads them
_RUN_VALUED = {"-j": "jobs", "--jobs": "jobs", "--style": "style", "--trace": "trace", "--report": "report"}


#: every long option of ``fastjob`` and of ``fastjob run`` (argparse accepts
#: their unambiguous prefixes)
_LONG_OPTIONS = (
    "--help", "--version", "--jobs", "--style", "--trace", "--report", "--load-average",
    "--min-free-memory", "--max-pressure",
)


def _may_abbreviate(word: str) -> bool:
    """True if argparse may take ``word`` ("--name" or "--name=value") for
    one of the long options or an abbreviation of some."""
    name = word.partition("=")[0]
    return any(option.startswith(name) for option in _LONG_OPTIONS)


def parse_run_fast(args: Sequence[str]) -> RunArgs | None:
    """``fastjob run``'s arguments (after "run") read without argparse, for
    the common command lines: ``-j N`` / ``-jN`` / ``--jobs[=]N``,
    ``--style[=]pipe|fifo``, ``--trace[=]FILE``, ``--report[=]FILE``, then
    ``--`` or the first word not starting with "-", then COMMAND.

    Returns None for anything else (an abbreviation, a limit option, --help,
    a value starting with "-", a bad value, no COMMAND ...): the caller then
    asks argparse, which gives its usual result or error.  When this returns
    arguments they are exactly argparse's (tests compare the two)."""
    out = RunArgs()
    i = 0
    n = len(args)
    while i < n:
        word = args[i]
        if word == "--" or (word and word[0] != "-"):
            out.command = list(args[i:])  # as argparse's REMAINDER: with the "--"
            first = i + 1 if word == "--" else i
            if first == n or not args[first]:
                return None  # no COMMAND, or an empty one: argparse's path says so
            if word != "--":
                # argparse reads every word up to a "--" as a possible option,
                # also COMMAND's: "fastjob run make --m" fails ("ambiguous
                # option"), so such words are argparse's to judge
                for later in args[i + 1 :]:
                    if later == "--":
                        break
                    if later.startswith("--") and _may_abbreviate(later):
                        return None
            return out
        if word.startswith("-j") and "=" not in word and len(word) > 2:
            key, value = "jobs", word[2:]
        else:
            name, eq, value = word.partition("=")
            key = _RUN_VALUED.get(name, "")
            if not key or (eq and name == "-j"):
                return None
            if not eq:
                i += 1
                if i == n:
                    return None
                value = args[i]
                if not value or value[0] == "-":
                    return None  # argparse's reading of such a word is subtle
        if key == "jobs":
            try:
                jobs = int(value, 10)
            except ValueError:
                return None
            if not 1 <= jobs <= MAX_JOBS:
                return None
            out.jobs = jobs
        elif key == "style":
            if value not in ("pipe", "fifo"):
                return None
            out.style = value
        elif key == "trace":
            out.trace = value
        else:
            out.report = value
        i += 1
    return None  # no COMMAND


def _cmd_run(ns: argparse.Namespace | RunArgs) -> int:
    command = list(ns.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        _fail("fastjob run", "no COMMAND given after --")
    if not command[0]:
        _fail("fastjob run", "the COMMAND is empty")
    from .run import RunHooks, run

    hooks = None
    if ns.trace or ns.report:
        from .tracing import CliTrace

        tracer = CliTrace(ns.trace, ns.report, " ".join(command))
        # the command holds the implicit slot while it runs
        hooks = RunHooks(
            started=[lambda pid, pool: tracer.start(pool, implicit=True)],
            stopped=[lambda pid, status: tracer.stop()],
        )
    limits = None
    if not isinstance(ns, RunArgs):  # the fast parser takes no limit option
        from .limits import limits_from_args

        limits = limits_from_args(ns)
    return run(command, ns.jobs, ns.style, hooks=hooks, limits=limits)


def _cmd_doctor(ns: argparse.Namespace) -> int:
    from .doctor import doctor

    return doctor(as_json=ns.json)


def _read_source(name: str, null: bool, stdin_used: list[bool]) -> list[str]:
    """The records of one input file ('-' is stdin, readable once)."""
    from .parallel import split_records

    prog = "fastjob parallel"
    if name == "-":
        if stdin_used:
            _fail(prog, "stdin ('-') can be an input source only once")
        stdin_used.append(True)
        return split_records(_read_stdin(), null, "stdin")
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as exc:
        _fail(prog, f"cannot read {name}: {exc.strerror}")
    try:
        return split_records(data, null, name)
    except ValueError as exc:
        _fail(prog, str(exc))


def _read_stdin() -> bytes:
    if sys.stdin is None or sys.stdin.closed:
        return b""
    if sys.stdin.isatty():
        sys.stderr.write("fastjob parallel: reading input from the terminal (end with Ctrl-D)\n")
    return sys.stdin.buffer.read()


def _sources(ns: argparse.Namespace, groups: list[tuple[str, list[str]]]) -> list[Source]:
    """The input sources in GNU parallel's order: -a files, then each :::
    and :::: group; stdin when there is none."""
    from .parallel import Source, split_records

    null = bool(ns.null)
    used: list[bool] = []
    out: list[Source] = [Source(_read_source(f, null, used)) for f in ns.arg_file or ()]
    for sep, values in groups:
        if sep in (":::", ":::+"):
            out.append(Source(values, linked=sep == ":::+"))
            continue
        if not values:
            _fail("fastjob parallel", f"{sep} needs at least one FILE")
        for k, name in enumerate(values):
            out.append(Source(_read_source(name, null, used), linked=sep == "::::+" and k == 0))
    if not out:
        try:
            out.append(Source(split_records(_read_stdin(), null, "stdin")))
        except ValueError as exc:
            _fail("fastjob parallel", str(exc))
    return out


def _cmd_parallel(ns: argparse.Namespace, groups: list[tuple[str, list[str]]]) -> int:
    from .parallel import Spec, Template, combine, dry_run, parallel

    template = list(ns.template)
    if template and template[0] == "--":
        template = template[1:]  # after --, a command may start with "-"
    elif template and template[0].startswith("-"):
        _fail("fastjob parallel", f"unsupported option {template[0]!r}")
    sources = _sources(ns, groups)
    spec = Spec(
        combine(sources, ns.max_args),
        Template(template) if template else None,
        jobs=ns.jobs,
        halt=None if ns.keep_going else ns.halt,
        keep_order=ns.keep_order,
        tag=ns.tag,
        joblog=ns.joblog,
        timeout=ns.timeout,
    )
    if ns.dry_run:
        return dry_run(spec)
    if ns.joblog is not None and ns.joblog != "-":
        try:
            open(ns.joblog, "ab").close()
        except OSError as exc:
            _fail("fastjob parallel", f"cannot write --joblog {ns.joblog}: {exc.strerror}")
    spec.progress = ns.progress if ns.progress is not None else os.isatty(2)
    from .limits import limits_from_args

    spec.limits = limits_from_args(ns)
    if ns.trace or ns.report:
        from .tracing import CliTrace

        tracer = CliTrace(ns.trace, ns.report, "fastjob parallel")
        spec.on_start.append(lambda pool: tracer.start(pool, implicit=None))
        spec.on_job.append(tracer.job)
        spec.on_stop.append(lambda pool: tracer.stop())
    return parallel(spec)


def split_sources(argv: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """``fastjob parallel`` arguments before the first ::: / :::+ / :::: /
    ::::+, and each separator with the words that follow it."""
    cut = next((i for i, word in enumerate(argv) if word in SEPARATORS), len(argv))
    groups: list[tuple[str, list[str]]] = []
    for word in argv[cut:]:
        if word in SEPARATORS:
            groups.append((word, []))
        else:
            groups[-1][1].append(word)
    return argv[:cut], groups


#: options of ``fastjob parallel`` that take the next word as their value
_PARALLEL_VALUED = frozenset(
    "-j --jobs --halt -a --arg-file -n --max-args --timeout --joblog --trace --report".split()
)


def _glue_negative_halt(argv: list[str]) -> list[str]:
    """``--halt -1`` (GNU's soon,success=1) as ``--halt=-1``: argparse takes
    a word like -1 for an option once the parser has one like -0.  Only in
    the options, never in the command template after them."""
    out = list(argv)
    i = 1  # argv[0] is "parallel"
    while i < len(out):
        word = out[i]
        if word == "--halt" and i + 1 < len(out) and out[i + 1] in ("-1", "-2"):
            out[i : i + 2] = [f"--halt={out[i + 1]}"]
        elif word in _PARALLEL_VALUED:
            i += 1
        elif not word.startswith("-") or word == "--":
            break
        i += 1
    return out


def _cmd_threads(ns: argparse.Namespace) -> int:
    from .threads import check, threads

    checked = check(ns)
    if isinstance(checked, str):
        _fail("fastjob threads", checked)
    command, least, most, exports = checked
    try:
        return threads(command, least, most, exports)
    except ValueError as exc:  # --min above the pool's size
        _fail("fastjob threads", str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastjob`` console script; returns the exit status."""
    console = argv is None  # the console script or python -m fastjob, not a caller's test
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # without building the parser: a start-up check
        sys.stdout.write(f"fastjob {__version__}\n")
        return 0
    if argv and argv[0] == "run":
        fast = parse_run_fast(argv[1:])
        if fast is not None:
            status = _run_command("run", fast)
            if console:
                _exit_now(status)
            return status
    elif argv == ["doctor"] or argv == ["doctor", "--json"]:
        return _run_command("doctor", len(argv) == 2)
    groups: list[tuple[str, list[str]]] = []
    if argv and argv[0] == "parallel":
        argv, groups = split_sources(argv)
        argv = _glue_negative_halt(argv)
    parser = build_parser(argv[0] if argv and argv[0] in ("run", "doctor", "parallel") else None)
    ns, extra = parser.parse_known_args(argv)
    if extra:
        prog = f"fastjob {ns.cmd}" if ns.cmd else "fastjob"
        what = "unsupported" if ns.cmd == "parallel" else "unrecognized"
        _fail(prog, f"{what} option {extra[0]!r}")
    if ns.cmd is None:
        parser.error("a command is required: run, doctor, parallel, threads, status or resize")
    return _run_command(ns.cmd, ns, groups)


def _exit_now(status: int) -> None:
    """End ``fastjob run`` at once: atexit handlers run and stdout/stderr are
    flushed as at a normal exit, but the interpreter's teardown (freeing
    every module and object: milliseconds, a sixth of a ``fastjob run -- true``)
    is skipped with os._exit.  Returns, for the normal exit, when a thread
    other than this one still runs (the interpreter would wait for it) or a
    flush fails (the interpreter reports that and exits 120).  The pure
    core's reaper thread does not count: it holds nothing, and only waits."""
    import threading

    others = [t for t in threading.enumerate() if t.name != "fastjob-reaper"]
    if len(others) != 1 or not _flushed():
        return
    import atexit

    atexit._run_exitfuncs()  # they run once: the list is empty afterwards
    _flushed()
    os._exit(status & 0xFF)


def _flushed() -> bool:
    """Flush stdout and stderr (None when fastjob started without them)."""
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return False
    return True


def _run_command(cmd: str, ns: Any, groups: list[tuple[str, list[str]]] | None = None) -> int:
    """Run subcommand ``cmd`` with its parsed arguments (argparse's
    Namespace; a RunArgs for the fast ``run``; the --json flag for the fast
    ``doctor``); the errors every command shares become one line."""
    try:
        if cmd == "run":
            return _cmd_run(ns)
        if cmd == "doctor" and isinstance(ns, bool):
            from .doctor import doctor

            return doctor(as_json=ns)
        if cmd in ("status", "resize"):
            from . import status

            if cmd == "status":
                return status.status(as_json=ns.json, pid=ns.pid)
            return status.resize(ns.jobs, pid=ns.pid)
        if cmd == "doctor":
            return _cmd_doctor(ns)
        if cmd == "threads":
            return _cmd_threads(ns)
        return _cmd_parallel(ns, groups or [])
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"fastjob {cmd}: error: {exc}\n")
        return 1


def _console() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    _console()
