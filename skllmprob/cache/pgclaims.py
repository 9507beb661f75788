"""Claims of the PostgreSQL completion cache: one request per unique prompt.

A session claims the missing prompts it is about to send with ``INSERT ... ON
CONFLICT``: the claim is a lease of ``claim_timeout`` seconds, renewed by the
session's writer thread while it works. A claim is taken over once its lease expired
(a machine that vanished), or at once when the database session that took it is gone
(``pg_stat_get_activity``: the connection of a killed worker closes). Results are
committed by the writer thread as they arrive, together with the release of their
claims. See :mod:`skllmprob.cache.postgres`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..backends.base import Completion
from ..exceptions import CacheError

if TYPE_CHECKING:  # pragma: no cover
    from .postgres import PostgresCache

__all__ = ["HEARTBEAT", "PgClaimSession"]

logger = logging.getLogger("skllmprob.cache.postgres")

_CLAIM = """
INSERT INTO skllmprob_claims AS c (key, owner, backend_pid, expires)
SELECT k, %(owner)s, pg_backend_pid(), now() + make_interval(secs => %(lease)s)
FROM unnest(%(keys)s::bytea[]) AS k
ON CONFLICT (key) DO UPDATE
SET owner = EXCLUDED.owner, backend_pid = EXCLUDED.backend_pid, expires = EXCLUDED.expires
WHERE c.owner = EXCLUDED.owner OR c.expires < now()
   OR NOT EXISTS (SELECT 1 FROM pg_stat_get_activity(c.backend_pid))
RETURNING key
"""
_LIVE_CLAIMS = """
SELECT count(*) FROM skllmprob_claims AS c
WHERE c.key = ANY(%s) AND c.expires >= now()
  AND EXISTS (SELECT 1 FROM pg_stat_get_activity(c.backend_pid))
"""
_DEAD_CLAIMS = """
DELETE FROM skllmprob_claims AS c
WHERE c.expires < now() OR NOT EXISTS (SELECT 1 FROM pg_stat_get_activity(c.backend_pid))
"""


def _psycopg():
    try:
        import psycopg
    except ImportError as e:
        raise CacheError(
            "a postgresql:// cache needs psycopg 3: pip install 'skllmprob[postgres]' "
            "(or pip install 'psycopg[binary]')."
        ) from e
    return psycopg


#: Seconds between renewals of a session's claims (at most a third of the lease).
HEARTBEAT = 5.0


class PgClaimSession:
    """One fetch's coordination with the other sessions using the database.

    :meth:`claim` takes the leases of the missing keys nobody else holds;
    :meth:`submit` queues a result for the writer thread, which commits whatever has
    arrived in one transaction, drops the matching claims and renews the others;
    :meth:`wait` polls for keys claimed by live sessions elsewhere; :meth:`close`
    flushes the writer and releases the claims left (failed requests), so that
    others take them over at once.
    """

    def __init__(self, cache: PostgresCache) -> None:
        self.cache = cache
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:16]}"
        self.waited = 0
        self.error: BaseException | None = None
        # Results waiting for the writer thread, and its state.
        self._cond, self._queue = threading.Condition(), []
        self._closing = self._holding = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PgClaimSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def claim(self, keys: Sequence[bytes]) -> tuple[dict[bytes, Completion], list, list]:
        """Claim the keys nobody requests yet, then look them up.

        Returns ``(found, mine, theirs)``: entries that exist by now, keys this
        session must request, keys a live session elsewhere is requesting.
        """
        psycopg = _psycopg()
        cache, keys = self.cache, list(dict.fromkeys(keys))  # ON CONFLICT: each key once
        params = {"owner": self.owner, "lease": cache.claim_timeout, "keys": keys}
        try:
            with cache._borrow() as conn:
                claimed = {bytes(r[0]) for r in conn.execute(_CLAIM, params).fetchall()}
                # Looked up after claiming: an entry committed before our claim is seen.
                found = cache._select(conn, keys, report=False)
                done = [k for k in claimed if k in found]
                if done:
                    conn.execute(
                        "DELETE FROM skllmprob_claims WHERE owner = %s AND key = ANY(%s)",
                        (self.owner, done),
                    )
        except psycopg.Error as e:
            # Without coordination every missing key is ours: correct, maybe paid twice.
            logger.warning(
                "cannot claim prompts in the cache %s: %s", cache.path, cache.scrub(str(e))
            )
            return {}, keys, []
        mine = [k for k in keys if k in claimed and k not in found]
        theirs = [k for k in keys if k not in claimed and k not in found]
        if mine:
            with self._cond:
                self._holding = True
                self._writer_running()
        return found, mine, theirs

    def wait(self, keys: Sequence[bytes], *, poll: float = 0.005) -> dict[bytes, Completion]:
        """Wait until every key is written or one is no longer claimed by a live
        session (then :meth:`claim` it again). Returns the entries found."""
        psycopg = _psycopg()
        cache, pending = self.cache, list(keys)
        found: dict[bytes, Completion] = {}
        delay = poll
        while pending:
            try:
                with cache._borrow() as conn:
                    found.update(cache._select(conn, pending, report=False))
                    pending = [k for k in pending if k not in found]
                    live = conn.execute(_LIVE_CLAIMS, (pending,)).fetchone()[0] if pending else 0
            except psycopg.Error as e:
                logger.warning(
                    "cannot read claims in the cache %s: %s", cache.path, cache.scrub(str(e))
                )
                break
            if live < len(pending) or not pending:
                break  # written, or released / expired: the caller claims the rest again
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)
        self.waited += len(found)
        return found

    # -- writing ------------------------------------------------------------------------

    def submit(self, key: bytes, completion: Completion) -> None:
        """Queue a result for the writer thread (thread-safe, returns at once)."""
        self.cache._memory.put_many([(key, completion)])
        with self._cond:
            self._queue.append((key, completion))
            self._writer_running()
            self._cond.notify()

    def _writer_running(self) -> None:
        """Start the writer thread unless it runs (call with ``self._cond`` held)."""
        if self._thread is None and not self._closing:
            self._thread = threading.Thread(
                target=self._writer, name="skllmprob-pgcache-writer", daemon=True
            )
            self._thread.start()

    def _next_batch(self, timeout: float) -> tuple[list, bool]:
        with self._cond:
            if not self._queue and not self._closing:
                self._cond.wait(timeout)
            batch, self._queue = self._queue, []
            return batch, self._closing

    def _writer(self) -> None:
        every = min(HEARTBEAT, self.cache.claim_timeout / 3)
        renewed = time.monotonic()
        done = False
        while not done:
            batch, done = self._next_batch(every)
            renew = self._holding and time.monotonic() - renewed >= every / 2
            if not (batch or renew):
                continue
            try:
                self._flush(batch, renew)
            except Exception as e:  # the answers themselves stay in memory
                message = self.cache.scrub(str(e))
                if self.error is None:
                    self.error = CacheError(message)
                logger.warning(
                    "could not write to the completion cache %s: %s", self.cache.path, message
                )
            if renew:
                renewed = time.monotonic()

    def _flush(self, batch: list, renew: bool) -> None:
        cache = self.cache
        with cache._borrow() as conn, conn.transaction():
            if batch:
                cache._insert(conn, batch)
                conn.execute(
                    "DELETE FROM skllmprob_claims WHERE owner = %s AND key = ANY(%s)",
                    (self.owner, [k for k, _ in batch]),
                )
            if renew:
                conn.execute(
                    "UPDATE skllmprob_claims SET expires = now() + make_interval(secs => %s)"
                    " WHERE owner = %s",
                    (cache.claim_timeout, self.owner),
                )
        cache._count(writes=len(batch))

    def close(self) -> BaseException | None:
        """Flush queued results, release claims left; returns the first write error."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        if self._holding:
            self._holding = False
            self._release()
        return self.error

    def _release(self) -> None:
        """Drop this session's claims left (failed requests): others take them now."""
        cache = self.cache
        try:
            with cache._borrow() as conn:
                conn.execute("DELETE FROM skllmprob_claims WHERE owner = %s", (self.owner,))
        except _psycopg().Error as e:
            message = cache.scrub(str(e))
            logger.warning("could not release claims in the cache %s: %s", cache.path, message)
