"""Draw docs/img/overhead.png from report.py's results.

    python benchmarks/report.py --json overhead.json
    python benchmarks/plot.py overhead.json docs/img/overhead.png

One panel per group (bare WSGI, bare ASGI, Flask, FastAPI, Django): the time each meter adds per
request over the bare app, median of the interleaved rounds, with the interquartile range of the
per-round differences; log scale, because the meters span 0.5 to 130 µs. "workermeter" is its
compiled hot path, "workermeter, pure Python" the pure-Python one, in the same run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# The first prefix a name starts with picks its colour.
COLOURS = {
    "workermeter, pure Python": "#66c2a5",
    "workermeter": "#1b9e77",
    "prometheus_client": "#7570b3",
}


def colour(name: str) -> str:
    for prefix, c in COLOURS.items():
        if name.startswith(prefix):
            return c
    return "#d95f02"


def main() -> None:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    data = json.loads(source.read_text())
    groups = data["groups"]
    heights = [sum(1 for r in rows.values() if "added_us" in r) - 1 for rows in groups.values()]
    fig, axes = plt.subplots(
        len(groups), 1, figsize=(9, 1.6 + 0.42 * sum(heights)), sharex=True,
        gridspec_kw={"height_ratios": heights},
    )  # fmt: skip
    for ax, (group, rows) in zip(axes, groups.items(), strict=True):
        names = [n for n, r in rows.items() if n != "bare" and "added_us" in r][::-1]
        added = [rows[n]["added_us"] for n in names]
        low = [max(a - rows[n]["q1_us"], 0) for n, a in zip(names, added, strict=True)]
        high = [max(rows[n]["q3_us"] - a, 0) for n, a in zip(names, added, strict=True)]
        ax.barh(names, added, xerr=[low, high], color=[colour(n) for n in names], capsize=2)
        for y, (a, h) in enumerate(zip(added, high, strict=True)):
            ax.text((a + h) * 1.08, y, f"{a:.1f} µs", va="center", fontsize=8)
        bare = rows["bare"]["per_request_us"]
        ax.set_title(f"{group} (bare app: {bare:.1f} µs per request)", fontsize=9, loc="left")
        ax.tick_params(axis="y", labelsize=8)
        ax.set_xscale("log")
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[-1].set_xlim(0.2, 400)
    axes[-1].set_xlabel("time added per request over the bare app (µs, log scale; bars: IQR)")
    fig.suptitle(
        f"Per-request overhead, CPython {data['python']}, 2 shared cores", fontsize=10, x=0.01,
        ha="left",
    )  # fmt: skip
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main()
