"""A request counter that every process sees.

:class:`FileCountingBackend` is the deterministic backend, appending one byte to a
file per request it answers, so that requests made in other processes (the loky
workers of ``GridSearchCV(n_jobs=2)``, a second Python process) are counted too.

Examples
--------
>>> import os, tempfile
>>> from skllmprob.backends import Query
>>> path = os.path.join(tempfile.mkdtemp(), "count")
>>> backend = FileCountingBackend(count_file=path)
>>> backend.complete(["a", "b"], Query(top_logprobs=2), on_result=lambda i, c: None)
>>> count(path)
2
"""

from __future__ import annotations

import os

from ..backends.deterministic import DeterministicBackend

__all__ = ["FileCountingBackend", "count"]


class FileCountingBackend(DeterministicBackend):
    """The deterministic backend, counting finished requests in ``count_file``.

    Its identity is the deterministic backend's: counting changes no cache key, so
    it shares cache entries with :class:`~skllmprob.backends.DeterministicBackend`.

    Parameters
    ----------
    count_file : str
        The file that gets one byte per answered request.
    **kwargs
        Settings of :class:`~skllmprob.backends.DeterministicBackend`.
    """

    def __init__(self, *, count_file: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.count_file = count_file

    def complete(self, prompts, query, *, on_result):
        def counted(i, completion):
            fd = os.open(self.count_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, b".")
            finally:
                os.close(fd)
            on_result(i, completion)

        super().complete(prompts, query, on_result=counted)


def count(path: str | os.PathLike) -> int:
    """Requests counted in ``path`` so far (0 before the first)."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0
