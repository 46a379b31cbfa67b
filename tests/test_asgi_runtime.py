"""What an ASGI worker's event loop and thread pool show: loop lag, pool size and use, uploads."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

import workermeter.asgi
from promtext import parse, value
from test_asgi import Exchange, call, http_scope, ok_app, scrape_async
from workermeter import ASGIMiddleware
from workermeter.asgi import probe, thread_pool
from workermeter.recorder import Recorder

LAG_COUNT = "workermeter_event_loop_lag_seconds_count"
LAG_SUM = "workermeter_event_loop_lag_seconds_sum"


def test_a_blocked_loop_shows_as_lag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler that blocks the loop for 0.3 s makes the probe due meanwhile wake up late."""
    monkeypatch.setattr(workermeter.asgi, "PROBE_INTERVAL", 0.05)

    async def blocking(scope: object, receive: object, send: object) -> None:
        time.sleep(0.3)
        await ok_app(scope, receive, send)  # type: ignore[arg-type]

    mw = ASGIMiddleware(blocking, recorder=Recorder(directory=tmp_path))

    async def scenario() -> tuple[float, float]:
        await call(mw, http_scope("/"))  # starts the probe, blocks 0.3 s before it ever ran
        await asyncio.sleep(0.12)  # the probe runs twice on time
        await call(mw, http_scope("/"))  # blocks 0.3 s while the probe sleeps
        await asyncio.sleep(0.12)
        samples = await scrape_async(mw)
        return value(samples, LAG_COUNT), value(samples, LAG_SUM)

    count, total = asyncio.run(scenario())
    assert count >= 3
    assert 0.2 <= total <= 0.5  # one wake-up 0.25-0.3 s late, the others on time


def test_probe_records_small_lag_on_an_idle_loop(tmp_path: Path) -> None:
    rec = Recorder(directory=tmp_path)

    async def scenario() -> None:
        active = rec.activate(multithread=False, capacity=None)
        task = asyncio.get_running_loop().create_task(probe(active, 0.02))
        await asyncio.sleep(0.25)
        task.cancel()

    asyncio.run(scenario())
    from workermeter.exposition import Exposition

    samples = parse(Exposition(rec.store).render(None)[0])
    assert value(samples, LAG_COUNT) >= 5
    assert value(samples, LAG_SUM) / value(samples, LAG_COUNT) < 0.05


def test_thread_pool_of_sync_endpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FastAPI runs sync endpoints in anyio's pool: its size and the threads in use show."""
    monkeypatch.setattr(workermeter.asgi, "PROBE_INTERVAL", 0.05)
    app = FastAPI()

    @app.get("/sync")
    def sync_endpoint() -> dict[str, str]:
        time.sleep(0.6)
        return {"ok": "yes"}

    app.add_middleware(ASGIMiddleware, recorder=Recorder(directory=tmp_path))

    async def scenario() -> tuple[float, float, float]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            slow = [asyncio.create_task(client.get("/sync")) for _ in range(3)]
            await asyncio.sleep(0.3)  # the probe has sampled the busy pool
            during = parse((await client.get("/metrics")).content)
            await asyncio.gather(*slow)
            await asyncio.sleep(0.2)
            after = parse((await client.get("/metrics")).content)
        return (
            value(during, "workermeter_thread_pool_size", worker="0"),
            value(during, "workermeter_thread_pool_in_use", worker="0"),
            value(after, "workermeter_thread_pool_in_use", worker="0"),
        )

    size, busy, idle = asyncio.run(scenario())
    assert size == 40  # anyio's default
    assert busy == 3
    assert idle == 0


def test_no_anyio_no_pool() -> None:
    import sys

    saved = sys.modules.pop("anyio.to_thread", None)
    try:
        assert thread_pool() is None
    finally:
        if saved is not None:
            sys.modules["anyio.to_thread"] = saved


def test_large_upload_is_kept_out_of_queue_wait(tmp_path: Path) -> None:
    mw = ASGIMiddleware(ok_app, recorder=Recorder(directory=tmp_path))
    start = f"t={time.time() - 0.2:.3f}".encode()

    async def scenario() -> dict[str, float]:
        for length in (b"100", b"100000", b"100001", b"5000000", b"junk"):
            headers = [(b"x-request-start", start), (b"content-length", length)]
            await call(mw, http_scope("/", method="POST", headers=headers))
        samples = await scrape_async(mw)
        return {
            "observed": value(samples, "workermeter_queue_wait_seconds_count"),
            "uploads": value(samples, "workermeter_queue_wait_uploads_total"),
            "requests": sum(
                v for (n, _), v in samples.items() if n == "workermeter_requests_total"
            ),
        }

    assert asyncio.run(scenario()) == {"observed": 3, "uploads": 2, "requests": 5}


def test_works_without_an_asyncio_loop(tmp_path: Path) -> None:
    """Under another async library (trio via hypercorn) there is no asyncio loop to probe."""
    mw = ASGIMiddleware(ok_app, recorder=Recorder(directory=tmp_path))
    exchange = Exchange()
    coro = mw(http_scope("/"), exchange.receive, exchange.send)
    with pytest.raises(StopIteration):
        coro.send(None)  # nothing in this app suspends: it completes in one step
    assert exchange.status == 200
    assert mw._probe is None
