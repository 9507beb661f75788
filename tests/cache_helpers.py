"""Helpers for the cache tests: synthetic reviews, classifiers, child processes and
a model-selection run."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from skllmprob import LogprobClassifier
from skllmprob.backends import Completion, DeterministicBackend
from skllmprob.testing.counting import FileCountingBackend, count

__all__ = [
    "ROOT",
    "FileCountingBackend",
    "completion",
    "count",
    "det_clf",
    "make_texts",
    "run_model_selection",
    "run_python",
    "run_sql",
]

ROOT = Path(__file__).resolve().parents[1]


def completion(tokens=("yes", "no"), probs=(0.6, 0.3), **kw) -> Completion:
    return Completion(tuple(tokens), np.log(np.asarray(probs, dtype=float)), **kw)


def run_sql(path, sql: str, *params) -> list:
    """Run one statement on the SQLite file at ``path`` (its own connection,
    committed) and return its rows."""
    conn = sqlite3.connect(path)
    try:
        out = conn.execute(sql, params).fetchall()
        conn.commit()
        return out
    finally:
        conn.close()


def det_clf(**kw) -> LogprobClassifier:
    params = dict(labels=["positive", "negative"], backend=DeterministicBackend(), progress=False)
    params.update(kw)
    return LogprobClassifier(**params)


def run_python(
    code: str, *args: str, timeout: float = 120, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """Run ``code`` in a new Python process that imports this worktree's skllmprob
    (``prefix``: a command to run it under, e.g. ``setpriv ...``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + str(ROOT / "tests")}
    return subprocess.run(
        [*prefix, sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


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
