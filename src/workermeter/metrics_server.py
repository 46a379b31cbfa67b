"""Serving the metrics over HTTP on a port of their own: from a thread of the process that
calls :func:`serve_metrics`, from the gunicorn arbiter (:mod:`workermeter.gunicorn`), or from
``workermeter serve``. The status page is served there too, at ``/`` and ``/metrics/status``."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from .exposition import Exposition
from .instance import default_directory
from .options import default_status_path
from .store import Store

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
CLIENT_TIMEOUT = 10.0  # seconds a scraper may take to send its request


def metrics_app(exposition: Exposition, store: Callable[[], Store] | None = None) -> WSGIApp:
    """A WSGI app that answers GET and HEAD on any path with the metrics; given the ``store``,
    also the status page at ``/metrics/status`` (or ``$WORKERMETER_STATUS_PATH``) and ``/``."""
    path = default_status_path("/metrics") if store is not None else None
    if store is None or path is None:
        return exposition.wsgi
    from .status import Site, Status

    site = Site(Status(store), path, root=True)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path not in site.paths:
            return exposition.wsgi(environ, start_response)
        status, headers, body = site.respond(
            path, environ.get("REQUEST_METHOD"), environ.get("QUERY_STRING", "")
        )
        start_response(status, headers)
        return [body]

    return app


class QuietHandler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: one every few seconds would drown a server's log."""


class MetricsServer(socketserver.ThreadingMixIn, WSGIServer):
    """A threaded HTTP server for the metrics: a slow scraper holds up only its own thread."""

    daemon_threads = True

    def __init__(self, address: tuple[Any, ...], family: socket.AddressFamily) -> None:
        self.address_family = family
        super().__init__(address, QuietHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look the address up in DNS (getfqdn): not worth a delay
        # in a server's start.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])
        self.setup_environ()


def listen(bind: str, port: int) -> tuple[tuple[Any, ...], socket.AddressFamily]:
    """The socket address and family to listen on ``bind:port`` (IPv4 or IPv6)."""
    family, _, _, _, sockaddr = socket.getaddrinfo(
        bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return sockaddr, family


def serve_metrics(
    port: int,
    addr: str = "127.0.0.1",
    *,
    directory: str | os.PathLike[str] | None = None,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve the store's metrics over HTTP on their own port, from a background thread.

    Call it where a thread may be started: not from a request, and in a pre-fork server not in
    the master before forking (threads do not survive ``fork``). Returns the server and thread;
    ``server.shutdown()`` then ``server.server_close()`` stops it.
    """
    path = Path(directory) if directory is not None else None
    httpd = MetricsServer(*listen(addr, port))
    store = _lazy_store(path)
    httpd.set_app(metrics_app(Exposition(store), store))
    thread = threading.Thread(target=httpd.serve_forever, name="workermeter-metrics", daemon=True)
    thread.start()
    return httpd, thread


def _lazy_store(directory: Path | None) -> Callable[[], Store]:
    cache: list[Store] = []

    def get() -> Store:
        if not cache:
            cache.append(Store(directory if directory is not None else default_directory()))
        return cache[0]

    return get
