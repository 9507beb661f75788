"""A completion cache in PostgreSQL, shared by the processes of many machines.

``cache="postgresql://user@host:5432/db"`` (or ``postgres://``; any libpq URL)
holds the entries of the SQLite cache of :mod:`skllmprob.cache` (same keys, same
value encoding) with the same guarantees across machines: one request per unique
prompt (leased claims, :mod:`skllmprob.cache.pgclaims`), write-once answers committed as
they arrive, batched reads (``WHERE key = ANY(%s)``) behind the in-process memory
layer, statistics, :meth:`PostgresCache.clear` (for every process) and a schema
version (a newer layout is refused with :class:`~skllmprob.exceptions.CacheError`).

The tables ``skllmprob_meta``, ``skllmprob_completions``, ``skllmprob_claims`` and
``skllmprob_stats`` live in the connection's schema (another one:
``?options=-csearch_path%3Dmyschema``). The URL's password never appears in a repr,
a pickle, a log or an error message: a pickled cache reconnects with libpq's
``$PGPASSWORD`` or ``~/.pgpass`` of the machine that unpickles it. Each process has
its own connections (a forked child opens new ones).

Needs psycopg 3: ``pip install "skllmprob[postgres]"``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .._secrets import mask_url
from ..backends.base import Completion
from ..exceptions import CacheError, ConfigurationError
from .codec import Decoder as _Decoder
from .codec import encode as _encode
from .codec import gc_paused as _gc_paused
from .memory import MemoryLayer as _Memory
from .memory import default_memory_bytes as _default_memory_bytes
from .pgclaims import _DEAD_CLAIMS, PgClaimSession, _psycopg
from .stats import CacheInfo, in_worker

__all__ = [
    "PG_SCHEMA_VERSION",
    "SCHEMES",
    "PgClaimSession",
    "PostgresCache",
    "is_postgres_url",
    "open_postgres",
    "open_url",
]

logger = logging.getLogger(__name__)

#: URL schemes of the PostgreSQL cache.
SCHEMES = ("postgresql", "postgres")
#: Version of the table layout: a database with a higher version is refused.
PG_SCHEMA_VERSION = 1
#: Seconds a claim lasts without renewal.
CLAIM_TIMEOUT = 60.0
#: Seconds between statistics writes of calls whose every prompt was a hit.
STATS_EVERY = 5.0
_CHUNK = 10_000  # keys per ``= ANY(%s)``
_LOCK_ID = 0x736B6C6C6D  # advisory lock serializing the schema creation

_TABLES = (
    "CREATE TABLE IF NOT EXISTS skllmprob_meta (name text PRIMARY KEY, value text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS skllmprob_completions (key bytea PRIMARY KEY,"
    " data bytea NOT NULL, tokens bytea NOT NULL, created timestamptz NOT NULL DEFAULT now())",
    "CREATE UNLOGGED TABLE IF NOT EXISTS skllmprob_claims (key bytea PRIMARY KEY,"
    " owner text NOT NULL, backend_pid integer NOT NULL, expires timestamptz NOT NULL)",
    "CREATE TABLE IF NOT EXISTS skllmprob_stats (name text PRIMARY KEY, value bigint NOT NULL)",
)
_COUNTERS = ("hits", "misses", "saved_tokens", "waited", "corrupt", "writes")
_TOTALS = ("hits", "misses", "saved_tokens")


def is_postgres_url(value: object) -> bool:
    """Whether a ``cache=`` value is a PostgreSQL URL.

    >>> is_postgres_url("postgresql://app@db/skllm"), is_postgres_url("c.sqlite")
    (True, False)
    """
    return isinstance(value, str) and value.partition("://")[0].lower() in SCHEMES


def _without_password(url: str) -> str:
    """``url`` without its password (in the user part or a ``password=`` parameter).

    >>> _without_password("postgresql://app:s3cret@db:5432/x?password=s3cret&sslmode=require")
    'postgresql://app@db:5432/x?sslmode=require'
    """
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    netloc = f"{userinfo.split(':', 1)[0]}@{hosts}" if at else parts.netloc
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))


def _passwords(url: str) -> list[str]:
    """The password(s) written in ``url``, raw and percent-decoded."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    found = [userinfo.split(":", 1)[1]] if at and ":" in userinfo else []
    found += [v for k, v in parse_qsl(parts.query) if k == "password"]
    return [p for raw in found if raw for p in {raw, unquote(raw)}]


class PostgresCache:
    """A PostgreSQL database of completions, safe for many processes and machines.

    Parameters
    ----------
    url : str
        A libpq URL, ``postgresql://user[:password]@host[:port]/dbname[?...]``.
    memory_mb : float, optional
        Budget of the in-process memory layer in MiB (default
        ``$SKLLMPROB_CACHE_MEMORY_MB`` or 64; 0 turns it off).
    claim_timeout : float, default=60.0
        Seconds a claim on a prompt lasts without renewal; a claim whose
        database session is gone is taken over at once.

    Notes
    -----
    Use :func:`open_postgres` (or ``cache="postgresql://..."``) to share one instance
    per URL in a process.
    """

    def __init__(
        self, url: str, *, memory_mb: float | None = None, claim_timeout: float = CLAIM_TIMEOUT
    ) -> None:
        if not is_postgres_url(url):
            raise CacheError(f"not a PostgreSQL URL: {mask_url(str(url))!r}")
        self._url = url
        self._secrets = _passwords(url)
        self.path = _without_password(url)
        self.claim_timeout = float(claim_timeout)
        self._memory_mb = memory_mb
        max_bytes = _default_memory_bytes() if memory_mb is None else int(memory_mb * 2**20)
        self._memory, self._decoder = _Memory(max_bytes), _Decoder()
        self._generation: str | None = None
        self._reset_process_state()
        with self._connection("open") as conn:
            self._check_or_create_schema(conn)
        _INSTANCES.add(self)

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle: list = []
        weakref.finalize(self, _close_idle, self._idle, self._pid)
        self._stats = dict.fromkeys(_COUNTERS, 0)
        self._pending = dict.fromkeys(_TOTALS, 0)
        self._flushed = time.monotonic()

    def _after_fork(self) -> None:
        # The parent's connections are never used (nor closed) in a forked child.
        _INHERITED.append(self._idle)
        self._reset_process_state()
        self._memory._lock = threading.Lock()

    # -- connections and errors -----------------------------------------------------

    def scrub(self, text: str) -> str:
        """``text`` with the URL's password masked."""
        text = mask_url(text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _error(self, doing: str, e: BaseException) -> CacheError:
        hint = ""
        if "password" in str(e).lower() and not self._secrets:
            hint = (
                " A password is never pickled: set $PGPASSWORD or a ~/.pgpass file on "
                "this machine (or pass the URL with its password in this process)."
            )
        return CacheError(
            f"cannot {doing} the completion cache {self.path}: {self.scrub(str(e))}{hint}"
        )

    def _connect(self):
        psycopg = _psycopg()
        params = psycopg.conninfo.conninfo_to_dict(self._url)
        extra = {} if "connect_timeout" in params else {"connect_timeout": 10}
        return psycopg.connect(self._url, autocommit=True, **extra)

    @contextlib.contextmanager
    def _borrow(self) -> Iterator[Any]:
        """A connection of this process, given back to the pool afterwards."""
        if self._pid != os.getpid():  # pragma: no cover - fork without the hook
            self._after_fork()
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None or conn.closed:
            conn = self._connect()
        try:
            yield conn
        finally:
            if conn.broken or conn.closed:
                with contextlib.suppress(Exception):
                    conn.close()
            else:
                with self._lock:
                    self._idle.append(conn)

    @contextlib.contextmanager
    def _connection(self, doing: str) -> Iterator[Any]:
        """:meth:`_borrow`, with database errors raised as :class:`CacheError`."""
        psycopg = _psycopg()
        try:
            with self._borrow() as conn:
                yield conn
        except psycopg.Error as e:
            raise self._error(doing, e) from None

    def _check_or_create_schema(self, conn) -> None:
        version = self._version(conn)
        if version == PG_SCHEMA_VERSION:
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            version = self._version(conn)
            if version is not None and version > PG_SCHEMA_VERSION:
                raise CacheError(
                    f"the completion cache {self.path} was written by a newer skllmprob "
                    f"(PostgreSQL schema {version}, this version reads {PG_SCHEMA_VERSION})."
                    " Upgrade skllmprob or use another database."
                )
            for sql in _TABLES:
                conn.execute(sql)
            conn.execute(
                "INSERT INTO skllmprob_meta VALUES ('schema_version', %s)"
                " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                (str(PG_SCHEMA_VERSION),),
            )
            conn.execute(
                "INSERT INTO skllmprob_meta VALUES ('generation', '0') ON CONFLICT DO NOTHING"
            )

    def _version(self, conn) -> int | None:
        if conn.execute("SELECT to_regclass('skllmprob_meta')").fetchone()[0] is None:
            return None
        row = conn.execute(
            "SELECT value FROM skllmprob_meta WHERE name = 'schema_version'"
        ).fetchone()
        try:
            return None if row is None else int(row[0])
        except ValueError as e:
            raise CacheError(
                f"the completion cache {self.path} has no readable schema version; "
                "drop its skllmprob_* tables or use another database."
            ) from e

    # -- reading ----------------------------------------------------------------------

    def _select(self, conn, keys: Sequence[bytes], *, report: bool = True) -> dict:
        """Read and decode the rows of ``keys`` that exist and can be decoded;
        unreadable rows are deleted (they are written again when requested)."""
        rows, keys = [], list(keys)
        with _gc_paused():  # many new objects, no cycles (see codec.gc_paused)
            for start in range(0, len(keys), _CHUNK):
                rows += conn.execute(
                    "SELECT key, data, tokens FROM skllmprob_completions WHERE key = ANY(%s)",
                    (keys[start : start + _CHUNK],),
                    binary=True,
                ).fetchall()
            out, corrupt = self._decoder.many([(bytes(k), bytes(d), bytes(t)) for k, d, t in rows])
            del rows
        self._memory.put_many(out)
        if corrupt:
            conn.execute("DELETE FROM skllmprob_completions WHERE key = ANY(%s)", (corrupt,))
            if report:
                self._count(corrupt=len(corrupt))
                logger.warning(
                    "%d unreadable entries in the completion cache %s were treated as misses",
                    len(corrupt),
                    self.path,
                )
        return out

    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, Completion]:
        """Look up many keys at once; missing or unreadable entries are left out.

        Does not count hits or misses (see :meth:`record`).
        """
        with self._connection("read") as conn:
            row = conn.execute(
                "SELECT value FROM skllmprob_meta WHERE name = 'generation'"
            ).fetchone()
            generation = row[0] if row else None
            if generation != self._generation:
                if self._generation is not None:
                    self._memory.clear()
                self._generation = generation
            keys = list(keys)
            held = self._memory.data.get
            out = {k: c for k in keys if (c := held(k)) is not None}
            if len(out) < len(keys):
                out.update(self._select(conn, [k for k in dict.fromkeys(keys) if k not in out]))
        return out

    # -- writing ----------------------------------------------------------------------

    @staticmethod
    def _insert(conn, items: Sequence[tuple[bytes, Completion]]) -> None:
        encoded = [(k, *_encode(c)) for k, c in items]
        conn.execute(
            "INSERT INTO skllmprob_completions (key, data, tokens)"
            " SELECT * FROM unnest(%s::bytea[], %s::bytea[], %s::bytea[])"
            " ON CONFLICT (key) DO NOTHING",
            (
                [k for k, _, _ in encoded],
                [d for _, d, _ in encoded],
                [t.encode("utf-8") for _, _, t in encoded],
            ),
        )

    def put(self, key: bytes, completion: Completion) -> None:
        """Store one completion (committed at once)."""
        self.put_many(((key, completion),))

    def put_many(self, items: Iterable[tuple[bytes, Completion]]) -> None:
        """Store completions in one transaction (an existing entry is kept)."""
        batch = list(items)
        if batch:
            with self._connection("write to") as conn:
                self._insert(conn, batch)
            self._memory.put_many(batch)
            self._count(writes=len(batch))

    def session(self) -> PgClaimSession:
        """A new :class:`PgClaimSession` (one per fetch)."""
        return PgClaimSession(self)

    # -- statistics -------------------------------------------------------------------

    def _count(self, **counts: int) -> None:
        with self._lock:
            self._stats.update({k: self._stats[k] + n for k, n in counts.items()})

    def record(self, *, hits: int = 0, misses: int = 0, saved_tokens: int = 0, waited: int = 0):
        """Count lookups in this process; the database's totals are updated by calls
        that sent requests or ran in a worker process, and at most every few
        seconds by the others."""
        self._count(hits=hits, misses=misses, saved_tokens=saved_tokens, waited=waited)
        with self._lock:
            for name, n in (("hits", hits), ("misses", misses), ("saved_tokens", saved_tokens)):
                self._pending[name] += n
            due = misses > 0 or time.monotonic() - self._flushed >= STATS_EVERY or in_worker()
        if due:
            self._flush_totals()

    def _flush_totals(self) -> None:
        with self._lock:
            pending = {k: v for k, v in self._pending.items() if v}
            self._pending = dict.fromkeys(_TOTALS, 0)
            self._flushed = time.monotonic()
        if not pending:
            return
        try:
            with self._borrow() as conn:
                conn.execute(
                    "INSERT INTO skllmprob_stats SELECT * FROM unnest(%s::text[], %s::bigint[])"
                    " ON CONFLICT (name) DO UPDATE SET value = skllmprob_stats.value"
                    " + EXCLUDED.value",
                    (list(pending), list(pending.values())),
                )
        except Exception as e:  # statistics never break a prediction
            logger.debug("could not update the cache statistics: %s", self.scrub(str(e)))

    def info(self) -> CacheInfo:
        """Entries in the database, this process's counts and the database's totals."""
        self._flush_totals()
        with self._connection("read") as conn:
            n, size = conn.execute(
                "SELECT (SELECT count(*) FROM skllmprob_completions),"
                " pg_total_relation_size('skllmprob_completions')"
            ).fetchone()
            totals = dict(conn.execute("SELECT name, value FROM skllmprob_stats").fetchall())
        with self._lock:
            stats = dict(self._stats)
        return CacheInfo(
            path=self.path,
            entries=int(n),
            size_bytes=int(size),
            memory_entries=len(self._memory.data),
            total_hits=int(totals.get("hits", 0)),
            total_misses=int(totals.get("misses", 0)),
            total_saved_tokens=int(totals.get("saved_tokens", 0)),
            **stats,
        )

    def clear(self) -> None:
        """Delete every entry and the statistics (in every process using the database)."""
        with self._connection("clear") as conn, conn.transaction():
            conn.execute("DELETE FROM skllmprob_completions")
            conn.execute("DELETE FROM skllmprob_stats")
            conn.execute(_DEAD_CLAIMS)
            conn.execute(
                "UPDATE skllmprob_meta SET value = (value::bigint + 1)::text"
                " WHERE name = 'generation'"
            )
        self._memory.clear()
        with self._lock:
            self._stats = dict.fromkeys(_COUNTERS, 0)
            self._pending = dict.fromkeys(_TOTALS, 0)

    def close(self) -> None:
        """Close this process's idle connections (they reopen when needed)."""
        with self._lock:
            _close_idle(self._idle, self._pid)

    def __repr__(self) -> str:
        return f"PostgresCache({self.path!r})"

    def __reduce__(self):
        return (_reopen, (_without_password(self._url), self._memory_mb, self.claim_timeout))


def _close_idle(conns: list, pid: int) -> None:
    """Close the idle connections of ``conns`` if they belong to this process."""
    if pid != os.getpid():
        return
    idle = list(conns)
    conns.clear()
    for conn in idle:
        with contextlib.suppress(Exception):
            conn.close()


def _reopen(url: str, memory_mb: float | None, claim_timeout: float) -> PostgresCache:
    cache = open_postgres(url)
    if cache.claim_timeout != claim_timeout or cache._memory_mb != memory_mb:
        return PostgresCache(url, memory_mb=memory_mb, claim_timeout=claim_timeout)
    return cache


# -- one instance per database and process -------------------------------------------

_INSTANCES: weakref.WeakSet = weakref.WeakSet()
#: Connections inherited through fork: kept referenced, never used in the child.
_INHERITED: list = []
_OPEN: dict[str, PostgresCache] = {}
_OPEN_LOCK = threading.Lock()


def open_postgres(url: str) -> PostgresCache:
    """The process-wide :class:`PostgresCache` of a URL (one per database)."""
    key = _without_password(url)
    found = _OPEN.get(key)
    if found is None:
        with _OPEN_LOCK:
            found = _OPEN.get(key)
            if found is None:
                found = _OPEN[key] = PostgresCache(url)
    return found


def _after_fork_in_child() -> None:
    global _OPEN_LOCK
    _OPEN_LOCK = threading.Lock()
    for cache in list(_INSTANCES):
        cache._after_fork()


@atexit.register
def _flush_at_exit() -> None:
    for cache in list(_INSTANCES):
        if cache._pid == os.getpid():
            with contextlib.suppress(Exception):
                cache._flush_totals()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def open_url(url: str) -> PostgresCache:
    """The cache of a ``cache=`` URL: PostgreSQL, else a clear error.

    >>> open_url("redis://localhost:6379/0")
    Traceback (most recent call last):
    ...
    skllmprob.exceptions.ConfigurationError: cache='redis://localhost:6379/0' is a URL ...
    """
    if is_postgres_url(url):
        return open_postgres(url)
    scheme = url.partition("://")[0]
    raise ConfigurationError(
        f"cache={mask_url(url)!r} is a URL of the scheme {scheme!r}, which the cache does "
        "not support. cache= takes True (the default SQLite file), False (no cache), the "
        "path of an SQLite file (a path cannot contain '://'), or a PostgreSQL URL: "
        "postgresql://user@host:5432/dbname (or postgres://...)."
    )
