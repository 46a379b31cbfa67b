"""WSGIMiddleware, driven the way a WSGI server drives it: call, iterate, close."""

from __future__ import annotations

import gzip
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.util import setup_testing_defaults

import pytest
import requests
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics

from conftest import WALL_START, FakeClock, switching_often
from promtext import Samples, parse, total, value
from workermeter import WSGIMiddleware
from workermeter.layout import HEADER_WORDS
from workermeter.recorder import Recorder

Environ = dict[str, Any]
Headers = list[tuple[str, str]]
StartResponse = Callable[..., Callable[[bytes], object]]
App = Callable[[Environ, StartResponse], Iterable[bytes]]
MakeRecorder = Callable[..., Recorder]

openmetrics_families: Callable[[str], Iterable[Metric]] = openmetrics.text_string_to_metric_families

REQUESTS = "workermeter_requests_total"
DURATION_SUM = "workermeter_request_duration_seconds_sum"
DURATION_COUNT = "workermeter_request_duration_seconds_count"
IN_FLIGHT = "workermeter_in_flight_requests"
BUSY = "workermeter_busy_seconds_total"
BUSY_SLOTS = "workermeter_busy_slots_seconds_total"
ALL_BUSY = "workermeter_all_slots_busy_seconds_total"
DISCONNECTS = "workermeter_client_disconnects_total"
QUEUE_SUM = "workermeter_queue_wait_seconds_sum"
QUEUE_COUNT = "workermeter_queue_wait_seconds_count"
SKEW = "workermeter_queue_wait_clock_skew_total"
REJECTED = "workermeter_queue_wait_rejected_total"


def make_environ(
    path: str = "/", method: str = "GET", extra: dict[str, Any] | None = None, /, **keys: str
) -> Environ:
    """A complete environ from a single-threaded server for a loopback client."""
    environ: Environ = {}
    setup_testing_defaults(environ)
    environ.update(PATH_INFO=path, REQUEST_METHOD=method, REMOTE_ADDR="127.0.0.1")
    environ["wsgi.multithread"] = False
    environ.update(keys)
    environ.update(extra or {})
    return environ


class Call:
    """One request as a server handles it: the app is called at once; ``finish`` sends the rest
    of the body and closes the response."""

    def __init__(self, app: App, environ: Environ) -> None:
        self.status = ""
        self.headers: Headers = []
        self.body = b""
        self.result = app(environ, self._start_response)
        self.iterator: Iterator[bytes] = iter(self.result)

    def _start_response(
        self, status: str, headers: Headers, exc_info: object = None
    ) -> Callable[[bytes], object]:
        self.status = status
        self.headers = headers
        return self._write

    def _write(self, data: bytes) -> None:
        self.body += data

    def read(self) -> bytes:
        self.body += b"".join(self.iterator)
        return self.body

    def close(self) -> None:
        close = getattr(self.result, "close", None)
        if close is not None:
            close()

    def finish(self) -> Call:
        self.read()
        self.close()
        return self


def get(app: App, environ: Environ) -> Call:
    return Call(app, environ).finish()


def scrape(mw: WSGIMiddleware) -> Samples:
    call = get(mw, make_environ("/metrics"))
    assert call.status == "200 OK", call.body
    return parse(call.body)


def ok_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def by_path(environ: Environ) -> str:
    return str(environ["PATH_INFO"])


class ClosingBody:
    """A response body that counts how often it is closed."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.closed += 1


# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize(
    ("status", "status_class"),
    [
        pytest.param("200 OK", "2xx", id="200"),
        pytest.param("201 Created", "2xx", id="201"),
        pytest.param("302 Found", "3xx", id="302"),
        pytest.param("404 Not Found", "4xx", id="404"),
        pytest.param("503 Service Unavailable", "5xx", id="503"),
        pytest.param("999 Odd", "other", id="999"),
    ],
)
def test_request_counted_by_route_method_and_status_class(
    recorder: Recorder, clock: FakeClock, status: str, status_class: str
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        clock.advance(0.25)
        start_response(status, [("Content-Type", "text/plain")])
        return [b"made"]

    mw = WSGIMiddleware(app, recorder=recorder, route=lambda environ: "/things")
    call = get(mw, make_environ("/things/1", "POST"))
    assert (call.status, call.body) == (status, b"made")

    s = scrape(mw)
    assert value(s, REQUESTS, route="/things", status=status_class) == 1
    assert total(s, REQUESTS) == 1
    assert value(s, DURATION_SUM, route="/things") == 0.25
    assert value(s, DURATION_COUNT, route="/things") == 1
    bucket = "workermeter_request_duration_seconds_bucket"
    assert value(s, bucket, route="/things", le="0.1") == 0  # a route's coarse bounds
    assert value(s, bucket, route="/things", le="0.25") == 1  # le is inclusive
    service = "workermeter_service_time_seconds_bucket"  # every bound, all routes
    assert value(s, service, le="0.2") == 0 and value(s, service, le="0.25") == 1
    assert value(s, IN_FLIGHT, worker="0") == 0


def test_streamed_body_counts_until_close(recorder: Recorder, clock: FakeClock) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        for i in range(3):
            if i:
                clock.advance(0.1)  # 100 ms between chunks
            yield b"chunk%d\n" % i

    mw = WSGIMiddleware(app, recorder=recorder, route=lambda environ: "/stream")
    call = Call(mw, make_environ("/stream"))
    assert call.read() == b"chunk0\nchunk1\nchunk2\n"
    clock.advance(0.1)  # the server is still sending the last chunk
    s = scrape(mw)
    assert value(s, IN_FLIGHT, worker="0") == 1
    assert total(s, REQUESTS) == 0

    call.close()
    s = scrape(mw)
    assert value(s, DURATION_SUM, route="/stream") == 0.3
    assert value(s, REQUESTS, route="/stream", status="2xx") == 1
    assert value(s, IN_FLIGHT, worker="0") == 0
    assert value(s, DISCONNECTS) == 0


def test_close_is_passed_on_exactly_once(recorder: Recorder) -> None:
    body = ClosingBody([b"a", b"b"])

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return body

    mw = WSGIMiddleware(app, recorder=recorder)
    call = get(mw, make_environ())
    call.close()  # a careless server closes twice
    assert call.body == b"ab"
    assert body.closed == 1
    s = scrape(mw)
    assert total(s, REQUESTS) == 1
    assert value(s, IN_FLIGHT, worker="0") == 0


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_real_server_streamed_body_is_recorded_in_full(store_dir: Path) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        for i in range(3):
            if i:
                time.sleep(0.1)
            yield b"chunk\n"

    mw = WSGIMiddleware(app, directory=store_dir, threads=1, route=lambda environ: "/stream")
    server = make_server("127.0.0.1", 0, mw, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        with requests.Session() as http:
            response = http.get(base + "/stream", timeout=10)
            assert response.content == b"chunk\n" * 3
            # The server handles one request at a time: this scrape comes after the close().
            metrics = http.get(base + "/metrics", timeout=10)
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    assert metrics.status_code == 200
    s = parse(metrics.text)
    assert value(s, REQUESTS, route="/stream", status="2xx") == 1
    assert 0.19 <= value(s, DURATION_SUM, route="/stream") <= 0.5


def test_app_exception_is_recorded_as_5xx_and_reraised(recorder: Recorder) -> None:
    error = RuntimeError("boom")

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        raise error

    mw = WSGIMiddleware(app, recorder=recorder)
    with pytest.raises(RuntimeError) as raised:
        mw(make_environ(), lambda status, headers, exc_info=None: lambda data: None)
    assert raised.value is error
    s = scrape(mw)
    assert value(s, REQUESTS, route="<unmatched>", status="5xx") == 1
    assert value(s, IN_FLIGHT, worker="0") == 0
    assert value(s, DISCONNECTS) == 0


def test_exception_while_streaming_is_5xx_not_a_disconnect(recorder: Recorder) -> None:
    error = RuntimeError("boom in the body")

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"first"
        raise error

    mw = WSGIMiddleware(app, recorder=recorder)
    call = Call(mw, make_environ())
    with pytest.raises(RuntimeError) as raised:
        call.read()
    assert raised.value is error
    call.close()  # what a server does after the body failed
    s = scrape(mw)
    assert value(s, IN_FLIGHT, worker="0") == 0
    assert value(s, REQUESTS, route="<unmatched>", status="5xx") == 1
    assert value(s, DISCONNECTS) == 0


def test_close_before_the_body_is_sent_is_a_disconnect(recorder: Recorder) -> None:
    body = ClosingBody([b"a", b"b", b"c"])

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return body

    mw = WSGIMiddleware(app, recorder=recorder)
    call = Call(mw, make_environ())
    assert next(call.iterator) == b"a"
    call.close()  # the client went away
    assert body.closed == 1
    s = scrape(mw)
    assert value(s, DISCONNECTS) == 1
    assert value(s, IN_FLIGHT, worker="0") == 0
    assert value(s, REQUESTS, route="<unmatched>", status="2xx") == 1


# --------------------------------------------------------------------------- queue wait


def _ago(seconds: float) -> str:
    return f"t={WALL_START - seconds:.6f}"


@pytest.mark.parametrize(
    ("keys", "count", "wait", "skew", "rejected"),
    [
        pytest.param({"HTTP_X_REQUEST_START": _ago(0.25)}, 1, 0.25, 0, None, id="valid"),
        pytest.param({"HTTP_X_QUEUE_START": _ago(0.25)}, 1, 0.25, 0, None, id="x-queue-start"),
        pytest.param(
            {"HTTP_X_REQUEST_START": str(round((WALL_START - 0.25) * 1e3))}, 1, 0.25, 0, None,
            id="heroku-ms",
        ),
        pytest.param({"HTTP_X_REQUEST_START": _ago(-1)}, 1, 0.0, 1, None, id="skew"),
        pytest.param({"HTTP_X_REQUEST_START": _ago(-10)}, 0, 0.0, 0, "future", id="future"),
        pytest.param({"HTTP_X_REQUEST_START": _ago(601)}, 0, 0.0, 0, "too_old", id="too-old"),
        pytest.param(
            {"HTTP_X_REQUEST_START": "t=soon"}, 0, 0.0, 0, "unparsable", id="unparsable"
        ),
        pytest.param(
            {"HTTP_X_REQUEST_START": _ago(0.25), "HTTP_X_QUEUE_START": _ago(0.5)}, 1, 0.5, 0,
            None, id="two-headers-earliest-wins",
        ),
        pytest.param(
            {"HTTP_X_REQUEST_START": _ago(0.5), "HTTP_X_QUEUE_START": _ago(0.25)}, 1, 0.5, 0,
            None, id="two-headers-earliest-first",
        ),
        pytest.param(
            {"HTTP_X_REQUEST_START": "garbage", "HTTP_X_QUEUE_START": _ago(0.25)}, 1, 0.25, 0,
            None, id="two-headers-one-valid",
        ),
        pytest.param({}, 0, 0.0, 0, None, id="no-header"),
    ],
)  # fmt: skip
def test_queue_wait_from_headers(
    recorder: Recorder,
    keys: dict[str, str],
    count: int,
    wait: float,
    skew: int,
    rejected: str | None,
) -> None:
    mw = WSGIMiddleware(ok_app, recorder=recorder)
    call = get(mw, make_environ(**keys))
    assert (call.status, call.body) == ("200 OK", b"ok")  # served normally, whatever the header
    s = scrape(mw)
    assert value(s, QUEUE_COUNT) == count
    assert value(s, QUEUE_SUM) == pytest.approx(wait, abs=1e-6)
    assert value(s, SKEW) == skew
    for reason in ("unparsable", "future", "too_old"):
        assert value(s, REJECTED, reason=reason) == (1 if reason == rejected else 0), reason


@pytest.mark.parametrize(
    ("extra", "wait"),
    [
        pytest.param({"mod_wsgi.request_start": "1699999999750000"}, 0.25, id="request-start-us"),
        pytest.param({"mod_wsgi.queue_start": "1699999999500000"}, 0.5, id="queue-start-us"),
        pytest.param({"mod_wsgi.request_start": 1699999999.75}, 0.25, id="float-seconds"),
        pytest.param(
            {"mod_wsgi.request_start": "1699999999750000", "HTTP_X_REQUEST_START": _ago(0.5)},
            0.5, id="header-earlier",
        ),
    ],
)  # fmt: skip
def test_queue_wait_from_mod_wsgi(recorder: Recorder, extra: Environ, wait: float) -> None:
    mw = WSGIMiddleware(ok_app, recorder=recorder)
    call = get(mw, make_environ("/", "GET", {"mod_wsgi.version": (4, 9, 4), **extra}))
    assert call.status == "200 OK"
    s = scrape(mw)
    assert value(s, QUEUE_COUNT) == 1
    assert value(s, QUEUE_SUM) == pytest.approx(wait, abs=1e-6)


# --------------------------------------------------------------------------- /metrics


def _app_calls(calls: list[str]) -> App:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        calls.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"app"]

    return app


@pytest.mark.parametrize(
    ("remote", "keys", "token", "status"),
    [
        pytest.param("127.0.0.1", {}, None, "200 OK", id="loopback"),
        pytest.param("::1", {}, None, "200 OK", id="loopback-v6"),
        pytest.param("10.0.0.5", {}, None, "200 OK", id="private"),
        pytest.param("8.8.8.8", {}, None, "404 Not Found", id="public"),
        pytest.param(
            "127.0.0.1", {"HTTP_X_FORWARDED_FOR": "8.8.8.8"}, None, "404 Not Found",
            id="loopback-forwarded",
        ),
        pytest.param(
            "8.8.8.8", {"HTTP_AUTHORIZATION": "Bearer s3cret"}, "s3cret", "200 OK", id="token",
        ),
        pytest.param(
            "8.8.8.8", {"HTTP_AUTHORIZATION": "Bearer wrong"}, "s3cret", "404 Not Found",
            id="wrong-token",
        ),
        pytest.param("8.8.8.8", {}, "s3cret", "404 Not Found", id="token-not-sent"),
        pytest.param(
            "127.0.0.1", {"REQUEST_METHOD": "POST"}, None, "404 Not Found", id="post",
        ),
    ],
)  # fmt: skip
def test_metrics_access(
    recorder: Recorder, remote: str, keys: dict[str, str], token: str | None, status: str
) -> None:
    calls: list[str] = []
    mw = WSGIMiddleware(_app_calls(calls), recorder=recorder, token=token)
    call = get(mw, make_environ("/metrics", **{"REMOTE_ADDR": remote, **keys}))
    assert call.status == status
    assert calls == []  # answered by the middleware either way
    if status == "200 OK":
        assert b"# TYPE workermeter_requests_total counter" in call.body
    else:
        assert call.body == b"Not Found\n"


def test_metrics_token_from_environment(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKERMETER_TOKEN", "from-env")
    mw = WSGIMiddleware(ok_app, recorder=recorder)
    call = get(mw, make_environ("/metrics", REMOTE_ADDR="8.8.8.8", HTTP_AUTHORIZATION="Bearer x"))
    assert call.status == "404 Not Found"
    call = get(
        mw, make_environ("/metrics", REMOTE_ADDR="8.8.8.8", HTTP_AUTHORIZATION="Bearer from-env")
    )
    assert call.status == "200 OK"


def test_head_metrics_has_no_body(recorder: Recorder) -> None:
    mw = WSGIMiddleware(ok_app, recorder=recorder)
    call = get(mw, make_environ("/metrics", "HEAD"))
    assert (call.status, call.body) == ("200 OK", b"")


def test_metrics_gzipped_and_selected_when_asked(recorder: Recorder) -> None:
    mw = WSGIMiddleware(ok_app, recorder=recorder)
    get(mw, make_environ("/"))
    call = get(
        mw,
        make_environ(
            "/metrics",
            HTTP_ACCEPT_ENCODING="gzip, deflate",
            QUERY_STRING="name[]=workermeter_requests_total&name[]=workermeter_workers",
        ),
    )
    headers = dict(call.headers)
    assert (call.status, headers["Content-Encoding"]) == ("200 OK", "gzip")
    assert int(headers["Content-Length"]) == len(call.body)
    samples = parse(gzip.decompress(call.body))
    assert {name for name, _ in samples} == {"workermeter_requests_total", "workermeter_workers"}
    assert value(samples, REQUESTS, route="<unmatched>", status="2xx") == 1


def test_metrics_path_none_passes_through_to_the_app(recorder: Recorder) -> None:
    calls: list[str] = []
    mw = WSGIMiddleware(_app_calls(calls), recorder=recorder, metrics_path=None)
    call = get(mw, make_environ("/metrics"))
    assert (call.status, call.body, calls) == ("200 OK", b"app", ["/metrics"])
    # Read what was recorded through another middleware on the same recorder.
    s = scrape(WSGIMiddleware(ok_app, recorder=recorder))
    assert value(s, REQUESTS, route="<unmatched>", status="2xx") == 1


def test_metrics_path_elsewhere(recorder: Recorder) -> None:
    calls: list[str] = []
    mw = WSGIMiddleware(_app_calls(calls), recorder=recorder, metrics_path="/-/metrics")
    assert get(mw, make_environ("/metrics")).body == b"app"
    call = get(mw, make_environ("/-/metrics"))
    assert call.status == "200 OK"
    assert value(parse(call.body), REQUESTS, route="<unmatched>", status="2xx") == 1
    assert calls == ["/metrics"]


def test_scrapes_are_not_app_traffic(recorder: Recorder) -> None:
    mw = WSGIMiddleware(ok_app, recorder=recorder)
    scrape(mw)
    get(mw, make_environ("/"))
    scrape(mw)
    s = scrape(mw)
    assert total(s, REQUESTS) == 1
    assert total(s, DURATION_COUNT) == 1
    assert value(s, IN_FLIGHT, worker="0") == 0


def test_openmetrics_when_asked(recorder: Recorder) -> None:
    mw = WSGIMiddleware(ok_app, recorder=recorder)
    get(mw, make_environ("/"))
    accept = "application/openmetrics-text; version=1.0.0"
    call = get(mw, make_environ("/metrics", HTTP_ACCEPT=accept))
    assert call.status == "200 OK"
    assert dict(call.headers)["Content-Type"].startswith("application/openmetrics-text")
    assert call.body.endswith(b"# EOF\n")
    families = {f.name: f for f in openmetrics_families(call.body.decode())}
    assert families["workermeter_requests"].samples[0].value == 1

    plain = get(mw, make_environ("/metrics"))
    assert dict(plain.headers)["Content-Type"].startswith("text/plain")
    assert b"# EOF" not in plain.body


# --------------------------------------------------------------------------- route label


def test_custom_route_function(recorder: Recorder) -> None:
    seen: list[Environ] = []

    def route(environ: Environ) -> str:
        seen.append(environ)
        return "/custom/{id}"

    mw = WSGIMiddleware(ok_app, recorder=recorder, route=route)
    environ = make_environ("/custom/7")
    get(mw, environ)
    assert seen == [environ]
    s = scrape(mw)
    assert value(s, REQUESTS, route="/custom/{id}", status="2xx") == 1


@pytest.mark.parametrize(
    "route",
    [
        pytest.param(lambda environ: None, id="none"),
        pytest.param(lambda environ: 1 / 0, id="raises"),
    ],
)
def test_route_unknown_is_unmatched_and_served(
    recorder: Recorder, route: Callable[[Environ], str | None], caplog: pytest.LogCaptureFixture
) -> None:
    mw = WSGIMiddleware(ok_app, recorder=recorder, route=route)
    with caplog.at_level(logging.ERROR, logger="workermeter"):
        call = get(mw, make_environ("/x"))
    assert (call.status, call.body) == ("200 OK", b"ok")
    s = scrape(mw)
    assert value(s, REQUESTS, route="<unmatched>", status="2xx") == 1


def test_route_limit(make_recorder: MakeRecorder) -> None:
    mw = WSGIMiddleware(ok_app, recorder=make_recorder(route_limit=3), route=by_path)
    for path in ("/a", "/b", "/c", "/d", "/e", "/a"):
        get(mw, make_environ(path))
    s = scrape(mw)
    labels = {dict(ls)["route"]: v for (n, ls), v in s.items() if n == REQUESTS}
    assert labels == {"/a": 2, "/b": 1, "/c": 1, "<other>": 2}


def test_unknown_method_is_other(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKERMETER_ROUTE_DETAIL", "full")  # the method label shown
    mw = WSGIMiddleware(ok_app, recorder=recorder, route=by_path)
    get(mw, make_environ("/x", "FOO"))
    get(mw, make_environ("/x", "PATCH"))
    s = scrape(mw)
    assert value(s, REQUESTS, route="/x", method="OTHER", status="2xx") == 1
    assert value(s, REQUESTS, route="/x", method="PATCH", status="2xx") == 1


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"threads": 0}, "threads must be an int >= 1", id="threads-0"),
        pytest.param({"threads": "2"}, "threads must be an int >= 1", id="threads-str"),
        pytest.param({"route_limit": 0}, "route_limit must be an int >= 1", id="route-limit-0"),
        pytest.param({"cpu_sample": -1}, "cpu_sample must be an int >= 0", id="cpu-sample"),
        pytest.param({"metrics_path": "metrics"}, "starting with '/'", id="metrics-path"),
        pytest.param({"max_skew": -1}, "max_skew must be a number", id="max-skew"),
        pytest.param({"max_age": "600"}, "max_age must be a number", id="max-age"),
        pytest.param({"token": ""}, "token must be a non-empty string", id="token-empty"),
        pytest.param({"route": "notcallable"}, "route must be a callable", id="route"),
        pytest.param({"app": None}, "wraps a WSGI application", id="app-none"),
    ],
)
def test_bad_options_say_what_to_do(store_dir: Path, options: dict[str, Any], message: str) -> None:
    kwargs: dict[str, Any] = {"app": ok_app, "directory": store_dir, **options}
    app = kwargs.pop("app")
    with pytest.raises(ValueError, match=message):
        WSGIMiddleware(app, **kwargs)
    assert not store_dir.exists()  # construction touches nothing


def test_recorder_and_its_own_options_conflict(recorder: Recorder, store_dir: Path) -> None:
    with pytest.raises(ValueError, match="to the Recorder"):
        WSGIMiddleware(ok_app, recorder=recorder, threads=2)
    with pytest.raises(ValueError, match="to the Recorder"):
        WSGIMiddleware(ok_app, recorder=recorder, directory=store_dir)


# --------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize(
    ("options", "multithread", "capacity"),
    [
        pytest.param({}, False, 1, id="single-threaded-server"),
        pytest.param({"threads": 4}, True, 4, id="threads-option"),
        pytest.param({}, True, None, id="threaded-unknown"),
    ],
)
def test_capacity(
    make_recorder: MakeRecorder, options: dict[str, Any], multithread: bool, capacity: int | None
) -> None:
    mw = WSGIMiddleware(ok_app, recorder=make_recorder(**options))
    get(mw, make_environ("/", "GET", {"wsgi.multithread": multithread}))
    s = scrape(mw)
    assert value(s, "workermeter_capacity_detected", worker="0") == (1 if capacity else 0)
    if capacity is None:
        assert total(s, "workermeter_capacity_threads") == 0
        assert total(s, ALL_BUSY) == 0
    else:
        assert value(s, "workermeter_capacity_threads", worker="0") == capacity


def test_running_request_is_busy_while_it_runs(recorder: Recorder, clock: FakeClock) -> None:
    mw = WSGIMiddleware(ok_app, recorder=recorder)
    call = Call(mw, make_environ())
    clock.advance(60)
    s = scrape(mw)
    assert value(s, IN_FLIGHT, worker="0") == 1
    assert value(s, BUSY, worker="0") == 60
    assert value(s, ALL_BUSY, worker="0") == 60
    assert value(s, BUSY_SLOTS, worker="0", busy="1") == 60
    assert total(s, REQUESTS) == 0

    clock.advance(30)
    call.finish()
    clock.advance(10)
    s = scrape(mw)
    assert value(s, IN_FLIGHT, worker="0") == 0
    assert value(s, BUSY, worker="0") == 90
    assert value(s, BUSY_SLOTS, worker="0", busy="0") == 10
    assert value(s, BUSY_SLOTS, worker="0", busy="1") == 90
    assert value(s, DURATION_SUM, route="<unmatched>") == 90


def test_busy_time_with_two_slots_is_exact(make_recorder: MakeRecorder, clock: FakeClock) -> None:
    mw = WSGIMiddleware(ok_app, recorder=make_recorder(threads=2), route=by_path)

    def busy(s: Samples) -> dict[str, float]:
        return {dict(ls)["busy"]: v for (n, ls), v in s.items() if n == BUSY_SLOTS}

    a = Call(mw, make_environ("/a"))  # t=0
    clock.advance(10)
    b = Call(mw, make_environ("/b"))  # t=10
    clock.advance(20)
    s = scrape(mw)  # t=30
    assert value(s, IN_FLIGHT, worker="0") == 2
    assert value(s, BUSY, worker="0") == 50
    assert value(s, ALL_BUSY, worker="0") == 20
    assert busy(s) == {"0": 0, "1": 10, "2": 20}

    clock.advance(10)
    a.finish()  # t=40
    clock.advance(20)
    c = Call(mw, make_environ("/c"))  # t=60
    clock.advance(10)
    b.finish()  # t=70
    clock.advance(30)
    c.finish()  # t=100
    clock.advance(20)
    s = scrape(mw)  # t=120
    assert value(s, IN_FLIGHT, worker="0") == 0
    assert value(s, "workermeter_capacity_threads", worker="0") == 2
    assert value(s, BUSY, worker="0") == 140
    assert value(s, ALL_BUSY, worker="0") == 40
    assert busy(s) == {"0": 20, "1": 60, "2": 40}
    durations = {dict(ls)["route"]: v for (n, ls), v in s.items() if n == DURATION_SUM}
    assert durations == {"/a": 40, "/b": 60, "/c": 40}


class GatedCPUClock(FakeClock):
    """A CPU clock whose first call from another thread than the main one waits for the test:
    it holds a request after its start time is read and before it is counted as in flight."""

    def __init__(self) -> None:
        super().__init__(start_ns=0)
        self.arrived = threading.Event()
        self.release = threading.Event()
        self._gated = False

    def __call__(self) -> int:
        if not self._gated and threading.current_thread() is not threading.main_thread():
            self._gated = True
            self.arrived.set()
            assert self.release.wait(10)
        return self.ns


def test_levels_are_consistent_when_a_thread_is_held_up(
    store_dir: Path, clock: FakeClock, wall_clock: Callable[[], float]
) -> None:
    """Thread X is held up between entering the middleware and being counted (as a thread
    waiting for the GIL is); meanwhile Y starts. Whichever instants are taken as X's start
    and end, the concurrency distribution must agree with itself and with the durations."""
    gate = GatedCPUClock()
    rec = Recorder(
        directory=store_dir, clock=clock, wall_clock=wall_clock, cpu_clock=gate,
        threads=2, cpu_sample=1,
    )  # fmt: skip
    mw = WSGIMiddleware(ok_app, recorder=rec, route=by_path)
    threaded = {"wsgi.multithread": True}
    get(mw, make_environ("/warm-up", "GET", threaded))  # t=0: the worker starts
    x_called, x_finish = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def serve_x() -> None:
        try:
            call = Call(mw, make_environ("/x", "GET", threaded))
            x_called.set()
            assert x_finish.wait(10)
            call.finish()
        except BaseException as e:  # reported by the main thread
            failures.append(e)

    x = threading.Thread(target=serve_x)
    x.start()
    try:
        assert gate.arrived.wait(10)  # X entered at t=0 and is held up
        clock.advance(10)
        y = Call(mw, make_environ("/y", "GET", threaded))  # t=10
        gate.release.set()
        assert x_called.wait(10)  # X runs at t=10
        clock.advance(1)
        y.finish()  # t=11
        clock.advance(1)
        x_finish.set()  # t=12
    finally:
        gate.release.set()
        x_finish.set()
        x.join(10)
    assert failures == []
    clock.advance(8)
    s = scrape(mw)  # t=20
    slots = {int(dict(ls)["busy"]): v for (n, ls), v in s.items() if n == BUSY_SLOTS}
    durations = total(s, DURATION_SUM)
    assert value(s, IN_FLIGHT, worker="0") == 0
    assert value(s, BUSY, worker="0") == durations
    assert sum(slots.values()) == 20  # the time observed, split by how many were busy
    assert sum(k * v for k, v in slots.items()) == durations
    assert value(s, ALL_BUSY, worker="0") <= 1  # X and Y overlapped from 10 to 11 at most


def test_threads_give_exact_totals(store_dir: Path) -> None:
    nthreads, each = 16, 500
    mw = WSGIMiddleware(ok_app, directory=store_dir, threads=nthreads, route=lambda e: "/t")
    template = make_environ("/t", "GET", {"wsgi.multithread": True})
    start = threading.Barrier(nthreads + 1)
    failures: list[BaseException] = []

    def serve() -> None:
        start.wait()
        try:
            for _ in range(each):
                assert get(mw, dict(template)).body == b"ok"
        except BaseException as e:  # reported by the main thread
            failures.append(e)

    threads = [threading.Thread(target=serve) for _ in range(nthreads)]
    with switching_often():
        for t in threads:
            t.start()
        start.wait()
        during = scrape(mw)  # a scrape while the threads run must parse and stay in range
        assert 0 <= total(during, REQUESTS) <= nthreads * each
        for t in threads:
            t.join(60)
    assert failures == []

    before = time.time()
    s = scrape(mw)
    after = time.time()
    assert value(s, REQUESTS, route="/t", status="2xx") == nthreads * each
    assert value(s, DURATION_COUNT, route="/t") == nthreads * each
    assert value(s, IN_FLIGHT, worker="0") == 0
    busy = value(s, BUSY, worker="0")
    # The same busy time measured two ways: per request, and by the concurrency level.
    assert busy == pytest.approx(value(s, DURATION_SUM, route="/t"), rel=0.01)
    slots = {int(dict(ls)["busy"]): v for (n, ls), v in s.items() if n == BUSY_SLOTS}
    assert sum(k * v for k, v in slots.items()) == pytest.approx(busy, rel=0.01)
    # The distribution over levels covers the time the worker was observed, no more.
    started = value(s, "workermeter_worker_start_time_seconds", worker="0")
    assert (before - started) * 0.99 <= sum(slots.values()) <= (after - started) * 1.01


def test_scrape_while_a_route_is_being_added(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request publishes a new route record between a scrape's reading of a worker's header
    and of its records (as another thread may at any time): the scrape still succeeds."""
    mw = WSGIMiddleware(ok_app, recorder=recorder, route=by_path)
    get(mw, make_environ("/first"))
    read = os.pread
    added: list[str] = []

    def pread(fd: int, length: int, offset: int) -> bytes:
        data = read(fd, length, offset)
        if length == HEADER_WORDS * 8 and len(added) < 10:  # after every read of a header
            added.append(f"/new{len(added)}")
            get(mw, make_environ(added[-1]))
        return data

    monkeypatch.setattr(os, "pread", pread)
    s = scrape(mw)
    assert added
    assert value(s, REQUESTS, route="/first", status="2xx") == 1
    monkeypatch.undo()
    s = scrape(mw)
    for route in added:
        assert value(s, REQUESTS, route=route, status="2xx") == 1


# --------------------------------------------------------------------------- CPU


@pytest.mark.parametrize(
    ("every", "cpu", "wall"),
    [
        pytest.param(1, 0.04, 0.16, id="every-request"),
        pytest.param(2, 0.02, 0.08, id="one-in-two"),
        pytest.param(0, 0.0, 0.0, id="off"),
    ],
)
def test_cpu_sampling(
    make_recorder: MakeRecorder,
    clock: FakeClock,
    cpu_clock: FakeClock,
    every: int,
    cpu: float,
    wall: float,
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        cpu_clock.advance(0.01)
        clock.advance(0.04)
        start_response("200 OK", [])
        return [b"ok"]

    mw = WSGIMiddleware(app, recorder=make_recorder(cpu_sample=every), route=by_path)
    for _ in range(4):
        get(mw, make_environ("/cpu"))
    s = scrape(mw)
    assert value(s, "workermeter_sampled_cpu_seconds_total", route="/cpu") == cpu
    assert value(s, "workermeter_sampled_duration_seconds_total", route="/cpu") == wall


# --------------------------------------------------------------------------- uploads


@pytest.mark.parametrize(
    ("length", "observed"),
    [
        pytest.param(None, True, id="no-body"),
        pytest.param("", True, id="empty-length"),
        pytest.param("0", True, id="zero"),
        pytest.param("100000", True, id="at-the-limit"),
        pytest.param("100001", False, id="over-the-limit"),
        pytest.param("junk", True, id="malformed"),
    ],
)
def test_large_upload_is_kept_out_of_queue_wait(
    recorder: Recorder, length: str | None, observed: bool
) -> None:
    mw = WSGIMiddleware(ok_app, recorder=recorder)
    environ = make_environ("/", "POST", HTTP_X_REQUEST_START=_ago(0.1))
    if length is not None:
        environ["CONTENT_LENGTH"] = length
    assert get(mw, environ).status == "200 OK"
    samples = scrape(mw)
    assert value(samples, "workermeter_queue_wait_seconds_count") == (1 if observed else 0)
    assert value(samples, "workermeter_queue_wait_uploads_total") == (0 if observed else 1)


def test_upload_limit_is_an_option(recorder: Recorder) -> None:
    rec = Recorder(
        directory=recorder.store().directory, upload_bytes=10, wall_clock=recorder.wall_clock
    )
    mw = WSGIMiddleware(ok_app, recorder=rec)
    environ = make_environ("/", "POST", HTTP_X_REQUEST_START=_ago(0.1), CONTENT_LENGTH="11")
    get(mw, environ)
    assert value(scrape(mw), "workermeter_queue_wait_uploads_total") == 1
    with pytest.raises(ValueError, match="upload_bytes must be an int >= 0"):
        WSGIMiddleware(ok_app, upload_bytes=-1)


# --------------------------------------------------------------------------- the meter failing


def test_a_store_that_cannot_be_used_leaves_requests_served(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(**kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(recorder.store(), "attach", refuse)
    mw = WSGIMiddleware(ok_app, recorder=recorder)
    with caplog.at_level("ERROR", logger="workermeter"):
        for _ in range(3):
            assert get(mw, make_environ("/")).body == b"ok"
    assert caplog.text.count("requests are served unmeasured") == 1
    assert recorder.active is None


def test_a_full_store_keeps_serving_and_counting_known_series(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    mw = WSGIMiddleware(ok_app, recorder=recorder, route=lambda e: e["PATH_INFO"])
    get(mw, make_environ("/known"))
    active = recorder.active
    assert active is not None

    def full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(active.region, "allocate", full)
    with caplog.at_level("ERROR", logger="workermeter"):
        assert get(mw, make_environ("/new")).body == b"ok"
        assert get(mw, make_environ("/known")).body == b"ok"
    assert "the store cannot grow" in caplog.text
    samples = scrape(mw)
    assert value(samples, REQUESTS, route="/known", status="2xx") == 2
    assert ("workermeter_requests_total", frozenset({("route", "/new")})) not in samples


def test_an_unusable_store_directory_is_refused_at_construction(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(ValueError, match="chmod 700"):
        WSGIMiddleware(ok_app, directory=open_dir)
