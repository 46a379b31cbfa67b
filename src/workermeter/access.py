"""Who may read ``/metrics`` and the status page: loopback and private clients, or the token, as
a bearer token or as the password of HTTP basic auth (any user name), so that a browser can ask
for it.

Kept apart from the exposition so that the middleware can turn a scrape away without loading
``prometheus_client``: a worker builds its exposition only for a scrape it answers.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress


def private_client(addr: str | None, forwarded: bool) -> bool:
    """True for a loopback or private client that came without forwarding headers."""
    if forwarded or not addr:
        return False
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:  # a Unix socket peer has no address: only local processes reach it
        return addr.startswith("/") or addr == "unix"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_private


def allowed(
    token: str | None, addr: str | None, forwarded: bool, authorization: str | None
) -> bool:
    """Whether a request may read /metrics."""
    if token and authorization is not None and token_given(token, authorization):
        return True
    return private_client(addr, forwarded)


def token_given(token: str, authorization: str) -> bool:
    """Whether an ``Authorization`` header carries ``token``, compared in constant time."""
    scheme, _, given = authorization.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return _same(given.strip(), token)
    if scheme == "basic":
        try:
            decoded = base64.b64decode(given.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        _, colon, password = decoded.partition(":")
        return bool(colon) and _same(password, token)
    return False


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
