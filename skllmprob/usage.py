"""Request and token accounting."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields

__all__ = ["Usage", "UsageTracker"]


@dataclass
class Usage:
    """Counts for one call or for a classifier's lifetime.

    Attributes
    ----------
    prompts : int
        Prompts asked for (after removing duplicates within one call).
    requests : int
        Prompts sent to the backend (cache misses).
    cache_hits : int
        Prompts answered from the cache.
    prompt_tokens, completion_tokens, cached_tokens : int
        Tokens reported by the backend for the requests sent (``cached_tokens``: the
        part of the prompt tokens served from the server's prefix cache).
    saved_tokens : int
        Prompt and completion tokens of the cache hits: what the cache saved.
    failed : int
        Prompts that failed after all retries.
    """

    prompts: int = 0
    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    saved_tokens: int = 0
    failed: int = 0

    def add(self, other: Usage) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class UsageTracker:
    """Usage of the last ``fit`` / ``predict*`` call and in total.

    Examples
    --------
    >>> t = UsageTracker()
    >>> t.record(Usage(prompts=3, requests=2, cache_hits=1))
    >>> t.total.requests, t.last.cache_hits
    (2, 1)
    """

    def __init__(self) -> None:
        self.total = Usage()
        self.last = Usage()
        self._lock = threading.Lock()

    def record(self, usage: Usage) -> None:
        with self._lock:
            self.last = usage
            self.total.add(usage)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"total": self.total.as_dict(), "last": self.last.as_dict()}

    def __repr__(self) -> str:
        t = self.total
        return (
            f"UsageTracker(requests={t.requests}, cache_hits={t.cache_hits}, "
            f"prompt_tokens={t.prompt_tokens}, completion_tokens={t.completion_tokens})"
        )

    def __getstate__(self) -> dict:
        return {"total": self.total, "last": self.last}

    def __setstate__(self, state: dict) -> None:
        self.total = state["total"]
        self.last = state["last"]
        self._lock = threading.Lock()
