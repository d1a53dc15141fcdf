"""Signal replay: optimise ensemble weights over a stored signal set without recomputing indicators.

Phase 2 of signal replay (:mod:`admf_dask.signals` is phase 1). A replay loads
the K stored target streams of each symbol and evaluates a grid, a seeded random
sample or an explicit list of weight vectors ``w`` (one weight per member):

* ``vote``: position = sign(w . s) when |w . s| >= ``threshold``, else flat;
* ``fraction``: target = w . s clipped to [-1, 1], a fraction of equity.

The combined target (then clipped to ``direction``) is backtested with the same
execution model and costs as every backtest (by default the costs the set was
made under), in :func:`admf_dask.kernels.replay.ensemble_batch_with_equity`. A
replay runs on :func:`admf_dask.sweep.run_grid`, the sweep engine: container tasks
of weight vectors x symbols, the same checkpoints under ``runs/<run-id>/``, resume,
progress, one row per (weight vector, symbol) and one equal-weight portfolio row
per weight vector. Weight columns are ``w0 .. w<K-1>`` in member order.

No indicator is computed: tasks read bars and signal parts only. The run summary
says so with a count, not a promise: the number of indicator kernel runs on the
client and every worker (:func:`admf_dask.indicators.computations`) during the
replay.

Replaying a one-hot weight vector reproduces the member's own backtest exactly.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import __version__
from .bars import BarStore, Bars
from .cache import HubCounters, data_key
from .config import token
from .errors import ConfigError, DataError, did_you_mean
from .kernels.names import STAT_NAMES
from .signals import COST_KEYS, SignalSet
from .storage import StorageRef
from .sweep import SweepResult, check_run_settings, run_grid

__all__ = ["ReplayConfig", "ReplayJob", "run_replay", "RULES"]

RULES = {"vote": 0, "fraction": 1}


@dataclass(frozen=True)
class ReplayConfig:
    """What to replay. Validated here; bound to its signal set by :meth:`bind`.

    ``signals`` is a set id (under ``<storage>/signals``) or a set's URL. Weight
    vectors come from exactly one of: ``weights`` (an explicit list of K-long
    lists), ``grid`` (values each member's weight takes: the product over members,
    minus the all-zero vector; with ``sample: N`` a seeded sample of N of them) or
    ``sample`` alone (N vectors drawn uniformly and scaled to sum to 1). ``rule`` is
    ``vote`` (with ``threshold``) or ``fraction``. Cost settings left unset take the
    set's. ``symbols`` is a subset of the set's (default: all of them).
    """

    signals: str
    rule: str = "vote"
    threshold: float = 0.5
    weights: list[list[float]] | None = None
    grid: list[float] | None = None
    sample: int | None = None
    seed: int = 0
    symbols: list[str] | None = None
    direction: str = "long_short"
    cash: float | None = None
    commission: float | None = None
    slippage_bps: float | None = None
    whole_units: bool | None = None
    stop_loss: float | None = None
    take_profit: float | None = None
    metric: str = "sharpe"
    top: int = 5
    batch_seconds: float = 0.5
    retries: int = 2
    max_backtests: int = 10_000_000
    memory_budget: int | str | None = None

    def __post_init__(self) -> None:
        from .strategies import direction_code

        if self.rule not in RULES:
            raise ConfigError(f"unknown rule {self.rule!r}", key="rule",
                              hint=did_you_mean(self.rule, RULES) or "rule is vote or fraction")
        if not (isinstance(self.threshold, (int, float)) and 0 < self.threshold <= 1e6):
            raise ConfigError(f"threshold must be a number > 0, got {self.threshold!r}", key="threshold")
        direction_code(self.direction)
        check_run_settings(self)
        if self.weights is None and self.grid is None and self.sample is None:
            raise ConfigError("give the weight vectors: weights (a list), grid (values per member) or sample (N)",
                              key="weights")
        if self.weights is not None and (self.grid is not None or self.sample is not None):
            raise ConfigError("weights is an explicit list; it takes no grid or sample", key="weights")
        if self.sample is not None and self.sample < 1:
            raise ConfigError("sample must be >= 1", key="sample")
        if self.weights is not None:
            if not isinstance(self.weights, list) or not self.weights:
                raise ConfigError("weights must be a non-empty list of weight vectors", key="weights")
            for i, w in enumerate(self.weights):
                if not isinstance(w, (list, tuple)) or not all(_number(v) for v in w):
                    raise ConfigError(f"weight vector {i} must be a list of numbers, got {w!r}", key=f"weights[{i}]")
        if self.grid is not None and (not isinstance(self.grid, list) or not self.grid
                                      or not all(_number(v) for v in self.grid)):
            raise ConfigError(f"grid must be a non-empty list of numbers, got {self.grid!r}", key="grid")

    def bind(self, signal_set: SignalSet) -> ReplayJob:
        """The replay of this set: weight lengths, symbols and costs checked against it."""
        from .backtest import _costs
        from .strategies import direction_code

        k = len(signal_set.members)
        labels = [m.label for m in signal_set.members]
        for i, w in enumerate(self.weights or []):
            if len(w) != k:
                raise ConfigError(f"weight vector {i} has {len(w)} weight(s); signal set {signal_set.set_id} has "
                                  f"{k} member(s): {', '.join(labels)}", key=f"weights[{i}]",
                                  hint=f"give {k} weights per vector, in member order")
        symbols = list(self.symbols) if self.symbols else signal_set.symbols
        for s in symbols:
            if s not in signal_set.manifest["parts"]:
                raise ConfigError(f"symbol {s} is not in signal set {signal_set.set_id}", key="symbols",
                                  hint=did_you_mean(s, signal_set.symbols) or
                                  f"the set has {len(signal_set.symbols)} symbols: {', '.join(signal_set.symbols[:8])}")
        costs = {key: getattr(self, key) if getattr(self, key) is not None else signal_set.costs.get(key)
                 for key in COST_KEYS}
        _costs(self.direction, **costs)
        return ReplayJob(signal_set.ref, signal_set.set_id, tuple(labels), tuple(symbols),
                         signal_set.manifest.get("start"), signal_set.manifest.get("end"), RULES[self.rule],
                         float(self.threshold), direction_code(self.direction), costs, self)

    def weight_sets(self, k: int) -> list[dict[str, float]]:
        """The weight vectors, each as ``{"w0": ..., "w<k-1>": ...}``."""
        if self.weights is not None:
            vectors = [list(map(float, w)) for w in self.weights]
        elif self.grid is not None:
            values = sorted(set(float(v) for v in self.grid))
            vectors = [list(v) for v in itertools.product(values, repeat=k) if any(x != 0 for x in v)]
            if not vectors:
                raise ConfigError("the grid has only the all-zero weight vector", key="grid")
            if self.sample is not None and self.sample < len(vectors):
                pick = np.sort(np.random.default_rng(self.seed).choice(len(vectors), self.sample, replace=False))
                vectors = [vectors[i] for i in pick]
        else:
            raw = np.random.default_rng(self.seed).random((self.sample, k))
            vectors = (raw / raw.sum(axis=1, keepdims=True)).round(12).tolist()
        return [{f"w{j}": v for j, v in enumerate(vec)} for vec in vectors]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class WeightBatch:
    """A container's weight vectors: ``params`` (dicts) and ``weights`` float64 (m, K)."""

    params: tuple[dict[str, float], ...]
    weights: np.ndarray

    def columns(self) -> dict[str, list[float]]:
        return {name: [p[name] for p in self.params] for name in (self.params[0] if self.params else {})}


@dataclass
class ReplayInput:
    """One symbol's input to a replay container: its bars and the members' dense targets (int8, K x n)."""

    bars: Bars
    signals: np.ndarray
    counters: HubCounters = field(default_factory=HubCounters)
    data_key: str = ""  # the exact bars (cache.data_key), so workers can keep the timeline of a group


@dataclass(frozen=True)
class SignalSource:
    """A symbol's replay input, loaded in the task that uses it: bars from the store, targets from the set."""

    set_ref: StorageRef
    manifest: dict  # the set's manifest reduced to this symbol's part
    bars_ref: StorageRef
    fingerprint: str
    symbol: str
    start: Any
    end: Any

    def build(self) -> ReplayInput:
        store = BarStore.open(self.bars_ref, self.fingerprint)
        bars = store.read(self.symbol, start=self.start, end=self.end)
        return ReplayInput(bars, SignalSet(self.set_ref, self.manifest).load(self.symbol, bars),
                           data_key=data_key(store.symbol_fingerprint(self.symbol), bars))


@dataclass(frozen=True)
class ReplayJob:
    """A replay bound to its set: the container hooks :func:`run_grid` calls (see SweepConfig's)."""

    set_ref: StorageRef
    set_id: str
    labels: tuple[str, ...]
    symbols: tuple[str, ...]
    start: Any
    end: Any
    rule: int
    threshold: float
    direction: int
    costs: dict
    config: ReplayConfig

    # scheduling and printing settings, as a SweepConfig has them
    @property
    def metric(self) -> str:
        return self.config.metric

    @property
    def top(self) -> int:
        return self.config.top

    @property
    def batch_seconds(self) -> float:
        return self.config.batch_seconds

    @property
    def retries(self) -> int:
        return self.config.retries

    @property
    def max_backtests(self) -> int:
        return self.config.max_backtests

    @property
    def memory_budget(self) -> int | None:
        return self.config.memory_budget

    @property
    def cash(self) -> float:
        return self.costs["cash"]

    @property
    def label(self) -> str:
        return f"replay of signal set {self.set_id} ({len(self.labels)} members, {self.config.rule})"

    def param_names(self) -> list[str]:
        return [f"w{j}" for j in range(len(self.labels))]

    def identity(self) -> dict[str, Any]:
        return {"signals": self.set_id, "rule": self.config.rule, "threshold": self.threshold,
                "direction": self.config.direction, "costs": self.costs, "symbols": list(self.symbols),
                "weights": {"weights": self.config.weights, "grid": self.config.grid, "sample": self.config.sample,
                            "seed": self.config.seed}}

    def prepare(self, param_sets: list[dict[str, float]]) -> WeightBatch:
        names = self.param_names()
        weights = np.array([[p[n] for n in names] for p in param_sets], dtype=np.float64).reshape(-1, len(names))
        return WeightBatch(tuple(param_sets), weights)

    def load(self, source: SignalSource | ReplayInput) -> ReplayInput:
        return source.build() if isinstance(source, SignalSource) else source

    def resumable(self) -> bool:
        """Replays save the state their tasks reach: a replay over a grown signal set goes on from it."""
        return True

    def chain_identity(self, identity: dict[str, Any]) -> dict[str, Any]:
        """The identity across data versions: the signal set named by its configuration, not its id."""
        manifest = _opened(self.set_ref).manifest
        members = [{k: v for k, v in m.items() if k != "label"} for m in manifest["members"]]
        signals = token({"members": members, "costs": manifest["costs"], "symbols": manifest["symbols"],
                         "start": manifest["start"], "end": manifest["end"], "version": manifest["version"]})
        return {**identity, "replay": {**identity["replay"], "signals": signals}}

    def saved_inputs(self, data: ReplayInput, batch: WeightBatch) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
        """What a stream carries after the last bar: the members' signals there (see ``SweepConfig.saved_inputs``)."""
        last = np.asarray(data.signals[:, -1], dtype=np.float64)
        return {"prev": last}, last, 0

    def stats(self, data: ReplayInput, batch: WeightBatch, portfolio: Any,
              state: np.ndarray | None = None) -> np.ndarray:
        from .backtest import _costs, _f64, _ppy
        from .kernels.replay import ensemble_batch_with_equity

        costs = _costs("long_short", **self.costs)
        bars = data.bars
        o, h, lo, c = (_f64(bars.columns[k]) for k in ("open", "high", "low", "close"))
        pos, (eq, tr, ex) = portfolio
        if state is not None:  # the one-chunk case of ensemble_chunk, keeping the run states it reaches
            from .kernels.portfolio import fold_sleeves
            from .kernels.replay import ensemble_chunk
            from .kernels.state import close_ends, finalize_runs

            ensemble_chunk(data.signals, batch.weights, self.rule, self.threshold, self.direction, o, h, lo, c, 0,
                           0, state, costs.commission, costs.slippage_bps, costs.whole_units, costs.stop_loss,
                           costs.take_profit, pos, eq)
            rows = finalize_runs(state, *close_ends(c), float(_ppy(bars, True, None)))
            fold_sleeves(state, rows, tr, ex)
            return rows
        return ensemble_batch_with_equity(data.signals, batch.weights, self.rule, self.threshold, self.direction,
                                          o, h, lo, c, pos, _ppy(bars, True, None), costs.cash, costs.commission,
                                          costs.slippage_bps, costs.whole_units, costs.stop_loss,
                                          costs.take_profit, eq, tr, ex)


    # The streaming container's hooks (admf_dask.sweep.streaming): the members' signal rows chunk by chunk.
    def stream_input(self, batch: WeightBatch, symbol: str, store: BarStore, spec: Any) -> Any:
        from .backtest import StreamInput

        events = SignalEvents(_opened(self.set_ref), symbol)
        return StreamInput(0, len(self.labels), np.int8, events, lambda: HubCounters())

    def stats_chunk(self, piece: Any, batch: WeightBatch, state: np.ndarray, portfolio: Any) -> None:
        from .backtest import _costs, _f64
        from .kernels.replay import ensemble_chunk

        costs = _costs("long_short", **self.costs)
        o, h, lo, c = (_f64(piece.columns[k]) for k in ("open", "high", "low", "close"))
        pos, eq = portfolio
        ensemble_chunk(piece.payload, batch.weights, self.rule, self.threshold, self.direction, o, h, lo, c,
                       piece.h, piece.t0, state, costs.commission, costs.slippage_bps, costs.whole_units,
                       costs.stop_loss, costs.take_profit, pos, eq)


@functools.lru_cache(maxsize=4)
def _opened(ref: StorageRef) -> SignalSet:
    """A signal set's manifest, read once per process and set (tasks of one replay share it)."""
    return SignalSet.open(ref)


class SignalEvents:
    """Payload builder of a streamed replay: a symbol's stored change events as dense signal rows, chunk by chunk.

    The part is read once and checked against its checksum (events are sparse: a few per
    trade); each chunk's rows are the events that fall on its bars, starting from the
    values in force before it. Every event must land on a bar, and the symbol must have
    the set's number of bars, or the set does not belong to these bars (DataError).
    """

    def __init__(self, signal_set: SignalSet, symbol: str) -> None:
        self.set, self.symbol = signal_set, symbol
        self.entry = signal_set.manifest["parts"][symbol]
        table = signal_set.read_part(symbol)
        member = table.column("member").to_numpy().astype(np.int64)
        k = len(signal_set.manifest["members"])
        self.ptr = np.searchsorted(member, np.arange(k + 1)).astype(np.int64)
        self.stamps = table.column("timestamp").to_numpy().astype(np.int64)
        self.values = table.column("target").to_numpy().astype(np.int8)
        self.prev = np.zeros(k, dtype=np.int64)
        self.mapped = 0  # events placed on bars so far

    def save(self) -> dict[str, np.ndarray]:
        """The members' signals in force after the last chunk (what an incremental replay goes on from)."""
        return {"prev": self.prev.astype(np.float64)}

    def restore(self, states: dict[str, np.ndarray], last_ns: int) -> None:
        """Go on after bar time ``last_ns`` with the signals :meth:`save` kept; the events up to it are placed."""
        self.prev = np.asarray(states["prev"]).astype(np.int64)
        self.mapped = int(sum(np.searchsorted(self.stamps[self.ptr[k]:self.ptr[k + 1]], last_ns, "right")
                              for k in range(len(self.ptr) - 1)))

    def __call__(self, columns: dict[str, np.ndarray], hb: int, t0: int, out: np.ndarray) -> None:
        from .kernels.replay import dense_targets_chunk

        ts = columns["timestamp"][hb:]
        n = len(ts)
        bars, values, ptr = [], [], [0]
        for k in range(len(self.ptr) - 1):
            row = self.stamps[self.ptr[k]:self.ptr[k + 1]]
            a, b = np.searchsorted(row, ts[0], "left"), np.searchsorted(row, ts[-1], "right")
            pos = np.searchsorted(ts, row[a:b])
            if len(pos) and (pos.max() >= n or (ts[np.minimum(pos, n - 1)] != row[a:b]).any()):
                raise DataError(f"signal part {self.entry['file']} has events on timestamps that are not bars of "
                                f"{self.symbol}", symbol=self.symbol, file=self.set.ref.url,
                                hint="replay over the set's own date range and dataset")
            bars.append(t0 + pos)
            values.append(self.values[self.ptr[k] + a:self.ptr[k] + b])
            ptr.append(ptr[-1] + len(pos))
        self.mapped += ptr[-1]
        out[:] = dense_targets_chunk(np.array(ptr, dtype=np.int64), np.concatenate(bars).astype(np.int64),
                                     np.concatenate(values).astype(np.int8), t0, n, self.prev)
        if t0 + n == self.entry["bars"] and self.mapped != len(self.stamps):
            raise DataError(f"signal part {self.entry['file']} does not match the bars of {self.symbol}",
                            symbol=self.symbol, file=self.set.ref.url,
                            hint="replay over the set's own date range and dataset")
        if t0 + n > self.entry["bars"]:
            raise DataError(f"signal part {self.entry['file']} does not match the bars of {self.symbol} "
                            f"(more than the {self.entry['bars']} bars the set expects)", symbol=self.symbol,
                            file=self.set.ref.url, hint="replay over the set's own date range and dataset")


def _build(source: SignalSource) -> ReplayInput:
    return source.build()


def _indicator_runs() -> tuple[int, int]:
    from .indicators import computations

    return os.getpid(), computations()


def indicator_runs(client: Any) -> dict[int, int]:
    """Indicator kernel runs so far in every process of the cluster and this one, by process id."""
    counts = dict(client.run(_indicator_runs).values())
    pid, here = _indicator_runs()
    counts[pid] = here
    return counts


def _probe_input(bars_ref: StorageRef, fingerprint: str, start: Any, end: Any, k: int, symbol: str,
                 sample: list[dict[str, Any]], max_rows: int) -> ReplayInput:
    """The replay probe's input: a bounded slice of the symbol's bars and ``k`` made-up signal rows."""
    bars = BarStore.open(bars_ref, fingerprint).read_head(symbol, max_rows, start=start, end=end)
    signals = np.zeros((k, len(bars)), dtype=np.int8)  # the kernel's speed does not depend on them much
    signals[:, len(bars) // 3:] = 1
    return ReplayInput(bars, signals)


class ReplayFeed:
    """Per-symbol inputs of a replay (see :class:`~admf_dask.sweep.SweepFeed`): bars plus stored signals."""

    def __init__(self, job: ReplayJob, signal_set: SignalSet, bars: BarStore, client: Any) -> None:
        self.job = job
        self.signal_set = signal_set
        self.bars = bars
        self.client = client
        self.before = indicator_runs(client)

    def source(self, symbol: str, consumers: int) -> Any:
        """A :class:`SignalSource` loaded inside its one task, or, when several tasks need it, a future of its
        :class:`ReplayInput` (loaded once, kept in worker memory under a deterministic key)."""
        m = self.signal_set.manifest
        reduced = {**m, "parts": {symbol: m["parts"][symbol]}, "symbols": [symbol]}
        src = SignalSource(self.signal_set.ref, reduced, self.bars.ref, self.bars.fingerprint, symbol,
                           self.job.start, self.job.end)
        if consumers <= 1:
            return src
        # stage "bars" on the dashboard (a symbol's bars and signals loaded): the stage, then a hex token
        key = f"bars-{token([self.job.set_id, src.start, src.end, self.bars.fingerprint])[:16]}-replay-{symbol}"
        return self.client.submit(_build, src, key=key, pure=False)

    def settle(self, source: Any, counters: Any) -> None:
        pass

    def done(self, symbol: str) -> None:
        pass  # the run dropping its future is all: nothing else holds a symbol's input

    def probe_input(self, symbol: str, sample: list[dict[str, Any]], max_rows: int) -> ReplayInput:
        return self.probe_reader()(symbol, sample, max_rows)

    def probe_reader(self) -> Any:
        """:meth:`probe_input` as a picklable function (the probe runs on a worker)."""
        import functools

        return functools.partial(_probe_input, self.bars.ref, self.bars.fingerprint, self.job.start, self.job.end,
                                 len(self.job.labels))

    def shape(self, sets: list[dict[str, Any]]) -> tuple[float, int]:
        return float(len(self.job.labels)), 0  # int8 signal rows; no indicator, no halo

    def stream_spec(self, rows: int, persist: bool) -> Any:
        from .sweep.streaming import StreamSpec

        return StreamSpec(self.bars.ref, self.bars.fingerprint, rows, None, False)

    def summary(self) -> dict[str, Any]:
        after = indicator_runs(self.client)
        counters = HubCounters(computed=sum(n - self.before.get(pid, 0) for pid, n in after.items()))
        return {"indicators": f"{counters.line()} during the replay (stored signals replayed)",
                "hub": counters.as_dict(), "indicators_computed": counters.computed}

    def release(self) -> None:
        pass


def open_signal_set(signals: str, root: StorageRef) -> SignalSet:
    """A set by id (under ``<root>/signals``) or by URL/path."""
    ref = StorageRef(signals, root.storage_options) if ("/" in signals or os.sep in signals) else \
        root.child("signals", signals)
    return SignalSet.open(ref)


def plan_replay(config: ReplayConfig, root: StorageRef, bars: BarStore | None = None
                ) -> tuple[SignalSet, BarStore, ReplayJob]:
    """Open and check everything a replay needs, before any cluster or write: (set, bars, job).

    DataError for a missing or corrupt manifest or bars of another dataset;
    ConfigError for weights of the wrong length or symbols not in the set.
    """
    signal_set = open_signal_set(config.signals, root)
    if bars is None:
        from .preflight import stored_bars

        bars = stored_bars(signal_set.manifest["bars"], root.options, what=f"signal set {signal_set.set_id}",
                           hint="name the dataset with --store (or the step's dataset:), or run from the "
                                "directory the set was made in")
    signal_set.check_data(bars)
    return signal_set, bars, config.bind(signal_set)


def run_replay(config: ReplayConfig, root: StorageRef, client: Any, bars: BarStore | None = None, *,
               force: bool = False, yes: bool = False, echo: Callable[[str], None] = print,
               progress: bool = True, wait: bool = False, performance_report: str | bool | None = None) -> SweepResult:
    """Phase 2: evaluate the weight vectors over the stored signals; the result table and summary.

    ``bars`` defaults to the dataset the set was made from (its recorded URL, with
    ``root``'s storage options). DataError if the bars are another dataset.
    """
    signal_set, bars, job = plan_replay(config, root, bars)
    sets = config.weight_sets(len(job.labels))
    identity = {"replay": job.identity(), "data": bars.fingerprint, "version": __version__}
    return run_grid(job, sets, list(job.symbols), bars, root, client, identity=identity, kind="replay",
                    feed=lambda c: ReplayFeed(job, signal_set, bars, c), force=force, yes=yes, echo=echo,
                    progress=progress, wait=wait, performance_report=performance_report)


def best_weights(result: SweepResult) -> str:
    """The best weight vector by the replay's metric, one line per member."""
    job = result.config
    top = result.top(1)
    if top.empty:
        return "no weight vector has a finite metric"
    row = top.iloc[0]
    lines = [f"best weights by {job.metric} ({row[job.metric]:.4g}, set {int(row['set_id'])}):"]
    lines += [f"  w{j} = {row[f'w{j}']:.4g}  {label}" for j, label in enumerate(job.labels)]
    return "\n".join(lines)


def recompute_ensemble(bars_ref: StorageRef, fingerprint: str, symbols: list[str], start: Any, end: Any,
                       members: list[Any], weights: np.ndarray, rule: int, threshold: float, direction: int,
                       costs: dict) -> np.ndarray:
    """Task: the replay's work *without* a signal set, the baseline it is measured against.

    For every weight vector and symbol, read the bars from the store, compute the
    members' indicators and targets, combine and backtest: what evaluating an
    ensemble costs when nothing is stored. Returns the statistics rows (weights x
    symbols, ``STAT_NAMES``) so the benchmark can check they equal the replay's.
    """
    from .backtest import _costs, _f64, _ppy, batch_targets
    from .kernels.portfolio import accumulators_init
    from .kernels.replay import ensemble_batch_with_equity
    from .strategies import direction_code, prepare_batch

    store = BarStore.open(bars_ref, fingerprint)
    c = _costs("long_short", **costs)
    out = np.empty((len(weights), len(symbols), len(STAT_NAMES)))
    for i in range(len(weights)):
        for j, symbol in enumerate(symbols):
            bars = store.read(symbol, start=start, end=end)
            signals = np.empty((len(members), len(bars)), dtype=np.int8)
            for k, m in enumerate(members):
                signals[k] = batch_targets(bars, prepare_batch(m.strategy, [m.params]), direction_code(m.direction))[0]
            o, h, lo, cl = (_f64(bars.columns[x]) for x in ("open", "high", "low", "close"))
            n = len(bars)
            out[i, j] = ensemble_batch_with_equity(signals, weights[i:i + 1], rule, threshold, direction, o, h, lo, cl,
                                                   np.arange(n, dtype=np.int64), _ppy(bars, True, None), c.cash,
                                                   c.commission, c.slippage_bps, c.whole_units, c.stop_loss,
                                                   c.take_profit, *accumulators_init(1, n))[0]
    return out

