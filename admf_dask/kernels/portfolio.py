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

Every value added into them is first rounded to a multiple of a power of two
(:func:`~admf_dask.kernels.state.fixed`: equity to 2**-20, ~1e-6 of a currency
unit; trade returns, exposure and buy-and-hold to 2**-42, counts are integers
already), so the sums are exact and the same in any order: a portfolio row is
bit-identical whichever symbols the task layout groups together, and whichever
order its parts are merged in. Exact while a sum stays below 2**53 quanta (equity
~8.6e9 summed over the sleeves, returns 2,048); beyond that the sums round as
plain float sums do.

:func:`strategy_batch_with_equity` (built-in strategy kinds) and
:func:`targets_batch_with_equity` (target matrices of user strategies) run one
symbol's batch exactly as :func:`~admf_dask.kernels.strategies.run_strategy_batch`
and :func:`~admf_dask.kernels.simulate.simulate_stats_batch` do (same per-bar
``sim_step`` and accumulators, so their returned rows are bit-identical) and add
the symbol's sleeves into the accumulators. Tasks over different symbol groups
with the same set range and the same union timeline combine with
:func:`merge_accumulators` (sums, except best = max and worst = min;
:func:`merge_trade_acc`: exact, so associative and commutative); :func:`portfolio_stats` turns the final accumulators
into rows. All symbols of the portfolio must be mapped onto the *same* union
timeline (the union over every symbol of the sweep, fixed before the tasks run),
or a group's own timeline moved onto it with :func:`rebase_equity`.

Nothing of size ``m x n`` is allocated beyond the caller's accumulators.

Time chunks and windows
-----------------------
Those two kernels are the one-chunk case of the chunk kernels
(:func:`~admf_dask.kernels.strategies.strategy_chunk`,
:func:`~admf_dask.kernels.simulate.simulate_stats_chunk`,
:func:`~admf_dask.kernels.replay.ensemble_chunk` with ``timeline_pos`` and
``equity_acc``), then :func:`~admf_dask.kernels.state.finalize_runs` and
:func:`fold_sleeves`. Out of core, the union timeline is cut into windows and
``equity_acc`` holds one window's columns: each symbol's chunk is its bars in
the window (possibly none), its ``timeline_pos`` relative to the window's first
column; before the chunk's first bar the sleeve's value is its equity before the
chunk (its cash if nothing was processed yet), after the last bar it is carried
to the window's end, as over the whole timeline. A finished window is folded into
the portfolio bar states with :func:`portfolio_fold` (``bar_update`` over the mean
curve with the global timeline index) and can be dropped; :func:`fold_sleeves`
pools each symbol's trades and extras once, at its end, from its run states;
:func:`portfolio_finalize` gives the rows. :func:`portfolio_stats` is the
one-window case. The same additions in the same order: bit-identical rows and
accumulators wherever the windows are cut.
"""
from __future__ import annotations

import numba
import numpy as np

from admf_dask.kernels.simulate import _chunk_stats_eq
from admf_dask.kernels.state import (
    BAR_WIDTH, EQUITY_QUANTUM, RATIO_QUANTUM, TRADE0, check_state, check_timeline, close_ends, cost_args,
    finalize_runs, fixed, run_state_init,
)
from admf_dask.kernels.stats import N_STATS, bar_init, bar_update, finalize, trade_init
from admf_dask.kernels.strategies import _CHUNK_EQ_KERNELS, _check

__all__ = [
    "EXTRA_WIDTH", "PORTFOLIO_STATE_WIDTH", "TRADE_ACC_WIDTH", "accumulators_init", "fold_sleeves",
    "merge_accumulators", "merge_trade_acc", "portfolio_finalize", "portfolio_fold",
    "portfolio_state_init", "portfolio_stats", "rebase_equity", "starting_equity",
    "strategy_batch_with_equity", "targets_batch_with_equity", "trade_acc_init",
]

TRADE_ACC_WIDTH = 9  # trade_init's state: n, wins, sum_pos, sum_neg, sum_ret, sum_log1p, ruined, best, worst
EXTRA_WIDTH = 3      # exposure sum, buy-and-hold sum, sleeve count
PORTFOLIO_STATE_WIDTH = BAR_WIDTH  # bar_init's state of the mean curve
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
    merged with :func:`merge_trade_acc`. Associative and commutative (the sums are
    in fixed point, see the module docstring), so partial results can be tree-reduced.
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
def _check_folds(m, trade_acc, extra_acc):
    if (trade_acc.shape[0] != m or extra_acc.shape[0] != m
            or trade_acc.shape[1] != TRADE_ACC_WIDTH or extra_acc.shape[1] != EXTRA_WIDTH):
        raise ValueError("portfolio kernels: accumulators must be equity (m, T), trade (m, 9) "
                         "and extra (m, 3) for the batch's m parameter sets")


@numba.njit(cache=True, nogil=True)
def _check_acc(n, m, timeline_pos, equity_acc, trade_acc, extra_acc):
    if n == 0:
        raise ValueError("portfolio kernels: a symbol without bars cannot be a sleeve")
    check_timeline(n, m, timeline_pos, equity_acc)
    _check_folds(m, trade_acc, extra_acc)


@numba.njit(inline="always")
def _fold_sleeve(k, row_stats, trade_st, trade_acc, extra_acc):
    # counts are integers (exact); sums of returns in fixed point (state.fixed): the same in any order
    trade_acc[k, 0] += trade_st[0]
    trade_acc[k, 1] += trade_st[1]
    trade_acc[k, 2] += fixed(trade_st[2], RATIO_QUANTUM)
    trade_acc[k, 3] += fixed(trade_st[3], RATIO_QUANTUM)
    trade_acc[k, 4] += fixed(trade_st[4], RATIO_QUANTUM)
    trade_acc[k, 5] += fixed(trade_st[5], RATIO_QUANTUM)
    trade_acc[k, 6] += trade_st[6]
    trade_acc[k, 7] = max(trade_acc[k, 7], trade_st[7])
    trade_acc[k, 8] = min(trade_acc[k, 8], trade_st[8])
    extra_acc[k, 0] += fixed(row_stats[_EXPOSURE], RATIO_QUANTUM)
    extra_acc[k, 1] += fixed(row_stats[_BUY_AND_HOLD], RATIO_QUANTUM)
    extra_acc[k, 2] += 1.0


@numba.njit(cache=True, nogil=True)
def fold_sleeves(state, rows, trade_acc, extra_acc):
    """Pool finished sleeves into the trade and extra accumulators, once per symbol at its end.

    ``state`` (m, RUN_STATE_WIDTH): the runs' final states (their trade
    accumulators); ``rows`` (m, N_STATS): their :func:`~admf_dask.kernels.state.finalize_runs`
    rows (exposure, buy-and-hold). Set ``k``'s trades are merged into
    ``trade_acc[k]`` and ``[exposure, buy_and_hold_return, 1]`` added into ``extra_acc[k]``.
    """
    m = state.shape[0]
    if rows.shape[0] != m or rows.shape[1] != N_STATS:
        raise ValueError("fold_sleeves: rows must be (m, N_STATS) for the state's m runs")
    _check_folds(m, trade_acc, extra_acc)
    for k in range(m):
        r = TRADE0
        trade_st = (state[k, r], state[k, r + 1], state[k, r + 2], state[k, r + 3], state[k, r + 4],
                    state[k, r + 5], state[k, r + 6], state[k, r + 7], state[k, r + 8])
        _fold_sleeve(k, rows[k], trade_st, trade_acc, extra_acc)


def strategy_batch_with_equity(kind, ind, idx, fparams, open_, high, low, close, timeline_pos,
                               periods_per_year, cash, commission, slippage_bps, whole_units,
                               stop_loss, take_profit, direction, equity_acc, trade_acc, extra_acc, state=None):
    """``run_strategy_batch`` on one symbol that also adds its sleeves into the accumulators.

    The one-chunk case of :func:`~admf_dask.kernels.strategies.strategy_chunk` with
    ``equity_acc``, then :func:`~admf_dask.kernels.state.finalize_runs` and
    :func:`fold_sleeves`.

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
    state : float64 (m, RUN_STATE_WIDTH), optional
        Start run states (:func:`~admf_dask.kernels.state.run_state_init`), advanced in
        place: afterwards they hold the run states at the last bar, from which a later
        chunk of new bars goes on (incremental runs keep them).

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
    kernel = _CHUNK_EQ_KERNELS.get(int(kind))
    if kernel is None:
        raise ValueError("strategy_batch_with_equity: unknown strategy kind")
    if state is None:
        state = run_state_init(idx.shape[0], float(cash))
    else:
        check_state(state, idx.shape[0], 0, 0, close.shape[0])
    kernel(ind, idx, fparams, open_, high, low, close, 0, None, state,
           *cost_args(commission, slippage_bps, whole_units, stop_loss, take_profit), int(direction),
           timeline_pos, equity_acc)
    first, last = close_ends(close)
    rows = finalize_runs(state, first, last, float(periods_per_year))
    fold_sleeves(state, rows, trade_acc, extra_acc)
    return rows


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
    :func:`admf_dask.kernels.simulate.simulate_stats_batch`'s rows. The one-chunk
    case of :func:`~admf_dask.kernels.simulate.simulate_stats_chunk` with ``equity_acc``.
    """
    n = close.shape[0]
    m = targets.shape[0]
    if (open_.shape[0] != n or high.shape[0] != n or low.shape[0] != n
            or targets.shape[1] != n):
        raise ValueError(
            "targets_batch_with_equity: open, high, low, close and targets need the same number of bars")
    _check_acc(n, m, timeline_pos, equity_acc, trade_acc, extra_acc)
    state = run_state_init(m, cash)
    _chunk_stats_eq(open_, high, low, close, targets, 0, None, state, commission, slippage_bps,
                    whole_units, stop_loss, take_profit, timeline_pos, equity_acc)
    first, last = close_ends(close)
    rows = finalize_runs(state, first, last, periods_per_year)
    fold_sleeves(state, rows, trade_acc, extra_acc)
    return rows


# ---------------------------------------------------------------- portfolio statistics


@numba.njit(cache=True, nogil=True)
def portfolio_state_init(m):
    """Empty portfolio bar states, float64 ``(m, PORTFOLIO_STATE_WIDTH)``: ``bar_init()`` per row."""
    st = bar_init()
    out = np.empty((m, PORTFOLIO_STATE_WIDTH))
    for k in range(m):
        for j in range(PORTFOLIO_STATE_WIDTH):
            out[k, j] = st[j]
    return out


@numba.njit(inline="always")
def _pfold(equity_acc, sleeves, t0, pstate):
    m = equity_acc.shape[0]
    n_window = equity_acc.shape[1]
    for k in range(m):
        s = sleeves[k]
        if not s > 0.0:
            continue
        p = pstate[k]
        bar_st = (p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11],
                  p[12], p[13])
        for j in range(n_window):
            bar_st = bar_update(bar_st, t0 + j, equity_acc[k, j] / s, False)
        for j in range(PORTFOLIO_STATE_WIDTH):
            p[j] = bar_st[j]


@numba.njit(cache=True, nogil=True)
def portfolio_fold(equity_acc, sleeves, t0, pstate):
    """Fold a window of the summed equity into the portfolio bar states.

    ``equity_acc`` (m, T_w): the window's columns of the union timeline, which
    start at global timeline index ``t0`` (the columns folded before);
    ``sleeves`` float64 (m,): each row's sleeve count (``extra_acc[:, 2]`` once
    every symbol is folded); ``pstate`` (m, PORTFOLIO_STATE_WIDTH) from
    :func:`portfolio_state_init`, updated in place: ``bar_update`` over the mean
    curve ``equity_acc[k, j] / sleeves[k]`` at global index ``t0 + j``. Rows
    without a sleeve are left alone.
    """
    m = equity_acc.shape[0]
    if sleeves.shape[0] != m or pstate.shape[0] != m or pstate.shape[1] != PORTFOLIO_STATE_WIDTH:
        raise ValueError("portfolio_fold: sleeves must be (m,) and pstate (m, PORTFOLIO_STATE_WIDTH)")
    for k in range(m):
        if sleeves[k] > 0.0 and pstate[k, PORTFOLIO_STATE_WIDTH - 1] != t0:
            raise ValueError("portfolio_fold: t0 must equal the timeline columns already folded")
    _pfold(equity_acc, sleeves, t0, pstate)


@numba.njit(cache=True, nogil=True)
def portfolio_finalize(pstate, trade_acc, extra_acc, periods_per_year):
    """The portfolio rows (m, N_STATS) from the folded bar states and the pooled accumulators.

    Bar statistics from ``pstate`` (:func:`portfolio_fold`), pooled trade
    statistics from ``trade_acc[k]``, ``exposure`` and ``buy_and_hold_return`` the
    sleeve means (module docstring). A row with no sleeve (or no timeline) is all NaN.
    """
    m = pstate.shape[0]
    if (trade_acc.shape[0] != m or extra_acc.shape[0] != m
            or trade_acc.shape[1] != TRADE_ACC_WIDTH or extra_acc.shape[1] != EXTRA_WIDTH):
        raise ValueError("portfolio_stats: accumulators must be equity (m, T), trade (m, 9) and extra (m, 3)")
    out = np.full((m, N_STATS), np.nan)
    for k in range(m):
        sleeves = extra_acc[k, 2]
        p = pstate[k]
        if not sleeves > 0.0 or p[PORTFOLIO_STATE_WIDTH - 1] == 0.0:
            continue
        bar_st = (p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11],
                  p[12], p[13])
        trade_st = (trade_acc[k, 0], trade_acc[k, 1], trade_acc[k, 2], trade_acc[k, 3],
                    trade_acc[k, 4], trade_acc[k, 5], trade_acc[k, 6], trade_acc[k, 7],
                    trade_acc[k, 8])
        # buy-and-hold is overwritten with the sleeves' mean below
        row = finalize(bar_st, trade_st, 1.0, 1.0, periods_per_year)
        row[_EXPOSURE] = extra_acc[k, 0] / sleeves
        row[_BUY_AND_HOLD] = extra_acc[k, 1] / sleeves
        out[k] = row
    return out


@numba.njit(cache=True, nogil=True)
def portfolio_stats(equity_acc, trade_acc, extra_acc, periods_per_year):
    """The equal-weight portfolio row of each parameter set: float64 (m, N_STATS), ``STAT_NAMES`` order.

    Mean curve ``equity_acc[k] / sleeves`` through ``bar_update`` over the union
    timeline and ``finalize``; pooled trade statistics from ``trade_acc[k]``;
    ``exposure`` and ``buy_and_hold_return`` the sleeve means (module docstring).
    A row with no sleeve (or an empty timeline) is all NaN. The one-window case
    of :func:`portfolio_fold` and :func:`portfolio_finalize`.
    """
    m = equity_acc.shape[0]
    if (trade_acc.shape[0] != m or extra_acc.shape[0] != m
            or trade_acc.shape[1] != TRADE_ACC_WIDTH or extra_acc.shape[1] != EXTRA_WIDTH):
        raise ValueError("portfolio_stats: accumulators must be equity (m, T), trade (m, 9) and extra (m, 3)")
    pstate = portfolio_state_init(m)
    _pfold(equity_acc, extra_acc[:, 2], 0, pstate)
    return portfolio_finalize(pstate, trade_acc, extra_acc, periods_per_year)


@numba.njit(cache=True, nogil=True)
def starting_equity(m, sleeves, cash):
    """float64 (m,): ``sleeves`` starting cashes added one by one, as the sleeves' curves were.

    The ``before`` of :func:`rebase_equity` for a group rebased over the whole series.
    """
    before = 0.0
    for _ in range(sleeves):
        before += fixed(cash, EQUITY_QUANTUM)  # as _sleeve_add adds a sleeve's value before its first bar
    return np.full(m, before)


@numba.njit(cache=True, nogil=True)
def rebase_equity(equity_acc, timeline, union, before):
    """A group's summed sleeve equity ``(m, T_group)`` on its own ``timeline``, moved onto ``union``.

    ``union`` (sorted, a superset of ``timeline``) is the union timeline of every
    group (or a window of it, with the group's timestamps in that window). Between
    the group's timestamps its sum is carried forward (each sleeve is, so their
    sum is); before its first timestamp it is ``before[k]`` (float64 (m,)): the
    group's value carried in from the previous window, or over the whole series
    its sleeves' starting cashes added one by one as the sleeves would have been
    (:func:`starting_equity`). A container folds its symbols onto its own
    timeline, so no task waits for the union of all symbols.
    """
    m = equity_acc.shape[0]
    n_union = union.shape[0]
    n = timeline.shape[0]
    if equity_acc.shape[1] != n:
        raise ValueError("rebase_equity: equity_acc needs one column per timeline entry")
    if before.shape[0] != m:
        raise ValueError("rebase_equity: before needs one value per row of equity_acc")
    src = np.empty(n_union, dtype=np.int64)  # the group's latest timestamp at or before each union one
    j = -1
    for u in range(n_union):
        while j + 1 < n and timeline[j + 1] <= union[u]:
            j += 1
        src[u] = j
    out = np.empty((m, n_union))
    for k in range(m):
        b = before[k]
        for u in range(n_union):
            out[k, u] = b if src[u] < 0 else equity_acc[k, src[u]]
    return out
