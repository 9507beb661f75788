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

The package: :mod:`~skllmprob.cache.codec` (keys and values),
:mod:`~skllmprob.cache.schema` (file layout, transactions),
:mod:`~skllmprob.cache.store` (:class:`CompletionCache`),
:mod:`~skllmprob.cache.claims` (cross-process claims),
:mod:`~skllmprob.cache.memory` (the memory layer) and
:mod:`~skllmprob.cache.stats` (:class:`CacheInfo`).

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

import os
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

from .._secrets import reveal
from ..backends.base import Completion
from .claims import ClaimSession, NullSession
from .codec import DECODE_ERRORS as _DECODE_ERRORS  # noqa: F401 - used by tests/fault_tools.py
from .codec import KEY_VERSION, KeyBuilder
from .codec import decode as _decode  # noqa: F401 - used by tests and tests/fault_tools.py
from .codec import encode as _encode  # noqa: F401 - used by tests
from .schema import CACHE_SCHEMA_VERSION
from .stats import CacheInfo
from .store import _INSTANCES, CompletionCache

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


class NullCache:
    """The cache of ``cache=False``: stores nothing."""

    path = None

    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, Completion]:
        return {}

    def put(self, key: bytes, completion: Completion) -> None:
        return None

    def put_many(self, items) -> None:
        return None

    def session(self) -> NullSession:
        return NullSession()

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
    cache = reveal(cache)  # a URL with a password arrives wrapped (SecretURL)
    if cache is False:
        return NullCache()
    if isinstance(cache, str) and "://" in cache:  # a URL: PostgreSQL, or a clear error
        from .postgres import open_url

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
