"""Tests for the proxy request-start timestamp parser and the queue-wait verdict."""

from __future__ import annotations

import math
from fractions import Fraction
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workermeter.request_start import (
    EPOCH_2000,
    FUTURE,
    SKEW,
    TOO_OLD,
    UNPARSABLE,
    parse_timestamp,
    queue_wait,
    queue_wait_one,
)

NOW = 1_700_000_000.5

VALID = [
    pytest.param("t=1700000000.123", 1700000000.123, id="nginx-t-msec"),
    pytest.param("1700000000.123", 1700000000.123, id="nginx-bare-msec"),
    pytest.param("t=1700000000123456", 1700000000.123456, id="apache-t-us"),
    pytest.param("1700000000123", 1700000000.123, id="heroku-ms"),
    pytest.param("1700000000123456789", 1700000000.123456789, id="render-ns"),
    pytest.param("t=1700000000000042", 1700000000.000042, id="haproxy-us"),
    pytest.param("t=1700000000", 1700000000.0, id="haproxy-pre-1.9-s"),
    pytest.param("1700000000999", 1700000000.999, id="caddy-ms"),
    pytest.param("t=1700000000123000", 1700000000.123, id="f5-irule"),
    pytest.param("1700000000123456", 1700000000.123456, id="mod_wsgi-5-us"),
    pytest.param("1700000000.123456", 1700000000.123456, id="mod_wsgi-6-s"),
    pytest.param("t=1700000000.5, t=1700000000.25", 1700000000.25, id="comma-later-first"),
    pytest.param("t=1700000000.25, t=1700000000.5", 1700000000.25, id="comma-earlier-first"),
    pytest.param("1700000000500,t=1700000000.25", 1700000000.25, id="comma-mixed-units"),
    pytest.param("t=1700000000.5,abc, 12345", 1700000000.5, id="comma-with-invalid-parts"),
    pytest.param("srv1 t=1700000000.123", 1700000000.123, id="server-token"),
    pytest.param("srv1 t=1700000000.5, srv2 t=1700000000.25", 1700000000.25, id="server-tokens"),
    pytest.param("t=1700000000123456 D=500", 1700000000.123456, id="apache-t-and-D"),
    pytest.param("  t=1700000000.123  ", 1700000000.123, id="whitespace-t"),
    pytest.param("\t1700000000123\n", 1700000000.123, id="whitespace-bare"),
    pytest.param("t= 1700000000.123", 1700000000.123, id="space-after-t"),
    pytest.param("1700000000." + "1" * 50, 1700000000.111111, id="long-decimal"),
    # Unit boundaries: strictly greater than 2000-01-01 in a unit selects that unit.
    pytest.param("946684801", 946684801.0, id="s-lowest"),
    pytest.param("946684800000", 946684800000.0, id="s-highest"),
    pytest.param("946684800001", 946684800.001, id="ms-lowest"),
    pytest.param("946684800000001", 946684800.000001, id="us-lowest"),
    # 946684800000000001 would round to the threshold itself as a float (ulp 128 there).
    pytest.param("946684800000000128", 946684800.000000128, id="ns-lowest"),
]

INVALID = [
    pytest.param("", id="empty"),
    pytest.param("   ", id="blank"),
    pytest.param("t=", id="t-only"),
    pytest.param("abc", id="garbage"),
    pytest.param("srv1", id="token-only"),
    pytest.param("12345", id="too-small"),
    pytest.param("946684800", id="exactly-2000-in-s"),
    pytest.param("-1", id="negative"),
    pytest.param("-1700000000", id="negative-timestamp"),
    pytest.param("t=-1700000000123", id="negative-t"),
    pytest.param("0", id="zero"),
    pytest.param("nan", id="nan"),
    pytest.param("t=nan", id="t-nan"),
    pytest.param("inf", id="inf"),
    pytest.param("-inf", id="minus-inf"),
    pytest.param("1e400", id="overflow-to-inf"),
    pytest.param("1" * 10_000, id="10k-digits"),
    pytest.param("t=t=5", id="double-t"),
    pytest.param("t=t=1700000000", id="double-t-valid-number"),
    pytest.param("t=1700000000.123;", id="trailing-garbage"),
    pytest.param(", ,", id="commas-only"),
    pytest.param("\ud800", id="lone-surrogate"),
]


@pytest.mark.parametrize(("value", "expected"), VALID)
def test_parse_valid(value: str, expected: float) -> None:
    assert parse_timestamp(value) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("value", INVALID)
def test_parse_invalid(value: str) -> None:
    assert parse_timestamp(value) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("t=1700000000.5", (0.0, None), id="now"),
        pytest.param("1700000000.25", (0.25, None), id="quarter-second"),
        pytest.param("1699999400.5", (600.0, None), id="exactly-max-age"),
        pytest.param("1699999400.25", (None, TOO_OLD), id="just-over-max-age"),
        pytest.param("1700000001.5", (0.0, SKEW), id="skew"),
        pytest.param("1700000000.75", (0.0, SKEW), id="skew-small"),
        pytest.param("1700000002.5", (0.0, SKEW), id="exactly-max-skew"),
        pytest.param("1700000002.75", (None, FUTURE), id="just-over-max-skew"),
        pytest.param("abc", (None, UNPARSABLE), id="garbage"),
        pytest.param("", (None, UNPARSABLE), id="empty-header"),
        pytest.param("12345", (None, UNPARSABLE), id="too-small"),
    ],
)
def test_queue_wait_boundaries(value: str, expected: tuple[float | None, str | None]) -> None:
    assert queue_wait((value,), NOW) == expected
    assert queue_wait_one(value, NOW) == expected


@pytest.mark.parametrize(
    ("max_skew", "max_age", "value", "expected"),
    [
        pytest.param(0.0, 600.0, "1700000000.75", (None, FUTURE), id="no-skew-allowed"),
        pytest.param(10.0, 600.0, "1700000010.5", (0.0, SKEW), id="wide-skew"),
        pytest.param(2.0, 0.25, "1700000000.25", (0.25, None), id="exactly-short-max-age"),
        pytest.param(2.0, 0.25, "1700000000", (None, TOO_OLD), id="short-max-age"),
    ],
)
def test_queue_wait_options(
    max_skew: float, max_age: float, value: str, expected: tuple[float | None, str | None]
) -> None:
    assert queue_wait((value,), NOW, max_skew=max_skew, max_age=max_age) == expected
    assert queue_wait_one(value, NOW, max_skew=max_skew, max_age=max_age) == expected


def test_queue_wait_reasons_are_the_constants() -> None:
    # The recorder compares reasons with ``is``.
    assert queue_wait(("1700000001.5",), NOW)[1] is SKEW
    assert queue_wait(("1700000010",), NOW)[1] is FUTURE
    assert queue_wait(("1600000000",), NOW)[1] is TOO_OLD
    assert queue_wait(("x",), NOW)[1] is UNPARSABLE


def test_queue_wait_no_values() -> None:
    assert queue_wait((), NOW) == (None, None)
    assert queue_wait([], NOW) == (None, None)
    assert queue_wait(iter(()), NOW) == (None, None)


def test_queue_wait_earliest_value_wins() -> None:
    values = ["t=1700000000.25", "1700000000000", "1700000000125000"]
    assert queue_wait(values, NOW) == (0.5, None)
    assert queue_wait(reversed(values), NOW) == (0.5, None)
    assert queue_wait((v for v in values), NOW) == (0.5, None)


def test_queue_wait_ignores_invalid_values_when_one_is_valid() -> None:
    assert queue_wait(["garbage", "t=1700000000.25", ""], NOW) == (0.25, None)
    assert queue_wait(["garbage", "nan", ""], NOW) == (None, UNPARSABLE)


def test_queue_wait_earliest_decides_even_if_too_old() -> None:
    # The earliest start decides, even when it is out of range: no fallback to a later one.
    assert queue_wait(["1600000000", "t=1700000000.25"], NOW) == (None, TOO_OLD)


# --- properties ---------------------------------------------------------------------------------

NUMBERISH = st.text(alphabet="0123456789t=.,-+e_ \tnaif\u0661", max_size=60)
ANY_TEXT = st.one_of(st.text(), NUMBERISH)


@given(ANY_TEXT)
def test_parse_never_raises(value: str) -> None:
    result = parse_timestamp(value)
    assert result is None or (math.isfinite(result) and result >= EPOCH_2000)


@given(ANY_TEXT)
def test_fast_and_general_paths_agree(value: str) -> None:
    # A trailing comma adds an empty part and forces the general (splitting) path.
    assert parse_timestamp(value + ",") == parse_timestamp(value)


@given(
    st.lists(ANY_TEXT, max_size=5),
    st.floats(),
    st.floats(),
    st.floats(),
)
def test_queue_wait_never_raises(
    values: list[str], now: float, max_skew: float, max_age: float
) -> None:
    wait, reason = queue_wait(values, now, max_skew=max_skew, max_age=max_age)
    assert reason in (None, SKEW, FUTURE, TOO_OLD, UNPARSABLE)
    if len(values) == 1:
        one = queue_wait_one(values[0], now, max_skew=max_skew, max_age=max_age)
        assert one == (wait, reason)


# An instant as integer nanoseconds, from just after 2000-01-01 to 9e9 s (year 2255).
INSTANT_NS = st.integers(min_value=int(EPOCH_2000 + 1) * 10**9, max_value=9 * 10**18)
UNIT = st.sampled_from(["s", "ms", "us", "ns"])
RESOLUTION = {
    "s": Fraction(1, 10**3),
    "ms": Fraction(1, 10**3),
    "us": Fraction(1, 10**6),
    "ns": Fraction(0),
}


def _format(ns: int, unit: str, prefix: bool) -> str:
    if unit == "s":
        text = f"{ns // 10**9}.{ns // 10**6 % 1000:03d}"
    elif unit == "ms":
        text = str(ns // 10**6)
    elif unit == "us":
        text = str(ns // 10**3)
    else:
        text = str(ns)
    return "t=" + text if prefix else text


@given(INSTANT_NS, UNIT, st.booleans())
def test_parse_round_trip(ns: int, unit: str, prefix: bool) -> None:
    parsed = parse_timestamp(_format(ns, unit, prefix))
    assert parsed is not None
    # Formatting truncates to the unit; the float itself is off by at most half an ulp.
    error = abs(Fraction(parsed) - Fraction(ns, 10**9))
    assert error <= RESOLUTION[unit] + Fraction(math.ulp(parsed))


@given(st.lists(st.tuples(INSTANT_NS, UNIT, st.booleans()), min_size=1, max_size=6), st.randoms())
def test_parse_earliest_wins(stamps: list[tuple[int, str, bool]], random: Random) -> None:
    parts = [_format(*stamp) for stamp in stamps]
    random.shuffle(parts)
    singles = [parse_timestamp(part) for part in parts]
    earliest = min(s for s in singles if s is not None)
    assert parse_timestamp(", ".join(parts)) == earliest
    assert parse_timestamp(", ".join(reversed(parts))) == earliest
    now = earliest + 1.0
    assert queue_wait(parts, now, max_age=math.inf) == queue_wait_one(
        ", ".join(parts), now, max_age=math.inf
    )


@given(
    st.lists(
        st.one_of(
            ANY_TEXT,
            st.floats(min_value=-1000.0, max_value=1000.0).map(lambda d: f"t={NOW + d:.3f}"),
        ),
        max_size=4,
    ),
    st.floats(min_value=0.0, max_value=100.0),
    st.floats(min_value=0.0, max_value=2000.0),
)
def test_queue_wait_is_within_bounds(values: list[str], max_skew: float, max_age: float) -> None:
    wait, reason = queue_wait(values, NOW, max_skew=max_skew, max_age=max_age)
    if wait is not None:
        assert 0.0 <= wait <= max_age
        assert reason in (None, SKEW)
    else:
        assert reason in ((None,) if not values else (FUTURE, TOO_OLD, UNPARSABLE))
