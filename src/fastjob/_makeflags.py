"""Parse and format the jobserver part of MAKEFLAGS.  Pure: no I/O.

The forms accepted are those real tools write (see PROTOCOL.md):
``--jobserver-auth=R,W``, ``--jobserver-fds=R,W``, ``fifo:PATH``, a Windows
semaphore name; the last ``--jobserver-auth`` wins and ``--jobserver-fds`` is
the fallback spelling; negative fds mean "disabled on purpose".
"""

from __future__ import annotations

import os
import re
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing

from ._errors import InvalidAuthError

if TYPE_CHECKING:  # annotations only: keep this module cheap to import
    from collections.abc import Mapping
    from typing import Literal

    Style = Literal["pipe", "fifo", "sem"]

#: Variables that can name a jobserver, in order of preference.
JOBSERVER_VARIABLES = ("CARGO_MAKEFLAGS", "MAKEFLAGS", "MFLAGS")

# The patterns are compiled on first use (re's cache keeps them): most
# processes that import this module (every ``fastjob run``) parse no MAKEFLAGS,
# and compiling them all at import cost about a millisecond.
_FD_PAIR = r"(-?[0-9]+),(-?[0-9]+)"
_MAX_FD = 2**31 - 1
_FLAG_CLUSTER = r"[A-Za-z]+"
_AUTH_OPTIONS = ("--jobserver-auth=", "--jobserver-fds=")


class JobserverAuth:
    """A jobserver as named by MAKEFLAGS.

    ``style`` is "pipe" (``read_fd``/``write_fd``), "fifo" (``path``) or
    "sem" (``name``, a Windows semaphore).  ``jobs`` is the number given
    with ``-j`` (None when ``-j`` had no number or was absent); ``dry_run`` is
    True when the flag cluster holds ``n``; ``text`` is the option's value.

    Immutable and hashable; equal when every field is equal.  (A plain
    class with ``__slots__`` rather than a dataclass: importing dataclasses
    costs more than this whole module.)
    """

    __slots__ = ("style", "read_fd", "write_fd", "path", "name", "jobs", "dry_run", "flags", "text")

    style: Style
    read_fd: int | None
    write_fd: int | None
    path: str | None
    name: str | None
    jobs: int | None
    dry_run: bool
    flags: str
    text: str

    def __init__(
        self,
        style: Style,
        read_fd: int | None = None,
        write_fd: int | None = None,
        path: str | None = None,
        name: str | None = None,
        jobs: int | None = None,
        dry_run: bool = False,
        flags: str = "",
        text: str = "",
    ) -> None:
        init = object.__setattr__  # the instance is frozen: bypass our __setattr__
        init(self, "style", style)
        init(self, "read_fd", read_fd)
        init(self, "write_fd", write_fd)
        init(self, "path", path)
        init(self, "name", name)
        init(self, "jobs", jobs)
        init(self, "dry_run", dry_run)
        init(self, "flags", flags)
        init(self, "text", text)

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, f) for f in self.__slots__)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: JobserverAuth is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: JobserverAuth is immutable")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, JobserverAuth)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"JobserverAuth({fields})"

    def __reduce__(self) -> tuple[type[JobserverAuth], tuple[object, ...]]:
        return (JobserverAuth, self._fields())  # pickle/copy without __setattr__

    @property
    def fds(self) -> tuple[int, int] | None:
        """(read_fd, write_fd) for pipe style, else None."""
        if self.read_fd is None or self.write_fd is None:
            return None
        return (self.read_fd, self.write_fd)


class ParsedFlags:
    """Everything the parser found, including a deliberately disabled server."""

    __slots__ = ("auth", "disabled", "jobs", "dry_run", "flags")

    def __init__(
        self, auth: JobserverAuth | None, disabled: bool, jobs: int | None, dry_run: bool, flags: str
    ) -> None:
        self.auth = auth
        self.disabled = disabled
        self.jobs = jobs
        self.dry_run = dry_run
        self.flags = flags

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"ParsedFlags({fields})"


# A word: escaped characters (a backslash and any next one) and characters
# other than space, tab, newline; a backslash at the very end is literal.
_WORD = r"(?s)(?:[^ \t\n\\]+|\\.|\\\Z)+"
_PLAIN_WORD = r"[^ \t\n]+"
_ESCAPE = r"(?s)\\(.)"


def _tokens(value: str) -> list[tuple[str, str]]:
    """(as written, unescaped) for each word: words end at unescaped
    spaces, tabs and newlines; a backslash escapes the next character (make
    drops the backslash before any character)."""
    if "\\" not in value:  # the usual case: nothing is escaped
        return [(w, w) for w in re.findall(_PLAIN_WORD, value)]
    unescape = re.compile(_ESCAPE).sub
    return [(w, unescape(r"\1", w) if "\\" in w else w) for w in re.findall(_WORD, value)]


def split_words(value: str) -> list[str]:
    """Split at unescaped spaces/tabs/newlines; a backslash escapes the next
    character."""
    return [word for _, word in _tokens(value)]


def _parse_jobs(text: str, value: str) -> int | None:
    if text == "":
        return None
    if not text.isascii() or not text.isdigit():
        raise InvalidAuthError(
            f"invalid -j value {text!r} in {value!r}: expected a positive number"
        )
    return int(text)


def scan_makeflags(value: str | bytes) -> ParsedFlags:
    """Parse MAKEFLAGS fully; raises InvalidAuthError for a malformed auth."""
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if not isinstance(value, str):
        raise InvalidAuthError(f"MAKEFLAGS must be a string, not {type(value).__name__}")
    words = split_words(value)
    flags = ""
    # make writes its single-letter flags first, without a dash ("k", "kw", "n");
    # a leading space means there were none.
    if words and not value.startswith((" ", "\t")) and re.fullmatch(_FLAG_CLUSTER, words[0]):
        flags = words.pop(0)
    jobs: int | None = None
    auth_text: str | None = None
    fds_text: str | None = None
    i = 0
    while i < len(words):
        w = words[i]
        i += 1
        if w == "--":
            break  # variable overrides follow: never options
        if w.startswith("--jobserver-auth="):
            auth_text = w[len("--jobserver-auth=") :]
        elif w.startswith("--jobserver-fds="):
            fds_text = w[len("--jobserver-fds=") :]
        elif w.startswith("--jobs="):
            jobs = _parse_jobs(w[len("--jobs=") :], value)
        elif w == "--jobs" or w == "-j":
            if i < len(words) and words[i].isascii() and words[i].isdigit():
                jobs = int(words[i])
                i += 1
        elif w.startswith("-j") and not w.startswith("--"):
            jobs = _parse_jobs(w[2:], value)
        elif w.startswith("-") and not w.startswith("--") and "n" in w[1:] and w[1:].isalpha():
            flags += "n"  # MFLAGS style: "-n"
    dry_run = "n" in flags
    chosen = auth_text if auth_text is not None else fds_text
    if chosen is None:
        return ParsedFlags(None, False, jobs, dry_run, flags)
    auth = _parse_auth(chosen, value, jobs, dry_run, flags)
    return ParsedFlags(auth, auth is None, jobs, dry_run, flags)


def _parse_auth(
    text: str, value: str, jobs: int | None, dry_run: bool, flags: str
) -> JobserverAuth | None:
    if "\0" in text:
        raise InvalidAuthError(f"jobserver option {text!r} contains a NUL byte")
    if text == "":
        raise InvalidAuthError(f"empty jobserver option in {value!r}")
    if text.startswith("fifo:"):
        path = text[5:]
        if not path:
            raise InvalidAuthError(f"jobserver option {text!r} names no FIFO path")
        return JobserverAuth("fifo", path=path, jobs=jobs, dry_run=dry_run, flags=flags, text=text)
    m = re.fullmatch(_FD_PAIR, text)
    if m:
        r, w = int(m.group(1)), int(m.group(2))
        if r < 0 or w < 0:
            return None  # "-2,-2": disabled on purpose
        if r > _MAX_FD or w > _MAX_FD:
            raise InvalidAuthError(f"jobserver option {text!r}: fd number out of range")
        return JobserverAuth(
            "pipe", read_fd=r, write_fd=w, jobs=jobs, dry_run=dry_run, flags=flags, text=text
        )
    if "," in text or text[0] in "-+0123456789" or not text.isprintable():
        raise InvalidAuthError(
            f"jobserver option {text!r} is neither 'R,W' (two fd numbers), "
            "'fifo:PATH' nor a semaphore name"
        )
    return JobserverAuth("sem", name=text, jobs=jobs, dry_run=dry_run, flags=flags, text=text)


def parse_makeflags(value: str | bytes) -> JobserverAuth | None:
    """The jobserver named by a MAKEFLAGS value, or None (none named, or
    disabled on purpose with negative fds).  Pure: does no I/O.

    >>> parse_makeflags(" -j4 --jobserver-auth=3,4")
    JobserverAuth(style='pipe', read_fd=3, write_fd=4, path=None, name=None, jobs=4, dry_run=False, flags='', text='3,4')
    """
    return scan_makeflags(value).auth


def escape(text: str) -> str:
    """Escape spaces and backslashes as make does inside MAKEFLAGS."""
    out = text.replace("\\", "\\\\").replace(" ", "\\ ").replace("\t", "\\\t")
    return out.replace("\n", "\\\n")  # the parser splits at newlines too


def auth_option_text(auth: JobserverAuth) -> str:
    """The value after ``--jobserver-auth=`` for auth."""
    if auth.style == "pipe":
        return f"{auth.read_fd},{auth.write_fd}"
    if auth.style == "fifo":
        return f"fifo:{auth.path}"
    return str(auth.name)


def format_makeflags(auth: JobserverAuth, jobs: int | None = None, *, mflags: bool = False) -> str:
    """MAKEFLAGS (or MFLAGS) text naming auth, readable by every consumer.

    Pipe style writes both ``--jobserver-fds`` (make <= 4.1) and
    ``--jobserver-auth`` (make >= 4.2, cargo, ninja); the latter comes last
    so it wins.
    """
    j = jobs if jobs is not None else auth.jobs
    jflag = f"-j{j}" if j is not None else "-j"
    opt = escape(auth_option_text(auth))
    parts = [jflag]
    if auth.style == "pipe":
        parts.append(f"--jobserver-fds={opt}")
    parts.append(f"--jobserver-auth={opt}")
    text = " ".join(parts)
    return text if mflags else " " + text


def jobserver_env(auth: JobserverAuth, jobs: int | None = None) -> dict[str, str]:
    """MAKEFLAGS and MFLAGS for a child that joins auth.

    Never CARGO_MAKEFLAGS: readers look at it first and make never rewrites
    it, so below a child ``make -jN`` (a new pool) it would still name this
    one.  cargo reads MAKEFLAGS and sets CARGO_MAKEFLAGS for its own children.
    """
    return {
        "MAKEFLAGS": format_makeflags(auth, jobs),
        "MFLAGS": format_makeflags(auth, jobs, mflags=True),
    }


def child_environment(
    base: Mapping[str, str] | None, auth: JobserverAuth | None, jobs: int | None = None
) -> dict[str, str]:
    """The environment of a child process: ``base`` (or os.environ) copied,
    without CARGO_MAKEFLAGS (it may name a pool the child is not in), and

    - auth given: MAKEFLAGS and MFLAGS name that pool (with ``-j jobs``);
    - auth None: the child is isolated: no jobserver and no ``-j`` in
      MAKEFLAGS/MFLAGS (their other flags and overrides are kept).
    """
    env = dict(os.environ if base is None else base)
    env.pop("CARGO_MAKEFLAGS", None)
    if auth is not None:
        env.update(jobserver_env(auth, jobs))
        return env
    for var in ("MAKEFLAGS", "MFLAGS"):
        if var in env:
            stripped = strip_jobserver(env[var], parallelism=True).strip()
            if stripped and stripped != "--":
                env[var] = stripped
            else:
                del env[var]
    return env


_JOBS_WORD = r"(?:-j[0-9]*|--jobs(?:=.*)?)"


def strip_jobserver(value: str, *, parallelism: bool = False) -> str:
    """value without its jobserver options (for a child that must not join);
    with ``parallelism=True`` also without ``-j``/``-jN``/``--jobs[=N]``.

    Words are recognised as :func:`scan_makeflags` reads them (escapes
    removed: make reads ``--\\jobserver-auth=3,4`` as the option), and the
    ones kept are written as they were; the overrides after `` -- `` are
    untouched.
    """
    words = _tokens(value)
    kept: list[str] = []
    skip_number = False
    for i, (raw, word) in enumerate(words):
        if skip_number:
            skip_number = False
            if word.isascii() and word.isdigit():
                continue  # the N of "-j N" / "--jobs N"
        if word == "--":
            kept.extend(r for r, _ in words[i:])
            break
        if word.startswith(_AUTH_OPTIONS):
            continue
        if parallelism and re.fullmatch(_JOBS_WORD, word):
            skip_number = word in ("-j", "--jobs")
            continue
        kept.append(raw)
    return " ".join(kept)
