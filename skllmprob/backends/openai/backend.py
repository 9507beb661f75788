"""The OpenAI backend: settings (see :mod:`.settings`) plus the client and the call."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from ...exceptions import BackendUnavailableError, ConfigurationError
from ..base import OnResult, Query, shared_resource
from . import errors
from .keys import key_for_requests
from .runner import _Plan, pacing_fields, run_requests
from .settings import _AZURE_HOSTS, OpenAISettings
from .tokenizer import ServerTokenizer, can_ask

log = logging.getLogger("skllmprob.openai")


class OpenAIBackend(OpenAISettings):
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
        a placeholder. Never stored in a pickle. Whitespace around the key (the
        line end of a key read from a file or a CRLF ``.env``), from either source,
        is stripped; a key with any other character that cannot go in an HTTP header
        (a line break inside it, a control or non-ASCII character) is refused with a
        :class:`~skllmprob.exceptions.ConfigurationError` before any request, and
        the message never shows the key.
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
    label_token_ids : bool, default=False
        vLLM: list the first token of every form of every label in each request
        (``logprob_token_ids``), so that every class's first-token log-probability
        comes back exactly, with no top-k floor (see
        :mod:`~skllmprob.backends.openai.token_ids`). Support is detected once per
        server; a server without it gets a warning and the usual top-k requests.
    label_scores : {None, "prompt_logprobs"}, default=None
        ``"prompt_logprobs"`` (vLLM, ``endpoint="completions"``): score every form of
        every label exactly, multi-token labels included, from vLLM's
        ``prompt_logprobs`` over the prompt followed by the label (one request per
        token sequence of a label's forms, plus one for the top tokens; see
        :mod:`~skllmprob.backends.openai.sequences`). The backend is then exact:
        labels need no option codes, and the answers are part of the cache key.
        Support is detected once per server and model; a server without it gets a
        warning and the usual top-k requests (and cache keys).
    """

    # -- the client -----------------------------------------------------------------------

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
        if urlsplit(self.resolved_base_url()).username is not None:  # userinfo
            errors.mask_url_passwords_in_logs()
        http = openai.DefaultAsyncHttpxClient(
            event_hooks={"response": [errors._stop_futile_retries]}
        )
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
                f"{self.shown_url()} is an Azure OpenAI resource: use its v1 API "
                "(base_url='https://<resource>.openai.azure.com/openai/v1') or give "
                "backend_options={'api_version': '...'} with the deployment as model."
            )
        return openai.AsyncOpenAI(base_url=self.resolved_base_url(), **common)

    def _plan(self, query: Query, key: str, secret: str | None, response_type: type) -> _Plan:
        body, messages, overhead = self._request_body(query)
        chat = self.resolved_endpoint() == "chat"
        fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
        base = (self.resolved_base_url(), fingerprint)
        return _Plan(
            path="/chat/completions" if chat else "/completions",
            chat=chat,
            body=body,
            messages=messages,
            secret=secret,
            response_type=response_type,
            **pacing_fields(self, base),
            token_overhead=overhead,
            breaker=self._breaker(),
        )

    def _breaker(self) -> int:
        """Failures in a row after which the rest of a call is not sent."""
        return max(10, 2 * self.max_concurrency)

    # -- the server's tokenizer ------------------------------------------------------------

    def _tokenizer(self) -> ServerTokenizer | None:
        """The server's tokenizer where the server may be asked for one."""
        url = self.resolved_base_url()
        if not can_ask(url, self.is_openai() or self.is_azure()):
            return None
        key, _ = key_for_requests(self)
        return ServerTokenizer(url, self.model, key, self.timeout, self.max_concurrency)

    def _ask_tokenizer(self, what: str, arg: Sequence[str]):
        tok = self._tokenizer()
        if tok is None:
            return None
        try:
            return getattr(tok, what)(arg)
        except (OSError, ValueError, KeyError) as e:  # a server that tokenizes, then fails
            log.warning(
                "%s could not tokenize (%s); labels are matched by their first words.",
                self.shown_url(),
                type(e).__name__,
            )
            return None

    def first_tokens(self, answers: Sequence[str]) -> list[list[str]] | None:
        """The first token of each answer's case and leading-space variants, from
        the server's tokenizer (vLLM, llama.cpp's llama-server, llama-cpp-python's
        server); ``None`` when the server cannot tokenize."""
        return self._ask_tokenizer("first_tokens", answers)

    def count_tokens(self, texts: Sequence[str]) -> list[int] | None:
        """How many tokens the server's tokenizer makes of each text (``None``: it
        cannot tokenize); used to pick single-token option codes."""
        ids = self._ask_tokenizer("tokenize", texts)
        return None if ids is None else [len(x) for x in ids]

    # -- running --------------------------------------------------------------------------

    def complete(self, prompts: Sequence[str], query: Query, *, on_result: OnResult) -> None:
        self.check_query(query)
        if not prompts:
            return
        key, secret = key_for_requests(self)
        client = self._client(key)
        plan = self._plan(query, key, secret, _response_type())
        if self._scores_sequences(query):
            from .sequences import sequence_plan

            plan = sequence_plan(self, plan, query)
        log.debug(
            "sending %d requests to %s (model %s, %s endpoint, at most %d in flight)",
            len(prompts),
            self.shown_url(),
            self.model,
            self.resolved_endpoint(),
            self.max_concurrency,
        )
        out = run_requests(
            plan, client, list(prompts), lambda e: errors.classify(e, self, plan), on_result
        )
        if out.empty and not out.answered and out.fatal is None:
            raise errors.empty_answers_error(self, len(out.empty))
        for item in out.empty:
            on_result(*item)
        if out.fatal is not None:
            raise out.fatal.error from out.fatal.error.__cause__
        if out.failures:
            raise errors.partial_error(self, out.failures, len(prompts), plan.breaker)


def _response_type() -> type:
    """The HTTP response class the SDK returns unparsed (``cast_to``)."""
    try:
        import httpx2

        return httpx2.Response
    except ImportError:  # pragma: no cover - openai versions built on httpx
        import httpx

        return httpx.Response
