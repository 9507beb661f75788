"""A request counter shared by processes, for ``cache_counts.py``.

:class:`FileCountingBackend` is the deterministic backend appending one byte to a file
per request it answers, so requests made in loky workers are counted too. Kept in its
own module so that workers can import it (they get the benchmark folder on sys.path).
"""

from __future__ import annotations

import os

from skllmprob.backends import DeterministicBackend


class FileCountingBackend(DeterministicBackend):
    """The deterministic backend, counting finished requests in ``count_file``.

    Its identity is the deterministic backend's: counting changes no cache key.
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


def count(path: str) -> int:
    """Requests counted in ``path`` so far."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0
