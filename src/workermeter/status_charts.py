"""The status page's four charts, drawn on the server as inline SVG from the rows of
``/metrics/status.json``: utilisation, queue wait, requests and memory.

A gap (a row with nothing recorded) and an unknown value break a line: neither is drawn as zero.
Each line's ``data-values`` holds the rows' raw values (JSON, null where unknown) and each chart's
``data-times`` their times, so that the page's script and the tests read back exactly what was
drawn; the script's cursor maps a pointer to a row through ``data-left``/``data-right``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 30, 30, 10, 26  # the plot's margins, where the axis labels go
SATURATED = 0.8  # the utilisation alert rule's threshold: the dashed line, the shaded band
MIB = 1 << 20
MISSING = "\u2013"  # an en dash, where a value is unknown

Row = dict[str, Any]


@dataclass(frozen=True)
class Series:
    """One line: its name in the readout, its CSS class, and its value in a row."""

    name: str
    css: str
    value: Callable[[Row], float | None]
    right: bool = False  # on the right-hand axis


def field(name: str) -> Callable[[Row], float | None]:
    def value(row: Row) -> float | None:
        v = row.get(name)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    return value


def errors_per_second(row: Row) -> float | None:
    """Errors over the seconds covered, as ``requests_per_second`` is: the minute under way
    counts the seconds gone, not 60."""
    errors, seconds = row.get("errors"), row.get("covered_seconds") or row.get("seconds")
    return errors / seconds if errors is not None and seconds else None


def saturated(row: Row) -> bool:
    busy, used = row.get("all_busy_seconds"), row.get("utilisation")
    return bool(busy and busy > 0) or (used is not None and used >= SATURATED)


# ------------------------------------------------------------------------------ the four charts


def charts(data: dict[str, Any]) -> str:
    rows: list[Row] = data.get("rows") or []
    ceiling = (data.get("suggestion") or {}).get("memory_ceiling_per_worker")
    return "\n".join([
        chart(
            "utilisation", "Utilisation", rows, "ratio",
            [Series("busy", "s1", field("utilisation")),
             Series("slots", "cap", field("slots"), right=True)],
            top=1.0, rules=[(SATURATED, "")],
        ),
        chart(
            "queue", "Queue wait", rows, "seconds",
            [Series("p50", "s1", field("queue_wait_p50")),
             Series("p95", "s2", field("queue_wait_p95"))],
            bands=[saturated(row) for row in rows],
        ),
        chart(
            "requests", "Requests", rows, "rate",
            [Series("requests/s", "s1", field("requests_per_second")),
             Series("errors/s", "err", errors_per_second)],
        ),
        chart(
            "memory", "Memory per worker", rows, "bytes",
            [Series("RSS", "s1", field("rss_max")), Series("USS", "s2", field("uss_max"))],
            rules=[(float(ceiling), "ceiling")] if ceiling else [],
        ),
    ])  # fmt: skip


def chart(
    key: str,
    title: str,
    rows: Sequence[Row],
    unit: str,
    series: Sequence[Series],
    *,
    top: float | None = None,
    rules: Sequence[tuple[float, str]] = (),
    bands: Sequence[bool] = (),
) -> str:
    """One chart: a ``<figure>`` holding the SVG and, under it, the cursor's readout."""
    n = len(rows)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (i * plot_w / (n - 1) if n > 1 else plot_w / 2)

    values = {s.name: [s.value(r) for r in rows] for s in series}
    left = [v for s in series if not s.right for v in values[s.name] if v is not None]
    right = [v for s in series if s.right for v in values[s.name] if v is not None]
    data_max = max(left, default=0.0)
    # A rule far above the data (a memory ceiling of gigabytes over lines of megabytes) would
    # flatten them: it is then named at the top, not drawn.
    drawn = [(v, label) for v, label in rules if top is not None or v <= 3 * max(data_max, 1e-12)]
    y_max = top if top is not None else nice(max([data_max, *(v for v, _ in drawn)]))
    # The right-hand axis is the capacity's: its most slots at the top, at 100 % busy.
    r_max = max(right, default=0.0) or 1.0

    def y(v: float, scale: float) -> float:
        return TOP + plot_h - min(max(v / scale, 0.0), 1.05) * plot_h

    out = [
        f'<svg id="chart-{key}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" data-unit="{unit}" data-left="{LEFT}" '
        f'data-right="{WIDTH - RIGHT}" data-times="{_json([r.get("time") for r in rows])}">',
        f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}"/>',
    ]
    for i, j in _runs(bands):  # saturated rows: a band from the middle of a step to the next
        x0, x1 = max(x(i) - _half(n, plot_w), LEFT), min(x(j) + _half(n, plot_w), LEFT + plot_w)
        out.append(
            f'<rect class="band" x="{x0:.1f}" y="{TOP}" width="{x1 - x0:.1f}" height="{plot_h}">'
            f"<title>saturated</title></rect>"
        )
    for v, label in drawn:
        yy = y(v, y_max)
        named = f"{label} {show(v, unit)}".strip()
        out.append(
            f'<line class="rule" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}" '
            f'data-value="{_json(v)}"/><text class="label" x="{LEFT + plot_w - 2}" '
            f'y="{yy - 3:.1f}" text-anchor="end">{escape(named)}</text>'
        )
    for v, label in rules:
        if (v, label) not in drawn:
            out.append(
                f'<text class="label off-scale" x="{LEFT + plot_w - 2}" y="{TOP + 10}" '
                f'text-anchor="end" data-value="{_json(v)}">{escape(label)} '
                f"{escape(show(v, unit))} (above)</text>"
            )
    for s in series:
        scale = r_max if s.right else y_max
        points = [None if v is None else (x(i), y(v, scale)) for i, v in enumerate(values[s.name])]
        out.append(
            f'<path class="line {s.css}" d="{_path(points)}" data-name="{escape(s.name)}" '
            f'data-unit="{"count" if s.right else unit}" '
            f'data-values="{_json(values[s.name])}"/>'
        )
        out += [
            f'<circle class="dot {s.css}" cx="{p[0]:.1f}" cy="{p[1]:.1f}" r="2.5"/>'
            for p in _alone(points)
        ]
    # The left axis' top inside the plot, over the lines, so that no margin has to fit it.
    out.append(_axis("left", LEFT - 4, LEFT + 4, y_max, unit))
    if right:
        out.append(_axis("right", WIDTH - RIGHT + 4, WIDTH - RIGHT + 4, r_max, "count"))
    for i in sorted({0, n // 2, n - 1}) if n else ():
        anchor = "start" if i == 0 and n > 1 else "end" if i == n - 1 and n > 1 else "middle"
        when = str(rows[i].get("time") or "")
        out.append(
            f'<text class="time" x="{x(i):.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}" '
            f'data-time="{escape(when)}">{escape(_short(when))}</text>'
        )
    if not any(v is not None for vs in values.values() for v in vs):
        out.append(
            f'<text class="empty" x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" '
            f'text-anchor="middle">nothing recorded</text>'
        )
    out.append(
        f'<line class="cursor" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}" '
        f'visibility="hidden"/></svg>'
    )
    legend = "".join(f'<span class="key {s.css}">{escape(s.name)}</span>' for s in series)
    return (
        f'<figure class="figure" id="figure-{key}"><figcaption><h3>{escape(title)}</h3>'
        f"{legend}</figcaption>{''.join(out)}"
        f'<p class="readout" id="readout-{key}" aria-live="polite">&#160;</p></figure>'
    )


def _axis(side: str, x0: float, x_top: float, top: float, unit: str) -> str:
    """An axis' labels: 0 at ``x0``, its ``top`` at ``x_top``."""
    anchor = "end" if side == "left" else "start"
    return (
        f'<text class="axis axis-{side}" x="{x_top}" y="{TOP + 13}" text-anchor="start" '
        f'data-max="{_json(top)}">{escape(show(top, unit))}</text>'
        f'<text class="axis" x="{x0}" y="{HEIGHT - BOTTOM}" text-anchor="{anchor}">0</text>'
    )


def _path(points: Sequence[tuple[float, float] | None]) -> str:
    """An SVG path through ``points``, lifted at each None."""
    parts: list[str] = []
    pen_down = False
    for p in points:
        if p is None:
            pen_down = False
            continue
        parts.append(f"{'L' if pen_down else 'M'}{p[0]:.1f} {p[1]:.1f}")
        pen_down = True
    return " ".join(parts)


def _alone(points: Sequence[tuple[float, float] | None]) -> list[tuple[float, float]]:
    """The points with no neighbour, which a path draws nothing for: they get a dot."""
    return [
        p
        for i, p in enumerate(points)
        if p is not None
        and (i == 0 or points[i - 1] is None)
        and (i + 1 == len(points) or points[i + 1] is None)
    ]


def _runs(flags: Sequence[bool]) -> list[tuple[int, int]]:
    """(first, last) index of each run of consecutive true flags."""
    runs, start = [], None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i - 1))
            start = None
    return runs


def _half(n: int, plot_w: float) -> float:
    return plot_w / (n - 1) / 2 if n > 1 else plot_w / 2


def nice(v: float) -> float:
    """The axis' top: 1, 2 or 5 times a power of ten, at least ``v``."""
    if not v > 0 or not math.isfinite(v):
        return 1.0
    power = 10.0 ** math.floor(math.log10(v))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= v * (1 - 1e-9))


def show(v: Any, unit: str) -> str:
    """A value as the page writes it (and its script, alike): ratios in %, seconds in ms,
    bytes in MiB, the rest to 3 significant digits."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return MISSING
    if unit == "ratio":
        return f"{v * 100:.0f} %"
    if unit == "seconds":
        return f"{_prec(v * 1000)} ms"
    if unit == "bytes":
        return f"{v / MIB:,.0f} MiB"
    if unit == "rate":
        return f"{_prec(v)}/s"
    if unit == "count" and float(v).is_integer():
        return f"{int(v):,}"
    return _prec(v)


def _prec(v: float) -> str:
    """3 significant digits without an exponent, as JavaScript's
    ``String(Number(v.toPrecision(3)))`` writes them."""
    x = float(f"{v:.3g}")
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def _short(iso: str) -> str:
    """``2025-12-03T14:05:00Z`` as ``12-03 14:05Z``."""
    return f"{iso[5:10]} {iso[11:16]}Z" if len(iso) >= 16 else iso


def _json(value: Any) -> str:
    return escape(json.dumps(value, separators=(",", ":")))
