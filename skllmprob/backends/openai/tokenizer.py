"""The tokenizer of an OpenAI-compatible server, where the server exposes one.

Three routes are known, tried in this order once per server and model (the answer
is remembered for the process):

- vLLM: ``POST /tokenize`` with ``{"model", "prompt", "add_special_tokens": false}``
  answers ``{"tokens": [id, ...], "count", "max_model_len"}``; ``POST /detokenize``
  with ``{"model", "tokens"}`` answers ``{"prompt": text}``.
- llama.cpp's ``llama-server``: ``POST /tokenize`` with ``{"content",
  "add_special": false, "with_pieces": true}`` answers ``{"tokens": [{"id",
  "piece"}, ...]}``.
- llama-cpp-python's server: ``POST /extras/tokenize`` with ``{"model", "input"}``
  answers ``{"tokens": [id, ...]}`` (with the model's BOS token, which is
  dropped here); ``POST /extras/detokenize`` with ``{"model", "tokens"}`` answers
  ``{"text": text}``.

OpenAI and Azure OpenAI are not asked (they have no such route). A server that
answers none of them (404, 405, 400, 422, or no tokens) cannot tokenize; the backend
then falls back to first words. Token ids and pieces are cached per process, per
server and model, so a label is tokenized once however often ``fit`` runs.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

__all__ = ["ServerTokenizer", "server_root", "variants"]

log = logging.getLogger("skllmprob.openai")

_LOCK = threading.Lock()
_ROUTES: dict[tuple[str, str], str | None] = {}
_IDS: dict[tuple[str, str, str], tuple[int, ...]] = {}
_PIECES: dict[tuple[str, str, int], str] = {}
_NOT_THERE = (400, 404, 405, 422, 501)


class _NoRoute(Exception):
    """The server has no such route (or does not understand the request)."""

    def __init__(self, path: str, *, absent: bool = False) -> None:
        super().__init__(path)
        self.absent = absent  # the path itself is not there (404, 405, 501)


#: The path each tokenize route asks.
_PATHS = {"vllm": "/tokenize", "llama-server": "/tokenize", "llama-cpp-python": "/extras/tokenize"}


def server_root(base_url: str) -> str:
    """The server's root URL: ``base_url`` without a trailing ``/v1``.

    >>> server_root("http://127.0.0.1:8000/v1")
    'http://127.0.0.1:8000'
    """
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def variants(answer: str) -> list[str]:
    """The forms of an answer a model may start with: as given, lower case and
    capitalized, each with and without a leading space (each form once).

    >>> variants("card arrival")
    ['card arrival', ' card arrival', 'Card arrival', ' Card arrival']
    """
    a = answer.strip()
    forms = dict.fromkeys([a, a.lower(), a.capitalize()])
    return [p + f for f in forms for p in ("", " ")]


class ServerTokenizer:
    """Tokenizes text with the tokenizer of the server that serves ``model``.

    Parameters
    ----------
    base_url : str
        The server's OpenAI base URL.
    model : str
    key : str
        The API key sent as ``Authorization: Bearer`` (never logged).
    timeout : float
    workers : int
        Requests in flight at once.
    """

    def __init__(self, base_url: str, model: str, key: str, timeout: float, workers: int):
        self.root = server_root(base_url)
        self.model = model
        self._key = key
        self.timeout = min(float(timeout), 10.0)  # a tokenizer answers at once
        self.workers = max(1, int(workers))

    def __repr__(self) -> str:
        return f"ServerTokenizer(root={self.root!r}, model={self.model!r})"

    # -- HTTP ---------------------------------------------------------------------------

    def post_json(self, url: str, body: dict) -> object:
        """POST ``body`` as JSON to ``url`` with the key; the decoded answer."""
        req = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._key}"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            return json.loads(r.read())

    def _post(self, path: str, body: dict) -> dict:
        try:
            out = self.post_json(self.root + path, body)
        except urllib.error.HTTPError as e:
            if e.code in _NOT_THERE:
                raise _NoRoute(path, absent=e.code in (404, 405, 501)) from None
            raise
        except ValueError:
            raise _NoRoute(path) from None
        if not isinstance(out, dict):
            raise _NoRoute(path)
        return out

    def _raw(self, route: str, text: str) -> tuple[list[int], list[str] | None]:
        """Token ids (and pieces where the route gives them) of ``text``."""
        if route == "vllm":
            body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        elif route == "llama-server":
            body = {"content": text, "add_special": False, "with_pieces": True}
        else:
            body = {"model": self.model, "input": text}
        out = self._post(_PATHS[route], body)
        toks = out.get("tokens")
        if not isinstance(toks, list):
            raise _NoRoute(route)
        if toks and all(isinstance(t, dict) for t in toks):
            ids = [int(t["id"]) for t in toks]
            pieces = [t["piece"] if isinstance(t.get("piece"), str) else None for t in toks]
            return ids, None if None in pieces else pieces
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in toks):
            raise _NoRoute(route)
        return list(toks), None

    # -- the route ----------------------------------------------------------------------

    def route(self) -> str | None:
        """The tokenize route of this server (``None``: it cannot tokenize)."""
        key = (self.root, self.model)
        with _LOCK:
            if key in _ROUTES:
                return _ROUTES[key]
        found = None
        absent: set[str] = set()  # paths the server does not have: not asked twice
        for route in ("vllm", "llama-server", "llama-cpp-python"):
            if _PATHS[route] in absent:
                continue
            try:
                ids, _ = self._raw(route, "Hello")
            except _NoRoute as e:
                if e.absent:
                    absent.add(_PATHS[route])
                continue
            except OSError as e:  # unreachable: not remembered, the next fit asks again
                log.debug("%s: no tokenizer (%s)", self.root, type(e).__name__)
                return None
            if ids:
                found = route
                break
        log.debug("%s: tokenize route %s", self.root, found)
        with _LOCK:
            _ROUTES[key] = found
        return found

    def _bos(self, route: str) -> tuple[int, ...]:
        """What the route adds around an empty text (a BOS token), dropped."""
        if route != "llama-cpp-python":
            return ()
        return tuple(self._cached_ids(route, ""))

    def _cached_ids(self, route: str, text: str) -> tuple[int, ...]:
        key = (self.root, self.model, text)
        with _LOCK:
            hit = _IDS.get(key)
        if hit is None:
            ids, pieces = self._raw(route, text)
            hit = tuple(ids)
            with _LOCK:
                _IDS[key] = hit
                for i, p in zip(ids, pieces or (), strict=False):
                    _PIECES[(self.root, self.model, i)] = p
        return hit

    def _map(self, fn, items: Sequence):
        if len(items) <= 1 or self.workers == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(items))) as pool:
            return list(pool.map(fn, items))

    # -- public -------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> list[tuple[int, ...]] | None:
        """The token ids of each text without special tokens (``None``: the server
        cannot tokenize)."""
        route = self.route()
        if route is None:
            return None
        bos = self._bos(route)
        out = self._map(lambda t: self._cached_ids(route, t), list(texts))
        return [ids[len(bos) :] if ids[: len(bos)] == bos else ids for ids in out]

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """The text of each token id."""
        route = self.route()
        missing = [i for i in dict.fromkeys(ids) if (self.root, self.model, i) not in _PIECES]
        if missing and route is not None:
            path, field = {
                "vllm": ("/detokenize", "prompt"),
                "llama-cpp-python": ("/extras/detokenize", "text"),
            }.get(route, ("/detokenize", "content"))

            def one(i: int) -> None:
                out = self._post(path, {"model": self.model, "tokens": [i]})
                text = out.get(field)
                _PIECES[(self.root, self.model, i)] = text if isinstance(text, str) else ""

            self._map(one, missing)
        return [_PIECES.get((self.root, self.model, i), "") for i in ids]

    def first_tokens(self, answers: Sequence[str]) -> list[list[str]] | None:
        """The first token of each answer's :func:`variants` (``None``: the server
        cannot tokenize)."""
        forms = [variants(a) for a in answers]
        flat = [f for fs in forms for f in fs]
        ids = self.tokenize(flat)
        if ids is None:
            return None
        firsts = [seq[0] for seq in ids if seq]
        text = dict(zip(firsts, self.pieces(firsts), strict=True))
        out, k = [], 0
        for fs in forms:
            out.append([text[s[0]] for s in ids[k : k + len(fs)] if s])
            k += len(fs)
        return out


def can_ask(base_url: str, is_hosted: bool) -> bool:
    """Whether a server may be asked for its tokenizer: not OpenAI or Azure, and
    not a URL with a user name or password (kept out of these plain requests)."""
    return not is_hosted and urlsplit(base_url).username is None
