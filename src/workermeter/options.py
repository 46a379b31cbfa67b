"""What the WSGI and ASGI middleware share: their options, checked once at construction."""

from __future__ import annotations

import enum
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar

from . import server
from .instance import ENV_DIR, default_directory
from .metrics import route_detail
from .recorder import CPU_SAMPLE, ROUTE_LIMIT, UPLOAD_BYTES, Active, Recorder

if TYPE_CHECKING:
    from .exposition import Exposition
    from .status import Site

ENV_TOKEN = "WORKERMETER_TOKEN"
ENV_STATUS_PATH = "WORKERMETER_STATUS_PATH"
_OFF = ("", "0", "off", "none", "false", "no")


class Default(enum.Enum):
    """An option left to its default, where None means "none"."""

    DEFAULT = enum.auto()


DEFAULT = Default.DEFAULT


def default_status_path(metrics_path: str | None) -> str | None:
    """Where the status page is served beside ``metrics_path``: ``$WORKERMETER_STATUS_PATH``
    (``off`` for nowhere), else ``<metrics_path>/status``; none without metrics.

    :raises ValueError: if the variable is set to something else than a path or off.
    """
    env = os.environ.get(ENV_STATUS_PATH)
    if env is not None:
        if env.strip().lower() in _OFF:
            return None
        if not env.startswith("/"):
            raise ValueError(f"{ENV_STATUS_PATH}={env!r} must be a path starting with '/', or off")
        return env.rstrip("/") or "/"
    if metrics_path is None:
        return None
    return metrics_path.rstrip("/") + "/status"


def threads_run() -> bool:
    """Whether a thread started in this process runs: not in uWSGI without threads."""
    module = sys.modules.get("uwsgi")
    if module is None:
        return True
    opt = getattr(module, "opt", {}) or {}
    return any(opt.get(name) for name in (b"enable-threads", "enable-threads", b"threads",
                                          "threads"))  # fmt: skip


def status_paths(status_path: str | None) -> tuple[str, ...]:
    """The paths of the status page at ``status_path``: the page, its JSON, script and style."""
    if status_path is None:
        return ()
    base = "" if status_path == "/" else status_path
    return (status_path, base + ".json", base + ".js", base + ".css")

log = logging.getLogger("workermeter")


class Meter:
    """The base of :class:`~workermeter.WSGIMiddleware` and :class:`~workermeter.ASGIMiddleware`:
    it checks the options (``ValueError`` saying what to do) and holds the recorder and the
    exposition. A subclass names what it wraps and its default route function."""

    wraps: ClassVar[str] = "an application"
    # Read through the class, so a plain function stays unbound.
    default_route: ClassVar[Callable[[Any], str | None]]

    def __init__(
        self,
        app: Any,
        *,
        route: Callable[[Any], str | None] | None = None,
        threads: int | None = None,
        metrics_path: str | None = "/metrics",
        status_path: str | Default | None = DEFAULT,
        token: str | None = None,
        directory: str | os.PathLike[str] | None = None,
        route_limit: int | None = None,
        cpu_sample: int | None = None,
        upload_bytes: int | None = None,
        max_skew: float = 2.0,
        max_age: float = 600.0,
        recorder: Recorder | None = None,
    ) -> None:
        name = type(self).__name__
        if not callable(app):
            raise ValueError(f"{name} wraps {self.wraps} (a callable), got {app!r}")
        if route is not None and not callable(route):
            raise ValueError(
                f"route must be a callable returning the route template, got {route!r}"
            )
        if metrics_path is not None and (
            not isinstance(metrics_path, str) or not metrics_path.startswith("/")
        ):
            raise ValueError(
                f"metrics_path must be a path starting with '/' (or None to not serve metrics), "
                f"got {metrics_path!r}"
            )
        if status_path is DEFAULT:
            status_path = default_status_path(metrics_path)
        elif status_path is not None and (
            not isinstance(status_path, str) or not status_path.startswith("/")
        ):
            raise ValueError(
                f"status_path must be a path starting with '/' (or None for no status page), "
                f"got {status_path!r}"
            )
        if metrics_path is not None:
            route_detail()  # a bad $WORKERMETER_ROUTE_DETAIL is refused now, not at a scrape
        for option, value in (("max_skew", max_skew), ("max_age", max_age)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{option} must be a number of seconds >= 0, got {value!r}")
        if token is None:
            token = os.environ.get(ENV_TOKEN) or None
        elif not isinstance(token, str) or not token:
            raise ValueError("token must be a non-empty string (or None to use WORKERMETER_TOKEN)")
        if recorder is None:
            recorder = Recorder(
                directory=Path(directory) if directory is not None else default_directory,
                threads=threads,
                route_limit=ROUTE_LIMIT if route_limit is None else route_limit,
                cpu_sample=CPU_SAMPLE if cpu_sample is None else cpu_sample,
                upload_bytes=UPLOAD_BYTES if upload_bytes is None else upload_bytes,
            )
        else:
            given = {"directory": directory, "threads": threads, "route_limit": route_limit,
                     "cpu_sample": cpu_sample, "upload_bytes": upload_bytes}  # fmt: skip
            clash = [option for option, value in given.items() if value is not None]
            if clash:
                raise ValueError(f"pass {', '.join(clash)} to the Recorder, not beside recorder=")
        if directory is not None or os.environ.get(ENV_DIR):
            recorder.store()  # a misconfigured store directory fails here, not at a request
        self.app = app
        self.route: Callable[[Any], str | None] = route or type(self).default_route
        self.recorder = recorder
        self._exposition: Exposition | None = None  # built at the first scrape
        self.token = token
        self._metrics_path = metrics_path
        self._status_path = status_path
        # Every path the middleware answers itself, not counted as the app's traffic.
        self._own_paths = frozenset(
            p for p in (metrics_path, *status_paths(status_path)) if p is not None
        )
        self._own_suffixes = tuple(self._own_paths)
        self._site: Site | None = None  # built at the first visit of the status page
        self._max_skew = float(max_skew)
        self._max_age = float(max_age)
        self._upload_bytes = recorder.upload_bytes
        self._wall_clock = recorder.wall_clock
        self._cpu_clock = recorder.cpu_clock
        self._failed_in = 0  # pid of a process where the meter could not attach

    @property
    def exposition(self) -> Exposition:
        """The store's metrics, rendered for a scrape. Built at the first scrape this process
        answers: a worker that is never scraped (metrics served by the gunicorn hooks or
        ``workermeter serve``) does not load prometheus_client."""
        exposition = self._exposition
        if exposition is None:
            # Two threads answering the first scrapes at once may each build one; either serves.
            from .exposition import Exposition

            exposition = self._exposition = Exposition(self.recorder.store)
        return exposition

    @property
    def site(self) -> Site:
        """The status page, built at its first visit."""
        site = self._site
        if site is None:
            from .status import Site, Status

            assert self._status_path is not None
            site = self._site = Site(Status(self.recorder.store), self._status_path)
        return site

    def _attach_when_ready(self, frame: FrameType | None) -> None:
        """Count this worker from now, before its first request, when the server says the
        process is one of its workers (``frame`` is where the app is being built); in a pre-fork
        master, count each worker from its fork. Elsewhere the first request attaches."""
        found = server.worker(frame)
        if found is not None:
            self._attach_worker(found)
        elif server.master(frame):
            self.recorder.after_fork_in_child = self._attach_forked
            if server.on_uwsgi_fork(self._attach_forked) and not threads_run():
                self._keep_history_on_uwsgi_timer()

    def _attach_forked(self) -> None:
        found = server.worker(sys._getframe(1))  # the stack of the fork: the worker it is for
        if found is not None:
            self._attach_worker(found)

    def _attach_worker(self, found: server.Capacity) -> None:
        try:
            active = self._attach(multithread=found.threads != 1, capacity=found.threads)
            if active is not None and found.server.startswith("gunicorn Gevent"):
                from . import eventloop

                words = eventloop.loop_words(active, active.header, self.recorder.clock)
                eventloop.install_gevent(words)
        except Exception:  # counting early is worth less than serving: the request attaches
            log.exception("workermeter: cannot count the worker before its first request")
            return
        if found.threads is not None and self.recorder.threads is None:
            log.info("workermeter: %s, %s threads per process (%s)", found.server,
                     found.threads, found.source)  # fmt: skip

    def _attach(self, *, multithread: bool, capacity: int | None) -> Active | None:
        """This process's recorder state; None when the store cannot be used, so requests are
        served unmeasured rather than failed (logged once per process)."""
        pid = os.getpid()
        if self._failed_in == pid:
            return None
        try:
            active = self.recorder.activate(multithread=multithread, capacity=capacity)
        except Exception:  # the app must be served even when the meter cannot record
            log.exception("workermeter: cannot record; requests are served unmeasured")
            self._failed_in = pid
            return None
        self._keep_history()
        return active

    def _keep_history_on_uwsgi_timer(self) -> None:
        try:
            from . import history_candidate

            history_candidate.on_uwsgi_timer(lambda: self.recorder.store().directory)
        except Exception:  # the history is worth less than the requests
            log.exception("workermeter: cannot keep the history")

    def _keep_history(self) -> None:
        """Run this worker's candidate for writing the history. It first tries after a few
        seconds, so that an arbiter or ``workermeter serve`` started with the server, which try
        at once, write it when they run."""
        if not threads_run():
            return  # uWSGI without threads: a thread would never run; its master set a timer
        try:
            from . import history_candidate

            directory = self.recorder.store().directory
            history_candidate.start(directory, wait_first=history_candidate.RETRY_EVERY)
        except Exception:  # the history is worth less than the requests
            log.exception("workermeter: cannot keep the history")
