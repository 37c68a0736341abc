"""``fastjob-rustc-wrapper``: a ``RUSTC_WRAPPER`` that gives a crate
``-Zthreads=k`` only when the build has room for it.

cargo runs ``WRAPPER RUSTC ARGS...`` holding one jobserver slot for the job.
For an invocation that compiles a crate, the wrapper counts the slots free
right now (``try_acquire_up_to``: the job's own slot plus free pool tokens, up
to ``FASTJOB_RUSTC_MAX_THREADS``, default the CPU count).  When that is more
than one and the toolchain accepts ``-Zthreads`` (nightly, or stable with
``RUSTC_BOOTSTRAP=1``; probed once per toolchain and cached), it adds
``-Zthreads=k`` and hands the extra slots straight back: rustc's own threads
take their tokens from the jobserver, so holding them here would starve
rustc itself.  Then it execs rustc (same pid, same fds, same signals).

Everything else passes through untouched: queries (``-vV``, ``--print``),
invocations that already say ``-Zthreads``, no usable jobserver.
``FASTJOB_RUSTC_THREADS_<crate>=N`` fixes one crate's count;
``FASTJOB_RUSTC_LOG=FILE`` appends one JSON line per decision.
"""

from __future__ import annotations

import os
import sys
import warnings

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: this runs per rustc call
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import NoReturn

PROBE_CACHE_VERSION = 1
_QUERY_FLAGS = ("-vV", "-V", "--version", "--print", "-h", "--help")


class UsageError(Exception):
    """A bad setting: one line on stderr, exit status 2."""


class Decision:
    """What the wrapper does with one rustc invocation."""

    __slots__ = ("crate", "free", "threads", "reason", "args")

    def __init__(
        self, crate: str | None, free: int | None, threads: int | None, reason: str, args: list[str]
    ) -> None:
        self.crate = crate
        self.free = free  # free slots beside the job's own, None when not looked at
        self.threads = threads  # the -Zthreads value added, None when nothing was added
        self.reason = reason
        self.args = args

    def as_json(self) -> str:
        import json

        return json.dumps(
            {
                "pid": os.getpid(),
                "crate": self.crate,
                "free": self.free,
                "threads": self.threads,
                "reason": self.reason,
            },
            sort_keys=True,
        )


def crate_name(args: Sequence[str]) -> str | None:
    """The crate this invocation compiles, None for a query or no crate."""
    if any(a in _QUERY_FLAGS or a.startswith("--print=") for a in args):
        return None
    for i, a in enumerate(args):
        if a == "--crate-name" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--crate-name="):
            return a.split("=", 1)[1]
    return None


def has_threads_flag(args: Sequence[str]) -> bool:
    """True when the invocation already chose its thread count."""
    for i, a in enumerate(args):
        if a.startswith("-Zthreads"):
            return True
        if a == "-Z" and i + 1 < len(args) and args[i + 1].startswith("threads"):
            return True
    return False


def _positive_int(name: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"{name}={value!r} is not a positive integer")
    return n


def _cache_path(env: Mapping[str, str]) -> str:
    base = env.get("FASTJOB_CACHE_DIR") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fastjob"
    )
    return os.path.join(base, "rustc-zthreads.json")


def _toolchain_key(rustc: str, env: Mapping[str, str]) -> str:
    """What decides whether -Zthreads is accepted: the compiler binary (a
    rustup proxy also depends on RUSTUP_TOOLCHAIN) and RUSTC_BOOTSTRAP."""
    path = rustc
    if os.sep not in rustc:
        from shutil import which

        path = which(rustc, path=env.get("PATH")) or rustc
    try:
        st = os.stat(path)
        ident = f"{os.path.realpath(path)}:{st.st_mtime_ns}:{st.st_size}"
    except OSError:
        ident = path
    return "|".join(
        (ident, env.get("RUSTUP_TOOLCHAIN", ""), env.get("RUSTC_BOOTSTRAP", ""))
    )


def accepts_threads(rustc: str, env: Mapping[str, str]) -> bool:
    """Whether this toolchain accepts ``-Zthreads``: probed once
    (``rustc -Zthreads=2 -vV``) and cached per toolchain key."""
    import json
    import subprocess

    path = _cache_path(env)
    key = _toolchain_key(rustc, env)
    cache: dict[str, bool] = {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict) and data.get("version") == PROBE_CACHE_VERSION:
            cache = {k: bool(v) for k, v in data.get("toolchains", {}).items()}
    except (OSError, ValueError):
        pass
    if key in cache:
        return cache[key]
    try:
        probe = subprocess.run(
            [rustc, "-Zthreads=2", "-vV"],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        ok = probe.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False  # not cached: a broken or missing rustc says so itself
    cache[key] = ok
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": PROBE_CACHE_VERSION, "toolchains": cache}, f)
        os.replace(tmp, path)  # atomic: parallel rustc jobs never see half a file
    except OSError:
        pass
    return ok


def decide(rustc: str, args: list[str], env: Mapping[str, str]) -> Decision:
    """The decision for one invocation (takes and returns slots; no exec)."""
    crate = crate_name(args)
    if crate is None:
        return Decision(None, None, None, "not a crate compile", args)
    if has_threads_flag(args):
        return Decision(crate, None, None, "-Zthreads given", args)
    override = env.get(f"FASTJOB_RUSTC_THREADS_{crate}")
    if override is not None:
        n = _positive_int(f"FASTJOB_RUSTC_THREADS_{crate}", override)
        if n == 1:
            return Decision(crate, None, None, "override", args)
        if not accepts_threads(rustc, env):
            return Decision(crate, None, None, "override, but rustc rejects -Zthreads", args)
        return Decision(crate, None, n, "override", [*args, f"-Zthreads={n}"])
    limit_text = env.get("FASTJOB_RUSTC_MAX_THREADS")
    limit = (
        _positive_int("FASTJOB_RUSTC_MAX_THREADS", limit_text)
        if limit_text is not None
        else os.cpu_count() or 1
    )
    from .._discovery import from_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client = from_env(env)
    if client is None:
        why = "no usable jobserver" if caught else "no jobserver"
        return Decision(crate, None, None, why, args)
    try:
        slots = client.try_acquire_up_to(limit)
        try:
            got = len(slots)
        finally:
            # Straight back: rustc's threads take their own tokens.
            slots.release()
    finally:
        client.close()
    free = max(0, got - 1)
    if got <= 1:
        return Decision(crate, free, None, "no free slot", args)
    if not accepts_threads(rustc, env):
        return Decision(crate, free, None, "rustc rejects -Zthreads", args)
    return Decision(crate, free, got, "free slots", [*args, f"-Zthreads={got}"])


def _log(env: Mapping[str, str], decision: Decision) -> None:
    path = env.get("FASTJOB_RUSTC_LOG")
    if not path:
        return
    line = (decision.as_json() + "\n").encode()
    # One write of an O_APPEND file: lines of parallel jobs never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console script entry point: ``fastjob-rustc-wrapper RUSTC ARGS...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(
            "usage: fastjob-rustc-wrapper RUSTC [ARGS...]  "
            "(set RUSTC_WRAPPER=fastjob-rustc-wrapper for cargo)",
            file=sys.stderr,
        )
        sys.exit(2)
    rustc, rest = args[0], args[1:]
    env = os.environ
    try:
        decision = decide(rustc, rest, env)
        _log(env, decision)
    except UsageError as exc:
        print(f"fastjob-rustc-wrapper: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        print(f"fastjob-rustc-wrapper: cannot write FASTJOB_RUSTC_LOG: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        if sys.platform == "win32":
            # No real exec there (the parent would exit at once): wait for it.
            import subprocess

            sys.exit(subprocess.call([rustc, *decision.args]))
        os.execvp(rustc, [rustc, *decision.args])
    except OSError as exc:
        print(f"fastjob-rustc-wrapper: cannot run {rustc}: {exc.strerror}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()
