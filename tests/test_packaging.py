"""The package as ``python -m build`` and pip make it, with and without the compiled hot path.

Every case builds for real, from a copy of the files git tracks (or would track: new files that
are not ignored), into virtual environments of its own under the test's temporary directory, so
the source tree gets no build products. A C compiler, pyenv's Python 3.13 and a package index
are needed; where one is missing the tests fail, they do not skip.

The builds are shared by module-scoped fixtures: one ``python -m build`` gives the sdist and the
wheel that several tests read and install.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, cast

import pytest

ROOT = Path(__file__).resolve().parent.parent
FALLBACK = "workermeter: the compiled hot path is not built"
EXT_SUFFIX = str(sysconfig.get_config_var("EXT_SUFFIX"))  # .cpython-311-x86_64-linux-gnu.so
THIS_TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"
OTHER_PYTHON = "3.13"  # the newest pyenv has here; 3.10, the oldest, is left to scripts/test.sh

# A Cython compile of the hot path takes 20 to 40 s on a small machine; pip adds an isolated
# build environment (setuptools and Cython) to each build.
BUILD_TIMEOUT = 300.0
STEP_TIMEOUT = 120.0
TEST_TIMEOUT = 600

# What the test process may have set that would change what a build, an install or the installed
# package does: the suite also runs with WORKERMETER_PURE=1 (scripts/test.sh).
SCRUBBED = (
    "WORKERMETER_PURE",
    "WORKERMETER_NO_EXTENSION",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSAFEPATH",
    "VIRTUAL_ENV",
    "CC",
    "CXX",
    "LDSHARED",
    "CFLAGS",
    "CPPFLAGS",
    "LDFLAGS",
    "PIP_NO_BUILD_ISOLATION",
    "PIP_USER",
    "PIP_TARGET",
    "PIP_PREFIX",
    "PIP_REQUIRE_VIRTUALENV",
)

# Build products that must not turn up in the source tree (git status --ignored shows them).
PRODUCT = re.compile(r"(^|/)(build|dist)/$|\.egg-info/?$|_hotpath\.c$|\.so$|\.whl$|\.tar\.gz$")

# Run by the installed package's Python: which hot path it runs, and one WSGI request and one
# scrape through the middleware.
PROBE = """
import json, sys
import workermeter
from workermeter import WSGIMiddleware, speedups

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

mw = WSGIMiddleware(app, directory=sys.argv[1], threads=1)

def get(path):
    statuses = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": "127.0.0.1",
               "SERVER_NAME": "localhost", "SERVER_PORT": "80", "wsgi.multithread": False}
    response = mw(environ, lambda status, headers, exc_info=None: statuses.append(status))
    try:
        body = b"".join(response)
    finally:
        getattr(response, "close", lambda: None)()
    return statuses[0], body.decode()

request = get("/items/1")
scrape_status, text = get("/metrics")
info = [line for line in text.splitlines() if line.startswith("workermeter_worker_info{")]
requests = [line for line in text.splitlines() if line.startswith("workermeter_requests_total{")]
print(json.dumps({
    "path": speedups.PATH,
    "describe": speedups.describe(),
    "package": workermeter.__file__,
    "request": list(request),
    "scrape": scrape_status,
    "info": info,
    "requests": requests,
}))
"""


def tail(output: str | bytes | None, limit: int = 12_000) -> str:
    if output is None:
        return ""
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    if len(output) <= limit:
        return output
    return f"[... {len(output) - limit} characters]\n{output[-limit:]}"


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_ROOT_USER_ACTION"] = "ignore"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["WORKERMETER_HISTORY"] = "off"
    env.update(extra or {})
    return env


def run(
    cmd: Sequence[str | Path],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = STEP_TIMEOUT,
) -> str:
    """Run ``cmd`` and return its output (stdout and stderr); fail with that output if it fails.

    The command gets a process group of its own, so that a timeout ends what it started too
    (pip's build backend, the compiler).
    """
    args = [str(c) for c in cmd]
    shown = " ".join(args)
    with subprocess.Popen(
        args,
        cwd=cwd,
        env=environment(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            pytest.fail(f"`{shown}` ran over {timeout:.0f} s:\n{tail(output)}")
    assert proc.returncode == 0, f"`{shown}` exited {proc.returncode}:\n{tail(output)}"
    return output


def copy_source(dest: Path) -> Path:
    """The files of the work tree that git tracks, or would track, copied under ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    names = [os.fsdecode(n) for n in listed.split(b"\0") if n]
    assert "src/workermeter/_hotpath.pyx" in names, "git does not track the extension's source"
    for name in names:
        source = ROOT / name
        if not source.is_file():  # deleted in the work tree
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return dest


def repo_products() -> set[str]:
    status = subprocess.run(
        ["git", "status", "--porcelain", "--ignored"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    paths = {line[3:].strip('"') for line in status.splitlines() if len(line) > 3}
    return {p for p in paths if PRODUCT.search(p)}


def make_venv(where: Path, python: str | Path = sys.executable) -> Path:
    """A fresh virtual environment (no system site-packages), returned as its python."""
    run([python, "-m", "venv", where], cwd=where.parent)
    return where / "bin" / "python"


def fallback_lines(log: str) -> list[str]:
    # pip -v indents what the build backend prints.
    return [line.strip() for line in log.splitlines() if line.strip().startswith(FALLBACK)]


def one_fallback_line(install: Install) -> str:
    """The one fallback line of an install's log (failing with each line's pip step if not
    exactly one)."""
    lines = fallback_lines(install.log)
    steps = "\n".join(fallback_steps(install.log)) or tail(install.log)
    assert len(lines) == 1, f"{len(lines)} fallback lines, by pip step:\n{steps}"
    return lines[0]


def fallback_steps(log: str) -> list[str]:
    """The fallback lines, each with the pip step (build backend hook) that printed it."""
    step, found = "(before pip's first step)", []
    for line in log.splitlines():
        text = line.strip()
        if text.startswith("Running command "):
            step = text.removeprefix("Running command ")
        elif text.startswith(FALLBACK):
            found.append(f"{step}: {text}")
    return found


@dataclass
class Dists:
    sdist: Path
    wheel: Path
    log: str


@dataclass
class Install:
    python: Path
    log: str
    tree: Path  # the source copy it was installed from


@dataclass
class Other:
    python: Path  # the other Python's interpreter
    wheel: Path


class Probe(TypedDict):
    path: str
    describe: str
    package: str
    request: list[str]
    scrape: str
    info: list[str]
    requests: list[str]


def probe(python: Path, tmp: Path, extra: Mapping[str, str] | None = None) -> Probe:
    """What PROBE finds when ``python`` runs it."""
    script = tmp / "probe.py"
    script.write_text(PROBE)
    out = run([python, script, tmp / "store"], cwd=tmp, env=extra)
    return cast(Probe, json.loads(out.strip().splitlines()[-1]))


def version_line(python: Path, tmp: Path, extra: Mapping[str, str] | None = None) -> str:
    script = python.parent / "workermeter"
    assert script.exists(), f"the install made no workermeter command in {python.parent}"
    return " ".join(run([script, "--version"], cwd=tmp, env=extra).split())


def site_packages(python: Path, tmp: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    return Path(run([python, "-c", code], cwd=tmp).strip())


def other_python(version: str) -> Path:
    versions = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"

    def release(python: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in python.parent.parent.name.split(".") if p.isdigit())

    found = sorted(versions.glob(f"{version}.*/bin/python"), key=release)
    if found:
        return found[-1]
    on_path = shutil.which(f"python{version}")
    assert on_path, f"no Python {version}: neither {versions}/{version}.* nor python{version}"
    return Path(on_path)


# -- the builds, shared by the tests ------------------------------------------------------------


@pytest.fixture(scope="module")
def repo_before() -> set[str]:
    return repo_products()


@pytest.fixture(scope="module")
def dists(repo_before: set[str], tmp_path_factory: pytest.TempPathFactory) -> Dists:
    base = tmp_path_factory.mktemp("dists")
    tree = copy_source(base / "source")
    out = base / "dist"
    log = run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, tree],
        cwd=base,
        timeout=BUILD_TIMEOUT,
    )
    sdists = sorted(out.glob("*.tar.gz"))
    wheels = sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, f"{sorted(out.iterdir())}\n{tail(log)}"
    return Dists(sdists[0], wheels[0], log)


@pytest.fixture(scope="module")
def compiled_install(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Install:
    base = tmp_path_factory.mktemp("wheel-install")
    python = make_venv(base / "venv")
    log = run([python, "-m", "pip", "install", dists.wheel], cwd=base, timeout=BUILD_TIMEOUT)
    return Install(python, log, dists.wheel.parent)


def pip_install_source(
    name: str,
    tmp_path_factory: pytest.TempPathFactory,
    *options: str,
    env: Mapping[str, str] | None = None,
) -> Install:
    base = tmp_path_factory.mktemp(name)
    tree = copy_source(base / "source")
    python = make_venv(base / "venv")
    log = run(
        [python, "-m", "pip", "install", "-v", *options, tree],
        cwd=base,
        env=env,
        timeout=BUILD_TIMEOUT,
    )
    return Install(python, log, tree)


@pytest.fixture(scope="module")
def no_compiler(repo_before: set[str], tmp_path_factory: pytest.TempPathFactory) -> Install:
    # As on a machine without a C compiler: the compiler setuptools would run is not there.
    missing = "/nonexistent/cc"
    env = {"CC": missing, "CXX": missing, "LDSHARED": f"{missing} -shared"}
    return pip_install_source("no-compiler", tmp_path_factory, env=env)


@pytest.fixture(scope="module")
def no_extension(repo_before: set[str], tmp_path_factory: pytest.TempPathFactory) -> Install:
    env = {"WORKERMETER_NO_EXTENSION": "1"}
    return pip_install_source("no-extension", tmp_path_factory, env=env)


@pytest.fixture(scope="module")
def editable(repo_before: set[str], tmp_path_factory: pytest.TempPathFactory) -> Install:
    return pip_install_source("editable", tmp_path_factory, "-e")


@pytest.fixture(scope="module")
def other(repo_before: set[str], tmp_path_factory: pytest.TempPathFactory) -> Other:
    python = other_python(OTHER_PYTHON)
    base = tmp_path_factory.mktemp("other-python")
    tree = copy_source(base / "source")
    out = base / "wheels"
    log = run(
        [python, "-m", "pip", "wheel", "-v", "--no-deps", "--wheel-dir", out, tree],
        cwd=base,
        timeout=BUILD_TIMEOUT,
    )
    wheels = sorted(out.glob("workermeter-*.whl"))
    assert len(wheels) == 1, f"{sorted(out.iterdir())}\n{tail(log)}"
    return Other(python, wheels[0])


# -- python -m build: the sdist and the wheel ---------------------------------------------------


@pytest.mark.timeout(TEST_TIMEOUT)
def test_sdist_has_the_sources_and_no_build_products(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as sdist:
        names = sdist.getnames()
    top = names[0].split("/")[0]
    files = {n.removeprefix(f"{top}/") for n in names}
    wanted = {
        "setup.py",
        "pyproject.toml",
        "src/workermeter/_hotpath.pyx",
        "src/workermeter/_hotpath.pyi",
        "src/workermeter/hotpath.py",
        "src/workermeter/speedups.py",
        "src/workermeter/py.typed",
    }
    missing = sorted(wanted - files)
    built = sorted(n for n in files if n.endswith((".c", ".so", ".o", ".pyd")))
    extension = sorted(n for n in files if "_hotpath" in n)
    assert not missing and not built, (
        f"the sdist lacks {missing} and ships the build products {built}; "
        f"of the extension it has {extension}"
    )


@pytest.mark.timeout(TEST_TIMEOUT)
def test_wheel_is_for_this_python_and_holds_the_extension(dists: Dists) -> None:
    name = dists.wheel.name
    assert not name.endswith("-py3-none-any.whl"), f"a pure wheel: {name}\n{tail(dists.log)}"
    assert f"-{THIS_TAG}-{THIS_TAG}-" in name, f"{name} is not tagged for {THIS_TAG}"
    with zipfile.ZipFile(dists.wheel) as wheel:
        files = set(wheel.namelist())
    wanted = {
        f"workermeter/_hotpath{EXT_SUFFIX}",
        "workermeter/_hotpath.pyi",
        "workermeter/py.typed",
    }
    assert not wanted - files, f"the wheel lacks {sorted(wanted - files)}; it has {sorted(files)}"
    # The .pyx and its generated C are build inputs: the installed package does not use them.
    sources = sorted(n for n in files if n.endswith((".pyx", ".c", ".pxd")))
    assert not sources, f"the wheel ships the extension's sources: {sources}"


@pytest.mark.timeout(TEST_TIMEOUT)
def test_sdist_builds_the_compiled_wheel(dists: Dists, tmp_path: Path) -> None:
    # What pip does with the sdist from an index, and `python -m build` without --sdist --wheel.
    out = tmp_path / "wheels"
    log = run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--wheel-dir", out, dists.sdist],
        cwd=tmp_path,
        timeout=BUILD_TIMEOUT,
    )
    assert not fallback_lines(log), f"the sdist built no extension:\n{tail(log)}"
    wheels = sorted(out.glob("workermeter-*.whl"))
    assert len(wheels) == 1, f"{sorted(out.iterdir())}\n{tail(log)}"
    with zipfile.ZipFile(wheels[0]) as wheel:
        assert f"workermeter/_hotpath{EXT_SUFFIX}" in wheel.namelist(), wheel.namelist()


# -- installs with the compiled hot path --------------------------------------------------------


@pytest.mark.timeout(TEST_TIMEOUT)
def test_installed_wheel_runs_the_compiled_hot_path(
    compiled_install: Install, tmp_path: Path
) -> None:
    found = probe(compiled_install.python, tmp_path)
    assert found["path"] == "compiled", found
    assert found["describe"] == "hot path: compiled (workermeter._hotpath)", found
    assert "site-packages" in found["package"], found
    assert found["request"] == ["200 OK", "ok"], found
    assert found["scrape"] == "200 OK", found
    assert any('path="compiled"' in line for line in found["info"]), found
    assert found["requests"], found
    line = version_line(compiled_install.python, tmp_path)
    assert line.startswith("workermeter 0."), line
    assert "hot path: compiled" in line, line


@pytest.mark.timeout(TEST_TIMEOUT)
def test_pure_variable_forces_the_python_hot_path(
    compiled_install: Install, tmp_path: Path
) -> None:
    pure = {"WORKERMETER_PURE": "1"}
    found = probe(compiled_install.python, tmp_path, pure)
    assert found["path"] == "python", found
    assert found["describe"] == "hot path: pure Python (WORKERMETER_PURE is set)", found
    assert found["request"] == ["200 OK", "ok"], found
    assert any('path="python"' in line for line in found["info"]), found
    line = version_line(compiled_install.python, tmp_path, pure)
    assert "hot path: pure Python (WORKERMETER_PURE is set)" in line, line


@pytest.mark.timeout(TEST_TIMEOUT)
def test_editable_install_builds_the_extension_in_place(editable: Install, tmp_path: Path) -> None:
    built = editable.tree / "src" / "workermeter" / f"_hotpath{EXT_SUFFIX}"
    assert built.is_file(), f"no {built.name} in the source tree:\n{tail(editable.log)}"
    assert not fallback_lines(editable.log), tail(editable.log)
    found = probe(editable.python, tmp_path)
    assert found["path"] == "compiled", f"{found}\n{tail(editable.log)}"
    assert Path(found["package"]).is_relative_to(editable.tree / "src"), found


@pytest.mark.timeout(TEST_TIMEOUT)
def test_other_python_builds_and_runs_the_compiled_hot_path(other: Other, tmp_path: Path) -> None:
    code = "import sys; print(f'cp{sys.version_info.major}{sys.version_info.minor}')"
    tag = run([other.python, "-c", code], cwd=tmp_path).strip()
    assert f"-{tag}-{tag}-" in other.wheel.name, f"{other.wheel.name} is not tagged for {tag}"
    with zipfile.ZipFile(other.wheel) as wheel:
        modules = [n for n in wheel.namelist() if n.startswith("workermeter/_hotpath.")]
    assert any(n.endswith(".so") and f"-{tag[2:]}-" in n for n in modules), modules
    python = make_venv(tmp_path / "venv", other.python)
    run([python, "-m", "pip", "install", other.wheel], cwd=tmp_path, timeout=BUILD_TIMEOUT)
    found = probe(python, tmp_path)
    assert found["path"] == "compiled", found
    assert found["request"] == ["200 OK", "ok"], found
    assert found["scrape"] == "200 OK", found
    assert probe(python, tmp_path, {"WORKERMETER_PURE": "1"})["path"] == "python"


# -- installs without it ------------------------------------------------------------------------


@pytest.mark.timeout(TEST_TIMEOUT)
def test_no_compiler_install_says_so_in_one_line(no_compiler: Install) -> None:
    line = one_fallback_line(no_compiler)
    assert "/nonexistent/cc" in line, line
    assert line.endswith("; the pure-Python one will be used"), line


@pytest.mark.timeout(TEST_TIMEOUT)
def test_no_compiler_install_runs_the_python_hot_path(no_compiler: Install, tmp_path: Path) -> None:
    package = site_packages(no_compiler.python, tmp_path) / "workermeter"
    assert not list(package.glob("_hotpath*.so")), sorted(p.name for p in package.iterdir())
    assert (package / "_hotpath.pyi").is_file()
    found = probe(no_compiler.python, tmp_path)
    assert found["path"] == "python", found
    describe = found["describe"]
    assert describe.startswith("hot path: pure Python (not built ("), describe
    assert "_hotpath" in describe, describe
    assert found["request"] == ["200 OK", "ok"], found
    assert found["scrape"] == "200 OK", found
    assert any('path="python"' in line for line in found["info"]), found
    assert found["requests"], found
    line = version_line(no_compiler.python, tmp_path)
    assert "hot path: pure Python (not built" in line, line


@pytest.mark.timeout(TEST_TIMEOUT)
def test_no_extension_install_says_so_in_one_line(no_extension: Install) -> None:
    line = one_fallback_line(no_extension)
    assert "WORKERMETER_NO_EXTENSION is set" in line, line


@pytest.mark.timeout(TEST_TIMEOUT)
def test_no_extension_install_runs_the_python_hot_path(
    no_extension: Install, tmp_path: Path
) -> None:
    assert "Building wheel for workermeter" in no_extension.log, tail(no_extension.log)
    assert "-py3-none-any.whl" in no_extension.log, tail(no_extension.log)
    package = site_packages(no_extension.python, tmp_path) / "workermeter"
    assert not list(package.glob("_hotpath*.so")), sorted(p.name for p in package.iterdir())
    found = probe(no_extension.python, tmp_path)
    assert found["path"] == "python", found
    assert found["describe"].startswith("hot path: pure Python (not built ("), found
    assert found["request"] == ["200 OK", "ok"], found


@pytest.fixture(scope="module")
def foreign_module(other: Other, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The other Python's compiled hot path, which this Python cannot load."""
    with zipfile.ZipFile(other.wheel) as wheel:
        names = [n for n in wheel.namelist() if re.fullmatch(r"workermeter/_hotpath\..*\.so", n)]
        assert len(names) == 1, wheel.namelist()
        return wheel.read(names[0])


@pytest.mark.timeout(TEST_TIMEOUT)
@pytest.mark.parametrize("broken", ["empty", "garbage", "another Python's"])
def test_extension_that_cannot_load_leaves_the_python_hot_path(
    broken: str, compiled_install: Install, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # A copy of the installed compiled package, its module replaced by one that does not load,
    # put ahead of site-packages.
    copy = tmp_path / "copy"
    installed = site_packages(compiled_install.python, tmp_path) / "workermeter"
    shutil.copytree(installed, copy / "workermeter")
    module = copy / "workermeter" / f"_hotpath{EXT_SUFFIX}"
    assert module.is_file(), sorted(p.name for p in module.parent.iterdir())
    if broken == "empty":
        module.write_bytes(b"")
    elif broken == "garbage":
        module.write_bytes(b"\x7fELF not really a shared object" * 40)
    else:
        foreign: bytes = request.getfixturevalue("foreign_module")
        module.write_bytes(foreign)
    found = probe(compiled_install.python, tmp_path, {"PYTHONPATH": str(copy)})
    assert Path(found["package"]).is_relative_to(copy), found
    assert found["path"] == "python", found
    describe = found["describe"]
    assert describe.startswith("hot path: pure Python (cannot load ("), describe
    assert str(module) in describe, f"the reason does not name {module}: {describe}"
    assert found["request"] == ["200 OK", "ok"], found
    assert found["scrape"] == "200 OK", found


# -- and the source tree is left as it was ------------------------------------------------------


@pytest.mark.timeout(TEST_TIMEOUT)
def test_source_tree_gets_no_build_products(
    repo_before: set[str],
    dists: Dists,
    compiled_install: Install,
    no_compiler: Install,
    no_extension: Install,
    editable: Install,
    other: Other,
) -> None:
    after = repo_products()
    assert after <= repo_before, f"new in {ROOT}: {sorted(after - repo_before)}"
