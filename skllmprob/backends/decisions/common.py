"""What the two decision backends share: their settings, the client, the plan for
the OpenAI backend's request runner, and the errors that name a fix.

The requests run through :func:`skllmprob.backends.openai.runner.run_requests`
(one process-wide event loop, at most ``max_concurrency`` in flight per settings,
optional pacing), and the SDK client does every retry: nothing here retries.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from ..._secrets import SecretKey, mask_url, reveal, wrap_url_secret
from ...exceptions import ConfigurationError, RequestRejectedError
from ..base import Backend, Completion, OnResult, Query
from ..openai import errors
from ..openai.runner import _Plan, pacing_fields, run_requests
from ..openai.settings import _normalize_url
from .questions import QUESTION_KINDS

log = logging.getLogger("skllmprob.decisions")


class DecisionBackendBase(Backend):
    """Settings and the call of a decision backend (see the subclasses for the
    parameters). Subclasses set the class attributes and :meth:`_request`."""

    exact = True
    #: Name in the identity and messages, default server, the key's variable,
    #: most options per question, and the parameter of the wrong backend's fix.
    kind_name = ""
    default_base_url = ""
    key_env = ""
    max_options = 255
    default_path = ""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | SecretKey | None = None,
        question: str = "choice",
        instructions: str | None = None,
        descriptions: dict | None = None,
        examples: Sequence[tuple[str, str]] = (),
        input_format: str = "text",
        on_refusal: str = "warn",
        timeout: float = 60.0,
        max_retries: int = 5,
        max_concurrency: int = 8,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        default_headers: dict | None = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ConfigurationError("model must be a non-empty model name.")
        if question not in QUESTION_KINDS:
            raise ConfigurationError(
                f"question={question!r}; use one of {', '.join(map(repr, QUESTION_KINDS))}."
            )
        if int(max_concurrency) < 1:
            raise ConfigurationError("max_concurrency must be at least 1.")
        _check_choice("input_format", input_format, INPUT_FORMATS)
        _check_choice("on_refusal", on_refusal, REFUSAL_POLICIES)
        self.model = model
        # A password in the URL stays out of pickles and reprs (SecretURL).
        self.base_url = wrap_url_secret(base_url)
        self.question = question
        self.instructions = instructions
        self.descriptions = (
            {str(k): str(v) for k, v in descriptions.items()} if descriptions else None
        )
        self.examples = _examples(examples)
        self.input_format = input_format
        self.on_refusal = on_refusal
        #: The class answers in the order to ask them (None: the query's order).
        self.order: tuple[str, ...] | None = None
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.max_concurrency = int(max_concurrency)
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.default_headers = dict(default_headers) if default_headers else None
        if api_key is not None and not isinstance(api_key, SecretKey):
            api_key = SecretKey(api_key)
        self._api_key = api_key  # a pickle drops it; never in the repr

    def __repr__(self) -> str:
        return mask_url(super().__repr__())

    def with_settings(self, **changes: Any) -> DecisionBackendBase:
        """A copy with other question settings (the key is kept); the estimator
        fills in what the user left unset.

        >>> from skllmprob.backends.decisions import SystemOneBackend
        >>> SystemOneBackend("jev-latest").with_settings(instructions="Which team?").instructions
        'Which team?'
        """
        unknown = sorted(set(changes) - set(_SETTINGS))
        if unknown:
            raise TypeError(f"with_settings() got unexpected settings {unknown}")
        out = copy.copy(self)
        for name, value in changes.items():
            setattr(out, name, value)
        if changes.get("descriptions"):
            out.descriptions = {str(k): str(v) for k, v in changes["descriptions"].items()}
        if "examples" in changes:
            out.examples = _examples(changes["examples"])
        if changes.get("order") is not None:
            out.order = tuple(str(a) for a in changes["order"])
        for name in ("input_format", "on_refusal"):
            _check_choice(name, getattr(out, name), _SETTINGS[name])
        return out

    def asked_order(self, answers: Sequence[str]) -> tuple[str, ...]:
        """``answers`` in the order to ask them: ``order`` when it holds the same
        answers, else as given.

        >>> from skllmprob.backends.decisions import SystemOneBackend
        >>> b = SystemOneBackend("m").with_settings(order=("low", "mid", "high"))
        >>> b.asked_order(("high", "low", "mid"))
        ('low', 'mid', 'high')
        """
        answers = tuple(answers)
        if self.order is not None and sorted(self.order) == sorted(answers):
            return self.order
        return answers

    # -- resolved settings ----------------------------------------------------------------

    def resolved_base_url(self) -> str:
        return _normalize_url(reveal(self.base_url) or self.default_base_url)

    def shown_url(self) -> str:
        return mask_url(self.resolved_base_url())

    def _host(self) -> str:
        return (urlsplit(self.resolved_base_url()).hostname or "").lower()

    def is_azure(self) -> bool:  # used by the OpenAI backend's key and error helpers
        return False

    def resolved_endpoint(self) -> str:
        return self.kind_name

    def identity(self) -> dict[str, Any]:
        return {"backend": self.kind_name, "base_url": self.shown_url(), "model": self.model}

    def request_settings(self, query: Query) -> dict[str, Any]:
        """What changes the answers (part of the cache key); the newer settings only
        when they differ from their defaults, so older entries stay valid."""
        out = {
            "answers": list(query.answers),
            "question": self.question,
            "instructions": self.instructions,
            "descriptions": self.descriptions,
        }
        if self.examples:
            out["examples"] = [list(e) for e in self.examples]
        if self.input_format != "text":
            out["input_format"] = self.input_format
        order = self.asked_order(query.answers)
        if order != tuple(query.answers):
            out["order"] = list(order)
        return out

    def check_query(self, query: Query) -> None:
        from .questions import check_answers

        check_answers(query.answers, self.question, self.max_options, self._where_options())
        unknown = sorted(set(self.descriptions or {}) - set(query.answers))
        if unknown:
            raise ConfigurationError(
                f"descriptions has entries for {unknown[:5]}, which are not classes "
                f"(the classes are {list(query.answers)[:10]}); fix their keys."
            )

    def _where_options(self) -> str:
        return f"the {self.kind_name} endpoint"

    # -- the client -----------------------------------------------------------------------

    def _key(self) -> tuple[str, str | None]:
        """The key to send and the secret to scrub from messages."""
        raise NotImplementedError

    def _client(self, key: str) -> Any:
        """The OpenAI backend's shared SDK client for this server, key and retry
        settings (the same one a chat backend of the same server uses)."""
        from ..openai.backend import OpenAIBackend

        chat = OpenAIBackend(
            self.model,
            base_url=self.resolved_base_url(),
            timeout=self.timeout,
            max_retries=self.max_retries,
            default_headers=self.default_headers,
        )
        return chat._client(key)

    # -- the call -------------------------------------------------------------------------

    async def _request(self, client: Any, prompt: str, answers: tuple) -> Completion:
        raise NotImplementedError

    def _path(self) -> str:
        return self.default_path

    def _plan(self, query: Query, key: str, secret: str | None) -> _Plan:
        answers = tuple(query.answers)
        fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
        base = (self.resolved_base_url(), fingerprint, self.kind_name)

        async def request(client: Any, prompt: str) -> Completion:
            return await self._request(client, prompt, answers)

        return _Plan(
            path=self._path(),
            chat=False,
            body={},
            messages=(),
            secret=secret,
            response_type=object,
            **pacing_fields(self, base),
            token_overhead=1 + sum(len(a) for a in answers) // 4,
            breaker=max(10, 2 * self.max_concurrency),
            request=request,
        )

    def complete(self, prompts: Sequence[str], query: Query, *, on_result: OnResult) -> None:
        self.check_query(query)
        if not prompts:
            return
        key, secret = self._key()
        client = self._client(key)
        plan = self._plan(query, key, secret)
        log.debug(
            "sending %d %s requests to %s (model %s, at most %d in flight)",
            len(prompts),
            self.kind_name,
            self.shown_url(),
            self.model,
            self.max_concurrency,
        )
        out = run_requests(
            plan, client, list(prompts), lambda e: self._classify(e, plan), on_result
        )
        if out.fatal is not None:
            raise out.fatal.error from out.fatal.error.__cause__
        if out.failures:
            raise errors.partial_error(self, out.failures, len(prompts), plan.breaker)

    # -- errors ---------------------------------------------------------------------------

    def _classify(self, e: BaseException, plan: _Plan):
        import openai

        status = getattr(e, "status_code", 0)
        if isinstance(e, openai.APIStatusError) and 400 <= status < 500:
            errors._scrub_exception(e, plan.secret)
            body = getattr(e, "body", None)  # System One servers: {"error": "message"}
            if isinstance(body, str) and body:
                message = errors._short(body, plan.secret, 300)
            else:
                message = errors._error_message(e, plan.secret)
            hint = self._rejection_hint(status, message)
            if hint is None and status in (400, 413, 422):
                hint = RequestRejectedError(
                    f"{self.shown_url()}{self._path()} rejected the request ({status}: "
                    f"{message}). Retrying will not help; fix the question settings "
                    "(the classes, question=, descriptions=, instructions=).",
                    status_code=status,
                )
            if hint is not None:
                return errors._fatal(hint, e)
        return errors.classify(e, self, plan)

    def _rejection_hint(self, status: int, message: str) -> RequestRejectedError | None:
        """One clear error for a missing endpoint or a model of the wrong kind."""
        low = message.lower()
        url = f"{self.shown_url()}{self._path()}"
        if "chat model" in low or "not a decision" in low or "does not support" in low:
            return RequestRejectedError(
                f"{url} rejected model {self.model!r} ({status}: {message}): it is not a "
                f"decision model. Use a decision model with backend={self.kind_name!r}, "
                "or backend='openai' (token log-probabilities) for a chat model.",
                status_code=status,
            )
        if status == 404 and "model" not in low:
            return RequestRejectedError(
                f"{url} does not exist (404: {message}). {self._missing_endpoint_fix()}",
                status_code=status,
            )
        if status == 401:
            return RequestRejectedError(
                f"{url} refused the key (401: {message}). Check api_key (or "
                f"${self.key_env}) for this server.",
                status_code=status,
            )
        return None

    def _missing_endpoint_fix(self) -> str:
        raise NotImplementedError


INPUT_FORMATS = ("text", "json")
REFUSAL_POLICIES = ("warn", "raise")
#: The settings :meth:`DecisionBackendBase.with_settings` changes (and their choices).
_SETTINGS = {
    "instructions": None,
    "descriptions": None,
    "question": QUESTION_KINDS,
    "examples": None,
    "input_format": INPUT_FORMATS,
    "on_refusal": REFUSAL_POLICIES,
    "order": None,
}


def _check_choice(name: str, value: Any, choices) -> None:
    if choices is not None and value not in choices:
        raise ConfigurationError(f"{name}={value!r}; use one of {', '.join(map(repr, choices))}.")


def _examples(examples: Any) -> tuple[tuple[str, str], ...]:
    """Few-shot examples as (input, answer) pairs of strings."""
    out = []
    for item in examples or ():
        try:
            text, answer = item
        except (TypeError, ValueError) as e:
            raise ConfigurationError(
                f"examples must be (input, answer) pairs of strings; got {item!r}."
            ) from e
        out.append((str(text), str(answer)))
    return tuple(out)


def env_key(name: str) -> str | None:
    """The stripped value of ``$name``, or ``None``."""
    value = os.environ.get(name, "").strip()
    return value or None
