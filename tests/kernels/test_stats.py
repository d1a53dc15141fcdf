"""Each statistic against an independent pandas / numpy computation."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from admf_dask.kernels.simulate import simulate
from admf_dask.kernels.stats import (
    N_STATS, STAT_NAMES, TRADE_FIELDS, compute_stats, periods_per_year,
)


def reference_stats(equity, position, trades, close, ppy):
    """The definitions of the stats module docstring, written the pandas way."""
    eq = pd.Series(equity)
    tr = pd.DataFrame(dict(zip(TRADE_FIELDS, trades)))
    r = eq.pct_change().dropna()
    out = {}
    out["total_return"] = eq.iloc[-1] / eq.iloc[0] - 1
    gmean = 0.0 if (r <= -1).any() else math.exp(np.log1p(r).sum() / len(r)) - 1
    ann = (1 + gmean) ** ppy - 1
    out["cagr"] = ann
    vol = math.sqrt((r.var(ddof=1) + (1 + gmean) ** 2) ** ppy - (1 + gmean) ** (2 * ppy))
    out["ann_volatility"] = vol
    out["sharpe"] = ann / vol if vol else np.nan
    downside = math.sqrt((r.clip(upper=0) ** 2).mean()) * math.sqrt(ppy)
    out["sortino"] = ann / downside if downside else (np.inf if ann > 0 else np.nan)
    dd = 1 - eq / eq.cummax()
    out["calmar"] = ann / dd.max() if dd.max() else np.nan
    out["max_drawdown"] = -dd.max()
    # Duration: for each run of bars under water, from the bar before it (the peak)
    # to the bar after it (the recovery) or to the last bar.
    longest, t, n = 0, 0, len(eq)
    while t < n:
        if dd.iloc[t] > 0:
            start = t - 1
            while t < n and dd.iloc[t] > 0:
                t += 1
            end = t if t < n else n - 1
            longest = max(longest, end - start)
        t += 1
    out["max_drawdown_duration"] = longest
    out["n_trades"] = len(tr)
    ret, pnl = tr["return"], tr["pnl"]
    if len(tr):
        out["win_rate"] = (pnl > 0).mean()
        losses = ret[ret < 0].sum()
        out["profit_factor"] = ret[ret > 0].sum() / -losses if losses else np.nan
        out["avg_trade"] = 0.0 if (ret <= -1).any() else np.expm1(np.log1p(ret).mean())
        out["best_trade"] = ret.max()
        out["worst_trade"] = ret.min()
        out["expectancy"] = ret.mean()
    else:
        for k in ("win_rate", "profit_factor", "avg_trade", "best_trade", "worst_trade",
                  "expectancy"):
            out[k] = np.nan
    in_market = np.asarray(position) != 0
    for entry, exit_ in zip(tr["entry_bar"], tr["exit_bar"]):
        in_market[entry:exit_ + 1] = True
    out["exposure"] = in_market.mean()
    out["buy_and_hold_return"] = close[-1] / close[0] - 1
    return out


def random_run(seed, n=800, **kwargs):
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0.0003, 0.02, n)))
    open_ = np.r_[50.0, close[:-1]] * np.exp(rng.normal(0, 0.005, n))
    high = np.maximum(open_, close) * 1.01
    low = np.minimum(open_, close) * 0.99
    targets = np.repeat(rng.integers(-1, 2, n // 8 + 1), 8)[:n].astype(np.int8)
    return simulate(open_, high, low, close, targets, 10_000.0, **kwargs), close


def assert_row_matches(row, expected):
    assert row.shape == (N_STATS,)
    got = dict(zip(STAT_NAMES, row))
    assert set(got) == set(expected)
    for name in STAT_NAMES:
        want = expected[name]
        if np.isnan(want):
            assert np.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(want, rel=1e-9, abs=1e-12), name


@pytest.mark.parametrize("ppy", [252.0, 252.0 * 390])
@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(commission=0.002, whole_units=True),
    dict(commission=0.001, slippage_bps=2.0, stop_loss=0.03, take_profit=0.05),
])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stats_of_simulations_match_pandas(seed, kwargs, ppy):
    (equity, position, trades), close = random_run(seed, **kwargs)
    assert len(trades[0]) > 20
    row = compute_stats(equity, position, trades, close, ppy)
    assert_row_matches(row, reference_stats(equity, position, trades, close, ppy))


def make_trades(entry, exit_, pnl, ret):
    k = len(entry)
    return (np.asarray(entry, dtype=np.int64), np.asarray(exit_, dtype=np.int64),
            np.ones(k, dtype=np.int64), np.ones(k), np.ones(k), np.ones(k),
            np.asarray(pnl, dtype=np.float64), np.asarray(ret, dtype=np.float64))


NO_TRADES = make_trades([], [], [], [])


def stats_dict(equity, position=None, trades=NO_TRADES, close=None, ppy=252.0):
    equity = np.asarray(equity, dtype=np.float64)
    position = np.zeros_like(equity) if position is None else np.asarray(position, float)
    close = np.ones_like(equity) if close is None else np.asarray(close, float)
    return dict(zip(STAT_NAMES, compute_stats(equity, position, trades, close, ppy)))


def test_hand_made_curve_matches_pandas():
    equity = np.array([100.0, 110.0, 99.0, 99.0, 120.0, 90.0, 95.0, 130.0, 125.0])
    position = np.array([0, 1, 1, 0, 0, -2, -2, 0, 0], dtype=float)
    trades = make_trades([1, 5, 8], [3, 7, 8], [5.0, -3.0, 2.0], [0.05, -0.03, 0.02])
    close = np.linspace(10, 12, len(equity))
    row = compute_stats(equity, position, trades, close, 252.0)
    assert_row_matches(row, reference_stats(equity, position, trades, close, 252.0))
    s = dict(zip(STAT_NAMES, row))
    assert s["max_drawdown"] == pytest.approx(-0.25)  # 120 -> 90
    assert s["max_drawdown_duration"] == 3            # bar 4 -> recovered at bar 7
    assert s["exposure"] == pytest.approx(7 / 9)      # bars 1-3, 5-8 (8 is entry = exit)


def test_flat_equity_without_trades():
    s = stats_dict(np.full(50, 1000.0))
    assert s["total_return"] == 0 and s["cagr"] == 0 and s["ann_volatility"] == 0
    assert s["max_drawdown"] == 0 and s["max_drawdown_duration"] == 0
    assert s["n_trades"] == 0 and s["exposure"] == 0
    for name in ("sharpe", "sortino", "calmar", "win_rate", "profit_factor", "avg_trade",
                 "best_trade", "worst_trade", "expectancy"):
        assert np.isnan(s[name]), name


def test_drawdown_duration_counts_an_unrecovered_drawdown_to_the_last_bar():
    assert stats_dict([1.0, 2.0, 1.5, 3.0])["max_drawdown_duration"] == 2  # recovered
    assert stats_dict([1.0, 2.0, 3.0, 2.5])["max_drawdown_duration"] == 1  # still under water
    assert stats_dict([5.0, 1.0, 2.0, 3.0, 4.0])["max_drawdown_duration"] == 4


def test_sortino_is_inf_without_losing_bars():
    s = stats_dict(np.linspace(100.0, 200.0, 30))
    assert s["sortino"] == np.inf and np.isnan(s["calmar"]) and s["max_drawdown"] == 0


def test_profit_factor_is_nan_without_a_losing_trade():
    trades = make_trades([1, 3], [2, 4], [1.0, 2.0], [0.01, 0.02])
    s = stats_dict(np.linspace(1.0, 2.0, 6), trades=trades)
    assert np.isnan(s["profit_factor"]) and s["win_rate"] == 1.0


def test_geometric_average_trade_is_zero_after_a_total_loss():
    trades = make_trades([1, 3], [2, 4], [5.0, -20.0], [0.5, -1.2])
    s = stats_dict(np.linspace(2.0, 1.0, 6), trades=trades)
    assert s["avg_trade"] == 0.0 and s["expectancy"] == pytest.approx(-0.35)


def test_ruined_equity():
    s = stats_dict([100.0, 80.0, 0.0, 0.0, 0.0])
    assert s["total_return"] == -1.0 and s["cagr"] == -1.0 and s["max_drawdown"] == -1.0
    for name in ("ann_volatility", "sharpe", "sortino", "calmar"):
        assert np.isnan(s[name]), name


def test_single_bar():
    s = stats_dict([100.0])
    assert s["total_return"] == 0.0 and np.isnan(s["cagr"]) and np.isnan(s["sharpe"])


def test_read_only_inputs():
    (equity, position, trades), close = random_run(4)
    for a in (equity, position, close, *trades):
        a.flags.writeable = False
    row = compute_stats(equity, position, trades, close, 252.0)
    assert np.isfinite(row).all()


# ---------------------------------------------------------------- periods_per_year


def busdays(start, count):
    days = pd.bdate_range(start, periods=count)
    return days.to_numpy().astype("datetime64[ns]").view(np.int64)


def test_periods_per_year_daily_exchange_bars():
    assert periods_per_year(busdays("2020-01-01", 300)) == 252.0


def test_periods_per_year_daily_bars_with_weekends():
    days = pd.date_range("2020-01-01", periods=400, freq="D").to_numpy()
    assert periods_per_year(days) == 365.0


def test_periods_per_year_minute_and_five_minute_bars():
    session = pd.date_range("2024-01-02 14:30", periods=390, freq="min")
    two_days = session.append(session + pd.Timedelta(days=1))
    assert periods_per_year(two_days.to_numpy()) == 252.0 * 390
    assert periods_per_year(two_days[::5].to_numpy()) == 252.0 * 78


def test_periods_per_year_round_the_clock_hourly_bars():
    hours = pd.date_range("2024-01-01", periods=24 * 30, freq="h").to_numpy()
    assert periods_per_year(hours) == 365.0 * 24


def test_periods_per_year_weekly_and_monthly():
    assert periods_per_year(pd.date_range("2000-01-07", periods=200, freq="W-FRI").to_numpy()) == 52
    assert periods_per_year(pd.date_range("2000-01-31", periods=60, freq="ME").to_numpy()) == 12


@pytest.mark.parametrize("bad", [np.array([1], dtype=np.int64), np.array([3, 2, 1])])
def test_periods_per_year_rejects_unusable_timestamps(bad):
    with pytest.raises(ValueError, match="periods_per_year"):
        periods_per_year(bad)
