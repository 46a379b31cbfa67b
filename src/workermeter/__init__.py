"""workermeter: how busy are your Python web workers, and how many do you need?"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .asgi import ASGIMiddleware
    from .metrics_server import serve_metrics
    from .recorder import Recorder
    from .wsgi import WSGIMiddleware

__all__ = ["ASGIMiddleware", "Recorder", "WSGIMiddleware", "serve_metrics"]

# Each name is imported from its module when first asked for: a WSGI worker then does not load
# asyncio (for ASGIMiddleware), nor prometheus_client and its HTTP server (for serve_metrics).
_MODULES = {
    "ASGIMiddleware": ".asgi",
    "Recorder": ".recorder",
    "WSGIMiddleware": ".wsgi",
    "serve_metrics": ".metrics_server",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
