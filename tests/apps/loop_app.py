"""A Starlette application that loads its event loop in known ways, for the ELU tests.

``/spin?ms=N`` runs the CPU for N ms of wall time inside ``async def`` (wall time, so that the
loop is held for N ms however the CPUs are shared); ``/block?ms=N`` calls ``time.sleep``
inside ``async def`` (the classic bug: the loop is held, not the CPU); ``/await?ms=N`` awaits
``asyncio.sleep`` (the loop is free); ``/sync?ms=N`` is a plain ``def`` endpoint, run in anyio's
thread pool, sleeping N ms there. ``$LOOP_APP_THREADS`` sets the size of that pool,
``$LOOP_APP_CPU_SAMPLE`` sets the middleware's ``cpu_sample``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from workermeter import ASGIMiddleware


def _ms(request: Request) -> float:
    return float(request.query_params.get("ms", "0")) / 1000


async def spin(request: Request) -> PlainTextResponse:
    end = time.perf_counter() + _ms(request)
    while time.perf_counter() < end:
        pass
    return PlainTextResponse("spun\n")


async def block(request: Request) -> PlainTextResponse:
    time.sleep(_ms(request))
    return PlainTextResponse("blocked\n")


async def wait(request: Request) -> PlainTextResponse:
    await asyncio.sleep(_ms(request))
    return PlainTextResponse("awaited\n")


def sync(request: Request) -> PlainTextResponse:
    time.sleep(_ms(request))
    return PlainTextResponse("slept in a thread\n")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    threads = os.environ.get("LOOP_APP_THREADS")
    if threads:  # a smaller pool than anyio's 40, to make tasks wait for a thread
        anyio.to_thread.current_default_thread_limiter().total_tokens = int(threads)
    yield


app = Starlette(
    lifespan=lifespan,
    routes=[
        Route("/spin", spin),
        Route("/block", block),
        Route("/await", wait),
        Route("/sync", sync),
    ],
)
# The tests sample every request's steps, to compare each route's held time with what it did.
app.add_middleware(ASGIMiddleware, cpu_sample=int(os.environ.get("LOOP_APP_CPU_SAMPLE", "16")))
