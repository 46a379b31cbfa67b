"""``workermeter history``: what a server instance recorded, a row a minute (or an hour), with
its busiest minutes and routes, read from its history file or from its status endpoint.

Both sources give rows as :meth:`workermeter.history.Row.as_dict` does (the status JSON is made
of them), so everything after reading works on those dicts, whichever the source.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import json
import math
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import history as h
from .. import status
from ..capacity import MIB
from ..measurement import ENV_TOKEN, SourceError, reason
from . import UsageError
from .history_span import AROUND, WHEN_FORMS, Span, moment, span_of, start_of

HELP = "Show a server instance's recorded history: minutes or hours, busiest minutes and routes."

#: The wall clock, unix seconds: a name of its own so that tests can fix "now".
now: Callable[[], float] = time.time

BUSIEST = 5
ROUTES_SHOWN = 10
COLLAPSE_OVER = 3  # more consecutive gaps than this are one line
DASH = "\u2013"  # the en dash of a run of gaps, 14:05-14:20
TIMEOUT = 30.0  # seconds; the status JSON of 8 days of minutes takes a moment to build

Rows = list[dict[str, Any]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--dir",
        dest="directory",
        metavar="DIR",
        help="the directory holding history.wm (default: $WORKERMETER_HISTORY_DIR, else "
        "$WORKERMETER_DIR)",
    )
    source.add_argument(
        "--url",
        metavar="URL",
        help="a running server's status page instead, e.g. http://127.0.0.1:9100/metrics/status",
    )
    parser.add_argument(
        "--token",
        help=f"with --url: the server's token (default ${ENV_TOKEN}; the variable keeps it out "
        "of the process list)",
    )
    span = parser.add_mutually_exclusive_group()
    span.add_argument(
        "--range",
        dest="last",
        metavar="DURATION",
        help="the last DURATION up to now, e.g. 1h, 24h, 7d (the default: 1h)",
    )
    span.add_argument("--from", dest="start", metavar="WHEN", help="from WHEN (see --at)")
    span.add_argument(
        "--at",
        metavar="WHEN",
        help=f"the minute of WHEN and {AROUND} minutes either side; WHEN is {WHEN_FORMS}",
    )
    parser.add_argument("--to", dest="end", metavar="WHEN", help="with --from: up to WHEN")
    step = parser.add_mutually_exclusive_group()
    step.add_argument(
        "--minutely",
        action="store_true",
        help="a row a minute (the default up to 6 h; kept for 8 days)",
    )
    step.add_argument("--hourly", action="store_true", help="a row an hour (the default beyond)")
    parser.add_argument("--utc", action="store_true", help="read and print times in UTC")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the rows as JSON")
    output.add_argument("--csv", action="store_true", help="print the rows as CSV")


# ----------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class History:
    """What a source holds for a span: rows, busiest rows and routes, as the status JSON."""

    source: str
    rows: Rows
    busiest: Rows
    routes: Rows
    routes_over: str  # which hours the routes are the sum of


def from_directory(directory: str | None, span: Span, current: float) -> History:
    """The span's rows from the history file in ``directory`` (as ``open_history`` finds it)."""
    from ..history_source import open_history

    try:
        file = open_history(directory)
    except SourceError as e:
        raise UsageError(str(e)) from None
    try:
        found = h.series(file, span.start, span.end, span.step)
        minutes = found
        if span.step != 60:  # the busiest minutes, from the minute rows still kept
            oldest = h.oldest_minute(current)
            minutes = h.series(file, max(span.start, oldest), max(span.end, oldest), 60)
        busiest = h.busiest(minutes, BUSIEST) or h.busiest(found, BUSIEST)
        routes = status.ranked_routes(status.hour_routes(file, span.start, span.end))
    finally:
        file.close()
    return History(
        source=str(file.path),
        rows=[row.as_dict() for row in found],
        busiest=[row.as_dict() for row in busiest],
        routes=routes,
        routes_over="in the hours of the range that have ended (kept by the hour)",
    )


def status_json_url(url: str) -> str:
    """The status JSON's URL from the status page's: ``.json`` added unless there."""
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--url: not an http(s) URL: {url!r}; give one like "
                         "http://127.0.0.1:9100/metrics/status")  # fmt: skip
    path = parts.path.rstrip("/") or "/metrics/status"
    if not path.endswith(".json"):
        path += ".json"
    return urllib.parse.urlunsplit(parts._replace(path=path, query="", fragment=""))


def from_url(url: str, token: str | None, span: Span) -> History:
    """The span's rows from a running server's status JSON."""
    target = status_json_url(url)
    query = urllib.parse.urlencode({
        "from": math.floor(span.start), "to": math.ceil(span.end), "step": span.step,
    })  # fmt: skip
    headers = {"User-Agent": "workermeter", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{target}?{query}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            data = json.load(response)
    except urllib.error.HTTPError as e:
        raise UsageError(_refusal(target, e, token)) from None
    except urllib.error.URLError as e:
        raise UsageError(f"cannot reach {target}: {reason(e.reason)}") from None
    except OSError as e:  # a timeout or a reset while reading the body
        raise UsageError(f"cannot reach {target}: {reason(e)}") from None
    except ValueError:
        raise UsageError(f"{target} did not answer with JSON: is it a workermeter status "
                         "page?") from None  # fmt: skip
    rows, busiest, routes = (_list(data, key, target) for key in ("rows", "busiest", "routes"))
    return History(target, rows, busiest[:BUSIEST], routes, "in the hours of the range")


def _list(data: Any, key: str, target: str) -> Rows:
    found = data.get(key) if isinstance(data, dict) else None
    if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):
        raise UsageError(f"{target} did not answer with workermeter's status JSON (no {key})")
    return found


def _refusal(target: str, e: urllib.error.HTTPError, token: str | None) -> str:
    """What an HTTP error from the status endpoint means, and what to do."""
    said = f"{target} answered HTTP {e.code} {e.reason}"
    if e.code == 401:
        if token:
            return f"{said}: the token was refused; pass the server's own (--token or ${ENV_TOKEN})"
        return f"{said}: it wants the server's token; pass --token or set ${ENV_TOKEN}"
    if e.code == 404:
        return (
            f"{said}: no status page there; give its URL, e.g. "
            "http://127.0.0.1:9100/metrics/status (moved by $WORKERMETER_STATUS_PATH). A server "
            "without a token shows it only to loopback and private clients"
        )
    if e.code == 400:
        body = e.read().decode("utf-8", "replace").strip().splitlines()
        return f"{said}: {body[0] if body else 'the range was refused'}"
    return said


def recorded(rows: Rows, current: float) -> Rows:
    """``rows`` without those yet to come, nor the one under way while it holds nothing (its
    writer writes it when it ends: it is no gap yet)."""
    out = [row for row in rows if start_of(row) <= current]
    if out and out[-1]["gap"] and start_of(out[-1]) + float(out[-1]["seconds"]) > current:
        out.pop()
    return out


# ------------------------------------------------------------------------------------ output


#: A row's fields in the order of a recorded row's ``as_dict``, ``time`` first, gaps alike.
FIELDS = tuple(h.Row(0.0, 60.0, (0,) * h.ROW_WORDS).as_dict())


def localised(row: dict[str, Any], zone: datetime.tzinfo | None) -> dict[str, Any]:
    """The row with its ``time`` in ``zone`` (None: local time), its fields in FIELDS' order
    (then any the source added)."""
    out = {key: row.get(key) for key in FIELDS}
    out.update(row)  # a key already there keeps its place
    out["time"] = moment(start_of(row), zone).isoformat()
    return out


def write_csv(rows: Iterable[dict[str, Any]], out: Any) -> None:
    """The rows with a header line; a gap's unknown values are empty."""
    writer = csv.DictWriter(out, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


class Labels:
    """How rows' times are written: the time of day, with the date when ``dated``."""

    def __init__(self, zone: datetime.tzinfo | None, *, dated: bool = True) -> None:
        self.zone = zone
        self.format = "%Y-%m-%d %H:%M" if dated else "%H:%M"

    @classmethod
    def of(cls, span: Span, zone: datetime.tzinfo | None) -> Labels:
        """Dated only when the span's rows fall on more than one day."""
        first, last = moment(span.start, zone), moment(max(span.end - 1, span.start), zone)
        return cls(zone, dated=first.date() != last.date())

    def __call__(self, t: float) -> str:
        return moment(t, self.zone).strftime(self.format)


COLUMNS = ("busy", "slots in use", "all busy", "queue wait p50/p95", "req/s", "errors", "RSS max")
WIDTHS = (5, 12, 9, 18, 8, 6, 8)


def _cells(row: dict[str, Any]) -> tuple[str, ...]:
    """A present row's figures in the units of COLUMNS; "-" where the row has none."""

    def number(value: Any, spec: str, scale: float = 1.0, unit: str = "") -> str:
        return "-" if value is None else format(value * scale, spec) + unit

    p50, p95 = (number(row[key], ".0f", 1000) for key in ("queue_wait_p50", "queue_wait_p95"))
    return (
        number(row["utilisation"], ".0%"),
        f"{number(row['busy_slots'], '.2f')}/{row['slots']}",
        number(row["all_busy_seconds"], ".1f", unit=" s"),
        "-" if p50 == p95 == "-" else f"{p50}/{p95} ms",
        number(row["requests_per_second"], ".2f"),
        str(row["errors"]),
        number(row["rss_max"] or None, ".0f", 1 / MIB, " MiB"),  # 0: no worker was read
    )


def _justified(cells: Sequence[str]) -> str:
    return "  ".join(cell.rjust(width) for cell, width in zip(cells, WIDTHS, strict=True))


def _line(label: str, body: str, marked: bool = False) -> str:
    return f"{'>' if marked else ' '} {label}  {body}"


def row_line(row: dict[str, Any], labels: Labels, mark: float | None = None) -> str:
    start = start_of(row)
    body = "(nothing recorded)" if row["gap"] else _justified(_cells(row))
    return _line(labels(start), body, marked=start == mark)


def table(rows: Rows, labels: Labels, mark: float | None = None) -> list[str]:
    """A line a row, but a run of more than COLLAPSE_OVER gaps (without the marked row) in one."""

    def collapsible(row: dict[str, Any]) -> bool:
        return bool(row["gap"]) and start_of(row) != mark

    lines = []
    for gap, group in itertools.groupby(rows, key=collapsible):
        run = list(group)
        if gap and len(run) > COLLAPSE_OVER:
            seconds = float(run[0]["seconds"])
            first, end = start_of(run[0]), start_of(run[-1]) + seconds
            unit = "minutes" if seconds == 60 else "hours"
            count = round((end - first) / seconds)
            lines.append(f"  {labels(first)}{DASH}{labels(end)} nothing recorded ({count} {unit})")
        else:
            lines.extend(row_line(row, labels, mark) for row in run)
    return lines


def _head(labels: Labels) -> str:
    return _line("time".ljust(len(labels(0.0))), _justified(COLUMNS))


def route_lines(routes: Rows) -> list[str]:
    width = max([len("route"), *(len(r["route"]) for r in routes[:ROUTES_SHOWN])])
    lines = [f"  {'route':<{width}}  method  requests    busy s  mean ms   CPU"]
    for r in routes[:ROUTES_SHOWN]:
        mean, cpu = r["service_time_mean"], r["cpu_share"]
        lines.append(
            f"  {r['route']:<{width}}  {r['method']:<6}  {r['requests']:>8,}  "
            f"{r['busy_seconds']:>8.1f}  {'-' if mean is None else f'{mean * 1000:.0f}':>7}  "
            f"{'-' if cpu is None else f'{cpu:.0%}':>4}"
        )
    return lines


def render(history: History, rows: Rows, span: Span, zone: datetime.tzinfo | None) -> str:
    """The text report: the rows, the busiest minutes, the busiest routes."""
    labels, whole = Labels.of(span, zone), Labels(zone)
    same_day = moment(span.start, zone).date() == moment(span.end, zone).date()
    ends = Labels(zone, dated=not same_day)(span.end)
    step = "a row a minute" if span.step == 60 else "a row an hour"
    where = "UTC" if zone is not None else f"local time, {moment(span.start, None):%Z}"
    lines = [f"History from {history.source}: {whole(span.start)} to {ends} ({where}), {step}"]
    if rows:
        lines += [_head(labels), *table(rows, labels, span.mark)]
    else:
        lines.append("  nothing in the range yet")
    unit = "minutes" if not history.busiest or history.busiest[0]["seconds"] == 60 else "hours"
    lines.append("")
    if history.busiest:
        lines.append(f"Busiest {unit} (by utilisation, then time with every slot busy, then "
                     "queue wait):")  # fmt: skip
        lines += [_head(labels), *(row_line(row, labels) for row in history.busiest)]
    else:
        lines.append("Busiest minutes: none, no request was recorded in the range")
    lines.append("")
    if history.routes:
        lines.append(f"Busiest routes, by busy time, {history.routes_over}:")
        lines += route_lines(history.routes)
    else:
        lines.append(f"Busiest routes: none recorded {history.routes_over}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    current = now()
    zone = datetime.timezone.utc if args.utc else None
    span = span_of(args, current, zone)
    if args.url is not None:
        history = from_url(args.url, args.token or os.environ.get(ENV_TOKEN), span)
    else:
        if args.token:
            raise UsageError("--token goes with --url")
        history = from_directory(args.directory, span, current)
    rows = recorded(history.rows, current)
    if args.json:
        print(json.dumps([localised(row, zone) for row in rows], indent=2))
    elif args.csv:
        write_csv((localised(row, zone) for row in rows), sys.stdout)
    else:
        print(render(history, rows, span, zone))
    return 0
