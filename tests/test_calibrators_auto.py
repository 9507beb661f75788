"""The new calibrators: class weights, the threshold's base, "vector", "batch" and
"auto" (skllmprob.calibrators.extra / .auto)."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.base import clone
from sklearn.metrics import f1_score, make_scorer
from sklearn.utils.class_weight import compute_class_weight

from skllmprob import ConfigurationError, InputError
from skllmprob import calibration as cal
from skllmprob import calibration_ext as ext
from skllmprob.calibrators import CALIBRATORS, make_calibrator
from skllmprob.calibrators.auto import DEFAULT_ALPHAS, AutoCalibrator, choose
from skllmprob.calibrators.extra import BatchCalibrator, VectorCalibrator

SMALL_GRID = {"alphas": (0.01, 1.0), "cv": 3}


def sample(n, k, seed, *, temperature=1.0, bias=None, scale=2.0):
    """Log-masses of a model and labels drawn from ``softmax(z / temperature + bias)``."""
    rng = np.random.default_rng(seed)
    z = cal.log_normalize(rng.normal(0.0, scale, size=(n, k)))
    p = cal.apply_offsets(z, np.zeros(k) if bias is None else bias, temperature)
    y = (p.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1).clip(0, k - 1)
    return z, y


@st.composite
def problems(draw, k=None):
    k = draw(st.integers(2, 3)) if k is None else k
    n = draw(st.integers(2, 12))
    z = draw(hnp.arrays(float, (n, k), elements=st.floats(-20.0, 0.0)))
    y = draw(hnp.arrays(np.int64, n, elements=st.integers(0, k - 1)))
    w = draw(hnp.arrays(float, n, elements=st.sampled_from([0.5, 1.0, 2.0])))
    cw = draw(st.dictionaries(st.integers(0, k - 1), st.sampled_from([0.0, 0.5, 3.0])))
    return z, y, w, cw


def fitted_state(c):
    return c.bias_, c.temperature_, c.threshold_, getattr(c, "temperatures_", None)


def assert_same_fit(a, b, z):
    for x, y in zip(fitted_state(a), fitted_state(b), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.predict_proba(z), b.predict_proba(z))
    np.testing.assert_array_equal(a.predict(z), b.predict(z))


def test_the_new_methods_are_registered_after_the_six():
    names = tuple(CALIBRATORS)
    assert names[6:9] == ("vector", "batch", "auto")
    assert CALIBRATORS["vector"] is VectorCalibrator and CALIBRATORS["batch"] is BatchCalibrator
    assert CALIBRATORS["vector"].needs_labels and CALIBRATORS["auto"].needs_labels
    assert not CALIBRATORS["batch"].needs_labels
    for name in ("bias", "affine", "threshold", "contextual-bias", "vector", "auto"):
        assert "class_weight" in CALIBRATORS[name].setting_names()


# ---------------------------------------------------------------- class weights


@pytest.mark.filterwarnings("ignore:calibration=:UserWarning")
@pytest.mark.parametrize("method", ["bias", "affine", "vector", "threshold", "contextual-bias"])
@settings(max_examples=25, deadline=None)
@given(data=problems(k=2))
def test_class_weight_equals_the_same_sample_weight(method, data):
    z, y, w, cw = data
    extra = {"content_free_log_mass": z[:1]} if method == "contextual-bias" else {}
    product = w * np.array([cw.get(c, 1.0) for c in y])
    if not (product > 0).any():
        return
    by_class = make_calibrator(method, class_weight=cw, **extra).fit(z, y, w)
    by_sample = make_calibrator(method, **extra).fit(z, y, product)
    assert_same_fit(by_class, by_sample, z)


@pytest.mark.filterwarnings("ignore:calibration=:UserWarning")
def test_auto_class_weight_equals_the_same_sample_weight():
    z, y = sample(60, 2, seed=3, bias=np.array([1.0, -1.0]))
    cw = {0: 0.5, 1: 2.0}
    by_class = AutoCalibrator(class_weight=cw, **SMALL_GRID).fit(z, y)
    by_sample = AutoCalibrator(**SMALL_GRID).fit(z, y, np.where(y == 0, 0.5, 2.0))
    assert_same_fit(by_class, by_sample, z)
    assert by_class.chosen_ == by_sample.chosen_
    np.testing.assert_array_equal(
        by_class.cv_results_["mean_test_score"], by_sample.cv_results_["mean_test_score"]
    )


def test_balanced_class_weight_and_label_keys():
    z, y = sample(50, 3, seed=4)
    y[:30] = 0  # imbalanced
    classes = np.array(["ant", "bee", "cat"])
    per_class = compute_class_weight("balanced", classes=np.arange(3), y=y)
    a = make_calibrator("affine", class_weight="balanced", classes=classes).fit(z, y)
    b = make_calibrator("affine", classes=classes).fit(z, y, per_class[y])
    np.testing.assert_allclose(a.bias_, b.bias_, atol=1e-12)
    by_label = make_calibrator("bias", class_weight={"bee": 3.0}, classes=classes).fit(z, y)
    by_index = make_calibrator("bias", class_weight={1: 3.0}).fit(z, y)
    np.testing.assert_array_equal(by_label.bias_, by_index.bias_)
    with pytest.raises(ConfigurationError, match=r"keys \['dog'\] that are not classes"):
        make_calibrator("bias", class_weight={"dog": 1.0}, classes=classes).fit(z, y)
    with pytest.raises(ConfigurationError, match="calibration='bias': class_weight must be"):
        make_calibrator("bias", class_weight="even").fit(z, y)
    # Zero-shot fits ignore it.
    make_calibrator("none", classes=classes).fit(None)


# ---------------------------------------------------------------- threshold base


@pytest.mark.filterwarnings("ignore:calibration=:UserWarning")
@settings(max_examples=25, deadline=None)
@given(data=problems(k=2), base=st.sampled_from(["affine", "vector", "bias"]))
def test_threshold_tuned_on_a_base_calibration(data, base):
    z, y, w, _ = data
    made = make_calibrator("threshold", base=base, metric="f1").fit(z, y, w)
    ref = make_calibrator(base).fit(z, y, w)
    np.testing.assert_array_equal(made.predict_proba(z), ref.predict_proba(z))
    np.testing.assert_array_equal(made.bias_, ref.bias_)
    assert made.temperature_ == ref.temperature_
    is_pos = y == 1
    if w[is_pos].sum() > 0 and w[~is_pos].sum() > 0:
        expected = cal.fit_threshold(ref.predict_proba(z)[:, 1], is_pos, "f1", sample_weight=w)
        assert made.threshold_ == expected
    decided = np.where(ref.predict_proba(z)[:, 1] >= made.threshold_, 1, 0)
    np.testing.assert_array_equal(made.predict(z), decided)


def test_threshold_base_instance_is_cloned_and_bad_bases_raise():
    z, y = sample(40, 2, seed=5, temperature=0.5)
    base = make_calibrator("affine", alpha=0.01)
    made = make_calibrator("threshold", base=base).fit(z, y)
    assert not hasattr(base, "bias_") and made.base_ is not base
    assert made.base_.alpha == 0.01 and made.base_.temperature_ < 1.0
    none = make_calibrator("threshold").fit(z, y)
    assert none.base_ is None and none.temperature_ == 1.0
    for bad in ("threshold", make_calibrator("threshold"), 3):
        with pytest.raises(ConfigurationError, match="base must be None"):
            make_calibrator("threshold", base=bad).fit(z, y)
    with pytest.raises(ConfigurationError, match="not a known"):
        make_calibrator("threshold", base="platt").fit(z, y)


# ---------------------------------------------------------------- vector, batch


@pytest.mark.filterwarnings("ignore:calibration=:UserWarning")
@settings(max_examples=25, deadline=None)
@given(data=problems(), alpha=st.sampled_from([0.0, 0.3, 3.0]))
def test_vector_equals_the_pure_functions(data, alpha):
    z, y, w, _ = data
    made = make_calibrator("vector", alpha=alpha).fit(z, y, w)
    bias, temperatures = ext.fit_vector_offsets(z, y, alpha=alpha, sample_weight=w)
    np.testing.assert_array_equal(made.bias_, bias)
    np.testing.assert_array_equal(made.temperatures_, temperatures)
    proba = ext.apply_vector_offsets(z, bias, temperatures)
    np.testing.assert_array_equal(made.predict_proba(z), proba)
    np.testing.assert_array_equal(made.predict(z), proba.argmax(axis=1))


def test_vector_warns_about_missing_classes():
    z, y = sample(20, 3, seed=6)
    with pytest.warns(UserWarning, match="'vector': the classes \\[2\\].*geometric mean"):
        make_calibrator("vector").fit(z, np.minimum(y, 1))


def test_batch_removes_a_known_constant_bias():
    z, y = sample(2000, 3, seed=7)  # calibrated and balanced
    biased = z + np.array([2.0, 0.0, -1.5])
    fitted = make_calibrator("batch").fit(biased)  # no labels
    np.testing.assert_allclose(fitted.bias_, ext.batch_offsets(biased), atol=0)
    acc = lambda c, x: float((c.predict(x) == y).mean())  # noqa: E731
    raw = make_calibrator("none").fit(biased)
    clean = make_calibrator("none").fit(z)
    assert acc(fitted, biased) > acc(raw, biased) + 0.1
    assert abs(acc(fitted, biased) - acc(clean, z)) < 0.02
    np.testing.assert_allclose(fitted.bias_, -(np.array([2.0, 0.0, -1.5]) - 1 / 6), atol=0.15)
    assert fitted.n_batch_ == 2000 and fitted.threshold_ is None


def test_batch_predicts_each_row_alone_and_ignores_labels():
    z, y = sample(30, 2, seed=8)
    fitted = make_calibrator("batch").fit(z)
    together = fitted.predict_proba(z)
    for i in (0, 7, 29):
        np.testing.assert_array_equal(fitted.predict_proba(z[i : i + 1])[0], together[i])
    with_labels = make_calibrator("batch").fit(z, y)
    np.testing.assert_array_equal(with_labels.bias_, fitted.bias_)
    with pytest.raises(InputError, match="estimates the label bias from the rows"):
        make_calibrator("batch", classes=["a", "b"]).fit(None)


# ---------------------------------------------------------------- auto


@pytest.mark.parametrize("k", [2, 3])
def test_auto_prefers_a_temperature_when_the_model_is_under_confident(k):
    z, y = sample(300, k, seed=10 + k, temperature=0.35, bias=np.linspace(0.5, -0.5, k))
    fitted = AutoCalibrator().fit(z, y)
    assert fitted.chosen_["method"] in ("affine", "vector")
    assert fitted.temperature_ < 0.6
    res = fitted.cv_results_
    best = int(np.argmax(res["mean_test_score"]))
    assert res["rank_test_score"][best] == 1
    assert fitted.chosen_ in (res["params"][best], fitted.default_choice_)
    # The best bias-only candidate is clearly worse held out.
    is_bias = res["param_method"] == "bias"
    assert res["mean_test_score"][is_bias].max() < res["mean_test_score"][best] - 0.02


def test_auto_leaves_a_calibrated_model_nearly_alone():
    z, y = sample(300, 2, seed=20)
    fitted = AutoCalibrator().fit(z, y)
    if fitted.chosen_["method"] != "none":
        proba = fitted.predict_proba(z)
        assert np.abs(proba - cal.apply_offsets(z, np.zeros(2))).max() < 0.06
    none_score = fitted.cv_results_["mean_test_score"][0]
    assert fitted.cv_results_["params"][0] == {"method": "none", "alpha": None}
    assert fitted.cv_results_["mean_test_score"].max() - none_score < 0.01


def test_auto_cv_results_table():
    z, y = sample(40, 2, seed=21)
    fitted = AutoCalibrator(cv=4).fit(z, y)
    res = fitted.cv_results_
    n = 1 + 3 * (len(DEFAULT_ALPHAS) + 1)  # and the default penalty, 0.3
    assert fitted.n_splits_ == 4 and len(res["params"]) == n
    for key in ("param_method", "param_alpha", "mean_test_score", "std_test_score"):
        assert len(res[key]) == n
    # Four folds, drawn three times (the default n_repeats).
    assert "split11_test_score" in res and "split12_test_score" not in res
    folds = np.column_stack([res[f"split{j}_test_score"] for j in range(12)])
    np.testing.assert_allclose(res["mean_test_score"], folds.mean(axis=1))
    np.testing.assert_allclose(res["std_test_score"], folds.std(axis=1))
    assert np.isnan(res["param_alpha"][0]) and res["param_alpha"][1] == max(DEFAULT_ALPHAS)
    assert res["rank_test_score"].min() == 1
    assert (res["mean_test_score"] <= 0).all()  # minus log-losses
    # The chosen one refitted on everything makes the probabilities.
    ref = make_calibrator(fitted.chosen_["method"], **_alpha(fitted.chosen_)).fit(z, y)
    np.testing.assert_array_equal(fitted.predict_proba(z), ref.predict_proba(z))


def test_auto_repeats_the_folds():
    z, y = sample(60, 2, seed=23)
    once = AutoCalibrator(**SMALL_GRID, n_repeats=1).fit(z, y)
    thrice = AutoCalibrator(**SMALL_GRID, n_repeats=3).fit(z, y)
    assert once.n_splits_ == thrice.n_splits_ >= 2
    assert sum(k.startswith("split") for k in once.cv_results_) == once.n_splits_
    assert sum(k.startswith("split") for k in thrice.cv_results_) == 3 * thrice.n_splits_
    # Other shuffles: the repeats are not copies of the first one.
    assert not np.allclose(
        thrice.cv_results_["split0_test_score"],
        thrice.cv_results_[f"split{thrice.n_splits_}_test_score"],
    )
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigurationError, match="n_repeats must be an integer >= 1"):
            AutoCalibrator(n_repeats=bad).fit(z, y)


def _alpha(chosen):
    return {} if chosen["alpha"] is None else {"alpha": chosen["alpha"]}


def test_auto_with_few_rows_uses_fewer_folds_or_falls_back():
    z, y = sample(40, 2, seed=22)
    y[:] = 0
    y[:3] = 1  # three of the rare class: three folds
    assert AutoCalibrator(**{**SMALL_GRID, "cv": 5}).fit(z, y).n_splits_ == 3
    y[1:] = 0  # one of the rare class: folds without strata
    once = AutoCalibrator(**{**SMALL_GRID, "cv": 5}).fit(z, y)
    assert (once.n_splits_, once.stratified_) == (5, False)
    y[:] = 0  # one class alone: no cross-validation
    with pytest.warns(
        UserWarning, match="too few for cross-validation.*fitted calibration='bias'"
    ):
        fitted = AutoCalibrator().fit(z, y)
    assert fitted.n_splits_ == 0 and fitted.chosen_ == {"method": "bias", "alpha": 0.3}
    assert np.isnan(fitted.cv_results_["mean_test_score"]).all()
    ref = make_calibrator("bias").fit(z, y)
    np.testing.assert_array_equal(fitted.bias_, ref.bias_)
    # Zero-weight rows take no part in the folds.
    z, y = sample(40, 2, seed=23)
    w = np.where(np.arange(40) < 30, 1.0, 0.0)
    a = AutoCalibrator(**SMALL_GRID).fit(z, y, w)
    b = AutoCalibrator(**SMALL_GRID).fit(z[:30], y[:30], w[:30])
    np.testing.assert_array_equal(
        a.cv_results_["mean_test_score"], b.cv_results_["mean_test_score"]
    )


def test_auto_with_classes_seen_once_uses_folds_without_strata():
    # 64 rows over 40 classes, most of them once or never, with a strong bias the
    # labels reveal: the folds cannot be stratified, but cross-validation still
    # tells the candidates apart (no fallback to "bias").
    k, n = 40, 64
    rng = np.random.default_rng(31)
    bias = np.linspace(-3, 3, k)
    truth = rng.normal(0, 2.0, size=(n, k))
    y = truth.argmax(axis=1)
    z = 0.3 * truth - bias  # compressed log-odds, shifted
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "too few" warning
        warnings.filterwarnings("ignore", message=".*no labelled sample.*")
        fitted = AutoCalibrator(**SMALL_GRID).fit(z, y)
    assert not fitted.stratified_ and fitted.n_splits_ == 3  # SMALL_GRID: cv=3
    assert np.isfinite(fitted.cv_results_["mean_test_score"]).all()
    res = fitted.cv_results_
    won = res["params"].index(fitted.chosen_)
    assert fitted.chosen_ != fitted.default_choice_  # the labels call for a correction
    assert (
        res["mean_test_score"][won]
        > res["mean_test_score"][res["params"].index(fitted.default_choice_)]
    )
    # Stratified as soon as every labelled class has two samples.
    y2 = np.repeat(np.arange(4), 10)
    z2 = rng.normal(size=(40, 4))
    assert AutoCalibrator(**SMALL_GRID).fit(z2, y2).stratified_


def test_auto_scoring_by_name_and_by_scorer():
    z, y = sample(60, 2, seed=24, bias=np.array([1.5, -1.5]))
    by_acc = AutoCalibrator(scoring="accuracy", **SMALL_GRID).fit(z, y)
    assert (
        (by_acc.cv_results_["mean_test_score"] >= 0) & (by_acc.cv_results_["mean_test_score"] <= 1)
    ).all()
    seen = []

    def f1_yes(y_true, y_pred):
        seen.append(set(np.unique(y_true)))
        return f1_score(y_true, y_pred, pos_label="yes")

    classes = np.array(["no", "yes"])
    scorer = make_scorer(f1_yes)
    by_f1 = AutoCalibrator(scoring=scorer, classes=classes, **SMALL_GRID).fit(z, y)
    assert seen and seen[0] <= {"no", "yes"}
    assert by_f1.cv_results_["mean_test_score"].max() <= 1
    by_brier = AutoCalibrator(scoring="neg_brier_score", **SMALL_GRID).fit(z, y)
    assert by_brier.chosen_["method"] != "none"
    with pytest.raises(ConfigurationError, match="scikit-learn scorer name"):
        AutoCalibrator(scoring="best").fit(z, y)


@settings(max_examples=300, deadline=None)
@given(
    hnp.arrays(float, st.tuples(st.integers(1, 6), st.integers(1, 8)), elements=st.floats(-3, 0)),
    st.data(),
)
def test_choose_takes_the_smallest_clear_step_from_the_default_choice(scores, data):
    n, folds = scores.shape
    draw = data.draw
    flags = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    method = np.array(draw(st.lists(st.sampled_from(["a", "b"]), min_size=n, max_size=n)))
    penalty = np.array(draw(st.lists(st.sampled_from([0.0, 0.1, 1.0]), min_size=n, max_size=n)))
    margin = draw(st.sampled_from([0.0, 0.5, 2.0, np.inf]))
    default, winner = choose(scores, flags, method, penalty, margin)
    mean = scores.mean(axis=1)
    pool = flags if flags.any() else np.ones(n, dtype=bool)
    assert pool[default] and mean[default] == mean[pool].max()
    gain = (scores - scores[default]).mean(axis=1)
    spread = (scores - scores[default]).std(axis=1, ddof=1) if folds > 1 else np.full(n, np.inf)
    with np.errstate(invalid="ignore"):  # inf * 0: no switch
        clear = (gain > 0) & (gain > margin * spread / np.sqrt(folds))
    if not clear.any():
        assert winner == default
        return
    # The method of the largest clear gain, its strongest penalty with a clear
    # gain, and of those the largest gain.
    assert clear[winner] and method[winner] == method[clear][np.argmax(gain[clear])]
    same = clear & (method == method[winner])
    assert penalty[winner] == penalty[same].max()
    assert gain[winner] == gain[same & (penalty == penalty[winner])].max()
    assert margin < np.inf


def test_choose_never_switches_with_an_infinite_margin_even_on_equal_gains():
    scores = np.array([[-0.5, -0.6], [-0.4, -0.5]])  # the gain is 0.1 on both folds
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose(
            scores, np.array([True, False]), np.array(["v", "v"]), np.array([0.3, 0.1]), np.inf
        ) == (0, 0)


def test_choose_switches_on_a_consistent_gain_only():
    steady = np.array([[-0.5, -0.6, -0.55, -0.5], [-0.45, -0.55, -0.5, -0.44]])
    noisy = np.array([[-0.5, -0.6, -0.55, -0.5], [-0.2, -0.9, -0.25, -0.7]])
    flags, method, penalty = np.array([True, False]), np.array(["v", "v"]), np.array([0.3, 0.01])
    assert choose(steady, flags, method, penalty, 2.0) == (0, 1)  # gains 0.05, 0.05, 0.05, 0.06
    assert noisy[1].mean() > noisy[0].mean()
    assert choose(noisy, flags, method, penalty, 2.0) == (0, 0)
    assert choose(noisy, flags, method, penalty, 0.0) == (0, 1)
    # Of two clear gains of one method the stronger penalty wins, even with the
    # smaller gain; a method is chosen by its largest clear gain.
    three = np.vstack([steady, steady[1] + 0.05])
    flags3 = np.array([True, False, False])
    strong_first = np.array([0.3, 1.0, 0.01])
    assert choose(three, flags3, np.array(["v", "v", "v"]), strong_first, 2.0) == (0, 1)
    assert choose(three, flags3, np.array(["v", "w", "v"]), strong_first, 2.0) == (0, 2)


def test_auto_switch_margin_bounds_the_choice():
    z, y = sample(120, 2, seed=27, temperature=0.5)
    stay = AutoCalibrator(switch_margin=np.inf).fit(z, y)
    assert stay.chosen_ == stay.default_choice_ and stay.chosen_["alpha"] in (None, 0.3)
    res = stay.cv_results_
    at_default = [p["alpha"] in (None, 0.3) for p in res["params"]]
    means = np.where(at_default, res["mean_test_score"], -np.inf)
    assert stay.default_choice_ == res["params"][int(np.argmax(means))]
    any_gain = AutoCalibrator(switch_margin=0.0).fit(z, y)
    won = res["params"].index(any_gain.chosen_)
    assert res["mean_test_score"][won] >= res["mean_test_score"][int(np.argmax(means))]
    moved = AutoCalibrator(alpha=0.05, switch_margin=np.inf).fit(z, y)
    assert moved.chosen_["alpha"] in (None, 0.05)
    assert 0.05 in moved.cv_results_["param_alpha"]


def test_auto_bad_settings_raise_clear_errors():
    z, y = sample(30, 2, seed=25)
    for methods in (["threshold"], ["contextual"], ["platt"], ["auto"]):
        with pytest.raises(ConfigurationError, match="cannot choose"):
            AutoCalibrator(methods=methods).fit(z, y)
    for alphas in ([], [-1.0], [[0.1]]):
        with pytest.raises(ConfigurationError, match="alphas must be"):
            AutoCalibrator(alphas=alphas).fit(z, y)
    for name in ("alpha", "switch_margin"):
        for bad in (-1.0, np.nan, "2", True):
            with pytest.raises(ConfigurationError, match=f"{name} must be a non-negative"):
                AutoCalibrator(**{name: bad}).fit(z, y)
    for cv in (1, 2.5, True):
        with pytest.raises(ConfigurationError, match="cv must be an integer"):
            AutoCalibrator(cv=cv).fit(z, y)
    with pytest.raises(InputError, match="'auto' learns from labelled samples"):
        AutoCalibrator(classes=["a", "b"]).fit(None)
    only_bias = AutoCalibrator(methods="bias", **SMALL_GRID).fit(z, y)
    assert set(only_bias.cv_results_["param_method"]) == {"bias"}


def test_auto_clones_pickles_and_is_deterministic():
    z, y = sample(40, 3, seed=26)
    fitted = AutoCalibrator(**SMALL_GRID).fit(z, y)
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict_proba(z), fitted.predict_proba(z))
    refit = clone(fitted).fit(z, y)
    assert refit.chosen_ == fitted.chosen_
    np.testing.assert_array_equal(
        refit.cv_results_["mean_test_score"], fitted.cv_results_["mean_test_score"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AutoCalibrator(**SMALL_GRID).fit(z, y)  # no warning when all is well
