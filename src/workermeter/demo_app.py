"""The sample app that ``workermeter demo`` serves under gunicorn, measured by the middleware.

Routes: ``/io`` waits 40 ms, like a database query or an API call, with the CPU idle; ``/cpu``
computes for 15 ms of CPU time, like rendering a template; ``/`` says what it is; anything else
is 404. Run it yourself with ``gunicorn workermeter.demo_app:application``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from .wsgi import WSGIMiddleware

IO_SECONDS = 0.040
CPU_SECONDS = 0.015
ROUTES = ("/", "/io", "/cpu")

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]


def burn(seconds: float) -> int:
    """Compute until this thread has used ``seconds`` of CPU time (not wall time, so a busy
    machine makes the request slower rather than cheaper)."""
    start = time.thread_time()
    total = 0
    while time.thread_time() - start < seconds:
        total += sum(i * i for i in range(200))
    return total


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/io":
        time.sleep(IO_SECONDS)
        body = b"waited 40 ms\n"
    elif path == "/cpu":
        burn(CPU_SECONDS)
        body = b"computed for 15 ms\n"
    elif path == "/":
        body = b"workermeter demo app: /io waits 40 ms, /cpu computes 15 ms\n"
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such page\n"]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def route(environ: Environ) -> str | None:
    """The route template: the path itself, since every route is a fixed path."""
    path = environ.get("PATH_INFO")
    return path if path in ROUTES else None


application = WSGIMiddleware(app, route=route)
