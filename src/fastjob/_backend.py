"""The little that differs between asyncio and trio: which loop we are on,
how to call into it from another thread, and trio's checkpoint."""

from __future__ import annotations

import threading
from typing import Any, Callable

import sniffio


def is_trio() -> bool:
    """True inside a trio task (trio sets sniffio's thread-local name)."""
    return sniffio.thread_local.name == "trio"


def loop_handle() -> tuple[object, Callable[[Callable[[], Any]], Any], int]:
    """(key of the running loop, thread-safe 'call soon', loop thread id)."""
    if is_trio():
        import trio

        token = trio.lowlevel.current_trio_token()
        return token, token.run_sync_soon, threading.get_ident()
    import asyncio

    loop = asyncio.get_running_loop()
    return loop, loop.call_soon_threadsafe, threading.get_ident()
