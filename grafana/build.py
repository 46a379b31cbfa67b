"""Write the dashboard and the rules, or check that the committed ones are up to date.

python -m grafana.build          # write grafana/workermeter.json and the rules file
python -m grafana.build --check  # exit 1, naming the stale files, if they differ
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import dashboard, rules

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "workermeter.json"
RULES = ROOT / "integrations" / "prometheus" / "workermeter-rules.yml"


def outputs() -> dict[Path, str]:
    """What each generated file must contain."""
    return {DASHBOARD: dashboard.render(), RULES: rules.render()}


def stale() -> list[Path]:
    """The generated files whose committed text differs from what the code builds."""
    return [
        path
        for path, text in outputs().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.build", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        for path in stale():
            print(
                f"{path.relative_to(ROOT)} is stale: run python -m grafana.build", file=sys.stderr
            )
        return 1 if stale() else 0
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
