"""ASGIMiddleware, driven with hand-written receive and send under asyncio.run: no framework."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from conftest import WALL_START, FakeClock
from promtext import Samples, parse, total, value
from workermeter import ASGIMiddleware
from workermeter.recorder import Recorder

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
MakeRecorder = Callable[..., Recorder]

REQUESTS = "workermeter_requests_total"
DURATION_SUM = "workermeter_request_duration_seconds_sum"
IN_FLIGHT = "workermeter_in_flight_requests"
BUSY = "workermeter_busy_seconds_total"
DISCONNECTS = "workermeter_client_disconnects_total"
QUEUE_SUM = "workermeter_queue_wait_seconds_sum"
QUEUE_COUNT = "workermeter_queue_wait_seconds_count"
REJECTED = "workermeter_queue_wait_rejected_total"


def http_scope(
    path: str = "/",
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] | None = ("127.0.0.1", 1234),
) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers or [],
        "client": client,
        "server": ("127.0.0.1", 8000),
    }


class Exchange:
    """The server side of one connection: a request without a body, then a disconnect."""

    def __init__(self, first: Message | None = None) -> None:
        self.incoming: list[Message] = [
            first or {"type": "http.request", "body": b"", "more_body": False},
            {"type": "http.disconnect"},
        ]
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        return self.incoming.pop(0) if len(self.incoming) > 1 else self.incoming[0]

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        starts = [m["status"] for m in self.sent if m["type"] == "http.response.start"]
        return int(starts[0]) if starts else 0

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


async def call(app: App, scope: Scope, exchange: Exchange | None = None) -> Exchange:
    exchange = exchange or Exchange()
    await app(scope, exchange.receive, exchange.send)
    return exchange


def run(app: App, scope: Scope) -> Exchange:
    return asyncio.run(call(app, scope))


async def scrape_async(mw: ASGIMiddleware) -> Samples:
    exchange = await call(mw, http_scope("/metrics"))
    assert exchange.status == 200, exchange.body
    return parse(exchange.body)


def scrape(mw: ASGIMiddleware) -> Samples:
    return asyncio.run(scrape_async(mw))


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def by_path(scope: Scope) -> str:
    return str(scope["path"])


# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize(
    ("status", "status_class"),
    [
        pytest.param(201, "2xx", id="201"),
        pytest.param(304, "3xx", id="304"),
        pytest.param(404, "4xx", id="404"),
        pytest.param(503, "5xx", id="503"),
    ],
)
def test_request_counted_with_status_from_response_start(
    recorder: Recorder, clock: FakeClock, status: int, status_class: str
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        clock.advance(0.125)
        await send({"type": "http.response.body", "body": b"made"})

    mw = ASGIMiddleware(app, recorder=recorder, route=lambda scope: "/things")
    exchange = run(mw, http_scope("/things/1", "POST"))
    assert (exchange.status, exchange.body) == (status, b"made")
    s = scrape(mw)
    assert value(s, REQUESTS, route="/things", status=status_class) == 1
    assert total(s, REQUESTS) == 1
    assert value(s, DURATION_SUM, route="/things") == 0.125
    assert value(s, IN_FLIGHT, worker="0") == 0
    assert value(s, DISCONNECTS) == 0


@pytest.mark.parametrize(
    "started", [pytest.param(False, id="before"), pytest.param(True, id="after")]
)
def test_app_exception_is_5xx_and_reraised(recorder: Recorder, started: bool) -> None:
    error = RuntimeError("boom")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if started:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        raise error

    mw = ASGIMiddleware(app, recorder=recorder)
    with pytest.raises(RuntimeError) as raised:
        run(mw, http_scope())
    assert raised.value is error
    s = scrape(mw)
    assert value(s, REQUESTS, route="<unmatched>", status="5xx") == 1
    assert total(s, REQUESTS) == 1
    assert value(s, IN_FLIGHT, worker="0") == 0
    assert value(s, DISCONNECTS) == 0


def test_return_without_final_body_is_a_disconnect(recorder: Recorder) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})

    mw = ASGIMiddleware(app, recorder=recorder)
    run(mw, http_scope())
    s = scrape(mw)
    assert value(s, DISCONNECTS) == 1
    assert value(s, IN_FLIGHT, worker="0") == 0
    assert value(s, REQUESTS, route="<unmatched>", status="2xx") == 1


def test_client_gone_before_any_response(recorder: Recorder) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.disconnect"

    mw = ASGIMiddleware(app, recorder=recorder)
    asyncio.run(call(mw, http_scope(), Exchange({"type": "http.disconnect"})))
    s = scrape(mw)
    assert value(s, DISCONNECTS) == 1
    assert value(s, IN_FLIGHT, worker="0") == 0
    assert value(s, REQUESTS, route="<unmatched>", status="other") == 1


def test_running_request_is_busy_while_it_runs(recorder: Recorder, clock: FakeClock) -> None:
    release = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await ok_app(scope, receive, send)

    mw = ASGIMiddleware(app, recorder=recorder)

    async def main() -> tuple[Samples, Samples]:
        task = asyncio.create_task(call(mw, http_scope()))
        await asyncio.sleep(0)  # the request starts and waits
        clock.advance(60)
        during = await scrape_async(mw)
        release.set()
        await task
        clock.advance(10)
        return during, await scrape_async(mw)

    during, after = asyncio.run(main())
    assert value(during, IN_FLIGHT, worker="0") == 1
    assert value(during, BUSY, worker="0") == 60
    assert total(during, REQUESTS) == 0
    assert value(after, IN_FLIGHT, worker="0") == 0
    assert value(after, BUSY, worker="0") == 60
    assert value(after, DURATION_SUM, route="<unmatched>") == 60


def test_cpu_sampled(make_recorder: MakeRecorder, cpu_clock: FakeClock) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        cpu_clock.advance(0.02)
        await ok_app(scope, receive, send)

    mw = ASGIMiddleware(app, recorder=make_recorder(cpu_sample=1), route=by_path)
    run(mw, http_scope("/cpu"))
    run(mw, http_scope("/cpu"))
    s = scrape(mw)
    assert value(s, "workermeter_sampled_cpu_seconds_total", route="/cpu") == 0.04


def test_route_function_failing_is_unmatched(recorder: Recorder) -> None:
    def route(scope: Scope) -> str:
        raise LookupError("no route here")

    mw = ASGIMiddleware(ok_app, recorder=recorder, route=route)
    assert run(mw, http_scope()).body == b"ok"
    s = scrape(mw)
    assert value(s, REQUESTS, route="<unmatched>", status="2xx") == 1


# --------------------------------------------------------------------------- other scopes


def test_servers_can_tell_an_asgi3_app(recorder: Recorder) -> None:
    """uvicorn (interface "auto") and others pick ASGI 3 when the app's __call__ is a coroutine
    function, else take it for an ASGI 2 app and call it with the scope alone: so must it be,
    compiled or not."""
    import inspect

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        pass

    mw = ASGIMiddleware(app, recorder=recorder)
    assert asyncio.iscoroutinefunction(mw.__call__)
    assert inspect.iscoroutinefunction(mw.__call__)
    assert not inspect.isclass(mw) and not inspect.isfunction(mw)


def test_lifespan_passes_through_untouched(recorder: Recorder) -> None:
    seen: list[tuple[Scope, Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send))
        assert (await receive())["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        sent.append(message)

    mw = ASGIMiddleware(app, recorder=recorder)
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    asyncio.run(mw(scope, receive, send))
    assert len(seen) == 1
    assert seen[0][0] is scope
    assert seen[0][1] is receive
    assert seen[0][2] is send
    assert sent == [{"type": "lifespan.startup.complete"}]
    s = scrape(mw)
    # Ready to serve: the worker counts from its startup, before any request, and its loop is
    # measured from then on.
    assert value(s, "workermeter_workers") == 1
    assert ("workermeter_event_loop_observed_seconds_total",
            frozenset({("worker", "0"), ("method", "asyncio")})) in s  # fmt: skip
    assert total(s, REQUESTS) == 0


def test_websocket_is_a_connection_not_a_request(recorder: Recorder) -> None:
    during: list[Samples] = []
    mw: ASGIMiddleware

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        during.append(await scrape_async(mw))
        await send({"type": "websocket.close", "code": 1000})

    mw = ASGIMiddleware(app, recorder=recorder)
    scope: Scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8000),
        "subprotocols": [],
    }
    exchange = Exchange({"type": "websocket.connect"})
    asyncio.run(call(mw, scope, exchange))
    assert [m["type"] for m in exchange.sent] == ["websocket.accept", "websocket.close"]
    assert value(during[0], "workermeter_open_websockets", worker="0") == 1
    assert value(during[0], "workermeter_websocket_connections_total") == 1
    s = scrape(mw)
    assert value(s, "workermeter_open_websockets", worker="0") == 0
    assert value(s, "workermeter_websocket_connections_total") == 1
    assert value(s, IN_FLIGHT, worker="0") == 0
    assert total(s, REQUESTS) == 0


def test_websocket_closed_by_an_exception(recorder: Recorder) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise ConnectionResetError

    mw = ASGIMiddleware(app, recorder=recorder)
    scope: Scope = {"type": "websocket", "path": "/ws", "headers": []}
    with pytest.raises(ConnectionResetError):
        asyncio.run(call(mw, scope, Exchange({"type": "websocket.connect"})))
    s = scrape(mw)
    assert value(s, "workermeter_open_websockets", worker="0") == 0
    assert value(s, "workermeter_websocket_connections_total") == 1


# --------------------------------------------------------------------------- queue wait


def _ago(seconds: float) -> bytes:
    return f"t={WALL_START - seconds:.6f}".encode()


@pytest.mark.parametrize(
    ("headers", "count", "wait", "rejected"),
    [
        pytest.param([(b"x-request-start", _ago(0.25))], 1, 0.25, None, id="valid"),
        pytest.param([(b"x-queue-start", _ago(0.25))], 1, 0.25, None, id="x-queue-start"),
        pytest.param(
            [(b"x-request-start", _ago(0.25)), (b"x-request-start", _ago(0.5))], 1, 0.5, None,
            id="two-earliest-wins",
        ),
        pytest.param(
            [(b"x-request-start", _ago(0.5)), (b"x-queue-start", _ago(0.25))], 1, 0.5, None,
            id="two-earliest-first",
        ),
        pytest.param(
            [
                (b"x-request-start", _ago(0.25)), (b"accept", b"*/*"),
                (b"x-queue-start", _ago(0.75)), (b"x-request-start", _ago(0.5)),
            ],
            1, 0.75, None, id="three",
        ),
        pytest.param([(b"x-request-start", _ago(-10))], 0, 0.0, "future", id="future"),
        pytest.param([(b"x-request-start", b"\xff\xfe")], 0, 0.0, "unparsable", id="unparsable"),
    ],
)  # fmt: skip
def test_queue_wait_from_headers(
    recorder: Recorder,
    headers: list[tuple[bytes, bytes]],
    count: int,
    wait: float,
    rejected: str | None,
) -> None:
    mw = ASGIMiddleware(ok_app, recorder=recorder)
    exchange = run(mw, http_scope(headers=headers))
    assert (exchange.status, exchange.body) == (200, b"ok")  # served normally
    s = scrape(mw)
    assert value(s, QUEUE_COUNT) == count
    assert value(s, QUEUE_SUM) == pytest.approx(wait, abs=1e-6)
    for reason in ("unparsable", "future", "too_old"):
        assert value(s, REJECTED, reason=reason) == (1 if reason == rejected else 0), reason


# --------------------------------------------------------------------------- /metrics


@pytest.mark.parametrize(
    ("client", "headers", "token", "status"),
    [
        pytest.param(("127.0.0.1", 1234), [], None, 200, id="loopback"),
        pytest.param(("10.1.2.3", 1234), [], None, 200, id="private"),
        pytest.param(("8.8.8.8", 1234), [], None, 404, id="public"),
        pytest.param(None, [], None, 404, id="no-client"),
        pytest.param(
            ("127.0.0.1", 1234), [(b"x-forwarded-for", b"8.8.8.8")], None, 404, id="forwarded"
        ),
        pytest.param(
            ("8.8.8.8", 1234), [(b"authorization", b"Bearer s3cret")], "s3cret", 200, id="token"
        ),
        pytest.param(
            ("8.8.8.8", 1234), [(b"authorization", b"Bearer nope")], "s3cret", 404,
            id="wrong-token",
        ),
    ],
)  # fmt: skip
def test_metrics_access(
    recorder: Recorder,
    client: tuple[str, int] | None,
    headers: list[tuple[bytes, bytes]],
    token: str | None,
    status: int,
) -> None:
    called: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope)
        await ok_app(scope, receive, send)

    mw = ASGIMiddleware(app, recorder=recorder, token=token)
    exchange = run(mw, http_scope("/metrics", headers=headers, client=client))
    assert exchange.status == status
    assert called == []
    if status == 200:
        assert b"# TYPE workermeter_requests_total counter" in exchange.body
    else:
        assert exchange.body == b"Not Found\n"


def test_openmetrics_when_asked(recorder: Recorder) -> None:
    mw = ASGIMiddleware(ok_app, recorder=recorder)
    run(mw, http_scope())
    accept = (b"accept", b"application/openmetrics-text; version=1.0.0")
    exchange = run(mw, http_scope("/metrics", headers=[accept]))
    assert exchange.status == 200
    headers = dict(exchange.sent[0]["headers"])
    assert headers[b"content-type"].startswith(b"application/openmetrics-text")
    assert exchange.body.endswith(b"# EOF\n")
    assert int(headers[b"content-length"]) == len(exchange.body)


def test_metrics_gzipped_and_selected_when_asked(recorder: Recorder) -> None:
    mw = ASGIMiddleware(ok_app, recorder=recorder)
    run(mw, http_scope())
    scope = http_scope("/metrics", headers=[(b"accept-encoding", b"gzip")])
    scope["query_string"] = b"name[]=workermeter_requests_total"
    exchange = run(mw, scope)
    headers = dict(exchange.sent[0]["headers"])
    assert (exchange.status, headers[b"content-encoding"]) == (200, b"gzip")
    assert int(headers[b"content-length"]) == len(exchange.body)
    samples = parse(gzip.decompress(exchange.body))
    assert {name for name, _ in samples} == {"workermeter_requests_total"}
    assert value(samples, REQUESTS, route="<unmatched>", status="2xx") == 1


def test_metrics_under_a_root_path(recorder: Recorder) -> None:
    """An ASGI path includes the root path (the proxy prefix, ``uvicorn --root-path``), as
    SCRIPT_NAME + PATH_INFO do in WSGI; /metrics is under it, as the app's own routes are."""
    mw = ASGIMiddleware(ok_app, recorder=recorder)
    scope = http_scope("/proxy/metrics")
    scope["root_path"] = "/proxy"
    exchange = run(mw, scope)
    assert exchange.status == 200
    assert b"# TYPE workermeter_requests_total counter" in exchange.body


def test_metrics_path_none_passes_through(recorder: Recorder) -> None:
    mw = ASGIMiddleware(ok_app, recorder=recorder, metrics_path=None)
    assert run(mw, http_scope("/metrics")).body == b"ok"
    s = scrape(ASGIMiddleware(ok_app, recorder=recorder))
    assert value(s, REQUESTS, route="<unmatched>", status="2xx") == 1


def test_bad_app(store_dir: Path) -> None:
    bad: Any = None
    with pytest.raises(ValueError, match="wraps an ASGI application"):
        ASGIMiddleware(bad, directory=store_dir)
