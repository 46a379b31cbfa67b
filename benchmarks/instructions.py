"""Instructions added per request, counted by valgrind: python benchmarks/instructions.py

Time on a shared 2-core machine is noisy; instruction counts are not. Each case runs in a child
process under ``valgrind --tool=callgrind`` twice, with 0 and with N requests after the same
warm-up; the difference over N is what one request costs, and the bare app's is subtracted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import sys
sys.path.insert(0, {here!r})
from cases import run
from report import GROUPS
group, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
case = GROUPS[group]()[name]
run(case, 2000 if group in ("WSGI", "ASGI") else 300)
run(case, n)
"""


def count(group: str, name: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        script = Path(tmp) / "child.py"
        script.write_text(CHILD.format(here=str(HERE)))
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, str(script), group, name, str(n)],
            capture_output=True, text=True, check=True,
            # A fixed hash seed: with a random one, a count moves by a few hundred between runs.
            env={**os.environ, "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0")},
        )  # fmt: skip
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise RuntimeError(f"valgrind printed no count:\n{run.stderr[-2000:]}")
    return int(found.group(1))


def per_request(group: str, name: str, n: int) -> float:
    with ThreadPoolExecutor(2) as pool:  # two cores: the two runs side by side
        full, empty = pool.map(lambda k: count(group, name, k), (n, 0))
    return (full - empty) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=20000, help="bare WSGI/ASGI; frameworks /10"
    )
    parser.add_argument("--group", action="append", help="default: all")
    parser.add_argument(
        "--case", action="append", help="count only these cases (and the bare app); default: all"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed: apt-get install valgrind")
    sys.path.insert(0, str(HERE))
    from report import GROUPS

    result: dict[str, dict[str, float | str]] = {}
    for group in args.group or list(GROUPS):
        n = args.requests if group in ("WSGI", "ASGI") else max(args.requests // 10, 200)
        cases = GROUPS[group]()
        bare = per_request(group, "bare", n)
        rows: dict[str, float | str] = {"bare": bare}
        print(f"\n{group}: instructions per request (bare app: {bare:,.0f})", flush=True)
        for name, case in cases.items():
            if name == "bare" or (args.case and name not in args.case):
                continue
            if isinstance(case, str):
                rows[name] = case
                print(f"  {name:42s} {case}")
                continue
            added = per_request(group, name, n) - bare
            rows[name] = added
            print(f"  {name:42s} {added:10,.0f} added", flush=True)
        result[group] = rows
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
