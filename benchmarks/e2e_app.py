"""The apps ``end_to_end.py`` serves: Flask for gunicorn, FastAPI for uvicorn.

``$BENCH_METER`` picks the meter (``bare``, ``workermeter``, ``prometheus-flask-exporter``,
``prometheus-fastapi-instrumentator``), set the way each one's documentation sets it up. Two
endpoints: ``/hello`` returns a short text, ``/work`` does about 1 ms of CPU work and 2 ms of
waiting (a database call, say) and returns a JSON list of 20 rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any

METER = os.environ.get("BENCH_METER", "bare")
ROWS = 20


def cpu_work() -> list[dict[str, Any]]:
    digest = b"workermeter"
    for _ in range(1500):  # ~1 ms of CPU here
        digest = hashlib.sha256(digest).digest()
    return [{"id": i, "name": f"item {i}", "digest": digest.hex()[:16]} for i in range(ROWS)]


def flask() -> Any:
    from flask import Flask, jsonify

    app = Flask("bench")

    @app.get("/hello")
    def hello() -> str:
        return "Hello, World!"

    @app.get("/work")
    def work() -> Any:
        rows = cpu_work()
        time.sleep(0.002)
        return jsonify(rows)

    if METER == "workermeter":
        from workermeter import WSGIMiddleware

        app.wsgi_app = WSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    elif METER == "prometheus-flask-exporter":
        from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

        GunicornPrometheusMetrics(app)
    return app


def fastapi() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @app.get("/hello", response_class=PlainTextResponse)
    async def hello() -> str:
        return "Hello, World!"

    @app.get("/work")
    async def work() -> list[dict[str, Any]]:
        rows = cpu_work()
        await asyncio.sleep(0.002)
        return rows

    if METER == "workermeter":
        from workermeter import ASGIMiddleware

        app.add_middleware(ASGIMiddleware)
    elif METER == "prometheus-fastapi-instrumentator":
        from prometheus_fastapi_instrumentator import Instrumentator

        Instrumentator().instrument(app)
    return app


app = fastapi() if os.environ.get("BENCH_FRAMEWORK") == "fastapi" else flask()
