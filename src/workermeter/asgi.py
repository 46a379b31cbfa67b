"""``ASGIMiddleware``: measure an ASGI 3 application and serve its metrics."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .access import allowed
from .integrations import route_from_scope
from .options import Meter
from .recorder import (
    P_DISCONNECTS,
    P_UPLOADS,
    P_WEBSOCKETS,
    STATUS_INDEX,
    UNMATCHED,
    Active,
    content_longer,
)
from .request_start import queue_wait
from .server import detect

log = logging.getLogger("workermeter")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_START_HEADERS = (b"x-request-start", b"x-queue-start")
_STATUS_INDEX = STATUS_INDEX
_FORWARDING = (b"x-forwarded-for", b"forwarded", b"x-real-ip")


class ASGIMiddleware(Meter):
    """Measures every HTTP request of an ASGI application: queue wait, service time, CPU share,
    concurrency and busy time, written to a store that all worker processes share.

    A request ends when the application returns. Lifespan events pass through untouched;
    WebSocket connections pass through and are counted as open connections, not requests.
    ``GET /metrics`` is answered as by :class:`~workermeter.WSGIMiddleware`, with the same options.

    FastAPI / Starlette::

        app.add_middleware(ASGIMiddleware)

    Django (``asgi.py``)::

        application = ASGIMiddleware(get_asgi_application())
    """

    wraps = "an ASGI application"
    default_route = route_from_scope

    _probe: asyncio.Task[None] | None = None  # the event-loop probe, once started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self._metrics_path is not None and path.endswith(self._metrics_path):
            # ASGI paths include the root path the app is mounted under (behind a proxy).
            root = scope.get("root_path", "")
            if path == self._metrics_path or (root and path == root + self._metrics_path):
                await self._metrics(scope, send)
                return
        active = self.recorder.active or self._activate()
        if active is None:
            await self.app(scope, receive, send)
            return
        lane = active.single or active.lane()
        n = lane.countdown - 1  # 1 request in cpu_sample has its CPU time measured
        if n:
            lane.countdown = n
            cpu0 = None
        else:
            lane.countdown = active.cpu_sample
            cpu0 = self._cpu_clock()
        start: Any = None
        length = None
        for name, value in scope["headers"]:
            if name == b"x-request-start" or name == b"x-queue-start":
                start = value if start is None else (start, value)
            elif name == b"content-length" and length is None:
                length = value
        one = None  # a single start value, recorded by begin()
        if start is not None:
            if length is not None and content_longer(length, self._upload_bytes):
                lane.count(P_UPLOADS)
            elif type(start) is bytes:
                one = start.decode("latin-1")
            else:
                values = [v.decode("latin-1") for v in _flatten(start)]
                lane.queue_wait(*queue_wait(values, self._wall_clock(), max_skew=self._max_skew,
                                            max_age=self._max_age))  # fmt: skip
        t0 = active.begin(lane, one, self._max_skew, self._max_age)
        status = 0
        complete = False

        # A plain function handing back the server's awaitable: no coroutine of its own per
        # message.
        def send_(message: Message) -> Awaitable[None]:
            nonlocal status, complete
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body" and not message.get("more_body", False):
                complete = True
            return send(message)

        try:
            await self.app(scope, receive, send_)
        except BaseException:
            status = 500
            raise
        finally:
            try:
                route = self.route(scope) or UNMATCHED
            except Exception:  # a user's route function must not break the response
                log.exception("workermeter: route function failed")
                route = UNMATCHED
            if not complete and status != 500:
                lane.count(P_DISCONNECTS)
            active.finish(lane, route, scope.get("method", ""), _STATUS_INDEX.get(status, 5),
                          t0, cpu0)  # fmt: skip

    def _activate(self) -> Active | None:
        rec = self.recorder
        # The frame that called __call__ belongs to the server (or to middleware above us).
        found = detect(None, sys._getframe(1).f_back)
        if found.threads is None and rec.threads is None:
            log.warning(
                "workermeter: %s sets no limit on the requests a worker serves at once; pass "
                "threads=N to ASGIMiddleware for utilisation to be computed",
                found.server,
            )
        # Requests of one event loop run in one thread: the level needs no lock.
        active = self._attach(multithread=False, capacity=found.threads)
        if active is None:
            return None
        if self._probe is None or self._probe.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on asyncio (trio, say): no loop to probe
                return active
            self._probe = loop.create_task(probe(active, PROBE_INTERVAL))
        return active

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        active = self.recorder.active or self._activate()
        if active is None:
            await self.app(scope, receive, send)
            return
        active.lane().count(P_WEBSOCKETS)
        active.websocket(1)
        try:
            await self.app(scope, receive, send)
        finally:
            active.websocket(-1)

    async def _metrics(self, scope: Scope, send: Send) -> None:
        headers = dict(scope.get("headers") or ())
        client = scope.get("client")
        forwarded = any(h in headers for h in _FORWARDING)
        auth = headers.get(b"authorization")
        ok = scope.get("method") in ("GET", "HEAD") and allowed(
            self.token,
            client[0] if client else None,
            forwarded,
            auth.decode("latin-1") if auth is not None else None,
        )
        if ok:

            def header(name: bytes) -> str | None:
                value = headers.get(name)
                return value.decode("latin-1") if value is not None else None

            status, head, body = self.exposition.respond(
                scope.get("method"),
                header(b"accept"),
                header(b"accept-encoding"),
                scope.get("query_string", b"").decode("latin-1"),
            )
        else:
            status = "404 Not Found"
            head = [("Content-Type", "text/plain"), ("Content-Length", "10")]
            body = b"Not Found\n"
        await send(
            {
                "type": "http.response.start",
                "status": int(status[:3]),
                "headers": [(k.lower().encode(), v.encode()) for k, v in head],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _flatten(start: Any) -> list[bytes]:
    if isinstance(start, bytes):
        return [start]
    first, last = start
    return [*_flatten(first), last]


PROBE_INTERVAL = 0.5  # seconds between event-loop lag probes


async def probe(active: Active, interval: float) -> None:
    """Measure how late the event loop wakes up a sleeper, and sample the thread pool that runs
    the app's sync code, every ``interval`` seconds while the loop runs."""
    loop = asyncio.get_running_loop()
    lane = active.lane()  # the loop's thread: the lane the requests of this loop use too
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        lane.loop_lag(max(loop.time() - due, 0.0))
        pool = thread_pool()
        if pool is not None:
            active.thread_pool(*pool)


def thread_pool() -> tuple[int, int] | None:
    """(size, in use) of anyio's default thread limiter, which Starlette and FastAPI run sync
    endpoints under; None when the app does not use anyio."""
    to_thread = sys.modules.get("anyio.to_thread")
    if to_thread is None:
        return None
    try:
        limiter = to_thread.current_default_thread_limiter()
        return int(limiter.total_tokens), int(limiter.borrowed_tokens)
    except (RuntimeError, LookupError, OverflowError, TypeError):
        # Not inside an anyio-aware loop, or an infinite limit: nothing to report.
        return None
