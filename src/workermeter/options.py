"""Options shared by the WSGI and ASGI middleware, checked once at construction."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .exposition import Exposition
from .instance import default_directory
from .recorder import CPU_SAMPLE, ROUTE_LIMIT, UPLOAD_BYTES, Recorder

ENV_TOKEN = "WORKERMETER_TOKEN"


@dataclass(frozen=True)
class Options:
    recorder: Recorder
    exposition: Exposition
    metrics_path: str | None
    token: str | None
    max_skew: float
    max_age: float


def build(
    *,
    route: Any,
    threads: int | None,
    metrics_path: str | None,
    token: str | None,
    directory: str | os.PathLike[str] | None,
    route_limit: int | None,
    cpu_sample: int | None,
    upload_bytes: int | None,
    max_skew: float,
    max_age: float,
    recorder: Recorder | None,
) -> Options:
    """Validate the middleware's options; raise ``ValueError`` saying what to do."""
    if route is not None and not callable(route):
        raise ValueError(f"route must be a callable returning the route template, got {route!r}")
    if metrics_path is not None and (
        not isinstance(metrics_path, str) or not metrics_path.startswith("/")
    ):
        raise ValueError(
            f"metrics_path must be a path starting with '/' (or None to not serve metrics), "
            f"got {metrics_path!r}"
        )
    for name, value in (("max_skew", max_skew), ("max_age", max_age)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    if token is None:
        token = os.environ.get(ENV_TOKEN) or None
    elif not isinstance(token, str) or not token:
        raise ValueError("token must be a non-empty string (or None to use WORKERMETER_TOKEN)")
    if recorder is None:
        recorder = Recorder(
            directory=Path(directory) if directory is not None else default_directory,
            threads=threads,
            route_limit=ROUTE_LIMIT if route_limit is None else route_limit,
            cpu_sample=CPU_SAMPLE if cpu_sample is None else cpu_sample,
            upload_bytes=UPLOAD_BYTES if upload_bytes is None else upload_bytes,
        )
    else:
        given = {"directory": directory, "threads": threads, "route_limit": route_limit,
                 "cpu_sample": cpu_sample, "upload_bytes": upload_bytes}  # fmt: skip
        clash = [name for name, value in given.items() if value is not None]
        if clash:
            raise ValueError(f"pass {', '.join(clash)} to the Recorder, not beside recorder=")
    return Options(
        recorder=recorder,
        exposition=Exposition(recorder.store),
        metrics_path=metrics_path,
        token=token,
        max_skew=float(max_skew),
        max_age=float(max_age),
    )
