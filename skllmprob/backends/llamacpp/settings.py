"""The settings object of the embedded backend: cheap, picklable and comparable; the
model it names is loaded on first use, once per process (:mod:`.model`)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

from ...exceptions import ConfigurationError
from ..base import Backend, OnResult, Query, shared_resource
from .evaluation import complete
from .files import check_gguf_file, file_fingerprint, import_gemma, import_llama_cpp
from .model import MIN_DECODE_TOKENS, LoadedModel

__all__ = ["LlamaCppBackend"]


class LlamaCppBackend(Backend):
    """llama.cpp in-process: exact label probabilities from a local GGUF model.

    Parameters
    ----------
    model_path : str or None, default=None
        A ``.gguf`` file; ``None``: the embedded Gemma 3 270M base model.
    chat : bool, default=False
        Wrap each prompt in the model's chat template (for instruction models).
    chat_template : str, default=None
        A Jinja chat template to use instead of the GGUF's own (needed with
        ``chat=True`` when the file has none).
    n_ctx : int, default=4096
        Context size in tokens: the longest prompt plus its longest label, plus
        (with ``n_parallel > 1``) room for several texts at once.
    n_threads : int, default=None
        CPU threads per decode call. ``None``: the physical cores among the CPUs
        this process may use, at most its cgroup CPU quota and ``OMP_NUM_THREADS``
        (which joblib's workers set to ``cpu_count // n_jobs``, so ``n_jobs``
        workers take one share each); half the logical CPUs where the topology
        is unknown (see :mod:`skllmprob.backends.llamacpp.threads`). llama.cpp's
        threads spin while they wait, so more threads than free cores is much
        slower, not faster. Not part of the identity: it changes speed only.
    n_batch : int, default=512
        The most tokens per decode call.
    n_parallel : int, default=1
        Texts evaluated per decode call (one sequence each, sharing the prefix).
        ``1`` gives results bit-identical to a cold evaluation; more changes
        rounding and, on a small CPU, barely changes speed (see the notes of
        :mod:`skllmprob.backends.llamacpp`).
    flash_attn : bool, default=False
        llama.cpp's flash attention (changes rounding; part of the identity).
    reuse_prefix : bool, default=True
        Keep the shared prompt prefix's cache between prompts and calls. ``False``
        evaluates every prompt from scratch (for comparison).
    label_prune : float, default=1e-4
        Multi-token answer variants are teacher-forced as a trie of their token
        prefixes (:mod:`skllmprob.backends.llamacpp.trie`). A prefix is expanded
        only when its probability is at least ``label_prune`` times the summed
        probability of all variants' first tokens; below that (``" POSITIVE"``
        after a prompt that answers ``" positive"``, or ``" card linking"`` after
        ``" card"`` when the text is about an arrival) the variants through it
        count as 0; a class whose every variant is cut gets an even share of the
        cut prefixes' probability instead. Each class mass is then off by at most
        the summed probability of the cut prefixes, each below that bound. ``0``
        teacher-forces every variant.
    fingerprint : {"sampled", "sha256"}, default="sampled"
        How a ``model_path`` file is identified in the cache key.
    verbose : bool, default=False
        Let llama.cpp write its log to stderr.

    Notes
    -----
    ``complete`` fills :attr:`Completion.answer_logprobs` exactly, ``tokens`` /
    ``logprobs`` with the top ``query.top_logprobs`` tokens of the full
    distribution, ``prompt_tokens`` (tokens of the prompt), ``cached_tokens``
    (prefix tokens whose cache was reused rather than evaluated for this prompt)
    and ``completion_tokens`` (label tokens evaluated by teacher forcing).
    """

    exact = True
    max_top_logprobs = None

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        chat: bool = False,
        chat_template: str | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_parallel: int = 1,
        flash_attn: bool = False,
        reuse_prefix: bool = True,
        label_prune: float = 1e-4,
        fingerprint: str = "sampled",
        verbose: bool = False,
    ) -> None:
        self.model_path = os.fspath(model_path) if model_path is not None else None
        self.chat = chat
        self.chat_template = chat_template
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.n_parallel = n_parallel
        self.flash_attn = flash_attn
        self.reuse_prefix = reuse_prefix
        self.label_prune = label_prune
        self.fingerprint = fingerprint
        self.verbose = verbose

    # -- settings ------------------------------------------------------------------

    def _check_settings(self) -> None:
        for name, low in (("n_ctx", 64), ("n_batch", MIN_DECODE_TOKENS), ("n_parallel", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigurationError(f"{name} must be an int >= {low}, got {v!r}.")
        if self.n_threads is not None and (
            not isinstance(self.n_threads, int) or self.n_threads < 1
        ):
            raise ConfigurationError(
                f"n_threads must be None or an int >= 1, got {self.n_threads!r}."
            )
        if self.n_parallel > 64:
            raise ConfigurationError(f"n_parallel must be at most 64, got {self.n_parallel}.")
        if not isinstance(self.label_prune, int | float) or not 0 <= self.label_prune < 1:
            raise ConfigurationError(
                f"label_prune must be a number in [0, 1), got {self.label_prune!r}."
            )
        if self.fingerprint not in ("sampled", "sha256"):
            raise ConfigurationError(
                f"fingerprint must be 'sampled' or 'sha256', got {self.fingerprint!r}."
            )
        if self.chat_template is not None and not isinstance(self.chat_template, str):
            raise ConfigurationError("chat_template must be a Jinja template string or None.")

    def _model_id(self) -> dict[str, str]:
        if self.model_path is None:
            gemma = import_gemma()
            return {"gguf_sha256": gemma.EXPECTED_SHA256, "name": gemma.MODEL_NAME}
        return {"gguf": file_fingerprint(self.model_path, self.fingerprint)}

    def identity(self) -> dict[str, Any]:
        self._check_settings()
        out: dict[str, Any] = {
            "backend": "llamacpp",
            "model": self._model_id(),
            "chat": bool(self.chat),
            "flash_attn": bool(self.flash_attn),
            "label_prune": float(self.label_prune),
            "scoring": "exact-v1",
        }
        if self.chat and self.chat_template is not None:
            out["chat_template_sha256"] = hashlib.sha256(
                self.chat_template.encode("utf-8")
            ).hexdigest()
        return out

    def request_settings(self, query: Query) -> dict[str, Any]:
        """The default request settings, and with ``label_prune > 0``:

        - ``"label_prune_scope": "prefix"`` when pruning could cut a label prefix
          below its first token (answers with sequences of three or more tokens).
          Since label tries (:mod:`.trie`) such prefixes are cut too; answers
          whose sequences are at most two tokens long (``" POS" + "ITIVE"``)
          score as before, and keep their cache keys;
        - ``"cut_classes": "share"`` when a class has no one-token form, so that
          pruning could cut it whole: such a class then gets a share of the cut
          prefixes' probability instead of 0 (:mod:`.trie`, *Classes cut
          whole*). Answers that all have a one-token form keep their keys.
        """
        out = super().request_settings(query)
        if query.answers and self.label_prune > 0:
            spec = self._load().answer_spec(tuple(query.answers))
            if spec.max_extra > 1:
                out["label_prune_scope"] = "prefix"
            one_token = {int(c) for s, c in zip(spec.seqs, spec.owner, strict=True) if len(s) == 1}
            if len(one_token) < spec.n_classes:
                out["cut_classes"] = "share"
        return out

    def check_query(self, query: Query) -> None:
        super().check_query(query)
        if query.top_logprobs < 0:
            raise ConfigurationError("top_logprobs must be >= 0.")

    def _resource_key(self) -> tuple:
        model = ("default",) if self.model_path is None else (os.path.realpath(self.model_path),)
        return (
            "llamacpp",
            model,
            self.n_ctx,
            self.n_threads,
            self.n_batch,
            self.n_parallel,
            bool(self.flash_attn),
            bool(self.verbose),
        )

    def _load(self) -> LoadedModel:
        """The process-wide loaded model for these settings (loaded on first use)."""
        self._check_settings()
        import_llama_cpp()
        if self.model_path is not None:
            check_gguf_file(self.model_path)
        return shared_resource(self._resource_key(), lambda: LoadedModel(self))

    # -- Backend API -----------------------------------------------------------------

    def first_tokens(self, answers: Sequence[str]) -> list[list[str]]:
        llm = self._load()
        try:
            return llm.answer_spec(tuple(answers)).first_token_texts
        except ConfigurationError:
            # Answers that cannot be told apart ("Good" and "good"): the classifier
            # switches to option codes; it only needs each answer's own tokens here.
            return [llm.answer_spec((a,)).first_token_texts[0] for a in answers]

    def tokenize_prompt(self, prompt: str) -> list[int]:
        """The token ids the model is given for ``prompt`` (chat template applied
        when ``chat=True``)."""
        llm = self._load()
        return llm.prompt_tokens(prompt, self._chat_parts(llm))

    def _chat_parts(self, llm: LoadedModel):
        if not self.chat:
            return None
        return llm.chat_parts(self.chat_template)

    def complete(self, prompts: Sequence[str], query: Query, *, on_result: OnResult) -> None:
        self.check_query(query)
        if not prompts:
            return
        llm = self._load()
        chat_parts = self._chat_parts(llm)
        spec = llm.answer_spec(tuple(query.answers)) if query.answers else None
        complete(
            llm,
            list(prompts),
            chat_parts,
            spec,
            int(query.top_logprobs),
            on_result,
            reuse_prefix=bool(self.reuse_prefix),
            label_prune=float(self.label_prune),
        )
