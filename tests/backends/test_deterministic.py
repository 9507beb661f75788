"""The deterministic offline backend behaves like a model with a real vocabulary."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from skllmprob.backends.base import Query
from skllmprob.backends.deterministic import DeterministicBackend


def _complete(backend, prompt, top_logprobs=20):
    out = {}
    query = Query(answers=("positive", "negative"), top_logprobs=top_logprobs)
    backend.complete([prompt], query, on_result=lambda i, c: out.setdefault(i, c))
    return out[0]


@given(st.text(max_size=60))
def test_each_token_string_appears_once_and_probabilities_are_valid(text):
    # "the" is both a word of this prompt and a filler token of the backend.
    prompt = f"Categories: positive, negative. The text is here.\n\n<text>{text}</text>\nCategory:"
    c = _complete(DeterministicBackend(), prompt)
    assert len(set(c.tokens)) == len(c.tokens)
    assert np.all(np.diff(c.logprobs) <= 0)  # most likely first
    assert np.logaddexp.reduce(c.logprobs) <= 1e-9


def test_same_prompt_same_answer():
    b = DeterministicBackend(seed=3)
    a1 = _complete(b, "Text: a great film\nAnswer:")
    a2 = _complete(b, "Text: a great film\nAnswer:")
    assert a1.tokens == a2.tokens
    np.testing.assert_array_equal(a1.logprobs, a2.logprobs)
