"""Simulation kernels against backtesting.py run inside the test, plus the contract.

backtesting.py 0.6.6 defaults that make it the oracle: ``trade_on_close=False``
(market orders fill at the next bar's open), ``finalize_trades=False`` (a trade
still open at the end stays out of the trade list, and equity marks it at the last
close), ``spread=0``; with ``exclusive_orders=True`` a new order first closes the
open trade. Its ``buy()``/``sell()`` size whole units from all equity.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admf_dask.kernels.simulate import simulate, simulate_stats, simulate_stats_batch
from admf_dask.kernels.stats import STAT_NAMES, TRADE_FIELDS, compute_stats

bt = pytest.importorskip("backtesting")
from backtesting import Backtest, Strategy  # noqa: E402
from backtesting.test import GOOG  # noqa: E402

CASH = 10_000.0
COMMISSION = 0.002
STAT = {name: i for i, name in enumerate(STAT_NAMES)}


# ---------------------------------------------------------------- helpers


def ohlc(df):
    return tuple(df[k].to_numpy(dtype=np.float64) for k in ("Open", "High", "Low", "Close"))


def sma_cross_events(df, fast=10, slow=20):
    """+1 on the bar of a cross up, -1 on a cross down, else 0 (pandas rolling SMAs)."""
    diff = (df["Close"].rolling(fast).mean() - df["Close"].rolling(slow).mean()).to_numpy()
    prev = np.r_[np.nan, diff[:-1]]
    events = np.where((diff > 0) & (prev < 0), 1, np.where((diff < 0) & (prev > 0), -1, 0))
    nonzero = events[events != 0]
    # Targets persist between opposite crosses only if crosses alternate.
    assert (nonzero[1:] != nonzero[:-1]).all()
    return events


def targets_from_events(events, long_only=False):
    """The target decided at a cross persists until the opposite cross."""
    targets = pd.Series(np.where(events != 0, events, np.nan)).ffill().fillna(0).to_numpy()
    if long_only:
        targets = np.clip(targets, 0, 1)
    return targets.astype(np.int8)


def _brackets(df, stop_loss, take_profit):
    """``brackets(i, side)``: backtesting.py's absolute ``sl=``/``tp=`` for an order placed at bar ``i``.

    Stop levels are fractions of the entry fill, which is the next open.
    """
    open_ = df["Open"].to_numpy(dtype=np.float64)
    close = df["Close"].to_numpy(dtype=np.float64)
    n = len(df)

    def brackets(i, side):
        nxt = open_[i + 1] if i + 1 < n else close[i]
        kw = {}
        if stop_loss:
            kw["sl"] = nxt * (1 - side * stop_loss)
        if take_profit:
            kw["tp"] = nxt * (1 + side * take_profit)
        return kw

    return brackets


def run_backtesting(df, events, *, long_only=False, stop_loss=None, take_profit=None):
    """backtesting.py on ``df``: buy on +1 events, sell (or close, long-only) on -1.

    Stop levels are fractions of the entry fill, which is the next open: the oracle
    strategy reads it from the data to pass absolute ``sl=``/``tp=`` prices.
    """
    brackets = _brackets(df, stop_loss, take_profit)

    class Cross(Strategy):
        def init(self):
            pass

        def next(self):
            i = len(self.data) - 1
            if events[i] > 0:
                self.buy(**brackets(i, +1))
            elif events[i] < 0:
                if long_only:
                    self.position.close()
                else:
                    self.sell(**brackets(i, -1))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # open trade at the end, tqdm, prices > cash
        return Backtest(df, Cross, cash=CASH, commission=COMMISSION,
                        exclusive_orders=True).run()


def stats_of(result, close, ppy=252.0):
    return dict(zip(STAT_NAMES, compute_stats(*result, close, ppy)))


def assert_matches_backtesting(bt_stats, result, df):
    """Trades, equity and statistics of our run equal backtesting.py's."""
    equity, position, trades = result
    tr = dict(zip(TRADE_FIELDS, trades))
    bt_trades = bt_stats["_trades"]
    close = df["Close"].to_numpy(dtype=np.float64)

    assert len(tr["entry_bar"]) == len(bt_trades)
    np.testing.assert_array_equal(tr["entry_bar"], bt_trades["EntryBar"].to_numpy())
    np.testing.assert_array_equal(tr["exit_bar"], bt_trades["ExitBar"].to_numpy())
    np.testing.assert_array_equal(tr["direction"] * tr["size"], bt_trades["Size"].to_numpy())
    np.testing.assert_allclose(tr["entry_price"], bt_trades["EntryPrice"], rtol=1e-12)
    np.testing.assert_allclose(tr["exit_price"], bt_trades["ExitPrice"], rtol=1e-12)
    np.testing.assert_allclose(tr["pnl"], bt_trades["PnL"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(tr["return"], bt_trades["ReturnPct"], rtol=1e-9, atol=1e-12)

    assert equity[-1] == pytest.approx(bt_stats["Equity Final [$]"], rel=1e-4)
    np.testing.assert_allclose(equity, bt_stats["_equity_curve"]["Equity"], rtol=1e-10)

    # The trade still open at the end: out of backtesting.py's trade list, in equity.
    open_trades = bt_stats["_strategy"].trades
    if position[-1] != 0:
        assert len(open_trades) == 1
        assert open_trades[0].size == position[-1]
    else:
        assert len(open_trades) == 0

    s = stats_of(result, close)
    pct = 100.0
    assert s["sharpe"] == pytest.approx(bt_stats["Sharpe Ratio"], rel=1e-6, abs=1e-6)
    assert s["max_drawdown"] * pct == pytest.approx(bt_stats["Max. Drawdown [%]"], abs=1e-6)
    assert s["total_return"] * pct == pytest.approx(bt_stats["Return [%]"], rel=1e-9)
    assert s["cagr"] * pct == pytest.approx(bt_stats["Return (Ann.) [%]"], rel=1e-9)
    assert s["ann_volatility"] * pct == pytest.approx(bt_stats["Volatility (Ann.) [%]"], rel=1e-9)
    assert s["sortino"] == pytest.approx(bt_stats["Sortino Ratio"], rel=1e-9)
    assert s["calmar"] == pytest.approx(bt_stats["Calmar Ratio"], rel=1e-9)
    assert s["n_trades"] == bt_stats["# Trades"]
    for ours, theirs in [("win_rate", "Win Rate [%]"), ("avg_trade", "Avg. Trade [%]"),
                         ("best_trade", "Best Trade [%]"), ("worst_trade", "Worst Trade [%]"),
                         ("expectancy", "Expectancy [%]")]:
        assert s[ours] * pct == pytest.approx(bt_stats[theirs], rel=1e-9), ours
    assert s["profit_factor"] == pytest.approx(bt_stats["Profit Factor"], rel=1e-9)

    # Exposure: ours also counts the bars of the still-open trade after the last exit.
    extra = 0
    if position[-1] != 0:
        open_entry = open_trades[0].entry_bar
        last_exit = tr["exit_bar"].max() if len(tr["exit_bar"]) else -1
        extra = len(close) - max(open_entry, last_exit + 1)
    assert s["exposure"] * pct == pytest.approx(
        bt_stats["Exposure Time [%]"] + extra / len(close) * pct, rel=1e-12)

    # Max drawdown duration: backtesting.py gives calendar time at each drawdown's
    # end bar; turn each back into bars from its start bar.
    durations = bt_stats["_equity_curve"]["DrawdownDuration"]
    index = df.index
    ends = np.flatnonzero(durations.notna().to_numpy())
    bars = [end - index.get_loc(index[end] - durations.iloc[end]) for end in ends]
    assert s["max_drawdown_duration"] == max(bars)

    # Buy and hold: backtesting.py starts after the indicator warm-up (none here).
    assert s["buy_and_hold_return"] * pct == pytest.approx(bt_stats["Buy & Hold Return [%]"],
                                                           rel=1e-12)


# ---------------------------------------------------------------- oracle tests


@pytest.fixture(scope="module")
def goog():
    return GOOG.copy()


@pytest.fixture(scope="module")
def goog_events(goog):
    return sma_cross_events(goog)


def test_sma_cross_long_short_matches_backtesting(goog, goog_events):
    bt_stats = run_backtesting(goog, goog_events)
    result = simulate(*ohlc(goog), targets_from_events(goog_events), CASH, COMMISSION,
                      0.0, True)
    assert len(result[2][0]) > 50
    assert result[1][-1] != 0  # the last trade is still open: the case to get right
    assert_matches_backtesting(bt_stats, result, goog)


def test_sma_cross_long_only_matches_backtesting(goog, goog_events):
    bt_stats = run_backtesting(goog, goog_events, long_only=True)
    targets = targets_from_events(goog_events, long_only=True)
    result = simulate(*ohlc(goog), targets, CASH, COMMISSION, 0.0, True)
    assert (result[2][2] == 1).all()
    assert_matches_backtesting(bt_stats, result, goog)


@pytest.mark.parametrize(
    "long_only, stop_loss, take_profit",
    [(False, 0.07, None), (True, 0.03, None), (False, None, 0.08), (False, 0.07, 0.10),
     (True, 0.03, 0.05)],
)
def test_stops_match_backtesting(goog, goog_events, long_only, stop_loss, take_profit):
    o, h, l, c = ohlc(goog)
    # backtesting.py validates sl/tp against the signal bar's close, so the levels
    # must survive the overnight gap to the entry open.
    entries = np.flatnonzero(goog_events[:-1] > 0 if long_only else goog_events[:-1])
    side = goog_events[entries]
    if stop_loss:
        assert (side * (o[entries + 1] * (1 - side * stop_loss) - c[entries]) < 0).all()
    if take_profit:
        assert (side * (o[entries + 1] * (1 + side * take_profit) - c[entries]) > 0).all()

    bt_stats = run_backtesting(goog, goog_events, long_only=long_only,
                               stop_loss=stop_loss, take_profit=take_profit)
    targets = targets_from_events(goog_events, long_only=long_only)
    result = simulate(o, h, l, c, targets, CASH, COMMISSION, 0.0, True,
                      stop_loss or np.nan, take_profit or np.nan)
    exits_off_open = (result[2][5] != o[result[2][1]]).sum()
    assert exits_off_open >= 5  # stops really fired
    assert_matches_backtesting(bt_stats, result, goog)


def synthetic_bars(seed, n=400):
    """Random walk with overnight gaps, as a backtesting.py DataFrame."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.015, n)))
    prev = np.r_[100.0, close[:-1]]
    gap = rng.normal(0, 0.01, n) * (rng.random(n) < 0.3)
    open_ = prev * np.exp(gap)
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.008, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.008, n)))
    index = pd.bdate_range("2015-01-01", periods=n)
    return pd.DataFrame({"Open": open_, "High": high, "Low": low, "Close": close}, index=index)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_targets_with_tight_stops_match_backtesting(seed):
    """Frequent reversals, stops hit on the entry bar and gaps through stop levels."""
    df = synthetic_bars(seed)
    rng = np.random.default_rng(seed + 100)
    stop_loss, take_profit = 0.01, 0.015
    events = np.zeros(len(df), dtype=np.int64)
    current = 0
    o, h, l, c = ohlc(df)
    for i in range(len(df) - 1):
        if rng.random() < 0.15:
            side = -current if current else (1 if rng.random() < 0.5 else -1)
            # Skip entries whose brackets backtesting.py would reject (gap too large).
            nxt = o[i + 1]
            if (side * (nxt * (1 - side * stop_loss) - c[i]) < 0
                    and side * (nxt * (1 + side * take_profit) - c[i]) > 0):
                events[i] = side
                current = side
    bt_stats = run_backtesting(df, events, stop_loss=stop_loss, take_profit=take_profit)
    result = simulate(o, h, l, c, targets_from_events(events), CASH, COMMISSION, 0.0, True,
                      stop_loss, take_profit)
    tr = dict(zip(TRADE_FIELDS, result[2]))
    off_open = tr["exit_price"] != o[tr["exit_bar"]]
    # Stopped on the entry bar itself.
    assert (off_open & (tr["entry_bar"] == tr["exit_bar"])).any()
    # Targets here only reverse, so an exit at the open that starts no new trade is
    # a stop the bar gapped through.
    assert (~off_open & (tr["exit_bar"] != np.r_[tr["entry_bar"][1:], -1])).any()
    assert_matches_backtesting(bt_stats, result, df)


# ---------------------------------------------------------------- fused path


def random_case(seed, n=600):
    rng = np.random.default_rng(seed)
    df = synthetic_bars(seed, n)
    targets = rng.integers(-1, 2, n).astype(np.int8)
    targets = np.repeat(targets[: n // 5], 5)[:n]  # hold a few bars
    return ohlc(df), targets


COST_CASES = [
    dict(),
    dict(commission=0.001, slippage_bps=3.0),
    dict(commission=0.002, whole_units=True),
    dict(commission=0.001, slippage_bps=1.0, stop_loss=0.01, take_profit=0.02),
    dict(commission=0.0005, whole_units=True, stop_loss=0.02),
]


@pytest.mark.parametrize("kwargs", COST_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_stats_equal_reference_stats(seed, kwargs):
    (o, h, l, c), targets = random_case(seed)
    reference = compute_stats(*simulate(o, h, l, c, targets, **kwargs), c, 252.0)
    fused = simulate_stats(o, h, l, c, targets, 252.0, **kwargs)
    # Same accumulator calls with the same values in the same order: bit-identical.
    np.testing.assert_array_equal(fused, reference)
    assert np.isfinite(reference[:10]).all()


def test_fused_equals_reference_on_goog(goog, goog_events):
    o, h, l, c = ohlc(goog)
    targets = targets_from_events(goog_events)
    reference = compute_stats(*simulate(o, h, l, c, targets, CASH, COMMISSION, 0.0, True,
                                        0.07, 0.1), c, 252.0)
    fused = simulate_stats(o, h, l, c, targets, 252.0, CASH, COMMISSION, 0.0, True, 0.07, 0.1)
    np.testing.assert_array_equal(fused, reference)


def test_batch_equals_single_runs():
    (o, h, l, c), _ = random_case(5)
    rng = np.random.default_rng(9)
    targets = rng.integers(-1, 2, (7, len(c))).astype(np.int8)
    batch = simulate_stats_batch(o, h, l, c, targets, 252.0, CASH, 0.001, 2.0, False, 0.02)
    for k in range(len(targets)):
        single = simulate_stats(o, h, l, c, targets[k], 252.0, CASH, 0.001, 2.0, False, 0.02)
        np.testing.assert_array_equal(batch[k], single)


# ---------------------------------------------------------------- contract


def flat_bars(prices):
    """Bars whose open, high, low and close are all ``prices``."""
    p = np.asarray(prices, dtype=np.float64)
    return p.copy(), p.copy(), p.copy(), p.copy()


def test_target_fills_at_next_open():
    o = np.array([10.0, 11.0, 12.0, 13.0, 14.0, 15.0])
    c = o + 0.5
    h, l = c + 1, o - 1
    targets = np.array([0, 1, 1, 0, 0, 0], dtype=np.int8)
    equity, position, trades = simulate(o, h, l, c, targets)
    tr = dict(zip(TRADE_FIELDS, trades))
    assert tr["entry_bar"].tolist() == [2] and tr["exit_bar"].tolist() == [4]
    assert tr["entry_price"][0] == 12.0 and tr["exit_price"][0] == 14.0
    units = CASH / 12.0
    np.testing.assert_allclose(position, [0, 0, units, units, 0, 0])
    np.testing.assert_allclose(equity, [CASH, CASH, units * 12.5, units * 13.5,
                                        units * 14.0, units * 14.0])


def test_last_bar_target_is_not_executed():
    o, h, l, c = flat_bars([10.0, 11.0, 12.0, 13.0])
    base = np.array([0, 0, 0, 0], dtype=np.int8)
    for last in (-1, 1):
        targets = base.copy()
        targets[-1] = last
        equity, position, trades = simulate(o, h, l, c, targets, CASH, 0.01)
        assert len(trades[0]) == 0
        assert (position == 0).all() and (equity == CASH).all()
    # A position opened earlier stays open: the last target does not close it.
    targets = np.array([1, 1, 1, 0], dtype=np.int8)
    equity, position, trades = simulate(o, h, l, c, targets)
    assert len(trades[0]) == 0 and position[-1] == CASH / 11.0
    assert equity[-1] == pytest.approx(CASH / 11.0 * 13.0, rel=1e-15)


def test_commission_on_both_fills_and_reversal_is_two_fills():
    c_rate = 0.01
    o, h, l, c = flat_bars([100.0, 100.0, 110.0, 120.0, 90.0, 90.0])
    targets = np.array([1, 1, -1, -1, 0, 0], dtype=np.int8)
    equity, position, trades = simulate(o, h, l, c, targets, CASH, c_rate)
    tr = dict(zip(TRADE_FIELDS, trades))
    assert tr["direction"].tolist() == [1, -1]
    assert tr["entry_bar"].tolist() == [1, 3] and tr["exit_bar"].tolist() == [3, 5]

    u1 = CASH / (100.0 * (1 + c_rate))              # all of equity incl. entry commission
    assert tr["size"][0] == pytest.approx(u1, rel=1e-15)
    pnl1 = u1 * (120.0 - 100.0) - c_rate * u1 * 100.0 - c_rate * u1 * 120.0
    assert tr["pnl"][0] == pytest.approx(pnl1, rel=1e-12)
    equity_at_reversal = CASH + pnl1                  # after the exit fill
    u2 = equity_at_reversal / (120.0 * (1 + c_rate))  # then the entry fill
    pnl2 = u2 * (120.0 - 90.0) - c_rate * u2 * 120.0 - c_rate * u2 * 90.0
    assert tr["pnl"][1] == pytest.approx(pnl2, rel=1e-12)
    assert equity[-1] == pytest.approx(CASH + pnl1 + pnl2, rel=1e-12)
    assert tr["return"][1] == pytest.approx(pnl2 / (u2 * 120.0), rel=1e-12)
    # Marked at the close, with the open position's entry commission already paid.
    assert equity[1] == pytest.approx(CASH - c_rate * u1 * 100.0, rel=1e-12)


def test_fractional_equity_identity():
    """equity == cash + units * close, with cash changing only on fill bars."""
    (o, h, l, c), targets = random_case(11)
    equity, position, trades = simulate(o, h, l, c, targets, CASH, 0.001, 2.0)
    tr = dict(zip(TRADE_FIELDS, trades))
    cash = equity - position * c
    fill_bars = np.union1d(tr["entry_bar"], tr["exit_bar"])
    changes = np.flatnonzero(~np.isclose(np.diff(cash), 0.0, atol=1e-7 * CASH)) + 1
    assert set(changes) <= set(fill_bars)
    # All-in on a long: notional plus commission spends all cash.
    long_bars = position > 0
    np.testing.assert_allclose(cash[long_bars], 0.0, atol=1e-9 * CASH)
    # A short sells units worth P = equity / (1 + c) and keeps the proceeds less
    # commission: cash = equity + P - c * P = 2 * P.
    for k in np.flatnonzero(tr["direction"] < 0):
        e, x = tr["entry_bar"][k], tr["exit_bar"][k]
        proceeds = tr["size"][k] * tr["entry_price"][k]
        np.testing.assert_allclose(cash[e:x], 2 * proceeds, rtol=1e-12)


def test_whole_units_are_floored_fractional_units():
    (o, h, l, c), targets = random_case(12)
    _, pos_frac, tr_frac = simulate(o, h, l, c, targets, CASH, 0.002)
    _, pos_whole, tr_whole = simulate(o, h, l, c, targets, CASH, 0.002, 0.0, True)
    sizes = tr_whole[3]
    assert (sizes == np.floor(sizes)).all() and (sizes > 0).all()
    # First trade: same equity, so whole = floor(fractional).
    assert sizes[0] == np.floor(tr_frac[3][0])


def test_whole_units_retry_while_equity_cannot_buy_one_unit():
    o, h, l, c = flat_bars([20_000.0, 20_000.0, 20_000.0, 4_000.0, 4_000.0])
    targets = np.array([1, 1, 1, 1, 1], dtype=np.int8)
    equity, position, trades = simulate(o, h, l, c, targets, CASH, 0.0, 0.0, True)
    assert position.tolist() == [0.0, 0.0, 0.0, 2.0, 2.0]


def test_whole_units_spend_equity_times_one_minus_eps_like_backtesting():
    # backtesting.py sizes "all equity" as (1 - eps) of it: 10,000 buys one 5,000 unit.
    o, h, l, c = flat_bars([5_000.0, 5_000.0, 5_000.0])
    targets = np.array([1, 1, 1], dtype=np.int8)
    assert simulate(o, h, l, c, targets, CASH, 0.0, 0.0, True)[1][-1] == 1.0
    assert simulate(o, h, l, c, targets, CASH, 0.0, 0.0, False)[1][-1] == 2.0


def test_slippage_moves_every_fill_against_the_trader():
    o, h, l, c = flat_bars([100.0, 100.0, 100.0, 100.0, 100.0, 100.0])
    s = 10.0 / 1e4
    targets = np.array([1, 0, -1, 0, 0, 0], dtype=np.int8)
    equity, _, trades = simulate(o, h, l, c, targets, CASH, 0.0, 10.0)
    tr = dict(zip(TRADE_FIELDS, trades))
    np.testing.assert_allclose(tr["entry_price"], [100 * (1 + s), 100 * (1 - s)])
    np.testing.assert_allclose(tr["exit_price"], [100 * (1 - s), 100 * (1 + s)])
    assert (tr["pnl"] < 0).all()
    more = simulate(o, h, l, c, targets, CASH, 0.0, 20.0)[0]
    assert more[-1] < equity[-1] < CASH


def stop_bars():
    """Nine bars around 100 whose bar 3 trades down to 90 (through a 5 % stop from an entry at 100)."""
    o = np.array([100.0, 100.0, 101.0, 99.0, 96.0, 97.0, 98.0, 99.0, 100.0])
    l = o - 2.0
    l[3] = 90.0
    return o, o + 2.0, l, o + 0.5


def test_stop_loss_then_flat_until_target_changes():
    # Long from bar 1 at 100; bar 3 trades down through the 5 % stop at 95.
    o, h, l, c = stop_bars()
    targets = np.array([1, 1, 1, 1, 1, 0, 1, 1, 1], dtype=np.int8)
    equity, position, trades = simulate(o, h, l, c, targets, CASH, 0.0, 0.0, False, 0.05)
    tr = dict(zip(TRADE_FIELDS, trades))
    assert tr["entry_bar"].tolist() == [1] and tr["exit_bar"].tolist() == [3]
    assert tr["exit_price"][0] == pytest.approx(95.0)
    # Target stays +1 after the stop: flat; it drops to 0 at bar 5, back to +1 at
    # bar 6, so the re-entry fills at bar 7's open.
    assert (position[3:7] == 0).all() and (position[7:] > 0).all()
    assert equity[3] == pytest.approx(CASH / 100.0 * 95.0)


def test_stop_gapped_through_fills_at_open_and_reversal_resumes():
    # Short from bar 1 at 100 with a 5 % stop at 105; bar 3 opens at 110.
    o = np.array([100.0, 100.0, 101.0, 110.0, 108.0, 107.0, 106.0])
    h, l, c = o + 1.0, o - 1.0, o
    targets = np.array([-1, -1, -1, -1, 1, 1, 1], dtype=np.int8)
    _, position, trades = simulate(o, h, l, c, targets, CASH, 0.0, 0.0, False, 0.05)
    tr = dict(zip(TRADE_FIELDS, trades))
    assert tr["exit_bar"][0] == 3 and tr["exit_price"][0] == 110.0
    assert position[3] == 0 and position[4] == 0 and position[5] > 0  # target moved at bar 4


def test_stop_on_entry_bar_and_stop_before_take_profit():
    o = np.array([100.0, 100.0, 100.0, 100.0])
    h = np.array([100.0, 120.0, 100.0, 100.0])
    l = np.array([100.0, 80.0, 100.0, 100.0])
    c = o.copy()
    targets = np.array([1, 1, 1, 1], dtype=np.int8)
    _, _, trades = simulate(o, h, l, c, targets, CASH, 0.0, 0.0, False, 0.1, 0.1)
    tr = dict(zip(TRADE_FIELDS, trades))
    # Both levels inside the entry bar: the stop-loss is assumed hit first.
    assert tr["entry_bar"].tolist() == [1] and tr["exit_bar"].tolist() == [1]
    assert tr["exit_price"][0] == pytest.approx(90.0)


def test_take_profit_gap_fills_at_the_better_open():
    o = np.array([100.0, 100.0, 101.0, 115.0, 115.0])
    h, l, c = o + 1.0, o - 1.0, o
    targets = np.array([1, 1, 1, 1, 1], dtype=np.int8)
    _, _, trades = simulate(o, h, l, c, targets, CASH, 0.0, 0.0, False, np.nan, 0.1)
    assert trades[1].tolist() == [3] and trades[5][0] == 115.0


def test_ruined_short_is_liquidated_and_equity_stays_zero():
    o, h, l, c = flat_bars([100.0, 100.0, 150.0, 210.0, 220.0, 50.0])
    targets = np.array([-1, -1, -1, -1, -1, -1], dtype=np.int8)
    equity, position, trades = simulate(o, h, l, c, targets, CASH, 0.001)
    assert trades[1].tolist() == [3]            # liquidated at the close that ruined it
    assert (equity[3:] == 0).all() and (position[3:] == 0).all()
    row = dict(zip(STAT_NAMES, simulate_stats(o, h, l, c, targets, 252.0, CASH, 0.001)))
    assert row["total_return"] == -1.0 and row["cagr"] == -1.0 and row["max_drawdown"] == -1.0
    assert np.isnan(row["sharpe"])


def test_read_only_inputs_and_dtype():
    (o, h, l, c), targets = random_case(3)
    arrays = [a.copy() for a in (o, h, l, c, targets)]
    for a in arrays:
        a.flags.writeable = False
    equity, position, trades = simulate(*arrays, CASH, 0.001)
    assert equity.dtype == np.float64 and position.dtype == np.float64
    assert [t.dtype.kind for t in trades] == ["i", "i", "i", "f", "f", "f", "f", "f"]
    assert len(trades) == len(TRADE_FIELDS)
    row = simulate_stats(*arrays, 252.0, CASH, 0.001)
    assert row.shape == (len(STAT_NAMES),) and row.dtype == np.float64


def test_length_mismatch_is_an_error():
    o, h, l, c = flat_bars([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="same number of bars"):
        simulate(o, h, l, c, np.zeros(4, dtype=np.int8))


# ---------------------------------------------------------------- no look-ahead


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 60),
    cut=st.floats(0, 1),
    commission=st.sampled_from([0.0, 0.001]),
    slippage_bps=st.sampled_from([0.0, 5.0]),
    whole_units=st.booleans(),
    stop_loss=st.sampled_from([np.nan, 0.01, 0.05]),
    take_profit=st.sampled_from([np.nan, 0.02]),
)
def test_prices_after_t_never_change_anything_up_to_t(seed, n, cut, commission, slippage_bps,
                                                      whole_units, stop_loss, take_profit):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.03, n)))
    open_ = close * np.exp(rng.normal(0, 0.01, n))
    high = np.maximum(open_, close) * 1.01
    low = np.minimum(open_, close) * 0.99
    targets = rng.integers(-1, 2, n).astype(np.int8)
    t = min(int(cut * n), n - 1)

    changed = [a.copy() for a in (open_, high, low, close)]
    scale = np.exp(rng.normal(0, 0.5, (4, n - t - 1)))
    for a, f in zip(changed, scale):
        a[t + 1:] *= f

    args = (CASH, commission, slippage_bps, whole_units, stop_loss, take_profit)
    eq_a, pos_a, tr_a = simulate(open_, high, low, close, targets, *args)
    eq_b, pos_b, tr_b = simulate(*changed, targets, *args)
    np.testing.assert_array_equal(eq_a[: t + 1], eq_b[: t + 1])
    np.testing.assert_array_equal(pos_a[: t + 1], pos_b[: t + 1])
    done_a, done_b = tr_a[1] <= t, tr_b[1] <= t
    assert done_a.sum() == done_b.sum()
    for field_a, field_b in zip(tr_a, tr_b):
        np.testing.assert_array_equal(field_a[done_a], field_b[done_b])


# ---------------------------------------------------------------- fractional targets
#
# A float target is a signed fraction of equity; a change of target (direction or
# fraction) closes the position and opens the new one, sized on that fraction of
# the equity after the exit. The backtesting.py oracle: a strategy that on each
# change calls ``position.close()`` then ``buy(size=f)`` / ``sell(size=f)``
# (its relative size, whole units), or its default size (all equity) for |f| = 1.

_FULL_EQUITY = 1.0 - np.finfo(float).eps  # backtesting.py's default order size
LEVELS = np.array([-1.0, -0.75, -0.5, -0.3, 0.0, 0.3, 0.5, 0.6, 0.9, 1.0])


def piecewise_fractions(rng, n, hold=15, levels=LEVELS):
    """Random fractional targets held ``hold`` bars each; 0 on bar 0 (backtesting.py's
    first ``next()`` is on bar 1)."""
    targets = np.repeat(rng.choice(levels, n // hold + 1), hold)[:n].astype(np.float64)
    targets[:hold] = 0.0
    return targets


def run_backtesting_fractions(df, targets, *, stop_loss=None, take_profit=None,
                              commission=COMMISSION, cash=CASH):
    """backtesting.py trading a fractional target array on its changes.

    After a stop exit the strategy re-enters only once the target's direction
    differs from the stopped one, as the kernel does.
    """
    brackets = _brackets(df, stop_loss, take_profit)

    class Fractions(Strategy):
        def init(self):
            self.prev = 0.0    # target of the last order
            self.held = 0      # direction that order opened
            self.stopped = 0   # direction of a stopped-out position

        def next(self):
            i = len(self.data) - 1
            target = targets[i]
            if self.held and not self.position:  # a stop closed it
                self.stopped, self.held = self.held, 0
            if target == self.prev:
                return
            self.prev = target
            side = int(np.sign(target))
            if self.stopped:
                if side == self.stopped:
                    return
                self.stopped = 0
            self.position.close()
            self.held = side
            if side:
                f = abs(target)
                size = f if f < 1 else _FULL_EQUITY
                order = self.buy if side > 0 else self.sell
                order(size=size, **brackets(i, side))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Backtest(df, Fractions, cash=cash, commission=commission,
                        exclusive_orders=True).run()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fractional_targets_match_backtesting(goog, seed):
    targets = piecewise_fractions(np.random.default_rng(seed), len(goog))
    bt_stats = run_backtesting_fractions(goog, targets)
    result = simulate(*ohlc(goog), targets, CASH, COMMISSION, 0.0, True)
    tr = dict(zip(TRADE_FIELDS, result[2]))
    # Fraction-only changes (same direction, new size) really happened.
    same_side = (tr["exit_bar"][:-1] == tr["entry_bar"][1:]) & (tr["direction"][:-1] == tr["direction"][1:])
    assert same_side.sum() >= 5
    assert len(tr["entry_bar"]) > 50
    assert_matches_backtesting(bt_stats, result, goog)


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_fractional_targets_with_stops_match_backtesting(seed):
    df = synthetic_bars(seed, 500)
    o, h, l, c = ohlc(df)
    stop_loss, take_profit = 0.015, 0.03
    rng = np.random.default_rng(seed + 100)
    proposal = piecewise_fractions(rng, len(df), hold=6)
    # Keep only changes whose brackets backtesting.py accepts (checked against
    # the signal bar's close); otherwise hold the previous target.
    targets = np.zeros(len(df))
    for i in range(1, len(df)):
        t = proposal[i]
        side = np.sign(t)
        nxt = o[i + 1] if i + 1 < len(df) else c[i]
        ok = side == 0 or (side * (nxt * (1 - side * stop_loss) - c[i]) < 0
                           and side * (nxt * (1 + side * take_profit) - c[i]) > 0)
        targets[i] = t if ok else targets[i - 1]
    bt_stats = run_backtesting_fractions(df, targets, stop_loss=stop_loss, take_profit=take_profit)
    result = simulate(o, h, l, c, targets, CASH, COMMISSION, 0.0, True, stop_loss, take_profit)
    tr = dict(zip(TRADE_FIELDS, result[2]))
    assert (tr["exit_price"] != o[tr["exit_bar"]]).sum() >= 5  # stops fired
    assert_matches_backtesting(bt_stats, result, df)


def test_fractional_whole_units_round_as_backtesting():
    """``buy(size=f)`` spends ``equity * f`` with no ``1 - eps`` factor (that is the
    default size's, |target| = 1): 10,000 at f = 0.5 buys 2 units priced 2,500,
    where ``_units(equity * f)`` would floor ``5,000 * (1 - eps) / 2,500`` to 1."""
    n = 6
    index = pd.bdate_range("2020-01-01", periods=n)
    for price, target, units in [(2_500.0, 0.5, 2.0), (2_000.0, 0.3, 1.0), (5_000.0, 1.0, 1.0),
                                 (1_000.0, -0.7, -7.0)]:
        df = pd.DataFrame({k: np.full(n, price) for k in ("Open", "High", "Low", "Close")},
                          index=index)
        targets = np.r_[0.0, np.full(n - 1, target)]
        bt_stats = run_backtesting_fractions(df, targets, commission=0.0)
        equity, position, trades = simulate(*ohlc(df), targets, CASH, 0.0, 0.0, True)
        assert position[-1] == units
        assert bt_stats["_strategy"].trades[0].size == units
        np.testing.assert_array_equal(equity, bt_stats["_equity_curve"]["Equity"].to_numpy())


def test_unit_float_targets_are_bit_identical_to_int_targets():
    for seed, kwargs in [(0, {}), (1, COST_CASES[1]), (2, COST_CASES[2]), (3, COST_CASES[3]),
                         (4, COST_CASES[4])]:
        (o, h, l, c), targets = random_case(seed)
        ref = simulate(o, h, l, c, targets, **kwargs)
        for as_float in (targets.astype(np.float64), targets * 2.5, targets.astype(np.float32)):
            got = simulate(o, h, l, c, as_float, **kwargs)
            np.testing.assert_array_equal(got[0], ref[0])
            np.testing.assert_array_equal(got[1], ref[1])
            for a, b in zip(got[2], ref[2]):
                np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(
            simulate_stats(o, h, l, c, targets.astype(np.float64), 252.0, **kwargs),
            simulate_stats(o, h, l, c, targets, 252.0, **kwargs))


@pytest.mark.parametrize("kwargs", COST_CASES)
def test_fractional_fused_stats_equal_reference_stats(kwargs):
    (o, h, l, c), _ = random_case(7)
    rng = np.random.default_rng(17)
    targets = np.stack([piecewise_fractions(rng, len(c), hold=7) for _ in range(4)])
    batch = simulate_stats_batch(o, h, l, c, targets, 252.0, **kwargs)
    for k in range(len(targets)):
        reference = compute_stats(*simulate(o, h, l, c, targets[k], **kwargs), c, 252.0)
        np.testing.assert_array_equal(simulate_stats(o, h, l, c, targets[k], 252.0, **kwargs),
                                      reference)
        np.testing.assert_array_equal(batch[k], reference)


@pytest.mark.parametrize("f", [0.25, 0.5, 0.9])
@pytest.mark.parametrize("side", [1, -1])
def test_fractional_units_hold_equity_formula(f, side):
    """Zero costs, one position of fraction f from bar 1's open to the end:
    long ``cash * (1 - f) + cash * f * close / entry``, short
    ``cash * (1 - f) + cash * f * (2 - close / entry)``."""
    df = synthetic_bars(21, 200)
    o, h, l, c = ohlc(df)
    targets = np.full(len(c), side * f)
    equity, position, trades = simulate(o, h, l, c, targets)
    assert len(trades[0]) == 0
    entry = o[1]
    held = c[1:] / entry if side > 0 else 2.0 - c[1:] / entry
    expected = np.r_[CASH, CASH * (1 - f) + CASH * f * held]
    np.testing.assert_allclose(equity, expected, rtol=1e-12)
    np.testing.assert_allclose(position[1:], side * CASH * f / entry, rtol=1e-15)


def test_fractional_units_keep_the_rest_in_cash():
    """With costs: the entry fill spends exactly ``f`` of the equity after any exit
    (notional plus commission), so cash at a long holds ``(1 - f)`` of it."""
    (o, h, l, c), _ = random_case(13)
    rng = np.random.default_rng(3)
    targets = piecewise_fractions(rng, len(c), hold=9, levels=np.array([0.0, 0.2, 0.5, 0.8, 1.0]))
    rate = 0.001
    equity, position, trades = simulate(o, h, l, c, targets, CASH, rate, 3.0)
    tr = dict(zip(TRADE_FIELDS, trades))
    cash = equity - position * c
    for k in range(len(tr["entry_bar"])):
        e = tr["entry_bar"][k]
        f = abs(targets[e - 1])
        # Equity right after the exit at this open (if any) = cash before entry.
        before = cash[e - 1] + position[e - 1] * tr["exit_price"][k - 1] * (1 - rate) \
            if k and tr["exit_bar"][k - 1] == e else cash[e - 1]
        assert tr["size"][k] == pytest.approx(f * before / (tr["entry_price"][k] * (1 + rate)),
                                              rel=1e-12)
        assert cash[e] == pytest.approx((1 - f) * before, rel=1e-9, abs=1e-6)


def test_change_of_fraction_closes_and_reopens():
    rate = 0.01
    o, h, l, c = flat_bars([100.0, 100.0, 110.0, 120.0, 120.0, 90.0])
    targets = np.array([0.5, 0.5, 0.8, 0.8, 0.8, 0.8])
    equity, position, trades = simulate(o, h, l, c, targets, CASH, rate)
    tr = dict(zip(TRADE_FIELDS, trades))
    # 0.5 from bar 1; the change to 0.8 (decided at bar 2) exits and re-enters at bar 3.
    assert tr["entry_bar"].tolist() == [1] and tr["exit_bar"].tolist() == [3]
    u1 = 0.5 * CASH / (100.0 * (1 + rate))
    assert tr["size"][0] == pytest.approx(u1, rel=1e-15)
    after_exit = CASH + u1 * (120.0 - 100.0) - rate * u1 * (100.0 + 120.0)
    u2 = 0.8 * after_exit / (120.0 * (1 + rate))
    assert position[3] == pytest.approx(u2, rel=1e-12)
    assert equity[3] == pytest.approx(after_exit - rate * u2 * 120.0, rel=1e-12)
    assert equity[5] == pytest.approx(after_exit - rate * u2 * 120.0 + u2 * (90.0 - 120.0), rel=1e-12)
    # A held fraction never resizes: same units while the price moves.
    assert position[1] == position[2]


def test_nan_target_is_flat():
    o, h, l, c = flat_bars([100.0, 100.0, 100.0, 100.0, 100.0])
    targets = np.array([0.5, np.nan, np.nan, 0.5, 0.5])
    _, position, trades = simulate(o, h, l, c, targets)
    assert position.tolist() == [0.0, 50.0, 0.0, 0.0, 50.0]
    assert trades[0].tolist() == [1] and trades[1].tolist() == [2]


def test_stop_then_change_of_fraction_alone_stays_flat():
    # Long 0.5 from bar 1 at 100; bar 3 hits the 5 % stop. The target then moves
    # to 0.3 (same direction: stays flat), then to -0.3 (enters short at bar 7).
    o, h, l, c = stop_bars()
    targets = np.array([0.5, 0.5, 0.5, 0.5, 0.3, 0.3, -0.3, -0.3, -0.3])
    _, position, trades = simulate(o, h, l, c, targets, CASH, 0.0, 0.0, False, 0.05)
    tr = dict(zip(TRADE_FIELDS, trades))
    assert tr["exit_bar"].tolist() == [3] and tr["exit_price"][0] == pytest.approx(95.0)
    assert (position[3:7] == 0).all() and (position[7:] < 0).all()
    equity_after_stop = CASH - 0.5 * CASH / 100.0 * 5.0
    assert position[7] == pytest.approx(-0.3 * equity_after_stop / o[7], rel=1e-12)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 60),
    cut=st.floats(0, 1),
    commission=st.sampled_from([0.0, 0.001]),
    whole_units=st.booleans(),
    stop_loss=st.sampled_from([np.nan, 0.02]),
)
def test_fractional_prices_after_t_never_change_anything_up_to_t(seed, n, cut, commission,
                                                                 whole_units, stop_loss):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.03, n)))
    open_ = close * np.exp(rng.normal(0, 0.01, n))
    high = np.maximum(open_, close) * 1.01
    low = np.minimum(open_, close) * 0.99
    targets = rng.choice(LEVELS, n)
    t = min(int(cut * n), n - 1)
    changed = [a.copy() for a in (open_, high, low, close)]
    for a in changed:
        a[t + 1:] *= np.exp(rng.normal(0, 0.5, n - t - 1))
    args = (CASH, commission, 1.0, whole_units, stop_loss)
    eq_a, pos_a, tr_a = simulate(open_, high, low, close, targets, *args)
    eq_b, pos_b, tr_b = simulate(*changed, targets, *args)
    np.testing.assert_array_equal(eq_a[: t + 1], eq_b[: t + 1])
    np.testing.assert_array_equal(pos_a[: t + 1], pos_b[: t + 1])
    done_a, done_b = tr_a[1] <= t, tr_b[1] <= t
    assert done_a.sum() == done_b.sum()
    for field_a, field_b in zip(tr_a, tr_b):
        np.testing.assert_array_equal(field_a[done_a], field_b[done_b])
