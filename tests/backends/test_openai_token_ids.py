"""``label_token_ids=True``: vLLM's ``logprob_token_ids`` for the labels' first tokens
(the stub's vLLM emulation, through the real ``openai`` client), detected once per
server, with a warning and the top-k where the server does not honour it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from skllmprob import LogprobClassifier
from skllmprob.backends.openai.tokenizer import variants
from skllmprob.testing import OpenAIStub

LABELS = ["positive", "negative"]
TEXTS = ["a wonderful film", "a dull mess", "an ambiguous one"]


def _make(stub, model, **kw):
    return LogprobClassifier(
        model,
        labels=LABELS,
        base_url=stub.base_url,
        cache=False,
        progress=False,
        top_logprobs=1,
        backend_options={"label_token_ids": True},
        **kw,
    ).fit(None, None)


def _expected(stub, clf, texts):
    """Every class's first-token mass, from the stub's own model."""
    out = []
    for prompt in clf.render_prompts(texts):
        dist = dict(stub.distribution(prompt))
        row = []
        for label in clf.classes_:
            firsts = {stub.tokenizer.piece(stub.tokenizer.encode(v)[0]) for v in variants(label)}
            row.append(sum(np.exp(dist.get(t, -np.inf)) for t in firsts))
        out.append(row)
    out = np.array(out)
    return out / out.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_every_label_comes_back_exactly(endpoint):
    with OpenAIStub(vllm=True) as stub:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback warning
            clf = _make(stub, f"tid-{endpoint}", endpoint=endpoint)
            proba = clf.predict_proba(TEXTS)
        sent = [e["body"] for e in stub.log]
        expected = _expected(stub, clf, TEXTS)
    listed = sent[-1]["logprob_token_ids"]
    assert len(listed) >= 2 and all(b.get("logprob_token_ids") == listed for b in sent[-3:])
    # top_logprobs=1 would floor a label outside the top token; the listed ids do not
    np.testing.assert_allclose(proba, expected, rtol=1e-9)
    top_k = LogprobClassifier(
        f"tid-{endpoint}",
        labels=LABELS,
        base_url=stub.base_url,
        cache=False,
        progress=False,
        top_logprobs=1,
        endpoint=endpoint,
    )
    assert "logprob_token_ids" not in top_k.fit(None, None).backend_.request_settings(
        clf.scorer_.query(1)
    )


def test_detected_once_and_cached_with_the_server():
    with OpenAIStub(vllm=True) as stub:
        _make(stub, "tid-once").predict_proba(TEXTS[:1])
        probes = stub.prompt_requests["Hello"]
        _make(stub, "tid-once").predict_proba(TEXTS[1:])
        assert probes == 1 and stub.prompt_requests["Hello"] == 1


def test_a_server_that_rejects_the_field_falls_back_with_a_warning():
    with OpenAIStub(vllm=True) as stub:
        stub.add_fault("400", match="Hello")  # the probe is refused, as vLLM before #43463
        with pytest.warns(UserWarning, match="does not honour logprob_token_ids"):
            clf = _make(stub, "tid-old")
            proba = clf.predict_proba(TEXTS)
        assert all(
            "logprob_token_ids" not in e["body"]
            for e in stub.log
            if e["body"].get("messages", [{}])[-1].get("content") != "Hello"
        )
    assert proba.shape == (3, 2)


def test_a_server_that_cannot_tokenize_falls_back_with_a_warning():
    with OpenAIStub() as stub:
        with pytest.warns(UserWarning, match="does not tokenize"):
            clf = _make(stub, "tid-none")
            clf.predict_proba(TEXTS[:1])
        assert all("logprob_token_ids" not in e["body"] for e in stub.log)
