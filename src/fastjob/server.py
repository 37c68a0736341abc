"""Server: create a pool of ``jobs - 1`` tokens and hand it to children."""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import warnings
import weakref
from types import FrameType, TracebackType

from . import _io
from ._errors import JobserverError, TokenLeakWarning, UnsupportedPlatformError, warn_at_caller
from ._makeflags import JobserverAuth, child_environment
from ._core.transport import FifoTransport, PipeTransport, Transport
TYPE_CHECKING = False  # typing.TYPE_CHECKING; the governor is imported when used
if TYPE_CHECKING:
    from typing import Any

    from ._governor import Governor, Limits
    from ._statistics import ServerStatistics
from ._pool_size import PoolSize
from ._control import private_dir  # tempfile.mkdtemp without importing tempfile
from .client import Client, _live_clients

__all__ = ["Server"]

FIFO_NAME = "jobserver.fifo"  # inside a fresh 0700 fastjob-* directory
TOKEN_BYTE = ord("+")  # what make writes; clients echo whatever they read
if sys.platform != "win32":  # fcntl does not exist on Windows
    import fcntl

    _F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


#: Tests only: a stand-in for the Windows semaphore calls (a
#: fastjob._core.sem.SemaphoreAPI).  When set, style="sem" pools use it, on
#: any platform.
_sem_api: Any = None


def default_style() -> str:
    return "sem" if sys.platform == "win32" else "pipe"


class Server:
    """A jobserver pool of ``jobs`` slots: ``jobs - 1`` tokens in the pool plus
    the implicit one, held by ``server.client``.

    ``style`` is "pipe" (POSIX default: every make, ninja and cargo reads it),
    "fifo" (make >= 4.4, ninja >= 1.13; a 0600 FIFO in a fresh 0700
    directory) or "sem" (Windows).

    ``limits`` (a :class:`fastjob.Limits`) starts a governor that lowers the
    size allowed while the machine is overloaded or short of memory, and
    raises it back afterwards (see docs/governor.md).
    """

    def __init__(
        self, jobs: int | None = None, style: str | None = None, limits: Limits | None = None
    ) -> None:
        if jobs is None:
            jobs = os.cpu_count() or 1
        if isinstance(jobs, bool) or not isinstance(jobs, int):
            raise TypeError(f"jobs must be an int, not {type(jobs).__name__}")
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1 (got {jobs}): a pool needs one slot")
        style = default_style() if style is None else style
        if style not in ("pipe", "fifo", "sem"):
            raise ValueError(f"style must be 'pipe', 'fifo' or 'sem', not {style!r}")
        self.jobs = jobs
        self.style = style
        self._fds: list[int] = []
        self._dir: str | None = None
        self._path: str | None = None
        self._pid = os.getpid()
        self._closed = True  # until the pool exists: nothing for close() or __del__
        self._transport: Transport
        self._control: Any = None
        self._governor: Governor | None = None
        if limits is not None:
            from ._governor import Governor, Limits
        if limits is not None and not isinstance(limits, Limits):
            raise TypeError(f"limits must be a fastjob.Limits, not {type(limits).__name__}")
        try:
            if style == "pipe":
                self._make_pipe()
            elif style == "fifo":
                self._make_fifo()
            else:
                self._make_sem()
        except BaseException:
            self._closed = True  # nothing for __del__ to do
            # fds first: removing the directory must work under EMFILE too.
            transport = getattr(self, "_transport", None)
            if transport is not None:
                transport.close()
            for fd in self._fds:
                os.close(fd)
            self._fds = []
            self._cleanup_files()
            raise
        self._closed = False
        # The client keeps its server alive: the pool's fds are the server's,
        # and the finalizer below must not close them under a client in use.
        setattr(self.client, "_server", self)
        self._size = PoolSize(self._transport, jobs, self._put_tokens, self._set_jobs)
        if limits is not None:
            self._governor = Governor(limits, self._size)
            try:
                self._governor.start()
            except BaseException:  # e.g. its warning turned into an error
                self.close()
                raise

    # -- creation ---------------------------------------------------------------
    def _fill(self, fd: int) -> None:
        need = self.jobs - 1
        if need == 0:
            return
        os.set_blocking(fd, False)
        try:
            put = _io.fill(fd, TOKEN_BYTE, need)
        finally:
            os.set_blocking(fd, True)
        if put < need:
            raise ValueError(
                f"jobs={self.jobs} needs {need} tokens but the pipe holds only {put}; "
                "use fewer jobs (or raise /proc/sys/fs/pipe-max-size)"
            )

    def _grow(self, fd: int) -> None:
        # Linux pipes hold 64 KiB; a bigger pool needs a bigger pipe.
        if self.jobs - 1 > 65536 and sys.platform.startswith("linux"):
            try:
                fcntl.fcntl(fd, _F_SETPIPE_SZ, self.jobs)
            except OSError:
                pass

    def _make_pipe(self) -> None:
        if sys.platform == "win32":
            raise UnsupportedPlatformError(
                "style='pipe' is the POSIX jobserver (inherited pipe fds); on Windows "
                "use style='sem' (the default there: a named semaphore, as make for "
                "Windows makes)"
            )
        r, w = os.pipe()  # close-on-exec: only children given pass_fds see it
        self._fds = [r, w]
        self._grow(w)
        self._fill(w)
        # (close() shuts the client, so its transport, before these fds)
        self._transport = PipeTransport(r, w, owned=False, private_writer=True)
        self.client = Client(self._transport, jobs=self.jobs, source="fastjob.Server")

    def _make_fifo(self) -> None:
        if not hasattr(os, "mkfifo"):
            raise UnsupportedPlatformError("FIFO jobservers need POSIX mkfifo()")
        self._dir = private_dir()  # 0700, owned by us
        self._path = os.path.join(self._dir, FIFO_NAME)
        os.mkfifo(self._path, 0o600)
        _register_cleanup(self)
        # Our own descriptions keep the FIFO (and its tokens) alive.
        flags = os.O_NONBLOCK | os.O_CLOEXEC
        r = os.open(self._path, os.O_RDONLY | flags)
        self._fds = [r]
        w = os.open(self._path, os.O_WRONLY | flags)
        self._fds.append(w)
        self._grow(w)
        os.set_blocking(w, True)
        self._fill(w)
        self._transport = FifoTransport(self._path, owner=True)
        self.client = Client(self._transport, jobs=self.jobs, source="fastjob.Server")

    def _make_sem(self) -> None:
        if sys.platform != "win32" and _sem_api is None:
            raise UnsupportedPlatformError(
                "style='sem' is the Windows jobserver (a named semaphore); "
                "use 'pipe' or 'fifo' on POSIX"
            )
        from ._core.sem import create_semaphore_pool

        self._transport, self._sem_name = create_semaphore_pool(self.jobs, api=_sem_api)
        self.client = Client(self._transport, jobs=self.jobs, source="fastjob.Server")

    # -- size ----------------------------------------------------------------------
    def resize(self, jobs: int) -> None:
        """Set the pool's size to ``jobs`` slots (the implicit one included, as
        in ``Server(jobs)``).  Growing writes tokens at once; shrinking takes
        free tokens back and withholds the others as their holders return
        them: it never takes a token from a holder and never blocks.  New
        children see ``-j<jobs>``.  ValueError for ``jobs < 1`` or more
        tokens than the pipe holds."""
        self._size.resize(jobs)

    @property
    def withheld(self) -> int:
        """Tokens the server holds out of circulation now (resize or limits)."""
        return self._size.withheld

    @property
    def limits(self) -> Limits | None:
        """The governor's limits, or None."""
        return None if self._governor is None else self._governor.limits

    def statistics(self) -> ServerStatistics:
        """A frozen snapshot: ``jobs`` asked for, ``effective`` allowed now,
        ``free`` tokens in the pool (None if unknowable), ``withheld``, and
        ``limited_by``: the limits holding slots back now ("load", "memory",
        "memory-pressure", "cpu-pressure"; "memory" also while a pool with
        little room above its memory floor starts slowly: docs/governor.md)."""
        err = self._size.error or (self._governor.error if self._governor else None)
        if err is not None:
            raise JobserverError(f"the pool's resize or governor thread failed: {err!r}")
        from ._statistics import ServerStatistics

        return ServerStatistics(
            jobs=self.jobs,
            effective=self._size.effective,
            free=None if self._closed else self._transport.available(),
            withheld=self._size.withheld,
            limited_by=self._size.limited_by,
        )

    def serve_control(self) -> str:
        """Start the control socket that ``fastjob status`` / ``fastjob resize``
        talk to (idempotent); returns its path, which children find in
        FASTJOB_CONTROL (see :meth:`control_env`)."""
        if self._control is None:
            from ._control import ControlServer

            if self._dir is None:
                self._dir = private_dir()  # 0700, owned by us
                _register_cleanup(self)
            self._control = ControlServer(self._dir, self._control_info, self.resize)
        return str(self._control.path)

    def control_env(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` with FASTJOB_CONTROL naming this pool's control socket
        (started if needed)."""
        env["FASTJOB_CONTROL"] = self.serve_control()
        return env

    def _control_info(self) -> dict[str, Any]:
        st = self.statistics()
        return {
            "style": self.style, "jobs": st.jobs, "effective": st.effective, "free": st.free,
            "withheld": st.withheld, "limited_by": list(st.limited_by),
            "owner_pid": self._pid, "identity": _identity(self._transport),
        }

    def _set_jobs(self, jobs: int) -> None:
        # what new children see as -jN
        self.jobs = jobs
        self.client._jobs = jobs

    def _put_tokens(self, n: int) -> int:
        """Write up to ``n`` new tokens without blocking; how many fit."""
        if self.style == "sem":
            return self._release_tokens(n)
        wfd = self._fds[1]
        if sys.platform.startswith("linux"):
            circulating = self._size.total - self._size.withheld + n
            if circulating > 65536:
                try:
                    fcntl.fcntl(wfd, _F_SETPIPE_SZ, circulating)
                except OSError:
                    pass
        # O_NONBLOCK on our write end only: a full pipe gives a short count
        # instead of blocking (readers never see the flag).
        os.set_blocking(wfd, False)
        try:
            return int(_io.fill(wfd, TOKEN_BYTE, n))
        finally:
            os.set_blocking(wfd, True)

    def _release_tokens(self, n: int) -> int:
        """Release ``n`` new counts into the semaphore; how many fit (its
        maximum is far above any pool, see _core.sem.SEM_MAX_COUNT)."""
        put = 0
        for _ in range(n):
            try:
                self._transport.write(TOKEN_BYTE)
            except JobserverError:  # at the maximum count
                break
            put += 1
        return put

    # -- for children ------------------------------------------------------------
    @property
    def auth(self) -> JobserverAuth:
        """The pool as MAKEFLAGS names it."""
        return self._transport.auth()

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default os.environ), copied, with MAKEFLAGS and MFLAGS
        naming this pool and without CARGO_MAKEFLAGS (see
        :func:`fastjob._makeflags.child_environment`)."""
        return child_environment(base, self.auth, self.jobs)

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """fds a child must inherit (pipe style); () for fifo and sem."""
        return self._transport.pass_fds

    @property
    def path(self) -> str | None:
        """The FIFO path (fifo style), else None."""
        return self._path

    # -- accounting --------------------------------------------------------------
    def available(self) -> int:
        """Tokens in the pool right now."""
        n = self._transport.available()
        if n is None:
            raise JobserverError("cannot count the tokens of this pool")
        return n

    def expected(self) -> int:
        """Tokens that should be in the pool given what this process holds."""
        return self._size.total - self._size.withheld - self._held_here()

    def _held_here(self) -> int:
        """Pool tokens held by every live client of this pool in this process
        (``server.client`` and any other Client opened on the same pool)."""
        key = self.client._pool_key
        n = 0
        for c in list(_live_clients):
            if c._pool_key == key and not c.closed:
                n += c._pool_tokens_held()
        return n

    def reconcile(self) -> int:
        """Restore the pool to exactly ``jobs - 1`` tokens (only valid when no
        child is running and this process holds no pool token).  Returns the
        correction: > 0 tokens were lost (killed children) and are put back,
        < 0 extra tokens (a child wrote more than it read) were removed."""
        held = self._held_here()
        if held:
            raise JobserverError(
                f"reconcile() needs every pool token back: this process still holds {held}"
            )
        with self._size.quiet():  # withheld tokens count as present; none in transit
            missing = self._size.total - self._size.withheld - self.available()
            if self.style == "sem":
                self._fix_sem(missing)
            else:
                self._fix(self._fds[1], self._transport.read_fd, missing)
        self._size.set_cap(self._size._cap, self._size._limited_by)  # withhold again
        return missing

    def _fix(self, wfd: int, rfd: int, missing: int) -> None:
        if missing > 0:
            os.set_blocking(wfd, False)
            try:
                _io.fill(wfd, TOKEN_BYTE, missing)
            finally:
                os.set_blocking(wfd, True)
        elif missing < 0:
            extra = -missing
            while extra > 0:
                got = _read_some(rfd, extra)
                if got == 0:
                    break
                extra -= got

    def _fix_sem(self, missing: int) -> None:
        if missing > 0:
            self._release_tokens(missing)
        else:
            for _ in range(-missing):
                if self._transport.try_read() == _io.AGAIN:
                    break

    def close(self) -> None:
        """Check the pool (TokenLeakWarning when tokens are missing, like make's
        "INTERNAL: Exiting with N jobserver tokens available; should be M!"),
        then close it and remove the FIFO."""
        if self._closed:
            return
        self._closed = True
        self._stop_services()
        try:
            if os.getpid() == self._pid:
                off = self._imbalance()
                if off:
                    expected = self.expected()  # withheld and held here left out
                    if off > 0:
                        why = f"{off} jobserver token(s) were not returned"
                        cause = "a child probably died holding them"
                    else:
                        why = f"the pool has {-off} jobserver token(s) more than it was made with"
                        cause = (
                            "a process gave back tokens it never took, so more jobs "
                            "than the pool's size could run"
                        )
                    warn_at_caller(
                        f"fastjob: {why} (pool {expected - off}, expected {expected}); {cause}",
                        TokenLeakWarning,
                    )
        finally:
            self._free()

    def _stop_services(self) -> None:
        """Stop the governor and the control socket; no more resizing."""
        if self._governor is not None:
            self._governor.stop()
        if self._control is not None:
            self._control.close()
        self._size.close()

    def _free(self) -> None:
        """Close the client and the pool's fds, remove the FIFO directory."""
        self._size.give_back_all()
        self.client._shutdown()
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []
        self._cleanup_files()

    def __del__(self) -> None:
        # Garbage collected without close() (its client is gone too): free
        # the fds and the FIFO directory, with a ResourceWarning, as the
        # standard library does for files.  A forked child's copy owns nothing.
        if getattr(self, "_closed", True) or os.getpid() != self._pid:
            return
        self._closed = True
        what = repr(self)
        try:
            self._stop_services()
            self._free()
        finally:
            if sys.is_finalizing():
                return  # interpreter exit: the fds go anyway, warnings may be gone
            warnings.warn(
                f"unclosed {what}: call close() or use 'with fastjob.Server(...)'",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )

    def _imbalance(self) -> int:
        """Tokens missing from the pool (> 0) or too many in it (< 0), as
        make checks at exit ("Exiting with N jobserver tokens available;
        should be M!"); 0 when exact or unknown."""
        try:
            have = self.available()
        except JobserverError:
            return 0
        return self.expected() - have

    def _cleanup_files(self) -> None:
        if self._dir is not None and os.getpid() == self._pid:
            _remove_dir(self._dir)
            _unregister_cleanup(self)
            self._dir = None

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self._path if self._path else ",".join(map(str, self.pass_fds))
        return f"<fastjob.Server jobs={self.jobs} style={self.style} {where}>"


def _remove_dir(path: str) -> None:
    """Remove a Server's FIFO directory without opening a descriptor
    (shutil.rmtree opens the directory, which fails, silently with
    ignore_errors, when the process is out of fds: the EMFILE case)."""
    try:
        os.unlink(os.path.join(path, FIFO_NAME))
    except OSError:
        pass
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        import shutil  # only here: it imports bz2, lzma (start-up time)

        shutil.rmtree(path, ignore_errors=True)  # someone put more files there


def _identity(transport: Transport) -> list[Any] | None:
    """The pool's identity as JSON (compared by ``fastjob status``)."""
    ident = transport.identity()
    return list(ident) if isinstance(ident, tuple) else None


def _read_some(fd: int, n: int) -> int:
    try:
        return len(os.read(fd, n))
    except BlockingIOError:
        return 0


# -- FIFO cleanup on exit and on SIGTERM/SIGHUP --------------------------------------
_cleanup_lock = threading.Lock()
_fifo_servers: weakref.WeakSet[Server] = weakref.WeakSet()  # weak: a dropped Server is finalized
_previous_handlers: dict[int, Any] = {}


def _register_cleanup(server: Server) -> None:
    with _cleanup_lock:
        _fifo_servers.add(server)
        if threading.current_thread() is threading.main_thread():
            for sig in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)):
                if sig is None:
                    continue  # Windows has no SIGHUP
                try:
                    prev = signal.getsignal(sig)
                    if prev is _on_signal:
                        continue
                    # Ours is not in place (first FIFO Server, or someone put
                    # theirs in since, then restored an older one): chain to
                    # what is there now.
                    if prev in (signal.SIG_DFL, None) or callable(prev):
                        _previous_handlers[sig] = prev
                        signal.signal(sig, _on_signal)
                except (ValueError, OSError):
                    pass


def _unregister_cleanup(server: Server) -> None:
    with _cleanup_lock:
        _fifo_servers.discard(server)


def _remove_fifos() -> None:
    for s in list(_fifo_servers):
        if s._dir is not None and os.getpid() == s._pid:
            _remove_dir(s._dir)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _remove_fifos()
    prev = _previous_handlers.get(signum)
    if callable(prev):
        prev(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _after_fork_in_child() -> None:
    """A forked child owns none of the parent's FIFOs: give SIGTERM/SIGHUP
    back the disposition they had before fastjob's cleanup handler.

    The handler is a Python-level one, which runs only when the main thread
    returns to the interpreter.  A forked worker that is sent SIGTERM while
    it sits in a blocking C call (multiprocessing's Pool.terminate() hitting
    a worker just entering sem_wait() for its next task) then never dies, and
    whoever joins it hangs; with SIG_DFL the kernel ends it at once.
    """
    global _cleanup_lock
    _cleanup_lock = threading.Lock()  # another thread may have held it at fork
    _fifo_servers.clear()
    for sig, prev in list(_previous_handlers.items()):
        try:
            if signal.getsignal(sig) is _on_signal:
                signal.signal(sig, signal.SIG_DFL if prev is None else prev)
        except (ValueError, OSError):
            pass
    _previous_handlers.clear()  # a FIFO Server made in the child installs its own


atexit.register(_remove_fifos)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
