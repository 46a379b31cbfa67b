"""A Starlette application with ``ASGIMiddleware`` added, for uvicorn.

Routes: ``/sleep?ms=N`` sleeps N milliseconds, ``/items/{item_id}``, ``/stream?chunks=N&ms=M``
streams N chunks M milliseconds apart; the route templates come from Starlette's matched route.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from workermeter import ASGIMiddleware


async def sleep(request: Request) -> PlainTextResponse:
    await asyncio.sleep(float(request.query_params.get("ms", "0")) / 1000)
    return PlainTextResponse("slept\n")


async def stream(request: Request) -> StreamingResponse:
    chunks, ms = int(request.query_params["chunks"]), float(request.query_params["ms"])

    async def body() -> AsyncIterator[bytes]:
        for i in range(chunks):
            if i:
                await asyncio.sleep(ms / 1000)
            yield b"x" * 1024 + b"\n"

    return StreamingResponse(body(), media_type="text/plain")


async def item(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"{request.path_params['item_id']}\n")


app = Starlette(
    routes=[Route("/sleep", sleep), Route("/items/{item_id}", item), Route("/stream", stream)]
)
app.add_middleware(ASGIMiddleware)
