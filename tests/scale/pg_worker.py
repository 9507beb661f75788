"""A worker process of the PostgreSQL cache tests.

``python pg_worker.py URL BASE_URL N WHICH CONCURRENCY``: predicts, through the
cache at ``URL`` and the OpenAI-compatible server at ``BASE_URL``, the first ``N``
texts of ``make_texts`` (worker ``WHICH`` > 0: a rotated order, in chunks of 40, and
40 texts of its own after the ``N`` shared ones).
"""

from __future__ import annotations

import sys

from cache_helpers import make_texts

from skllmprob import LogprobClassifier

LABELS = ["positive", "negative"]


def run(url: str, base_url: str, n: int, which: int, concurrency: int) -> None:
    texts, _ = make_texts(n + 40 * (which + 1))
    shared = texts[:n]
    if which:
        shift = (n * which) // 3
        mine = shared[shift:] + shared[:shift] + texts[n + 40 * which : n + 40 * (which + 1)]
    else:
        mine = shared
    settings = {"base_url": base_url, "cache": url, "max_concurrency": concurrency}
    clf = LogprobClassifier("stub-model", labels=LABELS, progress=False, **settings)
    clf.fit(None, None)
    step = 40 if which else len(mine)
    for start in range(0, len(mine), step):
        clf.predict_proba(mine[start : start + step])


if __name__ == "__main__":
    url, base_url, n, which, concurrency = sys.argv[1:6]
    run(url, base_url, int(n), int(which), int(concurrency))
