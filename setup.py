"""The optional compiled hot path (src/workermeter/_hotpath.pyx).

Everything else about the package is in pyproject.toml. The extension is built where Cython and a
C compiler are present; where either is missing, or the build fails, the install goes on without
it, says so in one line, and workermeter runs its pure-Python hot path.
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


class OptionalBuildExt(build_ext):
    """build_ext that lets the install go on when the extension cannot be compiled."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # no compiler at all: DistutilsPlatformError and the like
            say_pure(e)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:  # CompileError, a missing Python.h, a linker failure
            say_pure(e)


def extensions() -> list[Extension]:
    if os.environ.get(SKIP, "") not in ("", "0"):
        say_pure(f"{SKIP} is set")
        return []
    if sys.implementation.name != "cpython":
        say_pure(f"{sys.implementation.name} runs the pure-Python one faster")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        say_pure("Cython is not installed")
        return []
    ext = Extension("workermeter._hotpath", [SOURCE], extra_compile_args=["-O2"])
    return list(cythonize([ext], quiet=True))


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
