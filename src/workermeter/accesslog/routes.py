"""Group request paths into routes: ``/users/123`` and ``/users/456`` are ``/users/{id}``, and
the labels for what is not a route (``<invalid>``, ``<unknown>``, ``<other>``).
"""

from __future__ import annotations

import re

OTHER = "<other>"  # routes beyond max_routes, as in the metrics' route label
INVALID = "<invalid>"  # a request line that is not HTTP (a TLS handshake on port 80, say)
UNKNOWN = "<unknown>"  # a custom pattern without a path

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"[0-9a-fA-F]{8,}")
_ID_EXT = re.compile(r"(\d+)(\.[A-Za-z0-9]{1,8})")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TOKEN = re.compile(r"[\w.~+=%@-]{20,}")


def _segment(s: str) -> str:
    if not s:
        return s
    if s.isdigit():
        return "{id}"
    if len(s) == 36 and _UUID.fullmatch(s):
        return "{uuid}"
    if _HEX.fullmatch(s) and any(c.isdigit() for c in s):
        return "{hash}"
    m = _ID_EXT.fullmatch(s)
    if m:
        return "{id}" + m[2]
    if len(s) == 10 and _DATE.fullmatch(s):
        return "{date}"
    if len(s) >= 40 or (_TOKEN.fullmatch(s) and any(c.isdigit() for c in s)):
        return "{token}"
    return s


def route_template(path: str) -> str:
    """Group a path with others of its route: ``/users/123/orders/9f86d081884c7d65`` ->
    ``/users/{id}/orders/{hash}``.

    Per segment: digits -> ``{id}`` (``123.json`` -> ``{id}.json``), a UUID -> ``{uuid}``, 8+ hex
    digits with a digit among them -> ``{hash}``, ``YYYY-MM-DD`` -> ``{date}``, 20+ characters
    with a digit, or 40+ of anything -> ``{token}``. The query string is dropped; an absolute
    URI keeps its path; anything not a path is ``<invalid>``.
    """
    if path.startswith(("http://", "https://")):
        slash = path.find("/", path.find("//") + 2)
        path = "/" if slash < 0 else path[slash:]
    path = path.partition("?")[0].partition("#")[0]
    if path == "*":
        return path
    if not path.startswith("/") or len(path) > 2048:
        return INVALID
    return "/".join(_segment(s) for s in path.split("/"))
