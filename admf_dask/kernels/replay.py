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

Chunks
------
A symbol's bars can be replayed in time chunks (:mod:`admf_dask.kernels.state`):
:func:`ensemble_chunk` advances the ensembles' run states over a chunk's signal
rows (the pending combined target, a fraction for ``FRACTION``, is carried in
the state; the segments are found per chunk), :func:`events_from_targets_chunk`
gives the events of a chunk of targets with global bars (each row's previous
target carried), and :func:`dense_targets_chunk` the targets of a global bar
range from events, starting from the value in force before it
(:func:`targets_in_force`). The whole-series functions are their one-chunk cases;
any split gives bit-identical rows, accumulators and event arrays.

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

from admf_dask.kernels.portfolio import _check_acc, fold_sleeves
from admf_dask.kernels.simulate import _pending_as, sim_step
from admf_dask.kernels.state import (
    _gaps, _sleeve_add, check_state, check_timeline, chunk_view, close_ends, cost_args, finalize_runs,
    h_base, pack_run, run_state_init, sleeve_before, t0_arg, t_base, unpack_run,
)
from admf_dask.kernels.strategies import LONG_ONLY, LONG_SHORT, SHORT_ONLY

__all__ = [
    "FRACTION", "VOTE", "dense_targets", "dense_targets_chunk", "ensemble_batch",
    "ensemble_batch_with_equity", "ensemble_chunk", "events_from_targets",
    "events_from_targets_chunk", "targets_in_force",
]

VOTE = 0
FRACTION = 1


@numba.njit(cache=True, nogil=True)
def events_from_targets_chunk(targets, h, t0, prev):
    """Change events of a time chunk of an int (K, h + c) target matrix, global bars.

    ``targets`` holds ``h`` halo bars (not read) and the chunk's ``c`` bars, the
    first at global bar ``t0``. ``prev`` int64 (K,) is each row's target before the
    chunk (zeros before bar 0), updated in place to its target at the chunk's last
    bar. Returns ``(ptr, bar, value)`` as :func:`events_from_targets`, with the
    events of the chunk's bars only (``bar`` global); the chunks' events, row by
    row one after the other, are those of the whole series.
    """
    k_rows = targets.shape[0]
    n = targets.shape[1]
    if h < 0 or h > n or h > t0:
        raise ValueError("events_from_targets_chunk: need 0 <= h <= t0 and h <= the bars given")
    if prev.shape[0] != k_rows:
        raise ValueError("events_from_targets_chunk: prev needs one value per row")
    ptr = np.zeros(k_rows + 1, dtype=np.int64)
    for k in range(k_rows):
        p = prev[k]
        count = 0
        for i in range(h, n):
            v = targets[k, i]
            if v != p:
                count += 1
                p = v
        ptr[k + 1] = ptr[k] + count
    bar = np.empty(ptr[k_rows], dtype=np.int64)
    value = np.empty(ptr[k_rows], dtype=np.int8)
    for k in range(k_rows):
        p = prev[k]
        e = ptr[k]
        for i in range(h, n):
            v = targets[k, i]
            if v != p:
                if v < -128 or v > 127:
                    raise ValueError("events_from_targets: target values must fit int8")
                bar[e] = t0 + (i - h)
                value[e] = v
                e += 1
                p = v
        prev[k] = p
    return ptr, bar, value


@numba.njit(cache=True, nogil=True)
def events_from_targets(targets):
    """Sparse change events of each row of an int (K, n) target matrix.

    Every bar ``t`` where ``targets[k, t] != targets[k, t - 1]`` (with
    ``targets[k, -1]`` taken as 0). Returns ``(ptr, bar, value)``: ``ptr`` int64
    ``(K + 1,)``, CSR style; row ``k``'s events are ``bar[ptr[k]:ptr[k + 1]]``
    (int64, increasing) and ``value[ptr[k]:ptr[k + 1]]`` (int8, the new target).
    Values must fit int8 (targets are -1 / 0 / +1). The one-chunk case of
    :func:`events_from_targets_chunk`.

    Examples
    --------
    >>> targets = np.array([[0, 1, 1, -1], [1, 1, 0, 0]], np.int8)  # doctest: +SKIP
    >>> events_from_targets(targets)                                  # doctest: +SKIP
    (array([0, 2, 4]), array([1, 3, 0, 2]), array([ 1, -1,  1,  0], dtype=int8))
    """
    return events_from_targets_chunk(targets, 0, 0, np.zeros(targets.shape[0], dtype=np.int64))


@numba.njit(cache=True, nogil=True)
def _check_events(ptr, bar, value):
    k_rows = ptr.shape[0] - 1
    if k_rows < 0:
        raise ValueError("dense_targets: ptr needs K + 1 entries")
    for k in range(k_rows):
        e0 = ptr[k]
        e1 = ptr[k + 1]
        if e0 > e1 or e0 < 0 or e1 > bar.shape[0] or e1 > value.shape[0]:
            raise ValueError("dense_targets: ptr must be non-decreasing and within the events")


@numba.njit(cache=True, nogil=True)
def targets_in_force(ptr, bar, value, t0):
    """int64 (K,): each row's target before bar ``t0`` (the value of its last event before it, else 0).

    The ``prev`` to start :func:`dense_targets_chunk` at ``t0`` from the whole events.
    """
    _check_events(ptr, bar, value)
    k_rows = ptr.shape[0] - 1
    out = np.zeros(k_rows, dtype=np.int64)
    for k in range(k_rows):
        e = np.searchsorted(bar[ptr[k]:ptr[k + 1]], t0)  # events before t0
        if e > 0:
            out[k] = value[ptr[k] + e - 1]
    return out


@numba.njit(cache=True, nogil=True)
def dense_targets_chunk(ptr, bar, value, t0, n, prev):
    """The int8 (K, n) targets of global bars ``t0 .. t0 + n - 1`` from change events.

    Events before ``t0`` and from ``t0 + n`` on are skipped: the value in force
    before the chunk is ``prev[k]`` (int64 (K,); zeros from bar 0, or
    :func:`targets_in_force`), updated in place to the value at the chunk's last
    bar. The event bars of a row must increase within the chunk.
    """
    _check_events(ptr, bar, value)
    k_rows = ptr.shape[0] - 1
    if prev.shape[0] != k_rows:
        raise ValueError("dense_targets: prev needs one value per row")
    out = np.empty((k_rows, n), dtype=np.int8)
    t1 = t0 + n
    for k in range(k_rows):
        e0 = ptr[k]
        e1 = ptr[k + 1]
        row_bars = bar[e0:e1]
        lo = e0 + np.searchsorted(row_bars, t0)
        hi = e0 + np.searchsorted(row_bars, t1)
        prev_bar = t0 - 1
        for e in range(lo, hi):
            t = bar[e]
            if t <= prev_bar:
                raise ValueError("dense_targets: a row's event bars must increase within [0, n)")
            prev_bar = t
        v = prev[k]
        t = t0
        for e in range(lo, hi):
            for j in range(t - t0, bar[e] - t0):
                out[k, j] = v
            v = value[e]
            t = bar[e]
        for j in range(t - t0, n):
            out[k, j] = v
        prev[k] = v
    return out


@numba.njit(cache=True, nogil=True)
def dense_targets(ptr, bar, value, n):
    """The int8 (K, n) target matrix of ``events_from_targets``' events: its exact inverse.

    The one-chunk case of :func:`dense_targets_chunk`.
    """
    _check_events(ptr, bar, value)
    for k in range(ptr.shape[0] - 1):
        prev_bar = -1
        for e in range(ptr[k], ptr[k + 1]):
            t = bar[e]
            if t <= prev_bar or t >= n:
                raise ValueError("dense_targets: a row's event bars must increase within [0, n)")
            prev_bar = t
    return dense_targets_chunk(ptr, bar, value, 0, n, np.zeros(ptr.shape[0] - 1, dtype=np.int64))


@numba.njit(inline="always")
def _segments(signals, h):
    """Union of the rows' change bars over columns ``h ..`` and the signal states on each segment.

    Returns ``start`` int64 ``(S + 1,)`` (segment ``s`` is chunk bars
    ``start[s] .. start[s + 1] - 1``, counted from column ``h``; ``start[0] = 0``,
    ``start[S] = c``) and ``states`` float64 ``(K, S)``.
    """
    k_rows = signals.shape[0]
    n = signals.shape[1]
    for k in range(k_rows):
        for t in range(h, n):
            v = signals[k, t]
            if v < -1 or v > 1:
                raise ValueError("ensemble kernels: signals must be -1, 0 or +1")
    n_seg = 1 if n > h else 0
    for t in range(h + 1, n):
        for k in range(k_rows):
            if signals[k, t] != signals[k, t - 1]:
                n_seg += 1
                break
    start = np.empty(n_seg + 1, dtype=np.int64)
    states = np.empty((k_rows, n_seg))
    s = 0
    for t in range(h, n):
        new = t == h
        if not new:
            for k in range(k_rows):
                if signals[k, t] != signals[k, t - 1]:
                    new = True
                    break
        if new:
            start[s] = t - h
            for k in range(k_rows):
                states[k, s] = float(signals[k, t])
            s += 1
    start[n_seg] = n - h
    return start, states


@numba.njit(inline="always")
def _ensemble(vote, with_eq, seg_target, signals, weights, threshold, direction, open_, high,
              low, close, h, t0, state, commission, slippage_bps, whole_units, stop_loss,
              take_profit, timeline_pos, equity_acc):
    # ``vote`` and ``with_eq`` are constants at each call site and ``seg_target``
    # is int64 (vote) or float64 (fraction), so sim_step compiles the all-in int
    # path for votes and the fractional path for fractions.
    m = weights.shape[0]
    k_rows = weights.shape[1]
    n = close.shape[0]
    hh = h_base(h, t0)  # a constant 0 for a chunk that starts the series (t0 None)
    nc = n - hh
    start, states = _segments(signals, hh)
    n_seg = start.shape[0] - 1
    comb = np.empty(n_seg)
    dummy_f = np.empty(0)
    dummy_i = np.empty((0, 3), dtype=np.int64)
    dummy_t = np.empty((0, 5))
    equity_buf = np.empty(nc if with_eq else 0)
    gaps = _gaps(timeline_pos) if with_eq else np.empty(0, dtype=np.int64)
    tb = t_base(t0)  # a constant 0 for a chunk that starts the series (t0 None)
    o_ = chunk_view(open_, h, t0)  # the chunk's bars, indexed from 0 (as the strategy kernels)
    h_ = chunk_view(high, h, t0)
    l_ = chunk_view(low, h, t0)
    c_ = chunk_view(close, h, t0)
    if nc == 0:  # no bars: the states stay, the sleeves' values fill their rows
        if with_eq:
            for row in range(m):
                _sleeve_add(equity_acc[row], timeline_pos, gaps, equity_buf, sleeve_before(state[row]))
        return
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
        srow = state[row]
        before = sleeve_before(srow) if with_eq else 0.0
        sim, bar_st, trade_st, signal, pending = unpack_run(srow)
        # One call site of the inlined sim_step (two doubled the kernels' compile time).
        # The chunk's first bar trades the pending combined target (decided at the
        # previous chunk's last close; ignored at bar 0); bar t trades the target
        # of bar t - 1, so segment s feeds chunk bars start[s] + 1 .. start[s + 1]
        # (s = -1 below: the first bar).
        pend = _pending_as(pending, seg_target)
        for s in range(-1, n_seg):
            if s < 0:
                raw, j0, j1 = pend, 0, min(1, nc)
            else:
                raw, j0, j1 = seg_target[s], start[s] + 1, min(start[s + 1] + 1, nc)
            for j in range(j0, j1):
                sim, bar_st, trade_st = sim_step(
                    sim, bar_st, trade_st, tb + j, raw, o_[j], h_[j], l_[j], c_[j],
                    commission, slippage_bps, whole_units, stop_loss, take_profit, False, 0, 0,
                    dummy_f, dummy_f, dummy_i, dummy_t)
                if with_eq:
                    equity_buf[j] = bar_st[1]
        pack_run(srow, sim, bar_st, trade_st, signal, float(seg_target[n_seg - 1]))
        if with_eq:
            # in fixed point (state.fixed): the sum is the same whatever the symbols' grouping and order
            _sleeve_add(equity_acc[row], timeline_pos, gaps, equity_buf, before)


@numba.njit(cache=True, nogil=True)
def _vote_chunk(signals, weights, threshold, direction, o, hi, lo, c, h, t0, state, comm, slip,
                whole, sl, tp):
    buf = np.empty(signals.shape[1] + 1, dtype=np.int64)
    _ensemble(True, False, buf, signals, weights, threshold, direction, o, hi, lo, c, h, t0, state,
              comm, slip, whole, sl, tp, np.empty(0, dtype=np.int64), np.empty((0, 0)))


@numba.njit(cache=True, nogil=True)
def _fraction_chunk(signals, weights, threshold, direction, o, hi, lo, c, h, t0, state, comm, slip,
                    whole, sl, tp):
    buf = np.empty(signals.shape[1] + 1)
    _ensemble(False, False, buf, signals, weights, threshold, direction, o, hi, lo, c, h, t0, state,
              comm, slip, whole, sl, tp, np.empty(0, dtype=np.int64), np.empty((0, 0)))


@numba.njit(cache=True, nogil=True)
def _vote_chunk_eq(signals, weights, threshold, direction, o, hi, lo, c, h, t0, state, comm, slip,
                   whole, sl, tp, pos, eq):
    buf = np.empty(signals.shape[1] + 1, dtype=np.int64)
    _ensemble(True, True, buf, signals, weights, threshold, direction, o, hi, lo, c, h, t0, state,
              comm, slip, whole, sl, tp, pos, eq)


@numba.njit(cache=True, nogil=True)
def _fraction_chunk_eq(signals, weights, threshold, direction, o, hi, lo, c, h, t0, state, comm,
                       slip, whole, sl, tp, pos, eq):
    buf = np.empty(signals.shape[1] + 1)
    _ensemble(False, True, buf, signals, weights, threshold, direction, o, hi, lo, c, h, t0, state,
              comm, slip, whole, sl, tp, pos, eq)


@numba.njit(cache=True, nogil=True)
def _check_ensemble(signals, weights, rule, direction, open_, high, low, close):
    n = close.shape[0]
    if open_.shape[0] != n or high.shape[0] != n or low.shape[0] != n or signals.shape[1] != n:
        raise ValueError("ensemble kernels: open, high, low, close and the signal rows need the "
                         "same number of bars")
    if weights.shape[1] != signals.shape[0]:
        raise ValueError("ensemble kernels: weights must be (m, K) for K signal rows")
    if rule != VOTE and rule != FRACTION:
        raise ValueError("ensemble kernels: rule must be VOTE (0) or FRACTION (1)")
    if direction != LONG_SHORT and direction != LONG_ONLY and direction != SHORT_ONLY:
        raise ValueError("ensemble kernels: direction must be LONG_SHORT (0), LONG_ONLY (1) "
                         "or SHORT_ONLY (-1)")


def ensemble_chunk(signals, weights, rule, threshold, direction, open_, high, low, close, h, t0,
                   state, commission, slippage_bps, whole_units, stop_loss, take_profit,
                   timeline_pos=None, equity_acc=None):
    """Advance ``m`` ensembles of ``K`` stored signals over a time chunk of one symbol.

    Parameters
    ----------
    signals : int (K, h + c)
        The signal streams of ``h`` halo bars (not read) and the chunk's ``c`` bars
        (e.g. :func:`dense_targets_chunk` of stored events).
    weights, rule, threshold, direction, commission, slippage_bps, whole_units, stop_loss, take_profit
        As :func:`ensemble_batch_with_equity`.
    open_, high, low, close : float64 (h + c,)
        Halo and chunk bars.
    h, t0 : int
        Halo bars and the global index of the chunk's first bar.
    state : float64 (m, RUN_STATE_WIDTH)
        The ensembles' run states, updated in place; the pending combined target
        (a fraction for ``FRACTION``) is carried in it.
    timeline_pos, equity_acc : int64 (c,), float64 (m, T), optional
        Also add each ensemble's sleeve equity over the chunk into ``equity_acc[k]``,
        as :func:`admf_dask.kernels.simulate.simulate_stats_chunk` does.

    The segments of equal signal states are found per chunk. Finish with
    :func:`~admf_dask.kernels.state.finalize_runs`; :func:`ensemble_batch` and
    :func:`ensemble_batch_with_equity` are the one-chunk cases.
    """
    h, t0 = int(h), int(t0)
    _check_ensemble(signals, weights, int(rule), int(direction), open_, high, low, close)
    check_state(state, weights.shape[0], t0, h, close.shape[0])
    args = (signals, weights, float(threshold), int(direction), open_, high, low, close, h, t0_arg(t0), state,
            *cost_args(commission, slippage_bps, whole_units, stop_loss, take_profit))
    if equity_acc is None:
        (_vote_chunk if rule == VOTE else _fraction_chunk)(*args)
        return
    check_timeline(close.shape[0] - h, weights.shape[0], timeline_pos, equity_acc)
    (_vote_chunk_eq if rule == VOTE else _fraction_chunk_eq)(*args, timeline_pos, equity_acc)


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
        sleeve is added into row ``k`` of the accumulators the same way. The
        one-chunk case of :func:`ensemble_chunk`.
    """
    _check_ensemble(signals, weights, rule, direction, open_, high, low, close)
    if close.shape[0] == 0:
        raise ValueError("ensemble kernels: no bars")
    _check_acc(close.shape[0], weights.shape[0], timeline_pos, equity_acc, trade_acc, extra_acc)
    state = run_state_init(weights.shape[0], cash)
    threshold = float(threshold)
    if rule == VOTE:
        _vote_chunk_eq(signals, weights, threshold, direction, open_, high, low, close, 0, None, state,
                       commission, slippage_bps, whole_units, stop_loss, take_profit, timeline_pos,
                       equity_acc)
    else:
        _fraction_chunk_eq(signals, weights, threshold, direction, open_, high, low, close, 0, None,
                           state, commission, slippage_bps, whole_units, stop_loss, take_profit,
                           timeline_pos, equity_acc)
    first, last = close_ends(close)
    rows = finalize_runs(state, first, last, periods_per_year)
    fold_sleeves(state, rows, trade_acc, extra_acc)
    return rows


@numba.njit(cache=True, nogil=True)
def ensemble_batch(signals, weights, rule, threshold, direction, open_, high, low, close,
                   periods_per_year, cash, commission, slippage_bps, whole_units, stop_loss,
                   take_profit):
    """:func:`ensemble_batch_with_equity` without accumulators: the (m, N_STATS) rows only.

    Bit-identical rows; equal to ``simulate_stats_batch`` on the combined targets.
    The one-chunk case of :func:`ensemble_chunk`.
    """
    _check_ensemble(signals, weights, rule, direction, open_, high, low, close)
    if close.shape[0] == 0:
        raise ValueError("ensemble kernels: no bars")
    state = run_state_init(weights.shape[0], cash)
    threshold = float(threshold)
    if rule == VOTE:
        _vote_chunk(signals, weights, threshold, direction, open_, high, low, close, 0, None, state,
                    commission, slippage_bps, whole_units, stop_loss, take_profit)
    else:
        _fraction_chunk(signals, weights, threshold, direction, open_, high, low, close, 0, None,
                        state, commission, slippage_bps, whole_units, stop_loss, take_profit)
    first, last = close_ends(close)
    return finalize_runs(state, first, last, periods_per_year)
