"""OpenAI's Decisions API (``POST /v1/decisions``) through the ``openai`` SDK's
``client.decisions.create``.

Each prompt (the rendered row) is the request's ``input``; the classes are the
options of one ``choice`` question (``question="predicate"``: a binary task asked as
the probability that the second class is the answer; ``"score"``: ordered classes,
lowest first), with ``descriptions`` as the options' descriptions and
``instructions`` as the question's instructions. The question is the same for
every row, and ``prompt_cache_key`` (a hash of it) lets the server reuse its
prefix.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..base import Completion
from ..openai.keys import key_for_requests
from ..openai.settings import OPENAI_BASE_URL
from .common import DecisionBackendBase
from .parsing import parse_decision
from .questions import openai_question


class DecisionsBackend(DecisionBackendBase):
    """OpenAI's ``/v1/decisions`` endpoint (or a server with the same contract).

    Parameters
    ----------
    model : str
        A decision model, e.g. ``"gpt-6-luna"`` (chat models are refused by the
        endpoint, with an error that says to use ``backend='openai'``).
    base_url : str, optional
        The API root (ending in ``/v1``); ``None``: OpenAI.
    api_key : str or SecretKey, optional
        ``None`` reads ``$OPENAI_API_KEY``; never in the repr, the cache or a pickle.
    question : {"choice", "predicate", "score"}, default="choice"
        The question the classes become (see the module documentation). ``"choice"``
        is the default also for binary tasks: both classes are named options with
        their descriptions, so neither is privileged.
    instructions : str, optional
        The question's instructions (the estimator passes its prompt's instruction
        part); ``None``: a generic instruction.
    descriptions : dict, optional
        Class answer -> one-line description, sent as option descriptions.
    timeout, max_retries, max_concurrency, requests_per_minute, tokens_per_minute
        As for :class:`~skllmprob.backends.openai.OpenAIBackend` (the SDK retries 429,
        5xx, timeouts and connection errors; at most ``max_concurrency`` in flight).
    default_headers : dict, optional
        More HTTP headers (not part of the cache key).
    """

    kind_name = "decisions"
    default_base_url = OPENAI_BASE_URL
    key_env = "OPENAI_API_KEY"
    max_options = 255
    default_path = "/decisions"

    def is_openai(self) -> bool:
        return self._host() == "api.openai.com"

    def _key(self) -> tuple[str, str | None]:
        return key_for_requests(self)

    def _where_options(self) -> str:
        return "OpenAI's decisions endpoint"

    def _question(self, answers: tuple) -> dict[str, Any]:
        return openai_question(answers, self.descriptions, self.instructions, self.question)

    async def _request(self, client: Any, prompt: str, answers: tuple) -> Completion:
        question = self._question(answers)
        shared = json.dumps([self.model, question], sort_keys=True).encode()
        raw = await client.decisions.with_raw_response.create(
            model=self.model,
            input=prompt,
            questions=[question],
            prompt_cache_key="skllmprob-" + hashlib.sha256(shared).hexdigest()[:24],
        )
        return parse_decision(raw.content, answers, self.question)

    def _missing_endpoint_fix(self) -> str:
        return (
            "backend='decisions' needs a server with OpenAI's /v1/decisions endpoint "
            "(base_url is its API root, ending in '/v1'); for a System One server use "
            "backend='systemone', and for a chat model backend='openai'."
        )
