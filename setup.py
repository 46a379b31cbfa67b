"""The optional compiled hot path (src/workermeter/_hotpath.pyx).

Everything else about the package is in pyproject.toml. The extension is built where Cython and a
C compiler are present; where either is missing, or the build fails, the install goes on without
it, says so in one line, and workermeter runs its pure-Python hot path. (pip shows that line with
``pip install -v``; ``workermeter --version`` says which path an installed copy runs.)
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCE = "src/workermeter/_hotpath.pyx"
SKIP = "WORKERMETER_NO_EXTENSION"  # set (to 1) to install without compiling


def say_pure(why: object) -> None:
    print(f"workermeter: the compiled hot path is not built ({why}); "
          "the pure-Python one will be used", file=sys.stderr)  # fmt: skip


def why_not_built() -> str:
    """Why the extension cannot be built here, or "" when it can be tried."""
    if os.environ.get(SKIP, "") not in ("", "0"):
        return f"{SKIP} is set"
    if sys.implementation.name != "cpython":
        return f"{sys.implementation.name} runs the pure-Python one faster"
    try:
        import Cython.Build  # noqa: F401  (setuptools' build_ext cythonizes when it imports)
    except ImportError:
        return "Cython is not installed"
    return ""


class OptionalBuildExt(build_ext):
    """build_ext that lets the install go on when the extension cannot be compiled.

    With Cython importable, setuptools' build_ext is Cython's, which turns the .pyx into C as
    it builds; the generated C goes to the build directory, not beside the source.
    """

    def initialize_options(self) -> None:
        super().initialize_options()
        self.cython_c_in_temp = 1

    def run(self) -> None:
        why = why_not_built()
        if why:
            say_pure(why)
            return
        try:
            super().run()
        except Exception as e:  # no compiler at all: DistutilsPlatformError and the like
            say_pure(e)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:  # CompileError, a missing Python.h, a linker failure
            say_pure(e)


setup(
    ext_modules=[Extension("workermeter._hotpath", [SOURCE], extra_compile_args=["-O2"])],
    cmdclass={"build_ext": OptionalBuildExt},
)
