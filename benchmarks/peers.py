"""The peers a user would install instead, and the framework apps they are compared on.

Each framework group has a bare app and the same app with each meter, built the way the meter's
documentation says. A peer that cannot be imported here becomes a string saying why, which the
report prints instead of a number. Every peer is configured to measure without exporting:
OpenTelemetry has a MeterProvider with an in-memory reader (the instruments aggregate, nothing
is sent; no tracing), judoscale is enabled with a placeholder URL and its reporter thread is
replaced by one that never sends.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import Any

import pure
from cases import (
    PURE,
    ROUTE,
    Case,
    HandWritten,
    HandWrittenASGI,
    HandWrittenWSGI,
    _store,
    drive_asgi,
    drive_wsgi,
)

from workermeter import ASGIMiddleware, WSGIMiddleware

Group = dict[str, Case | str]

PACKAGES = (
    "workermeter", "prometheus-client", "flask", "fastapi", "starlette", "django",
    "prometheus-flask-exporter", "prometheus-fastapi-instrumentator", "starlette-exporter",
    "django-prometheus", "opentelemetry-sdk", "opentelemetry-instrumentation-wsgi",
    "opentelemetry-instrumentation-asgi", "judoscale",
)  # fmt: skip


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _providers() -> tuple[Any, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.trace import NoOpTracerProvider

    return NoOpTracerProvider(), MeterProvider(metric_readers=[InMemoryMetricReader()])


def otel_wsgi(app: Any) -> Any:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    tracer, meter = _providers()
    return OpenTelemetryMiddleware(app, tracer_provider=tracer, meter_provider=meter)


def otel_asgi(app: Any) -> Any:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    tracer, meter = _providers()
    return OpenTelemetryMiddleware(app, tracer_provider=tracer, meter_provider=meter)


class _Running:
    """Stands in for judoscale's reporter thread: alive, and never sends anything."""

    def is_alive(self) -> bool:
        return True


def _judoscale_on() -> None:
    from judoscale.core.config import config
    from judoscale.core.reporter import reporter

    config.update({"API_BASE_URL": "http://127.0.0.1:9/placeholder"})
    reporter._thread = _Running()


def judoscale_asgi(app: Any) -> Any:
    from judoscale.asgi.middleware import StarletteRequestQueueTimeMiddleware

    _judoscale_on()
    return StarletteRequestQueueTimeMiddleware(app)


def _guard(build: Callable[[], Case]) -> Case | str:
    try:
        return build()
    except ImportError as e:  # the peer is not installed: say so instead of a number
        return f"not available: {e}"


# Flask ---------------------------------------------------------------------------------------


def flask_app() -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.get("/items/<int:id>")
    def item(id: int) -> str:
        return "ok"

    return app


def _flask_wm(middleware: type[WSGIMiddleware] = WSGIMiddleware) -> Case:
    app = flask_app()
    app.wsgi_app = middleware(app.wsgi_app, directory=_store())  # type: ignore[method-assign]
    return drive_wsgi(app, route=False)


def _flask_hand() -> Case:
    app = flask_app()
    app.wsgi_app = HandWrittenWSGI(app.wsgi_app, HandWritten())  # type: ignore[method-assign]
    return drive_wsgi(app, route=False)


def _flask_exporter() -> Case:
    from prometheus_client import CollectorRegistry
    from prometheus_flask_exporter import PrometheusMetrics

    app = flask_app()
    PrometheusMetrics(app, registry=CollectorRegistry())
    return drive_wsgi(app, route=False)


def _flask_otel() -> Case:
    app = flask_app()
    app.wsgi_app = otel_wsgi(app.wsgi_app)  # type: ignore[method-assign]
    return drive_wsgi(app, route=False)


def _flask_judoscale() -> Case:
    from judoscale.flask import Judoscale

    _judoscale_on()
    app = flask_app()
    Judoscale(app)
    return drive_wsgi(app, route=False)


def flask_cases() -> Group:
    return {
        "bare": drive_wsgi(flask_app(), route=False),
        "workermeter": _flask_wm(),
        PURE: _flask_wm(pure.load().WSGIMiddleware),
        "prometheus_client by hand": _flask_hand(),
        "prometheus-flask-exporter": _guard(_flask_exporter),
        "OpenTelemetry WSGI (metrics only)": _guard(_flask_otel),
        "judoscale Flask (reporter off)": _guard(_flask_judoscale),
    }


# FastAPI -------------------------------------------------------------------------------------


def fastapi_app() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @app.get(ROUTE, response_class=PlainTextResponse)
    async def item(id: int) -> str:
        return "ok"

    return app


def _fastapi(add: Callable[[Any], None]) -> Callable[[], Case]:
    def build() -> Case:
        app = fastapi_app()
        add(app)
        return drive_asgi(app, route=False, in_loop=True)

    return build


def _instrumentator(app: Any) -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_fastapi_instrumentator import Instrumentator

    Instrumentator(registry=CollectorRegistry()).instrument(app)


def _starlette_exporter(app: Any) -> None:
    from starlette_exporter import PrometheusMiddleware

    app.add_middleware(PrometheusMiddleware)


def _fastapi_otel(app: Any) -> None:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    tracer, meter = _providers()
    app.add_middleware(OpenTelemetryMiddleware, tracer_provider=tracer, meter_provider=meter)


def _fastapi_judoscale(app: Any) -> None:
    from judoscale.asgi.middleware import FastAPIRequestQueueTimeMiddleware

    _judoscale_on()
    app.add_middleware(FastAPIRequestQueueTimeMiddleware)


def fastapi_cases() -> Group:
    return {
        "bare": drive_asgi(fastapi_app(), route=False, in_loop=True),
        "workermeter": _fastapi(
            lambda app: app.add_middleware(ASGIMiddleware, directory=_store(), threads=1)
        )(),
        PURE: _fastapi(
            lambda app: app.add_middleware(
                pure.load().ASGIMiddleware, directory=_store(), threads=1
            )
        )(),
        "prometheus_client by hand": _fastapi(
            lambda app: app.add_middleware(HandWrittenASGI, meter=HandWritten())
        )(),
        "prometheus-fastapi-instrumentator": _guard(_fastapi(_instrumentator)),
        "starlette-exporter": _guard(_fastapi(_starlette_exporter)),
        "OpenTelemetry ASGI (metrics only)": _guard(_fastapi(_fastapi_otel)),
        "judoscale FastAPI (reporter off)": _guard(_fastapi(_fastapi_judoscale)),
    }


# Django --------------------------------------------------------------------------------------


def item_view(request: Any, id: int) -> Any:
    from django.http import HttpResponse

    return HttpResponse("ok", content_type="text/plain")


urlpatterns: list[Any] = []


def _django(middleware: list[str]) -> Any:
    """A Django WSGI handler with this MIDDLEWARE (Django reads it when the handler is built)."""
    import django
    from django.conf import settings

    if not settings.configured:
        from django.urls import path

        urlpatterns.append(path("items/<int:id>", item_view))
        settings.configure(
            DEBUG=False,
            SECRET_KEY="bench",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            INSTALLED_APPS=[],
            DATABASES={},
            USE_TZ=True,
            LOGGING_CONFIG=None,
        )
        django.setup()
    from django.core.handlers.wsgi import WSGIHandler

    settings.MIDDLEWARE = middleware
    return WSGIHandler()


_ROUTE_MW = "workermeter.integrations.django.RouteMiddleware"
_JUDOSCALE_MW = "judoscale.django.middleware.RequestQueueTimeMiddleware"


def _django_prometheus() -> Case:
    import django_prometheus  # noqa: F401  (ImportError: not installed)

    before = "django_prometheus.middleware.PrometheusBeforeMiddleware"
    after = "django_prometheus.middleware.PrometheusAfterMiddleware"
    return drive_wsgi(_django([before, after]), route=False)


def _django_judoscale() -> Case:
    import judoscale.django  # noqa: F401

    _judoscale_on()
    return drive_wsgi(_django([_JUDOSCALE_MW]), route=False)


def django_cases() -> Group:
    return {
        "bare": drive_wsgi(_django([]), route=False),
        "workermeter": drive_wsgi(
            WSGIMiddleware(_django([_ROUTE_MW]), directory=_store()), route=False
        ),
        PURE: drive_wsgi(
            pure.load().WSGIMiddleware(_django([_ROUTE_MW]), directory=_store()), route=False
        ),
        "prometheus_client by hand": drive_wsgi(
            HandWrittenWSGI(_django([_ROUTE_MW]), HandWritten()), route=False
        ),
        "django-prometheus": _guard(_django_prometheus),
        "OpenTelemetry WSGI (metrics only)": _guard(
            lambda: drive_wsgi(otel_wsgi(_django([])), route=False)
        ),
        "judoscale Django (reporter off)": _guard(_django_judoscale),
    }
