"""The tools of the fault scenarios (tests/fault_server.py, tests/fault_clients.py).

- :func:`synthetic_texts` and :func:`reference_proba`: the texts of a scenario and
  what an uninterrupted run of the stub's model returns for them, bit for bit (the
  stub answers as :class:`~skllmprob.backends.DeterministicBackend` does);
- :func:`audit_cache`: what a cache file holds, read with :mod:`sqlite3` (entries,
  undecodable rows, ``PRAGMA integrity_check``, claims left);
- :class:`ScenarioResult`: what a scenario injected and what came out;
- :class:`StubProcess`: the stub server in a process of its own, to kill and restart.

Test code only (moved here from ``skllmprob.testing``, which keeps what users need:
the stub server and the request counter).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# skllmprob is imported inside the functions that need it, as before the move, so that
# the child processes of the scenarios (which import this module) start no slower.

LABELS = ["positive", "negative"]
MODEL = "stub-model"
ROOT = Path(__file__).resolve().parents[1]  # the folder that holds skllmprob/ and tests/

_POS = ["great", "wonderful", "brilliant", "fun", "superb", "moving", "excellent", "gem"]
_NEG = ["boring", "dull", "awful", "worst", "tedious", "poor", "stupid", "mess"]
_NOUNS = ["plot", "actors", "story", "ending", "music", "script", "camera", "pace"]


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct short reviews; no text is a substring of another's prompt.

    >>> synthetic_texts(2)
    ['review #00000#: the plot was great', 'review #00001#: the actors was dull']
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cue = (_POS if i % 2 == 0 else _NEG)[rng.randrange(8) if seed else i % 8]
        out.append(f"review #{i:05d}#: the {_NOUNS[i % 8]} was {cue}")
    return out


def reference_proba(texts: list[str], seed: int = 0) -> np.ndarray:
    """An uninterrupted run of the stub's model (the deterministic backend with the
    stub's ``seed``) in-process, without cache: what every scenario must end with,
    bit for bit."""
    from skllmprob import LogprobClassifier
    from skllmprob.backends import DeterministicBackend

    clf = LogprobClassifier(
        labels=LABELS, backend=DeterministicBackend(seed=seed), cache=False, progress=False
    )
    return clf.fit(None, None).predict_proba(texts)


def classifier(base_url: str, cache: str | bool, **kw):
    from skllmprob import LogprobClassifier

    kw.setdefault("progress", False)
    return LogprobClassifier(MODEL, labels=LABELS, base_url=base_url, cache=cache, **kw).fit(
        None, None
    )


# ------------------------------------------------------------------------------------
# Counting from the outside


@dataclass
class CacheAudit:
    """What a cache file holds, read with :mod:`sqlite3` and the cache's decoder.

    Attributes
    ----------
    entries : int
        Rows of the completions table.
    corrupt : int
        Rows that do not decode (plus 1 if ``PRAGMA integrity_check`` is not ok).
    integrity : str
        The result of ``PRAGMA integrity_check``.
    claims : int
        Claims left in the file (by killed processes, or in flight).
    """

    entries: int = 0
    corrupt: int = 0
    integrity: str = "missing"
    claims: int = 0


def audit_cache(path: str | os.PathLike) -> CacheAudit:
    """Open the cache file read-only with :mod:`sqlite3` and check every entry.

    A file that does not exist yet (a process killed before it made one) is an
    empty, healthy cache.
    """
    from skllmprob.cache import _DECODE_ERRORS, _decode
    from skllmprob.cache.schema import tokens_of_ids
    from skllmprob.vocabulary import Vocabulary

    path = Path(path)
    if not path.exists():
        return CacheAudit(integrity="ok (no file yet)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        if "completions" not in tables:
            return CacheAudit(integrity=integrity, corrupt=int(integrity != "ok"))
        entries = corrupt = 0
        vocab = Vocabulary()  # the whole vocabulary (checked as a process reads it)
        if "vocab" in tables:
            ids = [i for (i,) in conn.execute("SELECT id FROM vocab ORDER BY id")]
            vocab.add(*tokens_of_ids(conn, np.asarray(ids, dtype=np.int64)))
        for data, text in conn.execute("SELECT data, tokens FROM completions"):
            entries += 1
            try:
                _decode(data, text, vocab)
            except _DECODE_ERRORS:
                corrupt += 1
        claims = conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0]
    finally:
        conn.close()
    return CacheAudit(entries, corrupt + int(integrity != "ok"), integrity, claims)


@dataclass
class ScenarioResult:
    """What a scenario injected and what came out.

    Attributes
    ----------
    scenario : str
    texts : int
        Distinct texts classified.
    injected : dict
        The faults that fired, by kind (counted by the server or the scenario).
    requests : int
        Requests the server(s) received.
    retries : int
        Requests that got no answer the client kept: failed attempts that were
        retried (429, 500, timeouts, connections cut), or that were in flight when
        the server died.
    resent : int
        Texts the server had already answered and was asked for again. Must be 0,
        except after a ``SIGKILL`` of the client, which loses the answers it had
        received but not yet committed.
    results : int
        Texts with a result at the end.
    lost : int
        Texts whose final probabilities differ from an uninterrupted run, or that
        have none (must be 0).
    corrupt : int
        Unreadable cache entries, after every fault (must be 0).
    errors : list of str
        The errors the runs raised, one line each, in order.
    seconds : float
    details : dict
    """

    scenario: str
    texts: int
    injected: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    retries: int = 0
    resent: int = 0
    results: int = 0
    lost: int = 0
    corrupt: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lost_rows(proba: np.ndarray | None, reference: np.ndarray) -> int:
    if proba is None or proba.shape != reference.shape:
        return len(reference)
    return int((~(proba == reference).all(axis=1)).sum())


def one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def successes_of(counts: dict[str, int]) -> tuple[int, int]:
    """(answers, answers beyond the first per prompt)."""
    return sum(counts.values()), sum(max(0, n - 1) for n in counts.values())


def tmp_cache(cache: str | None) -> str:
    if cache is not None:
        return str(cache)
    return os.path.join(tempfile.mkdtemp(prefix="skllmprob-faults-"), "completions.sqlite")


def child_env() -> dict[str, str]:
    """The environment of a child process: this checkout's skllmprob/ and tests/ first."""
    env = dict(os.environ)
    paths = [str(ROOT), str(ROOT / "tests")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    return env


# ------------------------------------------------------------------------------------
# A stub server in its own process, to kill and restart


class StubProcess:
    """``python -m skllmprob.testing.openai_stub`` as a child process.

    Parameters
    ----------
    latency : float
        Seconds per answer.
    port : int
        0 picks a free port on the first start; later starts reuse it, so that the
        base URL (part of every cache key) stays the same.
    args : list of str
        More command-line arguments (e.g. ``["--fault", "429,probability=0.1"]``).
    """

    def __init__(self, *, latency: float = 0.0, port: int = 0, args: list[str] = ()) -> None:
        self.latency = latency
        self.port = port
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.base_url = ""

    def start(self) -> StubProcess:
        cmd = [sys.executable, "-m", "skllmprob.testing.openai_stub", "--port", str(self.port)]
        cmd += ["--latency", str(self.latency), *self.args]
        deadline = time.monotonic() + 30
        while True:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=child_env()
            )
            line = self.proc.stdout.readline().strip()
            if line.startswith("http://"):
                break
            self.proc.wait()  # the port is not free again yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"the stub server did not start on port {self.port}")
            time.sleep(0.2)
        self.base_url = line
        self.port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
        return self

    def stats(self) -> dict[str, Any]:
        url = self.base_url.removesuffix("/v1") + "/_stub/stats"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def kill(self) -> None:
        """``SIGKILL``: connections are cut, nothing is answered any more."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> StubProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
