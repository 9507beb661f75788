"""DecisionsBackend: the real openai SDK's ``client.decisions.create`` against the
stub's ``/v1/decisions`` route (wire shapes, faults, errors, keys)."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

from skllmprob.backends import Completion, DeterministicBackend
from skllmprob.backends.base import Query
from skllmprob.backends.decisions import DecisionsBackend, is_refusal
from skllmprob.backends.decisions.estimator import warn_refusals
from skllmprob.backends.decisions.parsing import REFUSED
from skllmprob.backends.openai import OpenAIBackend
from skllmprob.exceptions import (
    BackendUnavailableError,
    ConfigurationError,
    PartialResultsError,
    RequestRejectedError,
)
from skllmprob.testing.openai_stub import OpenAIStub

MODEL = "gpt-6-luna"
CUES = {"positive": ("wonderful", "great"), "negative": ("dull", "awful"), True: ("great",)}


def cue_weights(text: str, values: list) -> list[float]:
    """1 + 3 per cue word of the option found in the text (deterministic)."""
    words = text.lower().split()
    return [1.0 + 3.0 * sum(w in words for w in CUES.get(v, ())) for v in values]


def expected(text: str, values) -> np.ndarray:
    w = np.array(cue_weights(text, list(values)))
    return w / w.sum()


@pytest.fixture
def stub():
    with OpenAIStub(decisions=cue_weights) as s:
        yield s


def run(backend, prompts, answers=("positive", "negative")):
    out: dict = {}
    backend.complete(prompts, Query(answers=tuple(answers)), on_result=out.__setitem__)
    return [out[i] for i in sorted(out)]


def backend(stub, **kw):
    kw.setdefault("max_retries", 0)
    return DecisionsBackend(MODEL, base_url=stub.base_url, api_key="sk-test", **kw)


def test_choice_wire_and_class_order(stub):
    b = backend(
        stub,
        instructions="What is the sentiment?",
        descriptions={"positive": "the reviewer liked it"},
    )
    texts = ["a wonderful great film", "a dull film", "a film"]
    for answers in (("positive", "negative"), ("negative", "positive")):
        comps = run(b, texts, answers)
        for text, c in zip(texts, comps, strict=True):
            np.testing.assert_allclose(
                np.exp(c.answer_logprobs), expected(text, answers), atol=1e-5
            )
            assert c.tokens[0] == answers[int(np.argmax(c.answer_logprobs))]
    (body,) = [e["body"] for e in stub.log if e["body"]["input"] == texts[0]][:1]
    assert body["model"] == MODEL
    (q,) = body["questions"]
    assert q["type"] == "choice" and q["instructions"] == "What is the sentiment?"
    assert q["choices"] == [
        {"value": "positive", "description": "the reviewer liked it"},
        {"value": "negative"},
    ]
    assert b.exact is True


def test_prompt_cache_key_is_shared_and_cached_tokens_reported(stub):
    comps = run(backend(stub, max_concurrency=1), ["a great film", "a dull film"])
    keys = {e["body"]["prompt_cache_key"] for e in stub.log}
    assert len(keys) == 1
    assert comps[0].prompt_tokens > 0
    assert comps[0].cached_tokens == 0 and comps[1].cached_tokens > 0


def test_predicate_and_score(stub):
    comps = run(backend(stub, question="predicate"), ["a great film", "a film"], ("no", "yes"))
    assert stub.log[0]["body"]["questions"][0]["type"] == "predicate"
    p_true = [expected("a great film", [False, True])[1], expected("a film", [False, True])[1]]
    np.testing.assert_allclose([np.exp(c.answer_logprobs[1]) for c in comps], p_true, atol=1e-5)
    levels = ("negative", "neutral", "positive")
    (c,) = run(backend(stub, question="score"), ["wonderful"], levels)
    assert [lv["label"] for lv in stub.log[-1]["body"]["questions"][0]["levels"]] == list(levels)
    np.testing.assert_allclose(np.exp(c.answer_logprobs), expected("wonderful", levels), atol=1e-5)
    with pytest.raises(ConfigurationError, match="exactly 2 classes"):
        run(backend(stub, question="predicate"), ["x"], ("a", "b", "c"))


def test_429_is_retried_by_the_sdk(stub):
    stub.add_fault("429", retry_after=0.01)
    (c,) = run(backend(stub, max_retries=2), ["a great film"])
    assert stub.requests == 2 and stub.status_counts[429] == 1
    assert not is_refusal(c)


def test_500_after_retries_is_a_partial_error(stub):
    stub.add_fault("500", match="dull", times=None, retry_after=0.0)
    with pytest.raises(PartialResultsError, match="1 of 2 prompts") as info:
        run(backend(stub, max_retries=1), ["a great film", "a dull film"])
    assert info.value.n_completed == 1
    assert stub.prompt_requests["a dull film"] == 2  # one retry, no second loop


def test_timeout(stub):
    stub.add_fault("timeout", hang=3.0)
    with pytest.raises(PartialResultsError, match="timed out"):
        run(backend(stub, timeout=0.3), ["a great film", "a film"])


def test_refusal_is_an_answer_with_no_mass(stub):
    stub.add_fault("refusal", match="secret")
    comps = run(backend(stub), ["a great film", "the secret plan"])
    assert not is_refusal(comps[0]) and is_refusal(comps[1])
    assert np.isneginf(comps[1].answer_logprobs).all()
    assert comps[1].answer_logprobs.shape == (2,)


def test_malformed_bodies(stub):
    stub.add_fault("malformed", times=None)
    with pytest.raises(BackendUnavailableError, match="not with an OpenAI completion"):
        run(backend(stub), ["a great film"])
    stub.clear_faults()
    stub.add_fault("empty")  # 200 with no answers
    with pytest.raises(PartialResultsError, match="malformed"):
        run(backend(stub), ["a film", "a great film"])


def test_chat_model_sent_to_decisions(stub):
    b = DecisionsBackend(
        "gpt-4o-mini", base_url=stub.base_url, api_key="k", max_retries=0, max_concurrency=1
    )
    with pytest.raises(RequestRejectedError, match="not a decision model") as info:
        run(b, ["a film", "another film", "a third"])
    assert "backend='openai'" in str(info.value)
    assert stub.requests == 1  # stopped at once


def test_decision_model_sent_to_chat(stub):
    b = OpenAIBackend(MODEL, base_url=stub.base_url, api_key="k", max_retries=0)
    out: dict = {}
    with pytest.raises(RequestRejectedError, match="is a decisions model") as info:
        b.complete(["a film"], Query(), on_result=out.__setitem__)
    assert "backend='decisions'" in str(info.value)


def test_endpoint_that_does_not_exist(stub):
    b = DecisionsBackend(MODEL, base_url=stub.url, api_key="k", max_retries=0)  # no /v1
    with pytest.raises(RequestRejectedError, match="does not exist") as info:
        run(b, ["a film"])
    assert "ending in '/v1'" in str(info.value) and "backend='systemone'" in str(info.value)


def test_key_never_in_repr_pickle_or_error():
    secret = "sk-decisions-secret-123"
    with OpenAIStub(api_key="other") as stub:
        stub.add_fault("400", message="bad key {key}")
        b = DecisionsBackend(MODEL, base_url=stub.base_url, api_key=secret, max_retries=0)
        assert secret not in repr(b) and secret not in str(b.identity())
        assert secret.encode() not in pickle.dumps(b)
        with pytest.raises(RequestRejectedError) as info:
            run(b, ["a film"])
        assert "401" in str(info.value) and "$OPENAI_API_KEY" in str(info.value)
        assert secret not in str(info.value) and secret.encode() not in pickle.dumps(info.value)


def test_bounded_concurrency():
    with OpenAIStub(latency=0.05, decisions=cue_weights) as stub:
        comps = run(backend(stub, max_concurrency=3), [f"film {i}" for i in range(24)])
        assert len(comps) == 24
        assert 1 < stub.peak_in_flight <= 3
        assert stub.requests == 24


def test_settings_checked():
    b = DecisionsBackend(MODEL, api_key="k", descriptions={"maybe": "x"})
    with pytest.raises(ConfigurationError, match="not classes"):
        b.check_query(Query(answers=("yes", "no")))
    with pytest.raises(ConfigurationError, match="2 to 255 options"):
        DecisionsBackend(MODEL).check_query(Query(answers=tuple(map(str, range(256)))))
    with pytest.raises(ConfigurationError, match="question="):
        DecisionsBackend(MODEL, question="yesno")
    # what changes the answers is part of the cache key, the key is not
    rs = DecisionsBackend(MODEL, instructions="I", descriptions={"a": "d"}).request_settings(
        Query(answers=("a", "b"))
    )
    assert rs["instructions"] == "I" and rs["descriptions"] == {"a": "d"}


def test_key_never_in_debug_logs(stub, caplog):
    secret = "sk-decisions-log-secret-9"
    caplog.set_level("DEBUG")
    b = DecisionsBackend(MODEL, base_url=stub.base_url, api_key=secret, max_retries=1)
    stub.add_fault("429", retry_after=0.0)
    run(b, ["a great film"])
    assert caplog.records  # the SDK and the backend did log
    assert secret not in caplog.text


def test_refusals_count_in_usage(stub):
    stub.add_fault("refusal")
    (c,) = run(backend(stub), ["a film"])
    assert is_refusal(c) and c.prompt_tokens > 0


# ---------------------------------------------------------------------------------------
# Through LogprobClassifier

TEAMS = ("billing", "shipping", "account")


def team_rows(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = [TEAMS[i % 3] for i in range(n)]
    X = [f"ticket {seed}-{i} about {t} strength {rng.integers(1, 4)}" for i, t in enumerate(y)]
    return X, y


def team_weights(bias: float):
    """The true class gets 1 + strength, the others 1; 'account' is inflated by
    ``bias`` (a multiplicative bias: additive on the log scale, what 'bias' removes)."""

    def weights(text: str, values: list) -> list[float]:
        words = text.replace("<", " ").split()
        strength = float(words[words.index("strength") + 1])
        w = [1.0 + strength * (v in words) for v in values]
        return [wi * (bias if v == "account" else 1.0) for wi, v in zip(w, values, strict=True)]

    return weights


def fitted(stub, X, y, calibration):
    from skllmprob import LogprobClassifier

    clf = LogprobClassifier(
        MODEL,
        backend="decisions",
        base_url=stub.base_url,
        api_key="sk-test",
        labels=list(TEAMS),
        calibration=calibration,
        cache=False,
        max_retries=0,
    )
    return clf.fit(X, y) if calibration != "none" else clf.fit(None, None)


def test_calibration_removes_a_known_bias():
    from sklearn.metrics import accuracy_score, log_loss

    X_fit, y_fit = team_rows(64, seed=1)
    X_test, y_test = team_rows(90, seed=2)
    with OpenAIStub(decisions=team_weights(1.0)) as clean:
        ref = fitted(clean, None, None, "none")
        ref_acc = accuracy_score(y_test, ref.predict(X_test))
        ref_loss = log_loss(y_test, ref.predict_proba(X_test), labels=ref.classes_)
    with OpenAIStub(decisions=team_weights(6.0)) as biased:
        raw = fitted(biased, None, None, "none")
        raw_acc = accuracy_score(y_test, raw.predict(X_test))
        clf = fitted(biased, X_fit, y_fit, "bias")
        acc = accuracy_score(y_test, clf.predict(X_test))
        loss = log_loss(y_test, clf.predict_proba(X_test), labels=clf.classes_)
    assert ref_acc > 0.9 and raw_acc < 0.6  # the bias hurts
    assert acc >= ref_acc - 0.02
    assert loss <= ref_loss + 0.05


def test_estimator_cache_refusals_and_descriptions(tmp_path):
    from skllmprob import LogprobClassifier

    cache = str(tmp_path / "c.sqlite")
    X, y = team_rows(12, seed=3)
    with OpenAIStub(decisions=team_weights(1.0)) as stub:
        stub.add_fault("refusal", match="3-5 ")

        def make():
            return LogprobClassifier(
                MODEL,
                backend="decisions",
                base_url=stub.base_url,
                api_key="sk-test",
                labels=list(TEAMS),
                descriptions={"billing": "money matters"},
                calibration="bias",
                cache=cache,
                max_retries=0,
            )

        with pytest.warns(UserWarning, match=r"refused 1 of 12 rows \(rows 5\)"):
            clf = make().fit(X, y)
        assert stub.requests == 12
        q = stub.log[0]["body"]["questions"][0]
        assert {"value": "billing", "description": "money matters"} in q["choices"]
        assert q["instructions"].startswith("Categories: billing, shipping, account.")
        with pytest.warns(UserWarning, match="refused"):
            cov = make().fit(X, y).predict_coverage(X)  # a new estimator: all cached
        assert stub.requests == 12
        assert cov[5] == 0.0 and np.allclose(np.delete(cov, 5), 1.0)
        proba = clf.predict_proba(["ticket x about shipping strength 3"])
        assert clf.classes_[proba.argmax()] == "shipping"
        with pytest.raises(ConfigurationError, match="not classes"):
            make().set_params(descriptions={"sales": "x"}, cache=False).fit(X, y)


def test_make_backend_names():
    from skllmprob.backends import make_backend
    from skllmprob.backends.decisions import SystemOneBackend

    b = make_backend(
        backend="systemone", model="jev-latest", backend_options={"path": "/alpha/decisions"}
    )
    assert isinstance(b, SystemOneBackend) and b.path == "/alpha/decisions"
    assert isinstance(make_backend(backend="decisions", model=MODEL), DecisionsBackend)
    with pytest.raises(ConfigurationError, match="needs a model name"):
        make_backend(backend="decisions")
    with pytest.raises(ConfigurationError, match="endpoint='chat' is a setting"):
        make_backend(backend="systemone", model="m", endpoint="chat")
    with pytest.raises(ConfigurationError, match="backend_options"):
        make_backend(backend="decisions", model=MODEL, backend_options={"n_ctx": 5})


def test_only_decision_backends_refuse():
    # A top-k backend's answer that happens to be the refusal token is a token like
    # any other: no warning, and no check per row for it.
    rows = [Completion(REFUSED, np.array([0.0])), Completion(("a",), np.array([-1.0]))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_refusals(rows, DeterministicBackend()) == []
    with pytest.warns(UserWarning, match="refused 1 of 2 rows"):
        assert warn_refusals(rows, DecisionsBackend("m", base_url="http://127.0.0.1:9/v1")) == [0]
    with pytest.warns(UserWarning, match="refused 1 of 2 rows"):
        assert warn_refusals(rows) == [0]
