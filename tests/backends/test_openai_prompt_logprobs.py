"""``label_scores="prompt_logprobs"``: exact scores of whole (multi-token) labels from
vLLM's ``prompt_logprobs``, against the stub's vLLM emulation through the real
``openai`` client; support detected once per server, with a warning and the top-k
where the server does not serve the field."""

from __future__ import annotations

import asyncio
import hashlib
import math
import socket
import time
import warnings

import numpy as np
import pytest

import skllmprob.exceptions as exc
from skllmprob import LogprobClassifier
from skllmprob.backends import Query
from skllmprob.backends.llamacpp.exact import variants
from skllmprob.backends.openai import OpenAIBackend
from skllmprob.backends.openai.runner import _RateLimiter
from skllmprob.backends.openai.sequences import sequence_plan
from skllmprob.cache.codec import KeyBuilder
from skllmprob.scoring import ExactScorer, TopKScorer
from skllmprob.testing import OpenAIStub
from skllmprob.testing.stub_tokens import StubTokenizer

LABELS = ["card arrival", "card linking", "exchange rate"]
TEXTS = ["my card has not come yet", "how do I link my card?", "what rate do you use?"]
OPTION = {"label_scores": "prompt_logprobs"}
_TOK = StubTokenizer()


def pieces(text: str) -> list[str]:
    """The stub tokenizer's pieces of ``text``."""
    return [_TOK.piece(i) for i in _TOK.encode(text)]


# Every piece of every form of the labels, and a few fillers: the stub model's vocabulary.
VOCAB = sorted({p for a in LABELS for v in variants(a) for p in pieces(v)} | {"\n", " the"})


def distribution(text: str) -> list[tuple[str, float]]:
    """A normalized distribution over VOCAB that depends on the whole text before."""
    logits = [hashlib.sha256(f"{text}\x00{p}".encode()).digest()[0] / 32.0 for p in VOCAB]
    m = max(logits)
    lse = m + math.log(sum(math.exp(x - m) for x in logits))
    return sorted(((p, x - lse) for p, x in zip(VOCAB, logits, strict=True)), key=lambda t: -t[1])


def seq_logprob(prompt: str, form: str) -> float:
    """Brute force: the log-probability of ``form``'s pieces after ``prompt``."""
    total, before = 0.0, prompt
    for piece in pieces(form):
        total += dict(distribution(before))[piece]
        before += piece
    return total


def expected_log_mass(prompt: str, answers, forms=variants) -> np.ndarray:
    return np.array(
        [np.logaddexp.reduce([seq_logprob(prompt, v) for v in forms(a)]) for a in answers]
    )


def vllm_stub(**kw):
    return OpenAIStub(vllm=True, distribution=distribution, **kw)


def make(stub, model, **kw):
    kw.setdefault("cache", False)
    kw.setdefault("endpoint", "completions")
    return LogprobClassifier(
        model,
        labels=kw.pop("labels", LABELS),
        base_url=stub.base_url,
        progress=False,
        top_logprobs=3,
        backend_options=kw.pop("backend_options", OPTION),
        **kw,
    ).fit(None, None)


def backend(stub, model, **kw):
    return OpenAIBackend(
        model, base_url=stub.base_url, endpoint="completions", label_scores="prompt_logprobs", **kw
    )


def n_sequences(answers) -> int:
    return sum(len(variants(a)) for a in answers)


# ------------------------------------------------------------------ exact scores


def test_class_log_masses_are_the_sums_over_every_form_of_every_label():
    with vllm_stub() as stub:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # supported: no fallback warning
            clf = make(stub, "pl-exact")
            scores = clf.score_texts(TEXTS)
        prompts = clf.render_prompts(TEXTS)
    assert isinstance(clf.scorer_, ExactScorer) and not clf.uses_option_codes_
    assert list(clf.answers_) == list(clf.classes_)  # no option codes for "card ..."
    expected = np.array([expected_log_mass(p, clf.answers_) for p in prompts])
    np.testing.assert_allclose(scores.log_mass, expected, rtol=1e-12)
    # the forms are summed: the form as given alone is less
    alone = np.array([expected_log_mass(p, clf.answers_, lambda a: [a]) for p in prompts])
    assert np.all(alone < expected - 1e-6)
    assert not scores.floored.any()


def test_one_request_per_sequence_through_the_sdk_with_the_top_tokens_and_usage():
    prompt = "Text: my card has not come yet\nAnswer:"
    answers = ("card arrival", "exchange rate")
    with vllm_stub() as stub:
        b = backend(stub, "pl-direct")
        assert b.exact
        stub.reset()
        out: dict = {}
        b.complete([prompt], Query(top_logprobs=4, answers=answers), on_result=out.__setitem__)
        counts, requests = dict(stub.prompt_requests), stub.requests
        bodies = [e["body"] for e in stub.log]
    c = out[0]
    np.testing.assert_allclose(c.answer_logprobs, expected_log_mass(prompt, answers), rtol=1e-12)
    top = distribution(prompt)[:4]
    assert c.tokens == tuple(t for t, _ in top)
    np.testing.assert_allclose(c.logprobs, [lp for _, lp in top])
    forms = [v for a in answers for v in variants(a)]
    assert requests == 1 + n_sequences(answers)
    assert counts == {prompt: 1, **{prompt + v: 1 for v in forms}}
    scoring = [b for b in bodies if "prompt_logprobs" in b]
    assert len(scoring) == len(forms)
    assert all(b["prompt_logprobs"] == 0 and isinstance(b["prompt"], list) for b in scoring)
    # usage: the stub's prompt tokens (its words) summed over every request of the prompt
    assert c.prompt_tokens == sum(len(t.split()) for t in [prompt, *(prompt + v for v in forms)])
    assert c.completion_tokens == 1 + len(forms)


def test_requests_per_minute_paces_every_request_of_a_prompt():
    query = Query(top_logprobs=2, answers=("card arrival", "exchange rate"))
    with vllm_stub() as stub:
        b = backend(stub, "pl-paced", requests_per_minute=600)
        plan = b._plan(query, "sk-no-key-required", None, dict)
        assert sequence_plan(b, plan, query).requests_per_item == 1 + 16
    limiter = _RateLimiter(600, None)  # 10 a second, bursts of 10
    start = time.monotonic()
    asyncio.run(limiter.acquire(5, 13))
    assert time.monotonic() - start >= 0.25  # 3 requests past the burst


def test_a_second_call_is_answered_by_the_cache():
    with vllm_stub() as stub:
        clf = make(stub, "pl-cache", cache=True)
        first = clf.predict_proba(TEXTS)
        sent = stub.requests
        again = make(stub, "pl-cache", cache=True).predict_proba(TEXTS)
        assert stub.requests == sent
    np.testing.assert_array_equal(first, again)


def test_support_is_detected_once_per_server_and_model():
    with vllm_stub() as stub:
        make(stub, "pl-once").predict_proba(TEXTS[:1])
        make(stub, "pl-once").predict_proba(TEXTS[1:])
        assert stub.prompt_requests["Hello, world"] == 1
        make(stub, "pl-once-other").predict_proba(TEXTS[:1])
        assert stub.prompt_requests["Hello, world"] == 2


# ------------------------------------------------------------------ fallback and keys


def test_a_server_without_prompt_logprobs_falls_back_to_top_k_with_a_warning():
    with OpenAIStub() as stub:  # no vLLM fields: the probe gets a 400
        with pytest.warns(UserWarning, match="does not serve prompt_logprobs"):
            clf = make(stub, "pl-old")
        proba = clf.predict_proba(TEXTS)
        probes = stub.prompt_requests["Hello, world"]
        bodies = [e["body"] for e in stub.log if e["body"].get("prompt") != "Hello, world"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once per process
            make(stub, "pl-old")
    assert isinstance(clf.scorer_, TopKScorer) and clf.uses_option_codes_
    assert probes == 1 and proba.shape == (3, 3)
    assert bodies and all("prompt_logprobs" not in b for b in bodies)
    plain = make(stub, "pl-old", backend_options=None)
    query = clf.scorer_.query(clf.top_logprobs)
    assert clf.backend_.request_settings(query) == plain.backend_.request_settings(query)


def test_the_exact_cache_key_differs_from_the_top_k_one():
    labels = ["positive", "negative"]
    with vllm_stub() as stub:
        exact = make(stub, "pl-keys", cache=True, labels=labels)
        top_k = make(stub, "pl-keys", cache=True, labels=labels, backend_options=None)
        q_exact, q_top = exact.scorer_.query(3), top_k.scorer_.query(3)
        s_exact = exact.backend_.request_settings(q_exact)
        s_top = top_k.backend_.request_settings(q_top)
        assert s_exact["label_scores"] == "prompt_logprobs"
        assert s_exact["answers"] == sorted(labels)
        assert "label_scores" not in s_top and "answers" not in s_top
        prompt = exact.render_prompts(TEXTS[:1])[0]
        identity = exact.backend_.identity()
        assert KeyBuilder(identity, s_exact)(prompt) != KeyBuilder(identity, s_top)(prompt)
        # neither answers the other from the cache
        exact.predict_proba(TEXTS)
        sent = stub.requests
        top_k.predict_proba(TEXTS)
        assert stub.requests == sent + len(TEXTS)


def test_answers_cannot_be_scored_exactly_where_support_is_missing():
    with OpenAIStub() as stub:
        with pytest.warns(UserWarning):
            b = backend(stub, "pl-stale")
            assert not b.exact
        query = Query(top_logprobs=3, answers=("positive", "negative"))
        with pytest.raises(exc.LogprobsUnsupportedError, match="fitted again"):
            b.request_settings(query)
        assert b.request_settings(Query(top_logprobs=3)) == OpenAIBackend(
            "pl-stale", base_url=stub.base_url, endpoint="completions"
        ).request_settings(Query(top_logprobs=3))


# ------------------------------------------------------------------ errors


def test_a_500_partway_keeps_the_answered_prompts():
    with vllm_stub() as stub:
        clf = make(stub, "pl-500", cache=True, max_retries=0)
        prompts = clf.render_prompts(TEXTS)
        stub.add_fault("500", times=None, match=prompts[1] + " card")
        with pytest.raises(exc.PartialResultsError):
            clf.predict_proba(TEXTS)
        stub.clear_faults()
        stub.reset()
        clf.predict_proba(TEXTS)
        assert stub.requests == 1 + n_sequences(clf.answers_)
        assert set(stub.prompt_requests) >= {prompts[1]}
        assert prompts[0] not in stub.prompt_requests and prompts[2] not in stub.prompt_requests


def test_a_rejected_scoring_request_stops_the_call():
    with vllm_stub() as stub:
        clf = make(stub, "pl-400")
        stub.add_fault("400", match=" exchange rate")
        with pytest.raises(exc.RequestRejectedError):
            clf.predict_proba(TEXTS)


def test_settings_that_cannot_work_are_refused():
    with vllm_stub() as stub:
        with pytest.raises(exc.ConfigurationError, match="endpoint='completions'"):
            make(stub, "pl-chat", endpoint="auto")
        with pytest.raises(exc.ConfigurationError, match="give one of the two"):
            make(stub, "pl-both", backend_options={**OPTION, "label_token_ids": True})
        with pytest.raises(exc.ConfigurationError, match="label_scores='sequences'"):
            make(stub, "pl-typo", backend_options={"label_scores": "sequences"})


def test_a_server_that_cannot_be_asked_fails_the_fit_clearly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clf = LogprobClassifier(
        "pl-down",
        labels=LABELS,
        base_url=f"http://127.0.0.1:{port}/v1",
        endpoint="completions",
        backend_options=OPTION,
        cache=False,
    )
    with pytest.raises(exc.BackendUnavailableError, match="could not be asked"):
        clf.fit(None, None)
