"""Parse the proxy timestamps that say when a request entered the front proxy.

Front proxies stamp each request with the time they received it (``X-Request-Start``,
``X-Queue-Start``; mod_wsgi puts the same in its environ). The time the request then spent waiting
for a free worker is ``now - that timestamp``. Emitters disagree on the format: nginx sends
``t=1700000000.123`` (seconds), Heroku ``1700000000123`` (ms), Apache ``t=1700000000123456`` (µs),
Render ``1700000000123456789`` (ns), and some join several values with commas or put a server token
in front (``srv1 t=…``). The unit is told apart by magnitude: every timestamp after 2000-01-01 in
one unit is larger than any in the next coarser unit, until the year 2286.

This runs on every request, so the common case (one plain value) takes a fast path without any
splitting, and nothing here raises on bad header data: it is reported as a reason instead.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "EPOCH_2000",
    "FUTURE",
    "SKEW",
    "TOO_OLD",
    "UNPARSABLE",
    "parse_timestamp",
    "queue_wait",
    "queue_wait_one",
]

EPOCH_2000 = 946684800.0  # 2000-01-01T00:00:00Z in Unix seconds; fixed UTC, not time.mktime()

# Why a queue wait was not observed as is. Also Prometheus label values: do not rename.
SKEW = "clock_skew"  # start slightly in the future: observed as wait 0
FUTURE = "future"  # further in the future than the skew tolerance
TOO_OLD = "too_old"  # older than max_age
UNPARSABLE = "unparsable"  # no number, garbage, NaN/inf, negative, or before 2000 in every unit

# Lower bounds of each unit: EPOCH_2000 expressed in s, ms, µs and ns (all exact in binary).
_S = EPOCH_2000
_MS = EPOCH_2000 * 1e3
_US = EPOCH_2000 * 1e6
_NS = EPOCH_2000 * 1e9
_MAX_FLOAT = 1.7976931348623157e308  # comparing with it rejects inf without a call


def _seconds(number: float) -> float | None:
    """Convert a number in the unit its magnitude implies to Unix seconds; None if out of range."""
    # NaN fails every comparison and so falls through to None, like negatives and small numbers.
    # The comparisons are on floats: a number within half an ulp above a bound (e.g. ns
    # 946684800000000001) reads as the coarser unit. Such values date from 2000-01-01 and are
    # rejected either way.
    if number > _S:
        if number <= _MS:
            return number
        if number <= _US:
            return number / 1e3  # a division (not * 1e-3) rounds exactly like the decimal point
        if number <= _NS:
            return number / 1e6
        if number <= _MAX_FLOAT:
            return number / 1e9
    return None


def _parse_parts(value: str) -> float | None:
    """The general case: comma-joined values, server tokens, surrounding whitespace."""
    earliest: float | None = None
    for token in value.replace(",", " ").split():
        text = token.removeprefix("t=")
        if text[:1].isalpha():
            # A server token: skip the ~0.6 µs of a failing float(). The only numbers float()
            # reads that start with a letter are nan and inf, which are invalid anyway.
            continue
        try:
            number = float(text)
        except ValueError:  # garbage; UnicodeEncodeError (lone surrogates) is a ValueError too
            continue
        seconds = _seconds(number)
        if seconds is not None and (earliest is None or seconds < earliest):
            earliest = seconds
    return earliest


def seconds_of(number: float) -> float | None:
    """A number of the header in Unix seconds, its unit told by its magnitude (as parse_timestamp
    tells it); None if it is none."""
    if _S < number <= _MS:
        return number
    return _seconds(number)


def parse_timestamp(value: str) -> float | None:
    """Earliest valid timestamp (Unix seconds, float) in one header value, or None.

    Accepts a bare number or ``t=<number>``, integer or decimal, in seconds, milliseconds,
    microseconds or nanoseconds (told apart by magnitude), several of them comma-joined, each
    optionally preceded by a server token (``srv1 t=1700000000.123``). Numbers that are not finite,
    negative, or before 2000-01-01 in every unit are ignored. Never raises.
    """
    # Fast path: a single ``t=<number>`` or bare number needs no splitting. int() and float()
    # reject anything with a comma or an inner space, so such values take the general path.
    # Integers (ms, µs, ns) parse ~90 ns faster via int(), to the same float as float() gives;
    # int() is quadratic in the length, hence the bound. "nan", "1e9"... fail in int(), and the
    # general path's float() then decides, so the accepted grammar is float()'s either way.
    text = value.removeprefix("t=")
    try:
        number = float(text) if "." in text or len(text) > 40 else float(int(text))
    except ValueError:
        return _parse_parts(value)
    if _S < number <= _MS:  # seconds (nginx, Apache's t=%t in seconds): no further call
        return number
    return _seconds(number)


def _judge(
    start: float | None, now: float, max_skew: float, max_age: float
) -> tuple[float | None, str | None]:
    if start is None:
        return None, UNPARSABLE
    wait = now - start
    if wait >= 0.0:
        if wait <= max_age:
            return wait, None
        return None, TOO_OLD
    if wait >= -max_skew:
        return 0.0, SKEW
    return None, FUTURE  # also a NaN ``now``: never observe a wait that is not a number


def queue_wait(
    values: Iterable[str], now: float, *, max_skew: float = 2.0, max_age: float = 600.0
) -> tuple[float | None, str | None]:
    """Returns (wait_seconds, reason).

    ``values`` are the request-start values present on the request (e.g. ``X-Request-Start``,
    ``X-Queue-Start``, ``mod_wsgi.request_start``); the earliest valid timestamp among them is the
    start, and ``now`` is the current wall-clock time (``time.time()``). The outcome is one of:

    - ``(wait, None)``: ``0 <= now - start <= max_age``;
    - ``(0.0, SKEW)``: the start is at most ``max_skew`` seconds in the future;
    - ``(None, FUTURE)``, ``(None, TOO_OLD)``, ``(None, UNPARSABLE)``: not observable;
    - ``(None, None)``: ``values`` is empty, no header was sent.

    Reasons are the module constants themselves, so callers may compare them with ``is``.
    """
    present = False
    start: float | None = None
    for value in values:
        present = True
        seconds = parse_timestamp(value)
        if seconds is not None and (start is None or seconds < start):
            start = seconds
    if not present:
        return None, None
    return _judge(start, now, max_skew, max_age)


def queue_wait_one(
    value: str, now: float, *, max_skew: float = 2.0, max_age: float = 600.0
) -> tuple[float | None, str | None]:
    """:func:`queue_wait` for exactly one value present: the common case, without the loop."""
    return _judge(parse_timestamp(value), now, max_skew, max_age)
