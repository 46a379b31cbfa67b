"""Two versions of workermeter side by side, per request: python benchmarks/versions.py OLD NEW

OLD and NEW are source trees (a ``src`` folder holding ``workermeter``), say a ``git worktree``
of an earlier commit and this one. Round after round, a child process of each version in turn
runs the bare WSGI and ASGI apps and the same apps with workermeter (the header and a route
present, the shared store on); the time one request adds is the difference with the bare app of
the same child. It prints, for each version, the median and the spread (25th-75th percentile) of
the rounds, and the median of NEW minus OLD over the rounds, with its spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import json, sys, time
sys.path.insert(0, {here!r})
from cases import asgi_cases, run, wsgi_cases
n = int(sys.argv[1])
out = {{}}
for group, cases in (("WSGI", wsgi_cases), ("ASGI", asgi_cases)):
    built = cases()
    pair = {{name: built[name] for name in ("bare", "workermeter")}}
    for case in pair.values():
        run(case, 2000)
    times = {{}}
    for _ in range(3):  # the best of 3 in this child, case after case
        for name, case in pair.items():
            start = time.perf_counter_ns()
            run(case, n)
            took = (time.perf_counter_ns() - start) / n
            times[name] = min(times.get(name, took), took)
    out[group] = times["workermeter"] - times["bare"]
print(json.dumps(out))
"""


def child(src: Path, n: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    run = subprocess.run(
        [sys.executable, "-c", CHILD.format(here=str(HERE)), str(n)],
        env=env, capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    result: dict[str, float] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def spread(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return f"{statistics.median(values):6.0f} ns  ({q[0]:.0f} to {q[2]:.0f})"


def parser_of_trees(doc: str) -> argparse.ArgumentParser:
    """A command line that takes the two source trees, OLD and NEW (default: this one)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("old", type=Path, help="the earlier version's tree")
    parser.add_argument("new", type=Path, nargs="?", default=HERE.parent, help="default: this one")
    return parser


def source_trees(args: argparse.Namespace) -> dict[str, Path]:
    """The ``src`` folders of the two trees, by name; exits when one holds no workermeter."""
    trees = {"old": args.old.resolve() / "src", "new": args.new.resolve() / "src"}
    for tree in trees.values():
        if not (tree / "workermeter" / "__init__.py").exists():
            sys.exit(f"{tree} holds no workermeter package: give a source tree")
    return trees


def main() -> None:
    parser = parser_of_trees(__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    trees = source_trees(args)
    rows: dict[str, dict[str, list[float]]] = {k: {"WSGI": [], "ASGI": []} for k in trees}
    for i in range(args.rounds):
        order = list(trees.items()) if i % 2 == 0 else list(reversed(trees.items()))
        for name, src in order:
            for group, added in child(src, args.requests).items():
                rows[name][group].append(added)
        print(f"round {i + 1}/{args.rounds}", file=sys.stderr, flush=True)
    for group in ("WSGI", "ASGI"):
        print(f"{group}: time added per request, {args.rounds} rounds")
        for name in trees:
            print(f"  {name}: {spread(rows[name][group])}")
        diffs = [b - a for a, b in zip(rows["old"][group], rows["new"][group], strict=True)]
        print(f"  new - old: {spread(diffs)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
