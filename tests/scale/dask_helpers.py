"""Shared by the Dask tests: a 2-worker LocalCluster on 127.0.0.1 and the partition
function (importable on the workers: tests/scale is on their PYTHONPATH)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def local_cluster(env: dict[str, str], threads_per_worker: int):
    """A client of two worker processes whose environment adds ``env`` and a
    PYTHONPATH reaching this worktree and the test helpers."""
    import distributed

    paths = [*map(str, (ROOT, ROOT / "tests", ROOT / "tests/scale"))]
    env = {"PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]), **env}
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            env=env,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def proba_frame(part, clf):
    import pandas as pd

    proba = clf.predict_proba(part["text"].tolist())
    return pd.DataFrame(proba, columns=[f"proba_{c}" for c in clf.classes_], index=part.index)


def meta(clf):
    import pandas as pd

    return pd.DataFrame({f"proba_{c}": pd.Series(dtype="float64") for c in clf.classes_})
