"""``ASGIMiddleware``: measure an ASGI 3 application and serve its metrics."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Generator, MutableMapping
from typing import TYPE_CHECKING, Any

from . import eventloop, threadpool
from .access import allowed
from .integrations import route_from_scope
from .listeners import own_listening_inodes
from .options import Meter
from .record_values import P_DISCONNECTS, P_UPLOADS, P_WEBSOCKETS
from .recorder import STATUS_INDEX, UNMATCHED, Active, Recorder, content_longer
from .request_start import queue_wait
from .server import Capacity, detect
from .speedups import compiled

log = logging.getLogger("workermeter")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_START_HEADERS = (b"x-request-start", b"x-queue-start")
_STATUS_INDEX = STATUS_INDEX
_FORWARDING = (b"x-forwarded-for", b"forwarded", b"x-real-ip")


class ASGICall:
    """ASGIMiddleware's ``__call__``, the per-request path, in pure Python: the reference, and
    the fallback where the compiled one (``_hotpath.ASGICall``) is not built. It reads the
    options ASGIMiddleware sets, and calls back its ``_not_http``, ``_own`` and ``_activate``."""

    app: ASGIApp
    route: Callable[[Scope], str | None]
    recorder: Recorder
    _own_paths: frozenset[str]
    _own_suffixes: tuple[str, ...]
    _wall_clock: Callable[[], float]
    _cpu_clock: Callable[[], int]
    _upload_bytes: int
    _max_skew: float
    _max_age: float

    if TYPE_CHECKING:  # ASGIMiddleware's

        async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None: ...

        async def _own(self, scope: Scope, path: str, send: Send) -> None: ...

        def _activate(self, found: Capacity | None = None) -> Active | None: ...

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        path = scope["path"]
        if self._own_paths and path.endswith(self._own_suffixes):
            # ASGI paths include the root path the app is mounted under (behind a proxy).
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :] or "/"
            if path in self._own_paths:
                await self._own(scope, path, send)
                return
        active = self.recorder.active or self._activate()
        if active is None:
            await self.app(scope, receive, send)
            return
        lane = active.single or active.lane()
        n = lane.countdown - 1  # 1 request in cpu_sample has its steps timed
        if n:
            lane.countdown = n
            sampled = False
        else:
            lane.countdown = active.cpu_sample
            sampled = True
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

        steps = None
        try:
            if sampled:
                steps = _Steps(
                    self.app(scope, receive, send_), self.recorder.clock, self._cpu_clock
                )
                await steps
            else:
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
            method = scope.get("method", "")
            now = active.finish(lane, route, method, _STATUS_INDEX.get(status, 5), t0, None)
            if steps is not None:
                lane.sampled(route, method, steps.cpu, steps.held, now - t0)


if TYPE_CHECKING or compiled is None:  # noqa: SIM108  (a base class mypy can follow)
    _Call = ASGICall
else:
    _Call = compiled.ASGICall


class ASGIMiddleware(_Call, Meter):
    """Measures every HTTP request of an ASGI application: queue wait, service time, CPU share,
    concurrency and busy time, written to a store that all worker processes share.

    A request ends when the application returns. The worker counts from its lifespan startup
    (before its first request), which also starts measuring its event loop's utilisation; the
    lifespan events pass through untouched. WebSocket connections pass through and are counted
    as open connections, not requests.
    ``GET /metrics`` is answered as by :class:`~workermeter.WSGIMiddleware`, with the same options.

    FastAPI / Starlette::

        app.add_middleware(ASGIMiddleware)

    Django (``asgi.py``)::

        application = ASGIMiddleware(get_asgi_application())
    """

    if compiled is not None and not TYPE_CHECKING:
        # A coroutine function, as servers look for one to tell an ASGI 3 app (the compiled
        # class's own __call__ would be a C slot, which they cannot tell from a plain callable).
        __call__ = compiled.ASGICall.call

    wraps = "an ASGI application"
    default_route = route_from_scope

    _probe: asyncio.Task[None] | None = None  # the event-loop probe, once started

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket is counted as a connection; the lifespan and the rest pass through."""
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
            return
        if kind == "lifespan" and self.recorder.active is None:
            # Up from the frame that awaits this: the server's, or ours under the pure path.
            self._starting(detect(None, sys._getframe().f_back))
        await self.app(scope, receive, send)

    def _starting(self, found: Capacity, tries: int = 100) -> None:
        """The lifespan startup: the worker is ready to serve, so it counts from now and its
        loop is measured from now. Its store is named after its listening socket, which uvicorn
        listens on only once the startup is complete: until then, look again every 50 ms."""
        if self.recorder.active is not None:
            return
        if self.recorder.knows_directory() or own_listening_inodes() or tries <= 0:
            self._activate(found)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on asyncio: the first request attaches
            return
        loop.call_later(0.05, self._starting, found, tries - 1)

    def _activate(self, found: Capacity | None = None) -> Active | None:
        if found is None:
            # Up from the frame that called this: the server's (or middleware's above us).
            found = detect(None, sys._getframe().f_back)
        # Requests of one event loop run in one thread: the level needs no lock.
        active = self._attach(multithread=False, capacity=found.threads)
        if active is None:
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on asyncio (trio, say): no loop to measure
            log.warning(
                "workermeter: %s runs no asyncio loop; its utilisation is not measured",
                found.server,
            )
            return active
        try:
            words = eventloop.loop_words(active, active.header, self.recorder.clock)
            eventloop.install_asyncio(loop, words)
            pool = threadpool.default_limiter()
            measured = threadpool.instrument(pool, words) if pool is not None else None
        except Exception:  # the app must be served even when its loop cannot be measured
            log.exception("workermeter: cannot measure the event loop")
            return active
        if self._probe is None or self._probe.done():
            self._probe = loop.create_task(probe(active, PROBE_INTERVAL, words, measured))
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

    async def _own(self, scope: Scope, path: str, send: Send) -> None:
        """The metrics or the status page, for the clients they are open to."""
        headers = dict(scope.get("headers") or ())
        client = scope.get("client")
        forwarded = any(h in headers for h in _FORWARDING)
        auth = headers.get(b"authorization")
        let_in = allowed(
            self.token,
            client[0] if client else None,
            forwarded,
            auth.decode("latin-1") if auth is not None else None,
        )
        ok = scope.get("method") in ("GET", "HEAD") and let_in
        if path != self._metrics_path:
            from .status import refused

            query = scope.get("query_string", b"").decode("latin-1")
            # The page reads the store and the history files: off the event loop.
            status, head, body = (
                await asyncio.to_thread(self.site.respond, path, scope.get("method"), query)
                if let_in
                else refused(self.token)
            )
        elif ok:

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


async def probe(
    active: Active,
    interval: float,
    words: eventloop.LoopWords | None = None,
    pool: threadpool.PoolWords | None = None,
) -> None:
    """Measure how late the event loop wakes up a sleeper every ``interval`` seconds while the
    loop runs, and keep the thread pool that runs the app's sync code measured: counted exactly
    when its limiter allows (a limiter the app replaced is taken on), else sampled."""
    loop = asyncio.get_running_loop()
    lane = active.lane()  # the loop's thread: the lane the requests of this loop use too
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        lane.loop_lag(max(loop.time() - due, 0.0))
        limiter = threadpool.default_limiter()
        if limiter is None:
            continue
        if words is not None and (pool is None or not pool.counts(limiter)):
            pool = threadpool.instrument(limiter, words)
        if pool is not None:
            pool.publish()  # the size may have changed
        else:
            sample = thread_pool(limiter)
            if sample is not None:
                active.thread_pool(*sample)


class _Steps:
    """Awaits an app's coroutine step by step, timing each step: the event-loop time and thread
    CPU time the request's own task took, not those of the requests it overlapped."""

    __slots__ = ("_awaitable", "_clock", "_cpu_clock", "cpu", "held")

    def __init__(
        self, awaitable: Awaitable[None], clock: Callable[[], int], cpu_clock: Callable[[], int]
    ) -> None:
        self._awaitable = awaitable
        self._clock = clock
        self._cpu_clock = cpu_clock
        self.held = 0
        self.cpu = 0

    def __await__(self) -> Generator[Any, Any, None]:
        steps = self._awaitable.__await__()
        clock, cpu_clock = self._clock, self._cpu_clock
        value: Any = None
        error: BaseException | None = None
        while True:
            t, c = clock(), cpu_clock()
            try:
                yielded = steps.send(value) if error is None else steps.throw(error)
            except StopIteration:
                return
            finally:
                self.held += clock() - t
                self.cpu += cpu_clock() - c
            value = error = None
            try:
                value = yield yielded
            except GeneratorExit:  # closed while suspended: close the app's coroutine too
                close = getattr(steps, "close", None)
                if close is not None:
                    close()
                raise
            except BaseException as e:  # cancellation and the like: the app's to handle
                error = e


def thread_pool(limiter: Any = None) -> tuple[int, int] | None:
    """(size, in use) of ``limiter``, by default anyio's default thread limiter, which Starlette
    and FastAPI run sync endpoints under; None when the app does not use anyio."""
    if limiter is None:
        limiter = threadpool.default_limiter()
        if limiter is None:
            return None
    try:
        return int(limiter.total_tokens), int(limiter.borrowed_tokens)
    except (OverflowError, TypeError):  # an infinite limit: nothing to report
        return None
