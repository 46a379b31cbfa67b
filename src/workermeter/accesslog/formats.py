"""Turn one access log line into a request: the built-in nginx, gunicorn and Apache formats,
custom patterns, what each format's logged time measures, and choosing a file's format from
its first lines. A line that is not a request is a :class:`Rejected`, never an exception.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .routes import INVALID
from .timestamps import _NUMBER, _any_time, _clf_time, _epoch_time

#: The built-in formats; ``"auto"`` picks one of them per file, ``"custom"`` needs a pattern.
FORMATS = ("nginx", "gunicorn", "apache")
#: Longest plausible request, in seconds; longer durations are malformed.
MAX_DURATION = 86_400.0


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
_DECIMAL = re.compile(r"\d+\.\d+")
_INTEGER = re.compile(r"\d+")
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


#: What each format's durations measure, for the analysis to tell.
TIMING = {
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

#: The formats known by name.
BUILTIN = {
    "nginx": LineFormat("nginx", _parse_nginx, True, TIMING["nginx"]),
    "gunicorn": LineFormat("gunicorn", _parse_gunicorn, False, TIMING["gunicorn"]),
    "apache": LineFormat("apache", _parse_apache, True, TIMING["apache"]),
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

    return LineFormat("custom", parse, True, TIMING["custom"])


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
        return BUILTIN[fmt]
    except KeyError:
        choices = ", ".join(("auto", *FORMATS, "custom"))
        raise ValueError(f"unknown log format {fmt!r}; choose one of {choices}") from None


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
    return BUILTIN[best], best not in certain
