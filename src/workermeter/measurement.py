"""What both sources of measurements share: the :class:`Measurement` they produce, the HTTP
client they read with, and the arithmetic on what they read.

The sources are :mod:`workermeter.observe` (a live ``/metrics`` endpoint) and
:mod:`workermeter.prometheus_source` (a Prometheus server).
"""

from __future__ import annotations

import math
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .capacity import Machine, Workload

#: Bearer token sent to ``/metrics`` when set, like the middleware's ``token`` option.
ENV_TOKEN = "WORKERMETER_TOKEN"
#: ``fetch(url, timeout) -> body``; raises :class:`SourceError` with a one-line reason.
Fetch = Callable[[str, float], str]
#: A series: its sample name and its labels.
Key = tuple[str, frozenset[tuple[str, str]]]


class SourceError(Exception):
    """A source could not be read or does not hold what is needed; the message is one line that
    says what to do."""


def http_get(url: str, timeout: float = 10.0) -> str:
    """``GET url`` and return the body, or raise :class:`SourceError` with the reason in a line.

    Sends ``Authorization: Bearer $WORKERMETER_TOKEN`` to ``/metrics`` URLs when it is set.
    """
    return get(url, timeout, error_bodies=())


def get(url: str, timeout: float, *, error_bodies: tuple[int, ...]) -> str:
    """Like :func:`http_get`, but an HTTP error whose code is in ``error_bodies`` returns its body
    (Prometheus explains a refused query in one)."""
    parts = urllib.parse.urlsplit(url)
    where = urllib.parse.urlunsplit(parts._replace(query=""))
    headers = {"User-Agent": "workermeter"}
    token = os.environ.get(ENV_TOKEN)
    if token and parts.path.endswith("/metrics"):
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
            charset = response.headers.get_content_charset() or "utf-8"
    except urllib.error.HTTPError as e:
        if e.code in error_bodies:
            return e.read().decode("utf-8", errors="replace")
        hint = ""
        if e.code in (401, 403, 404) and parts.path.endswith("/metrics"):
            hint = (
                " (workermeter answers /metrics only to loopback and private clients, or with "
                f"${ENV_TOKEN} as a bearer token)"
            )
        raise SourceError(f"{where} answered HTTP {e.code} {e.reason}{hint}") from None
    except urllib.error.URLError as e:
        raise SourceError(f"cannot reach {where}: {reason(e.reason)}") from None
    except OSError as e:  # a timeout or a reset while reading the body
        raise SourceError(f"cannot reach {where}: {reason(e)}") from None
    return body.decode(charset, errors="replace")


def reason(cause: object) -> str:
    """Why a request to a server failed, in a few words."""
    if isinstance(cause, TimeoutError):
        return "timed out"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return str(cause) or type(cause).__name__


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a histogram from cumulative ``(upper bound, count)`` pairs, as
    PromQL's ``histogram_quantile`` computes it: linear within the bucket, and the largest finite
    bound when it falls in the ``+Inf`` bucket. None when the histogram is empty.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank and cumulative > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        if not math.isinf(bound):
            lower = bound
        below = cumulative
    return lower


def bucket_cv(buckets: Sequence[tuple[float, float]]) -> float | None:
    """Coefficient of variation (standard deviation / mean) of a histogram from cumulative
    ``(upper bound, count)`` pairs, placing each bucket's requests at its midpoint (the ``+Inf``
    bucket's at the largest finite bound).

    The spread inside a bucket is left out, so requests that all take the same time give 0, and
    spread-out ones a little less than the truth (a few per cent with workermeter's buckets).
    None when the histogram is empty.
    """
    points: list[tuple[float, float]] = []
    lower, below = 0.0, 0.0
    for bound, cumulative in buckets:
        count = cumulative - below
        if count > 0:
            points.append((lower if math.isinf(bound) else (lower + bound) / 2, count))
        if not math.isinf(bound):
            lower = bound
        below = cumulative
    n = sum(c for _, c in points)
    if n <= 0:
        return None
    mean = sum(p * c for p, c in points) / n
    if mean <= 0:
        return None
    variance = sum(c * (p - mean) ** 2 for p, c in points) / n
    return math.sqrt(variance) / mean


@dataclass(frozen=True)
class Measurement:
    """The capacity model's inputs taken from a source, and what was seen there.

    :param source: where and over what window, in words.
    :param seconds: the window's length.
    :param workload: the rate (peak), service time, CPU share and signs of saturation.
    :param machine: cores, memory and the current processes x threads.
    :param queue_wait_p50: measured median queue wait in the window, if any was measured.
    :param queue_wait_p95: measured 95th percentile queue wait in the window.
    :param notes: how inputs were chosen where the source could not tell, one sentence each.
    """

    source: str
    seconds: float
    workload: Workload
    machine: Machine
    queue_wait_p50: float | None = None
    queue_wait_p95: float | None = None
    notes: tuple[str, ...] = ()


def cpu_notes(cpu_share: float | None, process_cpu_share: float | None) -> list[str]:
    """What to tell about the CPU share when it was not measured from sampled requests."""
    if cpu_share is not None:
        return []
    if process_cpu_share is not None:
        return [
            "No request was sampled for CPU time, so the CPU share is the workers' CPU time over "
            "their busy time (it also counts work outside requests)."
        ]
    return ["The CPU share could not be measured and is taken as 0."]


def rounded_rate(x: float) -> float:
    """A measured rate to 3 significant digits: the reasons print it, and more digits than
    that are noise."""
    return float(f"{x:.3g}")


def clamp_share(x: float) -> float:
    """Clamp a measured share into [0, 1]: busy time can overshoot the window by a scrape's
    duration, and a CPU share by clock granularity."""
    return min(1.0, max(0.0, x))


def machine_of(
    *,
    cores: float,
    memory_total: float,
    rss: float,
    uss: float,
    processes: float | None,
    threads: float | None,
) -> Machine:
    """The capacity model's machine from measured values, which may be fractional or missing.

    :raises SourceError: if the values describe no machine the model can plan for.
    """
    process_rss = max(1, round(rss))
    process_uss = round(uss) if 0 < uss <= rss else None  # 0: smaps was closed to the exporter
    try:
        return Machine(
            cores=max(1.0, float(cores)),
            memory_total=max(1, round(memory_total)),
            process_rss=process_rss,
            process_uss=process_uss,
            processes=round(processes) if processes and processes >= 1 else None,
            threads=round(threads) if threads and threads >= 1 else 1,
        )
    except ValueError as e:  # e.g. a box too small for its reserves: say so in one line
        raise SourceError(str(e)) from None


def ratio(num: float, den: float) -> float | None:
    """``num / den``, or None when there is nothing to divide by."""
    return num / den if den > 0 else None


class Counts:
    """Counter increases over a window (summed over consecutive scrapes), read by name and
    label: what :mod:`workermeter.observe` and :mod:`workermeter.observe_loops` compute from."""

    def __init__(self, values: Mapping[Key, float]) -> None:
        self.values = values

    def sum(self, name: str) -> float:
        return sum(v for (n, _), v in self.values.items() if n == name)

    def by(self, name: str, *labels: str) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {}
        for (n, ls), v in self.values.items():
            if n == name:
                d = dict(ls)
                key = tuple(d.get(label, "") for label in labels)
                out[key] = out.get(key, 0.0) + v
        return out

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """A histogram's cumulative bucket counts summed over its other labels, by bound."""
        return sorted((float(le), v) for (le,), v in self.by(name + "_bucket", "le").items())
