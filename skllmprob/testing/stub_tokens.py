"""vLLM's tokenizer routes on :class:`~skllmprob.testing.openai_stub.OpenAIStub`
(``OpenAIStub(vllm=True)``), in the shapes of vLLM's OpenAI-compatible server:

- ``POST /tokenize`` with ``{"model", "prompt", "add_special_tokens"}`` answers
  ``{"count", "max_model_len", "tokens": [id, ...], "token_strs": null}``;
- ``POST /detokenize`` with ``{"model", "tokens": [id, ...]}`` answers
  ``{"prompt": text}``.

The stub's tokenizer splits text into words, each with its leading space, runs of
at most three digits, and single punctuation characters; every distinct piece gets
the next free id (so ``"12"`` is one token and ``"1234"`` two, as in tokenizers with
three-digit number tokens).
"""

from __future__ import annotations

import re
import threading

__all__ = ["StubTokenizer"]

_PIECE = re.compile(r" ?[^\W\d_]+| ?\d{1,3}| ?[^\w\s]| ?_|\s")
_MAX_MODEL_LEN = 8192


class StubTokenizer:
    """A deterministic word-piece tokenizer with ids assigned on first sight.

    >>> t = StubTokenizer()
    >>> [t.piece(i) for i in t.encode("card arrival 12 1234")]
    ['card', ' arrival', ' 12', ' 123', '4']
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._pieces: list[str] = []
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``."""
        out = []
        with self._lock:
            for piece in _PIECE.findall(text):
                if piece not in self._ids:
                    self._ids[piece] = len(self._pieces) + 10  # below 10: special ids
                    self._pieces.append(piece)
                out.append(self._ids[piece])
        return out

    def piece(self, token_id: int) -> str:
        """The text of one id (``""`` for an unknown id)."""
        k = int(token_id) - 10
        return self._pieces[k] if 0 <= k < len(self._pieces) else ""

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        """``(status, payload)`` of a ``/tokenize`` or ``/detokenize`` request."""
        if path == "/tokenize":
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                return 400, _error("prompt must be a string")
            ids = self.encode(prompt)
            return 200, {
                "count": len(ids),
                "max_model_len": _MAX_MODEL_LEN,
                "tokens": ids,
                "token_strs": None,
            }
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            return 400, _error("tokens must be a list of integers")
        return 200, {"prompt": "".join(self.piece(t) for t in tokens)}


def _error(message: str) -> dict:
    return {"object": "error", "message": message, "type": "BadRequestError", "code": 400}
