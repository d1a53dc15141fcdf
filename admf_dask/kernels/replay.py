"""Signal replay: stored target streams -> ensemble targets -> statistics rows.

Kernel rules (every module in ``admf_dask.kernels``): numpy and numba only (no
pandas, dask or fsspec); compiled functions use ``@numba.njit(cache=True, nogil=True)``;
float64 price arrays in (inputs may be read-only); kernels allocate their outputs.
Like :func:`admf_dask.kernels.portfolio.targets_batch_with_equity`, the
``*_with_equity`` kernel also adds into accumulators the caller owns.

Phase 1 of a replay stores each strategy configuration's target series (int8
``-1 / 0 / +1`` per bar, already clipped to its direction mode) as sparse change
events (:func:`events_from_targets`, :func:`dense_targets`). Phase 2 evaluates
many ensemble weight vectors over ``K`` of those signal streams without
recomputing indicators (:func:`ensemble_batch_with_equity`, :func:`ensemble_batch`).

Events
------
Row ``k``'s events are the bars ``t`` where ``targets[k, t] != targets[k, t - 1]``
(``targets[k, -1]`` taken as 0) with the new value: ``bar[ptr[k]:ptr[k + 1]]``,
``value[ptr[k]:ptr[k + 1]]`` (CSR layout, ``ptr`` int64 ``(K + 1,)``, ``bar``
int64, ``value`` int8). A row that starts flat and never trades has no events.

Combination rules
-----------------
For weight vector ``w`` (one row of ``weights``, ``K`` floats) and the signal
states ``s_k`` at bar ``t``, the weighted sum is accumulated left to right in
float64, ``v = ((0.0 + w[0] * s_0) + w[1] * s_1) + ... + w[K-1] * s_{K-1}``
(this order is the definition; ``w[k] * s_k`` is exact, so only the additions
round):

* ``VOTE`` (0): target ``sign(v)`` if ``|v| >= threshold``, else 0; an int
  target, traded all-in.
* ``FRACTION`` (1): target ``min(max(v, -1), 1)``, a float target read by
  :func:`~admf_dask.kernels.simulate.sim_step` as a signed fraction of equity
  (a change of fraction closes and reopens the position; see
  :mod:`admf_dask.kernels.simulate`).

The target is then clipped to the direction mode as the strategy kernels do
(``LONG_SHORT`` 0 keeps it, ``LONG_ONLY`` 1 maps negatives to 0, ``SHORT_ONLY``
-1 maps positives to 0) and simulated bar by bar with ``sim_step``: the same
execution model, costs and statistics as every other backtest. A weight vector
that selects one row (one-hot, ``FRACTION``, or ``VOTE`` with a threshold in
``(0, 1]``) therefore gives bit for bit the row of that signal's own backtest
(``simulate_stats_batch`` / ``targets_batch_with_equity``); NaN weights give a
NaN sum, which is flat under both rules.

Cost
----
The combined target changes only on bars where some signal changes, so each call
first finds the union of the ``K`` rows' change bars (``S`` segments) and the
signal states on each segment, once; each weight vector then costs ``K x S``
multiply-adds for its segment targets plus the ``n``-bar simulation, which
dominates (``S`` is a few hundred for a few dozen changes per row).
"""
from __future__ import annotations

import numba
import numpy as np

from admf_dask.kernels.portfolio import _check_acc, _fold_sleeve, _gaps, _sleeve_add
from admf_dask.kernels.simulate import sim_init, sim_step
from admf_dask.kernels.stats import N_STATS, bar_init, finalize, trade_init
from admf_dask.kernels.strategies import LONG_ONLY, LONG_SHORT, SHORT_ONLY

__all__ = [
    "FRACTION", "VOTE", "dense_targets", "ensemble_batch", "ensemble_batch_with_equity",
    "events_from_targets",
]

VOTE = 0
FRACTION = 1


@numba.njit(cache=True, nogil=True)
def events_from_targets(targets):
    """Sparse change events of each row of an int (K, n) target matrix.

    Every bar ``t`` where ``targets[k, t] != targets[k, t - 1]`` (with
    ``targets[k, -1]`` taken as 0). Returns ``(ptr, bar, value)``: ``ptr`` int64
    ``(K + 1,)``, CSR style; row ``k``'s events are ``bar[ptr[k]:ptr[k + 1]]``
    (int64, increasing) and ``value[ptr[k]:ptr[k + 1]]`` (int8, the new target).
    Values must fit int8 (targets are -1 / 0 / +1).

    Examples
    --------
    >>> targets = np.array([[0, 1, 1, -1], [1, 1, 0, 0]], np.int8)  # doctest: +SKIP
    >>> events_from_targets(targets)                                  # doctest: +SKIP
    (array([0, 2, 4]), array([1, 3, 0, 2]), array([ 1, -1,  1,  0], dtype=int8))
    """
    k_rows = targets.shape[0]
    n = targets.shape[1]
    ptr = np.zeros(k_rows + 1, dtype=np.int64)
    for k in range(k_rows):
        prev = 0
        count = 0
        for t in range(n):
            v = targets[k, t]
            if v != prev:
                count += 1
                prev = v
        ptr[k + 1] = ptr[k] + count
    bar = np.empty(ptr[k_rows], dtype=np.int64)
    value = np.empty(ptr[k_rows], dtype=np.int8)
    for k in range(k_rows):
        prev = 0
        e = ptr[k]
        for t in range(n):
            v = targets[k, t]
            if v != prev:
                if v < -128 or v > 127:
                    raise ValueError("events_from_targets: target values must fit int8")
                bar[e] = t
                value[e] = v
                e += 1
                prev = v
    return ptr, bar, value


@numba.njit(cache=True, nogil=True)
def dense_targets(ptr, bar, value, n):
    """The int8 (K, n) target matrix of ``events_from_targets``' events: its exact inverse."""
    k_rows = ptr.shape[0] - 1
    if k_rows < 0:
        raise ValueError("dense_targets: ptr needs K + 1 entries")
    out = np.zeros((k_rows, n), dtype=np.int8)
    for k in range(k_rows):
        e0 = ptr[k]
        e1 = ptr[k + 1]
        if e0 > e1 or e0 < 0 or e1 > bar.shape[0] or e1 > value.shape[0]:
            raise ValueError("dense_targets: ptr must be non-decreasing and within the events")
        prev_bar = -1
        for e in range(e0, e1):
            t = bar[e]
            if t <= prev_bar or t >= n:
                raise ValueError("dense_targets: a row's event bars must increase within [0, n)")
            prev_bar = t
        for e in range(e0, e1):
            t1 = bar[e + 1] if e + 1 < e1 else n
            v = value[e]
            for t in range(bar[e], t1):
                out[k, t] = v
    return out


@numba.njit(cache=True, nogil=True)
def _segments(signals):
    """Union of the rows' change bars and the signal states on each segment.

    Returns ``start`` int64 ``(S + 1,)`` (segment ``s`` is bars
    ``start[s] .. start[s + 1] - 1``; ``start[0] = 0``, ``start[S] = n``) and
    ``states`` float64 ``(K, S)``.
    """
    k_rows = signals.shape[0]
    n = signals.shape[1]
    for k in range(k_rows):
        for t in range(n):
            v = signals[k, t]
            if v < -1 or v > 1:
                raise ValueError("ensemble kernels: signals must be -1, 0 or +1")
    n_seg = 1 if n > 0 else 0
    for t in range(1, n):
        for k in range(k_rows):
            if signals[k, t] != signals[k, t - 1]:
                n_seg += 1
                break
    start = np.empty(n_seg + 1, dtype=np.int64)
    states = np.empty((k_rows, n_seg))
    s = 0
    for t in range(n):
        new = t == 0
        if not new:
            for k in range(k_rows):
                if signals[k, t] != signals[k, t - 1]:
                    new = True
                    break
        if new:
            start[s] = t
            for k in range(k_rows):
                states[k, s] = float(signals[k, t])
            s += 1
    start[n_seg] = n
    return start, states


@numba.njit(inline="always")
def _ensemble(vote, with_acc, seg_target, signals, weights, threshold, direction, open_, high,
              low, close, timeline_pos, periods_per_year, cash, commission, slippage_bps,
              whole_units, stop_loss, take_profit, equity_acc, trade_acc, extra_acc):
    # ``vote`` and ``with_acc`` are constants at each call site and ``seg_target``
    # is int64 (vote) or float64 (fraction), so sim_step compiles the all-in int
    # path for votes and the fractional path for fractions.
    m = weights.shape[0]
    k_rows = weights.shape[1]
    n = close.shape[0]
    out = np.empty((m, N_STATS))
    start, states = _segments(signals)
    n_seg = start.shape[0] - 1
    comb = np.empty(n_seg)
    dummy_f = np.empty(0)
    dummy_i = np.empty((0, 3), dtype=np.int64)
    dummy_t = np.empty((0, 5))
    equity_buf = np.empty(n if with_acc else 0)
    gaps = _gaps(timeline_pos) if with_acc else np.empty(0, dtype=np.int64)
    for row in range(m):
        # Weighted sum per segment, left to right over k (vectorised over segments).
        for s in range(n_seg):
            comb[s] = 0.0
        for k in range(k_rows):
            wk = weights[row, k]
            st = states[k]
            for s in range(n_seg):
                comb[s] += wk * st[s]
        for s in range(n_seg):
            v = comb[s]
            if vote:
                x = 0
                if abs(v) >= threshold:
                    x = (v > 0.0) - (v < 0.0)
                if direction == LONG_ONLY:
                    x = max(x, 0)
                elif direction == SHORT_ONLY:
                    x = min(x, 0)
                seg_target[s] = x
            else:
                y = min(max(v, -1.0), 1.0) if v == v else 0.0  # NaN: flat
                if direction == LONG_ONLY:
                    y = max(y, 0.0)
                elif direction == SHORT_ONLY:
                    y = min(y, 0.0)
                seg_target[s] = y
        sim = sim_init(cash)
        bar_st = bar_init()
        trade_st = trade_init()
        # Bar 0 has no earlier target (sim_step ignores ``raw`` there); bar t
        # trades the target of bar t - 1, so segment s feeds bars
        # start[s] + 1 .. start[s + 1].
        raw = seg_target[0]
        sim, bar_st, trade_st = sim_step(
            sim, bar_st, trade_st, 0, raw, open_[0], high[0], low[0], close[0],
            commission, slippage_bps, whole_units, stop_loss, take_profit, False,
            dummy_f, dummy_f, dummy_i, dummy_t)
        if with_acc:
            equity_buf[0] = bar_st[1]
        for s in range(n_seg):
            raw = seg_target[s]
            t1 = min(start[s + 1] + 1, n)
            for t in range(start[s] + 1, t1):
                sim, bar_st, trade_st = sim_step(
                    sim, bar_st, trade_st, t, raw, open_[t], high[t], low[t], close[t],
                    commission, slippage_bps, whole_units, stop_loss, take_profit, False,
                    dummy_f, dummy_f, dummy_i, dummy_t)
                if with_acc:
                    equity_buf[t] = bar_st[1]
        out[row] = finalize(bar_st, trade_st, close, periods_per_year)
        if with_acc:
            _sleeve_add(equity_acc[row], timeline_pos, gaps, equity_buf, cash)
            _fold_sleeve(row, out[row], trade_st, trade_acc, extra_acc)
    return out


@numba.njit(cache=True, nogil=True)
def _vote_eq(signals, weights, threshold, direction, o, h, lo, c, pos, ppy, cash, comm, slip,
             whole, sl, tp, eq, tr, ex):
    buf = np.empty(signals.shape[1] + 1, dtype=np.int64)
    return _ensemble(True, True, buf, signals, weights, threshold, direction, o, h, lo, c, pos, ppy,
                     cash, comm, slip, whole, sl, tp, eq, tr, ex)


@numba.njit(cache=True, nogil=True)
def _fraction_eq(signals, weights, threshold, direction, o, h, lo, c, pos, ppy, cash, comm, slip,
                 whole, sl, tp, eq, tr, ex):
    buf = np.empty(signals.shape[1] + 1)
    return _ensemble(False, True, buf, signals, weights, threshold, direction, o, h, lo, c, pos,
                     ppy, cash, comm, slip, whole, sl, tp, eq, tr, ex)


@numba.njit(cache=True, nogil=True)
def _vote_rows(signals, weights, threshold, direction, o, h, lo, c, ppy, cash, comm, slip, whole, sl,
          tp):
    buf = np.empty(signals.shape[1] + 1, dtype=np.int64)
    pos = np.empty(0, dtype=np.int64)
    eq = np.empty((0, 0))
    return _ensemble(True, False, buf, signals, weights, threshold, direction, o, h, lo, c, pos, ppy,
                     cash, comm, slip, whole, sl, tp, eq, eq, eq)


@numba.njit(cache=True, nogil=True)
def _fraction_rows(signals, weights, threshold, direction, o, h, lo, c, ppy, cash, comm, slip, whole,
              sl, tp):
    buf = np.empty(signals.shape[1] + 1)
    pos = np.empty(0, dtype=np.int64)
    eq = np.empty((0, 0))
    return _ensemble(False, False, buf, signals, weights, threshold, direction, o, h, lo, c, pos,
                     ppy, cash, comm, slip, whole, sl, tp, eq, eq, eq)


@numba.njit(cache=True, nogil=True)
def _check_ensemble(signals, weights, rule, direction, open_, high, low, close):
    n = close.shape[0]
    if open_.shape[0] != n or high.shape[0] != n or low.shape[0] != n or signals.shape[1] != n:
        raise ValueError("ensemble kernels: open, high, low, close and the signal rows need the "
                         "same number of bars")
    if n == 0:
        raise ValueError("ensemble kernels: no bars")
    if weights.shape[1] != signals.shape[0]:
        raise ValueError("ensemble kernels: weights must be (m, K) for K signal rows")
    if rule != VOTE and rule != FRACTION:
        raise ValueError("ensemble kernels: rule must be VOTE (0) or FRACTION (1)")
    if direction != LONG_SHORT and direction != LONG_ONLY and direction != SHORT_ONLY:
        raise ValueError("ensemble kernels: direction must be LONG_SHORT (0), LONG_ONLY (1) "
                         "or SHORT_ONLY (-1)")


@numba.njit(cache=True, nogil=True)
def ensemble_batch_with_equity(signals, weights, rule, threshold, direction, open_, high, low,
                               close, timeline_pos, periods_per_year, cash, commission,
                               slippage_bps, whole_units, stop_loss, take_profit, equity_acc,
                               trade_acc, extra_acc):
    """Backtest ``m`` ensembles of ``K`` stored signals on one symbol; add their sleeves.

    Parameters
    ----------
    signals : int (K, n)
        The signal streams, -1 / 0 / +1 per bar (e.g. ``dense_targets`` of stored events).
    weights : float64 (m, K)
        One ensemble weight vector per row.
    rule : int
        ``VOTE`` (0) or ``FRACTION`` (1); see the module docstring.
    threshold : float
        ``VOTE`` only: the minimum ``|weighted sum|`` for a position.
    direction : int
        ``LONG_SHORT`` 0, ``LONG_ONLY`` 1 or ``SHORT_ONLY`` -1 (as ``kernels.strategies``),
        applied to the combined target.
    open_, high, low, close, timeline_pos, periods_per_year, cash, commission, slippage_bps,
    whole_units, stop_loss, take_profit, equity_acc, trade_acc, extra_acc
        As :func:`admf_dask.kernels.portfolio.targets_batch_with_equity`.

    Returns
    -------
    float64 (m, N_STATS)
        The statistics row of each ensemble on this symbol, computed exactly as
        ``targets_batch_with_equity`` does on the combined target rows; row ``k``'s
        sleeve is added into row ``k`` of the accumulators the same way.
    """
    _check_ensemble(signals, weights, rule, direction, open_, high, low, close)
    _check_acc(close.shape[0], weights.shape[0], timeline_pos, equity_acc, trade_acc, extra_acc)
    cash = float(cash)
    threshold = float(threshold)
    if rule == VOTE:
        return _vote_eq(signals, weights, threshold, direction, open_, high, low, close,
                        timeline_pos, periods_per_year, cash, commission, slippage_bps,
                        whole_units, stop_loss, take_profit, equity_acc, trade_acc, extra_acc)
    return _fraction_eq(signals, weights, threshold, direction, open_, high, low, close,
                        timeline_pos, periods_per_year, cash, commission, slippage_bps,
                        whole_units, stop_loss, take_profit, equity_acc, trade_acc, extra_acc)


@numba.njit(cache=True, nogil=True)
def ensemble_batch(signals, weights, rule, threshold, direction, open_, high, low, close,
                   periods_per_year, cash, commission, slippage_bps, whole_units, stop_loss,
                   take_profit):
    """:func:`ensemble_batch_with_equity` without accumulators: the (m, N_STATS) rows only.

    Bit-identical rows; equal to ``simulate_stats_batch`` on the combined targets.
    """
    _check_ensemble(signals, weights, rule, direction, open_, high, low, close)
    cash = float(cash)
    threshold = float(threshold)
    if rule == VOTE:
        return _vote_rows(signals, weights, threshold, direction, open_, high, low, close,
                     periods_per_year, cash, commission, slippage_bps, whole_units, stop_loss,
                     take_profit)
    return _fraction_rows(signals, weights, threshold, direction, open_, high, low, close,
                     periods_per_year, cash, commission, slippage_bps, whole_units, stop_loss,
                     take_profit)
