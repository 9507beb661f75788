"""Test utilities: an offline OpenAI-compatible server for testing pipelines.

- :class:`~skllmprob.testing.openai_stub.OpenAIStub`: a small HTTP server on
  127.0.0.1 that answers ``/v1/chat/completions`` and ``/v1/completions`` with
  deterministic log-probabilities, scripted faults and request counters.
- :class:`~skllmprob.testing.counting.FileCountingBackend`: the deterministic backend
  counting its requests in a file, so that every process's requests are counted.
"""

__all__ = ["Fault", "OpenAIStub"]


def __getattr__(name: str):
    # Imported lazily, so that ``python -m skllmprob.testing.openai_stub`` runs cleanly.
    if name in __all__:
        from . import openai_stub

        return getattr(openai_stub, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
