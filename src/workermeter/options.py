"""What the WSGI and ASGI middleware share: their options, checked once at construction."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .instance import ENV_DIR, default_directory
from .recorder import CPU_SAMPLE, ROUTE_LIMIT, UPLOAD_BYTES, Active, Recorder

if TYPE_CHECKING:
    from .exposition import Exposition

ENV_TOKEN = "WORKERMETER_TOKEN"

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

    def _attach(self, *, multithread: bool, capacity: int | None) -> Active | None:
        """This process's recorder state; None when the store cannot be used, so requests are
        served unmeasured rather than failed (logged once per process)."""
        pid = os.getpid()
        if self._failed_in == pid:
            return None
        try:
            return self.recorder.activate(multithread=multithread, capacity=capacity)
        except Exception:  # the app must be served even when the meter cannot record
            log.exception("workermeter: cannot record; requests are served unmeasured")
            self._failed_in = pid
            return None
