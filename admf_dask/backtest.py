"""Run strategies on bars: one reference backtest, or a batch of parameter sets as flat rows.

:func:`backtest` is the single-run reference path: indicators, targets,
:func:`~admf_dask.kernels.simulate.simulate`, then the statistics, the trades
table and the equity curve. :func:`run_batch` is what a sweep calls inside its
tasks: many parameter sets of one strategy on one symbol, one flat row each,
through the fused kernel for built-in strategies (targets computed inline, no
bars x sets array) and the generic targets-then-simulate path for user
strategies. Both give the same statistics for the same parameter set (tests).

Execution semantics and statistic definitions are those of
:mod:`admf_dask.kernels.simulate` and :mod:`admf_dask.kernels.stats` (next-open
fills, all-in sizing, commission on every fill, equity marked at each close;
where a statistic differs from backtesting.py's, that module says how and why).

Examples
--------
>>> from admf_dask.bars import generate_bars
>>> bars = generate_bars("AAA", "2020-01-01", "2023-12-31")
>>> result = backtest(bars, "sma_cross", {"fast": 10, "slow": 30}, commission=0.001)
>>> bool(result.stats["n_trades"] == len(result.trades))
True
>>> rows = run_batch(bars, "sma_cross", [{"fast": 10, "slow": 30}, {"fast": 20, "slow": 50}],
...                  commission=0.001)
>>> bool(rows.loc[0, "total_return"] == result.stats["total_return"])
True
>>> list(rows.columns[:4])
['fast', 'slow', 'total_return', 'cagr']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from admf_dask.bars import Bars
from admf_dask.costs import _Costs, _costs, _number
from admf_dask.errors import ConfigError, DataError
from admf_dask.kernels.portfolio import strategy_batch_with_equity, targets_batch_with_equity
from admf_dask.kernels.simulate import simulate, simulate_stats_batch
from admf_dask.kernels.stats import STAT_NAMES, TRADE_FIELDS, compute_stats
from admf_dask.kernels.strategies import run_strategy_batch, strategy_targets
from admf_dask.strategies import BatchPlan, Strategy, get_strategy, prepare_batch

__all__ = ["BacktestResult", "StreamInput", "backtest", "batch_chunk", "batch_stats", "batch_targets", "run_batch",
           "stream_input"]


@dataclass(frozen=True)
class BacktestResult:
    """One backtest: ``stats`` (a flat Series, ``STAT_NAMES``), ``trades`` and ``equity``.

    ``trades`` has one row per closed trade: ``entry_time, exit_time, entry_bar,
    exit_bar, direction`` (+1 long / -1 short), ``size`` (units), ``entry_price,
    exit_price`` (fills incl. slippage), ``pnl`` (cash, net of commissions) and
    ``return`` (``pnl / (size * entry_price)``). A position still open at the end
    is not a trade; it is in ``equity`` and ``position`` (signed units at each close).
    """

    strategy: str
    params: dict[str, Any]
    stats: pd.Series
    trades: pd.DataFrame
    equity: pd.Series
    position: pd.Series
    close: pd.Series | None = None  # the closing prices (for :meth:`plot`)

    def plot(self, filename: str | None = None) -> Any:
        """A bokeh layout like backtesting.py's plot: price with entries and exits, equity, drawdown.

        With ``filename``, also saved there as one self-contained HTML file (opens with no network).
        """
        from admf_dask.reports import backtest_layout, save_html

        layout = backtest_layout(self)
        if filename is not None:
            save_html(layout, filename, f"admf backtest {self.strategy}")
        return layout


def _as_bars(data: Any) -> tuple[Bars, bool]:
    """Bars from Bars, an IndicatorSet or a DataFrame; and whether timestamps are real."""
    if isinstance(data, Bars):
        bars, timed = data, True
    elif hasattr(data, "bars") and isinstance(getattr(data, "bars"), Bars):
        bars, timed = data.bars, True
    elif isinstance(data, pd.DataFrame):
        lower = {str(c).lower(): c for c in data.columns}
        missing = [c for c in ("open", "high", "low", "close") if c not in lower]
        if missing:
            raise DataError(f"bars need columns open, high, low, close; missing {missing}", key=missing[0],
                            hint=f"got columns {list(data.columns)}")
        cols = {c: np.ascontiguousarray(data[lower[c]].to_numpy(), dtype=np.float64)
                for c in ("open", "high", "low", "close", "volume") if c in lower}
        if isinstance(data.index, pd.DatetimeIndex):
            index, timed = data.index, True
        elif "timestamp" in lower:
            index, timed = pd.DatetimeIndex(data[lower["timestamp"]]), True
        else:
            index, timed = None, False
        if timed:
            if index.tz is not None:
                index = index.tz_convert("UTC").tz_localize(None)
            ts = index.as_unit("ns").asi8.copy()
        else:
            ts = np.arange(len(data), dtype=np.int64)
        bars = Bars("DATA", ts, cols)
    else:
        raise ConfigError(f"data must be Bars, an IndicatorSet or a pandas DataFrame, got {type(data).__name__}",
                          key="data")
    if len(bars) == 0:
        raise DataError(f"no bars to backtest ({bars.symbol} is empty)", symbol=bars.symbol, rule="non-empty",
                        hint="check the symbol and the start/end range")
    for c in ("open", "high", "low", "close"):
        if c not in bars.columns:
            raise DataError(f"bars of {bars.symbol} lack column {c!r}", symbol=bars.symbol, key=c)
    return bars, timed


def _ppy(bars: Bars, timed: bool, periods_per_year: float | None) -> float:
    if periods_per_year is not None:
        return _number("periods_per_year", periods_per_year, low=0.0, low_ok=False)
    if not timed:
        raise ConfigError("periods_per_year is needed: the data has no timestamps to infer it from",
                          key="periods_per_year", hint="pass periods_per_year=252 for daily bars")
    if len(bars) < 2:
        raise DataError("at least two bars are needed to infer periods_per_year", symbol=bars.symbol,
                        key="periods_per_year", hint="pass periods_per_year")
    return bars.periods_per_year()


def _f64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


def _arrays(batch: BatchPlan, data: Any, bars: Bars) -> dict[str, dict[str, np.ndarray]]:
    """token -> output -> array for every spec of the batch: from the IndicatorSet when it holds it."""
    held = getattr(data, "values", None) if not isinstance(data, (Bars, pd.DataFrame)) else None
    out: dict[str, dict[str, np.ndarray]] = {}
    for spec in batch.plan.specs:
        if held is not None and spec.token in held:
            out[spec.token] = held[spec.token]
        else:
            out[spec.token] = spec.compute(bars.columns)
    return out


def _pick(arrays: Mapping[str, np.ndarray], output: str | None) -> np.ndarray:
    if output is None:
        (output,) = arrays
    return arrays[output]


def _ind_matrix(batch: BatchPlan, data: Any, bars: Bars) -> tuple[np.ndarray, np.ndarray]:
    """The kernels' ``(ind, idx)``: indicator rows and each set's row numbers in it.

    From an IndicatorSet that holds every row, its own stacked matrix (no copy);
    otherwise the batch's rows stacked here.
    """
    stacked = data.stacked(batch.rows) if batch.rows and hasattr(data, "stacked") else None
    if stacked is not None:
        matrix, rows = stacked
        return matrix, rows[batch.idx]
    arrays = _arrays(batch, data, bars)
    ind = np.empty((max(len(batch.rows), 1), len(bars)))
    for j, (token, output) in enumerate(batch.rows):
        ind[j] = _pick(arrays[token], output)
    if not batch.rows:
        ind[0] = np.nan
    return ind, batch.idx


def _user_target_matrix(s: Strategy, batch: BatchPlan, bars: Bars,
                        arrays: dict[str, dict[str, np.ndarray]], direction: int) -> np.ndarray:
    targets = np.empty((len(batch.params), len(bars)), dtype=np.int8)
    for k, p in enumerate(batch.params):
        named = {name: _pick(arrays[spec.token], output) for name, (spec, output) in s.make_inputs(p).items()}
        targets[k] = s.user_targets(bars, named, p)
    if direction > 0:
        np.maximum(targets, 0, out=targets)
    elif direction < 0:
        np.minimum(targets, 0, out=targets)
    return targets


def backtest(data: Any, strategy: str | Strategy, params: Mapping[str, Any] | None = None, *,
             direction: str = "long_short", cash: float = 10_000, commission: float = 0.0,
             slippage_bps: float = 0.0, whole_units: bool = False, stop_loss: float | None = None,
             take_profit: float | None = None, periods_per_year: float | None = None) -> BacktestResult:
    """Backtest one parameter set of a strategy on one symbol's bars.

    Parameters
    ----------
    data
        :class:`~admf_dask.bars.Bars`, an :class:`~admf_dask.cache.IndicatorSet`
        (its indicators are reused), or a DataFrame with open/high/low/close columns
        (any capitalisation, as backtesting.py's ``Open``...) and a DatetimeIndex.
    strategy
        A built-in name (see :mod:`admf_dask.strategies`) or ``"package.module:function"``.
    params
        The strategy's parameters; missing ones take their defaults.
    direction
        ``"long_short"`` trades every target, ``"long_only"`` never goes short (a
        short signal only closes the long), ``"short_only"`` never goes long.
    cash
        Starting equity.
    commission
        Fraction of the traded notional charged on every fill, entry and exit (0.001 = 0.1 %).
    slippage_bps
        Every fill, entries, exits and stops, moves this many basis points against the trader.
    whole_units
        Trade whole units, floored as backtesting.py does, instead of fractional ones.
    stop_loss
        Exit when the price moves this fraction against the entry fill (0.05 = 5 %); None is off.
    take_profit
        Exit when the price moves this fraction in favour of the entry fill; None is off.
    periods_per_year
        Bars per year for annualised figures; None infers it from the bar spacing (252 for daily bars).

    Returns
    -------
    BacktestResult
        ``.stats`` (Series over ``STAT_NAMES``), ``.trades`` (DataFrame), ``.equity`` (Series by timestamp).
    """
    s = get_strategy(strategy)
    costs = _costs(direction, cash, commission, slippage_bps, whole_units, stop_loss, take_profit)
    bars, timed = _as_bars(data)
    ppy = _ppy(bars, timed, periods_per_year)
    batch = prepare_batch(s, [{} if params is None else params])
    o, h, lo, c = (_f64(bars.columns[k]) for k in ("open", "high", "low", "close"))
    targets = batch_targets(data, batch, costs.direction)[0]
    equity, position, trades = simulate(o, h, lo, c, targets, costs.cash, costs.commission, costs.slippage_bps,
                                        costs.whole_units, costs.stop_loss, costs.take_profit)
    row = compute_stats(equity, position, trades, c, ppy)

    index = (pd.DatetimeIndex(bars.timestamp.view("datetime64[ns]"), name="timestamp").tz_localize("UTC")
             if timed else pd.RangeIndex(len(bars), name="bar"))
    tr = dict(zip(TRADE_FIELDS, trades))
    table = pd.DataFrame({"entry_time": index[tr["entry_bar"]], "exit_time": index[tr["exit_bar"]], **tr})
    return BacktestResult(
        strategy=s.name,
        params=dict(batch.params[0]),
        stats=pd.Series(row, index=list(STAT_NAMES), name=s.name),
        trades=table,
        equity=pd.Series(equity, index=index, name="equity"),
        position=pd.Series(position, index=index, name="position"),
        close=pd.Series(c, index=index, name="close"),
    )


def run_batch(data: Any, strategy: str | Strategy, param_sets: Sequence[Mapping[str, Any]], *,
              direction: str = "long_short", cash: float = 10_000, commission: float = 0.0,
              slippage_bps: float = 0.0, whole_units: bool = False, stop_loss: float | None = None,
              take_profit: float | None = None, periods_per_year: float | None = None,
              portfolio: tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
              ) -> pd.DataFrame:
    """Backtest many parameter sets of one strategy on one symbol: one flat row per set.

    ``data`` is an :class:`~admf_dask.cache.IndicatorSet` from the indicator hub
    (its arrays are used; specs it lacks are computed from its bars) or
    :class:`~admf_dask.bars.Bars` (the batch's unique indicators are computed
    once here). Built-in strategies run in the fused kernel
    (:func:`~admf_dask.kernels.strategies.run_strategy_batch`); user strategies
    compute a target row per set, then
    :func:`~admf_dask.kernels.simulate.simulate_stats_batch`. The settings are
    those of :func:`backtest`.

    ``portfolio=(timeline_pos, (equity_acc, trade_acc, extra_acc))`` also adds this
    symbol's sleeve of every set into equal-weight portfolio accumulators (see
    :mod:`admf_dask.kernels.portfolio`; ``timeline_pos`` places this symbol's bars on
    the union timeline). The returned rows are the same either way.

    Returns
    -------
    pandas.DataFrame
        One row per parameter set, in order: the parameters, then every statistic.
    """
    s = get_strategy(strategy)
    costs = _costs(direction, cash, commission, slippage_bps, whole_units, stop_loss, take_profit)
    batch = prepare_batch(s, param_sets)
    rows = batch_stats(data, batch, costs, periods_per_year, portfolio)
    frame = pd.DataFrame(batch.columns())
    stats = pd.DataFrame(rows, columns=list(STAT_NAMES))
    return pd.concat([frame, stats], axis=1) if len(frame.columns) else stats


def batch_stats(data: Any, batch: BatchPlan, costs: _Costs, periods_per_year: float | None = None,
                portfolio: tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
                state: np.ndarray | None = None) -> np.ndarray:
    """The statistics matrix of :func:`run_batch`: float64 (sets, ``STAT_NAMES``), no frame.

    For callers that run one prepared batch (:func:`~admf_dask.strategies.prepare_batch`)
    with validated costs (``_costs``) over many symbols, as sweep containers do. With
    ``portfolio`` and a built-in strategy, ``state`` (start run states,
    :func:`~admf_dask.kernels.state.run_state_init`) is advanced in place to the run
    states at the last bar, which an incremental run goes on from.
    """
    s = batch.strategy
    bars, timed = _as_bars(data)
    ppy = _ppy(bars, timed, periods_per_year)
    o, h, lo, c = (_f64(bars.columns[k]) for k in ("open", "high", "low", "close"))
    if not batch.params:
        return np.empty((0, len(STAT_NAMES)))
    if s.builtin:
        ind, idx = _ind_matrix(batch, data, bars)
        if portfolio is None:
            return run_strategy_batch(s.kind, ind, idx, batch.fparams, o, h, lo, c, ppy, costs.cash,
                                      costs.commission, costs.slippage_bps, costs.whole_units,
                                      costs.stop_loss, costs.take_profit, costs.direction)
        pos, (eq, tr, ex) = portfolio
        return strategy_batch_with_equity(s.kind, ind, idx, batch.fparams, o, h, lo, c, pos, ppy,
                                          costs.cash, costs.commission, costs.slippage_bps,
                                          costs.whole_units, costs.stop_loss, costs.take_profit,
                                          costs.direction, eq, tr, ex, state)
    targets = _user_target_matrix(s, batch, bars, _arrays(batch, data, bars), costs.direction)
    if portfolio is None:
        return simulate_stats_batch(o, h, lo, c, targets, ppy, costs.cash, costs.commission,
                                    costs.slippage_bps, costs.whole_units, costs.stop_loss, costs.take_profit)
    pos, (eq, tr, ex) = portfolio
    return targets_batch_with_equity(targets, o, h, lo, c, pos, ppy, costs.cash, costs.commission,
                                     costs.slippage_bps, costs.whole_units, costs.stop_loss,
                                     costs.take_profit, eq, tr, ex)


def batch_targets(data: Any, batch: BatchPlan, direction: int) -> np.ndarray:
    """The targets each set of the batch trades: int8 (sets, bars), clipped to ``direction`` (a code).

    What :func:`backtest` simulates and what signal sets store; the fused kernels of
    :func:`batch_stats` compute the same targets inline without this array.
    """
    s = batch.strategy
    bars, _ = _as_bars(data)
    if s.builtin:
        ind, idx = _ind_matrix(batch, data, bars)
        return strategy_targets(s.kind, ind, idx, batch.fparams, _f64(bars.columns["close"]), direction)
    return _user_target_matrix(s, batch, bars, _arrays(batch, data, bars), direction)


# --------------------------------------------------------------------------- streaming


@dataclass(frozen=True)
class StreamInput:
    """What a :class:`~admf_dask.stream.SymbolStream` needs to feed a batch's chunk kernels.

    ``halo`` bars before each chunk, ``rows`` payload rows of ``dtype`` filled by
    ``build`` for each chunk's new bars (see :data:`admf_dask.stream.Builder`), and
    ``counters()``, the indicator hub's counters for the symbol when it is done.
    """

    halo: int
    rows: int
    dtype: Any
    build: Any
    counters: Any


def stream_input(batch: BatchPlan, costs: _Costs, symbol: str, series_key: str, cache_ref: Any = None,
                 persist: bool = False) -> StreamInput:
    """The chunk-by-chunk input of one symbol for a prepared batch.

    Built-in strategies read their indicator rows (``batch.rows``), streamed by an
    :class:`~admf_dask.cache.IndicatorStream` (cached per chunk under ``series_key``,
    see :func:`~admf_dask.cache.stream_key`). User strategies get target rows: their
    function is called on each chunk with history bars before it and its declared
    indicators over the same bars, under the streaming contract of :class:`_UserTargets`.
    """
    from .cache import IndicatorStream

    s = batch.strategy
    if s.builtin:
        hub = IndicatorStream(batch.plan.specs, batch.rows, cache_ref, series_key, persist)
        return StreamInput(hub.halo, len(batch.rows), np.float64, hub, lambda: hub.counters)
    rows = [(spec.token, out) for spec in batch.plan.specs for out in spec.outputs]
    hub = IndicatorStream(batch.plan.specs, rows, cache_ref, series_key, persist)
    user = _UserTargets(s, batch, symbol, hub, rows, costs.direction)
    return StreamInput(max(hub.halo, user.halo), len(batch.params), np.int8, user, lambda: hub.counters)


class _UserTargets:
    """Payload builder of a user strategy: its targets for each chunk, computed with history before the chunk.

    The streaming contract. A strategy's ``lookback`` L (:meth:`~admf_dask.strategies.Strategy.lookback`)
    is how many bars of history a target needs. Each call gets the chunk with 2L bars
    before it (bars and declared indicators, whose values there are exact): the first L
    are history for the next L, and those L bars, right before the chunk, were already
    decided in the chunk before with all their history. The targets the function gives
    them now must equal those; if not, it reads further back than it declared, and the
    run stops with a DataError naming the strategy, the symbol and the bar.
    """

    def __init__(self, s: Strategy, batch: BatchPlan, symbol: str, hub: Any, rows: list[tuple[str, str]],
                 direction: int) -> None:
        self.s, self.batch, self.symbol, self.hub, self.direction = s, batch, symbol, hub, direction
        self.lookback = max((s.lookback(p) for p in batch.params), default=0)
        self.halo = 2 * self.lookback
        self.row = {name: i for i, name in enumerate(rows)}
        self.inputs = [s.make_inputs(p) for p in batch.params]
        self._ind_tail = np.empty((len(rows), 0))  # indicator values of the last `halo` bars
        self._tgt_tail = np.empty((len(batch.params), 0), dtype=np.int8)  # and the targets given for them

    def __call__(self, columns: dict[str, np.ndarray], hb: int, t0: int, out: np.ndarray) -> None:
        m, n = out.shape
        fresh = np.empty((len(self.row), n))
        self.hub(columns, hb, t0, fresh)
        back = min(self.halo, hb, self._ind_tail.shape[1])  # history bars the function sees
        # halo bars compared with the chunk before: those with their L bars of history in the
        # buffer, or all of them when the buffer starts at the series' first bar
        check = back if t0 == back else max(0, back - self.lookback)
        ind = np.concatenate([self._ind_tail[:, self._ind_tail.shape[1] - back:], fresh], axis=1)
        bars = Bars(self.symbol, columns["timestamp"][hb - back:],
                    {c: v[hb - back:] for c, v in columns.items() if c != "timestamp"})
        raw = np.empty((m, back + n), dtype=np.int8)
        for k, p in enumerate(self.batch.params):
            named = {name: ind[self.row[(spec.token, output or spec.outputs[0])]]
                     for name, (spec, output) in self.inputs[k].items()}
            raw[k] = self.s.user_targets(bars, named, p)
            if check:
                before = self._tgt_tail[k, self._tgt_tail.shape[1] - check:]
                bad = np.flatnonzero(raw[k, back - check:back] != before)
                if len(bad):
                    t = t0 - check + int(bad[0])
                    raise DataError(f"strategy {self.s.name!r} {dict(p)} gave bar {t} the target "
                                    f"{raw[k, back - check + bad[0]]} with {back} bars of history before the chunk, "
                                    f"and {before[bad[0]]} in the chunk before: it reads further back than its "
                                    f"lookback of {self.lookback} bars", symbol=self.symbol, row=t,
                                    key="strategy.lookback",
                                    hint="declare a longer lookback on the function (fn.lookback = N bars), "
                                         "or give a larger --memory-budget")
        out[:] = raw[:, back:]
        if self.direction > 0:
            np.maximum(out, 0, out=out)
        elif self.direction < 0:
            np.minimum(out, 0, out=out)
        if self.halo:  # what the next chunk's history bars were given: indicator values and raw targets
            keep = min(self.halo, back + n)
            self._ind_tail = ind[:, back + n - keep:].copy()
            self._tgt_tail = raw[:, back + n - keep:].copy()


def batch_chunk(batch: BatchPlan, costs: _Costs, columns: Mapping[str, np.ndarray], payload: np.ndarray,
                h: int, t0: int, state: np.ndarray, portfolio: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Advance a prepared batch's run ``state`` over one chunk: the streaming form of :func:`batch_stats`.

    ``columns`` (open, high, low, close) and ``payload`` (the batch's indicator rows,
    or a user strategy's target rows, from :func:`stream_input`) hold ``h`` halo bars
    then the chunk's bars; ``t0`` is the global index of the chunk's first bar.
    ``portfolio=(timeline_pos, equity_acc)`` also adds each set's sleeve over the chunk.
    Finish with :func:`~admf_dask.kernels.state.finalize_runs`.
    """
    from .kernels.simulate import simulate_stats_chunk
    from .kernels.strategies import strategy_chunk

    o, hi, lo, c = (_f64(columns[k]) for k in ("open", "high", "low", "close"))
    pos, eq = portfolio if portfolio is not None else (None, None)
    if batch.strategy.builtin:
        strategy_chunk(batch.strategy.kind, payload, batch.idx, batch.fparams, o, hi, lo, c, h, t0, state,
                       costs.commission, costs.slippage_bps, costs.whole_units, costs.stop_loss, costs.take_profit,
                       costs.direction, pos, eq)
    else:
        simulate_stats_chunk(o, hi, lo, c, payload, h, t0, state, costs.commission, costs.slippage_bps,
                             costs.whole_units, costs.stop_loss, costs.take_profit, pos, eq)
