"""Scripted faults of :class:`~skllmprob.testing.openai_stub.OpenAIStub`: the kinds, the
error bodies they answer with, and the ``--fault`` option of the stub's command line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FAULT_KINDS", "Fault", "error_body", "parse_fault"]

#: Fault kind -> HTTP status it answers with (0: no HTTP answer).
FAULT_KINDS = {
    "rate_limit": 429,
    "quota": 429,
    "server_error": 500,
    "overloaded": 503,
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "logprobs_forbidden": 403,
    "hang": 0,
    "disconnect": 0,
    "malformed": 200,
    "no_logprobs": 200,
    "empty": 200,
    "refusal": 200,
}
ALIASES = {
    "429": "rate_limit",
    "500": "server_error",
    "503": "overloaded",
    "400": "bad_request",
    "401": "unauthorized",
    "403": "forbidden",
    "404": "not_found",
    "timeout": "hang",
}
MESSAGES = {
    "rate_limit": ("Rate limit reached for requests. Please try again later.", "requests"),
    "quota": (
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
    ),
    "server_error": ("The server had an error while processing your request.", "server_error"),
    "overloaded": ("The engine is currently overloaded, please try again later.", "server_error"),
    "bad_request": ("Invalid request.", "invalid_request_error"),
    "unauthorized": ("Incorrect API key provided.", "invalid_request_error"),
    "forbidden": ("You are not allowed to use this model.", "invalid_request_error"),
    "not_found": ("The model does not exist or you do not have access to it.", "not_found"),
    "logprobs_forbidden": (
        "You are not allowed to request logprobs from this model",
        "invalid_request_error",
    ),
}
CODES = {"quota": "insufficient_quota", "rate_limit": "rate_limit_exceeded"}


@dataclass
class Fault:
    """A scripted fault.

    Parameters
    ----------
    kind : str
        One of :data:`FAULT_KINDS` (or an alias such as ``"429"``).
    times : int or None, default=1
        How many requests it fires on; ``None``: every matching request.
    match : str, optional
        Fire only on prompts that contain this string.
    probability : float, default=1.0
        Fire on a matching request with this probability (from the stub's seeded
        random generator, so a run is reproducible).
    retry_after : float, optional
        Seconds sent in the ``Retry-After`` header (429 and 5xx kinds).
    hang : float, default=30.0
        Seconds a ``"hang"`` fault holds the request before answering normally.
    message : str, optional
        The error message; ``{key}`` is replaced by the API key the client sent
        (to check that clients never repeat it).
    """

    kind: str
    times: int | None = 1
    match: str | None = None
    probability: float = 1.0
    retry_after: float | None = None
    hang: float = 30.0
    message: str | None = None
    fired: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.kind = ALIASES.get(self.kind, self.kind)
        if self.kind not in FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {self.kind!r}; use one of {sorted(FAULT_KINDS)} "
                f"or {sorted(ALIASES)}."
            )
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be between 0 and 1.")


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None):
    """An OpenAI error body."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def parse_fault(spec: str) -> Fault:
    """A fault from its command-line form ``KIND[,name=value...]``."""
    kind, *items = spec.split(",")
    options: dict[str, Any] = {}
    for item in items:
        name, _, value = item.partition("=")
        name = name.strip()
        if name == "times":
            options[name] = None if value.lower() in ("none", "inf", "") else int(value)
        elif name in ("probability", "retry_after", "hang"):
            options[name] = float(value)
        elif name in ("match", "message"):
            options[name] = value
        else:
            raise argparse.ArgumentTypeError(f"unknown fault option {name!r} in {spec!r}")
    return Fault(kind.strip(), **options)
