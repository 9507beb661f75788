"""Errors raised by skllmprob.

Every error the library raises on purpose derives from :class:`SkllmprobError`, so
callers can catch the library's failures in one place. Errors that stand for bad
arguments also derive from :class:`ValueError` (or :class:`TypeError`), as
scikit-learn's own validation errors do, so generic ``except ValueError`` code keeps
working.
"""

from __future__ import annotations

from sklearn.exceptions import NotFittedError

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "CacheError",
    "ConfigurationError",
    "InputError",
    "LogprobsUnsupportedError",
    "PartialResultsError",
    "RefitRequiredError",
    "RequestRejectedError",
    "SkllmprobError",
]


class SkllmprobError(Exception):
    """Base class of all errors raised by skllmprob."""


class ConfigurationError(SkllmprobError, ValueError):
    """A parameter or combination of parameters cannot work."""


class InputError(SkllmprobError, ValueError):
    """``X`` or ``y`` holds something the classifier cannot use."""


class RefitRequiredError(SkllmprobError, NotFittedError):
    """A fitted estimator's backend parameters changed since ``fit``: its answers and
    calibration belong to the old backend until it is fitted again. Also a
    :class:`sklearn.exceptions.NotFittedError`."""


class CacheError(SkllmprobError, RuntimeError):
    """The completion cache cannot be opened or used."""


class BackendError(SkllmprobError, RuntimeError):
    """A backend could not produce log-probabilities."""


class BackendUnavailableError(BackendError):
    """A backend cannot be used here: a missing optional dependency, a missing model
    file, or a server that cannot be reached."""


class LogprobsUnsupportedError(BackendError):
    """The model answered, but without the token log-probabilities skllmprob needs."""


class RequestRejectedError(BackendError):
    """The server rejected a request in a way that retrying cannot fix (400, 401, 403,
    404, exhausted quota)."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class PartialResultsError(BackendError):
    """Some requests of a batch failed after all retries.

    The requests that succeeded are already in the cache: calling the same method
    again only sends the ones that failed.

    Attributes
    ----------
    n_failed : int
        Number of prompts without a result.
    n_completed : int
        Number of prompts that got a result in this call (now cached).
    errors : list of BaseException
        One representative exception per distinct failure message.
    """

    def __init__(
        self,
        message: str,
        *,
        n_failed: int,
        n_completed: int,
        errors: list[BaseException] | None = None,
    ) -> None:
        super().__init__(message)
        self.n_failed = n_failed
        self.n_completed = n_completed
        self.errors = list(errors or [])


class ContextOverflowError(ConfigurationError, InputError):
    """A prompt does not fit in the model's context window.

    Raised before anything is evaluated. It is a
    :class:`ConfigurationError` (a larger context fixes it) and, as before it had
    its own type, an :class:`InputError` (a shorter text fixes it too).

    The message is a description of the problem followed by a fix; the default
    fix, written by the backend, names the backend's own setting (e.g.
    ``LlamaCppBackend(n_ctx=...)``). Code that offers the user other means to set
    it re-raises :meth:`with_fix`.

    Attributes
    ----------
    prompt : str
        The prompt that does not fit.
    n_tokens : int
        Its length in tokens.
    n_ctx : int
        The context size, in tokens.
    n_needed : int or None
        The tokens the context must hold for it (prompt, answer tokens and
        working room), when the backend knows.
    suggested_n_ctx : int or None
        A context size that holds it (the next power of 2 of ``n_needed``).
    n_ctx_train : int or None
        The context length the model was trained on, when known.
    row : int or None
        The row of the estimator's ``X`` (from 0) whose prompt this is, once the
        estimator has re-raised it.
    detail : str
        The message without the fix.
    fix : str
        How to fix it: the end of the message.

    Examples
    --------
    >>> e = ContextOverflowError("a prompt is too long.", "Use n_ctx=2048.",
    ...                          prompt="...", n_tokens=1500, n_ctx=1024)
    >>> str(e)
    'a prompt is too long. Use n_ctx=2048.'
    >>> str(e.with_fix("Shorten row 3."))
    'a prompt is too long. Shorten row 3.'
    """

    def __init__(
        self,
        detail: str,
        fix: str = "",
        *,
        prompt: str,
        n_tokens: int,
        n_ctx: int,
        n_needed: int | None = None,
        suggested_n_ctx: int | None = None,
        n_ctx_train: int | None = None,
        row: int | None = None,
    ) -> None:
        super().__init__(f"{detail} {fix}" if fix else detail)
        self.row = row
        self.detail = detail
        self.fix = fix
        self.prompt = prompt
        self.n_tokens = n_tokens
        self.n_ctx = n_ctx
        self.n_needed = n_needed
        self.suggested_n_ctx = suggested_n_ctx
        self.n_ctx_train = n_ctx_train

    def _fields(self) -> dict:
        names = (
            "prompt",
            "n_tokens",
            "n_ctx",
            "n_needed",
            "suggested_n_ctx",
            "n_ctx_train",
            "row",
        )
        return {name: getattr(self, name) for name in names}

    def with_fix(self, fix: str, **fields) -> ContextOverflowError:
        """A new error of the same type and attributes (``fields`` replaced) whose
        message ends with ``fix`` instead of this one's fix."""
        return type(self)(self.detail, fix, **{**self._fields(), **fields})

    @classmethod
    def _rebuild(cls, detail: str, fix: str, fields: dict) -> ContextOverflowError:
        return cls(detail, fix, **fields)

    def __reduce__(self):
        # Keyword-only arguments: pickle (joblib workers) rebuilds through _rebuild.
        return (type(self)._rebuild, (self.detail, self.fix, self._fields()))


__all__ += ["ContextOverflowError"]


class RefusalError(BackendError):
    """A decision model refused to answer rows (``on_refusal="raise"``); ``rows``
    holds their indices."""

    def __init__(self, message: str, *, rows: list[int]) -> None:
        super().__init__(message)
        self.rows = list(rows)

    def __reduce__(self):  # keyword-only ``rows``: pickle (joblib workers) needs this
        return (_refusal_error, (str(self), self.rows))


def _refusal_error(message: str, rows: list[int]) -> RefusalError:
    return RefusalError(message, rows=rows)


__all__ += ["RefusalError"]
