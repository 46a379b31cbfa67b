"""A WSGI application that loads gevent's hub in known ways, for ``gunicorn -k gevent``.

``/spin?ms=N`` runs the CPU for N ms of wall time (the hub is held that long however the CPUs
are shared); ``/block?ms=N`` calls the original, unpatched
``time.sleep`` (a blocking call the hub cannot switch away from); ``/await?ms=N`` calls
``time.sleep`` as monkey-patched by the gevent worker, which yields to the hub.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from gevent import monkey

from workermeter import WSGIMiddleware

_blocking_sleep: Callable[[float], None] = monkey.get_original("time", "sleep")


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    ms = float(parse_qs(environ.get("QUERY_STRING", "")).get("ms", ["0"])[0]) / 1000
    if path == "/spin":
        _spin(ms)
    elif path == "/block":
        _blocking_sleep(ms)
    elif path == "/await":
        time.sleep(ms)  # patched by the gevent worker: the hub runs meanwhile
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done\n"]


application = WSGIMiddleware(app)
