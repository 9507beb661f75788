"""The loaded model: one llama.cpp model, context and batch per process and settings,
with its vocabulary tables, tokenization, chat template parts and decode calls."""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import threading
import weakref

import numpy as np

from ...exceptions import BackendError, BackendUnavailableError, ConfigurationError, InputError
from .exact import MAX_OUTPUTS, AnswerSpec, build_spec, lcp
from .files import default_model_path, import_llama_cpp
from .threads import process_n_threads

__all__ = ["MAX_SEQUENCES", "MIN_DECODE_TOKENS", "LoadedModel"]

#: The sequences of a context: the prefix, the texts, padding, and the branches
#: of label tries (:mod:`.trie`). llama.cpp allows 256 (LLAMA_MAX_SEQ), but it
#: sizes the logits buffer for one row per sequence (1 MB each for Gemma 3's
#: vocabulary). 128 lets a level of a 77-label trie go in one decode call instead
#: of three (Banking77: 4 decode calls per text instead of 6) for 64 MB more
#: resident memory than 64 (measured: 674 MB against 610 MB after load).
MAX_SEQUENCES = 128

#: The fewest branch sequences a context keeps (with a large ``n_parallel``).
MIN_BRANCHES = 16

#: Decode calls of fewer tokens are padded to this many: llama.cpp's CPU kernels
#: for batches of 1 to 7 rows round differently from those for larger batches.
MIN_DECODE_TOKENS = 8

_SENTINEL = "\x00skllmprob-user-message\x00"
_LOG = logging.getLogger(__name__)
_BACKEND_READY = False


class LoadedModel:
    """A llama.cpp model, its context and a batch; used under ``self.lock``.

    Sequence 0 of the context holds the cached prompt prefix (``resident``),
    sequences ``1..n_parallel`` hold texts evaluated together, the next one takes
    the throw-away padding tokens of short decode calls, and the rest
    (``branch_seqs``) the branches of label tries (:mod:`.trie`).
    """

    def __init__(self, settings) -> None:
        _, L = import_llama_cpp()
        self.L = L
        logger = logging.getLogger("llama-cpp-python")
        if settings.verbose:
            logger.setLevel(logging.DEBUG)
        elif logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)
        path = settings.model_path if settings.model_path is not None else default_model_path()
        self.path = path
        self.lock = threading.RLock()
        self.verbose = bool(settings.verbose)
        self.model = self._load_model(path)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = int(L.llama_vocab_n_tokens(self.vocab))
        self.n_parallel = settings.n_parallel
        # 0: prefix, 1..n: texts, n + 1: padding, the rest: branches of label tries
        self.n_seq = max(MAX_SEQUENCES, settings.n_parallel + 2 + MIN_BRANCHES)
        self.pad_seq = settings.n_parallel + 1
        self.branch_seqs = list(range(settings.n_parallel + 2, self.n_seq))
        self.ctx = self._new_context(settings)
        self.mem = L.llama_get_memory(self.ctx)
        self.n_ctx = int(L.llama_n_ctx(self.ctx))
        self.n_ctx_train = int(L.llama_model_n_ctx_train(self.model))
        self.n_batch = settings.n_batch
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)
        self.add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(L.llama_vocab_bos(self.vocab))
        self.eos = int(L.llama_vocab_eos(self.vocab))
        self.resident: list[int] = []  # tokens whose cache sequence 0 holds
        self._pieces: list[str] | None = None
        self._control: np.ndarray | None = None
        self._by_norm: dict[str, list[int]] | None = None
        self._specs: dict[tuple[str, ...], AnswerSpec] = {}
        self._chat: dict[str | None, tuple] = {}
        self._finalizer = weakref.finalize(self, _free_llama, L, self.model, self.ctx, self.batch)

    def _quiet(self):
        return contextlib.nullcontext() if self.verbose else _quiet_stderr()

    def _load_model(self, path: str):
        global _BACKEND_READY
        L = self.L
        if not _BACKEND_READY:
            L.llama_backend_init()
            _BACKEND_READY = True
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.use_extra_bufts = False  # see "Numerics" in the notes of __init__.py
        # llama-cpp-python's log callback prints llama.cpp's warnings to sys.stderr
        # whatever its logger level; keep load-time chatter out of the user's way.
        with self._quiet():
            model = L.llama_model_load_from_file(path.encode("utf-8"), mp)
        if not model:
            raise BackendUnavailableError(
                f"llama.cpp could not load {path!r} (a damaged or unsupported GGUF file?)."
            )
        return model

    def _new_context(self, settings):
        L = self.L
        cp = L.llama_context_default_params()
        cp.n_ctx = settings.n_ctx
        cp.n_batch = settings.n_batch
        cp.n_ubatch = settings.n_batch
        cp.n_seq_max = self.n_seq
        cp.kv_unified = True
        cp.swa_full = True  # sliding-window caches must allow removing any suffix
        # Logits are read for each text's last token and for label tokens only,
        # at most MAX_OUTPUTS + n_parallel per decode call. llama.cpp sizes the
        # output buffer (n_vocab floats per output) for one output per sequence;
        # only the rows a decode call writes take memory.
        cp.n_outputs_max = max(MAX_OUTPUTS + settings.n_parallel, self.n_seq)
        cp.n_outputs_max_per_seq = MAX_OUTPUTS
        threads = settings.n_threads or process_n_threads()
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.flash_attn_type = (
            L.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if settings.flash_attn
            else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        with self._quiet():
            ctx = L.llama_init_from_model(self.model, cp)
        if not ctx:
            L.llama_model_free(self.model)
            raise BackendError(
                f"llama.cpp could not create a context of n_ctx={settings.n_ctx} for "
                f"{self.path!r}; try a smaller n_ctx."
            )
        return ctx

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
        """The text of every token id."""
        if self._pieces is None:
            self._vocab_tables()
        return self._pieces

    @property
    def control(self) -> np.ndarray:
        """Whether each token id is a control token."""
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

    def answer_spec(self, answers: tuple[str, ...]) -> AnswerSpec:
        """The (memoized) :class:`~.exact.AnswerSpec` of ``answers``."""
        with self.lock:
            spec = self._specs.get(answers)
            if spec is None:
                spec = self._specs[answers] = build_spec(self, answers)
            return spec

    # -- tokenization ---------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        """The token ids of ``text`` (``special``: parse control-token text)."""
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
        """Token ids before and after the user message of the chat template
        (``override``, or the GGUF's own when ``None``)."""
        with self.lock:
            hit = self._chat.get(override)
            if hit is None:
                head, tail = _split_template(self._render_template(override))
                head_ids = self.tokenize(head, add_bos=False, special=True)
                if self.add_bos and (not head_ids or head_ids[0] != self.bos):
                    head_ids = [self.bos, *head_ids]
                tail_ids = self.tokenize(tail, add_bos=False, special=True)
                hit = self._chat[override] = (head_ids, tail_ids)
            return hit

    def _render_template(self, override: str | None) -> str:
        """The chat template rendered around a sentinel user message."""
        template = override
        if template is None:
            raw = self.L.llama_model_chat_template(self.model, None)
            template = raw.decode("utf-8") if raw else None
        if not template:
            raise ConfigurationError(
                f"chat=True needs a chat template, but {self.path!r} has none (a base "
                "model?). Use the plain prompt (chat=False), or pass a template: "
                "LlamaCppBackend(chat=True, chat_template=...)."
            )
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        bos_text = self.pieces[self.bos] if self.bos >= 0 else ""
        eos_text = self.pieces[self.eos] if self.eos >= 0 else ""
        try:
            return Jinja2ChatFormatter(template, eos_token=eos_text, bos_token=bos_text)(
                messages=[{"role": "user", "content": _SENTINEL}]
            ).prompt
        except Exception as e:
            raise ConfigurationError(f"the chat template could not be rendered: {e}") from e

    def prompt_tokens(self, prompt: str, chat_parts) -> list[int]:
        """The token ids of ``prompt``, inside the chat parts when given."""
        if chat_parts is None:
            return self.tokenize(prompt, add_bos=self.add_bos, special=False)
        head, tail = chat_parts
        return [*head, *self.tokenize(prompt, add_bos=False, special=False), *tail]

    # -- decoding -------------------------------------------------------------------

    def decode(self, items: list[tuple[int, int, int, bool]]) -> None:
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
            self.seq_rm(self.pad_seq)
        if rc != 0:
            if rc == 1:
                raise BackendError(
                    f"llama.cpp found no room in its cache (n_ctx={self.n_ctx}); use a "
                    "larger n_ctx or a smaller n_parallel: LlamaCppBackend(n_ctx=..., "
                    "n_parallel=...)."
                )
            raise BackendError(f"llama_decode failed with code {rc}.")

    def logits(self, i: int) -> np.ndarray:
        """A view of the logits of output ``i`` of the last decode call (``-1``: the
        last output); the next decode call overwrites it."""
        ptr = self.L.llama_get_logits_ith(self.ctx, i)
        if not ptr:  # pragma: no cover - only with a wrong output index
            raise BackendError(f"llama.cpp returned no logits for output {i}.")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def seq_rm(self, seq: int, start: int = -1) -> bool:
        """Remove the cache cells of sequence ``seq`` from position ``start`` on
        (``-1``: all of them)."""
        return bool(self.L.llama_memory_seq_rm(self.mem, seq, start, -1))

    def seq_cp(self, src: int, dst: int, end: int) -> None:
        """Let sequence ``dst`` share the cells of ``src`` at positions ``[0, end)``."""
        self.L.llama_memory_seq_cp(self.mem, src, dst, 0, end)

    def extend_seq0(self, tokens: list[int], start: int, *, last_logits: bool = False) -> None:
        """Evaluate ``tokens`` into sequence 0 at positions ``start...``."""
        step = self.n_batch - MIN_DECODE_TOKENS
        for c in range(0, len(tokens), step):
            chunk = tokens[c : c + step]
            last = c + step >= len(tokens)
            self.decode(
                [
                    (t, start + c + k, 0, last_logits and last and k == len(chunk) - 1)
                    for k, t in enumerate(chunk)
                ]
            )

    def set_resident(self, target: list[int]) -> None:
        """Make sequence 0 hold exactly the tokens ``target`` (reusing the longest
        common prefix of what it holds)."""
        r = lcp(self.resident, target)
        if r < len(self.resident):
            if not self.seq_rm(0, r):  # pragma: no cover - full-size caches allow it
                self.seq_rm(0)
                r = 0
            self.resident = self.resident[:r]
        if len(target) > r:
            try:
                self.extend_seq0(target[r:], r)
            except BaseException:
                self.seq_rm(0, r)
                raise
            self.resident = list(target)


def _split_template(rendered: str) -> tuple[str, str]:
    if rendered.count(_SENTINEL) != 1:
        raise ConfigurationError("the chat template does not place the user message exactly once.")
    head, tail = rendered.split(_SENTINEL)
    return head, tail


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
