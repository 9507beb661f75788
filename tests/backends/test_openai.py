"""The OpenAI backend against the stub server: real HTTP on 127.0.0.1 through the real
``openai`` client, scripted faults, parsing quirks, secrets, concurrency and limits."""

from __future__ import annotations

import asyncio
import logging
import math
import pickle
import socket
import threading
import time
import traceback

import numpy as np
import pytest

from skllmprob import (
    BackendUnavailableError,
    ConfigurationError,
    LogprobClassifier,
    LogprobsUnsupportedError,
    PartialResultsError,
    RequestRejectedError,
)
from skllmprob.backends import DeterministicBackend, Query, resource_loads
from skllmprob.backends.openai import (
    OpenAIBackend,
    _loads_keeping_duplicates,
    parse_chat_response,
    parse_completions_response,
)
from skllmprob.cache import default_cache_path
from skllmprob.testing import OpenAIStub

LABELS = ["positive", "negative"]
TEXTS = [
    "what a great film, I loved it",
    "boring, dull and far too long",
    "a wonderful and moving story",
    "an awful mess, I hated it",
    "brilliant acting, a real gem",
    "tedious plot and poor acting",
]
KEY = "sk-test-SECRET-key-0123456789abcdef"


@pytest.fixture
def stub():
    with OpenAIStub() as s:
        yield s


def make(stub, **kw):
    kw.setdefault("labels", LABELS)
    kw.setdefault("progress", False)
    model = kw.pop("model", "stub-model")
    return LogprobClassifier(model, base_url=stub.base_url, **kw).fit(None, None)


def reference_proba(texts, **kw):
    clf = LogprobClassifier(labels=LABELS, backend=DeterministicBackend(), cache=False, **kw).fit(
        None, None
    )
    return clf.predict_proba(texts)


def collect(backend, prompts, top_logprobs=20):
    out = {}
    backend.complete(prompts, Query(top_logprobs=top_logprobs), on_result=out.__setitem__)
    return out


# ------------------------------------------------------------------ happy paths


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_probabilities_match_the_same_model_in_process(stub, endpoint):
    clf = make(stub, endpoint=endpoint, cache=False)
    proba = clf.predict_proba(TEXTS)
    np.testing.assert_allclose(proba, reference_proba(TEXTS), rtol=1e-12)
    assert stub.requests == len(TEXTS)
    assert list(clf.predict(TEXTS)) == ["positive", "negative"] * 3
    bodies = [e["body"] for e in list(stub.log)[: len(TEXTS)]]
    prompts = clf.render_prompts(TEXTS)
    for body in bodies:
        assert body["model"] == "stub-model"
        assert body["temperature"] == 1.0  # set explicitly
        assert body["max_tokens"] == 1  # a local server: max_tokens
        assert "max_completion_tokens" not in body
    if endpoint == "chat":
        assert all(b["logprobs"] is True and b["top_logprobs"] == 20 for b in bodies)
        assert all(len(b["messages"]) == 1 and b["messages"][0]["role"] == "user" for b in bodies)
        assert sorted(b["messages"][0]["content"] for b in bodies) == sorted(prompts)
    else:
        assert all(b["logprobs"] == 20 for b in bodies)
        assert sorted(b["prompt"] for b in bodies) == sorted(prompts)


def test_backend_options_reach_the_request(stub):
    clf = make(
        stub,
        top_logprobs=5,
        backend_options={
            "system_prompt": "You are a sentiment classifier.",
            "temperature": 0.0,
            "seed": 7,
            "logit_bias": {123: 5},
            "max_tokens_param": "max_completion_tokens",
        },
    )
    clf.predict_proba(TEXTS[:1])
    body = stub.log[-1]["body"]
    assert body["messages"][0] == {"role": "system", "content": "You are a sentiment classifier."}
    assert body["temperature"] == 0.0 and body["seed"] == 7 and body["top_logprobs"] == 5
    assert body["logit_bias"] == {"123": 5}
    assert body["max_completion_tokens"] == 1 and "max_tokens" not in body


def test_openai_and_azure_get_max_completion_tokens_and_caps():
    def body(b, top=20):
        return b._plan(Query(top_logprobs=top), "k", None, object).body

    openai_chat = OpenAIBackend("gpt-4o-mini", api_key="k")
    assert body(openai_chat)["max_completion_tokens"] == 1
    assert openai_chat.max_top_logprobs == 20
    legacy = OpenAIBackend("gpt-3.5-turbo-instruct", api_key="k")
    assert legacy.resolved_endpoint() == "completions"
    assert legacy.max_top_logprobs == 5
    assert body(legacy, 5)["max_tokens"] == 1  # the legacy endpoint only knows max_tokens
    azure = OpenAIBackend("gpt-4o-mini", base_url="https://x.openai.azure.com/openai/v1")
    assert azure.is_azure() and body(azure)["max_completion_tokens"] == 1
    local = OpenAIBackend("llama", base_url="http://127.0.0.1:8080/v1")
    assert local.max_top_logprobs is None and body(local)["max_tokens"] == 1
    assert OpenAIBackend("m", base_url="http://h/v1", top_logprobs_limit=7).max_top_logprobs == 7


def test_top_logprobs_above_openai_cap_is_refused_before_any_request():
    clf = LogprobClassifier("gpt-4o-mini", labels=LABELS, api_key=KEY, top_logprobs=21)
    clf.fit(None, None)
    with pytest.raises(ConfigurationError, match=r"top_logprobs=21 .*OpenAI.*at most 20"):
        clf.predict_proba(["x"])
    clf = LogprobClassifier("davinci-002", labels=LABELS, api_key=KEY, top_logprobs=20)
    with pytest.raises(ConfigurationError, match="at most 5"):
        clf.fit(None, None).predict_proba(["x"])


def test_server_cap_gives_a_clear_rejection():
    with OpenAIStub(max_top_logprobs=5) as stub:
        clf = make(stub, top_logprobs=20, max_concurrency=1)
        with pytest.raises(RequestRejectedError, match="smaller top_logprobs") as info:
            clf.predict_proba(TEXTS)
        assert info.value.status_code == 400
        assert stub.requests == 1  # failed fast
        np.testing.assert_allclose(
            make(stub, top_logprobs=5).predict_proba(TEXTS),
            reference_proba(TEXTS, top_logprobs=5),
            rtol=1e-12,
        )


def test_azure_with_api_version_uses_deployment_route_and_api_key_header(stub):
    backend = OpenAIBackend(
        "my-deployment", base_url=stub.url, api_key=KEY, api_version="2024-10-21"
    )
    out = collect(backend, ["Text: great\nAnswer:"])
    assert out[0].tokens
    entry = stub.log[-1]
    assert entry["path"].startswith("/openai/deployments/my-deployment/chat/completions")
    assert "api-version=2024-10-21" in entry["path"]
    assert entry["auth"] == "api-key"
    assert entry["body"]["max_completion_tokens"] == 1


def test_azure_resource_url_without_api_version_is_explained():
    backend = OpenAIBackend("gpt-4o", base_url="https://res.openai.azure.com", api_key=KEY)
    with pytest.raises(ConfigurationError, match="api_version"):
        collect(backend, ["x"])


def test_missing_key_for_openai_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match=r"OPENAI_API_KEY"):
        collect(OpenAIBackend("gpt-4o-mini"), ["x"])


def test_key_read_lazily_from_environment(monkeypatch):
    with OpenAIStub(api_key=KEY) as stub:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        backend = OpenAIBackend("stub-model", base_url=stub.base_url, max_concurrency=1)
        with pytest.raises(RequestRejectedError, match="api_key") as info:
            collect(backend, ["a", "b"])  # the placeholder key is refused
        assert info.value.status_code == 401 and stub.requests == 1
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        assert len(collect(backend, ["a", "b"])) == 2
        assert stub.log[-1]["auth"] == "bearer"


def test_a_key_read_with_its_line_end_is_sent_stripped(monkeypatch):
    """A key read from a file or a CRLF ``.env``: the line end is not part of it."""
    with OpenAIStub(api_key="sk-SECRET-abc123") as stub:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        backend = OpenAIBackend("stub-model", base_url=stub.base_url, api_key="sk-SECRET-abc123\n")
        assert len(collect(backend, ["a", "b"])) == 2
        monkeypatch.setenv("OPENAI_API_KEY", "sk-SECRET-abc123\r")
        assert len(collect(OpenAIBackend("stub-model", base_url=stub.base_url), ["c"])) == 1
        assert stub.requests == 3 and stub.prompt_successes.total() == 3


@pytest.mark.parametrize(
    "key", ["sk-SECRET-abc\n123", "sk-SECRET-abc\u00e9123", "sk-SECRET\r\n-abc"]
)
def test_a_key_that_cannot_be_a_header_is_refused_before_any_request(key):
    with OpenAIStub(api_key="sk-SECRET-abc123") as stub:
        backend = OpenAIBackend("stub-model", base_url=stub.base_url, api_key=key)
        start = time.monotonic()
        with pytest.raises(ConfigurationError, match="cannot be sent in an HTTP header") as info:
            collect(backend, ["a", "b"])
        assert time.monotonic() - start < 2.0 and stub.requests == 0
        shown = "".join(traceback.format_exception(info.value)) + repr(info.value.args)
        assert "SECRET" not in shown and "abc" not in shown
        assert info.value.__cause__ is None and info.value.__context__ is None


def test_clones_share_one_client_and_loop(stub):
    before = resource_loads("openai-client")
    for _ in range(3):
        make(stub, cache=False).predict_proba(TEXTS[:2])
    assert resource_loads("openai-client") - before <= 1
    assert resource_loads("openai-loop") <= 1


def test_identity_normalizes_url_and_never_holds_the_key():
    a = OpenAIBackend("m", base_url="HTTP://LocalHost:8000/v1/", api_key=KEY)
    b = OpenAIBackend("m", base_url="http://localhost:8000/v1", api_key="another")
    assert a.identity() == b.identity()
    assert a.identity()["base_url"] == "http://localhost:8000/v1"
    assert a.identity()["endpoint"] == "chat"
    c = OpenAIBackend("m", base_url="http://localhost:8000/v1", endpoint="completions")
    assert c.identity() != a.identity()
    q = Query(top_logprobs=5)
    assert a.request_settings(q) == b.request_settings(q)
    sys_a = OpenAIBackend("m", base_url="http://h/v1", system_prompt="be brief")
    assert sys_a.request_settings(q)["system_prompt"] == "be brief"
    assert OpenAIBackend("m", temperature=0.0).request_settings(q)["temperature"] == 0.0
    assert KEY not in repr(a) + str(a.identity()) + str(a.request_settings(q))


# ------------------------------------------------------------------ parsing quirks


def _dist(pairs):
    return lambda prompt: pairs


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_quirks_fewer_tokens_sentinel_leading_space_and_null_bytes(endpoint):
    pairs = [
        (" positive", math.log(0.5)),
        ("positive", math.log(0.1)),  # differs only by the leading space: both count
        ("\n", math.log(0.2)),
        (" negative", -9999.0),  # OpenAI's sentinel for an underflowed probability
    ]
    with OpenAIStub(distribution=_dist(pairs), token_bytes=False) as stub:
        clf = make(stub, endpoint=endpoint, cache=False)  # asks for 20, gets 4
        raw = clf.predict_label_logprobs(["x"])[0]
        cov = clf.predict_coverage(["x"])[0]
    pos, neg = list(clf.classes_).index("positive"), list(clf.classes_).index("negative")
    np.testing.assert_allclose(raw[pos], math.log(0.6))
    # The sentinel is dropped: "negative" gets the smallest returned log-prob as bound.
    np.testing.assert_allclose(raw[neg], math.log(0.1))
    np.testing.assert_allclose(cov, 0.6)


def test_duplicate_tokens_are_summed_in_chat():
    pairs = [(" positive", math.log(0.3)), (" negative", math.log(0.2)), (" positive", -2.0)]
    with OpenAIStub(distribution=_dist(pairs)) as stub:
        backend = OpenAIBackend("stub-model", base_url=stub.base_url)
        c = collect(backend, ["x"])[0]
    assert c.tokens == (" positive", " negative")
    np.testing.assert_allclose(c.logprobs[0], np.logaddexp(math.log(0.3), -2.0))


def test_duplicate_keys_are_summed_in_completions_json():
    raw = (
        b'{"choices": [{"text": " a", "logprobs": {"tokens": [" a"], "token_logprobs": [-1.0],'
        b' "top_logprobs": [{" a": -1.0, " b": -2.0, " a": -1.5}]}}],'
        b' "usage": {"prompt_tokens": 3, "completion_tokens": 1,'
        b' "prompt_tokens_details": {"cached_tokens": 2}}}'
    )
    c = parse_completions_response(_loads_keeping_duplicates(raw))
    assert c.tokens == (" a", " b")
    np.testing.assert_allclose(c.logprobs[0], np.logaddexp(-1.0, -1.5))
    assert (c.prompt_tokens, c.completion_tokens, c.cached_tokens) == (3, 1, 2)


def test_parsers_tolerate_missing_pieces():
    # No top list: the sampled token alone; bytes instead of a token; infinities dropped.
    c = parse_chat_response(
        {"choices": [{"logprobs": {"content": [{"token": "Yes", "logprob": -0.5}]}}]}
    )
    assert c.tokens == ("Yes",) and c.prompt_tokens == 0
    c = parse_chat_response(
        {
            "choices": [
                {
                    "logprobs": {
                        "content": [
                            {
                                "token": "A",
                                "logprob": -0.1,
                                "top_logprobs": [
                                    {"token": None, "bytes": [195, 169], "logprob": -0.1},
                                    {"token": "B", "logprob": float("-inf")},
                                    {"token": "C", "logprob": None},
                                ],
                            }
                        ]
                    }
                }
            ]
        }
    )
    assert c.tokens == ("é",)
    c = parse_completions_response(
        {"choices": [{"text": "x", "logprobs": {"tokens": ["x"], "token_logprobs": [-0.3]}}]}
    )
    assert c.tokens == ("x",)
    # The completions shape sent on a chat endpoint (seen from some servers).
    c = parse_chat_response({"choices": [{"logprobs": {"top_logprobs": [{"a": -0.1}]}}]})
    assert c.tokens == ("a",)


# ------------------------------------------------------------------ faults


def test_429_retry_after_is_honoured(stub):
    stub.add_fault("429", retry_after=1.0, match=TEXTS[0])
    clf = make(stub, cache=False)
    t0 = time.perf_counter()
    proba = clf.predict_proba(TEXTS)
    elapsed = time.perf_counter() - t0
    np.testing.assert_allclose(proba, reference_proba(TEXTS), rtol=1e-12)
    assert stub.requests == len(TEXTS) + 1
    assert elapsed >= 1.0  # the SDK's own first backoff would be at most 0.5 s
    assert all(n == 1 for n in stub.prompt_successes.values())


@pytest.mark.parametrize("kind", ["500", "503", "disconnect"])
def test_transient_fault_once_then_success(stub, kind):
    stub.add_fault(kind, times=1)
    proba = make(stub, cache=False).predict_proba(TEXTS)
    np.testing.assert_allclose(proba, reference_proba(TEXTS), rtol=1e-12)
    assert stub.requests == len(TEXTS) + 1


def test_timeout_once_then_success(stub):
    stub.add_fault("hang", times=1, hang=10.0, match=TEXTS[2])
    clf = make(stub, cache=False, timeout=0.5)
    t0 = time.perf_counter()
    proba = clf.predict_proba(TEXTS)
    assert time.perf_counter() - t0 >= 0.5
    np.testing.assert_allclose(proba, reference_proba(TEXTS), rtol=1e-12)
    assert stub.prompt_requests[clf.render_prompts([TEXTS[2]])[0]] == 2


def test_malformed_body_fails_that_prompt_only_and_a_rerun_sends_only_it(stub):
    stub.add_fault("malformed", times=1, match=TEXTS[3])
    clf = make(stub)
    with pytest.raises(
        PartialResultsError, match=r"1 of 6 prompts got no result.*malformed response"
    ) as info:
        clf.predict_proba(TEXTS)
    assert info.value.n_failed == 1 and info.value.n_completed == 5
    assert clf.usage_.last.failed == 1 and clf.usage_.last.requests == 5
    before = stub.requests
    proba = clf.predict_proba(TEXTS)
    assert stub.requests - before == 1
    np.testing.assert_allclose(proba, reference_proba(TEXTS), rtol=1e-12)


def test_failure_after_retries_keeps_completed_results_in_the_cache(stub):
    stub.add_fault("500", times=None, match=TEXTS[1])
    clf = make(stub, max_retries=1)
    with pytest.raises(
        PartialResultsError, match=r"1 of 6 prompts.*1 requests failed after 1 retries.*500"
    ) as info:
        clf.predict_proba(TEXTS)
    err = info.value
    assert err.n_failed == 1 and err.n_completed == 5 and err.errors
    assert stub.prompt_requests[clf.render_prompts([TEXTS[1]])[0]] == 2  # 1 + 1 retry
    stub.clear_faults()
    before = dict(stub.prompt_successes)
    proba = make(stub, max_retries=1).predict_proba(TEXTS)  # a fresh clone
    new = {p: n - before.get(p, 0) for p, n in stub.prompt_successes.items()}
    assert sum(new.values()) == 1  # only the failed prompt was sent again
    np.testing.assert_allclose(proba, reference_proba(TEXTS), rtol=1e-12)


def test_200_without_logprobs_is_one_clear_error(stub):
    stub.add_fault("no_logprobs", times=None)
    with pytest.raises(LogprobsUnsupportedError, match=r"stub-model.*without log-probab"):
        make(stub, max_concurrency=2).predict_proba(TEXTS)
    assert stub.requests <= 2


def test_reasoning_model_logprobs_error_names_model_and_fix(stub):
    stub.add_fault("logprobs_forbidden", times=None)
    with pytest.raises(LogprobsUnsupportedError, match=r"'o4-mini'.*reasoning models"):
        make(stub, model="o4-mini", max_concurrency=1).predict_proba(TEXTS)
    assert stub.requests == 1


def test_server_error_saying_logprobs_unsupported_is_not_retried(stub):
    # What llama-cpp-python's server answers when started with --logits_all False.
    message = "logprobs is not supported for models created with logits_all=False"
    stub.add_fault("500", times=None, message=message)
    t0 = time.perf_counter()
    with pytest.raises(LogprobsUnsupportedError, match=r"500: logprobs is not supported"):
        make(stub, max_concurrency=1, max_retries=5).predict_proba(TEXTS)
    assert stub.requests == 1 and time.perf_counter() - t0 < 5


@pytest.mark.parametrize(
    ("kind", "status", "hint"),
    [
        ("400", 400, "Retrying will not help"),
        ("401", 401, "api_key"),
        ("403", 403, "not allowed"),
        ("404", 404, "model name"),
        ("quota", 429, "quota exhausted"),
    ],
)
def test_fail_fast_codes(stub, kind, status, hint):
    stub.add_fault(kind, times=None)
    clf = make(stub, max_concurrency=1, max_retries=5)
    t0 = time.perf_counter()
    with pytest.raises(RequestRejectedError, match=hint) as info:
        clf.predict_proba(TEXTS)
    assert time.perf_counter() - t0 < 5  # no retries with backoff
    assert info.value.status_code == status
    assert stub.requests == 1
    assert info.value.__cause__ is not None  # raise ... from e


def test_unknown_model_at_the_server(stub):
    stub.model = "the-only-model"
    with pytest.raises(RequestRejectedError, match=r"'missing'.*404.*model name"):
        make(stub, model="missing", max_concurrency=1).predict_proba(TEXTS)


def test_server_down_is_backend_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clf = LogprobClassifier(
        "m", labels=LABELS, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0
    ).fit(None, None)
    with pytest.raises(BackendUnavailableError, match=r"cannot reach .*127\.0\.0\.1"):
        clf.predict_proba(TEXTS)


class _DroppingServer:
    """A TCP server on 127.0.0.1 that accepts every connection and closes it at once,
    without a byte of answer (a crashing server, or something that is not HTTP)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def __enter__(self) -> _DroppingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        self.thread.join(5)


def test_a_server_that_drops_connections_is_not_reported_as_down():
    with _DroppingServer() as server:
        url = f"http://127.0.0.1:{server.port}/v1"
        clf = LogprobClassifier("m", labels=LABELS, base_url=url, max_retries=1, cache=False)
        with pytest.raises(BackendUnavailableError) as info:
            clf.fit(None, None).predict_proba(TEXTS)
        assert server.accepted >= 2  # a request and its retry were accepted
    message = str(info.value)
    assert f"{url} accepted the connections and then closed them without an answer" in message
    assert "failed to connect" not in message and "Is the server running" not in message
    assert "closed by the server" in message  # the reason, per request


def test_a_server_that_drops_some_connections_says_so_in_the_partial_error(stub):
    stub.add_fault("disconnect", match=TEXTS[-1], times=None)
    with pytest.raises(PartialResultsError) as info:
        make(stub, max_retries=0, max_concurrency=1, cache=False).predict_proba(TEXTS)
    assert "connection closed by the server without an answer" in str(info.value)
    assert "failed to connect" not in str(info.value)


def _all_text(exc: BaseException) -> str:
    """An exception's message, traceback, chained causes and their attributes."""
    parts, todo, seen = [], [exc], []
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        parts += [str(e), repr(e), repr(e.args), repr(getattr(e, "__dict__", ""))]
        parts += [repr(getattr(e, "request", None)), repr(getattr(e, "response", None))]
        todo += [e.__cause__, e.__context__, *getattr(e, "errors", [])]
    return "".join(traceback.format_exception(exc)) + "\n".join(parts)


def test_a_password_in_base_url_is_masked_in_every_message_and_repr(stub):
    secret = "PaSs-w0rd-XyZ"

    def url(port):
        return f"http://Bob:{secret}@127.0.0.1:{port}/v1"

    shown = []
    with socket.socket() as s:  # nothing listens there
        s.bind(("127.0.0.1", 0))
        refused = s.getsockname()[1]
    backend = OpenAIBackend("m", base_url=url(refused), max_retries=0)
    shown += [repr(backend), str(backend.identity())]
    with pytest.raises(BackendUnavailableError, match="cannot reach") as info:
        collect(backend, ["a"])
    shown.append(_all_text(info.value))
    with _DroppingServer() as server:
        with pytest.raises(BackendUnavailableError, match="closed them") as info:
            collect(OpenAIBackend("m", base_url=url(server.port), max_retries=0), ["a"])
        shown.append(_all_text(info.value))
    stub.add_fault("404", times=None)
    port = stub.base_url.rsplit(":", 1)[1].split("/")[0]
    with pytest.raises(RequestRejectedError, match="rejected") as info:
        collect(OpenAIBackend("m", base_url=url(port), max_retries=0), ["a"])
    shown.append(_all_text(info.value))
    stub.clear_faults()
    stub.add_fault("500", match="b", times=None)
    with pytest.raises(PartialResultsError) as info:
        collect(OpenAIBackend("m", base_url=url(port), max_retries=0), ["a", "b"])
    shown.append(_all_text(info.value))
    with pytest.raises(ConfigurationError, match="ends with an endpoint path") as info:
        collect(OpenAIBackend("m", base_url=url(port) + "/chat/completions"), ["a"])
    shown.append(_all_text(info.value))
    text = "\n".join(shown)
    assert secret not in text and secret.lower() not in text
    # The user name is shown as it was given (the URL is not lower-cased) ...
    assert text.count("Bob:***@127.0.0.1") >= 6 and "bob:" not in text
    # ... and the password reaches the server in its own case.
    assert OpenAIBackend("m", base_url=url(1)).resolved_base_url() == url(1)


@pytest.mark.parametrize("userinfo", ["Bob:PaSs-w0rd-XyZ", "PaSs-w0rd-XyZ"])
def test_a_password_in_base_url_is_masked_in_debug_logs(stub, caplog, userinfo):
    caplog.set_level(logging.DEBUG)
    port = stub.base_url.rsplit(":", 1)[1].split("/")[0]
    backend = OpenAIBackend(
        "m", base_url=f"http://{userinfo}@127.0.0.1:{port}/v1", max_retries=1, timeout=5
    )
    stub.add_fault("500", match="b", times=None)
    with pytest.raises(PartialResultsError):
        collect(backend, ["a", "b"])
    text = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert "HTTP Request: POST http://" in text and "***@127.0.0.1" in text
    assert "PaSs-w0rd-XyZ" not in text


def test_many_failures_in_a_row_stop_sending(stub):
    stub.add_fault("500", times=None)
    clf = make(stub, max_retries=0, max_concurrency=2)
    texts = [f"text {i}" for i in range(40)]
    with pytest.raises(
        PartialResultsError, match=r"were not sent after 10 failures in a row"
    ) as info:
        clf.predict_proba(texts)
    assert info.value.n_failed == 40
    assert stub.requests < 20


def test_empty_answers_for_every_prompt_point_to_completions(stub):
    stub.add_fault("empty", times=None)
    clf = make(stub)
    with pytest.raises(LogprobsUnsupportedError, match="endpoint='completions'"):
        clf.predict_proba(TEXTS[:3])
    # Nothing was cached: the same call asks again.
    stub.clear_faults()
    assert clf.predict_proba(TEXTS[:3]).shape == (3, 2)
    assert stub.requests == 6


def test_some_empty_answers_are_kept_as_no_information(stub):
    stub.add_fault("empty", match=TEXTS[0])
    clf = make(stub)
    proba = clf.predict_proba(TEXTS)
    np.testing.assert_allclose(proba[0], [0.5, 0.5])
    assert clf.predict_coverage(TEXTS)[0] == 0.0
    np.testing.assert_allclose(proba[1:], reference_proba(TEXTS)[1:], rtol=1e-12)


# ------------------------------------------------------------------ usage and progress


def test_usage_accounting(stub):
    clf = make(stub)
    clf.predict_proba(TEXTS)
    last = clf.usage_.last
    words = sum(len(p.split()) for p in clf.render_prompts(TEXTS))
    assert (last.requests, last.cache_hits) == (6, 0)
    assert last.prompt_tokens == words and last.completion_tokens == 6
    # The stub reports the shared instruction block as cached after the first prompt.
    assert 0 < last.cached_tokens < last.prompt_tokens
    clf.predict_proba([*TEXTS[:3], "a brand new text"])
    last = clf.usage_.last
    assert (last.requests, last.cache_hits, last.completion_tokens) == (1, 3, 1)
    assert last.saved_tokens > 0
    total = clf.usage_.total
    assert total.requests == 7 and total.cache_hits == 3
    assert stub.requests == 7


def test_progress_bar(stub, capsys):
    pytest.importorskip("tqdm")
    make(stub, progress=True, cache=False).predict_proba(TEXTS)
    assert "skllmprob" in capsys.readouterr().err


# ------------------------------------------------------------------ secrets


def test_key_never_in_repr_pickle_cache_logs_or_errors(stub, caplog):
    stub.add_fault("401", match=TEXTS[5], message="Incorrect API key provided: {key}")
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx2", "httpx", "httpcore2", "skllmprob"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    clf = make(stub, api_key=KEY, max_concurrency=1)
    clf.predict_proba(TEXTS[:5])
    with pytest.raises(RequestRejectedError) as info:
        clf.predict_proba(TEXTS)
    assert stub.log[-1]["auth"] == "bearer"  # the key was sent
    text = "".join(traceback.format_exception(info.value))
    assert "Incorrect API key provided" in text and KEY not in text
    assert KEY not in repr(clf) and KEY not in repr(clf._make_backend())
    assert KEY.encode() not in pickle.dumps(clf)
    assert KEY.encode() not in pickle.dumps(clf._make_backend())
    path = default_cache_path()
    data = b"".join(p.read_bytes() for p in path.parent.glob("*"))
    assert data and KEY.encode() not in data
    assert caplog.records and KEY not in caplog.text
    assert all(KEY not in str(r.args) for r in caplog.records)


def test_clone_keeps_the_key_of_a_backend_instance():
    from sklearn.base import clone

    with OpenAIStub(api_key=KEY) as stub:
        backend = OpenAIBackend("stub-model", base_url=stub.base_url, api_key=KEY)
        clf = LogprobClassifier(labels=LABELS, backend=backend, cache=False)
        proba = clone(clf).fit(None, None).predict_proba(TEXTS[:2])
        assert proba.shape == (2, 2) and stub.status_counts[200] == 2


def test_pickled_backend_reads_the_key_from_the_environment(monkeypatch):
    with OpenAIStub(api_key=KEY) as stub:
        backend = OpenAIBackend("stub-model", base_url=stub.base_url, api_key=KEY)
        assert len(collect(backend, ["a"])) == 1
        clone = pickle.loads(pickle.dumps(backend))
        assert clone == backend and clone.identity() == backend.identity()
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        assert len(collect(clone, ["b"])) == 1


# ------------------------------------------------------------------ concurrency


def test_peak_in_flight_never_exceeds_max_concurrency():
    with OpenAIStub(latency=0.05) as stub:
        clf = make(stub, max_concurrency=4, cache=False)
        texts = [f"text number {i}" for i in range(40)]
        clf.predict_proba(texts)
        assert stub.peak_in_flight == 4  # bounded, and used
        # Two threads with the same settings share the bound.
        stub.reset()
        other = [f"other text {i}" for i in range(40)]
        threads = [threading.Thread(target=clf.predict_proba, args=(t,)) for t in (texts, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert stub.requests == 80 and stub.peak_in_flight <= 4


def test_works_inside_a_running_event_loop(stub):
    clf = make(stub, cache=False)

    async def notebook_cell():
        await asyncio.sleep(0)
        return clf.predict_proba(TEXTS)

    proba = asyncio.run(notebook_cell())
    np.testing.assert_allclose(proba, reference_proba(TEXTS), rtol=1e-12)


def _max_in_window(times, width):
    times = sorted(times)
    j, best = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - width:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_requests_per_minute_limit(stub):
    clf = make(stub, cache=False, backend_options={"requests_per_minute": 600})
    texts = [f"text number {i}" for i in range(25)]
    t0 = time.perf_counter()
    clf.predict_proba(texts)
    assert time.perf_counter() - t0 >= 1.3  # 10 at once, then 10 per second
    arrivals = [e["time"] for e in stub.log]
    # 10 per second with a burst of one second's worth: never more than that.
    assert _max_in_window(arrivals, 0.5) <= 10 + 5 + 1
    assert _max_in_window(arrivals, 1.0) <= 10 + 10 + 1


def test_tokens_per_minute_limit(stub):
    texts = [f"text number {i}" for i in range(12)]
    clf = make(stub, cache=False, backend_options={"tokens_per_minute": 6000})
    prompt_len = len(clf.render_prompts(texts[:1])[0])
    cost = prompt_len // 4 + 1  # the backend's estimate per request
    t0 = time.perf_counter()
    clf.predict_proba(texts)
    elapsed = time.perf_counter() - t0
    per_second = 6000 / 60
    expected = (len(texts) * cost - per_second) / per_second  # after the first second
    assert elapsed >= 0.9 * expected > 0.5


def test_an_error_in_the_callback_stops_the_call_and_the_loop_stays_usable():
    with OpenAIStub(latency=0.02) as stub:
        backend = OpenAIBackend("stub-model", base_url=stub.base_url, max_concurrency=2)
        seen = []

        def on_result(i, completion):
            seen.append(i)
            if len(seen) == 3:
                raise RuntimeError("disk full")

        with pytest.raises(RuntimeError, match="disk full"):
            backend.complete(
                [f"text {i}" for i in range(30)], Query(top_logprobs=5), on_result=on_result
            )
        assert stub.requests < 30  # the rest was cancelled
        assert len(collect(backend, ["a", "b", "c"])) == 3
