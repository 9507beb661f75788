"""SystemOneBackend against a System One server written by someone else: the
``dev-double`` package (MIT) started with ``dev-double serve --engine mock``, which
scores each option by word overlap between the state and the option's description
(at most 26 options and 64 questions per request; errors are ``{"error": ...}``)."""

from __future__ import annotations

import json
import pickle
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from skllmprob.backends.base import Query
from skllmprob.backends.decisions import TYPESAFE_BASE_URL, SystemOneBackend, is_refusal
from skllmprob.exceptions import (
    BackendUnavailableError,
    ConfigurationError,
    PartialResultsError,
    RequestRejectedError,
)

pytest.importorskip("dev_double", reason="the test extra installs dev-double")

DESCRIPTIONS = {
    "billing": "charged invoice payment refund",
    "shipping": "parcel delivery courier package",
    "account": "password login username",
}
LABELS = tuple(DESCRIPTIONS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _executable() -> str:
    here = Path(sys.executable).with_name("dev-double")
    return str(here) if here.exists() else shutil.which("dev-double") or "dev-double"


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    cmd = [_executable(), "serve", "--engine", "mock", "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    if json.load(r)["status"] == "ok":
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"dev-double did not start: {proc.stderr.read().decode()[-2000:]}"
                    ) from None
                time.sleep(0.2)
        yield url
    finally:
        proc.kill()  # the mock engine holds no state worth a clean shutdown
        proc.wait(timeout=10)


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url + "/v1/systemone",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def backend(url: str, **kw) -> SystemOneBackend:
    kw.setdefault("max_retries", 0)
    return SystemOneBackend("jev-latest", base_url=url + "/v1", **kw)


def run(b, prompts, answers=LABELS):
    out: dict = {}
    b.complete(prompts, Query(answers=tuple(answers)), on_result=out.__setitem__)
    return [out[i] for i in sorted(out)]


TEXTS = [
    "I was charged twice on my invoice, please refund the payment",
    "the courier lost my parcel and the delivery is late",
    "I forgot my password and cannot login",
]


def test_choice_end_to_end_matches_the_server(server):
    b = backend(server, descriptions=DESCRIPTIONS, instructions="Which team handles this?")
    comps = run(b, TEXTS)
    # the answer of each row is the class whose description it shares words with
    assert [c.tokens[0] for c in comps] == list(LABELS)
    for text, c in zip(TEXTS, comps, strict=True):
        direct = post(
            server,
            {
                "model": "jev-latest",
                "state": text,
                "questions": {
                    "label": {
                        "type": "choice",
                        "instructions": "Which team handles this?",
                        "criteria": DESCRIPTIONS,
                    }
                },
            },
        )["answers"]["label"]["probabilities"]
        p = np.array([direct[k] for k in LABELS])
        np.testing.assert_allclose(np.exp(c.answer_logprobs), p / p.sum(), atol=1e-9)
        assert c.prompt_tokens > 0
    # the class order is the query's, whatever the server's key order
    rev = run(b, TEXTS[:1], LABELS[::-1])[0]
    np.testing.assert_allclose(rev.answer_logprobs, comps[0].answer_logprobs[::-1])


def test_descriptions_are_what_the_model_reads(server):
    # without descriptions the options describe themselves: no overlap, uniform
    (c,) = run(backend(server), TEXTS[:1])
    np.testing.assert_allclose(np.exp(c.answer_logprobs), np.full(3, 1 / 3), atol=1e-3)


def test_noul_and_score(server):
    b = backend(
        server,
        question="predicate",
        descriptions={"other": "unrelated", "billing": DESCRIPTIONS["billing"]},
    )
    comps = run(b, [TEXTS[0], TEXTS[2]], ("other", "billing"))
    assert np.exp(comps[0].answer_logprobs[1]) > 0.5 >= np.exp(comps[1].answer_logprobs[1])
    levels = ("calm", "annoyed", "furious")
    b = backend(server, question="score", descriptions={"furious": "angry furious outraged"})
    (c,) = run(b, ["I am furious and outraged"], levels)
    assert c.tokens[0] == "furious"
    np.testing.assert_allclose(np.exp(c.answer_logprobs).sum(), 1.0)


def test_server_validation_error_is_one_clear_error(server):
    many = tuple(f"class{i}" for i in range(27))  # the server takes at most 26
    with pytest.raises(RequestRejectedError, match="2 to 26 entries") as info:
        run(backend(server, max_concurrency=1), ["a", "b", "c"], many)
    assert info.value.status_code == 400


def test_path_that_does_not_exist(server):
    b = backend(server, path="/alpha/decisions")
    with pytest.raises(RequestRejectedError, match="does not exist") as info:
        run(b, ["x"])
    assert "backend_options={'path'" in str(info.value)
    assert b.identity()["path"] == "/alpha/decisions"


def test_server_down():
    b = SystemOneBackend(
        "jev-latest", base_url=f"http://127.0.0.1:{_free_port()}/v1", max_retries=0
    )
    with pytest.raises(BackendUnavailableError, match="cannot reach"):
        run(b, ["x"])


def test_typesafe_key(monkeypatch):
    monkeypatch.delenv("TYPESAFE_API_KEY", raising=False)
    b = SystemOneBackend("jev-latest")
    assert b.resolved_base_url() == TYPESAFE_BASE_URL
    with pytest.raises(ConfigurationError, match=r"\$TYPESAFE_API_KEY"):
        b._key()
    monkeypatch.setenv("TYPESAFE_API_KEY", " ts-env-secret\n")
    assert b._key() == ("ts-env-secret", "ts-env-secret")
    given = SystemOneBackend("jev-latest", api_key="ts-given-secret")
    assert "ts-given-secret" not in repr(given) + str(given.identity())
    assert b"ts-given-secret" not in pickle.dumps(given)
    assert pickle.loads(pickle.dumps(given))._key()[0] == "ts-env-secret"


class _Scripted:
    """A minimal System One server answering a script of (status, body), then 200s."""

    def __init__(self, script):
        outer = self
        self.script = list(script)
        self.requests = 0
        self.bodies: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                return

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.bodies.append(json.loads(raw))
                outer.requests += 1
                status, body = outer.script.pop(0) if outer.script else (200, OK_BODY)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


OK_BODY = {
    "model": "jev-latest",
    "answers": {
        "label": {
            "type": "choice",
            "choice": "a",
            "confidence": 0.5,
            "probabilities": {"a": 0.8, "b": 0.2},
        }
    },
    "usage": {"input_tokens": 7, "output_tokens": 1},
}


def test_529_and_429_are_retried_by_the_sdk_422_is_not():
    srv = _Scripted([(529, {"error": "overloaded"}), (429, {"error": "slow down"})])
    try:
        (c,) = run(backend(srv.url, max_retries=2), ["x"], ("a", "b"))
        np.testing.assert_allclose(np.exp(c.answer_logprobs), [0.8, 0.2])
        assert srv.requests == 3 and c.prompt_tokens == 7
        srv.script = [(422, {"error": "criteria: at least 2 options"})]
        with pytest.raises(RequestRejectedError, match="422: criteria: at least 2 options"):
            run(backend(srv.url, max_retries=2), ["y"], ("a", "b"))
        assert srv.requests == 4
    finally:
        srv.close()


def test_refusal_and_malformed_answers():
    refusal = {"model": "m", "answers": {"label": {"type": "refusal"}}, "usage": {}}
    srv = _Scripted([(200, refusal), (200, {"answers": {"other": {}}})])
    try:
        b = backend(srv.url, max_concurrency=1)
        with pytest.raises(PartialResultsError, match="malformed") as info:
            run(b, ["r", "m", "ok"], ("a", "b"))
        assert info.value.n_completed == 2
    finally:
        srv.close()
    out: dict = {}
    srv = _Scripted([(200, refusal)])
    try:
        backend(srv.url).complete(["r"], Query(answers=("a", "b")), on_result=out.__setitem__)
        assert is_refusal(out[0]) and np.isneginf(out[0].answer_logprobs).all()
    finally:
        srv.close()


def jev_classifier(url: str):
    """A zero-shot LogprobClassifier on the System One server at ``url``."""
    from skllmprob import LogprobClassifier

    settings = {"labels": list(LABELS), "descriptions": DESCRIPTIONS, "cache": False}
    return LogprobClassifier(
        "jev-latest", backend="systemone", base_url=url + "/v1", max_retries=0, **settings
    ).fit(None, None)


def test_through_the_estimator(server):
    clf = jev_classifier(server)
    assert clf.predict(TEXTS).tolist() == list(LABELS)
    np.testing.assert_allclose(clf.predict_proba(TEXTS).sum(axis=1), 1.0)
    assert clf.usage_.last.requests == 3 and clf.usage_.total.requests == 6


def test_base_url_without_v1(server):
    b = SystemOneBackend("jev-latest", base_url=server, max_retries=0)  # no /v1
    with pytest.raises(RequestRejectedError, match="does not exist") as info:
        run(b, ["x"])
    assert "ending in '/v1'" in str(info.value)


def test_2d_rows_as_json_state_end_to_end(server):
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame({"subject": ["refund please", "lost parcel"], "body": TEXTS[:2]})
    clf = jev_classifier(server)
    # dev-double validates the JSON state and scores its text by word overlap
    assert clf.predict(X).tolist() == ["billing", "shipping"]


def test_wire_examples_json_state_and_score_order():
    from skllmprob import LogprobClassifier

    pd = pytest.importorskip("pandas")
    score = {"type": "score", "score": 1.7, "probabilities": {"0": 0.1, "1": 0.1, "2": 0.8}}
    srv = _Scripted([(200, {"answers": {"label": score}, "usage": {"input_tokens": 3}})])
    try:
        clf = LogprobClassifier(
            "jev-latest",
            backend="systemone",
            base_url=srv.url + "/v1",
            labels=["low", "medium", "high"],
            prompt="Urgency of a ticket ({labels}).\n\n{examples}{subject}: {body}\nUrgency:",
            examples=[({"subject": "outage", "body": "all down"}, "high")],
            backend_options={"question": "score"},
            cache=False,
            max_retries=0,
        ).fit(None, None)
        proba = clf.predict_proba(pd.DataFrame({"subject": ["hi"], "body": ["site is down"]}))
    finally:
        srv.close()
    (body,) = srv.bodies
    assert body["state"] == {"subject": "hi", "body": "site is down"}
    q = body["questions"]["label"]
    assert q["type"] == "score" and q["criteria"] == ["low", "medium", "high"]
    assert q["instructions"] == (
        "Urgency of a ticket (low, medium, high).\n\nExamples:\n"
        'Input: {"subject":"outage","body":"all down"}\nAnswer: high'
    )
    # levels keyed by position in the order sent, columns in classes_ order
    assert list(clf.classes_) == ["high", "low", "medium"]
    np.testing.assert_allclose(proba[0], [0.8, 0.1, 0.1])
