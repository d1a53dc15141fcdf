"""The monitor: what a run spent its time and memory on, and the rules that name its bottleneck.

Every run (sweep, replay) records into ``run.json["monitor"]``:

==================  ===============================================================================
``stages``          seconds the container tasks spent per stage: ``bars`` (reading bars),
                    ``indicators`` (getting indicator sets or signals), ``kernel``, ``write``
                    (results, accumulators, markers); each task times itself and returns them
``tasks``           every task of the run as dask's task stream saw it, by stage key: count, task
                    seconds; the run's main stage (``sweep``/``replay``) also median, p95, max
``overhead``        wall x threads - sum of task time: scheduling, transfers, idle threads
``workers``         each worker's peak memory (RSS sampled as its tasks end, and at the end)
                    against its memory limit
``events``          pauses, spills (count, bytes) and restarts during the run
``storage``         requests through fsspec (every process's counts summed) and their latency
``monitor_seconds`` what recording cost this process (probes, task stream, the record)
==================  ===============================================================================

:func:`findings` turns a record into named findings, each with a fix (pure functions
over the dict, so a rule is tested on a dict). ``ADMF_MONITOR=0`` turns the
recording off (findings are then an empty list). ``--performance-report [PATH]``
saves dask's own performance report (:func:`report_path`) beside the run.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ["RULES", "RunMonitor", "count_requests", "enabled", "findings", "report_path", "timed"]

ENV = "ADMF_MONITOR"


def enabled() -> bool:
    """Whether runs record their monitor (``ADMF_MONITOR=0`` turns it off)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


# ---------------------------------------------------------------- performance reports

def report_path(value: str | bool | None, run_storage: Any, run_id: str) -> str | None:
    """Where dask's performance report of a run goes: an absolute local path, or None for none.

    ``value`` is a path, or ``True`` / ``""`` (the flag without a value) for the default:
    ``performance-report.html`` beside the run's run.json when the storage root is on local
    disk, else ``./admf-performance-<run-id>.html``.
    """
    if value is None or value is False:
        return None
    if value is True or value == "":
        if getattr(run_storage, "is_local", False):
            return os.path.join(run_storage.path(), "performance-report.html")
        return os.path.abspath(f"admf-performance-{run_id}.html")
    return os.path.abspath(os.path.expanduser(str(value)))


# ---------------------------------------------------------------- stage stopwatch (in tasks)

_LOCAL = threading.local()


@contextmanager
def timed(stage: str) -> Iterator[None]:
    """Add the block's seconds to ``stage`` of the task running in this thread (see :func:`stage_times`)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        times = getattr(_LOCAL, "times", None)
        if times is not None:
            times[stage] = times.get(stage, 0.0) + time.perf_counter() - t0


def stage_times_start() -> None:
    """Start collecting this thread's :func:`timed` blocks (a task calls this first)."""
    _LOCAL.times = {}


def stage_times_take() -> dict[str, float]:
    """The seconds collected since :func:`stage_times_start`; collection stops."""
    times = getattr(_LOCAL, "times", None) or {}
    _LOCAL.times = None
    return times


def rss() -> int:
    """This process's resident memory in bytes (0 where unknown)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001  (a probe: never fail a task over it)
        return 0


# ---------------------------------------------------------------- storage requests (per process)

_BUCKETS = tuple(1e-4 * 1.25 ** i for i in range(64))  # 0.1 ms .. ~160 s, 25 % apart: p95 within 25 %


class Requests:
    """Storage requests of this process: counts per operation, total seconds, a latency histogram."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.ops: dict[str, int] = {}
            self.seconds = 0.0
            self.slowest = 0.0
            self.hist = [0] * (len(_BUCKETS) + 1)

    def add(self, op: str, seconds: float) -> None:
        import bisect

        i = bisect.bisect_left(_BUCKETS, seconds)
        with self._lock:
            self.ops[op] = self.ops.get(op, 0) + 1
            self.seconds += seconds
            self.slowest = max(self.slowest, seconds)
            self.hist[i] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"ops": dict(self.ops), "seconds": self.seconds, "max": self.slowest, "hist": list(self.hist)}


REQUESTS = Requests()

# fsspec methods that are one request (or one local file operation) each. s3fs: every S3 call
# goes through _call_s3, one request each (GetObject, PutObject, HeadObject, ListObjectsV2, ...).
# Elsewhere the public methods are counted, a call made inside another (cat_file opening the file) not again.
_SYNC_OPS = ("cat_file", "cat", "pipe_file", "put_file", "get_file", "info", "ls", "exists", "rm_file", "rm",
             "mv", "copy", "open", "mkdir", "makedirs")


def count_requests(fs: Any) -> Any:
    """Count (and time) the requests made through ``fs``; once per filesystem instance (fsspec shares them)."""
    if getattr(fs, "_admf_counted", False):  # (the wrappers check ADMF_MONITOR at each call)
        return fs
    try:
        if hasattr(fs, "_call_s3"):
            call = fs._call_s3

            async def counted_call(method: Any, *args: Any, **kwargs: Any) -> Any:
                if not enabled():
                    return await call(method, *args, **kwargs)
                t0 = time.perf_counter()
                try:
                    return await call(method, *args, **kwargs)
                finally:
                    REQUESTS.add(getattr(method, "__name__", str(method)), time.perf_counter() - t0)

            fs._call_s3 = counted_call
        else:
            for name in _SYNC_OPS:
                method = getattr(fs, name, None)
                if callable(method):
                    setattr(fs, name, _counted(name, method))
        fs._admf_counted = True
    except (AttributeError, TypeError):  # a filesystem that refuses attributes is just not counted
        pass
    return fs


def _counted(name: str, method: Any) -> Any:
    def counted(*args: Any, **kwargs: Any) -> Any:
        if getattr(_LOCAL, "in_request", False) or not enabled():  # inside a counted call: part of that request
            return method(*args, **kwargs)
        _LOCAL.in_request = True
        t0 = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            _LOCAL.in_request = False
            REQUESTS.add(name, time.perf_counter() - t0)

    return counted


def _merge_requests(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    ops: dict[str, int] = {}
    hist = [0] * (len(_BUCKETS) + 1)
    for s in snapshots:
        for k, v in s["ops"].items():
            ops[k] = ops.get(k, 0) + v
        hist = [a + b for a, b in zip(hist, s["hist"])]
    return {"ops": ops, "seconds": sum(s["seconds"] for s in snapshots),
            "max": max((s["max"] for s in snapshots), default=0.0), "hist": hist}


def _diff_requests(end: dict[str, Any], start: dict[str, Any] | None) -> dict[str, Any]:
    if start is None:
        return end
    return {"ops": {k: v - start["ops"].get(k, 0) for k, v in end["ops"].items() if v - start["ops"].get(k, 0)},
            "seconds": end["seconds"] - start["seconds"], "max": end["max"],
            "hist": [a - b for a, b in zip(end["hist"], start["hist"])]}


def _quantile_from_hist(hist: list[int], q: float) -> float:
    total = sum(hist)
    if not total:
        return 0.0
    need, seen = q * total, 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= need:
            return _BUCKETS[min(i, len(_BUCKETS) - 1)]
    return _BUCKETS[-1]


# ---------------------------------------------------------------- worker probes

def _probe(dask_worker: Any = None) -> dict[str, Any]:
    """Run in each worker (``client.run``): its process, memory, spill counters and storage requests."""
    import resource

    out: dict[str, Any] = {"pid": os.getpid(), "rss": rss(),
                           "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                           "requests": REQUESTS.snapshot()}
    if dask_worker is not None:
        out["limit"] = int(getattr(getattr(dask_worker, "memory_manager", None), "memory_limit", 0) or 0)
        metrics = getattr(dask_worker.data, "cumulative_metrics", None)
        if metrics is not None:
            out["spilled"] = int(metrics.get(("disk-write", "count"), 0))
            out["spilled_bytes"] = int(metrics.get(("disk-write", "bytes"), 0))
    return out


def _scheduler_view(dask_scheduler: Any = None, index: int = 0, since: float = 0.0) -> dict[str, Any]:
    """Run on the scheduler: the tasks its task stream recorded from ``index`` on, compacted to
    (stage, compute seconds, worker), and the memory events since ``since``."""
    from dask.utils import key_split

    plugin = dask_scheduler._task_stream_plugin()
    tasks = [(key_split(t["key"]), sum(s["stop"] - s["start"] for s in t.get("startstops", ())
                                       if s.get("action") == "compute"), t.get("worker"))
             for t in plugin.collect(start_index=index)]
    counts = {"pauses": 0, "restarts": 0, "workers_lost": 0}
    for topic, items in dask_scheduler.get_events().items():
        for stamp, msg in items:
            if stamp < since or not isinstance(msg, dict):
                continue
            action = msg.get("action")
            if topic != "all" and action == "worker-status-change" and msg.get("status") == "paused":
                counts["pauses"] += 1
            elif topic == "all" and action == "remove-worker":
                counts["workers_lost"] += 1
            elif topic == "worker-restart-memory":
                counts["restarts"] += 1
    return {"tasks": tasks, "events": counts}


def _first_start(dask_scheduler: Any = None, index: int = 0) -> float | None:
    """Run on the scheduler: the earliest start (as the workers stamped it) of the tasks its task stream
    recorded from ``index`` on; None for none."""
    starts = [s["start"] for t in dask_scheduler._task_stream_plugin().collect(start_index=index)
              for s in t.get("startstops", ()) if "start" in s]
    return min(starts, default=None)


def _both(client: Any, **scheduler_kwargs: Any) -> Any:
    """The workers' probes and the scheduler's view at once (one round trip's wait), as a concurrent future;
    without ``scheduler_kwargs`` the probes only."""
    import asyncio

    async def gather() -> tuple[Any, Any]:
        probes = client._run(_probe, on_error="return")
        if not scheduler_kwargs:
            return await probes, None
        return await asyncio.gather(probes, client._run_on_scheduler(_scheduler_view, **scheduler_kwargs))

    return asyncio.run_coroutine_threadsafe(gather(), client.loop.asyncio_loop)


# ---------------------------------------------------------------- the run monitor

class RunMonitor:
    """Records one run: call :meth:`start` before its tasks, :meth:`task` with each main task's result,
    :meth:`stop` after the last, then :meth:`record`.

    With ``performance_report`` (a local path) dask's performance report of the same span
    is written there. Recording costs a ``client.run`` at each end, the scheduler's task
    stream (kept by dask anyway for the dashboard) and a few counters per task.
    """

    def __init__(self, client: Any, threads: int, *, stage: str, performance_report: str | None = None,
                 on: bool | None = None) -> None:
        self.client = client
        self.threads = max(int(threads), 1)
        self.stage = stage
        self.path = performance_report
        self.on = enabled() if on is None else on
        self._report: Any = None
        self._stages: dict[str, float] = {}
        self._rss: dict[str, int] = {}
        self._start: dict[str, dict[str, Any]] = {}
        self._here: dict[str, Any] | None = None
        self._index = 0
        self.wall = 0.0
        self.cost = 0.0  # seconds this process spent recording (start, stop, record; the report not counted)

    def start(self) -> RunMonitor:
        if self.path is not None:
            from distributed import performance_report

            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._report = performance_report(filename=self.path)
            self._report.__enter__()
        if self.on or self._report is not None:  # the task stream's position before any task of the run
            t = time.perf_counter()
            self._index = self.client.sync(self.client.scheduler.get_task_stream_index)
            self.cost += time.perf_counter() - t
        if self.on:  # the probes are asked for now and collected in stop(): the run does not wait for them
            t = time.perf_counter()
            self._here = REQUESTS.snapshot()
            self._since = time.time()
            self._starting = _both(self.client)
            self.cost += time.perf_counter() - t
        self._t0 = time.perf_counter()
        return self

    def task(self, out: Mapping[str, Any]) -> None:
        """A main task's result: its ``stages`` seconds and ``rss`` (per worker process, by ``pid``)."""
        if not self.on:
            return
        for k, v in (out.get("stages") or {}).items():
            self._stages[k] = self._stages.get(k, 0.0) + float(v)
        if out.get("pid") is not None:
            pid = str(out["pid"])
            self._rss[pid] = max(self._rss.get(pid, 0), int(out.get("rss", 0)))

    def stop(self) -> None:
        self.wall = time.perf_counter() - self._t0
        if self._report is not None:
            report, self._report = self._report, None
            # dask's report takes the tasks that ended after its start by the clock, and a worker stamps its
            # tasks with its estimate of the scheduler's clock (Worker.scheduler_delay, from a heartbeat's round
            # trip): an estimate taken while the event loop was busy runs tens of ms behind, and a short task
            # just after the start was left out of the report ("number of tasks: 0"). The span starts at the
            # run's first task as stamped, if that is earlier.
            first = self.client.run_on_scheduler(_first_start, index=self._index)
            if first is not None:
                report.start = min(report.start, first)
            report.__exit__(None, None, None)
        if self.on:
            t = time.perf_counter()
            self._start, _ = self._starting.result(timeout=60)
            self._end, view = _both(self.client, index=self._index, since=self._since).result(timeout=60)
            self._start = {a: p for a, p in self._start.items() if isinstance(p, dict)}  # (a worker gone)
            self._end = {a: p for a, p in self._end.items() if isinstance(p, dict)}
            self._stream, self._events = view["tasks"], view["events"]
            self.cost += time.perf_counter() - t

    def peak_rss(self) -> int | None:
        """The largest worker's peak resident memory in its lifetime (``ru_maxrss``), from the end probes;
        None when recording is off."""
        if not self.on:
            return None
        return max((int(p.get("maxrss", 0)) for p in self._end.values()), default=0)

    def record(self) -> dict[str, Any]:
        """The run's monitor record (JSON-safe), or {} when recording is off."""
        if not self.on:
            return {}
        t = time.perf_counter()
        record = build_record(stream=self._stream, wall=self.wall, threads=self.threads, stage=self.stage,
                              stages=self._stages, start=self._start, end=self._end, task_rss=self._rss,
                              here=(self._here, REQUESTS.snapshot()), events=self._events)
        record["monitor_seconds"] = round(self.cost + time.perf_counter() - t, 4)
        return record


def _quantile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.quantile(np.asarray(values), q)) if values else 0.0


def build_record(*, stream: list[tuple[str, float, str]], wall: float, threads: int, stage: str,
                 stages: Mapping[str, float], start: Mapping[str, Any], end: Mapping[str, Any],
                 task_rss: Mapping[str, int], here: tuple[Any, Any], events: Mapping[str, int]) -> dict[str, Any]:
    """The record from what :class:`RunMonitor` gathered (see the module docstring for its keys)."""
    by_stage: dict[str, list[float]] = {}
    workers_used = set()
    for stage_name, compute, worker in stream:
        by_stage.setdefault(stage_name, []).append(compute)
        workers_used.add(worker)
    main = by_stage.get(stage, [])
    task_seconds = sum(sum(v) for v in by_stage.values())
    capacity = wall * threads
    # memory: each worker's peak (its tasks' samples and the end probe) against its limit
    workers = {}
    for addr, probe in end.items():
        peak = max(int(probe.get("rss", 0)), task_rss.get(str(probe.get("pid")), 0))
        limit = int(probe.get("limit", 0))
        workers[addr] = {"peak_bytes": peak, "limit_bytes": limit,
                         "peak_fraction": round(peak / limit, 4) if limit else None}
    spilled = sum(p.get("spilled", 0) - start.get(a, {}).get("spilled", 0) for a, p in end.items())
    spilled_bytes = sum(p.get("spilled_bytes", 0) - start.get(a, {}).get("spilled_bytes", 0) for a, p in end.items())
    # storage: every worker process's requests, and this process's when it is not one of them; a worker in this
    # process (threads) counts from this process's own start snapshot, taken before any request of the run (its
    # start probe, asked for without waiting, can come after the driver's first requests: the hub's cache listing)
    snaps, pids = [], set()
    for addr, probe in end.items():
        first = here[0] if probe.get("pid") == os.getpid() else start.get(addr, {}).get("requests")
        snaps.append(_diff_requests(probe["requests"], first))
        pids.add(probe.get("pid"))
    if os.getpid() not in pids:
        snaps.append(_diff_requests(here[1], here[0]))
    req = _merge_requests(snaps)
    n_req = sum(req["ops"].values())
    return {
        "wall_seconds": round(wall, 4), "threads": threads,
        "stages": {k: round(v, 4) for k, v in sorted(stages.items())},
        "tasks": {"stage": stage, "count": len(main), "median": round(_quantile(main, 0.5), 5),
                  "p95": round(_quantile(main, 0.95), 5), "max": round(max(main, default=0.0), 5),
                  "seconds": round(sum(main), 4),
                  "by_stage": {k: {"count": len(v), "seconds": round(sum(v), 4)} for k, v in sorted(by_stage.items())}},
        "overhead": {"seconds": round(max(capacity - task_seconds, 0.0), 4),
                     "fraction": round(max(capacity - task_seconds, 0.0) / capacity, 4) if capacity else 0.0,
                     "workers_idle": max(len(end) - len(workers_used & set(end)), 0) if end else 0},
        "workers": workers,
        "events": {**dict(events), "spilled": int(spilled), "spilled_bytes": int(spilled_bytes)},
        "storage": {"requests": n_req, "by_op": dict(sorted(req["ops"].items())),
                    "seconds": round(req["seconds"], 4),
                    "mean_ms": round(1e3 * req["seconds"] / n_req, 3) if n_req else 0.0,
                    "p95_ms": round(1e3 * min(_quantile_from_hist(req["hist"], 0.95), req["max"]), 3) if n_req else 0.0,
                    "max_ms": round(1e3 * req["max"], 3)},
    }


# ---------------------------------------------------------------- rules

# A rule takes the record and returns a finding ({rule, finding, fix}) or None. Thresholds are
# module constants so that a rule's test can say where it fires.
SHORT_TASK_SECONDS = 0.05  # a task's fixed cost (scheduling, inputs, a results file, a marker) is ~5-20 ms
# the layout cuts a sweep into about 4 tasks per thread for balance whatever batch_seconds is (layout._layout):
# only more tasks than that can be made fewer by raising it
SHORT_MIN_TASKS_PER_THREAD = 4
MEMORY_FRACTION = 0.8  # dask pauses a worker at 80 % of its limit by default
LOAD_FRACTION = 0.5
SKEW_RATIO = 5.0
IDLE_FRACTION = 0.5
SLOW_STORAGE_P95_MS = 100.0
SLOW_STORAGE_MIN_REQUESTS = 5
MIN_TASK_SECONDS = 2.0  # time-share rules (load-bound, skew, idle) stay quiet on runs shorter than this


def _tasks_too_short(r: Mapping[str, Any]) -> dict[str, str] | None:
    t = r.get("tasks", {})
    if t.get("count", 0) > SHORT_MIN_TASKS_PER_THREAD * r.get("threads", 1) and 0 < t.get("median", 0) < SHORT_TASK_SECONDS:
        return {"rule": "tasks-too-short", "finding": f"tasks too short (median {1e3 * t['median']:.0f} ms "
                f"over {t['count']} tasks)", "fix": "raise batch_seconds (fewer, longer tasks)"}
    return None


def _memory_pressure(r: Mapping[str, Any]) -> dict[str, str] | None:
    hot = {a: w for a, w in r.get("workers", {}).items() if (w.get("peak_fraction") or 0) >= MEMORY_FRACTION}
    ev = r.get("events", {})
    if hot:
        addr, w = max(hot.items(), key=lambda kv: kv[1]["peak_fraction"])
        more = f" ({len(hot)} workers)" if len(hot) > 1 else ""
        return {"rule": "memory-pressure", "finding": f"memory pressure on worker {addr}{more} "
                f"(peak {100 * w['peak_fraction']:.0f} % of its limit)",
                "fix": "lower memory_budget (smaller chunks per task), or give workers more memory"}
    if ev.get("pauses") or ev.get("spilled") or ev.get("restarts"):
        return {"rule": "memory-pressure", "finding": f"memory pressure: {ev.get('pauses', 0)} pause(s), "
                f"{ev.get('spilled', 0)} spill(s), {ev.get('restarts', 0)} restart(s)",
                "fix": "lower memory_budget (smaller chunks per task), or give workers more memory"}
    return None


def _load_bound(r: Mapping[str, Any]) -> dict[str, str] | None:
    s = r.get("stages", {})
    # the containers' own stages, and the tasks that built shared indicator sets or loaded inputs for them
    shared = sum(v.get("seconds", 0.0) for k, v in r.get("tasks", {}).get("by_stage", {}).items()
                 if k in ("bars", "indicators"))
    total = sum(s.values()) + shared
    load = s.get("bars", 0.0) + s.get("indicators", 0.0) + shared
    if total >= MIN_TASK_SECONDS and load / total >= LOAD_FRACTION:
        return {"rule": "load-bound", "finding": f"load-bound ({100 * load / total:.0f} % of task time reading "
                f"bars and getting indicators)", "fix": "coarser partitions: more parameter sets per task "
                "(raise batch_seconds), a coarser store granularity (admf repack), or keep the indicator cache"}
    return None


def _skew(r: Mapping[str, Any]) -> dict[str, str] | None:
    t = r.get("tasks", {})
    if (t.get("seconds", 0) >= MIN_TASK_SECONDS and t.get("count", 0) >= 2 * r.get("threads", 1)
            and t.get("median", 0) > 0 and t["max"] / t["median"] >= SKEW_RATIO):
        return {"rule": "skew", "finding": f"skew: the slowest task took {t['max'] / t['median']:.0f}x the median "
                f"({t['max']:.2f} s vs {t['median']:.2f} s)",
                "fix": "split the long symbols (a lower memory_budget streams them in chunks) or lower batch_seconds"}
    return None


def _idle(r: Mapping[str, Any]) -> dict[str, str] | None:
    o = r.get("overhead", {})
    if r.get("wall_seconds", 0) * r.get("threads", 1) >= MIN_TASK_SECONDS and o.get("fraction", 0) >= IDLE_FRACTION:
        idle = f", {o['workers_idle']} worker(s) ran no task" if o.get("workers_idle") else ""
        return {"rule": "idle-workers", "finding": f"idle workers: {100 * o['fraction']:.0f} % of thread time ran "
                f"no task{idle}", "fix": "more, smaller tasks (lower batch_seconds) or fewer workers; check "
                "transfers and the scheduler in --performance-report"}
    return None


def _slow_storage(r: Mapping[str, Any]) -> dict[str, str] | None:
    s = r.get("storage", {})
    if s.get("requests", 0) >= SLOW_STORAGE_MIN_REQUESTS and s.get("p95_ms", 0) >= SLOW_STORAGE_P95_MS:
        return {"rule": "slow-storage", "finding": f"slow storage (p95 request {s['p95_ms']:.0f} ms over "
                f"{s['requests']} requests)", "fix": "put storage and workers in one region, raise batch_seconds "
                "(fewer, larger reads), or use a local --storage for the cache"}
    return None


RULES = (_tasks_too_short, _memory_pressure, _load_bound, _skew, _idle, _slow_storage)


def findings(record: Mapping[str, Any]) -> list[dict[str, str]]:
    """The named findings of a monitor record, each ``{rule, finding, fix}``; [] for a clean run or no record."""
    if not record:
        return []
    return [f for f in (rule(record) for rule in RULES) if f is not None]
