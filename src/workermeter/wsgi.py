"""``WSGIMiddleware``: measure a PEP 3333 application and serve its metrics."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .access import allowed
from .hotpath import START_KEYS, LaneCore
from .integrations import route_from_environ
from .options import Meter
from .record_values import P_DISCONNECTS, P_UPLOADS
from .recorder import STATUS_BY_DIGIT, UNMATCHED, Active, Recorder, content_longer
from .request_start import queue_wait
from .server import detect
from .speedups import compiled

log = logging.getLogger("workermeter")

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_START_KEYS = START_KEYS
_MOD_WSGI_KEYS = ("mod_wsgi.request_start", "mod_wsgi.queue_start")
_QUEUE = "HTTP_X_QUEUE_START"
_NO_BODY: tuple[bytes, ...] = ()
_DONE: Iterator[bytes] = iter(())  # an iterator with nothing left
_STATUS_BY_DIGIT = STATUS_BY_DIGIT
_5XX = STATUS_BY_DIGIT["5"]
_OTHER = 5
_FORWARDING = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


class WSGICall:
    """WSGIMiddleware's ``__call__``, the per-request path, in pure Python: the reference, and
    the fallback where the compiled one (``_hotpath.WSGICall``) is not built. It reads the
    options WSGIMiddleware sets, and calls back its ``_own``, ``_activate`` and ``_queue``."""

    app: WSGIApp
    route: Callable[[Environ], str | None]
    recorder: Recorder
    _own_paths: frozenset[str]
    _start_keys: tuple[str, ...]
    _wall_clock: Callable[[], float]
    _cpu_clock: Callable[[], int]
    _upload_bytes: int
    _max_skew: float
    _max_age: float

    if TYPE_CHECKING:  # WSGIMiddleware's

        def _own(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]: ...

        def _activate(self, environ: Environ) -> Active | None: ...

        def _queue(self, environ: Environ, lane: LaneCore) -> None: ...

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        # The hot path. Its steps are written out rather than split into helper calls: each call
        # costs as much as several of these statements.
        if environ.get("PATH_INFO") in self._own_paths:
            return self._own(environ, start_response)
        active = self.recorder.active
        if active is None:
            active = self._activate(environ)
            if active is None:
                unmeasured: Iterable[bytes] = self.app(environ, start_response)
                return unmeasured
        lane = active.single
        if lane is None:
            try:
                lane = active.local.lane
            except AttributeError:
                lane = active.new_lane()
        n = lane.countdown - 1  # 1 request in cpu_sample has its CPU time measured
        if n:
            lane.countdown = n
            cpu0 = None
        else:
            lane.countdown = active.cpu_sample
            cpu0 = self._cpu_clock()
        if self._start_keys is _START_KEYS and _QUEUE not in environ:
            start = environ.get("HTTP_X_REQUEST_START")  # recorded by begin() below
            if start is not None:
                length = environ.get("CONTENT_LENGTH")
                if length and length != "0" and content_longer(length, self._upload_bytes):
                    lane.count(P_UPLOADS)
                    start = None
        else:
            self._queue(environ, lane)
            start = None
        # Filled in here rather than by an __init__: calling a class with one costs as much as
        # the rest of this function's statements together.
        response = _Response()
        response.mw = self
        response.environ = environ
        response.lane = lane
        response.cpu0 = cpu0
        response.sr = start_response
        response.status = _OTHER
        response.route = None
        response.items = None
        response.t0 = active.begin(lane, start, self._max_skew, self._max_age)
        try:
            body = self.app(environ, response.start_response)
        except BaseException:
            response.status = _5XX
            response.body = _NO_BODY
            response.close()
            raise
        response.body = body
        return response


if TYPE_CHECKING or compiled is None:  # noqa: SIM108  (a base class mypy can follow)
    _Call = WSGICall
else:
    _Call = compiled.WSGICall


class WSGIMiddleware(_Call, Meter):
    """Measures every request of a WSGI application: queue wait, service time, CPU share,
    concurrency and busy time, written to a store that all worker processes of the server share.

    The service time runs until the server closes the response, so a streamed body counts in
    full. ``GET /metrics`` is answered with the metrics of every worker, for loopback and private
    clients or a bearer ``token``; others get 404.

    :param app: the WSGI application.
    :param route: ``route(environ) -> str | None`` giving the route template, called when the
        response is done. The default reads what the integrations for Django, Flask and
        Werkzeug leave in the environ; ``None`` from it is ``<unmatched>``.
    :param threads: requests one process serves at once, when the server cannot tell.
    :param metrics_path: where to answer scrapes; ``None`` serves none (see ``serve_metrics``).
    :param status_path: where to serve the status page, under the same access rules (default
        ``$WORKERMETER_STATUS_PATH``, else ``<metrics_path>/status``); ``None`` serves none.
    :param token: the token that opens ``metrics_path`` and the status page to any client, as a
        bearer token or the password of HTTP basic auth (default ``$WORKERMETER_TOKEN``).
    :param directory: the store directory (default ``$WORKERMETER_DIR``, else one per server
        instance under ``/dev/shm``).
    :param route_limit: distinct route labels kept; more become ``<other>``.
    :param cpu_sample: 1 request in this many has its thread CPU time measured; 0 for none.
    :param upload_bytes: requests with a larger body have no queue wait observed (counted
        instead): a proxy that forwards before the body has arrived makes uploads look like
        queueing. Default 100,000.
    :param max_skew: a proxy timestamp up to this many seconds in the future counts as no wait.
    :param max_age: a proxy timestamp older than this many seconds is rejected.
    :param recorder: a :class:`~workermeter.recorder.Recorder` to use instead (tests).

    Flask::

        app.wsgi_app = WSGIMiddleware(app.wsgi_app)

    Django (``wsgi.py``)::

        application = WSGIMiddleware(get_wsgi_application())
    """

    wraps = "a WSGI application"
    default_route = route_from_environ

    def __init__(self, app: WSGIApp, **options: Any) -> None:
        super().__init__(app, **options)
        # mod_wsgi's own environ keys are added when the first request shows it is mod_wsgi.
        self._start_keys = _START_KEYS
        if hasattr(sys.modules.get("mod_wsgi"), "threads_per_process"):
            self._start_keys = _START_KEYS + _MOD_WSGI_KEYS  # in mod_wsgi's daemon process
        # The app is built as the worker loads it (or in a master before it forks): a worker
        # counts in the capacity from then on, not from its first request.
        self._attach_when_ready(sys._getframe(1))

    def _queue(self, environ: Environ, lane: LaneCore) -> None:
        """The general case: several start values, or mod_wsgi's environ keys."""
        values = [str(environ[k]) for k in self._start_keys if k in environ]
        if not values:
            return
        length = environ.get("CONTENT_LENGTH")
        if length and content_longer(length, self._upload_bytes):
            lane.count(P_UPLOADS)
            return
        lane.queue_wait(*queue_wait(values, self._wall_clock(), max_skew=self._max_skew,
                                    max_age=self._max_age))  # fmt: skip

    def _activate(self, environ: Environ) -> Active | None:
        multithread = bool(environ.get("wsgi.multithread", True))
        if "mod_wsgi.version" in environ:
            self._start_keys = _START_KEYS + _MOD_WSGI_KEYS
        # Up from the frame that called this, the server's own; None when a server written in C
        # (uWSGI, mod_wsgi) called the compiled __call__.
        found = detect(environ, sys._getframe().f_back)
        if found.threads is None and self.recorder.threads is None:
            log.warning(
                "workermeter: %s does not say how many requests a worker serves at once; "
                "pass threads=N to WSGIMiddleware for utilisation to be known",
                found.server,
            )
        elif self.recorder.threads is None:
            log.info("workermeter: %s, %s threads per process (%s)", found.server,
                     found.threads, found.source)  # fmt: skip
        return self._attach(multithread=multithread, capacity=found.threads)

    def _own(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """The metrics or the status page, for the clients they are open to."""
        forwarded = any(k in environ for k in _FORWARDING)
        path = environ.get("PATH_INFO")
        method = environ.get("REQUEST_METHOD")
        let_in = allowed(
            self.token, environ.get("REMOTE_ADDR"), forwarded, environ.get("HTTP_AUTHORIZATION")
        )
        if path != self._metrics_path:
            from .status import refused

            status, headers, body = (
                self.site.respond(str(path), method, environ.get("QUERY_STRING", ""))
                if let_in
                else refused(self.token)
            )
            start_response(status, headers)
            return [body]
        if method not in ("GET", "HEAD") or not let_in:
            start_response(
                "404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")]
            )
            return [b"Not Found\n"]
        return self.exposition.wsgi(environ, start_response)


class _Response:
    """Wraps ``start_response`` and the response body; the request ends when it is closed.

    Made by ``WSGIMiddleware.__call__``, which sets every slot.
    """

    __slots__ = ("body", "cpu0", "environ", "items", "lane", "mw", "route", "sr", "status", "t0")

    mw: WSGICall
    environ: Environ
    lane: LaneCore | None  # None once closed
    t0: int
    cpu0: int | None
    sr: StartResponse
    status: int
    route: str | None
    body: Iterable[bytes]
    # What the server iterates: the body's own iterator when it is a list, _DONE once a
    # streamed body has ended; None until then. Either iterator has a length hint, 0 at close()
    # when the body was all sent (Any: typeshed has no type for a list's iterator).
    items: Any

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        self.status = _STATUS_BY_DIGIT.get(status[:1], _OTHER)
        # Name the route now, while the framework still holds its request: Flask drops
        # environ["werkzeug.request"] before the server closes the response.
        try:
            self.route = self.mw.route(self.environ)
        except Exception:  # a user's route function must not break the response
            log.exception("workermeter: route function failed")
        if exc_info is None:
            return self.sr(status, headers)
        return self.sr(status, headers, exc_info)

    def __iter__(self) -> Iterator[bytes]:
        body = self.body
        if type(body) is list:
            # A list cannot fail while it is iterated, and its own iterator, cheaper than any
            # wrapper, tells at close() whether the server got to the end of it.
            self.items = items = iter(body)
            return items
        return self._stream(body)

    def _stream(self, body: Iterable[bytes]) -> Iterator[bytes]:
        try:
            yield from body
        except Exception:  # the app failed while streaming: a 5xx, not a client going away
            self.status = _5XX
            self.items = _DONE
            raise
        self.items = _DONE

    def close(self) -> None:
        lane = self.lane
        if lane is None:  # closed already
            return
        self.lane = None
        body = self.body
        try:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        finally:
            route = self.route
            if not route:  # start_response was not called, or named none: ask again
                try:
                    route = self.mw.route(self.environ) or UNMATCHED
                except Exception:  # a user's route function must not break the response
                    log.exception("workermeter: route function failed")
                    route = UNMATCHED
            items = self.items
            if body is not _NO_BODY and (items is None or items.__length_hint__()):
                lane.count(P_DISCONNECTS)  # closed before the body was all sent
            lane.active.finish(lane, route, self.environ.get("REQUEST_METHOD", ""), self.status,
                               self.t0, self.cpu0)  # fmt: skip
