"""The backend interface.

A backend is a cheap, picklable *settings* object: it holds a model name, a URL, a
path, never a live HTTP client or a loaded model. Its heavy resource is built on
first use by :func:`shared_resource`, shared by every backend in the process that has
the same settings (so the clones that ``GridSearchCV`` makes share one loaded
model), and never pickled.

Given rendered prompts, a backend returns for each one a :class:`Completion`: the top
next-token log-probabilities and, for backends that see the whole vocabulary
(:attr:`Backend.exact`), the exact log-probability of each candidate answer.
"""

from __future__ import annotations

import abc
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Backend",
    "Completion",
    "OnResult",
    "Query",
    "resource_loads",
    "shared_resource",
]


@dataclass(frozen=True)
class Query:
    """What to ask the model for each prompt.

    Parameters
    ----------
    top_logprobs : int
        How many of the most likely next tokens to return.
    answers : tuple of str
        The answer of each class, in the classifier's class order. Only exact
        backends use them (to score whole answers); top-k backends ignore them, and
        they are then not part of the cache key.
    """

    top_logprobs: int = 20
    answers: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class Completion:
    """The model's answer to one prompt.

    Attributes
    ----------
    tokens : tuple of str
        Top next tokens, most likely first (may be fewer than requested). A
        completion read from a cache file holds a
        :class:`~skllmprob.vocabulary.TokenIds` instead: a read-only sequence of
        ``str`` equal to that tuple (and pickled as it).
    logprobs : ndarray of float64
        Their log-probabilities.
    answer_logprobs : ndarray of float64 or None
        Exact log-probability of each of the query's answers (case and leading-space
        variants summed), from exact backends; ``None`` otherwise.
    prompt_tokens, completion_tokens, cached_tokens : int
        Usage as reported by the backend (``cached_tokens``: prompt tokens the server
        served from its prefix cache).
    """

    tokens: tuple[str, ...]
    logprobs: np.ndarray
    answer_logprobs: np.ndarray | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Completion):
            return NotImplemented
        same_answers = (self.answer_logprobs is None) == (other.answer_logprobs is None) and (
            self.answer_logprobs is None
            or np.array_equal(self.answer_logprobs, other.answer_logprobs)
        )
        return (
            self.tokens == other.tokens
            and np.array_equal(self.logprobs, other.logprobs)
            and same_answers
            and (self.prompt_tokens, self.completion_tokens, self.cached_tokens)
            == (other.prompt_tokens, other.completion_tokens, other.cached_tokens)
        )

    __hash__ = None  # type: ignore[assignment]


#: Callback a backend calls once per finished prompt, with the prompt's index in the
#: list it was given. It may be called from another thread than the caller's.
OnResult = Callable[[int, Completion], None]


class Backend(abc.ABC):
    """Base class of backends.

    Subclasses store plain settings in ``__init__`` and implement :meth:`identity`,
    :meth:`request_settings` and :meth:`complete`.
    """

    #: Whether :meth:`complete` fills :attr:`Completion.answer_logprobs` exactly from
    #: the whole vocabulary.
    exact: bool = False

    #: The largest ``top_logprobs`` the backend accepts (``None``: no limit).
    max_top_logprobs: int | None = None

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """JSON-able description of the model that answers: what makes two backends
        give the same answers. Never contains a secret."""

    def request_settings(self, query: Query) -> dict[str, Any]:
        """JSON-able request settings that change the answer (part of the cache key).

        The default: the number of top log-probabilities, and the answers when the
        backend scores them exactly.
        """
        out: dict[str, Any] = {"top_logprobs": int(query.top_logprobs)}
        if self.exact:
            out["answers"] = list(query.answers)
        return out

    def check_query(self, query: Query) -> None:
        """Raise :class:`~skllmprob.exceptions.ConfigurationError` if the backend
        cannot serve ``query``."""
        from ..exceptions import ConfigurationError

        cap = self.max_top_logprobs
        if cap is not None and query.top_logprobs > cap:
            raise ConfigurationError(
                f"top_logprobs={query.top_logprobs} is more than this backend returns "
                f"(at most {cap}); set top_logprobs <= {cap}."
            )

    def first_tokens(self, answers: Sequence[str]) -> list[list[str]] | None:
        """The first token of each answer's case and leading-space variants, when the
        backend knows its tokenizer; ``None`` otherwise."""
        return None

    @abc.abstractmethod
    def complete(
        self,
        prompts: Sequence[str],
        query: Query,
        *,
        on_result: OnResult,
    ) -> None:
        """Score every prompt, calling ``on_result(i, completion)`` as each finishes.

        Implementations report every success through ``on_result`` before raising,
        so that a failure late in a batch loses nothing already answered. When some
        prompts fail after all retries they raise
        :class:`~skllmprob.exceptions.PartialResultsError`; errors that retrying
        cannot fix (a rejected request, a model without log-probabilities) may be
        raised at once.
        """

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._repr_items())
        return f"{type(self).__name__}({args})"

    def _repr_items(self):
        return [(k, v) for k, v in vars(self).items() if not k.startswith("_")]

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._repr_items() == other._repr_items()

    def __hash__(self) -> int:
        return hash((type(self), repr(self)))


# --------------------------------------------------------------------------------------
# Per-process shared resources

_RESOURCES: dict[Any, Any] = {}
_RESOURCE_LOCKS: dict[Any, threading.Lock] = {}
_RESOURCES_LOCK = threading.Lock()
_RESOURCES_PID = os.getpid()
_LOADS: dict[str, int] = {}


def _reset_after_fork() -> None:
    global _RESOURCES_PID, _RESOURCES_LOCK
    _RESOURCES.clear()
    _RESOURCE_LOCKS.clear()
    _LOADS.clear()
    _RESOURCES_LOCK = threading.Lock()
    _RESOURCES_PID = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def shared_resource(key: tuple, factory: Callable[[], Any]) -> Any:
    """Return the process-wide resource for ``key``, building it once with ``factory``.

    ``key[0]`` names the kind of resource (counted by :func:`resource_loads`). A
    child process made by ``fork`` starts with no resources: sockets, threads and
    loaded models do not survive a fork.

    >>> a = shared_resource(("doc-example", 1), lambda: object())
    >>> a is shared_resource(("doc-example", 1), lambda: object())
    True
    >>> resource_loads("doc-example")
    1
    """
    if os.getpid() != _RESOURCES_PID:  # pragma: no cover - fork without the hook
        _reset_after_fork()
    try:
        return _RESOURCES[key]
    except KeyError:
        pass
    with _RESOURCES_LOCK:
        lock = _RESOURCE_LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key not in _RESOURCES:
            _RESOURCES[key] = factory()
            _LOADS[key[0]] = _LOADS.get(key[0], 0) + 1
        return _RESOURCES[key]


def resource_loads(kind: str) -> int:
    """How many resources of ``kind`` this process has built so far."""
    return _LOADS.get(kind, 0)
