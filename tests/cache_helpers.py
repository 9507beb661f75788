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


def run_model_selection(path: str, base_url: str, *, n_texts: int, n_jobs: int) -> None:
    """GridSearchCV over 12 calibration settings, cross_val_score and
    CalibratedClassifierCV (cv=5) on ``n_texts`` texts, through an OpenAI-compatible
    server at ``base_url`` and the cache file ``path``."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import GridSearchCV, cross_val_score

    from skllmprob import LogprobClassifier

    texts, labels = make_texts(n_texts)
    clf = LogprobClassifier(
        "stub-model",
        labels=["positive", "negative"],
        base_url=base_url,
        cache=path,
        progress=False,
    )
    grid = [  # 12 candidates
        {"calibration": ["none", "contextual"]},
        {"calibration": ["bias", "affine"], "calibration_alpha": [0.001, 0.01, 0.1, 1.0]},
        {"calibration": ["threshold"], "scoring": ["accuracy", "f1"]},
    ]
    GridSearchCV(clf, grid, cv=5, n_jobs=n_jobs).fit(texts, labels)
    cross_val_score(clf, texts, labels, cv=5, n_jobs=n_jobs)
    CalibratedClassifierCV(clf, cv=5, n_jobs=n_jobs).fit(texts, labels)
