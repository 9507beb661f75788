"""The System One API (``POST {base_url}/systemone``): TypeSafe's Jev, and the same
body at gateways (OpenRouter's ``/api/alpha/decisions``, Fireworks, LiteLLM),
Ollama and llama-server for decision-model GGUFs, and ``dev-double``.

Each prompt (the row: its text, or with ``input_format="json"`` the JSON object of
a 2-D row) is the request's ``state``; few-shot ``examples`` follow the
instructions (the API has no example messages); the classes are the
options of one question with the id ``"label"``: a ``choice`` whose criteria map
each class to its description (or ``null``), a ``noul`` for ``question="predicate"``
(binary: the probability that the second class is the answer) or a ``score`` over
ordered classes. Requests go through the ``openai`` SDK's generic request machinery
(its retries: 408, 409, 429, 5xx, 529 included; timeouts; connection errors).

The shape is chosen by the backend, never guessed from the path: gateways also
call the System One body ``/decisions``. Give ``path`` for them, e.g.
``base_url="https://openrouter.ai/api", path="/alpha/decisions"``; a full URL is
used as is.
"""

from __future__ import annotations

import json
from typing import Any

from ...exceptions import ConfigurationError
from ..base import Completion
from ..openai.keys import NO_KEY, clean_key
from ..openai.runner import post_raw
from .common import DecisionBackendBase, env_key
from .parsing import parse_systemone
from .questions import systemone_questions, with_examples

TYPESAFE_BASE_URL = "https://api.typesafe.ai/v1"


class SystemOneBackend(DecisionBackendBase):
    """A System One server.

    Parameters
    ----------
    model : str
        E.g. ``"jev-latest"``.
    base_url : str, optional
        The API root (ending in ``/v1``); ``None``: TypeSafe's public API.
    path : str, default="/systemone"
        Appended to ``base_url`` (a full ``http(s)://`` URL is used as is).
    api_key : str or SecretKey, optional
        ``None`` reads ``$TYPESAFE_API_KEY``; TypeSafe needs one, other servers
        without one get a placeholder. Never in the repr, the cache or a pickle.
    question, instructions, descriptions, examples, input_format, on_refusal, timeout,
    max_retries, max_concurrency, requests_per_minute, tokens_per_minute, default_headers
        As for :class:`~skllmprob.backends.decisions.DecisionsBackend`.
    """

    kind_name = "systemone"
    default_base_url = TYPESAFE_BASE_URL
    key_env = "TYPESAFE_API_KEY"
    max_options = 255
    default_path = "/systemone"

    def __init__(self, model: str, *, path: str = "/systemone", **settings: Any) -> None:
        super().__init__(model, **settings)
        if not isinstance(path, str) or not path.strip():
            raise ConfigurationError("path must be a URL path such as '/systemone'.")
        self.path = path

    def _path(self) -> str:
        return self.path

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "path": self.path}

    def is_typesafe(self) -> bool:
        return self._host().endswith("typesafe.ai")

    def _key(self) -> tuple[str, str | None]:
        from ..._secrets import reveal

        given = reveal(self._api_key)
        if given:
            key = clean_key(str(given), "api_key=")
        else:
            value = env_key("TYPESAFE_API_KEY")
            key = clean_key(value, "$TYPESAFE_API_KEY") if value else ""
        if key:
            return key, key
        if self.is_typesafe():
            dropped = getattr(self._api_key, "dropped", False)
            raise ConfigurationError(
                f"no API key for {self.shown_url()}: pass api_key=... or set "
                "$TYPESAFE_API_KEY"
                + (" (an API key is never pickled: set the variable)." if dropped else ".")
            )
        return NO_KEY, None

    async def _request(self, client: Any, prompt: str, answers: tuple) -> Completion:
        from ..openai.backend import _response_type

        asked = answers if self.question == "predicate" else self.asked_order(answers)
        instructions = with_examples(self.instructions, self.examples)
        body = {
            "model": self.model,
            "state": json.loads(prompt) if self.input_format == "json" else prompt,
            "questions": systemone_questions(
                asked, self.descriptions, instructions, self.question
            ),
        }
        response = await post_raw(client, self.path, body, _response_type())
        return parse_systemone(response.content, answers, self.question, asked)

    def _missing_endpoint_fix(self) -> str:
        return (
            f"backend='systemone' posts to base_url + path ({self.path!r}): check that "
            "base_url is the server's API root (ending in '/v1') and, for a gateway that "
            "names the endpoint differently (e.g. OpenRouter's '/api/alpha/decisions'), "
            "set backend_options={'path': ...}; for OpenAI's own /v1/decisions use "
            "backend='decisions'."
        )
