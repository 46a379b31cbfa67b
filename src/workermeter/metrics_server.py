"""Serving the metrics over HTTP on a port of their own: from a thread of the process that
calls :func:`serve_metrics`, from the gunicorn arbiter (:mod:`workermeter.gunicorn`), or from
``workermeter serve``."""

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
from .store import Store

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
CLIENT_TIMEOUT = 10.0  # seconds a scraper may take to send its request


def metrics_app(exposition: Exposition) -> WSGIApp:
    """A WSGI app that answers GET and HEAD on any path with the metrics."""
    return exposition.wsgi


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
    httpd.set_app(metrics_app(Exposition(_lazy_store(path))))
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
