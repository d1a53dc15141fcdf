"""Backtest simulation kernels: targets -> next-open fills -> equity -> statistics.

Kernel rules (every module in ``admf_dask.kernels``): numpy and numba only (no
pandas, dask or fsspec); compiled functions use ``@numba.njit(cache=True, nogil=True)``;
float64 price arrays in (inputs may be read-only); kernels allocate their outputs.
``nogil`` lets a Dask worker's event loop serve its peers and the scheduler while a
kernel runs: holding the GIL, a worker busy with a 0.5 s task kept the others
waiting for the indicator sets it held (a second of a 9 s sweep on 2 workers).

One state machine, ``sim_step`` (one bar), driven by one loop, ``_targets_run``
(one run over a time chunk of bars from its run state, see
:mod:`admf_dask.kernels.state`), so the entry points cannot disagree:

* ``simulate`` is the reference path: equity curve, position and the closed
  trades, for reports and tests. It is the one-chunk case of ``simulate_chunk``,
  which records a chunk's bars and the trades closed within it (global bar
  indices), so a series simulated chunk by chunk gives the same curve and trades.
* ``simulate_stats`` (and ``simulate_stats_batch`` over many target rows) is the
  fused path for sweeps: the same loop with recording switched off, folding each
  bar and each closed trade into the accumulators of
  ``admf_dask.kernels.stats`` as it goes; no per-bar arrays, no allocation in the
  loop. ``compute_stats(*simulate(...), close, ppy)`` equals
  ``simulate_stats(...)`` bit for bit (the tests pin it). ``simulate_stats_batch``
  is the one-chunk case of ``simulate_stats_chunk`` (which can also add each
  run's sleeve equity into a portfolio accumulator row) and ``finalize_runs``.

Whatever the chunks, the per-bar calls are the same, with the same values in the
same order, as over the whole series: results are bit-identical.

Execution semantics
-------------------
* Targets are ``-1, 0, +1`` (short, flat, long with all equity; any int array,
  read by sign). The caller clips them for long-only or short-only modes.
* Fractional targets: a float target ``raw`` means direction ``sign(raw)`` with
  the fraction ``f = min(|raw|, 1)`` of equity (0.5: long with half the equity;
  NaN: flat). Integer targets, and floats of magnitude 1 or more, are ``f = 1``
  and take exactly the all-in path below (bit-identical results). A change of
  target, of direction *or* of fraction, closes the open position and opens the
  new one at that open (two fills, as a reversal), sized on the fraction of the
  equity after the exit: ``units = f * equity / (fill * (1 + commission))``; the
  rest stays in cash. With ``whole_units`` and ``f < 1`` the count is
  backtesting.py's for ``buy(size=f)`` / ``sell(size=f)``:
  ``(equity * f) // (fill + (f * fill * commission) / f)``, with no ``1 - eps``
  factor (backtesting.py applies that only to its default size, all equity,
  which is what ``f = 1`` uses): 10,000 at ``f = 0.5`` buys 2 units priced
  2,500. A target held at the same value never resizes: the position drifts
  with the price, as an all-in one does. Only float targets track the fraction; the kernels typed for int
  targets compile the all-in path alone (``sim_step`` is inlined and
  specialised on the target's type).
* A target decided at bar ``t`` (data up to ``t``'s close) fills at bar ``t+1``'s
  open. The target on the last bar is never executed. Bar ``t`` reads only bar
  ``t``'s prices and ``targets[t-1]``, so nothing looks ahead.
* Slippage ``slippage_bps`` works against the trader on every fill, including
  exits and stops: buys fill at ``price * (1 + s)``, sells at ``price * (1 - s)``.
  (backtesting.py's ``spread`` adjusts entries only; the oracle tests use 0.)
* A change of target closes the open position (one fill) and opens the new one
  (a second fill): a long -> short reversal is two fills.
* Sizing is all-in on the equity after any exit at that open:
  ``units = equity / (fill * (1 + commission))``, so the notional plus its
  commission spends exactly the equity (the brief's ``equity / fill`` would leave
  cash at ``-commission * equity``: a little leverage). With ``whole_units`` the
  count is floored with backtesting.py's float operations,
  ``(equity * (1 - eps)) // (fill + commission per unit)``, so that the oracle
  lands on the same integers; its "all equity" is ``1 - 2**-52`` of it, so 10,000
  buys one unit priced exactly 5,000, not two. When that is 0 units, or equity is not positive,
  no position opens and the order is retried at the next open while the target
  persists (backtesting.py cancels the order and waits for the strategy's next one).
* Commission is ``commission * |units| * fill`` on every fill, entry and exit.
* Equity is ``cash + units * close`` at each bar's close (units signed). A position
  still open on the last bar is marked at that close, no exit commission charged,
  and is not in the trades record (backtesting.py with ``finalize_trades=False``).
* Stop-loss and take-profit are fractions of the entry fill price (NaN or 0 = off):
  long stop at ``entry * (1 - stop_loss)``, target at ``entry * (1 + take_profit)``,
  mirrored for shorts. They are live from the entry fill on, so they are checked
  against the entry bar's low/high too, as backtesting.py's ``buy(sl=, tp=)`` does
  (it treated missing that as a bug, kernc/backtesting.py#119): the open fill
  comes before the rest of the bar's range, so no look-ahead. A stop fills at its price,
  or at the open if the bar gapped through it (the worse price for a stop-loss, the
  better one for a take-profit). If both levels lie within one bar, the stop-loss
  wins (pessimistic, as backtesting.py).
* After a stop exit the kernel stays flat until the target's direction differs
  from the stopped direction (a change of fraction alone does not re-enter); a
  new target then fills at the next open as usual. This is
  what a backtesting.py strategy that trades on signal changes does: it issues no
  new order until its next signal.
* If equity is 0 or less at a close (possible only when short), an open position
  is liquidated at that close with commission, the account stops trading and its
  equity is 0 from then on (backtesting.py also stops there).

Trades record
-------------
A tuple of arrays, one element per closed trade, fields ``TRADE_FIELDS``:
``entry_bar, exit_bar`` (int64), ``direction`` (int64, +1 long / -1 short),
``size`` (units, positive), ``entry_price, exit_price`` (fills incl. slippage),
``pnl`` (cash, net of both commissions) and ``return`` (``pnl / (size *
entry_price)``, backtesting.py's ``Trade.pl_pct``).
"""
from __future__ import annotations

import math
import sys

import numba
import numpy as np
from numba import types
from numba.extending import overload

from admf_dask.kernels.state import (
    N_TRADES, _gaps, _sleeve_add, check_state, check_timeline, chunk_view, close_ends, cost_args,
    finalize_runs, h_base, pack_run, run_state_init, sim_init, sleeve_before, t0_arg, t_base,
    unpack_run,
)
from admf_dask.kernels.stats import TRADE_FIELDS, bar_update, trade_update

__all__ = [
    "TRADE_FIELDS",
    "sim_init",
    "sim_step",
    "simulate",
    "simulate_chunk",
    "simulate_stats",
    "simulate_stats_batch",
    "simulate_stats_chunk",
]

# backtesting.py's default order size: "all equity" as a fraction just below 1.
_FULL_EQUITY = 1.0 - sys.float_info.epsilon


@numba.njit(cache=True, nogil=True)
def _whole_units(budget, per_unit):
    """``budget // per_unit`` as backtesting.py computes it, without the slow fmod path when safe."""
    q = budget / per_unit
    whole = math.floor(q)
    tol = 1e-9 * max(1.0, q)
    if q - whole < tol or q - whole > 1.0 - tol:
        # Near an integer floor(a / b) may round differently from Python's
        # a // b (fmod based, slow); take the slow exact path only here.
        whole = budget // per_unit
    return whole


@numba.njit(cache=True, nogil=True)
def _units(equity, fill, commission, whole_units):
    if whole_units:
        # Same float operations as backtesting.py's _Broker._process_orders, so that
        # the floor lands on the same integer.
        return _whole_units(equity * _FULL_EQUITY, fill + (_FULL_EQUITY * fill * commission) / _FULL_EQUITY)
    return equity / (fill * (1.0 + commission))


@numba.njit(cache=True, nogil=True)
def _units_fraction(equity, f, fill, commission, whole_units):
    """Units of a position of ``f`` (0 < f < 1) of ``equity``.

    Whole units: backtesting.py's ``buy(size=f)``, the float operations of
    ``_Broker._process_orders``: ``int((margin_available * leverage * f) //
    (adjusted_price + commission(f, price) / f))`` with leverage 1, spread 0 and
    ``commission(f, price) = 0 + f * price * commission``.
    """
    if whole_units:
        return _whole_units(equity * f, fill + (f * fill * commission) / f)
    return equity * f / (fill * (1.0 + commission))


# Target-type dispatch for ``sim_step``: overloads, so that an int target compiles
# to exactly the all-in code of before fractions. Fraction logic in the shared
# code, even on a constant f = 1.0 that LLVM should fold (``if f < 1.0`` around
# the sizing, or ``want != 0 and f != frac`` in the fill test), made the fused
# SMA-cross kernel a third to a half slower.


def _fraction(raw):
    """Size fraction of a target: 1 for int targets, ``min(|raw|, 1)`` for floats."""


def _acts(raw, want, direction, frac):
    """Whether the target calls for fills: a new direction, or (floats) a new fraction."""


def _open_units(raw, cash, fill, commission, whole_units):
    """Units of a new position: ``_units`` for ints, sized on the fraction for floats."""


def _int_like(ty):
    return isinstance(ty, (types.Integer, types.Boolean))


@overload(_fraction, inline="always")
def _fraction_ol(raw):
    if isinstance(raw, types.Float):
        return lambda raw: min(abs(raw), 1.0)
    if _int_like(raw):
        return lambda raw: 1.0
    return None


@overload(_acts, inline="always")
def _acts_ol(raw, want, direction, frac):
    if isinstance(raw, types.Float):
        # Bitwise, not ``or``/``and``: short-circuits inside an inlined overload
        # trip numba's IR checks (NumbaIRAssumptionWarning).
        return lambda raw, want, direction, frac: (
            (want != direction) | ((want != 0) & (min(abs(raw), 1.0) != frac)))
    if _int_like(raw):
        return lambda raw, want, direction, frac: want != direction
    return None


@overload(_open_units, inline="always")
def _open_units_ol(raw, cash, fill, commission, whole_units):
    if isinstance(raw, types.Float):
        def impl(raw, cash, fill, commission, whole_units):
            f = min(abs(raw), 1.0)
            if f < 1.0:
                return _units_fraction(cash, f, fill, commission, whole_units)
            return _units(cash, fill, commission, whole_units)
        return impl
    if _int_like(raw):
        return lambda raw, cash, fill, commission, whole_units: _units(
            cash, fill, commission, whole_units)
    return None


@numba.njit(cache=True, nogil=True)
def _exit(cash, direction, units, entry_price, entry_comm, fill, commission):
    """Close the position at ``fill``: new cash, net PnL, net return."""
    exit_comm = units * fill * commission
    cash += direction * units * fill - exit_comm
    pnl = direction * units * (fill - entry_price) - entry_comm - exit_comm
    ret = pnl / (units * entry_price)
    return cash, pnl, ret


@numba.njit(cache=True, nogil=True)
def _record_trade(trade_int, trade_float, k, entry_bar, exit_bar, direction, units,
                  entry_price, exit_price, pnl, ret):
    trade_int[k, 0] = entry_bar
    trade_int[k, 1] = exit_bar
    trade_int[k, 2] = direction
    trade_float[k, 0] = units
    trade_float[k, 1] = entry_price
    trade_float[k, 2] = exit_price
    trade_float[k, 3] = pnl
    trade_float[k, 4] = ret


@numba.njit(cache=True, nogil=True, inline="always")
def sim_bar(sim, trade_st, t, raw, o, h, lo, c, commission, slippage_bps, whole_units, stop_loss,
            take_profit, record, tr0, trade_int, trade_float):
    """``sim_step`` without the bar's statistics: returns ``(sim, trade_st, equity, in_market)``.

    The equity at the bar's close and whether the bar was in the market are what
    ``sim_step`` then folds with ``bar_update``; a loop that folds held bars
    itself (:func:`holds`) calls this for the others, so that ``bar_update`` has
    one call site in it.
    """
    (direction, units, entry_price, entry_comm, entry_bar, sl_price, tp_price,
     stopped_dir, ruined, cash, n_tr, frac) = sim
    s = slippage_bps * 1e-4
    sl_on = stop_loss > 0.0
    tp_on = take_profit > 0.0
    in_market = direction != 0
    equity = 0.0
    if not ruined:
        # 1. Market fills at the open for the target decided at the previous close.
        if t > 0:
            want = (raw > 0) - (raw < 0)
            if stopped_dir != 0:
                if want == stopped_dir:
                    want = 0
                else:
                    stopped_dir = 0
            # For int targets _acts is ``want != direction``, as before fractions.
            if _acts(raw, want, direction, frac):
                if direction != 0:
                    fill = o * (1.0 - s) if direction > 0 else o * (1.0 + s)
                    cash, pnl, ret = _exit(cash, direction, units, entry_price,
                                           entry_comm, fill, commission)
                    trade_st = trade_update(trade_st, pnl, ret)
                    if record:
                        _record_trade(trade_int, trade_float, n_tr - tr0, entry_bar, t,
                                      direction, units, entry_price, fill, pnl, ret)
                    n_tr += 1
                    direction = 0
                    units = 0.0
                if want != 0 and cash > 0.0:
                    fill = o * (1.0 + s) if want > 0 else o * (1.0 - s)
                    u = _open_units(raw, cash, fill, commission, whole_units)
                    if u > 0.0:
                        direction = want
                        units = u
                        frac = _fraction(raw)
                        entry_price = fill
                        entry_comm = u * fill * commission
                        entry_bar = t
                        cash -= direction * u * fill + entry_comm
                        in_market = True
                        if sl_on:
                            sl_price = fill * (1.0 - direction * stop_loss)
                        if tp_on:
                            tp_price = fill * (1.0 + direction * take_profit)

        # 2. Stop-loss / take-profit within the bar (the stop-loss first), or
        # 3. liquidation at the close of an account whose equity is gone.
        exit_fill = math.nan
        if direction != 0 and (sl_on or tp_on):
            if direction > 0:
                if sl_on and lo <= sl_price:
                    exit_fill = min(o, sl_price) * (1.0 - s)
                elif tp_on and h >= tp_price:
                    exit_fill = max(o, tp_price) * (1.0 - s)
            else:
                if sl_on and h >= sl_price:
                    exit_fill = max(o, sl_price) * (1.0 + s)
                elif tp_on and lo <= tp_price:
                    exit_fill = min(o, tp_price) * (1.0 + s)
            if exit_fill == exit_fill:
                stopped_dir = direction
        if (exit_fill != exit_fill and direction != 0
                and cash + direction * units * c <= 0.0):
            exit_fill = c
        if exit_fill == exit_fill:
            cash, pnl, ret = _exit(cash, direction, units, entry_price, entry_comm,
                                   exit_fill, commission)
            trade_st = trade_update(trade_st, pnl, ret)
            if record:
                _record_trade(trade_int, trade_float, n_tr - tr0, entry_bar, t,
                              direction, units, entry_price, exit_fill, pnl, ret)
            n_tr += 1
            direction = 0
            units = 0.0
        equity = cash + direction * units * c
        if equity <= 0.0:
            ruined = True
            equity = 0.0

    sim = (direction, units, entry_price, entry_comm, entry_bar, sl_price, tp_price,
           stopped_dir, ruined, cash, n_tr, frac)
    return sim, trade_st, equity, in_market


@numba.njit(cache=True, nogil=True, inline="always")
def sim_step(sim, bar_st, trade_st, t, raw, o, h, lo, c, commission, slippage_bps,
             whole_units, stop_loss, take_profit, record, bar0, tr0, equity_out, position_out,
             trade_int, trade_float):
    """Advance the simulation over bar ``t``; ``raw`` is the target decided at ``t - 1``.

    ``raw`` is an int (direction, all-in) or a float (direction and size
    fraction, see the module docstring); the function is inlined, so each caller
    compiles only the path of its target type.

    The one place the execution semantics live: ``_run`` (targets from an array)
    and the fused strategy kernels (``admf_dask.kernels.strategies``, targets
    computed inline) both call it, so they cannot disagree. Folds the bar and any
    closed trade into the statistics states ``bar_st`` / ``trade_st``; writes the
    per-bar and per-trade arrays only if ``record``: bar ``t`` at ``t - bar0``, the
    run's trade number ``j`` at row ``j - tr0`` (a chunk's arrays start at its
    first bar and at the trades closed before it). ``t`` is the global bar index.
    Returns ``(sim, bar_st, trade_st)``.
    """
    sim, trade_st, equity, in_market = sim_bar(sim, trade_st, t, raw, o, h, lo, c, commission, slippage_bps,
                                               whole_units, stop_loss, take_profit, record, tr0, trade_int,
                                               trade_float)
    bar_st = bar_update(bar_st, t, equity, in_market)
    if record:
        equity_out[t - bar0] = equity
        position_out[t - bar0] = sim[0] * sim[1]
    return sim, bar_st, trade_st


@numba.njit(cache=True, nogil=True)
def stops_on(stop_loss, take_profit):
    """Whether a stop-loss or a take-profit level is set (``sim_step``'s ``sl_on or tp_on``)."""
    return stop_loss > 0.0 or take_profit > 0.0


@numba.njit(cache=True, nogil=True)
def holds(sim, stops):
    """Whether, from state ``sim``, a bar whose target is the position held is a *held bar*.

    A held bar (``t > 0``, the target's direction that of the position) is one
    where ``sim_step`` makes no fill and checks no stop: the account is not
    ruined, no stop exit is pending (``stopped_dir`` 0), and the position is flat
    or no stop level is set (``stops``, :func:`stops_on`). Unless the equity at its
    close (:func:`hold_equity`) is 0 or less (a liquidation or a ruin) or NaN,
    ``sim_step`` then leaves ``sim`` as it is and folds only
    ``bar_update(bar_st, t, hold_equity(sim, close), direction != 0)``: the same
    operations in the same order, so a loop may fold held bars that way and call
    :func:`sim_bar` for the others with bit-identical results. Int targets only
    (a float target may also change the fraction).
    """
    return not sim[8] and sim[7] == 0 and (sim[0] == 0 or not stops)


@numba.njit(cache=True, nogil=True)
def hold_equity(sim, c):
    """Equity at a held bar's close ``c``: ``sim_step``'s ``cash + direction * units * c``."""
    return sim[9] + sim[0] * sim[1] * c


def _pending_as(pending, like):
    """The pending target of a state (a float) as the loop's target type: int for int rows."""


@overload(_pending_as, inline="always")
def _pending_as_ol(pending, like):
    dt = like.dtype
    if isinstance(dt, types.Float):
        return lambda pending, like: pending
    if _int_like(dt):
        return lambda pending, like: int(pending)
    return None


@numba.njit(inline="always")
def _targets_run(tk, open_, high, low, close, h, t0, row, commission, slippage_bps, whole_units,
                 stop_loss, take_profit, record, with_eq, equity_out, position_out, trade_int,
                 trade_float, equity_buf):
    # One run over a chunk's bars from its state row, which it updates. ``record``
    # and ``with_eq`` are constants at every call site: the statistics-only loop
    # carries no recording branches at all (4x faster than a runtime flag). The
    # arrays are viewed from the chunk's first bar and indexed by the loop
    # counter (an index offset by a runtime ``h`` costs numba's negative-index
    # checks on every read); with ``t0`` None (the chunk starts the series) ``tb``
    # and ``hh`` are constants 0 and the views the arrays themselves: the loop of
    # before chunks (state.t_base).
    tb = t_base(t0)
    hh = h_base(h, t0)
    nc = close.shape[0] - hh
    o_ = chunk_view(open_, h, t0)
    h_ = chunk_view(high, h, t0)
    l_ = chunk_view(low, h, t0)
    c_ = chunk_view(close, h, t0)
    tc = chunk_view(tk, h, t0)
    sim, bar_st, trade_st, signal, pending = unpack_run(row)
    tr0 = sim[10]
    first = _pending_as(pending, tk)  # decided at the previous chunk's last close
    for j in range(nc):
        raw = tc[j - 1] if j > 0 else first
        sim, bar_st, trade_st = sim_step(
            sim, bar_st, trade_st, tb + j, raw, o_[j], h_[j], l_[j], c_[j],
            commission, slippage_bps, whole_units, stop_loss, take_profit, record, tb, tr0,
            equity_out, position_out, trade_int, trade_float)
        if with_eq:
            equity_buf[j] = bar_st[1]  # equity at the close
    if nc > 0:
        pending = float(tc[nc - 1])
    pack_run(row, sim, bar_st, trade_st, signal, pending)


@numba.njit(cache=True, nogil=True)
def _row_stats(tk, open_, high, low, close, h, t0, row, commission, slippage_bps, whole_units,
               stop_loss, take_profit):
    # One run, statistics only: compiled apart, as the loop of before chunks was
    # (inlined into the batch loop it ran ~5 % slower).
    dummy_f = np.empty(0)
    _targets_run(tk, open_, high, low, close, h, t0, row, commission, slippage_bps, whole_units,
                 stop_loss, take_profit, False, False, dummy_f, dummy_f,
                 np.empty((0, 3), dtype=np.int64), np.empty((0, 5)), dummy_f)


@numba.njit(inline="always")
def _stats_chunk(with_eq, open_, high, low, close, targets, h, t0, state, commission,
                 slippage_bps, whole_units, stop_loss, take_profit, timeline_pos, equity_acc):
    m = targets.shape[0]
    n = close.shape[0]
    dummy_f = np.empty(0)
    dummy_i = np.empty((0, 3), dtype=np.int64)
    dummy_t = np.empty((0, 5))
    equity_buf = np.empty(n - h if with_eq else 0)  # one run's curve on the chunk's bars
    gaps = _gaps(timeline_pos) if with_eq else np.empty(0, dtype=np.int64)
    for k in range(m):
        row = state[k]
        before = sleeve_before(row) if with_eq else 0.0
        if with_eq:
            _targets_run(targets[k], open_, high, low, close, h, t0, row, commission, slippage_bps,
                         whole_units, stop_loss, take_profit, False, True, dummy_f, dummy_f,
                         dummy_i, dummy_t, equity_buf)
        else:
            _row_stats(targets[k], open_, high, low, close, h, t0, row, commission, slippage_bps,
                       whole_units, stop_loss, take_profit)
        if with_eq:
            # in fixed point (state.fixed): the sum is the same whatever the symbols' grouping and order
            _sleeve_add(equity_acc[k], timeline_pos, gaps, equity_buf, before)


@numba.njit(cache=True, nogil=True)
def _chunk_stats(open_, high, low, close, targets, h, t0, state, commission, slippage_bps,
                 whole_units, stop_loss, take_profit):
    _stats_chunk(False, open_, high, low, close, targets, h, t0, state, commission, slippage_bps,
                 whole_units, stop_loss, take_profit, np.empty(0, dtype=np.int64), np.empty((0, 0)))


@numba.njit(cache=True, nogil=True)
def _chunk_stats_eq(open_, high, low, close, targets, h, t0, state, commission, slippage_bps,
                    whole_units, stop_loss, take_profit, timeline_pos, equity_acc):
    _stats_chunk(True, open_, high, low, close, targets, h, t0, state, commission, slippage_bps,
                 whole_units, stop_loss, take_profit, timeline_pos, equity_acc)


@numba.njit(cache=True, nogil=True)
def _check_inputs(open_, high, low, close, targets):
    n = close.shape[0]
    if (open_.shape[0] != n or high.shape[0] != n or low.shape[0] != n
            or targets.shape[targets.ndim - 1] != n):
        raise ValueError(
            "simulate: open, high, low, close and targets need the same number of bars")


@numba.njit(cache=True, nogil=True)
def simulate_chunk(open_, high, low, close, targets, h, t0, state, commission=0.0,
                   slippage_bps=0.0, whole_units=False, stop_loss=np.nan, take_profit=np.nan):
    """``simulate`` over one time chunk: the chunk's equity, position and the trades it closed.

    Parameters
    ----------
    open_, high, low, close : float64 arrays (h + c,)
        ``h`` halo bars (processed by the previous chunk; not read) and the
        chunk's ``c`` bars (see :mod:`admf_dask.kernels.state`).
    targets : int or float array (h + c,)
        Aligned with the prices; ``targets[i]`` is decided at chunk bar ``i``. The
        chunk's first bar trades the state's pending target.
    h, t0 : int
        Halo bars, and the global index of the chunk's first bar (the bars
        processed before it).
    state : float64 (1, RUN_STATE_WIDTH)
        The run's state (:func:`~admf_dask.kernels.state.run_state_init` with the
        starting cash), updated in place.
    commission, slippage_bps, whole_units, stop_loss, take_profit
        As :func:`simulate`.

    Returns
    -------
    ``(equity (c,), position (c,), trades)``: the chunk's bars, and the trades
    closed within it (``TRADE_FIELDS``, global entry and exit bars). Concatenated
    over the chunks of a series, they are ``simulate``'s on the whole series.
    """
    _check_inputs(open_, high, low, close, targets)
    n = close.shape[0]
    check_state(state, 1, t_base(t0), h, n)
    nc = n - h
    equity = np.empty(nc)
    position = np.empty(nc)
    # Trades closed in the chunk: at most the position carried in plus one per entry.
    trade_int = np.empty((nc + 1, 3), dtype=np.int64)
    trade_float = np.empty((nc + 1, 5))
    tr0 = int(state[0, N_TRADES])
    _targets_run(targets, open_, high, low, close, h, t0, state[0], commission, slippage_bps,
                 whole_units, stop_loss, take_profit, True, False, equity, position, trade_int,
                 trade_float, equity)
    n_tr = int(state[0, N_TRADES]) - tr0
    trades = (
        trade_int[:n_tr, 0].copy(), trade_int[:n_tr, 1].copy(), trade_int[:n_tr, 2].copy(),
        trade_float[:n_tr, 0].copy(), trade_float[:n_tr, 1].copy(),
        trade_float[:n_tr, 2].copy(), trade_float[:n_tr, 3].copy(),
        trade_float[:n_tr, 4].copy(),
    )
    return equity, position, trades


def simulate(open_, high, low, close, targets, cash=10_000.0, commission=0.0,
             slippage_bps=0.0, whole_units=False, stop_loss=np.nan, take_profit=np.nan):
    """Reference single run: equity curve, position and closed trades.

    The one-chunk case of :func:`simulate_chunk`.

    Parameters
    ----------
    open_, high, low, close : float64 arrays (n,)
        Bar prices.
    targets : int or float array (n,)
        Desired position per bar, decided at the bar's close: -1 / 0 / +1 of
        equity (ints), or a signed fraction of equity in [-1, 1] (floats; see
        the module docstring).
    cash : float
        Starting equity.
    commission : float
        Fraction of traded notional charged on every fill, e.g. 0.002.
    slippage_bps : float
        Fill price moved against the trader by this many basis points.
    whole_units : bool
        Trade whole units (floored, as backtesting.py) instead of fractional ones.
    stop_loss, take_profit : float
        Exit levels as fractions of the entry price; NaN or 0 switches them off.

    Returns
    -------
    equity : float64 (n,)
        Equity at each close.
    position : float64 (n,)
        Signed units held at each close.
    trades : tuple of arrays
        Closed trades, fields ``TRADE_FIELDS`` (see the module docstring).

    Examples
    --------
    >>> equity, position, trades = simulate(o, h, l, c, targets, commission=0.001)  # doctest: +SKIP
    >>> entry_bar, exit_bar, direction, size, entry_px, exit_px, pnl, ret = trades  # doctest: +SKIP
    """
    # A Python front that passes every argument with one type: numba compiles a jitted
    # function with defaults once per combination of omitted arguments (37 of them
    # in the test suite), and each compilation of the simulation costs seconds.
    return _simulate_nb(open_, high, low, close, targets, float(cash),
                        *cost_args(commission, slippage_bps, whole_units, stop_loss, take_profit))


@numba.njit(cache=True, nogil=True)
def _simulate_nb(open_, high, low, close, targets, cash, commission, slippage_bps, whole_units, stop_loss,
                 take_profit):
    _check_inputs(open_, high, low, close, targets)
    state = run_state_init(1, cash)
    return simulate_chunk(open_, high, low, close, targets, 0, None, state, commission, slippage_bps,
                          whole_units, stop_loss, take_profit)


def simulate_stats(open_, high, low, close, targets, periods_per_year, cash=10_000.0,
                   commission=0.0, slippage_bps=0.0, whole_units=False,
                   stop_loss=np.nan, take_profit=np.nan):
    """Fused run: the statistics row of ``simulate`` without its arrays.

    Same arguments as ``simulate`` plus ``periods_per_year`` (bars per year, e.g.
    252.0 for daily bars). Returns float64 (N_STATS,) ordered as ``STAT_NAMES``,
    equal to ``compute_stats(*simulate(...), close, periods_per_year)``.

    Examples
    --------
    >>> row = simulate_stats(o, h, l, c, targets, 252.0, commission=0.002)  # doctest: +SKIP
    >>> dict(zip(STAT_NAMES, row))["sharpe"]                                # doctest: +SKIP
    """
    return _simulate_stats_nb(open_, high, low, close, targets, float(periods_per_year), float(cash),
                              *cost_args(commission, slippage_bps, whole_units, stop_loss, take_profit))


@numba.njit(cache=True, nogil=True)
def _simulate_stats_nb(open_, high, low, close, targets, periods_per_year, cash, commission, slippage_bps,
                       whole_units, stop_loss, take_profit):
    _check_inputs(open_, high, low, close, targets)
    state = run_state_init(1, cash)
    dummy_f = np.empty(0)
    _targets_run(targets, open_, high, low, close, 0, None, state[0], commission, slippage_bps,
                 whole_units, stop_loss, take_profit, False, False, dummy_f, dummy_f,
                 np.empty((0, 3), dtype=np.int64), np.empty((0, 5)), dummy_f)
    first, last = close_ends(close)
    return finalize_runs(state, first, last, periods_per_year)[0]


def simulate_stats_chunk(open_, high, low, close, targets, h, t0, state, commission=0.0,
                         slippage_bps=0.0, whole_units=False, stop_loss=np.nan, take_profit=np.nan,
                         timeline_pos=None, equity_acc=None):
    """Advance ``m`` runs over a target matrix's time chunk, folding statistics only.

    Parameters
    ----------
    open_, high, low, close : float64 (h + c,)
        ``h`` halo bars, then the chunk's ``c`` bars (:mod:`admf_dask.kernels.state`).
    targets : int or float (m, h + c)
        One row per run, aligned with the prices (``targets[k, i]`` is decided at
        chunk bar ``i``; the chunk's first bar trades the state's pending target).
    h, t0 : int
        Halo bars and the global index of the chunk's first bar.
    state : float64 (m, RUN_STATE_WIDTH)
        The runs' states, updated in place.
    commission, slippage_bps, whole_units, stop_loss, take_profit
        As :func:`simulate`.
    timeline_pos, equity_acc : int64 (c,), float64 (m, T), optional
        Also add each run's sleeve equity over the chunk into ``equity_acc[k]``:
        the run's equity before the chunk up to the chunk's first bar's position,
        then its equity at each close carried forward to the next bar's position
        and, after the last bar, to the end of the row (see
        :mod:`admf_dask.kernels.portfolio`).

    Finish with :func:`~admf_dask.kernels.state.finalize_runs`; ``simulate_stats_batch``
    is the one-chunk case.
    """
    h, t0 = int(h), int(t0)
    _check_inputs(open_, high, low, close, targets)
    if targets.ndim != 2:
        raise ValueError("simulate_stats_chunk: targets must be (m, bars)")
    check_state(state, targets.shape[0], t0, h, close.shape[0])
    args = (open_, high, low, close, targets, h, t0_arg(t0), state,
            *cost_args(commission, slippage_bps, whole_units, stop_loss, take_profit))
    if equity_acc is None:
        _chunk_stats(*args)
        return
    check_timeline(close.shape[0] - h, targets.shape[0], timeline_pos, equity_acc)
    _chunk_stats_eq(*args, timeline_pos, equity_acc)


def simulate_stats_batch(open_, high, low, close, targets, periods_per_year, cash=10_000.0,
                         commission=0.0, slippage_bps=0.0, whole_units=False,
                         stop_loss=np.nan, take_profit=np.nan):
    """``simulate_stats`` for each row of a (m, n) target matrix: returns (m, N_STATS).

    One row per parameter set over the same bars and costs: the shape a sweep
    batch produces. Runs on one core; parallelism is the caller's business. The
    one-chunk case of :func:`simulate_stats_chunk`.
    """
    return _simulate_stats_batch_nb(open_, high, low, close, targets, float(periods_per_year), float(cash),
                                    *cost_args(commission, slippage_bps, whole_units, stop_loss, take_profit))


@numba.njit(cache=True, nogil=True)
def _simulate_stats_batch_nb(open_, high, low, close, targets, periods_per_year, cash, commission, slippage_bps,
                             whole_units, stop_loss, take_profit):
    _check_inputs(open_, high, low, close, targets)
    state = run_state_init(targets.shape[0], cash)
    _chunk_stats(open_, high, low, close, targets, 0, None, state, commission, slippage_bps,
                 whole_units, stop_loss, take_profit)
    first, last = close_ends(close)
    return finalize_runs(state, first, last, periods_per_year)
