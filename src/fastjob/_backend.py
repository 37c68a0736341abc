"""The little that differs between asyncio and trio: which loop we are on,
how to call into it from another thread, and trio's checkpoint."""

from __future__ import annotations

import threading
from asyncio import _get_running_loop
from typing import Any, Callable


def is_trio() -> bool:
    """True inside a trio task.  Called only from async code, which runs on
    asyncio (a running loop in this thread) or on trio; the check is one C
    call, and needs neither sniffio nor trio installed."""
    return _get_running_loop() is None


def loop_handle() -> tuple[object, Callable[[Callable[[], Any]], Any], int]:
    """(key of the running loop, thread-safe 'call soon', loop thread id)."""
    if is_trio():
        import trio

        token = trio.lowlevel.current_trio_token()
        return token, token.run_sync_soon, threading.get_ident()
    import asyncio

    loop = asyncio.get_running_loop()
    return loop, loop.call_soon_threadsafe, threading.get_ident()
