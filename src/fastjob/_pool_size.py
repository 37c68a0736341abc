"""The size of a pool the Server owns: resize and withholding.

Every token byte that exists is in one of three places: in the pool, held by
a job (any process), or *withheld* by the server (kept in this process, out
of circulation).  ``total`` counts them all; the tokens in circulation are
``total - withheld``.  The size allowed now is ``effective = min(jobs, cap)``
(``cap`` is the governor's; None when no governor), so the server wants
``effective - 1`` tokens in circulation (the implicit slot is never a byte).

* Growing gives withheld bytes back to the pool first, then writes new ones.
* Shrinking reads free tokens back from the pool without blocking and keeps
  them.  A token a job holds is never taken: the server withholds it when it
  comes back, so while the shrink is *owed* a thread waits (no busy loop) for
  tokens to come back: poll() on a pipe or fifo pool; on a semaphore pool
  (Windows, no fd to poll) a kernel wait on the semaphore and a wake-up
  event, which takes the count it waited for.  Nothing here ever blocks the
  caller.

Withheld tokens count as present for ``reconcile()`` and the leak check at
close: the pool plus the withheld tokens must make up ``total``.
"""

from __future__ import annotations

import os
import select
import sys
import threading
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Callable, Protocol

    class _Takes(Protocol):
        """What a semaphore pool offers the settle thread (_core.sem)."""

        def take_returned(self, timeout: float) -> bool: ...

        def wake_take(self) -> None: ...

from . import _io
from ._core.transport import Transport
from ._errors import JobserverError, UnsupportedPlatformError
from ._service_thread import start_service_thread

__all__ = ["PoolSize"]

#: Longest a settle thread sleeps in poll() before it looks again (it is also
#: woken through its pipe whenever the target changes).
SETTLE_POLL = 0.25
TOKEN_BYTE = ord("+")


class PoolSize:
    """Sizing state of one Server's pool (thread-safe).

    ``fill(n)`` writes up to ``n`` new token bytes into the pool without
    blocking and returns how many fit; ``on_jobs(n)`` is told each new
    ``jobs`` value (the server updates what its children see as -jN).
    """

    def __init__(
        self,
        transport: Transport,
        jobs: int,
        fill: Callable[[int], int],
        on_jobs: Callable[[int], None],
    ) -> None:
        self._t = transport
        self._fill = fill
        self._on_jobs = on_jobs
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)  # wakes an idle sem settle thread
        # A semaphore pool (Windows) has no fd to poll: the settle thread waits
        # in the kernel for a count to come back (take_returned), woken by
        # wake_take; pipe and fifo pools are polled.
        self._takes: _Takes | None = None
        if hasattr(transport, "take_returned"):
            self._takes = transport  # type: ignore[assignment]  # it has take_returned
        self.jobs = jobs
        self.total = jobs - 1
        self._withheld: list[int] = []
        self._cap: int | None = None
        self._limited_by: tuple[str, ...] = ()
        self._thread: threading.Thread | None = None
        self._taking = False  # the sem settle thread is in take_returned
        self._paused = 0  # quiet() callers: the sem settle thread takes nothing
        self._wake_r = self._wake_w = -1
        self._closed = False
        self._pid = os.getpid()
        self.error: BaseException | None = None  # why the settle thread stopped

    # -- what the server reports ---------------------------------------------------
    @property
    def effective(self) -> int:
        """The size allowed right now: ``jobs``, lowered by the governor's cap."""
        with self._lock:
            return self._effective()

    def _effective(self) -> int:
        cap = self._cap
        return max(1, self.jobs if cap is None else min(self.jobs, cap))

    @property
    def withheld(self) -> int:
        """Tokens the server holds out of circulation now."""
        return len(self._withheld)

    @property
    def limited_by(self) -> tuple[str, ...]:
        """The governor's limits in force (empty when none holds slots back)."""
        with self._lock:
            return self._limited_by if self._cap is not None and self._cap < self.jobs else ()

    @property
    def owed(self) -> int:
        """Tokens still to withhold as holders return them (0 once settled)."""
        with self._lock:
            return max(0, self.total - len(self._withheld) - (self._effective() - 1))

    # -- changing the size ---------------------------------------------------------
    def resize(self, jobs: int) -> None:
        """Set the size asked for (see Server.resize)."""
        if isinstance(jobs, bool) or not isinstance(jobs, int):
            raise TypeError(f"jobs must be an int, not {type(jobs).__name__}")
        if jobs < 1:
            raise ValueError(f"resize({jobs}): a pool needs at least one slot (jobs >= 1)")
        with self._lock:
            self._check_open()
            old = self.jobs
            self.jobs = jobs
            try:
                self._settle()
            except BaseException:
                # The pool is short of room: go back to the old size; tokens
                # that did fit are withheld like any surplus.
                self.jobs = old
                self._settle()
                raise
            finally:
                self._on_jobs(self.jobs)
        self._kick()

    def set_cap(self, cap: int | None, limited_by: tuple[str, ...] = ()) -> None:
        """The governor's ceiling (None: no ceiling) and which limits set it."""
        with self._lock:
            if self._closed:
                return
            self._cap = None if cap is None else max(1, cap)
            self._limited_by = tuple(limited_by)
            self._settle()
        self._kick()

    def _check_open(self) -> None:
        if self._closed:
            raise JobserverError("this fastjob Server is closed; resize() needs an open pool")

    def _settle(self) -> None:
        """Move tokens so circulation approaches ``effective - 1`` (lock held).
        Growth is immediate; a shrink reads back what is free now."""
        want = self._effective() - 1
        circulating = self.total - len(self._withheld)
        if circulating < want:
            while self._withheld and circulating < want:
                self._t.write(self._withheld.pop())
                circulating += 1
            need = want - circulating
            if need > 0:
                put = self._fill(need)
                self.total += put
                if put < need:
                    raise ValueError(
                        f"resize({self.jobs}) needs {want} tokens in the pool but it holds "
                        f"only {circulating + put}; use fewer jobs"
                        + (" (or raise /proc/sys/fs/pipe-max-size)"
                           if sys.platform.startswith("linux") else "")
                    )
        elif circulating > want:
            if not self._t.nonblocking_read:
                raise UnsupportedPlatformError(
                    "this pool cannot be read without blocking here (a shared blocking "
                    "pipe), so it cannot shrink; create the Server with style='fifo'"
                )
            while circulating > want:
                b = self._t.try_read()
                if b == _io.AGAIN:
                    break
                self._withheld.append(b)
                circulating -= 1

    # -- the settle thread: withholds tokens as holders return them -------------------
    def _kick(self) -> None:
        with self._lock:
            if self._closed or self.error is not None:
                return
            owed = self.total - len(self._withheld) - (self._effective() - 1)
            if owed <= 0:
                return
            if self._thread is None:
                if self._takes is None:
                    self._wake_r, self._wake_w = os.pipe()
                    os.set_blocking(self._wake_r, False)
                    os.set_blocking(self._wake_w, False)
                self._thread = threading.Thread(
                    target=self._run if self._takes is None else self._run_sem,
                    name="fastjob-pool-size", daemon=True,
                )
                start_service_thread(self._thread)
                return
        self._poke()

    def _poke(self) -> None:
        if self._takes is not None:
            with self._lock:
                self._cond.notify_all()
            self._takes.wake_take()
            return
        try:
            os.write(self._wake_w, b"k")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (or the pipe is gone)

    def _run_sem(self) -> None:
        """The settle thread of a semaphore pool: while a shrink is owed, take
        counts as they come back (a kernel wait of at most SETTLE_POLL, woken
        by _poke) and withhold them; otherwise sleep until _poke."""
        takes = self._takes
        assert takes is not None
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    if self._paused:
                        self._cond.wait()  # quiet(): until it ends
                        continue
                    self._settle()
                    if self.total - len(self._withheld) - (self._effective() - 1) <= 0:
                        self._cond.wait()  # until _poke: a new target or close
                        continue
                    self._taking = True
                try:
                    got = takes.take_returned(SETTLE_POLL)
                finally:
                    with self._lock:
                        self._taking = False
                        self._cond.notify_all()
                if not got:
                    continue
                with self._lock:
                    owed = self.total - len(self._withheld) - (self._effective() - 1)
                    if owed > 0 and not self._closed:
                        self._withheld.append(TOKEN_BYTE)
                    else:
                        self._t.write(TOKEN_BYTE)  # grown meanwhile: not ours to keep
        except BaseException as exc:  # reported by Server.statistics() / close()
            self.error = exc

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        fd = self._t.read_fd
        watching = False
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    self._settle()
                    owed = self.total - len(self._withheld) - (self._effective() - 1)
                # Watch the pool only while a shrink is owed: a full pool is
                # readable all the time and would make this loop spin.
                if owed > 0 and not watching:
                    poller.register(fd, select.POLLIN)
                    watching = True
                elif owed <= 0 and watching:
                    poller.unregister(fd)
                    watching = False
                events = poller.poll(None if owed <= 0 else SETTLE_POLL * 1000)
                for efd, _ in events:
                    if efd == self._wake_r:
                        try:
                            os.read(self._wake_r, 512)
                        except BlockingIOError:
                            pass
        except BaseException as exc:  # reported by Server.statistics() / close()
            self.error = exc

    # -- accounting ------------------------------------------------------------------
    def quiet(self) -> _Quiet:
        """``with size.quiet():`` hold the lock with no token in the settle
        thread's hands: a count the sem settle thread has taken but not yet
        withheld would be missing from the pool and from ``withheld`` alike
        (reconcile() would put a new one in).  Pipe and fifo pools read
        under the lock anyway.  (A class, not contextlib: start-up.)"""
        return _Quiet(self)

    def give_back_all(self) -> None:
        """Put every withheld token back into the pool (before close, so
        children still running keep a consistent pool).  Only the owner: a
        forked child's copy of the withheld list is not its to write."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            while self._withheld:
                try:
                    self._t.write(self._withheld.pop())
                except (OSError, JobserverError):
                    break

    def close(self) -> None:
        """Stop the settle thread (the withheld bytes die with the pool)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            if os.getpid() == self._pid:  # a forked child has no such thread
                self._poke()
                thread.join(5.0)
            for fd in (self._wake_r, self._wake_w):
                if fd < 0:
                    continue
                try:
                    os.close(fd)
                except OSError:
                    pass


class _Quiet:
    """The context manager of PoolSize.quiet()."""

    __slots__ = ("_size",)

    def __init__(self, size: PoolSize) -> None:
        self._size = size

    def __enter__(self) -> None:
        size = self._size
        size._lock.acquire()
        try:
            size._paused += 1
            while size._taking:
                if size._takes is not None:
                    size._takes.wake_take()
                size._cond.wait(0.05)
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        size = self._size
        try:
            size._paused -= 1
            size._cond.notify_all()
        finally:
            size._lock.release()
