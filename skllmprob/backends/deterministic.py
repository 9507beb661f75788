"""A deterministic offline backend for tests, doctests and examples.

It needs no network and no model: the "model" is a fixed function of the prompt,
stable across processes and platforms. Words of the prompt compete with a few filler
tokens (newlines, "the", "I"); sentiment cue words in the last block of the prompt
(the text under classification) push towards ``positive`` / ``negative``; a label
written in that block pushes towards itself. That is enough for readable examples
and for the estimator checks of scikit-learn, and it counts every request it serves.

Examples
--------
>>> from skllmprob.backends import DeterministicBackend, Query
>>> b = DeterministicBackend()
>>> out = {}
>>> b.complete(["Labels: positive, negative.\\n\\nText: what a great film\\nAnswer:"],
...            Query(top_logprobs=5), on_result=out.__setitem__)
>>> out[0].tokens[0]
' positive'
"""

from __future__ import annotations

import hashlib
import re
import struct
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..exceptions import BackendError, ConfigurationError
from .base import Backend, Completion, OnResult, Query

__all__ = ["DeterministicBackend"]

_WORD = re.compile(r"[^\W_]+(?:[/_-][^\W_]+)*")
_CODE = re.compile(r"\b([A-Z0-9])\s*[(:.)=]\s*\(?([^\W_][\w/ -]*?)\)?(?=,|\n|$)")
_CUES = {
    "positive": frozenset(
        {
            "good",
            "great",
            "awesome",
            "love",
            "loved",
            "wonderful",
            "excellent",
            "best",
            "fun",
            "moving",
            "brilliant",
            "gem",
            "delight",
            "delightful",
            "beautiful",
            "enjoyable",
            "masterpiece",
            "superb",
        }
    ),
    "negative": frozenset(
        {
            "bad",
            "sucks",
            "awful",
            "hate",
            "hated",
            "boring",
            "dull",
            "worst",
            "terrible",
            "mess",
            "poor",
            "waste",
            "tedious",
            "stupid",
            "ugly",
            "disappointing",
        }
    ),
}
_FILLERS = ("\n", " ", " the", " I", " a", "\n\n", " ambiguous")

_COUNTS: Counter = Counter()
_COUNTS_LOCK = threading.Lock()


def _noise(seed: int, prompt: str, token: str) -> float:
    h = hashlib.blake2b(f"{seed}\x00{token}\x00{prompt}".encode(), digest_size=8).digest()
    return struct.unpack("<Q", h)[0] / 2.0**64 - 0.5


class DeterministicBackend(Backend):
    """Stable, offline, counting backend.

    Parameters
    ----------
    seed : int, default=0
        Changes the small pseudo-random part of every logit.
    bias : mapping of str to float, optional
        Added to the logit of the given (lower-case) words: a known, injected label
        bias for calibration tests.
    exact : bool, default=False
        Also score whole answers exactly, as the local backend does.
    max_top_logprobs : int or None, default=20
        The largest ``top_logprobs`` accepted.
    latency : float, default=0.0
        Seconds to sleep per request.
    fail_on : str, optional
        Requests whose prompt contains this string fail with
        :class:`~skllmprob.exceptions.BackendError`.
    name : str, default="deterministic"
        The model name, part of the identity (and so of the cache key).
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        bias: Mapping[str, float] | None = None,
        exact: bool = False,
        max_top_logprobs: int | None = 20,
        latency: float = 0.0,
        fail_on: str | None = None,
        name: str = "deterministic",
    ) -> None:
        self.seed = seed
        self.bias = dict(bias) if bias else {}
        self.exact = exact
        self.max_top_logprobs = max_top_logprobs
        self.latency = latency
        self.fail_on = fail_on
        self.name = name

    def identity(self) -> dict[str, Any]:
        return {
            "backend": "deterministic",
            "model": self.name,
            "seed": self.seed,
            "bias": sorted(self.bias.items()),
            "exact": self.exact,
        }

    # -- the "model" -------------------------------------------------------------

    def _distribution(self, prompt: str) -> tuple[list[str], np.ndarray]:
        last = prompt.rstrip().rsplit("\n\n", 1)[-1].lower()
        last_words = set(_WORD.findall(last))
        words = dict.fromkeys(w.lower() for w in _WORD.findall(prompt))
        # Option codes listed as "A (positive)" answer for their label.
        codes: dict[str, str] = {}
        for code, name in _CODE.findall(prompt):
            codes[code.lower()] = name.strip().lower()
            words.setdefault(code.lower(), None)
        toks: list[str] = []
        logits: list[float] = []
        for w in words:
            target = codes.get(w, w)
            score = -4.0 + 0.5 * _noise(self.seed, prompt, w)
            score += 4.5 * len(last_words & _CUES.get(target, frozenset()))
            score += 2.0 * (target in last_words and target not in ("text", "answer"))
            score += float(self.bias.get(w, 0.0))
            toks.append(" " + w)
            logits.append(score)
            toks.append(w.capitalize() if w[:1].isalpha() else w + " ")
            logits.append(score - 1.5)
        for f in _FILLERS:
            toks.append(f)
            logits.append(0.5 * _noise(self.seed, prompt, f))
        # A real vocabulary has each token string once: merge repeats (a prompt word
        # that is also a filler) into one token holding their summed probability.
        merged: dict[str, float] = {}
        for t, score in zip(toks, logits, strict=True):
            merged[t] = float(np.logaddexp(merged[t], score)) if t in merged else score
        toks = list(merged)
        z = np.asarray(list(merged.values()))
        z = z - np.logaddexp.reduce(z)
        return toks, z

    def _answer_logprob(self, toks: list[str], z: np.ndarray, answer: str) -> float:
        words = _WORD.findall(answer.lower()) or [answer.strip().lower()]
        first = words[0]
        hits = [lp for t, lp in zip(toks, z, strict=True) if t.strip().lower() == first]
        base = float(np.logaddexp.reduce(hits)) if hits else float(z.min()) - 5.0
        # Each further word of a multi-word answer is a fixed, likely continuation.
        return base + (len(words) - 1) * np.log(0.9)

    # -- Backend API -------------------------------------------------------------

    def complete(self, prompts: Sequence[str], query: Query, *, on_result: OnResult) -> None:
        self.check_query(query)
        for i, prompt in enumerate(prompts):
            if self.fail_on is not None and self.fail_on in prompt:
                raise BackendError(f"deterministic backend told to fail on {self.fail_on!r}")
            if self.latency:
                time.sleep(self.latency)
            with _COUNTS_LOCK:
                _COUNTS[self.name] += 1
            toks, z = self._distribution(prompt)
            order = np.argsort(-z, kind="stable")[: query.top_logprobs]
            answers = None
            if self.exact:
                answers = np.array([self._answer_logprob(toks, z, a) for a in query.answers])
            on_result(
                i,
                Completion(
                    tokens=tuple(toks[j] for j in order),
                    logprobs=z[order].astype(float),
                    answer_logprobs=answers,
                    prompt_tokens=len(prompt.split()),
                    completion_tokens=1,
                ),
            )

    def check_query(self, query: Query) -> None:
        super().check_query(query)
        if query.top_logprobs < 1:
            raise ConfigurationError("top_logprobs must be at least 1.")

    @classmethod
    def request_count(cls, name: str = "deterministic") -> int:
        """How many prompts backends called ``name`` have scored in this process."""
        return _COUNTS[name]
