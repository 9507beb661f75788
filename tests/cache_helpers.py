"""Helpers for the cache tests: synthetic reviews and a model-selection run."""

from __future__ import annotations

from skllmprob.testing.counting import FileCountingBackend, count

__all__ = ["FileCountingBackend", "count", "make_texts", "run_model_selection"]

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
