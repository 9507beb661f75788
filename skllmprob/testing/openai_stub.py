"""An OpenAI-compatible stub server for offline tests.

:class:`OpenAIStub` serves ``POST /v1/chat/completions`` and ``POST /v1/completions``
on 127.0.0.1 (a free port by default) from a thread of the current process. Its
answers are deterministic log-probabilities derived from the prompt (the same
"model" as :class:`~skllmprob.backends.DeterministicBackend`, so sentiment cue words
push towards ``positive`` / ``negative``), in the exact JSON shapes of the OpenAI API.
Faults can be scripted per request or per prompt, and the server counts what it
receives: total requests, requests per prompt, successful answers per prompt, and
the peak number of requests in flight.

Use it to test a pipeline that talks to an OpenAI-compatible server without a
network or a model:

>>> from skllmprob import LogprobClassifier
>>> with OpenAIStub() as stub:
...     clf = LogprobClassifier("stub-model", labels=["positive", "negative"],
...                             base_url=stub.base_url, cache=False).fit(None, None)
...     clf.predict(["a wonderful film", "a dull mess"]).tolist(), stub.requests
(['positive', 'negative'], 2)

Scripted faults fire on the requests they match, in the order they were added:

>>> with OpenAIStub() as stub:
...     _ = stub.add_fault("429", retry_after=0.01)      # the next request gets a 429
...     clf = LogprobClassifier("stub-model", labels=["positive", "negative"],
...                             base_url=stub.base_url, cache=False).fit(None, None)
...     _ = clf.predict(["a wonderful film"])
...     stub.requests, stub.prompt_successes.total()
(2, 1)

Fault kinds (aliases in brackets):

- ``"rate_limit"`` (``"429"``): 429 with ``Retry-After`` when ``retry_after`` is set.
- ``"quota"``: 429 with the error code ``insufficient_quota``.
- ``"server_error"`` (``"500"``), ``"overloaded"`` (``"503"``).
- ``"bad_request"`` (``"400"``), ``"unauthorized"`` (``"401"``), ``"forbidden"``
  (``"403"``), ``"not_found"`` (``"404"``).
- ``"logprobs_forbidden"``: 403 "You are not allowed to request logprobs from this
  model", as OpenAI answers for reasoning models.
- ``"hang"`` (``"timeout"``): no answer for ``hang`` seconds (the client times out).
- ``"disconnect"``: close the connection without an answer.
- ``"malformed"``: 200 with a body that is not JSON.
- ``"no_logprobs"``: 200 with ``"logprobs": null``.
- ``"empty"``: 200 with an empty answer (the model ended its turn at once).
- ``"refusal"``: on ``/v1/decisions``, 200 with every answer ``{"type": "refusal"}``.

``POST /v1/decisions`` (OpenAI's Decisions API) is served too, with the same faults
and counters (the prompt is the request's ``input``); see
:mod:`skllmprob.testing.decisions_stub`.

It also runs as a separate process, which benchmarks use so that the server's CPU
does not count as the client's::

    python -m skllmprob.testing.openai_stub --latency 0.3 \
        --fault 429,probability=0.05,times=none,retry_after=0.2

prints its base URL on the first line of standard output and serves until stopped;
``GET /_stub/stats`` returns the counters as JSON and ``POST /_stub/reset`` zeroes
them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import decisions_stub

__all__ = ["FAULT_KINDS", "Fault", "OpenAIStub"]

#: Fault kind -> HTTP status it answers with (0: no HTTP answer).
FAULT_KINDS = {
    "rate_limit": 429,
    "quota": 429,
    "server_error": 500,
    "overloaded": 503,
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "logprobs_forbidden": 403,
    "hang": 0,
    "disconnect": 0,
    "malformed": 200,
    "no_logprobs": 200,
    "empty": 200,
    "refusal": 200,
}
_ALIASES = {
    "429": "rate_limit",
    "500": "server_error",
    "503": "overloaded",
    "400": "bad_request",
    "401": "unauthorized",
    "403": "forbidden",
    "404": "not_found",
    "timeout": "hang",
}
_MESSAGES = {
    "rate_limit": ("Rate limit reached for requests. Please try again later.", "requests"),
    "quota": (
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
    ),
    "server_error": ("The server had an error while processing your request.", "server_error"),
    "overloaded": ("The engine is currently overloaded, please try again later.", "server_error"),
    "bad_request": ("Invalid request.", "invalid_request_error"),
    "unauthorized": ("Incorrect API key provided.", "invalid_request_error"),
    "forbidden": ("You are not allowed to use this model.", "invalid_request_error"),
    "not_found": ("The model does not exist or you do not have access to it.", "not_found"),
    "logprobs_forbidden": (
        "You are not allowed to request logprobs from this model",
        "invalid_request_error",
    ),
}
_CODES = {"quota": "insufficient_quota", "rate_limit": "rate_limit_exceeded"}


@dataclass
class Fault:
    """A scripted fault.

    Parameters
    ----------
    kind : str
        One of :data:`FAULT_KINDS` (or an alias such as ``"429"``).
    times : int or None, default=1
        How many requests it fires on; ``None``: every matching request.
    match : str, optional
        Fire only on prompts that contain this string.
    probability : float, default=1.0
        Fire on a matching request with this probability (from the stub's seeded
        random generator, so a run is reproducible).
    retry_after : float, optional
        Seconds sent in the ``Retry-After`` header (429 and 5xx kinds).
    hang : float, default=30.0
        Seconds a ``"hang"`` fault holds the request before answering normally.
    message : str, optional
        The error message; ``{key}`` is replaced by the API key the client sent
        (to check that clients never repeat it).
    """

    kind: str
    times: int | None = 1
    match: str | None = None
    probability: float = 1.0
    retry_after: float | None = None
    hang: float = 30.0
    message: str | None = None
    fired: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.kind = _ALIASES.get(self.kind, self.kind)
        if self.kind not in FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {self.kind!r}; use one of {sorted(FAULT_KINDS)} "
                f"or {sorted(_ALIASES)}."
            )
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be between 0 and 1.")


Distribution = Callable[[str], Sequence[tuple[str, float]]]


def _default_distribution(seed: int) -> Distribution:
    from ..backends.base import Query
    from ..backends.deterministic import DeterministicBackend

    backend = DeterministicBackend(seed=seed, name="openai-stub", max_top_logprobs=None)
    query = Query(top_logprobs=10_000)

    def distribution(prompt: str) -> list[tuple[str, float]]:
        out: dict = {}
        backend.complete([prompt], query, on_result=out.__setitem__)
        c = out[0]
        return list(zip(c.tokens, (float(x) for x in c.logprobs), strict=True))

    return distribution


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 512
    allow_reuse_address = True
    stub: OpenAIStub

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (timed out, or was killed) is part of the tests.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class OpenAIStub:
    """An OpenAI-compatible server on 127.0.0.1 with scripted faults and counters.

    Parameters
    ----------
    latency : float, default=0.0
        Seconds each successful answer takes.
    model : str, optional
        The only model name accepted (others get a 404); ``None`` accepts any.
    seed : int, default=0
        Seed of the default log-probabilities and of fault probabilities.
    max_top_logprobs : int, optional
        Requests asking for more top log-probabilities get a 400, as OpenAI does
        above 20.
    api_key : str, optional
        When set, requests must send it (``Authorization: Bearer`` or ``api-key``),
        else they get a 401.
    distribution : callable, optional
        ``distribution(prompt) -> [(token, logprob), ...]``, most likely first: the
        answer for a prompt (top tokens are its first entries). Lets tests script
        exact token lists (duplicates, ``-9999`` sentinels, ...). The default is the
        deterministic backend's model.
    token_bytes : bool, default=True
        Send each chat token's UTF-8 ``bytes`` (``False``: ``"bytes": null``).
    decision_models : tuple of str, default=("gpt-6-luna",)
        The models ``/v1/decisions`` accepts (others get a 400 saying they are chat
        models); the chat and completions endpoints refuse them with a 400.
    decisions : callable, optional
        ``decisions(text, values) -> weights``: the option weights of a
        ``/v1/decisions`` answer (see :mod:`~skllmprob.testing.decisions_stub`).
    host, port : str, int
        Where to listen (port 0: a free port).

    Attributes
    ----------
    requests : int
        Requests received on the completion endpoints.
    prompt_requests : collections.Counter
        Requests per prompt (the user message, or the ``prompt`` of completions).
    prompt_successes : collections.Counter
        Successful (200 with log-probabilities) answers per prompt.
    peak_in_flight : int
        The largest number of requests handled at the same time.
    log : collections.deque
        The last requests: dicts with ``path``, ``body``, ``auth`` (how a key was
        sent: ``"bearer"``, ``"api-key"`` or ``None``), ``status`` and ``time``.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        model: str | None = None,
        seed: int = 0,
        max_top_logprobs: int | None = None,
        api_key: str | None = None,
        distribution: Distribution | None = None,
        token_bytes: bool = True,
        decision_models: Sequence[str] = decisions_stub.DECISION_MODELS,
        decisions: Callable[[str, list], Sequence[float]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.latency = float(latency)
        self.model = model
        self.seed = seed
        self.max_top_logprobs = max_top_logprobs
        self.api_key = api_key
        self.distribution = distribution or _default_distribution(seed)
        self.token_bytes = token_bytes
        self.decision_models = tuple(decision_models)
        self.decisions = decisions
        self.host = host
        self.port = port
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._seen_prefixes: set[str] = set()
        self.reset()

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> OpenAIStub:
        """Start serving on a thread; returns ``self``."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self.host, self.port), _Handler)
        server.stub = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.name = f"openai-stub-{self.port}"
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (hanging requests are released)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The ``base_url`` for an OpenAI client: ``http://127.0.0.1:<port>/v1``."""
        return self.url + "/v1"

    # -- scripting and counters ------------------------------------------------------

    def add_fault(self, kind: str, **options: Any) -> Fault:
        """Script a fault (see :class:`Fault` for the options); returns it."""
        fault = Fault(kind, **options)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every scripted fault."""
        with self._lock:
            self.faults.clear()

    def reset(self) -> None:
        """Zero the counters and forget the log (faults stay)."""
        with self._lock:
            self.requests = 0
            self.prompt_requests: Counter = Counter()
            self.prompt_successes: Counter = Counter()
            self.status_counts: Counter = Counter()
            self.in_flight = 0
            self.peak_in_flight = 0
            self.log: deque = deque(maxlen=100_000)

    def stats(self) -> dict[str, Any]:
        """The counters as a JSON-able dict."""
        with self._lock:
            return {
                "requests": self.requests,
                "peak_in_flight": self.peak_in_flight,
                "status_counts": {str(k): v for k, v in self.status_counts.items()},
                "prompt_requests": dict(self.prompt_requests),
                "prompt_successes": dict(self.prompt_successes),
            }

    # -- answering -------------------------------------------------------------------

    def _pick_fault(self, prompt: str) -> Fault | None:
        for f in self.faults:
            if f.times is not None and f.fired >= f.times:
                continue
            if f.match is not None and f.match not in prompt:
                continue
            if f.probability < 1.0 and self._rng.random() >= f.probability:
                continue
            f.fired += 1
            return f
        return None

    def _cached_tokens(self, text: str) -> int:
        head = text.split("\n\n", 1)[0] if "\n\n" in text else ""
        if not head:
            return 0
        with self._lock:
            seen = head in self._seen_prefixes
            self._seen_prefixes.add(head)
        return len(head.split()) if seen else 0

    def _answer(self, endpoint: str, body: dict, text: str, k: int | None) -> dict:
        dist = list(self.distribution(text))
        n_prompt = max(1, len(text.split()))
        usage = {
            "prompt_tokens": n_prompt,
            "completion_tokens": 1,
            "total_tokens": n_prompt + 1,
            "prompt_tokens_details": {"cached_tokens": self._cached_tokens(text)},
        }
        top = dist[: k or 0] if k else []
        first, first_lp = dist[0] if dist else ("", 0.0)
        model = body.get("model")
        if endpoint == "chat":
            logprobs = None
            if body.get("logprobs"):
                logprobs = {
                    "content": [
                        {
                            "token": first,
                            "logprob": first_lp,
                            "bytes": self._bytes(first),
                            "top_logprobs": [
                                {"token": t, "logprob": lp, "bytes": self._bytes(t)}
                                for t, lp in top
                            ],
                        }
                    ],
                    "refusal": None,
                }
            return {
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": first, "refusal": None},
                        "logprobs": logprobs,
                        "finish_reason": "length",
                    }
                ],
                "usage": usage,
            }
        logprobs = None
        if k is not None:
            logprobs = {
                "tokens": [first],
                "token_logprobs": [first_lp],
                "top_logprobs": [dict(top)],
                "text_offset": [len(text)],
            }
        return {
            "id": "cmpl-stub",
            "object": "text_completion",
            "created": 0,
            "model": model,
            "choices": [
                {"index": 0, "text": first, "logprobs": logprobs, "finish_reason": "length"}
            ],
            "usage": usage,
        }

    def _bytes(self, token: str) -> list[int] | None:
        return list(token.encode("utf-8")) if self.token_bytes else None

    def _empty_answer(self, endpoint: str, body: dict) -> dict:
        if endpoint == "chat":
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": ""},
                "logprobs": {"content": [], "refusal": None},
                "finish_reason": "stop",
            }
        else:
            choice = {
                "index": 0,
                "text": "",
                "logprobs": {"tokens": [], "token_logprobs": [], "top_logprobs": []},
                "finish_reason": "stop",
            }
        return {
            "id": "stub-empty",
            "object": "chat.completion" if endpoint == "chat" else "text_completion",
            "created": 0,
            "model": body.get("model"),
            "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1},
        }


def _error_body(message: str, kind: str, code: str | None = None, param: str | None = None):
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        return

    # -- plumbing --------------------------------------------------------------------

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        if getattr(self, "_uncounted", False):
            # Counted before the answer leaves: a client that has its answer sees it.
            self._uncounted = False
            with self.server.stub._lock:
                self.server.stub.status_counts[status] += 1
                entry = getattr(self, "_entry", None)
                if entry is not None:
                    entry["status"] = status
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up
            self.close_connection = True

    def _read_body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _presented_key(self) -> tuple[str | None, str | None]:
        auth = self.headers.get("Authorization")
        if auth and auth.lower().startswith("bearer "):
            return auth[7:].strip(), "bearer"
        key = self.headers.get("api-key")
        if key:
            return key.strip(), "api-key"
        return None, None

    # -- routes ----------------------------------------------------------------------

    def do_GET(self) -> None:
        stub = self.server.stub
        path = self.path.split("?", 1)[0]
        if path == "/_stub/stats":
            self._send(200, stub.stats())
        elif path.endswith("/models"):
            name = stub.model or "stub-model"
            self._send(
                200,
                {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "stub"}]},
            )
        else:
            self._send(404, _error_body(f"no route {path}", "not_found"))

    def do_POST(self) -> None:
        stub = self.server.stub
        raw = self._read_body()
        path = self.path.split("?", 1)[0]
        if path == "/_stub/reset":
            stub.reset()
            self._send(200, {"ok": True})
            return
        if path.endswith("/v1/decisions"):
            endpoint = "decisions"
        elif path.endswith("/chat/completions"):
            endpoint = "chat"
        elif path.endswith("/completions"):
            endpoint = "completions"
        else:
            self._send(404, _error_body(f"no route {path}", "not_found"))
            return
        with stub._lock:
            stub.requests += 1
            stub.in_flight += 1
            stub.peak_in_flight = max(stub.peak_in_flight, stub.in_flight)
        self._uncounted = True
        try:
            self._complete(stub, endpoint, path, raw)
        finally:
            with stub._lock:
                stub.in_flight -= 1
                if self._uncounted:  # no answer was sent (a hang or a dropped connection)
                    stub.status_counts[0] += 1
            self._uncounted = False
            self._entry = None

    def _complete(self, stub: OpenAIStub, endpoint: str, path: str, raw: bytes) -> int:
        key, auth = self._presented_key()
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            self._send(400, _error_body("We could not parse the JSON body.", "invalid_request"))
            return 400
        if endpoint == "decisions":
            prompt = text = decisions_stub.decision_text(body)
            k = None
        elif endpoint == "chat":
            messages = body.get("messages") or []
            contents = [m.get("content") for m in messages if isinstance(m, dict)]
            contents = [c for c in contents if isinstance(c, str)]
            users = [
                m.get("content")
                for m in messages
                if isinstance(m, dict) and m.get("role") == "user"
            ]
            prompt = users[-1] if users and isinstance(users[-1], str) else ""
            text = "\n\n".join(contents)
            k = int(body.get("top_logprobs") or 0) if body.get("logprobs") else None
        else:
            prompt = body.get("prompt")
            prompt = prompt if isinstance(prompt, str) else json.dumps(prompt)
            text = prompt
            k = body.get("logprobs")
            k = int(k) if isinstance(k, int | float) and not isinstance(k, bool) else None
        entry = {"path": self.path, "body": body, "auth": auth, "time": time.monotonic()}
        with stub._lock:
            stub.prompt_requests[prompt] += 1
            stub.log.append(entry)
            fault = stub._pick_fault(prompt)
        self._entry = entry  # its status is set by _send, before the answer leaves

        status = self._check(stub, body, endpoint, key, k)
        if status:
            entry["status"] = status
            return status
        if fault is not None:
            status = self._fault(stub, fault, endpoint, body, key, text)
            if status is not None:
                entry["status"] = status
                return status
        if stub.latency > 0 and stub._stopping.wait(stub.latency):
            return 0
        if endpoint == "decisions":
            cached = self._decision_cached(stub, body)
            payload = decisions_stub.decision_answer(stub, body, text, cached, refuse=False)
        else:
            payload = stub._answer(endpoint, body, text, k)
        with stub._lock:  # counted before the answer leaves (no race with the client)
            stub.prompt_successes[prompt] += 1
        self._send(200, payload)
        return 200

    def _check(self, stub: OpenAIStub, body: dict, endpoint: str, key, k) -> int:
        if stub.api_key is not None and key != stub.api_key:
            self._send(401, _error_body("Incorrect API key provided.", "invalid_request_error"))
            return 401
        model = body.get("model")
        if not isinstance(model, str) or not model:
            self._send(400, _error_body("you must provide a model parameter", "invalid_request"))
            return 400
        if stub.model is not None and model != stub.model:
            self._send(
                404,
                _error_body(
                    f"The model `{model}` does not exist or you do not have access to it.",
                    "invalid_request_error",
                    code="model_not_found",
                ),
            )
            return 404
        problem = self._decision_problem(stub, body, endpoint)
        if problem is not None:
            status, message, param = problem
            self._send(status, _error_body(message, "invalid_request_error", None, param))
            return status
        if (
            endpoint == "chat"
            and body.get("top_logprobs") is not None
            and not body.get("logprobs")
        ):
            self._send(
                400,
                _error_body(
                    "logprobs must be set to true if top_logprobs is used.",
                    "invalid_request_error",
                    param="top_logprobs",
                ),
            )
            return 400
        cap = stub.max_top_logprobs
        if cap is not None and k is not None and k > cap:
            name = "top_logprobs" if endpoint == "chat" else "logprobs"
            self._send(
                400,
                _error_body(
                    f"Invalid '{name}': integer above maximum value. Expected a value <= "
                    f"{cap}, but got {k} instead.",
                    "invalid_request_error",
                    code="integer_above_max_value",
                    param=name,
                ),
            )
            return 400
        return 0

    @staticmethod
    def _decision_problem(stub: OpenAIStub, body: dict, endpoint: str):
        if endpoint == "decisions":
            return decisions_stub.decision_problem(body, stub.decision_models)
        message = decisions_stub.chat_problem(body, stub.decision_models)
        return None if message is None else (400, message, "model")

    @staticmethod
    def _decision_cached(stub: OpenAIStub, body: dict) -> int:
        key = body.get("prompt_cache_key")
        if not isinstance(key, str):
            return 0
        with stub._lock:
            seen = key in stub._seen_prefixes
            stub._seen_prefixes.add(key)
        return len(json.dumps(body.get("questions")).split()) if seen else 0

    def _fault(self, stub: OpenAIStub, fault: Fault, endpoint: str, body: dict, key, text):
        kind = fault.kind
        status = FAULT_KINDS[kind]
        if endpoint == "decisions" and kind in ("refusal", "empty", "no_logprobs"):
            payload = decisions_stub.decision_answer(stub, body, text, 0, refuse=True)
            if kind != "refusal":
                payload["answers"] = []
            self._send(200, payload)
            return 200
        if kind == "refusal":
            return None  # only the decisions endpoint refuses
        if kind == "hang":
            if stub._stopping.wait(fault.hang):
                return 0
            return None  # then answer normally (the client has most likely left)
        if kind == "disconnect":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return 0
        if kind == "malformed":
            self._send(200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess')
            return 200
        if kind == "no_logprobs":
            payload = stub._answer(endpoint, {**body, "logprobs": None}, text, None)
            payload["choices"][0]["logprobs"] = None
            self._send(200, payload)
            return 200
        if kind == "empty":
            self._send(200, stub._empty_answer(endpoint, body))
            return 200
        message, etype = _MESSAGES[kind]
        if fault.message is not None:
            message = fault.message.replace("{key}", key or "")
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        param = "logprobs" if kind == "logprobs_forbidden" else None
        self._send(status, _error_body(message, etype, _CODES.get(kind), param), headers)
        return status


# ------------------------------------------------------------------------------------
# Running as a process


def _parse_fault(spec: str) -> Fault:
    kind, *items = spec.split(",")
    options: dict[str, Any] = {}
    for item in items:
        name, _, value = item.partition("=")
        name = name.strip()
        if name == "times":
            options[name] = None if value.lower() in ("none", "inf", "") else int(value)
        elif name in ("probability", "retry_after", "hang"):
            options[name] = float(value)
        elif name in ("match", "message"):
            options[name] = value
        else:
            raise argparse.ArgumentTypeError(f"unknown fault option {name!r} in {spec!r}")
    return Fault(kind.strip(), **options)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a stub server until interrupted; prints its base URL first."""
    parser = argparse.ArgumentParser(prog="python -m skllmprob.testing.openai_stub")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--model", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-top-logprobs", type=int, default=None)
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        type=_parse_fault,
        help="KIND[,times=N|none][,probability=P][,retry_after=S][,match=TEXT][,hang=S]",
    )
    args = parser.parse_args(argv)
    stub = OpenAIStub(
        latency=args.latency,
        model=args.model,
        seed=args.seed,
        max_top_logprobs=args.max_top_logprobs,
        host=args.host,
        port=args.port,
    )
    stub.faults.extend(args.fault)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with stub:
        sys.stdout.write(stub.base_url + "\n")
        sys.stdout.flush()
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised by the benchmark
    sys.exit(main())
