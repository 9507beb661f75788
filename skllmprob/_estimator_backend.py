"""The estimator's backend: built from its parameters, fixed by ``fit``, and the
API key kept out of pickles.

``fit`` records the parameters that change the answers
(:data:`~skllmprob.backends.factory.ANSWER_SETTINGS`); a prediction after one of
them changed raises :class:`~skllmprob.exceptions.RefitRequiredError`. The runtime
settings (timeout, retries, concurrency, key) are read at each call.
"""

from __future__ import annotations

import copy

from ._secrets import SecretKey, reveal
from .backends.base import Backend
from .backends.factory import ANSWER_SETTINGS, check_unchanged, make_backend

__all__ = [
    "BACKEND_PARAMS",
    "answer_settings",
    "backend_of",
    "fitted_backend",
    "split_key",
    "state_without_key",
]

#: The estimator parameters :func:`~skllmprob.backends.make_backend` takes.
BACKEND_PARAMS = (
    "backend",
    "model",
    "base_url",
    "api_key",
    "endpoint",
    "timeout",
    "max_retries",
    "max_concurrency",
    "backend_options",
)


def backend_of(est) -> Backend:
    """The backend settings object for ``est``'s current parameters (cheap)."""
    settings = {name: getattr(est, name) for name in BACKEND_PARAMS}
    settings["base_url"] = reveal(settings["base_url"])  # a password arrives wrapped
    if est.api_key is None and getattr(est, "_api_key_dropped", False):
        settings["api_key"] = SecretKey(None, dropped=True)  # unpickled: key dropped
    return make_backend(**settings)


def answer_settings(est) -> dict:
    """A copy of the parameters that change the answers, as ``fit`` saw them."""
    return {n: copy.deepcopy(getattr(est, n)) for n in ANSWER_SETTINGS}


def fitted_backend(est) -> Backend:
    """The backend for predictions, with the current runtime settings; an error if
    a parameter that changes the answers was changed since ``fit``."""
    fitted = getattr(est, "_answer_settings_", None)
    if fitted is not None:
        check_unchanged(fitted, {n: getattr(est, n) for n in fitted})
    return backend_of(est)


def state_without_key(state: dict) -> dict:
    """The pickled state: the key never enters a pickle, only the fact that there
    was one, so that a request without a key can say why (see :func:`backend_of`)."""
    state = dict(state)
    if state.pop("api_key", None) is not None:
        state["_api_key_dropped"] = True
    return state


def split_key(state: dict) -> tuple[dict, object]:
    """``(state, api_key)`` of an unpickled state; the key is set through the
    estimator's secret descriptor after the rest."""
    state = dict(state)
    return state, state.pop("api_key", None)
