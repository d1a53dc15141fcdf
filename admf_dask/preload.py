"""Numba kernels loaded once per worker process, when the cluster starts (a WorkerPlugin).

numba loads a compiled kernel from its on-disk cache (``__pycache__/*.nbi``/``*.nbc``)
on the kernel's first call in a process: in a fresh worker that cost ~0.75 s inside the
first tasks of a sweep run from the shell. :class:`KernelPreload`, registered by
:func:`admf_dask.cluster.connect` on ``local`` clusters, starts a background thread in
each worker as it joins (restarted workers included: the scheduler keeps the plugin) that
imports the modules tasks run and loads every overload of ``admf_dask.kernels`` that the
cache holds for this machine, i.e. the signatures this installation has run before. The
driver plans its run meanwhile; a task that calls a kernel still loading waits on numba's
own lock, so results are the same with or without it. Nothing is compiled that the cache
does not hold, and a failure here only costs the time it was meant to save (logged at DEBUG).

The loading fills the time before the worker's first task, and stops there: from then on a
task loads what it calls, on first call. Loading everything costs each worker what it never
calls. With an installation's test suite in the cache, that was 338 overloads, 1.6 CPU-s and
240 MB of memory a worker. Run beside a sweep's first tasks, on 2 cores, it took that CPU
from them. The modules tasks run are imported before the thread starts, on the worker's
event loop (:func:`import_task_modules` says why).

In these processes (the zygote, its forks, spawned local workers) a cached overload loads without
numba's CPU target set up (:func:`light_cache_loads`): numba's cache refreshes that target before
each load (importing ~215 modules of typing and lowering registries, ~0.36 CPU-s the first time),
which machine code read from the cache does not use; compiling (a cache miss) sets it up as before.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
import time
from collections.abc import Callable
from typing import Any

from distributed import WorkerPlugin

__all__ = ["KernelPreload", "import_task_modules", "light_cache_loads", "preload_kernels", "worker_busy"]

log = logging.getLogger(__name__)

# what a sweep's tasks import, besides the kernels (pandas, pyarrow and the hub come with them)
TASK_MODULES = ("admf_dask.sweep.container", "admf_dask.sweep.streaming", "admf_dask.cache", "admf_dask.bars.store",
                "admf_dask.backtest")


# the kernel modules whose kernels tasks call from Python, first: a loading cut short (the zygote's, when the first
# worker is asked for) has loaded what a sweep calls; stats' and simulate's kernels are mostly compiled into those
FIRST = ("strategies", "indicators", "state", "portfolio", "replay")


def light_cache_loads() -> bool:
    """Load cached kernel overloads in this process without setting up numba's CPU target first; whether on.

    numba's ``Cache.load_overload`` refreshes the CPU target before every load: on the first, it imports
    and installs the typing and lowering registries of all of numba, numpy and scipy's support (~215
    modules, 0.36 CPU-s), which only compiling uses. Loaded code is machine code read from the cache
    and linked against symbols numba registers elsewhere: its runtime's (NRT, initialised here as the
    refresh would), its C helpers' and libm's (when its target context starts) and the hash secret's
    (``numba.cpython.hashing``, imported here). A cache miss compiles, and compiling refreshes the
    target itself; a load that raises is tried again the original way. The kernels' results are the
    same bits: the same machine code runs.
    """
    from numba.core import caching

    original = caching.Cache.load_overload
    if _light():
        return True
    if not all(hasattr(caching.Cache, name) for name in ("_load_overload", "_guard_against_spurious_io_errors")):
        return False  # another numba: its own loads
    import numba.cpython.hashing  # noqa: F401  (puts the hash secret's symbols in LLVM's table)
    from numba.core.runtime import nrt

    def load_overload(self: Any, sig: Any, target_context: Any) -> Any:
        try:
            nrt.rtsys.initialize(target_context)
            with self._guard_against_spurious_io_errors():
                return self._load_overload(sig, target_context)
        except Exception as exc:  # noqa: BLE001  (the refreshed target may load it)
            log.debug("cached overload %s loaded after numba's target refresh: %r", sig, exc)
            return original(self, sig, target_context)

    load_overload.light = True  # type: ignore[attr-defined]
    caching.Cache.load_overload = load_overload
    return True


def _light() -> bool:
    from numba.core import caching

    return bool(getattr(caching.Cache.load_overload, "light", False))


def preload_kernels(stop: Callable[[], bool] | None = None) -> tuple[int, float]:
    """Import the kernel modules, set up numba's CPU target (unless :func:`light_cache_loads` is on) and load
    every cached overload numba holds for this machine.

    ``stop()``, asked before each overload (after the imports and the target's set-up), ends the loading early
    when true.
    Returns (overloads loaded, seconds).
    """
    from numba.core.registry import CPUDispatcher

    import admf_dask.kernels as kernels

    t0 = time.perf_counter()
    n = 0
    names = [info.name for info in pkgutil.iter_modules(kernels.__path__)]
    # every kernel module imported first, whatever ``stop`` says: a worker forked from here then has them all
    modules = [importlib.import_module(f"{kernels.__name__}.{name}")
               for name in sorted(names, key=lambda m: FIRST.index(m) if m in FIRST else len(FIRST))]
    if not _light():  # numba's CPU target set up once, here, rather than in each worker's first task
        _refresh_target()
    for module in modules:
        found = list(vars(module).values())
        found += [v for d in found if isinstance(d, dict) for v in d.values()]  # tables of kernels by kind
        seen: set[int] = set()
        for obj in found:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            cache_file = getattr(getattr(obj, "_cache", None), "_cache_file", None)
            if not isinstance(obj, CPUDispatcher) or obj.__module__ != module.__name__ or cache_file is None:
                continue
            magic = obj.targetctx.codegen().magic_tuple()
            for key in list(cache_file._load_index()):
                if key[1] == magic:  # (signature, target machine, ...): only what this machine compiled
                    if stop is not None and stop():
                        return n, time.perf_counter() - t0
                    obj.compile(key[0])  # found in the cache: loaded, not compiled
                    n += 1
    return n, time.perf_counter() - t0


def _refresh_target() -> None:
    """numba's CPU target set up, as the first overload loaded in a process does by default. Under numba's
    compiler lock, as a dispatcher refreshes it when it loads an overload: a task's first kernel on another
    thread of the worker raced this refresh ("generator already executing")."""
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.registry import cpu_target

    with global_compiler_lock:
        cpu_target.target_context.refresh()


def import_task_modules() -> None:
    """Import what tasks run: the task modules and every kernel module.

    Run it before the worker takes a task. A task that arrives while a thread is importing
    these modules is unpickled on the worker's event loop, which imports them too. Two
    threads importing the ``admf_dask.sweep`` package's import cycle at once can hand one
    of them a partly initialised module ("cannot import name 'SweepFeed' from partially
    initialized module"). The worker's connection to the scheduler then fails, and the
    worker is lost.
    """
    from admf_dask import kernels

    for name in TASK_MODULES:
        importlib.import_module(name)
    for info in pkgutil.iter_modules(kernels.__path__):
        importlib.import_module(f"{kernels.__name__}.{info.name}")


def _preload(stop: Callable[[], bool] | None = None) -> None:
    try:
        light_cache_loads()
        n, seconds = preload_kernels(stop)
        log.debug("preloaded %d numba kernel overloads in %.2fs", n, seconds)
    except Exception as exc:  # an optimisation only: the first call loads what it needs anyway
        log.debug("kernel preload failed: %r", exc)


def worker_busy(worker: Any) -> bool:
    """Whether ``worker`` has started a task (``client.run`` calls are not tasks)."""
    state = getattr(worker, "state", None)
    return state is not None and (state.executing_count > 0 or state.executed_count > 0)


class KernelPreload(WorkerPlugin):
    """Load admf's numba kernels in each worker as it starts, in the background, until its first task."""

    name = "admf-kernel-preload"

    def setup(self, worker: Any) -> None:
        try:  # here, on the worker's event loop, before it takes a task (import_task_modules)
            import_task_modules()
        except Exception as exc:  # noqa: BLE001 - a task's own unpickling then raises it, where it is seen
            log.debug("task modules not imported: %r", exc)
        threading.Thread(target=_preload, args=(lambda: worker_busy(worker),), name="admf-kernel-preload",
                         daemon=True).start()
