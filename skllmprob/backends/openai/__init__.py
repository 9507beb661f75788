"""OpenAI and OpenAI-compatible servers (vLLM, llama.cpp server, Ollama, LM Studio, Azure
OpenAI, hosted providers) through the ``openai`` client.

One request per prompt asks for a single answer token with its top
log-probabilities, on one of two endpoints:

- ``"chat"``: ``/chat/completions`` with ``logprobs=True, top_logprobs=k``; the prompt
  is the user message (after an optional system message). The first content token's
  top log-probabilities are read.
- ``"completions"``: the legacy ``/completions`` with ``logprobs=k``: plain text
  completion, for base models and servers that only score there.

``endpoint="auto"`` uses ``"completions"`` for OpenAI's completion-only models
(``gpt-3.5-turbo-instruct``, ``davinci-002``, ``babbage-002``) and ``"chat"`` for
every other model. A base model behind a chat endpoint often answers nothing at
all (it ends its turn at once); when every answer of a call is empty, the backend
raises :class:`~skllmprob.exceptions.LogprobsUnsupportedError` and says to use
``endpoint="completions"``.

On vLLM, ``label_scores="prompt_logprobs"`` scores whole labels exactly instead,
from ``prompt_logprobs`` over the prompt followed by each form of each label (see
:mod:`~skllmprob.backends.openai.sequences`); the backend is then exact.

Requests run on a background event loop (one thread per process, shared by all
backends), with an :class:`openai.AsyncOpenAI` client per server and key, at most
``max_concurrency`` in flight per settings. The client does the retrying
(``max_retries``, ``timeout``, ``Retry-After`` honoured); the backend adds no second
retry loop. Each finished request is reported at once (so it is cached at once);
requests that still fail after their retries are reported together in a
:class:`~skllmprob.exceptions.PartialResultsError` once the others have finished.
400, 401, 403, 404 and an exhausted quota stop the call at once with a
:class:`~skllmprob.exceptions.RequestRejectedError`.

The API key is read from ``api_key`` or, lazily, from ``$OPENAI_API_KEY``
(``$AZURE_OPENAI_API_KEY`` first for Azure). A server other than OpenAI or Azure that
gets no key is sent the placeholder ``"sk-no-key-required"``: local servers ignore
it. Whitespace around a key is stripped; a key with another character that cannot
go in an HTTP header is refused before any request. The key never appears in the
backend's repr, its identity (the cache key), a pickle, a log line or an error
message.

Examples
--------
>>> from skllmprob.backends.openai import OpenAIBackend
>>> b = OpenAIBackend("gpt-4o-mini", api_key="sk-secret")
>>> b
OpenAIBackend(model='gpt-4o-mini', base_url=None, endpoint='auto', ...)
>>> b.identity()  # what enters the cache key
{'backend': 'openai', 'base_url': 'https://api.openai.com/v1', 'model': 'gpt-4o-mini',
 'endpoint': 'chat'}
>>> b.max_top_logprobs
20
>>> "sk-secret" in repr(b) + str(b.identity())
False
"""

from .backend import OpenAIBackend
from .keys import NO_KEY as NO_KEY
from .parsing import _loads_keeping_duplicates as _loads_keeping_duplicates
from .parsing import parse_chat_response, parse_completions_response
from .settings import OPENAI_BASE_URL as OPENAI_BASE_URL

__all__ = ["OpenAIBackend", "parse_chat_response", "parse_completions_response"]
