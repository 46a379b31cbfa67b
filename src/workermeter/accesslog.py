"""Read web server access logs and rebuild what the workers were doing, minute by minute.

Every access log line says when a request ended (or began) and how long it took, so it gives the
request's interval ``[start, end)``. From all the intervals a sweep over the sorted start and end
events rebuilds exactly how many requests were in flight at every moment; from the starts come the
arrivals per minute; from the durations the service time per route. That is the by-hand method
of the PythonAnywhere help page (rate at the busiest minute, mean response time at a quiet time),
automated, and with the answer to "were all workers busy at 14:05?".

Formats (see docs/logs.md for the configuration lines that produce them):

- ``nginx``: combined (or common) format plus ``rt=$request_time urt="$upstream_response_time"
  msec=$msec``, or with ``$request_time`` [``$upstream_response_time``] appended as bare numbers.
- ``gunicorn``: its default access log format plus ``%(D)s`` (µs) or ``%(L)s`` (seconds).
- ``apache``: combined (or common) plus ``%D`` (µs), and optionally ``%{usec}t``/``%{msec}t``.
- ``custom``: a regular expression with named groups, or a pattern with ``{placeholders}``.

Logged times are not always service times: a proxy (nginx, Apache in front of an app server)
measures the time a request waited for a free worker as well, an app server (gunicorn) does not.
:class:`LogAnalysis` says which; given the capacity, it rebuilds each request's wait from the
order of arrivals and departures (:func:`fcfs_waits`) and takes it off. Bad lines are counted
and shown, never fatal.
"""

from __future__ import annotations

import gzip
import itertools
import math
import os
import re
import statistics
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import date
from functools import lru_cache, partial
from typing import Protocol

from .capacity import Workload
from .request_start import parse_timestamp

__all__ = [
    "DEFAULT_CPU_SHARE",
    "FORMATS",
    "BadLine",
    "Concurrency",
    "FileSummary",
    "LineFormat",
    "LogAnalysis",
    "LogError",
    "LogLine",
    "Minute",
    "Progress",
    "Rejected",
    "RouteStats",
    "analyse",
    "concurrency",
    "fcfs_waits",
    "line_format",
    "route_template",
]

#: The built-in formats; ``"auto"`` picks one of them per file, ``"custom"`` needs a pattern.
FORMATS = ("nginx", "gunicorn", "apache")
#: Logs do not show CPU time: the share assumed for the suggestion unless one is given.
DEFAULT_CPU_SHARE = 0.5
#: Distinct ``METHOD /template`` routes kept; further ones are counted as ``<other>``.
MAX_ROUTES = 200
#: Bad lines kept as examples.
EXAMPLES = 5
#: Lines read to choose a file's format.
DETECT_LINES = 200
#: A longer line is malformed (and read in pieces, so a file without newlines cannot fill memory).
MAX_LINE = 64 * 1024
#: Longest plausible request, in seconds; longer durations are malformed.
MAX_DURATION = 86_400.0
#: Timestamps from 2100-01-01 on are malformed (and before 2000, see request_start).
_LAST = 4_102_444_800.0
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)
OTHER = "<other>"  # routes beyond max_routes, as in the metrics' route label
INVALID = "<invalid>"  # a request line that is not HTTP (a TLS handshake on port 80, say)
UNKNOWN = "<unknown>"  # a custom pattern without a path


class LogError(ValueError):
    """The logs hold nothing to analyse: no line of any file could be parsed."""


class Progress(Protocol):
    """Told how far reading has got: ``done`` of ``total`` bytes of ``path`` (compressed bytes
    for gzip). Called at the start and end of each file and every few thousand lines between."""

    def __call__(self, path: str, done: int, total: int, /) -> None: ...


# --- one line -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogLine:
    """One request as its log line states it.

    :param time: the line's timestamp in Unix seconds.
    :param time_is_start: True when ``time`` is when the request began (Apache's ``%t``), False
        when it ended (nginx, gunicorn).
    :param whole_second: the timestamp has one-second resolution, so ``time`` is the start of
        that second; :func:`analyse` spreads the lines of one second evenly across it.
    :param duration: seconds the request took, as logged.
    :param method: the HTTP method, or ``""`` when the line has none or it is not HTTP.
    :param path: the path, without the query string; ``""`` when the line has none,
        ``<invalid>`` when the request line is not HTTP.
    :param status: the HTTP status, or None if the line has none.
    :param utc_offset: the timestamp's offset from UTC in seconds, if the line states one.
    """

    time: float
    time_is_start: bool
    whole_second: bool
    duration: float
    method: str
    path: str
    status: int | None = None
    utc_offset: int | None = None

    @property
    def start(self) -> float:
        return self.time if self.time_is_start else self.time - self.duration

    @property
    def end(self) -> float:
        return self.time + self.duration if self.time_is_start else self.time


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line that gave no request: ``malformed`` lines are counted and shown, the others
    (requests nginx answered without the app) are only counted."""

    reason: str
    malformed: bool = True


ParseResult = LogLine | Rejected


@dataclass(frozen=True)
class LineFormat:
    """How to read one kind of log line.

    :param name: ``nginx``, ``gunicorn``, ``apache`` or ``custom``.
    :param parse: turns one line (without its newline) into a :class:`LogLine` or a
        :class:`Rejected`; never raises.
    :param includes_queueing: whether the logged duration includes the time the request waited
        for a free worker (True for proxies, False for the app server's own log).
    :param timing: what the logged duration measures, in a sentence.
    """

    name: str
    parse: Callable[[str], ParseResult]
    includes_queueing: bool
    timing: str


_NO_MATCH = Rejected('not a combined/common log line: no [time] "request" status bytes')
_BAD_TIME = Rejected("timestamp not understood or outside 2000-2099")
_BAD_DURATION = Rejected(f"duration not a number from 0 to {MAX_DURATION:.0f} s")

# host ident user [time] "request" status bytes, then anything: referer, agent, timings. The
# time is looked for lazily, so extra fields before it (X-Forwarded-For, vhost) are fine.
_CLF_LINE = re.compile(
    r".*?\[(?P<time>\d{2}/[A-Za-z]{3}/\d{4}:[^\]]{8,40})\] "
    r'"(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}) (?:\d+|-)(?P<rest>.*)'
)
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_CLF_TIME = re.compile(
    r"(\d{2})/([A-Za-z]{3})/(\d{4}):(\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))? ([+-])(\d{2})(\d{2})"
)
_ISO_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
    r"(?:(Z)|([+-])(\d{2}):?(\d{2}))?"
)
_DECIMAL = re.compile(r"\d+\.\d+")
_INTEGER = re.compile(r"\d+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_KEYS = {
    "rt": "rt",
    "request_time": "rt",
    "urt": "urt",
    "upstream_response_time": "urt",
    "msec": "msec",
}
_KEY_VALUE = re.compile(r'(?:^|\s)(rt|request_time|urt|upstream_response_time|msec)=("[^"]*"|\S+)')
_UPSTREAM = r"(?:-|\d+\.\d+)(?:\s*[,:]\s*(?:-|\d+\.\d+))*"
_NGINX_TAIL = re.compile(
    rf"\s(?P<rt>\d+\.\d+)(?:\s+(?P<urt>{_UPSTREAM}))?(?:\s+(?P<msec>\d{{10}}\.\d+))?\s*$"
)
_UPSTREAM_PART = re.compile(r"[,:]")


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


def _request(line: str) -> tuple[str, str]:
    """``GET /a/b?x=1 HTTP/1.1`` -> (``GET``, ``/a/b``); ("", "<invalid>") when it is not HTTP."""
    parts = line.split(" ")
    if len(parts) < 2 or len(parts) > 3 or not parts[0].isalpha() or not parts[0].isupper():
        return "", INVALID
    return parts[0], parts[1].partition("?")[0]


def _seconds(text: str, per_second: float) -> float | None:
    """``text`` in units of which ``per_second`` make a second -> seconds, None if invalid."""
    try:
        value = float(text) / per_second  # a division rounds like the decimal point would
    except ValueError:  # not a number: the caller rejects the line
        return None
    return value if 0.0 <= value <= MAX_DURATION else None


def _upstream(text: str) -> float | None:
    """``$upstream_response_time``: one time, or several joined by ``,``/``:`` (retries and
    internal redirects), summed; None when there is none (``-``: not passed to an upstream)."""
    total, seen = 0.0, False
    for part in _UPSTREAM_PART.split(text):
        part = part.strip()
        if part == "-":
            continue
        if not _DECIMAL.fullmatch(part) and not _INTEGER.fullmatch(part):
            return math.nan
        total += float(part)
        seen = True
    return total if seen else None


def _clf_prefix(line: str) -> tuple[re.Match[str], tuple[float, bool, int]] | Rejected:
    m = _CLF_LINE.match(line)
    if m is None:
        return _NO_MATCH
    when = _clf_time(m["time"])
    if when is None:
        return _BAD_TIME
    return m, when


def _bare_numbers(rest: str) -> list[str]:
    """The unquoted numeric fields after ``status bytes``: referer and agent are left out."""
    text = _QUOTED.sub(" ", rest) if '"' in rest else rest
    return [t for t in text.split() if _NUMBER.fullmatch(t)]


def _line(
    m: re.Match[str],
    when: tuple[float, bool, int],
    duration: float,
    *,
    time: float | None = None,
    time_is_start: bool = False,
) -> LogLine:
    method, path = _request(m["request"])
    whole = when[1] if time is None else False
    return LogLine(
        time=when[0] if time is None else time,
        time_is_start=time_is_start,
        whole_second=whole,
        duration=duration,
        method=method,
        path=path,
        status=int(m["status"]),
        utc_offset=when[2],
    )


def _parse_nginx(line: str) -> ParseResult:
    found = _clf_prefix(line)
    if isinstance(found, Rejected):
        return found
    m, when = found
    rest = m["rest"]
    rt = urt = msec = None
    if "=" in rest:
        for key, value in _KEY_VALUE.findall(rest):
            value = value.strip('"')
            name = _KEYS[key]
            if name == "rt":
                rt = value
            elif name == "urt":
                urt = value
            else:
                msec = value
    if rt is None and urt is None:
        tail = _NGINX_TAIL.search(rest)
        if tail is None:
            return Rejected("no $request_time or $upstream_response_time after the status")
        rt, urt, msec = tail["rt"], tail["urt"], tail["msec"]
    time = None
    if msec is not None:
        exact = _epoch_time(msec)
        if exact is None:
            return _BAD_TIME
        time = exact[0]
    if urt is not None:
        upstream = _upstream(urt)
        if upstream is None:
            return Rejected("not passed to the app ($upstream_response_time is -)", False)
        if not 0.0 <= upstream <= MAX_DURATION:  # NaN fails too
            return _BAD_DURATION
        return _line(m, when, upstream, time=time)
    duration = None if rt is None else _seconds(rt, 1.0)
    if duration is None:
        return _BAD_DURATION
    return _line(m, when, duration, time=time)


def _parse_gunicorn(line: str) -> ParseResult:
    found = _clf_prefix(line)
    if isinstance(found, Rejected):
        return found
    m, when = found
    numbers = _bare_numbers(m["rest"])
    if not numbers:
        return Rejected("no %(D)s or %(L)s after the status")
    last = numbers[-1]
    duration = _seconds(last, 1.0 if "." in last else 1e6)
    if duration is None:
        return _BAD_DURATION
    return _line(m, when, duration)


def _parse_apache(line: str) -> ParseResult:
    found = _clf_prefix(line)
    if isinstance(found, Rejected):
        return found
    m, when = found
    start = micros = None
    for token in _bare_numbers(m["rest"]):
        if "." not in token and len(token) >= 13:  # %{msec}t or %{usec}t: when it began
            exact = _epoch_time(token)
            if exact is None:
                return _BAD_TIME
            start = exact[0]
        else:
            micros = token
    if micros is None:
        return Rejected("no %D after the status")
    duration = _seconds(micros, 1.0 if "." in micros else 1e6)
    if duration is None:
        return _BAD_DURATION
    return _line(m, when, duration, time=start, time_is_start=True)


def _detect(line: str) -> tuple[str, bool] | None:
    """The built-in format a line most likely is, judged by its own evidence only, and whether
    that evidence is certain."""
    m = _CLF_LINE.match(line)
    if m is None:
        return None
    rest = m["rest"]
    if _KEY_VALUE.search(rest):
        return "nginx", True
    numbers = _bare_numbers(rest)
    if not numbers:
        return None
    last = numbers[-1]
    if m["time"][20:21] in (".", ","):
        return "apache", True  # a fraction of a second in [time]: only Apache's %{...}t does it
    if "." in last:
        # nginx prints times as %T.%03M, gunicorn's %(L)s as %d.%06d.
        if _NGINX_TAIL.search(rest) and len(last.split(".")[1]) == 3:
            return "nginx", True
        return ("gunicorn", True) if len(last.split(".")[1]) == 6 else None
    if any(len(t) >= 13 for t in numbers) or '"' not in rest:
        return "apache", True  # an epoch start (%{usec}t), or the common format + %D
    return "gunicorn", False  # combined + an integer: gunicorn's %(D)s, or Apache's %D


_TIMING = {
    "nginx": (
        "nginx logs $upstream_response_time (or $request_time) from when it passed the request "
        "on (or read it) until the response: that includes the time the request waited for a "
        "free worker"
    ),
    "gunicorn": (
        "gunicorn logs %(D)s/%(L)s from when a worker took the request: that excludes the time "
        "it waited for a free worker"
    ),
    "apache": (
        "Apache logs %D from when it read the request: in front of an app server (mod_proxy, "
        "mod_wsgi daemon mode) that includes the time the request waited for a free worker"
    ),
    "custom": (
        "a custom log's durations may or may not include the time a request waited for a free "
        "worker; workermeter treats them as a proxy's, which do"
    ),
}

_BUILTIN = {
    "nginx": LineFormat("nginx", _parse_nginx, True, _TIMING["nginx"]),
    "gunicorn": LineFormat("gunicorn", _parse_gunicorn, False, _TIMING["gunicorn"]),
    "apache": LineFormat("apache", _parse_apache, True, _TIMING["apache"]),
}

# --- custom patterns ------------------------------------------------------------------------

_TIME_RE = (
    r"\d{9,19}(?:\.\d+)?"
    r"|\d{2}/[A-Za-z]{3}/\d{4}:\d{2}:\d{2}:\d{2}(?:[.,]\d+)? [+-]\d{4}"
    r"|\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"
)
_PLACEHOLDERS = {
    "end": rf"(?P<end>{_TIME_RE})",
    "start": rf"(?P<start>{_TIME_RE})",
    "duration": r"(?P<duration>\d+(?:\.\d+)?)",
    "duration:s": r"(?P<duration>\d+(?:\.\d+)?)",
    "duration:ms": r"(?P<duration_ms>\d+(?:\.\d+)?)",
    "duration:us": r"(?P<duration_us>\d+(?:\.\d+)?)",
    "method": r"(?P<method>[A-Za-z]+)",
    "path": r"(?P<path>\S+)",
    "request": r'(?P<request>[^"]*)',
    "status": r"(?P<status>\d{3})",
    "_": r"\S+",
    "*": r".*?",
}
_PLACEHOLDER = re.compile(r"\{([a-z_*]+(?::[a-z]+)?)\}")
_DURATION_UNITS = {"duration": 1.0, "duration_ms": 1e3, "duration_us": 1e6}


def _compile_pattern(pattern: str) -> re.Pattern[str]:
    if "(?P<" in pattern:
        try:
            return re.compile(pattern)
        except re.error as e:
            raise ValueError(f"pattern is not a valid regular expression: {e}") from None
    parts, at = [], 0
    for m in _PLACEHOLDER.finditer(pattern):
        parts.append(_literal(pattern[at : m.start()]))
        regex = _PLACEHOLDERS.get(m[1])
        if regex is None:
            known = ", ".join("{" + k + "}" for k in _PLACEHOLDERS)
            raise ValueError(f"unknown placeholder {m[0]} in pattern; known: {known}")
        parts.append(regex)
        at = m.end()
    parts.append(_literal(pattern[at:]))
    try:
        return re.compile("".join(parts))
    except re.error as e:  # the same placeholder twice
        raise ValueError(f"pattern cannot be used: {e}") from None


def _literal(text: str) -> str:
    return r"\s+".join(re.escape(word) for word in re.split(r"\s+", text))


def _custom_format(pattern: str) -> LineFormat:
    regex = _compile_pattern(pattern)
    groups = set(regex.groupindex)
    durations = groups & set(_DURATION_UNITS)
    if not groups & {"end", "start"} or not (durations or {"end", "start"} <= groups):
        raise ValueError(
            "pattern needs a timestamp group (end or start) and a duration group (duration in "
            "seconds, duration_ms or duration_us), or both start and end; e.g. "
            "'{end} {_} \"{request}\" {status} {duration}'"
        )
    if len(durations) > 1:
        raise ValueError("pattern has more than one duration group; use one")
    unit_name = next(iter(durations), None)
    unit = _DURATION_UNITS[unit_name] if unit_name else 0.0
    anchor = "end" if "end" in groups else "start"

    def parse(line: str) -> ParseResult:
        m = regex.search(line)
        if m is None:
            return Rejected("does not match the pattern")
        values = m.groupdict()
        when = _any_time(values[anchor] or "")
        if when is None:
            return _BAD_TIME
        if unit_name is not None:
            duration = _seconds(values[unit_name] or "", unit)
        else:
            other = _any_time(values["start"] or "")
            duration = None if other is None else when[0] - other[0]
            if duration is not None and not 0.0 <= duration <= MAX_DURATION:
                duration = None
        if duration is None:
            return _BAD_DURATION
        method = values.get("method") or ""
        path = (values.get("path") or "").partition("?")[0]
        if values.get("request") is not None:
            method, path = _request(values["request"])
        status = values.get("status")
        return LogLine(
            time=when[0],
            time_is_start=anchor == "start",
            whole_second=when[1],
            duration=duration,
            method=method.upper(),
            path=path,
            status=int(status) if status and status.isdigit() else None,
            utc_offset=when[2],
        )

    return LineFormat("custom", parse, True, _TIMING["custom"])


def line_format(fmt: str, pattern: str | None = None) -> LineFormat:
    """The :class:`LineFormat` for ``fmt``: one of :data:`FORMATS`, or ``"custom"`` with a pattern.

    A custom ``pattern`` is either a regular expression (recognised by a ``(?P<`` in it) with
    named groups, or a line with ``{placeholders}``, where runs of spaces match any whitespace:

    - ``end`` or ``start``: a timestamp, as a Unix time in s/ms/µs/ns (``1700000000.123``), the
      log format's ``10/Oct/2000:13:55:36 -0700`` or ISO 8601 (no zone: UTC);
    - ``duration`` (seconds), ``duration_ms`` or ``duration_us``, or both ``start`` and ``end``
      (placeholders ``{duration}``, ``{duration:ms}``, ``{duration:us}``);
    - optionally ``method`` and ``path``, or ``request`` (``GET /path HTTP/1.1``), and ``status``;
    - placeholders only: ``{_}`` skips one field, ``{*}`` anything.

    Example: ``'{end} {_} "{request}" {status} {duration:ms}'``.

    :raises ValueError: for an unknown format, a missing or bad pattern.
    """
    if pattern is not None and fmt in ("auto", "custom"):
        return _custom_format(pattern)
    if pattern is not None:
        raise ValueError(f"a pattern is for the custom format, not {fmt!r}")
    if fmt == "custom":
        raise ValueError("the custom format needs a pattern")
    try:
        return _BUILTIN[fmt]
    except KeyError:
        choices = ", ".join(("auto", *FORMATS, "custom"))
        raise ValueError(f"unknown log format {fmt!r}; choose one of {choices}") from None


# --- routes ---------------------------------------------------------------------------------

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


# --- concurrency ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Minute:
    """One clock minute (UTC-aligned, so also aligned in any whole-minute time zone).

    :param start: Unix time of the minute's first second.
    :param arrivals: requests that started in it.
    :param mean_in_flight: requests in flight, averaged over the 60 s.
    :param max_in_flight: the most requests in flight at once (for any positive time).
    :param busy_slots: slots busy, averaged over the 60 s: in flight, capped at the capacity.
    :param seconds_at_capacity: seconds with at least ``capacity`` requests in flight: every
        slot busy. 0 without a capacity.
    """

    start: int
    arrivals: int
    mean_in_flight: float
    max_in_flight: int
    busy_slots: float
    seconds_at_capacity: float

    @property
    def rate(self) -> float:
        """Arrivals per second."""
        return self.arrivals / 60.0

    @property
    def share_at_capacity(self) -> float:
        """Share of the minute with every slot busy."""
        return self.seconds_at_capacity / 60.0


@dataclass(frozen=True)
class Concurrency:
    """Requests in flight over time, rebuilt from each request's ``[start, end)``.

    :param time_at_level: seconds during which exactly ``k`` requests were in flight, at index k,
        from the first start to the last end.
    :param max_in_flight: the most requests in flight at once, for any positive time.
    :param mean_in_flight: requests in flight on average from the first start to the last end.
    :param seconds_at_capacity: seconds with at least ``capacity`` requests in flight.
    :param minutes: every minute with an arrival or a request in flight, in order.
    """

    time_at_level: tuple[float, ...]
    max_in_flight: int
    mean_in_flight: float
    seconds_at_capacity: float
    minutes: tuple[Minute, ...]


def concurrency(
    starts: Sequence[float], ends: Sequence[float], *, capacity: int | None = None
) -> Concurrency:
    """Sweep the sorted start and end events of requests: exact, O(n log n).

    Intervals are half-open: a request ending at t and one starting at t never overlap, and a
    request of duration 0 is never in flight.

    :param starts: each request's start, in Unix seconds.
    :param ends: each request's end, same order, each at or after its start.
    :param capacity: slots (processes x threads); enables ``seconds_at_capacity``.
    :raises ValueError: if the lengths differ, an end precedes its start, or capacity < 1.
    """
    n = len(starts)
    if len(ends) != n:
        raise ValueError(f"starts and ends differ in length ({n} and {len(ends)})")
    if capacity is not None and (isinstance(capacity, bool) or capacity < 1):
        raise ValueError(f"capacity must be an integer >= 1 (slots), got {capacity!r}")
    if any(e < s for s, e in zip(starts, ends, strict=True)):
        raise ValueError("every end must be at or after its start")
    cap = capacity if capacity is not None else n + 1  # never reached without a capacity
    order = sorted(range(n), key=starts.__getitem__)
    # A request of length 0 is never in flight: it arrives, but holds no slot.
    end_times = sorted(e for s, e in zip(starts, ends, strict=True) if e > s)
    m_ends = len(end_times)
    time_at: list[float] = [0.0]
    # minute -> [arrivals, ∫in flight, ∫busy slots, seconds at capacity, max in flight]
    minutes: dict[int, list[float]] = {}

    def minute(m: int) -> list[float]:
        acc = minutes.get(m)
        if acc is None:
            acc = minutes[m] = [0, 0.0, 0.0, 0.0, 0]
        return acc

    def hold(a: float, b: float, level: int) -> None:
        """``level`` requests were in flight during ``[a, b)``, b > a."""
        while len(time_at) <= level:
            time_at.append(0.0)
        time_at[level] += b - a
        if level == 0:
            return  # nothing to add to any minute: skip idle gaps of any length in one step
        busy = min(level, cap)
        m = int(a // 60)
        while True:
            edge = (m + 1) * 60.0
            upto = b if b <= edge else edge
            acc = minute(m)
            d = upto - a
            acc[1] += level * d
            acc[2] += busy * d
            if level >= cap:
                acc[3] += d
            if level > acc[4]:
                acc[4] = level
            if b <= edge:
                return
            a, m = edge, m + 1

    level, j = 0, 0
    now = starts[order[0]] if n else 0.0
    for i in order:
        s = starts[i]
        # Ends first at equal times: [start, end) intervals that touch do not overlap.
        while j < m_ends and end_times[j] <= s:
            t = end_times[j]
            if t > now:
                hold(now, t, level)
                now = t
            level -= 1
            j += 1
        if s > now:
            hold(now, s, level)
            now = s
        minute(int(s // 60))[0] += 1
        if ends[i] > s:
            level += 1
    while j < m_ends:
        t = end_times[j]
        if t > now:
            hold(now, t, level)
            now = t
        level -= 1
        j += 1

    span = (max(ends) - starts[order[0]]) if n else 0.0
    in_flight = sum(k * t for k, t in enumerate(time_at))
    highest = max((k for k, t in enumerate(time_at) if t > 0), default=0)
    return Concurrency(
        time_at_level=tuple(time_at[: highest + 1]),
        max_in_flight=highest,
        mean_in_flight=in_flight / span if span > 0 else 0.0,
        seconds_at_capacity=sum(time_at[cap:]) if capacity is not None else 0.0,
        minutes=tuple(
            Minute(
                start=m * 60,
                arrivals=int(acc[0]),
                mean_in_flight=acc[1] / 60.0,
                max_in_flight=int(acc[4]),
                busy_slots=acc[2] / 60.0,
                seconds_at_capacity=acc[3],
            )
            for m, acc in sorted(minutes.items())
        ),
    )


def fcfs_waits(starts: Sequence[float], ends: Sequence[float], slots: int) -> list[float]:
    """Each request's wait for a slot, rebuilt from a proxy's log: exact for ``slots`` slots
    serving one first-come-first-served queue (gunicorn's sync workers on one listen socket).

    A proxy logs when a request arrived (``start``) and when its response came back (``end``),
    the wait included. Served in arrival order, the k-th arrival (from 0) gets a slot when the
    (k - slots + 1)-th response overall leaves, or at once if that was before it arrived: no
    response before then can be a later arrival's, since those start after it. So its wait is
    ``max(0, sorted(ends)[k - slots] - start)``. A wait longer than the whole logged time is
    impossible with the right ``slots``: it is capped at the logged time, and means more
    requests were served at once than ``slots`` (or not in arrival order).

    :param starts: arrivals, in Unix seconds.
    :param ends: departures, same order.
    :param slots: processes x threads behind the proxy, at least 1.
    :return: waits in seconds, in input order.
    :raises ValueError: if the lengths differ or slots < 1.
    """
    n = len(starts)
    if len(ends) != n:
        raise ValueError(f"starts and ends differ in length ({n} and {len(ends)})")
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ValueError(f"slots must be an integer >= 1, got {slots!r}")
    order = sorted(range(n), key=starts.__getitem__)
    departures = sorted(ends)
    waits = [0.0] * n
    for k in range(slots, n):
        i = order[k]
        free = departures[k - slots]
        if free > starts[i]:
            waits[i] = min(free, ends[i]) - starts[i]
    return waits


# --- reading files --------------------------------------------------------------------------


@dataclass(frozen=True)
class BadLine:
    """A malformed line, kept as an example: where it is, what it says, and what is wrong."""

    path: str
    line_number: int
    text: str
    reason: str


@dataclass(frozen=True)
class FileSummary:
    """What one file held.

    :param format: the format it was read as (chosen per file with ``fmt="auto"``).
    :param lines: non-blank lines; ``requests + malformed + skipped``.
    :param skipped: requests answered without the app (nginx ``$upstream_response_time`` ``-``).
    :param truncated: the file ended early (a gzip file cut short or corrupt); what came before
        was read.
    """

    path: str
    format: str
    lines: int
    requests: int
    malformed: int
    skipped: int
    truncated: bool


class _Reader:
    """Collects the requests of all files into flat arrays, and the routes they belong to."""

    def __init__(self, max_routes: int, progress: Progress | None) -> None:
        self.starts = array("d")
        self.durations = array("d")
        self.routes = array("L")
        self.route_ids: dict[str, int] = {}
        self.route_names: list[str] = []
        self.max_routes = max_routes
        self.progress = progress
        self.examples: list[BadLine] = []
        self.utc_offset: int | None = None
        self.whole_second = False
        self.files: list[FileSummary] = []
        self.templates: dict[str, str] = {}
        self.ambiguous: list[str] = []
        self.overflowed = False

    def route(self, method: str, path: str) -> int:
        """The index of ``METHOD /template`` (or of ``<invalid>``, ``<unknown>``, ``<other>``)."""
        template = self.templates.get(path)
        if template is None:
            template = route_template(path) if path else UNKNOWN
            if len(self.templates) >= 10_000:
                self.templates.clear()  # a bounded cache: paths with ids rarely repeat
            self.templates[path] = template
        key = template
        if method and template.startswith("/"):
            key = f"{method if method in _METHODS else 'OTHER'} {template}"
        index = self.route_ids.get(key)
        if index is None:
            if len(self.route_ids) >= self.max_routes:
                self.overflowed = True
                key = OTHER
                index = self.route_ids.get(key)
            if index is None:
                index = self.route_ids[key] = len(self.route_names)
                self.route_names.append(key)
        return index

    def add(self, start: float, line: LogLine) -> None:
        self.starts.append(start)
        self.durations.append(line.duration)
        self.routes.append(self.route(line.method, line.path))
        if self.utc_offset is None and line.utc_offset is not None:
            self.utc_offset = line.utc_offset

    def add_second(self, lines: list[LogLine]) -> None:
        """Lines stamped with the same whole second: spread them evenly across it, in log
        order (the order they were written in), instead of piling them on one instant."""
        k = len(lines)
        for i, line in enumerate(lines):
            t = line.time + (i + 0.5) / k
            self.add(t if line.time_is_start else t - line.duration, line)

    def read(self, path: str, fmt: LineFormat | None) -> None:
        with ExitStack() as stack:
            raw = stack.enter_context(open(path, "rb"))
            total = os.fstat(raw.fileno()).st_size
            gzipped = raw.read(2) == b"\x1f\x8b"  # whatever the file is called
            raw.seek(0)
            stream: _Source = raw
            if gzipped:
                stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
            if self.progress is not None:
                self.progress(path, 0, total)
            lines = _Lines(stream, raw, partial(self._tell, path, total))
            self._parse(path, lines, fmt)
            if self.progress is not None:
                self.progress(path, total, total)

    def _tell(self, path: str, total: int, done: int) -> None:
        if self.progress is not None:
            self.progress(path, min(done, total), total)

    def _parse(self, path: str, lines: _Lines, fmt: LineFormat | None) -> None:
        head: list[tuple[int, str | None]] = []
        if fmt is None:
            for item in lines:
                head.append(item)
                if len(head) >= DETECT_LINES:
                    break
            fmt, ambiguous = _choose(head)
            if ambiguous:
                self.ambiguous.append(path)
        requests = malformed = skipped = 0
        run: list[LogLine] = []
        for number, text in itertools.chain(head, lines):
            if text is None:
                result: ParseResult = Rejected(f"longer than {MAX_LINE} bytes")
            elif fmt is None:
                result = Rejected("not a line of any known format (nginx, gunicorn, apache)")
            else:
                result = fmt.parse(text)
            if isinstance(result, Rejected):
                if result.malformed:
                    malformed += 1
                    if len(self.examples) < EXAMPLES:
                        shown = (text or "")[:200]
                        self.examples.append(BadLine(path, number, shown, result.reason))
                else:
                    skipped += 1
                continue
            requests += 1
            if result.whole_second:
                self.whole_second = True
                if run and (
                    run[0].time != result.time or run[0].time_is_start is not result.time_is_start
                ):
                    self.add_second(run)
                    run = []
                run.append(result)
            else:
                if run:
                    self.add_second(run)
                    run = []
                self.add(result.start, result)
        if run:
            self.add_second(run)
        self.files.append(
            FileSummary(
                path=path,
                format=fmt.name if fmt is not None else "unknown",
                lines=requests + malformed + skipped,
                requests=requests,
                malformed=malformed,
                skipped=skipped,
                truncated=lines.truncated,
            )
        )


class _Source(Protocol):
    def readline(self, size: int | None = -1, /) -> bytes: ...

    def tell(self) -> int: ...


class _Lines:
    """The non-blank lines of a (possibly gzip) stream as (number, text), text None when too
    long. Stops early, setting ``truncated``, when a gzip stream is cut short or corrupt."""

    def __init__(self, stream: _Source, raw: _Source, tell: Callable[[int], None]) -> None:
        self.stream, self.raw, self.tell = stream, raw, tell
        self.truncated = False
        self._iter = self._generate()

    def __iter__(self) -> Iterator[tuple[int, str | None]]:
        return self._iter  # one pass: the lines read to detect the format are not read again

    def _generate(self) -> Iterator[tuple[int, str | None]]:
        number = 0
        long = False
        readline = partial(self.stream.readline, MAX_LINE)
        while True:
            try:
                data = readline()
            except (EOFError, zlib.error, gzip.BadGzipFile):
                # A rotated log compressed while being written, or not gzip after all: keep
                # what was read and say so.
                self.truncated = True
                return
            if not data:
                return
            complete = data.endswith(b"\n")
            if long:  # the rest of an over-long line, already counted
                long = not complete
                continue
            number += 1
            if number % 8192 == 0:
                self.tell(self.raw.tell())
            if not complete and len(data) >= MAX_LINE:
                long = True
                yield number, None
                continue
            text = data.decode("utf-8", "replace").rstrip("\r\n")
            if text.strip():
                yield number, text


def _choose(head: Sequence[tuple[int, str | None]]) -> tuple[LineFormat | None, bool]:
    """The built-in format most of the first lines are, and whether it might be another."""
    votes = dict.fromkeys(FORMATS, 0)
    certain = set()
    for _, text in head:
        guess = _detect(text) if text is not None else None
        if guess is not None:
            votes[guess[0]] += 1
            if guess[1]:
                certain.add(guess[0])
    best = max(FORMATS, key=lambda name: votes[name])  # ties: the first in FORMATS
    if votes[best] == 0:
        return None, False
    return _BUILTIN[best], best not in certain


# --- the analysis ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteStats:
    """One route (``METHOD /template``): how much worker time it took, and its service time.

    :param requests: its requests.
    :param busy_seconds: the sum of their service times: the worker time they took.
    :param busy_share: its share of all requests' worker time.
    :param mean: mean service time in seconds (the logged time less any rebuilt queue wait);
        ``p50``, ``p95`` its percentiles.
    """

    route: str
    requests: int
    busy_seconds: float
    busy_share: float
    mean: float
    p50: float
    p95: float


@dataclass(frozen=True)
class LogAnalysis:
    """What the logs say about the workers.

    Counts: ``lines`` (non-blank), ``requests``, ``malformed`` (with up to five examples in
    ``bad_lines``), ``skipped`` (not passed to the app); per file in ``files``.

    Time: ``first`` (earliest start) and ``last`` (latest end) in Unix seconds; ``utc_offset``
    is the logs' own time zone in seconds (0 if they state none), for showing clock times;
    ``whole_second`` is True when timestamps had one-second resolution, which makes the
    concurrency an estimate.

    Concurrency: see :class:`Concurrency`; ``capacity`` is the slots given, if any.

    Rates: ``peak_minute`` has the most arrivals; ``peak_rate`` is its arrivals / 60;
    ``typical_rate`` is the median minute's, counting every minute from first to last.

    Service time: each request's logged time, less its queue wait when the waits were rebuilt
    (``waits_rebuilt``: a proxy's log and a capacity, see :func:`fcfs_waits`); ``service_time``
    is the mean, ``service_cv`` its coefficient of variation, ``service_p50``/``service_p95``
    percentiles. With rebuilt waits: ``waited`` requests waited at all, ``wait_mean`` and
    ``wait_p95`` over all requests, and ``wait_capped`` would have waited longer than they took
    (the capacity is too small). ``routes`` are sorted by busy time, most first.

    ``includes_queueing``: the durations were measured by a proxy, so they include the wait for
    a free worker. ``cpu_share`` is the given share, or :data:`DEFAULT_CPU_SHARE` with
    ``cpu_share_assumed``. ``workload`` is ready for :func:`workermeter.capacity.suggest`, or None
    when every duration was 0. ``warnings`` are sentences to show the reader.
    """

    files: tuple[FileSummary, ...]
    format: str
    lines: int
    requests: int
    malformed: int
    skipped: int
    bad_lines: tuple[BadLine, ...]
    first: float
    last: float
    utc_offset: int
    whole_second: bool
    includes_queueing: bool
    capacity: int | None
    concurrency: Concurrency
    peak_minute: Minute
    peak_rate: float
    typical_rate: float
    service_time: float
    service_cv: float
    service_p50: float
    service_p95: float
    waits_rebuilt: bool
    waited: int
    wait_mean: float | None
    wait_p95: float | None
    wait_capped: int
    routes: tuple[RouteStats, ...]
    cpu_share: float
    cpu_share_assumed: bool
    workload: Workload | None
    warnings: tuple[str, ...] = field(default=())

    @property
    def span(self) -> float:
        """Seconds from the first start to the last end."""
        return self.last - self.first

    @property
    def minutes(self) -> tuple[Minute, ...]:
        return self.concurrency.minutes

    @property
    def minutes_at_capacity(self) -> tuple[Minute, ...]:
        """The minutes in which every slot was busy for some time, in order."""
        return tuple(m for m in self.concurrency.minutes if m.seconds_at_capacity > 0)

    def busiest_minutes(self, k: int) -> tuple[Minute, ...]:
        """The ``k`` minutes with the most arrivals, busiest first (earlier first on ties)."""
        ranked = sorted(self.concurrency.minutes, key=lambda m: (-m.arrivals, m.start))
        return tuple(ranked[:k])


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _median_minute(minutes: Sequence[Minute]) -> float:
    """Median arrivals per minute over every minute from the first to the last, idle or not."""
    if not minutes:
        return 0.0
    total = minutes[-1].start // 60 - minutes[0].start // 60 + 1
    counts = sorted(m.arrivals for m in minutes)
    zeros = total - len(counts)

    def at(index: int) -> int:
        return 0 if index < zeros else counts[index - zeros]

    middle = (total - 1) / 2
    return (at(math.floor(middle)) + at(math.ceil(middle))) / 2


def _route_stats(
    names: Sequence[str], routes: Sequence[int], service: Sequence[float]
) -> tuple[RouteStats, ...]:
    busy: list[float] = [0.0] * len(names)
    times: list[list[float]] = [[] for _ in names]
    for route, served in zip(routes, service, strict=True):
        busy[route] += served
        times[route].append(served)
    busy_total = math.fsum(busy) or 1.0
    stats = []
    for name, seconds, route_times in zip(names, busy, times, strict=True):
        route_times.sort()
        stats.append(
            RouteStats(
                route=name,
                requests=len(route_times),
                busy_seconds=seconds,
                busy_share=seconds / busy_total,
                mean=math.fsum(route_times) / len(route_times),
                p50=_quantile(route_times, 0.5),
                p95=_quantile(route_times, 0.95),
            )
        )
    stats.sort(key=lambda r: (-r.busy_seconds, -r.requests, r.route))
    return tuple(stats)


def _real_share(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"cpu_share must be a share from 0 to 1, got {value!r}")
    return float(value)


def analyse(
    paths: Iterable[str | os.PathLike[str]],
    *,
    fmt: str = "auto",
    pattern: str | None = None,
    capacity: int | None = None,
    cpu_share: float | None = None,
    max_routes: int = MAX_ROUTES,
    progress: Progress | None = None,
) -> LogAnalysis:
    """Read access logs (plain or gzip) and rebuild rates, concurrency and service times.

    Example::

        logs = analyse(["/var/log/nginx/access.log", "/var/log/nginx/access.log.1.gz"],
                       capacity=8)
        logs.peak_rate, logs.minutes_at_capacity, suggest(logs.workload, machine)

    :param paths: log files; gzip is recognised by its first bytes, not its name.
    :param fmt: ``"auto"`` (chosen per file from its first lines), one of :data:`FORMATS`, or
        ``"custom"`` with ``pattern``.
    :param pattern: a custom line pattern, see :func:`line_format`; implies ``fmt="custom"``.
    :param capacity: the slots serving these requests (processes x threads, on all the
        machines whose requests the logs hold). Enables the minutes at capacity and, for a
        proxy's log, rebuilds each request's queue wait and takes it off its service time.
    :param cpu_share: the share of service time spent on the CPU, if known (logs cannot tell);
        :data:`DEFAULT_CPU_SHARE` otherwise.
    :param max_routes: distinct routes kept; further ones are counted as ``<other>``.
    :param progress: called with bytes read, for a progress bar.
    :raises ValueError: for a bad option or pattern.
    :raises OSError: if a file cannot be opened or read.
    :raises LogError: if no line of any file is a request.
    """
    line_fmt = None if fmt == "auto" and pattern is None else line_format(fmt, pattern)
    if capacity is not None and (
        isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1
    ):
        raise ValueError(f"capacity must be an integer >= 1 (slots), got {capacity!r}")
    share = _real_share(cpu_share)
    if isinstance(max_routes, bool) or not isinstance(max_routes, int) or max_routes < 1:
        raise ValueError(f"max_routes must be an integer >= 1, got {max_routes!r}")
    names = [os.fspath(p) for p in paths]
    if not names:
        raise ValueError("no log files given")

    reader = _Reader(max_routes, progress)
    for name in names:
        reader.read(name, line_fmt)
    files = tuple(reader.files)
    requests = len(reader.starts)
    if requests == 0:
        raise LogError(
            _nothing(files, reader.examples, None if line_fmt is None else line_fmt.name)
        )

    formats = sorted({f.format for f in files if f.requests})
    queueing = any(_queueing(f, line_fmt) for f in files if f.requests)
    ends = [s + d for s, d in zip(reader.starts, reader.durations, strict=True)]
    conc = concurrency(reader.starts, ends, capacity=capacity)

    warnings: list[str] = []
    service: Sequence[float] = reader.durations
    waits: list[float] | None = None
    capped = 0
    if capacity is not None and queueing:
        waits = fcfs_waits(reader.starts, ends, capacity)
        service = [d - w for d, w in zip(reader.durations, waits, strict=True)]
        capped = sum(1 for d, w in zip(reader.durations, waits, strict=True) if d > 0 and w >= d)
        if capped > requests // 100:
            warnings.append(
                f"{capped:,} requests would have waited for a slot longer than they took: more "
                f"than {capacity} were served at once, so the capacity given is too small (or "
                f"the server does not serve in arrival order); the service time is understated."
            )
    times = sorted(service)
    mean = math.fsum(times) / len(times)
    cv = statistics.pstdev(times, mean) / mean if mean > 0 else 0.0
    routes = _route_stats(reader.route_names, reader.routes, service)
    wait_times = None if waits is None else sorted(waits)

    minutes = conc.minutes
    peak = max(minutes, key=lambda m: (m.arrivals, -m.start))
    typical = _median_minute(minutes) / 60.0
    utilisation = all_busy = None
    if capacity is not None:
        utilisation = min(1.0, max(m.busy_slots for m in minutes) / capacity)
        all_busy = min(1.0, max(m.share_at_capacity for m in minutes))
    workload = None
    if mean > 0:
        workload = Workload(
            peak_rate=peak.rate,
            service_time=mean,
            cpu_share=DEFAULT_CPU_SHARE if share is None else share,
            service_cv=cv,
            typical_rate=min(typical, peak.rate),
            utilisation=utilisation,
            all_busy_share=all_busy,
        )

    analysis = LogAnalysis(
        files=files,
        format=formats[0] if len(formats) == 1 else "mixed",
        lines=sum(f.lines for f in files),
        requests=requests,
        malformed=sum(f.malformed for f in files),
        skipped=sum(f.skipped for f in files),
        bad_lines=tuple(reader.examples),
        first=min(reader.starts),
        last=max(ends),
        utc_offset=reader.utc_offset or 0,
        whole_second=reader.whole_second,
        includes_queueing=queueing,
        capacity=capacity,
        concurrency=conc,
        peak_minute=peak,
        peak_rate=peak.rate,
        typical_rate=typical,
        service_time=mean,
        service_cv=cv,
        service_p50=_quantile(times, 0.5),
        service_p95=_quantile(times, 0.95),
        waits_rebuilt=wait_times is not None,
        waited=0 if waits is None else sum(1 for w in waits if w > 0),
        wait_mean=None if wait_times is None else math.fsum(wait_times) / len(wait_times),
        wait_p95=None if wait_times is None else _quantile(wait_times, 0.95),
        wait_capped=capped,
        routes=routes,
        cpu_share=DEFAULT_CPU_SHARE if share is None else share,
        cpu_share_assumed=share is None,
        workload=workload,
    )
    notes = _warnings(analysis, line_fmt, reader.ambiguous, reader.overflowed)
    return replace(analysis, warnings=(*notes, *warnings))


def _queueing(summary: FileSummary, fmt: LineFormat | None) -> bool:
    if fmt is not None:
        return fmt.includes_queueing
    return _BUILTIN[summary.format].includes_queueing if summary.format in _BUILTIN else True


def _nothing(files: Sequence[FileSummary], examples: Sequence[BadLine], fmt: str | None) -> str:
    names = ", ".join(f.path for f in files)
    if not any(f.lines for f in files):
        return f"no log lines in {names}"
    if all(f.malformed == 0 for f in files):
        return f"no request in {names} was passed to the app (every $upstream_response_time is -)"
    example = ""
    if examples:
        example = f"; first bad line ({examples[0].reason}): {examples[0].text[:120]!r}"
    if fmt is None:
        hint = "a known format: pass --format nginx|gunicorn|apache or a --pattern"
    else:
        hint = f"the {fmt} format: check the format, or pass a --pattern"
    return f"no line of {names} is a request in {hint} (see docs/logs.md){example}"


def _warnings(
    a: LogAnalysis, fmt: LineFormat | None, ambiguous: Sequence[str], overflowed: bool
) -> list[str]:
    out: list[str] = []
    timing = sorted(
        {fmt.timing}
        if fmt is not None
        else {_TIMING.get(f.format, _TIMING["custom"]) for f in a.files if f.requests}
    )
    said = "; ".join(timing)
    if a.includes_queueing:
        if a.waits_rebuilt:
            tail = (
                f"so each request's wait was rebuilt from the order of arrivals and departures "
                f"(one first-come-first-served queue for the {a.capacity} slots) and taken off "
                f"its time: {a.waited:,} of {a.requests:,} requests waited."
            )
        else:
            tail = (
                "so whenever the workers were saturated the logged times are inflated by the "
                "wait; pass --capacity (processes x threads) to rebuild each request's wait and "
                "take it off."
            )
        out.append(f"Logged times include queueing: {said}, {tail}")
    else:
        out.append(
            f"Logged times exclude queueing: {said}. Good for service time, but when every worker "
            f"was busy, requests waited unseen and started later than they arrived, so the rate "
            f"at those times is what the workers managed, not the demand."
        )
    if a.whole_second:
        out.append(
            "Timestamps have one-second resolution: the lines of each second are spread evenly "
            "across it, so concurrency and the minutes at capacity are estimates (rates and "
            "service times are not affected). Log $msec (nginx) or a millisecond time (Apache) "
            "for exact ones."
        )
    for path in ambiguous:
        out.append(
            f"{path} was read as a gunicorn log (%(t)s is when a request ended); an Apache "
            f"log with %D looks the same but its %t is when the request began: if that is what "
            f"it is, pass --format apache."
        )
    if a.malformed:
        out.append(
            f"{a.malformed:,} of {a.lines:,} lines were malformed and left out (examples below)."
        )
    if len({f.format for f in a.files if f.requests}) > 1:
        out.append(
            "The files are in different formats: if a proxy and the app server logged the same "
            "requests, each is counted twice. Analyse one of them."
        )
    if any(f.truncated for f in a.files):
        cut = ", ".join(f.path for f in a.files if f.truncated)
        out.append(
            f"{cut} ended early (a gzip file cut short or corrupt); the lines before were read."
        )
    if overflowed:
        out.append(
            f"More distinct routes than {len(a.routes) - 1}: the rest are counted together as "
            f"{OTHER}."
        )
    if (
        a.capacity is not None
        and not a.includes_queueing
        and a.concurrency.max_in_flight > a.capacity
    ):
        out.append(
            f"Up to {a.concurrency.max_in_flight} requests were in flight at once, more than the "
            f"{a.capacity} slots given: do the logs come from more than one server, or is the "
            f"capacity larger?"
            + (
                " (With one-second timestamps this can also be the estimate.)"
                if a.whole_second
                else ""
            )
        )
    if a.workload is None:
        out.append("Every logged duration is 0 (below the log's resolution): no suggestion.")
    if a.cpu_share_assumed:
        out.append(
            f"Logs do not show CPU time: the suggestion assumes requests spend "
            f"{DEFAULT_CPU_SHARE:.0%} of their time on the CPU. Pass --cpu-share (from "
            f"workermeter's metrics: sampled CPU seconds / sampled duration) for a better "
            f"split of processes and threads."
        )
    return out
