"""Concurrency of the OpenAI backend against the stub server, next to the plainest
correct client.

The reference is one shared ``AsyncOpenAI`` client, an ``asyncio.Semaphore(C)`` and
``asyncio.gather`` over the same chat requests (``logprobs=True``, ``top_logprobs=20``,
``max_tokens=1``), parsed by the SDK. skllmprob runs ``LogprobClassifier.predict_proba``
on the same texts (the same rendered prompts reach the server) with
``max_concurrency=C`` and a fresh cache file. The stub server runs in its own process
(``python -m skllmprob.testing.openai_stub``) so that its CPU is not counted as the
client's.

Reported per run: wall time, the ideal (N x latency / C) and the ratio to it, client
CPU per request (process CPU time of this process / N), the peak number of requests in
flight seen by the server. A last run answers a fraction of requests with 429 and
``Retry-After`` and checks that every result arrives and that no prompt that already
had a result was requested again.

The same comparison runs for ``backend="decisions"`` (OpenAI's ``/v1/decisions`` on the
stub, model ``gpt-6-luna``): the reference sends the same inputs and question with
``AsyncOpenAI().decisions.create`` under the semaphore (``--part decisions`` runs
only that part, ``--part openai`` only the chat part).

    python benchmarks/openai_concurrency.py [--data /work/shared/data/sst2/test.csv]
        [--n 1000] [--latency 0.3] [--concurrency 32] [--rate-429 0.05]
        [--retry-after 0.2] [--repeat 1] [--part all|openai|decisions]
        [--out benchmarks/results/openai_concurrency.json]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

LABELS = ["positive", "negative"]
MODEL = "stub-model"
DECISION_MODEL = "gpt-6-luna"  # a decision model of the stub's /v1/decisions
KINDS = {"openai": "chat", "decisions": "decisions"}


def load_texts(path: str | None, n: int) -> list[str]:
    texts: list[str] = []
    if path:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                texts.append(row["text"])
    texts = list(dict.fromkeys(texts))
    i = 0
    while len(texts) < n:  # synthetic, distinct filler when the data is short or absent
        texts.append(f"review number {i}: a film with some good and some bad moments")
        i += 1
    return texts[:n]


class StubProcess:
    def __init__(self, latency: float, faults: list[str]) -> None:
        cmd = [sys.executable, "-m", "skllmprob.testing.openai_stub", "--latency", str(latency)]
        for f in faults:
            cmd += ["--fault", f]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            raise RuntimeError("the stub server did not start")
        self.url = self.base_url.rsplit("/v1", 1)[0]

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url + "/_stub/stats") as r:
            return json.load(r)

    def reset(self) -> None:
        req = urllib.request.Request(self.url + "/_stub/reset", data=b"{}", method="POST")
        urllib.request.urlopen(req).read()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def _timed(client, one, prompts: list[str]) -> dict:
    """Two warm-up requests (two connections, as the skllmprob runs), then every
    prompt through ``one(prompt)`` under ``asyncio.gather``, timed."""
    await asyncio.gather(*(one(f"warm up {i}") for i in range(2)))
    c0, t0 = time.process_time(), time.perf_counter()
    out = await asyncio.gather(*(one(p) for p in prompts))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    await client.close()
    return {"wall_s": wall, "cpu_s": cpu, "results": len(out)}


def run_reference_decisions(base_url: str, request: dict, concurrency: int) -> dict:
    """The plain client of ``/v1/decisions``: ``request`` holds the inputs, the
    question and the prompt_cache_key that skllmprob sends."""
    import openai

    async def main() -> dict:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-no-key-required")
        sem = asyncio.Semaphore(concurrency)

        async def one(text: str):
            async with sem:
                r = await client.decisions.create(
                    model=DECISION_MODEL,
                    input=text,
                    questions=[request["question"]],
                    prompt_cache_key=request["prompt_cache_key"],
                )
                return [(p.value, p.probability) for p in r.answers[0].probabilities]

        return await _timed(client, one, request["inputs"])

    return asyncio.run(main())


def decision_request(texts: list[str]) -> dict:
    """What ``backend="decisions"`` sends for ``texts``: the inputs, the question and
    its prompt_cache_key (read from a fitted classifier, no request sent)."""
    from skllmprob.backends.decisions.estimator import decision_call

    clf = make_classifier("http://127.0.0.1:9/v1", 1, None, "decisions")
    backend, inputs = decision_call(clf, clf.backend_, clf.render_prompts(texts))
    question = backend._question(tuple(clf.answers_))
    return {
        "inputs": inputs,
        "question": question,
        "prompt_cache_key": backend.prompt_cache_key(question),
    }


def run_reference(base_url: str, prompts: list[str], concurrency: int) -> dict:
    import openai

    async def main() -> dict:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-no-key-required")
        sem = asyncio.Semaphore(concurrency)

        async def one(prompt: str):
            async with sem:
                r = await client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": prompt}],
                    logprobs=True,
                    top_logprobs=20,
                    max_tokens=1,
                    temperature=1.0,
                )
                top = r.choices[0].logprobs.content[0].top_logprobs
                return [(t.token, t.logprob) for t in top]

        return await _timed(client, one, prompts)

    return asyncio.run(main())


def make_classifier(base_url: str, concurrency: int, cache, backend: str = "openai"):
    from skllmprob import LogprobClassifier

    decisions = backend == "decisions"
    return LogprobClassifier(
        DECISION_MODEL if decisions else MODEL,
        backend="decisions" if decisions else "auto",
        labels=LABELS,
        base_url=base_url,
        api_key="sk-no-key-required" if decisions else None,
        max_concurrency=concurrency,
        cache=cache if cache is not None else False,
        progress=False,
    ).fit(None, None)


def run_skllmprob(
    base_url: str, texts: list[str], concurrency: int, tmp: str, backend: str = "openai"
) -> dict:
    cache = os.path.join(tmp, f"cache-{time.perf_counter_ns()}.sqlite")
    clf = make_classifier(base_url, concurrency, cache, backend)
    clf.predict_proba(["warm up 0", "warm up 1"])
    c0, t0 = time.process_time(), time.perf_counter()
    proba = clf.predict_proba(texts)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall_s": wall, "cpu_s": cpu, "results": int(proba.shape[0])}


def compare(args, texts: list[str], sent: list[str], backend: str) -> dict:
    """``--repeat`` runs of the reference and skllmprob, alternating, against one stub;
    ``sent``: what reaches the server for each text (the chat prompts, or the
    decision inputs)."""
    rows: dict[str, list[dict]] = {"reference": [], "skllmprob": []}
    peaks: dict[str, int] = {}
    request = decision_request(texts) if backend == "decisions" else None
    stub = StubProcess(args.latency, [])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.repeat):
                for name in ("reference", "skllmprob"):
                    stub.reset()
                    if name == "skllmprob":
                        r = run_skllmprob(stub.base_url, texts, args.concurrency, tmp, backend)
                    elif request is not None:
                        r = run_reference_decisions(stub.base_url, request, args.concurrency)
                    else:
                        r = run_reference(stub.base_url, sent, args.concurrency)
                    s = stub.stats()
                    r["peak_in_flight"] = s["peak_in_flight"]
                    r["server_requests"] = s["requests"]
                    peaks[name] = max(peaks.get(name, 0), s["peak_in_flight"])
                    rows[name].append(r)
    finally:
        stub.close()
    return {"runs": rows, "peak_in_flight": peaks, "run_429": run_429(args, texts, sent, backend)}


def run_429(args, texts: list[str], sent: list[str], backend: str) -> dict:
    """skllmprob with a fraction of the requests answered 429: every result, no text
    answered twice."""
    fault = f"429,probability={args.rate_429},times=none,retry_after={args.retry_after}"
    stub = StubProcess(args.latency, [fault])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            r429 = run_skllmprob(stub.base_url, texts, args.concurrency, tmp, backend)
            r429["wall_s"] = time.perf_counter() - t0
            s = stub.stats()
    finally:
        stub.close()
    successes = s["prompt_successes"]
    r429.update(
        server_requests=s["requests"],
        status_429=int(s["status_counts"].get("429", 0)),
        prompts_answered=sum(1 for p in sent if successes.get(p, 0) >= 1),
        prompts_answered_twice=sum(1 for p in sent if successes.get(p, 0) > 1),
        peak_in_flight=s["peak_in_flight"],
    )
    return r429


def med(part: dict, name: str, key: str) -> float:
    return statistics.median(r[key] for r in part["runs"][name])


def report(args, part: dict, backend: str, n: int, ideal: float) -> dict:
    """Print one part's table and 429 line; returns its summary."""
    kind = KINDS[backend]
    ref_wall, sk_wall = med(part, "reference", "wall_s"), med(part, "skllmprob", "wall_s")
    reference = "AsyncOpenAI().decisions.create" if kind == "decisions" else "AsyncOpenAI"
    table = [
        (f"reference ({reference} + Semaphore + gather)", "reference"),
        (f"skllmprob predict_proba (backend={backend!r})", "skllmprob"),
    ]
    client = f"client ({kind})"
    header = f"{client:64} {'wall s':>8} {'x ideal':>8} {'CPU ms/req':>11} {'peak':>5}"
    print(header)
    print("-" * len(header))
    for label, name in table:
        wall = med(part, name, "wall_s")
        cpu = med(part, name, "cpu_s") / n * 1000
        peak = part["peak_in_flight"][name]
        print(f"{label:64} {wall:8.2f} {wall / ideal:8.3f} {cpu:11.2f} {peak:5d}")
    target = 1.05 if kind == "decisions" else 1.1
    print(f"\nskllmprob / reference wall time: {sk_wall / ref_wall:.3f} (target <= {target})")
    r429 = part["run_429"]
    print(
        f"\n429 run ({args.rate_429:.0%} of requests answered 429, Retry-After "
        f"{args.retry_after} s): {r429['results']} / {n} results in {r429['wall_s']:.2f} s, "
        f"{r429['server_requests']} requests ({r429['status_429']} answered 429), "
        f"{r429['prompts_answered']} prompts answered, {r429['prompts_answered_twice']} "
        f"answered more than once, peak in flight {r429['peak_in_flight']}\n"
    )
    return {
        "ratio_skllmprob_to_reference": sk_wall / ref_wall,
        "reference_x_ideal": ref_wall / ideal,
        "skllmprob_x_ideal": sk_wall / ideal,
        "cpu_ms_per_request": {
            k: med(part, k, "cpu_s") / n * 1000 for k in ("reference", "skllmprob")
        },
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="CSV with a 'text' column (optional)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rate-429", type=float, default=0.05)
    ap.add_argument("--retry-after", type=float, default=0.2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--part", choices=["all", "openai", "decisions"], default="all")
    ap.add_argument("--out", default="benchmarks/results/openai_concurrency.json")
    args = ap.parse_args(argv)

    from skllmprob import LogprobClassifier

    texts = load_texts(args.data, args.n)
    n, c, lat = len(texts), args.concurrency, args.latency
    ideal = n * lat / c
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nN={n} texts, latency={lat} s, concurrency={c}, ideal={ideal:.2f} s "
        f"(N x latency / concurrency); {platform.machine()}, {os.cpu_count()} cores, "
        f"load average {load:.1f}, median of {args.repeat} run(s)\n"
    )
    out: dict = {
        "n": n,
        "latency_s": lat,
        "concurrency": c,
        "ideal_s": ideal,
        "repeat": args.repeat,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1min": load,
        },
    }
    if args.part in ("all", "openai"):
        renderer = LogprobClassifier(MODEL, labels=LABELS, backend="deterministic").fit(None, None)
        part = compare(args, texts, renderer.render_prompts(texts), "openai")
        out.update(part)
        out.update(report(args, part, "openai", n, ideal))
    if args.part in ("all", "decisions"):
        sent = decision_request(texts)["inputs"]
        part = compare(args, texts, sent, "decisions")
        out["decisions"] = {**part, **report(args, part, "decisions", n, ideal)}
    out["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
