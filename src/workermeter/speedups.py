"""Which hot path this process runs: the compiled one (``_hotpath``, built from
``_hotpath.pyx`` where a C compiler was present at install) or the pure-Python reference
(``hotpath.py``, with the middleware's own in ``wsgi.py`` and ``asgi.py``).

The compiled one is used when it imports; ``WORKERMETER_PURE=1`` forces the pure one. Both write
the same values: the choice changes what a request costs, not what is measured.
``workermeter_worker_info``'s ``path`` label and ``workermeter``'s first line say which runs.
"""

from __future__ import annotations

import importlib
import os
import platform
from types import ModuleType
from typing import TYPE_CHECKING

ENV_PURE = "WORKERMETER_PURE"
_OFF = ("", "0", "no", "false", "off")

COMPILED = "compiled"
PYTHON = "python"


def _load() -> tuple[ModuleType | None, str]:
    """The compiled module, or None and why not."""
    if os.environ.get(ENV_PURE, "").strip().lower() not in _OFF:
        return None, f"{ENV_PURE} is set"
    if platform.python_implementation() != "CPython":
        return None, f"built for CPython, this is {platform.python_implementation()}"
    try:
        # Not `from . import`: that raises a plain ImportError for a module that is not there.
        _hotpath = importlib.import_module("._hotpath", __package__)
    except ModuleNotFoundError as e:  # not built: no C compiler or no Cython at install
        return None, f"not built ({e})"
    except ImportError as e:  # there, but not loadable: built for another Python, damaged
        return None, f"cannot load ({e})"
    return _hotpath, ""


compiled, why_pure = _load()
PATH = COMPILED if compiled is not None else PYTHON
"""``compiled`` or ``python``: which hot path this process runs."""

if TYPE_CHECKING or compiled is None:
    from .hotpath import ActiveCore, LaneCore
else:
    ActiveCore = compiled.ActiveCore
    LaneCore = compiled.LaneCore


def describe() -> str:
    """One line saying which hot path runs, and why when it is the pure one."""
    if compiled is not None:
        return "hot path: compiled (workermeter._hotpath)"
    return f"hot path: pure Python ({why_pure})"


__all__ = ["COMPILED", "ENV_PURE", "PATH", "PYTHON", "ActiveCore", "LaneCore", "compiled",
           "describe"]  # fmt: skip
