"""Bad and unusual input: a clear error or a documented behaviour, never a crash deep
inside numpy or a backend. Hypothesis drives the texts and the labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from skllmprob import ConfigurationError, InputError, LogprobClassifier
from skllmprob.backends import DeterministicBackend

# Any code point, surrogates and control characters included.
any_char = st.characters(codec=None, exclude_categories=())
texts = st.text(alphabet=any_char, max_size=30)


def zero_shot(**kw):
    kw.setdefault("labels", ["positive", "negative"])
    kw.setdefault("backend", DeterministicBackend())
    kw.setdefault("cache", False)
    return LogprobClassifier(**kw).fit(None, None)


def _has_lone_surrogate(s: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in s)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts, min_size=1, max_size=5))
def test_any_unicode_text_works_or_is_a_clear_error(batch):
    clf = zero_shot()
    if any(_has_lone_surrogate(t) for t in batch):
        with pytest.raises(InputError, match="lone surrogate"):
            clf.predict_proba(batch)
        return
    proba = clf.predict_proba(batch)
    assert proba.shape == (len(batch), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "\n\t", "\u200f\u05e9\u05dc\u05d5\u05dd", "\U0001f600\U0001f44d", "a\x00b"],
    ids=["empty", "spaces", "whitespace", "rtl", "emoji", "nul"],
)
def test_empty_whitespace_and_unusual_texts_are_classified(text):
    # Documented behaviour: empty and whitespace-only texts are valid input; the model
    # answers from the instructions alone (contextual calibration uses exactly that).
    proba = zero_shot().predict_proba([text])
    np.testing.assert_allclose(proba.sum(), 1.0)


@pytest.mark.parametrize(
    ("X", "match"),
    [
        ([None], "missing values"),
        ([np.nan, "x"], "missing values"),
        ([pd.NA], "missing values"),
        ([b"raw bytes"], "Decode bytes"),
        ([1, 2], "must hold texts"),
        ([1.5], "must hold texts"),
        ([["a", ["nested"]]], "holds a list"),
        ([["a"], ["b", "c"]], "ragged"),
        ([{"text": "a dict"}], "must hold texts"),
        (np.array([["a", None]], dtype=object), "missing value"),
        (np.array([[1.0, np.inf]]), "infinite"),
        (np.array([[1 + 2j]]), "Complex data not supported"),
        ("just one string", "single str"),
        (b"bytes", "single bytes"),
        (42, "not a sequence"),
        ([], "empty"),
        (np.empty((0, 3)), "empty"),
    ],
)
def test_bad_X_is_a_clear_error(X, match):
    with pytest.raises(InputError, match=match):
        zero_shot().predict_proba(X)


@settings(max_examples=60)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=2, max_size=6))
@example(["0", "\x00"])  # numpy's fixed-width strings would drop the NUL
def test_any_label_set_works_or_is_a_clear_error(labels):
    """Labels are free text: duplicates, blanks and first-token clashes are errors or
    option codes, never a crash."""
    try:
        clf = zero_shot(labels=labels)
    except ConfigurationError as e:
        msg = str(e)
        assert any(
            k in msg
            for k in ("duplicates", "empty or whitespace", "option codes exist", "lone surrogate")
        ), msg
        return
    proba = clf.predict_proba(["a fine film", "a dull film"])
    assert proba.shape == (2, len(set(labels)))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_labels_differing_only_by_case_use_codes_or_fail_clearly():
    clf = zero_shot(labels=["Good", "good"])
    assert clf.uses_option_codes_
    with pytest.raises(ConfigurationError, match="cannot be told apart"):
        zero_shot(labels=["Good", "good"], option_codes="never")


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ([], "labels is empty"),
        (["a", "a"], "duplicates"),
        (["", "b"], "empty"),
        ([None, "b"], "None"),
    ],
)
def test_bad_labels(labels, match):
    with pytest.raises(ConfigurationError, match=match):
        zero_shot(labels=labels)


def test_y_outside_labels_names_the_labels():
    with pytest.raises(InputError, match=r"not in labels=: \['meh'\]"):
        LogprobClassifier(labels=["good", "bad"], backend=DeterministicBackend()).fit(
            ["x", "y"], ["good", "meh"]
        )


@pytest.mark.parametrize(
    ("prompt", "match"),
    [
        ("Classify: {review}\nAnswer:", "needs the columns \\['review'\\]|fields \\['review'\\]"),
        ("No text field here.", "no field for the text"),
        ("{text} and {", "not a valid template"),
    ],
)
def test_bad_prompt_templates(prompt, match):
    with pytest.raises((ConfigurationError, InputError), match=match):
        zero_shot(prompt=prompt).predict_proba(["a text"])


@pytest.mark.parametrize("k", [0, -1, 1.5, "20"])
def test_top_logprobs_out_of_range(k):
    with pytest.raises(ValueError, match="top_logprobs"):
        zero_shot(top_logprobs=k)
