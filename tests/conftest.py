"""Shared fixtures: every test gets its own cache folder; nothing touches ~/.cache."""

from __future__ import annotations

import os

# scikit-learn's array-API estimator check runs only when SciPy's array API support is
# switched on before SciPy is first imported; with it, no estimator check is skipped.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import pytest

from skllmprob.backends import DeterministicBackend

REVIEWS = [
    ("what a great film, I loved it", "positive"),
    ("a wonderful and moving story", "positive"),
    ("brilliant acting, a real gem", "positive"),
    ("fun from start to end, excellent", "positive"),
    ("a superb and beautiful masterpiece", "positive"),
    ("boring, dull and far too long", "negative"),
    ("an awful mess, I hated it", "negative"),
    ("the worst film of the year, terrible", "negative"),
    ("tedious plot and poor acting", "negative"),
    ("a stupid, disappointing waste of time", "negative"),
]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SKLLMPROB_CACHE_DIR", str(tmp_path / "skllmprob-cache"))


@pytest.fixture
def reviews():
    texts = [t for t, _ in REVIEWS]
    labels = [y for _, y in REVIEWS]
    return texts, labels


@pytest.fixture
def det():
    return DeterministicBackend()


def pytest_report_header(config):
    from skllmprob.llama_server import cpu_has_amx

    if cpu_has_amx():
        return (
            "CPU: AMX present (llama.cpp's repacked weight layouts would crash here; "
            "every model in these tests is loaded without them)"
        )
    return "CPU: no AMX (the repacked-layout crash guarded against cannot happen here)"
