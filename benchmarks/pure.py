"""workermeter with its pure-Python hot path, in the same process as the compiled one.

The hot path is picked once, when the package is imported (``workermeter.speedups``). To compare
both in one interleaved run, :func:`load` imports the package a second time with
``WORKERMETER_PURE=1``, as a module graph of its own, and puts the first one back: the compiled
classes stay what ``import workermeter`` gives, the pure ones are ``load().WSGIMiddleware``.
What the second graph imports later (the exposition, at a scrape) comes from the first: the
requests of a benchmark are served by its own modules alone.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from types import ModuleType


@functools.cache
def load() -> ModuleType:
    """The ``workermeter`` package, imported again with its pure-Python hot path."""
    import workermeter  # the graph of the caller, imported first so that it stays the default

    ours = {name: m for name, m in sys.modules.items() if _in_package(name)}
    before = os.environ.get("WORKERMETER_PURE")
    os.environ["WORKERMETER_PURE"] = "1"
    try:
        for name in ours:
            del sys.modules[name]
        pure = importlib.import_module("workermeter")
        # Its names are imported when first asked for: ask now, while the graph is its own.
        for name in pure.__all__:
            getattr(pure, name)
        assert pure.speedups.PATH == "python", pure.speedups.describe()
    finally:
        for name in [name for name in sys.modules if _in_package(name)]:
            del sys.modules[name]
        sys.modules.update(ours)
        if before is None:
            del os.environ["WORKERMETER_PURE"]
        else:
            os.environ["WORKERMETER_PURE"] = before
    assert sys.modules["workermeter"] is workermeter
    return pure


def _in_package(name: str) -> bool:
    return name == "workermeter" or name.startswith("workermeter.")
