"""A signal handler raising at every point where CPython can run one, inside
fastjob's own code, for each token operation in turn: no token is lost or
doubled.

CPython runs a Python signal handler only at its eval-loop checks: a call's
return, a function's start, a backward jump.  Blocking signals in the main
thread does not keep the handler out of fastjob's critical sections: a
signal sent to the process while the main thread blocks it is delivered to
another thread, and the main thread runs the handler at its next check (see
docs/guarantees.md).  So here the handler's raise is simulated at the n-th
check point that fastjob's code passes, for every n, by a trace function
that raises there (a trace function's raise propagates into the traced
frame at that instruction, and unsets the trace: one raise per round).
"""

from __future__ import annotations

import dis
import gc
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import pytest

import fastjob
from fastjob import _io

PACKAGE = str(Path(fastjob.__file__).resolve().parent)
PURE = _io.NATIVE is False

#: the instructions whose execution checks for a pending handler
_CHECKS_AT = {"RESUME", "JUMP_BACKWARD"}
#: the instructions after whose execution (a call's return) it checks
_CHECKS_AFTER = {"CALL", "CALL_FUNCTION_EX", "CALL_KW"}

_check_offsets: dict[CodeType, frozenset[int]] = {}


def check_points(code: CodeType) -> frozenset[int]:
    """Offsets in code where an opcode event comes at a handler check."""
    got = _check_offsets.get(code)
    if got is None:
        out = set()
        previous = None
        for ins in dis.get_instructions(code):
            if ins.opname in _CHECKS_AT:
                out.add(ins.offset)
            if previous is not None and previous.opname in _CHECKS_AFTER:
                out.add(ins.offset)
            previous = ins
        got = _check_offsets[code] = frozenset(out)
    return got


class Boom(Exception):
    """What the simulated handler raises."""


#: False once the op is over
tracing = [False]
#: where the last raise was (function:line), for the failure message
where: list[str] = []


def raising_at(n: int) -> tuple[Callable[..., Any], list[int]]:
    """A trace function that raises Boom at the n-th check point (from 0)
    passed in fastjob's own modules; and the count of those passed."""
    seen = [0]
    where.clear()
    tracing[0] = True

    def local(frame: FrameType, event: str, arg: object) -> Any:
        if not tracing[0]:
            return None  # (a frame traced during the op, run again later)
        if event == "opcode" and frame.f_lasti in check_points(frame.f_code):
            seen[0] += 1
            if seen[0] == n + 1:
                where[:] = [f"{frame.f_code.co_name}:{frame.f_lineno}"]
                raise Boom
        return local

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        if not frame.f_code.co_filename.startswith(PACKAGE):
            return None
        frame.f_trace_opcodes = True
        return local

    return tracer, seen


def every_check_point(
    op: Callable[[], Any],
    check: Callable[[Any, bool], None],
    setup: Callable[[], None] | None = None,
) -> int:
    """Run op with a raise at its n-th check point, for n = 0, 1, ... until
    op passes fewer than n + 1; check(result or None, raised) after each
    (and setup(), untraced, before each).  Returns how many check points op
    passed."""
    n = 0
    while n < 2000:
        if setup is not None:
            setup()
        tracer, seen = raising_at(n)
        result = None
        raised = False
        sys.settrace(tracer)
        try:
            result = op()
        except Boom:
            raised = True
        except BaseException as exc:
            sys.settrace(None)
            tracing[0] = False
            raise AssertionError(f"with a raise at check point {n} ({where}): {exc!r}") from exc
        finally:
            sys.settrace(None)
            tracing[0] = False
        try:
            check(result, raised)
        except AssertionError as exc:
            raise AssertionError(f"with a raise at check point {n} ({where}): {exc}") from None
        if not raised:  # (ops that wait pass a varying number of them)
            return n
        n += 1
    raise AssertionError("op never ran to its end")


# A raise between making a coroutine and awaiting it (acquire's return of
# _wait_async's coroutine) drops it unawaited: Python warns, nothing is held.
pytestmark = pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")

needs_opcode_tracing = pytest.mark.skipif(
    sys.version_info < (3, 11) or sys.version_info >= (3, 12),
    reason="the check points listed here are CPython 3.11's",
)


@pytest.fixture(params=["pipe", "fifo"])
def pool(request: pytest.FixtureRequest) -> Iterator[tuple[fastjob.Server, fastjob.Client]]:
    """A pool of 3 (2 bytes), with the implicit token held for the test."""
    if request.param == "fifo" and sys.platform == "win32":
        pytest.skip("no FIFO pools on Windows")
    with warnings.catch_warnings():
        # a token dropped by the raise is given back by its finalizer, with
        # a warning: counted below, not an error
        warnings.simplefilter("ignore", fastjob.TokenLeakWarning)
        with fastjob.Server(3, style=request.param) as s:
            c = s.client
            implicit = c.try_acquire()
            assert implicit is not None and implicit.implicit
            yield s, c
            implicit.release()


def assert_exact(s: fastjob.Server, c: fastjob.Client, held: int = 0) -> None:
    if hasattr(signal, "pthread_sigmask"):
        if PURE:
            # Pure: a raise at restore_signals' first instruction skips a
            # section's end; the next section's start (signal_level) mends
            # it, once the section's frame is gone.  Native: never left.
            _io.signal_level()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        signal.pthread_sigmask(signal.SIG_SETMASK, ())  # (for the next round)
        assert not blocked, "signals left blocked in the main thread"
    gc.collect()  # a Token the raise dropped: its finalizer gives it back
    st = c.statistics()
    # (tokens_held counts the implicit token, held by the fixture)
    assert (s.available(), st.tokens_held - 1) == (2 - held, held), "a token lost or doubled"


def token_back_exact(s: fastjob.Server, c: fastjob.Client) -> Callable[[Any, bool], None]:
    """The check of an op that returns a Token: it raised or gave one;
    that one released, the pool is exact."""

    def check(result: Any, raised: bool) -> None:
        assert raised or result is not None
        if result is not None:
            result.release()
        assert_exact(s, c)

    return check


@needs_opcode_tracing
def test_release_of_a_pool_token(pool: tuple[fastjob.Server, fastjob.Client]) -> None:
    s, c = pool
    tok: list[Any] = []

    def setup() -> None:
        tok[:] = [c.try_acquire()]
        assert tok[0] is not None and not tok[0].implicit

    def op() -> None:
        tok[0].release()

    def check(result: Any, raised: bool) -> None:
        t = tok[0] if tok else None
        if t is not None and not t.released:
            assert_exact(s, c, held=1)  # still held: a later release gives it back
            t.release()
        tok.clear()
        del t
        assert_exact(s, c)

    passed = every_check_point(op, check, setup)
    assert passed > 0 if PURE else passed == 0, "native: the release runs no Python code"


@needs_opcode_tracing
def test_try_acquire_of_a_pool_token(pool: tuple[fastjob.Server, fastjob.Client]) -> None:
    s, c = pool

    passed = every_check_point(c.try_acquire, token_back_exact(s, c))
    assert passed > 0 if PURE else passed == 0, "native: try_acquire runs no Python code"


@needs_opcode_tracing
def test_acquire_blocking_with_a_token_free(pool: tuple[fastjob.Server, fastjob.Client]) -> None:
    s, c = pool

    assert every_check_point(lambda: c.acquire_blocking(timeout=5), token_back_exact(s, c)) > 0


@needs_opcode_tracing
def test_try_acquire_up_to_and_release_many(
    pool: tuple[fastjob.Server, fastjob.Client],
) -> None:
    s, c = pool
    got: list[Any] = []

    def op() -> None:
        ts = c.try_acquire_up_to(2)
        got.append(ts)
        ts.release()

    def check(result: Any, raised: bool) -> None:
        for ts in got:
            ts.release()
        got.clear()
        assert_exact(s, c)

    every_check_point(op, check)


@needs_opcode_tracing
def test_the_implicit_token(pool: tuple[fastjob.Server, fastjob.Client]) -> None:
    s, c = pool
    with fastjob.Server(1) as lone:
        lc = lone.client
        tok: list[Any] = []

        def op() -> None:
            t = lc.try_acquire()
            tok.append(t)
            assert t is not None and t.implicit
            t.release()

        def check(result: Any, raised: bool) -> None:
            for t in tok:
                t.release()
            tok.clear()
            gc.collect()
            st = lc.statistics()
            assert st.implicit_held is False, "the implicit token is held by nobody"
            again = lc.try_acquire()
            assert again is not None and again.implicit
            assert lc.try_acquire() is None, "the implicit token went out twice"
            again.release()

        passed = every_check_point(op, check)
        assert passed > 0 if PURE else passed == 0, "native: the implicit token runs no Python code"


def _queued_round(c: fastjob.Client, s: fastjob.Server, wait: Callable[[], Any]) -> Any:
    """Both pool tokens held here; a thread gives one back while wait()
    waits (traced), so the token comes by the queue's hand-off or the lone
    wait's read."""
    import threading

    held = [c.try_acquire(), c.try_acquire()]
    assert all(t is not None and not t.implicit for t in held)

    def give_back() -> None:
        time.sleep(0.005)
        held[0].release()  # (another thread: never traced)

    th = threading.Thread(target=give_back)
    th.start()
    try:
        return wait()
    finally:
        th.join()
        held[1].release()


@needs_opcode_tracing
def test_acquire_blocking_served_while_it_waits(
    pool: tuple[fastjob.Server, fastjob.Client],
) -> None:
    s, c = pool

    def op() -> Any:
        return _queued_round(c, s, lambda: c.acquire_blocking(timeout=2))

    def check(result: Any, raised: bool) -> None:
        assert raised or result is not None
        if result is not None:
            result.release()
        assert_exact(s, c)
        assert c.statistics().tasks_waiting == 0

    assert every_check_point(op, check) > 0


@needs_opcode_tracing
@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop", "trio"])
@pytest.mark.parametrize("free", [True, False], ids=["free", "handed-off"])
def test_async_acquire(
    pool: tuple[fastjob.Server, fastjob.Client], loop_name: str, free: bool
) -> None:
    """await client.acquire(): with a token free, and handed off while it
    waits (a raise in a reader callback is logged by the loop, as asyncio
    does with every callback's exception)."""
    s, c = pool
    if loop_name == "uvloop":
        pytest.importorskip("uvloop")
    if loop_name == "trio":
        pytest.importorskip("trio")

    async def wait_one() -> Any:
        if loop_name == "trio":
            import trio

            with trio.move_on_after(2):
                return await c.acquire()
            return None
        import asyncio

        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: None)
        return await asyncio.wait_for(c.acquire(), 2)

    async def round_() -> Any:
        if free:
            return await wait_one()
        held = [c.try_acquire(), c.try_acquire()]

        def release_first() -> None:
            try:
                held[0].release()  # traced too: it may raise (the token kept)
            except Boom:
                held[0].release()  # as a caller would: again (untraced now)
        if loop_name == "trio":
            import trio

            async def give_back() -> None:
                await trio.sleep(0.002)
                release_first()

            got: list[Any] = []

            boom: list[Boom] = []

            async def waiter() -> None:
                try:
                    got.append(await wait_one())
                except Boom as exc:  # raised out of the nursery below, unwrapped
                    boom.append(exc)

            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(give_back)
                    nursery.start_soon(waiter)
            finally:
                held[0].release()
                held[1].release()
            if boom:
                raise boom[0]
            return got[0] if got else None
        import asyncio

        asyncio.get_running_loop().call_later(0.002, release_first)
        try:
            return await wait_one()
        finally:
            held[0].release()
            held[1].release()

    def op() -> Any:
        if loop_name == "trio":
            import trio

            return trio.run(round_)
        if loop_name == "uvloop":
            import uvloop

            return uvloop.run(round_())
        import asyncio

        return asyncio.run(round_())

    def check(result: Any, raised: bool) -> None:
        if result is not None:
            result.release()
        assert_exact(s, c)
        assert c.statistics().tasks_waiting == 0

    assert every_check_point(op, check) > 0
