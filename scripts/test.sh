#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine, as root: install every test dependency
# (Debian packages, then the package with its test extras), run ruff, mypy and pytest.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k nginx -x`.
set -uo pipefail

cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

have() { PATH="$PATH:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1; }

missing=()
have nginx || missing+=(nginx)
have prometheus || missing+=(prometheus)
# Apache for the proxy and mod_wsgi tests; apache2-dev (apxs) to build mod_wsgi from PyPI.
have apache2 || missing+=(apache2)
have apxs || missing+=(apache2-dev)
have haproxy || missing+=(haproxy)
# The status page's browser tests: Chromium without a screen, driven over the DevTools protocol.
[ -x /usr/bin/chromium-headless-shell ] || missing+=(chromium-headless-shell)
have caddy || missing+=(caddy)
# The protobuf exposition is decoded with the official metrics.proto, compiled by protoc.
[ -f /usr/share/gocode/src/github.com/prometheus/client_model/io/prometheus/client/metrics.proto ] \
    || missing+=(golang-github-prometheus-client-model-dev)
have protoc || missing+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/timestamp.proto ] || missing+=(libprotobuf-dev)
# uWSGI and mod_wsgi are compiled from PyPI by the pip install below.
have gcc || missing+=(gcc libc6-dev)
# The compiled hot path's memory checks.
have valgrind || missing+=(valgrind)
# Node runs the KEDA and prometheus-operator CRD schemas the Kubernetes recipes are checked against.
have node || missing+=(nodejs)
have npm || missing+=(npm)
if ((${#missing[@]})); then
    if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
    echo "installing Debian packages: ${missing[*]}"
    # Keep the packages' services from starting (a system nginx, Apache, HAProxy or Caddy would
    # take port 80); the tests start their own on free loopback ports.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod +x "$policy"
        trap '"${sudo[@]}" rm -f "$policy"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq || exit 1
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || exit 1
fi

PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]' || exit 1
models=.venvs/kubernetes-models
if [ ! -d "$models/node_modules/@kubernetes-models/keda" ] \
    || [ ! -d "$models/node_modules/@kubernetes-models/prometheus-operator" ]; then
    npm install --prefix "$models" --no-audit --no-fund --silent \
        @kubernetes-models/keda@2.0.0 @kubernetes-models/prometheus-operator@6.0.0 || exit 1
fi

# The event-loop tests also run their servers on the oldest and newest Python pyenv has here:
# asyncio's internals differ between versions. Each gets a virtual environment with the servers
# and what the core tests need; workermeter itself is imported from src/, where the compiled hot
# path is built for each Python beside the one pip built above.
loop_deps=(uvicorn uvloop httptools starlette anyio gunicorn packaging gevent prometheus-client psutil)
core_deps=(pytest pytest-timeout hypothesis requests "Cython>=3.0.10" "setuptools>=77")
others=()
for version in 3.10 3.13; do
    found=$(ls -d "${PYENV_ROOT:-/root/.pyenv}/versions/$version".*/bin/python 2>/dev/null | tail -1)
    [ -n "$found" ] || continue
    venv=.venvs/py$version
    if [ ! -x "$venv/bin/python" ]; then
        "$found" -m venv "$venv" || exit 1
    fi
    PIP_ROOT_USER_ACTION=ignore "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        "${loop_deps[@]}" "${core_deps[@]}" || exit 1
    # The build directory goes to /tmp: a build/ here would shadow the `build` package
    # tests/test_packaging.py runs.
    temp=$(mktemp -d)
    "$venv/bin/python" setup.py -q build_ext --inplace -b "$temp/lib" -t "$temp/temp" >/dev/null || exit 1
    rm -rf "$temp"
    others+=("$venv/bin/python")
done

status=0
echo "ruff check src tests benchmarks grafana scripts setup.py"
"$PYTHON" -m ruff check src tests benchmarks grafana scripts setup.py || status=1
echo "mypy"
"$PYTHON" -m mypy || status=1

# The whole suite runs on both hot paths: the compiled one here, the pure-Python one
# (WORKERMETER_PURE=1, which the servers the tests start inherit) beside it, at the same time
# on the machine's two cores, followed by the core tests (no servers) on the other Pythons, on
# both paths. The second lane's output is printed when it is done; the first lane's summary
# closes the output.
CORE=(tests/test_recorder.py tests/test_request_start.py tests/test_wsgi.py tests/test_asgi.py
      tests/test_store.py tests/test_exposition.py tests/test_textformat.py
      tests/test_hotpath_differential.py tests/test_hotpath_memory.py)
lanes=$(mktemp -d)
(
    lane=0
    echo "== the whole suite on the pure-Python hot path (WORKERMETER_PURE=1)"
    # tests/test_packaging.py builds and installs the package with the variable cleared, on
    # both paths: once, in the first lane, is enough.
    WORKERMETER_PURE=1 "$PYTHON" -m pytest -p no:cacheprovider --basetemp="$lanes/pure" \
        --ignore=tests/test_packaging.py "$@" || lane=1
    for python in "${others[@]}"; do
        for pure in 0 1; do
            echo "== core tests on $("$python" -V), WORKERMETER_PURE=$pure"
            WORKERMETER_PURE=$pure PYTHONPATH=src:tests "$python" -m pytest -p no:cacheprovider \
                --basetemp="$lanes/py-$pure" -q "${CORE[@]}" -k "not valgrind" || lane=1
        done
    done
    exit "$lane"
) >"$lanes/second.log" 2>&1 &
second=$!
echo "== the whole suite on the compiled hot path"
compiled=passed
"$PYTHON" -m pytest --basetemp="$lanes/compiled" "$@" || { compiled=FAILED; status=1; }
pure=passed
wait "$second" || { pure=FAILED; status=1; }
cat "$lanes/second.log"
rm -rf "$lanes"
echo "== compiled hot path: $compiled; pure-Python hot path and the other Pythons: $pure"
exit "$status"
