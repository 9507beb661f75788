"""A lock that a forked child can use: the parent's threads do not exist there, so
a lock one of them held at the fork would stay held for ever."""

from __future__ import annotations

import os
import threading

__all__ = ["ForkSafeLock"]


class ForkSafeLock:
    """A ``threading.Lock`` made anew on its first use in a forked child.

    >>> lock = ForkSafeLock()
    >>> with lock:
    ...     pass
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __enter__(self) -> ForkSafeLock:
        if self._pid != os.getpid():  # only this thread exists in the child
            self._pid, self._lock = os.getpid(), threading.Lock()
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
