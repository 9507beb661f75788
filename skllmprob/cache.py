"""The persistent completion cache.

Every completion is stored under a key: the SHA-256 of the canonical JSON of
``[KEY_VERSION, identity, settings]`` (the backend's identity, i.e. model, URL and
endpoint but never a key, and the request settings that change the answer),
followed by a newline and the rendered prompt. Calibration settings are not part of
it, so a grid search over them is answered from the cache.

The store is one SQLite file in WAL mode, created readable by its owner only (its
folder too, when the cache creates it). It is safe for several threads and
processes at once:

- every result is committed as soon as it arrives (results that arrive together are
  committed together by a writer thread), so a crash loses only requests in flight;
- a process *claims* the prompts it is about to send, in the same transaction that
  finds them missing; another process that needs them at the same time waits for
  their rows instead of sending them again. A claim whose owner died (same host) or
  stopped refreshing it for ``claim_timeout`` seconds is taken over;
- an entry that cannot be decoded is a miss (counted in ``corrupt``), not a crash;
  a file of a newer schema is refused with :class:`~skllmprob.exceptions.CacheError`.

In front of SQLite a bounded in-process memory layer keeps recently used
completions (they never change once written); :meth:`CompletionCache.clear` in any
process empties it everywhere.

Examples
--------
>>> import tempfile, os
>>> from skllmprob.backends import Completion
>>> import numpy as np
>>> path = os.path.join(tempfile.mkdtemp(), "c.sqlite")
>>> cache = CompletionCache(path)
>>> keys = KeyBuilder({"backend": "x"}, {"top_logprobs": 2})
>>> k = keys("Text: hi\\nAnswer:")
>>> cache.put(k, Completion(("yes", "no"), np.log([0.6, 0.3]), prompt_tokens=5))
>>> cache.get_many([k])[k].tokens
('yes', 'no')
>>> cache.info().entries
1
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sqlite3
import struct
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from .backends.base import Completion
from .exceptions import CacheError

__all__ = [
    "CACHE_SCHEMA_VERSION",
    "KEY_VERSION",
    "CacheInfo",
    "ClaimSession",
    "CompletionCache",
    "KeyBuilder",
    "NullCache",
    "default_cache_path",
    "open_cache",
]

logger = logging.getLogger(__name__)

#: Version of the key derivation: bump it when the meaning of a key changes.
KEY_VERSION = "skllmprob-key-2"
#: Version of the file layout: a file with a higher version is refused.
CACHE_SCHEMA_VERSION = 2

#: Seconds a claim may go without a heartbeat before others take it over.
CLAIM_TIMEOUT = 60.0
#: Seconds between heartbeats of a session's claims.
HEARTBEAT = 5.0
#: Seconds SQLite waits for a lock held by another connection.
BUSY_TIMEOUT = 60.0
#: Default budget of the in-process memory layer (``$SKLLMPROB_CACHE_MEMORY_MB``).
MEMORY_MB = 64

_CHUNK = 5000  # keys per SELECT ... IN (...)

# -- value encoding -----------------------------------------------------------------
# ``data``: a 24-byte header (format, number of tokens, number of answers or 0xFFFF
# for none, prompt/completion/cached tokens), the log-probabilities and the answer
# log-probabilities as little-endian float64. ``tokens``: "s" + tokens joined by NUL,
# or "j" + a JSON list when a token holds a NUL or cannot be written as UTF-8.
_HEAD = struct.Struct("<BxHHxxIIIxxxx")
_FORMAT = 1
_NO_ANSWERS = 0xFFFF
_MAX_COUNT = 0xFFFE
_DECODE_ERRORS = (ValueError, TypeError, struct.error, AttributeError, IndexError)


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


def _default_memory_bytes() -> int:
    env = os.environ.get("SKLLMPROB_CACHE_MEMORY_MB")
    if env:
        try:
            return max(0, int(float(env) * 2**20))
        except ValueError:
            logger.warning("ignoring SKLLMPROB_CACHE_MEMORY_MB=%r: not a number", env)
    return MEMORY_MB * 2**20


def _canonical(obj: Any) -> str:
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as e:
        raise CacheError(
            f"a backend's identity and request settings must be plain JSON values "
            f"(str, int, finite float, bool, None, lists, dicts): {e}"
        ) from e


class KeyBuilder:
    """Cache keys for one backend identity and request settings.

    The key of a prompt is the SHA-256 digest (32 bytes) of the canonical JSON of
    ``[KEY_VERSION, identity, settings]``, a newline, and the prompt in UTF-8. The
    JSON document is self-delimiting, so no two (head, prompt) pairs share a key
    text; the head is serialized once.

    >>> kb = KeyBuilder({"model": "m"}, {"top_logprobs": 5})
    >>> len(kb("hello")), kb("hello") == kb("hello"), kb("hello") == kb("hello!")
    (32, True, False)
    >>> kb.many(["a", "b"]) == [kb("a"), kb("b")]
    True
    """

    def __init__(self, identity: dict[str, Any], settings: dict[str, Any]) -> None:
        self.head = _canonical([KEY_VERSION, identity, settings])
        self._head = self.head.encode("utf-8") + b"\n"

    def __call__(self, prompt: str) -> bytes:
        return hashlib.sha256(self._head + prompt.encode("utf-8", "surrogatepass")).digest()

    def many(self, prompts: Iterable[str]) -> list[bytes]:
        """The keys of many prompts."""
        head, sha = self._head, hashlib.sha256
        return [sha(head + p.encode("utf-8", "surrogatepass")).digest() for p in prompts]


def _completion_factory():
    """A fast constructor for decoded completions.

    The frozen dataclass ``__init__`` sets each field through ``object.__setattr__``;
    filling ``__dict__`` at once is three times faster, which matters when 10,000
    entries are read. Falls back to the normal constructor if ``Completion`` ever
    gains slots or a ``__post_init__``.
    """
    names = [f.name for f in fields(Completion)]
    expected = [
        "tokens",
        "logprobs",
        "answer_logprobs",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
    ]
    if (
        names != expected
        or hasattr(Completion, "__slots__")
        or hasattr(Completion, "__post_init__")
    ):  # pragma: no cover - depends on base.py

        def make(tokens, logprobs, answers, pt, ct, cached):
            return Completion(tokens, logprobs, answers, pt, ct, cached)

        return make
    new = object.__new__

    def make(tokens, logprobs, answers, pt, ct, cached):
        c = new(Completion)
        c.__dict__.update(
            tokens=tokens,
            logprobs=logprobs,
            answer_logprobs=answers,
            prompt_tokens=pt,
            completion_tokens=ct,
            cached_tokens=cached,
        )
        return c

    return make


_make_completion = _completion_factory()


def _encode(c: Completion) -> tuple[bytes, str]:
    """A completion as ``(data, tokens)`` column values."""
    lp = np.ascontiguousarray(c.logprobs, dtype="<f8").ravel()
    tokens = tuple(c.tokens)
    if len(tokens) != lp.size:
        raise ValueError(f"{len(tokens)} tokens but {lp.size} log-probabilities")
    if lp.size > _MAX_COUNT:
        raise ValueError(f"too many tokens to store ({lp.size})")
    if c.answer_logprobs is None:
        m, answers = _NO_ANSWERS, b""
    else:
        a = np.ascontiguousarray(c.answer_logprobs, dtype="<f8").ravel()
        if a.size > _MAX_COUNT:
            raise ValueError(f"too many answers to store ({a.size})")
        m, answers = a.size, a.tobytes()
    usage = (int(c.prompt_tokens), int(c.completion_tokens), int(c.cached_tokens))
    data = _HEAD.pack(_FORMAT, lp.size, m, *(min(max(u, 0), 2**32 - 1) for u in usage))
    text = "s" + "\x00".join(tokens)
    try:
        if any("\x00" in t for t in tokens):
            raise UnicodeError
        text.encode("utf-8")
    except UnicodeError:  # NUL inside a token, or lone surrogates
        text = "j" + json.dumps(list(tokens), ensure_ascii=True)
    return data + lp.tobytes() + answers, text


def _decode(data: bytes, text: str) -> Completion:
    """Inverse of :func:`_encode`; raises on anything inconsistent."""
    fmt, n, m, pt, ct, cached = _HEAD.unpack_from(data)
    if fmt != _FORMAT:
        raise ValueError(f"unknown value format {fmt}")
    end = _HEAD.size + 8 * n
    if len(data) != end + (0 if m == _NO_ANSWERS else 8 * m):
        raise ValueError("value has the wrong length")
    logprobs = np.frombuffer(data, "<f8", n, _HEAD.size)
    answers = None if m == _NO_ANSWERS else np.frombuffer(data, "<f8", m, end)
    tag = text[0]
    if tag == "s":
        tokens = tuple(text[1:].split("\x00")) if n else ()
    elif tag == "j":
        tokens = tuple(json.loads(text[1:]))
        if not all(isinstance(t, str) for t in tokens):
            raise ValueError("tokens are not strings")
    else:
        raise ValueError(f"unknown token format {tag!r}")
    if len(tokens) != n:
        raise ValueError("tokens and log-probabilities differ in length")
    return _make_completion(tokens, logprobs, answers, pt, ct, cached)


# -- statistics ----------------------------------------------------------------------


@dataclass(frozen=True)
class CacheInfo:
    """What a cache holds and what it saved.

    Attributes
    ----------
    path : str or None
        The SQLite file (``None``: ``cache=False``).
    entries : int
        Completions in the file.
    size_bytes : int
        Size of the file and its write-ahead log.
    hits, misses : int
        Prompts this process found in the cache / had to request (since it opened
        the cache or last cleared it).
    saved_tokens : int
        Prompt and completion tokens of this process's hits: what it did not pay for.
    waited : int
        Hits that another process or thread was requesting at the same time: this
        process waited for them instead of sending them again.
    corrupt : int
        Unreadable entries this process met (each was treated as a miss).
    writes : int
        Completions this process wrote.
    memory_entries : int
        Completions held in this process's memory layer.
    total_hits, total_misses, total_saved_tokens : int
        The same counts summed over every process that used the file since it was
        created or cleared.
    """

    path: str | None
    entries: int = 0
    size_bytes: int = 0
    hits: int = 0
    misses: int = 0
    saved_tokens: int = 0
    waited: int = 0
    corrupt: int = 0
    writes: int = 0
    memory_entries: int = 0
    total_hits: int = 0
    total_misses: int = 0
    total_saved_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_COUNTERS = ("hits", "misses", "saved_tokens", "waited", "corrupt", "writes")
_PERSISTED = {"hits": "hits", "misses": "misses", "saved_tokens": "saved_tokens"}


# -- the memory layer ------------------------------------------------------------------


class _Memory:
    """Recently used completions, bounded by an estimate of their size (FIFO).

    Entries are immutable once written, so the only way to become stale is a
    :meth:`CompletionCache.clear`, which bumps a generation number in the file.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.data: dict[bytes, Completion] = {}
        self.nbytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _size(c: Completion) -> int:
        answers = 0 if c.answer_logprobs is None else len(c.answer_logprobs)
        return 400 + 80 * len(c.tokens) + 8 * answers

    def put(self, key: bytes, c: Completion) -> None:
        if self.max_bytes <= 0:
            return
        size = self._size(c)
        with self._lock:
            old = self.data.pop(key, None)
            if old is not None:
                self.nbytes -= self._size(old)
            self.data[key] = c
            self.nbytes += size
            while self.nbytes > self.max_bytes and self.data:
                self.nbytes -= self._size(self.data.pop(next(iter(self.data))))

    def put_many(self, items: Iterable[tuple[bytes, Completion]]) -> None:
        if self.max_bytes <= 0:
            return
        size = self._size
        with self._lock:
            data = self.data
            for key, c in items:
                old = data.pop(key, None)
                if old is not None:
                    self.nbytes -= size(old)
                data[key] = c
                self.nbytes += size(c)
            while self.nbytes > self.max_bytes and data:
                self.nbytes -= size(data.pop(next(iter(data))))

    def clear(self) -> None:
        with self._lock:
            self.data = {}
            self.nbytes = 0


# -- processes and claims -----------------------------------------------------------------

_HOST = socket.gethostname()


def _pid_alive(pid: int) -> bool:
    """Whether a process of this host with this id still runs (not a zombie)."""
    if sys.platform == "win32":  # pragma: no cover - os.kill would terminate it
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # pragma: no cover
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _is_busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


def _retry(fn, *, deadline: float | None = None):
    """Run ``fn``, retrying while SQLite reports a busy or locked database.

    SQLite's busy handler waits for most locks; a few cases (a write lock wanted by
    a connection whose snapshot is stale, WAL recovery) return at once.
    """
    if deadline is None:
        deadline = time.monotonic() + BUSY_TIMEOUT
    delay = 0.005
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if not _is_busy(e) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def _chunks(seq: Sequence, size: int = _CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


# -- the cache -------------------------------------------------------------------------

_INSTANCES: weakref.WeakSet = weakref.WeakSet()
#: Connections inherited through fork: kept referenced, never closed in the child.
_INHERITED: list = []


class CompletionCache:
    """A SQLite file of completions, safe for threads and processes.

    Parameters
    ----------
    path : str or path-like
        The file; its folder is created (owner-only) if missing.
    memory_mb : float, optional
        Budget of the in-process memory layer in MiB (default
        ``$SKLLMPROB_CACHE_MEMORY_MB`` or 64; 0 turns it off).
    claim_timeout : float, default=60.0
        Seconds without a heartbeat after which another process's claim on a
        prompt is taken over (claims of dead processes on this host are taken over
        at once).

    Notes
    -----
    Use :func:`open_cache` to share one instance per file in a process.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        memory_mb: float | None = None,
        claim_timeout: float = CLAIM_TIMEOUT,
    ) -> None:
        self.path = Path(path).expanduser()
        self.claim_timeout = float(claim_timeout)
        self._memory_mb = memory_mb
        self._chunk = 999 - 1
        max_bytes = _default_memory_bytes() if memory_mb is None else int(memory_mb * 2**20)
        self._memory = _Memory(max_bytes)
        self._generation: str | None = None
        self._reset_process_state()
        self._open()
        _INSTANCES.add(self)

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._stats = dict.fromkeys(_COUNTERS, 0)

    def _after_fork(self) -> None:
        # SQLite connections must not be used or closed in a forked child.
        _INHERITED.append(self._local)
        self._reset_process_state()
        self._memory._lock = threading.Lock()

    # -- connections ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        getlimit = getattr(conn, "getlimit", None)  # Python 3.11+
        if getlimit is not None:  # SQLite builds before 3.32 allow 999 parameters
            self._chunk = max(1, min(_CHUNK, getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 1))
        return conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (one per thread and process)."""
        if self._pid != os.getpid():  # pragma: no cover - fork without the hook
            self._after_fork()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @contextlib.contextmanager
    def _write(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``: the write lock is taken first)."""
        conn = self._conn() if conn is None else conn
        _retry(lambda: conn.execute("BEGIN IMMEDIATE"))
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        else:
            try:
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    def _open(self) -> None:
        try:
            folder = self.path.parent
            if not folder.exists():
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
                    os.close(fd)
                except FileExistsError:
                    pass
            conn = self._conn()
            mode = _retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if str(mode).lower() != "wal":  # pragma: no cover - exotic file systems
                logger.warning("the cache %s cannot use WAL mode (%s)", self.path, mode)
            with self._write(conn):
                version = self._check_or_create_schema(conn)
        except CacheError:
            raise
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
        self._schema_version = version

    def _check_or_create_schema(self, conn: sqlite3.Connection) -> int:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise CacheError(
                f"{self.path} is an SQLite file but not a skllmprob completion cache "
                f"(it has the tables {sorted(tables)}). Point cache= at another path."
            )
        version = CACHE_SCHEMA_VERSION
        if "meta" in tables:
            row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            try:
                version = int(row[0])
            except (TypeError, ValueError) as e:
                raise CacheError(
                    f"the completion cache {self.path} has no readable schema version; "
                    "delete it or point cache= at another path."
                ) from e
        if version > CACHE_SCHEMA_VERSION:
            raise CacheError(
                f"the completion cache {self.path} was written by a newer skllmprob "
                f"(schema {version}, this version reads {CACHE_SCHEMA_VERSION}). "
                "Upgrade skllmprob or use another cache path."
            )
        if version < CACHE_SCHEMA_VERSION and "completions" in tables:
            # Schema 1 (development builds) keyed entries differently: they cannot be
            # found any more, so they are dropped.
            logger.warning("dropping the entries of an old cache layout in %s", self.path)
            conn.execute("DROP TABLE completions")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        conn.execute(
            "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
            (str(CACHE_SCHEMA_VERSION),),
        )
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS completions (key BLOB PRIMARY KEY, data BLOB NOT NULL,"
            " tokens TEXT NOT NULL, created REAL NOT NULL) WITHOUT ROWID"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS claims (key BLOB PRIMARY KEY, owner TEXT NOT NULL,"
            " pid INTEGER NOT NULL, host TEXT NOT NULL, heartbeat REAL NOT NULL) WITHOUT ROWID"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL)"
        )
        return CACHE_SCHEMA_VERSION

    # -- reading ---------------------------------------------------------------------

    def _sync_generation(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()
        generation = row[0] if row else None
        if generation != self._generation:
            if self._generation is not None:
                self._memory.clear()
            self._generation = generation

    def _select(
        self, conn: sqlite3.Connection, keys: Sequence[bytes], *, report: bool = True
    ) -> dict[bytes, Completion]:
        """Read and decode the rows of ``keys`` that exist and can be decoded.

        ``report``: count and log unreadable rows (a session's later lookups of the
        same keys do not count them again)."""
        out: dict[bytes, Completion] = {}
        corrupt = 0
        for chunk in _chunks(sorted(keys), self._chunk):
            rows = conn.execute(
                f"SELECT key, data, tokens FROM completions WHERE key IN ({_marks(len(chunk))})",
                chunk,
            ).fetchall()
            for key, data, text in rows:
                try:
                    c = _decode(data, text)
                except _DECODE_ERRORS:
                    corrupt += 1
                    continue
                out[key] = c
        self._memory.put_many(out.items())
        if corrupt and report:
            self._count(corrupt=corrupt)
            logger.warning(
                "%d unreadable entries in the completion cache %s were treated as misses",
                corrupt,
                self.path,
            )
        return out

    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, Completion]:
        """Look up many keys at once; missing or unreadable entries are left out.

        Does not count hits or misses (see :meth:`record`).
        """
        conn = self._conn()
        try:
            self._sync_generation(conn)
        except sqlite3.DatabaseError as e:
            self._unreadable(e)
            return {}
        memget = self._memory.data.get
        out: dict[bytes, Completion] = {}
        rest = []
        for k in keys:
            c = memget(k)
            if c is None:
                rest.append(k)
            else:
                out[k] = c
        if rest:
            try:
                out.update(self._select(conn, list(dict.fromkeys(rest))))
            except sqlite3.DatabaseError as e:
                self._unreadable(e)
        return out

    def _unreadable(self, e: sqlite3.DatabaseError) -> None:
        if isinstance(e, sqlite3.OperationalError) and _is_busy(e):
            raise CacheError(
                f"the completion cache {self.path} stayed locked for {BUSY_TIMEOUT:.0f} s "
                f"({e}); another program holds it. Retry, or use another cache path."
            ) from e
        logger.warning(
            "cannot read the completion cache %s (%s); treating as misses", self.path, e
        )

    # -- writing ---------------------------------------------------------------------

    def _insert(self, conn: sqlite3.Connection, items: Sequence[tuple[bytes, Completion]]) -> None:
        now = time.time()
        conn.executemany(
            "INSERT OR REPLACE INTO completions VALUES (?, ?, ?, ?)",
            [(k, *_encode(c), now) for k, c in items],
        )

    def put(self, key: bytes, completion: Completion) -> None:
        """Store one completion (committed at once)."""
        self.put_many([(key, completion)])

    def put_many(self, items: Iterable[tuple[bytes, Completion]]) -> None:
        """Store completions in one transaction."""
        items = list(items)
        if not items:
            return
        with self._write() as conn:
            self._insert(conn, items)
        self._memory.put_many(items)
        self._count(writes=len(items))

    def session(self) -> ClaimSession:
        """A :class:`ClaimSession` to fetch missing completions in coordination with
        other threads and processes."""
        return ClaimSession(self)

    # -- statistics --------------------------------------------------------------------

    def _count(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                self._stats[name] += n

    def record(self, *, hits: int = 0, misses: int = 0, saved_tokens: int = 0, waited: int = 0):
        """Count lookups: in this process, and in the file's totals."""
        self._count(hits=hits, misses=misses, saved_tokens=saved_tokens, waited=waited)
        if not (hits or misses):
            return
        try:
            with self._write() as conn:
                self._add_totals(conn, hits=hits, misses=misses, saved_tokens=saved_tokens)
        except sqlite3.Error as e:  # statistics never break a prediction
            logger.debug("could not update the cache statistics: %s", e)

    @staticmethod
    def _add_totals(conn: sqlite3.Connection, **counts: int) -> None:
        conn.executemany(
            "INSERT INTO stats VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            [(name, n, n) for name, n in counts.items() if n],
        )

    def info(self) -> CacheInfo:
        """Entries in the file, this process's counts and the file's totals."""
        conn = self._conn()
        try:
            n = conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
            totals = dict(conn.execute("SELECT name, value FROM stats").fetchall())
        except sqlite3.DatabaseError as e:
            raise CacheError(f"cannot read the completion cache {self.path}: {e}") from e
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += os.path.getsize(str(self.path) + suffix)
        with self._lock:
            stats = dict(self._stats)
        return CacheInfo(
            path=str(self.path),
            entries=int(n),
            size_bytes=size,
            memory_entries=len(self._memory.data),
            total_hits=int(totals.get("hits", 0)),
            total_misses=int(totals.get("misses", 0)),
            total_saved_tokens=int(totals.get("saved_tokens", 0)),
            **stats,
        )

    def clear(self) -> None:
        """Delete every entry and the statistics (in every process using the file)."""
        with self._write() as conn:
            conn.execute("DELETE FROM completions")
            conn.execute("DELETE FROM stats")
            self._drop_dead_claims(conn)
            conn.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE name = 'generation'"
            )
        self._memory.clear()
        with self._lock:
            self._stats = dict.fromkeys(_COUNTERS, 0)
        try:  # give the space back when nobody else is reading
            self._conn().execute("VACUUM")
        except sqlite3.OperationalError as e:
            logger.debug("VACUUM after clear skipped: %s", e)

    def _drop_dead_claims(self, conn: sqlite3.Connection) -> None:
        """Forget claims left by killed processes (they would be taken over anyway)."""
        now = time.time()
        dead = [
            (owner,)
            for owner, pid, host, heartbeat in conn.execute(
                "SELECT owner, MAX(pid), MAX(host), MAX(heartbeat) FROM claims GROUP BY owner"
            ).fetchall()
            if now - heartbeat > self.claim_timeout or (host == _HOST and not _pid_alive(pid))
        ]
        conn.executemany("DELETE FROM claims WHERE owner = ?", dead)

    def __repr__(self) -> str:
        return f"CompletionCache({str(self.path)!r})"

    def __reduce__(self):
        return (_reopen, (str(self.path), self._memory_mb, self.claim_timeout))


def _reopen(path: str, memory_mb: float | None, claim_timeout: float) -> CompletionCache:
    cache = open_cache(path)
    if cache.claim_timeout != claim_timeout or cache._memory_mb != memory_mb:
        return CompletionCache(path, memory_mb=memory_mb, claim_timeout=claim_timeout)
    return cache


class ClaimSession:
    """One fetch's coordination with other threads and processes.

    :meth:`claim` finds which missing keys this session should request and which
    another live session is already requesting; :meth:`submit` queues a result for
    the writer thread, which commits whatever has arrived in one transaction and
    drops the matching claims; :meth:`wait` polls for keys claimed by others;
    :meth:`close` flushes the writer and releases the claims left (failed requests),
    so that others take them over at once.

    A session whose process was killed leaves its claims: on the same host they are
    taken over as soon as the owner's pid is gone, elsewhere after
    ``cache.claim_timeout`` seconds without heartbeat.
    """

    def __init__(self, cache: CompletionCache) -> None:
        self.cache = cache
        self.pid = os.getpid()
        self.owner = f"{_HOST}:{self.pid}:{uuid.uuid4().hex[:16]}"
        self.waited = 0
        self.corrupt = 0
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._queue: list[tuple[bytes, Completion]] = []
        self._closing = False
        self._holding = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ClaimSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- claiming ----------------------------------------------------------------------

    def _stale(self, pid: int, host: str, heartbeat: float, now: float, alive: dict) -> bool:
        if now - heartbeat > self.cache.claim_timeout:
            return True
        if host != _HOST:
            return False
        if pid not in alive:
            alive[pid] = _pid_alive(pid)
        return not alive[pid]

    def claim(self, keys: Sequence[bytes]) -> tuple[dict[bytes, Completion], list, list]:
        """Claim the keys nobody requests yet, in one transaction with the lookup.

        Returns
        -------
        found : dict
            Keys whose entry exists by now.
        mine : list
            Keys this session must request.
        theirs : list
            Keys a live session elsewhere is requesting.
        """
        cache = self.cache
        conn = cache._conn()
        now = time.time()
        alive: dict[int, bool] = {}
        theirs: set[bytes] = set()
        try:
            with cache._write(conn):
                found = cache._select(conn, keys, report=False)
                rest = [k for k in keys if k not in found]
                conn.executemany(
                    "INSERT OR IGNORE INTO claims VALUES (?, ?, ?, ?, ?)",
                    [(k, self.owner, self.pid, _HOST, now) for k in rest],
                )
                takeover = []
                for chunk in _chunks(rest, cache._chunk):
                    rows = conn.execute(
                        "SELECT key, owner, pid, host, heartbeat FROM claims"
                        f" WHERE key IN ({_marks(len(chunk))}) AND owner != ?",
                        [*chunk, self.owner],
                    ).fetchall()
                    for key, owner, pid, host, heartbeat in rows:
                        if self._stale(pid, host, heartbeat, now, alive):
                            takeover.append((self.owner, self.pid, _HOST, now, key, owner))
                        else:
                            theirs.add(key)
                conn.executemany(
                    "UPDATE claims SET owner = ?, pid = ?, host = ?, heartbeat = ?"
                    " WHERE key = ? AND owner = ?",
                    takeover,
                )
        except sqlite3.DatabaseError as e:
            # Without coordination every missing key is ours: correct, maybe paid twice.
            logger.warning("cannot claim prompts in the cache %s: %s", cache.path, e)
            return {}, list(keys), []
        mine = [k for k in rest if k not in theirs]
        if mine:
            self._holding = True
            self._start_writer()
        return found, mine, [k for k in rest if k in theirs]

    def wait(self, keys: Sequence[bytes], *, poll: float = 0.005) -> dict[bytes, Completion]:
        """Wait until every key is written or one is no longer claimed by a live
        session (then :meth:`claim` it again). Returns the entries found."""
        cache = self.cache
        conn = cache._conn()
        pending = list(keys)
        found: dict[bytes, Completion] = {}
        delay = poll
        while pending:
            alive: dict[int, bool] = {}
            try:
                new = cache._select(conn, pending, report=False)
                found.update(new)
                pending = [k for k in pending if k not in new]
                if not pending:
                    break
                now = time.time()
                claimed = 0
                for chunk in _chunks(pending, cache._chunk):
                    rows = conn.execute(
                        "SELECT pid, host, heartbeat FROM claims"
                        f" WHERE key IN ({_marks(len(chunk))})",
                        chunk,
                    ).fetchall()
                    for pid, host, heartbeat in rows:
                        if not self._stale(pid, host, heartbeat, now, alive):
                            claimed += 1
                if claimed < len(pending):
                    break  # released or stale: the caller claims them again
            except sqlite3.DatabaseError as e:
                logger.warning("cannot read claims in the cache %s: %s", cache.path, e)
                break
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)
        self.waited += len(found)
        return found

    # -- writing ------------------------------------------------------------------------

    def submit(self, key: bytes, completion: Completion) -> None:
        """Queue a result for the writer thread (thread-safe, returns at once)."""
        self.cache._memory.put(key, completion)
        with self._cond:
            self._queue.append((key, completion))
            self._cond.notify()
        if self._thread is None:
            self._start_writer()

    def _start_writer(self) -> None:
        with self._cond:
            if self._thread is not None or self._closing:
                return
            self._thread = threading.Thread(
                target=self._writer, name="skllmprob-cache-writer", daemon=True
            )
            self._thread.start()

    def _writer(self) -> None:
        cache = self.cache
        last_beat = time.monotonic()
        try:
            conn = cache._conn()
        except BaseException as e:  # pragma: no cover - the file vanished
            self.error = e
            conn = None
        while True:
            with self._cond:
                if not self._queue and not self._closing:
                    self._cond.wait(timeout=HEARTBEAT)
                batch, self._queue = self._queue, []
                closing = self._closing
            beat = self._holding and time.monotonic() - last_beat >= HEARTBEAT / 2
            if conn is not None and (batch or beat):
                try:
                    self._flush(conn, batch, beat)
                    last_beat = time.monotonic() if beat else last_beat
                except Exception as e:  # a full disk must not lose the answers themselves
                    if self.error is None:
                        self.error = e
                    logger.warning("could not write to the completion cache: %s", e)
            if closing and not batch:
                with self._cond:
                    if not self._queue:
                        return

    def _flush(self, conn: sqlite3.Connection, batch: list, beat: bool) -> None:
        cache = self.cache
        with cache._write(conn):
            if batch:
                cache._insert(conn, batch)
                conn.executemany(
                    "DELETE FROM claims WHERE key = ? AND owner = ?",
                    [(k, self.owner) for k, _ in batch],
                )
            if beat:
                conn.execute(
                    "UPDATE claims SET heartbeat = ? WHERE owner = ?", (time.time(), self.owner)
                )
        cache._count(writes=len(batch))

    def close(self) -> BaseException | None:
        """Flush queued results, release claims left; returns the first write error."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        if self._holding:
            try:
                with self.cache._write() as conn:
                    conn.execute("DELETE FROM claims WHERE owner = ?", (self.owner,))
            except sqlite3.Error as e:
                logger.warning("could not release claims in the completion cache: %s", e)
            self._holding = False
        return self.error


class _NullSession:
    """The session of :class:`NullCache`: every key is ours, nothing is stored."""

    waited = 0
    error = None

    def __enter__(self) -> _NullSession:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def claim(self, keys):
        return {}, list(keys), []

    def wait(self, keys, **kwargs):  # pragma: no cover - claim never returns theirs
        return {}

    def submit(self, key, completion) -> None:
        return None

    def close(self) -> None:
        return None


class NullCache:
    """The cache of ``cache=False``: stores nothing."""

    path = None

    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, Completion]:
        return {}

    def put(self, key: bytes, completion: Completion) -> None:
        return None

    def put_many(self, items) -> None:
        return None

    def session(self) -> _NullSession:
        return _NullSession()

    def record(self, **counts: int) -> None:
        return None

    def info(self) -> CacheInfo:
        return CacheInfo(path=None)

    def clear(self) -> None:
        return None


_OPEN: dict[str, CompletionCache] = {}
_OPEN_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    global _OPEN_LOCK
    _OPEN_LOCK = threading.Lock()
    for cache in list(_INSTANCES):
        cache._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def open_cache(cache: bool | str | os.PathLike) -> CompletionCache | NullCache:
    """The process-wide cache object for a ``cache=`` setting.

    >>> open_cache(False).info().path is None
    True
    """
    if cache is False:
        return NullCache()
    if isinstance(cache, str) and "://" in cache:  # a URL: PostgreSQL, or a clear error
        from .pgcache import open_url

        return open_url(cache)
    path = default_cache_path() if cache is True else Path(cache).expanduser()
    key = str(path.resolve())
    found = _OPEN.get(key)
    if found is not None:
        return found
    with _OPEN_LOCK:
        found = _OPEN.get(key)
        if found is None:
            found = _OPEN[key] = CompletionCache(path)
        return found
