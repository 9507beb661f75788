"""How many requests model selection sends: the completion cache's counting targets.

Each phase runs in its own Python process, against a fresh cache unless said
otherwise. Requests are counted where they are answered: by default at the
OpenAI-compatible stub server (``skllmprob.testing.openai_stub``, a separate process
on 127.0.0.1) reached through the real OpenAI backend; with ``--backend
deterministic``, by the deterministic backend appending to a counter file.

1. ``GridSearchCV`` (cv=5, 14 candidates over calibration settings) on N texts, then
   ``cross_val_score`` (cv=5) and ``CalibratedClassifierCV`` (cv=5) on the same texts,
   with n_jobs=1. Target: exactly N requests (+3 content-free prompts of
   ``calibration="contextual"``).
2. The same with n_jobs=2 (loky worker processes). Target: exactly N + 3 (the claims
   coordinate requests in flight between processes).
3. A second Python process repeating phase 2 on its cache. Target: 0.
4. ``predict_proba`` on K texts, killed with SIGKILL once half of them were answered,
   then run again. Target: the rerun sends exactly the requests that had not completed
   (K minus the entries committed before the kill).

Usage::

    python benchmarks/cache_counts.py /work/shared/data/mr --json cache_counts.json
    python benchmarks/cache_counts.py /work/shared/data/mr --backend deterministic
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LABELS = ["positive", "negative"]
GRID = [  # 2 + 8 + 4 = 14 candidates, all calibration settings
    {"calibration": ["none", "contextual"]},
    {"calibration": ["bias", "affine"], "calibration_alpha": [0.001, 0.01, 0.1, 1.0]},
    {
        "calibration": ["threshold"],
        "scoring": ["accuracy", "f1", "balanced_accuracy", "matthews_corrcoef"],
    },
]
N_CONTENT_FREE = 3  # the default content_free=("N/A", "", "[MASK]")


# -- phases (run in child processes) ----------------------------------------------------


def load_texts(data: str, n: int) -> tuple[list[str], list[str]]:
    import pandas as pd

    df = pd.read_csv(Path(data) / "test.csv")
    if len(df) < n:
        raise SystemExit(f"{data}/test.csv has {len(df)} rows; need {n}")
    df = df.iloc[:n]
    return df.text.astype(str).tolist(), df.label.astype(str).tolist()


def make_clf(args):
    from skllmprob import LogprobClassifier

    if args.backend == "stub":
        return LogprobClassifier(
            "stub-model", labels=LABELS, base_url=args.base_url, cache=args.cache, progress=False
        )
    from skllmprob.testing.counting import FileCountingBackend

    backend = FileCountingBackend(count_file=args.count_file, latency=args.latency)
    return LogprobClassifier(labels=LABELS, backend=backend, cache=args.cache, progress=False)


def phase_select(args) -> dict:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import GridSearchCV, cross_val_score

    texts, labels = load_texts(args.data, args.n)
    clf = make_clf(args)
    timings = {}
    start = time.perf_counter()
    search = GridSearchCV(clf, GRID, cv=5, n_jobs=args.n_jobs).fit(texts, labels)
    timings["grid_search_s"] = time.perf_counter() - start
    start = time.perf_counter()
    cross_val_score(clf, texts, labels, cv=5, n_jobs=args.n_jobs)
    timings["cross_val_score_s"] = time.perf_counter() - start
    start = time.perf_counter()
    CalibratedClassifierCV(clf, cv=5, n_jobs=args.n_jobs).fit(texts, labels)
    timings["calibrated_s"] = time.perf_counter() - start
    return {
        "candidates": len(search.cv_results_["params"]),
        "best_params": search.best_params_,
        **timings,
        "cache_info_parent": clf.cache_info().as_dict(),
    }


def phase_predict(args) -> dict:
    texts, _ = load_texts(args.data, args.n)
    clf = make_clf(args).fit(None, None)
    start = time.perf_counter()
    clf.predict_proba(texts)
    return {"seconds": time.perf_counter() - start, "usage": clf.usage_.last.as_dict()}


# -- the driver ---------------------------------------------------------------------------


class FileCounter:
    """Requests counted by the deterministic backend in a file (all processes)."""

    name = "deterministic backend, counter file"

    def __init__(self, tmp: str, latency: float) -> None:
        self.path = os.path.join(tmp, f"requests-{latency}.count")
        self.latency = latency

    def requests(self) -> int:
        from skllmprob.testing.counting import count

        return count(self.path)

    def per_prompt(self) -> None:
        return None  # not recorded

    def child_args(self) -> list[str]:
        return [
            "--backend",
            "deterministic",
            "--count-file",
            self.path,
            "--latency",
            str(self.latency),
        ]

    def stop(self) -> None:
        return None


class StubCounter:
    """Requests received by an OpenAI-compatible stub server in its own process."""

    name = "OpenAI backend -> stub server on 127.0.0.1 (its request counter)"

    def __init__(self, latency: float, log: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "skllmprob.testing.openai_stub", "--latency", str(latency)],
            stdout=subprocess.PIPE,
            stderr=self.log,  # a killed client's reset connections are logged there
            text=True,
            env=env,
        )
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            self.proc.kill()
            raise SystemExit("the stub server did not start")
        self.url = self.base_url.rsplit("/v1", 1)[0]

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url + "/_stub/stats", timeout=30) as r:
            return json.loads(r.read())

    def requests(self) -> int:
        return int(self.stats()["requests"])

    def per_prompt(self) -> dict[str, int]:
        return self.stats()["prompt_requests"]

    def child_args(self) -> list[str]:
        return ["--backend", "stub", "--base-url", self.base_url]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def child_cmd(args, counter, phase: str, cache: str, **extra) -> list[str]:
    cmd = [sys.executable, __file__, args.data, "--phase", phase, "--cache", cache]
    cmd += counter.child_args()
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    return cmd


def run_child(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"phase failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table_rows(path: str) -> tuple[int, int]:
    conn = sqlite3.connect(path)
    try:
        entries = conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
        claims = conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0]
    finally:
        conn.close()
    return entries, claims


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="a dataset folder with test.csv (text,label), e.g. mr")
    parser.add_argument("--n", type=int, default=500, help="texts for model selection")
    parser.add_argument("--kill-n", type=int, default=1000, help="texts of the SIGKILL run")
    parser.add_argument(
        "--latency", type=float, default=0.002, help="seconds per request (model selection)"
    )
    parser.add_argument(
        "--kill-latency", type=float, default=0.005, help="seconds per request, SIGKILL run"
    )
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument(
        "--backend",
        choices=["stub", "deterministic"],
        default="stub",
        help="count at the OpenAI stub server (default) or in the deterministic backend",
    )
    parser.add_argument("--phase", choices=["select", "predict"], help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--count-file", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--n-jobs", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        result = phase_select(args) if args.phase == "select" else phase_predict(args)
        print(json.dumps(result))
        return

    tmp = tempfile.mkdtemp(prefix="skllmprob-counts-")
    if args.backend == "stub":
        counter = StubCounter(args.latency, os.path.join(tmp, "stub.log"))
        kill_counter = StubCounter(args.kill_latency, os.path.join(tmp, "stub-kill.log"))
    else:
        counter, kill_counter = FileCounter(tmp, args.latency), FileCounter(tmp, args.kill_latency)
    try:
        rows = run_phases(args, tmp, counter, kill_counter)
    finally:
        counter.stop()
        kill_counter.stop()
    report(args, counter, rows)


def run_phases(args, tmp: str, counter, kill_counter) -> list[dict]:
    expected = args.n + N_CONTENT_FREE
    rows: list[dict] = []

    def measure(label, cmd, target, counter=counter):
        before, prompts_before = counter.requests(), counter.per_prompt()
        start = time.perf_counter()
        result = run_child(cmd)
        seconds = time.perf_counter() - start
        sent = counter.requests() - before
        rows.append({"phase": label, "requests": sent, "target": target, "seconds": seconds})
        prompts_after = counter.per_prompt()
        if prompts_after is not None:  # prompts the server saw more than once in the phase
            rows[-1]["prompts_sent_twice"] = sum(
                n - prompts_before.get(p, 0) > 1 for p, n in prompts_after.items()
            )
        rows[-1]["detail"] = result
        return result

    cache1 = os.path.join(tmp, "jobs1.sqlite")
    cache2 = os.path.join(tmp, "jobs2.sqlite")
    exp = f"=={expected}"
    for label, cache, jobs, target in [
        ("select n_jobs=1", cache1, 1, exp),
        ("select n_jobs=2", cache2, 2, exp),
        ("2nd process n_jobs=2", cache2, 2, "==0"),
        ("2nd process n_jobs=1", cache1, 1, "==0"),
    ]:
        measure(label, child_cmd(args, counter, "select", cache, n_jobs=jobs, n=args.n), target)

    # SIGKILL halfway through predict_proba, then a rerun.
    cache3 = os.path.join(tmp, "killed.sqlite")
    before = kill_counter.requests()
    cmd = child_cmd(args, kill_counter, "predict", cache3, n=args.kill_n)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    half = args.kill_n // 2
    deadline = time.monotonic() + 300
    while kill_counter.requests() - before < half and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the predict run ended before the kill:\n{proc.stderr.read()}")
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    sent_before_kill = kill_counter.requests() - before
    committed, claims_left = table_rows(cache3)
    rerun = measure(
        "rerun after SIGKILL",
        child_cmd(args, kill_counter, "predict", cache3, n=args.kill_n),
        f"=={args.kill_n - committed} (not completed)",
        counter=kill_counter,
    )
    entries_after, claims_after = table_rows(cache3)
    rows[-1]["detail"] = {
        "sent_before_kill": sent_before_kill,
        "committed_before_kill": committed,
        "sent_not_committed": sent_before_kill - committed,
        "claims_left_by_killed_process": claims_left,
        "entries_after_rerun": entries_after,
        "claims_after_rerun": claims_after,
        "rerun_usage": rerun["usage"],
    }
    rows[-1]["target_value"] = args.kill_n - committed
    return rows


def report(args, counter, rows: list[dict]) -> None:
    expected = args.n + N_CONTENT_FREE
    ok = {
        "select n_jobs=1": rows[0]["requests"] == expected,
        "select n_jobs=2": rows[1]["requests"] == expected,
        "2nd process n_jobs=2": rows[2]["requests"] == 0,
        "2nd process n_jobs=1": rows[3]["requests"] == 0,
        "rerun after SIGKILL": rows[4]["requests"] == rows[4]["target_value"],
    }
    print(
        f"requests counted by: {counter.name}; {args.n} texts of {args.data}/test.csv, "
        f"{rows[0]['detail']['candidates']} candidates, cv=5"
    )
    print(f"{'phase':<24} {'requests':>8} {'target':>28} {'twice':>6} {'seconds':>8}  ok")
    for r in rows:
        twice = r.get("prompts_sent_twice", "-")
        print(
            f"{r['phase']:<24} {r['requests']:>8} {r['target']:>28} {twice:>6} "
            f"{r['seconds']:>8.1f}  {'yes' if ok[r['phase']] else 'NO'}"
        )
    print("twice: prompts the server received more than once during the phase")
    d = rows[4]["detail"]
    print(
        f"SIGKILL run ({args.kill_n} texts): {d['sent_before_kill']} sent before the kill, "
        f"{d['committed_before_kill']} committed, {d['claims_left_by_killed_process']} claims "
        f"left behind (taken over at once: owner pid dead); after the rerun "
        f"{d['entries_after_rerun']} entries, {d['claims_after_rerun']} claims"
    )
    result = {
        "data": args.data,
        "n": args.n,
        "kill_n": args.kill_n,
        "latency": args.latency,
        "kill_latency": args.kill_latency,
        "backend": args.backend,
        "counted_by": counter.name,
        "grid": GRID,
        "rows": rows,
        "ok": ok,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    if not all(ok.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
