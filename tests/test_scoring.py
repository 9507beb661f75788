"""Label scoring: unit tests and hypothesis properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from skllmprob.exceptions import ConfigurationError
from skllmprob.scoring import (
    TokenMatcher,
    coverage,
    label_log_mass,
    labels_collide,
    normalize,
    option_codes,
    other_token_mass,
    resolve_answers,
)

LABELS = ["positive", "negative", "neutral"]
FILLERS = ["\n", " ", " the", " I", " a", "ambiguous", "\n\n", " maybe"]
# Tokens that are not labels but start one: they count for it (see TokenMatcher).
PREFIXES = ["pos", " Neg", "neut"]


def variants(word):
    return [word, " " + word, word.capitalize(), " " + word.capitalize(), word.upper()]


@st.composite
def top_lists(draw, labels=LABELS):
    """A top-k list mixing label variants and filler tokens, as a server returns."""
    pool = [v for lab in labels for v in variants(lab)] + FILLERS + PREFIXES
    toks = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=12, unique=True))
    lps = draw(
        st.lists(st.floats(-30, 0, allow_nan=False), min_size=len(toks), max_size=len(toks))
    )
    p = np.exp(np.array(lps))
    p = p / max(1.0, p.sum() * 1.05)  # a real distribution keeps some mass unseen
    return toks, np.log(p)


def proba(toks, lps, labels=LABELS):
    mass, _ = label_log_mass([toks], [lps], TokenMatcher(labels))
    return normalize(mass)[0]


@given(top_lists())
def test_probabilities_are_in_unit_interval_and_sum_to_one(tl):
    p = proba(*tl)
    assert np.all(p >= 0) and np.all(p <= 1)
    assert p.sum() == pytest.approx(1.0)


@given(top_lists(), st.permutations(range(3)))
def test_permuting_labels_permutes_columns(tl, perm):
    p = proba(*tl)
    q = proba(*tl, labels=[LABELS[i] for i in perm])
    np.testing.assert_allclose(q, p[list(perm)], rtol=1e-12, atol=1e-15)


@given(top_lists(), st.sampled_from([*FILLERS, " hello", "xyz"]), st.data())
def test_extra_non_label_token_changes_no_ratio(tl, extra, data):
    toks, lps = tl
    assume(extra not in toks)
    mass, floored = label_log_mass([toks], [lps], TokenMatcher(LABELS))
    # Above the smallest listed log-prob, the extra token moves no bound either.
    lp_extra = data.draw(st.floats(float(lps.min()), 0.0))
    mass2, floored2 = label_log_mass(
        [[*toks, extra]], [np.append(lps, lp_extra)], TokenMatcher(LABELS)
    )
    np.testing.assert_array_equal(floored, floored2)
    np.testing.assert_allclose(mass2, mass, rtol=1e-12)
    np.testing.assert_allclose(normalize(mass2), normalize(mass), rtol=1e-9)


@given(st.floats(-20, -0.01), st.floats(-20, -0.01), st.floats(-20, -0.01))
def test_variants_are_summed(a, b, c):
    toks = [" positive", "Positive", "POSITIVE", " negative"]
    lps = np.log(np.exp([a, b, -5.0, c]) / 4)
    mass, _ = label_log_mass([toks], [lps], TokenMatcher(["positive", "negative"]))
    expected = np.log((np.exp(a) + np.exp(b) + np.exp(-5.0)) / 4)
    assert mass[0, 0] == pytest.approx(expected)


def test_duplicate_tokens_are_summed():
    mass, _ = label_log_mass(
        [["yes", "yes", "no"]], [np.log([0.2, 0.1, 0.3])], TokenMatcher(["yes", "no"])
    )
    np.testing.assert_allclose(np.exp(mass), [[0.3, 0.3]])


def test_missing_class_gets_the_smallest_listed_logprob_as_bound():
    mass, floored = label_log_mass(
        [[" positive", "\n", " the"]], [np.log([0.3, 0.2, 0.01])], TokenMatcher(LABELS[:2])
    )
    assert floored.tolist() == [[False, True]]
    assert np.exp(mass[0, 1]) == pytest.approx(0.01)
    assert coverage(mass, floored)[0] == pytest.approx(0.3)


def test_underflow_sentinel_is_ignored():
    mass, floored = label_log_mass(
        [[" yes", " no", "x"]], [np.array([-0.1, -9999.0, -3.0])], TokenMatcher(["yes", "no"])
    )
    assert floored[0, 1]
    assert mass[0, 1] == pytest.approx(-3.0)


def test_other_tokens_are_tracked():
    other = other_token_mass(
        [[" positive", "\n", " I"]], [np.log([0.5, 0.3, 0.1])], TokenMatcher(LABELS)
    )
    assert set(other) == {"\n", " I"}
    assert other["\n"] == pytest.approx(0.3)


def test_matcher_heuristics_without_tokenizer():
    m = TokenMatcher(["World", "Sports", "Business", "Sci/Tech"])
    assert m(" Sci") == 3
    assert m("sci") == 3
    assert m(" I") == -1 and m(" a") == -1 and m("") == -1 and m("  ") == -1
    assert m(" Spo") == 1  # a unique prefix of at least three characters
    m2 = TokenMatcher(["abbreviation", "description"])
    assert m2(" a") == -1 and m2(" A") == -1  # too short to count
    assert m2(" abb") == 0


def test_matcher_with_exact_first_tokens():
    m = TokenMatcher(["Sci/Tech", "World"], first_tokens=[[" Sci", "Sci"], [" World"]])
    assert m(" SCI") == 0 and m(" Wor") == -1


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["positive", "negative"], None),
        (["very positive", "very negative"], (0, 1)),
        (["card_arrival", "card_linking"], (0, 1)),
        (["Positive", "positive"], (0, 1)),
        (["sport", "sports"], (0, 1)),
        (["World", "Sports", "Business", "Sci/Tech"], None),
    ],
)
def test_collisions(answers, expected):
    assert labels_collide(answers) == expected


def test_resolve_answers_switches_to_codes_or_raises():
    assert resolve_answers(["very good", "very bad"]) == (["A", "B"], True)
    with pytest.raises(ConfigurationError, match="cannot be told apart"):
        resolve_answers(["very good", "very bad"], option_codes_mode="never")
    assert resolve_answers(["a", "b"], option_codes_mode="numbers") == (["1", "2"], True)
    with pytest.raises(ConfigurationError, match="empty"):
        resolve_answers(["ok", "  "])


def test_option_codes_limit():
    assert option_codes(26)[-1] == "Z"
    with pytest.raises(ConfigurationError, match="27 classes"):
        option_codes(27)


@settings(max_examples=50)
@given(st.lists(top_lists(), min_size=1, max_size=5))
def test_batch_equals_rowwise(rows):
    toks = [t for t, _ in rows]
    lps = [lp for _, lp in rows]
    m = TokenMatcher(LABELS)
    batch, _ = label_log_mass(toks, lps, m)
    for i, (t, lp) in enumerate(rows):
        single, _ = label_log_mass([t], [lp], m)
        np.testing.assert_array_equal(batch[i], single[0])


def _label_log_mass_loop(tokens, logprobs, matcher):
    """The row-by-row definition that the vectorized label_log_mass must match."""
    n, k = len(tokens), matcher.n_classes
    mass = np.zeros((n, k))
    floor = np.empty(n)
    for i, (toks, lps) in enumerate(zip(tokens, logprobs, strict=True)):
        lps = np.asarray(lps, dtype=float)
        valid = lps > -1000.0
        floor[i] = lps[valid].min() if valid.any() else -1000.0
        for t, lp, ok in zip(toks, lps, valid, strict=True):
            c = matcher(t)
            if ok and c >= 0:
                mass[i, c] += np.exp(lp)
    floored = mass <= 0.0
    with np.errstate(divide="ignore"):
        log_mass = np.where(floored, floor[:, None], np.log(np.where(floored, 1.0, mass)))
    return log_mass, floored


@settings(max_examples=100)
@given(
    st.lists(
        st.one_of(
            top_lists(),
            st.just(([], np.array([]))),
            st.just(([" positive", " no"], np.array([-9999.0, -2.0]))),
        ),
        min_size=0,
        max_size=6,
    )
)
def test_vectorized_label_log_mass_matches_the_loop(rows):
    toks = [t for t, _ in rows]
    lps = [lp for _, lp in rows]
    m = TokenMatcher(LABELS)
    got, got_floored = label_log_mass(toks, lps, m)
    want, want_floored = _label_log_mass_loop(toks, lps, m)
    assert got.shape == (len(rows), 3)
    np.testing.assert_array_equal(got_floored, want_floored)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)


def test_label_log_mass_rejects_misaligned_rows():
    m = TokenMatcher(LABELS)
    with pytest.raises(ValueError, match="differ in length"):
        label_log_mass([[" positive", " negative"]], [np.array([-1.0])], m)
    with pytest.raises(ValueError, match="token lists"):
        label_log_mass([[" positive"]], [], m)
