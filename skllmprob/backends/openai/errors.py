"""Errors of the OpenAI backend: scrubbing the key from the SDK's exceptions, turning
a failed request into a failure of that prompt or a fatal error for the call, and
the messages and hints the user sees."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..._secrets import mask_url
from ...exceptions import (
    BackendUnavailableError,
    LogprobsUnsupportedError,
    PartialResultsError,
    RequestRejectedError,
)
from .keys import dropped_key_note
from .parsing import _Malformed, _NoLogprobs

if TYPE_CHECKING:  # pragma: no cover
    from .backend import OpenAIBackend
    from .runner import _Plan

_UNSUPPORTED_WORDS = ("not supported", "unsupported", "not allowed", "not enabled", "does not")
_AUTH_HEADERS = ("authorization", "api-key", "proxy-authorization")
MASK = "**********"


# ---------------------------------------------------------------------------------------
# Scrubbing


def _scrub(text: str, secret: str | None) -> str:
    """``text`` without the key, and with the password of every URL masked."""
    text = mask_url(text)
    if secret and len(secret) >= 4 and secret in text:
        text = text.replace(secret, MASK)
    return text


def _scrub_value(value: Any, secret: str | None) -> Any:
    if isinstance(value, str):
        return _scrub(value, secret)
    if isinstance(value, dict):
        return {k: _scrub_value(v, secret) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub_value(v, secret) for v in value)
    if isinstance(value, bytes) and secret and len(secret) >= 4:
        return value.replace(secret.encode(), MASK.encode())
    return value


def _scrub_exception(e: BaseException, secret: str | None) -> None:
    """Remove the key (and URL passwords) from an SDK exception and the exceptions it
    chains (causes and contexts, e.g. the HTTP stack's own error quoting a header)
    before it is chained or kept: their text, the body and the headers and URL of the
    HTTP request they hold (which a pickle of the error, e.g. from a joblib worker,
    would otherwise carry)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [e]
    while todo:
        one = todo.pop()
        if one is None or any(one is s for s in seen):
            continue
        seen.append(one)
        _scrub_one(one, secret)
        todo += [one.__cause__, one.__context__]


def _scrub_one(e: BaseException, secret: str | None) -> None:
    e.args = tuple(_scrub_value(a, secret) for a in e.args)
    for attr in ("message", "body"):
        if hasattr(e, attr):
            with contextlib.suppress(AttributeError):  # a read-only attribute
                setattr(e, attr, _scrub_value(getattr(e, attr), secret))
    response = getattr(e, "response", None)
    for attr in ("_content", "_text"):  # the raw and decoded body kept by httpx
        body = getattr(response, attr, None)
        with contextlib.suppress(AttributeError, TypeError):
            if body is not None and _scrub_value(body, secret) != body:
                setattr(response, attr, _scrub_value(body, secret))
    for request in (getattr(e, "request", None), getattr(response, "request", None)):
        _scrub_request(request)


def _scrub_request(request: Any) -> None:
    """Mask the credentials an HTTP request holds: its auth headers, the password of
    its URL."""
    headers = getattr(request, "headers", None)
    if headers is None:
        return
    for name in _AUTH_HEADERS:
        with contextlib.suppress(Exception):  # a request without such headers
            if name in headers:
                headers[name] = MASK
    url = getattr(request, "url", None)
    with contextlib.suppress(Exception):  # a URL type without these
        if url.password:
            request.url = url.copy_with(username=url.username, password="***")


#: The loggers of the SDK and its HTTP stacks that may log a request's URL.
_HTTP_LOGGERS = (
    "openai",
    "openai._base_client",
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore.http11",
    "httpcore2",
    "httpcore2.http11",
)


class _MaskUrlPasswords(logging.Filter):
    """Masks the password of URLs in the records of the SDK's and HTTP stacks'
    loggers (httpx logs every request's URL, userinfo included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        with contextlib.suppress(Exception):  # a record that does not format
            message = record.getMessage()
            masked = mask_url(message)
            if masked != message:
                record.msg, record.args = masked, ()
        return True


_URL_FILTER = _MaskUrlPasswords()


def mask_url_passwords_in_logs() -> None:
    """Install the filter on the SDK's and HTTP stacks' loggers (once; for a
    ``base_url`` with a password)."""
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _URL_FILTER not in logger.filters:
            logger.addFilter(_URL_FILTER)


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


# ---------------------------------------------------------------------------------------
# Classification of one request's failure


@dataclass
class _Failure:
    index: int
    error: BaseException
    reason: str
    connection: bool = False
    sent: bool = True
    malformed: bool = False
    #: The server accepted the connection, then closed it without an answer.
    dropped: bool = False


#: The HTTP stack's errors (httpx, httpx2) for a connection that was made, then
#: closed or reset by the other side before an answer.
_DROPPED = ("ReadError", "WriteError", "RemoteProtocolError", "CloseError")


def _was_dropped(cause: BaseException | None) -> bool:
    return cause is not None and any(c.__name__ in _DROPPED for c in type(cause).__mro__)


class _Fatal(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def classify(e: BaseException, backend: OpenAIBackend, plan: _Plan) -> _Failure | _Fatal:
    """Turn an exception of one request into a failure of that request, or a fatal
    error for the whole call."""
    import openai

    secret = plan.secret
    _scrub_exception(e, secret)
    if isinstance(e, _NoLogprobs):
        return _Fatal(
            LogprobsUnsupportedError(
                f"{_where(backend)} answered without log-probabilities on the "
                f"{backend.resolved_endpoint()} endpoint. skllmprob needs the top "
                "log-probabilities of the first answer token: use a model and server "
                "that return them (reasoning models do not; on vLLM, llama.cpp server and "
                "Ollama they must be enabled), or try the other endpoint ('chat' / "
                "'completions')."
            )
        )
    if isinstance(e, _Malformed | ValueError):
        reason = f"malformed response ({_short(str(e), secret)})"
        return _Failure(-1, e, reason, malformed=True)
    if isinstance(e, openai.APIStatusError):
        return _status_outcome(e, backend, plan)
    if isinstance(e, openai.APITimeoutError):
        return _Failure(-1, e, f"timed out after {backend.timeout:g} s")
    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__
        detail = type(cause).__name__ if cause is not None else "connection error"
        if _was_dropped(cause):
            reason = f"connection closed by the server without an answer ({detail})"
            return _Failure(-1, e, reason, connection=True, dropped=True)
        return _Failure(-1, e, f"connection error ({detail})", connection=True)
    if isinstance(e, Exception):
        return _Failure(-1, e, f"{type(e).__name__}: {_short(str(e), secret)}")
    raise e


def _fatal(err: BaseException, cause: BaseException) -> _Fatal:
    err.__cause__ = cause
    return _Fatal(err)


def _status_outcome(e: Any, backend: OpenAIBackend, plan: _Plan) -> _Failure | _Fatal:
    """The outcome of an HTTP error status (after the SDK's retries)."""
    where = _where(backend)
    status = e.status_code
    message = _error_message(e, plan.secret)
    code = getattr(e, "code", None)
    if status == 429 and (code == "insufficient_quota" or "insufficient_quota" in message):
        err = RequestRejectedError(
            f"{where}: quota exhausted (429 insufficient_quota): {message}. Check "
            "the plan and billing of the account; retrying will not help.",
            status_code=status,
        )
        return _fatal(err, e)
    low = message.lower()
    if "logprob" in low and any(w in low for w in _UNSUPPORTED_WORDS):
        err = LogprobsUnsupportedError(
            f"{where} does not return log-probabilities ({status}: {message}). Use "
            "a model and server that return them: OpenAI's reasoning models "
            "(o-series, gpt-5 family) do not (gpt-4o-mini and gpt-4.1-mini do); "
            "self-hosted servers may need them enabled (llama-cpp-python's "
            "server: --logits_all True)."
        )
        return _fatal(err, e)
    if 400 <= status < 500 and status not in (408, 409, 429):
        err = RequestRejectedError(
            f"{where} rejected the request ({status}: {message}). "
            + _hint(status, low, backend, plan),
            status_code=status,
        )
        return _fatal(err, e)
    return _Failure(-1, e, f"{status} {type(e).__name__}: {_short(message, plan.secret)}")


# ---------------------------------------------------------------------------------------
# Messages


def _where(backend: OpenAIBackend) -> str:
    return f"{backend.shown_url()} (model {backend.model!r})"


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
            dropped_key_note(backend._api_key) if plan.secret is None else ""
        )
    if status == 403:
        return "The key is not allowed to use this model or endpoint."
    if status == 404:
        return (
            f"Check the model name {backend.model!r} (for Azure: the deployment name), "
            f"that the server has a {plan.path} endpoint (see endpoint=) and that base_url "
            "is the server's API root (usually ending in '/v1')."
        )
    if "decisions model" in low:
        return "Use backend='decisions' (or 'systemone') for a decision model."
    if "max_tokens" in low and "max_completion_tokens" in low:
        other = "max_tokens" if "max_completion_tokens" in plan.body else "max_completion_tokens"
        return f"Set backend_options={{'max_tokens_param': '{other}'}}."
    if "logprobs" in low:
        return "The server may cap top_logprobs; set a smaller top_logprobs."
    return "Retrying will not help; fix the request settings."


def empty_answers_error(backend: OpenAIBackend, n: int) -> LogprobsUnsupportedError:
    """Every answer of a call was empty: a base model behind a chat endpoint."""
    return LogprobsUnsupportedError(
        f"model {backend.model!r} at {backend.shown_url()} answered with an "
        f"empty message on the {backend.resolved_endpoint()} endpoint for all "
        f"{n} prompts: it ended its turn at once, so there is no answer "
        "token to read. This is typical of a base (not instruction-tuned) model "
        "behind a chat endpoint: use endpoint='completions'."
    )


def _first_errors(sent: list[_Failure]) -> list[BaseException]:
    """The error of the first failure of each reason."""
    errors: list[BaseException] = []
    seen: set[str] = set()
    for f in sent:
        if f.reason not in seen:
            seen.add(f.reason)
            errors.append(f.error)
    return errors


def _nothing_worked(backend: OpenAIBackend, sent: list[_Failure], summary: str):
    """The error when no request succeeded and all failed alike, or ``None``."""
    if sent and all(f.dropped for f in sent):
        return BackendUnavailableError(
            f"{backend.shown_url()} accepted the connections and then closed them "
            f"without an answer, after {backend.max_retries} retries ({summary}). The "
            "server may have crashed or be restarting, or base_url may point to "
            "something that is not an HTTP server (check its port and scheme)."
        )
    if sent and all(f.connection for f in sent):
        return BackendUnavailableError(
            f"cannot reach {backend.shown_url()}: requests failed to connect "
            f"after {backend.max_retries} retries ({summary}). Is the server running, "
            "and is base_url right?"
        )
    if sent and all(f.malformed for f in sent):
        return BackendUnavailableError(
            f"{_where(backend)} answered with HTTP 200 but not with an OpenAI completion "
            f"({summary}). Is base_url the API root of an OpenAI-compatible server "
            "(usually ending in '/v1', e.g. 'http://127.0.0.1:8000/v1')?"
        )
    return None


def partial_error(backend: OpenAIBackend, failures: list[_Failure], total: int, breaker: int):
    """The error raised when some prompts got no result after their retries."""
    sent = [f for f in failures if f.sent]
    unsent = len(failures) - len(sent)
    reasons = Counter(f.reason for f in sent)
    summary = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(5))
    errors = _first_errors(sent)
    ok = total - len(failures)
    if ok == 0:
        err = _nothing_worked(backend, sent, summary)
        if err is not None:
            err.__cause__ = errors[0]
            return err
    message = (
        f"{len(failures)} of {total} prompts got no result from {_where(backend)}: "
        f"{len(sent)} requests failed after {backend.max_retries} retries ({summary})"
    )
    down = bool(sent) and all(f.connection for f in sent)
    dropped = bool(sent) and all(f.dropped for f in sent)
    if unsent and dropped:
        message += f", and {unsent} were not sent once the server closed the connections"
    elif unsent and down:
        message += f", and {unsent} were not sent once the server could not be reached"
    elif unsent:
        message += f", and {unsent} were not sent after {breaker} failures in a row"
    if down:
        what = "closed the connections" if dropped else "stopped accepting connections"
        hint = (
            f"the server at {backend.shown_url()} {what}: "
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
