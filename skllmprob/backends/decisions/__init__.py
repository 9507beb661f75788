"""Decision-model backends: endpoints that return a probability for every option of
a typed question about a text, with no text generated.

- :class:`DecisionsBackend`: OpenAI's ``POST /v1/decisions``
  (``client.decisions.create``; model ``gpt-6-luna``).
- :class:`SystemOneBackend`: the System One API, ``POST {base_url}/systemone``
  (TypeSafe's Jev, gateways, Ollama, llama-server, dev-double).

Both are exact backends (:attr:`~skllmprob.backends.base.Backend.exact`): the
returned distribution is the class log-masses, renormalized, in the query's
answer order. Both run through the OpenAI backend's request runner (bounded
concurrency, pacing, the SDK's retries) and keep keys out of the repr, the cache,
pickles, logs and messages.

Examples
--------
>>> from skllmprob.backends.decisions import DecisionsBackend, SystemOneBackend
>>> b = SystemOneBackend("jev-latest", api_key="ts-secret",
...                      descriptions={"spam": "unsolicited advertising"})
>>> b.identity()  # doctest: +NORMALIZE_WHITESPACE
{'backend': 'systemone', 'base_url': 'https://api.typesafe.ai/v1',
 'model': 'jev-latest', 'path': '/systemone'}
>>> "ts-secret" in repr(b)
False
"""

from .openai_decisions import DecisionsBackend
from .parsing import REFUSAL, is_refusal
from .systemone import TYPESAFE_BASE_URL, SystemOneBackend

__all__ = ["REFUSAL", "TYPESAFE_BASE_URL", "DecisionsBackend", "SystemOneBackend", "is_refusal"]
