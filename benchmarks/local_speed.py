"""Local scoring speed: llama-cpp-python by hand vs skllmprob's backend vs the floor.

Usage::

    python benchmarks/local_speed.py ../shared/data/mr [--n 300] [--n-by-hand 20]
        [--threads 1] [--parallel 8] [--out benchmarks/results/local_speed.json]

On the same texts (the first ``--n`` of ``test.csv``) and the same few-shot prompt
(four examples from ``train.csv``), in one process, one after the other:

1. ``llama-cpp-python``: ``Llama(logits_all=True)`` and
   ``create_completion(prompt, max_tokens=1, logprobs=20)`` per text, class
   probabilities from the top-20 tokens (case / leading-space variants summed) -
   the way a user would do it by hand. Run twice: with llama-cpp-python's default
   CPU kernels ("default"), and with the kernel settings skllmprob uses
   (repacked weights off, "same kernels"), to separate method from rounding.
   This path costs about 10 s per text here (``logits_all`` log-softmaxes and
   sorts the whole vocabulary at every prompt position), so it runs on the first
   ``--n-by-hand`` of the texts; its figures are per text.
2. skllmprob's ``LlamaCppBackend`` (exact label probabilities, prefix reuse), with
   ``n_parallel=1`` (bit-identical to cold evaluation) and ``--parallel`` texts
   per decode call.
3. The floor: llama.cpp evaluating only each text's own tokens after the cached
   prefix (one decode call per text, logits of the last token only, no reading of
   them, no sampling), in the same context as (2).

Prints a table (texts per second, ratios, peak memory) and writes JSON. Peak
memory is the process's peak resident set size during each method (the kernel's
high-water mark, reset before each method through /proc/self/clear_refs) and the
peak of Python allocations (tracemalloc).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from skllmprob.backends.base import Query  # noqa: E402
from skllmprob.backends.llamacpp import LlamaCppBackend, default_model_path  # noqa: E402
from skllmprob.llama_server import cpu_has_amx, plain_weight_layouts  # noqa: E402
from skllmprob.prompts import DEFAULT_PROMPT, PromptRenderer  # noqa: E402
from skllmprob.scoring import TokenMatcher, label_log_mass, normalize  # noqa: E402

LABELS = ("positive", "negative")


def read_csv(path: Path) -> list[tuple[str, str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return [(r["text"], r["label"]) for r in csv.DictReader(f)]


def _rss_reset() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _rss_peak_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Measure:
    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self):
        _rss_reset()
        tracemalloc.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.py_peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        self.rss_peak_mb = _rss_peak_mb()


def by_hand(model_path: str, prompts: list[str], threads: int, same_kernels: bool):
    """llama-cpp-python as a user would call it: top-20 logprobs of one token."""
    import contextlib

    import llama_cpp

    guard = plain_weight_layouts() if same_kernels else contextlib.nullcontext()
    with guard:
        llm = llama_cpp.Llama(
            model_path=model_path,
            n_ctx=1024,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=True,
            verbose=False,
        )
    llm.create_completion("warm up", max_tokens=1, logprobs=20, temperature=0.0)
    tops = []
    with Measure("by hand") as m:
        for p in prompts:
            out = llm.create_completion(p, max_tokens=1, logprobs=20, temperature=0.0)
            tops.append(out["choices"][0]["logprobs"]["top_logprobs"][0])
    del llm
    matcher = TokenMatcher(list(LABELS))
    tokens = [tuple(t.keys()) for t in tops]
    logprobs = [np.array(list(t.values()), dtype=float) for t in tops]
    mass, floored = label_log_mass(tokens, logprobs, matcher)
    both = ~floored.any(axis=1)
    return m, normalize(mass), both


def skllmprob_backend(prompts, threads: int, n_parallel: int):
    backend = LlamaCppBackend(n_threads=threads, n_parallel=n_parallel, n_ctx=4096)
    backend.first_tokens(list(LABELS))  # load the model and its vocabulary first
    out = {}
    with Measure(f"skllmprob n_parallel={n_parallel}") as m:
        backend.complete(prompts, Query(20, LABELS), on_result=out.__setitem__)
    comps = [out[i] for i in range(len(prompts))]
    mass = np.vstack([c.answer_logprobs for c in comps])
    return m, normalize(mass), comps, backend


def floor(backend: LlamaCppBackend, prompts: list[str]):
    """Only the texts' own tokens, after the cached prefix; no Python readout."""
    llm = backend._load()
    toks = [llm.prompt_tokens(p, None) for p in prompts]
    common = toks[0]
    for t in toks[1:]:
        k = 0
        while k < min(len(common), len(t)) and common[k] == t[k]:
            k += 1
        common = common[:k]
    L, b, ctx, mem = llm.L, llm.batch, llm.ctx, llm.mem
    with llm.lock:
        llm.set_resident(common)
        p = len(common)
        with Measure("floor") as m:
            for t in toks:
                own = t[p:]
                b.n_tokens = len(own)
                for i, tok in enumerate(own):
                    b.token[i] = tok
                    b.pos[i] = p + i
                    b.n_seq_id[i] = 1
                    b.seq_id[i][0] = 0
                    b.logits[i] = i == len(own) - 1
                if L.llama_decode(ctx, b) != 0:
                    raise RuntimeError("decode failed")
                L.llama_memory_seq_rm(mem, 0, p, -1)
    return m, p, float(np.mean([len(t) - p for t in toks]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="the mr data folder, or its test.csv")
    ap.add_argument("--n", type=int, default=300, help="texts to score (default 300)")
    ap.add_argument(
        "--n-by-hand", type=int, default=20, help="texts for method 1 (slow; default 20)"
    )
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: cores/2)")
    ap.add_argument("--parallel", type=int, default=8, help="texts per decode call, extra run")
    ap.add_argument("--out", default=str(HERE / "results" / "local_speed.json"))
    args = ap.parse_args(argv)

    data = Path(args.data)
    test_csv = data if data.suffix == ".csv" else data / "test.csv"
    train_csv = test_csv.with_name("train.csv")
    rows = read_csv(test_csv)[: args.n]
    threads = args.threads or max(1, (os.cpu_count() or 2) // 2)
    train = read_csv(train_csv) if train_csv.exists() else []
    shots = [r for r in train if len(r[0]) < 90]
    examples = [next(r for r in shots if r[1] == lab) for lab in ("positive", "negative")]
    examples += [next(r for r in shots if r[1] == lab and r not in examples) for lab in LABELS]
    renderer = PromptRenderer(
        DEFAULT_PROMPT, labels=list(LABELS), examples=[({"text": t}, y) for t, y in examples]
    )
    prompts = renderer.render_texts([t for t, _ in rows])
    y = np.array([lab for _, lab in rows])
    model_path = default_model_path()

    load = os.getloadavg()
    k = min(args.n_by_hand, len(prompts))
    amx = cpu_has_amx()
    m1s, p1s, both1s = by_hand(model_path, prompts[:k], threads, same_kernels=True)
    if amx:
        # llama.cpp's default (repacked) layouts crash the process on AMX CPUs (see
        # skllmprob.llama_server): method 1 runs with the plain layouts only.
        print("AMX CPU: method 1 with llama.cpp's default kernels skipped (it crashes here)")
        m1, p1, both1 = m1s, p1s, both1s
    else:
        m1, p1, both1 = by_hand(model_path, prompts[:k], threads, same_kernels=False)
    m2, p2, _, backend = skllmprob_backend(prompts, threads, 1)
    m2p, p2p, _, _ = skllmprob_backend(prompts, threads, args.parallel)
    m3, prefix_len, mean_own = floor(backend, prompts)
    load_after = os.getloadavg()

    n = len(prompts)

    def agree(pa, pb, mask):
        d = np.abs(pa[:, 0] - pb[:, 0])[mask]
        return {
            "texts_compared": int(mask.sum()),
            "max_abs_diff": float(d.max()) if d.size else None,
            "median_abs_diff": float(np.median(d)) if d.size else None,
            "share_within_1e-3": float((d <= 1e-3).mean()) if d.size else None,
        }

    def row(m, count=n):
        return {
            "texts": count,
            "seconds": round(m.seconds, 3),
            "texts_per_second": round(count / m.seconds, 2),
            "seconds_per_text": round(m.seconds / count, 4),
            "rss_peak_mb": round(m.rss_peak_mb, 1),
            "python_peak_mb": round(m.py_peak_mb, 2),
        }

    def acc(p):
        return float((np.array(LABELS)[p.argmax(axis=1)] == y[: len(p)]).mean())

    per = {name: m.seconds / c for name, m, c in [("1", m1, k), ("1b", m1s, k), ("2", m2, n)]}
    per["3"] = m3.seconds / n
    per["2b"] = m2p.seconds / n
    results = {
        "command": "python benchmarks/local_speed.py " + " ".join(argv or sys.argv[1:]),
        "texts": n,
        "threads": threads,
        "prefix_tokens": prefix_len,
        "mean_own_tokens": round(mean_own, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "amx": amx,
            "method_1_default_kernels": "skipped (crashes on AMX)" if amx else "run",
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
        "methods": {
            "1_llama_cpp_python_by_hand": row(m1, k),
            "1b_by_hand_same_kernels": row(m1s, k),
            "2_skllmprob": row(m2),
            f"2b_skllmprob_n_parallel_{args.parallel}": row(m2p),
            "3_floor": row(m3),
        },
        "ratios": {
            "speedup_2_over_1 (per text)": round(per["1"] / per["2"], 2),
            "speedup_2_over_1b (per text)": round(per["1b"] / per["2"], 2),
            "slowdown_2_over_3": round(per["2"] / per["3"], 3),
            "speedup_2b_over_2": round(per["2"] / per["2b"], 3),
        },
        "agreement_P(positive)": {
            "2_vs_1_default_kernels": agree(p1, p2[:k], both1),
            "2_vs_1b_same_kernels": agree(p1s, p2[:k], both1s),
            "2b_vs_2": agree(p2p, p2, np.ones(n, dtype=bool)),
        },
        "accuracy": {"2": acc(p2), "2b": acc(p2p)},
        "targets": {
            "2_at_least_5x_faster_than_1": per["1"] / per["2"] >= 5,
            "2_within_1.5x_of_3": per["2"] / per["3"] <= 1.5,
            "1_and_2_agree_within_1e-3_where_1_has_both_labels": bool(
                (np.abs(p1[:, 0] - p2[:k, 0])[both1] <= 1e-3).all()
            ),
            "1b_and_2_agree_within_1e-3_where_1b_has_both_labels": bool(
                (np.abs(p1s[:, 0] - p2[:k, 0])[both1s] <= 1e-3).all()
            ),
        },
    }

    print(f"{n} texts of {test_csv} (method 1: the first {k}), {threads} thread(s), ")
    print(f"prefix {prefix_len} tokens, {mean_own:.1f} own tokens per text; ")
    print(f"load average {load} -> {load_after}\n")
    print(f"{'method':44} {'texts/s':>8} {'s/text':>8} {'RSS peak MB':>12} {'py peak MB':>11}")
    for name, r in results["methods"].items():
        print(
            f"{name:44} {r['texts_per_second']:8.2f} {r['seconds_per_text']:8.4f} "
            f"{r['rss_peak_mb']:12.1f} {r['python_peak_mb']:11.2f}"
        )
    print()
    for k, v in results["ratios"].items():
        print(f"{k:44} {v}")
    for k, v in results["agreement_P(positive)"].items():
        print(f"agreement {k:34} {v}")
    print(f"accuracy {results['accuracy']}")
    print(f"targets {results['targets']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
