"""Who may read ``/metrics``: loopback and private clients, or a bearer token.

Kept apart from the exposition so that the middleware can turn a scrape away without loading
``prometheus_client``: a worker builds its exposition only for a scrape it answers.
"""

from __future__ import annotations

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
    if token and authorization is not None:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and _same(given.strip(), token):
            return True
    return private_client(addr, forwarded)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
