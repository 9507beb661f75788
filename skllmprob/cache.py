"""The persistent completion cache.

Every completion is stored under a key that is a versioned SHA-256 of canonical JSON:
the backend's identity (model, URL, endpoint: never a key), the request settings
that change the answer, and the rendered prompt. Calibration settings are not part
of it, so a grid search over them is answered from the cache.

The store is one SQLite file in WAL mode, safe for several threads and processes;
its file is readable by its owner only.

Examples
--------
>>> import tempfile, os
>>> from skllmprob.backends import Completion
>>> import numpy as np
>>> path = os.path.join(tempfile.mkdtemp(), "c.sqlite")
>>> cache = CompletionCache(path)
>>> keys = KeyBuilder({"backend": "x"}, {"top_logprobs": 2})
>>> k = keys("Text: hi\\nAnswer:")
>>> cache.put(k, Completion(("yes", "no"), np.log([0.6, 0.3])))
>>> cache.get_many([k])[k].tokens
('yes', 'no')
>>> cache.info()["entries"]
1
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backends.base import Completion
from .exceptions import CacheError

__all__ = [
    "CACHE_SCHEMA_VERSION",
    "CompletionCache",
    "KeyBuilder",
    "NullCache",
    "default_cache_path",
    "open_cache",
]

#: Version of the key derivation: bump it when the meaning of a key changes.
KEY_VERSION = "skllmprob-key-1"
#: Version of the file layout: a file with a higher version is refused.
CACHE_SCHEMA_VERSION = 1

_CHUNK = 500  # keys per SELECT ... IN (...)


def default_cache_path() -> Path:
    """Where ``cache=True`` keeps its file.

    ``$SKLLMPROB_CACHE_DIR`` if set, else the platform's user cache folder
    (``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS,
    ``%LOCALAPPDATA%`` on Windows), in a folder ``skllmprob``.
    """
    env = os.environ.get("SKLLMPROB_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "completions.sqlite"
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "skllmprob" / "completions.sqlite"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class KeyBuilder:
    """Cache keys for one backend identity and request settings.

    The key of a prompt is the SHA-256 of the canonical JSON of
    ``[KEY_VERSION, identity, settings, prompt]``; the constant head is serialized
    once.

    >>> kb = KeyBuilder({"model": "m"}, {"top_logprobs": 5})
    >>> len(kb("hello")), kb("hello") == kb("hello"), kb("hello") == kb("hello!")
    (64, True, False)
    """

    def __init__(self, identity: dict[str, Any], settings: dict[str, Any]) -> None:
        head = _canonical([KEY_VERSION, identity, settings])
        self._head = head[:-1] + ","

    def __call__(self, prompt: str) -> str:
        doc = self._head + _canonical(prompt) + "]"
        return hashlib.sha256(doc.encode("utf-8", "surrogatepass")).hexdigest()


def _encode(c: Completion) -> tuple:
    answers = None if c.answer_logprobs is None else np.asarray(c.answer_logprobs, "<f8").tobytes()
    return (
        json.dumps(list(c.tokens), ensure_ascii=False),
        np.asarray(c.logprobs, "<f8").tobytes(),
        answers,
        int(c.prompt_tokens),
        int(c.completion_tokens),
        int(c.cached_tokens),
    )


def _decode(row: Sequence) -> Completion:
    tokens_json, lp, answers, pt, ct, cached = row
    tokens = tuple(json.loads(tokens_json))
    logprobs = np.frombuffer(lp, dtype="<f8")
    if len(tokens) != len(logprobs) or not all(isinstance(t, str) for t in tokens):
        raise ValueError("tokens and log-probabilities differ in length")
    return Completion(
        tokens=tokens,
        logprobs=logprobs,
        answer_logprobs=None if answers is None else np.frombuffer(answers, dtype="<f8"),
        prompt_tokens=int(pt),
        completion_tokens=int(ct),
        cached_tokens=int(cached),
    )


class NullCache:
    """The cache of ``cache=False``: stores nothing."""

    path = None

    def get_many(self, keys: Iterable[str]) -> dict[str, Completion]:
        return {}

    def put(self, key: str, completion: Completion) -> None:
        return None

    def info(self) -> dict[str, Any]:
        return {"path": None, "entries": 0}

    def clear(self) -> None:
        return None


class CompletionCache:
    """A SQLite file of completions, safe for threads and processes.

    Parameters
    ----------
    path : str or path-like
        The file; its folder is created (owner-only) if missing.

    Notes
    -----
    Use :func:`open_cache` to share one instance per file in a process.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        self._local = threading.local()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.corrupt = 0
        self._open()

    # -- connection handling -------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = self._connect()
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
                os.close(fd)
            conn = self._conn()
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # pragma: no cover - exotic file systems
                conn.execute("PRAGMA journal_mode = DELETE")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                (str(CACHE_SCHEMA_VERSION),),
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS completions ("
                " key TEXT PRIMARY KEY, tokens TEXT NOT NULL, logprobs BLOB NOT NULL,"
                " answers BLOB, prompt_tokens INTEGER NOT NULL DEFAULT 0,"
                " completion_tokens INTEGER NOT NULL DEFAULT 0,"
                " cached_tokens INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL)"
            )
            version = conn.execute(
                "SELECT value FROM meta WHERE name = 'schema_version'"
            ).fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise CacheError(
                f"cannot open the completion cache {self.path}: {e}. Delete the file or "
                "point cache= at another path."
            ) from e
        except OSError as e:
            raise CacheError(
                f"cannot create the completion cache {self.path}: {e}. Set cache= to a "
                "writable path or cache=False."
            ) from e
        if int(version) > CACHE_SCHEMA_VERSION:
            raise CacheError(
                f"the completion cache {self.path} was written by a newer skllmprob "
                f"(schema {version}, this version reads {CACHE_SCHEMA_VERSION}). "
                "Upgrade skllmprob or use another cache path."
            )

    # -- reading and writing -------------------------------------------------------

    def get_many(self, keys: Iterable[str]) -> dict[str, Completion]:
        """Look up many keys at once; missing or unreadable entries are left out."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, Completion] = {}
        conn = self._conn()
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                "SELECT key, tokens, logprobs, answers, prompt_tokens, completion_tokens,"
                f" cached_tokens FROM completions WHERE key IN ({marks})",
                chunk,
            ).fetchall()
            for row in rows:
                try:
                    out[row[0]] = _decode(row[1:])
                except (ValueError, TypeError):
                    with self._lock:
                        self.corrupt += 1
        with self._lock:
            self.hits += len(out)
            self.misses += len(keys) - len(out)
        return out

    def put(self, key: str, completion: Completion) -> None:
        """Store one completion (committed at once)."""
        self._conn().execute(
            "INSERT OR REPLACE INTO completions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, *_encode(completion), time.time()),
        )
        with self._lock:
            self.writes += 1

    def info(self) -> dict[str, Any]:
        """Entries in the file and this process's hits, misses and writes."""
        n = self._conn().execute("SELECT COUNT(*) FROM completions").fetchone()[0]
        return {
            "path": str(self.path),
            "entries": int(n),
            "hits": self.hits,
            "misses": self.misses,
            "writes": self.writes,
            "corrupt": self.corrupt,
        }

    def clear(self) -> None:
        """Delete every entry."""
        self._conn().execute("DELETE FROM completions")

    def __repr__(self) -> str:
        return f"CompletionCache({str(self.path)!r})"

    def __getstate__(self) -> dict:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])


_OPEN: dict[tuple[int, str], CompletionCache] = {}
_OPEN_LOCK = threading.Lock()


def open_cache(cache: bool | str | os.PathLike) -> CompletionCache | NullCache:
    """The process-wide cache object for a ``cache=`` setting."""
    if cache is False:
        return NullCache()
    path = default_cache_path() if cache is True else Path(cache).expanduser()
    key = (os.getpid(), str(path.resolve()))
    with _OPEN_LOCK:
        found = _OPEN.get(key)
        if found is None:
            found = _OPEN[key] = CompletionCache(path)
        return found
