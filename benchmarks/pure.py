"""workermeter with the other hot path, in the same process as the one it runs.

The hot path is picked once, when the package is imported (``workermeter.speedups``). To compare
both in one interleaved run, :func:`load` imports the package a second time with
``WORKERMETER_PURE`` set for the path asked for, as a module graph of its own, and puts the first
one back: the classes of the process's own path stay what ``import workermeter`` gives, the
other's are ``load().WSGIMiddleware`` (the pure-Python ones by default, ``load(pure=False)`` the
compiled ones). What the second graph imports later (the exposition, at a scrape) comes from the
first: the requests of a benchmark are served by its own modules alone.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from types import ModuleType


@functools.cache
def load(pure: bool = True) -> ModuleType:
    """The ``workermeter`` package, imported again with its pure-Python hot path, or with the
    compiled one for ``pure=False`` (``AssertionError`` saying why when it does not import)."""
    import workermeter  # the graph of the caller, imported first so that it stays the default

    ours = {name: m for name, m in sys.modules.items() if _in_package(name)}
    before = os.environ.get("WORKERMETER_PURE")
    os.environ["WORKERMETER_PURE"] = "1" if pure else "0"
    try:
        for name in ours:
            del sys.modules[name]
        other = importlib.import_module("workermeter")
        # Its names are imported when first asked for: ask now, while the graph is its own.
        for name in other.__all__:
            getattr(other, name)
        path = other.speedups.PATH
        assert path == ("python" if pure else "compiled"), other.speedups.describe()
    finally:
        for name in [name for name in sys.modules if _in_package(name)]:
            del sys.modules[name]
        sys.modules.update(ours)
        if before is None:
            del os.environ["WORKERMETER_PURE"]
        else:
            os.environ["WORKERMETER_PURE"] = before
    assert sys.modules["workermeter"] is workermeter
    return other


def _in_package(name: str) -> bool:
    return name == "workermeter" or name.startswith("workermeter.")
