"""The settings of the OpenAI backend: validation, the resolved server, endpoint and
caps, what enters the cache key, and the body sent with every request."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..._secrets import SecretKey, mask_url, reveal, wrap_url_secret
from ...exceptions import ConfigurationError, LogprobsUnsupportedError
from ..base import Backend, Query

OPENAI_BASE_URL = "https://api.openai.com/v1"
_COMPLETION_ONLY = re.compile(r"^(gpt-3\.5-turbo-instruct|davinci-002|babbage-002)")
_AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")
# OpenAI's documented limits: chat top_logprobs <= 20, legacy completions logprobs <= 5.
_OPENAI_CAPS = {"chat": 20, "completions": 5}


def _normalize_url(url: str) -> str:
    """No surrounding whitespace, trailing slash or fragment; the scheme and the host
    in lower case (not a user name or password).

    >>> _normalize_url(" HTTP://Bob:PaSs@LocalHost:8000/v1/ ")
    'http://Bob:PaSs@localhost:8000/v1'
    """
    parts = urlsplit(url.strip())
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = userinfo + at + hostport.lower()
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme.lower(), netloc, path, parts.query, ""))


def _check_settings(endpoint, max_tokens_param, max_concurrency, rpm, tpm) -> None:
    if endpoint not in ("auto", "chat", "completions"):
        raise ConfigurationError(f"endpoint={endpoint!r}; use 'auto', 'chat' or 'completions'.")
    if max_tokens_param not in ("auto", "max_tokens", "max_completion_tokens"):
        raise ConfigurationError(
            f"max_tokens_param={max_tokens_param!r}; use 'auto', 'max_tokens' or "
            "'max_completion_tokens'."
        )
    if int(max_concurrency) < 1:
        raise ConfigurationError("max_concurrency must be at least 1.")
    for name, value in (("requests_per_minute", rpm), ("tokens_per_minute", tpm)):
        if value is not None and not float(value) > 0:
            raise ConfigurationError(f"{name} must be positive (or None for no limit).")


def _check_label_scores(label_scores, label_token_ids: bool, endpoint: str) -> None:
    if label_scores is None:
        return
    if label_scores != "prompt_logprobs":
        raise ConfigurationError(
            f"label_scores={label_scores!r}; use 'prompt_logprobs' (vLLM) or None."
        )
    if label_token_ids:
        raise ConfigurationError(
            "label_scores='prompt_logprobs' scores whole labels exactly and "
            "label_token_ids=True lists their first tokens: give one of the two."
        )
    if endpoint == "chat":
        raise ConfigurationError(
            "label_scores='prompt_logprobs' sends the prompt as token ids to vLLM's "
            "/v1/completions, without a chat template: give endpoint='completions' "
            "(for an instruction-tuned model, put its chat template in the prompt)."
        )


class OpenAISettings(Backend):
    """The settings part of :class:`~skllmprob.backends.openai.OpenAIBackend` (see
    there for the parameters)."""

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
        label_token_ids: bool = False,
        label_scores: str | None = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ConfigurationError("model must be a non-empty model name, e.g. 'gpt-4o-mini'.")
        _check_settings(
            endpoint, max_tokens_param, max_concurrency, requests_per_minute, tokens_per_minute
        )
        self.model = model
        # A password in the URL stays out of pickles and reprs (SecretURL).
        self.base_url = wrap_url_secret(base_url)
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
        self.label_token_ids = bool(label_token_ids)
        _check_label_scores(label_scores, self.label_token_ids, self.resolved_endpoint())
        self.label_scores = label_scores
        if api_key is not None and not isinstance(api_key, SecretKey):
            api_key = SecretKey(api_key)
        # A SecretKey: a pickle drops its value (it is read from the environment
        # again), a deep copy (sklearn.base.clone) keeps it.
        self._api_key = api_key

    def __repr__(self) -> str:
        return mask_url(super().__repr__())  # a password in base_url is never shown

    # -- resolved settings ----------------------------------------------------------------

    def resolved_base_url(self) -> str:
        """The server URL requests go to, normalized (no trailing slash)."""
        url = reveal(self.base_url) or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL
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

    def shown_url(self) -> str:
        """The server URL as messages, the repr and the identity show it: normalized,
        with its password masked."""
        return mask_url(self.resolved_base_url())

    # -- Backend API ----------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backend": "openai",
            "base_url": self.shown_url(),
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
        ids = self._label_ids(query)
        if ids is not None:
            out["logprob_token_ids"] = ids
        if self._scores_sequences(query):
            out["label_scores"] = self.label_scores
            out["answers"] = list(query.answers)
        return out

    @property
    def exact(self) -> bool:  # type: ignore[override]
        """Whether whole answers are scored (``label_scores`` on a server that serves
        ``prompt_logprobs``; detected once per server and model in a process)."""
        if self.label_scores is None:
            return False
        from .sequences import serves_prompt_logprobs

        return serves_prompt_logprobs(self)

    def _scores_sequences(self, query: Query) -> bool:
        """Whether ``query`` is answered with exact label scores (``prompt_logprobs``)."""
        if self.label_scores is None or not query.answers:
            return False
        if not self.exact:
            raise LogprobsUnsupportedError(
                f"{self.shown_url()} does not serve prompt_logprobs (found in this "
                "process), so the answers cannot be scored exactly; a classifier fitted "
                "when it did must be fitted again (it then reads the top-k tokens)."
            )
        return True

    @property
    def wants_answers(self) -> bool:
        """Whether queries should carry the answers (``label_token_ids``)."""
        return self.label_token_ids

    def _label_ids(self, query: Query) -> list[int] | None:
        """The ids sent as ``logprob_token_ids`` (``None``: none are sent)."""
        if not (self.label_token_ids and query.answers):
            return None
        from .token_ids import label_token_ids

        return label_token_ids(self, query.answers)

    def check_query(self, query: Query) -> None:
        path = urlsplit(self.resolved_base_url()).path
        if path.endswith(("/chat/completions", "/completions")):
            raise ConfigurationError(
                f"base_url {self.shown_url()!r} ends with an endpoint path; give "
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

    # -- requests -------------------------------------------------------------------------

    def _request_body(self, query: Query) -> tuple[dict, tuple, int]:
        """The JSON fields of every request, the messages before the prompt (chat) and
        the estimated tokens of a request besides its prompt's."""
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
        ids = self._label_ids(query)
        if ids is not None:
            body["logprob_token_ids"] = ids
        messages: tuple = ()
        overhead = 1
        if chat and self.system_prompt is not None:
            messages = ({"role": "system", "content": self.system_prompt},)
            overhead += len(self.system_prompt) // 4
        return body, messages, overhead
