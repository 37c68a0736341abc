"""The little that differs between asyncio and trio: which loop we are on,
how to call into it from another thread, and trio's checkpoint.

Neither asyncio nor trio is imported here at module import (``import
fastjob`` stays cheap): code running on asyncio has imported it already.
"""

from __future__ import annotations

import sys
import threading
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from typing import Any, Callable

_get_running_loop: Callable[[], Any] | None = None


def is_trio() -> bool:
    """True inside a trio task.  Called only from async code, which runs on
    asyncio (a running loop in this thread) or on trio; the check is one C
    call, and needs neither sniffio nor trio installed."""
    global _get_running_loop
    get = _get_running_loop
    if get is None:
        aio = sys.modules.get("asyncio")
        if aio is None:
            return True  # asyncio was never imported: this cannot be its loop
        get = _get_running_loop = aio._get_running_loop
    return get() is None


def loop_handle() -> tuple[object, Callable[[Callable[[], Any]], Any], int]:
    """(key of the running loop, thread-safe 'call soon', loop thread id)."""
    if is_trio():
        import trio

        token = trio.lowlevel.current_trio_token()
        return token, token.run_sync_soon, threading.get_ident()
    import asyncio

    loop = asyncio.get_running_loop()
    return loop, loop.call_soon_threadsafe, threading.get_ident()
