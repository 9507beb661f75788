"""What a cache holds and what it saved: :class:`CacheInfo` and the counters."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["COUNTERS", "PERSISTED", "CacheInfo"]


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
