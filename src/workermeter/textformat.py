"""Metric families as workermeter builds them, and their text exposition.

A scrape of 64 workers x 200 routes is ~10,000 lines. ``prometheus_client``'s encoders check
and escape every label name of every line; here each series' label string is built once and
each bucket line is a concatenation. The bytes are the same as ``prometheus_client``'s for the
Prometheus text format and for OpenMetrics (tests compare them on real stores), and
``to_client`` turns the same families into ``prometheus_client`` metric families for anything
else, such as a user's own registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from . import metrics as m

# Go's float formatting, as Prometheus reads it (untyped in prometheus_client)
_go_float = cast(Callable[[float], str], floatToGoString)
_LE = [*(_go_float(b) for b in m.BUCKETS), "+Inf"]


@dataclass
class Family:
    """The samples of one declared metric: ``values`` for counters and gauges, ``histograms``
    (cumulative bucket counts ending with +Inf, and the sum) for histograms; each keyed by its
    label values in the order of the metric's labels."""

    metric: m.Metric
    values: list[tuple[tuple[str, ...], float]] = field(default_factory=list)
    histograms: list[tuple[tuple[str, ...], list[int], float]] = field(default_factory=list)

    def add(self, labels: tuple[str, ...], value: float) -> None:
        self.values.append((labels, value))

    def add_histogram(self, labels: tuple[str, ...], buckets: list[int], total: float) -> None:
        self.histograms.append((labels, buckets, total))


def to_client(f: Family) -> Metric:
    """The ``prometheus_client`` metric family of ``f``."""
    names = list(f.metric.labels)
    unit = ""  # units are in the names already; OpenMetrics would append them again
    kind = f.metric.kind
    if kind == "histogram":
        hist = HistogramMetricFamily(f.metric.name, f.metric.help, labels=names, unit=unit)
        for labels, buckets, total in f.histograms:
            hist.add_metric(list(labels), list(zip(_LE, buckets, strict=True)), total)
        return hist
    family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    out = family_type(f.metric.name, f.metric.help, labels=names, unit=unit)
    for labels, value in f.values:
        out.add_metric(list(labels), value)
    return out


class _Read(Collector):
    def __init__(self, families: list[Family]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return map(to_client, self.families)


def registry_of(families: list[Family]) -> CollectorRegistry:
    """A ``prometheus_client`` registry that holds ``families``, for its own encoders."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Read(families))
    return registry


def sample_names(metric: m.Metric) -> set[str]:
    """The names a metric's samples go by, any of which selects it in ``?name[]=``."""
    if metric.kind == "counter":
        return {metric.name, f"{metric.name}_total"}
    if metric.kind == "histogram":
        return {metric.name, *(f"{metric.name}_{s}" for s in ("bucket", "count", "sum"))}
    return {metric.name}


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _label_text(names: tuple[str, ...], values: tuple[str, ...]) -> tuple[str, str]:
    """The label pairs that sort before ``le`` and those after it, each joined by commas."""
    pairs = sorted(zip(names, values, strict=True))
    before = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs if k < "le")
    after = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs if k > "le")
    return before, after


def _braced(before: str, after: str) -> str:
    inner = f"{before},{after}" if before and after else before or after
    return f"{{{inner}}}" if inner else ""


def render(families: list[Family], *, openmetrics: bool) -> bytes:
    """The Prometheus text format (0.0.4 and 1.0.0 alike for these names), or OpenMetrics."""
    out: list[str] = []
    formatted: dict[float, str] = {}  # most values repeat: bucket counts, zeros

    def fmt(value: float) -> str:
        text = formatted.get(value)
        if text is None:
            text = formatted[value] = _go_float(value)
        return text

    for f in families:
        name = f.metric.name
        sample = f"{name}_total" if f.metric.kind == "counter" else name
        header = name if openmetrics else sample
        doc = f.metric.help.replace("\\", r"\\").replace("\n", r"\n")
        if openmetrics:
            doc = doc.replace('"', r"\"")
        out.append(f"# HELP {header} {doc}\n# TYPE {header} {f.metric.kind}\n")
        for labels, value in f.values:
            out.append(f"{sample}{_braced(*_label_text(f.metric.labels, labels))} {fmt(value)}\n")
        for labels, buckets, total in f.histograms:
            before, after = _label_text(f.metric.labels, labels)
            head = f"{name}_bucket{{{before}," if before else f"{name}_bucket{{"
            tail = f",{after}}} " if after else "} "
            out.extend(
                f'{head}le="{le}"{tail}{fmt(count)}\n'
                for le, count in zip(_LE, buckets, strict=True)
            )
            braced = _braced(before, after)
            out.append(f"{name}_count{braced} {fmt(buckets[-1])}\n")
            out.append(f"{name}_sum{braced} {fmt(total)}\n")
    if openmetrics:
        out.append("# EOF\n")
    return "".join(out).encode()
