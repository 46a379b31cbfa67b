"""The apps and meters the overhead benchmarks compare, each as a zero-argument call.

Every case serves one request to an app called directly (no server), with an ``X-Request-Start``
header and a route, and drives the response the way a server does: iterate the body, then close
it. The difference between a meter's case and the bare app's is the time the meter adds.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pure
from prometheus_client import CollectorRegistry, Gauge, Histogram, values

from workermeter import ASGIMiddleware, WSGIMiddleware
from workermeter.integrations import KEY
from workermeter.request_start import parse_timestamp

Case = Callable[[], None]
ROUTE = "/items/{id}"
# workermeter's compiled hot path is "workermeter", where it is built; its pure-Python one, in
# the same process (pure.py), is this.
PURE = "workermeter, pure Python"


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _environ(multithread: bool = False, route: bool = True) -> dict[str, Any]:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/items/42",
        "wsgi.multithread": multithread,
        "HTTP_X_REQUEST_START": f"t={time.time():.3f}",
        KEY: ROUTE,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if not route:  # a framework names the route itself
        del environ[KEY]
    return environ


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def drive_wsgi(
    app: Callable[..., Iterable[bytes]], *, multithread: bool = False, route: bool = True
) -> Case:
    environ = _environ(multithread, route)

    def case() -> None:
        body = app(dict(environ), _start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()

    return case


class HandWritten:
    """What a user would write with prometheus_client: a duration Histogram by route, a
    queue-wait Histogram and an in-flight Gauge, parsing the header with the same parser.

    ``header=False`` leaves the queue wait out. ``multiprocess=True`` builds the metrics in
    prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a temporary directory
    here), the mode a pre-fork server needs; the route's child is made at once, while the mode
    is on, because prometheus_client picks the value class when a child is created.
    """

    def __init__(self, *, header: bool = True, multiprocess: bool = False) -> None:
        registry = CollectorRegistry()
        self.header = header
        with _multiprocess(multiprocess):
            self.duration = Histogram("duration_seconds", "d", ["route"], registry=registry)
            self.wait = Histogram("queue_wait_seconds", "w", registry=registry)
            self.in_flight = Gauge("in_flight", "i", registry=registry, multiprocess_mode="livesum")
            self.duration.labels(ROUTE)

    def queue_wait(self, header: str | None) -> None:
        if header is not None:
            ts = parse_timestamp(header)
            if ts is not None:
                self.wait.observe(max(time.time() - ts, 0.0))

    def done(self, route: str, start: float) -> None:
        self.duration.labels(route).observe(time.perf_counter() - start)
        self.in_flight.dec()


@contextlib.contextmanager
def _multiprocess(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    saved = values.ValueClass
    directory = tempfile.mkdtemp(prefix="wm-bench-prom-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()
    try:
        yield
    finally:  # only the metrics built here are in multiprocess mode
        values.ValueClass = saved
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]


class HandWrittenWSGI:
    """The hand-written meter as WSGI middleware, timing until ``close()``."""

    def __init__(self, app: Callable[..., Iterable[bytes]], meter: HandWritten) -> None:
        self.app = app
        self.meter = meter

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start = time.perf_counter()
        meter = self.meter
        if meter.header:
            meter.queue_wait(environ.get("HTTP_X_REQUEST_START"))
        meter.in_flight.inc()
        body = self.app(environ, start_response)
        return _Closing(body, meter, environ, start)


class _Closing:
    def __init__(self, body: Iterable[bytes], meter: HandWritten, environ: Any, start: float):
        self.body, self.meter, self.environ, self.start = body, meter, environ, start

    def __iter__(self) -> Any:
        return iter(self.body)

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()
        self.meter.done(self.environ.get(KEY) or _flask_rule(self.environ), self.start)


def _flask_rule(environ: dict[str, Any]) -> str:
    request = environ.get("werkzeug.request")
    rule = getattr(request, "url_rule", None)
    return str(getattr(rule, "rule", "<unmatched>"))


class HandWrittenASGI:
    """The hand-written meter as ASGI middleware (one line: ``add_middleware``)."""

    def __init__(self, app: Any, meter: HandWritten) -> None:
        self.app = app
        self.meter = meter

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        meter = self.meter
        if meter.header:
            for name, value in scope["headers"]:
                if name == b"x-request-start":
                    meter.queue_wait(value.decode("latin-1"))
                    break
        meter.in_flight.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get(KEY) or getattr(scope.get("route"), "path", "<unmatched>")
            meter.done(route, start)


def drive_asgi(app: Any, *, route: bool = True, in_loop: bool = False) -> Case:
    """One ASGI request per call. Bare apps finish in one ``send(None)``; framework stacks
    (``in_loop=True``) may suspend, so they run in an event loop, many requests per loop entry
    (see :func:`run`) so that the loop's own cost is spread thin and is the same for all."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "root_path": "",
        "path": "/items/42",
        "raw_path": b"/items/42",
        "query_string": b"",
        "method": "GET",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"bench"),
            (b"accept", b"*/*"),
            (b"x-request-start", f"t={time.time():.3f}".encode()),
        ],
        KEY: ROUTE,
    }
    if not route:
        del scope[KEY]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    if in_loop:
        loop = asyncio.new_event_loop()

        async def many(n: int) -> None:
            for _ in range(n):
                await app(dict(scope), receive, send)

        def case() -> None:
            loop.run_until_complete(app(dict(scope), receive, send))

        case.batch = lambda n: loop.run_until_complete(many(n))  # type: ignore[attr-defined]
        return case

    def case() -> None:
        coro = app(dict(scope), receive, send)
        try:
            coro.send(None)
        except StopIteration:
            return
        raise RuntimeError("the benchmark app must not suspend")

    return case


def run(case: Case, n: int) -> None:
    """Serve n requests through a case."""
    batch = getattr(case, "batch", None)
    if batch is not None:
        batch(n)
        return
    for _ in range(n):
        case()


def _store() -> str:
    directory = tempfile.mkdtemp(prefix="wm-bench-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def wsgi_cases() -> dict[str, Case]:
    from peers import otel_wsgi

    return {
        "bare": drive_wsgi(wsgi_app),
        "workermeter": drive_wsgi(WSGIMiddleware(wsgi_app, directory=_store())),
        PURE: drive_wsgi(pure.load().WSGIMiddleware(wsgi_app, directory=_store())),
        "workermeter, threaded server": drive_wsgi(
            WSGIMiddleware(wsgi_app, directory=_store(), threads=4), multithread=True
        ),
        "prometheus_client by hand": drive_wsgi(HandWrittenWSGI(wsgi_app, HandWritten())),
        "prometheus_client by hand, no header": drive_wsgi(
            HandWrittenWSGI(wsgi_app, HandWritten(header=False))
        ),
        "prometheus_client by hand, multiprocess": drive_wsgi(
            HandWrittenWSGI(wsgi_app, HandWritten(multiprocess=True))
        ),
        "OpenTelemetry WSGI (metrics only)": drive_wsgi(otel_wsgi(wsgi_app)),
    }


def asgi_cases() -> dict[str, Case]:
    from peers import judoscale_asgi, otel_asgi

    return {
        "bare": drive_asgi(asgi_app),
        "workermeter": drive_asgi(ASGIMiddleware(asgi_app, directory=_store(), threads=1)),
        PURE: drive_asgi(pure.load().ASGIMiddleware(asgi_app, directory=_store(), threads=1)),
        "prometheus_client by hand": drive_asgi(HandWrittenASGI(asgi_app, HandWritten())),
        "prometheus_client by hand, no header": drive_asgi(
            HandWrittenASGI(asgi_app, HandWritten(header=False))
        ),
        "prometheus_client by hand, multiprocess": drive_asgi(
            HandWrittenASGI(asgi_app, HandWritten(multiprocess=True))
        ),
        "OpenTelemetry ASGI (metrics only)": drive_asgi(otel_asgi(asgi_app)),
        "judoscale ASGI (reporter off)": drive_asgi(judoscale_asgi(asgi_app)),
    }
