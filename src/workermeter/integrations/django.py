"""Django: name each request by its URL pattern, for the WSGI and ASGI middleware.

Add ``"workermeter.integrations.django.RouteMiddleware"`` to ``MIDDLEWARE``. It stores the matched
pattern (``resolver_match.route``, e.g. ``"articles/<int:year>/"``) where the middleware finds it.
This module imports nothing from Django.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import KEY


class RouteMiddleware:
    """Django middleware that records the matched URL pattern of every request."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        return self.get_response(request)

    def process_view(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> None:
        match = getattr(request, "resolver_match", None)
        route = getattr(match, "route", None)
        if isinstance(route, str):
            route = "/" + route.lstrip("^")
            request.META[KEY] = route  # META is the WSGI environ itself
            scope = getattr(request, "scope", None)
            if isinstance(scope, dict):
                scope[KEY] = route  # ASGI: the scope the middleware holds
