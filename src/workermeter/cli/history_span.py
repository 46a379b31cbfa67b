"""The rows ``workermeter history`` is asked for: the times its options name (``--at``,
``--from``/``--to``, ``--range``) read in local time or UTC, and the step of its rows."""

from __future__ import annotations

import argparse
import datetime
import math
import re
from dataclasses import dataclass
from typing import Any

from .. import history as h
from .. import status
from . import UsageError
from .suggest import duration

MINUTELY_UP_TO = 6 * 3600  # longer ranges are shown a row an hour
AROUND = 5  # minutes shown either side of --at
WHEN_FORMS = (
    "ISO 8601 (2026-12-03T14:05 or 2026-12-03 14:05, local time unless it ends in Z or an "
    "offset such as +01:00), 14:05 (today), today 14:05, yesterday 14:05, or unix seconds"
)
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")
_UNIX = re.compile(r"\d+(?:\.\d+)?")


def parse_when(text: str, current: float, zone: datetime.tzinfo | None) -> float:
    """Unix seconds of ``text`` (any of :data:`WHEN_FORMS`), a time without a zone being in
    ``zone`` (None: local time), "today" being that of ``current`` there.

    :raises ValueError: if it is none of those forms.
    """
    text = text.strip()
    if _UNIX.fullmatch(text):
        return float(text)
    day, _, rest = text.partition(" ")
    days_back = {"today": 0, "yesterday": 1}.get(day.lower())
    clock = _CLOCK.fullmatch(text if days_back is None else rest.strip())
    if clock is not None:
        hours, minutes, seconds = (int(g or 0) for g in clock.groups())
        date = datetime.datetime.fromtimestamp(current, zone).date()
        date -= datetime.timedelta(days=days_back or 0)
        when = datetime.time(hours, minutes, seconds)  # ValueError for 25:00
        return datetime.datetime.combine(date, when, tzinfo=zone).timestamp()
    if days_back is not None:
        raise ValueError("today and yesterday take a time of day")
    parsed = datetime.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)  # still naive for local time: timestamp() reads so
    return parsed.timestamp()


def _when(text: str, option: str, current: float, zone: datetime.tzinfo | None) -> float:
    try:
        return parse_when(text, current, zone)
    except (ValueError, OverflowError, OSError):
        raise UsageError(f"{option}: not a time: {text!r}; write it as {WHEN_FORMS}") from None


def moment(t: float, zone: datetime.tzinfo | None) -> datetime.datetime:
    """``t`` as an aware datetime in ``zone`` (None: local time)."""
    return datetime.datetime.fromtimestamp(t, zone).astimezone(zone)


@dataclass(frozen=True)
class Span:
    """The rows asked for: those of ``step`` seconds that begin in [start, end), ``mark`` the
    start of the one --at names."""

    start: float
    end: float
    step: int
    mark: float | None = None


def span_of(args: argparse.Namespace, current: float, zone: datetime.tzinfo | None) -> Span:
    """The rows the options ask for, never beyond ``current``, and no more than the status
    JSON gives in one answer (so that --url and --dir agree).

    :raises UsageError: if the options contradict each other or ask for what is not kept.
    """
    span = _asked(args, current, zone)
    if (span.end - span.start) / span.step > status.MAX_ROWS:
        raise UsageError(
            f"more than {status.MAX_ROWS:,} rows: ask for a shorter range (minutes are kept "
            "for 8 days, hours for 90)"
        )
    return span


def _asked(args: argparse.Namespace, current: float, zone: datetime.tzinfo | None) -> Span:
    if args.end is not None and args.start is None:
        raise UsageError("--to goes with --from")
    if args.at is not None:
        if args.hourly:
            raise UsageError("--at shows minutes: leave out --hourly")
        minute = math.floor(_when(args.at, "--at", current, zone) / 60) * 60.0
        start, end = minute - AROUND * 60, minute + (AROUND + 1) * 60
        _future(start, current, "--at")
        step = _step(args, start, end, current, minutes=True)
        return Span(start, min(end, current), step, mark=minute)
    if args.start is not None:
        start = _when(args.start, "--from", current, zone)
        end = current if args.end is None else _when(args.end, "--to", current, zone)
        if end <= start:
            raise UsageError("--to must be after --from")
        _future(start, current, "--from")
        end = min(end, current)
        return Span(start, end, _step(args, start, end, current))
    seconds = duration(args.last or "1h", "--range")
    step = _step(args, current - seconds, current, current)
    # As the status page does: the row under way last, the range ``seconds`` long up to its end.
    start = (math.floor(current / step) + 1) * step - seconds
    return Span(start, current, step)


def _future(start: float, current: float, option: str) -> None:
    if start >= current:
        raise UsageError(f"{option}: that is in the future, where nothing is recorded yet")


def _step(args: argparse.Namespace, start: float, end: float, current: float, *,
          minutes: bool = False) -> int:  # fmt: skip
    """Seconds a row: minutes up to MINUTELY_UP_TO while minute rows are kept, else hours."""
    oldest = h.oldest_minute(current)
    if minutes or args.minutely:
        if start < oldest:
            raise UsageError(
                "minute rows are kept for 8 days: the range starts before "
                f"{moment(oldest, None):%Y-%m-%d %H:%M}; ask for a later time, or for rows of an "
                "hour (--hourly)"
            )
        return 60
    if args.hourly:
        return 3600
    return 60 if end - start <= MINUTELY_UP_TO and start >= oldest else 3600


def start_of(row: dict[str, Any]) -> float:
    """The unix seconds a row begins at, from its ``time`` (ISO 8601, as ``as_dict`` gives)."""
    return datetime.datetime.fromisoformat(str(row["time"])).timestamp()
