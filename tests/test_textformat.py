"""The text exposition written directly is byte for byte what prometheus_client writes."""

from __future__ import annotations

import gzip
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from promtext import parse, value
from workermeter import serve_metrics
from workermeter.exposition import Exposition, StoreCollector
from workermeter.metrics import ROUTE_BUCKETS
from workermeter.record_values import P_DISCONNECTS
from workermeter.recorder import Recorder, status_index
from workermeter.request_start import TOO_OLD
from workermeter.store import Store
from workermeter.textformat import Families, Family, go_float, negotiate, render

ROUTES = ["/plain/{id}", '/quote"d', "/back\\slash", "/new\nline", "/ünïcödé", "/{a}/{b}"]

ACCEPT = [
    pytest.param(None, False, id="no-accept"),
    pytest.param("text/plain", False, id="text"),
    pytest.param("text/plain; version=1.0.0; escaping=allow-utf-8", False, id="text-utf8"),
    pytest.param("application/openmetrics-text; version=1.0.0", True, id="openmetrics"),
    pytest.param(
        # what Prometheus 2.42 sends
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
        "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        True,
        id="prometheus-2",
    ),
]


def _fill(directory: Path) -> Recorder:
    """A live worker's recorder with requests of every kind; keep it to keep the worker."""
    rec = Recorder(directory=directory)
    active = rec.activate(multithread=False, capacity=4)
    lane = active.lane()
    for i, route in enumerate(ROUTES):
        for j in range(i + 1):
            active.begin()
            status = status_index(200 if j % 3 else 503)
            # durations across the buckets, 1 ms to ~1.6 s, and one in +Inf
            lane.request(route, "GET" if j % 2 else "POST", status, 10 ** (6 + j % 4) * (i + 1))
            active.end()
    lane.request("/slow", "PATCH", status_index(404), 400 * 10**9, cpu=3 * 10**9)
    lane.queue_wait(0.0042, None)
    lane.queue_wait(None, TOO_OLD)
    lane.loop_lag(0.25)
    lane.count(P_DISCONNECTS)
    return rec


def _families(directory: Path, detail: str) -> list[Family]:
    collector = StoreCollector(
        lambda: Store(directory),
        processes=lambda pids: {pid: (150 << 20, 99 << 20, 12.5) for pid in pids},
        host=lambda: (8 << 30, 3 << 30, 2),
        route_detail=detail,
    )
    return collector.families()


@pytest.fixture(params=["coarse", "full"])
def families(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[Family]]:
    rec = _fill(tmp_path)
    yield _families(tmp_path, request.param)
    assert rec.active is not None  # the worker stayed live throughout


@pytest.mark.parametrize(("accept", "openmetrics"), ACCEPT)
def test_same_bytes_as_prometheus_client(
    families: list[Family], accept: str | None, openmetrics: bool
) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families(families))
    encoder, content_type = choose_encoder(accept or "")
    assert content_type.startswith("application/openmetrics-text") is openmetrics
    expected = encoder(registry)
    assert render(families, openmetrics=openmetrics) == expected
    assert expected.count(b"\n") > 250  # every route's histogram is in it


def test_a_routes_histogram_coarse_and_full(tmp_path: Path) -> None:
    """The same store at both details: a route's methods added up into 10 bounds, or each
    method on its own with every bound; the service time of all routes the same in both."""
    rec = _fill(tmp_path)
    coarse = parse(render(_families(tmp_path, "coarse"), openmetrics=False))
    full = parse(render(_families(tmp_path, "full"), openmetrics=False))
    duration = "workermeter_request_duration_seconds"
    route = "/new\nline"
    assert value(coarse, f"{duration}_count", route=route) == sum(
        value(full, f"{duration}_count", route=route, method=method) for method in ("GET", "POST")
    )
    les = {dict(ls)["le"] for (n, ls), _ in coarse.items() if n == f"{duration}_bucket"}
    assert les == {*(go_float(b) for b in ROUTE_BUCKETS), "+Inf"}
    assert len({dict(ls)["le"] for (n, ls), _ in full.items() if n == f"{duration}_bucket"}) == 40
    service = {k: v for k, v in coarse.items() if k[0].startswith("workermeter_service_time")}
    assert service == {k: v for k, v in full.items() if k[0].startswith("workermeter_service_time")}
    assert value(coarse, "workermeter_service_time_seconds_count") == sum(range(1, 7)) + 1
    assert value(coarse, "workermeter_requests_total", route="/slow", status="4xx") == 1
    patch = {"route": "/slow", "method": "PATCH", "status": "4xx"}
    assert value(full, "workermeter_requests_total", **patch) == 1
    assert rec.active is not None


def test_what_the_families_hold(tmp_path: Path) -> None:
    rec = _fill(tmp_path)
    families = _families(tmp_path, "full")
    assert rec.active is not None
    samples = parse(render(families, openmetrics=False))
    duration = "workermeter_request_duration_seconds"
    assert value(samples, f"{duration}_count", method="GET", route='/quote"d') == 1
    assert value(samples, f"{duration}_bucket", le="+Inf", method="POST", route="/new\nline") == 2
    slow = {"method": "PATCH", "route": "/slow"}
    assert value(samples, f"{duration}_sum", **slow) == 400.0
    assert value(samples, f"{duration}_bucket", le="300.0", **slow) == 0
    assert value(samples, f"{duration}_bucket", le="+Inf", **slow) == 1
    assert value(samples, "workermeter_sampled_cpu_seconds_total", route="/slow") == 3.0
    assert value(samples, "workermeter_queue_wait_seconds_bucket", le="0.005") == 1
    assert value(samples, "workermeter_queue_wait_seconds_bucket", le="0.004") == 0
    assert value(samples, "workermeter_queue_wait_rejected_total", reason="too_old") == 1
    assert value(samples, "workermeter_client_disconnects_total") == 1
    assert value(samples, "workermeter_process_unique_memory_bytes", worker="0") == 99 << 20
    om = render(families, openmetrics=True).decode()
    assert om.endswith("# EOF\n")
    names = {f.name for f in openmetrics_families(om)}  # type: ignore[no-untyped-call]
    assert {"workermeter_requests", "workermeter_request_duration_seconds"} <= names


@pytest.mark.parametrize(
    "accept",
    [
        "",
        "*/*",
        "text/plain",
        "text/plain;version=0.0.4",
        "text/plain; version=1.0.0",
        "text/plain; version=1.0.0; escaping=allow-utf-8",
        "text/plain; version=1.0.0; escaping=dots",
        "text/plain; version=1.0.0; escaping=nonsense",
        "text/plain; version=2",
        "application/openmetrics-text",
        "application/openmetrics-text; version=0.0.1",
        "application/openmetrics-text; version=1.0.0",
        "application/openmetrics-text;version=1.0.0;escaping=values",
        "application/openmetrics-text; version=0.0.1, text/plain; version=1.0.0",
        "application/json, text/plain;version=0.0.4;q=0.5",
        # Prometheus 2.42 (Debian 12) and 3.x
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
        "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
        "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;"
        "escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    ],
)
def test_negotiates_as_prometheus_client(accept: str) -> None:
    chosen = negotiate(accept)
    assert chosen.content_type == choose_encoder(accept)[1]
    assert chosen.openmetrics is chosen.content_type.startswith("application/openmetrics-text")
    assert chosen.escaping == (chosen.content_type.partition("escaping=")[2] or "underscores")


def test_a_version_that_is_no_number_is_passed_over() -> None:
    # prometheus_client raises TypeError comparing "x" with 0
    assert (
        negotiate("text/plain; version=1.x").content_type
        == "text/plain; version=0.0.4; charset=utf-8"
    )


@pytest.mark.parametrize(
    "value",
    [0, 1, -1, 0.0, -0.0, 0.0005, 1e-9, 2.5, 123456, 999999, 1e6, 1234567, 1234567.891,
     2**53, 2**63 - 1, 1e15, 1.5e16, 1e22, -1234567.5, 123456789.0, float("inf"),
     float("-inf"), float("nan"), 1795610883.4910522, 400.0, 1 / 3],
)  # fmt: skip
def test_floats_as_prometheus_client_writes_them(value: float) -> None:
    assert go_float(value) == floatToGoString(value)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(("accept", "openmetrics"), ACCEPT)
def test_exposition_negotiates(tmp_path: Path, accept: str | None, openmetrics: bool) -> None:
    _fill(tmp_path)
    exposition = Exposition(lambda: Store(tmp_path))
    body, content_type = exposition.render(accept)
    assert content_type == choose_encoder(accept or "")[1]
    assert body.endswith(b"# EOF\n") is openmetrics
    samples = parse(body.replace(b"# EOF\n", b""))
    assert value(samples, "workermeter_requests_total", route="/ünïcödé", status="5xx") == 2


@pytest.mark.parametrize(
    ("accept", "name"),
    [
        pytest.param(
            "text/plain; version=1.0.0; escaping=dots", b"workermeter__workers", id="dots"
        ),
        pytest.param(
            "application/openmetrics-text; version=1.0.0; escaping=values",
            b"U__workermeter__workers",
            id="values",
        ),
    ],
)
def test_renaming_escapings_are_left_to_prometheus_client(
    tmp_path: Path, accept: str, name: bytes
) -> None:
    _fill(tmp_path)
    exposition = Exposition(lambda: Store(tmp_path))
    body, content_type = exposition.render(accept)
    assert content_type == choose_encoder(accept)[1]
    assert b"\n" + name + b" 1.0\n" in body


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_served_gzipped_filtered_and_head(tmp_path: Path) -> None:
    _live = _fill(tmp_path)
    server, thread = serve_metrics(_free_port(), directory=tmp_path)
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        with requests.get(url, stream=True, timeout=10) as reply:
            raw = reply.raw.read()
        assert reply.headers["Content-Encoding"] == "gzip"
        assert int(reply.headers["Content-Length"]) == len(raw)
        text = gzip.decompress(raw)
        assert value(text, "workermeter_workers") == 1
        plain = requests.get(url, headers={"Accept-Encoding": "identity"}, timeout=10)
        assert "Content-Encoding" not in plain.headers
        assert value(plain.content, "workermeter_workers") == 1
        head = requests.head(url, headers={"Accept-Encoding": "identity"}, timeout=10)
        assert head.status_code == 200 and head.content == b""
        # the length of the body a GET would get: a few digits of the usage values differ
        assert abs(int(head.headers["Content-Length"]) - len(plain.content)) < 100
        names = {"name[]": ["workermeter_workers", "workermeter_requests_total"]}
        only = requests.get(url, params=names, timeout=10)
        helps = [line for line in only.text.splitlines() if line.startswith("# HELP")]
        assert [h.split()[2] for h in helps] == [
            "workermeter_requests_total",
            "workermeter_workers",
        ]
        assert value(only.text, "workermeter_workers") == 1
        post = requests.post(url, timeout=10)
        assert (post.status_code, post.headers["Allow"]) == (405, "GET, HEAD")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert not thread.is_alive()
