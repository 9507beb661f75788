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
