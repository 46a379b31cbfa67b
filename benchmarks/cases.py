"""The apps and meters the overhead benchmarks compare, each as a zero-argument call.

Every case serves one request to an app called directly (no server), with an ``X-Request-Start``
header and a route, and drives the response the way a server does: iterate the body, then close
it. The difference between a meter's case and the bare app's is the time the meter adds.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram

from workermeter import ASGIMiddleware, WSGIMiddleware
from workermeter.request_start import parse_timestamp

Case = Callable[[], None]


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _environ(multithread: bool = False) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/items/42",
        "wsgi.multithread": multithread,
        "HTTP_X_REQUEST_START": f"t={time.time():.3f}",
        "workermeter.route": "/items/{id}",
    }


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def drive_wsgi(app: Callable[..., Iterable[bytes]], *, multithread: bool = False) -> Case:
    environ = _environ(multithread)

    def case() -> None:
        body = app(environ, _start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()

    return case


class HandWrittenWSGI:
    """What a user would write with prometheus_client: a Histogram and an in-flight Gauge,
    timing until close() and parsing the header, for a fair comparison."""

    def __init__(self, app: Callable[..., Iterable[bytes]], registry: CollectorRegistry) -> None:
        self.app = app
        self.duration = Histogram("duration_seconds", "d", ["route"], registry=registry)
        self.wait = Histogram("queue_wait_seconds", "w", registry=registry)
        self.in_flight = Gauge("in_flight", "i", registry=registry)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start = time.perf_counter()
        header = environ.get("HTTP_X_REQUEST_START")
        if header is not None:
            ts = parse_timestamp(header)
            if ts is not None:
                self.wait.observe(max(time.time() - ts, 0.0))
        self.in_flight.inc()
        body = self.app(environ, start_response)
        return _Closing(body, self, environ, start)

    def done(self, environ: dict[str, Any], start: float) -> None:
        self.duration.labels(environ["workermeter.route"]).observe(time.perf_counter() - start)
        self.in_flight.dec()


class _Closing:
    def __init__(self, body: Iterable[bytes], mw: HandWrittenWSGI, environ: Any, start: float):
        self.body, self.mw, self.environ, self.start = body, mw, environ, start

    def __iter__(self) -> Any:
        return iter(self.body)

    def close(self) -> None:
        self.mw.done(self.environ, self.start)


def drive_asgi(app: Any) -> Case:
    scope = {
        "type": "http",
        "path": "/items/42",
        "method": "GET",
        "headers": [
            (b"host", b"example.com"),
            (b"user-agent", b"bench"),
            (b"accept", b"*/*"),
            (b"x-request-start", f"t={time.time():.3f}".encode()),
        ],
        "workermeter.route": "/items/{id}",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    loop = asyncio.new_event_loop()

    # One coroutine drives many requests so the loop's own cost is not in the numbers.
    def case() -> None:
        coro = app(scope, receive, send)
        try:
            coro.send(None)
        except StopIteration:
            return
        raise RuntimeError("the benchmark app must not suspend")

    case.loop = loop  # type: ignore[attr-defined]
    return case


def wsgi_cases() -> dict[str, Case]:
    store = tempfile.mkdtemp(prefix="wm-bench-")
    return {
        "bare": drive_wsgi(wsgi_app),
        "workermeter": drive_wsgi(WSGIMiddleware(wsgi_app, directory=store)),
        "workermeter, threaded server": drive_wsgi(
            WSGIMiddleware(wsgi_app, directory=tempfile.mkdtemp(prefix="wm-bench-"), threads=4),
            multithread=True,
        ),
        "prometheus_client by hand": drive_wsgi(HandWrittenWSGI(wsgi_app, CollectorRegistry())),
    }


def asgi_cases() -> dict[str, Case]:
    store = tempfile.mkdtemp(prefix="wm-bench-")
    return {
        "bare": drive_asgi(asgi_app),
        "workermeter": drive_asgi(ASGIMiddleware(asgi_app, directory=store, threads=1)),
    }
