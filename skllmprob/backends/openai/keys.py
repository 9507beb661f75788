"""The API key of a request: where it is read from, how it is cleaned and checked,
and what to say when there is none or it cannot be sent.

A key is sent in an HTTP header, which can hold printable ASCII only. Whitespace
around the key (a key read from a file, a CRLF ``.env``) is stripped; any other
character that cannot go in a header is refused before any request, with a message
that says what is wrong and never shows the key or any part of it.
"""

from __future__ import annotations

import os

from ..._secrets import reveal
from ...exceptions import ConfigurationError

#: Placeholder key sent to servers other than OpenAI and Azure when no key is given.
NO_KEY = "sk-no-key-required"


def _problem(key: str) -> str | None:
    """What in ``key`` cannot go in an HTTP header (``None``: nothing)."""
    for c in key:
        if c == "\t" or " " <= c <= "~":
            continue
        if c in "\r\n":
            return "a line break (newline or carriage return) inside it"
        if c < " " or c == "\x7f":
            return "a control character inside it"
        return "a non-ASCII character (for instance a typographic quote or dash)"
    return None


def clean_key(key: str, source: str) -> str:
    r"""``key`` without surrounding whitespace, or a ConfigurationError naming what in
    it cannot be sent (and never any of its characters).

    >>> clean_key("sk-abc123\r\n", "api_key=")
    'sk-abc123'
    >>> clean_key("sk-abc\n123", "api_key=")
    Traceback (most recent call last):
    ...
    skllmprob.exceptions.ConfigurationError: the API key from api_key= has a line break ...
    """
    key = key.strip()
    problem = _problem(key)
    if problem is None:
        return key
    raise ConfigurationError(
        f"the API key from {source} has {problem}, which cannot be sent in an HTTP "
        "header (printable ASCII only); nothing was sent. Check that the key was copied "
        "whole and exactly (surrounding whitespace and line ends are removed "
        "automatically)."
    )


def _given_key(settings) -> str | None:
    """The key of ``api_key=``, else of the environment (cleaned), else ``None``."""
    key = reveal(settings._api_key)
    if key:
        return clean_key(str(key), "api_key=") or None
    names = ("AZURE_OPENAI_API_KEY", "OPENAI_API_KEY") if settings.is_azure() else ()
    for name in (*names, "OPENAI_API_KEY"):
        value = os.environ.get(name, "").strip()
        if value:
            return clean_key(value, f"${name}")
    return None


def key_for_requests(settings) -> tuple[str, str | None]:
    """The key to send and the secret to scrub from messages (``None`` for the
    placeholder)."""
    secret = _given_key(settings)
    if secret:
        return secret, secret
    if settings.is_openai() or settings.is_azure():
        env = "AZURE_OPENAI_API_KEY" if settings.is_azure() else "OPENAI_API_KEY"
        raise ConfigurationError(
            f"no API key for {settings.shown_url()}: pass api_key=... or set ${env}."
            + dropped_key_note(settings._api_key)
        )
    return NO_KEY, None


def dropped_key_note(api_key: object) -> str:
    """Why there is no key, when it was dropped by pickling."""
    if not getattr(api_key, "dropped", False):
        return ""
    return (
        " This object was unpickled (for instance in a worker process of "
        "GridSearchCV(n_jobs=2) or cross_val_score(n_jobs=2)), and an API key is "
        "never pickled: set $OPENAI_API_KEY, which worker processes inherit, instead "
        "of api_key=."
    )
