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
The loop runs ``sim_step`` as its two halves, :func:`~admf_dask.kernels.simulate.sim_bar`
(fills, stops, equity) and ``bar_update``; a *held* bar
(:func:`~admf_dask.kernels.simulate.holds`: the target is the position held, so no
fill and no stop) skips the first half and computes only its equity, as
``sim_bar`` would, with the same bits. Most bars are held: a stretch of them runs
in its own tight loop (``_held``), a flat one (no position: the equity is the cash,
each return exactly 0) with no arithmetic per bar, and CROSS finds its crosses for
the chunk in one vectorised pass first (``_cross_events``). What a stretch costs is
then mostly its ends: the fill bars through ``sim_bar``.

Chunks: :func:`strategy_chunk` advances the batch over a time chunk of bars from
its run states (``(m, RUN_STATE_WIDTH)``, :mod:`admf_dask.kernels.state`: the
simulation, the accumulators, the strategy state and the pending target), with
``h`` halo bars in front that CROSS and DONCHIAN read for bar ``t - 1``;
optionally it also adds each set's sleeve equity into a portfolio accumulator
row. :func:`finalize_runs` turns the states into rows. :func:`run_strategy_batch`
(and :func:`run_cross_batch`) is the one-chunk case, :func:`strategy_targets` that
of :func:`strategy_targets_chunk`: splitting the bars anywhere gives bit-identical
rows. ``signal_step`` sees the chunk's local bar index, so at the chunk's first
bar its ``t - 1`` is the halo's last bar.

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

from admf_dask.kernels.names import (  # the codes, defined in plain Python for the driver
    BB_BREAKOUT, BB_REVERSION, CROSS, DONCHIAN, LONG_ONLY, LONG_SHORT, MOMENTUM, RSI, SHORT_ONLY,
)
from admf_dask.kernels.simulate import holds, sim_bar, stops_on
from admf_dask.kernels.state import (
    SIGNAL, _gaps, _sleeve_add, check_state, check_timeline, chunk_view, close_ends, cost_args, finalize_runs,
    h_base, pack_run, run_state_init, sleeve_before, t0_arg, t_base, unpack_run,
)
from admf_dask.kernels.stats import bar_update

__all__ = [
    "BB_BREAKOUT", "BB_REVERSION", "CROSS", "DONCHIAN", "LONG_ONLY", "LONG_SHORT",
    "MOMENTUM", "RSI", "SHORT_ONLY", "finalize_runs", "run_cross_batch", "run_strategy_batch",
    "signal_step", "strategy_chunk", "strategy_targets", "strategy_targets_chunk",
]


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
def _cross_events(ind, i0, i1, hh, nc, ev):
    # The CROSS rule's events of the chunk's bars, in one pass without branches (vectorised):
    # ev[j] is +1 where row i0 crosses above row i1 at local bar hh + j, -1 where it crosses
    # below, else 0 (the state is held). signal_step's comparisons, bar for bar.
    a = ind[i0]
    b = ind[i1]
    j0 = 1 if hh == 0 else 0  # the series' first bar has no bar before it: no event
    if j0 == 1 and nc > 0:
        ev[0] = 0
    a1 = a[hh + j0:hh + nc]
    b1 = b[hh + j0:hh + nc]
    a0 = a[hh + j0 - 1:hh + nc - 1]
    b0 = b[hh + j0 - 1:hh + nc - 1]
    e = ev[j0:]
    for j in range(a1.shape[0]):
        x1 = a1[j]
        y1 = b1[j]
        x0 = a0[j]
        y0 = b0[j]
        e[j] = np.int8((x1 > y1) & (x0 <= y0)) - np.int8((x1 < y1) & (x0 >= y0))


@numba.njit(inline="always")
def _next_signal(kind, ev, j, ind, i0, i1, i2, p0, p1, close, hh, signal):
    # signal_step at chunk bar j; CROSS from its events (_cross_events).
    if kind == CROSS:
        e = ev[j]
        return signal if e == 0 else int(e)
    return signal_step(kind, ind, i0, i1, i2, p0, p1, close, hh + j, signal)


@numba.njit(inline="always")
def _held(kind, ev, j, nc, tb, hh, c_, ind, i0, i1, i2, p0, p1, close, direction, du, cash, in_market,
          held_dir, signal, target, bar_st, equity_buf):
    # A stretch of held bars from chunk bar j (simulate.holds: no fill, no stop; the caller
    # checked the state): each bar's equity is cash + du * close, folded as bar_update folds
    # it, with the same float operations on the same values in the same order. The stretch
    # ends before a bar whose equity is not > 0 (a liquidation, a ruin, or NaN: sim_bar's
    # business), or after the bar whose new target is not the position held. Returns
    # (the next bar, signal, target, bar_st). The accumulators live in locals: the counts
    # (returns, exposure, bars, the drawdown's bar indices) as ints, exact in float64.
    (first_eq, prev_eq, min_eq, n_ret, s1, s2, sneg2, peak, peak_bar,
     max_dd, max_dur, underwater, exposed, n_bars) = bar_st
    pb = int(peak_bar)
    md = int(max_dur)
    uw = underwater > 0.0
    rets = 0
    j0 = j
    # Flat (du == 0): one bar here, the rest below without arithmetic.
    end = nc if in_market else min(j + 1, nc)
    going = True
    while j < end:
        equity = cash + du * c_[j]
        if not equity > 0.0:
            going = False
            break
        t = tb + j  # > 0
        if prev_eq > 0.0:
            r = equity / prev_eq - 1.0
            rets += 1
            s1 += r
            s2 += r * r
            neg = min(r, 0.0)
            sneg2 += neg * neg
        prev_eq = equity
        if equity < min_eq:  # noqa: PLR1730 (bar_update's comparisons, as they are)
            min_eq = equity
        if equity >= peak:
            if uw:
                md = max(md, t - pb)
            peak = equity
            pb = t
            uw = False
        else:
            dd = 1.0 - equity / peak
            if dd > max_dd:  # noqa: PLR1730
                max_dd = dd
            md = max(md, t - pb)
            uw = True
        equity_buf[j] = equity
        s = _next_signal(kind, ev, j, ind, i0, i1, i2, p0, p1, close, hh, signal)
        j += 1
        if s != signal:
            signal = s
            target = _clip(s, direction)
            if target != held_dir:
                going = False
                break
    if going and not in_market and j < nc:
        # The rest of a flat stretch: the equity is cash + 0.0 * close = cash (> 0, the bar
        # above) while the close is finite, and so is prev_eq: each bar's return is exactly
        # 0.0 (s1, s2 and sneg2 add +0.0: once is the same as n times), min_eq and max_dd do
        # not move, and the drawdown either stays at its peak (uw False: peak_bar moves to
        # each bar) or lasts on (its duration grows to the last bar). A non-finite close ends
        # the stretch before its bar (its equity is NaN: sim_bar's business).
        j1 = j
        while j < nc:
            c = c_[j]
            if c - c != 0.0:  # NaN or infinite
                break
            equity_buf[j] = cash
            s = _next_signal(kind, ev, j, ind, i0, i1, i2, p0, p1, close, hh, signal)
            j += 1
            if s != signal:
                signal = s
                target = _clip(s, direction)
                if target != held_dir:
                    break
        if j > j1:
            rets += j - j1
            s1 += 0.0
            s2 += 0.0 * 0.0
            neg = min(0.0, 0.0)
            sneg2 += neg * neg
            t = tb + j - 1
            if uw:
                md = max(md, t - pb)
            else:
                pb = t
    n = float(j - j0)
    bar_st = (first_eq, prev_eq, min_eq, n_ret + float(rets), s1, s2, sneg2, peak, float(pb),
              max_dd, float(md), 1.0 if uw else 0.0, exposed + n if in_market else exposed, n_bars + n)
    return j, signal, target, bar_st


@numba.njit(inline="always")
def _set_run(kind, ind, i0, i1, i2, p0, p1, open_, high, low, close, h, t0, row, commission, slippage_bps,
             whole_units, stop_loss, take_profit, direction, stops, equity_buf, ev):
    # One parameter set over the chunk's bars, from its state row, which it updates; its equity at
    # each close into equity_buf. With ``t0`` None (a chunk that starts the series) ``tb`` and ``hh``
    # are constants 0 and the loop is the whole-series loop of before chunks (state.t_base).
    tb = t_base(t0)
    hh = h_base(h, t0)
    nc = close.shape[0] - hh
    dummy_i = np.empty((0, 3), dtype=np.int64)
    dummy_t = np.empty((0, 5))
    # The chunk's bars, indexed by the loop counter (an index offset by a
    # runtime h costs numba's negative-index checks on every read); the
    # arrays themselves when the chunk starts the series (state.chunk_view).
    o_ = chunk_view(open_, h, t0)
    h_ = chunk_view(high, h, t0)
    l_ = chunk_view(low, h, t0)
    c_ = chunk_view(close, h, t0)
    if kind == CROSS:
        _cross_events(ind, i0, i1, hh, nc, ev)
    sim, bar_st, trade_st, signal, pending = unpack_run(row)
    target = int(pending)  # decided at the previous bar's close
    held = holds(sim, stops)
    j = 0
    while j < nc:
        # sim_step, with stretches of held bars (simulate.holds) folded without its fills and stops
        if held and target == sim[0] and tb + j > 0:
            j, signal, target, bar_st = _held(
                kind, ev, j, nc, tb, hh, c_, ind, i0, i1, i2, p0, p1, close, direction, sim[0] * sim[1],
                sim[9], sim[0] != 0, sim[0], signal, target, bar_st, equity_buf)
            if j >= nc:
                break
        # the bar after a stretch is not held, or its equity is not > 0: the whole step
        sim, trade_st, equity, in_market = sim_bar(
            sim, trade_st, tb + j, target, o_[j], h_[j], l_[j], c_[j], commission, slippage_bps,
            whole_units, stop_loss, take_profit, False, 0, dummy_i, dummy_t)
        held = holds(sim, stops)
        bar_st = bar_update(bar_st, tb + j, equity, in_market)
        # The local index: bar hh + j - 1 is the halo's last bar at the chunk's
        # first bar, and hh + j == 0 only at the series' first bar (h >= 1 once t0 > 0).
        signal = _next_signal(kind, ev, j, ind, i0, i1, i2, p0, p1, close, hh, signal)
        target = _clip(signal, direction)
        equity_buf[j] = bar_st[1]  # equity at the close
        j += 1
    pack_run(row, sim, bar_st, trade_st, signal, target)


# One compiled set loop per kind, called by its kind's chunk kernels with and without equity: the
# loop compiled into each of the twelve kernels doubled their cold compile time.
@numba.njit(cache=True, nogil=True)
def _set_run_cross(ind, i0, i1, i2, p0, p1, open_, high, low, close, h, t0, row, commission, slippage_bps, whole_units,
                   stop_loss, take_profit, direction, stops, equity_buf, ev):
    _set_run(CROSS, ind, i0, i1, i2, p0, p1, open_, high, low, close, h, t0, row, commission, slippage_bps, whole_units,
             stop_loss, take_profit, direction, stops, equity_buf, ev)


@numba.njit(cache=True, nogil=True)
def _set_run_rsi(ind, i0, i1, i2, p0, p1, open_, high, low, close, h, t0, row, commission, slippage_bps, whole_units,
                 stop_loss, take_profit, direction, stops, equity_buf, ev):
    _set_run(RSI, ind, i0, i1, i2, p0, p1, open_, high, low, close, h, t0, row, commission, slippage_bps, whole_units,
             stop_loss, take_profit, direction, stops, equity_buf, ev)


@numba.njit(cache=True, nogil=True)
def _set_run_bb_reversion(ind, i0, i1, i2, p0, p1, open_, high, low, close, h, t0, row, commission, slippage_bps, whole_units,
                          stop_loss, take_profit, direction, stops, equity_buf, ev):
    _set_run(BB_REVERSION, ind, i0, i1, i2, p0, p1, open_, high, low, close, h, t0, row, commission, slippage_bps, whole_units,
             stop_loss, take_profit, direction, stops, equity_buf, ev)


@numba.njit(cache=True, nogil=True)
def _set_run_bb_breakout(ind, i0, i1, i2, p0, p1, open_, high, low, close, h, t0, row, commission, slippage_bps, whole_units,
                         stop_loss, take_profit, direction, stops, equity_buf, ev):
    _set_run(BB_BREAKOUT, ind, i0, i1, i2, p0, p1, open_, high, low, close, h, t0, row, commission, slippage_bps, whole_units,
             stop_loss, take_profit, direction, stops, equity_buf, ev)


@numba.njit(cache=True, nogil=True)
def _set_run_donchian(ind, i0, i1, i2, p0, p1, open_, high, low, close, h, t0, row, commission, slippage_bps, whole_units,
                      stop_loss, take_profit, direction, stops, equity_buf, ev):
    _set_run(DONCHIAN, ind, i0, i1, i2, p0, p1, open_, high, low, close, h, t0, row, commission, slippage_bps, whole_units,
             stop_loss, take_profit, direction, stops, equity_buf, ev)


@numba.njit(cache=True, nogil=True)
def _set_run_momentum(ind, i0, i1, i2, p0, p1, open_, high, low, close, h, t0, row, commission, slippage_bps, whole_units,
                      stop_loss, take_profit, direction, stops, equity_buf, ev):
    _set_run(MOMENTUM, ind, i0, i1, i2, p0, p1, open_, high, low, close, h, t0, row, commission, slippage_bps, whole_units,
             stop_loss, take_profit, direction, stops, equity_buf, ev)


@numba.njit(cache=True, nogil=True)
def set_order(idx, n_rows):
    """The order a chunk runs its sets in: by the indicator row (``idx`` column 0 or 1, each in
    ``[-1, n_rows)``) that has the more distinct values among them, then by the other, ties in
    their own order.

    Each set reads its own rows and writes only its own state and accumulator row, so the order
    changes no result bit; it changes what stays in cache. A part of a grid in its own order
    (fast-major) holds a few fast values and every slow one: set after set re-reads the slow
    rows, which on minute bars (~0.8 MB a row, 40 of them) do not fit in a core's cache, once
    per fast value. In this order each slow row is read once, beside the few fast rows.
    Two stable counting sorts, O(m + n_rows), in plain loops (no numpy sorting here: a cached
    kernel then loads without numba's array-math module, see preload.light_cache_loads).
    """
    m = idx.shape[0]
    order = np.arange(m)
    if m < 3:
        return order
    width = n_rows + 1  # row -1 (unused) counts as 0
    seen0 = np.zeros(width, dtype=np.bool_)
    seen1 = np.zeros(width, dtype=np.bool_)
    d0 = 0
    d1 = 0
    for k in range(m):
        r0 = idx[k, 0] + 1
        r1 = idx[k, 1] + 1
        if not seen0[r0]:
            seen0[r0] = True
            d0 += 1
        if not seen1[r1]:
            seen1[r1] = True
            d1 += 1
    major = 1 if d1 > d0 else 0
    for col in (1 - major, major):  # least significant first; each pass stable
        count = np.zeros(width + 1, dtype=np.int64)
        for k in range(m):
            count[idx[k, col] + 2] += 1
        for r in range(1, width + 1):
            count[r] += count[r - 1]
        out = np.empty(m, dtype=np.int64)
        for j in range(m):
            k = order[j]
            r = idx[k, col] + 1
            out[count[r]] = k
            count[r] += 1
        order = out
    return order


@numba.njit(inline="always")
def _chunk(kind, set_run, with_eq, ind, idx, fparams, open_, high, low, close, h, t0, state, commission,
           slippage_bps, whole_units, stop_loss, take_profit, direction, timeline_pos, equity_acc):
    # Inlined into one kernel per kind and per ``with_eq``; ``set_run`` is the kind's set loop
    # (_set_run_cross, ...), where ``kind`` is a constant: the signal rule then compiles to
    # straight-line code in the bar loop (3x faster than branching on a runtime kind every bar).
    m = idx.shape[0]
    nc = close.shape[0] - h_base(h, t0)
    equity_buf = np.empty(nc)  # one set's curve on the chunk's bars
    ev = np.empty(nc if kind == CROSS else 0, dtype=np.int8)  # one set's CROSS events
    gaps = _gaps(timeline_pos) if with_eq else np.empty(0, dtype=np.int64)
    stops = stops_on(stop_loss, take_profit)
    for k in set_order(idx, ind.shape[0]):  # what stays in cache; no result changes with it (set_order)
        before = sleeve_before(state[k]) if with_eq else 0.0
        set_run(ind, idx[k, 0], idx[k, 1], idx[k, 2], fparams[k, 0], fparams[k, 1], open_, high, low, close, h,
                t0, state[k], commission, slippage_bps, whole_units, stop_loss, take_profit, direction, stops,
                equity_buf, ev)
        if with_eq:
            # in fixed point (state.fixed): the sum is the same whatever the symbols' grouping and order
            _sleeve_add(equity_acc[k], timeline_pos, gaps, equity_buf, before)


@numba.njit(cache=True, nogil=True)
def _chunk_cross(ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d):
    _chunk(CROSS, _set_run_cross, False, ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d,
           np.empty(0, dtype=np.int64), np.empty((0, 0)))


@numba.njit(cache=True, nogil=True)
def _chunk_eq_cross(ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d, pos, eq):
    _chunk(CROSS, _set_run_cross, True, ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d, pos, eq)


@numba.njit(cache=True, nogil=True)
def _chunk_rsi(ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d):
    _chunk(RSI, _set_run_rsi, False, ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d,
           np.empty(0, dtype=np.int64), np.empty((0, 0)))


@numba.njit(cache=True, nogil=True)
def _chunk_eq_rsi(ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d, pos, eq):
    _chunk(RSI, _set_run_rsi, True, ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d, pos, eq)


@numba.njit(cache=True, nogil=True)
def _chunk_bb_reversion(ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d):
    _chunk(BB_REVERSION, _set_run_bb_reversion, False, ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d,
           np.empty(0, dtype=np.int64), np.empty((0, 0)))


@numba.njit(cache=True, nogil=True)
def _chunk_eq_bb_reversion(ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d, pos, eq):
    _chunk(BB_REVERSION, _set_run_bb_reversion, True, ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d, pos, eq)


@numba.njit(cache=True, nogil=True)
def _chunk_bb_breakout(ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d):
    _chunk(BB_BREAKOUT, _set_run_bb_breakout, False, ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d,
           np.empty(0, dtype=np.int64), np.empty((0, 0)))


@numba.njit(cache=True, nogil=True)
def _chunk_eq_bb_breakout(ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d, pos, eq):
    _chunk(BB_BREAKOUT, _set_run_bb_breakout, True, ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d, pos, eq)


@numba.njit(cache=True, nogil=True)
def _chunk_donchian(ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d):
    _chunk(DONCHIAN, _set_run_donchian, False, ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d,
           np.empty(0, dtype=np.int64), np.empty((0, 0)))


@numba.njit(cache=True, nogil=True)
def _chunk_eq_donchian(ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d, pos, eq):
    _chunk(DONCHIAN, _set_run_donchian, True, ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d, pos, eq)


@numba.njit(cache=True, nogil=True)
def _chunk_momentum(ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d):
    _chunk(MOMENTUM, _set_run_momentum, False, ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d,
           np.empty(0, dtype=np.int64), np.empty((0, 0)))


@numba.njit(cache=True, nogil=True)
def _chunk_eq_momentum(ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d, pos, eq):
    _chunk(MOMENTUM, _set_run_momentum, True, ind, idx, fp, o, h, lo, c, hh, t0, state, comm, slip, whole, sl, tp, d, pos, eq)


_CHUNK_KERNELS = {CROSS: _chunk_cross, RSI: _chunk_rsi, BB_REVERSION: _chunk_bb_reversion,
                  BB_BREAKOUT: _chunk_bb_breakout, DONCHIAN: _chunk_donchian, MOMENTUM: _chunk_momentum}
_CHUNK_EQ_KERNELS = {CROSS: _chunk_eq_cross, RSI: _chunk_eq_rsi, BB_REVERSION: _chunk_eq_bb_reversion,
                     BB_BREAKOUT: _chunk_eq_bb_breakout, DONCHIAN: _chunk_eq_donchian,
                     MOMENTUM: _chunk_eq_momentum}


def _check_halo(kind, h, t0):
    if (kind == CROSS or kind == DONCHIAN) and t0 > 0 and h < 1:
        raise ValueError("strategy kernels: CROSS and DONCHIAN read bar t - 1: a chunk after the "
                         "first needs h >= 1 halo bar")


def strategy_chunk(kind, ind, idx, fparams, open_, high, low, close, h, t0, state, commission,
                   slippage_bps, whole_units, stop_loss, take_profit, direction, timeline_pos=None,
                   equity_acc=None):
    """Advance ``m`` parameter sets of one strategy kind over a time chunk of one symbol.

    Parameters
    ----------
    kind, ind, idx, fparams, commission, slippage_bps, whole_units, stop_loss, take_profit, direction
        As :func:`run_strategy_batch`; ``ind`` (k, h + c) holds the indicator rows
        of the halo and the chunk's bars (computed on the whole series, or carried).
    open_, high, low, close : float64 (h + c,)
        ``h`` halo bars (the previous chunk's last bars), then the chunk's ``c`` bars.
    h, t0 : int
        Halo bars (at least 1 for CROSS and DONCHIAN once ``t0 > 0``: their rule
        reads bar ``t - 1``) and the global index of the chunk's first bar.
    state : float64 (m, RUN_STATE_WIDTH)
        The sets' run states (:func:`~admf_dask.kernels.state.run_state_init`),
        updated in place; the strategy state and the pending target are carried in it.
    timeline_pos, equity_acc : int64 (c,), float64 (m, T), optional
        Also add each set's sleeve equity over the chunk into ``equity_acc[k]``, as
        :func:`admf_dask.kernels.simulate.simulate_stats_chunk` does.

    Finish a symbol with :func:`finalize_runs`; :func:`run_strategy_batch` is the
    one-chunk case (``h = t0 = 0``).
    """
    # Dispatch here, in Python, not in a compiled function: numba compiles every branch
    # of a compiled dispatcher, and only the kind in use should pay for compilation.
    h, t0, kind = int(h), int(t0), int(kind)
    _check(ind, idx, fparams, open_, high, low, close)
    check_state(state, idx.shape[0], t0, h, close.shape[0])
    _check_halo(kind, h, t0)
    kernels = _CHUNK_KERNELS if equity_acc is None else _CHUNK_EQ_KERNELS
    kernel = kernels.get(kind)
    if kernel is None:
        raise ValueError("strategy kernels: unknown strategy kind")
    args = (ind, idx, fparams, open_, high, low, close, h, t0_arg(t0), state,
            *cost_args(commission, slippage_bps, whole_units, stop_loss, take_profit), int(direction))
    if equity_acc is None:
        kernel(*args)
        return
    check_timeline(close.shape[0] - h, idx.shape[0], timeline_pos, equity_acc)
    kernel(*args, timeline_pos, equity_acc)


def run_strategy_batch(kind, ind, idx, fparams, open_, high, low, close, periods_per_year,
                       cash=10_000.0, commission=0.0, slippage_bps=0.0, whole_units=False,
                       stop_loss=np.nan, take_profit=np.nan, direction=LONG_SHORT):
    """Statistics rows of ``m`` parameter sets of one strategy kind on one symbol.

    The one-chunk case of :func:`strategy_chunk`: start states, the whole series
    as one chunk, :func:`finalize_runs`.

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
    _check(ind, idx, fparams, open_, high, low, close)
    kernel = _CHUNK_KERNELS.get(int(kind))
    if kernel is None:
        raise ValueError("run_strategy_batch: unknown strategy kind")
    state = run_state_init(idx.shape[0], float(cash))
    kernel(ind, idx, fparams, open_, high, low, close, 0, None, state,
           *cost_args(commission, slippage_bps, whole_units, stop_loss, take_profit), int(direction))
    first, last = close_ends(close)
    return finalize_runs(state, first, last, float(periods_per_year))


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
def strategy_targets_chunk(kind, ind, idx, fparams, close, h, t0, state, direction=LONG_SHORT):
    """Targets (int8, m x c) of a time chunk's ``c`` bars: the rule :func:`strategy_chunk` trades.

    ``ind`` (k, h + c) and ``close`` (h + c,) hold ``h`` halo bars then the chunk's
    bars, ``t0`` is the chunk's first global bar (as :func:`strategy_chunk`; ``h >= 1``
    for CROSS and DONCHIAN once ``t0 > 0``). Only the strategy state column
    (``SIGNAL``) of ``state`` (m, RUN_STATE_WIDTH) is read and updated.
    """
    m = idx.shape[0]
    n = close.shape[0]
    if ind.shape[1] != n:
        raise ValueError("strategy kernels: close and the indicator rows need the same number of bars")
    if state.ndim != 2 or state.shape[0] != m or h < 0 or h > n or h > t0:
        raise ValueError("strategy_targets_chunk: state must be (m, RUN_STATE_WIDTH) and 0 <= h <= t0")
    if (kind == CROSS or kind == DONCHIAN) and t0 > 0 and h < 1:
        raise ValueError("strategy kernels: CROSS and DONCHIAN read bar t - 1: a chunk after the "
                         "first needs h >= 1 halo bar")
    out = np.empty((m, n - h), dtype=np.int8)
    for k in range(m):
        signal = int(state[k, SIGNAL])
        for i in range(h, n):
            signal = signal_step(kind, ind, idx[k, 0], idx[k, 1], idx[k, 2], fparams[k, 0],
                                 fparams[k, 1], close, i, signal)
            out[k, i - h] = _clip(signal, direction)
        state[k, SIGNAL] = float(signal)
    return out


@numba.njit(cache=True, nogil=True)
def strategy_targets(kind, ind, idx, fparams, close, direction=LONG_SHORT):
    """Target arrays (int8, m x n) of the batch: the rule ``run_strategy_batch`` trades.

    For the single-run reference path (``simulate`` needs a target array); a
    sweep uses ``run_strategy_batch``, which never builds these. The one-chunk
    case of :func:`strategy_targets_chunk`.
    """
    state = run_state_init(idx.shape[0], 0.0)
    return strategy_targets_chunk(kind, ind, idx, fparams, close, 0, 0, state, direction)
