"""OpenAI and OpenAI-compatible servers (vLLM, llama.cpp server, Ollama, LM Studio, Azure
OpenAI, hosted providers) through the ``openai`` client.

One request per prompt asks for a single answer token with its top
log-probabilities, on one of two endpoints:

- ``"chat"``: ``/chat/completions`` with ``logprobs=True, top_logprobs=k``; the prompt
  is the user message (after an optional system message). The first content token's
  top log-probabilities are read.
- ``"completions"``: the legacy ``/completions`` with ``logprobs=k``: plain text
  completion, for base models and servers that only score there.

``endpoint="auto"`` uses ``"completions"`` for OpenAI's completion-only models
(``gpt-3.5-turbo-instruct``, ``davinci-002``, ``babbage-002``) and ``"chat"`` for
every other model. A base model behind a chat endpoint often answers nothing at
all (it ends its turn at once); when every answer of a call is empty, the backend
raises :class:`~skllmprob.exceptions.LogprobsUnsupportedError` and says to use
``endpoint="completions"``.

Requests run on a background event loop (one thread per process, shared by all
backends), with an :class:`openai.AsyncOpenAI` client per server and key, at most
``max_concurrency`` in flight per settings. The client does the retrying
(``max_retries``, ``timeout``, ``Retry-After`` honoured); the backend adds no second
retry loop. Each finished request is reported at once (so it is cached at once);
requests that still fail after their retries are reported together in a
:class:`~skllmprob.exceptions.PartialResultsError` once the others have finished.
400, 401, 403, 404 and an exhausted quota stop the call at once with a
:class:`~skllmprob.exceptions.RequestRejectedError`.

The API key is read from ``api_key`` or, lazily, from ``$OPENAI_API_KEY``
(``$AZURE_OPENAI_API_KEY`` first for Azure). A server other than OpenAI or Azure that
gets no key is sent the placeholder ``"sk-no-key-required"``: local servers ignore
it. The key never appears in the backend's repr, its identity (the cache key), a
pickle, a log line or an error message.

Examples
--------
>>> from skllmprob.backends.openai import OpenAIBackend
>>> b = OpenAIBackend("gpt-4o-mini", api_key="sk-secret")
>>> b
OpenAIBackend(model='gpt-4o-mini', base_url=None, endpoint='auto', ...)
>>> b.identity()  # what enters the cache key
{'backend': 'openai', 'base_url': 'https://api.openai.com/v1', 'model': 'gpt-4o-mini',
 'endpoint': 'chat'}
>>> b.max_top_logprobs
20
>>> "sk-secret" in repr(b) + str(b.identity())
False
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import json
import logging
import math
import os
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from .._secrets import SecretKey, reveal
from ..exceptions import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    LogprobsUnsupportedError,
    PartialResultsError,
    RequestRejectedError,
)
from ..scoring import MIN_LOGPROB
from .base import Backend, Completion, OnResult, Query, shared_resource

__all__ = ["OpenAIBackend", "parse_chat_response", "parse_completions_response"]

log = logging.getLogger("skllmprob.openai")

OPENAI_BASE_URL = "https://api.openai.com/v1"
#: Placeholder key sent to servers other than OpenAI and Azure when no key is given.
NO_KEY = "sk-no-key-required"
_COMPLETION_ONLY = re.compile(r"^(gpt-3\.5-turbo-instruct|davinci-002|babbage-002)")
_AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")
# OpenAI's documented limits: chat top_logprobs <= 20, legacy completions logprobs <= 5.
_OPENAI_CAPS = {"chat": 20, "completions": 5}
_UNSUPPORTED_WORDS = ("not supported", "unsupported", "not allowed", "not enabled", "does not")


# ---------------------------------------------------------------------------------------
# Parsing: only what is needed, from the raw JSON


class _Malformed(Exception):
    """The server answered 200 with something that is not a completion."""


class _NoLogprobs(Exception):
    """The server answered without log-probabilities."""


try:  # orjson parses a response ~3x faster than json; it is optional
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = json.loads


class _Pairs(dict):
    """A JSON object that had duplicate keys: keeps every (key, value) pair."""

    pairs: list


def _keep_duplicates(pairs: list) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        d = _Pairs(d)
        d.pairs = pairs
    return d


def _logaddexp(a: float, b: float) -> float:
    hi, lo = (a, b) if a >= b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


def _collect(pairs: Iterable[tuple[Any, Any]]) -> tuple[tuple[str, ...], np.ndarray]:
    """Clean top-token pairs: drop missing, non-finite and sentinel (``-9999``)
    log-probabilities, sum duplicate tokens, sort most likely first."""
    acc: dict[str, float] = {}
    for token, lp in pairs:
        if not isinstance(token, str):
            continue
        try:
            lp = float(lp)
        except (TypeError, ValueError):
            continue
        if not (MIN_LOGPROB < lp < math.inf):
            continue
        lp = min(lp, 0.0)
        prev = acc.get(token)
        acc[token] = lp if prev is None else _logaddexp(prev, lp)
    if not acc:
        return (), np.empty(0)
    items = sorted(acc.items(), key=lambda kv: -kv[1])
    return tuple(t for t, _ in items), np.fromiter((v for _, v in items), float, len(items))


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _usage(data: dict) -> tuple[int, int, int]:
    u = data.get("usage")
    if not isinstance(u, dict):
        return 0, 0, 0
    details = u.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return _int(u.get("prompt_tokens")), _int(u.get("completion_tokens")), cached


def _chat_token(entry: dict) -> str | None:
    token = entry.get("token")
    if token is None and isinstance(entry.get("bytes"), list):
        try:
            token = bytes(entry["bytes"]).decode("utf-8", "replace")
        except (TypeError, ValueError):
            return None
    return token


def _first_choice(data: Any) -> dict:
    try:
        choice = data["choices"][0]
    except (KeyError, IndexError, TypeError) as e:
        raise _Malformed("the response has no choices") from e
    if not isinstance(choice, dict):
        raise _Malformed("the response's choice is not an object")
    return choice


def _completion(data: dict, tokens: tuple[str, ...], logprobs: np.ndarray) -> Completion:
    pt, ct, cached = _usage(data)
    return Completion(
        tokens=tokens,
        logprobs=logprobs,
        prompt_tokens=pt,
        completion_tokens=ct,
        cached_tokens=cached,
    )


def _completions_top(lp: dict) -> Iterable[tuple[Any, Any]] | None:
    """Top pairs of the first position of a legacy-completions ``logprobs`` object."""
    tops = lp.get("top_logprobs")
    first = tops[0] if isinstance(tops, list) and tops else None
    if isinstance(first, _Pairs):
        return first.pairs
    if isinstance(first, dict) and first:
        return first.items()
    tokens, values = lp.get("tokens"), lp.get("token_logprobs")
    if isinstance(tokens, list) and tokens and isinstance(values, list) and values:
        return [(tokens[0], values[0])]  # no top list: the sampled token alone
    return None


def parse_chat_response(data: Any) -> Completion:
    """The first content token's top log-probabilities from a chat completion.

    Tolerates fewer top tokens than asked, ``-9999`` sentinels, ``bytes: null``,
    duplicate tokens (summed) and a missing top list (the sampled token alone). An
    empty answer gives a completion without tokens.

    Parameters
    ----------
    data : dict
        The decoded JSON body.

    Returns
    -------
    Completion

    Examples
    --------
    >>> c = parse_chat_response({"choices": [{"logprobs": {"content": [
    ...     {"token": "Yes", "logprob": -0.1, "top_logprobs": [
    ...         {"token": "Yes", "logprob": -0.1, "bytes": None},
    ...         {"token": " yes", "logprob": -2.5, "bytes": None},
    ...         {"token": "No", "logprob": -9999.0, "bytes": None}]}]}}],
    ...     "usage": {"prompt_tokens": 12, "completion_tokens": 1}})
    >>> c.tokens, c.logprobs.round(2).tolist(), c.prompt_tokens
    (('Yes', ' yes'), [-0.1, -2.5], 12)
    """
    choice = _first_choice(data)
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        raise _NoLogprobs
    content = lp.get("content")
    if content is None:
        if "top_logprobs" in lp:  # a server that sends the completions shape in chat
            pairs = _completions_top(lp)
            if pairs is None:
                return _completion(data, (), np.empty(0))
            return _completion(data, *_collect(pairs))
        raise _NoLogprobs
    if not isinstance(content, list):
        raise _Malformed("logprobs.content is not a list")
    if not content:
        return _completion(data, (), np.empty(0))
    first = content[0]
    if not isinstance(first, dict):
        raise _Malformed("logprobs.content[0] is not an object")
    top = first.get("top_logprobs") or [first]
    pairs = ((_chat_token(e), e.get("logprob")) for e in top if isinstance(e, dict))
    return _completion(data, *_collect(pairs))


def parse_completions_response(data: Any) -> Completion:
    """The first position's top log-probabilities from a legacy completion.

    Parameters
    ----------
    data : dict
        The decoded JSON body (decode with ``object_pairs_hook`` keeping duplicate
        keys, as the backend does, for duplicate tokens to be summed).

    Returns
    -------
    Completion

    Examples
    --------
    >>> c = parse_completions_response({"choices": [{"text": " positive", "logprobs": {
    ...     "tokens": [" positive"], "token_logprobs": [-0.2],
    ...     "top_logprobs": [{" positive": -0.2, " negative": -1.9}]}}]})
    >>> c.tokens
    (' positive', ' negative')
    """
    choice = _first_choice(data)
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        raise _NoLogprobs
    pairs = _completions_top(lp)
    if pairs is None:
        if lp.get("tokens") == [] or choice.get("text") == "":
            return _completion(data, (), np.empty(0))
        raise _NoLogprobs
    return _completion(data, *_collect(pairs))


# ---------------------------------------------------------------------------------------
# The process-wide event loop, clients, concurrency and rate limits


class _LoopThread:
    """An asyncio event loop running forever on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.semaphores: dict[tuple, asyncio.Semaphore] = {}
        self.limiters: dict[tuple, _RateLimiter] = {}
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="skllmprob-openai-loop", daemon=True)
        self.thread.start()
        ready.wait()
        atexit.register(self.stop)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)

    # Used from the loop's thread only.
    def semaphore(self, key: tuple, n: int) -> asyncio.Semaphore:
        sem = self.semaphores.get(key)
        if sem is None:
            sem = self.semaphores[key] = asyncio.Semaphore(n)
        return sem

    def limiter(self, key: tuple, rpm: float | None, tpm: float | None) -> _RateLimiter:
        lim = self.limiters.get(key)
        if lim is None:
            lim = self.limiters[key] = _RateLimiter(rpm, tpm)
        return lim


def _loop_thread() -> _LoopThread:
    return shared_resource(("openai-loop",), _LoopThread)


class _Bucket:
    """A token bucket: ``rate`` units per second, bursts up to ``capacity``."""

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)  # one second's worth
        self.level = self.capacity
        self.stamp = time.monotonic()

    async def take(self, amount: float) -> None:
        amount = min(float(amount), self.capacity)
        while True:
            now = time.monotonic()
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.level >= amount:
                self.level -= amount
                return
            await asyncio.sleep((amount - self.level) / self.rate)


class _RateLimiter:
    """Requests-per-minute and tokens-per-minute pacing (one second's burst)."""

    def __init__(self, rpm: float | None, tpm: float | None) -> None:
        self.requests = _Bucket(rpm) if rpm else None
        self.tokens = _Bucket(tpm) if tpm else None

    async def acquire(self, tokens: int) -> None:
        if self.requests is not None:
            await self.requests.take(1)
        if self.tokens is not None:
            await self.tokens.take(tokens)


def _normalize_url(url: str) -> str:
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, parts.query, ""))


def _scrub(text: str, secret: str | None) -> str:
    if secret and len(secret) >= 4 and secret in text:
        text = text.replace(secret, "**********")
    return text


def _scrub_value(value: Any, secret: str | None) -> Any:
    if isinstance(value, str):
        return _scrub(value, secret)
    if isinstance(value, dict):
        return {k: _scrub_value(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_value(v, secret) for v in value]
    return value


_AUTH_HEADERS = ("authorization", "api-key", "proxy-authorization")


def _scrub_exception(e: BaseException, secret: str | None) -> None:
    """Remove the key from an SDK exception before it is chained or kept: its text,
    and the headers of the HTTP request it holds (which a pickle of the error, e.g.
    from a joblib worker, would otherwise carry)."""
    if not secret:
        return
    e.args = tuple(_scrub_value(a, secret) for a in e.args)
    for attr in ("message", "body"):
        if hasattr(e, attr):
            with contextlib.suppress(AttributeError):  # a read-only attribute
                setattr(e, attr, _scrub_value(getattr(e, attr), secret))
    response = getattr(e, "response", None)
    for attr in ("_content", "_text"):  # the raw and decoded body kept by httpx
        body = getattr(response, attr, None)
        with contextlib.suppress(AttributeError, TypeError):
            if isinstance(body, bytes) and secret.encode() in body:
                setattr(response, attr, body.replace(secret.encode(), b"**********"))
            elif isinstance(body, str) and secret in body:
                setattr(response, attr, body.replace(secret, "**********"))
    for request in (getattr(e, "request", None), getattr(response, "request", None)):
        headers = getattr(request, "headers", None)
        if headers is None:
            continue
        for name in _AUTH_HEADERS:
            with contextlib.suppress(Exception):  # a request without such headers
                if name in headers:
                    headers[name] = "**********"


def _not_retriable(body: bytes) -> bool:
    """Whether an error body says something retrying cannot fix: an exhausted quota,
    or a model or server that does not return log-probabilities."""
    if b"insufficient_quota" in body:
        return True
    low = body.lower()
    return b"logprob" in low and any(w.encode() in low for w in _UNSUPPORTED_WORDS)


async def _stop_futile_retries(response: Any) -> None:
    """httpx response hook: the SDK retries 429 and 5xx, but not when the server says
    ``x-should-retry: false``; say so for errors that retrying cannot fix."""
    if response.status_code == 429 or response.status_code >= 500:
        await response.aread()
        if _not_retriable(response.content):
            response.headers["x-should-retry"] = "false"


@dataclass
class _Failure:
    index: int
    error: BaseException
    reason: str
    connection: bool = False
    sent: bool = True
    malformed: bool = False


class _Fatal(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class _Plan:
    """Everything constant across the requests of one call."""

    path: str
    chat: bool
    body: dict
    messages: tuple
    key_fingerprint: str
    secret: str | None
    response_type: type
    semaphore_key: tuple
    limiter_key: tuple | None
    rpm: float | None
    tpm: float | None
    max_concurrency: int
    token_overhead: int


# ---------------------------------------------------------------------------------------
# The backend


class OpenAIBackend(Backend):
    """OpenAI or any OpenAI-compatible server.

    Parameters
    ----------
    model : str
        The model name (for Azure with ``api_version``: the deployment name).
    base_url : str, optional
        The server, e.g. ``"http://127.0.0.1:8000/v1"``. ``None``: ``$OPENAI_BASE_URL``
        or OpenAI. Azure OpenAI: ``"https://<resource>.openai.azure.com/openai/v1"``,
        or the resource URL with ``api_version``.
    api_key : str or SecretKey, optional
        ``None`` reads ``$OPENAI_API_KEY`` (Azure: ``$AZURE_OPENAI_API_KEY`` first)
        when the first request is made; other servers than OpenAI and Azure then get
        a placeholder. Never stored in a pickle.
    endpoint : {"auto", "chat", "completions"}, default="auto"
        See the module documentation.
    timeout : float, default=60.0
        Seconds per request attempt.
    max_retries : int, default=5
        Retries per request (by the SDK) on 429, 5xx, timeouts and connection errors.
    max_concurrency : int, default=8
        Requests in flight at once, for all calls with these settings in this process.
    requests_per_minute, tokens_per_minute : float, optional
        Client-side pacing (bursts of at most one second's worth). Tokens are
        estimated as one per 4 characters of the prompt, plus the answer token.
    temperature : float, default=1.0
        Sent explicitly (servers otherwise apply their own default). Reported
        log-probabilities are normally the model's own, whatever the temperature.
    system_prompt : str, optional
        A system message before the prompt (chat endpoint only).
    logit_bias : dict, optional
        Token id -> bias, sent as is.
    seed : int, optional
        Sent as is.
    max_tokens_param : {"auto", "max_tokens", "max_completion_tokens"}, default="auto"
        How the one-token limit is named: ``"auto"`` sends ``max_completion_tokens``
        to OpenAI's and Azure's chat endpoints (required by newer models) and
        ``max_tokens`` everywhere else (many servers only know it).
    top_logprobs_limit : int, None or "auto", default="auto"
        The largest ``top_logprobs`` accepted. ``"auto"``: OpenAI's and Azure's caps
        (20 on chat, 5 on legacy completions), no cap elsewhere (the server answers
        a 400 if it has one).
    api_version : str, optional
        Azure OpenAI's ``api-version`` for a resource URL (uses
        :class:`openai.AsyncAzureOpenAI`; ``model`` is the deployment).
    extra_body : dict, optional
        More JSON fields for every request (part of the cache key).
    default_headers : dict, optional
        More HTTP headers (not part of the cache key; not for secrets that the
        repr must hide).
    """

    exact = False

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | SecretKey | None = None,
        endpoint: str = "auto",
        timeout: float = 60.0,
        max_retries: int = 5,
        max_concurrency: int = 8,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        temperature: float = 1.0,
        system_prompt: str | None = None,
        logit_bias: dict | None = None,
        seed: int | None = None,
        max_tokens_param: str = "auto",
        top_logprobs_limit: int | str | None = "auto",
        api_version: str | None = None,
        extra_body: dict | None = None,
        default_headers: dict | None = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ConfigurationError("model must be a non-empty model name, e.g. 'gpt-4o-mini'.")
        if endpoint not in ("auto", "chat", "completions"):
            raise ConfigurationError(
                f"endpoint={endpoint!r}; use 'auto', 'chat' or 'completions'."
            )
        if max_tokens_param not in ("auto", "max_tokens", "max_completion_tokens"):
            raise ConfigurationError(
                f"max_tokens_param={max_tokens_param!r}; use 'auto', 'max_tokens' or "
                "'max_completion_tokens'."
            )
        if int(max_concurrency) < 1:
            raise ConfigurationError("max_concurrency must be at least 1.")
        for name, value in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
        ):
            if value is not None and not float(value) > 0:
                raise ConfigurationError(f"{name} must be positive (or None for no limit).")
        self.model = model
        self.base_url = base_url
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.max_concurrency = int(max_concurrency)
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.temperature = temperature
        self.system_prompt = system_prompt
        self.logit_bias = dict(logit_bias) if logit_bias else None
        self.seed = seed
        self.max_tokens_param = max_tokens_param
        self.top_logprobs_limit = top_logprobs_limit
        self.api_version = api_version
        self.extra_body = dict(extra_body) if extra_body else None
        self.default_headers = dict(default_headers) if default_headers else None
        if api_key is not None and not isinstance(api_key, SecretKey):
            api_key = SecretKey(api_key)
        self._api_key = api_key

    # The key is a SecretKey: a pickle drops its value (it is read from the environment
    # again), a deep copy (sklearn.base.clone) keeps it.

    # -- resolved settings ----------------------------------------------------------------

    def resolved_base_url(self) -> str:
        """The server URL requests go to, normalized (no trailing slash)."""
        url = self.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL
        return _normalize_url(url)

    def _host(self) -> str:
        return (urlsplit(self.resolved_base_url()).hostname or "").lower()

    def is_openai(self) -> bool:
        """Whether requests go to OpenAI's own API."""
        return self._host() == "api.openai.com"

    def is_azure(self) -> bool:
        """Whether requests go to Azure OpenAI."""
        return self._host().endswith(_AZURE_HOSTS) or self.api_version is not None

    def resolved_endpoint(self) -> str:
        """``"chat"`` or ``"completions"`` (see the module documentation)."""
        if self.endpoint != "auto":
            return self.endpoint
        return "completions" if _COMPLETION_ONLY.match(self.model) else "chat"

    @property
    def max_top_logprobs(self) -> int | None:  # type: ignore[override]
        limit = self.top_logprobs_limit
        if limit != "auto":
            return None if limit is None else int(limit)
        if self.is_openai() or self.is_azure():
            return _OPENAI_CAPS[self.resolved_endpoint()]
        return None

    def _max_tokens_name(self, chat: bool) -> str:
        if self.max_tokens_param != "auto":
            return self.max_tokens_param
        if chat and (self.is_openai() or self.is_azure()):
            return "max_completion_tokens"
        return "max_tokens"

    # -- Backend API ----------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backend": "openai",
            "base_url": self.resolved_base_url(),
            "model": self.model,
            "endpoint": self.resolved_endpoint(),
        }
        if self.api_version is not None:
            out["api_version"] = self.api_version
        return out

    def request_settings(self, query: Query) -> dict[str, Any]:
        out: dict[str, Any] = {
            "endpoint": self.resolved_endpoint(),
            "top_logprobs": int(query.top_logprobs),
            "temperature": self.temperature,
            "max_tokens": 1,
        }
        if self.system_prompt is not None and self.resolved_endpoint() == "chat":
            out["system_prompt"] = self.system_prompt
        if self.logit_bias:
            out["logit_bias"] = {str(k): v for k, v in self.logit_bias.items()}
        if self.seed is not None:
            out["seed"] = self.seed
        if self.extra_body:
            out["extra_body"] = self.extra_body
        return out

    def check_query(self, query: Query) -> None:
        path = urlsplit(self.resolved_base_url()).path
        if path.endswith(("/chat/completions", "/completions")):
            raise ConfigurationError(
                f"base_url {self.resolved_base_url()!r} ends with an endpoint path; give "
                "the API root instead (e.g. 'http://127.0.0.1:8000/v1'): the endpoint is "
                "added per request (see endpoint=)."
            )
        if query.top_logprobs < 1:
            raise ConfigurationError("top_logprobs must be at least 1.")
        cap = self.max_top_logprobs
        if cap is not None and query.top_logprobs > cap:
            where = "OpenAI" if self.is_openai() else "Azure OpenAI" if self.is_azure() else ""
            where = f"{where}'s {self.resolved_endpoint()} endpoint" if where else "this server"
            raise ConfigurationError(
                f"top_logprobs={query.top_logprobs} is more than {where} returns (at most "
                f"{cap}); set top_logprobs <= {cap}."
            )

    # -- the client -----------------------------------------------------------------------

    def _secret(self) -> str | None:
        key = reveal(self._api_key)
        if key:
            return str(key)
        names = ("AZURE_OPENAI_API_KEY", "OPENAI_API_KEY") if self.is_azure() else ()
        for name in (*names, "OPENAI_API_KEY"):
            if os.environ.get(name):
                return os.environ[name]
        return None

    def _key_for_requests(self) -> tuple[str, str | None]:
        """The key to send and the secret to scrub from messages (``None`` for the
        placeholder)."""
        secret = self._secret()
        if secret:
            return secret, secret
        if self.is_openai() or self.is_azure():
            env = "AZURE_OPENAI_API_KEY" if self.is_azure() else "OPENAI_API_KEY"
            raise ConfigurationError(
                f"no API key for {self.resolved_base_url()}: pass api_key=... or set ${env}."
                + self._dropped_key_note()
            )
        return NO_KEY, None

    def _dropped_key_note(self) -> str:
        """Why there is no key, when it was dropped by pickling."""
        if not getattr(self._api_key, "dropped", False):
            return ""
        return (
            " This object was unpickled (for instance in a worker process of "
            "GridSearchCV(n_jobs=2) or cross_val_score(n_jobs=2)), and an API key is "
            "never pickled: set $OPENAI_API_KEY, which worker processes inherit, instead "
            "of api_key=."
        )

    def _client(self, key: str) -> Any:
        fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
        headers = tuple(sorted((self.default_headers or {}).items()))
        resource = (
            "openai-client",
            self.resolved_base_url(),
            fingerprint,
            self.timeout,
            self.max_retries,
            self.api_version,
            headers,
        )
        return shared_resource(resource, lambda: self._make_client(key))

    def _make_client(self, key: str) -> Any:
        try:
            import openai
        except ImportError as e:  # pragma: no cover - openai is a core dependency
            raise BackendUnavailableError(
                "the OpenAI backend needs the openai package: pip install openai"
            ) from e
        http = openai.DefaultAsyncHttpxClient(event_hooks={"response": [_stop_futile_retries]})
        common = {
            "api_key": key,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "default_headers": self.default_headers,
            "http_client": http,
        }
        if self.api_version is not None:
            return openai.AsyncAzureOpenAI(
                azure_endpoint=self.resolved_base_url(), api_version=self.api_version, **common
            )
        if self._host().endswith(_AZURE_HOSTS) and "/openai/v1" not in self.resolved_base_url():
            raise ConfigurationError(
                f"{self.resolved_base_url()} is an Azure OpenAI resource: use its v1 API "
                "(base_url='https://<resource>.openai.azure.com/openai/v1') or give "
                "backend_options={'api_version': '...'} with the deployment as model."
            )
        return openai.AsyncOpenAI(base_url=self.resolved_base_url(), **common)

    def _plan(self, query: Query, key: str, secret: str | None, response_type: type) -> _Plan:
        chat = self.resolved_endpoint() == "chat"
        body: dict[str, Any] = {"model": self.model, "temperature": self.temperature}
        body[self._max_tokens_name(chat)] = 1
        if chat:
            body["logprobs"] = True
            body["top_logprobs"] = int(query.top_logprobs)
        else:
            body["logprobs"] = int(query.top_logprobs)
        if self.logit_bias:
            body["logit_bias"] = {str(k): v for k, v in self.logit_bias.items()}
        if self.seed is not None:
            body["seed"] = self.seed
        if self.extra_body:
            body.update(self.extra_body)
        messages: tuple = ()
        overhead = 1
        if chat and self.system_prompt is not None:
            messages = ({"role": "system", "content": self.system_prompt},)
            overhead += len(self.system_prompt) // 4
        fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
        base = (self.resolved_base_url(), fingerprint)
        limited = self.requests_per_minute or self.tokens_per_minute
        return _Plan(
            path="/chat/completions" if chat else "/completions",
            chat=chat,
            body=body,
            messages=messages,
            key_fingerprint=fingerprint,
            secret=secret,
            response_type=response_type,
            semaphore_key=(*base, self.model, self.max_concurrency),
            limiter_key=(
                (*base, self.model, self.requests_per_minute, self.tokens_per_minute)
                if limited
                else None
            ),
            rpm=self.requests_per_minute,
            tpm=self.tokens_per_minute,
            max_concurrency=self.max_concurrency,
            token_overhead=overhead,
        )

    # -- running --------------------------------------------------------------------------

    def complete(self, prompts: Sequence[str], query: Query, *, on_result: OnResult) -> None:
        self.check_query(query)
        if not prompts:
            return
        key, secret = self._key_for_requests()
        client = self._client(key)
        response_type = _response_type()
        plan = self._plan(query, key, secret, response_type)
        runner = _loop_thread()
        channel: queue.SimpleQueue = queue.SimpleQueue()
        log.debug(
            "sending %d requests to %s (model %s, %s endpoint, at most %d in flight)",
            len(prompts),
            self.resolved_base_url(),
            self.model,
            self.resolved_endpoint(),
            self.max_concurrency,
        )
        future = asyncio.run_coroutine_threadsafe(
            self._run(runner, client, plan, list(prompts), channel), runner.loop
        )
        empty: list[tuple[int, Completion]] = []
        answered = 0
        finished = False
        try:
            while True:
                item = channel.get()
                if item is None:
                    finished = True
                    break
                i, completion = item
                if completion.tokens:
                    answered += 1
                    on_result(i, completion)
                else:
                    empty.append(item)
            failures, fatal = future.result()
        except BaseException:
            future.cancel()
            if not finished:  # report what had already arrived
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline:
                    try:
                        item = channel.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if item is None:
                        break
                    if item[1].tokens:
                        answered += 1
                        on_result(*item)
                    else:
                        empty.append(item)
            if answered:
                for item in empty:
                    on_result(*item)
            raise
        if empty and not answered and fatal is None:
            raise LogprobsUnsupportedError(
                f"model {self.model!r} at {self.resolved_base_url()} answered with an "
                f"empty message on the {self.resolved_endpoint()} endpoint for all "
                f"{len(empty)} prompts: it ended its turn at once, so there is no answer "
                "token to read. This is typical of a base (not instruction-tuned) model "
                "behind a chat endpoint: use endpoint='completions'."
            )
        for item in empty:
            on_result(*item)
        if fatal is not None:
            raise fatal.error from fatal.error.__cause__
        if failures:
            raise self._partial_error(failures, len(prompts))

    def _partial_error(self, failures: list[_Failure], total: int) -> PartialResultsError:
        sent = [f for f in failures if f.sent]
        unsent = len(failures) - len(sent)
        reasons = Counter(f.reason for f in sent)
        summary = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(5))
        errors: list[BaseException] = []
        seen: set[str] = set()
        for f in sent:
            if f.reason not in seen:
                seen.add(f.reason)
                errors.append(f.error)
        ok = total - len(failures)
        where = f"{self.resolved_base_url()} (model {self.model!r})"
        if ok == 0 and sent and all(f.connection for f in sent):
            err = BackendUnavailableError(
                f"cannot reach {self.resolved_base_url()}: requests failed to connect "
                f"after {self.max_retries} retries ({summary}). Is the server running, "
                "and is base_url right?"
            )
            err.__cause__ = errors[0]
            return err  # type: ignore[return-value]
        if ok == 0 and sent and all(f.malformed for f in sent):
            err = BackendUnavailableError(
                f"{where} answered with HTTP 200 but not with an OpenAI completion "
                f"({summary}). Is base_url the API root of an OpenAI-compatible server "
                "(usually ending in '/v1', e.g. 'http://127.0.0.1:8000/v1')?"
            )
            err.__cause__ = errors[0]
            return err  # type: ignore[return-value]
        message = (
            f"{len(failures)} of {total} prompts got no result from {where}: "
            f"{len(sent)} requests failed after {self.max_retries} retries ({summary})"
        )
        down = bool(sent) and all(f.connection for f in sent)
        if unsent and down:
            message += f", and {unsent} were not sent once the server could not be reached"
        elif unsent:
            message += f", and {unsent} were not sent after {self._breaker()} failures in a row"
        if down:
            hint = (
                f"the server at {self.resolved_base_url()} stopped accepting connections: "
                "once it is back, call again to send only the others."
            )
        else:
            hint = (
                "call again to send only the others (raising timeout or max_retries, or "
                "lowering max_concurrency, may help)."
            )
        message += f". The {ok} that succeeded are cached; {hint}"
        err = PartialResultsError(message, n_failed=len(failures), n_completed=ok, errors=errors)
        if errors:
            err.__cause__ = errors[0]
        return err

    def _breaker(self) -> int:
        """Failures in a row after which the rest of a call is not sent."""
        return max(10, 2 * self.max_concurrency)

    async def _run(
        self,
        runner: _LoopThread,
        client: Any,
        plan: _Plan,
        prompts: list[str],
        channel: queue.SimpleQueue,
    ) -> tuple[list[_Failure], _Fatal | None]:
        semaphore = runner.semaphore(plan.semaphore_key, plan.max_concurrency)
        limiter = (
            runner.limiter(plan.limiter_key, plan.rpm, plan.tpm)
            if plan.limiter_key is not None
            else None
        )
        failures: list[_Failure] = []
        unsent: list[int] = []
        state: dict[str, Any] = {"fatal": None, "streak": 0, "stopped": False, "ok": 0}
        breaker = self._breaker()
        pending = iter(range(len(prompts)))
        put = channel.put
        post = client.post
        parse = parse_chat_response if plan.chat else parse_completions_response
        loads = _fast_loads if plan.chat else _loads_keeping_duplicates
        workers: list[asyncio.Task] = []

        async def worker() -> None:
            while state["fatal"] is None and not state["stopped"]:
                i = next(pending, None)
                if i is None:
                    return
                prompt = prompts[i]
                if limiter is not None:
                    await limiter.acquire(len(prompt) // 4 + plan.token_overhead)
                body = dict(plan.body)
                if plan.chat:
                    body["messages"] = [*plan.messages, {"role": "user", "content": prompt}]
                else:
                    body["prompt"] = prompt
                async with semaphore:
                    if state["fatal"] is not None or state["stopped"]:
                        unsent.append(i)
                        return
                    try:
                        response = await post(
                            plan.path,
                            cast_to=plan.response_type,
                            body=body,
                            options={"security": {"bearer_auth": True}},
                        )
                        completion = parse(loads(response.content))
                    except asyncio.CancelledError:
                        raise
                    except BaseException as e:
                        outcome = self._classify(e, plan)
                        if isinstance(outcome, _Fatal):
                            if state["fatal"] is None:
                                state["fatal"] = outcome
                                for w in workers:
                                    if w is not asyncio.current_task():
                                        w.cancel()
                            return
                        outcome.index = i
                        failures.append(outcome)
                        state["streak"] += 1
                        # The rest are not sent after too many failures in a row,
                        # after a request that still cannot connect once its retries
                        # are spent (the server is down or gone: the others would
                        # wait as long and fail too), or when the first answers are
                        # not completions at all (a wrong base_url).
                        if (
                            state["streak"] >= breaker
                            or outcome.connection
                            or (outcome.malformed and not state["ok"])
                        ):
                            state["stopped"] = True
                        continue
                state["streak"] = 0
                state["ok"] += 1
                put((i, completion))

        try:
            workers.extend(
                asyncio.ensure_future(worker())
                for _ in range(min(len(prompts), plan.max_concurrency))
            )
            try:
                await asyncio.wait(workers)
            except asyncio.CancelledError:
                for w in workers:
                    w.cancel()
                await asyncio.wait(workers)
                raise
            if state["stopped"] and state["fatal"] is None:
                # The call was stopped: the rest are not sent.
                last = failures[-1]
                note = BackendError("not sent: the call was stopped after failures")
                for i in [*unsent, *pending]:
                    failures.append(_Failure(i, note, last.reason, last.connection, sent=False))
            return failures, state["fatal"]
        finally:
            put(None)

    def _classify(self, e: BaseException, plan: _Plan) -> _Failure | _Fatal:
        """Turn an exception of one request into a failure of that request, or a fatal
        error for the whole call."""
        import openai

        secret = plan.secret
        _scrub_exception(e, secret)
        where = f"{self.resolved_base_url()} (model {self.model!r})"
        if isinstance(e, _NoLogprobs):
            err = LogprobsUnsupportedError(
                f"{where} answered without log-probabilities on the "
                f"{self.resolved_endpoint()} endpoint. skllmprob needs the top "
                "log-probabilities of the first answer token: use a model and server "
                "that return them (reasoning models do not; on vLLM, llama.cpp server and "
                "Ollama they must be enabled), or try the other endpoint ('chat' / "
                "'completions')."
            )
            return _Fatal(err)
        if isinstance(e, _Malformed | ValueError):
            reason = f"malformed response ({_short(str(e), secret)})"
            return _Failure(-1, e, reason, malformed=True)
        if isinstance(e, openai.APIStatusError):
            status = e.status_code
            message = _error_message(e, secret)
            code = getattr(e, "code", None)
            if status == 429 and (code == "insufficient_quota" or "insufficient_quota" in message):
                err = RequestRejectedError(
                    f"{where}: quota exhausted (429 insufficient_quota): {message}. Check "
                    "the plan and billing of the account; retrying will not help.",
                    status_code=status,
                )
                err.__cause__ = e
                return _Fatal(err)
            low = message.lower()
            if "logprob" in low and any(w in low for w in _UNSUPPORTED_WORDS):
                err = LogprobsUnsupportedError(
                    f"{where} does not return log-probabilities ({status}: {message}). Use "
                    "a model and server that return them: OpenAI's reasoning models "
                    "(o-series, gpt-5 family) do not (gpt-4o-mini and gpt-4.1-mini do); "
                    "self-hosted servers may need them enabled (llama-cpp-python's "
                    "server: --logits_all True)."
                )
                err.__cause__ = e
                return _Fatal(err)
            if 400 <= status < 500 and status not in (408, 409, 429):
                err = RequestRejectedError(
                    f"{where} rejected the request ({status}: {message}). "
                    + _hint(status, low, self, plan),
                    status_code=status,
                )
                err.__cause__ = e
                return _Fatal(err)
            return _Failure(-1, e, f"{status} {type(e).__name__}: {_short(message, secret)}")
        if isinstance(e, openai.APITimeoutError):
            return _Failure(-1, e, f"timed out after {self.timeout:g} s")
        if isinstance(e, openai.APIConnectionError):
            cause = e.__cause__
            detail = type(cause).__name__ if cause is not None else "connection error"
            return _Failure(-1, e, f"connection error ({detail})", connection=True)
        if isinstance(e, Exception):
            return _Failure(-1, e, f"{type(e).__name__}: {_short(str(e), secret)}")
        raise e


def _short(text: str, secret: str | None, n: int = 160) -> str:
    text = _scrub(" ".join(str(text).split()), secret)
    return text if len(text) <= n else text[: n - 3] + "..."


def _error_message(e: Any, secret: str | None) -> str:
    body = getattr(e, "body", None)
    message = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            message = inner.get("message")
        elif isinstance(inner, str):
            message = inner
        if message is None and isinstance(body.get("message"), str):
            message = body["message"]
    if not isinstance(message, str) or not message:
        message = getattr(e, "message", None) or str(e)
    return _short(message, secret, 300)


def _hint(status: int, low: str, backend: OpenAIBackend, plan: _Plan) -> str:
    if status == 401:
        return "Check api_key (or $OPENAI_API_KEY) for this server." + (
            backend._dropped_key_note() if plan.secret is None else ""
        )
    if status == 403:
        return "The key is not allowed to use this model or endpoint."
    if status == 404:
        return (
            f"Check the model name {backend.model!r} (for Azure: the deployment name), "
            f"that the server has a {plan.path} endpoint (see endpoint=) and that base_url "
            "is the server's API root (usually ending in '/v1')."
        )
    if "max_tokens" in low and "max_completion_tokens" in low:
        other = "max_tokens" if "max_completion_tokens" in plan.body else "max_completion_tokens"
        return f"Set backend_options={{'max_tokens_param': '{other}'}}."
    if "logprobs" in low:
        return "The server may cap top_logprobs; set a smaller top_logprobs."
    return "Retrying will not help; fix the request settings."


def _loads_keeping_duplicates(data: bytes) -> Any:
    return json.loads(data, object_pairs_hook=_keep_duplicates)


def _response_type() -> type:
    """The HTTP response class the SDK returns unparsed (``cast_to``)."""
    try:
        import httpx2

        return httpx2.Response
    except ImportError:  # pragma: no cover - openai versions built on httpx
        import httpx

        return httpx.Response
