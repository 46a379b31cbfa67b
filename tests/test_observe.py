"""observe: scrapes and Prometheus answers into the capacity model's inputs, with exact numbers."""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Callable

import pytest

from workermeter import observe
from workermeter.capacity import MIB, Machine, suggest

# Two scrapes 10 s apart. Between them: /a served 200 requests of 40-50 ms (9 s in all), /b 100
# of 100-125 ms (11 s); 2 workers with 2 threads each were busy 12 s and 8 s; 300 queue waits.
BEFORE = """\
# HELP workermeter_requests_total Requests completed.
# TYPE workermeter_requests_total counter
workermeter_requests_total{method="GET",route="/a",status="2xx"} 1000.0
workermeter_requests_total{method="GET",route="/b",status="2xx"} 400.0
workermeter_requests_total{method="GET",route="/b",status="5xx"} 7.0
# TYPE workermeter_request_duration_seconds histogram
workermeter_request_duration_seconds_bucket{le="0.04",method="GET",route="/a"} 10.0
workermeter_request_duration_seconds_bucket{le="0.05",method="GET",route="/a"} 1000.0
workermeter_request_duration_seconds_bucket{le="0.1",method="GET",route="/a"} 1000.0
workermeter_request_duration_seconds_bucket{le="0.125",method="GET",route="/a"} 1000.0
workermeter_request_duration_seconds_bucket{le="+Inf",method="GET",route="/a"} 1000.0
workermeter_request_duration_seconds_count{method="GET",route="/a"} 1000.0
workermeter_request_duration_seconds_sum{method="GET",route="/a"} 45.0
workermeter_request_duration_seconds_bucket{le="0.04",method="GET",route="/b"} 0.0
workermeter_request_duration_seconds_bucket{le="0.05",method="GET",route="/b"} 0.0
workermeter_request_duration_seconds_bucket{le="0.1",method="GET",route="/b"} 0.0
workermeter_request_duration_seconds_bucket{le="0.125",method="GET",route="/b"} 407.0
workermeter_request_duration_seconds_bucket{le="+Inf",method="GET",route="/b"} 407.0
workermeter_request_duration_seconds_count{method="GET",route="/b"} 407.0
workermeter_request_duration_seconds_sum{method="GET",route="/b"} 44.0
# TYPE workermeter_sampled_cpu_seconds_total counter
workermeter_sampled_cpu_seconds_total{route="/a"} 1.0
workermeter_sampled_cpu_seconds_total{route="/b"} 2.0
# TYPE workermeter_sampled_duration_seconds_total counter
workermeter_sampled_duration_seconds_total{route="/a"} 5.0
workermeter_sampled_duration_seconds_total{route="/b"} 5.0
# TYPE workermeter_queue_wait_seconds histogram
workermeter_queue_wait_seconds_bucket{le="0.001"} 50.0
workermeter_queue_wait_seconds_bucket{le="0.002"} 60.0
workermeter_queue_wait_seconds_bucket{le="0.005"} 70.0
workermeter_queue_wait_seconds_bucket{le="+Inf"} 70.0
workermeter_queue_wait_seconds_count 70.0
workermeter_queue_wait_seconds_sum 0.1
# TYPE workermeter_busy_seconds_total counter
workermeter_busy_seconds_total{worker="0"} 100.0
workermeter_busy_seconds_total{worker="1"} 50.0
# TYPE workermeter_all_slots_busy_seconds_total counter
workermeter_all_slots_busy_seconds_total{worker="0"} 10.0
workermeter_all_slots_busy_seconds_total{worker="1"} 5.0
# TYPE workermeter_busy_slots_seconds_total counter
workermeter_busy_slots_seconds_total{busy="0",worker="0"} 20.0
workermeter_busy_slots_seconds_total{busy="1",worker="0"} 20.0
workermeter_busy_slots_seconds_total{busy="2",worker="0"} 20.0
workermeter_busy_slots_seconds_total{busy="0",worker="1"} 20.0
workermeter_busy_slots_seconds_total{busy="1",worker="1"} 20.0
workermeter_busy_slots_seconds_total{busy="2",worker="1"} 20.0
# TYPE workermeter_process_cpu_seconds_total counter
workermeter_process_cpu_seconds_total{worker="0"} 30.0
workermeter_process_cpu_seconds_total{worker="1"} 20.0
# TYPE workermeter_capacity_threads gauge
workermeter_capacity_threads{worker="0"} 2.0
workermeter_capacity_threads{worker="1"} 2.0
# TYPE workermeter_in_flight_requests gauge
workermeter_in_flight_requests{worker="0"} 2.0
workermeter_in_flight_requests{worker="1"} 2.0
# TYPE workermeter_worker_pid gauge
workermeter_worker_pid{worker="0"} 101.0
workermeter_worker_pid{worker="1"} 102.0
# TYPE workermeter_workers gauge
workermeter_workers 2.0
# TYPE workermeter_process_resident_memory_bytes gauge
workermeter_process_resident_memory_bytes{worker="0"} 9.0e+07
workermeter_process_resident_memory_bytes{worker="1"} 9.0e+07
# TYPE workermeter_process_unique_memory_bytes gauge
workermeter_process_unique_memory_bytes{worker="0"} 3.0e+07
workermeter_process_unique_memory_bytes{worker="1"} 3.0e+07
# TYPE workermeter_host_memory_total_bytes gauge
workermeter_host_memory_total_bytes 4294967296.0
# TYPE workermeter_host_cpu_count gauge
workermeter_host_cpu_count 2.0
"""

AFTER = """\
# TYPE workermeter_requests_total counter
workermeter_requests_total{method="GET",route="/a",status="2xx"} 1200.0
workermeter_requests_total{method="GET",route="/b",status="2xx"} 500.0
workermeter_requests_total{method="GET",route="/b",status="5xx"} 7.0
# TYPE workermeter_request_duration_seconds histogram
workermeter_request_duration_seconds_bucket{le="0.04",method="GET",route="/a"} 10.0
workermeter_request_duration_seconds_bucket{le="0.05",method="GET",route="/a"} 1200.0
workermeter_request_duration_seconds_bucket{le="0.1",method="GET",route="/a"} 1200.0
workermeter_request_duration_seconds_bucket{le="0.125",method="GET",route="/a"} 1200.0
workermeter_request_duration_seconds_bucket{le="+Inf",method="GET",route="/a"} 1200.0
workermeter_request_duration_seconds_count{method="GET",route="/a"} 1200.0
workermeter_request_duration_seconds_sum{method="GET",route="/a"} 54.0
workermeter_request_duration_seconds_bucket{le="0.04",method="GET",route="/b"} 0.0
workermeter_request_duration_seconds_bucket{le="0.05",method="GET",route="/b"} 0.0
workermeter_request_duration_seconds_bucket{le="0.1",method="GET",route="/b"} 0.0
workermeter_request_duration_seconds_bucket{le="0.125",method="GET",route="/b"} 507.0
workermeter_request_duration_seconds_bucket{le="+Inf",method="GET",route="/b"} 507.0
workermeter_request_duration_seconds_count{method="GET",route="/b"} 507.0
workermeter_request_duration_seconds_sum{method="GET",route="/b"} 55.0
# TYPE workermeter_sampled_cpu_seconds_total counter
workermeter_sampled_cpu_seconds_total{route="/a"} 1.1
workermeter_sampled_cpu_seconds_total{route="/b"} 2.5
# TYPE workermeter_sampled_duration_seconds_total counter
workermeter_sampled_duration_seconds_total{route="/a"} 5.9
workermeter_sampled_duration_seconds_total{route="/b"} 6.1
# TYPE workermeter_queue_wait_seconds histogram
workermeter_queue_wait_seconds_bucket{le="0.001"} 200.0
workermeter_queue_wait_seconds_bucket{le="0.002"} 330.0
workermeter_queue_wait_seconds_bucket{le="0.005"} 370.0
workermeter_queue_wait_seconds_bucket{le="+Inf"} 370.0
workermeter_queue_wait_seconds_count 370.0
workermeter_queue_wait_seconds_sum 0.55
# TYPE workermeter_busy_seconds_total counter
workermeter_busy_seconds_total{worker="0"} 112.0
workermeter_busy_seconds_total{worker="1"} 58.0
# TYPE workermeter_all_slots_busy_seconds_total counter
workermeter_all_slots_busy_seconds_total{worker="0"} 13.0
workermeter_all_slots_busy_seconds_total{worker="1"} 6.0
# TYPE workermeter_busy_slots_seconds_total counter
workermeter_busy_slots_seconds_total{busy="0",worker="0"} 21.0
workermeter_busy_slots_seconds_total{busy="1",worker="0"} 26.0
workermeter_busy_slots_seconds_total{busy="2",worker="0"} 23.0
workermeter_busy_slots_seconds_total{busy="0",worker="1"} 23.0
workermeter_busy_slots_seconds_total{busy="1",worker="1"} 26.0
workermeter_busy_slots_seconds_total{busy="2",worker="1"} 21.0
# TYPE workermeter_process_cpu_seconds_total counter
workermeter_process_cpu_seconds_total{worker="0"} 32.0
workermeter_process_cpu_seconds_total{worker="1"} 21.0
# TYPE workermeter_capacity_threads gauge
workermeter_capacity_threads{worker="0"} 2.0
workermeter_capacity_threads{worker="1"} 2.0
# TYPE workermeter_in_flight_requests gauge
workermeter_in_flight_requests{worker="0"} 1.0
workermeter_in_flight_requests{worker="1"} 0.0
# TYPE workermeter_worker_pid gauge
workermeter_worker_pid{worker="0"} 101.0
workermeter_worker_pid{worker="1"} 102.0
# TYPE workermeter_workers gauge
workermeter_workers 2.0
# TYPE workermeter_process_resident_memory_bytes gauge
workermeter_process_resident_memory_bytes{worker="0"} 1.048576e+08
workermeter_process_resident_memory_bytes{worker="1"} 1.2582912e+08
# TYPE workermeter_process_unique_memory_bytes gauge
workermeter_process_unique_memory_bytes{worker="0"} 4.194304e+07
workermeter_process_unique_memory_bytes{worker="1"} 6.291456e+07
# TYPE workermeter_host_memory_total_bytes gauge
workermeter_host_memory_total_bytes 4294967296.0
# TYPE workermeter_host_cpu_count gauge
workermeter_host_cpu_count 2.0
# TYPE workermeter_listen_backlog gauge
workermeter_listen_backlog{listener="127.0.0.1:8000"} 7.0
"""


def two() -> observe.Observation:
    return observe.observe([observe.parse_scrape(BEFORE, 10.0), observe.parse_scrape(AFTER, 20.0)])


def test_rates_from_two_scrapes() -> None:
    obs = two()
    assert obs.seconds == 10.0
    assert obs.requests == 300
    assert obs.rate == 30.0
    assert obs.service_time == pytest.approx(20.0 / 300)
    # Midpoints 45 ms (200 requests) and 112.5 ms (100): cv of a two-point mix, sqrt(2)/3.
    assert obs.service_cv == pytest.approx(math.sqrt(2) / 3)
    assert obs.cpu_share == pytest.approx(0.6 / 2.0)
    assert obs.process_cpu_share == pytest.approx(3.0 / 20.0)


def test_utilisation_and_concurrency() -> None:
    obs = two()
    assert obs.utilisation == pytest.approx(20.0 / (10.0 * 4))
    assert obs.worker_utilisation == pytest.approx({"0": 0.6, "1": 0.4})
    assert obs.worker_all_busy == pytest.approx({"0": 0.3, "1": 0.1})
    assert obs.all_busy_share == 0.0  # 1 - (0.7 + 0.9), at least
    assert obs.busy_distribution == pytest.approx({0: 0.2, 1: 0.6, 2: 0.2})


def test_queue_wait_percentiles_from_bucket_increases() -> None:
    obs = two()
    assert obs.queue_waits == 300
    assert obs.queue_wait_mean == pytest.approx(0.45 / 300)
    # 150 of 300 within 1 ms; rank 285 is 15 of the 30 between 2 and 5 ms.
    assert obs.queue_wait_p50 == pytest.approx(0.001)
    assert obs.queue_wait_p95 == pytest.approx(0.002 + 0.003 * 15 / 30)
    assert obs.wait_growing is False  # two scrapes cannot tell


def test_gauges_from_the_last_scrape() -> None:
    obs = two()
    assert obs.in_flight == {"0": 1, "1": 0}
    assert obs.capacity == {"0": 2, "1": 2}
    assert obs.pids == {"0": 101, "1": 102}
    assert obs.rss == {"0": 100 * MIB, "1": 120 * MIB}
    assert obs.uss == {"0": 40 * MIB, "1": 60 * MIB}
    assert (obs.processes, obs.threads, obs.cores) == (2, 2, 2.0)
    assert obs.memory_total == 4096 * MIB
    assert obs.backlog == 7.0
    assert two_without_backlog().backlog is None


def two_without_backlog() -> observe.Observation:
    before = observe.parse_scrape(BEFORE, 0.0)
    return observe.observe([before, observe.parse_scrape(BEFORE.replace(" 20.0\n", " 21.0\n"), 1)])


def test_routes_busiest_first() -> None:
    routes = two().routes
    assert [r.route for r in routes] == ["/b", "/a"]  # 11 s busy before 9 s
    b, a = routes
    assert (b.requests, b.rate, b.busy) == pytest.approx((100, 10.0, 11.0))
    assert (b.service_time, b.cpu_share) == pytest.approx((0.11, 0.5 / 1.1))
    assert (a.requests, a.service_time, a.cpu_share) == pytest.approx((200, 0.045, 0.1 / 0.9))


def test_workload_and_machine() -> None:
    obs = two()
    w = obs.workload()
    assert (w.peak_rate, w.service_time, w.service_cv) == pytest.approx(
        (30.0, 20.0 / 300, math.sqrt(2) / 3)
    )
    assert (w.cpu_share, w.utilisation, w.all_busy_share) == pytest.approx((0.3, 0.5, 0.0))
    assert obs.machine() == Machine(
        cores=2.0,
        memory_total=4096 * MIB,
        process_rss=120 * MIB,
        process_uss=60 * MIB,
        processes=2,
        threads=2,
    )


def scaled(text: str, factor: float) -> str:
    """``text`` with every counter and histogram value times ``factor``: a restarted server."""
    lines = []
    kind = ""
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            kind = line.split()[3]  # the samples below belong to this family
        elif not line.startswith("#") and kind in ("counter", "histogram"):
            name, value = line.rsplit(" ", 1)
            line = f"{name} {float(value) * factor!r}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_counter_reset_counts_the_new_values() -> None:
    # The server restarted after the second scrape: the third shows a tenth of the first.
    restarted = scaled(BEFORE, 0.1)
    obs = observe.observe(
        [
            observe.parse_scrape(BEFORE, 0.0),
            observe.parse_scrape(AFTER, 10.0),
            observe.parse_scrape(restarted, 20.0),
        ]
    )
    assert obs.seconds == 20.0
    assert obs.requests == pytest.approx(300 + 140.7)
    assert obs.service_time == pytest.approx((20.0 + 8.9) / (300 + 140.7))
    assert obs.utilisation == pytest.approx((20.0 + 15.0) / (20.0 * 4))


def test_histogram_series_restart_together() -> None:
    # After a restart, one bucket of /a is higher than before (the bucket at 40 ms: 10 -> 50)
    # but the series' count went down: all of the series' new values are the increase.
    restarted = scaled(BEFORE, 0.05).replace(
        'workermeter_request_duration_seconds_bucket{le="0.04",method="GET",route="/a"} 0.5',
        'workermeter_request_duration_seconds_bucket{le="0.04",method="GET",route="/a"} 50.0',
    )
    obs = observe.observe([observe.parse_scrape(AFTER, 0.0), observe.parse_scrape(restarted, 1.0)])
    a = next(r for r in obs.routes if r.route == "/a")
    assert a.requests == pytest.approx(50.0)
    assert obs.service_cv is not None
    # /a's 50 requests now all sit at or below 40 ms (midpoint 20 ms), /b's 20.35 at 112.5 ms.
    points = [(0.02, 50.0), (0.1125, 20.35)]
    mean = sum(p * c for p, c in points) / 70.35
    sd = math.sqrt(sum(c * (p - mean) ** 2 for p, c in points) / 70.35)
    assert obs.service_cv == pytest.approx(sd / mean)


def test_a_series_that_appears_counts_from_zero() -> None:
    after = AFTER.replace(
        'workermeter_requests_total{method="GET",route="/b",status="5xx"} 7.0',
        'workermeter_requests_total{method="GET",route="/b",status="5xx"} 7.0\n'
        'workermeter_requests_total{method="POST",route="/c",status="2xx"} 4.0',
    )
    obs = observe.observe([observe.parse_scrape(BEFORE, 0.0), observe.parse_scrape(after, 10.0)])
    assert obs.requests == 304
    assert [r.route for r in obs.routes][-1] == "/c"


def test_wait_growing_needs_the_second_half_slower() -> None:
    # Three scrapes: 100 waits of 1 ms on average, then 100 of 20 ms.
    def at(count: float, total: float) -> str:
        return (
            f"# TYPE workermeter_queue_wait_seconds histogram\n"
            f'workermeter_queue_wait_seconds_bucket{{le="+Inf"}} {count}\n'
            f"workermeter_queue_wait_seconds_count {count}\n"
            f"workermeter_queue_wait_seconds_sum {total}\n"
        )

    scrapes = [
        observe.parse_scrape(at(0, 0.0), 0.0),
        observe.parse_scrape(at(100, 0.1), 5.0),
        observe.parse_scrape(at(200, 2.1), 10.0),
    ]
    assert observe.observe(scrapes).wait_growing is True
    steady = [*scrapes[:2], observe.parse_scrape(at(200, 0.25), 10.0)]
    assert observe.observe(steady).wait_growing is False


def test_no_traffic_is_a_clear_error() -> None:
    scrapes = [observe.parse_scrape(BEFORE, 0.0), observe.parse_scrape(BEFORE, 5.0)]
    with pytest.raises(observe.SourceError, match="no request completed in the 5 s window"):
        observe.observe(scrapes).workload()


def test_observe_needs_two_scrapes_in_order() -> None:
    one = observe.parse_scrape(BEFORE, 1.0)
    with pytest.raises(ValueError, match="two scrapes"):
        observe.observe([one])
    with pytest.raises(ValueError, match="time order"):
        observe.observe([one, one])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("<html><body>Hello</body></html>", "not Prometheus metrics", id="html"),
        pytest.param('{"status": "ok"}', "not Prometheus metrics", id="json"),
        pytest.param("", "not a workermeter endpoint", id="empty"),
        pytest.param("# TYPE up gauge\nup 1\n", "not a workermeter endpoint", id="other-exporter"),
    ],
)
def test_not_a_workermeter_scrape(text: str, message: str) -> None:
    with pytest.raises(observe.SourceError, match=message):
        observe.parse_scrape(text, 0.0)


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        pytest.param(0.5, [(0.1, 10.0), (0.2, 20.0), (math.inf, 20.0)], 0.1, id="bucket-edge"),
        pytest.param(0.25, [(0.1, 10.0), (0.2, 20.0), (math.inf, 20.0)], 0.05, id="first-bucket"),
        pytest.param(0.75, [(0.1, 10.0), (0.2, 20.0), (math.inf, 20.0)], 0.15, id="interpolated"),
        pytest.param(0.95, [(0.1, 10.0), (0.2, 10.0), (math.inf, 20.0)], 0.2, id="in-inf"),
        pytest.param(0.5, [(0.1, 0.0), (math.inf, 0.0)], None, id="empty"),
        pytest.param(0.5, [], None, id="no-buckets"),
    ],
)
def test_bucket_quantile(
    q: float, buckets: list[tuple[float, float]], expected: float | None
) -> None:
    assert observe.bucket_quantile(q, buckets) == (
        None if expected is None else pytest.approx(expected)
    )


@pytest.mark.parametrize(
    ("buckets", "expected"),
    [
        pytest.param([(0.05, 0.0), (0.075, 100.0), (math.inf, 100.0)], 0.0, id="all-alike"),
        pytest.param([(0.1, 50.0), (0.2, 100.0), (math.inf, 100.0)], 0.5, id="two-even"),
        pytest.param([(1.0, 0.0), (math.inf, 10.0)], 0.0, id="all-in-inf"),
        pytest.param([(1.0, 0.0), (math.inf, 0.0)], None, id="empty"),
    ],
)
def test_bucket_cv(buckets: list[tuple[float, float]], expected: float | None) -> None:
    assert observe.bucket_cv(buckets) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("60s", 60.0),
        ("90", 90.0),
        ("0.1", 0.1),
        ("500ms", 0.5),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("2w", 1209600.0),
        (" 10s ", 10.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert observe.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "abc", "0", "0s", "-5s", "5x", "1.5.2s", "5 m"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        observe.parse_duration(text)


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("127.0.0.1:8000", "http://127.0.0.1:8000/metrics"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/metrics"),
        ("http://app:8000/custom", "http://app:8000/custom"),
        ("https://app/metrics?x=1", "https://app/metrics?x=1"),
    ],
)
def test_metrics_url(given: str, url: str) -> None:
    assert observe.metrics_url(given) == url


@pytest.mark.parametrize("given", ["ftp://host/metrics", "http://", "http://host:port/"])
def test_metrics_url_refuses(given: str) -> None:
    with pytest.raises(observe.SourceError):
        observe.metrics_url(given)


class FakeTime:
    """A monotonic clock that moves only when slept on, or when a scrape takes time."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_sample_spaces_scrapes_and_dates_them_midway() -> None:
    t = FakeTime()

    def fetch(url: str, timeout: float) -> str:
        t.now += 0.2  # each scrape takes 200 ms to answer
        return BEFORE

    scrapes = observe.sample("http://x/metrics", 4.0, fetch=fetch, clock=t.clock, sleep=t.sleep)
    # A quarter of 4 s is below the 1 s floor: a scrape every second, each dated halfway
    # through its 200 ms, and the pauses shortened by the time the scrapes took.
    assert [s.at for s in scrapes] == pytest.approx([100.1, 101.1, 102.1, 103.1, 104.1])
    assert t.slept == [0.8] * 4


def test_sample_takes_first_and_last_at_the_window_edges() -> None:
    t = FakeTime()

    def fetch(url: str, timeout: float) -> str:
        return BEFORE

    scrapes = observe.sample(
        "http://x/metrics", 10.0, interval=4.0, fetch=fetch, clock=t.clock, sleep=t.sleep
    )
    assert [s.at for s in scrapes] == [100.0, 104.0, 108.0, 110.0]


def test_measure_metrics_from_a_fake_endpoint() -> None:
    t = FakeTime()
    texts = iter([BEFORE, AFTER])
    urls: list[str] = []

    def fetch(url: str, timeout: float) -> str:
        urls.append(url)
        return next(texts)

    measured = observe.measure_metrics(
        "127.0.0.1:8000", 10.0, interval=10.0, fetch=fetch, clock=t.clock, sleep=t.sleep
    )
    assert urls == ["http://127.0.0.1:8000/metrics"] * 2
    assert measured.source == "http://127.0.0.1:8000/metrics, sampled for 10 s"
    assert measured.workload.peak_rate == 30.0
    assert measured.machine.processes == 2
    assert measured.queue_wait_p95 == pytest.approx(0.002 + 0.003 * 15 / 30)
    assert measured.notes == ()


def test_unreachable_endpoint_is_one_line() -> None:
    with pytest.raises(observe.SourceError, match=r"^cannot reach http://127.0.0.1:9/metrics: "):
        observe.scrape("http://127.0.0.1:9/metrics", timeout=2)


# ------------------------------------------------------------------------ Prometheus, faked


def fake_prometheus(answers: dict[str, object]) -> tuple[Callable[[str, float], str], list[str]]:
    """A fetch answering each query whose PromQL starts with a key of ``answers`` with that
    value as a one-sample vector (a list: as ``by (le)`` rows); anything else with no data."""
    asked: list[str] = []

    def fetch(url: str, timeout: float) -> str:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["query"][0]
        asked.append(query)
        for prefix, value in answers.items():
            if query.startswith(prefix):
                if isinstance(value, list):
                    result = [{"metric": {"le": le}, "value": [0, str(v)]} for le, v in value]
                else:
                    result = [{"metric": {}, "value": [0, str(value)]}]
                break
        else:
            result = []
        return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})

    return fetch, asked


PROM = {
    "count(last_over_time(workermeter_host_cpu_count": 1,
    "max_over_time(sum(rate(workermeter_requests_total": 40,
    "avg_over_time(sum(rate(workermeter_requests_total": 25,
    "sum(increase(workermeter_request_duration_seconds_sum": 500,
    "sum(increase(workermeter_request_duration_seconds_count": 10000,
    "sum(increase(workermeter_sampled_cpu_seconds_total": 30,
    "sum(increase(workermeter_sampled_duration_seconds_total": 100,
    "max_over_time((sum(rate(workermeter_busy_seconds_total": 0.97,
    "max_over_time(clamp_min(": 0.5,
    "sum by (le) (increase(workermeter_request_duration_seconds_bucket": [
        ("0.04", 0),
        ("0.06", 10000),
        ("+Inf", 10000),
    ],
    "sum by (le) (increase(workermeter_queue_wait_seconds_bucket": [
        ("0.1", 50),
        ("0.2", 100),
        ("+Inf", 100),
    ],
    "max(max_over_time(workermeter_process_resident_memory_bytes": 150 * MIB,
    "max(max_over_time(workermeter_process_unique_memory_bytes": 90 * MIB,
    "sum(last_over_time(workermeter_host_cpu_count": 4,
    "sum(last_over_time(workermeter_host_memory_total_bytes": 4096 * MIB,
    "sum(last_over_time(workermeter_workers": 3,
    "max(last_over_time(workermeter_capacity_threads": 2,
}


def test_prometheus_queries_and_inputs() -> None:
    fetch, asked = fake_prometheus(PROM)
    measured = observe.measure_prometheus(
        "127.0.0.1:9090", selector='job="app"', window=86400, fetch=fetch, now=lambda: 1e9
    )
    w, mc = measured.workload, measured.machine
    assert (w.peak_rate, w.typical_rate, w.service_time, w.cpu_share) == (40, 25, 0.05, 0.3)
    assert (w.service_cv, w.utilisation, w.all_busy_share) == (0.0, 0.97, 0.5)
    assert mc == Machine(
        cores=4,
        memory_total=4096 * MIB,
        process_rss=150 * MIB,
        process_uss=90 * MIB,
        processes=3,
        threads=2,
    )
    assert measured.queue_wait_p50 == pytest.approx(0.1)
    assert measured.queue_wait_p95 == pytest.approx(0.19)
    assert measured.source == (
        'Prometheus at http://127.0.0.1:9090, {job="app"}, over the last 1 day'
    )
    peak = next(q for q in asked if q.startswith("max_over_time(sum(rate("))
    assert peak == (
        'max_over_time(sum(rate(workermeter_requests_total{job="app"}[300000ms]))'
        "[86400000ms:60000ms])"
    )
    assert all('{job="app"}' in q for q in asked)


def test_prometheus_of_native_histograms() -> None:
    """A Prometheus that keeps native histograms has no ``_bucket`` series: the service time's
    variability and the queue wait come from the native ones, read as the same buckets."""
    answers = {k: v for k, v in PROM.items() if "_bucket" not in k}
    classic, _ = fake_prometheus(answers)
    native = {
        "workermeter_service_time_seconds": [[0, "0.04", "0.06", "10000"]],
        "workermeter_queue_wait_seconds": [
            [3, "-9.5e-07", "9.5e-07", "20"], [0, "0.05", "0.1", "30"], [0, "0.1", "0.2", "50"]
        ],
    }  # fmt: skip
    asked = []

    def fetch(url: str, timeout: float) -> str:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["query"][0]
        asked.append(query)
        for name, buckets in native.items():
            if query.startswith(f"sum(increase({name}{{"):
                histogram = {"count": "100", "sum": "1", "buckets": buckets}
                result = [{"metric": {}, "histogram": [0, histogram]}]
                return json.dumps(
                    {"status": "success", "data": {"resultType": "vector", "result": result}}
                )
        return classic(url, timeout)

    measured = observe.measure_prometheus(
        "127.0.0.1:9090", selector='job="app"', window=86400, fetch=fetch, now=lambda: 1e9
    )
    assert measured.workload.service_cv == 0.0  # all within 40-60 ms
    # p95: 95 of 100, within the bucket from 100 to 200 ms that holds the last 50
    assert measured.queue_wait_p95 == pytest.approx(0.1 + 0.1 * (95 - 50) / 50)
    assert measured.queue_wait_p50 == pytest.approx(0.1)
    assert any(q.startswith("sum(increase(workermeter_queue_wait_seconds{") for q in asked)


def test_prometheus_without_cpu_samples_falls_back_to_process_cpu() -> None:
    answers = {k: v for k, v in PROM.items() if "sampled" not in k}
    answers["sum(increase(workermeter_busy_seconds_total"] = 200
    answers["sum(increase(workermeter_process_cpu_seconds_total"] = 50
    fetch, _ = fake_prometheus(answers)
    measured = observe.measure_prometheus("http://p:9090", fetch=fetch, window=3600)
    assert measured.workload.cpu_share == 0.25
    assert "workers' CPU time over their busy time" in measured.notes[0]


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        pytest.param({}, "has no workermeter_host_cpu_count", id="no-data"),
        pytest.param(
            {"count(last_over_time(workermeter_host_cpu_count": 3}, "matches 3 servers", id="many"
        ),
        pytest.param(
            {"count(last_over_time(workermeter_host_cpu_count": 1},
            "saw no requests completed",
            id="no-requests",
        ),
    ],
)
def test_prometheus_without_what_is_needed(answers: dict[str, object], message: str) -> None:
    fetch, _ = fake_prometheus(answers)
    with pytest.raises(observe.SourceError, match=message):
        observe.measure_prometheus("http://p:9090", fetch=fetch)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param("<html>hello</html>", "is not a Prometheus server", id="html"),
        pytest.param(
            '{"status": "error", "errorType": "bad_data", "error": "parse error"}',
            "Prometheus refused the query .*: parse error",
            id="refused",
        ),
    ],
)
def test_prometheus_bad_answers(body: str, message: str) -> None:
    with pytest.raises(observe.SourceError, match=message):
        observe.measure_prometheus("http://p:9090", fetch=lambda url, timeout: body)


def test_prometheus_selector_must_be_labels() -> None:
    fetch, _ = fake_prometheus(PROM)
    with pytest.raises(observe.SourceError, match="not a label selector"):
        observe.measure_prometheus("http://p:9090", selector="{a}{b}", fetch=fetch)


# ------------------------------------------------------------------------ async workers' loops

# Two uvicorn workers, 10 s apart. Worker 0 (uvloop) was busy 6 s of 10; worker 1 started during
# the window (its series appear in the second scrape) and was measured 4 s, busy 1 s, with the
# late-probe estimate. /block sleeps 30 ms inside async def, /spin computes 10 ms, /await awaits.
LOOPS_BEFORE = """\
# TYPE workermeter_requests_total counter
workermeter_requests_total{method="GET",route="/block",status="2xx"} 50.0
workermeter_requests_total{method="GET",route="/spin",status="2xx"} 50.0
workermeter_requests_total{method="GET",route="/await",status="2xx"} 50.0
# TYPE workermeter_request_duration_seconds histogram
workermeter_request_duration_seconds_count{method="GET",route="/block"} 50.0
workermeter_request_duration_seconds_sum{method="GET",route="/block"} 1.5
workermeter_request_duration_seconds_count{method="GET",route="/spin"} 50.0
workermeter_request_duration_seconds_sum{method="GET",route="/spin"} 0.5
workermeter_request_duration_seconds_count{method="GET",route="/await"} 50.0
workermeter_request_duration_seconds_sum{method="GET",route="/await"} 2.0
# TYPE workermeter_sampled_cpu_seconds_total counter
workermeter_sampled_cpu_seconds_total{route="/block"} 0.004
workermeter_sampled_cpu_seconds_total{route="/spin"} 0.1
workermeter_sampled_cpu_seconds_total{route="/await"} 0.001
# TYPE workermeter_sampled_duration_seconds_total counter
workermeter_sampled_duration_seconds_total{route="/block"} 0.4
workermeter_sampled_duration_seconds_total{route="/spin"} 0.1
workermeter_sampled_duration_seconds_total{route="/await"} 0.5
# TYPE workermeter_sampled_event_loop_seconds_total counter
workermeter_sampled_event_loop_seconds_total{route="/block"} 0.4
workermeter_sampled_event_loop_seconds_total{route="/spin"} 0.1
workermeter_sampled_event_loop_seconds_total{route="/await"} 0.003
# TYPE workermeter_busy_seconds_total counter
workermeter_busy_seconds_total{worker="0"} 4.0
# TYPE workermeter_event_loop_busy_seconds_total counter
workermeter_event_loop_busy_seconds_total{method="uvloop",worker="0"} 2.0
# TYPE workermeter_event_loop_observed_seconds_total counter
workermeter_event_loop_observed_seconds_total{method="uvloop",worker="0"} 20.0
# TYPE workermeter_thread_pool_busy_seconds_total counter
workermeter_thread_pool_busy_seconds_total{worker="0"} 1.0
# TYPE workermeter_thread_pool_wait_seconds_total counter
workermeter_thread_pool_wait_seconds_total{worker="0"} 0.0
# TYPE workermeter_thread_pool_size gauge
workermeter_thread_pool_size{worker="0"} 40.0
# TYPE workermeter_process_cpu_seconds_total counter
workermeter_process_cpu_seconds_total{worker="0"} 3.0
# TYPE workermeter_capacity_detected gauge
workermeter_capacity_detected{worker="0"} 0.0
# TYPE workermeter_worker_pid gauge
workermeter_worker_pid{worker="0"} 201.0
# TYPE workermeter_workers gauge
workermeter_workers 1.0
# TYPE workermeter_process_resident_memory_bytes gauge
workermeter_process_resident_memory_bytes{worker="0"} 1.048576e+08
# TYPE workermeter_host_memory_total_bytes gauge
workermeter_host_memory_total_bytes 4294967296.0
# TYPE workermeter_host_cpu_count gauge
workermeter_host_cpu_count 2.0
"""

LOOPS_AFTER = """\
# TYPE workermeter_requests_total counter
workermeter_requests_total{method="GET",route="/block",status="2xx"} 200.0
workermeter_requests_total{method="GET",route="/spin",status="2xx"} 150.0
workermeter_requests_total{method="GET",route="/await",status="2xx"} 250.0
# TYPE workermeter_request_duration_seconds histogram
workermeter_request_duration_seconds_count{method="GET",route="/block"} 200.0
workermeter_request_duration_seconds_sum{method="GET",route="/block"} 6.0
workermeter_request_duration_seconds_count{method="GET",route="/spin"} 150.0
workermeter_request_duration_seconds_sum{method="GET",route="/spin"} 1.5
workermeter_request_duration_seconds_count{method="GET",route="/await"} 250.0
workermeter_request_duration_seconds_sum{method="GET",route="/await"} 10.0
# TYPE workermeter_sampled_cpu_seconds_total counter
workermeter_sampled_cpu_seconds_total{route="/block"} 0.016
workermeter_sampled_cpu_seconds_total{route="/spin"} 0.34
workermeter_sampled_cpu_seconds_total{route="/await"} 0.006
# TYPE workermeter_sampled_duration_seconds_total counter
workermeter_sampled_duration_seconds_total{route="/block"} 1.6
workermeter_sampled_duration_seconds_total{route="/spin"} 0.35
workermeter_sampled_duration_seconds_total{route="/await"} 2.5
# TYPE workermeter_sampled_event_loop_seconds_total counter
workermeter_sampled_event_loop_seconds_total{route="/block"} 1.6
workermeter_sampled_event_loop_seconds_total{route="/spin"} 0.35
workermeter_sampled_event_loop_seconds_total{route="/await"} 0.023
# TYPE workermeter_busy_seconds_total counter
workermeter_busy_seconds_total{worker="0"} 16.0
workermeter_busy_seconds_total{worker="1"} 2.0
# TYPE workermeter_event_loop_busy_seconds_total counter
workermeter_event_loop_busy_seconds_total{method="uvloop",worker="0"} 8.0
workermeter_event_loop_busy_seconds_total{method="lag_estimate",worker="1"} 1.0
# TYPE workermeter_event_loop_observed_seconds_total counter
workermeter_event_loop_observed_seconds_total{method="uvloop",worker="0"} 30.0
workermeter_event_loop_observed_seconds_total{method="lag_estimate",worker="1"} 4.0
# TYPE workermeter_thread_pool_busy_seconds_total counter
workermeter_thread_pool_busy_seconds_total{worker="0"} 5.0
workermeter_thread_pool_busy_seconds_total{worker="1"} 0.0
# TYPE workermeter_thread_pool_wait_seconds_total counter
workermeter_thread_pool_wait_seconds_total{worker="0"} 0.0
workermeter_thread_pool_wait_seconds_total{worker="1"} 0.0
# TYPE workermeter_thread_pool_size gauge
workermeter_thread_pool_size{worker="0"} 40.0
workermeter_thread_pool_size{worker="1"} 40.0
# TYPE workermeter_process_cpu_seconds_total counter
workermeter_process_cpu_seconds_total{worker="0"} 4.5
workermeter_process_cpu_seconds_total{worker="1"} 0.6
# TYPE workermeter_capacity_detected gauge
workermeter_capacity_detected{worker="0"} 0.0
workermeter_capacity_detected{worker="1"} 0.0
# TYPE workermeter_worker_pid gauge
workermeter_worker_pid{worker="0"} 201.0
workermeter_worker_pid{worker="1"} 202.0
# TYPE workermeter_workers gauge
workermeter_workers 2.0
# TYPE workermeter_process_resident_memory_bytes gauge
workermeter_process_resident_memory_bytes{worker="0"} 1.048576e+08
workermeter_process_resident_memory_bytes{worker="1"} 1.2582912e+08
# TYPE workermeter_process_unique_memory_bytes gauge
workermeter_process_unique_memory_bytes{worker="0"} 4.194304e+07
workermeter_process_unique_memory_bytes{worker="1"} 6.291456e+07
# TYPE workermeter_host_memory_total_bytes gauge
workermeter_host_memory_total_bytes 4294967296.0
# TYPE workermeter_host_cpu_count gauge
workermeter_host_cpu_count 2.0
"""


def loops_two() -> observe.Observation:
    return observe.observe(
        [observe.parse_scrape(LOOPS_BEFORE, 10.0), observe.parse_scrape(LOOPS_AFTER, 20.0)]
    )


def test_a_sync_scrape_has_no_loops() -> None:
    obs = two()
    assert obs.loops is None
    assert obs.workload().loops is None
    assert all(r.held_share is None for r in obs.routes)


def test_event_loop_utilisation_per_worker_and_together() -> None:
    obs = loops_two()
    loops = obs.loops
    assert loops is not None
    assert loops.elu == pytest.approx({"0": 0.6, "1": 0.25})
    assert loops.measured == pytest.approx({"0": 1.0, "1": 0.4})
    assert loops.methods == {"0": "uvloop", "1": "lag_estimate"}
    # 7 loop-seconds in 10 s over 14 loop-seconds observed: demand 0.7, ELU 0.5 together.
    assert (loops.busy, loops.loops, loops.utilisation) == pytest.approx((0.7, 1.4, 0.5))
    assert obs.utilisation == pytest.approx(0.5)  # an async job's utilisation is its ELU
    assert obs.worker_utilisation == {}  # no capacity: busy slots say nothing here
    # Process CPU 1.5 + 0.6 (the new worker's from 0) over 7 loop-seconds.
    assert loops.cpu_share == pytest.approx(0.3)
    assert loops.pool_threads == {"0": 40, "1": 40}
    assert loops.pool_utilisation == pytest.approx({"0": 0.01, "1": 0.0})
    assert loops.pool_wait == {"0": 0.0, "1": 0.0}


def test_the_blocking_route_is_named_first() -> None:
    obs = loops_two()
    assert obs.loops is not None
    # /block: held 1.2 s of 1.2 s sampled, CPU 0.012: 99 % of its 4.5 s held without the CPU.
    # /await: 0.015 of its 0.02 s held was not CPU (75 %), 0.0075 of its 8 s; /spin is CPU.
    block, wait = obs.loops.blocking
    assert (block.route, wait.route) == ("/block", "/await")
    assert block.per_request == pytest.approx(0.99 * 4.5 / 150)
    assert block.loop_share == pytest.approx(0.99 * 4.5 / 7.0)
    assert wait.loop_share == pytest.approx(0.0075 * 8.0 / 7.0)
    routes = {r.route: r for r in obs.routes}
    assert routes["/block"].held_share == pytest.approx(1.0)
    assert routes["/await"].held_share == pytest.approx(0.01)
    w = obs.workload()
    assert w.loops is not None and w.utilisation == pytest.approx(0.5)
    answer = suggest(w, obs.machine())
    assert answer.event_loops and answer.loop_blocked
    assert answer.blocking_routes == ("/block",)  # /await's 0.1 % is not worth naming
    assert answer.reasons[0].startswith(
        "First, a blocking call holds the event loop: only 30% of the loops' busy time is CPU, "
        "and for the other 0.49 loop-seconds per second a worker serves nothing else. The routes "
        "holding it without the CPU: /block (30 ms per request, 64% of the loops' busy time)."
    )
    assert (answer.processes, answer.threads) == (2, 1)  # ceil(0.7 / 0.6)
    # Every worker at its full RSS: (4096 - 1024) // 120.
    assert answer.memory_ceiling == 25


def test_measure_metrics_says_which_loops_were_measured_for_part_of_the_window() -> None:
    t = FakeTime()
    texts = iter([LOOPS_BEFORE, LOOPS_AFTER])
    measured = observe.measure_metrics(
        "127.0.0.1:8000", 10.0, interval=10.0, fetch=lambda u, s: next(texts), clock=t.clock,
        sleep=t.sleep,
    )  # fmt: skip
    assert measured.workload.loops is not None
    assert measured.workload.loops.busy == pytest.approx(0.7)
    assert measured.notes[1:] == (
        "Not every event loop was measured for all of the 10 s sampled: worker 1 for 40% (a "
        "worker that started during it, or was not scraped). Their ELU covers that part only, and "
        "the loops' demand counts what they did then.",
        "The event-loop utilisation of worker 1 is an estimate (method lag_estimate): no hook "
        "into that loop exists, so it is the share of timer probes that ran late, which reads low "
        "(0.41 and 0.83 for true loads of 0.5 and 0.9 when it was tried).",
    )
    assert measured.notes[0] == "The service time's variability is unknown; cv 1 is assumed."


def fake_prometheus_rows(
    answers: dict[str, list[tuple[dict[str, str], float]]],
) -> Callable[[str, float], str]:
    """Like :func:`fake_prometheus`, with the labels of every row given."""

    def fetch(url: str, timeout: float) -> str:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["query"][0]
        rows = next((v for k, v in answers.items() if query.startswith(k)), [])
        result = [{"metric": labels, "value": [0, str(v)]} for labels, v in rows]
        return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})

    return fetch


def test_prometheus_asks_for_the_loops_of_an_async_job() -> None:
    answers: dict[str, list[tuple[dict[str, str], float]]] = {}
    for key, val in PROM.items():
        if isinstance(val, list):
            answers[key] = [({"le": le}, float(v)) for le, v in val]
        else:
            answers[key] = [({}, float(val))]  # type: ignore[arg-type]
    busy = "workermeter_event_loop_busy_seconds_total"

    def routes(block: float, spin: float) -> list[tuple[dict[str, str], float]]:
        return [({"route": "/block"}, block), ({"route": "/spin"}, spin)]

    answers.update(
        {
            f"count by (worker, method) (last_over_time({busy}": [
                ({"worker": "0", "method": "uvloop"}, 1),
                ({"worker": "1", "method": "uvloop"}, 1),
            ],
            f"max_over_time(sum(rate({busy}": [({}, 1.2)],
            f"max_over_time((sum(rate({busy}": [({}, 0.6)],
            f"sum(increase({busy}": [({}, 3000)],
            "sum(increase(workermeter_process_cpu_seconds_total": [({}, 600)],
            "last_over_time(workermeter_process_cpu_seconds_total": [({"worker": "0"}, 9)],
            "sum by (route) (increase(workermeter_sampled_event_loop": routes(100, 50),
            "sum by (route) (increase(workermeter_sampled_cpu": routes(1, 49),
            "sum by (route) (increase(workermeter_sampled_duration": routes(101, 50),
            "sum by (route) (increase(workermeter_request_duration_seconds_sum": routes(1616, 800),
            "sum by (route) (increase(workermeter_request_duration_seconds_count": routes(
                16000, 8e4
            ),
            "max(last_over_time(workermeter_thread_pool_size": [({}, 40)],
            "max_over_time((sum(rate(workermeter_thread_pool_busy": [({}, 1.0)],
            "max_over_time(sum(rate(workermeter_thread_pool_wait": [({}, 0.2)],
            "sum by (worker) (increase(workermeter_event_loop_observed": [
                ({"worker": "0"}, 86400),
                ({"worker": "1"}, 43200),
            ],
        }
    )
    measured = observe.measure_prometheus(
        "http://p:9090", window=86400, fetch=fake_prometheus_rows(answers), now=lambda: 1e9
    )
    w = measured.workload
    assert w.utilisation == 0.6  # the loops' highest ELU, not busy slots
    assert w.loops is not None
    (block,) = w.loops.blocking  # /spin held the loop on the CPU
    assert block.route == "/block"
    assert block.loop_share == pytest.approx(99 / 101 * 1616 / 3000)
    assert block.per_request == pytest.approx(99 / 101 * 1616 / 16000)
    assert (w.loops.busy, w.loops.cpu_share) == (1.2, 0.2)
    assert (w.loops.pool_threads, w.loops.pool_utilisation, w.loops.pool_wait) == (40, 1.0, 0.2)
    assert measured.notes[-1].startswith(
        "Not every event loop was measured for all of the last 1 day: worker 1 for 50%"
    )
    answer = suggest(w, measured.machine)
    assert answer.loop_blocked and answer.pool_limited
    assert answer.blocking_routes == ("/block",)
    assert answer.reasons[0].startswith("First, a blocking call holds the event loop")
    assert answer.reasons[1].startswith("The thread pool that runs sync endpoints is the limit")
    assert answer.processes == 2  # ceil(1.2 / 0.6)
