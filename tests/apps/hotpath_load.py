"""Requests of every kind through the middleware, with no server: for the memory checks.

    python tests/apps/hotpath_load.py STORE WSGI_REQUESTS ASGI_REQUESTS [CHECKPOINTS]

Each request is one of the kinds in WSGI_KINDS or ASGI_KINDS, in turn: plain, streamed, failing
before and while the body is sent, closed early by the client, with odd statuses and headers of
every form. After a warm-up of one of each, the process's resident memory and the blocks Python
has allocated are read at CHECKPOINTS evenly spaced points (default 2); the last line printed is
a JSON object with the readings, the hot path run and the requests the store counted.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from workermeter import ASGIMiddleware, WSGIMiddleware, speedups
from workermeter.integrations import KEY


class Boom(Exception):
    pass


def statm_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- WSGI ---------------------------------------------------------------------------------------


def _stream(chunks: int) -> Iterator[bytes]:
    for i in range(chunks):
        yield b"chunk %d" % i


def _failing_stream() -> Iterator[bytes]:
    yield b"first"
    raise Boom("in the body")


class ClosingBody:
    """A body with its own close(), which the middleware must call once."""

    def __init__(self) -> None:
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        return iter([b"a", b"b"])

    def close(self) -> None:
        self.closed += 1


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    kind = environ["PATH_INFO"]
    if kind == "/raise":
        raise Boom("before start_response")
    if kind == "/exc_info":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise Boom("after start_response")
        except Boom:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"error"]
    if kind == "/stream":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return _stream(3)
    if kind == "/fail-body":
        start_response("200 OK", [])
        return _failing_stream()
    if kind == "/closing":
        start_response("204 No Content", [])
        return ClosingBody()
    if kind == "/odd-status":
        start_response("999 Whatever", [("X-A", "1")])
        return [b""]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


# (path, request-start header or None, how much of the body the server reads: None for all)
WSGI_KINDS: list[tuple[str, str | None, int | None]] = [
    ("/plain", "t={now:.3f}", None),
    ("/plain", "{now_ms}", None),
    ("/stream", "t={now_us}", None),
    ("/stream", "srv1 t={now:.6f}, t={now_ms}", 1),  # the client goes away after one chunk
    ("/fail-body", "t=garbage", None),
    ("/closing", None, None),
    ("/closing", "t={now_ns}", 0),
    ("/odd-status", "t={future:.3f}", None),
    ("/raise", "t={old:.3f}", None),
    ("/exc_info", "\udcff\x00", None),
    ("/plain", "9" * 400, None),
]


def wsgi_request(mw: Any, kind: tuple[str, str | None, int | None]) -> None:
    path, header, take = kind
    now = time.time()
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST" if path == "/stream" else "GET",
        "PATH_INFO": path,
        "wsgi.multithread": False,
        KEY: path,
    }
    if header is not None:
        environ["HTTP_X_REQUEST_START"] = header.format(
            now=now, now_ms=int(now * 1e3), now_us=int(now * 1e6), now_ns=int(now * 1e9),
            future=now + 60, old=now - 3600,
        )  # fmt: skip
    try:
        body = mw(environ, lambda status, headers, exc_info=None: None)
    except Boom:
        return
    try:
        for i, _ in enumerate(body):
            if take is not None and i + 1 >= take:
                break
    except Boom:
        pass
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


# -- ASGI ---------------------------------------------------------------------------------------


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    kind = scope["path"]
    if kind == "/raise":
        raise Boom("before the response")
    await receive()
    if kind == "/stream":
        await send({"type": "http.response.start", "status": 201, "headers": [(b"a", b"b")]})
        for _ in range(3):
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if kind == "/gone":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})  # raises
        return
    if kind == "/fail-body":
        await send({"type": "http.response.start", "status": 503, "headers": []})
        raise Boom("while sending")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


# (path, request headers)
ASGI_KINDS: list[tuple[str, list[tuple[bytes, bytes]]]] = [
    ("/plain", [(b"host", b"h"), (b"x-request-start", b"t={now:.3f}")]),
    ("/plain", [(b"X-Request-Start", b"{now_ms}"), (b"x-queue-start", b"t={now_us}")]),
    ("/stream", [(b"x-request-start", b"t=nope"), (b"accept", b"*/*")]),
    ("/gone", [(b"x-request-start", b"t={now:.3f}")]),
    ("/fail-body", []),
    ("/raise", [(b"x-request-start", b"\xff\xfe")]),
    ("/plain", [(b"x-request-start", b"{future:.3f}")]),
]


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: dict[str, Any]) -> None:
    return None


async def _send_to_gone_client(message: dict[str, Any]) -> None:
    if message.get("more_body"):
        raise OSError("client gone")


def asgi_request(mw: Any, kind: tuple[str, list[tuple[bytes, bytes]]]) -> None:
    path, headers = kind
    now = time.time()
    values = {"now": now, "now_ms": int(now * 1e3), "now_us": int(now * 1e6), "future": now + 60}
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": [
            (name, value.decode("latin-1").format(**values).encode("latin-1"))
            if b"{" in value else (name, value)
            for name, value in headers
        ],
        KEY: path,
    }  # fmt: skip
    coroutine = mw(scope, _receive, _send_to_gone_client if path == "/gone" else _send)
    try:
        coroutine.send(None)  # the app never suspends: it finishes in one step
    except StopIteration:
        pass
    except (Boom, OSError):
        pass
    else:
        coroutine.close()
        raise RuntimeError(f"{path}: the ASGI call suspended")


# -- the run ------------------------------------------------------------------------------------


def requests_counted(directory: str) -> float:
    from workermeter.exposition import StoreCollector
    from workermeter.store import Store

    collector = StoreCollector(lambda: Store(Path(directory)))
    return sum(
        value
        for family in collector.families()
        if family.metric.name == "workermeter_requests"
        for _labels, value in family.values
    )


def main() -> None:
    directory, n_wsgi, n_asgi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    checkpoints = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    wsgi = WSGIMiddleware(wsgi_app, directory=directory, threads=1, cpu_sample=3)
    asgi = ASGIMiddleware(asgi_app, directory=directory, cpu_sample=3)
    for kind in WSGI_KINDS:  # warm-up: every code path once, caches filled
        wsgi_request(wsgi, kind)
    for akind in ASGI_KINDS:
        asgi_request(asgi, akind)
    gc.collect()
    readings: list[dict[str, int]] = []

    def read(done: int) -> None:
        gc.collect()
        readings.append({"done": done, "rss": statm_rss(), "blocks": sys.getallocatedblocks()})

    read(0)
    total = n_wsgi + n_asgi
    step = max(total // checkpoints, 1)
    done = 0
    for i in range(n_wsgi):
        wsgi_request(wsgi, WSGI_KINDS[i % len(WSGI_KINDS)])
        done += 1
        if done % step == 0:
            read(done)
    for i in range(n_asgi):
        asgi_request(asgi, ASGI_KINDS[i % len(ASGI_KINDS)])
        done += 1
        if done % step == 0:
            read(done)
    if readings[-1]["done"] != done:
        read(done)
    print(json.dumps({
        "path": speedups.PATH,
        "readings": readings,
        "counted": requests_counted(directory),
        "sent": total + len(WSGI_KINDS) + len(ASGI_KINDS),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
