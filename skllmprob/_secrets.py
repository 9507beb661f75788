"""Keeping API keys out of reprs, pickles, caches and logs."""

from __future__ import annotations

import hmac
import re

__all__ = ["SecretKey", "SecretParam", "SecretURL", "SecretURLParam", "mask_url"]


class SecretKey:
    """An API key that does not show itself.

    ``repr`` and ``str`` are masked, pickling drops the value (an unpickled key is
    empty, and the key is then read from the environment again), and ``deepcopy``
    returns the same object so that :func:`sklearn.base.clone` keeps it.

    Parameters
    ----------
    value : str or None
        The key.

    Examples
    --------
    >>> key = SecretKey("sk-test-123")
    >>> key
    SecretKey('**********')
    >>> key.reveal()
    'sk-test-123'
    >>> import pickle
    >>> back = pickle.loads(pickle.dumps(key))
    >>> back.reveal() is None, back.dropped
    (True, True)
    """

    __slots__ = ("_dropped", "_value")

    def __init__(self, value: object, *, dropped: bool = False) -> None:
        self._value = value
        self._dropped = bool(dropped)

    def reveal(self) -> object:
        """Return the key itself (``None`` after unpickling)."""
        return self._value

    @property
    def dropped(self) -> bool:
        """Whether a key was dropped by pickling (so error messages can say why
        there is none, e.g. in the worker processes of ``GridSearchCV(n_jobs=2)``)."""
        return self._dropped

    def __repr__(self) -> str:
        return "SecretKey('**********')" if self._value is not None else "SecretKey(None)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SecretKey):
            other = other._value
        if isinstance(self._value, str) and isinstance(other, str):
            return hmac.compare_digest(self._value.encode(), other.encode())
        return self._value is other

    def __hash__(self) -> int:
        return hash(SecretKey)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __deepcopy__(self, memo: dict) -> SecretKey:
        return self

    def __copy__(self) -> SecretKey:
        return self

    def __reduce__(self):
        # The value never enters a pickle; only the fact that there was one.
        return (_dropped_key, ())


def _dropped_key() -> SecretKey:
    return SecretKey(None, dropped=True)


class SecretParam:
    """Descriptor for an estimator parameter that holds a secret.

    Assigning a plain string stores it wrapped in :class:`SecretKey`, so that
    ``get_params``, the text and HTML reprs, and grid-search result tables only ever
    see the masked wrapper. Anything else is stored as is (and rejected by the
    estimator's parameter validation in ``fit``).
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, objtype: type | None = None) -> object:
        if obj is None:
            return self
        return obj.__dict__.get(self.name)

    def __set__(self, obj: object, value: object) -> None:
        if isinstance(value, str):
            value = SecretKey(value)
        obj.__dict__[self.name] = value


def reveal(value: object) -> object:
    """Return the plain value of a possibly wrapped secret."""
    return value.reveal() if isinstance(value, SecretKey | SecretURL) else value


_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/?#@\s]*)(?::[^/?#@\s]*)?@"
)


def mask_url(text: str) -> str:
    """Mask the password of every URL in ``text`` (``scheme://user:***@host``).

    The user name is kept (it says which account was used); a password never is.
    The rest of the text is left as it was, case included.

    >>> mask_url("http://bob:s3cret@127.0.0.1:8000/v1")
    'http://bob:***@127.0.0.1:8000/v1'
    >>> mask_url("postgresql://app:pw@db.example/skllm and https://example.org/v1")
    'postgresql://app:***@db.example/skllm and https://example.org/v1'
    >>> mask_url("http://token@host/v1")
    'http://***@host/v1'
    """

    def repl(m: re.Match) -> str:
        had_password = m.group(0)[len(m.group("scheme")) + len(m.group("user")) :] != "@"
        if had_password:
            return f"{m.group('scheme')}{m.group('user')}:***@"
        # A lone userinfo part is often a token: mask it whole.
        return f"{m.group('scheme')}***@"

    return _USERINFO.sub(repl, text)


_HAS_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:[^/?#@\s]*@")


def _without_password(url: str) -> str:
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*):[^/?#@\s]*@", r"\1@", url)


class SecretURL:
    """A URL with a password in it (``postgresql://user:pw@host/db``) that does not
    show the password.

    ``repr`` and ``str`` mask it, a pickle carries the URL without it (the
    password is then read as the server's client library reads it: for
    PostgreSQL ``$PGPASSWORD`` or ``~/.pgpass``), and ``deepcopy`` returns the same
    object so that :func:`sklearn.base.clone` keeps it.

    >>> url = SecretURL("postgresql://app:s3cret@127.0.0.1:5432/skllm")
    >>> url
    SecretURL('postgresql://app:***@127.0.0.1:5432/skllm')
    >>> url.reveal()
    'postgresql://app:s3cret@127.0.0.1:5432/skllm'
    >>> import pickle
    >>> pickle.loads(pickle.dumps(url))
    'postgresql://app@127.0.0.1:5432/skllm'
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The URL itself, password included."""
        return self._value

    def __repr__(self) -> str:
        return f"SecretURL({mask_url(self._value)!r})"

    def __str__(self) -> str:
        return mask_url(self._value)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SecretURL):
            other = other._value
        if isinstance(other, str):
            return hmac.compare_digest(self._value.encode(), other.encode())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(mask_url(self._value))

    def __deepcopy__(self, memo: dict) -> SecretURL:
        return self

    def __copy__(self) -> SecretURL:
        return self

    def __reduce__(self):
        # The password never enters a pickle: the plain URL without it does.
        return (str, (_without_password(self._value),))


def wrap_url_secret(value: object) -> object:
    """``value`` wrapped in :class:`SecretURL` when it is a URL with a password."""
    if isinstance(value, str) and _HAS_PASSWORD.match(value):
        return SecretURL(value)
    return value


class SecretURLParam(SecretParam):
    """Descriptor for an estimator parameter that may hold a URL with a password
    (``cache="postgresql://user:pw@host/db"``): such a URL is stored as a
    :class:`SecretURL`; anything else as it is."""

    def __set__(self, obj: object, value: object) -> None:
        obj.__dict__[self.name] = wrap_url_secret(value)
