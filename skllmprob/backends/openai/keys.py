"""The API key of a request: where it is read from, and what to say when there is
none."""

from __future__ import annotations

import os

from ..._secrets import reveal
from ...exceptions import ConfigurationError

#: Placeholder key sent to servers other than OpenAI and Azure when no key is given.
NO_KEY = "sk-no-key-required"


def _given_key(settings) -> str | None:
    """The key of ``api_key=``, else of the environment, else ``None``."""
    key = reveal(settings._api_key)
    if key:
        return str(key)
    names = ("AZURE_OPENAI_API_KEY", "OPENAI_API_KEY") if settings.is_azure() else ()
    for name in (*names, "OPENAI_API_KEY"):
        if os.environ.get(name):
            return os.environ[name]
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
