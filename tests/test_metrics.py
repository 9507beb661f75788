"""Calibration metrics: properties with hypothesis, and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from skllmprob.metrics import expected_calibration_error, reliability_bins, top_label

probs = st.floats(0, 1, allow_nan=False)


@st.composite
def predictions(draw, max_size=60):
    n = draw(st.integers(1, max_size))
    conf = draw(arrays(float, n, elements=probs))
    correct = draw(arrays(bool, n))
    return conf, correct


@settings(max_examples=200)
@given(predictions(), st.integers(1, 20))
def test_ece_is_between_0_and_1_and_counts_add_up(pred, n_bins):
    conf, correct = pred
    ece = expected_calibration_error(conf, correct, n_bins)
    assert 0 <= ece <= 1
    mean_conf, acc, count = reliability_bins(conf, correct, n_bins)
    assert count.sum() == len(conf)
    filled = count > 0
    assert np.all((acc[filled] >= 0) & (acc[filled] <= 1))
    # Each bin's mean confidence lies inside the bin.
    lo = np.arange(n_bins)[filled] / n_bins
    assert np.all(mean_conf[filled] >= lo - 1e-12)
    assert np.all(mean_conf[filled] <= lo + 1 / n_bins + 1e-12)
    assert np.all(np.isnan(acc[~filled]))


@settings(max_examples=200)
@given(predictions())
def test_one_bin_is_the_gap_of_the_means(pred):
    conf, correct = pred
    expected = abs(correct.mean() - conf.mean())
    assert expected_calibration_error(conf, correct, 1) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=100)
@given(predictions(), st.randoms(use_true_random=False))
def test_ece_does_not_depend_on_the_order(pred, rnd):
    conf, correct = pred
    idx = list(range(len(conf)))
    rnd.shuffle(idx)
    assert expected_calibration_error(conf[idx], correct[idx]) == pytest.approx(
        expected_calibration_error(conf, correct), abs=1e-12
    )


def test_calibrated_and_overconfident_by_hand():
    # 10 predictions at 0.7, 7 of them right: perfectly calibrated.
    assert expected_calibration_error([0.7] * 10, [True] * 7 + [False] * 3) == pytest.approx(0)
    # Always 0.95 sure, right half the time: a gap of 0.45.
    assert expected_calibration_error([0.95] * 4, [True, False] * 2) == pytest.approx(0.45)
    # Confidence 1.0 goes into the last bin.
    _, _, count = reliability_bins([1.0, 0.0], [True, False], n_bins=4)
    assert count.tolist() == [1, 0, 0, 1]
    assert np.isnan(expected_calibration_error([], []))


def test_top_label():
    conf, correct = top_label([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]], [1, 2])
    np.testing.assert_allclose(conf, [0.5, 0.6])
    assert correct.tolist() == [True, False]


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="probabilities in"):
        reliability_bins([1.5], [True])
    with pytest.raises(ValueError, match="same length"):
        reliability_bins([0.5, 0.6], [True])
    with pytest.raises(ValueError, match="n_bins"):
        reliability_bins([0.5], [True], n_bins=0)
    with pytest.raises(ValueError, match="n_samples"):
        top_label([0.5, 0.5], [0])
