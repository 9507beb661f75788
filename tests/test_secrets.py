"""The API key never leaves the process's memory: not in a pickle, a joblib dump, the
cache file, a log line, an error message or traceback, a repr, the HTML repr or a grid
search's results.

Every check searches the *bytes* of what could leak for the key, for a key given as
``api_key=`` and for one read from ``$OPENAI_API_KEY``. The stub server requires the
key (so it is really sent) and echoes it in its error messages (as a careless proxy
might), so the error paths have the key in hand and must scrub it.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import time
import traceback
import uuid
import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.utils import estimator_html_repr

from skllmprob import (
    ConfigurationError,
    LogprobClassifier,
    PartialResultsError,
    RequestRejectedError,
    SkllmprobError,
)
from skllmprob.backends import Query
from skllmprob.backends.openai import OpenAIBackend
from skllmprob.cache import default_cache_path
from skllmprob.testing import OpenAIStub

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["positive", "negative"]
TEXTS = [
    "what a great film, I loved it",
    "boring, dull and far too long",
    "a wonderful and moving story",
    "an awful mess, I hated it",
    "brilliant acting, a real gem",
    "tedious plot and poor acting",
]
Y = ["positive", "negative"] * 3
#: A fresh key per run: nothing else can contain it by chance.
KEY = f"sk-test-{uuid.uuid4().hex}{uuid.uuid4().hex}"
#: The whole key and both of its halves (a truncated message must not leak half).
NEEDLES = [KEY, KEY[: len(KEY) // 2], KEY[len(KEY) // 2 :]]
#: Loggers set to DEBUG: the root, the SDK, both HTTP stacks (httpx2 is what the
#: installed SDK uses; httpx/httpcore for older SDKs) and the library.
LOGGERS = ["", "openai", "httpx", "httpx2", "httpcore", "httpcore2", "skllmprob"]


def assert_no_key(data, where: str) -> None:
    if isinstance(data, bytes):
        hits = [n for n in NEEDLES if n.encode() in data]
    else:
        hits = [n for n in NEEDLES if n in str(data)]
    assert not hits, f"the API key (or part of it) leaked into {where}"


@pytest.fixture(params=["api_key", "env"])
def key_source(request, monkeypatch):
    """Where the key comes from: the ``api_key=`` parameter, or ``$OPENAI_API_KEY``."""
    if request.param == "api_key":
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        return {"api_key": KEY}
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return {}


@pytest.fixture
def stub():
    with OpenAIStub(api_key=KEY) as s:
        yield s


def make(stub, key_source, **kw):
    kw.setdefault("labels", LABELS)
    kw.setdefault("progress", False)
    return LogprobClassifier("stub-model", base_url=stub.base_url, **key_source, **kw)


def everything_in(exc: BaseException) -> list:
    """An exception's texts, chained causes and kept errors, as strings and pickles."""
    seen: list = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__, *getattr(e, "errors", [])]
    out = ["".join(traceback.format_exception(exc))]
    for e in seen:
        out += [str(e), repr(e), repr(vars(e)) if hasattr(e, "__dict__") else "", e.args]
        out.append(pickle.dumps(e))
    return out


# ------------------------------------------------------------------ the estimator


def test_pickle_joblib_repr_html_and_params(stub, key_source, tmp_path):
    clf = make(stub, key_source, calibration="bias").fit(TEXTS, Y)
    clf.predict_proba(TEXTS)
    assert stub.status_counts[200] == len(TEXTS)  # the key was sent and accepted
    blob = pickle.dumps(clf)
    assert b"stub-model" in blob  # the search can find what is there
    assert_no_key(blob, "pickle.dumps(clf)")
    joblib.dump(clf, tmp_path / "clf.joblib")
    assert_no_key((tmp_path / "clf.joblib").read_bytes(), "joblib.dump")
    assert_no_key(repr(clf), "repr")
    assert_no_key(str(clf.get_params()), "get_params")
    assert_no_key(vars(clf), "vars(clf)")
    html = clf._repr_html_()
    assert "stub-model" in html
    assert_no_key(html, "the HTML repr")
    assert_no_key(estimator_html_repr(GridSearchCV(clf, {"calibration_alpha": [0.1]})), "HTML")
    backend = clf._make_backend()
    assert_no_key(repr(backend), "repr(backend)")
    assert_no_key(pickle.dumps(backend), "pickle of the backend")
    assert_no_key(str(backend.identity()), "backend identity")
    # Unpickled, the classifier reads the key from the environment (or has none).
    back = pickle.loads(blob)
    if "api_key" not in key_source:
        np.testing.assert_allclose(back.predict_proba(["a new text"]).sum(), 1.0)


def test_grid_search_results_and_its_pickle(stub, key_source):
    clf = make(stub, key_source)
    search = GridSearchCV(clf, {"calibration": ["none", "bias"]}, cv=2).fit(TEXTS, Y)
    assert search.best_estimator_.classes_.tolist() == ["negative", "positive"]
    results = search.cv_results_
    assert_no_key(repr(results), "repr(cv_results_)")
    assert_no_key(pickle.dumps(results), "pickle of cv_results_")
    assert_no_key(pd.DataFrame(results).to_csv(), "cv_results_ as CSV")
    assert_no_key(pickle.dumps(search), "pickle of the fitted GridSearchCV")
    assert_no_key(repr(search), "repr(GridSearchCV)")


@pytest.mark.slow
def test_parallel_grid_search_needs_the_environment_key(stub, monkeypatch):
    """Worker processes get unpickled clones, so an ``api_key=`` key does not reach
    them: a clear error says to use ``$OPENAI_API_KEY``, which they inherit."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    grid = {"calibration": ["none", "bias"]}
    search = GridSearchCV(make(stub, {"api_key": KEY}), grid, cv=2, n_jobs=2, error_score="raise")
    with pytest.raises(RequestRejectedError, match=r"unpickled.*set \$OPENAI_API_KEY") as info:
        search.fit(TEXTS, Y)
    for part in everything_in(info.value):
        assert_no_key(part, "the error of a worker process")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    search = GridSearchCV(make(stub, {}), grid, cv=2, n_jobs=2).fit(TEXTS, Y)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert_no_key(pickle.dumps(search.cv_results_), "cv_results_ of a parallel search")


# ------------------------------------------------------------------ cache and logs


def test_cache_file_wal_and_shm(stub, key_source):
    clf = make(stub, key_source, calibration="bias").fit(TEXTS, Y)
    clf.predict_proba([*TEXTS, "one more review"])
    folder = default_cache_path().parent
    files = sorted(folder.iterdir())
    assert any(f.name.endswith(".sqlite") for f in files)
    data = b"".join(f.read_bytes() for f in files if f.is_file())
    assert b"positive" in data  # the stored tokens are in plain bytes
    assert_no_key(data, f"the cache files {[f.name for f in files]}")


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))  # with exc_info, the traceback too


@pytest.fixture
def debug_logs():
    handler = _Capture()
    loggers = [logging.getLogger(n) for n in LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def test_debug_logs_of_successes_and_failures(stub, key_source, debug_logs):
    stub.add_fault("429", times=2, retry_after=0.01)
    stub.add_fault("500", match=TEXTS[1], times=None, message="upstream said {key}")
    clf = make(stub, key_source, max_retries=1).fit(None, None)
    with pytest.raises(PartialResultsError):
        clf.predict_proba(TEXTS)
    stub.clear_faults()
    stub.add_fault("400", message="bad request for key {key}")
    with pytest.raises(RequestRejectedError):
        make(stub, key_source).fit(None, None).predict_proba(["a text never seen"])
    text = "\n".join(debug_logs.lines)
    # DEBUG output of the SDK and the library was captured, retries included.
    assert "HTTP Response" in text or "HTTP Request" in text
    assert "Retrying" in text or "retry" in text.lower()
    assert any(r.name.startswith("skllmprob") for r in debug_logs.records)
    assert_no_key(text, "a log line")
    for r in debug_logs.records:
        assert_no_key(repr(r.args), f"the arguments of a log record of {r.name}")
        assert_no_key(repr(r.msg), f"the message of a log record of {r.name}")


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("401", RequestRejectedError),
        ("400", RequestRejectedError),
        ("403", RequestRejectedError),
        ("quota", RequestRejectedError),
        ("500", PartialResultsError),
        ("429", PartialResultsError),
    ],
)
def test_errors_that_echo_the_key(stub, key_source, kind, error):
    stub.add_fault(kind, match=TEXTS[2], times=None, message="Echo: {key} (incorrect)")
    clf = make(stub, key_source, max_retries=0, max_concurrency=2, cache=False)
    with pytest.raises(error) as info:
        clf.fit(None, None).predict_proba(TEXTS)
    err = info.value
    # The server did echo the key to the client ...
    echoed = [e for e in stub.log if e.get("status") not in (None, 200)]
    assert echoed and echoed[0]["auth"] == "bearer"
    # ... and nothing the caller can reach holds it: message, traceback with its
    # chained causes, the errors kept on a PartialResultsError, their pickles.
    assert "Echo:" in "".join(traceback.format_exception(err))
    for i, part in enumerate(everything_in(err)):
        assert_no_key(part, f"part {i} of the {type(err).__name__}")


def test_timeout_and_connection_errors(key_source, monkeypatch):
    with OpenAIStub(api_key=KEY) as stub:
        stub.add_fault("hang", hang=5.0, times=None)
        clf = make(stub, key_source, max_retries=0, timeout=0.2, cache=False)
        with pytest.raises(SkllmprobError) as info:
            clf.fit(None, None).predict_proba(TEXTS[:2])
        for part in everything_in(info.value):
            assert_no_key(part, "a timeout error")
        url = stub.base_url
    # The server is gone: connection refused.
    clf = LogprobClassifier(
        "stub-model", labels=LABELS, base_url=url, max_retries=0, cache=False, **key_source
    )
    with pytest.raises(SkllmprobError) as info:
        clf.fit(None, None).predict_proba(TEXTS[:2])
    assert "cannot reach" in str(info.value)
    for part in everything_in(info.value):
        assert_no_key(part, "a connection error")


def test_warnings_and_progress_output(stub, key_source, capsys):
    pytest.importorskip("tqdm")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = make(stub, key_source, progress=True, calibration="bias")
        clf.fit(TEXTS[:4], ["positive"] * 4)  # warns: a class without samples
        clf.predict_proba(TEXTS)
    assert caught
    assert_no_key(" ".join(str(w.message) for w in caught), "a warning")
    out = capsys.readouterr()
    assert "skllmprob" in out.err  # the progress bar was drawn
    assert_no_key(out.out + out.err, "the progress bar or other output")


def test_backend_instance_and_clone(stub, key_source):
    from sklearn.base import clone

    backend = OpenAIBackend("stub-model", base_url=stub.base_url, **key_source)
    clf = LogprobClassifier(labels=LABELS, backend=backend, cache=False, progress=False)
    fitted = clone(clf).fit(None, None)
    assert fitted.predict_proba(TEXTS[:2]).shape == (2, 2)
    for what in (repr(clf), pickle.dumps(clf), pickle.dumps(fitted), fitted._repr_html_()):
        assert_no_key(what, "a classifier holding a backend instance")


# ------------------------------------------------------------------ a whole process


def test_a_process_with_sdk_debug_logging_prints_no_key(stub, key_source, tmp_path):
    """``OPENAI_LOG=debug`` (the SDK's own switch) and ``logging.basicConfig(DEBUG)``,
    then a fit, predictions, a failure and printed reprs: no key in the output."""
    code = textwrap.dedent(
        """
        import logging, pickle, sys, traceback
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
        from skllmprob import LogprobClassifier, SkllmprobError
        url, kw = sys.argv[1], {}
        if len(sys.argv) > 2:
            kw["api_key"] = sys.argv[2]
        clf = LogprobClassifier("stub-model", labels=["positive", "negative"],
                                base_url=url, progress=False, max_retries=1, **kw)
        clf.fit(["a great film", "a dull film"], ["positive", "negative"])
        print(clf.predict_proba(["a fine film", "an awful film"]))
        print(repr(clf), clf._repr_html_())
        try:
            clf.predict_proba(["this one FAILS on the server"])
        except SkllmprobError as e:
            traceback.print_exc()
            print(repr(e), getattr(e, "errors", None))
        sys.stdout.buffer.write(pickle.dumps(clf))
        """
    )
    stub.add_fault("500", match="FAILS", times=None, message="upstream said {key}")
    env = {
        **os.environ,
        "OPENAI_LOG": "debug",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    args = [sys.executable, "-c", code, stub.base_url]
    if "api_key" in key_source:
        args.append(KEY)  # the only place the key is given: argv, never printed
    proc = subprocess.run(args, env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert b"HTTP Response" in proc.stderr or b"HTTP Request" in proc.stderr
    assert b"PartialResultsError" in proc.stderr + proc.stdout
    assert_no_key(proc.stdout, "the standard output")
    assert_no_key(proc.stderr, "the standard error (SDK debug log, traceback)")
    files = [f for f in Path(os.environ["SKLLMPROB_CACHE_DIR"]).iterdir() if f.is_file()]
    assert files
    for f in files:
        assert_no_key(f.read_bytes(), f"the cache file {f.name}")


def test_stringio_logging_of_the_exception_with_logger_exception(stub, key_source):
    """``logger.exception(...)`` of a failure, the usual way applications log errors."""
    stub.add_fault("401", times=None, message="Incorrect API key provided: {key}")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger("an.application")
    log.addHandler(handler)
    try:
        try:
            make(stub, key_source, max_retries=0).fit(None, None).predict_proba(TEXTS[:1])
        except RequestRejectedError:
            log.exception("classification failed")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "Incorrect API key provided" in text and "Traceback" in text
    assert_no_key(text, "logger.exception output")


def test_an_unpickled_classifier_says_why_it_has_no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    clf = LogprobClassifier("gpt-4o-mini", labels=LABELS, api_key=KEY, cache=False)
    back = pickle.loads(pickle.dumps(clf))
    assert back.api_key is None  # dropped, and read from the environment again
    from skllmprob import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"unpickled.*never pickled.*OPENAI_API_KEY"):
        back.fit(None, None).predict_proba(["x"])  # no request is made without a key
    with pytest.raises(ConfigurationError) as info:  # never pickled: no such note
        LogprobClassifier("gpt-4o-mini", labels=LABELS, cache=False).fit(None, None).predict_proba(
            ["x"]
        )
    assert "unpickled" not in str(info.value)


def test_an_unpickled_backend_refused_by_a_local_server_says_why(stub, monkeypatch):
    """A server other than OpenAI gets the placeholder when the key was dropped by a
    pickle; its 401 then says why there is no key."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = OpenAIBackend(
        "stub-model", base_url=stub.base_url, api_key=KEY, max_retries=0, max_concurrency=1
    )
    back = pickle.loads(pickle.dumps(backend))
    with pytest.raises(RequestRejectedError, match=r"401.*unpickled.*OPENAI_API_KEY") as info:
        back.complete(TEXTS[:2], Query(top_logprobs=5), on_result=lambda i, c: None)
    assert stub.requests == 1  # the 401 stops the call
    assert stub.log[-1]["auth"] == "bearer"  # the placeholder, not the key
    for part in everything_in(info.value):
        assert_no_key(part, "the error of an unpickled backend")
    fresh = OpenAIBackend("stub-model", base_url=stub.base_url, max_retries=0)
    with pytest.raises(RequestRejectedError) as info:
        fresh.complete(TEXTS[:1], Query(top_logprobs=5), on_result=lambda i, c: None)
    assert "unpickled" not in str(info.value)  # never pickled: no such note


def test_shared_clients_are_looked_up_by_a_hash_of_the_key(stub, key_source):
    from skllmprob.backends import base

    make(stub, key_source, cache=False).fit(None, None).predict_proba(TEXTS[:1])
    keys = [k for k in base._RESOURCES if k and k[0] == "openai-client"]
    assert keys
    assert_no_key(repr(keys), "the keys of the shared resources")


# ------------------------------------------------------------------ isolation


def test_two_servers_or_two_models_never_share_cache_entries(tmp_path):
    """One cache file, two servers (different answers) and two model names: every
    combination requests its own answers; only the same server and model hit."""
    path = str(tmp_path / "shared.sqlite")
    texts = TEXTS
    with OpenAIStub(seed=1) as a, OpenAIStub(seed=2) as b:

        def run(stub, model, base_url=None):
            clf = LogprobClassifier(
                model, labels=LABELS, base_url=base_url or stub.base_url, cache=path
            )
            proba = clf.fit(None, None).predict_proba(texts)
            return proba, clf.usage_.last.requests

        pa, sent = run(a, "model-x")
        assert sent == len(texts)
        pb, sent = run(b, "model-x")  # another server: no entry of a's is read
        assert sent == len(texts) and not np.array_equal(pa, pb)
        _, sent = run(a, "model-y")  # another model at the same server
        assert sent == len(texts)
        pa2, sent = run(a, "model-x")  # the same server and model: all from the cache
        assert sent == 0 and np.array_equal(pa, pa2)
        # The same URL written differently is the same server.
        _, sent = run(a, "model-x", base_url=a.base_url.upper().replace("/V1", "/v1/"))
        assert sent == 0
        assert a.requests == 2 * len(texts) and b.requests == len(texts)


def test_the_cache_file_holds_no_text_of_the_prompts(stub, key_source):
    """Entries are keyed by a SHA-256 of the prompt: neither prompts nor texts are in
    the file, only the model's top answer tokens and their log-probabilities. (Those
    tokens can be words of the text: this stub's model, like real ones, sometimes
    ranks a word it just read among its top next tokens.)"""
    secret_text = f"confidential review {uuid.uuid4().hex}: a great film"
    make(stub, key_source).fit(None, None).predict_proba([secret_text])
    folder = default_cache_path().parent
    data = b"".join(f.read_bytes() for f in folder.iterdir() if f.is_file())
    assert b"positive" in data
    assert secret_text.encode() not in data
    prompt = make(stub, key_source).fit(None, None).render_prompts([secret_text])[0]
    assert prompt.encode() not in data and prompt.split("\n")[0].encode() not in data


# ------------------------------------------------------------------ what a model can do


def test_requests_ask_for_one_token_and_offer_no_tools(stub, key_source):
    make(stub, key_source, endpoint="chat").fit(None, None).predict_proba(TEXTS[:2])
    make(stub, key_source, endpoint="completions").fit(None, None).predict_proba(TEXTS[:2])
    bodies = [e["body"] for e in stub.log]
    assert len(bodies) == 4
    for body in bodies:
        assert body.get("max_tokens", body.get("max_completion_tokens")) == 1
        assert not {"tools", "functions", "tool_choice", "function_call"} & set(body)
        assert body.get("stream") in (None, False) and body.get("n") in (None, 1)


def test_whatever_the_model_answers_is_only_read_as_probabilities(tmp_path):
    """A hostile or injected answer token is a string whose probability is summed
    or reported; nothing in it is executed or followed."""
    marker = tmp_path / "pwned"
    hostile = f"__import__('os').system('touch {marker}')"
    pairs = [(hostile, -0.1), ("{{text}}", -2.0), (" positive", -3.0), (" negative", -4.0)]
    with OpenAIStub(distribution=lambda prompt: pairs) as stub:
        clf = LogprobClassifier(
            "m", labels=LABELS, base_url=stub.base_url, cache=str(tmp_path / "c.sqlite")
        )
        clf.fit(TEXTS[:2], ["positive", "negative"])
        proba = clf.predict_proba(TEXTS)
    assert not marker.exists()
    assert hostile in clf.other_tokens_  # reported as what the model said instead
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert clf.coverage_ < 0.2  # and coverage shows that labels got little mass


# ------------------------------------------------------------------ keys with stray characters

#: Keys that cannot go in an HTTP header, whatever is stripped around them.
BAD_KEYS = {
    "inner-newline": KEY[:20] + "\n" + KEY[20:],
    "inner-carriage-return": KEY[:20] + "\r" + KEY[20:],
    "non-ascii": KEY[:20] + "\u00e9" + KEY[20:],
    "typographic-dash": KEY[:20] + "\u2013" + KEY[20:],
    "escape": KEY[:20] + "\x1b" + KEY[20:],
    "trailing-non-ascii": KEY + "\u00a0x",
}
PROBLEMS = {
    "inner-newline": "line break",
    "inner-carriage-return": "line break",
    "non-ascii": "non-ASCII character",
    "typographic-dash": "non-ASCII character",
    "escape": "control character",
    "trailing-non-ascii": "non-ASCII character",
}


def give_key(source: str, key: str, monkeypatch) -> dict:
    """The estimator keywords giving ``key`` from ``source`` (``api_key`` or ``env``)."""
    if source == "api_key":
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        return {"api_key": key}
    monkeypatch.setenv("OPENAI_API_KEY", key)
    return {}


@pytest.mark.parametrize("source", ["api_key", "env"])
@pytest.mark.parametrize("around", [("", "\n"), ("", "\r\n"), ("", "\r"), (" \t", " \n")])
def test_whitespace_around_the_key_is_stripped(stub, monkeypatch, debug_logs, source, around):
    given = around[0] + KEY + around[1]
    clf = make(stub, give_key(source, given, monkeypatch), cache=False)
    proba = clf.fit(None, None).predict_proba(TEXTS)
    assert proba.shape == (len(TEXTS), 2)
    # The stub only answers the exact key: it was sent, stripped, with every request.
    assert stub.requests == len(TEXTS) == stub.prompt_successes.total()
    assert all(e["auth"] == "bearer" and e.get("status") == 200 for e in stub.log)
    assert_no_key("\n".join(debug_logs.lines), "a log line")


@pytest.mark.parametrize("source", ["api_key", "env"])
@pytest.mark.parametrize("name", list(BAD_KEYS))
def test_a_key_that_cannot_go_in_a_header_is_refused_before_any_request(
    stub, monkeypatch, debug_logs, source, name
):
    bad = BAD_KEYS[name]
    clf = make(stub, give_key(source, bad, monkeypatch), cache=False)  # max_retries=5
    start = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        clf.fit(None, None).predict_proba(TEXTS)
    assert time.monotonic() - start < 2.0  # no retries: nothing was sent
    assert stub.requests == 0
    message = str(info.value)
    assert PROBLEMS[name] in message and "HTTP header" in message
    assert ("api_key=" if source == "api_key" else "$OPENAI_API_KEY") in message
    fragments = [bad[:12], bad[-12:], *NEEDLES]
    for i, part in enumerate(everything_in(info.value)):
        text = part.decode("latin-1") if isinstance(part, bytes) else str(part)
        assert not [f for f in fragments if f in text], f"part {i} of the error shows the key"
    logged = "\n".join(debug_logs.lines) + repr([(r.msg, r.args) for r in debug_logs.records])
    assert not [f for f in fragments if f in logged], "a log line shows the key"


@pytest.mark.parametrize("name", ["inner-newline", "non-ascii"])
def test_the_cli_traceback_of_a_refused_key_shows_no_key(stub, monkeypatch, tmp_path, name):
    from skllmprob.cli import main

    bad = BAD_KEYS[name]
    monkeypatch.setenv("MY_KEY", bad)
    (tmp_path / "in.csv").write_text("text\n" + "".join(f'"{t}"\n' for t in TEXTS))
    out, err = io.StringIO(), io.StringIO()
    args = ["classify", str(tmp_path / "in.csv"), "--labels", *LABELS, "--model", "stub-model"]
    args += ["--base-url", stub.base_url, "--api-key-env", "MY_KEY", "--no-cache", "--traceback"]
    code = main(args, stdin=io.StringIO(""), stdout=out, stderr=err)
    assert code != 0 and stub.requests == 0
    assert "Traceback" in err.getvalue() and "HTTP header" in err.getvalue()
    shown = out.getvalue() + err.getvalue()
    assert not [f for f in [bad[:12], bad[-12:], *NEEDLES] if f in shown]
