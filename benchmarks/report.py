"""Interleaved overhead report: python benchmarks/report.py [--rounds N] [--json FILE]

Runs every case of a group (bare WSGI, bare ASGI, Flask, FastAPI, Django) in turn, round after
round, so that whatever else the machine does hits all cases alike; prints the median time per
request and the time added over the bare app of the same group, with the spread (the 25th and
75th percentile of the per-round differences). Peers that cannot be installed are listed with
the reason.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from cases import Case, asgi_cases, run, wsgi_cases
from peers import django_cases, fastapi_cases, flask_cases, versions

GROUPS = {
    "WSGI": wsgi_cases,
    "ASGI": asgi_cases,
    "Flask": flask_cases,
    "FastAPI": fastapi_cases,
    "Django": django_cases,
}


def per_call_ns(case: Case, n: int) -> float:
    start = time.perf_counter_ns()
    run(case, n)
    return (time.perf_counter_ns() - start) / n


def measure(group: str, built: dict[str, Case | str], rounds: int, n: int) -> dict[str, object]:
    cases = {name: c for name, c in built.items() if not isinstance(c, str)}
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for case in cases.values():
        per_call_ns(case, max(n // 10, 100))  # warm up: attach the store, allocate records
    for _ in range(rounds):
        for name, case in cases.items():
            samples[name].append(per_call_ns(case, n))
    rows: dict[str, object] = {}
    print(f"\n{group}: median of {rounds} interleaved rounds of {n} requests")
    print(f"{'case':42s} {'per request':>12s} {'added':>10s} {'spread (IQR)':>18s}")
    for name, values in samples.items():
        med = statistics.median(values)
        # Paired by round: each round's case against the bare app of the same round.
        added = [(v - b) / 1000 for v, b in zip(values, samples["bare"], strict=True)]
        q1, _, q3 = statistics.quantiles(added, n=4)
        rows[name] = {"per_request_us": med / 1000, "added_us": statistics.median(added),
                      "q1_us": q1, "q3_us": q3}  # fmt: skip
        text = "" if name == "bare" else f"{statistics.median(added):7.2f} µs"
        spread = "" if name == "bare" else f"{q1:7.2f} to {q3:6.2f}"
        print(f"{name:42s} {med / 1000:9.2f} µs {text:>10s} {spread:>18s}")
    for name, why in built.items():
        if isinstance(why, str):
            rows[name] = {"unavailable": why}
            print(f"{name:42s} {why}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=20000, help="per round, bare apps")
    parser.add_argument("--group", action="append", choices=list(GROUPS), help="default: all")
    parser.add_argument("--json", type=Path, help="write the results here (for plot.py)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the spread needs two rounds)")
    result: dict[str, object] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "versions": versions(),
        "groups": {},
    }
    for group in args.group or list(GROUPS):
        # Framework requests cost 10-100x a bare app's: fewer per round keep rounds short.
        n = args.requests if group in ("WSGI", "ASGI") else max(args.requests // 10, 200)
        result["groups"][group] = measure(group, GROUPS[group](), args.rounds, n)  # type: ignore[index]
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
