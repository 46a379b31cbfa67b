"""Tests for reading access logs: line parsers, gzip, routes, the concurrency sweep, analysis."""

from __future__ import annotations

import gzip
import heapq
import math
import os
import re
import tempfile
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workermeter.accesslog import (
    DEFAULT_CPU_SHARE,
    FORMATS,
    LineFormat,
    LogAnalysis,
    LogError,
    LogLine,
    Rejected,
    analyse,
    concurrency,
    fcfs_waits,
    line_format,
    route_template,
)
from workermeter.capacity import Machine, suggest

DATA = Path(__file__).resolve().parent / "data" / "logs"
T = 1705323903.0  # 15/Jan/2024:14:05:03 +0100
T0 = 1_700_000_040  # a whole minute (UTC), for exact sweeps
UA = '"-" "Mozilla/5.0 (X11; Linux x86_64) Firefox/121.0"'
HEAD = '203.0.113.9 - - [15/Jan/2024:14:05:03 +0100] "GET /users/12?tab=1 HTTP/1.1" 200 512'
CUSTOM = "{end} {method} {path} {status} took={duration:ms}ms"


def line(
    time: float,
    duration: float,
    *,
    start: bool = False,
    whole: bool = False,
    method: str = "GET",
    path: str = "/users/12",
    status: int | None = 200,
    offset: int | None = 3600,
) -> LogLine:
    return LogLine(time, start, whole, duration, method, path, status, offset)


# --- line parsers ----------------------------------------------------------------------------

VALID = [
    pytest.param(
        "nginx",
        f'{HEAD} {UA} rt=0.212 urt="0.210" msec=1705323903.456',
        line(1705323903.456, 0.21),
        id="nginx-recommended",
    ),
    pytest.param(
        "nginx",
        f"{HEAD} {UA} msec=1705323903.456 urt=0.210 rt=0.212",
        line(1705323903.456, 0.21),
        id="nginx-keys-any-order-unquoted",
    ),
    pytest.param(
        "nginx",
        f'{HEAD} {UA} rt=0.212 urt="0.100, 0.050 : 0.010" msec=1705323903.456',
        line(1705323903.456, 0.16),
        id="nginx-upstream-retries-and-redirect-summed",
    ),
    pytest.param("nginx", f"{HEAD} {UA} rt=0.212", line(T, 0.212, whole=True), id="nginx-rt-only"),
    pytest.param(
        "nginx", f"{HEAD} {UA} 0.212", line(T, 0.212, whole=True), id="combined-plus-request-time"
    ),
    pytest.param(
        "nginx",
        f"{HEAD} {UA} 0.212 0.200",
        line(T, 0.2, whole=True),
        id="combined-plus-request-and-upstream-time",
    ),
    pytest.param(
        "nginx",
        f'{HEAD} {UA} "198.51.100.7" 3.001 1.000, 2.000',
        line(T, 3.0, whole=True),
        id="combined-xff-plus-upstream-list",
    ),
    pytest.param(
        "nginx",
        f"{HEAD} {UA} 0.212 0.200 1705323903.456",
        line(1705323903.456, 0.2),
        id="combined-plus-times-and-msec",
    ),
    pytest.param("nginx", f"{HEAD} 0.212", line(T, 0.212, whole=True), id="common-plus-time"),
    pytest.param(
        "nginx",
        f'{HEAD} "-" "Mozilla 5.0 1.2" 0.123',
        line(T, 0.123, whole=True),
        id="numbers-inside-user-agent-ignored",
    ),
    pytest.param(
        "gunicorn", f"{HEAD} {UA} 212345", line(T, 0.212345, whole=True), id="gunicorn-D-us"
    ),
    pytest.param(
        "gunicorn", f"{HEAD} {UA} 0.212345", line(T, 0.212345, whole=True), id="gunicorn-L-s"
    ),
    pytest.param(
        "gunicorn",
        f"{HEAD} 212345 {UA}",
        line(T, 0.212345, whole=True),
        id="gunicorn-D-before-referer",
    ),
    pytest.param(
        "apache", f"{HEAD} {UA} 54321", line(T, 0.054321, start=True, whole=True), id="apache-D"
    ),
    pytest.param(
        "apache",
        '192.0.2.1 - - [15/Jan/2024:14:05:03.123456 +0100] "POST /login HTTP/1.1" 302 - '
        f"{UA} 54321",
        line(1705323903.123456, 0.054321, start=True, method="POST", path="/login", status=302),
        id="apache-usec-frac-time",
    ),
    pytest.param(
        "apache",
        f"{HEAD} {UA} 54321 1705323903123456",
        line(1705323903.123456, 0.054321, start=True),
        id="apache-D-and-usec-t",
    ),
    pytest.param(
        "apache",
        f"{HEAD} {UA} 54321 1705323903123",
        line(1705323903.123, 0.054321, start=True),
        id="apache-D-and-msec-t",
    ),
    pytest.param(
        "apache",
        '1.2.3.4 10.0.0.1 - - [15/Jan/2024:14:05:03 +0100] "GET /users/12 HTTP/1.1" 200 1 54321',
        line(T, 0.054321, start=True, whole=True),
        id="apache-extra-field-before-time",
    ),
    pytest.param(
        "nginx",
        '203.0.113.9 - - [15/Jan/2024:14:05:03 +0100] "\\x16\\x03\\x01" 400 157 "-" "-" 0.001',
        line(T, 0.001, whole=True, method="", path="<invalid>", status=400),
        id="tls-handshake-on-http-port",
    ),
    pytest.param(
        "nginx",
        '203.0.113.9 - - [15/Jan/2024:14:05:03 -0500] "GET / HTTP/1.1" 200 1 "-" "-" 0.001',
        line(T + 6 * 3600, 0.001, whole=True, path="/", offset=-18000),
        id="negative-utc-offset",
    ),
    pytest.param(
        "custom",
        "2024-01-15T13:05:03.456Z GET /users/12?tab=1 200 took=212.5ms",
        line(1705323903.456, 0.2125, offset=0),
        id="custom-placeholders-iso",
    ),
    pytest.param(
        "custom",
        "2024-01-15 14:05:03.456+01:00 GET /users/12 200 took=212.5ms",
        line(1705323903.456, 0.2125),
        id="custom-placeholders-iso-offset",
    ),
    pytest.param(
        "custom",
        "1705323903456 GET /users/12 200 took=212.5ms",
        line(1705323903.456, 0.2125, offset=None),
        id="custom-placeholders-epoch-ms",
    ),
    pytest.param(
        "custom",
        "15/Jan/2024:14:05:03 +0100 get /users/12 200 took=212ms",
        line(T, 0.212, whole=True),
        id="custom-placeholders-clf-time",
    ),
]


def parser(fmt: str) -> LineFormat:
    return line_format(fmt, CUSTOM if fmt == "custom" else None)


@pytest.mark.parametrize(("fmt", "text", "expected"), VALID)
def test_parses_valid_lines(fmt: str, text: str, expected: LogLine) -> None:
    got = parser(fmt).parse(text)
    assert isinstance(got, LogLine)
    assert got.duration == pytest.approx(expected.duration, abs=1e-9)
    assert got.time == pytest.approx(expected.time, abs=1e-6)
    assert (got.time_is_start, got.whole_second) == (expected.time_is_start, expected.whole_second)
    assert (got.method, got.path, got.status, got.utc_offset) == (
        expected.method,
        expected.path,
        expected.status,
        expected.utc_offset,
    )


def test_start_and_end_follow_the_anchor() -> None:
    ended = line(100.0, 0.25)
    began = line(100.0, 0.25, start=True)
    assert (ended.start, ended.end) == (99.75, 100.0)
    assert (began.start, began.end) == (100.0, 100.25)


INVALID = [
    pytest.param("nginx", "", id="empty"),
    pytest.param("nginx", "garbage", id="garbage"),
    pytest.param("nginx", f"{HEAD} {UA}", id="nginx-no-time"),
    pytest.param("nginx", f"{HEAD} {UA} rt=abc", id="nginx-rt-not-a-number"),
    pytest.param("nginx", f"{HEAD} {UA} rt=0.1 urt=0.1x", id="nginx-urt-garbage"),
    pytest.param("nginx", f"{HEAD} {UA} rt=0.1 msec=12", id="nginx-msec-before-2000"),
    pytest.param("nginx", f"{HEAD} {UA} rt=99999.000", id="nginx-duration-over-a-day"),
    pytest.param("nginx", f'{HEAD} "-" "cut sh', id="nginx-cut-in-user-agent"),
    pytest.param(
        "nginx",
        '1.2.3.4 - - [31/Feb/2024:14:05:03 +0100] "GET / HTTP/1.1" 200 1 0.1',
        id="nginx-31-february",
    ),
    pytest.param(
        "nginx",
        '1.2.3.4 - - [15/Foo/2024:14:05:03 +0100] "GET / HTTP/1.1" 200 1 0.1',
        id="nginx-bad-month",
    ),
    pytest.param(
        "nginx",
        '1.2.3.4 - - [15/Jan/1999:14:05:03 +0100] "GET / HTTP/1.1" 200 1 0.1',
        id="nginx-before-2000",
    ),
    pytest.param(
        "nginx",
        '1.2.3.4 - - [15/Jan/2024:25:05:03 +0100] "GET / HTTP/1.1" 200 1 0.1',
        id="nginx-hour-25",
    ),
    pytest.param(
        "nginx", "2024/01/15 14:05:03 [error] 12#12: *1 connect() failed", id="nginx-error-log"
    ),
    pytest.param("gunicorn", f"{HEAD} {UA}", id="gunicorn-default-format-no-duration"),
    pytest.param(
        "gunicorn",
        "[2024-01-15 14:05:00 +0100] [4242] [INFO] Booting worker with pid: 4242",
        id="gunicorn-error-log",
    ),
    pytest.param("apache", f"{HEAD} {UA}", id="apache-no-D"),
    pytest.param("apache", f"{HEAD} {UA} 5 99999999999999999999", id="apache-epoch-far-future"),
    pytest.param("custom", "2024-01-15T13:05:03Z cache warmed", id="custom-no-match"),
    pytest.param("custom", "2024-13-15T13:05:03Z GET / 200 took=1ms", id="custom-iso-month-13"),
]


@pytest.mark.parametrize(("fmt", "text"), INVALID)
def test_rejects_malformed_lines(fmt: str, text: str) -> None:
    got = parser(fmt).parse(text)
    assert isinstance(got, Rejected)
    assert got.malformed
    assert got.reason


def test_nginx_request_not_passed_to_the_app_is_skipped_not_malformed() -> None:
    got = line_format("nginx").parse(f'{HEAD} {UA} rt=0.000 urt="-" msec=1705323903.456')
    assert got == Rejected("not passed to the app ($upstream_response_time is -)", False)


def test_custom_regex_with_start_and_end() -> None:
    fmt = line_format("custom", r"from=(?P<start>\S+) to=(?P<end>\S+) (?P<request>.+)$")
    got = fmt.parse("from=1705323903.250 to=1705323903.750 GET /a/1 HTTP/1.1")
    assert isinstance(got, LogLine)
    assert (got.start, got.end, got.method, got.path) == (
        1705323903.25,
        1705323903.75,
        "GET",
        "/a/1",
    )


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        pytest.param("{end} {path}", "duration group", id="no-duration"),
        pytest.param("{path} {duration}", "timestamp group", id="no-time"),
        pytest.param("{end} {duration} {nope}", "unknown placeholder {nope}", id="unknown"),
        pytest.param(
            "{end} {duration} {duration:ms}", "more than one duration", id="two-durations"
        ),
        pytest.param("{end} {end} {duration}", "cannot be used", id="same-twice"),
        pytest.param("(?P<end>[", "not a valid regular expression", id="bad-regex"),
    ],
)
def test_bad_patterns_are_value_errors(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        line_format("custom", pattern)


@pytest.mark.parametrize(
    ("fmt", "pattern"),
    [("custom", None), ("nginx", "{end} {duration}"), ("syslog", None)],
)
def test_bad_format_choices(fmt: str, pattern: str | None) -> None:
    with pytest.raises(ValueError):
        line_format(fmt, pattern)


@settings(max_examples=300)
@given(text=st.text(), fmt=st.sampled_from([*FORMATS, "custom"]))
def test_parsers_never_raise(text: str, fmt: str) -> None:
    assert isinstance(parser(fmt).parse(text), LogLine | Rejected)


NEAR_MISS = (
    r'[0-9.: -]{0,30}\[[0-9A-Za-z/:+ .-]{0,40}\] "[A-Z]{0,6} [ -~]{0,40}" '
    r'[0-9]{3} [0-9-]{1,4}[ 0-9.,:"=a-z-]{0,60}'
)


@given(text=st.from_regex(NEAR_MISS, fullmatch=True))
def test_parsers_never_raise_on_near_misses(text: str) -> None:
    for fmt in FORMATS:
        assert isinstance(line_format(fmt).parse(text), LogLine | Rejected)


# --- routes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "template"),
    [
        pytest.param("/users/123/orders/9f86d081884c7d65", "/users/{id}/orders/{hash}", id="brief"),
        pytest.param("/", "/", id="root"),
        pytest.param("/about/", "/about/", id="trailing-slash"),
        pytest.param("/users/123?tab=2", "/users/{id}", id="query-dropped"),
        pytest.param("/a#frag", "/a", id="fragment-dropped"),
        pytest.param(
            "/orders/6F1C2A8E-3B4D-4E5F-8A9B-0C1D2E3F4A5B", "/orders/{uuid}", id="uuid-upper"
        ),
        pytest.param("/blob/e3b0c44298fc1c149afbf4c8996fb924", "/blob/{hash}", id="md5-hex"),
        pytest.param("/commit/a1b2c3d4", "/commit/{hash}", id="short-hex-with-digit"),
        pytest.param("/tags/deadbeef", "/tags/deadbeef", id="hex-word-without-digit-kept"),
        pytest.param("/cafe/face", "/cafe/face", id="short-hex-words-kept"),
        pytest.param("/api/v2/items", "/api/v2/items", id="version-kept"),
        pytest.param("/items/42.json", "/items/{id}.json", id="id-with-extension"),
        pytest.param("/reports/2024-01-15", "/reports/{date}", id="date"),
        pytest.param("/reset/eyJhbGciOiJIUzI1NiJ9xyz123", "/reset/{token}", id="token"),
        pytest.param("/p/" + "how-to-size-workers-" * 3, "/p/{token}", id="long-slug"),
        pytest.param("/p/how-to-size-workers", "/p/how-to-size-workers", id="short-slug-kept"),
        pytest.param("https://example.com/users/5", "/users/{id}", id="absolute-uri"),
        pytest.param("http://example.com", "/", id="absolute-uri-no-path"),
        pytest.param("*", "*", id="options-star"),
        pytest.param("example.com:443", "<invalid>", id="connect-authority"),
        pytest.param("", "<invalid>", id="empty"),
        pytest.param("/" + "a" * 3000, "<invalid>", id="too-long"),
        pytest.param("//double", "//double", id="double-slash-kept"),
    ],
)
def test_route_template(path: str, template: str) -> None:
    assert route_template(path) == template


@given(st.text(max_size=300))
def test_route_template_never_raises(path: str) -> None:
    template = route_template(path)
    assert template.startswith("/") or template in ("*", "<invalid>")


# --- the concurrency sweep ---------------------------------------------------------------------


def test_concurrency_exact_on_a_hand_made_schedule() -> None:
    # [0,10), [5,15), [12,20): 1 for 5 s, 2 for 5 s, 1 for 2 s, 2 for 3 s, 1 for 5 s
    starts = [T0 + 0.0, T0 + 5.0, T0 + 12.0]
    ends = [T0 + 10.0, T0 + 15.0, T0 + 20.0]
    c = concurrency(starts, ends, capacity=2)
    assert c.time_at_level == (0.0, 12.0, 8.0)
    assert c.max_in_flight == 2
    assert c.mean_in_flight == (12 + 2 * 8) / 20
    assert c.seconds_at_capacity == 8.0
    (minute,) = c.minutes
    assert (minute.start, minute.arrivals, minute.max_in_flight) == (T0, 3, 2)
    assert minute.mean_in_flight == 28 / 60
    assert minute.busy_slots == 28 / 60
    assert minute.seconds_at_capacity == 8.0

    one = concurrency(starts, ends, capacity=1)
    assert one.seconds_at_capacity == 20.0
    assert one.minutes[0].busy_slots == 20 / 60


def test_concurrency_is_independent_of_input_order() -> None:
    starts = [T0 + 12.0, T0 + 0.0, T0 + 5.0]
    ends = [T0 + 20.0, T0 + 10.0, T0 + 15.0]
    c = concurrency(starts, ends, capacity=1)
    assert c.time_at_level == (0.0, 12.0, 8.0)
    assert c.minutes[0].arrivals == 3


def test_concurrency_half_open_intervals_and_idle_gaps() -> None:
    # back to back, a zero-length request, then 30 s of nothing
    starts = [T0 + 0.0, T0 + 10.0, T0 + 15.0, T0 + 50.0]
    ends = [T0 + 10.0, T0 + 20.0, T0 + 15.0, T0 + 55.0]
    c = concurrency(starts, ends, capacity=1)
    assert c.time_at_level == (30.0, 25.0)
    assert c.max_in_flight == 1
    assert c.minutes[0].arrivals == 4  # the zero-length one arrived, but held no slot
    assert c.seconds_at_capacity == 25.0


def test_concurrency_splits_at_minute_boundaries() -> None:
    c = concurrency([T0 + 50.0, T0 + 100.0], [T0 + 130.0, T0 + 110.0], capacity=2)
    assert [(m.start - T0, m.arrivals) for m in c.minutes] == [(0, 1), (60, 1), (120, 0)]
    assert [m.mean_in_flight * 60 for m in c.minutes] == [10.0, 70.0, 10.0]
    assert [m.max_in_flight for m in c.minutes] == [1, 2, 1]
    assert [m.seconds_at_capacity for m in c.minutes] == [0.0, 10.0, 0.0]


def test_concurrency_without_capacity_and_empty() -> None:
    c = concurrency([T0 + 1.0, T0 + 2.0], [T0 + 3.0, T0 + 4.0])
    assert (c.max_in_flight, c.seconds_at_capacity) == (2, 0.0)
    empty = concurrency([], [])
    assert (empty.max_in_flight, empty.minutes, empty.time_at_level) == (0, (), (0.0,))


@pytest.mark.parametrize(
    ("starts", "ends", "capacity"),
    [
        pytest.param([1.0], [0.5], None, id="end-before-start"),
        pytest.param([1.0], [], None, id="lengths-differ"),
        pytest.param([1.0], [2.0], 0, id="no-capacity"),
    ],
)
def test_concurrency_rejects_bad_input(
    starts: list[float], ends: list[float], capacity: int | None
) -> None:
    with pytest.raises(ValueError):
        concurrency(starts, ends, capacity=capacity)


@given(
    st.lists(st.tuples(st.integers(0, 600), st.integers(0, 120)), min_size=1, max_size=60),
    st.integers(1, 5),
)
def test_concurrency_matches_brute_force(intervals: list[tuple[int, int]], capacity: int) -> None:
    starts = [float(T0 + s) for s, _ in intervals]
    ends = [float(T0 + s + d) for s, d in intervals]
    c = concurrency(starts, ends, capacity=capacity)
    # brute force on whole seconds (every event is on one)
    levels = Counter(
        sum(1 for s, e in zip(starts, ends, strict=True) if s <= T0 + t < e)
        for t in range(int(min(starts)) - T0, int(max(ends)) - T0)
    )
    assert c.time_at_level == tuple(float(levels[k]) for k in range(len(c.time_at_level)))
    assert c.max_in_flight == max(levels, default=0)
    assert c.seconds_at_capacity == sum(n for k, n in levels.items() if k >= capacity)
    assert sum(m.arrivals for m in c.minutes) == len(intervals)


def fcfs_queue(
    arrivals: list[float], services: list[float], slots: int
) -> tuple[list[float], list[float]]:
    """Serve requests in arrival order on ``slots`` slots: each one's departure and wait."""
    free = [float("-inf")] * slots
    departures, waits = [], []
    for a, s in sorted(zip(arrivals, services, strict=True)):
        begin = max(a, heapq.heappop(free))
        heapq.heappush(free, begin + s)
        departures.append(begin + s)
        waits.append(begin - a)
    return departures, waits


def test_fcfs_waits_on_a_hand_made_schedule() -> None:
    # two slots; arrivals at 0, 1, 2, 3 taking 10, 10, 1, 1: the third waits for the first
    starts = [0.0, 1.0, 2.0, 3.0]
    ends = [10.0, 11.0, 11.0, 12.0]  # 2 waited 8 (served 10..11), 3 waited 8 (11..12)
    assert fcfs_waits(starts, ends, 2) == [0.0, 0.0, 8.0, 8.0]
    assert fcfs_waits(starts, ends, 4) == [0.0, 0.0, 0.0, 0.0]
    # one slot: every request waits for the one before; input order does not matter
    assert fcfs_waits([5.0, 0.0], [8.0, 4.0], 1) == [0.0, 0.0]
    assert fcfs_waits([0.0, 1.0], [4.0, 7.0], 1) == [0.0, 3.0]


def test_fcfs_waits_are_capped_when_the_capacity_is_too_small() -> None:
    # three at once on "two" slots: the third cannot have waited until 10 and left at 3
    assert fcfs_waits([0.0, 1.0, 2.0], [10.0, 10.0, 3.0], 2) == [0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("starts", "ends", "slots"),
    [([1.0], [], 1), ([1.0], [2.0], 0), ([1.0], [2.0], True)],
)
def test_fcfs_waits_rejects_bad_input(starts: list[float], ends: list[float], slots: int) -> None:
    with pytest.raises(ValueError):
        fcfs_waits(starts, ends, slots)


@given(
    st.lists(
        st.tuples(st.floats(0, 600, allow_nan=False), st.floats(0.001, 60, allow_nan=False)),
        min_size=1,
        max_size=80,
        unique_by=lambda x: x[0],
    ),
    st.integers(1, 4),
)
def test_fcfs_waits_rebuild_a_simulated_queue(
    requests: list[tuple[float, float]], slots: int
) -> None:
    arrivals = [T0 + a for a, _ in sorted(requests)]
    services = [s for _, s in sorted(requests)]
    departures, waits = fcfs_queue(arrivals, services, slots)
    rebuilt = fcfs_waits(arrivals, departures, slots)
    assert rebuilt == pytest.approx(waits, abs=1e-6)


# --- reading files -----------------------------------------------------------------------------


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{x}\n" for x in lines))
    return path


def nginx_line(end: float, duration: float, path: str = "/users/12", status: int = 200) -> str:
    when = datetime.fromtimestamp(end, timezone(timedelta(hours=1)))
    stamp = when.strftime("%d/%b/%Y:%H:%M:%S +0100")
    return (
        f'198.51.100.2 - - [{stamp}] "GET {path} HTTP/1.1" {status} 512 {UA} '
        f'rt={duration + 0.001:.3f} urt="{duration:.3f}" msec={end:.3f}'
    )


CUSTOM_LOG = "{end} INFO request method={method} path={path} status={status} took={duration:ms}ms"
SERVICE = 10.24 / 20  # the true mean service time of the 20 requests in tests/data/logs


@pytest.mark.parametrize(
    ("name", "fmt", "pattern", "service", "tolerance"),
    [
        pytest.param("nginx-workermeter.log", "nginx", None, SERVICE, 1e-6, id="nginx"),
        # one-second timestamps: the arrival order, and so the rebuilt waits, are estimates
        pytest.param("nginx-combined.log", "nginx", None, SERVICE, 0.04, id="nginx-combined"),
        pytest.param("gunicorn.log", "gunicorn", None, SERVICE - 0.0008, 1e-6, id="gunicorn"),
        # Apache's %D is 0.35 ms longer; for the 2 that waited, their wait absorbs it
        pytest.param("apache.log", "apache", None, SERVICE + 0.00035 * 18 / 20, 1e-6, id="apache"),
        pytest.param("custom.log", "custom", CUSTOM_LOG, SERVICE, 1e-6, id="custom"),
    ],
)
def test_sample_files_agree(
    name: str, fmt: str, pattern: str | None, service: float, tolerance: float
) -> None:
    """The samples log the same 20 requests, served first come first served by 2 slots: the
    proxies' logs (nginx, Apache, custom) with the wait, gunicorn's without. With the waits
    rebuilt every reader finds the same service time."""
    a = analyse([DATA / name], pattern=pattern, capacity=2)
    assert (a.format, a.requests) == (fmt, 20)
    assert [(m.start, m.arrivals) for m in a.minutes] == [
        (1705323840, 4),  # 14:04 +0100
        (1705323900, 13),
        (1705323960, 3),
    ]
    assert a.peak_minute.start == 1705323900
    assert a.peak_rate == 13 / 60
    assert a.typical_rate == 4 / 60
    assert a.service_time == pytest.approx(service, abs=tolerance)
    assert a.waits_rebuilt == (fmt != "gunicorn")
    assert a.wait_capped == 0
    # the proxies saw the 2 waiting requests in flight too; gunicorn only what it served
    assert a.concurrency.max_in_flight == (2 if fmt == "gunicorn" else 3)
    assert a.utc_offset == (0 if fmt == "custom" else 3600)
    assert [r.route for r in a.routes[:3]] == [
        "GET /reports/{date}",
        "GET /users/{id}",
        "GET /orders/{uuid}",
    ]
    assert a.routes[1].requests == 8


def test_exact_timestamps_give_exact_minutes_at_capacity() -> None:
    a = analyse([DATA / "nginx-workermeter.log"], capacity=2)
    assert not a.whole_second
    (full,) = a.minutes_at_capacity
    assert full.start == 1705323900
    # after 14:04:50: [11.2, 12.5) + [12.6, 12.8) + [20.1, 20.15) + [40.5, 42.5), by hand
    assert full.seconds_at_capacity == pytest.approx(3.55, abs=1e-5)
    assert a.concurrency.time_at_level[3] == pytest.approx(0.7 + 1.0, abs=1e-5)
    assert (a.requests, a.malformed, a.skipped, a.lines) == (20, 2, 1, 23)
    assert [b.line_number for b in a.bad_lines] == [9, 16]
    # /users/7 waited 0.7 s for /orders/{uuid} to finish, /users/11 1.0 s for a report
    assert (a.waited, a.wait_capped) == (2, 0)
    assert a.wait_mean == pytest.approx(1.7 / 20, abs=1e-6)
    users = {r.route: r for r in a.routes}["GET /users/{id}"]
    assert users.busy_seconds == pytest.approx(0.08 + 0.1 + 0.8 + 0.2 + 0.15 * 2 + 0.5 + 0.11)
    assert a.includes_queueing
    assert any("include queueing" in w and "2 of 20 requests waited" in w for w in a.warnings)


def test_too_small_a_capacity_is_said(tmp_path: Path) -> None:
    a = analyse([DATA / "nginx-workermeter.log"], capacity=1)
    assert a.wait_capped > 0
    assert any("the capacity given is too small" in w for w in a.warnings)


def test_whole_second_lines_are_spread_across_their_second(tmp_path: Path) -> None:
    head = '127.0.0.1 - - [15/Jan/2024:14:05:03 +0100] "GET / HTTP/1.0" 200 1 "-" "-"'
    log = write(tmp_path / "g.log", [f"{head} 250000", f"{head} 250000"])
    a = analyse([log], fmt="gunicorn")
    # ends at 03.25 and 03.75, so starts at 03.00 and 03.50: one after the other
    assert a.whole_second
    assert a.first == T
    assert a.concurrency.max_in_flight == 1
    assert a.concurrency.time_at_level == (0.25, 0.5)
    assert any("one-second resolution" in w for w in a.warnings)


def test_apache_time_is_the_start(tmp_path: Path) -> None:
    head = '1.2.3.4 - - [15/Jan/2024:14:05:03.500000 +0100] "GET / HTTP/1.1" 200 1 "-" "-"'
    a = analyse([write(tmp_path / "a.log", [f"{head} 250000"])])
    assert a.format == "apache"
    assert (a.first, a.last) == (T + 0.5, T + 0.75)


def test_gzip_is_detected_by_its_bytes(tmp_path: Path) -> None:
    plain = (DATA / "nginx-workermeter.log").read_bytes()
    packed = tmp_path / "access.log.1"  # no .gz: the magic bytes say it
    packed.write_bytes(gzip.compress(plain))
    a = analyse([packed], capacity=2)
    b = analyse([DATA / "nginx-workermeter.log"], capacity=2)
    assert (a.requests, a.malformed, a.peak_rate, a.service_time) == (
        b.requests,
        b.malformed,
        b.peak_rate,
        b.service_time,
    )
    assert not a.files[0].truncated


def test_gzip_with_several_members(tmp_path: Path) -> None:
    lines = (DATA / "nginx-workermeter.log").read_bytes().splitlines(keepends=True)
    packed = tmp_path / "access.log.gz"
    packed.write_bytes(gzip.compress(b"".join(lines[:10])) + gzip.compress(b"".join(lines[10:])))
    assert analyse([packed]).requests == 20


def test_truncated_gzip_keeps_what_came_before(tmp_path: Path) -> None:
    lines = [nginx_line(T + i, 0.1) for i in range(2000)]
    data = gzip.compress("".join(f"{x}\n" for x in lines).encode())
    cut = tmp_path / "cut.log.gz"
    cut.write_bytes(data[: len(data) // 2])
    a = analyse([cut])
    assert a.files[0].truncated
    assert 0 < a.requests < 2000
    assert any("ended early" in w for w in a.warnings)


def test_malformed_lines_are_counted_and_a_few_shown(tmp_path: Path) -> None:
    good = [nginx_line(T + i, 0.1) for i in range(10)]
    bad = [f"junk {i}" for i in range(8)]
    log = write(
        tmp_path / "mixed.log",
        [x for pair in zip(good, bad, strict=False) for x in pair] + good[8:] + ["", "   "],
    )
    a = analyse([log])
    assert (a.requests, a.malformed, a.lines) == (10, 8, 18)  # blank lines are not counted
    assert len(a.bad_lines) == 5
    assert [b.line_number for b in a.bad_lines] == [2, 4, 6, 8, 10]
    assert a.bad_lines[0].text == "junk 0"
    assert "8 of 18 lines were malformed" in "\n".join(a.warnings)


def test_over_long_line_is_malformed_and_skipped(tmp_path: Path) -> None:
    log = tmp_path / "long.log"
    log.write_text(nginx_line(T, 0.1) + "\n" + "x" * 200_000 + "\n" + nginx_line(T + 1, 0.1) + "\n")
    a = analyse([log])
    assert (a.requests, a.malformed) == (2, 1)
    assert a.bad_lines[0].line_number == 2
    assert "longer than" in a.bad_lines[0].reason


def test_binary_garbage_is_malformed_not_fatal(tmp_path: Path) -> None:
    log = tmp_path / "bin.log"
    log.write_bytes(nginx_line(T, 0.1).encode() + b"\n\xff\xfe\x00\x80garbage\n")
    a = analyse([log])
    assert (a.requests, a.malformed) == (1, 1)


@settings(max_examples=60)
@given(
    st.lists(st.one_of(st.binary(max_size=300), st.just(nginx_line(T, 0.1).encode())), max_size=8)
)
def test_any_bytes_are_analysed_or_refused_cleanly(chunks: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "x.log"
        log.write_bytes(b"\n".join(chunks))
        try:
            a = analyse([log], capacity=2)
        except LogError:
            return
        assert a.requests + a.malformed + a.skipped == a.lines


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("", "no log lines", id="empty"),
        pytest.param("hello\nworld\n", "known format", id="prose"),
        pytest.param(
            f'{HEAD} {UA} rt=0.000 urt="-" msec=1705323903.456\n', "passed to", id="static"
        ),
    ],
)
def test_nothing_to_analyse(tmp_path: Path, content: str, message: str) -> None:
    log = tmp_path / "x.log"
    log.write_text(content)
    with pytest.raises(LogError, match=message):
        analyse([log])


def test_nothing_in_the_given_format(tmp_path: Path) -> None:
    with pytest.raises(LogError, match="the apache format"):
        analyse([write(tmp_path / "x.log", [nginx_line(T, 0.1)[:-40]])], fmt="apache")


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"capacity": 0}, id="capacity-0"),
        pytest.param({"capacity": True}, id="capacity-bool"),
        pytest.param({"cpu_share": 1.5}, id="cpu-share"),
        pytest.param({"max_routes": 0}, id="max-routes"),
        pytest.param({"fmt": "custom"}, id="custom-without-pattern"),
        pytest.param({"fmt": "iis"}, id="unknown-format"),
    ],
)
def test_bad_options_are_value_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        analyse([DATA / "nginx-workermeter.log"], **kwargs)  # type: ignore[arg-type]


def test_no_files_and_missing_files() -> None:
    with pytest.raises(ValueError, match="no log files"):
        analyse([])
    with pytest.raises(FileNotFoundError):
        analyse([DATA / "missing.log"])


def test_routes_beyond_the_limit_are_other(tmp_path: Path) -> None:
    log = write(
        tmp_path / "r.log",
        [nginx_line(T + i, 0.1, path=f"/page-{c}") for i, c in enumerate("abcdef")],
    )
    a = analyse([log], max_routes=3)
    assert {r.route: r.requests for r in a.routes} == {
        "GET /page-a": 1,
        "GET /page-b": 1,
        "GET /page-c": 1,
        "<other>": 3,
    }
    assert any("<other>" in w for w in a.warnings)


def test_route_keys_without_a_method_or_a_path(tmp_path: Path) -> None:
    log = write(tmp_path / "c.log", ["1705323903.5 0.1 /users/1", "1705323904.5 0.2 /users/2"])
    assert [r.route for r in analyse([log], pattern="{end} {duration} {path}").routes] == [
        "/users/{id}"
    ]
    assert [r.route for r in analyse([log], pattern="{end} {duration}").routes] == ["<unknown>"]
    tls = '203.0.113.9 - - [15/Jan/2024:14:05:03 +0100] "\\x16\\x03\\x01" 400 157 "-" "-" 0.001'
    odd = '203.0.113.9 - - [15/Jan/2024:14:05:03 +0100] "PROPFIND /dav/7 HTTP/1.1" 207 1 0.002'
    both = analyse([write(tmp_path / "n.log", [tls, odd])])
    assert sorted(r.route for r in both.routes) == ["<invalid>", "OTHER /dav/{id}"]


def test_mixed_formats_warn_of_double_counting() -> None:
    a = analyse([DATA / "nginx-workermeter.log", DATA / "gunicorn.log"])
    assert a.format == "mixed"
    assert a.requests == 40
    assert any("different formats" in w for w in a.warnings)
    assert [f.format for f in a.files] == ["nginx", "gunicorn"]


def test_gunicorn_or_apache_ambiguity_is_said(tmp_path: Path) -> None:
    a = analyse([DATA / "gunicorn.log"])
    assert any("--format apache" in w for w in a.warnings)
    assert not a.includes_queueing
    assert any("exclude queueing" in w for w in a.warnings)


def test_progress_is_reported() -> None:
    calls: list[tuple[str, int, int]] = []
    path = str(DATA / "apache.log")
    analyse([path], progress=lambda p, done, total: calls.append((p, done, total)))
    size = (DATA / "apache.log").stat().st_size
    assert calls[0] == (path, 0, size)
    assert calls[-1] == (path, size, size)


# --- a known workload ----------------------------------------------------------------------------


def poisson_log(
    tmp_path: Path, *, rate: float, service: float, slots: int, n: int, seed: int = 1
) -> tuple[Path, list[float], float]:
    """n requests arriving at ``rate``/s, exponential service times, ``slots`` FCFS servers; logged
    as nginx would (duration = wait + service, ms resolution). Returns the arrivals and the mean
    of the true service times."""
    rng = Random(seed)
    free = [0.0] * slots
    t = float(T0)
    rows, arrivals, total = [], [], 0.0
    for _ in range(n):
        t += rng.expovariate(rate)
        s = rng.expovariate(1 / service)
        begin = max(t, heapq.heappop(free))
        heapq.heappush(free, begin + s)
        arrivals.append(t)
        total += s
        rows.append((begin + s, begin + s - t))
    rows.sort()
    log = write(tmp_path / "poisson.log", [nginx_line(end, d) for end, d in rows])
    return log, arrivals, total / n


def test_poisson_workload_is_recovered(tmp_path: Path) -> None:
    log, arrivals, true_mean = poisson_log(tmp_path, rate=15, service=0.2, slots=4, n=20_000)
    a = analyse([log], capacity=4)
    per_minute = Counter(int(t // 60) for t in arrivals)
    assert a.peak_rate == pytest.approx(max(per_minute.values()) / 60, rel=0.01)
    assert a.typical_rate == pytest.approx(15, rel=0.03)
    # the queue-free requests give the service time; all requests would include the wait
    assert a.service_time == pytest.approx(true_mean, rel=0.03)
    assert a.service_time == pytest.approx(0.2, rel=0.03)
    assert a.service_cv == pytest.approx(1.0, rel=0.05)
    naive = analyse([log])
    assert naive.service_time > 1.3 * a.service_time  # M/M/4 at 75 %: mean wait ~0.1 s
    # in flight (waiting or served): Little's law, λ·(S + W)
    assert a.concurrency.mean_in_flight == pytest.approx(15 * naive.service_time, rel=0.03)
    # all four busy: Erlang C(4, 3) = 0.509 of the time
    assert a.concurrency.seconds_at_capacity / a.span == pytest.approx(0.509, rel=0.05)
    w = a.workload
    assert w is not None
    assert (w.peak_rate, w.typical_rate) == (a.peak_rate, a.typical_rate)
    assert w.cpu_share == DEFAULT_CPU_SHARE and a.cpu_share_assumed
    # the busiest minute's busy slots: about its rate x S / 4
    assert w.utilisation == pytest.approx(a.peak_rate * 0.2 / 4, rel=0.05)
    answer = suggest(w, Machine(cores=4, memory_total=8 << 30, process_rss=150 << 20))
    assert answer.slots >= 4


def test_saturated_workers_make_the_suggestion_a_lower_bound(tmp_path: Path) -> None:
    log, _, _ = poisson_log(tmp_path, rate=15, service=0.2, slots=3, n=3000)  # 100 % busy
    a = analyse([log], capacity=3, cpu_share=0.2)
    assert a.workload is not None
    assert a.workload.all_busy_share is not None and a.workload.all_busy_share >= 0.9
    assert not a.cpu_share_assumed and a.workload.cpu_share == 0.2
    machine = Machine(cores=4, memory_total=8 << 30, process_rss=150 << 20, processes=3)
    assert suggest(a.workload, machine).lower_bound


def test_zero_durations_give_no_workload(tmp_path: Path) -> None:
    a = analyse([write(tmp_path / "z.log", [nginx_line(T + i, 0.0) for i in range(5)])])
    assert a.workload is None
    assert a.service_time == 0.0
    assert any("no suggestion" in w for w in a.warnings)


def test_analysis_helpers() -> None:
    a: LogAnalysis = analyse([DATA / "nginx-workermeter.log"], capacity=2)
    assert a.span == a.last - a.first
    assert [m.arrivals for m in a.busiest_minutes(2)] == [13, 4]
    assert a.peak_minute.rate == 13 / 60
    assert a.peak_minute.share_at_capacity == pytest.approx(3.55 / 60, abs=1e-6)
    assert math.isclose(sum(r.busy_share for r in a.routes), 1.0)


# --- real servers: the documented configuration lines --------------------------------------------

# The lines docs/logs.md tells people to use; a test below checks the doc says the same.
GUNICORN_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)s'
NGINX_FORMAT = (
    "log_format workermeter '$remote_addr - $remote_user [$time_local] \"$request\" '\n"
    '                       \'$status $body_bytes_sent "$http_referer" "$http_user_agent" \'\n'
    "                       'rt=$request_time urt=\"$upstream_response_time\" msec=$msec';"
)
NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    {log_format}
    access_log {prefix}/access.log workermeter;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://127.0.0.1:{upstream}; }}
    }}
}}
"""


def test_documented_lines_are_in_the_docs() -> None:
    doc = " ".join(
        (Path(__file__).resolve().parent.parent / "docs" / "logs.md").read_text().split()
    )
    assert " ".join(NGINX_FORMAT.split()) in doc
    assert f"--access-logformat '{GUNICORN_FORMAT}'" in doc


def test_real_gunicorn_behind_nginx(tmp_path: Path) -> None:
    """gunicorn with 2 sync workers behind nginx, both logging as docs/logs.md says, 6 clients
    at once: the proxy's times include the wait, and the requests that found a free worker still
    give the 100 ms the handler takes."""
    from servers import drive, find_nginx, gunicorn, launch, server_env

    binary = find_nginx()
    assert binary, "nginx is not installed: `apt-get install nginx` (scripts/test.sh does it)"
    app_log = tmp_path / "gunicorn-access.log"
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    user = "user root;" if os.geteuid() == 0 else ""  # root's nginx worker is "nobody" otherwise

    def nginx_argv(port: int) -> list[str]:
        conf = prefix / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                prefix=prefix, port=port, upstream=app.port, user=user, log_format=NGINX_FORMAT
            )
        )
        return [binary, "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")]

    extra = ["--access-logfile", str(app_log), "--access-logformat", GUNICORN_FORMAT]
    with gunicorn(tmp_path, workers=2, store=tmp_path / "store", extra=extra) as app:
        proxy = launch("nginx", nginx_argv, log=prefix / "out.log", env=server_env(None))
        try:
            statuses = drive(proxy.url, ["/sleep?ms=100"] * 36, clients=6)
        finally:
            proxy.stop()
    assert statuses == [200] * 36

    proxied = analyse([prefix / "access.log"], capacity=2)
    served = analyse([app_log], capacity=2)
    naive = analyse([prefix / "access.log"])
    assert (proxied.format, served.format) == ("nginx", "gunicorn")
    assert proxied.includes_queueing and not served.includes_queueing
    sleep = {r.route: r for r in proxied.routes}["GET /sleep"]
    app_sleep = {r.route: r for r in served.routes}["GET /sleep"]
    naive_sleep = {r.route: r for r in naive.routes}["GET /sleep"]
    assert sleep.requests == app_sleep.requests == 36
    assert app_sleep.p50 is not None and 0.099 <= app_sleep.p50 <= 0.15
    # 6 clients on 2 workers: most requests waited about two service times at nginx...
    assert naive_sleep.p50 is not None and naive_sleep.p50 >= 0.2
    # ...and those that found a worker free show the handler's own time.
    assert sleep.p50 is not None and 0.099 <= sleep.p50 <= 0.15
    assert proxied.waited >= 18
    assert proxied.wait_mean is not None and proxied.wait_mean >= 0.1
    assert proxied.minutes_at_capacity
    assert proxied.concurrency.max_in_flight >= 5
