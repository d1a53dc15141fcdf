"""What a sweep runs: its validated settings (:class:`SweepConfig`) and its parameter sets.

Grid expansion (ranges, lists, fixed values, minus the sets that break the
strategy's rules, or a seeded sample) and :class:`ParamSets`, the form in which
a task receives its share of them.
"""

from __future__ import annotations

import itertools
import pickle
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..budget import parse_budget
from ..errors import ConfigError, did_you_mean
from ..kernels.names import STAT_NAMES


# Settings that change how a run is scheduled or printed, not its results: not part of its identity.
SCHEDULING = ("metric", "top", "batch_seconds", "retries", "max_backtests", "memory_budget")


def check_metric(metric: str) -> None:
    """ConfigError unless ``metric`` is one of the statistics (``STAT_NAMES``)."""
    if metric not in STAT_NAMES:
        raise ConfigError(f"unknown metric {metric!r}", key="metric",
                          hint=did_you_mean(metric, STAT_NAMES) or f"choose from {', '.join(STAT_NAMES)}")

def check_run_settings(config: Any) -> None:
    """The settings every config that :func:`run_grid` runs has: metric, top, batch_seconds, retries, max_backtests,
    memory_budget."""
    check_metric(config.metric)
    if not 0 < config.batch_seconds <= 60:
        raise ConfigError("batch_seconds must be > 0 and <= 60", key="batch_seconds")
    if config.retries < 0 or config.top < 0 or config.max_backtests < 1:
        raise ConfigError("retries and top must be >= 0, max_backtests >= 1", key="retries")
    if hasattr(config, "memory_budget"):  # a size string becomes bytes, once, here (configs are frozen)
        object.__setattr__(config, "memory_budget", parse_budget(config.memory_budget))

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
    without ``yes``; ``memory_budget`` what one task may hold (bytes, or a size such
    as ``"256MiB"``; unset: from the workers' memory limit, see :mod:`admf_dask.budget`):
    a symbol whose history does not fit is read and backtested in time chunks.
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
    memory_budget: int | str | None = None

    def __post_init__(self) -> None:
        from ..costs import _costs
        from ..strategies import get_strategy

        get_strategy(self.strategy)
        _costs(self.direction, self.cash, self.commission, self.slippage_bps, self.whole_units,
               self.stop_loss, self.take_profit)
        check_run_settings(self)
        if isinstance(self.params, Mapping):  # a Python range or numpy array axis: recorded as a plain list
            object.__setattr__(self, "params", {k: plain_axis(v) for k, v in self.params.items()})
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
        for k in SCHEDULING:
            d.pop(k)
        return d

    # The hooks a container task calls (a replay's config has the same ones; see run_grid).
    @property
    def label(self) -> str:
        return self.strategy

    def param_names(self) -> list[str]:
        from ..strategies import get_strategy

        return list(get_strategy(self.strategy).param_names)

    def prepare(self, param_sets: list[dict[str, Any]]) -> Any:
        from ..strategies import prepare_batch

        return prepare_batch(self.strategy, param_sets)

    def stats(self, data: Any, batch: Any, portfolio: Any, state: np.ndarray | None = None) -> np.ndarray:
        from ..backtest import _costs, batch_stats

        return batch_stats(data, batch, _costs(**self.costs), portfolio=portfolio, state=state)

    def resumable(self) -> bool:
        """Whether tasks can save the engine state a later run goes on from (built-in strategies' kernels)."""
        from ..strategies import get_strategy

        return get_strategy(self.strategy).builtin

    def saved_inputs(self, data: Any, batch: Any) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
        """What a stream of this symbol would carry after its last bar, for a symbol held whole (``data``, an
        IndicatorSet): each indicator kernel's end state (run again, as one chunk, for an indicator the set
        loaded from the cache, which keeps no state), the indicator rows at the last bar, and the halo."""
        specs = batch.plan.specs
        states = {}
        for spec in specs:
            st = data.states.get(spec.token)
            if st is None:
                _, st = spec.compute_chunk(data.bars.columns, 0, spec.init_state())
            states[spec.token] = st
        matrix, rows = data.stacked(batch.rows)
        return states, matrix[rows, -1], max((spec.halo for spec in specs), default=0)

    def load(self, source: Any) -> Any:
        from ..cache import resolve

        return resolve(source)

    # The streaming container's hooks (see admf_dask.sweep.streaming).
    def stream_input(self, batch: Any, symbol: str, store: Any, spec: Any) -> Any:
        from ..backtest import _costs, stream_input
        from ..cache import stream_key

        key = stream_key(store.symbol_fingerprint(symbol), self.start) if spec.cache_ref is not None else ""
        return stream_input(batch, _costs(**self.costs), symbol, key, spec.cache_ref, spec.persist)

    def stats_chunk(self, piece: Any, batch: Any, state: np.ndarray, portfolio: Any) -> None:
        from ..backtest import _costs, batch_chunk

        batch_chunk(batch, _costs(**self.costs), piece.columns, piece.payload, piece.h, piece.t0, state, portfolio)

def plain_axis(spec: Any) -> Any:
    """A grid axis given as a Python ``range`` or a 1-D numpy array, as a list of plain numbers (others as given).

    >>> plain_axis(range(5, 20, 5)), plain_axis(np.array([0.5, 1.0]))
    ([5, 10, 15], [0.5, 1.0])
    """
    if isinstance(spec, range):
        return list(spec)
    if isinstance(spec, np.ndarray):
        return [v.item() if isinstance(v, np.generic) else v for v in spec.ravel()] if spec.ndim <= 1 else spec.tolist()
    return spec


def _axis(strategy: str, name: str, spec: Any) -> list:
    spec = plain_axis(spec)
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
    from ..strategies import get_strategy

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

class ParamSets:
    """Parameter sets as a task argument: hashable, compact, and opaque to Dask.

    Dask walks tuples, lists, dicts and dataclasses in task arguments looking for
    keys; thousands of parameter sets in plain tuples cost the client seconds of
    that per sweep. And every task's arguments are unpickled by the scheduler too
    (in the client's process with a LocalCluster): a sweep of 4,000 sets over 34
    symbol groups held 1.6 million small objects there. So the sets travel as one
    pickled blob per object, decoded once where they are used. Iterating yields
    ``((name, value), ...)`` per set.
    """

    __slots__ = ("_blob", "_items")

    def __init__(self, sets: list[dict[str, Any]]) -> None:
        self._items = tuple(tuple(sorted(p.items())) for p in sets)
        self._blob = pickle.dumps(self._items, protocol=pickle.HIGHEST_PROTOCOL)

    @property
    def items(self) -> tuple:
        if self._items is None:
            self._items = pickle.loads(self._blob)
        return self._items

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParamSets) and other._blob == self._blob

    def __hash__(self) -> int:
        return hash(self._blob)

    def __getstate__(self):
        return self._blob

    def __setstate__(self, state) -> None:
        self._blob, self._items = state, None


def _frozen(sets: list[dict[str, Any]]) -> ParamSets:
    return ParamSets(sets)
