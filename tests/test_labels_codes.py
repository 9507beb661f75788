"""Option codes beyond 26 classes: single-token codes picked with a tokenizer, and the
error that says what works when there is none."""

from __future__ import annotations

import re

import pytest

from skllmprob.exceptions import ConfigurationError
from skllmprob.labels import option_codes, resolve_answers


def _counts(single):
    """A fake tokenizer: a text is one token when ``single(text.strip())``, else one
    token per character."""
    calls = []

    def count(texts):
        calls.append(list(texts))
        return [1 if single(t.strip()) else len(t.strip()) for t in texts]

    return count, calls


def test_small_sets_need_no_tokenizer():
    count, calls = _counts(lambda t: True)
    assert option_codes(26, token_counts=count) == [chr(65 + i) for i in range(26)]
    assert option_codes(9, "numbers", token_counts=count) == [str(i) for i in range(1, 10)]
    assert calls == []


def test_numbers_when_the_model_has_number_tokens():
    count, calls = _counts(lambda t: t.isdigit() and int(t) <= 255)
    codes = option_codes(77, token_counts=count)
    assert codes == [str(i) for i in range(1, 78)]
    # every form of a code was checked: as given and with a leading space
    asked = {t for c in calls for t in c}
    assert {"77", " 77", "1", " 1"} <= asked


def test_letter_pairs_when_numbers_split_into_digits():
    # Gemma-like: single digits and letters, two-letter codes, no multi-digit tokens
    count, calls = _counts(lambda t: (t.isdigit() and len(t) == 1) or t.isalpha())
    codes = option_codes(40, token_counts=count)
    assert codes[:26] == [chr(65 + i) for i in range(26)]
    assert codes[26:29] == ["AA", "AB", "AC"] and len(codes) == 40
    # the numbers pool was given up after a run of multi-token numbers, not all 255
    asked = {t.strip() for c in calls for t in c}
    assert "255" not in asked


def test_codes_skip_candidates_with_a_multi_token_form():
    # " AB" is two tokens for this model: AB is skipped
    def count(texts):
        return [2 if t in (" AB", " ab") or (t.strip().isdigit()) else 1 for t in texts]

    codes = option_codes(30, token_counts=count)
    assert "AB" not in codes and codes[26:] == ["AA", "AC", "AD", "AE"]


def test_a_tokenizer_that_cannot_tokenize_gives_the_advice():
    with pytest.raises(ConfigurationError) as e:
        option_codes(40, token_counts=lambda texts: None)
    msg = str(e.value)
    assert "40 classes need option codes" in msg and "cannot tokenize" in msg
    for what in ("a server that tokenizes", "descriptions=", "local backend", "fewer"):
        assert what in msg


def test_a_model_without_enough_single_tokens():
    with pytest.raises(ConfigurationError, match="fewer single-token letters codes exist"):
        option_codes(40, token_counts=lambda texts: [3] * len(texts))


def test_the_exact_backend_is_not_told_to_use_the_local_backend():
    words = [f"w{i}" for i in range(30)]
    with pytest.raises(ConfigurationError) as e:
        resolve_answers(words, option_codes_mode="letters", exact=True)
    msg = str(e.value)
    assert "local backend" not in msg
    assert re.search(r"option_codes='auto'", msg) and "fewer classes" in msg


def test_resolve_answers_uses_the_tokenizer_for_colliding_labels():
    words = [f"card {i}" for i in range(30)]
    count, _ = _counts(lambda t: t.isdigit())
    answers, codes = resolve_answers(words, token_counts=count)
    assert codes and answers == [str(i) for i in range(1, 31)]
