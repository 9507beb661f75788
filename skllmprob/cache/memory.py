"""The in-process memory layer in front of the SQLite file."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Collection, Iterable
from operator import attrgetter

from ..backends.base import Completion

__all__ = ["MEMORY_MB", "MemoryLayer", "default_memory_bytes"]

#: Default budget of the in-process memory layer (``$SKLLMPROB_CACHE_MEMORY_MB``).
MEMORY_MB = 64

_LOGPROBS, _ANSWERS = attrgetter("logprobs"), attrgetter("answer_logprobs")


def default_memory_bytes() -> int:
    """The budget of ``$SKLLMPROB_CACHE_MEMORY_MB`` (MiB), else :data:`MEMORY_MB`."""
    env = os.environ.get("SKLLMPROB_CACHE_MEMORY_MB")
    if env:
        try:
            return max(0, int(float(env) * 2**20))
        except ValueError:
            warnings.warn(
                f"ignoring SKLLMPROB_CACHE_MEMORY_MB={env!r}: not a number of MiB; "
                f"the memory layer keeps its default of {MEMORY_MB} MiB.",
                RuntimeWarning,
                stacklevel=4,
            )
    return MEMORY_MB * 2**20


def _total_size(cs: Collection[Completion]) -> int:
    """An estimate of the memory that the completions ``cs`` take (bytes); a
    completion has as many tokens as log-probabilities."""
    answers = [a for a in map(_ANSWERS, cs) if a is not None]
    return 400 * len(cs) + 80 * sum(map(len, map(_LOGPROBS, cs))) + 8 * sum(map(len, answers))


def _size(c: Completion) -> int:
    return _total_size((c,))


class MemoryLayer:
    """Recently used completions, bounded by an estimate of their size (FIFO).

    Entries are immutable once written, so the only way to become stale is a
    :meth:`CompletionCache.clear`, which bumps a generation number in the file.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.data: dict[bytes, Completion] = {}
        self.nbytes = 0
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """A new lock in a forked child (the parent's may be held)."""
        self._lock = threading.Lock()

    def put(self, key: bytes, c: Completion) -> None:
        self.put_many([(key, c)])

    def put_many(
        self, items: Iterable[tuple[bytes, Completion]] | dict[bytes, Completion]
    ) -> None:
        """Keep ``items`` (pairs, or a dict: faster when none is kept yet), evicting
        the oldest entries while over budget."""
        if self.max_bytes <= 0:
            return
        with self._lock:
            data, added = self.data, 0
            if isinstance(items, dict):
                if data.keys().isdisjoint(items):  # all new: one update
                    data.update(items)
                    added, items = _total_size(items.values()), ()
                else:
                    items = items.items()
            for key, c in items:
                if key in data:
                    added -= _size(data.pop(key))
                data[key] = c
                added += _size(c)
            self.nbytes += added
            while self.nbytes > self.max_bytes and data:
                self.nbytes -= _size(data.pop(next(iter(data))))

    def clear(self) -> None:
        with self._lock:
            self.data = {}
            self.nbytes = 0
