"""Prometheus's protobuf exposition: ``io.prometheus.client.MetricFamily`` messages, each after
its length as a varint (``encoding=delimited``), as a Prometheus that takes native histograms
asks for them. A histogram carries its classic buckets and its native ones, so a Prometheus
keeps whichever its scrape configuration asks for.

No Python package that writes this fits the run-time dependencies (prometheus_client writes
only the text formats), and the messages are few and small: they are written here, field by
field, from the definitions in prometheus/client_model's ``metrics.proto`` (proto2). Tests
decode the output with the official definitions.
"""

from __future__ import annotations

import struct

from .textformat import Family, Native

# MetricType
_COUNTER, _GAUGE, _HISTOGRAM = 0, 1, 4
# Wire types.
_VARINT, _I64, _LEN = 0, 1, 2
# Field keys, (number << 3) | wire type, each one byte: every field number is below 16.
_FAMILY_NAME, _FAMILY_HELP, _FAMILY_TYPE, _FAMILY_METRIC = 0x0A, 0x12, 0x18, 0x22
_METRIC_LABEL, _METRIC_GAUGE, _METRIC_COUNTER, _METRIC_HISTOGRAM = 0x0A, 0x12, 0x1A, 0x3A
_LABEL_NAME, _LABEL_VALUE = 0x0A, 0x12
_VALUE = 0x09  # Gauge.value and Counter.value: field 1, a double
_H_COUNT, _H_SUM, _H_BUCKET, _H_SCHEMA = 0x08, 0x11, 0x1A, 0x28
_H_ZERO_THRESHOLD, _H_ZERO_COUNT, _H_POSITIVE_SPAN, _H_POSITIVE_DELTA = 0x31, 0x38, 0x62, 0x6A
_B_COUNT, _B_BOUND = 0x08, 0x11
_B_COUNT_KEY = bytes((_B_COUNT,))
_SPAN_OFFSET, _SPAN_LENGTH = 0x08, 0x10
_double = struct.Struct("<d").pack
# Empty buckets between two that hold values, up to which the deltas run on through them (one
# byte each) rather than a new span begin (about four).
_GAP = 2


def varint(n: int) -> bytes:
    """``n`` (0 or more) in protobuf's base-128 varint."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zigzag(n: int) -> bytes:
    """A sint32 or sint64: signed values zigzagged, so that small ones of either sign are short."""
    return varint(n << 1 if n >= 0 else (-n << 1) - 1)


def _field(key: int, payload: bytes) -> bytes:
    """A length-delimited field: a string, bytes or a message."""
    return bytes((key,)) + varint(len(payload)) + payload


def _label_pairs(
    names: tuple[str, ...], values: tuple[str, ...], known: dict[tuple[str, str], bytes]
) -> bytes:
    """The Metric.label fields, sorted by name as Prometheus's own clients send them; each pair
    written once per exposition (``known``): routes and workers recur in many families."""
    out = []
    for pair in sorted(zip(names, values, strict=True)):
        field = known.get(pair)
        if field is None:
            name, value = pair
            field = known[pair] = _field(
                _METRIC_LABEL,
                _field(_LABEL_NAME, name.encode()) + _field(_LABEL_VALUE, value.encode()),
            )
        out.append(field)
    return b"".join(out)


def _spans(native: Native) -> bytes:
    """The positive spans and the deltas of a native histogram's buckets."""
    spans = bytearray()
    deltas = bytearray()
    start = length = 0  # the span under way
    previous_end = 0  # the index after the last span that ended
    previous_count = 0
    first = True
    for index, count in native.buckets:
        gap = index - (start + length)
        if first or gap > _GAP:
            if not first:
                spans += _span(start - previous_end, length)
                previous_end = start + length
            start, length, first = index, 0, False
        else:
            for _ in range(gap):  # empty buckets within the span: a delta down to 0 then none
                deltas += _zigzag(-previous_count)
                previous_count = 0
                length += 1
        deltas += _zigzag(count - previous_count)
        previous_count = count
        length += 1
    if first:
        # No bucket above zero: one empty span, as the Go client sends, marks it as native even
        # to a reader that looks for spans.
        return _field(_H_POSITIVE_SPAN, b"")
    spans += _span(start - previous_end, length)
    return bytes(spans) + _field(_H_POSITIVE_DELTA, bytes(deltas))


def _span(offset: int, length: int) -> bytes:
    return _field(
        _H_POSITIVE_SPAN,
        bytes((_SPAN_OFFSET,)) + _zigzag(offset) + bytes((_SPAN_LENGTH,)) + varint(length),
    )


def _histogram(
    bounds: tuple[bytes, ...], buckets: list[int], total: float, native: Native | None
) -> bytes:
    out = bytearray((_H_COUNT,))
    out += varint(buckets[-1])
    out.append(_H_SUM)
    out += _double(total)
    for bound, count in zip(bounds, buckets, strict=False):  # +Inf left out, as is allowed
        bucket = _B_COUNT_KEY + varint(count) + bound  # under 128 bytes: its length is 1 byte
        out.append(_H_BUCKET)
        out.append(len(bucket))
        out += bucket
    if native is not None:
        out.append(_H_SCHEMA)
        out += _zigzag(native.schema)
        out.append(_H_ZERO_THRESHOLD)
        out += _double(native.zero_threshold)
        out.append(_H_ZERO_COUNT)
        out += varint(native.zero_count)
        out += _spans(native)
    return bytes(out)


def encode(families: list[Family]) -> bytes:
    """The delimited MetricFamily messages of ``families``."""
    out = bytearray()
    known: dict[tuple[str, str], bytes] = {}
    for f in families:
        metric = f.metric
        kind = metric.kind
        name = f"{metric.name}_total" if kind == "counter" else metric.name
        body = bytearray(_field(_FAMILY_NAME, name.encode()))
        body += _field(_FAMILY_HELP, metric.help.encode())
        body += bytes((_FAMILY_TYPE,))
        if kind == "histogram":
            body += varint(_HISTOGRAM)
            bounds = tuple(bytes((_B_BOUND,)) + _double(b) for b in metric.buckets)
            for labels, buckets, total, native in f.histograms:
                sample = _label_pairs(metric.labels, labels, known) + _field(
                    _METRIC_HISTOGRAM, _histogram(bounds, buckets, total, native)
                )
                body += _field(_FAMILY_METRIC, sample)
        else:
            body += varint(_COUNTER if kind == "counter" else _GAUGE)
            key = _METRIC_COUNTER if kind == "counter" else _METRIC_GAUGE
            for labels, value in f.values:
                sample = (
                    _label_pairs(metric.labels, labels, known)
                    + bytes((key, 9, _VALUE))
                    + _double(value)
                )
                body += _field(_FAMILY_METRIC, sample)
        out += varint(len(body))
        out += body
    return bytes(out)
