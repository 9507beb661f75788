"""The calibrators (skllmprob.calibrators): the registry, each method against the
pure-function pipeline of skllmprob.calibration (bit for bit), and against what
LogprobClassifier fits on the deterministic backend."""

from __future__ import annotations

import functools
import pickle
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import f1_score

from skllmprob import ConfigurationError, InputError, LogprobClassifier
from skllmprob import calibration as cal
from skllmprob.backends import DeterministicBackend
from skllmprob.calibrators import (
    CALIBRATORS,
    Calibrator,
    LabelMetric,
    ThresholdCalibrator,
    make_calibrator,
    register_calibrator,
)

METHODS = ("none", "bias", "affine", "threshold", "contextual", "contextual-bias")


def reference(method, z, y, w=None, *, alpha=cal.DEFAULT_ALPHA, cf=None, pos=1, metric=None):
    """``(bias, temperature, threshold)`` as the estimator computed them before the
    calibrators existed: the pure functions, called in the same order."""
    k = z.shape[1]
    if method in ("none", "contextual"):
        bias = cal.contextual_offsets(cf) if method == "contextual" else np.zeros(k)
        return bias, 1.0, None
    if method == "threshold":
        p_pos = cal.apply_offsets(z, np.zeros(k))[:, pos]
        ww = np.ones(len(y)) if w is None else w
        if ww[y == pos].sum() <= 0 or ww[y != pos].sum() <= 0:
            return np.zeros(k), 1.0, 0.5
        t = cal.fit_threshold(p_pos, y == pos, metric or "accuracy", sample_weight=w)
        return np.zeros(k), 1.0, t
    prior = cal.contextual_offsets(cf) if method == "contextual-bias" else None
    bias, temperature = cal.fit_offsets(
        z, y, alpha=alpha, fit_temperature=method == "affine", sample_weight=w, prior=prior
    )
    return bias, temperature, None


def settings_for(method, *, alpha=cal.DEFAULT_ALPHA, cf=None, pos=1, metric=None, classes=None):
    """The settings the estimator passes to ``make_calibrator`` for ``method``."""
    given_ = {"alpha": alpha, "content_free_log_mass": cf, "pos_index": pos, "classes": classes}
    if metric is not None:
        given_["metric"] = metric
    names = CALIBRATORS[method].setting_names()
    return {key: v for key, v in given_.items() if key in names}


def assert_same(calibrator, expected, z):
    bias, temperature, threshold = expected
    np.testing.assert_array_equal(calibrator.bias_, bias)
    assert calibrator.temperature_ == temperature
    assert calibrator.threshold_ == threshold
    proba = cal.apply_offsets(z, bias, temperature)
    np.testing.assert_array_equal(calibrator.predict_proba(z), proba)
    return proba


# ---------------------------------------------------------------- the registry


def test_registry_holds_one_class_per_method_in_order():
    assert tuple(CALIBRATORS)[: len(METHODS)] == METHODS
    for name, cls in CALIBRATORS.items():
        assert issubclass(cls, Calibrator) and cls.name == name
    needs_labels = {n for n in METHODS if CALIBRATORS[n].needs_labels}
    assert needs_labels == {"bias", "affine", "threshold", "contextual-bias"}
    needs_cf = {n for n in METHODS if CALIBRATORS[n].needs_content_free}
    assert needs_cf == {"contextual", "contextual-bias"}
    assert CALIBRATORS["affine"].setting_names() == ("alpha", "class_weight", "classes")
    assert set(CALIBRATORS["threshold"].setting_names()) == {
        "base",
        "class_weight",
        "classes",
        "metric",
        "pos_index",
    }


def test_make_calibrator_rejects_unknown_names_and_unused_settings():
    with pytest.raises(ConfigurationError, match="calibration='platt' is not a known") as e:
        make_calibrator("platt")
    assert all(name in str(e.value) for name in METHODS)
    with pytest.raises(ConfigurationError, match=r"'none' does not use the settings \['alpha'\]"):
        make_calibrator("none", alpha=0.3)
    with pytest.raises(ConfigurationError, match="metric"):
        make_calibrator("bias", metric="f1")
    with pytest.raises(ConfigurationError, match="not a known"):
        make_calibrator(None)
    made = make_calibrator("contextual-bias", alpha=2.0, classes=["a", "b"])
    assert made.get_params() == {
        "alpha": 2.0,
        "class_weight": None,
        "classes": ["a", "b"],
        "content_free_log_mass": None,
    }


def test_a_new_method_is_one_registered_class():
    @register_calibrator
    class Flip(Calibrator):
        name = "test-flip"
        needs_labels = True

        def _fit(self, log_mass, y, sample_weight):
            self.bias_ = np.where(np.arange(self.n_classes_) == 0, 50.0, 0.0)

    try:
        assert CALIBRATORS["test-flip"] is Flip
        assert register_calibrator(Flip) is Flip  # registering again is harmless
        z = np.log([[0.1, 0.9], [0.2, 0.8]])
        fitted = make_calibrator("test-flip").fit(z, np.array([0, 1]))
        np.testing.assert_array_equal(fitted.predict(z), [0, 0])
        with pytest.raises(InputError, match="'test-flip' learns from labelled samples"):
            make_calibrator("test-flip").fit(z, None)

        class Other(Calibrator):
            name = "test-flip"

        with pytest.raises(ConfigurationError, match="already registered by Flip"):
            register_calibrator(Other)
    finally:
        del CALIBRATORS["test-flip"]

    class Nameless(Calibrator):
        pass

    with pytest.raises(ConfigurationError, match="Nameless has no name"):
        register_calibrator(Nameless)
    with pytest.raises(TypeError, match="Calibrator subclass"):
        register_calibrator(dict)


# ----------------------------------------------- bit for bit with the pure functions

log_mass_values = st.floats(-40.0, 0.0, allow_nan=False, allow_infinity=False)


@st.composite
def problems(draw, k=None):
    """Log-masses (some rows floored at -inf), labels, weights, content-free inputs."""
    k = draw(st.integers(2, 4)) if k is None else k
    n = draw(st.integers(1, 14))
    z = draw(hnp.arrays(float, (n, k), elements=log_mass_values))
    z[draw(hnp.arrays(bool, (n, k)))] = -np.inf if draw(st.booleans()) else 0.0
    y = draw(hnp.arrays(np.int64, n, elements=st.integers(0, k - 1)))
    w = None
    if draw(st.booleans()):
        w = draw(hnp.arrays(float, n, elements=st.sampled_from([0.0, 0.5, 1.0, 3.0])))
        w[0] = max(w[0], 1.0)
    cf = draw(hnp.arrays(float, (draw(st.integers(1, 3)), k), elements=log_mass_values))
    return z, y, w, cf


@pytest.mark.parametrize("method", ["none", "bias", "affine", "contextual", "contextual-bias"])
@settings(max_examples=30, deadline=None)
@given(data=problems(), alpha=st.sampled_from([0.0, 0.3, 3.0]))
def test_each_method_equals_the_pure_pipeline(method, data, alpha):
    z, y, w, cf = data
    calibrator = make_calibrator(method, **settings_for(method, alpha=alpha, cf=cf))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # classes without samples
        calibrator.fit(z, y, w)
    proba = assert_same(calibrator, reference(method, z, y, w, alpha=alpha, cf=cf), z)
    np.testing.assert_array_equal(calibrator.predict(z), proba.argmax(axis=1))


@pytest.mark.parametrize("metric", ["accuracy", "f1", "matthews_corrcoef", "callable"])
@settings(max_examples=30, deadline=None)
@given(data=problems(k=2), pos=st.sampled_from([0, 1]))
def test_threshold_equals_the_pure_pipeline(metric, data, pos):
    z, y, w, _ = data
    if metric == "callable":
        f1_spam = functools.partial(f1_score, pos_label="spam", zero_division=0)
        metric = LabelMetric.for_classes(f1_spam, np.array(["ham", "spam"]), pos)
    calibrator = make_calibrator("threshold", **settings_for("threshold", pos=pos, metric=metric))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        calibrator.fit(z, y, w)
    expected = reference("threshold", z, y, w, pos=pos, metric=metric)
    proba = assert_same(calibrator, expected, z)
    decided = np.where(proba[:, pos] >= calibrator.threshold_, pos, 1 - pos)
    np.testing.assert_array_equal(calibrator.predict(z), decided)


@pytest.mark.filterwarnings("ignore:calibration=:UserWarning")
@settings(max_examples=20, deadline=None)
@given(data=problems())
def test_scalar_and_none_weights_equal_ones(data):
    z, y, _, _ = data
    for method in ("bias", "affine"):
        a = make_calibrator(method).fit(z, y)
        b = make_calibrator(method).fit(z, y, 1.0)
        c = make_calibrator(method).fit(z, y, np.ones(len(y)))
        for other in (b, c):
            np.testing.assert_array_equal(a.bias_, other.bias_)
            assert a.temperature_ == other.temperature_


# ------------------------------------------- bit for bit with LogprobClassifier.fit

LABELS = ["positive", "negative"]
WORDS = ["good", "great", "fun", "bad", "dull", "mess", "the", "film", "plot", "night"]


@pytest.fixture(scope="module")
def task():
    """Texts of random words and labels that follow their cues, with some noise."""
    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(WORDS, 4)) for _ in range(90)]
    good = np.array([sum(w in t.split() for w in WORDS[:3]) for t in texts])
    bad = np.array([sum(w in t.split() for w in WORDS[3:6]) for t in texts])
    flip = rng.random(len(texts)) < 0.2
    return texts, np.where((good >= bad) ^ flip, "positive", "negative")


def estimator(calibration, *, exact=True, labels=LABELS, **kw):
    backend = DeterministicBackend(bias={"positive": 3.0}, exact=exact)
    return LogprobClassifier(
        backend=backend, labels=labels, calibration=calibration, cache=False, **kw
    )


def calibrator_like(clf, *, metric=None):
    """The calibrator of ``clf``'s settings, with the log-masses it saw."""
    classes = clf.classes_
    pos = 1 if clf.pos_label_ is None else list(classes).index(clf.pos_label_)
    if metric is not None:
        metric = LabelMetric.for_classes(metric, classes, pos)
    cf = clf.predict_label_logprobs(list(clf.content_free))
    kw = settings_for(
        clf.calibration,
        alpha=clf.calibration_alpha,
        cf=cf,
        pos=pos,
        metric=metric,
        classes=classes,
    )
    return make_calibrator(clf.calibration, **kw)


def assert_same_as_estimator(calibrator, clf, texts):
    z = clf.predict_label_logprobs(texts)
    expected = (clf.bias_, clf.temperature_, clf.threshold_)
    proba = assert_same(calibrator, expected, z)
    np.testing.assert_array_equal(proba, clf.predict_proba(texts))
    np.testing.assert_array_equal(clf.classes_[calibrator.predict(z)], clf.predict(texts))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("exact", [True, False])
def test_each_method_equals_the_estimator(task, method, exact):
    texts, y = task
    w = np.linspace(0.0, 2.0, len(y))
    pos_label = "negative" if method == "threshold" else None
    clf = estimator(method, exact=exact, calibration_alpha=0.7, pos_label=pos_label)
    clf.fit(texts, y, w)
    assert method in ("none", "threshold") or np.ptp(clf.bias_) > 0.1  # something learned
    calibrator = calibrator_like(clf)
    y_idx = np.searchsorted(clf.classes_, y)
    calibrator.fit(clf.predict_label_logprobs(texts), y_idx, w)
    assert_same_as_estimator(calibrator, clf, texts)


def test_threshold_with_a_label_metric_equals_the_estimator(task):
    texts, y = task
    seen = set()

    def metric(y_true, y_pred, sample_weight=None):
        seen.update(np.unique(y_pred).tolist())
        return f1_score(y_true, y_pred, pos_label="negative", sample_weight=sample_weight)

    clf = estimator("threshold", scoring=metric, pos_label="negative").fit(texts, y)
    calibrator = calibrator_like(clf, metric=metric)
    assert isinstance(calibrator.metric, LabelMetric) and seen == {"positive", "negative"}
    calibrator.fit(clf.predict_label_logprobs(texts), np.searchsorted(clf.classes_, y))
    assert_same_as_estimator(calibrator, clf, texts)
    # Unlike a closure, the wrapped metric pickles (when the user's metric does).
    f1_neg = functools.partial(f1_score, pos_label="negative")
    by_name = calibrator_like(clf, metric=f1_neg)
    by_name.fit(clf.predict_label_logprobs(texts), np.searchsorted(clf.classes_, y))
    again = pickle.loads(pickle.dumps(by_name))
    assert again.threshold_ == by_name.threshold_ == calibrator.threshold_
    assert again.metric.metric.func is f1_score


@pytest.mark.parametrize("method", ["none", "contextual"])
def test_zero_shot_methods_need_no_labels(task, method):
    texts, _ = task
    clf = estimator(method).fit(None, None)
    calibrator = calibrator_like(clf).fit(None, None)
    assert_same_as_estimator(calibrator, clf, texts)
    empty = calibrator_like(clf).fit(np.zeros((0, 2)), np.zeros(0, dtype=int))
    np.testing.assert_array_equal(empty.bias_, calibrator.bias_)
    # Labels, when given, change nothing.
    z = clf.predict_label_logprobs(texts)
    labelled = calibrator_like(clf).fit(z, np.zeros(len(z), dtype=int))
    np.testing.assert_array_equal(labelled.bias_, calibrator.bias_)


@pytest.mark.parametrize(
    ("method", "effect"),
    [
        ("bias", "their offsets stay neutral"),
        ("affine", "their offsets stay neutral"),
        ("contextual-bias", "their offsets keep the contextual estimate"),
        ("threshold", "the threshold stays at 0.5"),
    ],
)
def test_missing_classes_warn_as_the_estimator_did(task, method, effect):
    texts, y = task
    labels = [*LABELS, "neutral"] if method != "threshold" else LABELS
    keep = np.flatnonzero(y == "positive")[:12] if method == "threshold" else slice(None)
    texts_, y_ = [texts[i] for i in np.arange(len(y))[keep]], y[keep]
    with pytest.warns(UserWarning, match=effect) as by_estimator:
        clf = estimator(method, labels=labels).fit(texts_, y_)
    calibrator = calibrator_like(clf)
    z = clf.predict_label_logprobs(texts_)
    with pytest.warns(UserWarning, match=effect) as by_calibrator:
        calibrator.fit(z, np.searchsorted(clf.classes_, y_))
    assert [str(w.message) for w in by_calibrator] == [str(w.message) for w in by_estimator]
    assert by_calibrator[0].filename == __file__  # points at the caller, not the library
    assert_same_as_estimator(calibrator, clf, texts)


def test_task_errors_match_the_estimator():
    with pytest.raises(ConfigurationError, match="tunes a binary decision") as by_estimator:
        estimator("threshold", labels=["a", "b", "c"]).fit(["x", "y", "z"], ["a", "b", "c"])
    with pytest.raises(ConfigurationError) as by_calibrator:
        make_calibrator("threshold").fit(np.zeros((3, 3)), np.array([0, 1, 2]))
    assert str(by_calibrator.value) == str(by_estimator.value)
    with pytest.raises(ConfigurationError) as early:
        ThresholdCalibrator.check_task(3, labelled=True)  # before anything is scored
    assert str(early.value) == str(by_estimator.value)
    for method in ("bias", "affine", "threshold", "contextual-bias"):
        with pytest.raises(InputError, match="learns from labelled samples") as by_estimator:
            estimator(method).fit(None, None)
        with pytest.raises(InputError) as by_calibrator:
            make_calibrator(method, classes=LABELS).fit(None, None)
        assert str(by_calibrator.value) == str(by_estimator.value)
    for method in ("none", "contextual"):
        CALIBRATORS[method].check_task(2, labelled=False)


# ---------------------------------------------------------------------- the rest


def test_bad_inputs_raise_clear_errors():
    z = np.zeros((3, 2))
    with pytest.raises(NotFittedError):
        make_calibrator("bias").predict_proba(z)
    with pytest.raises(NotFittedError):
        make_calibrator("threshold").predict(z)
    with pytest.raises(InputError, match="2-D"):
        make_calibrator("bias").fit(np.zeros(3), np.zeros(3, dtype=int))
    with pytest.raises(InputError, match="class indices in range\\(2\\)"):
        make_calibrator("bias").fit(z, np.array([0, 1, 2]))
    with pytest.raises(InputError, match="class indices"):
        make_calibrator("bias").fit(z, np.array(["a", "b", "a"]))
    with pytest.raises(InputError, match="y has shape"):
        make_calibrator("bias").fit(z, np.array([0, 1]))
    with pytest.raises(InputError, match=r"expected \(3,\): one weight per sample"):
        make_calibrator("bias").fit(z, np.array([0, 1, 0]), [1.0, 2.0])
    with pytest.raises(InputError, match="3 classes"):
        make_calibrator("none", classes=["a", "b", "c"]).fit(z, None)
    with pytest.raises(InputError, match="number of classes is unknown"):
        make_calibrator("none").fit(None, None)
    with pytest.raises(InputError, match="y is given but log_mass is None"):
        make_calibrator("bias").fit(None, [0, 1])
    with pytest.raises(ConfigurationError, match="content_free_log_mass="):
        make_calibrator("contextual").fit(z, None)
    with pytest.raises(InputError, match="content_free_log_mass has 3 columns"):
        make_calibrator("contextual-bias", content_free_log_mass=np.zeros((1, 3))).fit(
            z, np.array([0, 1, 0])
        )
    with pytest.raises(ConfigurationError, match="pos_index must be 0 or 1"):
        make_calibrator("threshold", pos_index=2).fit(z, np.array([0, 1, 0]))
    fitted = make_calibrator("none").fit(z, None)
    with pytest.raises(InputError, match="fitted on 2 classes"):
        fitted.predict_proba(np.zeros((1, 3)))


def test_calibrators_clone_and_pickle():
    z = np.log([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    y = np.array([0, 1, 1, 1])
    fitted = make_calibrator("affine", alpha=1.0, classes=np.array(["a", "b"])).fit(z, y)
    fresh = clone(fitted)
    assert fresh.get_params()["alpha"] == 1.0 and not hasattr(fresh, "bias_")
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict_proba(z), fitted.predict_proba(z))
    assert repr(make_calibrator("bias", alpha=2.0)) == "BiasCalibrator(alpha=2.0)"


@pytest.mark.parametrize(
    ("classes", "named"), [(None, "[2]"), (["a", "b", "c"], "['c']"), (np.array([5, 6, 7]), "[7]")]
)
def test_the_warning_names_the_missing_classes_as_plain_values(classes, named):
    z = np.log([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]])
    with pytest.warns(UserWarning) as record:
        make_calibrator("bias", classes=classes).fit(z, np.array([0, 1]))
    assert f"'bias': the classes {named} have no labelled sample" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero weights count as absent; none absent: silent
        make_calibrator("bias").fit(z[:, :2], np.array([0, 1]), [1.0, 2.0])
    with pytest.warns(UserWarning, match="classes \\[1\\]"):
        make_calibrator("affine").fit(z[:, :2], np.array([0, 1]), [1.0, 0.0])


def test_checks_run_in_the_estimator_order_and_empty_labels_mean_none():
    # Three classes and no labels: the binary check comes first, as in fit.
    with pytest.raises(ConfigurationError, match="binary"):
        ThresholdCalibrator.check_task(3, labelled=False)
    with pytest.raises(InputError, match="labelled samples"):
        ThresholdCalibrator.check_task(2, labelled=False)
    z = np.zeros((3, 2))
    with pytest.raises(InputError, match="y has shape \\(0,\\), expected \\(3,\\)"):
        make_calibrator("bias").fit(z, [])  # rows without labels is not zero-shot
    for method in METHODS:
        calibrator = CALIBRATORS[method]
        made = make_calibrator(method, **dict.fromkeys(calibrator.setting_names()))
        assert type(made) is calibrator and made.get_params() == dict.fromkeys(
            calibrator.setting_names()
        )
