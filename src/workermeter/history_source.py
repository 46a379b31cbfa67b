"""The capacity inputs from a server instance's own history (``workermeter suggest --history``
and the status page), read the way :mod:`workermeter.prometheus_source` reads Prometheus.

The peak is the 5 consecutive minutes of the window (or the hour, for rows of an hour) with the
most busy slot-time: the most offered load, which is what the workers must carry. A burst of
cheap requests can have the higher rate and still ask less of them. The peak rate and the service
time are that peak's, so that their product is the load measured there; the typical rate is the
mean over the minutes recorded. Utilisation and the share of time every slot was busy are the
peak's too (they say whether the workers were saturated). The service time's variability, the CPU
share and queue wait are over the whole window; memory is the largest any worker had; cores, host
memory, processes and threads are their last values.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Sequence
from pathlib import Path

from . import history as h
from .capacity import LoopDemand, Workload
from .history_writer import ENV_HISTORY
from .instance import ENV_DIR
from .measurement import (
    Measurement,
    SourceError,
    bucket_cv,
    clamp_share,
    cpu_notes,
    machine_of,
    rounded_rate,
)

PEAK_MINUTES = 5


def open_history(directory: str | os.PathLike[str] | None = None) -> h.HistoryFile:
    """The history file in ``directory``, else in ``$WORKERMETER_HISTORY_DIR``, else in
    ``$WORKERMETER_DIR`` (the store).

    :raises SourceError: if there is none there, saying what to pass.
    """
    given = directory or os.environ.get(ENV_HISTORY) or os.environ.get(ENV_DIR)
    if not given:
        raise SourceError(
            f"no history directory: pass --dir DIR or set {ENV_HISTORY} (or {ENV_DIR})"
        )
    path = Path(given)
    try:
        return h.HistoryFile(path)
    except FileNotFoundError:
        raise SourceError(
            f"no {h.FILE_NAME} in {path}: pass the directory the server keeps its history in "
            f"(its {ENV_HISTORY}, else its {ENV_DIR})"
        ) from None
    except (OSError, ValueError) as e:
        raise SourceError(f"cannot read the history in {path}: {e}") from None


def _cumulative(buckets: Sequence[int]) -> list[tuple[float, float]]:
    out, seen = [], 0
    for bound, count in zip((*h.COARSE, math.inf), buckets, strict=True):
        seen += count
        out.append((bound, float(seen)))
    return out


def peak_window(found: Sequence[h.Row], width: int) -> list[h.Row]:
    """The ``width`` consecutive rows with the most busy slot-time, then the most requests
    (gaps count as none)."""
    loads = [
        (0, 0) if row.values is None else (row.values[h.BUSY_NS], row.requests) for row in found
    ]
    best_load, best_at = (-1, -1), 0
    busy = requests = 0
    for i, (b, n) in enumerate(loads):  # a window sliding by one row
        busy, requests = busy + b, requests + n
        if i >= width:
            busy, requests = busy - loads[i - width][0], requests - loads[i - width][1]
        start = max(i - width + 1, 0)
        ends = i >= width - 1 or i == len(loads) - 1
        if ends and (busy, requests) > best_load and any(r.values for r in found[start : i + 1]):
            best_load, best_at = (busy, requests), start
    return [row for row in found[best_at : best_at + width] if not row.gap]


def folded(found: Sequence[h.Row]) -> h.Row:
    """Several rows as one (a gap when all are gaps)."""
    present = [row.values for row in found if row.values is not None]
    if not present:
        return h.Row(found[0].start if found else 0.0, 0.0, None)
    values = h.fold(present, 0)
    return h.Row(found[0].start, sum(row.seconds for row in found), tuple(values))


def when(start: float) -> str:
    return datetime.datetime.fromtimestamp(start).strftime("%Y-%m-%d %H:%M")


def measure_history(found: Sequence[h.Row], *, what: str) -> Measurement:
    """The capacity inputs from consecutive history rows (minutes or hours), ``what`` naming
    where they come from.

    :raises SourceError: if no request was recorded in them.
    """
    present = [row for row in found if not row.gap]
    whole = folded(found)
    if not present or not whole.requests or not whole.service_mean:
        raise SourceError(
            f"the history has no request in {what}: pick a range when the app had traffic"
        )
    width = PEAK_MINUTES if found[0].seconds == 60 else 1
    peak = folded(peak_window(found, width))
    assert peak.values is not None and peak.covered > 0
    peak_rate = peak.requests / peak.covered
    service_time = peak.service_mean or whole.service_mean  # none completed in the peak: whole
    typical = None
    if whole.covered:
        typical = min(rounded_rate(whole.requests / whole.covered), rounded_rate(peak_rate))
    cpu_share = whole.cpu_share
    busy = whole.busy_slots * whole.covered if whole.busy_slots is not None else 0.0
    process_share = None
    if whole.process_cpu is not None and busy > 0:
        process_share = whole.process_cpu * whole.covered / busy
    share = cpu_share if cpu_share is not None else process_share
    loops = None
    v = peak.values
    if v[h.LOOP_OBSERVED_NS]:
        loop_busy = v[h.LOOP_BUSY_NS] / peak.covered
        w = whole.values
        assert w is not None
        loop_cpu = (w[h.PROCESS_CPU_NS] / w[h.LOOP_BUSY_NS]) if w[h.LOOP_BUSY_NS] else 0.0
        loops = LoopDemand(busy=loop_busy, cpu_share=clamp_share(loop_cpu))
    all_busy = peak.all_busy_seconds / peak.covered
    workload = Workload(
        peak_rate=rounded_rate(peak_rate),
        service_time=service_time,
        cpu_share=clamp_share(share or 0.0),
        service_cv=bucket_cv(_cumulative(whole._buckets(h.SERVICE_BUCKETS))) or 1.0,
        typical_rate=typical,
        utilisation=None if peak.utilisation is None else clamp_share(peak.utilisation),
        all_busy_share=clamp_share(all_busy) if peak.values[h.CAPACITY_NS] else None,
        loops=loops,
    )
    last = present[-1]
    if not last.host_memory or not last.cores or not whole.rss_max:
        raise SourceError(
            f"the history has no memory reading in {what}: its writer samples the workers every "
            f"few seconds; pick a range it was running in"
        )
    machine = machine_of(
        cores=last.cores,
        memory_total=last.host_memory,
        rss=whole.rss_max,
        uss=whole.uss_max,
        processes=last.workers,
        threads=last.slots / last.workers if last.workers else None,
    )
    gaps = sum(row.seconds for row in found if row.gap)
    notes = cpu_notes(cpu_share, process_share)
    unit = "minutes" if width > 1 else "hour"
    notes.append(
        f"The peak is the busiest {width if width > 1 else ''} {unit} of the history, "
        f"from {when(peak.start)}.".replace("  ", " ")
    )
    if gaps:
        notes.append(f"{gaps / 3600:.1f} h of the range have no record (nothing ran or wrote).")
    return Measurement(
        source=f"the history of {what}",
        seconds=whole.covered,
        workload=workload,
        machine=machine,
        queue_wait_p50=whole.queue_wait(0.5),
        queue_wait_p95=whole.queue_wait(0.95),
        notes=tuple(notes),
    )
