"""The Grafana dashboard: six rows of panels, each with its unit and a line on how to read it.

Panels query the metrics directly with ``$__rate_interval``, so they follow the time picker and
work without any rule loaded, except the *How many workers?* row: the suggestion is a chain of
steps (CPU share, thread limit, ceilings, machines) that the recording rules compute once and
the alerts share, so those panels read the recorded series.

The classic JSON model (``schemaVersion`` 42, Grafana 11 and later import it). The data source is
a template variable rather than an ``__inputs`` entry, so the same file works when imported in
the UI, provisioned from disk and posted to the HTTP API.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from workermeter import capacity, observe_loops
from workermeter import metrics as m

from . import promql as q
from . import rules as r

UID = "workermeter"
SCHEMA_VERSION = 42
SELECTOR = '{job="$job", instance=~"$instance"}'
WINDOW = "$__rate_interval"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: The capacity model calls an app CPU-bound above this share: flagged red.
CPU_BOUND = capacity.CPU_BOUND

Kind = Literal["timeseries", "stat", "bargauge"]


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    """One panel; ``thresholds`` are ``(value, colour)`` steps above the base colour."""

    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    kind: Kind = "timeseries"
    width: int = 8
    thresholds: tuple[tuple[float, str], ...] = ()
    stack: bool = False
    reduce: str = "lastNotNull"
    minimum: float | None = None
    decimals: int | None = None


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]
    #: Panels in this row read recording rules.
    needs_rules: bool = False


def _s(series: str) -> str:
    return series + SELECTOR


def _rate(series: str) -> str:
    return q.rate(series, SELECTOR, WINDOW)


def _sum_rate(series: str, labels: Sequence[str]) -> str:
    return q.sum_rate(series, labels, SELECTOR, WINDOW)


def _quantile(quantile: str, metric: m.Metric, labels: Sequence[str]) -> str:
    return q.histogram_quantile(quantile, metric, labels, SELECTOR, WINDOW)


def _recorded(series: str, instance: bool = False) -> str:
    return series + (SELECTOR if instance else '{job="$job"}')


SLOTS_NOW = f"sum by (job) ({_s(q.name(m.CAPACITY))})"
PROCESSES_NOW = f"sum by (job) ({_s(q.name(m.WORKERS))})"
MACHINES_NOW = f"count by (job) (max by (job, instance) ({_s(q.name(m.HOST_CPUS))}))"
TARGET = f"{r.Settings().target:.0%}"
LOOP_TARGET = f"{r.Settings().loop_target:.0%}"
#: Both targets as dashed lines: event loops at the lower one, slots at the higher.
TARGETS = ((r.Settings().loop_target, "orange"), (r.Settings().target, "red"))


def keeping_up() -> Row:
    wait = m.QUEUE_WAIT
    return Row(
        "Are the workers keeping up?",
        (
            Panel(
                "Utilisation",
                f"Busy share of the slots (sync workers) or event loops (async workers), fleet "
                f"and per instance. Above {TARGET} for slots, {LOOP_TARGET} for loops, requests "
                f"queue.",
                "percentunit",
                (
                    Query(q.any_utilisation(("job",), SELECTOR, WINDOW), "fleet ({{kind}})"),
                    Query(
                        q.any_utilisation(("instance",), SELECTOR, WINDOW),
                        "{{instance}} ({{kind}})",
                    ),
                ),
                thresholds=TARGETS,
                minimum=0,
            ),
            Panel(
                "Utilisation of every job",
                "Every job side by side, sync and async: slots' busy share or event loops' ELU. "
                "Compare a job with its dashed target line.",
                "percentunit",
                (Query(q.any_utilisation(("job",), "", WINDOW), "{{job}} ({{kind}})"),),
                thresholds=TARGETS,
                minimum=0,
            ),
            Panel(
                "Utilisation per worker process",
                "Each worker process's busy share (its loop's ELU for async workers). Very "
                "uneven lines mean the server hands requests to some workers more than others.",
                "percentunit",
                (
                    Query(
                        q.any_utilisation(("instance", "worker"), SELECTOR, WINDOW),
                        "{{instance}} worker {{worker}}",
                    ),
                ),
                minimum=0,
            ),
            Panel(
                "All slots busy",
                "Share of time every slot of an instance was busy (at least: exact with one "
                "process), and of each process. Requests arriving then wait.",
                "percentunit",
                (
                    Query(q.all_slots_busy(("instance",), SELECTOR, WINDOW), "{{instance}}"),
                    Query(
                        f"sum by (instance, worker) ({_rate(q.counter(m.ALL_BUSY))})",
                        "{{instance}} worker {{worker}}",
                    ),
                ),
                minimum=0,
            ),
            Panel(
                "Queue wait",
                "Time from the proxy stamping X-Request-Start to a worker starting the request: "
                "the wait users feel on top of the service time.",
                "s",
                tuple(
                    Query(_quantile(quantile, wait, ("job",)), f"p{float(quantile) * 100:g}")
                    for quantile in r.QUANTILES
                ),
                minimum=0,
            ),
            Panel(
                "Listen backlog",
                "Connections waiting in the kernel's accept queue: queueing seen without any "
                "proxy header. Anything above 0 for long means every worker is busy; at the "
                "limit, new connections are refused.",
                "short",
                (
                    Query(
                        f"sum by (instance, listener) ({_s(q.name(m.LISTEN_BACKLOG))})",
                        "{{instance}} {{listener}}",
                    ),
                    Query(
                        f"max by (instance, listener) ({_s(q.name(m.LISTEN_BACKLOG_LIMIT))})",
                        "limit {{instance}} {{listener}}",
                    ),
                ),
                minimum=0,
            ),
            Panel(
                "Request rate",
                "Requests completed per second, for the fleet and per instance.",
                "reqps",
                (
                    Query(_sum_rate(q.counter(m.REQUESTS), ("job",)), "fleet"),
                    Query(_sum_rate(q.counter(m.REQUESTS), ("instance",)), "{{instance}}"),
                ),
                minimum=0,
            ),
            Panel(
                "In flight",
                "Requests being served at the last scrape, against the slots there are.",
                "short",
                (
                    Query(f"sum by (instance) ({_s(q.name(m.IN_FLIGHT))})", "{{instance}}"),
                    Query(f"sum by (instance) ({_s(q.name(m.CAPACITY))})", "{{instance}} slots"),
                ),
                minimum=0,
            ),
            Panel(
                "Client disconnects",
                "Requests whose client left before the response was complete: often users or "
                "a proxy timing out on slow or queued requests.",
                "reqps",
                (Query(_sum_rate(q.counter(m.DISCONNECTS), ("instance",)), "{{instance}}"),),
                minimum=0,
            ),
        ),
    )


def how_many() -> Row:
    target, loop = r.Settings().target, r.Settings().loop_target
    return Row(
        "How many workers?",
        (
            Panel(
                "Suggested setting",
                f"Processes x threads per machine for the last 5 minutes' load, {TARGET} busy "
                f"(async: 1 thread, loops {LOOP_TARGET} busy). End the time range at your peak.",
                "short",
                (
                    Query(_recorded(r.SUGGESTED_PROCESSES), "processes per machine"),
                    Query(_recorded(r.SUGGESTED_THREADS), "threads per process"),
                    Query(_recorded(r.SUGGESTED_MACHINES), "machines"),
                ),
                kind="stat",
                width=12,
                decimals=0,
            ),
            Panel(
                "Now",
                "The current setting: worker processes per instance and threads per process "
                "(the most any worker has), and the instances there are.",
                "short",
                (
                    Query(
                        f"max by (job) (sum by (job, instance) ({_s(q.name(m.WORKERS))}))",
                        "processes per machine",
                    ),
                    Query(
                        f"count by (job) ({_s(q.counter(m.LOOP_OBSERVED))}) * 0 + 1\n"
                        f"or\nmax by (job) ({_s(q.name(m.CAPACITY))})",
                        "threads per process",
                    ),
                    Query(MACHINES_NOW, "machines"),
                ),
                kind="stat",
                width=12,
                decimals=0,
            ),
            Panel(
                "Slots: busy, now and needed",
                f"Busy slots (rate x service time) or loops (sum of ELUs), those there are, and "
                f"those that keep them at target: ceil(busy / {target:g}), loops / {loop:g}.",
                "short",
                (
                    Query(f"{_recorded(r.LOOP_BUSY_JOB)} or {_recorded(r.BUSY_JOB)}", "busy"),
                    Query(f"{_recorded(r.LOOPS_JOB)} or {_recorded(r.SLOTS_JOB)}", "now"),
                    Query(_recorded(r.SUGGESTED_SLOTS), "needed"),
                ),
                minimum=0,
                width=6,
            ),
            Panel(
                "CPU ceiling",
                "Slots or loops one instance's cores keep running (cores / CPU share): more "
                "only wait for a core. Absent when the CPU share is about 0.",
                "short",
                (
                    Query(_recorded(r.CPU_CEILING, instance=True), "{{instance}} ceiling"),
                    Query(
                        f"{_recorded(r.LOOPS_INSTANCE, instance=True)}\n"
                        f"or {_recorded(r.SLOTS_INSTANCE, instance=True)}",
                        "{{instance}} now",
                    ),
                ),
                minimum=0,
                width=6,
            ),
            Panel(
                "Memory ceiling",
                "Worker processes that fit in an instance's memory after 1 GiB of reserves: the "
                "first at its RSS, others at their USS (async: all at RSS); against those running.",
                "short",
                (
                    Query(_recorded(r.MEMORY_CEILING, instance=True), "{{instance}} ceiling"),
                    Query(
                        f"sum by (instance) ({_s(q.name(m.WORKERS))})",
                        "{{instance}} processes now",
                    ),
                ),
                minimum=0,
                width=6,
            ),
            Panel(
                "Machines",
                "Machines (instances) needed so that each one's share fits its CPU and memory "
                "ceilings, against the instances there are.",
                "short",
                (
                    Query(_recorded(r.SUGGESTED_MACHINES), "needed"),
                    Query(MACHINES_NOW, "now"),
                ),
                minimum=0,
                width=6,
            ),
        ),
        needs_rules=True,
    )


def event_loops() -> Row:
    loop_busy = q.loop_busy(("job",), SELECTOR, WINDOW)
    loop_cpu = q.loop_cpu(("job",), SELECTOR, WINDOW)
    pool_size = f"sum by (instance) ({_s(q.name(m.POOL_SIZE))})"
    return Row(
        "Event loops (async workers)",
        (
            Panel(
                "Event-loop utilisation per worker",
                f"Share of time each async worker's loop ran code instead of waiting for I/O, "
                f"and how it was measured. Above {LOOP_TARGET} requests wait for the loop.",
                "percentunit",
                (
                    Query(
                        q.loop_utilisation(("instance", "worker", "method"), SELECTOR, WINDOW),
                        "{{instance}} worker {{worker}} ({{method}})",
                    ),
                ),
                thresholds=((r.Settings().loop_target, "orange"),),
                minimum=0,
            ),
            Panel(
                "Loop time: CPU or blocked",
                "Loop-seconds per second the loops were busy, the CPU time of their processes, "
                "and the rest: a loop held without the CPU, by a blocking call.",
                "short",
                (
                    Query(loop_busy, "busy"),
                    Query(loop_cpu, "CPU"),
                    Query(f"clamp_min(\n{loop_busy}\n  - {loop_cpu},\n  0)", "without the CPU"),
                ),
                minimum=0,
            ),
            Panel(
                "Blocking routes",
                "Share of the loops' busy time each route held them without the CPU (time.sleep, "
                "a sync client inside async def), from the sampled requests.",
                "percentunit",
                (
                    Query(
                        q.blocking_routes(SELECTOR, WINDOW, loop_busy, observe_loops.NOT_CPU),
                        "{{route}}",
                    ),
                ),
                kind="bargauge",
                thresholds=((0.05, "red"),),
                minimum=0,
            ),
            Panel(
                "Thread pool taken",
                "Share of the thread-seconds of the pool that runs sync code that was taken, and "
                "its threads in use at the scrape; at 100% sync calls queue.",
                "percentunit",
                (
                    Query(
                        f"{_sum_rate(q.counter(m.POOL_BUSY), ('instance',))}\n  / {pool_size}",
                        "{{instance}} taken",
                    ),
                    Query(
                        f"sum by (instance) ({_s(q.name(m.POOL_IN_USE))})\n  / {pool_size}",
                        "{{instance}} in use",
                    ),
                ),
                minimum=0,
            ),
            Panel(
                "Waiting for a thread",
                "Task-seconds per second spent waiting for a pool thread, and tasks waiting at "
                "the scrape. Above 0, the pool, not the loop, is the limit.",
                "short",
                (
                    Query(_sum_rate(q.counter(m.POOL_WAIT), ("instance",)), "{{instance}} waiting"),
                    Query(
                        f"sum by (instance) ({_s(q.name(m.POOL_WAITING))})",
                        "{{instance}} tasks now",
                    ),
                ),
                minimum=0,
            ),
            Panel(
                "Event-loop lag",
                "p99 of how late an async worker's event loop ran a timer that was due: how long "
                "a request arriving then waited for the loop.",
                "s",
                (
                    Query(
                        _quantile("0.99", m.LOOP_LAG, ("instance",)),
                        "{{instance}} p99",
                    ),
                ),
                minimum=0,
            ),
        ),
    )


def where_time_goes() -> Row:
    duration = m.DURATION
    return Row(
        "Where does the time go?",
        (
            Panel(
                "Busy time by route",
                "Each route's share of the service time: where adding capacity or making "
                "requests cheaper pays most.",
                "percentunit",
                (
                    Query(
                        f"{q.histogram_sum_rate(duration, ('job', 'route'), SELECTOR, WINDOW)}\n"
                        f"  / on (job) group_left () "
                        f"{q.histogram_sum_rate(duration, ('job',), SELECTOR, WINDOW)}",
                        "{{route}}",
                    ),
                ),
                stack=True,
                minimum=0,
                width=6,
            ),
            Panel(
                "Service time by route",
                "p50 and p95 of the time from the app being called until its response is sent, "
                "per route (from its coarse buckets) and for all routes (from fine ones). It "
                "excludes queue wait.",
                "s",
                tuple(
                    Query(
                        _quantile(quantile, m.DURATION, ("route",)),
                        f"{{{{route}}}} p{float(quantile) * 100:g}",
                    )
                    for quantile in ("0.5", "0.95")
                )
                + tuple(
                    Query(
                        _quantile(quantile, m.SERVICE_TIME, ("job",)),
                        f"all routes p{float(quantile) * 100:g}",
                    )
                    for quantile in ("0.5", "0.95")
                ),
                minimum=0,
                width=6,
            ),
            Panel(
                "CPU share by route",
                f"CPU time / service time of sampled requests. Red above {CPU_BOUND:.0%}: a "
                f"CPU-bound route, which wants processes rather than threads.",
                "percentunit",
                (Query(q.route_cpu_share(("route",), SELECTOR, WINDOW), "{{route}}"),),
                kind="bargauge",
                thresholds=((CPU_BOUND, "red"),),
                minimum=0,
                width=6,
            ),
            Panel(
                "Status classes",
                "Requests per second by status class; an exception in the app counts as 5xx.",
                "reqps",
                (Query(_sum_rate(q.counter(m.REQUESTS), ("status",)), "{{status}}"),),
                stack=True,
                minimum=0,
                width=6,
            ),
        ),
    )


def memory() -> Row:
    return Row(
        "Memory",
        (
            Panel(
                "Memory per worker process",
                "Resident (RSS) and unique (USS: freed if the process exited) memory of each "
                "worker process.",
                "bytes",
                (
                    Query(
                        f"max by (instance, worker) ({_s(q.name(m.RSS))})",
                        "{{instance}} worker {{worker}} RSS",
                    ),
                    Query(
                        f"max by (instance, worker) ({_s(q.name(m.USS))})",
                        "{{instance}} worker {{worker}} USS",
                    ),
                ),
                minimum=0,
            ),
            Panel(
                "Host memory",
                "Memory available for new processes without swapping, and the host's total.",
                "bytes",
                (
                    Query(
                        f"max by (instance) ({_s(q.name(m.HOST_AVAILABLE))})",
                        "{{instance}} available",
                    ),
                    Query(f"max by (instance) ({_s(q.name(m.HOST_MEMORY))})", "{{instance}} total"),
                ),
                minimum=0,
            ),
            Panel(
                "Memory trend per worker process",
                "How fast each worker's unique memory grows, over the last 30 minutes: a "
                "steady rise is a leak that lowers the memory ceiling.",
                "Bps",
                (
                    Query(
                        f"deriv({_s(q.name(m.USS))}[30m])",
                        "{{instance}} worker {{worker}}",
                    ),
                ),
            ),
        ),
    )


def meter_health() -> Row:
    return Row(
        "Health of the meter",
        (
            Panel(
                "Request-start headers not observed",
                "Headers rejected by reason (unparsable, future, too_old), clock skew and "
                "uploads. A steady rejection rate means a misconfigured proxy.",
                "reqps",
                (
                    Query(_sum_rate(q.counter(m.QUEUE_REJECTED), ("reason",)), "{{reason}}"),
                    Query(_sum_rate(q.counter(m.QUEUE_SKEW), ("job",)), "clock skew"),
                    Query(_sum_rate(q.counter(m.QUEUE_UPLOADS), ("job",)), "uploads"),
                ),
                minimum=0,
                width=6,
            ),
            Panel(
                "Scrapes and capacity",
                "1 when Prometheus scraped the instance, and when its sync workers know their "
                "capacity (threads): at 0 their utilisation is missing. Async ones count loops.",
                "short",
                (
                    Query(f"up{SELECTOR}", "{{instance}} scraped"),
                    Query(
                        f"min by (instance) (\n  {_s(q.name(m.CAPACITY_KNOWN))}\n"
                        f"    unless on (instance, worker) {_s(q.counter(m.LOOP_OBSERVED))}\n)",
                        "{{instance}} capacity known",
                    ),
                    Query(
                        f"count by (instance) ({_s(q.counter(m.LOOP_OBSERVED))})",
                        "{{instance}} event loops measured",
                    ),
                ),
                minimum=0,
                width=6,
            ),
        ),
    )


def rows() -> tuple[Row, ...]:
    return (keeping_up(), how_many(), event_loops(), where_time_goes(), memory(), meter_health())


# ------------------------------------------------------------------------------------ JSON model


def _thresholds(panel: Panel) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    steps += [{"color": colour, "value": value} for value, colour in panel.thresholds]
    return {"mode": "absolute", "steps": steps}


def _field_config(panel: Panel) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, "thresholds": _thresholds(panel)}
    if panel.minimum is not None:
        defaults["min"] = panel.minimum
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    if panel.kind == "timeseries":
        defaults["color"] = {"mode": "palette-classic"}
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if panel.stack else 0,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
            "thresholdsStyle": {"mode": "dashed" if panel.thresholds else "off"},
        }
    else:
        defaults["color"] = {"mode": "thresholds"}
    return {"defaults": defaults, "overrides": []}


def _options(panel: Panel) -> dict[str, Any]:
    reduce = {"calcs": [panel.reduce], "fields": "", "values": False}
    if panel.kind == "timeseries":
        return {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    if panel.kind == "stat":
        return {
            "reduceOptions": reduce,
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "horizontal",
            "textMode": "value_and_name",
        }
    return {
        "reduceOptions": reduce,
        "displayMode": "gradient",
        "orientation": "horizontal",
        "showUnfilled": True,
        "valueMode": "color",
    }


def _lines(panels: Sequence[Panel]) -> list[list[tuple[Panel, int]]]:
    """Panels in lines of the 24-column grid; a last line that is not full is spread over it."""
    lines: list[list[Panel]] = [[]]
    for panel in panels:
        if sum(p.width for p in lines[-1]) + panel.width > 24:
            lines.append([])
        lines[-1].append(panel)
    out = [[(p, p.width) for p in line] for line in lines[:-1]]
    last = lines[-1]
    return [*out, [(p, 24 // len(last)) for p in last]]


def _panel(panel: Panel, panel_id: int, x: int, y: int, width: int, height: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": width, "x": x, "y": y},
        "fieldConfig": _field_config(panel),
        "options": _options(panel),
        "targets": [
            {
                "datasource": DATASOURCE,
                "expr": query.expr,
                "legendFormat": query.legend,
                "range": True,
                "refId": chr(ord("A") + i),
            }
            for i, query in enumerate(panel.queries)
        ],
    }


def _variables() -> list[dict[str, Any]]:
    hosts = q.name(m.HOST_CPUS)

    def query(name: str, label: str, definition: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "definition": definition,
            "query": definition,
            "refresh": 2,
            "sort": 1,
            "current": {},
            "options": [],
            "hide": 0,
            **extra,
        }

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "options": [],
            "hide": 0,
            "refresh": 1,
            "regex": "",
        },
        query("job", "Job", f"label_values({hosts}, job)", multi=False, includeAll=False),
        query(
            "instance",
            "Instance",
            f'label_values({hosts}{{job="$job"}}, instance)',
            multi=True,
            includeAll=True,
            allValue=".*",
        ),
    ]


def model() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    panels: list[dict[str, Any]] = []
    y, panel_id = 0, 1
    for row in rows():
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id, y = panel_id + 1, y + 1
        for line in _lines(row.panels):
            x, height = 0, max(5 if p.kind == "stat" else 8 for p, _ in line)
            for panel, width in line:
                panels.append(_panel(panel, panel_id, x, y, width, height))
                panel_id, x = panel_id + 1, x + width
            y += height
    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "11.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
            {"type": "panel", "id": "bargauge", "name": "Bar gauge", "version": ""},
        ],
        "uid": UID,
        "title": "workermeter: are the workers keeping up, and how many do they need?",
        "description": (
            "Utilisation, queue wait and the suggested processes x threads of Python web "
            "workers measured by workermeter. The 'How many workers?' row needs the rules in "
            "integrations/prometheus/workermeter-rules.yml."
        ),
        "tags": ["workermeter", "python", "capacity"],
        "editable": True,
        "graphTooltip": 1,
        "links": [
            {
                "title": "How to read this dashboard",
                "type": "link",
                "url": "https://github.com/workermeter/workermeter/blob/main/docs/dashboard.md",
                "targetBlank": True,
                "icon": "doc",
            }
        ],
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "templating": {"list": _variables()},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(model(), indent=2, ensure_ascii=False) + "\n"


def queries() -> list[tuple[str, str, Query]]:
    """``(row, panel, query)`` for every query on the dashboard."""
    return [
        (row.title, panel.title, query)
        for row in rows()
        for panel in row.panels
        for query in panel.queries
    ]
