"""What LogprobClassifier sends a decision backend, on the wire of the real openai
SDK against the stub's ``/v1/decisions`` route: the template's instruction part,
few-shot examples, 1-D and 2-D rows, the labels= order, prompt_cache_key, and the
refusal policy (cached answers, counted in usage, a warning or a RefusalError)."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

from skllmprob import LogprobClassifier
from skllmprob.exceptions import ConfigurationError, RefusalError
from skllmprob.testing.openai_stub import OpenAIStub

MODEL = "gpt-6-luna"
CUES = {"positive": ("great", "wonderful"), "negative": ("dull", "awful")}


def cue_weights(text: str, values: list) -> list[float]:
    words = text.lower().replace('"', " ").replace(",", " ").split()
    return [1.0 + 3.0 * sum(w in words for w in CUES.get(v, ())) for v in values]


@pytest.fixture
def stub():
    with OpenAIStub(decisions=cue_weights) as s:
        yield s


def classifier(stub, **kw):
    kw.setdefault("labels", ["positive", "negative"])
    kw.setdefault("cache", False)
    return LogprobClassifier(
        MODEL, backend="decisions", base_url=stub.base_url, api_key="sk-test", max_retries=0, **kw
    )


def bodies(stub):
    return [e["body"] for e in stub.log if e.get("body")]


def test_instructions_examples_and_rows(stub):
    clf = classifier(
        stub,
        prompt="Sentiment of a review. Options: {labels}.\n\n{examples}Review: {text}\nLabel:",
        examples=[("a great cast", "positive"), ("an awful plot", "negative")],
    ).fit(None, None)
    clf.predict_proba(["a wonderful film", "a dull film"])
    sent = bodies(stub)
    assert len(sent) == 2
    (q,) = sent[0]["questions"]
    # the instruction part only: no examples, no row
    assert q["instructions"] == "Sentiment of a review. Options: positive, negative."
    assert [c["value"] for c in q["choices"]] == ["positive", "negative"]
    inputs = {b["input"][-1]["content"]: b["input"] for b in sent}
    assert set(inputs) == {"Review: a wonderful film\nLabel:", "Review: a dull film\nLabel:"}
    shots = inputs["Review: a dull film\nLabel:"][:-1]
    assert shots == [
        {"role": "user", "content": "Review: a great cast\nLabel:"},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "Review: an awful plot\nLabel:"},
        {"role": "assistant", "content": "negative"},
    ]
    # the shared part is a stable prefix under one prompt_cache_key
    assert sent[0]["input"][:-1] == sent[1]["input"][:-1]
    assert len({b["prompt_cache_key"] for b in sent}) == 1
    # the stub scores the last user message (the row), not the examples
    proba = clf.predict_proba(["a wonderful film", "a dull film"])
    assert proba[:, list(clf.classes_).index("positive")].tolist() == pytest.approx([0.8, 0.2])


def test_default_prompt_and_no_examples_send_the_row_text(stub):
    clf = classifier(stub).fit(None, None)
    clf.predict_proba(["a great film"])
    (body,) = bodies(stub)
    assert body["input"] == "<text>a great film</text>\nCategory:"
    instructions = body["questions"][0]["instructions"]
    assert (
        instructions == "Categories: positive, negative. The text is between <text> and </text>."
    )


def test_prompt_cache_key_follows_the_shared_part(stub):
    keys = []
    for shots in ([("a great cast", "positive")], [("a dull cast", "negative")], None):
        classifier(stub, examples=shots).fit(None, None).predict_proba(["a film"])
        keys.append(bodies(stub)[-1]["prompt_cache_key"])
    assert len(set(keys)) == 3


def test_2d_rows_are_json(stub):
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(
        {
            "title": ["great", "dull"],
            "stars": [np.int64(5), np.int64(1)],
            "note": [1.5, np.float32(2.5)],
        }
    )
    clf = classifier(
        stub,
        prompt="Rate the review. {labels}\n\n{examples}Title: {title} Stars: {stars}\nLabel:",
        examples=[({"title": "awful", "stars": 2}, "negative")],
    ).fit(None, None)
    proba = clf.predict_proba(X)
    sent = sorted(bodies(stub), key=lambda b: b["input"][-1]["content"][0]["data"]["stars"])
    assert [b["input"][-1]["content"] for b in sent] == [
        [{"type": "input_json", "data": {"title": "dull", "stars": 1}}],
        [{"type": "input_json", "data": {"title": "great", "stars": 5}}],
    ]
    assert sent[0]["input"][0] == {
        "role": "user",
        "content": [{"type": "input_json", "data": {"title": "awful", "stars": 2}}],
    }
    assert sent[0]["input"][1] == {"role": "assistant", "content": "negative"}
    pos = list(clf.classes_).index("positive")
    assert proba[0, pos] > 0.5 > proba[1, pos]
    # a {text} prompt and a table without a "text" column: every column
    clf = classifier(stub).fit(None, None)
    clf.predict_proba(X.iloc[1:])
    assert bodies(stub)[-1]["input"] == [
        {
            "role": "user",
            "content": [
                {"type": "input_json", "data": {"title": "dull", "stars": 1, "note": 2.5}}
            ],
        }
    ]


def test_score_levels_in_labels_order(stub):
    levels = ["low", "medium", "high"]  # sorted classes_ would be high, low, medium

    def weights(text, values):
        return [{"low": 1.0, "medium": 2.0, "high": 5.0}[v] for v in values]

    stub.decisions = weights
    clf = classifier(stub, labels=levels, backend_options={"question": "score"}).fit(None, None)
    proba = clf.predict_proba(["how urgent"])
    (q,) = bodies(stub)[-1]["questions"]
    assert q["type"] == "score" and [lv["label"] for lv in q["levels"]] == levels
    assert list(clf.classes_) == ["high", "low", "medium"]
    np.testing.assert_allclose(proba[0], [5 / 8, 1 / 8, 2 / 8], atol=1e-5)


def test_refusals_warn_are_cached_and_counted(stub, tmp_path):
    stub.add_fault("refusal", match="secret", times=None)
    cache = str(tmp_path / "c.sqlite")
    X = ["a great film", "the secret plan", "a dull film", "a film"]
    y = ["positive", "negative", "negative", "positive"]
    with pytest.warns(UserWarning, match=r"refused 1 of 4 rows \(rows 1\)"):
        clf = classifier(stub, cache=cache, calibration="bias").fit(X, y)
    assert stub.requests == 4
    assert clf.usage_.last.requests == 4 and clf.usage_.last.prompt_tokens > 0
    refused_tokens = [e for e in stub.log if "secret" in e["body"]["input"]]
    assert len(refused_tokens) == 1
    with pytest.warns(UserWarning, match="refused 1 of 4"):
        scores = clf.score_texts(X)  # from the cache: no request
    assert stub.requests == 4 and clf.usage_.last.cache_hits == 4
    assert scores.coverage[1] == 0.0 and np.all(scores.coverage[[0, 2, 3]] == 1.0)
    with pytest.warns(UserWarning):
        proba = clf.predict_proba(X)
    no_scores = clf.calibrator_.predict_proba(np.full((1, 2), -np.inf))
    np.testing.assert_allclose(proba[1], no_scores[0])


def test_refusals_raise_when_asked(stub, tmp_path):
    stub.add_fault("refusal", match="secret", times=None)
    cache = str(tmp_path / "c.sqlite")
    X = ["a great film", "the secret plan", "a film", "the secret plan, again"]
    clf = classifier(stub, cache=cache, backend_options={"on_refusal": "raise"}).fit(None, None)
    with pytest.raises(RefusalError, match=r"refused 2 of 4 rows \(rows 1, 3\)") as info:
        clf.predict_proba(X)
    assert info.value.rows == [1, 3]
    assert "on_refusal" in str(info.value)
    assert pickle.loads(pickle.dumps(info.value)).rows == [1, 3]
    # every answer, refusals included, was paid for, counted and cached
    assert stub.requests == 4 and clf.usage_.last.requests == 4
    assert clf.usage_.last.prompt_tokens > 0
    with pytest.raises(RefusalError):
        clf.predict_proba(X)
    assert stub.requests == 4 and clf.usage_.last.cache_hits == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert clf.predict_proba(["a film"]).shape == (1, 2)  # no refusal, no warning
    with pytest.raises(ConfigurationError, match="on_refusal='ignore'"):
        classifier(stub, backend_options={"on_refusal": "ignore"}).fit(None, None)


def test_77_intents_fit_in_one_choice_question(stub):
    intents = [f"intent_{i:02d}" for i in range(77)]
    stub.decisions = lambda text, values: [5.0 if v in text else 1.0 for v in values]
    clf = classifier(stub, labels=intents).fit(None, None)
    proba = clf.predict_proba(["this is about intent_42"])
    (q,) = bodies(stub)[-1]["questions"]
    assert [c["value"] for c in q["choices"]] == intents
    assert clf.classes_[proba.argmax()] == "intent_42"
    np.testing.assert_allclose(proba.max(), 5 / 81, atol=1e-5)


def test_key_never_in_the_cache_file(stub, tmp_path):
    secret = "sk-decisions-cache-secret-77"
    cache = tmp_path / "c.sqlite"
    clf = LogprobClassifier(
        MODEL,
        backend="decisions",
        base_url=stub.base_url,
        api_key=secret,
        labels=["positive", "negative"],
        cache=str(cache),
        max_retries=0,
    ).fit(None, None)
    clf.predict_proba(["a great film", "a dull film"])
    assert stub.requests == 2
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert len(stored) > 0
    assert secret.encode() not in stored
    assert secret.encode() not in pickle.dumps(clf) and secret not in repr(clf)


def test_requests_per_minute_paces_the_shared_runner(stub):
    import time

    clf = classifier(stub, backend_options={"requests_per_minute": 240}).fit(None, None)
    t0 = time.perf_counter()
    clf.predict_proba([f"film {i}" for i in range(10)])
    elapsed = time.perf_counter() - t0
    assert stub.requests == 10
    assert elapsed >= 1.3  # a burst of 4 (one second's worth), then 4 per second


@pytest.mark.parametrize(
    ("model", "backend", "message", "fix"),
    [
        ("gpt-4o-mini", "decisions", "not a decision model", "backend='openai'"),
        (MODEL, "openai", "is a decisions model", "backend='decisions'"),
    ],
)
def test_wrong_kind_of_model_through_the_estimator(stub, model, backend, message, fix):
    from skllmprob.exceptions import RequestRejectedError

    clf = LogprobClassifier(
        model,
        backend=backend,
        base_url=stub.base_url,
        api_key="sk-test",
        labels=["positive", "negative"],
        cache=False,
        max_retries=0,
        max_concurrency=1,
    ).fit(None, None)
    with pytest.raises(RequestRejectedError, match=message) as info:
        clf.predict_proba(["a film", "another film", "a third film"])
    assert fix in str(info.value)
    assert stub.requests == 1  # one clear error, at once


def test_descriptions_are_checked_on_every_backend():
    clf = LogprobClassifier(
        backend="deterministic", labels=["yes", "no"], descriptions={"maybe": "x"}, cache=False
    )
    with pytest.raises(
        ConfigurationError, match=r"not classes \(the classes are \['no', 'yes'\]\)"
    ):
        clf.fit(None, None)  # checked in fit, before any request
