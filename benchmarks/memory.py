"""Memory added per worker process: python benchmarks/memory.py [--requests N] [--routes R]

Each case runs in a fresh Python process, the way a worker lives: import the app, serve N
requests spread over R routes (a 200 and a 404 on each), then read the process's RSS and USS
from ``/proc/self`` (USS is the memory only this process holds, what a forked worker adds). The
difference from the bare app of the same framework is what the meter costs, imports included.

"scraped once" cases then answer one ``GET /metrics`` from the middleware itself, as a worker of
a pre-fork server does when Prometheus scrapes the workers' port: that loads the exposition and
psutil, which a worker never scraped (metrics served by the gunicorn hooks or ``workermeter
serve``) does not. psutil is not imported to measure, so that it counts where it is loaded.

Modules are loaded from bytecode, as in a deployment (a wheel's install writes it): each case
runs once unmeasured to compile its modules into a private cache. Compiling a module leaves
memory behind in the process, ~1 MiB for workermeter's; ``--no-bytecode`` measures that case
(no ``__pycache__`` written, e.g. under ``PYTHONDONTWRITEBYTECODE=1``).
Target (issue 6): <= 2 MiB added per worker.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import sys, json, os, time
sys.path.insert(0, {here!r})
framework, meter, store = sys.argv[1], sys.argv[2], sys.argv[5]
n, routes = int(sys.argv[3]), int(sys.argv[4])

def memory():
    # What psutil.Process().memory_full_info() reports as rss and uss, without importing it.
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    uss = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Private_"):  # Private_Clean, Private_Dirty, Private_Hugetlb
                uss += int(line.split()[1]) * 1024
    return {{"rss": rss, "uss": uss}}

def wsgi_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]

def start_response(status, headers, exc_info=None):
    return None

if framework == "flask":
    from flask import Flask
    app = Flask("bench")
    @app.get("/r<int:r>/<s>")
    def item(r, s):
        return ("ok", 404) if s == "x" else "ok"
    inner = app.wsgi_app
else:
    app = inner = wsgi_app
if meter in ("workermeter", "workermeter, scraped once"):
    from workermeter import WSGIMiddleware
    wrapped = WSGIMiddleware(inner, directory=store, threads=1, route_limit=1000)
elif meter == "workermeter, imported only":
    import workermeter
    wrapped = inner
elif meter == "prometheus_client by hand":
    from cases import HandWritten, HandWrittenWSGI  # imports workermeter's header parser too
    wrapped = HandWrittenWSGI(inner, HandWritten())
else:
    wrapped = inner
if framework == "flask":
    app.wsgi_app = wrapped
else:
    app = wrapped
for i in range(n):
    r, s = (i // 2) % routes, "yx"[i % 2]
    environ = {{
        "REQUEST_METHOD": "GET", "PATH_INFO": f"/r{{r}}/{{s}}", "SCRIPT_NAME": "",
        "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1:8000", "wsgi.url_scheme": "http",
        "wsgi.input": sys.stdin.buffer, "wsgi.errors": sys.stderr, "wsgi.multithread": False,
        "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0),
        "HTTP_X_REQUEST_START": f"t={{time.time():.3f}}",
    }}
    if framework != "flask":
        environ["workermeter.route"] = f"/r{{r}}/{{{{s}}}}"
    body = app(environ, start_response)
    for _ in body:
        pass
    close = getattr(body, "close", None)
    if close is not None:
        close()
if meter == "workermeter, scraped once":
    environ = {{
        "REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "SCRIPT_NAME": "", "QUERY_STRING": "",
        "REMOTE_ADDR": "127.0.0.1", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "wsgi.input": sys.stdin.buffer,
        "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": True,
        "wsgi.run_once": False, "wsgi.version": (1, 0),
    }}
    statuses = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    if statuses != ["200 OK"] or b"workermeter_requests_total" not in body:
        raise SystemExit(f"the scrape failed: {{statuses}} {{body[:200]!r}}")
print(json.dumps(memory()))
"""

SCRAPED = "workermeter, scraped once"
CASES = {
    "WSGI": ["bare", "workermeter, imported only", "workermeter", SCRAPED,
             "prometheus_client by hand"],
    "Flask": ["bare", "workermeter", SCRAPED, "prometheus_client by hand"],
}  # fmt: skip


def measure(framework: str, meter: str, n: int, routes: int, env: dict[str, str]) -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="wm-mem-") as store:
        out = subprocess.run(
            [sys.executable, "-c", CHILD.format(here=str(HERE)), framework.lower(), meter,
             str(n), str(routes), store],
            capture_output=True, text=True, check=True, timeout=300, env=env,
        ).stdout  # fmt: skip
    result: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--routes", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="processes per case (median)")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--no-bytecode", action="store_true", help="compile modules without bytecode in each case"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wm-pyc-") as pycache:
        env = dict(os.environ)
        if args.no_bytecode:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = pycache
            for framework, meters in CASES.items():
                for m in meters:
                    measure(framework, m, 2, 1, env)  # compiles what the case imports
        rows = run(args, env)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def run(args: argparse.Namespace, env: dict[str, str]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    loaded = "without bytecode" if args.no_bytecode else "from bytecode"
    print(f"{args.requests} requests over {args.routes} routes; modules {loaded}; "
          f"median of {args.repeat} processes")  # fmt: skip
    print(f"{'case':44s} {'RSS':>9s} {'USS':>9s} {'added RSS':>10s} {'added USS':>10s}")
    for framework, meters in CASES.items():
        runs = {m: [measure(framework, m, args.requests, args.routes, env)
                    for _ in range(args.repeat)] for m in meters}  # fmt: skip
        med = {m: {k: sorted(r[k] for r in rs)[len(rs) // 2] for k in ("rss", "uss")}
               for m, rs in runs.items()}  # fmt: skip
        for m in meters:
            rss, uss = med[m]["rss"] / 2**20, med[m]["uss"] / 2**20
            add_rss = rss - med["bare"]["rss"] / 2**20
            add_uss = uss - med["bare"]["uss"] / 2**20
            extra = "" if m == "bare" else f"{add_rss:6.2f} MiB {add_uss:6.2f} MiB"
            print(f"{framework + ', ' + m:44s} {rss:5.1f} MiB {uss:5.1f} MiB {extra}")
            rows.append({"framework": framework, "meter": m, "rss_mib": rss, "uss_mib": uss,
                         "added_rss_mib": add_rss, "added_uss_mib": add_uss})  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
