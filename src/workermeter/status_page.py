"""The status page: the HTML of ``/metrics/status``, rendered on the server from
:meth:`workermeter.status.Status.data`, and the script and style it loads from its own paths.

The page is whole without its script: every number, table and chart (:mod:`.status_charts`) is
in the HTML. The script only adds a cursor shared by the charts and refreshes "Now". The Content
Security Policy it is served with allows no inline script nor style, so there is none: every
string from the data is escaped, and raw numbers sit in ``data-value`` attributes for the script
and the tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from .options import status_paths
from .status_charts import MIB, MISSING, charts, show

Data = dict[str, Any]
Cell = tuple[Any, str]  # (raw value, as shown)


def render(data: Data, base_path: str) -> str:
    """The page for ``data`` (a ``Status.data()`` answer), served at ``base_path``."""
    _, json_path, js_path, css_path = status_paths(base_path)
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>workermeter status</title>",
        '<link rel="icon" href="data:,">',  # no request for /favicon.ico
        f'<link rel="stylesheet" href="{escape(css_path)}">',
        f'<script src="{escape(js_path)}" defer></script>',
        f'</head><body data-json="{escape(json_path)}">',
        _header(data),
        "<main>",
        _now(data.get("now") or {}),
        f'<section id="charts"><h2>History</h2><div class="charts">{charts(data)}</div></section>',
        _busiest(data.get("busiest") or []),
        _routes(data.get("routes") or []),
        _workers(data.get("workers") or []),
        _suggestion(data.get("suggestion") or {}),
        "</main></body></html>",
        "",
    ])  # fmt: skip


def _header(data: Data) -> str:
    history, rng = data.get("history") or {}, data.get("range") or {}
    links = []
    for name in rng.get("ranges") or []:
        current = ' aria-current="page"' if name == rng.get("name") else ""
        links.append(f'<a href="?range={escape(str(name))}"{current}>{escape(str(name))}</a>')
    shown = "" if rng.get("name") else (
        f'<span id="span">{_text(rng.get("from"))} to {_text(rng.get("to"))}, '
        f'{_text(rng.get("step"))} s a row</span>'
    )  # fmt: skip
    message = history.get("message")
    warn = f'<p class="warn" id="history-message">{escape(str(message))}</p>' if (
        not history.get("kept") and message
    ) else ""  # fmt: skip
    generated = _text(data.get("generated"))
    return (
        '<header><h1>workermeter status</h1><p class="meta">history in '
        f'<code id="directory">{_text(history.get("directory"))}</code>, generated '
        f'<time id="generated" datetime="{generated}">{generated}</time></p>'
        f'<nav id="ranges" aria-label="range">{"".join(links)}{shown}</nav>{warn}</header>'
    )


def _now(now: Data) -> str:
    verdict = str(now.get("verdict") or "unknown")
    css = "".join(c if c.isalnum() else "-" for c in verdict.lower())

    def number(key: str, unit: str, label: str) -> str:
        return (
            f'<div class="stat"><span class="value" id="now-{key}" data-now="{key}" '
            f'data-unit="{unit}" data-value="{_raw(now.get(key))}">'
            f"{escape(show(now.get(key), unit))}</span>"
            f'<span class="name">{label}</span></div>'
        )

    slots = (
        f'<span id="now-slots" data-now="slots" data-unit="count" '
        f'data-value="{_raw(now.get("slots"))}">{_int(now.get("slots"))}</span>'
    )
    return "".join([
        '<section id="now"><h2>Now</h2><div class="stats">',
        f'<div class="stat verdict verdict-{css}" id="verdict-box"><span class="value" id="verdict"'
        f' data-now="verdict" data-value="{_text(verdict)}">{_text(verdict)}</span>'
        f'<span class="name" id="verdict-reason" data-now="verdict_reason">'
        f'{_text(now.get("verdict_reason"))}</span></div>',
        number("busy", "count", f"of {slots} slots busy"),
        number("workers", "count", "workers"),
        number("utilisation_1m", "ratio", "busy, last minute"),
        number("utilisation_5m", "ratio", "busy, 5 minutes"),
        number("utilisation_15m", "ratio", "busy, 15 minutes"),
        number("queue_wait_p95_5m", "seconds", "queue wait p95, 5 minutes"),
        "</div></section>",
    ])  # fmt: skip


def _busiest(rows: Sequence[Data]) -> str:
    body = [
        [
            (r.get("time"), _short_time(r.get("time"))),
            (r.get("utilisation"), show(r.get("utilisation"), "ratio")),
            (r.get("all_busy_seconds"), _num(r.get("all_busy_seconds"), ".1f", " s")),
            (r.get("queue_wait_p95"), show(r.get("queue_wait_p95"), "seconds")),
            (r.get("requests_per_second"), _num(r.get("requests_per_second"), ".3g")),
            (r.get("errors"), _int(r.get("errors"))),
        ]
        for r in rows
    ]
    head = ["minute (UTC)", "busy", "all busy", "queue wait p95", "requests/s", "errors"]
    return _section("busiest", "Busiest minutes", head, body, "nothing recorded in this range")


def _routes(routes: Sequence[Data]) -> str:
    body = [
        [
            (r.get("route"), _text(r.get("route"))),
            (r.get("method"), _text(r.get("method"))),
            (r.get("requests"), _int(r.get("requests"))),
            (r.get("busy_seconds"), _num(r.get("busy_seconds"), ",.1f", " s")),
            (r.get("service_time_mean"), show(r.get("service_time_mean"), "seconds")),
            (r.get("cpu_share"), show(r.get("cpu_share"), "ratio")),
        ]
        for r in routes
    ]
    head = ["route", "method", "requests", "busy", "mean service", "CPU share"]
    return _section("routes", "Busiest routes", head, body, "no request in this range")


def _workers(workers: Sequence[Data]) -> str:
    def mib(v: Any) -> str:
        return f"{v / MIB:,.0f} MiB" if isinstance(v, int | float) else MISSING

    body = [
        [
            (w.get("slot"), _int(w.get("slot"))),
            (w.get("pid"), _int(w.get("pid"))),
            (w.get("age_seconds"), _age(w.get("age_seconds"))),
            (w.get("requests"), _int(w.get("requests"))),
            (w.get("in_flight"), f"{_int(w.get('in_flight'))}/{_int(w.get('slots'))}"),
            (w.get("busy_share"), show(w.get("busy_share"), "ratio")),
            (w.get("rss"), mib(w.get("rss"))),
            (w.get("uss"), mib(w.get("uss"))),
        ]
        for w in workers
    ]
    head = ["slot", "pid", "age", "requests", "in flight", "busy", "RSS", "USS"]
    return _section("workers", "Workers", head, body, "no live worker")


def _suggestion(s: Data) -> str:
    out = ['<section id="suggestion"><h2>Suggestion</h2>']
    if s.get("error"):
        out.append(f'<p class="warn" id="suggestion-error">{_text(s["error"])}</p>')
    else:
        out.append(f'<p id="setting"><strong>{_text(s.get("setting"))}</strong></p>')
        out.append(_list("reasons", "Why", s.get("reasons") or []))
        out.append(_list("notes", "Notes", s.get("notes") or []))
    out.append("</section>")
    return "".join(out)


# ---------------------------------------------------------------------------------- helpers


def _section(
    key: str, title: str, head: Sequence[str], body: Sequence[Sequence[Cell]], empty: str
) -> str:
    ths = "".join(f'<th scope="col">{escape(h)}</th>' for h in head)
    trs = "".join(
        "<tr>" + "".join(f'<td data-value="{_raw(raw)}">{shown}</td>' for raw, shown in row)
        + "</tr>"
        for row in body
    )  # fmt: skip
    if not body:
        trs = f'<tr><td class="empty" colspan="{len(head)}">{escape(empty)}</td></tr>'
    return (
        f'<section id="section-{key}"><h2>{escape(title)}</h2><div class="scroll">'
        f'<table id="{key}"><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table>'
        "</div></section>"
    )


def _list(key: str, title: str, items: Iterable[Any]) -> str:
    lis = "".join(f"<li>{_text(item)}</li>" for item in items)
    return f'<h3>{escape(title)}</h3><ul id="{key}">{lis}</ul>' if lis else ""


def _raw(value: Any) -> str:
    """A value for a ``data-value`` attribute: JSON, so that null and numbers read back."""
    return escape(json.dumps(value))


def _text(value: Any) -> str:
    return MISSING if value is None else escape(str(value))


def _int(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else _text(value)


def _num(value: Any, spec: str, suffix: str = "") -> str:
    return f"{value:{spec}}{suffix}" if isinstance(value, int | float) else MISSING


def _short_time(value: Any) -> str:
    """``2025-12-03T14:05:00Z`` as ``2025-12-03 14:05``."""
    text = str(value or "")
    return escape(f"{text[:10]} {text[11:16]}" if len(text) >= 16 else text)


def _age(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return MISSING
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


# ------------------------------------------------------------------------ script and style

# Plain ES2017, no library. "Now" is refreshed by fetching the JSON (same origin and query) every
# 30 s, not by reloading the page, so a reader's place on the page and the cursor stay put.
SCRIPT = rb"""// workermeter status page: a cursor shared by the charts; "Now" refreshed every 30 s.
"use strict";
(() => {
  const MIB = 1048576;
  const prec = (v) => String(Number(v.toPrecision(3)));
  const show = (v, unit) => {
    if (typeof v !== "number" || !isFinite(v)) return typeof v === "string" ? v : "\u2013";
    if (unit === "ratio") return (v * 100).toFixed(0) + " %";
    if (unit === "seconds") return prec(v * 1000) + " ms";
    if (unit === "bytes") return Math.round(v / MIB).toLocaleString("en") + " MiB";
    if (unit === "rate") return prec(v) + "/s";
    if (unit === "count") return Number.isInteger(v) ? v.toLocaleString("en") : prec(v);
    return prec(v);
  };
  const parse = (text) => {
    try {
      const v = JSON.parse(text || "[]");
      return Array.isArray(v) ? v : [];
    } catch (e) {
      return [];
    }
  };
  const local = (iso) => {
    const d = new Date(iso);
    if (!iso || isNaN(d.getTime())) return String(iso || "");
    return d.toLocaleString([], {month: "2-digit", day: "2-digit", hour: "2-digit",
                                 minute: "2-digit"});
  };

  const charts = Array.from(document.querySelectorAll("svg.chart"), (svg) => ({
    svg,
    times: parse(svg.dataset.times),
    left: Number(svg.dataset.left),
    right: Number(svg.dataset.right),
    cursor: svg.querySelector("line.cursor"),
    readout: document.getElementById("readout-" + svg.id.replace(/^chart-/, "")),
    lines: Array.from(svg.querySelectorAll("path.line"), (p) => ({
      name: p.dataset.name || "", unit: p.dataset.unit || svg.dataset.unit,
      values: parse(p.dataset.values),
    })),
  }));
  const xOf = (c, i) => {
    const n = c.times.length;
    return n > 1 ? c.left + (i * (c.right - c.left)) / (n - 1) : (c.left + c.right) / 2;
  };
  const rowAt = (c, event) => {
    const n = c.times.length;
    const m = c.svg.getScreenCTM();
    if (!n || !m) return null;
    const p = new DOMPoint(event.clientX, event.clientY).matrixTransform(m.inverse());
    const f = (p.x - c.left) / (c.right - c.left || 1);
    return Math.min(n - 1, Math.max(0, Math.round(f * (n - 1))));
  };
  const move = (i) => {
    for (const c of charts) {
      if (!c.cursor || i === null || i >= c.times.length) continue;
      const x = xOf(c, i).toFixed(1);
      c.cursor.setAttribute("x1", x);
      c.cursor.setAttribute("x2", x);
      c.cursor.setAttribute("visibility", "visible");
      if (c.readout) {
        const parts = c.lines.map((l) => l.name + " " + show(l.values[i], l.unit));
        c.readout.textContent = local(c.times[i]) + ": " + parts.join(", ");
      }
    }
  };
  for (const c of charts) {
    for (const kind of ["pointermove", "pointerdown"]) {
      c.svg.addEventListener(kind, (event) => move(rowAt(c, event)));
    }
  }
  for (const t of document.querySelectorAll("svg text.time[data-time]")) {
    t.textContent = local(t.dataset.time);
  }

  const refresh = async () => {
    const source = document.body.dataset.json;
    if (!source) return;
    let data;
    try {
      const r = await fetch(source + location.search, {cache: "no-store"});
      if (!r.ok) return;
      data = await r.json();
    } catch (e) {
      return; // the server is restarting or unreachable: the next try may find it
    }
    if (!data || typeof data !== "object") return;
    const now = data.now || {};
    for (const el of document.querySelectorAll("[data-now]")) {
      const key = el.dataset.now;
      if (!(key in now)) continue;
      const v = now[key];
      if (el.hasAttribute("data-value")) {
        el.dataset.value = typeof v === "string" ? v : JSON.stringify(v);
      }
      el.textContent = show(v, el.dataset.unit);
    }
    const box = document.getElementById("verdict-box");
    if (box && typeof now.verdict === "string") {
      const css = now.verdict.toLowerCase().replace(/[^a-z0-9]/g, "-");
      box.className = "stat verdict verdict-" + css;
    }
    const generated = document.getElementById("generated");
    if (generated && data.generated) {
      generated.textContent = data.generated;
      generated.setAttribute("datetime", data.generated);
    }
  };
  setInterval(refresh, 30000);
})();
"""

STYLE = b"""/* workermeter status page */
:root { color-scheme: light; --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --panel: #f6f8fa;
  --s1: #0a58ca; --s2: #b35900; --err: #c0182b; --ok: #1a7f37; --warn: #7d5300; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    sans-serif; }
header, main { max-width: 1200px; margin: 0 auto; padding: 0 16px; }
header { padding-top: 12px; border-bottom: 1px solid var(--line); }
main { padding-bottom: 32px; }
h1 { font-size: 1.4rem; margin: .2em 0; }
h2 { font-size: 1.15rem; margin: 1.2em 0 .5em; }
h3 { font-size: 1rem; margin: 0 .6em 0 0; }
figcaption h3 { display: inline; }
.meta { color: var(--muted); margin: 0 0 .5em; overflow-wrap: anywhere; }
code { font: .9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
nav { display: flex; flex-wrap: wrap; align-items: center; gap: .4em; padding-bottom: 10px; }
nav a { padding: .15em .8em; border: 1px solid var(--line); border-radius: 999px;
  color: var(--s1); text-decoration: none; }
nav a[aria-current="page"] { background: var(--s1); border-color: var(--s1); color: #fff; }
.warn { color: var(--warn); background: #fff8c5; padding: .4em .6em; border-radius: 6px; }
.stats { display: grid; grid-template-columns: repeat(auto-fill, minmax(130px, 1fr)); gap: 10px; }
.stat { display: flex; flex-direction: column; padding: .6em .8em; background: var(--panel);
  border: 1px solid var(--line); border-radius: 8px; }
.stat .value { font-size: 1.5rem; font-weight: 600; font-variant-numeric: tabular-nums; }
.stat .name { color: var(--muted); font-size: .85rem; }
.verdict { grid-column: span 2; }
.verdict-ok .value { color: var(--ok); }
.verdict-saturated .value, .verdict-cpu-bound .value, .verdict-memory-bound .value {
  color: var(--err); }
.verdict-unknown .value { color: var(--muted); }
.charts { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 16px; }
figure { margin: 0; padding: 8px; border: 1px solid var(--line); border-radius: 8px; }
figcaption { display: flex; flex-wrap: wrap; align-items: baseline; gap: .3em .8em; }
.key { font-size: .85rem; }
.key::before { content: ""; display: inline-block; width: 14px; height: 3px; margin-right: 4px;
  vertical-align: middle; background: currentColor; }
svg.chart { display: block; width: 100%; height: auto; touch-action: pan-y; user-select: none; }
svg text { font-size: 11px; fill: var(--muted); font-family: inherit; }
svg .axis-left { paint-order: stroke; stroke: #fff; stroke-width: 3px; }
.plot { fill: #fff; stroke: var(--line); }
.dot { fill: currentColor; stroke: none; }
.line { fill: none; stroke-width: 2; stroke-linejoin: round; stroke-linecap: round; }
.s1 { stroke: var(--s1); color: var(--s1); }
.s2 { stroke: var(--s2); color: var(--s2); }
.err { stroke: var(--err); color: var(--err); }
.cap { stroke: var(--muted); color: var(--muted); stroke-width: 1.5; stroke-dasharray: 2 3; }
.rule { stroke: var(--err); stroke-width: 1; stroke-dasharray: 6 4; }
svg .label { fill: var(--err); }
.band { fill: #f5c2c7; opacity: .6; }
.cursor { stroke: var(--fg); stroke-width: 1; }
svg .empty { font-size: 14px; }
.readout { min-height: 1.4em; margin: .3em 0 0; color: var(--muted); font-size: .85rem;
  font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
table { width: 100%; border-collapse: collapse; font-size: .9rem;
  font-variant-numeric: tabular-nums; }
th, td { padding: .35em .6em; border-bottom: 1px solid var(--line); text-align: right;
  white-space: nowrap; }
th { background: var(--panel); font-weight: 600; }
th:first-child, td:first-child, #routes td:nth-child(2), #routes th:nth-child(2) {
  text-align: left; }
td.empty { color: var(--muted); text-align: left; }
ul { padding-left: 1.2em; }
li { margin: .2em 0; }
@media (max-width: 600px) {
  body { font-size: 14px; }
  header, main { padding: 0 10px; }
  .charts { grid-template-columns: 1fr; }
  .stats { grid-template-columns: repeat(2, minmax(0, 1fr)); }
  .verdict { grid-column: 1 / -1; }
  svg text { font-size: 17px; }
}
"""
