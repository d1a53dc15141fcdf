"""The run state: one parameter set's run over one symbol as a flat float64 row.

Kernel rules (every module in ``admf_dask.kernels``): numpy and numba only (no
pandas, dask or fsspec); compiled functions use ``@numba.njit(cache=True, nogil=True)``;
kernels never write into their inputs except the states and accumulators they are given.

Chunks
------
The backtest kernels process a symbol's bars as a sequence of time chunks: each
chunk kernel (``strategies.strategy_chunk``, ``simulate.simulate_stats_chunk``,
``simulate.simulate_chunk``, ``replay.ensemble_chunk``) advances every run of a
batch over the chunk's bars from the state the previous chunk left, and updates
that state in place. A batch's state is an ``(m, RUN_STATE_WIDTH)`` float64 array
(:func:`run_state_init`), so it can be stored and a run resumed later; the whole
series is the one-chunk case. Every chunk kernel makes the same per-bar calls
(``sim_step``, ``bar_update``, ``trade_update``, ``signal_step``), with the same
values in the same order, as a whole-series run, so any split of the bars gives
bit-identical states, statistics rows, curves and accumulators.

Conventions shared by the chunk kernels:

* Price arrays, indicator rows, target rows and signal rows hold ``h`` *halo*
  bars (the last bars of the previous chunk, already processed) and then the
  chunk's bars, all with the same length. Only the strategy kinds whose rule
  reads bar ``t - 1`` (CROSS, DONCHIAN) read the halo; ``h >= 1`` is required for
  them once ``t0 > 0``. ``0 <= h <= t0``.
* ``t0`` is the global index of the chunk's first bar, which is the number of bars
  processed before it: every row's bar count (``n_bars``) must equal it. The
  simulation and the statistics see the global index ``t = t0 + (i - h)`` of the
  chunk's bar ``i`` (entry bars, drawdown durations, "``t == 0``"), so the results
  do not depend on where the chunks are cut.
* The chunk's first bar trades the *pending* target of the state (decided at the
  previous chunk's last close); target rows of a chunk are read from the chunk's
  first bar on (``targets[i]`` is decided at chunk bar ``i`` and filled at the
  next bar's open).
* A chunk may have no bars (only halo or nothing): the state is unchanged.
* Portfolio accumulation (optional): ``timeline_pos`` has one position per chunk
  bar (not the halo's) in the columns of ``equity_acc``, strictly increasing.
* Inside the kernels a chunk that starts the series is passed ``t0 = None``
  (:func:`t0_arg`): it compiles apart with constant ``t0 = h = 0``, so the
  whole-series loop stays as fast as before chunks (:func:`t_base`).

Row layout (``RUN_STATE_WIDTH = 37`` float64, ``STATE_FIELDS`` names them)
--------------------------------------------------------------------------
=========  ==========================================================================
columns    contents
=========  ==========================================================================
0 - 11     the simulation state, ``sim_init``'s tuple in order: ``direction`` (-1 / 0
           / +1), ``units``, ``entry_price``, ``entry_comm``, ``entry_bar`` (global),
           ``sl_price``, ``tp_price``, ``stopped_dir``, ``ruined`` (0 / 1), ``cash``,
           ``n_trades``, ``fraction``. Integers and flags are stored as floats
           (exact below 2**53).
12 - 25    the per-bar statistics accumulators, ``stats.bar_init``'s tuple:
           ``first_eq, prev_eq`` (equity at the last processed close), ``min_eq,
           n_ret, s1, s2, sneg2, peak, peak_bar, max_dd, max_dur, underwater,
           exposed, n_bars`` (bars processed).
26 - 34    the per-trade accumulators, ``stats.trade_init``'s tuple: ``n, wins,
           sum_pos, sum_neg, sum_ret, sum_log1p, ruined_trades`` (trade_init's
           ``ruined``), ``best, worst``.
35         ``signal``: the strategy state of ``strategies.signal_step`` (-1 / 0 / +1)
           at the last processed bar (built-in strategy kinds only).
36         ``pending``: the target decided at the last processed close, traded at
           the next bar's open (0 at the start). A float: a fraction for the
           FRACTION replay rule and float target rows; an integer value otherwise.
=========  ==========================================================================

:func:`unpack_run` / :func:`pack_run` turn a row into the tuples the per-bar
functions take and back; kernels call them once per run and chunk, never per bar.
:func:`finalize_runs` turns states into statistics rows.

Sleeves on a timeline
---------------------
``_gaps`` / ``_sleeve_add`` add one run's equity over a chunk into an accumulator
row on a timeline (``admf_dask.kernels.portfolio``): the value before the chunk's
first bar is the run's equity before the chunk (:func:`sleeve_before`: its
starting cash if nothing was processed yet, else the equity at the last processed
close), bar ``t``'s equity from its own position up to the next bar's, and the
last bar's equity carried to the end of the row.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

from admf_dask.kernels.stats import N_STATS, bar_init, finalize, trade_init

__all__ = [
    "BAR0", "BAR_WIDTH", "EQUITY_QUANTUM", "PENDING", "RATIO_QUANTUM", "RUN_STATE_WIDTH", "SIGNAL", "SIM_WIDTH",
    "STATE_FIELDS", "TRADE0", "TRADE_WIDTH", "check_state", "check_timeline", "close_ends", "cost_args",
    "finalize_runs", "fixed", "fixed_np", "pack_run", "run_state_init", "sim_init", "sleeve_before", "unpack_run",
]

SIM_FIELDS = ("direction", "units", "entry_price", "entry_comm", "entry_bar", "sl_price",
              "tp_price", "stopped_dir", "ruined", "cash", "n_trades", "fraction")
BAR_FIELDS = ("first_eq", "prev_eq", "min_eq", "n_ret", "s1", "s2", "sneg2", "peak", "peak_bar",
              "max_dd", "max_dur", "underwater", "exposed", "n_bars")
TRADE_STATE_FIELDS = ("n", "wins", "sum_pos", "sum_neg", "sum_ret", "sum_log1p", "ruined_trades",
                      "best", "worst")
STATE_FIELDS = SIM_FIELDS + BAR_FIELDS + TRADE_STATE_FIELDS + ("signal", "pending")

SIM_WIDTH = len(SIM_FIELDS)      # 12
BAR_WIDTH = len(BAR_FIELDS)      # 14
TRADE_WIDTH = len(TRADE_STATE_FIELDS)  # 9
BAR0 = SIM_WIDTH                 # 12: first column of the bar accumulators
TRADE0 = BAR0 + BAR_WIDTH        # 26: first column of the trade accumulators
SIGNAL = TRADE0 + TRADE_WIDTH    # 35
PENDING = SIGNAL + 1             # 36
RUN_STATE_WIDTH = PENDING + 1    # 37

# Columns used directly by the kernels.
CASH = 9
N_TRADES = 10
PREV_EQ = BAR0 + 1
N_BARS = BAR0 + 13


def t_base(t0):
    """The global index of a chunk's first bar inside a kernel: ``t0``, or a constant 0 for ``None``.

    The chunk kernels take ``t0 = None`` for a chunk that starts the series
    (``h = t0 = 0``: the whole-series case): numba compiles that case apart, with
    ``t = j`` and ``h = 0`` constants (:func:`h_base`) and the input arrays
    instead of views of them (:func:`chunk_view`), so its loop is the loop of the
    kernels before chunks. With a runtime ``t0 + j`` and ``h + j`` the SMA grid
    ran 5-15 % slower, with views of the arrays 3-5 %. Same code, same values:
    bit-identical results.
    """


def h_base(h, t0):
    """The halo inside a kernel: ``h``, or a constant 0 when ``t0`` is ``None`` (see :func:`t_base`)."""


def chunk_view(a, h, t0):
    """``a[h:]``, the chunk's bars of a halo-and-chunk array; ``a`` itself when ``t0`` is ``None`` (see :func:`t_base`)."""


def _starts_series(ty):
    return isinstance(ty, (types.NoneType, types.Omitted))


@overload(t_base, inline="always")
def _t_base_ol(t0):
    if _starts_series(t0):
        return lambda t0: 0
    if isinstance(t0, types.Integer):
        return lambda t0: t0
    return None


@overload(h_base, inline="always")
def _h_base_ol(h, t0):
    if _starts_series(t0):
        return lambda h, t0: 0
    if isinstance(t0, types.Integer):
        return lambda h, t0: h
    return None


@overload(chunk_view, inline="always")
def _chunk_view_ol(a, h, t0):
    if _starts_series(t0):
        return lambda a, h, t0: a
    if isinstance(t0, types.Integer):
        return lambda a, h, t0: a[h:]
    return None


def t0_arg(t0):
    """What a Python dispatcher passes a chunk kernel for ``t0``: ``None`` at the series' start (see :func:`t_base`)."""
    return None if t0 == 0 else int(t0)


def cost_args(commission, slippage_bps, whole_units, stop_loss, take_profit):
    """The cost arguments a Python dispatcher passes a jitted kernel, each with one type.

    numba compiles a kernel once per combination of argument types (an int commission,
    an omitted default, ``None``): every dispatcher passes ``float, float, bool, float,
    float``. A stop or take-profit level of ``None`` is off, as NaN and 0 are.
    """
    def level(v):
        return np.nan if v is None else float(v)

    return float(commission), float(slippage_bps), bool(whole_units), level(stop_loss), level(take_profit)


@numba.njit(cache=True, nogil=True)
def sim_init(cash):
    """Start state of the per-bar state machine ``sim_step``: flat, ``cash`` in hand.

    A tuple ``(direction, units, entry_price, entry_comm, entry_bar, sl_price,
    tp_price, stopped_dir, ruined, cash, n_trades, fraction)``; callers only pass
    it on. ``fraction`` is the size fraction of the open position (float
    targets only; int-target loops never read it). Columns 0 - 11 of the run state.
    """
    return (0, 0.0, 0.0, 0.0, 0, 0.0, 0.0, 0, False, float(cash), 0, 1.0)


@numba.njit(cache=True, nogil=True)
def pack_run(row, sim, bar_st, trade_st, signal, pending):
    """Write one run's state tuples into its row (``RUN_STATE_WIDTH`` float64)."""
    (direction, units, entry_price, entry_comm, entry_bar, sl_price, tp_price,
     stopped_dir, ruined, cash, n_tr, frac) = sim
    row[0] = float(direction)
    row[1] = units
    row[2] = entry_price
    row[3] = entry_comm
    row[4] = float(entry_bar)
    row[5] = sl_price
    row[6] = tp_price
    row[7] = float(stopped_dir)
    row[8] = 1.0 if ruined else 0.0
    row[9] = cash
    row[10] = float(n_tr)
    row[11] = frac
    for j in range(BAR_WIDTH):
        row[BAR0 + j] = bar_st[j]
    for j in range(TRADE_WIDTH):
        row[TRADE0 + j] = trade_st[j]
    row[SIGNAL] = float(signal)
    row[PENDING] = float(pending)


@numba.njit(cache=True, nogil=True)
def unpack_run(row):
    """``(sim, bar_st, trade_st, signal, pending)`` of one run's row.

    ``sim`` has ``sim_init``'s types (ints, a bool), ``bar_st`` and ``trade_st``
    are the accumulator tuples, ``signal`` an int and ``pending`` a float.
    """
    sim = (int(row[0]), row[1], row[2], row[3], int(row[4]), row[5], row[6], int(row[7]),
           row[8] != 0.0, row[9], int(row[10]), row[11])
    b = BAR0
    bar_st = (row[b], row[b + 1], row[b + 2], row[b + 3], row[b + 4], row[b + 5], row[b + 6],
              row[b + 7], row[b + 8], row[b + 9], row[b + 10], row[b + 11], row[b + 12],
              row[b + 13])
    r = TRADE0
    trade_st = (row[r], row[r + 1], row[r + 2], row[r + 3], row[r + 4], row[r + 5], row[r + 6],
                row[r + 7], row[r + 8])
    return sim, bar_st, trade_st, int(row[SIGNAL]), row[PENDING]


@numba.njit(cache=True, nogil=True)
def run_state_init(m, cash):
    """Start states of ``m`` runs with ``cash`` each: float64 ``(m, RUN_STATE_WIDTH)``.

    Flat, nothing processed, strategy state 0, pending target 0.

    Examples
    --------
    >>> state = run_state_init(3, 10_000.0)
    >>> state.shape, float(state[0, 9])
    ((3, 37), 10000.0)
    """
    out = np.empty((m, RUN_STATE_WIDTH))
    sim = sim_init(cash)
    bar_st = bar_init()
    trade_st = trade_init()
    for k in range(m):
        pack_run(out[k], sim, bar_st, trade_st, 0, 0.0)
    return out


@numba.njit(cache=True, nogil=True)
def check_state(state, m, t0, h, n):
    """Validate a chunk call: ``state`` (m, RUN_STATE_WIDTH), ``0 <= h <= min(t0, n)``, every run at bar ``t0``."""
    if state.ndim != 2 or state.shape[0] != m or state.shape[1] != RUN_STATE_WIDTH:
        raise ValueError("chunk kernels: the state must be (m, RUN_STATE_WIDTH) for the batch's m runs")
    if h < 0 or h > n or h > t0:
        raise ValueError("chunk kernels: need 0 <= h <= t0 and h <= the bars given (h halo bars)")
    for k in range(m):
        if state[k, N_BARS] != t0:
            raise ValueError("chunk kernels: t0 must equal the bars the state has processed")


@numba.njit(cache=True, nogil=True)
def sleeve_before(row):
    """A run's equity before its next chunk: starting cash if no bar was processed, else the last close's."""
    if row[N_BARS] == 0.0:
        return row[CASH]
    return row[PREV_EQ]


@numba.njit(cache=True, nogil=True)
def close_ends(close):
    """``(close[0], close[-1])`` of a symbol's closes, NaNs without bars (finalize's buy-and-hold inputs)."""
    n = close.shape[0]
    if n == 0:
        return np.nan, np.nan
    return close[0], close[n - 1]


@numba.njit(cache=True, nogil=True)
def finalize_runs(state, first_close, last_close, periods_per_year):
    """Statistics rows (m, N_STATS), ``STAT_NAMES`` order, of finished runs.

    ``first_close`` / ``last_close``: the symbol's first and last close (for the
    buy-and-hold return). A run without bars gives an all-NaN row.
    """
    m = state.shape[0]
    out = np.empty((m, N_STATS))
    for k in range(m):
        _, bar_st, trade_st, _, _ = unpack_run(state[k])
        out[k] = finalize(bar_st, trade_st, first_close, last_close, periods_per_year)
    return out


# ---------------------------------------------------------------- sleeves on a timeline


@numba.njit(cache=True, nogil=True)
def _gaps(timeline_pos):
    """Bars ``t`` followed by a gap in the union timeline (``pos[t + 1] > pos[t] + 1``)."""
    n = timeline_pos.shape[0]
    out = np.empty(max(n - 1, 0), dtype=np.int64)
    g = 0
    for t in range(n - 1):
        if timeline_pos[t + 1] > timeline_pos[t] + 1:
            out[g] = t
            g += 1
    return out[:g]


# Sums across sleeves in fixed point, so that they do not depend on the order they are added in (the
# task layout groups symbols one way or another): every value added into a portfolio accumulator is
# first rounded to a multiple of a power of two (``fixed``), and sums of such multiples are exact in
# float64 while they stay below 2**53 quanta. Equity in currency units: 2**-20 (~1e-6) up to ~8.6e9
# summed; ratios (trade returns, exposure, buy-and-hold) 2**-42 (~2e-13) up to 2,048 summed. Beyond
# that the sums are rounded as plain float sums are: as accurate, no longer independent of the order.
EQUITY_QUANTUM = 2.0 ** -20
RATIO_QUANTUM = 2.0 ** -42
_ROUNDER = 1.5 * 2.0 ** 52  # y + _ROUNDER - _ROUNDER rounds y to an integer (|y| < 2**51), no branch


@numba.njit(inline="always")
def fixed(x, quantum):
    """``x`` rounded to a multiple of ``quantum`` (a power of two): exact sums in any order (see above)."""
    return ((x / quantum + _ROUNDER) - _ROUNDER) * quantum


def fixed_np(x, quantum=EQUITY_QUANTUM):
    """:func:`fixed` in numpy (the same IEEE operations, the same values)."""
    return ((np.asarray(x, dtype=np.float64) / quantum + _ROUNDER) - _ROUNDER) * quantum


@numba.njit(inline="always")
def _add_run(row, equity_buf, t0, t1, p0):
    # Bars t0 .. t1 - 1 sit at the contiguous positions p0 .. p0 + t1 - t0 - 1.
    seg = row[p0:p0 + t1 - t0]
    src = equity_buf[t0:t1]
    for i in range(t1 - t0):
        seg[i] += fixed(src[i], EQUITY_QUANTUM)


@numba.njit(cache=True, nogil=True)
def _sleeve_add(row, timeline_pos, gaps, equity_buf, before):
    # Add the sleeve's curve on the timeline into ``row``: ``before`` up to its
    # first bar (all of the row without bars), bar t's equity from its own
    # position up to the next bar's (or the end). The bar loop only buffers the
    # curve; this separate (not inlined) function adds it, runs of bars at
    # contiguous positions as plain vector adds. Filling inside the bar loop cost
    # 27 % on 184 SMA sets x 2,520 bars, this ~12 %; inlining it also slowed the
    # targets kernel's bar loop 1.9x.
    n = equity_buf.shape[0]
    before = fixed(before, EQUITY_QUANTUM)
    if n == 0:
        for j in range(row.shape[0]):
            row[j] += before
        return
    for j in range(timeline_pos[0]):
        row[j] += before
    t0 = 0
    for i in range(gaps.shape[0]):
        t = gaps[i]
        _add_run(row, equity_buf, t0, t + 1, timeline_pos[t0])
        e = fixed(equity_buf[t], EQUITY_QUANTUM)
        for j in range(timeline_pos[t] + 1, timeline_pos[t + 1]):
            row[j] += e
        t0 = t + 1
    _add_run(row, equity_buf, t0, n, timeline_pos[t0])
    e = fixed(equity_buf[n - 1], EQUITY_QUANTUM)
    for j in range(timeline_pos[n - 1] + 1, row.shape[0]):
        row[j] += e


@numba.njit(cache=True, nogil=True)
def check_timeline(nc, m, timeline_pos, equity_acc):
    """Validate a chunk's timeline positions (one per chunk bar) and its ``(m, T)`` equity accumulator."""
    if timeline_pos.shape[0] != nc:
        raise ValueError("portfolio kernels: timeline_pos needs one entry per bar")
    if equity_acc.shape[0] != m:
        raise ValueError("portfolio kernels: accumulators must be equity (m, T), trade (m, 9) "
                         "and extra (m, 3) for the batch's m parameter sets")
    if nc > 0 and (timeline_pos[0] < 0 or timeline_pos[nc - 1] >= equity_acc.shape[1]):
        raise ValueError("portfolio kernels: timeline_pos points outside the union timeline")
    for t in range(1, nc):
        if timeline_pos[t] <= timeline_pos[t - 1]:
            raise ValueError("portfolio kernels: timeline_pos must be strictly increasing")
