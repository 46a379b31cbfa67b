"""The protobuf exposition, decoded with the official definitions: prometheus/client_model's
metrics.proto (Debian's golang-github-prometheus-client-model-dev), compiled by protoc."""

from __future__ import annotations

import math
import random
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import FakeClock, FakeWallClock
from workermeter import buckets, protobuf, textformat
from workermeter.exposition import Exposition
from workermeter.recorder import Recorder, status_index
from workermeter.store import Store
from workermeter.textformat import PROTOBUF, TEXT_0_0_4, negotiate

CLIENT_MODEL = Path("/usr/share/gocode/src/github.com/prometheus/client_model")
# What Prometheus 2.42 sends with --enable-feature=native-histograms, and without it.
ACCEPT_NATIVE = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,"
    "application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
ACCEPT_CLASSIC = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@pytest.fixture(scope="module")
def metric_family(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The MetricFamily message class of the official metrics.proto."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    out = tmp_path_factory.mktemp("proto") / "metrics.desc"
    subprocess.run(
        ["protoc", f"-I{CLIENT_MODEL}", "-I/usr/include", "--include_imports",
         f"--descriptor_set_out={out}", "io/prometheus/client/metrics.proto"],
        check=True,
    )  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("io.prometheus.client.MetricFamily")
    )


def decode(metric_family: Any, body: bytes) -> dict[str, Any]:
    """Each delimited MetricFamily of ``body``, by name; every byte is one of them."""
    families = {}
    pos = 0
    while pos < len(body):
        size = shift = 0
        while True:
            byte = body[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        message = metric_family.FromString(body[pos : pos + size])
        assert not unknown_fields(message), message.name  # every field was one it knows
        families[message.name] = message
        pos += size
    assert pos == len(body)
    return families


def unknown_fields(message: Any) -> list[int]:
    """The numbers of the fields of ``message`` and of its messages that its definition lacks."""
    from google.protobuf.unknown_fields import UnknownFieldSet

    unknown = UnknownFieldSet(message)
    found = [unknown[i].field_number for i in range(len(unknown))]
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        children = value if descriptor.is_repeated else [value]
        for child in children:
            found += unknown_fields(child)
    return found


def native_buckets(h: Any) -> dict[int, int]:
    """A native histogram's count by bucket index, from its spans and deltas."""
    found: dict[int, int] = {}
    index = 0
    count = 0
    deltas = iter(h.positive_delta)
    for i, span in enumerate(h.positive_span):
        index = span.offset if i == 0 else index + span.offset
        for _ in range(span.length):
            count += next(deltas)
            if count:
                found[index] = count
            index += 1
    assert next(deltas, None) is None  # no delta left over
    return found


def expected_index(seconds: float, schema: int) -> int | None:
    """The native bucket of a value, by Prometheus's definition; None for the zero bucket."""
    if seconds <= buckets.ZERO_THRESHOLD:
        return None
    return min(math.ceil(math.log2(seconds) * (1 << schema)), buckets.TOP << schema)


def near_a_bound(seconds: float) -> bool:
    """Whether float rounding could put a value on either side of a native bound."""
    x = math.log2(seconds) * (1 << buckets.SCHEMA)
    return abs(x - round(x)) < 1e-6


@pytest.fixture
def served(
    make_recorder: Callable[..., Recorder], store_dir: Path, clock: FakeClock,
    wall_clock: FakeWallClock,
) -> tuple[Exposition, list[tuple[str, int, int, int | None]]]:  # fmt: skip
    """An exposition of a store that served random requests: (route, status, ns, queue ns)."""
    rng = random.Random(7)
    active = make_recorder(cpu_sample=1).activate(multithread=False, capacity=2)
    lane = active.lane()
    sent = []
    for _ in range(3000):
        route = rng.choice(["/", "/users/{id}", "/slow"])
        status = rng.choice([200, 200, 200, 404, 500])
        ns = int(rng.lognormvariate(math.log(0.02), 1.5) * 1e9)  # ~0.1 ms to seconds
        queue = None
        if rng.random() < 0.8:
            queue = int(rng.expovariate(1 / 0.004) * 1e9) if rng.random() < 0.9 else 0
            start = wall_clock.now = round(wall_clock.now, 6)  # as the header will say it
            wall_clock.now += queue / 1e9
            active.begin(lane, f"t={start:.6f}")
            queue = int((wall_clock.now - round(start, 6)) * 1e9)
        else:
            active.begin(lane)
        t0 = clock.ns
        clock.ns += ns
        active.finish(lane, route, "GET", status_index(status), t0, None)
        sent.append((route, status, ns, queue))
    return Exposition(lambda: Store(store_dir)), sent


def test_negotiation() -> None:
    """Prometheus's protobuf media type where it comes first; otherwise as before."""
    assert negotiate(ACCEPT_NATIVE) == PROTOBUF
    assert negotiate(ACCEPT_CLASSIC).openmetrics
    assert not negotiate(ACCEPT_CLASSIC).protobuf
    # Not the delimited MetricFamily stream: the next one that is known, or the text format.
    assert (
        negotiate(
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
            "encoding=text,text/plain;version=0.0.4"
        ).content_type
        == TEXT_0_0_4
    )
    assert negotiate("application/vnd.google.protobuf;encoding=delimited") == negotiate(None)
    assert PROTOBUF.content_type == (
        "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; "
        "encoding=delimited"
    )


def test_every_sample_is_the_text_formats(metric_family: Any, served: Any) -> None:
    """Each counter, gauge and classic histogram of the protobuf answer has the text answer's
    names, labels and values, and nothing is left out or added."""
    exposition, _ = served
    families = exposition.collector.families(native=True)  # once: memory and busy time move
    text = textformat.render(families, openmetrics=False)
    decoded = decode(metric_family, protobuf.encode(families))
    expected: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    kinds = {}
    for family in text_string_to_metric_families(text.decode()):
        kinds[family.name] = family.type
        for sample in family.samples:
            expected[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    types = {0: "counter", 1: "gauge", 4: "histogram"}
    for name, family in decoded.items():
        base = name.removesuffix("_total") if family.type == 0 else name
        assert types[family.type] == kinds[base], name
        for metric in family.metric:
            labels = tuple((p.name, p.value) for p in metric.label)
            assert list(labels) == sorted(labels)
            if family.type == 0:
                found[(name, labels)] = metric.counter.value
            elif family.type == 1:
                found[(name, labels)] = metric.gauge.value
            else:
                h = metric.histogram
                for b in h.bucket:
                    le = (("le", repr(b.upper_bound)),)
                    found[(f"{name}_bucket", tuple(sorted(labels + le)))] = b.cumulative_count
                inf = tuple(sorted((*labels, ("le", "+Inf"))))
                found[(f"{name}_bucket", inf)] = h.sample_count
                found[(f"{name}_count", labels)] = h.sample_count
                found[(f"{name}_sum", labels)] = h.sample_sum
    normal = {
        (name, tuple((k, repr(float(v)) if k == "le" and v != "+Inf" else v) for k, v in labels)):
        value for (name, labels), value in expected.items()
    }  # fmt: skip
    assert found == normal


def test_native_buckets_hold_each_value_where_prometheus_puts_it(
    metric_family: Any, served: Any
) -> None:
    """Every histogram is native too (schema 3 without route labels, 0 a route): each value
    sent is counted in the bucket Prometheus's definition gives it, and nowhere else."""
    exposition, sent = served
    body, content_type = exposition.render(ACCEPT_NATIVE)
    assert content_type == PROTOBUF.content_type
    decoded = decode(metric_family, body)

    def check(h: Any, values: list[float], schema: int) -> None:
        assert h.schema == schema
        assert h.zero_threshold == 2.0**-20
        assert h.sample_count == len(values)
        expected: dict[int, int] = {}
        zero = 0
        for v in values:
            index = expected_index(v, schema)
            if index is None:
                zero += 1
            else:
                expected[index] = expected.get(index, 0) + 1
        assert h.zero_count == zero
        assert native_buckets(h) == expected
        assert h.sample_count == h.zero_count + sum(native_buckets(h).values())

    assert all(not near_a_bound(ns / 1e9) for _, _, ns, _ in sent)
    service = decoded["workermeter_service_time_seconds"].metric[0].histogram
    check(service, [ns / 1e9 for _, _, ns, _ in sent], buckets.SCHEMA)
    waits = [q / 1e9 for _, _, _, q in sent if q is not None]
    assert sum(1 for q in waits if q <= buckets.ZERO_THRESHOLD) > 0  # the zero bucket is used
    assert all(not near_a_bound(q) for q in waits if q > 0)
    check(decoded["workermeter_queue_wait_seconds"].metric[0].histogram, waits, buckets.SCHEMA)
    routes = decoded["workermeter_request_duration_seconds"].metric
    assert {m.label[0].value for m in routes} == {"/", "/users/{id}", "/slow"}
    for m in routes:
        route = m.label[0].value
        check(m.histogram, [ns / 1e9 for r, _, ns, _ in sent if r == route], buckets.ROUTE_SCHEMA)
    lag = decoded["workermeter_event_loop_lag_seconds"].metric[0].histogram
    assert lag.sample_count == 0
    assert len(lag.positive_span) == 1  # an empty span: still a native histogram
    assert lag.positive_span[0].length == 0


def test_gaps_and_the_top_bucket(metric_family: Any, recorder: Recorder, store_dir: Path,
                                 clock: FakeClock) -> None:  # fmt: skip
    """Buckets a few apart share a span (the deltas run through the empty ones), farther ones
    start a new span; a value past 2**16 s is counted in the top bucket, as +Inf is."""
    active = recorder.activate(multithread=False, capacity=1)
    lane = active.lane()
    per = 2**buckets.SCHEMA
    indexes = [-40, -39, -37, -34, -20, 0, buckets.TOP * per]
    values = [2.0 ** ((k - 0.5) / per) for k in indexes] + [2.0**17, 2.0**-21, 0.0]
    for seconds in values:
        t0 = active.begin()
        clock.ns += int(seconds * 1e9)
        active.finish(lane, "/", "GET", status_index(200), t0, None)
    decoded = decode(metric_family, Exposition(lambda: Store(store_dir)).render(ACCEPT_NATIVE)[0])
    h = decoded["workermeter_service_time_seconds"].metric[0].histogram
    assert [(s.offset, s.length) for s in h.positive_span] == [(-40, 7), (13, 1), (19, 1), (127, 1)]
    assert list(h.positive_delta) == [1, 0, -1, 1, -1, 0, 1, 0, 0, 1]
    assert native_buckets(h) == {-40: 1, -39: 1, -37: 1, -34: 1, -20: 1, 0: 1, 128: 2}
    assert h.zero_count == 2
    assert h.sample_count == 10
