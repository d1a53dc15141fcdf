"""The container task: one symbol group x a range of parameter sets, backtested, written, then marked done."""

from __future__ import annotations

import mmap
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import AdmfError
from ..monitor import enabled, rss, stage_times_start, stage_times_take
from ..storage import StorageRef
from .grid import ParamSets
from .portfolio import _GIVEN_BYTES, _arrays_parts, _portfolio_table
from .results import _rows_table, write_part


@dataclass(frozen=True)
class ContainerTask:
    """One container: symbols x parameter sets [lo, hi). Everything a worker needs, by reference."""

    part: int
    symbols: tuple[str, ...]
    lo: int
    hi: int
    param_sets: ParamSets
    config: Any  # SweepConfig, or another config with its hooks (prepare, stats, load, costs, label)
    run_ref: StorageRef
    run_id: str
    whole_range: bool = False  # the only task of its set range: it writes the portfolio rows itself
    stream: Any = None  # a streaming.StreamSpec: the symbols are read in time chunks (run_stream_container)
    resume: Any = None  # an incremental.Resume: go on from the state a previous run saved for this part
    keep_state: bool = False  # save the state the symbols reach (state/part-<j>.state), for incremental runs
    layout: str = ""  # the token of the run's task layout, recorded in the done marker
    # object stores: the part's uploads and marker finish behind the worker's next task (see commit_later);
    # the driver confirms them with flush_commits before anything reads them or the run completes
    later: bool = False

def _fail_where(task: ContainerTask, symbol: str, data: Any, exc: Exception) -> AdmfError:
    """Find the parameter set that fails (deterministic bugs) and name it."""
    from ..kernels.portfolio import accumulators_init

    label, where = task.config.label, f"run {task.run_id} part {task.part}"
    pos = np.arange(len(data.bars), dtype=np.int64)
    for i, p in enumerate(task.param_sets):
        try:
            task.config.stats(data, task.config.prepare([dict(p)]), (pos, accumulators_init(1, len(pos))))
        except Exception as inner:  # the first set that fails alone is the culprit
            cause = inner.__cause__ if isinstance(inner, AdmfError) and inner.__cause__ is not None else inner
            return AdmfError(f"{label} failed on parameter set {task.lo + i} {dict(p)}: "
                             f"{type(cause).__name__}: {cause}", symbol=symbol, key=where)
    return AdmfError(f"{label} failed: {type(exc).__name__}: {exc}", symbol=symbol, key=where)

@dataclass(frozen=True)
class Timeline:
    """A container's own timeline: the sorted union of its symbols' bar timestamps (int64 ns).

    ``positions[i]`` places symbol ``i``'s bars on it (symbols with the same bar times
    share one positions array); ``periods_per_year`` is the timeline's own (that of the
    portfolio rows).
    """

    stamps: np.ndarray
    positions: tuple[np.ndarray, ...]
    periods_per_year: float

_TIMELINES: OrderedDict[tuple, Timeline] = OrderedDict()
_TIMELINES_KEEP = 8
# What the kept timelines may hold in all: memory Dask does not see (it is no task's result), so a
# worker paused for memory could not free it by spilling. One minute-bar timeline of 20 years is 16 MB.
_TIMELINES_BYTES = 64 << 20
_TIMELINES_LOCK = threading.Lock()

def group_timeline(indicator_sets: Sequence[Any]) -> Timeline:
    """The :class:`Timeline` of these symbols' sets, kept per worker process.

    Every container of a symbol group (one per parameter-set range) has the same
    timeline; on minute bars building it (a sort of every timestamp, a search per
    symbol, a median spacing) cost ~0.1 s a task. Keyed by the sets' data keys,
    which identify their exact bars.
    """
    from ..kernels.stats import periods_per_year

    keys = tuple(getattr(s, "data_key", "") for s in indicator_sets)
    key = keys if all(keys) else None  # an input without a data key is not kept
    with _TIMELINES_LOCK:
        hit = _TIMELINES.get(key) if key is not None else None
        if hit is not None:
            _TIMELINES.move_to_end(key)
            return hit
    stamps = [np.asarray(s.bars.timestamp, dtype=np.int64) for s in indicator_sets]
    if all(len(a) == len(stamps[0]) and np.array_equal(a, stamps[0]) for a in stamps[1:]):
        union = stamps[0] if stamps else np.empty(0, np.int64)  # aligned symbols: nothing to merge
        positions = (np.arange(len(union), dtype=np.int64),) * len(stamps)  # one array, shared
        # the first symbol's bars are the timeline: their value, worked out where the set was built
        ppy = indicator_sets[0].bars.periods_per_year() if len(union) > 1 else 252.0
    else:
        union = np.unique(np.concatenate(stamps))
        positions = tuple(np.searchsorted(union, a).astype(np.int64) for a in stamps)
        ppy = periods_per_year(union) if len(union) > 1 else 252.0
    timeline = Timeline(union, positions, ppy)
    if key is None:
        return timeline
    with _TIMELINES_LOCK:
        _TIMELINES[key] = timeline
        while len(_TIMELINES) > _TIMELINES_KEEP or (len(_TIMELINES) > 1 and _timelines_bytes() > _TIMELINES_BYTES):
            _TIMELINES.popitem(last=False)
    return timeline


def _timelines_bytes() -> int:
    total = 0
    for t in _TIMELINES.values():
        total += t.stamps.nbytes + sum(p.nbytes for p in {id(p): p for p in t.positions}.values())
    return total

class _Scratch:
    """Equity accumulators reused across the tasks of a worker process.

    A task's accumulator is tens of MB (sets x timeline). Allocated afresh, every
    task pays the page faults of new memory (on a VM, ~2 us a page: ~40 ms for
    65 MB, as much as the kernel's work on it), and two workers doing so at once
    slow each other down. Zeroing memory already mapped costs a few ms. At most
    ``keep`` buffers stay (one per thread in practice), at most ``max_bytes`` in all.
    """

    def __init__(self, keep: int = 4, max_bytes: int = 128 << 20) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._keep = keep
        self._max_bytes = max_bytes  # kept buffers are memory Dask does not see: bounded

    def take(self, m: int, n: int) -> np.ndarray:
        """A zeroed float64 ``(m, n)`` array, a view of a kept buffer when one is big enough."""
        need = m * n
        with self._lock:
            fits = [b for b in self._free if b.size >= need]
            buf = min(fits, key=len) if fits else None
            if buf is not None:
                self._free = [b for b in self._free if b is not buf]
        if buf is None:
            buf = _huge_empty(need)
        out = buf[:need].reshape(m, n)
        out.fill(0.0)
        return out

    def give(self, arr: np.ndarray) -> None:
        """Return an array from :meth:`take` once nothing reads it any more."""
        buf = arr
        while isinstance(buf.base, np.ndarray):
            buf = buf.base
        with self._lock:
            self._free.append(buf)
            self._free = sorted(self._free, key=len)[-self._keep:]
            while len(self._free) > 1 and sum(b.nbytes for b in self._free) > self._max_bytes:
                self._free.pop()  # the largest goes first

_SCRATCH = _Scratch()

def _huge_empty(count: int) -> np.ndarray:
    """An uninitialised float64 array of ``count`` items; from 4 MiB up, in memory the OS may back with 2 MiB pages.

    Linux hands out transparent huge pages only where asked (``madvise`` mode, the usual
    default): 48 MB of fresh 4 KiB pages took ~26 ms to fill here (up to 0.15 s in a
    worker), with huge pages ~6 ms. Elsewhere, or if refused, plain pages.
    """
    nbytes = count * 8
    if nbytes < (4 << 20) or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.empty(count)
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        region.madvise(mmap.MADV_HUGEPAGE)
    except OSError:
        pass
    return np.frombuffer(region, dtype=np.float64, count=count)

# Commits still in flight in this worker process, by run (its storage URL): (part, future of its marker).
# A container on an object store hands its part's last PUTs and its marker to the filesystem's event
# loop and returns: the uploads (~5 MB a part on the benchmark's S3 sweep, ~0.1-0.3 s on moto) overlap
# the worker's next task instead of holding its thread. At most _LATER_MAX are in flight per process
# (their bytes are memory Dask does not see); a task waits for the oldest beyond that. The driver
# collects them all with flush_commits (a failure raised there, as the task would have raised it).
_LATER: dict[str, list[tuple[int, Any]]] = {}
_LATER_LOCK = threading.Lock()
_LATER_MAX = 2


def _commit_later(task: ContainerTask, future: Any) -> None:
    """Keep ``future`` (part ``task.part``'s marker) in flight, after waiting while too many others are."""
    while True:
        with _LATER_LOCK:
            mine = _LATER.setdefault(task.run_ref.url, [])
            for _, f in mine:
                if f.done() and f.exception() is not None:  # an earlier part's commit failed: so does the run
                    raise f.exception()
            flying = [f for _, f in mine if not f.done()]  # this run's: another run's stuck PUT holds no one up
            if len(flying) < _LATER_MAX:
                mine.append((task.part, future))
                for url in [u for u in _LATER if u != task.run_ref.url]:  # runs never flushed (they failed) keep
                    _LATER[url] = [(j, f) for j, f in _LATER[url]  # only what a flush would still need to see:
                                   if not f.done() or f.exception() is not None]  # (a dropped success: its marker
                    if not _LATER[url]:  # is in storage, where the driver looks for a part no worker reports)
                        del _LATER[url]
                return
        flying[0].exception()  # waits; a failure stays with its run, raised by flush_commits


async def flush_commits(run_url: str) -> list[int]:
    """Worker (``client.run``): wait for this process's commits of run ``run_url``; the parts committed.

    Raises the first failure (a StorageError naming the file that was not written); either
    way, the run's commits are forgotten here once every one has ended.
    """
    import asyncio

    with _LATER_LOCK:
        runs = _LATER.pop(run_url, [])
    done: list[int] = []
    first: BaseException | None = None
    for part, future in runs:
        try:
            await asyncio.wrap_future(future)
            done.append(part)
        except BaseException as exc:  # noqa: BLE001 - every commit ends before the first failure is raised
            first = first or exc
    if first is not None:
        raise first
    return done


def run_container(task: ContainerTask, *sources: Any) -> dict[str, Any]:
    """Task: backtest every (symbol, parameter set) of the container, write rows, then mark it done.

    ``sources`` are the group's indicator sets as the hub handed them out: sets
    (futures Dask resolved) or :class:`~admf_dask.cache.InlineSet` requests built here.
    Also folds each symbol's sleeve into the equal-weight portfolio accumulators of
    the task's set range, on the group's own timeline (the union of its symbols'
    bars), and writes them with that timeline (``portfolio/part-<j>.acc``) before
    the marker; :func:`reduce_portfolio` rebases them onto the union of all groups.
    A task that is the only one of its range (``whole_range``) holds every symbol:
    it adds the range's PORTFOLIO rows to its own results instead.
    Returns the row count (the rows stay in storage: the client streams them into the
    final table range by range) and the hub counters of each symbol's indicator set.
    """
    from ..kernels.portfolio import EXTRA_WIDTH, portfolio_fold, portfolio_state_init, trade_acc_init
    from ..kernels.state import run_state_init
    from ..kernels.stats import PeriodsPerYearStream
    from .incremental import whole_symbol_state, write_state
    from ..cache import read_ahead
    from ..storage import json_bytes
    from .integrity import commit, digest, marker_name
    from .integrity import marker as make_marker
    from .portfolio import _stream_portfolio_table

    t0 = time.perf_counter()
    stage_times_start()  # BarStore.read adds its time to "bars"
    indicator_sets = read_ahead(sources, task.config.load)  # on an object store, the next symbol's bars meanwhile
    t_inputs = time.perf_counter()
    for iset in indicator_sets[1:]:  # aligned symbols: one fold of the bar spacing (periods per year) for all
        iset.bars.spacing_from(indicator_sets[0].bars)
    batch = task.config.prepare([dict(p) for p in task.param_sets])
    timeline = group_timeline(indicator_sets)
    m = len(batch.params)
    equity = _SCRATCH.take(m, len(timeline.stamps))
    saved: dict[str, np.ndarray] | None = {} if task.keep_state else None  # the state reached, for the next run
    files: dict[str, dict[str, Any]] = {}  # what the part commits: name -> size, sha256
    storage = task.run_ref.open()
    pending = storage.uploads()  # the part's files, each written (object stores: PUT) as soon as it is encoded
    held: bytes | None = None
    try:
        acc = (equity, trade_acc_init(m), np.zeros((m, EXTRA_WIDTH)))
        stats = []
        for i, (symbol, iset, pos) in enumerate(zip(task.symbols, indicator_sets, timeline.positions)):
            try:
                if saved is None:
                    stats.append(task.config.stats(iset, batch, (pos, acc)))
                    continue
                run = run_state_init(m, float(task.config.cash))
                stats.append(task.config.stats(iset, batch, (pos, acc), state=run))
            except Exception as exc:
                raise _fail_where(task, symbol, iset, exc) from None
            saved.update(whole_symbol_state(i, iset, batch, run, task.config))
        t_kernel = time.perf_counter()
        if not task.whole_range:  # the accumulators first: their PUT overlaps encoding the rows and the state
            name = f"portfolio/part-{task.part:06d}.acc"
            buffers = _arrays_parts({"equity": acc[0], "trades": acc[1], "extra": acc[2], "timeline": timeline.stamps})
            if not storage.is_local:  # the bytes PUT, kept with the result for this run's reduce (see sent_part)
                buffers = held = b"".join(buffers)
            files[name] = digest(buffers)
            pending[name] = buffers  # over scratch memory, given back below: written or copied (joined) at once
        table = _rows_table(task, batch, stats)
        if task.whole_range and saved is not None:  # the portfolio folded (as a stream would), its state kept
            pstate = portfolio_state_init(m)
            portfolio_fold(acc[0], np.ascontiguousarray(acc[2][:, 2]), 0, pstate)
            union = PeriodsPerYearStream()
            union.update(timeline.stamps)
            saved.update({"pstate": pstate, "folded": np.array([len(timeline.stamps)], dtype=np.int64),
                          **{f"union/{k}": v for k, v in union.to_arrays().items()}})
            table = pa.concat_tables([table, _stream_portfolio_table(task.lo, task.hi, task.param_sets, pstate,
                                                                     acc[1], acc[2], timeline.periods_per_year)],
                                     promote_options="default")
        elif task.whole_range:  # every symbol is here: the accumulators are final, no reduce needed
            table = pa.concat_tables([table, _portfolio_table(task.lo, task.hi, task.param_sets, acc, timeline.stamps,
                                                                       timeline.periods_per_year)],
                                     promote_options="default")
    finally:
        _SCRATCH.give(equity)
    name = f"results/part-{task.part:06d}.parquet"
    files[name] = write_part(storage, table, name, into=pending)
    given = {name: pending[name]} if not storage.is_local and files[name]["size"] <= _GIVEN_BYTES else {}
    extra: dict[str, Any] = {}
    if not task.whole_range:  # where this part's summed equity is, relative to the storage root
        extra["equity"] = [f"runs/{task.run_id}/portfolio/part-{task.part:06d}.acc"]
    if saved is not None:
        extra["state"] = write_state(storage, saved, f"state/part-{task.part:06d}.state", into=pending)
        files[extra["state"]["file"]] = {k: extra["state"][k] for k in ("size", "sha256")}
    if task.later and pending.later:  # the marker after every file, behind this worker's next task
        marker = make_marker(task, table.num_rows, files, **extra)
        _commit_later(task, pending.commit_later(marker_name(task.part), json_bytes(marker)))
    else:
        pending.wait()
        marker = commit(storage, task, table.num_rows, files, **extra)  # the marker last, once every file is in place
    t_end = time.perf_counter()
    times = stage_times_take()
    bars = min(times.get("bars", 0.0), t_inputs - t0)
    # the monitor's stages: the tables and portfolio rows count with writing them
    stages = {"bars": bars, "indicators": t_inputs - t0 - bars, "kernel": t_kernel - t_inputs, "write": t_end - t_kernel}
    return {"part": task.part, "rows": table.num_rows, "seconds": t_end - t0, "files": files, "marker": marker,
            "counters": {sym: iset.counters for sym, iset in zip(task.symbols, indicator_sets)},
            "bars": {sym: len(iset.bars) for sym, iset in zip(task.symbols, indicator_sets)},
            "stages": stages, "pid": os.getpid(), "rss": rss() if enabled() else 0,
            **({"acc": held} if held is not None else {}), **({"given": given} if given else {}),
            **({"later": True} if task.later and pending.later else {})}


def sent_part(out: dict[str, Any]) -> dict[str, Any]:
    """What the driver is sent of a container's result: all but the accumulators' bytes (``acc``).

    On an object store a container's result keeps the bytes of its ``portfolio/part-<j>.acc``
    as it PUT them; the result stays on the cluster (:func:`~admf_dask.cluster.run_tasks`'
    ``split``) and the reduce of the same run takes them from there instead of GETting the file
    back. Parts committed by an earlier run (resume) are read from storage and checked. The
    results part's bytes (``given``, object stores, up to 16 MiB) are sent: the driver's final
    table takes them instead of reading the part back.
    """
    return {k: v for k, v in out.items() if k != "acc"}
