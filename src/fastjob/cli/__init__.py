"""The ``fastjob`` command line (also ``python -m fastjob``).

Argument parsing only; each subcommand's logic lives in a ``_cli_*`` module.
Bad input is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from .._version import __version__

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
  (at most 101); 2 for bad usage."""

RUN_DESCRIPTION = """\
Run COMMAND under a jobserver.  When this process inherited one (it runs in
a recipe of make -jN, under cargo, or under another fastjob) and -j is not
given, COMMAND joins it and runs in this process's job slot.  Otherwise a
new pool of N slots is created (N-1 tokens plus COMMAND's implicit one) and
named to COMMAND in MAKEFLAGS and MFLAGS; a pipe pool's
file descriptors are inherited by COMMAND.

COMMAND runs in its own process group; SIGINT, SIGTERM and SIGHUP sent to
fastjob are forwarded to that group.  When it exits, a new pool is counted
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
Run shell commands in parallel through the jobserver, like xargs -P or GNU
parallel.  Each input line is one command; with COMMAND_TEMPLATE, each
argument after ::: (or each input line) is shell-quoted into every {} of
the template.  Commands take their job slots from the inherited jobserver
(so `+fastjob parallel < cmds.txt` in a Makefile shares make's -j budget)
or from a new pool of N slots, and every command gets the pool, so a
make or cargo inside one shares it too.

The output of each command is kept together, written when it ends (stdout
to stdout, stderr to stderr).  On a terminal a progress line shows done,
running, failed and the ETA.  After the first failure no new command is
started (those running finish) unless --keep-going.  Ctrl-C (SIGINT),
SIGTERM and SIGHUP are forwarded to every running command; a second one
kills them; every token is returned."""

PARALLEL_EPILOG = """\
examples:
  fastjob parallel -j4 'gzip -9 {}' ::: *.log
  find . -name '*.c' | fastjob parallel 'cc -c {}'
  fastjob parallel --keep-going < cmds.txt
  in a Makefile:   +fastjob parallel -a cmds.txt

exit status:
  the number of failed commands (at most 101), 128+N after signal N,
  2 for bad usage."""


class _Parser(argparse.ArgumentParser):
    """Errors are one line: "fastjob run: error: ... (see --help)"."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _jobs(text: str) -> int:
    try:
        n = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of jobs") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the number of jobs must be at least 1")
    return n


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=30)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, for --help and for tests."""
    p = _Parser(
        prog="fastjob",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_formatter,
    )
    p.add_argument("--version", action="version", version=f"fastjob {__version__}")
    sub = p.add_subparsers(
        dest="cmd", metavar="COMMAND", title="commands", parser_class=_Parser
    )

    run = sub.add_parser(
        "run",
        help="run one command under a jobserver (joined or new)",
        usage="fastjob run [-j N] [--style pipe|fifo] [--trace FILE.json] [--report FILE.html] -- COMMAND [ARG...]",
        description=RUN_DESCRIPTION,
        epilog=RUN_EPILOG,
        formatter_class=_formatter,
    )
    run.add_argument(
        "-j", "--jobs", type=_jobs, metavar="N",
        help="create a new pool of N job slots (default: join the inherited "
        "jobserver, else N = the number of CPUs)",
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
    run.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    doc = sub.add_parser(
        "doctor",
        help="explain the jobserver this process would see, and how to fix it",
        description=DOCTOR_DESCRIPTION,
        epilog=DOCTOR_EPILOG,
        formatter_class=_formatter,
    )
    doc.add_argument("--json", action="store_true", help="print one JSON object for machines")

    par = sub.add_parser(
        "parallel",
        help="run many shell commands through the jobserver, like xargs -P",
        usage="fastjob parallel [-j N] [--keep-going] [--progress|--no-progress] [--tag]\n"
        "                        [-a FILE] [--trace FILE.json] [--report FILE.html]\n"
        "                        [COMMAND_TEMPLATE ...] [::: ARG ...]",
        description=PARALLEL_DESCRIPTION,
        epilog=PARALLEL_EPILOG,
        formatter_class=_formatter,
    )
    par.add_argument(
        "-j", "--jobs", type=_jobs, metavar="N",
        help="run in a new pool of N job slots (default: join the inherited "
        "jobserver, else N = the number of CPUs)",
    )
    par.add_argument(
        "-k", "--keep-going", action="store_true",
        help="start every command even after failures (default: stop starting new "
        "ones after the first)",
    )
    par.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show done / running / failed / ETA on stderr (default: only when "
        "stderr is a terminal)",
    )
    par.add_argument(
        "--tag", action="store_true",
        help="prefix each output line with the argument (or command) and a tab",
    )
    par.add_argument(
        "-a", "--arg-file", metavar="FILE",
        help="read input lines from FILE instead of standard input",
    )

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
    par.add_argument("template", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    from .threads import add_parser as add_threads_parser

    add_threads_parser(sub, _formatter)
    return p


def _fail(prog: str, message: str) -> NoReturn:
    sys.stderr.write(f"{prog}: error: {message} (see '{prog} --help')\n")
    raise SystemExit(2)


def _cmd_run(ns: argparse.Namespace) -> int:
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
    return run(command, ns.jobs, ns.style, hooks=hooks)


def _cmd_doctor(ns: argparse.Namespace) -> int:
    from .doctor import doctor

    return doctor(as_json=ns.json)


def _cmd_parallel(ns: argparse.Namespace, args: list[str] | None) -> int:
    from .parallel import Spec, build_commands, parallel

    template = list(ns.template)
    if template and template[0] == "--":
        template = template[1:]
    if template and template[0].startswith("-"):
        _fail("fastjob parallel", f"unrecognized option {template[0]!r}")
    lines: list[str] | None = None
    if args is None:
        if ns.arg_file is not None:
            try:
                with open(ns.arg_file, "rb") as f:
                    data = f.read()
            except OSError as exc:
                _fail("fastjob parallel", f"cannot read {ns.arg_file}: {exc.strerror}")
        else:
            if sys.stdin is None or sys.stdin.closed:
                data = b""
            else:
                if sys.stdin.isatty():
                    sys.stderr.write("fastjob parallel: reading commands from the terminal "
                                     "(end with Ctrl-D)\n")
                data = sys.stdin.buffer.read()
        lines = os.fsdecode(data).splitlines()
    elif ns.arg_file is not None:
        _fail("fastjob parallel", "give ARGS after ::: or --arg-file, not both")
    try:
        commands, tags = build_commands(template, args, lines)
    except ValueError as exc:
        _fail("fastjob parallel", str(exc))
    if any(not c.strip() for c in commands):
        _fail("fastjob parallel", "a command is empty")
    progress = ns.progress if ns.progress is not None else os.isatty(2)
    spec = Spec(
        commands, tags, jobs=ns.jobs, keep_going=ns.keep_going, progress=progress, tag=ns.tag
    )
    if ns.trace or ns.report:
        from .tracing import CliTrace

        tracer = CliTrace(ns.trace, ns.report, "fastjob parallel")
        spec.on_start.append(lambda pool: tracer.start(pool, implicit=None))
        spec.on_job.append(tracer.job)
        spec.on_stop.append(lambda pool: tracer.stop())
    return parallel(spec)


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
    argv = list(sys.argv[1:] if argv is None else argv)
    args: list[str] | None = None
    if argv and argv[0] == "parallel" and ":::" in argv:
        cut = argv.index(":::")
        argv, args = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if extra:
        prog = f"fastjob {ns.cmd}" if ns.cmd else "fastjob"
        _fail(prog, f"unrecognized option {extra[0]!r}")
    if ns.cmd is None:
        parser.error("a command is required: run, doctor, parallel or threads")
    try:
        if ns.cmd == "run":
            return _cmd_run(ns)
        if ns.cmd == "doctor":
            return _cmd_doctor(ns)
        if ns.cmd == "threads":
            return _cmd_threads(ns)
        return _cmd_parallel(ns, args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"fastjob {ns.cmd}: error: {exc}\n")
        return 1


def _console() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    _console()
