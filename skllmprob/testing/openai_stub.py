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
import random
import signal
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

from . import decisions_stub
from .stub_answers import Distribution, default_distribution
from .stub_faults import FAULT_KINDS, Fault, parse_fault
from .stub_http import Handler, Server
from .stub_tokens import StubTokenizer

__all__ = ["FAULT_KINDS", "Fault", "OpenAIStub"]


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
    vllm : bool, default=False
        Emulate vLLM's extras: ``POST /tokenize`` and ``POST /detokenize`` (see
        :mod:`~skllmprob.testing.stub_tokens`), the request fields
        ``logprob_token_ids`` and ``prompt_logprobs`` (see
        :mod:`~skllmprob.testing.stub_vllm`). Without it the routes answer 404 and
        the fields a 400, as OpenAI does.
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
    tokenize_requests : int
        Requests received on ``/tokenize`` and ``/detokenize``.
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
        vllm: bool = False,
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
        self.distribution = distribution or default_distribution(seed)
        self.tokenizer = StubTokenizer() if vllm else None
        self.token_bytes = token_bytes
        self.decision_models = tuple(decision_models)
        self.decisions = decisions
        self.host = host
        self.port = port
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._server: Server | None = None
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
        server = Server((self.host, self.port), Handler)
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
            self.tokenize_requests = 0
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


# ------------------------------------------------------------------------------------
# Running as a process


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
        type=parse_fault,
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
