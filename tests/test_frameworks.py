"""The one-line installs with the real frameworks, driven in-process: route labels above all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any
from wsgiref.util import setup_testing_defaults

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.responses import StreamingResponse
from flask import Blueprint, Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from conftest import FakeClock
from promtext import Samples, parse, total, value
from workermeter import ASGIMiddleware, WSGIMiddleware
from workermeter.recorder import Recorder

REQUESTS = "workermeter_requests_total"
DURATION_SUM = "workermeter_request_duration_seconds_sum"
IN_FLIGHT = "workermeter_in_flight_requests"


def routes(s: Samples) -> dict[tuple[str, str], float]:
    """Request counts by (route, status class)."""
    found: dict[tuple[str, str], float] = {}
    for (name, labels), v in s.items():
        if name == REQUESTS:
            d = dict(labels)
            found[(d["route"], d["status"])] = found.get((d["route"], d["status"]), 0) + v
    return found


# --------------------------------------------------------------------------- Flask


def flask_app(recorder: Recorder) -> Flask:
    app = Flask("workermeter_test")

    @app.get("/users/<int:uid>")
    def user(uid: int) -> str:
        return f"user {uid}"

    api = Blueprint("api", "workermeter_test_api")

    @api.get("/things/<name>")
    def thing(name: str) -> str:
        return f"thing {name}"

    app.register_blueprint(api, url_prefix="/api")
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, recorder=recorder)  # type: ignore[method-assign]
    return app


def test_flask_route_labels(recorder: Recorder) -> None:
    client = flask_app(recorder).test_client()
    for path, status in [("/users/7", 200), ("/api/things/x", 200), ("/nope", 404)]:
        with client.get(path) as response:  # closing it ends the request
            assert response.status_code == status
    with client.get("/metrics") as response:
        assert response.status_code == 200
        s = parse(response.get_data())
    assert routes(s) == {
        ("/users/<int:uid>", "2xx"): 1,
        ("/api/things/<name>", "2xx"): 1,
        ("<unmatched>", "4xx"): 1,
    }
    assert value(s, IN_FLIGHT, worker="0") == 0


# --------------------------------------------------------------------------- Django


def django_settings() -> None:
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="workermeter-tests",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF="django_urls",
            MIDDLEWARE=["workermeter.integrations.django.RouteMiddleware"],
            INSTALLED_APPS=[],
            USE_TZ=True,
        )


def wsgi_get(app: WSGIMiddleware, path: str) -> tuple[str, bytes]:
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ.update(PATH_INFO=path, REMOTE_ADDR="127.0.0.1")
    environ["wsgi.multithread"] = False
    status: list[str] = []

    def start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
        status.append(line)
        return lambda data: None

    result: Iterable[bytes] = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return status[0], body


DJANGO_PATHS = [
    ("/articles/2024/", 200),
    ("/async/2025/", 200),
    ("/blog/posts/hello/", 200),
    ("/nope/", 404),
]
DJANGO_ROUTES = {
    ("/articles/<int:year>/", "2xx"): 1,
    ("/async/<int:year>/", "2xx"): 1,
    ("/blog/posts/<slug:slug>/", "2xx"): 1,
    ("<unmatched>", "4xx"): 1,
}


def test_django_wsgi_route_labels(recorder: Recorder) -> None:
    django_settings()
    from django.core.wsgi import get_wsgi_application

    app = WSGIMiddleware(get_wsgi_application(), recorder=recorder)
    for path, status in DJANGO_PATHS:
        line, body = wsgi_get(app, path)
        assert int(line[:3]) == status, body
    line, body = wsgi_get(app, "/metrics")
    assert line == "200 OK"
    s = parse(body)
    assert routes(s) == DJANGO_ROUTES
    assert value(s, IN_FLIGHT, worker="0") == 0


def test_django_asgi_route_labels(recorder: Recorder) -> None:
    django_settings()
    from django.core.asgi import get_asgi_application

    app = ASGIMiddleware(get_asgi_application(), recorder=recorder)

    async def main() -> Samples:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            for path, status in DJANGO_PATHS:
                assert (await client.get(path)).status_code == status, path
            response = await client.get("/metrics")
            assert response.status_code == 200
            return parse(response.text)

    s = asyncio.run(main())
    assert routes(s) == DJANGO_ROUTES
    assert value(s, IN_FLIGHT, worker="0") == 0


# --------------------------------------------------------------------------- FastAPI, Starlette


async def get_all(
    app: Any, paths: list[tuple[str, int]], root_path: str = ""
) -> tuple[dict[str, bytes], Samples]:
    """GET each path (checking its status), then /metrics; via httpx's in-process transport.

    ``root_path`` is the ASGI root path the server passes for the paths (a proxy prefix).
    """
    bodies: dict[str, bytes] = {}
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path, status in paths:
            response = await client.get(path)
            assert response.status_code == status, (path, response.text)
            bodies[path] = response.content
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        response = await client.get("http://test/metrics")
        assert response.status_code == 200
    return bodies, parse(response.text)


def fastapi_app(recorder: Recorder, clock: FakeClock) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.get("/sync/{name}")
    def sync(name: str) -> dict[str, str]:  # runs in the thread pool
        clock.advance(0.05)
        return {"name": name}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                if i:
                    clock.advance(0.1)
                yield b"chunk%d\n" % i

        return StreamingResponse(chunks(), media_type="text/plain")

    v1 = APIRouter(prefix="/v1")

    @v1.get("/users/{uid}")
    async def user(uid: int) -> dict[str, int]:
        return {"uid": uid}

    app.include_router(v1)
    app.add_middleware(ASGIMiddleware, recorder=recorder)
    return app


def test_fastapi_route_labels(recorder: Recorder, clock: FakeClock) -> None:
    app = fastapi_app(recorder, clock)
    paths = [
        ("/items/3", 200),
        ("/items/x", 422),
        ("/sync/a", 200),
        ("/stream", 200),
        ("/v1/users/2", 200),
        ("/nope", 404),
    ]
    bodies, s = asyncio.run(get_all(app, paths))
    assert bodies["/stream"] == b"chunk0\nchunk1\nchunk2\n"
    assert routes(s) == {
        ("/items/{item_id}", "2xx"): 1,
        ("/items/{item_id}", "4xx"): 1,
        ("/sync/{name}", "2xx"): 1,
        ("/stream", "2xx"): 1,
        ("/v1/users/{uid}", "2xx"): 1,
        ("<unmatched>", "4xx"): 1,
    }
    assert value(s, DURATION_SUM, route="/stream") == 0.2  # the whole stream
    assert value(s, DURATION_SUM, route="/sync/{name}") == 0.05
    assert value(s, IN_FLIGHT, worker="0") == 0


async def thing(request: Request) -> Response:
    return PlainTextResponse(f"thing {request.path_params['id']}")


async def legacy(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("legacy")(scope, receive, send)


def starlette_app(recorder: Recorder) -> Starlette:
    app = Starlette(
        routes=[
            Route("/top/{id}", thing),
            Mount("/api", routes=[Route("/things/{id}", thing)]),
            Mount("/legacy", app=legacy),
        ]
    )
    app.add_middleware(ASGIMiddleware, recorder=recorder)
    return app


@pytest.mark.parametrize(
    "root_path", [pytest.param("", id="root"), pytest.param("/proxy", id="root-path")]
)
def test_starlette_mount_route_labels(recorder: Recorder, root_path: str) -> None:
    paths = [
        (root_path + "/top/1", 200),
        (root_path + "/api/things/1", 200),
        (root_path + "/api/things/2", 200),
        (root_path + "/nope", 404),
    ]
    bodies, s = asyncio.run(get_all(starlette_app(recorder), paths, root_path))
    assert bodies[root_path + "/api/things/1"] == b"thing 1"
    assert routes(s) == {
        ("/top/{id}", "2xx"): 1,
        ("/api/things/{id}", "2xx"): 2,
        ("<unmatched>", "4xx"): 1,
    }


def test_starlette_no_match_inside_a_mount_is_unmatched(recorder: Recorder) -> None:
    _, s = asyncio.run(get_all(starlette_app(recorder), [("/api/nope", 404)]))
    assert routes(s) == {("<unmatched>", "4xx"): 1}


def test_starlette_mounted_app_is_labelled_by_its_mount(recorder: Recorder) -> None:
    bodies, s = asyncio.run(get_all(starlette_app(recorder), [("/legacy/any/path", 200)]))
    assert bodies["/legacy/any/path"] == b"legacy"
    assert routes(s) == {("/legacy", "2xx"): 1}
    assert total(s, REQUESTS) == 1
