"""Helpers for the cache tests: a backend that counts requests across processes."""

from __future__ import annotations

import os

from skllmprob.backends import DeterministicBackend

CUES_POS = ["great", "wonderful", "brilliant", "fun", "superb", "moving", "excellent", "gem"]
CUES_NEG = ["boring", "dull", "awful", "worst", "tedious", "poor", "stupid", "mess"]
FILLER = ["plot", "actors", "story", "ending", "music", "script", "camera", "pace"]


def make_texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` distinct short reviews with a sentiment cue, and their labels."""
    texts, labels = [], []
    for i in range(n):
        positive = (i * 7 + seed) % 2 == 0
        cue = (CUES_POS if positive else CUES_NEG)[(i + seed) % 8]
        texts.append(f"review {i}: the {FILLER[i % 8]} was {cue}")
        labels.append("positive" if positive else "negative")
    return texts, labels


class FileCountingBackend(DeterministicBackend):
    """The deterministic backend, appending one byte to ``count_file`` per finished
    request: a request counter shared by every process (loky workers too).

    Its identity is the deterministic backend's, so it shares cache entries with it.
    """

    def __init__(self, *, count_file: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.count_file = count_file

    def complete(self, prompts, query, *, on_result):
        def counted(i, completion):
            fd = os.open(self.count_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, b".")
            finally:
                os.close(fd)
            on_result(i, completion)

        super().complete(prompts, query, on_result=counted)


def count(path) -> int:
    """Requests counted in ``path`` so far."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0
