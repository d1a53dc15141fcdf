"""Clusters: one setting gives a dask.distributed Client, and a helper runs batches of tasks.

The same code runs on ``threads`` (an in-process LocalCluster), ``local`` (a
LocalCluster of worker processes) and a remote scheduler address. On connect the
dashboard link is logged and client and worker package versions are compared.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from .config import ClusterConfig
from .errors import AdmfError, BusyError, ConfigError
from .progress import Progress

__all__ = ["STAGES", "collect", "connect", "ensure_client", "run_tasks"]

log = logging.getLogger(__name__)


# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_ set (to hand freed memory back
# to the OS), and setting any malloc tunable turns off glibc's adaptive mmap threshold:
# every array over 128 KiB (an indicator row, a kernel's scratch curve) is then a fresh
# mmap, page-faulted in and unmapped on free. Building an indicator set took 2.5x as long
# in a worker as in a plain process. Arrays up to this size come from the heap again.
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20)}


# Dask polls fast by default: a stack sample every 10 ms in each worker, an event-loop
# check every 20 ms, memory every 100 ms, a system sample every 500 ms. Idle, a LocalCluster
# of 2 workers spent 14 % of a core on that (2.6 % per worker on the sampling alone); on a
# 2-core machine a sweep's workers lose that time. These settings bring it to ~3 %. Each
# applies to the clusters admf starts only while the key is still at distributed's default,
# so a setting of the user's (dask config file, DASK_* variable) wins.
QUIET_MONITORING = {
    "distributed.worker.profile.interval": "100ms",  # the dashboard's Profile page, 10x fewer samples
    "distributed.admin.tick.interval": "200ms",  # only detects a blocked event loop
    "distributed.admin.system-monitor.interval": "1s",  # the dashboard's CPU and memory plots
    "distributed.worker.memory.monitor-interval": "500ms",  # memory_limit checks (pause, spill, restart)
}


def _monitoring() -> dict[str, str]:
    """The QUIET_MONITORING settings whose keys the user has left at distributed's defaults."""
    import dask
    import distributed  # noqa: F401  (registers its defaults)

    defaults = dask.config.merge(*dask.config.defaults)
    return {key: value for key, value in QUIET_MONITORING.items()
            if dask.config.get(key, None) == dask.config.get(key, None, config=defaults)}


@contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Processes started inside the block ignore SIGINT: they inherit SIG_IGN, and Python keeps it.

    A Ctrl-C is sent to the terminal's whole process group. Worker processes that got
    it raised KeyboardInterrupt and printed ~80 lines of tracebacks while the admf
    process was closing them anyway. (Workers restarted later ignore it from their
    preload on, ``logs.dask_setup``.) A Ctrl-C while the workers start is ignored too.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def connect(config: ClusterConfig | str = "local", *, echo: Callable[[str], None] | None = None) -> Iterator[Any]:
    """Yield a connected ``distributed.Client`` for the setting; close what was started.

    ``auto`` connects to the cluster kept by ``admf cluster up`` (:mod:`admf_dask.keep`)
    when it is up and runs this installation's code, and starts a ``local`` one otherwise.

    ``echo`` gets the line describing the cluster (default: logged at INFO).
    Raises ConfigError when a scheduler address does not answer within ``timeout``
    seconds, or when worker package versions differ from the client's.
    """
    import dask
    from distributed import Client, LocalCluster

    from .logs import adopt_library_loggers, worker_config

    adopt_library_loggers()  # distributed's own stderr handlers, added on import, give way to admf's
    stack = ExitStack()  # settings kept while the cluster lives
    config = ClusterConfig.parse(config)
    echo = echo or log.info
    if config.kind == "auto":  # the cluster `admf cluster up` keeps, else one of our own
        from dataclasses import replace

        from .keep import kept_address

        address, why = kept_address()
        log.info("cluster auto: %s", why if address else f"local ({why})")
        config = replace(config, kind=address or "local")
    # the scheduler's HTTP server (its /health, /metrics routes) always starts, at the dashboard's address or,
    # with none asked for, on a free port of 127.0.0.1 (not :8787); the dashboard's pages come on request
    http = {"dashboard_address": config.dashboard_address or "127.0.0.1:0", "scheduler_kwargs": {"dashboard": False}}
    dashboard = bool(config.dashboard_address)
    cluster = None
    forked = False
    if config.kind == "threads":
        with dask.config.set(_monitoring()):
            cluster = LocalCluster(processes=False, n_workers=1, threads_per_worker=config.n_workers or _cores(),
                                   **http)
    elif config.kind == "local":
        from .zygote import running

        settings = {**_monitoring(), **worker_config(),  # worker_config: the workers' logging, SIGINT ignored
                    **{f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_MALLOC.items()}}
        forked = running()  # the admf command forked a zygote: workers are forks of it (zygote.py), restarts too
        if forked:
            stack.enter_context(dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}))
        try:
            with dask.config.set(settings), _children_ignore_sigint():
                cluster = LocalCluster(n_workers=config.n_workers or _cores(),
                                       threads_per_worker=config.threads_per_worker,
                                       memory_limit=config.memory_limit, **http)
        except BaseException:
            stack.close()
            raise
    try:
        if cluster is not None:
            client = Client(cluster)
            if config.kind == "local" and not forked:  # numba kernels loaded in each worker as it starts (preload.py)
                from .preload import KernelPreload

                client.register_plugin(KernelPreload())
        else:
            try:
                client = Client(config.kind, timeout=config.timeout)
            except (OSError, TimeoutError) as exc:
                raise ConfigError(f"no dask scheduler answered at {config.kind} within {config.timeout:g}s ({exc})",
                                  key="cluster", hint="start one with `dask scheduler` and `dask worker`, "
                                  "or use cluster: local") from None
        try:
            if cluster is None:
                _wait_for_workers(client, config.kind)
            if not forked:  # forks of this process run its very packages and admf code
                _check_versions(client)
            if cluster is not None and dashboard:
                _dashboard_on_request(cluster.scheduler)
            workers = client.scheduler_info(n_workers=-1).get("workers", {})
            link = client.dashboard_link if dashboard or cluster is None else "(dashboard off)"
            echo(f"cluster: {config.kind}, {len(workers)} worker(s), "
                 f"{sum(w.get('nthreads', 0) for w in workers.values())} thread(s); dashboard {link}")
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()
        stack.close()


def _dashboard_on_request(scheduler: Any) -> None:
    """Add the bokeh dashboard's pages to the scheduler's HTTP server when someone first asks for one.

    Importing bokeh and building the dashboard took ~0.35 s of a fresh command's cluster
    start, on the critical path, for pages most runs never show. The server (bound when the
    scheduler started, so the link printed is known at once) gets a catch-all route instead,
    behind its own routes (``/health``, ``/metrics``): the first request it catches imports
    bokeh off the event loop, connects the pages as ``Scheduler.__init__`` would, drops the
    route and redirects to the same address, which the pages now serve.
    """
    import asyncio
    import importlib

    from tornado import web

    class Attach(web.RequestHandler):
        async def get(self, *_: Any) -> None:
            app = scheduler.http_application
            if lazy in app.applications:
                try:
                    pages = await asyncio.get_running_loop().run_in_executor(
                        None, importlib.import_module, "distributed.dashboard.scheduler")
                except ImportError:  # bokeh is optional for distributed
                    self.set_status(404)
                    self.write("the dashboard needs bokeh (pip install bokeh)")
                    return
                if lazy in app.applications:  # not attached by a request that came in meanwhile
                    app.applications.remove(lazy)
                    pages.connect(app, scheduler.http_server, scheduler, prefix="/")
            self.redirect(self.request.uri)

    lazy = web.Application([(r"/.*", Attach)])
    scheduler.http_application.add_application(lazy)


def _wait_for_workers(client: Any, address: str) -> None:
    """A scheduler with no worker would queue tasks for ever: wait ADMF_WORKER_WAIT seconds for one, then fail."""
    from .faults import env_seconds

    wait = env_seconds("ADMF_WORKER_WAIT")
    try:
        client.wait_for_workers(1, timeout=wait)
    except TimeoutError:
        raise ConfigError(f"the dask scheduler at {address} has no worker after {wait:g}s", key="cluster",
                          hint="start workers with `dask worker {address}` (wait longer: ADMF_WORKER_WAIT)") from None


_OPENED: dict[str, tuple[Any, Any]] = {}  # clients opened from a setting string, kept for the process


def ensure_client(client: Any) -> Any:
    """A connected client from a client, a zero-argument function that connects one, or a setting string:
    ``"threads"``, ``"local"`` or a scheduler address (connected on first use, kept open for the process and
    closed at exit).

    Long operations take any of these, so that work already done (a finished sweep, a
    complete signal set) is reported without starting a cluster.
    """
    if isinstance(client, str):
        opened = _OPENED.get(client)
        if opened is None or opened[1].status not in ("running", "connecting"):
            import atexit

            ctx = connect(client)
            opened = _OPENED[client] = (ctx, ctx.__enter__())
            atexit.register(ctx.__exit__, None, None, None)
        return opened[1]
    return client() if callable(client) and not hasattr(client, "submit") else client


def _check_versions(client: Any) -> None:
    try:
        client.get_versions(check=True)
    except ValueError as exc:
        raise ConfigError(f"workers run other package versions than this client: {exc}", key="cluster",
                          hint="install the same admf-dask, dask and distributed versions on every machine") from None
    from . import __version__

    found = client.run(_admf_version)
    wrong = {w: v for w, v in found.items() if v != __version__}
    if wrong:
        raise ConfigError(f"workers run admf-dask {sorted(set(wrong.values()))}, this client {__version__}",
                          key="cluster", hint="install the same admf-dask version on every worker")


def _admf_version() -> str:
    from . import __version__

    return __version__


STAGES = ("bars", "indicators", "sweep", "portfolio", "signals", "replay")
"""The pipeline's stages. Every task's key starts with one, followed by a word that is not all letters
(a hex token, a number), so that dask's ``key_split`` and with it the dashboard's task stream, progress
and the performance report file the task under its stage: ``sweep-3f09c2...-part-000001`` -> ``sweep``."""


def run_tasks(client: Any, fn: Callable[..., Any], items: Sequence[Any], *, label: str,
              keys: Sequence[str] | None = None, stage: str | None = None, retries: int = 0,
              on_result: Callable[[int, Any], None] | None = None, progress: bool = True,
              drain_on_error: bool = False,
              extra_args: Sequence[Sequence[Any]] | Callable[[int], Sequence[Any]] | None = None,
              window: int | None = None, split: Callable[[Any], Any] | None = None,
              held: dict[int, Any] | None = None,
              workers: Callable[[int], Any] | None = None) -> list[Any]:
    """Run ``fn(item)`` for every item on the cluster; return results in item order.

    ``keys`` (deterministic task keys) let identical work collapse onto one task; without them
    each task gets a key of its own under ``stage`` (default: ``label``; see :data:`STAGES`).
    ``extra_args[i]`` are further arguments of item i's call, typically futures of
    data already on the cluster (Dask resolves them on the worker). It may be a
    function of ``i`` instead, called when item i is submitted: with ``window``, the
    inputs of later tasks (a sweep's indicator sets) are then asked for only when the
    cluster gets to them, not all up front.
    ``on_result(i, result)`` is called as each task finishes, in completion order,
    so a caller can commit or record finished work before the rest is done. The
    first task that fails (after ``retries``) stops the run and its error is raised
    here; errors raised as AdmfError keep their message and location.

    On failure the other tasks are cancelled, but a task already running on a
    worker cannot be stopped. With ``drain_on_error`` the run instead waits for all
    other tasks and hands their results to ``on_result``, so a caller that must undo
    side effects (files written) sees every one of them.

    ``window`` keeps at most that many tasks submitted and not finished, submitting the
    next as one finishes (in item order), instead of all at once. Tasks that share big
    inputs (a sweep's indicator sets) are not queued by the scheduler: submitted at
    once, they were all handed out up front, and at the end one worker still had a
    second of work queued while the other sat idle.

    With ``split``, the driver is sent ``split(result)`` (run on the worker beside the result,
    ahead of queued tasks) and the whole result stays on the cluster: its future is put in
    ``held[i]`` as item i is submitted, for later tasks to take as an argument (the caller
    drops the ones it does not need; on failure every one is cancelled).

    ``workers(i)``, asked as item i is submitted (after ``extra_args``), is the address of a worker to send it to, or None: a loose
    restriction (``allow_other_workers``), so the scheduler may still run it elsewhere (that worker gone, or
    work stealing while it is busy).
    """
    if extra_args is None:
        def extra(i: int) -> Sequence[Any]:
            return ()
    elif callable(extra_args):
        extra = extra_args
    else:
        extra = extra_args.__getitem__

    if keys is None:
        import uuid

        nonce = uuid.uuid4().hex[:12]
        keys = [f"{stage or label}-{i:06d}-{nonce}" for i in range(len(items))]

    kept: dict[int, Any] = {} if held is None else held

    def submit(i: int) -> Any:
        args = extra(i)
        where = None if workers is None else workers(i)
        placed = {} if where is None else {"workers": [where], "allow_other_workers": True}
        future = client.submit(fn, items[i], *args, key=keys[i], retries=retries, pure=False, **placed)
        if split is None:
            return future
        kept[i] = future  # the key of the part sent to the driver keeps the task's stage (STAGES)
        return client.submit(split, future, key=f"{keys[i]}-sent", pure=False, priority=1)

    first = len(items) if window is None else min(len(items), max(1, window))
    futures = [submit(i) for i in range(first)]
    try:
        return collect(client, futures, label=label, on_result=on_result, progress=progress,
                       drain_on_error=drain_on_error, more=(submit(i) for i in range(first, len(items))),
                       total=len(items))
    except BaseException:
        if kept:
            client.cancel(list(kept.values()))
            kept.clear()
        raise


def collect(client: Any, futures: Sequence[Any], *, label: str,
            on_result: Callable[[int, Any], None] | None = None, progress: bool = True,
            drain_on_error: bool = False, more: Iterator[Any] | None = None, total: int | None = None) -> list[Any]:
    """Wait for futures already submitted, with a progress bar; results in their order.

    The error handling of :func:`run_tasks` (which submits, then calls this).
    ``more`` yields further futures, each submitted when one finishes (their results
    follow in that order; ``total`` counts them all); after an error none is submitted.
    """
    from distributed import as_completed
    from distributed.utils import Deadline

    from .faults import env_seconds, user_error

    stall = env_seconds("ADMF_STALL_TIMEOUT")
    futures = list(futures)
    index = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * (total if total is not None else len(futures))
    bar = Progress(label, len(results), enabled=progress)
    first_error: BaseException | None = None
    pending = as_completed(futures, timeout=stall)
    try:
        while True:
            try:
                future = next(pending)
            except StopIteration:
                break
            except TimeoutError:
                client.cancel(futures)
                raise AdmfError(f"stalled: no task of stage '{label}' finished in {stall:g}s "
                                f"({bar.done} of {len(results)} done)",
                                hint="is the cluster or the storage stuck? (ADMF_STALL_TIMEOUT sets the limit)"
                                ) from None
            pending._deadline = Deadline.after(stall)  # the limit counts from the last finished task
            if future.status == "error":
                if first_error is None:
                    exc = future.exception()
                    mapped = user_error(exc)
                    if mapped is not None and not isinstance(exc, AdmfError):
                        mapped.message = f"{label}: {mapped.message}"
                        exc = mapped
                    elif isinstance(exc, AdmfError) and not isinstance(exc, BusyError) and \
                            not exc.message.startswith(f"{label}"):
                        exc.message = f"{label}: {exc.message}"  # the stage a worker failed in
                    first_error = exc if isinstance(exc, AdmfError) else exc.with_traceback(future.traceback())
                    more = None
                    if not drain_on_error:
                        client.cancel(futures)
                        break
                continue
            if more is not None:
                nxt = next(more, None)
                if nxt is not None:
                    index[nxt.key] = len(futures)
                    futures.append(nxt)
                    pending.add(nxt)
            i = index[future.key]
            results[i] = future.result()
            if on_result is not None:
                on_result(i, results[i])
            bar.advance()
    finally:
        bar.close()
    if first_error is not None:
        raise first_error
    return results
