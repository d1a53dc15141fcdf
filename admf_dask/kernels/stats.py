"""Backtest statistics: one flat float64 row per run.

Kernel rules (every module in ``admf_dask.kernels``): numpy and numba only (no
pandas, dask or fsspec); compiled functions use ``@numba.njit(cache=True, nogil=True)``;
float64 arrays in (inputs may be read-only); kernels allocate their outputs.

The statistics are accumulated by two small compiled functions, ``bar_update``
(one call per bar) and ``trade_update`` (one call per closed trade), whose state
is a tuple of floats, then turned into a row by ``finalize`` (which needs only
the first and last close besides: the buy-and-hold return). ``compute_stats``
drives them from a finished equity curve and trade list; the fused simulation
(``admf_dask.kernels.simulate.simulate_stats``) drives them from inside its bar
loop. Both call the same functions with the same values in the same order, so
the two paths give bit-identical rows. The states are plain floats, so a run
processed in time chunks carries them from chunk to chunk in its run state
(:mod:`admf_dask.kernels.state`). :class:`PeriodsPerYearStream` is
:func:`periods_per_year` over timestamps that arrive chunk by chunk.

Statistic definitions (all fractions, not percent; ``N`` is ``periods_per_year``;
``r_t = equity[t] / equity[t-1] - 1`` for ``t = 1 .. n-1``, ``m = n - 1`` returns):

==========================  ===========================================================
total_return                ``equity[-1] / equity[0] - 1``
cagr                        ``(equity[-1] / equity[0]) ** (N / m) - 1``: the geometric
                            mean bar return compounded over a year. This is
                            backtesting.py's ``Return (Ann.)``; its ``CAGR`` uses
                            calendar time, which a kernel without timestamps lacks.
ann_volatility              ``sqrt((var(r, ddof=1) + (1+g)**2)**N - (1+g)**(2N))`` with
                            ``g`` the geometric mean bar return (backtesting.py's
                            formula for compounded returns).
sharpe                      ``cagr / ann_volatility``, risk-free rate 0 (NaN if vol is 0).
sortino                     ``cagr / (sqrt(mean(min(r, 0)**2)) * sqrt(N))`` (inf if no
                            losing bar and ``cagr > 0``, as backtesting.py).
calmar                      ``cagr / -max_drawdown`` (NaN without a drawdown).
max_drawdown                ``-max(1 - equity / cummax(equity))``: a negative fraction.
max_drawdown_duration       longest run in bars from a running-peak bar to the bar that
                            recovers it, or to the last bar if not recovered; 0 if
                            equity never falls below its peak.
n_trades                    number of closed trades.
win_rate                    fraction of closed trades with ``pnl > 0``.
profit_factor               ``sum(returns > 0) / |sum(returns < 0)|`` over trade returns
                            (not cash PnL, as backtesting.py); NaN without a loss.
avg_trade                   geometric mean trade return ``exp(mean(log1p(ret))) - 1``
                            (0 if any trade lost 100 % or more, as backtesting.py).
best_trade, worst_trade     max / min trade return.
expectancy                  arithmetic mean trade return.
exposure                    fraction of bars in the market at any moment of the bar:
                            the bars ``entry_bar .. exit_bar`` of every trade, plus the
                            bars whose close holds a position.
buy_and_hold_return         ``close[-1] / close[0] - 1``.
==========================  ===========================================================

Trade statistics cover closed trades only (backtesting.py with its default
``finalize_trades=False``); NaN when there are none. Where this differs from
backtesting.py (``backtesting/_stats.py``), and why:

* Returns are per bar. backtesting.py first resamples intraday equity to daily
  closes; a sweep kernel annualises with ``periods_per_year`` instead (use
  ``periods_per_year`` below). On daily bars the two agree.
* The geometric mean bar return comes from ``equity[-1] / equity[0]`` rather than
  a sum of ``log(1 + r)``: equal in exact arithmetic, one ``pow`` instead of a
  ``log`` per bar.
* A ruined account (equity reaching 0; the simulation liquidates and stops
  trading) gives ``cagr = -1`` and NaN volatility, Sharpe, Sortino and Calmar.
  backtesting.py reports an annual return of 0 there, which ranks a blown account
  above every losing one.
* ``max_drawdown_duration`` is in bars (backtesting.py: a Timedelta), counts a
  drawdown still open on the last bar however short, and is 0, not NaN, without
  drawdowns.
* ``exposure`` counts the bars of the position still open at the end;
  backtesting.py only counts closed trades.
* ``buy_and_hold_return`` starts at bar 0, like the equity curve; backtesting.py
  starts after the strategy's indicator warm-up.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from admf_dask.kernels.names import N_STATS, STAT_NAMES, TRADE_FIELDS  # noqa: F401  (re-exported)

_NAN = np.nan


@numba.njit(cache=True, nogil=True)
def bar_init():
    """Empty per-bar accumulator state (a tuple of 14 floats)."""
    # first_eq, prev_eq, min_eq, n_ret, s1, s2, sneg2, peak, peak_bar,
    # max_dd, max_dur, underwater, exposed, n_bars
    return (_NAN, _NAN, np.inf, 0.0, 0.0, 0.0, 0.0, -np.inf, 0.0,
            0.0, 0.0, 0.0, 0.0, 0.0)


@numba.njit(cache=True, nogil=True)
def bar_update(st, t, equity, in_market):
    """Fold bar ``t`` (equity at its close, in the market during it) into ``st``."""
    (first_eq, prev_eq, min_eq, n_ret, s1, s2, sneg2, peak, peak_bar,
     max_dd, max_dur, underwater, exposed, n_bars) = st
    if t == 0:
        first_eq = equity
    elif prev_eq > 0.0:
        r = equity / prev_eq - 1.0
        n_ret += 1.0
        s1 += r
        s2 += r * r
        neg = min(r, 0.0)
        sneg2 += neg * neg
    if equity < min_eq:
        min_eq = equity
    if equity >= peak:
        # A recovery ends a drawdown: its duration runs from the old peak bar.
        if underwater > 0.0 and t - peak_bar > max_dur:
            max_dur = t - peak_bar
        peak = equity
        peak_bar = float(t)
        underwater = 0.0
    else:
        dd = 1.0 - equity / peak
        if dd > max_dd:
            max_dd = dd
        if t - peak_bar > max_dur:
            max_dur = t - peak_bar
        underwater = 1.0
    if in_market:
        exposed += 1.0
    return (first_eq, equity, min_eq, n_ret, s1, s2, sneg2, peak, peak_bar,
            max_dd, max_dur, underwater, exposed, n_bars + 1.0)


@numba.njit(cache=True, nogil=True)
def trade_init():
    """Empty per-trade accumulator state (a tuple of 9 floats)."""
    # n, wins, sum_pos, sum_neg, sum_ret, sum_log1p, ruined, best, worst
    return (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -np.inf, np.inf)


@numba.njit(cache=True, nogil=True)
def trade_update(st, pnl, ret):
    """Fold one closed trade (net cash PnL, net return) into ``st``."""
    n, wins, sum_pos, sum_neg, sum_ret, sum_log1p, ruined, best, worst = st
    # Branch-free: trade outcomes are unpredictable to the CPU.
    wins += 1.0 if pnl > 0.0 else 0.0
    sum_pos += max(ret, 0.0)
    sum_neg += min(ret, 0.0)
    if 1.0 + ret > 0.0:
        sum_log1p += math.log1p(ret)
    else:
        ruined = 1.0
    return (n + 1.0, wins, sum_pos, sum_neg, sum_ret + ret, sum_log1p, ruined,
            max(best, ret), min(worst, ret))


@numba.njit(cache=True, nogil=True)
def finalize(bar_st, trade_st, first_close, last_close, periods_per_year):
    """Turn accumulator states into a float64 row ordered as ``STAT_NAMES``.

    ``first_close`` and ``last_close`` are the symbol's first and last close (the
    buy-and-hold return needs nothing else). No bar folded: an all-NaN row.
    """
    (first_eq, last_eq, min_eq, m, s1, s2, sneg2, peak, peak_bar,
     max_dd, max_dur, underwater, exposed, n_bars) = bar_st
    n_tr, wins, sum_pos, sum_neg, sum_ret, sum_log1p, tr_ruined, best, worst = trade_st
    ppy = periods_per_year
    out = np.full(N_STATS, np.nan)
    if n_bars == 0.0:
        return out
    out[0] = last_eq / first_eq - 1.0
    if min_eq <= 0.0:
        # Ruined account: every return-based ratio is meaningless.
        out[1] = -1.0
    elif m > 0.0:
        growth = last_eq / first_eq
        g1 = growth ** (1.0 / m)  # 1 + geometric mean bar return
        cagr = growth ** (ppy / m) - 1.0
        out[1] = cagr
        if m > 1.0:
            var = max((s2 - s1 * s1 / m) / (m - 1.0), 0.0)
            vol2 = (var + g1 * g1) ** ppy - g1 ** (2.0 * ppy)
            vol = math.sqrt(max(vol2, 0.0))
            out[2] = vol
            if vol > 0.0:
                out[3] = cagr / vol
        downside = math.sqrt(sneg2 / m) * math.sqrt(ppy)
        if downside > 0.0:
            out[4] = cagr / downside
        elif cagr > 0.0:
            out[4] = np.inf
        if max_dd > 0.0:
            out[5] = cagr / max_dd
    out[6] = -max_dd
    out[7] = max_dur
    out[8] = n_tr
    if n_tr > 0.0:
        out[9] = wins / n_tr
        if sum_neg < 0.0:
            out[10] = sum_pos / -sum_neg
        out[11] = 0.0 if tr_ruined > 0.0 else math.exp(sum_log1p / n_tr) - 1.0
        out[12] = best
        out[13] = worst
        out[14] = sum_ret / n_tr
    out[15] = exposed / n_bars
    out[16] = last_close / first_close - 1.0
    return out


@numba.njit(cache=True, nogil=True)
def compute_stats(equity, position, trades, close, periods_per_year):
    """Statistics row (ordered as ``STAT_NAMES``) of a finished simulation.

    Parameters
    ----------
    equity, position : float64 arrays (n,)
        Equity at each bar's close and signed units held at each close, as
        returned by ``simulate``.
    trades : tuple of arrays
        The closed-trade record returned by ``simulate`` (fields ``TRADE_FIELDS``).
    close : float64 array (n,)
        Close prices, for the buy-and-hold return.
    periods_per_year : float
        Bars per year, e.g. 252 for daily bars (see ``periods_per_year``).

    Examples
    --------
    >>> eq, pos, trades = simulate(o, h, l, c, targets)      # doctest: +SKIP
    >>> row = compute_stats(eq, pos, trades, c, 252.0)        # doctest: +SKIP
    >>> dict(zip(STAT_NAMES, row))["sharpe"]                  # doctest: +SKIP
    """
    n = equity.shape[0]
    entry_bar, exit_bar = trades[0], trades[1]
    pnl, ret = trades[6], trades[7]
    in_market = position != 0.0
    for k in range(entry_bar.shape[0]):
        in_market[entry_bar[k]:exit_bar[k] + 1] = True
    bar_st = bar_init()
    for t in range(n):
        bar_st = bar_update(bar_st, t, equity[t], in_market[t])
    trade_st = trade_init()
    for k in range(pnl.shape[0]):
        trade_st = trade_update(trade_st, pnl[k], ret[k])
    if n == 0:
        return finalize(bar_st, trade_st, np.nan, np.nan, periods_per_year)
    return finalize(bar_st, trade_st, close[0], close[close.shape[0] - 1], periods_per_year)


_NS_PER_DAY = 86_400 * 10**9


def periods_per_year(timestamps_ns) -> float:
    """Bars per year inferred from the bars' real rate (numpy only, no numba).

    Daily bars give 252 (365 if a sizeable share of bars falls on weekends, as
    crypto data does, following backtesting.py's rule), weekly 52, monthly 12,
    yearly 1 (by the median bar spacing). Intraday bars give the median number of
    bars per active UTC day times the trading days per year of their calendar:
    365 when weekends are present (24x7), 260 when a day's bars span 20 hours or
    more without weekends (24x5: FX, futures), else 252 (an exchange session:
    390 minute bars of a 6.5-hour session give 252 * 390). The first and the last
    day are left out of the median when there are three days or more (they may be
    partial); with fewer, the fullest day counts.

    Parameters
    ----------
    timestamps_ns : array of int64 nanoseconds since the epoch (or datetime64)
        Bar timestamps, ascending; at least two.

    Examples
    --------
    >>> import numpy as np
    >>> days = np.arange(np.datetime64("2024-01-01"), np.datetime64("2024-03-01"))
    >>> periods_per_year(days[np.is_busday(days)].astype("datetime64[ns]"))
    252.0
    >>> minutes = np.datetime64("2024-01-02T14:30", "ns") + np.arange(390) * 60 * 10**9
    >>> periods_per_year(minutes)
    98280.0
    >>> fx = np.datetime64("2024-01-07T22:00", "ns") + np.arange(120) * 3600 * 10**9  # Sun 22:00 .. Fri 21:00
    >>> periods_per_year(fx)
    6240.0
    """
    stream = PeriodsPerYearStream()
    stream.update(timestamps_ns)
    if stream.n < 2:
        raise ValueError(
            f"periods_per_year needs a 1-d array of at least two timestamps, got shape ({stream.n},)")
    return stream.value()


def _as_ns(timestamps_ns) -> np.ndarray:
    ts = np.asarray(timestamps_ns)
    if ts.dtype.kind == "M":
        ts = ts.astype("datetime64[ns]").view(np.int64)
    return ts.astype(np.int64, copy=False)


def _hist_median(values: np.ndarray, counts: np.ndarray) -> float:
    """``float(np.median(x))`` of the values ``values`` (ascending, distinct) occurring ``counts`` times."""
    total = int(counts.sum())
    upto = np.cumsum(counts)
    hi = values[int(np.searchsorted(upto, total // 2, side="right"))]
    if total % 2:
        return float(hi)
    lo = values[int(np.searchsorted(upto, total // 2 - 1, side="right"))]
    return (float(lo) + float(hi)) / 2.0


def _hist_add(values: np.ndarray, counts: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The histogram ``(values, counts)`` with the values ``new`` added."""
    if new.shape[0] == 0:
        return values, counts
    v, c = np.unique(new, return_counts=True)
    merged = np.concatenate([values, v])
    order = np.argsort(merged, kind="stable")
    merged = merged[order]
    both = np.concatenate([counts, c.astype(np.int64)])[order]
    keep = np.r_[True, merged[1:] != merged[:-1]]
    return merged[keep], np.add.reduceat(both, np.flatnonzero(keep)).astype(np.int64)


_ROUND_THE_CLOCK_NS = 20 * 3600 * 10**9  # a day's bars spanning this much: 24x5 (or 24x7) trading


def _classify(spacing: float, weekend_share: float, bars_per_day: float | None = None) -> float:
    """Bars per year from the median spacing (ns), the share of bars on weekends and the bars per active day.

    ``bars_per_day`` None (a state saved before it was counted): intraday bars as a
    6.5-hour session, or 24 hours when weekends are present.
    """
    if not spacing > 0:
        raise ValueError("periods_per_year needs ascending timestamps (median spacing <= 0)")
    has_weekends = weekend_share > 2 / 7 * 0.6
    days = spacing / _NS_PER_DAY
    if days >= 300:
        return 1.0
    if days >= 25:
        return 12.0
    if days >= 5:
        return 52.0
    if days >= 0.75:
        return 365.0 if has_weekends else 252.0
    if bars_per_day is None:
        if has_weekends:
            return round(365.0 * _NS_PER_DAY / spacing, 6)
        return round(252.0 * 6.5 * 3600e9 / spacing, 6)
    if has_weekends:
        trading_days = 365.0
    elif bars_per_day * spacing >= _ROUND_THE_CLOCK_NS:
        trading_days = 260.0
    else:
        trading_days = 252.0
    return round(trading_days * bars_per_day, 6)


class PeriodsPerYearStream:
    """``periods_per_year`` of timestamps that arrive chunk by chunk (numpy and plain Python).

    ``update(chunk)`` takes the next timestamps (int64 ns or datetime64, in order;
    the spacing across the chunk boundary counts); :meth:`value` gives exactly
    ``periods_per_year`` of all timestamps so far. The state is small and exact:
    the count of each distinct spacing (the median is read off the counts with
    ``np.median``'s float64 rounding: the middle value, or the mean of the two
    middle values, ``(a + b) / 2`` in float64, for an even count), the number of
    timestamps on weekends, the count and the last timestamp; and of the UTC days
    with bars: how many, the first day's bars, the last day (still counting) and
    its bars, and the count of each distinct number of bars of the days between.
    Regular bars have a handful of distinct spacings (the bar, the overnight,
    weekend and holiday gaps) and of day counts; irregular ones as many as
    spacings, at worst.

    :meth:`to_arrays` / :meth:`from_arrays` store and restore it as int64 arrays
    (``scalars`` = [n, weekend, last, days, first day's bars, last day, its bars,
    then the day histogram as value, count pairs]; a 3-scalar state of an older
    version restores without day counts, valued as that version did).

    Examples
    --------
    >>> import numpy as np
    >>> minutes = np.datetime64("2024-01-02T14:30", "ns") + np.arange(390) * 60 * 10**9
    >>> stream = PeriodsPerYearStream()
    >>> for chunk in np.array_split(minutes, 7):
    ...     stream.update(chunk)
    >>> stream.value() == periods_per_year(minutes)
    True
    """

    __slots__ = ("counts", "cur_count", "cur_day", "day_counts", "day_values", "first_count", "last", "n",
                 "n_days", "spacings", "weekend")

    def __init__(self) -> None:
        self.spacings = np.empty(0, dtype=np.int64)  # distinct spacings, ascending
        self.counts = np.empty(0, dtype=np.int64)    # how often each occurs
        self.n = 0                                   # timestamps seen
        self.weekend = 0                             # of which on a Saturday or Sunday
        self.last = 0                                # the last timestamp (if n > 0)
        self.n_days = 0                              # UTC days with bars (-1: not counted, an old state)
        self.first_count = 0                         # bars on the first of them
        self.cur_day = 0                             # the last of them (still counting)
        self.cur_count = 0                           # its bars so far
        self.day_values = np.empty(0, dtype=np.int64)  # distinct bars per day of the days between, ascending
        self.day_counts = np.empty(0, dtype=np.int64)  # how many days had that many

    def update(self, timestamps_ns) -> None:
        """Fold the next timestamps in (a 1-d array, possibly empty)."""
        ts = _as_ns(timestamps_ns)
        if ts.ndim != 1:
            raise ValueError(f"periods_per_year needs a 1-d array of timestamps, got shape {ts.shape}")
        if ts.shape[0] == 0:
            return
        day = ts // _NS_PER_DAY
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0.
        self.weekend += int(np.count_nonzero(weekday >= 5))
        diffs = np.diff(ts, prepend=np.int64(self.last)) if self.n else np.diff(ts)
        if diffs.shape[0]:
            self.spacings, self.counts = _hist_add(self.spacings, self.counts, diffs)
        if self.n_days >= 0:
            self._count_days(day)
        self.n += int(ts.shape[0])
        self.last = int(ts[-1])

    def _count_days(self, day: np.ndarray) -> None:
        starts = np.flatnonzero(np.r_[True, day[1:] != day[:-1]])
        days = day[starts]
        sizes = np.diff(np.r_[starts, day.shape[0]]).astype(np.int64)
        if self.n_days and int(days[0]) == self.cur_day:  # the last day goes on
            self.cur_count += int(sizes[0])
            days, sizes = days[1:], sizes[1:]
        if days.shape[0] == 0:
            return
        done = np.r_[np.int64(self.cur_count), sizes[:-1]] if self.n_days else sizes[:-1]
        if self.n_days == 0:  # the very first day: its count is final when the next day starts
            self.first_count = int(sizes[0]) if days.shape[0] > 1 else 0
            between = done[1:]
        elif self.n_days == 1:  # the day that ended was the first
            self.first_count = int(done[0])
            between = done[1:]
        else:
            between = done
        self.day_values, self.day_counts = _hist_add(self.day_values, self.day_counts, between)
        self.n_days += int(days.shape[0])
        self.cur_day = int(days[-1])
        self.cur_count = int(sizes[-1])

    def bars_per_day(self) -> float | None:
        """The median bars per UTC day with bars (first and last left out from three days on), None if not counted."""
        if self.n_days < 0:
            return None
        if self.n_days >= 3:
            return _hist_median(self.day_values, self.day_counts)
        if self.n_days == 2:
            return float(max(self.first_count, self.cur_count))
        return float(self.cur_count)

    def median_spacing(self) -> float:
        """``float(np.median(np.diff(all timestamps)))``, from the counts."""
        total = int(self.counts.sum())
        if total == 0:
            raise ValueError(
                f"periods_per_year needs a 1-d array of at least two timestamps, got shape ({self.n},)")
        return _hist_median(self.spacings, self.counts)

    def value(self) -> float:
        """``periods_per_year`` of every timestamp folded in so far."""
        spacing = self.median_spacing()
        return _classify(spacing, self.weekend / self.n, self.bars_per_day())

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The state as int64 arrays: ``spacings``, ``counts`` and ``scalars`` (see the class)."""
        hist = np.stack([self.day_values, self.day_counts], axis=1).ravel()
        head = [self.n, self.weekend, self.last, self.n_days, self.first_count, self.cur_day, self.cur_count]
        return {"spacings": self.spacings.copy(), "counts": self.counts.copy(),
                "scalars": np.concatenate([np.array(head, dtype=np.int64), hist.astype(np.int64)])}

    @classmethod
    def from_arrays(cls, arrays) -> PeriodsPerYearStream:
        """The stream stored by :meth:`to_arrays`."""
        out = cls()
        out.spacings = np.asarray(arrays["spacings"], dtype=np.int64).copy()
        out.counts = np.asarray(arrays["counts"], dtype=np.int64).copy()
        scalars = np.asarray(arrays["scalars"], dtype=np.int64)
        out.n, out.weekend, out.last = (int(x) for x in scalars[:3])
        if scalars.shape[0] < 7:  # saved before days were counted
            out.n_days = -1
            return out
        out.n_days, out.first_count, out.cur_day, out.cur_count = (int(x) for x in scalars[3:7])
        hist = scalars[7:].reshape(-1, 2)
        out.day_values, out.day_counts = hist[:, 0].copy(), hist[:, 1].copy()
        return out
