"""The new calibrations through LogprobClassifier on the deterministic backend:
class_weight, calibration="vector" / "batch" / "auto", calibration_base of
"threshold", and threshold tuning on top of a calibration that pays each prompt once."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import f1_score
from sklearn.model_selection import TunedThresholdClassifierCV
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.class_weight import compute_class_weight

from skllmprob import ConfigurationError, InputError, LogprobClassifier
from skllmprob.backends import DeterministicBackend
from skllmprob.calibration_ext import batch_offsets, domain_context_texts
from skllmprob.calibrators import AutoCalibrator, BatchCalibrator, VectorCalibrator

LABELS = ["positive", "negative"]
WORDS = ["good", "great", "fun", "bad", "dull", "mess", "the", "film", "plot", "night"]


@pytest.fixture(scope="module")
def task():
    """Texts of random words, labels that follow their cues with some noise, and
    an imbalance (about two positives per negative)."""
    rng = np.random.default_rng(5)
    texts = [" ".join(rng.choice(WORDS, 5)) for _ in range(120)]
    good = np.array([sum(w in t.split() for w in WORDS[:3]) for t in texts])
    bad = np.array([sum(w in t.split() for w in WORDS[3:6]) for t in texts])
    flip = rng.random(len(texts)) < 0.15
    return texts, np.where((good + 1 >= bad) ^ flip, "positive", "negative")


def estimator(calibration="none", **kw):
    kw.setdefault("cache", False)
    backend = DeterministicBackend(bias={"positive": 2.0}, exact=kw.pop("exact", True))
    return LogprobClassifier(backend=backend, labels=LABELS, calibration=calibration, **kw)


def assert_same_calibration(a, b):
    np.testing.assert_array_equal(a.bias_, b.bias_)
    assert a.temperature_ == b.temperature_ and a.threshold_ == b.threshold_


def test_new_parameters_have_neutral_defaults(task):
    texts, y = task
    params = LogprobClassifier().get_params()
    assert params["class_weight"] is None and params["calibration_base"] is None
    assert params["scoring"] is None and params["calibration"] == "none"
    # scoring=None is "accuracy" for the threshold, as before.
    a = estimator("threshold").fit(texts, y)
    b = estimator("threshold", scoring="accuracy").fit(texts, y)
    assert_same_calibration(a, b)
    assert a.calibration_chosen_ == {"method": "threshold", "alpha": None}
    assert estimator("affine").fit(texts, y).calibration_chosen_ == {
        "method": "affine",
        "alpha": 0.3,
    }
    assert not hasattr(a, "calibration_cv_results_")


@pytest.mark.parametrize("method", ["bias", "affine", "vector", "threshold", "auto"])
def test_class_weight_equals_the_same_sample_weight(task, method):
    texts, y = task
    weights = {"negative": 2.5}
    by_class = estimator(method, class_weight=weights).fit(texts, y)
    sw = np.where(y == "negative", 2.5, 1.0)
    by_sample = estimator(method).fit(texts, y, sample_weight=sw)
    assert_same_calibration(by_class, by_sample)
    np.testing.assert_array_equal(by_class.predict_proba(texts), by_sample.predict_proba(texts))
    if method != "threshold":
        learned = np.ptp(by_class.bias_) > 0.05 or abs(by_class.temperature_ - 1) > 0.05
        assert learned or by_class.calibration_chosen_["method"] == "none"


def test_balanced_class_weight_equals_scikit_learn_weights(task):
    texts, y = task
    balanced = estimator("affine", class_weight="balanced").fit(texts, y)
    classes = np.unique(y)
    per_class = compute_class_weight("balanced", classes=classes, y=y)
    sw = per_class[np.searchsorted(classes, y)]
    by_sample = estimator("affine").fit(texts, y, sample_weight=sw)
    np.testing.assert_allclose(balanced.bias_, by_sample.bias_, atol=1e-12)
    # Balancing moves the decisions towards the rarer class.
    plain = estimator("affine").fit(texts, y)
    rare = "negative"
    assert (balanced.predict(texts) == rare).sum() >= (plain.predict(texts) == rare).sum()


def test_bad_class_weight_and_base_raise(task):
    texts, y = task
    with pytest.raises(InvalidParameterError, match="class_weight"):
        estimator("bias", class_weight="even").fit(texts, y)
    with pytest.raises(ConfigurationError, match=r"keys \['neutral'\] that are not classes"):
        estimator("bias", class_weight={"neutral": 2.0}).fit(texts, y)
    for base in ("threshold", "contextual", "platt"):
        with pytest.raises(ConfigurationError, match="calibration_base="):
            estimator("threshold", calibration_base=base).fit(texts, y)


@pytest.mark.parametrize("method", ["vector", "auto", "batch"])
@pytest.mark.parametrize("exact", [True, False])
def test_new_methods_through_the_estimator(task, method, exact):
    texts, y = task
    clf = estimator(method, exact=exact).fit(texts, y)
    kind = {"vector": VectorCalibrator, "auto": AutoCalibrator, "batch": BatchCalibrator}
    assert isinstance(clf.calibrator_, kind[method])
    scores = clf.score_texts(texts)
    np.testing.assert_array_equal(
        clf.calibrator_.predict_proba(scores.log_mass), clf.predict_proba(texts)
    )
    np.testing.assert_array_equal(
        clf.classes_[clf.calibrator_.predict(scores.log_mass)], clf.predict(texts)
    )
    if method != "batch":  # batch assumes balanced classes; these are not
        raw = estimator("none", exact=exact).fit(texts, y)
        assert (clf.predict(texts) == y).mean() >= (raw.predict(texts) == y).mean() - 0.02
    fresh = clone(clf)
    assert fresh.get_params()["calibration"] == method and not hasattr(fresh, "calibrator_")


def test_auto_reports_its_choice_and_costs_no_extra_request(task):
    texts, y = task
    auto = estimator("auto").fit(texts, y)
    bias = estimator("bias").fit(texts, y)
    assert auto.usage_.total.requests == bias.usage_.total.requests == len(set(texts))
    chosen = auto.calibration_chosen_
    assert chosen == auto.calibrator_.chosen_ and chosen["method"] in {
        "none",
        "bias",
        "affine",
        "vector",
    }
    table = auto.calibration_cv_results_
    won = table["params"].index(chosen)
    default = table["params"].index(auto.calibrator_.default_choice_)
    assert won == default or table["mean_test_score"][won] > table["mean_test_score"][default]
    html = auto._repr_html_()
    assert "calibration_chosen_" in html and "calibration_cv_results_" in html
    # The held-out log-loss of the winner is no worse than that of plain "bias"
    # at the estimator's penalty (calibration_alpha, always a candidate).
    is_bias = (table["param_method"] == "bias") & (table["param_alpha"] == auto.calibration_alpha)
    assert table["mean_test_score"][won] >= table["mean_test_score"][is_bias][0]
    # calibration_alpha is the penalty "auto" starts from.
    other = estimator("auto", calibration_alpha=0.05).fit(texts, y)
    assert 0.05 in other.calibration_cv_results_["param_alpha"]
    assert other.calibrator_.default_choice_["alpha"] in (None, 0.05)


def test_auto_scoring_by_metric(task):
    texts, y = task
    by_acc = estimator("auto", scoring="accuracy").fit(texts, y)
    scores = by_acc.calibration_cv_results_["mean_test_score"]
    assert ((scores >= 0) & (scores <= 1)).all()
    seen = set()

    def f1_negative(y_true, y_pred, **kw):
        seen.update(np.unique(y_true).tolist())
        return f1_score(y_true, y_pred, pos_label="negative", **kw)

    by_f1 = estimator("auto", scoring=f1_negative).fit(texts, y)
    assert seen == {"negative", "positive"}
    assert by_f1.calibration_cv_results_["mean_test_score"].max() <= 1.0
    with pytest.raises(InputError, match="'auto' learns from labelled samples"):
        estimator("auto").fit(None, None)


def test_batch_learns_from_unlabelled_rows(task):
    texts, y = task
    unlabelled = estimator("batch").fit(texts, None)
    labelled = estimator("batch").fit(texts, y)
    np.testing.assert_array_equal(unlabelled.bias_, labelled.bias_)
    log_mass = estimator("none").fit(None, None).predict_label_logprobs(texts)
    np.testing.assert_allclose(unlabelled.bias_, batch_offsets(log_mass), atol=1e-12)
    # One row at a time is the same as all at once.
    together = unlabelled.predict_proba(texts)
    for i in (0, 17):
        np.testing.assert_array_equal(unlabelled.predict_proba([texts[i]])[0], together[i])
    # The injected bias towards "positive" is undone: fewer positives predicted.
    raw = estimator("none").fit(None, None)
    assert (unlabelled.predict(texts) == "positive").sum() < (
        raw.predict(texts) == "positive"
    ).sum()
    with pytest.raises(InputError, match="estimates the label bias from the rows"):
        estimator("batch").fit(None, None)
    with pytest.raises(InputError, match="needs the classes: pass labels"):
        LogprobClassifier(backend="deterministic", calibration="batch", cache=False).fit(
            texts, None
        )
    with pytest.raises(InputError, match="requires y"):
        estimator("bias").fit(texts, None)  # other methods still need y


def test_threshold_tuned_on_a_base_calibration(task):
    texts, y = task
    clf = estimator("threshold", calibration_base="affine", scoring="f1", pos_label="negative")
    clf.fit(texts, y)
    affine = estimator("affine").fit(texts, y)
    np.testing.assert_array_equal(clf.predict_proba(texts), affine.predict_proba(texts))
    assert_same_calibration_but_threshold = (clf.bias_, clf.temperature_)
    np.testing.assert_array_equal(assert_same_calibration_but_threshold[0], affine.bias_)
    assert clf.threshold_ is not None and clf.pos_label_ == "negative"
    p_neg = affine.predict_proba(texts)[:, list(clf.classes_).index("negative")]
    np.testing.assert_array_equal(clf.predict(texts) == "negative", p_neg >= clf.threshold_)
    plain = estimator("threshold", scoring="f1", pos_label="negative").fit(texts, y)
    assert plain.temperature_ == 1.0 and clf.temperature_ != 1.0


def test_tuned_threshold_on_a_calibration_pays_each_prompt_once(task, tmp_path):
    texts, y = task
    y01 = (y == "positive").astype(int)
    clf = LogprobClassifier(
        backend=DeterministicBackend(bias={"positive": 2.0}),
        labels={1: "positive", 0: "negative"},
        calibration="affine",
        cache=str(tmp_path / "cache.sqlite"),
    )
    tuned = TunedThresholdClassifierCV(clf, scoring="f1").fit(texts, y01)
    info = clf.cache_info()
    assert info.entries == len(set(texts))
    assert info.misses == len(set(texts))  # every other look-up was a hit
    assert info.hits >= 4 * len(set(texts))  # five folds and the refit
    assert 0.0 < tuned.best_threshold_ < 1.0
    assert f1_score(y01, tuned.predict(texts)) >= f1_score(y01, tuned.estimator_.predict(texts))


def test_domain_context_inputs_for_the_contextual_methods(task):
    texts, y = task
    clf = estimator("contextual", content_free="domain-context").fit(texts, y)
    fixed = estimator("contextual", content_free=tuple(domain_context_texts(texts))).fit(texts, y)
    np.testing.assert_array_equal(clf.bias_, fixed.bias_)
    default = estimator("contextual").fit(texts, y)
    assert np.ptp(clf.bias_) > 0 and not np.array_equal(clf.bias_, default.bias_)
    both = estimator("contextual-bias", content_free="domain-context").fit(texts, y)
    assert np.isfinite(both.bias_).all()
    with pytest.raises(ConfigurationError, match="draws its inputs from the texts given to fit"):
        estimator("contextual", content_free="domain-context").fit(None, None)
    with pytest.raises(InvalidParameterError, match="content_free"):
        estimator("contextual", content_free="random").fit(texts, y)
