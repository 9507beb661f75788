"""The evaluation report: metrics against scikit-learn, the baseline, the files."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, log_loss

from skllmprob.report import (
    Evaluated,
    markdown_report,
    score_predictions,
    summary_text,
    tfidf_baseline,
    write_report,
)

CLASSES = np.array(["a", "b", "c"])


def example(seed=0, n=30):
    rng = np.random.default_rng(seed)
    proba = rng.dirichlet(np.ones(3), size=n)
    y = CLASSES[rng.integers(0, 3, size=n)]
    return y, Evaluated("m", proba, CLASSES[proba.argmax(axis=1)], rng.uniform(0.5, 1, n))


def test_metrics_match_scikit_learn():
    y, r = example()
    m = score_predictions(r, y, CLASSES)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, r.pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, r.pred, average="macro"))
    assert m["log_loss"] == pytest.approx(log_loss(y, r.proba, labels=CLASSES))
    onehot = (y[:, None] == CLASSES[None, :]).astype(float)
    # Several classes: the squared error summed over the classes (scikit-learn's).
    assert m["brier"] == pytest.approx(np.mean(np.sum((r.proba - onehot) ** 2, axis=1)))
    assert 0 <= m["ece"] <= 1
    assert m["coverage"] == pytest.approx(r.coverage.mean())


def test_binary_brier_is_the_usual_one():
    classes = np.array(["neg", "pos"])
    proba = np.array([[0.3, 0.7], [0.9, 0.1]])
    r = Evaluated("m", proba, classes[proba.argmax(axis=1)])
    m = score_predictions(r, np.array(["pos", "pos"]), classes)
    assert m["brier"] == pytest.approx(((1 - 0.7) ** 2 + (1 - 0.1) ** 2) / 2)
    assert np.isnan(m["coverage"])


def test_baseline_trained_and_cross_validated():
    train = ["good fun", "great film", "bad plot", "awful acting", "good acting", "bad film"]
    y = ["pos", "pos", "neg", "neg", "pos", "neg"]
    proba, note = tfidf_baseline(train, y, ["good", "awful"], ["neg", "pos", "other"])
    assert note == "trained"
    assert proba.shape == (2, 3) and np.all(proba[:, 2] == 0)  # a class it never saw
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    assert proba[0, 1] > proba[0, 0] and proba[1, 0] > proba[1, 1]
    proba, note = tfidf_baseline(None, None, train, ["neg", "pos"], test_y=y)
    assert note == "3-fold cross-validation" and proba.shape == (6, 2)
    proba, note = tfidf_baseline(None, None, train[:3], ["neg", "pos"], test_y=y[:3])
    assert proba is None and "at least 2 samples of each" in note
    proba, note = tfidf_baseline(train[:2], y[:2], train, ["neg", "pos"])
    assert proba is None and "single label" in note


def test_text_and_markdown(tmp_path):
    y, r = example()
    text = summary_text([r], y, CLASSES)
    assert "accuracy" in text and "confusion matrix of m" in text
    md = markdown_report([r], y, CLASSES, data="Test set: x.", about=["model: m"])
    assert "| model | accuracy | macro F1 | log loss | Brier | ECE | coverage |" in md
    assert "- model: m" in md and "Test set: x." in md
    path = write_report(tmp_path / "rep", [r], y, CLASSES)
    assert path.read_text().startswith("# skllmprob evaluation")
    for name in ("reliability.png", "confusion.png"):
        assert (tmp_path / "rep" / name).read_bytes()[:4] == b"\x89PNG"
