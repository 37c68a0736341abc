"""Starting fastjob's own threads with every signal blocked.

The kernel may deliver a process-directed signal to any thread that does not
block it, and CPython then runs the Python handler in the main thread at its
next check, even while the main thread masks signals around a critical
section.  So every thread fastjob starts blocks every signal from its first
instruction: a new thread inherits its starter's mask, and it is started
with them all blocked.  (The stdlib's mask call: the native core's
block_signals would add nothing here, and the pure one's loads ctypes.)
"""

from __future__ import annotations

import signal
import threading


def start_service_thread(thread: threading.Thread) -> None:
    """``thread.start()`` with every signal blocked in the new thread."""
    if not hasattr(signal, "pthread_sigmask"):
        thread.start()  # Windows: no signal masks, and the kernel never picks a thread
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, ())  # reads only: a raise after it changes nothing
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, signal.valid_signals())
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
