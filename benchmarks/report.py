"""Interleaved overhead report: python benchmarks/report.py [--rounds N]

Runs every case of a family in turn, round after round, so that whatever else the machine does
hits all cases alike; prints the median time per request and the time added over the bare app.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from cases import Case, asgi_cases, wsgi_cases


def per_call_ns(case: Case, n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        case()
    return (time.perf_counter_ns() - start) / n


def run(family: str, cases: dict[str, Case], rounds: int, n: int) -> None:
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for case in cases.values():
        per_call_ns(case, n // 10)  # warm up: attach the store, allocate records
    for _ in range(rounds):
        for name, case in cases.items():
            samples[name].append(per_call_ns(case, n))
    bare = statistics.median(samples["bare"])
    print(f"\n{family}: median of {rounds} interleaved rounds of {n} requests")
    print(f"{'case':32s} {'per request':>12s} {'added':>10s}")
    for name, values in samples.items():
        med = statistics.median(values)
        added = "" if name == "bare" else f"{(med - bare) / 1000:8.2f} µs"
        print(f"{name:32s} {med / 1000:9.2f} µs {added:>10s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    run("WSGI", wsgi_cases(), args.rounds, args.requests)
    run("ASGI", asgi_cases(), args.rounds, args.requests)


if __name__ == "__main__":
    main()
