"""Building a backend from the estimator's parameters: :func:`make_backend`."""

from __future__ import annotations

import os

from .._secrets import mask_url
from ..exceptions import ConfigurationError, RefitRequiredError
from .base import Backend

__all__ = ["ANSWER_SETTINGS", "BACKEND_DEFAULTS", "check_unchanged", "make_backend"]

#: The defaults of the settings that :func:`make_backend` passes to the backend it
#: builds (the estimator's defaults). A :class:`Backend` instance is used as is, so
#: any other value next to one would be ignored: it is rejected instead.
BACKEND_DEFAULTS = {
    "api_key": None,
    "endpoint": "auto",
    "timeout": 60.0,
    "max_retries": 5,
    "max_concurrency": 8,
    "backend_options": None,
}

#: The settings that change the answers (the others only change how they are
#: fetched): a fitted estimator must be fitted again when one of them changes.
ANSWER_SETTINGS = ("backend", "model", "base_url", "endpoint", "backend_options", "descriptions")

#: The decision-model backends (``backend=`` names) and an example model of each.
DECISION_BACKENDS = {"decisions": "gpt-6-luna", "systemone": "jev-latest"}


def make_backend(
    *,
    backend="auto",
    model=None,
    base_url=None,
    api_key=None,
    endpoint="auto",
    timeout=60.0,
    max_retries=5,
    max_concurrency=8,
    backend_options=None,
) -> Backend:
    """The backend settings object for these settings (cheap: nothing is loaded or
    connected).

    ``backend="auto"`` picks the in-process llama.cpp backend when ``model`` is
    ``None`` (the embedded model) or a path ending in ``.gguf`` and ``base_url`` is
    not set, else the OpenAI client. A :class:`Backend` instance is returned as is;
    settings it would ignore raise :class:`~skllmprob.exceptions.ConfigurationError`.

    Parameters
    ----------
    backend : {"auto", "llamacpp", "openai", "deterministic", "decisions", "systemone"} \
or Backend
    model, base_url, api_key, endpoint, timeout, max_retries, max_concurrency, \
backend_options
        As the parameters of :class:`~skllmprob.LogprobClassifier`.

    Returns
    -------
    Backend

    Examples
    --------
    >>> make_backend(backend="deterministic", model="m")
    DeterministicBackend(... name='m')
    >>> make_backend(model="gpt-4o-mini").identity()["model"]
    'gpt-4o-mini'
    >>> from skllmprob.backends import DeterministicBackend
    >>> make_backend(backend=DeterministicBackend(), timeout=5)
    Traceback (most recent call last):
    ...
    skllmprob.exceptions.ConfigurationError: backend= is a Backend instance, so timeout=5 ...
    """
    if isinstance(backend, Backend):
        _check_instance_settings(
            backend,
            model=model,
            base_url=base_url,
            api_key=api_key,
            endpoint=endpoint,
            timeout=timeout,
            max_retries=max_retries,
            max_concurrency=max_concurrency,
            backend_options=backend_options,
        )
        return backend
    options = dict(backend_options or {})
    model = os.fspath(model) if model is not None else None
    kind = backend
    if kind == "auto":
        local = model is None and base_url is None
        local = local or (model is not None and model.lower().endswith(".gguf"))
        kind = "llamacpp" if local else "openai"
    if kind in DECISION_BACKENDS:
        settings = {"base_url": base_url, "api_key": api_key, "timeout": float(timeout)}
        settings.update(max_retries=int(max_retries), max_concurrency=int(max_concurrency))
        return _decision_backend(kind, model, endpoint, {**settings, **options})
    if kind == "deterministic":
        from .deterministic import DeterministicBackend

        return DeterministicBackend(name=model or "deterministic", **options)
    if kind == "llamacpp":
        if base_url is not None:
            raise ConfigurationError(
                "base_url is set, but the model is a local llama.cpp model; drop "
                "base_url, or give a server model name with backend='openai'."
            )
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend(model_path=model, chat=endpoint == "chat", **options)
    if model is None:
        raise ConfigurationError("backend='openai' needs a model name, e.g. model='gpt-4o-mini'.")
    from .openai import OpenAIBackend

    return OpenAIBackend(
        model=model,
        base_url=base_url,
        api_key=api_key,
        endpoint=endpoint,
        timeout=float(timeout),
        max_retries=int(max_retries),
        max_concurrency=int(max_concurrency),
        **options,
    )


def _decision_backend(kind: str, model, endpoint: str, settings: dict) -> Backend:
    """A :mod:`~skllmprob.backends.decisions` backend (``settings`` include
    ``backend_options``: ``question``, ``instructions``, ``path``, ...)."""
    from .decisions import DecisionsBackend, SystemOneBackend

    if model is None:
        raise ConfigurationError(
            f"backend={kind!r} needs a model name, e.g. model={DECISION_BACKENDS[kind]!r}."
        )
    if endpoint != "auto":
        raise ConfigurationError(
            f"endpoint={endpoint!r} is a setting of backend='openai'; backend={kind!r} "
            "has one endpoint (for a gateway's System One path, give "
            "backend='systemone', backend_options={'path': ...})."
        )
    cls = DecisionsBackend if kind == "decisions" else SystemOneBackend
    try:
        return cls(model, **settings)
    except TypeError as e:
        raise ConfigurationError(f"backend_options for backend={kind!r}: {e}") from e


def _check_instance_settings(backend: Backend, *, model, base_url, **settings) -> None:
    if model is not None or base_url is not None:
        raise ConfigurationError(
            "backend= is a Backend instance, so model= and base_url= are not "
            "used; set them on the backend instead."
        )
    ignored = [
        name for name, value in settings.items() if not _is_default(value, BACKEND_DEFAULTS[name])
    ]
    if ignored:
        shown = ", ".join(
            "api_key=..." if n == "api_key" else f"{n}={settings[n]!r}" for n in ignored
        )
        raise ConfigurationError(
            f"backend= is a Backend instance, so {shown} would be ignored; set "
            f"{'it' if len(ignored) == 1 else 'them'} on the backend instead "
            f"({type(backend).__name__}(...)), or pass backend= by name."
        )


def _is_default(value, default) -> bool:
    if default is None:
        # A key dropped by pickling counts as no key; an empty options dict as none.
        reveal = getattr(value, "reveal", None)
        if reveal is not None:
            return reveal() is None
        return value is None or value == {}
    return type(value) is not bool and value == default


def check_unchanged(fitted: dict, current: dict) -> None:
    """Raise :class:`~skllmprob.exceptions.RefitRequiredError` when a setting of
    :data:`ANSWER_SETTINGS` differs between ``fitted`` and ``current``.

    >>> check_unchanged({"model": "a"}, {"model": "a"})
    >>> check_unchanged({"model": "a"}, {"model": "b"})
    Traceback (most recent call last):
    ...
    skllmprob.exceptions.RefitRequiredError: the backend parameters ['model'] changed ...
    """
    changed = [n for n in fitted if _differs(n, fitted[n], current[n])]
    if not changed:
        return
    was = "; ".join(
        f"{n}: {mask_url(repr(fitted[n]))} -> {mask_url(repr(current[n]))}" for n in changed
    )
    raise RefitRequiredError(
        f"the backend parameters {changed} changed since fit ({was}), so the fitted "
        "answers and calibration belong to another backend. Call fit again to use the "
        "new settings (the cache keeps the answers, so a refit only requests prompts "
        "it has not seen)."
    )


def _differs(name: str, fitted, now) -> bool:
    if isinstance(fitted, Backend) and isinstance(now, Backend):
        # Another instance of the same model (e.g. with other retry or fault
        # settings) gives the same answers.
        return type(now) is not type(fitted) or now.identity() != fitted.identity()
    if name == "backend_options":
        return dict(now or {}) != dict(fitted or {})
    return type(now) is not type(fitted) or now != fitted
