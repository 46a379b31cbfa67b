"""Metric families as workermeter builds them, and their text exposition.

A scrape of 64 workers x 200 routes is ~10,000 lines. ``prometheus_client``'s encoders check
and escape every label name of every line; here each series' label string is built once and
each bucket line is a concatenation. The bytes, and the content type chosen for an Accept
header, are ``prometheus_client``'s (tests compare them on real stores and on the Accept headers
Prometheus sends). ``prometheus_client`` itself is imported only where it is needed: for the
escapings that rename valid names, and to hand the families to a registry. A worker that answers
scrapes never loads it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from . import metrics as m

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

TEXT_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"
TEXT_1_0_0 = "text/plain; version=1.0.0; charset=utf-8"
OPENMETRICS_1_0_0 = "application/openmetrics-text; version=1.0.0; charset=utf-8"
ESCAPINGS = ("allow-utf-8", "underscores", "dots", "values")
#: Escapings that leave valid metric and label names as they are: the others are rendered by
#: prometheus_client.
KEEPS_NAMES = ("underscores", "allow-utf-8")


def go_float(value: float) -> str:
    """A sample value as Prometheus writes one (Go's shortest float format): ``1.0``, ``0.005``,
    ``1.234567e+06``, ``+Inf``, ``NaN``."""
    x = float(value)
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if math.isnan(x):
        return "NaN"
    text = repr(x)
    dot = text.find(".")
    if x > 0 and dot > 6:  # Go turns to an exponent at 1e+06 and above, Python at 1e+16
        digits = (text[:dot] + text[dot + 1 :]).rstrip("0")
        mantissa = f"{digits[0]}.{digits[1:]}" if len(digits) > 1 else digits
        return f"{mantissa}e+{dot - 1:02d}"
    return text


@functools.cache
def _le(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """The ``le`` label values of a histogram with these upper bounds, +Inf last."""
    return (*(go_float(b) for b in bounds), "+Inf")


class Format(NamedTuple):
    """What a scrape gets: its content type, whether it is OpenMetrics, and the name escaping;
    or Prometheus's protobuf format, with native histograms."""

    content_type: str
    openmetrics: bool
    escaping: str
    protobuf: bool = False


PROTOBUF = Format(
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited",
    False,
    "underscores",
    True,
)


def negotiate(accept: str | None) -> Format:
    """The format for a scrape's Accept header, chosen as ``prometheus_client`` chooses: the
    first OpenMetrics or text media type of version 1.0.0 or later, else the text format 0.0.4;
    Prometheus's delimited protobuf format where it comes first (``prometheus_client`` does not
    write it), as a Prometheus that takes native histograms asks.
    """
    for accepted in (accept or "").split(","):
        media, *params = accepted.split(";")
        media = media.strip()
        if media == "application/vnd.google.protobuf":
            if (
                _param(params, "proto") == "io.prometheus.client.MetricFamily"
                and _param(params, "encoding") == "delimited"
            ):
                return PROTOBUF
            continue
        if media not in ("application/openmetrics-text", "text/plain"):
            continue
        version = _param(params, "version")
        escaping = _param(params, "escaping")
        escaping = escaping if escaping in ESCAPINGS else "underscores"
        if media == "application/openmetrics-text" and not version:
            return Format(OPENMETRICS_1_0_0, True, "underscores")
        if _at_least_1(version):
            if media == "text/plain":
                return Format(f"{TEXT_1_0_0}; escaping={escaping}", False, escaping)
            return Format(
                f"application/openmetrics-text; version={version}; charset=utf-8; "
                f"escaping={escaping}",
                True,
                escaping,
            )
    return Format(TEXT_0_0_4, False, "underscores")


def _param(params: list[str], name: str) -> str:
    for param in params:
        key, eq, value = param.strip().partition("=")
        if eq and key == name:
            return value
    return ""


def _at_least_1(version: str) -> bool:
    try:
        return tuple(int(part) for part in version.split(".")) >= (1, 0, 0)
    except ValueError:  # not numbers: a version this does not know
        return False


class Native(NamedTuple):
    """A native histogram's buckets: its schema, the zero bucket's threshold and count, and the
    (index, count) of each bucket above it that holds any value, in order of index."""

    schema: int
    zero_threshold: float
    zero_count: int
    buckets: list[tuple[int, int]]


@dataclass
class Family:
    """The samples of one declared metric: ``values`` for counters and gauges, ``histograms``
    (cumulative bucket counts ending with +Inf, the sum, and the native buckets when they were
    asked for) for histograms; each keyed by its label values in the order of the metric's
    labels."""

    metric: m.Metric
    values: list[tuple[tuple[str, ...], float]] = field(default_factory=list)
    histograms: list[tuple[tuple[str, ...], list[int], float, Native | None]] = field(
        default_factory=list
    )

    def add(self, labels: tuple[str, ...], value: float) -> None:
        self.values.append((labels, value))

    def add_histogram(
        self,
        labels: tuple[str, ...],
        buckets: list[int],
        total: float,
        native: Native | None = None,
    ) -> None:
        self.histograms.append((labels, buckets, total, native))


def to_client(f: Family) -> Metric:
    """The ``prometheus_client`` metric family of ``f``."""
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    names = list(f.metric.labels)
    unit = ""  # units are in the names already; OpenMetrics would append them again
    kind = f.metric.kind
    if kind == "histogram":
        hist = HistogramMetricFamily(f.metric.name, f.metric.help, labels=names, unit=unit)
        le = _le(f.metric.buckets)
        for labels, buckets, total, _ in f.histograms:
            hist.add_metric(list(labels), list(zip(le, buckets, strict=True)), total)
        return hist
    family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    out = family_type(f.metric.name, f.metric.help, labels=names, unit=unit)
    for labels, value in f.values:
        out.add_metric(list(labels), value)
    return out


class Families:
    """``families`` as a ``prometheus_client`` collector (anything with ``collect()`` is one)."""

    def __init__(self, families: list[Family]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return map(to_client, self.families)


def encode_with_client(families: list[Family], accept: str | None) -> bytes:
    """``families`` as ``prometheus_client``'s encoder for ``accept`` writes them."""
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families(families))
    encoder, _ = choose_encoder(accept or "")
    return encoder(registry)


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
            text = formatted[value] = go_float(value)
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
        bounds = _le(f.metric.buckets)
        for labels, buckets, total, _ in f.histograms:
            before, after = _label_text(f.metric.labels, labels)
            head = f"{name}_bucket{{{before}," if before else f"{name}_bucket{{"
            tail = f",{after}}} " if after else "} "
            out.extend(
                f'{head}le="{le}"{tail}{fmt(count)}\n'
                for le, count in zip(bounds, buckets, strict=True)
            )
            braced = _braced(before, after)
            out.append(f"{name}_count{braced} {fmt(buckets[-1])}\n")
            out.append(f"{name}_sum{braced} {fmt(total)}\n")
    if openmetrics:
        out.append("# EOF\n")
    return "".join(out).encode()
