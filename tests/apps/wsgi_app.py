"""A plain WSGI application wrapped in ``WSGIMiddleware``, for gunicorn.

Routes: ``/sleep?ms=N`` sleeps N milliseconds and ``/stream?chunks=N&ms=M`` streams N chunks M
milliseconds apart (their templates come from the ``route=`` option); ``/items/<id>`` leaves its
template in ``environ["workermeter.route"]``; anything else is 404.
``APP_THREADS`` in the environment, when set, is passed as the middleware's ``threads=``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

from workermeter import WSGIMiddleware
from workermeter.integrations import KEY, route_from_environ

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]


def _stream(chunks: int, ms: float) -> Iterator[bytes]:
    for i in range(chunks):
        if i:
            time.sleep(ms / 1000)
        yield b"x" * 1024 + b"\n"


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream(int(query["chunks"][0]), float(query["ms"][0]))
    if path == "/sleep":
        time.sleep(float(query.get("ms", ["0"])[0]) / 1000)
        body = b"slept\n"
    elif path.startswith("/items/"):
        environ[KEY] = "/items/{id}"
        body = path[len("/items/") :].encode() + b"\n"
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such page\n"]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def route(environ: Environ) -> str | None:
    if environ.get("PATH_INFO") in ("/sleep", "/stream"):
        return str(environ["PATH_INFO"])
    return route_from_environ(environ)


_threads = os.environ.get("APP_THREADS")
application = WSGIMiddleware(app, route=route, threads=int(_threads) if _threads else None)
