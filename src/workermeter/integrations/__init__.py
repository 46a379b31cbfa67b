"""Route templates from the frameworks, read without importing them.

The middleware calls a route function when a response is done, with the WSGI environ or the ASGI
scope. These defaults find the template each framework leaves behind:

- Django: :class:`workermeter.integrations.django.RouteMiddleware` stores
  ``request.resolver_match.route`` under ``"workermeter.route"`` (add it to ``MIDDLEWARE``);
- Flask and other Werkzeug apps: the matched ``url_rule`` of the request in
  ``environ["werkzeug.request"]``;
- Starlette and FastAPI: the matched route in ``scope["route"]``, under any mount prefixes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KEY = "workermeter.route"

__all__ = ["KEY", "route_from_environ", "route_from_scope"]


def route_from_environ(environ: Mapping[str, Any]) -> str | None:
    """The route template of a finished WSGI request, or None when no framework matched one."""
    route = environ.get(KEY)
    if route is not None:
        return str(route)
    request = environ.get("werkzeug.request")
    rule = getattr(request, "url_rule", None)
    if rule is not None:
        template = getattr(rule, "rule", None)
        if isinstance(template, str):
            return _mounted(environ.get("SCRIPT_NAME", ""), template)
    return None


def route_from_scope(scope: Mapping[str, Any]) -> str | None:
    """The route template of a finished ASGI request, or None when no framework matched one."""
    route = scope.get(KEY)
    if route is not None:
        return str(route)
    matched = scope.get("route")
    template = getattr(matched, "path", None)
    if isinstance(template, str) and not hasattr(matched, "endpoint"):
        # The last match was a Mount, not a Route: a router inside it matched nothing (404),
        # or it hands every path to one app, which the mount's full prefix names.
        if getattr(matched, "routes", None):
            return None
        root = scope.get("app_root_path")
        prefix = scope.get("root_path", "")
        if isinstance(root, str) and isinstance(prefix, str) and prefix.startswith(root):
            return prefix[len(root) :] or "/"
        return template
    if isinstance(template, str):
        # Inside a Mount, Starlette extends root_path by the mount's prefix and keeps the app's
        # own (proxy) root path in app_root_path; outside one, root_path is not part of the route.
        root = scope.get("app_root_path")
        prefix = scope.get("root_path", "")
        if isinstance(root, str) and isinstance(prefix, str) and prefix.startswith(root):
            return _mounted(prefix[len(root) :], template)
        return template
    return None


def _mounted(prefix: str, template: str) -> str:
    return prefix.rstrip("/") + template if prefix else template
