"""Instructions added per request, counted by valgrind: python benchmarks/instructions.py

Time on a shared 2-core machine is noisy; instruction counts are not. Each case runs in a child
process under ``valgrind --tool=callgrind`` twice, with 0 and with N requests after the same
warm-up; the difference over N is what one request costs, and the bare app's is subtracted.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import sys
sys.path.insert(0, {here!r})
from cases import asgi_cases, wsgi_cases
family, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
case = (wsgi_cases() if family == "wsgi" else asgi_cases())[name]
for _ in range(2000):
    case()
for _ in range(n):
    case()
"""


def count(family: str, name: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        script = Path(tmp) / "child.py"
        script.write_text(CHILD.format(here=str(HERE)))
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, str(script), family, name, str(n)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise RuntimeError(f"valgrind printed no count:\n{run.stderr[-2000:]}")
    return int(found.group(1))


def per_request(family: str, name: str, n: int) -> float:
    return (count(family, name, n) - count(family, name, 0)) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed: apt-get install valgrind")
    sys.path.insert(0, str(HERE))
    from cases import asgi_cases, wsgi_cases

    for family, cases in (("wsgi", wsgi_cases()), ("asgi", asgi_cases())):
        bare = per_request(family, "bare", args.requests)
        print(f"\n{family.upper()}: instructions per request (bare app: {bare:,.0f})")
        for name in cases:
            if name != "bare":
                added = per_request(family, name, args.requests) - bare
                print(f"  {name:32s} {added:10,.0f} added")


if __name__ == "__main__":
    main()
