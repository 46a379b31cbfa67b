"""Scrape cost of two versions side by side: python benchmarks/scrape_versions.py OLD [NEW]

OLD and NEW are source trees (a ``src`` folder holding ``workermeter``). Round after round, for
8 workers x 20 routes and 64 x 200, a child process of each version in turn builds a real store
as ``scrape_scale.py`` does (forked workers that stay alive), then times 20 scrapes after a
first, as Prometheus asks for them: the text format, and where the version answers it the
protobuf format with native histograms. It prints each version's median and best, the body and
its gzip size (what goes over the wire), per size and format.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from versions import parser_of_trees, source_trees  # noqa: E402

SIZES = [(8, 20), (64, 200)]
TEXT = "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
PROTOBUF = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,"
    + TEXT
)

CHILD = """
import gzip, json, statistics, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, {here!r})
from scrape_scale import fork_workers, release
from workermeter.exposition import Exposition
from workermeter.store import Store
workers, routes, repeat = map(int, sys.argv[1:4])
accepts = {{"text": sys.argv[4], "protobuf": sys.argv[5]}}
out = {{}}
with tempfile.TemporaryDirectory(prefix="wm-scrape-") as d:
    children = fork_workers(d, workers, routes)
    try:
        store = Store(Path(d))
        exposition = Exposition(lambda: store)
        for name, accept in accepts.items():
            body, kind = exposition.render(accept)
            if name == "protobuf" and "protobuf" not in kind:
                continue  # a version without it
            times = []
            for _ in range(repeat):
                t = time.perf_counter_ns()
                body = exposition.render(accept)[0]
                times.append((time.perf_counter_ns() - t) / 1e6)
            out[name] = {{"median": statistics.median(times), "best": min(times),
                         "bytes": len(body), "gzip": len(gzip.compress(body, 1))}}
    finally:
        release(children)
print(json.dumps(out))
"""


def child(src: Path, workers: int, routes: int, repeat: int) -> dict[str, dict[str, float]]:
    run = subprocess.run(
        [sys.executable, "-c", CHILD.format(here=str(HERE)), str(workers), str(routes),
         str(repeat), TEXT, PROTOBUF],
        env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True, text=True, check=True,
        timeout=900,
    )  # fmt: skip
    result: dict[str, dict[str, float]] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = parser_of_trees(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    trees = source_trees(args)
    runs: dict[str, list[dict[str, dict[str, float]]]] = {}
    for i in range(args.rounds):
        for workers, routes in SIZES:
            order = list(trees.items()) if i % 2 == 0 else list(reversed(trees.items()))
            for name, src in order:
                key = f"{name} {workers}x{routes}"
                runs.setdefault(key, []).append(child(src, workers, routes, args.repeat))
        print(f"round {i + 1}/{args.rounds}", file=sys.stderr, flush=True)
    print(f"{'version':8s} {'size':>7s} {'format':9s} {'median':>16s} {'best':>16s} "
          f"{'body':>9s} {'gzip':>9s}")  # fmt: skip
    for key, rounds in runs.items():
        name, size = key.split()
        for fmt in ("text", "protobuf"):
            got = [r[fmt] for r in rounds if fmt in r]
            if not got:
                continue
            medians = [g["median"] for g in got]
            bests = [g["best"] for g in got]
            print(f"{name:8s} {size:>7s} {fmt:9s} "
                  f"{min(medians):6.1f}-{max(medians):5.1f} ms "
                  f"{min(bests):6.1f}-{max(bests):5.1f} ms "
                  f"{statistics.median(g['bytes'] for g in got) / 1024:5.0f} KiB "
                  f"{statistics.median(g['gzip'] for g in got) / 1024:5.0f} KiB")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
