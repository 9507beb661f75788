"""Many classes with multi-token labels: TREC (6 classes) and Banking77 (77).

Usage::

    python benchmarks/many_classes.py ../shared/data [--datasets trec banking77]
        [--n-test 500] [--n-speed 10] [--n-labels 64 256] [--seed 0]
        [--backend local|server] [--threads 2] [--out benchmarks/results/many_classes.json]

``DATA`` holds one folder per data set (``trec/``, ``banking77/``), each with
``train.csv`` and ``test.csv`` (columns ``text,label``). Labels are written as
plain words (``activate_my_card``, ``Refund_not_showing_up`` -> ``"activate my
card"``, ``"refund not showing up"``) and used as the verbalizers of the default
prompt. For each data set, in one process:

1. Speed: seconds per text of zero-shot scoring of ``--n-speed`` test
   texts with every class, and with the first two classes only (the 2-label
   case, same texts, same run), without a cache; one text is scored first to
   load the model and build the label tries.
2. Accuracy on ``--n-test`` test rows (a random subset fixed by ``--seed``;
   the speed texts are its first ones): zero-shot, and ``fit`` on
   ``--n-labels`` labelled rows drawn from train (``calibration="bias"`` and
   ``"auto"``), against ``TfidfVectorizer + LogisticRegression`` on the same
   rows and on every train row. These completions go through a cache next to
   the output (``<out>.cache.sqlite``), so a second run costs nothing.

``--backend local`` is the embedded model (exact scores, label tries);
``--backend server`` starts llama-cpp-python's OpenAI-compatible server with
the same GGUF (``python -m skllmprob.llama_server``) and scores through it.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from skllmprob import LogprobClassifier  # noqa: E402
from skllmprob.backends.llamacpp import default_model_path  # noqa: E402


def plain(label: str) -> str:
    """``"Refund_not_showing_up"`` -> ``"refund not showing up"``."""
    return " ".join(label.replace("_", " ").split()).lower()


def read_rows(path: Path) -> tuple[list[str], list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [plain(r["label"]) for r in rows]


def labelled_sample(y: list[str], n: int, seed: int) -> np.ndarray:
    """``n`` row indices, as balanced over the classes as possible."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i in rng.permutation(len(y)):
        by_class.setdefault(y[i], []).append(int(i))
    out: list[int] = []
    while len(out) < min(n, len(y)):
        for rows in by_class.values():
            if rows and len(out) < n:
                out.append(rows.pop())
    return np.array(out)


@contextlib.contextmanager
def server(threads: int, n_ctx: int, timeout: float = 120.0):
    """llama-cpp-python's server on a free port (yields its base URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "skllmprob.llama_server", "--model", default_model_path()]
    cmd += ["--model_alias", "gemma", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--n_ctx", str(n_ctx), "--n_threads", str(threads), "--verbose", "False"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}: {cmd}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(base + "/models", timeout=1) as r,
            ):
                if r.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready after {timeout} s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def make_classifier(args, labels, base_url, *, label_prune=None, **kw) -> LogprobClassifier:
    if args.backend == "local":
        opts = {"n_ctx": args.n_ctx, "n_threads": args.threads}
        if label_prune is not None:
            opts["label_prune"] = label_prune
        return LogprobClassifier(labels=labels, backend_options=opts, progress=False, **kw)
    return LogprobClassifier(
        "gemma", labels=labels, base_url=base_url, api_key="none", progress=False, **kw
    )


def seconds_per_text(args, labels, texts, base_url, label_prune=None):
    """Seconds per text (after a first call that loads the model and builds the
    label tries) and the raw probabilities of the texts."""
    clf = make_classifier(args, labels, base_url, cache=False, label_prune=label_prune)
    clf.fit(None, None)
    clf.predict_proba(texts[:1])
    t = time.perf_counter()
    scores = clf.score_texts(texts)
    return (time.perf_counter() - t) / len(texts), scores.raw_proba


def tfidf_accuracy(x_train, y_train, x_test, y_test) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    lr = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=2000))
    lr.fit(x_train, y_train)
    return float(np.mean(lr.predict(x_test) == np.array(y_test)))


def run_dataset(args, name: str, base_url) -> dict:
    x_train, y_train = read_rows(args.data / name / "train.csv")
    x_test, y_test = read_rows(args.data / name / "test.csv")
    labels = sorted(set(y_train))
    # Test files can be sorted by class (Banking77's are): a fixed random subset.
    pick = np.random.default_rng(args.seed).permutation(len(x_test))[: args.n_test]
    x_test, y_test = [x_test[i] for i in pick], [y_test[i] for i in pick]
    speed_texts = x_test[: max(2, args.n_speed + 1)]
    out: dict = {"classes": len(labels), "n_test": len(x_test)}
    s_all, p_all = seconds_per_text(args, labels, speed_texts, base_url)
    s_two, _ = seconds_per_text(args, labels[:2], speed_texts, base_url)
    out["speed"] = {"s_per_text": s_all, "s_per_text_2_labels": s_two, "ratio": s_all / s_two}
    for prune in args.speed_prune if args.backend == "local" else ():
        s_p, p_p = seconds_per_text(args, labels, speed_texts, base_url, label_prune=prune)
        out["speed"][f"label_prune={prune:g}"] = {
            "s_per_text": s_p,
            "ratio": s_p / s_two,
            "max_abs_proba_change": float(np.abs(p_p - p_all).max()),
        }
    cache = str(args.out.with_suffix(".cache.sqlite"))
    acc: dict[str, float] = {}
    zero = make_classifier(args, labels, base_url, cache=cache).fit(None, None)
    acc["zero-shot"] = float(np.mean(zero.predict(x_test) == np.array(y_test)))
    acc["tfidf+lr, all train rows"] = tfidf_accuracy(x_train, y_train, x_test, y_test)
    for n in args.n_labels:
        idx = labelled_sample(y_train, n, args.seed)
        xs, ys = [x_train[i] for i in idx], [y_train[i] for i in idx]
        for cal in ("bias", "auto"):
            clf = make_classifier(args, labels, base_url, cache=cache, calibration=cal)
            clf.fit(xs, ys)
            acc[f"fit {n}, {cal}"] = float(np.mean(clf.predict(x_test) == np.array(y_test)))
        acc[f"tfidf+lr, {n} rows"] = tfidf_accuracy(xs, ys, x_test, y_test)
    out["accuracy"] = acc
    return out


def print_table(results: dict) -> None:
    for name, r in results["datasets"].items():
        sp = r["speed"]
        print(f"\n{name}: {r['classes']} classes, {r['n_test']} test rows ({results['backend']})")
        print(f"  {'s/text, all classes':<36}{sp['s_per_text']:>8.3f}")
        print(f"  {'s/text, 2 classes':<36}{sp['s_per_text_2_labels']:>8.3f}")
        print(f"  {'ratio':<36}{sp['ratio']:>8.2f}x")
        for key, v in sp.items():
            if key.startswith("label_prune="):
                print(
                    f"  {'s/text, all classes, ' + key:<36}{v['s_per_text']:>8.3f}"
                    f"  ({v['ratio']:.2f}x; probabilities move by <= "
                    f"{v['max_abs_proba_change']:.4f})"
                )
        for k, v in r["accuracy"].items():
            print(f"  {'accuracy, ' + k:<36}{v:>8.3f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path, help="folder with trec/ and banking77/")
    p.add_argument("--datasets", nargs="+", default=["trec", "banking77"])
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--n-speed", type=int, default=10)
    p.add_argument("--n-labels", type=int, nargs="+", default=[64, 256])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=["local", "server"], default="local")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument(
        "--speed-prune",
        type=float,
        nargs="*",
        default=[1e-3],
        help="local backend: also time every class with these label_prune values",
    )
    p.add_argument("--out", type=Path, default=HERE / "results" / "many_classes.json")
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "backend": args.backend,
        "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "datasets": {},
    }
    srv = server(args.threads, args.n_ctx) if args.backend == "server" else None
    with srv if srv is not None else contextlib.nullcontext() as base_url:
        for name in args.datasets:
            results["datasets"][name] = run_dataset(args, name, base_url)
    print_table(results)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
