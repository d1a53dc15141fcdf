"""Fused strategy kernels: indicator arrays -> targets computed inline -> statistics rows.

Kernel rules (every module in ``admf_dask.kernels``): numpy and numba only (no
pandas, dask or fsspec); compiled functions use ``@numba.njit(cache=True, nogil=True)``;
float64 arrays in (inputs may be read-only); kernels allocate their outputs.

One call evaluates a whole batch of parameter sets of one built-in strategy on
one symbol. The unique indicator arrays the batch needs are stacked once into
``ind`` (float64, ``k x n``: each unique SMA window is one row, shared by every
set that uses it, as vectorbt's ``ma_cache_nb``); a parameter set is a row of
``idx`` (which rows of ``ind`` it reads) and of ``fparams`` (its float
parameters, e.g. RSI thresholds). For each set, one pass over the bars computes
the target of bar ``t`` from the indicators at ``t`` (and ``t - 1``) and feeds
the target of bar ``t - 1`` to :func:`admf_dask.kernels.simulate.sim_step`, the
same per-bar step the reference :func:`~admf_dask.kernels.simulate.simulate`
runs, so the rows equal ``compute_stats(*simulate(...))`` on the same targets.
Nothing of size bars x parameter sets (or even one target array) is allocated.

Strategy kinds and their target rule
------------------------------------
``signal_step`` gives the strategy's *state* at bar ``t`` from its state at
``t - 1`` (0 before the first signal); the traded target is the state clipped
by the direction mode (``LONG_SHORT`` keeps it, ``LONG_ONLY`` maps -1 to 0,
``SHORT_ONLY`` maps +1 to 0). Comparisons with NaN are false, so warm-up bars
never fire a signal and the state is held through them.

==================  ======================  ==================================================
kind                idx slots               state at bar t
==================  ======================  ==================================================
CROSS               a, b                    +1 when a crosses above b (``a[t] > b[t]`` and
                                            ``a[t-1] <= b[t-1]``), -1 when it crosses below
                                            (mirrored), else held
RSI                 rsi                     +1 when ``rsi[t] < lower``, -1 when
                                            ``rsi[t] > upper``, else held
BB_REVERSION        middle, upper, lower    +1 when ``close < lower``, -1 when
                                            ``close > upper``; a long goes flat once
                                            ``close >= middle``, a short once
                                            ``close <= middle``; else held
BB_BREAKOUT         upper, lower            +1 when ``close > upper``, -1 when
                                            ``close < lower``, else held
DONCHIAN            upper, lower            +1 when ``close[t] > upper[t-1]``, -1 when
                                            ``close[t] < lower[t-1]`` (the channel of the
                                            bars before t), else held
MOMENTUM            roc                     sign of ``roc[t]`` (0 while NaN)
==================  ======================  ==================================================
"""
from __future__ import annotations

import numba
import numpy as np

from admf_dask.kernels.simulate import sim_init, sim_step
from admf_dask.kernels.stats import N_STATS, bar_init, finalize, trade_init

__all__ = [
    "BB_BREAKOUT", "BB_REVERSION", "CROSS", "DONCHIAN", "LONG_ONLY", "LONG_SHORT",
    "MOMENTUM", "RSI", "SHORT_ONLY", "run_cross_batch", "run_strategy_batch",
    "signal_step", "strategy_targets",
]

CROSS = 0
RSI = 1
BB_REVERSION = 2
BB_BREAKOUT = 3
DONCHIAN = 4
MOMENTUM = 5

LONG_SHORT = 0
LONG_ONLY = 1
SHORT_ONLY = -1


@numba.njit(cache=True, nogil=True)
def signal_step(kind, ind, i0, i1, i2, p0, p1, close, t, state):
    """The strategy state at bar ``t`` (-1 / 0 / +1) given its state at ``t - 1``.

    Reads only bars ``t`` and ``t - 1`` of ``ind`` rows ``i0, i1, i2`` and of
    ``close``; ``p0, p1`` are the float parameters (RSI ``lower, upper``).
    """
    if kind == CROSS:
        if t == 0:
            return state
        a1 = ind[i0, t]
        b1 = ind[i1, t]
        a0 = ind[i0, t - 1]
        b0 = ind[i1, t - 1]
        if a1 > b1 and a0 <= b0:
            return 1
        if a1 < b1 and a0 >= b0:
            return -1
        return state
    if kind == RSI:
        r = ind[i0, t]
        if r < p0:
            return 1
        if r > p1:
            return -1
        return state
    if kind == BB_REVERSION:
        c = close[t]
        if c < ind[i2, t]:
            return 1
        if c > ind[i1, t]:
            return -1
        if state > 0 and c >= ind[i0, t]:
            return 0
        if state < 0 and c <= ind[i0, t]:
            return 0
        return state
    if kind == BB_BREAKOUT:
        c = close[t]
        if c > ind[i0, t]:
            return 1
        if c < ind[i1, t]:
            return -1
        return state
    if kind == DONCHIAN:
        if t == 0:
            return state
        c = close[t]
        if c > ind[i0, t - 1]:
            return 1
        if c < ind[i1, t - 1]:
            return -1
        return state
    # MOMENTUM
    r = ind[i0, t]
    if r > 0.0:
        return 1
    if r < 0.0:
        return -1
    return 0


@numba.njit(cache=True, nogil=True)
def _clip(state, direction):
    if direction == LONG_ONLY:
        return max(state, 0)
    if direction == SHORT_ONLY:
        return min(state, 0)
    return state


@numba.njit(cache=True, nogil=True)
def _check(ind, idx, fparams, open_, high, low, close):
    n = close.shape[0]
    if open_.shape[0] != n or high.shape[0] != n or low.shape[0] != n or ind.shape[1] != n:
        raise ValueError("strategy kernels: open, high, low, close and the indicator rows "
                         "need the same number of bars")
    if idx.shape[0] != fparams.shape[0] or idx.shape[1] != 3 or fparams.shape[1] != 2:
        raise ValueError("strategy kernels: idx must be (m, 3) and fparams (m, 2)")
    for k in range(idx.shape[0]):
        for j in range(3):
            if idx[k, j] < 0 or idx[k, j] >= ind.shape[0]:
                raise ValueError("strategy kernels: idx points outside the indicator rows")


@numba.njit(inline="always")
def _batch(kind, ind, idx, fparams, open_, high, low, close, periods_per_year, cash, commission,
           slippage_bps, whole_units, stop_loss, take_profit, direction):
    # Inlined into one kernel per kind, where ``kind`` is a constant: the signal
    # rule then compiles to straight-line code in the bar loop (3x faster than
    # branching on a runtime kind every bar).
    m = idx.shape[0]
    n = close.shape[0]
    out = np.empty((m, N_STATS))
    dummy_f = np.empty(0)
    dummy_i = np.empty((0, 3), dtype=np.int64)
    dummy_t = np.empty((0, 5))
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
        out[k] = finalize(bar_st, trade_st, close, periods_per_year)
    return out


@numba.njit(cache=True, nogil=True)
def _batch_cross(ind, idx, fparams, o, h, lo, c, ppy, cash, comm, slip, whole, sl, tp, direction):
    return _batch(CROSS, ind, idx, fparams, o, h, lo, c, ppy, cash, comm, slip, whole, sl, tp, direction)


@numba.njit(cache=True, nogil=True)
def _batch_rsi(ind, idx, fparams, o, h, lo, c, ppy, cash, comm, slip, whole, sl, tp, direction):
    return _batch(RSI, ind, idx, fparams, o, h, lo, c, ppy, cash, comm, slip, whole, sl, tp, direction)


@numba.njit(cache=True, nogil=True)
def _batch_bb_reversion(ind, idx, fparams, o, h, lo, c, ppy, cash, comm, slip, whole, sl, tp, direction):
    return _batch(BB_REVERSION, ind, idx, fparams, o, h, lo, c, ppy, cash, comm, slip, whole, sl, tp, direction)


@numba.njit(cache=True, nogil=True)
def _batch_bb_breakout(ind, idx, fparams, o, h, lo, c, ppy, cash, comm, slip, whole, sl, tp, direction):
    return _batch(BB_BREAKOUT, ind, idx, fparams, o, h, lo, c, ppy, cash, comm, slip, whole, sl, tp, direction)


@numba.njit(cache=True, nogil=True)
def _batch_donchian(ind, idx, fparams, o, h, lo, c, ppy, cash, comm, slip, whole, sl, tp, direction):
    return _batch(DONCHIAN, ind, idx, fparams, o, h, lo, c, ppy, cash, comm, slip, whole, sl, tp, direction)


@numba.njit(cache=True, nogil=True)
def _batch_momentum(ind, idx, fparams, o, h, lo, c, ppy, cash, comm, slip, whole, sl, tp, direction):
    return _batch(MOMENTUM, ind, idx, fparams, o, h, lo, c, ppy, cash, comm, slip, whole, sl, tp, direction)


def run_strategy_batch(kind, ind, idx, fparams, open_, high, low, close, periods_per_year,
                       cash=10_000.0, commission=0.0, slippage_bps=0.0, whole_units=False,
                       stop_loss=np.nan, take_profit=np.nan, direction=LONG_SHORT):
    """Statistics rows of ``m`` parameter sets of one strategy kind on one symbol.

    Parameters
    ----------
    kind : int
        ``CROSS``, ``RSI``, ``BB_REVERSION``, ``BB_BREAKOUT``, ``DONCHIAN`` or ``MOMENTUM``.
    ind : float64 (k, n)
        The unique indicator arrays of the batch, one per row.
    idx : int64 (m, 3)
        Per parameter set, the rows of ``ind`` it reads (see the module table;
        unused slots may hold any valid row).
    fparams : float64 (m, 2)
        Per parameter set, its float parameters (RSI: lower, upper; else unused).
    open_, high, low, close : float64 (n,)
        Bar prices.
    periods_per_year, cash, commission, slippage_bps, whole_units, stop_loss, take_profit
        As :func:`admf_dask.kernels.simulate.simulate_stats`.
    direction : int
        ``LONG_SHORT`` (0), ``LONG_ONLY`` (1) or ``SHORT_ONLY`` (-1).

    Returns
    -------
    float64 (m, N_STATS), rows ordered as ``STAT_NAMES``.
    """
    # Dispatch here, in Python, not in a compiled function: numba compiles every branch
    # of a compiled dispatcher, and only the kind in use should pay for compilation.
    _check(ind, idx, fparams, open_, high, low, close)
    kernel = _BATCH_KERNELS.get(int(kind))
    if kernel is None:
        raise ValueError("run_strategy_batch: unknown strategy kind")
    return kernel(ind, idx, fparams, open_, high, low, close, float(periods_per_year), float(cash),
                  float(commission), float(slippage_bps), bool(whole_units), float(stop_loss),
                  float(take_profit), int(direction))


_BATCH_KERNELS = {CROSS: _batch_cross, RSI: _batch_rsi, BB_REVERSION: _batch_bb_reversion,
                  BB_BREAKOUT: _batch_bb_breakout, DONCHIAN: _batch_donchian, MOMENTUM: _batch_momentum}


def run_cross_batch(ind, fast_idx, slow_idx, open_, high, low, close, periods_per_year,
                    cash=10_000.0, commission=0.0, slippage_bps=0.0, whole_units=False,
                    stop_loss=np.nan, take_profit=np.nan, direction=LONG_SHORT):
    """``run_strategy_batch`` for crosses of row ``fast_idx[k]`` over row ``slow_idx[k]``.

    Examples
    --------
    >>> from admf_dask.kernels.indicators import sma_many
    >>> close = 100 + np.sin(np.arange(300) / 9.0) * 5
    >>> ind = sma_many(close, [5, 10, 20])
    >>> rows = run_cross_batch(ind, np.array([0, 1]), np.array([2, 2]), close, close, close,
    ...                        close, 252.0, 10_000.0, 0.001)
    >>> rows.shape
    (2, 17)
    """
    m = fast_idx.shape[0]
    idx = np.column_stack([fast_idx, slow_idx, slow_idx]).astype(np.int64)
    return run_strategy_batch(CROSS, ind, idx, np.zeros((m, 2)), open_, high, low, close,
                              periods_per_year, cash, commission, slippage_bps, whole_units,
                              stop_loss, take_profit, direction)


@numba.njit(cache=True, nogil=True)
def strategy_targets(kind, ind, idx, fparams, close, direction=LONG_SHORT):
    """Target arrays (int8, m x n) of the batch: the rule ``run_strategy_batch`` trades.

    For the single-run reference path (``simulate`` needs a target array); a
    sweep uses ``run_strategy_batch``, which never builds these.
    """
    m = idx.shape[0]
    n = close.shape[0]
    out = np.empty((m, n), dtype=np.int8)
    for k in range(m):
        state = 0
        for t in range(n):
            state = signal_step(kind, ind, idx[k, 0], idx[k, 1], idx[k, 2], fparams[k, 0],
                                fparams[k, 1], close, t, state)
            out[k, t] = _clip(state, direction)
    return out
