"""Which server instance this process belongs to, so its workers find one shared store.

The workers of one pre-fork server (gunicorn, uvicorn --workers, uWSGI) all hold the same
listening socket, inherited or passed from the master. The socket's inode names the instance: it
is the same in every worker, survives worker replacement, and differs between two servers on the
same machine. A process with no listening socket is an instance of its own.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

from .listeners import own_listening_inodes
from .store import default_base, ensure_private_dir, has_live_worker

ENV_DIR = "WORKERMETER_DIR"


def instance_key(proc: Path = Path("/proc")) -> str:
    inodes = own_listening_inodes(proc)
    if inodes:
        return "sock-" + "-".join(str(i) for i in inodes[:4])
    return f"pid-{os.getpid()}"


def default_directory() -> Path:
    """The store directory: ``$WORKERMETER_DIR`` if set, else one per server instance."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    base = ensure_private_dir(default_base())
    mine = base / instance_key()
    sweep(base, keep=mine)
    return mine


def sweep(base: Path, *, keep: Path, min_age: float = 600.0) -> list[Path]:
    """Remove the stores of server instances that are gone: no live worker, unchanged for
    ``min_age`` seconds. Each server start makes a new store, which would otherwise stay in
    RAM under /dev/shm until the next reboot."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(base))
    except OSError:  # the base vanished or is unreadable: nothing to tidy
        return removed
    now = time.time()
    for entry in entries:
        path = Path(entry.path)
        if path == keep or not entry.name.startswith(("sock-", "pid-")):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:  # removed by another process meanwhile
            continue
        if not stat.S_ISDIR(st.st_mode) or now - st.st_mtime < min_age:
            continue
        if not has_live_worker(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
