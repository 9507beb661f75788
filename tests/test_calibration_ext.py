"""The maths of skllmprob.calibration_ext: class weights, vector scaling, batch
calibration and domain-context inputs (properties, and recovery of known models)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import logsumexp
from sklearn.metrics import log_loss
from sklearn.utils.class_weight import compute_class_weight

from skllmprob.calibration import apply_offsets, fit_offsets, log_normalize
from skllmprob.calibration_ext import (
    apply_vector_offsets,
    batch_offsets,
    class_sample_weight,
    domain_context_texts,
    fit_vector_offsets,
)

finite = st.floats(-30.0, 0.0, allow_nan=False, allow_infinity=False)


@st.composite
def labelled(draw, min_rows=1):
    k = draw(st.integers(2, 4))
    n = draw(st.integers(min_rows, 20))
    z = draw(hnp.arrays(float, (n, k), elements=finite))
    y = draw(hnp.arrays(np.int64, n, elements=st.integers(0, k - 1)))
    w = draw(hnp.arrays(float, n, elements=st.sampled_from([0.0, 0.5, 1.0, 2.0])))
    w[0] = 1.0
    return z, y, w


def drawn_from(p, rng):
    return (p.cumsum(axis=1) < rng.random((len(p), 1))).sum(axis=1).clip(0, p.shape[1] - 1)


# ---------------------------------------------------------------- class weights


@settings(max_examples=60, deadline=None)
@given(data=labelled(), weighted=st.booleans())
def test_balanced_equals_scikit_learn(data, weighted):
    _, y, w = data
    k = int(y.max()) + 1
    sw = w if weighted else None
    ours = class_sample_weight(y, "balanced", k, sample_weight=sw)
    present = np.unique(y[w > 0]) if weighted else np.unique(y)
    keep = np.isin(y, present)
    per_class = compute_class_weight(
        "balanced", classes=present, y=y[keep], sample_weight=None if sw is None else sw[keep]
    )
    expected = (np.ones(len(y)) if sw is None else sw)[keep] * per_class[
        np.searchsorted(present, y[keep])
    ]
    np.testing.assert_allclose(ours[keep], expected, rtol=1e-12)
    # Every present class weighs the same in total.
    totals = np.bincount(y, weights=ours, minlength=k)[present]
    np.testing.assert_allclose(totals, totals[0], rtol=1e-9)


def test_class_weight_dicts_none_and_errors():
    y = np.array([0, 1, 2, 1])
    np.testing.assert_array_equal(class_sample_weight(y, None, 3), np.ones(4))
    np.testing.assert_array_equal(
        class_sample_weight(y, {1: 3.0}, 3, sample_weight=[1.0, 2.0, 1.0, 0.5]),
        [1.0, 6.0, 1.0, 1.5],
    )
    with pytest.raises(ValueError, match=r"keys \[3\] that are not class indices"):
        class_sample_weight(y, {3: 1.0}, 3)
    with pytest.raises(ValueError, match="finite and >= 0"):
        class_sample_weight(y, {0: -1.0}, 3)
    with pytest.raises(ValueError, match="None, 'balanced' or a dict"):
        class_sample_weight(y, "even", 3)
    with pytest.raises(ValueError, match="class indices in range"):
        class_sample_weight([0, 5], None, 3)


# ---------------------------------------------------------------- vector scaling


@settings(max_examples=40, deadline=None)
@given(data=labelled(), t=st.floats(0.05, 20.0))
def test_equal_temperatures_are_the_affine_map(data, t):
    z, _, _ = data
    k = z.shape[1]
    b = np.linspace(-1.0, 1.0, k)
    np.testing.assert_array_equal(
        apply_vector_offsets(z, b, np.full(k, t)), apply_offsets(z, b, t)
    )


@settings(max_examples=40, deadline=None)
@given(data=labelled(), shift=hnp.arrays(float, 20, elements=st.floats(-20, 20)))
def test_vector_fit_ignores_row_constants(data, shift):
    z, y, w = data
    b1, t1 = fit_vector_offsets(z, y, sample_weight=w)
    b2, t2 = fit_vector_offsets(z + shift[: len(z), None], y, sample_weight=w)
    np.testing.assert_allclose(b1, b2, atol=1e-6)
    np.testing.assert_allclose(t1, t2, rtol=1e-6)
    assert abs(b1.mean()) < 1e-9 and (t1 > 0).all()


@settings(max_examples=40, deadline=None)
@given(data=labelled(min_rows=4))
def test_unpenalized_vector_fits_at_least_as_well_as_affine(data):
    z, y, w = data
    bv, tv = fit_vector_offsets(z, y, alpha=0.0, sample_weight=w, temperature_alpha=0.0)
    ba, ta = fit_offsets(
        z, y, alpha=0.0, fit_temperature=True, sample_weight=w, temperature_alpha=0.0
    )
    keep = w > 0
    present = np.unique(y[keep])
    if len(present) < 2:
        return

    def loss(p):  # conditional on the classes present, as the fits are (log space:
        # unpenalized fits of separable rows put underflowing mass on some classes)
        lp = np.log(np.maximum(p[keep][:, present], 1e-300))
        lp -= logsumexp(lp, axis=1, keepdims=True)
        yy = np.searchsorted(present, y[keep])
        return -(w[keep] * lp[np.arange(len(yy)), yy]).sum() / w[keep].sum()

    affine = loss(apply_offsets(z, ba, ta))
    assert loss(apply_vector_offsets(z, bv, tv)) <= affine + 1e-4 + 1e-3 * affine


def test_vector_scaling_recovers_per_class_temperatures():
    rng = np.random.default_rng(0)
    z = log_normalize(rng.normal(0.0, 2.0, size=(6000, 3)))
    true_t, true_b = np.array([0.5, 1.0, 2.0]), np.array([0.5, 0.0, -0.5])
    y = drawn_from(apply_vector_offsets(z, true_b, true_t), rng)
    b, t = fit_vector_offsets(z, y, alpha=0.01)
    np.testing.assert_allclose(t, true_t, rtol=0.15)
    np.testing.assert_allclose(b, true_b - true_b.mean(), atol=0.15)
    # The affine map (one temperature) cannot fit it as well.
    ba, ta = fit_offsets(z, y, alpha=0.01, fit_temperature=True)
    assert (
        log_loss(y, apply_vector_offsets(z, b, t)) < log_loss(y, apply_offsets(z, ba, ta)) - 0.01
    )


def test_vector_missing_classes_and_one_class():
    z = np.log([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.5, 0.4, 0.1]])
    b, t = fit_vector_offsets(z, np.array([0, 1, 0]))
    assert b[2] == pytest.approx(0.0, abs=1e-12)  # neutral: the mean of all offsets
    assert t[2] == pytest.approx(np.sqrt(t[0] * t[1]))
    assert abs(b.mean()) < 1e-12
    b1, t1 = fit_vector_offsets(z, np.array([1, 1, 1]))
    np.testing.assert_array_equal(b1, np.zeros(3))
    np.testing.assert_array_equal(t1, np.ones(3))
    with pytest.raises(ValueError, match="alpha must be a non-negative"):
        fit_vector_offsets(z, np.array([0, 1, 0]), alpha=-1.0)
    with pytest.raises(ValueError, match="temperatures must have shape"):
        apply_vector_offsets(z, np.zeros(3), np.ones(2))
    with pytest.raises(ValueError, match="positive"):
        apply_vector_offsets(z, np.zeros(3), np.array([1.0, 0.0, 1.0]))


# ---------------------------------------------------------------- batch calibration


@settings(max_examples=60, deadline=None)
@given(data=labelled(), v=hnp.arrays(float, 4, elements=st.floats(-8, 8)))
def test_batch_calibration_removes_a_constant_bias(data, v):
    z, _, w = data
    v = v[: z.shape[1]]
    clean = log_normalize(z)
    b_clean, b_biased = batch_offsets(clean, w), batch_offsets(clean + v, w)
    np.testing.assert_allclose(b_biased, b_clean - (v - v.mean()), atol=1e-8)
    np.testing.assert_allclose(
        apply_offsets(clean + v, b_biased), apply_offsets(clean, b_clean), atol=1e-8
    )
    # After the correction every class has the same weighted mean score.
    means = (w @ (log_normalize(clean) + b_clean)) / w.sum()
    np.testing.assert_allclose(means, means[0], atol=1e-8)


def test_batch_weights_count_like_repeated_rows_and_errors():
    z = np.log([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7]])
    np.testing.assert_allclose(
        batch_offsets(z, [2.0, 1.0, 0.0]), batch_offsets(z[[0, 0, 1]]), atol=1e-12
    )
    with pytest.raises(ValueError, match="at least one row"):
        batch_offsets(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="sample_weight"):
        batch_offsets(z, [0.0, 0.0, 0.0])


def test_batch_calibration_recovers_an_injected_label_bias():
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 2.0, size=(4000, 3))
    y = drawn_from(apply_offsets(logits, np.zeros(3)), rng)  # balanced, calibrated
    biased = logits + np.array([2.0, 0.0, -2.0])
    acc = lambda p: (p.argmax(1) == y).mean()  # noqa: E731
    fixed = apply_offsets(biased, batch_offsets(biased))
    assert acc(fixed) > acc(apply_offsets(biased, np.zeros(3))) + 0.1
    assert abs(acc(fixed) - acc(apply_offsets(logits, np.zeros(3)))) < 0.02


# ---------------------------------------------------------------- domain context


@settings(max_examples=40, deadline=None)
@given(
    texts=st.lists(st.text("abc ", min_size=1, max_size=12), min_size=1, max_size=6),
    n_texts=st.integers(1, 5),
    seed=st.integers(0, 3),
)
def test_domain_context_texts_use_the_task_words(texts, n_texts, seed):
    words = {w for t in texts for w in t.split()}
    if not words:
        with pytest.raises(ValueError, match="at least one word"):
            domain_context_texts(texts)
        return
    out = domain_context_texts(texts, n_texts=n_texts, seed=seed)
    assert out == domain_context_texts(list(texts), n_texts=n_texts, seed=seed)
    n_words = sum(len(t.split()) for t in texts)
    length = max(1, round(n_words / len(texts)))
    assert len(out) == n_texts
    for text in out:
        assert len(text.split()) == length and set(text.split()) <= words


def test_domain_context_length_seed_and_errors():
    texts = ["one two three four", "five six"]
    a = domain_context_texts(texts, n_texts=30, length=7, seed=0)
    assert all(len(t.split()) == 7 for t in a)
    assert a != domain_context_texts(texts, n_texts=30, length=7, seed=1)
    with pytest.raises(ValueError, match=">= 1"):
        domain_context_texts(texts, length=0)
