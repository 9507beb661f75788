"""Backends: where log-probabilities come from.

- :class:`DeterministicBackend`: offline, stable, for tests and examples.
- ``LlamaCppBackend`` (:mod:`skllmprob.backends.llamacpp`): llama.cpp in-process,
  the embedded Gemma 3 270M model by default (extra ``local``).
- ``OpenAIBackend`` (:mod:`skllmprob.backends.openai`): OpenAI and any
  OpenAI-compatible server.
"""

from .base import Backend, Completion, Query, resource_loads, shared_resource
from .deterministic import DeterministicBackend

__all__ = [
    "Backend",
    "Completion",
    "DeterministicBackend",
    "Query",
    "resource_loads",
    "shared_resource",
]
