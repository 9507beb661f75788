"""Faults injected into long runs against an OpenAI-compatible server, and what came out.

Runs the scenarios of ``tests/fault_server.py`` and ``tests/fault_clients.py`` (the
same code that ``tests/test_reliability.py`` asserts on) at full size and prints one table:

- mixed faults: 2,000 texts; 5% of all requests get a 429 with ``Retry-After``, 2% of
  the texts a 500 once, 1% of the texts no answer once (client timeout 1 s);
- server goes away: the server process is killed (``SIGKILL``) after 40% of the
  requests, the call fails, the server comes back on the same port, the call is
  made again (once with short retries, once with the library's defaults:
  ``max_retries=5``, ``max_concurrency=8``, to show how long a user waits);
- client SIGKILL: the classifying process is killed at 5 random points of a
  1,000-text run, then the run is finished;
- shared cache: 2 processes x 4 threads classify overlapping windows of 800 texts
  with one cache file.

Columns: requests the server received; retries (requests without a kept answer);
resent (texts asked for again after the server had answered them: 0 except for a
client killed with answers not yet committed); results; lost (texts whose final
probabilities differ from an uninterrupted run, or that have none: must be 0);
corrupt (undecodable cache entries or a failed ``PRAGMA integrity_check``: must be
0).

    python benchmarks/faults.py [--n 2000] [--json benchmarks/results/faults.json]

Exits with status 1 if anything was lost or corrupt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The scenarios are test code (tests/fault_*.py), imported from the checkout; its
# skllmprob first too, so that a checkout runs without installing.
for _path in (ROOT / "tests", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import fault_clients  # noqa: E402
import fault_server  # noqa: E402


def run(args) -> list:
    tmp = Path(tempfile.mkdtemp(prefix="skllmprob-faults-bench-"))
    os.environ.setdefault("SKLLMPROB_CACHE_DIR", str(tmp / "default-cache"))
    plan = {
        "mixed": lambda: fault_server.mixed_faults(
            args.n,
            rate_429=args.rate_429,
            rate_500=args.rate_500,
            rate_timeout=args.rate_timeout,
            cache=str(tmp / "mixed.sqlite"),
        ),
        "away": lambda: fault_server.server_goes_away(args.away_n, cache=str(tmp / "away.sqlite")),
        "away-defaults": lambda: fault_server.server_goes_away(
            args.away_n,
            max_retries=5,
            max_concurrency=8,
            timeout=60.0,
            cache=str(tmp / "away-defaults.sqlite"),
        ),
        "kill": lambda: fault_clients.client_sigkills(
            args.kill_n, kills=args.kills, cache=str(tmp / "kill.sqlite")
        ),
        "shared": lambda: fault_clients.shared_cache(
            args.shared_n, cache=str(tmp / "shared.sqlite")
        ),
    }
    results = []
    for name in args.scenarios:
        t0 = time.perf_counter()
        r = plan[name]()
        r.details["wall_seconds"] = time.perf_counter() - t0
        if name == "away-defaults":
            r.scenario += " (defaults)"
        results.append(r)
        print(f"  done: {r.scenario} ({r.details['wall_seconds']:.1f} s)", file=sys.stderr)
    return results


def injected_text(r) -> str:
    return ", ".join(f"{k}: {v}" for k, v in r.injected.items()) or "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="texts of the mixed-fault run")
    parser.add_argument("--rate-429", type=float, default=0.05)
    parser.add_argument("--rate-500", type=float, default=0.02)
    parser.add_argument("--rate-timeout", type=float, default=0.01)
    parser.add_argument("--away-n", type=int, default=600)
    parser.add_argument("--kill-n", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--shared-n", type=int, default=800)
    parser.add_argument(
        "--scenarios",
        nargs="+",
        default=["mixed", "away", "away-defaults", "kill", "shared"],
        choices=["mixed", "away", "away-defaults", "kill", "shared"],
    )
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    results = run(args)

    header = [
        "scenario", "texts", "injected", "requests", "retries", "resent", "results",
        "lost", "corrupt", "seconds",
    ]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        row = [
            r.scenario, r.texts, injected_text(r), r.requests, r.retries, r.resent,
            r.results, r.lost, r.corrupt, f"{r.details['wall_seconds']:.1f}",
        ]  # fmt: skip
        print("| " + " | ".join(str(v) for v in row) + " |")
    for r in results:
        for e in r.errors:
            print(f"{r.scenario}: error raised: {e}")
        if "seconds_to_fail" in r.details:
            d = r.details
            print(
                f"{r.scenario}: failed {d['seconds_from_kill_to_error']:.1f} s after the "
                f"kill ({d['seconds_to_fail']:.1f} s after the start) with "
                f"{d['errors_raised_by_the_failing_call']} error; cached "
                f"{d['texts_cached_after_failure']}, rerun sent {d['rerun_requests']} "
                f"({d['rerun_texts_already_cached']} of them already cached)"
            )
        if "rounds" in r.details:
            for i, rd in enumerate(r.details["rounds"], 1):
                print(
                    f"{r.scenario}: kill {i} {rd['kill']}: {rd['requests']} requests, "
                    f"{rd['entries']} entries, {rd['claims_left']} claims left, "
                    f"integrity {rd['integrity']}"
                )
    bad = [r.scenario for r in results if r.lost or r.corrupt]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        out = {
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "args": vars(args),
            "results": [r.as_dict() for r in results],
        }
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    if bad:
        print(f"LOST OR CORRUPT RESULTS in: {bad}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
