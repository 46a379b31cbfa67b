"""The sample apps that ``workermeter demo`` serves, measured by the middleware.

``application`` (WSGI, under gunicorn): ``/io`` waits 40 ms, like a database query or an API
call, with the CPU idle; ``/cpu`` computes for 15 ms of CPU time, like rendering a template; ``/``
says what it is; anything else is 404. Run it yourself with
``gunicorn workermeter.demo_app:application``.

``asgi_application`` (ASGI, under uvicorn, for ``workermeter demo --asgi``): ``/io`` awaits 40 ms,
leaving the event loop free; ``/cpu`` computes for 15 ms inside ``async def``; ``/block`` calls
``time.sleep(0.03)`` inside ``async def``, the classic bug of a sync client in an async app: the
loop is held, the CPU idle. Run it with ``uvicorn workermeter.demo_app:asgi_application``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from .asgi import ASGIMiddleware
from .wsgi import WSGIMiddleware

IO_SECONDS = 0.040
CPU_SECONDS = 0.015
BLOCK_SECONDS = 0.030
ROUTES = ("/", "/io", "/cpu")
ASGI_ROUTES = ("/", "/io", "/cpu", "/block")

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


Scope = MutableMapping[str, Any]


async def asgi_app(
    scope: Scope,
    receive: Callable[[], Awaitable[Any]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path, status = scope["path"], 200
    if path == "/io":
        await asyncio.sleep(IO_SECONDS)
        body = b"awaited 40 ms\n"
    elif path == "/cpu":
        burn(CPU_SECONDS)
        body = b"computed for 15 ms\n"
    elif path == "/block":
        time.sleep(BLOCK_SECONDS)  # holds the loop: every other request waits
        body = b"blocked the event loop for 30 ms\n"
    elif path == "/":
        body = b"workermeter demo app: /io awaits 40 ms, /cpu computes 15 ms, /block sleeps 30 ms\n"
    else:
        status, body = 404, b"no such page\n"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


def asgi_route(scope: Scope) -> str | None:
    """The route template: the path itself, since every route is a fixed path."""
    path = scope.get("path")
    return path if path in ASGI_ROUTES else None


asgi_application = ASGIMiddleware(asgi_app, route=asgi_route)
