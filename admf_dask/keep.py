"""The kept cluster: a LocalCluster that outlives a command (``admf cluster up`` / ``down`` / ``status``).

``admf cluster up`` starts a detached process (``python -m admf_dask.keep``, a session of
its own, so no terminal signal reaches it) that starts a ``local`` cluster the way every
command does (:func:`admf_dask.cluster.connect`: quiet monitoring, worker malloc settings,
numba kernels preloaded in each worker) and records it in ``cluster.json`` in the user's
cache (:mod:`admf_dask.home`), written whole once the workers are up::

    {"address": "tcp://127.0.0.1:40123", "pid": 4242, "workers": 2, "threads": 2,
     "dashboard": "http://127.0.0.1:8787/status", "started": "...", "version": "0.2.2", "code": "<token>"}

Its log goes to ``cluster.log`` beside it. ``--cluster auto`` connects to that address
when the record names a live keeper process running this installation's code (``code``:
a token of the admf_dask source files' names, sizes and times, so workers never run code
older than the command's), and starts a local cluster for the command otherwise.
``down`` sends the keeper SIGTERM: it closes the cluster and removes the record. A record
whose keeper is gone (killed, machine restarted) is stale: whoever reads it removes it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any

from . import __version__, home
from .errors import ConfigError

__all__ = ["down", "kept_address", "status", "up"]

log = logging.getLogger(__name__)

STATE = "cluster.json"
LOG = "cluster.log"
_MODULE = "admf_dask.keep"


def code_token() -> str:
    """A token of this installation's admf_dask code: every source file's path, size and modification time."""
    import hashlib

    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256(__version__.encode())
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                st = os.stat(os.path.join(folder, name))
                h.update(f"{os.path.relpath(os.path.join(folder, name), root)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _keeper_alive(pid: Any) -> bool:
    """Whether ``pid`` is a live keeper process (not a process that reused the number)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not ours
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return _MODULE.encode() in f.read()
    except OSError:  # no /proc: trust the pid
        return True


def _record() -> tuple[dict[str, Any] | None, str | None]:
    """The live record, or (None, why not); a stale record is removed (and said so)."""
    state = home.read_json(STATE)
    if state is None:
        return None, "no cluster is kept (start one with `admf cluster up`)"
    if not isinstance(state, dict) or not _keeper_alive(state.get("pid")):
        _remove_record(state.get("pid") if isinstance(state, dict) else None)
        return None, (f"removed the record of a kept cluster whose process (pid {state.get('pid')}) is gone"
                      if isinstance(state, dict) else "removed an unreadable record of a kept cluster")
    return state, None


def _remove_record(pid: Any) -> None:
    """Remove cluster.json unless it names another keeper than ``pid`` (one started meanwhile)."""
    current = home.read_json(STATE)
    if isinstance(current, dict) and current.get("pid") != pid:
        return
    try:
        os.unlink(os.path.join(home.folder(), STATE))
    except FileNotFoundError:
        pass


def kept_address() -> tuple[str | None, str]:
    """For ``--cluster auto``: (the kept cluster's address, why) or (None, why none is used)."""
    state, why = _record()
    if state is None:
        return None, why or ""
    if state.get("code") != code_token():
        return None, ("the kept cluster runs other admf code than this command (changed since `admf cluster up`):"
                      " restart it with `admf cluster down` and `admf cluster up`")
    return state["address"], f"kept cluster (pid {state['pid']}, `admf cluster up`)"


@contextmanager
def _locked() -> Any:
    """One `up` or `down` at a time."""
    import fcntl

    os.makedirs(home.folder(), exist_ok=True)
    with open(os.path.join(home.folder(), "cluster.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def up(settings: dict[str, Any], *, timeout: float = 120.0) -> tuple[dict[str, Any], bool]:
    """Start the kept cluster (a detached keeper process) unless one is up; (its record, whether started now).

    ``settings`` are ClusterConfig keys of a ``local`` cluster (n_workers, threads_per_worker,
    memory_limit, dashboard_address). Raises ConfigError if the keeper fails or the cluster
    is not up within ``timeout`` seconds (its log's last line in the message).
    """
    from .config import ClusterConfig

    ClusterConfig(**{**settings, "kind": "local"})  # a bad setting (a memory limit that is no size) fails here
    with _locked():
        state, _ = _record()
        if state is not None:
            return state, False
        log_path = os.path.join(home.folder(), LOG)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", _MODULE, json.dumps(settings)], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=out, start_new_session=True, close_fds=True)
        deadline = time.monotonic() + timeout
        while True:
            state = home.read_json(STATE)
            if isinstance(state, dict) and state.get("pid") == proc.pid:
                return state, True
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                raise ConfigError(f"the kept cluster did not start: {_last_line(log_path)}", file=log_path,
                                  hint="see the log; `admf cluster up` starts a local cluster in the background")
            time.sleep(0.05)


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1] if lines else "(its log is empty)"
    except OSError:
        return "(no log)"


def down(*, timeout: float = 60.0) -> str:
    """Stop the kept cluster: its keeper closes it and removes the record. Returns what was done."""
    with _locked():
        state, why = _record()
        if state is None:
            return why or ""
        pid = state["pid"]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _keeper_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _keeper_alive(pid):  # stuck closing: end it, its workers follow (they exit when their parent does)
            os.kill(pid, signal.SIGKILL)
            while _keeper_alive(pid):
                time.sleep(0.05)
        _remove_record(pid)
        return f"stopped the kept cluster at {state['address']} (pid {pid})"


def status() -> dict[str, Any]:
    """The kept cluster's record and what its scheduler says now (``up``, ``workers``), or ``{"up": False, ...}``."""
    state, why = _record()
    if state is None:
        return {"up": False, "note": why}
    out = {**state, "up": True, "code_matches": state.get("code") == code_token()}
    try:
        from distributed import Client

        with Client(state["address"], timeout=5) as client:
            workers = client.scheduler_info(n_workers=-1).get("workers", {})
        out.update(workers=len(workers), threads=sum(w.get("nthreads", 0) for w in workers.values()))
    except (OSError, TimeoutError) as exc:
        out.update(up=False, note=f"its scheduler does not answer: {exc}")
    return out


def _serve(settings: dict[str, Any]) -> None:
    """The keeper process: start the cluster, record it, wait for SIGTERM, close it, remove the record."""
    from datetime import UTC, datetime

    from .cluster import connect
    from .logs import setup_logging

    setup_logging(verbosity=0)  # stderr: cluster.log (`up` points it there), each line with its time
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    with connect({**settings, "kind": "local"}, echo=log.info) as client:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
        state = {"address": client.scheduler.address, "pid": os.getpid(), "workers": len(workers),
                 "threads": sum(w.get("nthreads", 0) for w in workers.values()),
                 "dashboard": client.dashboard_link if settings.get("dashboard_address", ":8787") else None,
                 "started": datetime.now(UTC).isoformat(timespec="seconds"), "version": __version__,
                 "code": code_token(), "settings": settings}
        home.write_json(state, STATE)
        log.info("kept cluster up at %s (pid %d)", state["address"], state["pid"])
        while not stop.wait(1.0):
            pass
        log.info("kept cluster closing (pid %d)", os.getpid())
    _remove_record(os.getpid())
    log.info("kept cluster closed (pid %d)", os.getpid())
    logging.shutdown()
    os._exit(0)  # no interpreter teardown: `down` waits for this process to end


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
