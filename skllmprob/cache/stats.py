"""What a cache holds and what it saved: :class:`CacheInfo` and the counters."""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["COUNTERS", "PERSISTED", "CacheInfo", "Counters", "add_totals", "in_worker"]


@dataclass(frozen=True)
class CacheInfo:
    """What a cache holds and what it saved.

    Attributes
    ----------
    path : str or None
        The SQLite file (``None``: ``cache=False``).
    entries : int
        Completions in the file.
    size_bytes : int
        Size of the file and its write-ahead log.
    hits, misses : int
        Prompts this process found in the cache / had to request (since it opened
        the cache or last cleared it).
    saved_tokens : int
        Prompt and completion tokens of this process's hits: what it did not pay for.
    waited : int
        Hits that another process or thread was requesting at the same time: this
        process waited for them instead of sending them again.
    corrupt : int
        Unreadable entries this process met (each was treated as a miss).
    writes : int
        Completions this process wrote.
    memory_entries : int
        Completions held in this process's memory layer.
    total_hits, total_misses, total_saved_tokens : int
        The same counts summed over every process that used the file since it was
        created or cleared.
    """

    path: str | None
    entries: int = 0
    size_bytes: int = 0
    hits: int = 0
    misses: int = 0
    saved_tokens: int = 0
    waited: int = 0
    corrupt: int = 0
    writes: int = 0
    memory_entries: int = 0
    total_hits: int = 0
    total_misses: int = 0
    total_saved_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


COUNTERS = ("hits", "misses", "saved_tokens", "waited", "corrupt", "writes")
#: The counters also summed in the file over every process (``total_*``).
PERSISTED = ("hits", "misses", "saved_tokens")


class Counters:
    """One process's counts for one cache file (thread-safe).

    ``counts``: this process's :data:`COUNTERS`; ``pending``: its share of the
    file's totals (:data:`PERSISTED`) not written yet; ``damaged``: keys found
    damaged and not rewritten since.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.pending = dict.fromkeys(PERSISTED, 0)
        self.damaged: set[bytes] = set()

    def count(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                self.counts[name] += n

    def add_pending(self, counts: dict[str, int]) -> None:
        with self._lock:
            for name, n in counts.items():
                self.pending[name] += n

    def has_pending(self) -> bool:
        return any(self.pending.values())

    def take_pending(self) -> dict[str, int]:
        with self._lock:
            pending, self.pending = self.pending, dict.fromkeys(PERSISTED, 0)
        return pending

    def found_damaged(self, keys: list[bytes]) -> None:
        with self._lock:
            self.counts["corrupt"] += len(keys)
            self.damaged.update(keys)

    def rewritten(self, keys: Iterable[bytes]) -> None:
        if self.damaged:
            with self._lock:
                self.damaged.difference_update(keys)

    def snapshot(self, totals: dict) -> tuple[dict[str, int], dict[str, int], int]:
        """This process's counts, the file's ``totals`` plus the pending ones, and
        the number of damaged keys."""
        with self._lock:
            total = {k: int(totals.get(k, 0)) + v for k, v in self.pending.items()}
            return dict(self.counts), total, len(self.damaged)


def add_totals(conn: sqlite3.Connection, counts: dict[str, int]) -> None:
    """Add ``counts`` to the file's totals (inside a write transaction)."""
    conn.executemany(
        "INSERT INTO stats VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
        [(name, n, n) for name, n in counts.items() if n],
    )


def in_worker() -> bool:
    """Whether this process was started by another Python process as a worker
    (:mod:`multiprocessing`, joblib's loky workers, Dask's nanny).

    Such a process writes each call's statistics when the call's work is done: its
    parent reads the shared totals while the worker lives on (loky keeps idle
    workers for minutes, then stops them past :mod:`atexit`), and the worker
    cannot tell which of its calls is the last.

    >>> in_worker()
    False
    """
    mp = sys.modules.get("multiprocessing")
    return mp is not None and mp.parent_process() is not None
