"""Draw dashboard panels from Prometheus range-query results, in Grafana's dark style.

Grafana cannot run in the test environment, so the picture in the docs is drawn with matplotlib
from the answers a real Prometheus gave to the dashboard's own queries (``test_prometheus.py``
does it when ``WORKERMETER_DASHBOARD_PNG`` names the file to write). matplotlib is imported when
a picture is drawn, so nothing else needs it: ``pip install -e '.[docs]'``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKGROUND = "#111217"
PANEL = "#181b1f"
GRID = "#2c3235"
TEXT = "#ccccdc"
THRESHOLD = "#f2495c"
# Grafana's classic palette, in order.
PALETTE = ("#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9")


@dataclass(frozen=True)
class Line:
    label: str
    times: Sequence[float]  # seconds since the start of the picture
    values: Sequence[float]


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str  # "percentunit", "s" or anything else (plain numbers)
    lines: Sequence[Line]
    threshold: float | None = None


def _axis_format(unit: str, value: float, _position: object) -> str:
    if unit == "percentunit":
        return f"{value:.0%}"
    if unit == "s":
        return f"{value * 1000:.0f} ms"
    return f"{value:g}"


def draw(
    charts: Sequence[Chart],
    path: Path,
    *,
    title: str,
    marks: Sequence[tuple[float, str]] = (),
    columns: int = 2,
) -> None:
    """Write ``charts`` as a grid of panels to the PNG ``path``; ``marks`` are ``(time, label)``
    events drawn as dotted vertical lines on every chart."""
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")  # no display
    pyplot: Any = importlib.import_module("matplotlib.pyplot")
    ticker: Any = importlib.import_module("matplotlib.ticker")
    rows = -(-len(charts) // columns)
    figure, axes = pyplot.subplots(
        rows, columns, figsize=(6.4 * columns, 3.6 * rows), squeeze=False, facecolor=BACKGROUND
    )
    figure.suptitle(title, color=TEXT, fontsize=13, x=0.01, ha="left")
    for ax, chart in zip(axes.flat, charts, strict=False):
        ax.set_facecolor(PANEL)
        ax.set_title(chart.title, color=TEXT, fontsize=11, loc="left")
        for i, line in enumerate(chart.lines):
            ax.plot(line.times, line.values, color=PALETTE[i % len(PALETTE)], lw=1.6)
            ax.plot([], [], color=PALETTE[i % len(PALETTE)], label=line.label)
        if chart.threshold is not None:
            ax.axhline(chart.threshold, color=THRESHOLD, lw=1, ls="--")
        ax.set_ylim(bottom=0)
        for at, label in marks:
            ax.axvline(at, color=TEXT, lw=0.8, ls=":")
            ax.annotate(
                label, (at, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -10),
                textcoords="offset points", color=TEXT, fontsize=8,
            )  # fmt: skip
        ax.yaxis.set_major_formatter(
            ticker.FuncFormatter(lambda v, p, unit=chart.unit: _axis_format(unit, v, p))
        )
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _p: f"{v:.0f} s"))
        ax.tick_params(colors=TEXT, labelsize=8)
        ax.grid(color=GRID, lw=0.6)
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(0.0, -0.1),
            fontsize=8,
            frameon=False,
            labelcolor=TEXT,
            ncol=min(4, len(chart.lines)),
        )
    for ax in list(axes.flat)[len(charts) :]:
        ax.set_visible(False)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Without a date in the metadata, the same data draws the same bytes.
    figure.savefig(path, dpi=100, facecolor=BACKGROUND, metadata={"Software": None})
    pyplot.close(figure)
