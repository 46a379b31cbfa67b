"""A ``gunicorn.conf.py`` with hooks of its own that call workermeter's from them.

Used with ``-c``. The metrics address is passed as keyword arguments, which must win over
``WORKERMETER_PORT``/``WORKERMETER_BIND``; the port comes from ``TEST_METRICS_PORT`` (0: any).
"""

from __future__ import annotations

import os
from typing import Any

from workermeter import gunicorn as workermeter


def on_starting(server: Any) -> None:
    workermeter.on_starting(server)
    server.log.info("own on_starting")


def when_ready(server: Any) -> None:
    workermeter.when_ready(server, port=int(os.environ["TEST_METRICS_PORT"]), bind="127.0.0.1")


def child_exit(server: Any, worker: Any) -> None:
    workermeter.child_exit(server, worker)
    server.log.info("own child_exit %s", worker.pid)
