"""Parameter sweeps as batched container tasks on a dask.distributed cluster.

A sweep is one strategy, a grid (or a seeded random sample) of parameter sets, a
list of symbols and a date range over a bar store. The work is cut into
*container tasks*: a group of symbols x a contiguous range of parameter sets,
sized from a quick probe of the kernel so each task does ``batch_seconds`` of work
(0.2-2 s; smaller only when the whole sweep is too small to keep every thread
busy), and never more than ``MAX_TASKS`` tasks whatever the grid. A task gets its
symbols' :class:`~admf_dask.cache.IndicatorSet` futures from the indicator hub
(bars are loaded on the workers; the client never ships bar arrays), runs the
fused kernel through :func:`~admf_dask.backtest.run_batch`, writes its rows to
``results/part-<j>.parquet`` and then its marker ``done/part-<j>.json``: written
first, then marked.

Storage, under ``<root>/runs/<run-id>/``::

    run.json            config, data fingerprint, package version, task layout, status (written first)
    results/part-<j>.parquet   one per task: set_id, symbol, parameters, statistics
    done/part-<j>.json         the marker: the task is committed
    results.parquet     the final table, assembled once every task is committed

The run id is the token of (config, data fingerprint, package version), so the
same command finds its run again. Rerunning resumes: committed tasks are skipped
(their markers are the truth; a results file without a marker is redone and
overwritten with identical content). A finished run prints its result and does
nothing; ``force=True`` starts it afresh.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import mmap
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import __version__
from .bars import BarStore
from .config import token
from .errors import AdmfError, ConfigError, StorageError, did_you_mean
from .kernels.stats import STAT_NAMES
from .storage import Storage, StorageRef

__all__ = ["SweepConfig", "SweepResult", "expand_params", "run_sweep", "MAX_TASKS"]

MAX_TASKS = 20_000  # a bigger graph stalls the scheduler; batches grow instead
PORTFOLIO = "PORTFOLIO"  # the symbol column of the equal-weight portfolio rows
_ACC_BYTES = 64 << 20  # cap on a task's portfolio accumulators (sets x union timeline x 8 bytes)
_MIN_TASK_SECONDS = 0.01


def check_metric(metric: str) -> None:
    """ConfigError unless ``metric`` is one of the statistics (``STAT_NAMES``)."""
    if metric not in STAT_NAMES:
        raise ConfigError(f"unknown metric {metric!r}", key="metric",
                          hint=did_you_mean(metric, STAT_NAMES) or f"choose from {', '.join(STAT_NAMES)}")


def check_run_settings(config: Any) -> None:
    """The settings every config that :func:`run_grid` runs has: metric, top, batch_seconds, retries, max_backtests."""
    check_metric(config.metric)
    if not 0 < config.batch_seconds <= 60:
        raise ConfigError("batch_seconds must be > 0 and <= 60", key="batch_seconds")
    if config.retries < 0 or config.top < 0 or config.max_backtests < 1:
        raise ConfigError("retries and top must be >= 0, max_backtests >= 1", key="retries")


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep. Settings are validated once, here; tasks receive this object.

    ``params`` maps each parameter to a value, a list of values, or an inclusive
    range ``{from: 5, to: 50, step: 5}``; the grid is their product, minus the sets
    that break the strategy's rules (e.g. ``fast < slow``). ``sample: N`` takes a
    seeded random sample of N sets from that grid. ``symbols`` defaults to all.
    ``direction``, ``cash``, ``commission``, ``slippage_bps``, ``whole_units``,
    ``stop_loss``, ``take_profit`` are the backtest settings. ``metric`` and ``top``
    choose what is printed; ``batch_seconds`` the work per task; ``retries`` how
    often a failed task is retried; ``max_backtests`` the largest sweep run
    without ``yes``.
    """

    strategy: str
    params: dict = field(default_factory=dict)
    sample: int | None = None
    seed: int = 0
    symbols: list[str] | None = None
    start: str | None = None
    end: str | None = None
    direction: str = "long_short"
    cash: float = 10_000.0
    commission: float = 0.0
    slippage_bps: float = 0.0
    whole_units: bool = False
    stop_loss: float | None = None
    take_profit: float | None = None
    metric: str = "sharpe"
    top: int = 5
    batch_seconds: float = 0.5
    retries: int = 2
    max_backtests: int = 10_000_000

    def __post_init__(self) -> None:
        from .backtest import _costs
        from .strategies import get_strategy

        get_strategy(self.strategy)
        _costs(self.direction, self.cash, self.commission, self.slippage_bps, self.whole_units,
               self.stop_loss, self.take_profit)
        check_run_settings(self)
        if self.sample is not None and self.sample < 1:
            raise ConfigError("sample must be >= 1", key="sample")
        expand_params(self.strategy, self.params, self.sample, self.seed)  # fail now, not on a worker

    @property
    def costs(self) -> dict[str, Any]:
        return {"direction": self.direction, "cash": self.cash, "commission": self.commission,
                "slippage_bps": self.slippage_bps, "whole_units": self.whole_units,
                "stop_loss": self.stop_loss, "take_profit": self.take_profit}

    def identity(self) -> dict[str, Any]:
        """The settings that change results (not how they are printed or scheduled)."""
        d = asdict(self)
        for k in ("metric", "top", "batch_seconds", "retries", "max_backtests"):
            d.pop(k)
        return d

    # The hooks a container task calls (a replay's config has the same ones; see run_grid).
    @property
    def label(self) -> str:
        return self.strategy

    def param_names(self) -> list[str]:
        from .strategies import get_strategy

        return list(get_strategy(self.strategy).param_names)

    def prepare(self, param_sets: list[dict[str, Any]]) -> Any:
        from .strategies import prepare_batch

        return prepare_batch(self.strategy, param_sets)

    def stats(self, data: Any, batch: Any, portfolio: Any) -> np.ndarray:
        from .backtest import _costs, batch_stats

        return batch_stats(data, batch, _costs(**self.costs), portfolio=portfolio)

    def load(self, source: Any) -> Any:
        from .cache import resolve

        return resolve(source)


def _axis(strategy: str, name: str, spec: Any) -> list:
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"from", "to", "step"}
        if unknown or not {"from", "to"} <= set(spec):
            raise ConfigError(f"{strategy}: a range for {name!r} is {{from: a, to: b, step: s}}, got {dict(spec)}",
                              key=f"params.{name}")
        lo, hi, step = spec["from"], spec["to"], spec.get("step", 1)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi, step)) or step <= 0:
            raise ConfigError(f"{strategy}: range for {name!r} needs numbers and step > 0, got {dict(spec)}",
                              key=f"params.{name}")
        count = int(math.floor((hi - lo) / step + 1e-9)) + 1
        if count < 1:
            raise ConfigError(f"{strategy}: empty range for {name!r}: from {lo} to {hi}", key=f"params.{name}")
        values = [lo + i * step for i in range(count)]
        return [int(v) if all(isinstance(x, int) for x in (lo, step)) else round(v, 12) for v in values]
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ConfigError(f"{strategy}: the list for {name!r} is empty", key=f"params.{name}")
        return list(spec)
    return [spec]


def expand_params(strategy: str, params: Mapping[str, Any], sample: int | None = None,
                  seed: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The parameter sets of a grid: (valid sets in grid order, how many broke a rule).

    >>> sets, dropped = expand_params("sma_cross", {"fast": {"from": 5, "to": 50, "step": 5},
    ...                                             "slow": {"from": 20, "to": 210, "step": 10}})
    >>> len(sets), dropped
    (184, 16)
    """
    from .strategies import get_strategy

    s = get_strategy(strategy)
    if not isinstance(params, Mapping):
        raise ConfigError(f"params must be a mapping of parameter -> values, got {params!r}", key="params")
    for name in params:
        if name not in s.param_names:
            raise ConfigError(f"{s.name}: unknown parameter {name!r}", key=f"params.{name}",
                              hint=did_you_mean(str(name), s.param_names) or f"{s.name} takes: {', '.join(s.param_names)}")
    names = [n for n in s.param_names if n in params]
    axes = [_axis(s.name, n, params[n]) for n in names]
    sets, dropped, first_error = [], 0, None
    for combo in itertools.product(*axes):
        try:
            sets.append(s.validate(dict(zip(names, combo))))
        except ConfigError as exc:
            dropped += 1
            first_error = first_error or exc
    if not sets:
        raise ConfigError(f"no parameter set of the grid satisfies {s.name}'s rules; first: {first_error.message}",
                          key="params", hint=first_error.hint)
    if sample is not None and sample < len(sets):
        pick = np.sort(np.random.default_rng(seed).choice(len(sets), size=sample, replace=False))
        sets = [sets[i] for i in pick]
    return sets, dropped


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


def _fail_where(task: ContainerTask, symbol: str, data: Any, exc: Exception) -> AdmfError:
    """Find the parameter set that fails (deterministic bugs) and name it."""
    from .kernels.portfolio import accumulators_init

    label, where = task.config.label, f"run {task.run_id} part {task.part}"
    pos = np.arange(len(data.bars), dtype=np.int64)
    for i, p in enumerate(task.param_sets):
        try:
            task.config.stats(data, task.config.prepare([dict(p)]), (pos, accumulators_init(1, len(pos))))
        except Exception as inner:  # the first set that fails alone is the culprit
            return AdmfError(f"{label} failed on parameter set {task.lo + i} {dict(p)}: "
                             f"{type(inner).__name__}: {inner}", symbol=symbol, key=where)
    return AdmfError(f"{label} failed: {type(exc).__name__}: {exc}", symbol=symbol, key=where)


@dataclass(frozen=True)
class Timeline:
    """A container's own timeline: the sorted union of its symbols' bar timestamps (int64 ns).

    ``positions[i]`` places symbol ``i``'s bars on it; ``periods_per_year`` is the
    timeline's own (that of the portfolio rows).
    """

    stamps: np.ndarray
    positions: tuple[np.ndarray, ...]
    periods_per_year: float


_TIMELINES: OrderedDict[tuple, Timeline] = OrderedDict()
_TIMELINES_KEEP = 8
_TIMELINES_LOCK = threading.Lock()


def group_timeline(indicator_sets: Sequence[Any]) -> Timeline:
    """The :class:`Timeline` of these symbols' sets, kept per worker process.

    Every container of a symbol group (one per parameter-set range) has the same
    timeline; on minute bars building it (a sort of every timestamp, a search per
    symbol, a median spacing) cost ~0.1 s a task. Keyed by the sets' data keys,
    which identify their exact bars.
    """
    from .kernels.stats import periods_per_year

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
        positions = tuple(np.arange(len(union), dtype=np.int64) for _ in stamps)
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
        while len(_TIMELINES) > _TIMELINES_KEEP:
            _TIMELINES.popitem(last=False)
    return timeline


def _stats_table(set_id: np.ndarray, symbol: pa.Array, params: Mapping[str, list], matrix: np.ndarray) -> pa.Table:
    """Result rows as Arrow: set_id, symbol, the parameter columns, then every statistic."""
    columns: dict[str, Any] = {"set_id": set_id, "symbol": symbol}
    for name, values in params.items():
        columns[name] = pa.array(values)
    for i, name in enumerate(STAT_NAMES):
        columns[name] = matrix[:, i]
    return pa.table(columns)


def _rows_table(task: ContainerTask, batch: Any, stats: list[np.ndarray]) -> pa.Table:
    """One Arrow table of the task's rows, symbol-major."""
    m = task.hi - task.lo
    n_sym = len(stats)
    return _stats_table(np.tile(np.arange(task.lo, task.hi, dtype=np.int64), n_sym),
                        pa.array(np.repeat(np.array(task.symbols, dtype=object), m), pa.string()),
                        {name: values * n_sym for name, values in batch.columns().items()},
                        np.vstack(stats) if stats else np.empty((0, len(STAT_NAMES))))


class _Scratch:
    """Equity accumulators reused across the tasks of a worker process.

    A task's accumulator is tens of MB (sets x timeline). Allocated afresh, every
    task pays the page faults of new memory (on a VM, ~2 us a page: ~40 ms for
    65 MB, as much as the kernel's work on it), and two workers doing so at once
    slow each other down. Zeroing memory already mapped costs a few ms. At most
    ``keep`` buffers stay (one per thread in practice), each at most ``_ACC_BYTES``.
    """

    def __init__(self, keep: int = 4) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._keep = keep

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
    Returns the rows (an Arrow table, so the client need not read them back) and
    the hub counters of each symbol's indicator set.
    """
    from .kernels.portfolio import EXTRA_WIDTH, trade_acc_init

    t0 = time.perf_counter()
    indicator_sets = [task.config.load(src) for src in sources]
    batch = task.config.prepare([dict(p) for p in task.param_sets])
    timeline = group_timeline(indicator_sets)
    m = len(batch.params)
    equity = _SCRATCH.take(m, len(timeline.stamps))
    try:
        acc = (equity, trade_acc_init(m), np.zeros((m, EXTRA_WIDTH)))
        stats = []
        for symbol, iset, pos in zip(task.symbols, indicator_sets, timeline.positions):
            try:
                stats.append(task.config.stats(iset, batch, (pos, acc)))
            except Exception as exc:
                raise _fail_where(task, symbol, iset, exc) from None
        table = _rows_table(task, batch, stats)
        storage = task.run_ref.open()
        if task.whole_range:  # every symbol is here: the accumulators are final, no reduce needed
            table = pa.concat_tables([table, _portfolio_table(task.lo, task.hi, task.param_sets, acc, timeline.stamps,
                                                                       timeline.periods_per_year)],
                                     promote_options="default")
        else:
            storage.write_bytes(_arrays_parts({"equity": acc[0], "trades": acc[1], "extra": acc[2],
                                               "timeline": timeline.stamps}), f"portfolio/part-{task.part:06d}.acc")
    finally:
        _SCRATCH.give(equity)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(buf.getvalue(), f"results/part-{task.part:06d}.parquet")
    storage.write_json({"part": task.part, "rows": table.num_rows, "symbols": list(task.symbols),
                        "lo": task.lo, "hi": task.hi}, f"done/part-{task.part:06d}.json")
    return {"part": task.part, "rows": table.num_rows, "seconds": time.perf_counter() - t0, "table": table,
            "counters": {sym: iset.counters for sym, iset in zip(task.symbols, indicator_sets)}}


def reduce_portfolio(run_ref: StorageRef, parts: list[int], lo: int, hi: int,
                     param_sets: ParamSets, cash: float) -> pa.Table:
    """Task: merge the partial accumulators of one set range into its portfolio rows.

    The parts of a range cover every symbol once; the union of their timelines is
    the sweep's union timeline, onto which each part's equity is rebased first.
    """
    from .kernels.portfolio import merge_accumulators, rebase_equity

    storage = run_ref.open()
    accs = []
    for j in parts:
        part = f"portfolio/part-{j:06d}.acc"
        arrays = _arrays_read(storage.read_bytes(part), storage.display(part))
        accs.append((arrays["equity"], arrays["trades"], arrays["extra"], arrays["timeline"]))
    union = np.unique(np.concatenate([a[3] for a in accs]))
    total = None
    for equity, trades, extra, timeline in accs:
        sleeves = int(extra[0, 2]) if len(extra) else 0
        acc = (rebase_equity(equity, timeline, union, sleeves, float(cash)), trades, extra)
        total = acc if total is None else merge_accumulators(total, acc)
    return _portfolio_table(lo, hi, param_sets, total, union)


_ARRAYS_MAGIC = b"ADMFARR1"


def _arrays_parts(arrays: Mapping[str, np.ndarray]) -> list[Any]:
    """Named arrays as buffers to write in order, not copied: magic, header length, JSON header, raw bytes.

    A task's portfolio accumulators are a few MB; ``np.savez`` spent ~9 ms per task
    zipping and checksumming them, this format nothing beyond the write.
    """
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    header = json.dumps({name: [a.dtype.str, list(a.shape)] for name, a in arrays.items()}).encode()
    return [_ARRAYS_MAGIC, len(header).to_bytes(8, "little"), header,
            *(memoryview(a).cast("B") for a in arrays.values() if a.size)]


def _arrays_read(raw: bytes, where: str) -> dict[str, np.ndarray]:
    """The arrays of :func:`_arrays_parts`' file ``raw``; a StorageError naming ``where`` if damaged.

    Writable (views of one copy of ``raw``): numba compiles and caches a kernel apart for
    read-only arrays, which each worker would then load on its first reduce.
    """
    raw = bytearray(raw)
    try:
        if raw[:8] != _ARRAYS_MAGIC:
            raise ValueError("not an accumulator file")
        size = int.from_bytes(raw[8:16], "little")
        offset = 16 + size
        out = {}
        for name, (dtype, shape) in json.loads(raw[16:offset]).items():
            dt = np.dtype(dtype)
            count = int(np.prod(shape, dtype=np.int64))
            out[name] = np.frombuffer(raw, dt, count, offset).reshape(shape)
            offset += count * dt.itemsize
        if offset != len(raw):
            raise ValueError(f"{len(raw) - offset} bytes too many")
        return out
    except (ValueError, TypeError, KeyError) as exc:
        raise StorageError(f"damaged portfolio accumulators ({exc})", file=where,
                           hint="rerun with --force to recompute the run") from None


def _portfolio_table(lo: int, hi: int, param_sets: ParamSets, acc: tuple, union: np.ndarray,
                     ppy: float | None = None) -> pa.Table:
    """The PORTFOLIO rows of sets [lo, hi) from their final accumulators on the union timeline."""
    from .kernels.portfolio import portfolio_stats
    from .kernels.stats import periods_per_year

    if ppy is None:
        ppy = periods_per_year(union) if len(union) > 1 else 252.0
    rows = portfolio_stats(acc[0], acc[1], acc[2], ppy)
    sets = [dict(p) for p in param_sets]
    params = {name: [p.get(name) for p in sets] for name in dict.fromkeys(k for p in sets for k in p)}
    return _stats_table(np.arange(lo, hi, dtype=np.int64), pa.array([PORTFOLIO] * len(sets), pa.string()),
                        params, rows)


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class SweepResult:
    """A finished sweep: its id, where it lives, the table and the run summary."""

    run_id: str
    url: str
    table: pd.DataFrame
    summary: dict[str, Any]
    config: SweepConfig

    @property
    def portfolio(self) -> pd.DataFrame:
        """One equal-weight portfolio row per parameter set (``symbol == "PORTFOLIO"``)."""
        return self.table[self.table["symbol"] == PORTFOLIO].reset_index(drop=True)

    @property
    def per_symbol(self) -> pd.DataFrame:
        """One row per (parameter set, symbol)."""
        return self.table[self.table["symbol"] != PORTFOLIO].reset_index(drop=True)

    def top(self, n: int | None = None, metric: str | None = None, per_symbol: bool = False) -> pd.DataFrame:
        """The best parameter sets by ``metric`` of their portfolio row (or of single symbols).

        Highest first; for ``max_drawdown`` (negative) that is the shallowest.
        """
        metric = metric or self.config.metric
        n = self.config.top if n is None else n
        rows = self.per_symbol if per_symbol else self.portfolio
        return rows.sort_values(metric, ascending=False, na_position="last", kind="stable").head(n)

    def lines(self) -> list[str]:
        s = self.summary
        out = [f"run {self.run_id} at {self.url}: {s['status']}",
               f"{s['backtests']:,} backtests ({s['param_sets']:,} parameter sets x {s['symbols']} symbols), "
               f"{s['bar_evaluations']:,} bar-evaluations"]
        if s.get("wall_seconds"):
            out.append(f"wall {s['wall_seconds']:.1f}s, {s['bar_evals_per_s']:,.0f} bar-evals/s, "
                       f"{s['tasks']} tasks ({s['tasks_resumed']} resumed), "
                       f"peak worker memory {s['peak_worker_memory_mb']:,.0f} MB")
        if s.get("indicators"):
            out.append(s["indicators"])
        return out


def _layout(n_sets: int, symbols: list[str], bars_per_symbol: dict[str, int], seconds_per_bar: float,
            batch_seconds: float, threads: int, timeline_len: int, load_seconds: float = 0.0
            ) -> list[tuple[tuple[str, ...], int, int]]:
    """Cut the sweep into (symbols, lo, hi) containers of about the target work each.

    Every container uses the same parameter-set ranges, so the portfolio partials of
    one range (one per symbol group) merge directly. Two shapes are candidates, and
    the one with the smaller estimated overhead (:func:`_overhead`) wins:

    * *narrow*: ranges as long as the target work of the longest symbol allows, the
      symbols of a range then grouped up to the target work. Few ranges, so each
      symbol's input is loaded by one task; many groups, so many partial portfolio
      accumulators (sets x timeline each). Best for few parameter sets.
    * *wide*: the fewest symbol groups such that one set over a group fits the
      target, and ranges cut to the target. One accumulator per range and group,
      but every range needs every symbol's input (shared between tasks). Best for
      many parameter sets, where the narrow shape writes gigabytes of accumulators.

    A range's accumulators fit ``_ACC_BYTES`` in both. The last ranges are then
    halved (:func:`_halve_tail`).
    """
    total = seconds_per_bar * n_sets * sum(bars_per_symbol.values())
    # Enough tasks to keep every thread busy, but none under _MIN_TASK_SECONDS unless
    # batch_seconds itself asks for less (tests do, to get many tasks from little work).
    target = min(batch_seconds, max(_MIN_TASK_SECONDS, total / (4 * max(threads, 1))))
    max_step = max(1, _ACC_BYTES // (8 * max(timeline_len, 1)))
    shapes = [_narrow(n_sets, symbols, bars_per_symbol, seconds_per_bar, target, max_step),
              _wide(n_sets, symbols, bars_per_symbol, seconds_per_bar, target, max_step)]
    best = min(shapes, key=lambda parts: _overhead(parts, len(symbols), timeline_len, load_seconds))
    return _halve_tail(best, threads)


def _halve_tail(parts: list[tuple[tuple[str, ...], int, int]], threads: int) -> list[tuple[tuple[str, ...], int, int]]:
    """Halve the last ``2 x threads`` set ranges, so that the sweep ends in small tasks.

    Tasks run about in submission order; when the last ones are as big as the rest,
    one worker can sit idle for most of a task's time while another finishes. Only
    when the sweep has at least ``8 x threads`` ranges: a short sweep is all tail.
    """
    ranges = sorted({(lo, hi) for _, lo, hi in parts})
    if len(ranges) < 8 * max(threads, 1):
        return parts
    tail = {r for r in ranges[-2 * max(threads, 1):] if r[1] - r[0] >= 2}
    out: list[tuple[tuple[str, ...], int, int]] = []
    for group, lo, hi in parts:
        if (lo, hi) in tail:
            mid = (lo + hi) // 2
            out += [(group, lo, mid), (group, mid, hi)]
        else:
            out.append((group, lo, hi))
    return out if len(out) <= MAX_TASKS else parts


def _narrow(n_sets: int, symbols: list[str], bars_per_symbol: dict[str, int], spb: float, target: float,
            max_step: int) -> list[tuple[tuple[str, ...], int, int]]:
    longest = max(bars_per_symbol.values(), default=1)
    while True:
        step = min(max(1, int(target / max(spb * longest, 1e-12))), n_sets, max_step)
        parts: list[tuple[tuple[str, ...], int, int]] = []
        for lo in range(0, n_sets, step):
            hi = min(lo + step, n_sets)
            group: list[str] = []
            work = 0.0
            for s in symbols:
                group.append(s)
                work += spb * bars_per_symbol[s] * (hi - lo)
                if work >= target:
                    parts.append((tuple(group), lo, hi))
                    group, work = [], 0.0
            if group:
                parts.append((tuple(group), lo, hi))
        if len(parts) <= MAX_TASKS:
            return parts
        target *= 2 * len(parts) / MAX_TASKS


def _wide(n_sets: int, symbols: list[str], bars_per_symbol: dict[str, int], spb: float, target: float,
          max_step: int) -> list[tuple[tuple[str, ...], int, int]]:
    while True:
        groups: list[tuple[str, ...]] = []
        group: list[str] = []
        work = 0.0
        for s in symbols:  # the fewest groups in which one parameter set fits the target
            if group and work + spb * bars_per_symbol[s] > target:
                groups.append(tuple(group))
                group, work = [], 0.0
            group.append(s)
            work += spb * bars_per_symbol[s]
        if group:
            groups.append(tuple(group))
        heaviest = max(sum(bars_per_symbol[s] for s in g) for g in groups)
        step = min(max(1, int(target / max(spb * heaviest, 1e-12))), n_sets, max_step)
        parts = [(g, lo, min(lo + step, n_sets)) for lo in range(0, n_sets, step) for g in groups]
        if len(parts) <= MAX_TASKS:
            return parts
        target *= 2 * len(parts) / MAX_TASKS


_ACC_SECONDS_PER_BYTE = 8e-9  # write + read back + rebase + merge of an npz accumulator (measured: 60 MB ~0.5 s)
_TASK_SECONDS = 0.005  # scheduling, the rows table and the commit of one task


def _overhead(parts: list[tuple[tuple[str, ...], int, int]], n_symbols: int, timeline_len: int,
              load_seconds: float) -> float:
    """Estimated seconds a layout spends beside the kernel: accumulators, input loads, tasks.

    An input that several tasks need is shared (a task of its own, then moved between
    workers): counted as two loads.
    """
    acc_bytes = sum((hi - lo) * timeline_len * 8 for _, lo, hi in parts)
    ranges = len({(lo, hi) for _, lo, hi in parts})
    loads = n_symbols * load_seconds * (2 if ranges > 1 else 1)
    return acc_bytes * _ACC_SECONDS_PER_BYTE + loads + len(parts) * _TASK_SECONDS


_PROBE_SETS = 64
_PROBE_BAR_EVALS = 3_000_000  # per timed probe run: ~25 ms


def _probe(config: Any, data: Any, sample: list[dict]) -> float:
    """Seconds per bar-evaluation of the containers' kernel work, measured here on one symbol's input.

    ``data`` holds what a container gets (for a sweep, the sample's indicators: they are
    built once per symbol by the hub, not per set). Only the kernel call is timed, on
    accumulators allocated and touched beforehand (containers reuse theirs), best of
    two: timing the indicators and fresh accumulators too made the estimate 2-3x the
    containers' real cost, and their tasks a third of ``batch_seconds``.
    """
    from .kernels.portfolio import accumulators_init

    n = len(data.bars)
    if n < 2 or not sample:
        return 1e-8
    pos = np.arange(n, dtype=np.int64)

    def run(param_sets, acc):  # the containers' exact path, so the kernels compiled here are the ones workers load
        config.stats(data, config.prepare(param_sets), (pos, acc))

    run(sample[:1], accumulators_init(1, n))  # compile, or load from numba's cache
    sample = sample[:max(8, -(-_PROBE_BAR_EVALS // n))]  # enough work to time, no more
    acc = accumulators_init(len(sample), n)
    acc[0].fill(0.0)  # np.zeros hands out untouched pages: fault them in now, not in the timed runs
    best = math.inf
    for _ in range(2):
        t0 = time.perf_counter()
        run(sample, acc)
        best = min(best, time.perf_counter() - t0)
    return max(best / (len(sample) * n), 1e-10)


def _estimate(n_sets: int, bars_per_symbol: dict[str, int], n_parts: int) -> dict[str, Any]:
    n_sym = len(bars_per_symbol)
    max_bars = max(bars_per_symbol.values(), default=0)
    return {"param_sets": n_sets, "symbols": n_sym, "backtests": n_sets * n_sym,
            "bar_evaluations": n_sets * sum(bars_per_symbol.values()), "tasks": n_parts,
            # bars + ~30 indicator arrays per symbol in memory, plus the rows a task returns
            "memory_per_task_mb": round(max_bars * 8 * 40 / 1e6 + n_sets * 8 * (len(STAT_NAMES) + 8) / 1e6, 1),
            "output_mb": round(n_sets * n_sym * 8 * (len(STAT_NAMES) + 8) / 1e6, 1)}


class ParamSets:
    """Parameter sets as a task argument: hashable items, and opaque to Dask.

    Dask walks tuples, lists, dicts and dataclasses in task arguments looking for
    keys; thousands of parameter sets in plain tuples cost the client seconds of
    that per sweep. Iterating yields ``((name, value), ...)`` per set.
    """

    __slots__ = ("items",)

    def __init__(self, sets: list[dict[str, Any]]) -> None:
        self.items = tuple(tuple(sorted(p.items())) for p in sets)

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParamSets) and other.items == self.items

    def __hash__(self) -> int:
        return hash(self.items)

    def __getstate__(self):
        return self.items

    def __setstate__(self, state) -> None:
        self.items = state


def _frozen(sets: list[dict[str, Any]]) -> ParamSets:
    return ParamSets(sets)


def _final_table(storage: Storage, n_parts: int, held: Mapping[int, pa.Table],
                 portfolio: list[pa.Table]) -> pa.Table:
    """Every part's rows (those this session's tasks returned, the committed others read back) and the
    portfolio rows, ordered by set id, then symbol, each set's PORTFOLIO row last."""
    tables = []
    for j in range(n_parts):
        if j in held:
            tables.append(held[j])
        else:
            tables.append(pq.read_table(io.BytesIO(storage.read_bytes(f"results/part-{j:06d}.parquet"))))
    table = pa.concat_tables([*tables, *portfolio], promote_options="default")
    is_portfolio = pc.equal(table.column("symbol"), PORTFOLIO)
    order = pc.sort_indices(table.append_column("_portfolio", is_portfolio),
                            sort_keys=[("set_id", "ascending"), ("_portfolio", "ascending"), ("symbol", "ascending")])
    return table.take(order)


class SweepFeed:
    """Where a sweep's containers get each symbol's input: the indicator hub.

    A *feed* is what :func:`run_grid` asks for per-symbol inputs: ``source(symbol,
    consumers)`` (what a task receives: a future or a request its config's ``load``
    resolves), ``settle(source, counters)`` (counters a task brought back),
    ``probe_input(symbol, sample)`` (one symbol's input for the parameter sets of
    ``sample``, built here for the probe),
    ``summary()`` and ``release()``.
    """

    def __init__(self, config: SweepConfig, sets: list[dict[str, Any]], bars: BarStore, root: StorageRef,
                 client: Any) -> None:
        from .cache import IndicatorHub
        from .indicators import IndicatorPlan
        from .strategies import get_strategy

        s = get_strategy(config.strategy)
        self.config = config
        self.plan = IndicatorPlan.from_requests(spec for p in sets for spec in s.specs(p))
        self.hub = IndicatorHub(bars, root.child("cache"), client=client)
        self.bars = bars

    def source(self, symbol: str, consumers: int) -> Any:
        return self.hub.source(symbol, self.plan, self.config.start, self.config.end, consumers=consumers)

    def settle(self, source: Any, counters: Any) -> None:
        self.hub.settle(source, counters)

    def probe_input(self, symbol: str, sample: list[dict[str, Any]]) -> Any:
        from .cache import IndicatorSet

        bars = self.bars.read(symbol, start=self.config.start, end=self.config.end)
        specs = self.config.prepare(sample).plan.specs  # the sample's indicators, computed here, not cached
        return IndicatorSet(symbol, "probe", bars, {spec.token: spec.compute(bars.columns) for spec in specs})

    def summary(self) -> dict[str, Any]:
        return {"indicators": self.hub.counters.line(), "hub": self.hub.counters.as_dict()}

    def release(self) -> None:
        self.hub.release()


def run_sweep(config: SweepConfig, bars: BarStore, root: StorageRef, client: Any, *, force: bool = False,
              yes: bool = False, echo: Callable[[str], None] = print, progress: bool = True) -> SweepResult:
    """Run (or resume, or just report) a sweep; return its result table and summary.

    ``client`` is a distributed Client, or a function that connects one (called only
    if there is work to do).

    Raises ConfigError before launching when the sweep has more than
    ``config.max_backtests`` backtests and ``yes`` is false.
    """
    sets, dropped = expand_params(config.strategy, config.params, config.sample, config.seed)
    symbols = list(config.symbols) if config.symbols else bars.symbols()
    for s in symbols:
        bars.entry(s)
    identity = {"sweep": config.identity(), "data": bars.fingerprint, "symbols": symbols, "version": __version__}
    return run_grid(config, sets, symbols, bars, root, client, identity=identity, kind="sweep",
                    feed=lambda c: SweepFeed(config, sets, bars, root, c),
                    note=f" ({dropped} grid points broke the rules)" if dropped else "",
                    force=force, yes=yes, echo=echo, progress=progress)


def run_grid(config: Any, sets: list[dict[str, Any]], symbols: list[str], bars: BarStore, root: StorageRef,
             client: Any, *, identity: Mapping[str, Any], kind: str, feed: Callable[[Any], Any], note: str = "",
             force: bool = False, yes: bool = False, echo: Callable[[str], None] = print,
             progress: bool = True) -> SweepResult:
    """Run (or resume, or report) sets x symbols as container tasks: the engine of sweeps and replays.

    ``config`` has the container hooks (``prepare``, ``stats``, ``load``, ``costs``,
    ``cash``, ``label``, ``param_names``) and the scheduling settings (``batch_seconds``,
    ``retries``, ``max_backtests``, ``metric``, ``top``, ``start``, ``end``).
    ``identity`` is what the run id is the token of; ``feed(client)`` makes the
    per-symbol input feed (see :class:`SweepFeed`), only when there is work to do.
    ``client`` is a distributed Client or a function that connects one: a finished
    run is reported without it.
    """
    from .cluster import ensure_client, run_tasks

    run_id = token(identity)[:16]
    run_ref = root.child("runs", run_id)
    storage = run_ref.open()
    if force and storage.exists("run.json"):
        echo(f"--force: discarding run {run_id}")
        storage.fs.rm(storage.path(), recursive=True)
    run = storage.read_json("run.json") if storage.exists("run.json") else None
    if run is not None and run.get("status") == "complete":
        table = pd.read_parquet(io.BytesIO(storage.read_bytes("results.parquet")))
        return SweepResult(run_id, run_ref.url, table, {**run["summary"], "status": "complete (already done)"},
                           config)

    client = ensure_client(client)
    source = feed(client)
    try:
        bars_per_symbol = {s: _bars_in_range(bars, s, config.start, config.end) for s in symbols}
        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info(n_workers=-1)["workers"].values())
        if run is None:
            estimate = _estimate(len(sets), bars_per_symbol, 0)
            if estimate["backtests"] > config.max_backtests and not yes:
                raise ConfigError(f"the {kind} has {estimate['backtests']:,} backtests, over max_backtests="
                                  f"{config.max_backtests:,}", key="max_backtests",
                                  hint="narrow the grid, use sample:, or pass --yes to run it anyway")
            longest = max(symbols, key=bars_per_symbol.__getitem__)
            sample = sets[:_PROBE_SETS]
            t_load = time.perf_counter()
            probe_input = source.probe_input(longest, sample)
            t_load = time.perf_counter() - t_load
            spb = _probe(config, probe_input, sample)
            layout = _layout(len(sets), symbols, bars_per_symbol, spb, config.batch_seconds, threads,
                             max(bars_per_symbol.values()), t_load)
            run = {"run_id": run_id, "kind": kind, "status": "running", "version": __version__,
                   "data_fingerprint": bars.fingerprint, "bars": bars.url, "config": config.identity(),
                   "symbols": symbols, "param_sets": len(sets), "seconds_per_bar_probe": spb,
                   "layout": [[list(g), lo, hi] for g, lo, hi in layout]}
            storage.write_json(run, "run.json")
        layout = [(tuple(g), lo, hi) for g, lo, hi in run["layout"]]
        estimate = _estimate(len(sets), bars_per_symbol, len(layout))
        echo(f"{kind} {run_id}: {config.label}, {estimate['param_sets']:,} parameter sets{note} x "
             f"{estimate['symbols']} symbols = {estimate['backtests']:,} backtests, "
             f"{estimate['bar_evaluations']:,} bar-evaluations; {estimate['tasks']} tasks, "
             f"~{estimate['memory_per_task_mb']} MB per task, ~{estimate['output_mb']} MB of results")

        done = set()
        storage.fs.invalidate_cache(storage.path("done"))  # s3fs caches listings; markers are what we trust
        if storage.fs.exists(storage.path("done")):
            done = {int(p.rsplit("part-", 1)[1].split(".")[0])
                    for p in storage.fs.ls(storage.path("done"), detail=False) if p.endswith(".json")}
        todo = [j for j in range(len(layout)) if j not in done]
        if done:
            echo(f"resuming: {len(done)} of {len(layout)} tasks already committed")

        t0 = time.perf_counter()
        ranges: dict[tuple[int, int], list[int]] = {}
        for j, (_, lo, hi) in enumerate(layout):
            ranges.setdefault((lo, hi), []).append(j)
        consumers = Counter(sym for j in todo for sym in layout[j][0])
        sources: dict[str, Any] = {}
        tasks, deps = [], []
        for j in todo:
            group, lo, hi = layout[j]
            for sym in group:
                if sym not in sources:
                    sources[sym] = source.source(sym, consumers[sym])
            tasks.append(ContainerTask(j, group, lo, hi, _frozen(sets[lo:hi]), config, run_ref, run_id,
                                       whole_range=len(ranges[(lo, hi)]) == 1))
            deps.append([sources[sym] for sym in group])
        tables: dict[int, pa.Table] = {}
        if tasks:
            for out in run_tasks(client, run_container, tasks, extra_args=deps, retries=config.retries,
                                 progress=progress, label=kind, window=2 * max(threads, 1) + 2,
                                 keys=[f"{kind}-{run_id}-part-{t.part:06d}" for t in tasks]):
                tables[out["part"]] = out["table"]
                for sym, counters in out["counters"].items():
                    source.settle(sources[sym], counters)
        split = {r: parts for r, parts in ranges.items() if len(parts) > 1}  # the others wrote their rows
        portfolio = run_tasks(client, reduce_portfolio, [run_ref] * len(split), label="portfolio", progress=False,
                              extra_args=[(parts, lo, hi, _frozen(sets[lo:hi]), config.cash)
                                          for (lo, hi), parts in split.items()],
                              keys=[f"portfolio-{run_id}-{lo}" for lo, _ in split])
        wall = time.perf_counter() - t0
        arrow = _final_table(storage, len(layout), tables, portfolio)
        buf = io.BytesIO()
        pq.write_table(arrow, buf)
        storage.write_bytes(buf.getvalue(), "results.parquet")
        table = arrow.to_pandas()
        peak = max(client.run(_peak_rss).values(), default=0)
        summary = {**estimate, "status": "complete", "wall_seconds": round(wall, 3),
                   "bar_evals_per_s": round(estimate["bar_evaluations"] * len(todo) / max(len(layout), 1) / wall, 1)
                   if wall > 0 else 0.0,
                   "tasks_resumed": len(done), "peak_worker_memory_mb": round(peak / 1e6, 1)}
        if todo:
            summary.update(source.summary())
        storage.write_json({**run, "status": "complete", "summary": summary}, "run.json")
    finally:
        source.release()
    return SweepResult(run_id, run_ref.url, table, summary, config)


def _bars_in_range(store: BarStore, symbol: str, start: Any, end: Any) -> int:
    if start is None and end is None:
        return int(store.entry(symbol)["rows"])
    from .bars.store import _MAX_NS, _MIN_NS, to_ns

    lo, hi = to_ns(start, _MIN_NS), to_ns(end, _MAX_NS)
    total = 0
    for f in store.entry(symbol)["files"]:
        if f["last_ns"] < lo or f["first_ns"] > hi:
            continue
        if lo <= f["first_ns"] and f["last_ns"] <= hi:
            total += f["rows"]
        else:  # a partial file: estimate by its time share
            span = max(f["last_ns"] - f["first_ns"], 1)
            total += int(f["rows"] * (min(hi, f["last_ns"]) - max(lo, f["first_ns"])) / span) + 1
    return total
