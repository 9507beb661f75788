"""OpenAI's Decisions API (``POST /v1/decisions``) through the ``openai`` SDK's
``client.decisions.create``.

Each prompt (the row: its text, or with ``input_format="json"`` the JSON object of a
2-D row, sent as an ``input_json`` part) is the request's ``input``; few-shot
``examples`` come first, as user messages answered by assistant messages; the
classes are the
options of one ``choice`` question (``question="predicate"``: a binary task asked as
the probability that the second class is the answer; ``"score"``: ordered classes,
lowest first), with ``descriptions`` as the options' descriptions and
``instructions`` as the question's instructions. The question is the same for
every row, as are the examples, and ``prompt_cache_key`` (a hash of them) lets the
server reuse that prefix.
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
    examples : sequence of (str, str), default=()
        Few-shot (input, answer) pairs (the estimator passes its ``examples``).
    input_format : {"text", "json"}, default="text"
        ``"json"``: each prompt is the JSON object of a row (the estimator's 2-D
        rows), sent as an ``input_json`` part (System One: a JSON ``state``).
    on_refusal : {"warn", "raise"}, default="warn"
        What the estimator does with refused rows: warn, naming them (coverage 0,
        the probabilities of a row without scores), or raise
        :class:`~skllmprob.exceptions.RefusalError`. Refusals are cached either way.
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
        asked = answers if self.question == "predicate" else self.asked_order(answers)
        return openai_question(asked, self.descriptions, self.instructions, self.question)

    def _content(self, text: str) -> Any:
        """A user message's content: the text, or an ``input_json`` part."""
        if self.input_format == "json":
            return [{"type": "input_json", "data": json.loads(text)}]
        return text

    def request_input(self, prompt: str) -> Any:
        """The request's ``input``: the row's text alone, or (with examples or JSON
        rows) messages: each example as a user message and its answer as the
        assistant's, then the row as the last user message.

        >>> b = DecisionsBackend("gpt-6-luna", examples=[("loved it", "positive")])
        >>> b.request_input("a bore")  # doctest: +NORMALIZE_WHITESPACE
        [{'role': 'user', 'content': 'loved it'},
         {'role': 'assistant', 'content': 'positive'},
         {'role': 'user', 'content': 'a bore'}]
        """
        if not self.examples and self.input_format == "text":
            return prompt
        messages = []
        for text, answer in self.examples:
            messages.append({"role": "user", "content": self._content(text)})
            messages.append({"role": "assistant", "content": answer})
        messages.append({"role": "user", "content": self._content(prompt)})
        return messages

    def prompt_cache_key(self, question: dict) -> str:
        """A hash of what every request shares (model, question, examples)."""
        shared = [self.model, question, [list(e) for e in self.examples], self.input_format]
        digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()
        return "skllmprob-" + digest[:24]

    async def _request(self, client: Any, prompt: str, answers: tuple) -> Completion:
        question = self._question(answers)
        raw = await client.decisions.with_raw_response.create(
            model=self.model,
            input=self.request_input(prompt),
            questions=[question],
            prompt_cache_key=self.prompt_cache_key(question),
        )
        return parse_decision(raw.content, answers, self.question)

    def _missing_endpoint_fix(self) -> str:
        return (
            "backend='decisions' needs a server with OpenAI's /v1/decisions endpoint "
            "(base_url is its API root, ending in '/v1'); for a System One server use "
            "backend='systemone', and for a chat model backend='openai'."
        )
