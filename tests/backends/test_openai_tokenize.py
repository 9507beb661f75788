"""The OpenAI backend asks servers that tokenize for the labels' tokens (here the
stub's vLLM-shaped ``/tokenize`` and ``/detokenize``, through the real ``openai``
client for the completions), and picks single-token option codes for many classes."""

from __future__ import annotations

import numpy as np
import pytest

from skllmprob import LogprobClassifier
from skllmprob.backends.openai import OpenAIBackend
from skllmprob.exceptions import ConfigurationError
from skllmprob.testing import OpenAIStub

# 42 classes whose first words collide, as Banking77's do ("card ...", "transfer ...")
WORDS = {
    f"c{i}": f"{head} {tail}"
    for i, (head, tail) in enumerate(
        (h, t)
        for h in ("card", "transfer", "top up", "cash", "exchange", "pending")
        for t in (
            "arrival",
            "linking",
            "failed",
            "fee charged",
            "not working",
            "limit",
            "reverted",
        )
    )
}


@pytest.fixture
def vllm():
    with OpenAIStub(vllm=True) as s:
        yield s


def test_first_tokens_come_from_the_server(vllm):
    b = OpenAIBackend("m", base_url=vllm.base_url)
    first = b.first_tokens(["card arrival", "Top up"])
    assert first == [
        ["card", " card", "Card", " Card"],
        ["Top", " Top", "top", " top"],
    ]
    assert b.count_tokens(["12", " 1234", "card arrival"]) == [1, 2, 2]


def test_tokens_are_asked_once_per_process(vllm):
    b = OpenAIBackend("m2", base_url=vllm.base_url)
    b.first_tokens(["alpha beta", "gamma"])
    asked = vllm.tokenize_requests
    assert asked > 0
    OpenAIBackend("m2", base_url=vllm.base_url).first_tokens(["alpha beta", "gamma"])
    assert vllm.tokenize_requests == asked


def test_many_colliding_labels_get_number_codes_listed_with_names(vllm):
    clf = LogprobClassifier(
        "m3", labels=WORDS, base_url=vllm.base_url, cache=False, progress=False
    ).fit(None, None)
    assert clf.uses_option_codes_
    assert sorted(clf.answers_.tolist(), key=int) == [str(i) for i in range(1, 43)]
    prompt = clf.prompt_renderer_.render_one({"text": "where is my card"})
    assert "1 (card arrival), 2 (card linking)" in prompt
    # every code is one token for the server's tokenizer
    assert set(
        OpenAIBackend("m3", base_url=vllm.base_url).count_tokens([" " + a for a in clf.answers_])
    ) == {1}
    asked = vllm.tokenize_requests
    proba = clf.predict_proba(["where is my card", "my transfer failed"])
    assert proba.shape == (2, 42)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert vllm.tokenize_requests == asked  # predict never asks again
    assert vllm.requests == 2


def test_a_server_without_tokenizer_gets_one_clear_error():
    with OpenAIStub() as stub:
        clf = LogprobClassifier(
            "m4", labels=WORDS, base_url=stub.base_url, cache=False, progress=False
        )
        with pytest.raises(ConfigurationError) as e:
            clf.fit(None, None)
        assert stub.requests == 0  # the 404s of the probes are no completion requests
    msg = str(e.value)
    assert "42 classes need option codes" in msg and "cannot tokenize" in msg
    assert "a server that tokenizes" in msg and "local backend" in msg


def test_openai_itself_is_not_asked(monkeypatch):
    b = OpenAIBackend("gpt-4o-mini", api_key="sk-test")
    assert b._tokenizer() is None
    assert b.first_tokens(["a b"]) is None and b.count_tokens(["x"]) is None
