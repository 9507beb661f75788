"""The bookkeeping of one command: messages, the cache, usage, errors and exit codes.

Every message the command writes passes through :func:`one_line`: one line, the
password of any URL masked, and the library's ``cache=`` and ``backend_options=``
settings named as the options that set them (``--cache``, ``--no-cache``,
``--backend-option KEY=VALUE``).

Examples
--------
>>> describe(ValueError("bad"))
'ValueError: bad (run with --traceback for the details)'
>>> sentence("no such file")
'no such file.'
>>> one_line("cannot reach http://bob:pw@host/v1.\\nSet cache= to a path or cache=False.")
'cannot reach http://bob:***@host/v1. Set --cache to a path or --no-cache.'
>>> one_line("Pass a larger context, e.g. backend_options={'n_ctx': 4096}.")
'Pass a larger context, e.g. --backend-option n_ctx=4096.'
>>> one_line("Set backend_options={'max_tokens_param': 'max_tokens'}.")
'Set --backend-option max_tokens_param=max_tokens.'
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import tempfile
import threading
import warnings
from dataclasses import fields

from .._secrets import mask_url
from ..exceptions import (
    BackendError,
    BackendUnavailableError,
    ContextOverflowError,
    SkllmprobError,
)
from ..usage import Usage
from .inputs import UsageError
from .parser import PROG

__all__ = [
    "Run",
    "Terminated",
    "capture_warnings",
    "describe",
    "handle_sigterm",
    "one_line",
    "resume_hint",
    "sentence",
]

# The library's parameters, as the command line spells them.
_OPTION_WORDING = (
    (re.compile(r"(?<![\w-])cache=False\b"), "--no-cache"),
    (re.compile(r"(?<![\w-])cache=(?![\w'\"{(\[])"), "--cache"),
    # backend_options={'n_ctx': 8192} (one key) -> --backend-option n_ctx=8192
    (
        re.compile(
            r"(?<![\w-])backend_options=\{\s*['\"](\w+)['\"]:\s*['\"]?([^{}'\",]*?)['\"]?\s*\}"
        ),
        r"--backend-option \1=\2",
    ),
    (re.compile(r"(?<![\w-])backend_options=(?![\w'\"{(\[])"), "--backend-option"),
)


def one_line(text: object) -> str:
    """``text`` as one line of a message (see the module's docstring)."""
    text = mask_url(" ".join(str(text).split()))
    for pattern, option in _OPTION_WORDING:
        text = pattern.sub(option, text)
    return text


def sentence(text: str) -> str:
    text = text.rstrip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _total(clf) -> Usage:
    """A copy of ``clf.usage_.total`` (zero before ``fit``)."""
    copy = Usage()
    tracker = getattr(clf, "usage_", None)  # set by fit
    if tracker is not None:
        copy.add(tracker.total)
    return copy


def _difference(after: Usage, before: Usage) -> Usage:
    return Usage(
        **{f.name: getattr(after, f.name) - getattr(before, f.name) for f in fields(Usage)}
    )


class Run:
    """Streams, options and the bookkeeping of one command."""

    def __init__(self, args, argv, stdin, stdout, stderr) -> None:
        self.args = args
        self.argv = list(argv)
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.cache_setting: bool | str = True
        self.cache_is_temporary = False
        self.stack = contextlib.ExitStack()
        self._tracked: list[tuple[object, Usage]] = []
        self._writes_before: int | None = None  # the cache's write count at the start

    # -- messages ----------------------------------------------------------------

    @property
    def quiet(self) -> bool:
        return bool(getattr(self.args, "quiet", False))

    def say(self, message: str) -> None:
        if not self.quiet:
            self.stderr.write(f"{PROG}: {mask_url(message)}\n")
            self.stderr.flush()

    def warn(self, message: str) -> None:
        if not self.quiet:
            self.stderr.write(f"{PROG}: warning: {one_line(message)}\n")
            self.stderr.flush()

    def progress(self):
        if self.quiet:
            return False
        value = getattr(self.args, "progress", None)
        return "auto" if value is None else bool(value)

    # -- classifiers and their usage ---------------------------------------------

    def track(self, clf) -> None:
        """Count what ``clf`` does from now on in :attr:`usage`."""
        self._tracked.append((clf, _total(clf)))
        if self._writes_before is None and self.cache_kept:
            info = self._cache_info()
            self._writes_before = info.writes if info is not None else 0

    @property
    def classifier(self):
        """The classifier the command uses (``None`` before it is built)."""
        return self._tracked[-1][0] if self._tracked else None

    @property
    def usage(self) -> Usage:
        """What the classifiers of this run did, failed calls included."""
        total = Usage()
        for clf, before in self._tracked:
            total.add(_difference(_total(clf), before))
        return total

    # -- the cache -----------------------------------------------------------------

    @property
    def cache_kept(self) -> bool:
        """Whether answers outlive the run."""
        return not (self.cache_is_temporary or self.cache_setting is False)

    def setup_cache(self) -> None:
        args = self.args
        if getattr(args, "no_cache", False):
            if getattr(args, "cache", None):
                raise UsageError("--cache and --no-cache contradict each other; give one.")
            folder = self.stack.enter_context(
                tempfile.TemporaryDirectory(prefix="skllmprob-", ignore_cleanup_errors=True)
            )
            # A throw-away file: within the run, each prompt is still sent only once.
            self.cache_setting = os.path.join(folder, "run.sqlite")
            self.cache_is_temporary = True
        elif getattr(args, "cache", None):
            self.cache_setting = args.cache
        else:
            self.cache_setting = True

    def _cache_info(self):
        """The cache's ``info()``; ``None`` when it cannot be read."""
        from ..cache import open_cache

        try:
            return open_cache(self.cache_setting).info()
        except Exception:  # statistics must never turn success into failure
            return None

    def cache_description(self) -> str:
        """The cache as the summary shows it: its file, its entries, and the answers
        of this run that it could not store."""
        if not self.cache_kept:
            return "cache off"
        info = self._cache_info()
        if info is None:
            return "cache unavailable"
        sent = self.usage.requests
        lost = sent - (info.writes - (self._writes_before or 0))
        if lost > 0:
            return (
                f"cache {info.path} ({info.entries} entries; {lost} of the {sent} answers "
                "received were not stored)"
            )
        return f"cache {info.path} ({info.entries} entries)"

    def report_usage(self) -> None:
        u = self.usage
        if self.quiet or u.prompts == 0:
            return
        self.say(
            f"{u.prompts} prompts: {u.requests} sent, {u.cache_hits} from the cache"
            + (f", {u.failed} failed" if u.failed else "")
            + f"; {u.prompt_tokens} prompt + {u.completion_tokens} completion tokens"
            + (
                f" ({u.cached_tokens} of them from the model's prefix cache)"
                if u.cached_tokens
                else ""
            )
            + (f", {u.saved_tokens} tokens saved by the cache" if u.saved_tokens else "")
            + f"; {self.cache_description()}"
        )


class _ToRun(logging.Handler):
    """Log records of the library, shown as the command's warnings."""

    def __init__(self, show) -> None:
        super().__init__(logging.WARNING)
        self.show = show

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.show(record.getMessage())
        except Exception:  # pragma: no cover - a message must never break the run
            self.handleError(record)


@contextlib.contextmanager
def capture_warnings(run: Run):
    """Show the library's warnings, and the records of its loggers (``skllmprob``
    and below) from WARNING up, as ``skllmprob: warning: ...`` lines, each once."""
    seen: set[str] = set()

    def show(message, category=None, filename=None, lineno=None, file=None, line=None):
        text = one_line(message)
        if text not in seen:
            seen.add(text)
            run.warn(text)

    logger = logging.getLogger("skllmprob")
    handler = _ToRun(show)
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield
    finally:
        logger.removeHandler(handler)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it ends the run as Ctrl+C does."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def handle_sigterm():
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def describe(e: BaseException) -> str:
    """An exception as the one line of ``skllmprob: error: ...``."""
    if isinstance(e, ContextOverflowError) and e.row is not None:
        size = e.suggested_n_ctx or 2 * e.n_ctx
        return one_line(
            e.with_fix(
                f"It is the text of data row {e.row + 1} of the input (the header not "
                f"counted). Pass a larger context, e.g. --backend-option n_ctx={size}, or "
                "shorten that text."
            )
        )
    if isinstance(e, SkllmprobError | ImportError):
        return one_line(e)
    if isinstance(e, ValueError) and type(e).__name__ == "InvalidParameterError":
        return one_line(e)
    if isinstance(e, OSError) and e.filename:
        return one_line(f"{e.filename}: {e.strerror or e}")
    return one_line(f"{type(e).__name__}: {e} (run with --traceback for the details)")


def resume_hint(run: Run, e: BaseException, *, interrupted: bool = False) -> str:
    """What survives a failed run, for failures of the model and interruptions."""
    if not interrupted and (
        not isinstance(e, BackendError) or isinstance(e, BackendUnavailableError)
    ):
        return ""  # not a failure of the model, or nothing could be sent at all
    if run.classifier is None:
        return ""
    n = run.usage.requests
    if n == 0:
        return ""
    if not run.cache_kept:
        return " The answers received so far are not kept (no cache)."
    event = "interruption" if interrupted else "error"
    noun, verb = ("answer", "is") if n == 1 else ("answers", "are")
    return (
        f" The {n} {noun} received before the {event} {verb} in the cache; running the "
        "same command again sends only the rest."
    )
