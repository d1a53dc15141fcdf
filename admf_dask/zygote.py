"""Local workers forked from a copy of the ``admf`` process (a zygote), not spawned afresh.

A spawned worker starts a new interpreter and imports distributed, numpy, pandas,
pyarrow, numba and admf's task modules, then loads the numba kernels from their
on-disk cache: ~1 s of CPU per worker, on a 2-core machine at the same time as the
command's own imports and its scheduler. Instead, the ``admf`` command forks one
*zygote* after its input checks: a copy of itself, which already holds what the command
imported, imports the rest and loads the cached kernels once, then serves as
multiprocessing's fork server (``distributed.worker.multiprocessing-method:
forkserver``, :func:`admf_dask.cluster.connect`): each worker of the local cluster
(restarted ones too) is a fork of the zygote with all of that in memory.

Forking a process is safe while it has one thread; :func:`start` forks only then
(before the run's lease starts its heartbeat, before distributed's event loop), only
from the ``admf`` command's own process (not a program that imports admf), and only
on Linux. In the zygote, the command's exit handlers, finalizers and signal handlers
are dropped (SIGINT ignored, as spawned workers do), the ``--json`` output descriptor is
closed, and the workers' process settings that a spawned worker gets from its
environment at start are applied (glibc's ``MALLOC_*`` through ``mallopt``, BLAS
threads). It dies with the command (``PR_SET_PDEATHSIG``) and when the command closes
its end of the fork server's pipe. ``ADMF_FORK_WORKERS=0`` keeps spawned workers.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence

__all__ = ["forked_from", "running", "start", "wanted"]

log = logging.getLogger(__name__)

# glibc's malloc tunables read from the environment when a process starts (mallopt's parameter numbers)
_MALLOPT = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_TOP_PAD_": -2, "MALLOC_MMAP_THRESHOLD_": -3,
            "MALLOC_MMAP_MAX_": -4, "MALLOC_ARENA_MAX": -8}
_PR_SET_PDEATHSIG = 1


def running() -> bool:
    """Whether this process has a zygote (multiprocessing's fork server is then the zygote)."""
    from multiprocessing import forkserver

    return forkserver._forkserver._forkserver_pid is not None and _state.get("pid") == os.getpid()


_state: dict[str, int] = {}  # pid: the process that forked a zygote; zygote: in a zygote and its forks, its pid


def forked_from() -> int | None:
    """In a worker forked from a zygote, the zygote's pid; else None."""
    pid = _state.get("zygote")
    return pid if pid is not None and pid != os.getpid() else None


def wanted() -> bool:
    """Whether a zygote may be forked here: Linux, not switched off with ``ADMF_FORK_WORKERS=0``, one thread."""
    if not sys.platform.startswith("linux") or os.environ.get("ADMF_FORK_WORKERS", "1").strip() in ("0", "false"):
        return False
    if threading.active_count() != 1:
        log.debug("workers will be spawned: %d threads run in this process", threading.active_count())
        return False
    return True


def start(*, close: Sequence[int] = (), kernels: bool = True) -> bool:
    """Fork the zygote (once per process) if :func:`wanted`; whether one runs. ``close``: descriptors the
    zygote closes (the command's ``--json`` output); ``kernels``: whether it imports the sweep's task modules
    and loads the cached kernels (not for ``admf generate``, whose tasks call none)."""
    if running():
        return True
    if not wanted():
        return False
    from multiprocessing import connection, forkserver, resource_tracker

    import distributed  # noqa: F401  (this process's cluster needs it: imported once, for the zygote too)

    server = forkserver._forkserver
    with server._lock:
        resource_tracker.ensure_running()  # its descriptor is inherited (the workers report to it)
        address = connection.arbitrary_address("AF_UNIX")
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(address)
            os.chmod(address, 0o600)
            listener.listen()
            alive_r, alive_w = os.pipe()  # the workers' and this process's: EOF when all are gone
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            parent = os.getpid()
            pid = os.fork()
            if pid == 0:  # the zygote: never returns
                code = 1
                try:
                    os.close(alive_w)
                    _serve(listener.fileno(), alive_r, parent, close, kernels)
                    code = 0
                except SystemExit:  # the fork server's end: the command closed its pipe
                    code = 0
                finally:
                    os._exit(code)
            os.close(alive_r)
        server._forkserver_address, server._forkserver_alive_fd, server._forkserver_pid = address, alive_w, pid
        _state["pid"] = os.getpid()
    log.debug("zygote %d forked", pid)
    return True


def _serve(listener_fd: int, alive_r: int, parent: int, close: Sequence[int], kernels: bool) -> None:
    """The zygote's life: become a clean copy, load what workers run, then fork a worker per request."""
    import atexit
    import weakref

    _state.clear()
    _state["zygote"] = os.getpid()  # its forks know where they come from (forked_from)

    try:
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the command
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the command ended before the line above
        os._exit(0)
    # the command's exit work (its summary, cleanups, finalizers of its objects) is not the workers'
    atexit._clear()
    weakref.finalize._registry.clear()
    weakref.finalize._registered_with_atexit = False
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # kept by the workers, as spawned ones under the command
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for fd in close:
        try:
            os.close(fd)
        except OSError:
            pass
    _process_settings()
    t0 = time.perf_counter()
    try:
        import distributed  # noqa: F401  (the worker's own modules)

        if kernels:
            from .preload import import_task_modules, light_cache_loads, preload_kernels

            import_task_modules()
            light_cache_loads()  # the zygote and its workers: cached kernels load without numba's target set up
            log.debug("zygote: task modules imported in %.2fs", time.perf_counter() - t0)
            # a worker asked for before every kernel is loaded is forked at once: the rest load on first use
            n, _ = preload_kernels(stop=lambda: bool(select.select([listener_fd], [], [], 0)[0]))
            log.debug("zygote: modules and %d kernel overloads loaded in %.2fs", n, time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001  (an optimisation only: a worker imports and loads what it needs)
        log.debug("zygote preload failed: %r", exc)
    from multiprocessing import forkserver

    serve_one = forkserver._serve_one

    def serve_one_then_exit_handlers(*args: object) -> int:
        """A worker's end: its exit handlers run (as in a spawned worker's interpreter: logs.dask_teardown), where
        the fork server's child path would only ``os._exit``."""
        import atexit

        code = serve_one(*args)
        atexit._run_exitfuncs()
        return code

    forkserver._serve_one = serve_one_then_exit_handlers  # in the zygote (a copy) only
    forkserver.main(listener_fd, alive_r, [])


def _process_settings() -> None:
    """What a spawned worker gets from the environment its nanny sets before starting it: glibc's malloc
    tunables (``distributed.nanny.pre-spawn-environ``, admf's ``WORKER_MALLOC``) and one BLAS thread."""
    import dask

    from .cluster import WORKER_MALLOC

    env = {**(dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}), **WORKER_MALLOC}
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        for name, param in _MALLOPT.items():
            if name in env:
                libc.mallopt(param, int(env[name]))
    except (OSError, AttributeError, ValueError) as exc:
        log.debug("malloc settings not applied: %r", exc)
    threads = env.get("OPENBLAS_NUM_THREADS", env.get("OMP_NUM_THREADS"))
    if threads is not None:
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(int(threads))
        except (ImportError, ValueError, OSError) as exc:  # optional: BLAS keeps its threads (tasks call no BLAS)
            log.debug("BLAS threads not limited: %r", exc)
