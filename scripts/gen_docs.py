"""Regenerate the generated parts of the docs from the code: python scripts/gen_docs.py"""

from __future__ import annotations

from pathlib import Path

from workermeter.metrics import markdown_table

MARK = "<!-- generated: do not edit the table by hand; see markdown_table() -->\n"
END = "\n## What the counters guarantee"


def main() -> None:
    path = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
    text = path.read_text()
    start = text.index(MARK) + len(MARK)
    end = text.index(END)
    path.write_text(text[:start] + markdown_table() + text[end:])


if __name__ == "__main__":
    main()
