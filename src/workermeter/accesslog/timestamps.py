"""Read the timestamps access logs carry: the log format's ``10/Oct/2000:13:55:36 -0700``,
ISO 8601 and Unix times in s/ms/µs/ns, into Unix seconds, whether they have one-second
resolution, and their offset from UTC. Anything outside 2000-2099 is malformed: None.
"""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache

from ..request_start import parse_timestamp

#: Timestamps from 2100-01-01 on are malformed (and before 2000, see request_start).
_LAST = 4_102_444_800.0
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_CLF_TIME = re.compile(
    r"(\d{2})/([A-Za-z]{3})/(\d{4}):(\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))? ([+-])(\d{2})(\d{2})"
)
_ISO_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
    r"(?:(Z)|([+-])(\d{2}):?(\d{2}))?"
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _day(year: int, month: int, day: int) -> float | None:
    if not 2000 <= year <= 2099:
        return None
    try:
        return float((date(year, month, day).toordinal() - _EPOCH_ORDINAL) * 86_400)
    except ValueError:  # 31 Feb and such: a malformed line, not an error
        return None


def _fraction(digits: str | None) -> float:
    return int(digits) / 10 ** len(digits) if digits else 0.0


@lru_cache(maxsize=4096)  # neighbouring lines share their second
def _clf_time(text: str) -> tuple[float, bool, int] | None:
    """``10/Oct/2000:13:55:36 -0700`` (optionally ``:36.123``) -> (epoch, whole second, offset)."""
    m = _CLF_TIME.fullmatch(text)
    if m is None:
        return None
    d, mon, y, hh, mm, ss, frac, sign, oh, om = m.groups()
    month = _MONTHS.get(mon.capitalize())
    hour, minute, second = int(hh), int(mm), int(ss)
    if month is None or hour > 23 or minute > 59 or second > 60:
        return None
    midnight = _day(int(y), month, int(d))
    if midnight is None:
        return None
    offset = (int(oh) * 3600 + int(om) * 60) * (-1 if sign == "-" else 1)
    epoch = midnight + hour * 3600 + minute * 60 + second - offset + _fraction(frac)
    return epoch, frac is None, offset


def _iso_time(text: str) -> tuple[float, bool, int | None] | None:
    """``2024-01-15T14:05:03.123+01:00`` (``Z``, no zone = UTC) -> (epoch, whole, offset)."""
    m = _ISO_TIME.fullmatch(text)
    if m is None:
        return None
    y, mo, d, hh, mm, ss, frac, zulu, sign, oh, om = m.groups()
    hour, minute, second = int(hh), int(mm), int(ss)
    if not 1 <= int(mo) <= 12 or hour > 23 or minute > 59 or second > 60:
        return None
    midnight = _day(int(y), int(mo), int(d))
    if midnight is None:
        return None
    offset: int | None = 0 if zulu else None
    if sign:
        offset = (int(oh) * 3600 + int(om) * 60) * (-1 if sign == "-" else 1)
    epoch = midnight + hour * 3600 + minute * 60 + second - (offset or 0) + _fraction(frac)
    return epoch, frac is None, offset


def _epoch_time(text: str) -> tuple[float, bool, None] | None:
    """A Unix timestamp in s, ms, µs or ns, told apart by magnitude -> (epoch, whole, None)."""
    if not _NUMBER.fullmatch(text):
        return None
    seconds = parse_timestamp(text)
    if seconds is None or seconds >= _LAST:
        return None
    whole = "." not in text and seconds == float(text)  # an integer number of seconds
    return seconds, whole, None


def _any_time(text: str) -> tuple[float, bool, int | None] | None:
    if text[:1].isdigit():
        if "/" in text:
            return _clf_time(text)
        if "-" in text:
            return _iso_time(text)
        return _epoch_time(text)
    return None
