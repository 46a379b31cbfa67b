"""What a worker loads: recording needs none of the modules that serving the metrics needs.

Each case runs in a fresh interpreter, since this test process has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Loaded by serving metrics on a port of their own (an HTTP server), by handing them to a
# prometheus_client registry, by reading memory (psutil) or by the ASGI middleware (asyncio): a
# WSGI worker that is not scraped needs none of them.
FOR_METRICS = ("prometheus_client", "psutil", "http.server", "wsgiref.simple_server")
FOR_ASGI = ("asyncio", "anyio", "ssl")

REPORT = """
import json, sys
HEAVY = {heavy!r}
def report(step):
    loaded = sorted(m for m in HEAVY if m in sys.modules)
    own = sorted(m for m in sys.modules if m.startswith("workermeter"))
    print(json.dumps({{"step": step, "heavy": loaded, "own": own}}), flush=True)
"""

IMPORT_ONLY = """
import workermeter
report("import")
"""

WSGI = """
from workermeter import WSGIMiddleware
report("import")

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

def get(path, addr="127.0.0.1"):
    environ = {{"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": addr,
               "wsgi.multithread": False, "workermeter.route": "/items/{{id}}"}}
    statuses = []
    response = mw(environ, lambda status, headers, exc_info=None: statuses.append(status))
    body = b"".join(response)
    getattr(response, "close", lambda: None)()
    return statuses[0], body.decode()

mw = WSGIMiddleware(app, directory={directory!r}, threads=1)
report("construct")
assert get("/items/1") == ("200 OK", "ok")
report("request")
assert get("/metrics", addr="8.8.8.8")[0] == "404 Not Found"
report("denied scrape")
status, text = get("/metrics")
report("scrape")
print(json.dumps({{"status": status, "text": text}}))
"""

ASGI = """
import asyncio
from workermeter import ASGIMiddleware
report("import")

async def app(scope, receive, send):
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": b"ok"}})

async def get(path, addr="127.0.0.1"):
    scope = {{"type": "http", "method": "GET", "path": path, "headers": [],
             "client": (addr, 50000), "workermeter.route": "/items/{{id}}"}}
    sent = []

    async def receive():
        return {{"type": "http.request", "body": b"", "more_body": False}}

    async def send(message):
        sent.append(message)

    await mw(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]).decode()

async def main():
    assert await get("/items/1") == (200, "ok")
    report("request")
    assert (await get("/metrics", addr="8.8.8.8"))[0] == 404
    report("denied scrape")
    status, text = await get("/metrics")
    report("scrape")
    print(json.dumps({{"status": status, "text": text}}))

mw = ASGIMiddleware(app, directory={directory!r}, threads=1)
report("construct")
asyncio.run(main())
"""


def run(script: str, heavy: tuple[str, ...], directory: Path) -> list[dict[str, Any]]:
    code = (REPORT + script).format(heavy=heavy, directory=str(directory))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_importing_the_package_loads_none_of_its_modules(tmp_path: Path) -> None:
    (report,) = run(IMPORT_ONLY, FOR_METRICS + FOR_ASGI, tmp_path)
    assert report == {"step": "import", "heavy": [], "own": ["workermeter"]}


@pytest.mark.parametrize(
    ("script", "heavy"),
    [
        pytest.param(WSGI, FOR_METRICS + FOR_ASGI, id="wsgi"),
        pytest.param(ASGI, FOR_METRICS, id="asgi"),
    ],
)
def test_recording_loads_nothing_for_serving_metrics(
    tmp_path: Path, script: str, heavy: tuple[str, ...]
) -> None:
    *steps, scraped, result = run(script, heavy, tmp_path)
    assert [s["step"] for s in steps] == ["import", "construct", "request", "denied scrape"]
    for step in steps:
        assert step["heavy"] == [], step
        assert "workermeter.exposition" not in step["own"], step
    # The first scrape builds the exposition, and answers with the request recorded before it;
    # it reads the workers' memory with psutil, and writes the text without prometheus_client.
    assert scraped["heavy"] == ["psutil"]
    assert "workermeter.exposition" in scraped["own"]
    assert result["status"] in ("200 OK", 200)
    sample = 'workermeter_requests_total{route="/items/{id}",status="2xx"} 1.0'
    assert sample in result["text"]


def test_names_are_exported_lazily() -> None:
    import workermeter.asgi
    import workermeter.metrics_server
    import workermeter.recorder
    import workermeter.wsgi

    assert workermeter.ASGIMiddleware is workermeter.asgi.ASGIMiddleware
    assert workermeter.WSGIMiddleware is workermeter.wsgi.WSGIMiddleware
    assert workermeter.Recorder is workermeter.recorder.Recorder
    assert workermeter.serve_metrics is workermeter.metrics_server.serve_metrics
    assert set(workermeter.__all__) <= set(dir(workermeter))
    assert workermeter.__all__ == sorted(workermeter.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = workermeter.nothing
    from workermeter import gunicorn  # a submodule, not a lazy name

    assert gunicorn.__name__ == "workermeter.gunicorn"
