"""Equal-weight portfolio of a parameter sweep: one row per parameter set across all symbols.

Kernel rules (every module in ``admf_dask.kernels``): numpy and numba only (no
pandas, dask or fsspec); compiled functions use ``@numba.njit(cache=True, nogil=True)``;
float64 price arrays in (inputs may be read-only). Unlike the other kernels, the
``*_with_equity`` kernels also *add into* accumulators the caller owns, so that a
task can fold symbol after symbol into them.

Definition of the portfolio row
-------------------------------
For one parameter set over ``N`` symbols:

* The capital is split equally across the ``N`` symbols at the start. Each
  *sleeve* trades its symbol independently with the same rules, costs and
  settings as the single-symbol backtest, and is never rebalanced.
* The *union timeline* is the sorted union of every symbol's bar timestamps
  (``T`` timestamps). A sleeve's equity at a union timestamp is its starting
  cash before its first bar, its equity at the close of its latest bar at or
  before that timestamp otherwise (so it is carried forward between its bars and
  after its last bar).
* Portfolio equity at each union timestamp is the mean of the ``N`` sleeve
  curves. Equity is linear in starting cash with fractional units, so the mean
  of curves each started at ``cash`` is the equity of a portfolio of ``cash``
  split in ``N`` (with ``whole_units`` this is the mean of the ``cash``-sized
  sleeves, not an exact split). Its total return is the mean of the sleeves'
  total returns.
* The bar statistics (``total_return, cagr, ann_volatility, sharpe, sortino,
  calmar, max_drawdown, max_drawdown_duration``) are those of
  :mod:`admf_dask.kernels.stats` over the mean curve: ``bar_update`` over the
  ``T`` union timestamps, then ``finalize``; durations are in union-timeline bars
  and ``periods_per_year`` is the caller's (that of the union timeline).
* The trade statistics (``n_trades, win_rate, profit_factor, avg_trade,
  best_trade, worst_trade, expectancy``) pool every sleeve's closed trades, as
  if all trades were one list: the trade accumulators of
  :func:`~admf_dask.kernels.stats.trade_update` are mergeable (counts and sums
  add, best is the max, worst the min). Trade returns are per sleeve (fractions
  of the sleeve's notional), not weighted by anything.
* ``exposure`` is the mean of the sleeves' exposures (each over its own bars)
  and ``buy_and_hold_return`` the mean of the sleeves' buy-and-hold returns
  (an equal-weight buy-and-hold of the symbols, each held over its own bars).

Accumulators
------------
For ``m`` parameter sets (a task's set range) and a union timeline of ``T``:

* ``equity_acc`` float64 ``(m, T)``: the sum of the sleeve equity curves (zeros
  at the start).
* ``trade_acc`` float64 ``(m, 9)``: the pooled trade accumulator state, in
  ``trade_init``'s layout ``n, wins, sum_pos, sum_neg, sum_ret, sum_log1p,
  ruined, best, worst`` (start with :func:`trade_acc_init`; ``ruined`` becomes
  a count of sleeves with a trade of return <= -100 %, only ``> 0`` matters).
* ``extra_acc`` float64 ``(m, 3)``: sums of ``exposure``, ``buy_and_hold_return``
  and the sleeve count.

:func:`strategy_batch_with_equity` (built-in strategy kinds) and
:func:`targets_batch_with_equity` (target matrices of user strategies) run one
symbol's batch exactly as :func:`~admf_dask.kernels.strategies.run_strategy_batch`
and :func:`~admf_dask.kernels.simulate.simulate_stats_batch` do (same per-bar
``sim_step`` and accumulators, so their returned rows are bit-identical) and add
the symbol's sleeves into the accumulators. Tasks over different symbol groups
with the same set range and the same union timeline combine with
:func:`merge_accumulators` (sums, except best = max and worst = min;
:func:`merge_trade_acc`); :func:`portfolio_stats` turns the final accumulators
into rows. All symbols of the portfolio must be mapped onto the *same* union
timeline (the union over every symbol of the sweep, fixed before the tasks run).

Nothing of size ``m x n`` is allocated beyond the caller's accumulators.
"""
from __future__ import annotations

import numba
import numpy as np

from admf_dask.kernels.simulate import sim_init, sim_step
from admf_dask.kernels.stats import N_STATS, bar_init, bar_update, finalize, trade_init
from admf_dask.kernels.strategies import (
    BB_BREAKOUT, BB_REVERSION, CROSS, DONCHIAN, MOMENTUM, RSI, _check, _clip, signal_step,
)

__all__ = [
    "EXTRA_WIDTH", "TRADE_ACC_WIDTH", "accumulators_init", "merge_accumulators",
    "merge_trade_acc", "portfolio_stats", "rebase_equity", "strategy_batch_with_equity",
    "targets_batch_with_equity", "trade_acc_init",
]

TRADE_ACC_WIDTH = 9  # trade_init's state: n, wins, sum_pos, sum_neg, sum_ret, sum_log1p, ruined, best, worst
EXTRA_WIDTH = 3      # exposure sum, buy-and-hold sum, sleeve count
_EXPOSURE = 15       # columns of the statistics row (STAT_NAMES)
_BUY_AND_HOLD = 16


@numba.njit(cache=True, nogil=True)
def trade_acc_init(m):
    """Empty pooled trade accumulators, float64 ``(m, 9)``: ``trade_init()`` on every row."""
    st = trade_init()
    out = np.empty((m, TRADE_ACC_WIDTH))
    for k in range(m):
        out[k, 0] = st[0]
        out[k, 1] = st[1]
        out[k, 2] = st[2]
        out[k, 3] = st[3]
        out[k, 4] = st[4]
        out[k, 5] = st[5]
        out[k, 6] = st[6]
        out[k, 7] = st[7]
        out[k, 8] = st[8]
    return out


@numba.njit(cache=True, nogil=True)
def accumulators_init(m, n_timeline):
    """Empty ``(equity_acc (m, T), trade_acc (m, 9), extra_acc (m, 3))`` for ``m`` sets, ``T`` timestamps."""
    return np.zeros((m, n_timeline)), trade_acc_init(m), np.zeros((m, EXTRA_WIDTH))


@numba.njit(cache=True, nogil=True)
def merge_trade_acc(a, b):
    """Pooled trade accumulators of two disjoint sets of trades: a new ``(m, 9)`` array.

    Columns 0-6 (counts and sums) add, column 7 (best) is the max, column 8
    (worst) the min.
    """
    if a.shape[0] != b.shape[0] or a.shape[1] != TRADE_ACC_WIDTH or b.shape[1] != TRADE_ACC_WIDTH:
        raise ValueError("merge_trade_acc: both accumulators must be (m, 9) with the same m")
    out = np.empty((a.shape[0], TRADE_ACC_WIDTH))
    for k in range(a.shape[0]):
        for j in range(7):
            out[k, j] = a[k, j] + b[k, j]
        out[k, 7] = max(a[k, 7], b[k, 7])
        out[k, 8] = min(a[k, 8], b[k, 8])
    return out


@numba.njit(cache=True, nogil=True)
def merge_accumulators(acc_a, acc_b):
    """Combine two ``(equity_acc, trade_acc, extra_acc)`` tuples of disjoint symbol groups.

    Both must cover the same parameter sets (rows) on the same union timeline.
    Returns a new tuple: equity and extra accumulators added, trade accumulators
    merged with :func:`merge_trade_acc`. Associative and commutative up to float
    rounding of the sums, so partial results can be tree-reduced.
    """
    eq_a, tr_a, ex_a = acc_a
    eq_b, tr_b, ex_b = acc_b
    if eq_a.shape[0] != eq_b.shape[0] or eq_a.shape[1] != eq_b.shape[1]:
        raise ValueError("merge_accumulators: equity accumulators differ in shape "
                         "(same parameter sets and union timeline needed)")
    if ex_a.shape[0] != ex_b.shape[0] or ex_a.shape[1] != EXTRA_WIDTH or ex_b.shape[1] != EXTRA_WIDTH:
        raise ValueError("merge_accumulators: extra accumulators must be (m, 3) with the same m")
    return eq_a + eq_b, merge_trade_acc(tr_a, tr_b), ex_a + ex_b


@numba.njit(cache=True, nogil=True)
def _check_acc(n, m, timeline_pos, equity_acc, trade_acc, extra_acc):
    if n == 0:
        raise ValueError("portfolio kernels: a symbol without bars cannot be a sleeve")
    if timeline_pos.shape[0] != n:
        raise ValueError("portfolio kernels: timeline_pos needs one entry per bar")
    if (equity_acc.shape[0] != m or trade_acc.shape[0] != m or extra_acc.shape[0] != m
            or trade_acc.shape[1] != TRADE_ACC_WIDTH or extra_acc.shape[1] != EXTRA_WIDTH):
        raise ValueError("portfolio kernels: accumulators must be equity (m, T), trade (m, 9) "
                         "and extra (m, 3) for the batch's m parameter sets")
    n_timeline = equity_acc.shape[1]
    if timeline_pos[0] < 0 or timeline_pos[n - 1] >= n_timeline:
        raise ValueError("portfolio kernels: timeline_pos points outside the union timeline")
    for t in range(1, n):
        if timeline_pos[t] <= timeline_pos[t - 1]:
            raise ValueError("portfolio kernels: timeline_pos must be strictly increasing")


@numba.njit(cache=True, nogil=True)
def _gaps(timeline_pos):
    """Bars ``t`` followed by a gap in the union timeline (``pos[t + 1] > pos[t] + 1``)."""
    n = timeline_pos.shape[0]
    out = np.empty(n, dtype=np.int64)
    g = 0
    for t in range(n - 1):
        if timeline_pos[t + 1] > timeline_pos[t] + 1:
            out[g] = t
            g += 1
    return out[:g]


@numba.njit(inline="always")
def _add_run(row, equity_buf, t0, t1, p0):
    # Bars t0 .. t1 - 1 sit at the contiguous positions p0 .. p0 + t1 - t0 - 1.
    seg = row[p0:p0 + t1 - t0]
    src = equity_buf[t0:t1]
    for i in range(t1 - t0):
        seg[i] += src[i]


@numba.njit(cache=True, nogil=True)
def _sleeve_add(row, timeline_pos, gaps, equity_buf, cash):
    # Add the sleeve's curve on the union timeline into ``row``: cash before its
    # first bar, bar t's equity from its own timestamp up to the next bar's (or
    # the end). The bar loop only buffers the curve; this separate (not inlined)
    # function adds it, runs of bars at contiguous positions as plain vector
    # adds. Filling inside the bar loop cost 27 % on 184 SMA sets x 2,520 bars,
    # this ~12 %; inlining it also slowed the targets kernel's bar loop 1.9x.
    n = equity_buf.shape[0]
    for j in range(timeline_pos[0]):
        row[j] += cash
    t0 = 0
    for i in range(gaps.shape[0]):
        t = gaps[i]
        _add_run(row, equity_buf, t0, t + 1, timeline_pos[t0])
        e = equity_buf[t]
        for j in range(timeline_pos[t] + 1, timeline_pos[t + 1]):
            row[j] += e
        t0 = t + 1
    _add_run(row, equity_buf, t0, n, timeline_pos[t0])
    e = equity_buf[n - 1]
    for j in range(timeline_pos[n - 1] + 1, row.shape[0]):
        row[j] += e


@numba.njit(inline="always")
def _fold_sleeve(k, row_stats, trade_st, trade_acc, extra_acc):
    trade_acc[k, 0] += trade_st[0]
    trade_acc[k, 1] += trade_st[1]
    trade_acc[k, 2] += trade_st[2]
    trade_acc[k, 3] += trade_st[3]
    trade_acc[k, 4] += trade_st[4]
    trade_acc[k, 5] += trade_st[5]
    trade_acc[k, 6] += trade_st[6]
    trade_acc[k, 7] = max(trade_acc[k, 7], trade_st[7])
    trade_acc[k, 8] = min(trade_acc[k, 8], trade_st[8])
    extra_acc[k, 0] += row_stats[_EXPOSURE]
    extra_acc[k, 1] += row_stats[_BUY_AND_HOLD]
    extra_acc[k, 2] += 1.0


@numba.njit(inline="always")
def _batch_eq(kind, ind, idx, fparams, open_, high, low, close, timeline_pos, periods_per_year,
              cash, commission, slippage_bps, whole_units, stop_loss, take_profit, direction,
              equity_acc, trade_acc, extra_acc):
    # strategies._batch plus the sleeve bookkeeping; the simulation and statistics
    # calls are the same, in the same order, so the rows are bit-identical.
    m = idx.shape[0]
    n = close.shape[0]
    out = np.empty((m, N_STATS))
    dummy_f = np.empty(0)
    dummy_i = np.empty((0, 3), dtype=np.int64)
    dummy_t = np.empty((0, 5))
    equity_buf = np.empty(n)  # one set's curve on the symbol's own bars
    gaps = _gaps(timeline_pos)
    for k in range(m):
        i0 = idx[k, 0]
        i1 = idx[k, 1]
        i2 = idx[k, 2]
        p0 = fparams[k, 0]
        p1 = fparams[k, 1]
        sim = sim_init(cash)
        bar_st = bar_init()
        trade_st = trade_init()
        state = 0
        target = 0  # decided at the previous bar's close
        for t in range(n):
            sim, bar_st, trade_st = sim_step(
                sim, bar_st, trade_st, t, target, open_[t], high[t], low[t], close[t],
                commission, slippage_bps, whole_units, stop_loss, take_profit, False,
                dummy_f, dummy_f, dummy_i, dummy_t)
            state = signal_step(kind, ind, i0, i1, i2, p0, p1, close, t, state)
            target = _clip(state, direction)
            equity_buf[t] = bar_st[1]  # equity at t's close
        _sleeve_add(equity_acc[k], timeline_pos, gaps, equity_buf, cash)
        out[k] = finalize(bar_st, trade_st, close, periods_per_year)
        _fold_sleeve(k, out[k], trade_st, trade_acc, extra_acc)
    return out


@numba.njit(cache=True, nogil=True)
def _eq_cross(ind, idx, fp, o, h, lo, c, pos, ppy, cash, comm, slip, whole, sl, tp, d, eq, tr, ex):
    return _batch_eq(CROSS, ind, idx, fp, o, h, lo, c, pos, ppy, cash, comm, slip, whole, sl, tp, d, eq, tr, ex)


@numba.njit(cache=True, nogil=True)
def _eq_rsi(ind, idx, fp, o, h, lo, c, pos, ppy, cash, comm, slip, whole, sl, tp, d, eq, tr, ex):
    return _batch_eq(RSI, ind, idx, fp, o, h, lo, c, pos, ppy, cash, comm, slip, whole, sl, tp, d, eq, tr, ex)


@numba.njit(cache=True, nogil=True)
def _eq_bb_reversion(ind, idx, fp, o, h, lo, c, pos, ppy, cash, comm, slip, whole, sl, tp, d, eq, tr, ex):
    return _batch_eq(BB_REVERSION, ind, idx, fp, o, h, lo, c, pos, ppy, cash, comm, slip, whole, sl, tp, d,
                     eq, tr, ex)


@numba.njit(cache=True, nogil=True)
def _eq_bb_breakout(ind, idx, fp, o, h, lo, c, pos, ppy, cash, comm, slip, whole, sl, tp, d, eq, tr, ex):
    return _batch_eq(BB_BREAKOUT, ind, idx, fp, o, h, lo, c, pos, ppy, cash, comm, slip, whole, sl, tp, d,
                     eq, tr, ex)


@numba.njit(cache=True, nogil=True)
def _eq_donchian(ind, idx, fp, o, h, lo, c, pos, ppy, cash, comm, slip, whole, sl, tp, d, eq, tr, ex):
    return _batch_eq(DONCHIAN, ind, idx, fp, o, h, lo, c, pos, ppy, cash, comm, slip, whole, sl, tp, d,
                     eq, tr, ex)


@numba.njit(cache=True, nogil=True)
def _eq_momentum(ind, idx, fp, o, h, lo, c, pos, ppy, cash, comm, slip, whole, sl, tp, d, eq, tr, ex):
    return _batch_eq(MOMENTUM, ind, idx, fp, o, h, lo, c, pos, ppy, cash, comm, slip, whole, sl, tp, d,
                     eq, tr, ex)


def strategy_batch_with_equity(kind, ind, idx, fparams, open_, high, low, close, timeline_pos,
                               periods_per_year, cash, commission, slippage_bps, whole_units,
                               stop_loss, take_profit, direction, equity_acc, trade_acc, extra_acc):
    """``run_strategy_batch`` on one symbol that also adds its sleeves into the accumulators.

    Parameters
    ----------
    kind, ind, idx, fparams, open_, high, low, close, periods_per_year, cash, commission,
    slippage_bps, whole_units, stop_loss, take_profit, direction
        As :func:`admf_dask.kernels.strategies.run_strategy_batch` (no defaults here).
    timeline_pos : int64 (n,)
        Position of each of this symbol's bars in the union timeline; strictly
        increasing, within ``[0, T)``.
    equity_acc : float64 (m, T)
        Sum of sleeve equity curves; set ``k``'s curve on the union timeline (see
        the module docstring) is added into row ``k``.
    trade_acc : float64 (m, 9)
        Pooled trade accumulators (:func:`trade_acc_init`); set ``k``'s trades are
        merged into row ``k``.
    extra_acc : float64 (m, 3)
        ``[exposure, buy_and_hold_return, 1]`` of set ``k``'s sleeve is added into row ``k``.

    Returns
    -------
    float64 (m, N_STATS)
        This symbol's statistics rows, bit-identical to ``run_strategy_batch``'s.

    Examples
    --------
    >>> eq, tr, ex = accumulators_init(m, T)                                         # doctest: +SKIP
    >>> for sym in symbols:                                                           # doctest: +SKIP
    ...     rows = strategy_batch_with_equity(CROSS, ind, idx, fp, o, h, l, c, pos, 252.0,
    ...                                       10_000.0, 0.001, 0.0, False, np.nan, np.nan,
    ...                                       LONG_ONLY, eq, tr, ex)
    >>> portfolio = portfolio_stats(eq, tr, ex, 252.0)                                # doctest: +SKIP
    """
    # Dispatched in Python so that only the kind in use is compiled (see run_strategy_batch).
    _check(ind, idx, fparams, open_, high, low, close)
    _check_acc(close.shape[0], idx.shape[0], timeline_pos, equity_acc, trade_acc, extra_acc)
    kernel = _EQ_KERNELS.get(int(kind))
    if kernel is None:
        raise ValueError("strategy_batch_with_equity: unknown strategy kind")
    return kernel(ind, idx, fparams, open_, high, low, close, timeline_pos, float(periods_per_year),
                  float(cash), float(commission), float(slippage_bps), bool(whole_units), float(stop_loss),
                  float(take_profit), int(direction), equity_acc, trade_acc, extra_acc)


_EQ_KERNELS = {CROSS: _eq_cross, RSI: _eq_rsi, BB_REVERSION: _eq_bb_reversion, BB_BREAKOUT: _eq_bb_breakout,
               DONCHIAN: _eq_donchian, MOMENTUM: _eq_momentum}


@numba.njit(cache=True, nogil=True)
def targets_batch_with_equity(targets, open_, high, low, close, timeline_pos, periods_per_year,
                              cash, commission, slippage_bps, whole_units, stop_loss, take_profit,
                              equity_acc, trade_acc, extra_acc):
    """``simulate_stats_batch`` over a target matrix that also adds its sleeves into the accumulators.

    For user strategies: ``targets`` is int (m, n), one row per parameter set (or float:
    fractional targets, see :mod:`admf_dask.kernels.simulate`),
    already clipped to the direction mode (as ``backtest.run_batch`` does). The
    other arguments are those of :func:`strategy_batch_with_equity`. Returns
    float64 (m, N_STATS), bit-identical to
    :func:`admf_dask.kernels.simulate.simulate_stats_batch`'s rows.
    """
    n = close.shape[0]
    m = targets.shape[0]
    if (open_.shape[0] != n or high.shape[0] != n or low.shape[0] != n
            or targets.shape[1] != n):
        raise ValueError(
            "targets_batch_with_equity: open, high, low, close and targets need the same number of bars")
    _check_acc(n, m, timeline_pos, equity_acc, trade_acc, extra_acc)
    cash = float(cash)
    out = np.empty((m, N_STATS))
    dummy_f = np.empty(0)
    dummy_i = np.empty((0, 3), dtype=np.int64)
    dummy_t = np.empty((0, 5))
    equity_buf = np.empty(n)
    gaps = _gaps(timeline_pos)
    for k in range(m):
        sim = sim_init(cash)
        bar_st = bar_init()
        trade_st = trade_init()
        tk = targets[k]
        for t in range(n):
            raw = tk[t - 1] if t > 0 else 0
            sim, bar_st, trade_st = sim_step(
                sim, bar_st, trade_st, t, raw, open_[t], high[t], low[t], close[t],
                commission, slippage_bps, whole_units, stop_loss, take_profit, False,
                dummy_f, dummy_f, dummy_i, dummy_t)
            equity_buf[t] = bar_st[1]
        _sleeve_add(equity_acc[k], timeline_pos, gaps, equity_buf, cash)
        out[k] = finalize(bar_st, trade_st, close, periods_per_year)
        _fold_sleeve(k, out[k], trade_st, trade_acc, extra_acc)
    return out


@numba.njit(cache=True, nogil=True)
def portfolio_stats(equity_acc, trade_acc, extra_acc, periods_per_year):
    """The equal-weight portfolio row of each parameter set: float64 (m, N_STATS), ``STAT_NAMES`` order.

    Mean curve ``equity_acc[k] / sleeves`` through ``bar_update`` over the union
    timeline and ``finalize``; pooled trade statistics from ``trade_acc[k]``;
    ``exposure`` and ``buy_and_hold_return`` the sleeve means (module docstring).
    A row with no sleeve (or an empty timeline) is all NaN.
    """
    m = equity_acc.shape[0]
    n_timeline = equity_acc.shape[1]
    if (trade_acc.shape[0] != m or extra_acc.shape[0] != m
            or trade_acc.shape[1] != TRADE_ACC_WIDTH or extra_acc.shape[1] != EXTRA_WIDTH):
        raise ValueError("portfolio_stats: accumulators must be equity (m, T), trade (m, 9) and extra (m, 3)")
    out = np.full((m, N_STATS), np.nan)
    no_close = np.ones(1)  # buy-and-hold is overwritten with the sleeves' mean below
    for k in range(m):
        sleeves = extra_acc[k, 2]
        if not sleeves > 0.0 or n_timeline == 0:
            continue
        bar_st = bar_init()
        for t in range(n_timeline):
            bar_st = bar_update(bar_st, t, equity_acc[k, t] / sleeves, False)
        trade_st = (trade_acc[k, 0], trade_acc[k, 1], trade_acc[k, 2], trade_acc[k, 3],
                    trade_acc[k, 4], trade_acc[k, 5], trade_acc[k, 6], trade_acc[k, 7],
                    trade_acc[k, 8])
        row = finalize(bar_st, trade_st, no_close, periods_per_year)
        row[_EXPOSURE] = extra_acc[k, 0] / sleeves
        row[_BUY_AND_HOLD] = extra_acc[k, 1] / sleeves
        out[k] = row
    return out


@numba.njit(cache=True, nogil=True)
def rebase_equity(equity_acc, timeline, union, sleeves, cash):
    """A group's summed sleeve equity ``(m, T_group)`` on its own ``timeline``, moved onto ``union``.

    ``union`` (sorted, a superset of ``timeline``) is the union timeline of every
    group. Between the group's timestamps its sum is carried forward (each sleeve
    is, so their sum is); before its first timestamp it is ``sleeves`` starting
    cashes, added one by one as the sleeves would have been. A container folds its
    symbols onto its own timeline, so no task waits for the union of all symbols.
    """
    m = equity_acc.shape[0]
    n_union = union.shape[0]
    n = timeline.shape[0]
    if equity_acc.shape[1] != n:
        raise ValueError("rebase_equity: equity_acc needs one column per timeline entry")
    before = 0.0
    for _ in range(sleeves):
        before += cash
    src = np.empty(n_union, dtype=np.int64)  # the group's latest timestamp at or before each union one
    j = -1
    for u in range(n_union):
        while j + 1 < n and timeline[j + 1] <= union[u]:
            j += 1
        src[u] = j
    out = np.empty((m, n_union))
    for k in range(m):
        for u in range(n_union):
            out[k, u] = before if src[u] < 0 else equity_acc[k, src[u]]
    return out
