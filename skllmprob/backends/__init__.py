"""Backends: where log-probabilities come from.

- :class:`DeterministicBackend`: offline, stable, for tests and examples.
- ``LlamaCppBackend`` (:mod:`skllmprob.backends.llamacpp`): llama.cpp in-process,
  the embedded Gemma 3 270M model by default (extra ``local``).
- ``OpenAIBackend`` (:mod:`skllmprob.backends.openai`): OpenAI and any
  OpenAI-compatible server.

:func:`make_backend` builds one from the estimator's parameters (the ``"auto"``
rules).
"""

from .base import Backend, Completion, Query, resource_loads, shared_resource
from .deterministic import DeterministicBackend
from .factory import make_backend

__all__ = [
    "Backend",
    "Completion",
    "DeterministicBackend",
    "Query",
    "make_backend",
    "resource_loads",
    "shared_resource",
]
