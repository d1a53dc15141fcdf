"""Equal-weight portfolio kernels against a pandas oracle written here.

The oracle: ``admf_dask.backtest.backtest`` per (parameter set, symbol) for the
sleeves' equity curves and trades, the mean curve built in pandas on the union
of the symbols' calendars (reindex, forward fill, cash before a symbol's first
bar), and the statistics computed in pandas from that curve and the pooled
trades. The symbols have different calendars: one starts later, one ends
earlier, one misses scattered days.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from admf_dask.backtest import backtest
from admf_dask.bars import Bars, generate_bars
from admf_dask.kernels import portfolio as kp
from admf_dask.kernels import strategies as ks
from admf_dask.kernels.simulate import simulate_stats_batch
from admf_dask.kernels.state import EQUITY_QUANTUM, RATIO_QUANTUM, fixed_np
from admf_dask.kernels.stats import N_STATS, STAT_NAMES, trade_init
from admf_dask.strategies import direction_code, get_strategy, prepare_batch

PPY = 252.0
CASH = 10_000.0
COMMISSION = 0.001
SETS = [{"fast": 5, "slow": 20}, {"fast": 10, "slow": 30}, {"fast": 3, "slow": 12}]
COL = {name: i for i, name in enumerate(STAT_NAMES)}


def _slice(bars: Bars, keep) -> Bars:
    return Bars(bars.symbol, bars.timestamp[keep].copy(), {k: v[keep].copy() for k, v in bars.columns.items()})


@pytest.fixture(scope="module")
def universe():
    full = {s: generate_bars(s, "2019-01-01", "2021-12-31", seed=11) for s in ("AAA", "BBB", "CCC")}
    n = len(full["AAA"])
    ddd = generate_bars("DDD", "2019-01-01", "2022-03-31", seed=11)
    holes = np.random.default_rng(3).random(len(ddd)) < 0.06
    holes[:2] = holes[-2:] = False
    return [
        full["AAA"],                                  # ends before DDD
        _slice(full["BBB"], slice(130, None)),        # starts later
        _slice(full["CCC"], slice(None, n - 170)),    # ends earlier still
        _slice(ddd, ~holes),                          # the longest range, misses scattered days
    ]


@pytest.fixture(scope="module")
def timeline(universe):
    return np.unique(np.concatenate([b.timestamp for b in universe]))


def _prices(bars):
    return tuple(np.ascontiguousarray(bars.columns[k], dtype=np.float64) for k in ("open", "high", "low", "close"))


def _ind(batch, bars):
    arrays = {spec.token: spec.compute(bars.columns) for spec in batch.plan.specs}
    rows = []
    for token, output in batch.rows:
        out = arrays[token]
        rows.append(out[output] if output is not None else next(iter(out.values())))
    return np.ascontiguousarray(np.vstack(rows), dtype=np.float64)


def _costs(direction="long_short", stop_loss=np.nan):
    # periods_per_year, cash, commission, slippage_bps, whole_units, stop_loss, take_profit, direction
    return PPY, CASH, COMMISSION, 0.0, False, stop_loss, np.nan, direction_code(direction)


def _accumulate(strategy, sets, universe, timeline, costs, symbols=None):
    """Run the batch on each symbol with the portfolio kernel: (per-symbol rows, accumulators)."""
    batch = prepare_batch(strategy, sets)
    kind = get_strategy(strategy).kind
    acc = kp.accumulators_init(len(sets), len(timeline))
    rows = []
    for bars in universe if symbols is None else symbols:
        pos = np.searchsorted(timeline, bars.timestamp).astype(np.int64)
        rows.append(kp.strategy_batch_with_equity(kind, _ind(batch, bars), batch.idx, batch.fparams,
                                                  *_prices(bars), pos, *costs, *acc))
    return rows, acc


# ------------------------------------------------------------------ pandas oracle


def oracle(universe, params, direction="long_short", stop_loss=None):
    """Portfolio statistics of one parameter set, computed in pandas from per-symbol backtests."""
    results = [backtest(b, "sma_cross", params, direction=direction, cash=CASH, commission=COMMISSION,
                        stop_loss=stop_loss, periods_per_year=PPY) for b in universe]
    union = results[0].equity.index
    for r in results[1:]:
        union = union.union(r.equity.index)
    curves = pd.concat([r.equity.reindex(union).ffill().fillna(CASH) for r in results], axis=1)
    curve = curves.mean(axis=1)

    ret = curve.pct_change().iloc[1:]
    m = len(ret)
    growth = curve.iloc[-1] / curve.iloc[0]
    g1 = growth ** (1 / m)
    cagr = growth ** (PPY / m) - 1
    vol = np.sqrt((ret.var(ddof=1) + g1**2) ** PPY - g1 ** (2 * PPY))
    downside = np.sqrt((ret.clip(upper=0) ** 2).mean() * PPY)
    drawdown = 1 - curve / curve.cummax()
    # longest stretch, in union bars, from a running peak to its recovery (or the end)
    peak_bar, longest = 0, 0
    values = curve.to_numpy()
    running = -np.inf
    for t, v in enumerate(values):
        if v >= running:
            if t > 0 and values[t - 1] < running:
                longest = max(longest, t - peak_bar)
            running, peak_bar = v, t
        else:
            longest = max(longest, t - peak_bar)

    trades = pd.concat([r.trades for r in results], ignore_index=True)
    r = trades["return"]
    return {
        "total_return": growth - 1,
        "cagr": cagr,
        "ann_volatility": vol,
        "sharpe": cagr / vol,
        "sortino": cagr / downside,
        "calmar": cagr / drawdown.max(),
        "max_drawdown": -drawdown.max(),
        "max_drawdown_duration": float(longest),
        "n_trades": float(len(trades)),
        "win_rate": float((trades["pnl"] > 0).mean()),
        "profit_factor": r[r > 0].sum() / -r[r < 0].sum(),
        "avg_trade": np.exp(np.log1p(r).mean()) - 1,
        "best_trade": r.max(),
        "worst_trade": r.min(),
        "expectancy": r.mean(),
        "exposure": np.mean([res.stats["exposure"] for res in results]),
        "buy_and_hold_return": np.mean([b.close[-1] / b.close[0] - 1 for b in universe]),
        "_n_trades_each": [len(res.trades) for res in results],
    }


@pytest.mark.parametrize("direction,stop_loss", [("long_short", None), ("long_only", 0.04)])
def test_portfolio_matches_pandas_oracle(universe, timeline, direction, stop_loss):
    assert len({len(b) for b in universe}) == 4 and len(timeline) > max(len(b) for b in universe)
    costs = _costs(direction, np.nan if stop_loss is None else stop_loss)
    _, acc = _accumulate("sma_cross", SETS, universe, timeline, costs)
    got = kp.portfolio_stats(*acc, PPY)
    assert got.shape == (len(SETS), N_STATS)
    for k, params in enumerate(SETS):
        want = oracle(universe, params, direction, stop_loss)
        assert want["n_trades"] > 20 and min(want["_n_trades_each"]) > 0
        for name in STAT_NAMES:
            np.testing.assert_allclose(got[k, COL[name]], want[name], rtol=1e-9, atol=1e-12,
                                       err_msg=f"set {params} {direction} {name}")
        assert got[k, COL["n_trades"]] == sum(want["_n_trades_each"])


def test_rows_bit_identical_to_run_strategy_batch(universe, timeline):
    """Every built-in kind, every direction: the returned rows are run_strategy_batch's, bit for bit."""
    grids = {
        "sma_cross": SETS,
        "rsi_reversion": [{"window": 14, "lower": 30.0, "upper": 70.0}, {"window": 7, "lower": 25.0, "upper": 80.0}],
        "bollinger_reversion": [{"window": 20, "k": 2.0}, {"window": 10, "k": 1.5}],
        "bollinger_breakout": [{"window": 20, "k": 1.0}, {"window": 30, "k": 2.0}],
        "donchian_breakout": [{"window": 20}, {"window": 55}],
        "momentum": [{"window": 10}, {"window": 60}],
    }
    bars = universe[3]  # the one with holes: gaps in timeline_pos
    pos = np.searchsorted(timeline, bars.timestamp).astype(np.int64)
    for strategy, sets in grids.items():
        batch = prepare_batch(strategy, sets)
        kind = get_strategy(strategy).kind
        ind = _ind(batch, bars)
        for direction in ("long_short", "long_only", "short_only"):
            for stop_loss in (np.nan, 0.03):
                costs = _costs(direction, stop_loss)
                want = ks.run_strategy_batch(kind, ind, batch.idx, batch.fparams, *_prices(bars), *costs)
                acc = kp.accumulators_init(len(sets), len(timeline))
                got = kp.strategy_batch_with_equity(kind, ind, batch.idx, batch.fparams, *_prices(bars), pos,
                                                    *costs, *acc)
                np.testing.assert_array_equal(got, want, err_msg=f"{strategy} {direction} sl={stop_loss}")


def test_targets_kernel_matches_simulate_stats_batch_and_strategy_kernel(universe, timeline):
    """User-strategy path: rows equal simulate_stats_batch; accumulators equal the fused kernel's."""
    batch = prepare_batch("sma_cross", SETS)
    costs = _costs("long_short", 0.05)
    ppy, cash, comm, slip, whole, sl, tp, direction = costs
    fused_rows, fused_acc = _accumulate("sma_cross", SETS, universe, timeline, costs)
    acc = kp.accumulators_init(len(SETS), len(timeline))
    for bars, fused in zip(universe, fused_rows):
        o, h, lo, c = _prices(bars)
        targets = ks.strategy_targets(ks.CROSS, _ind(batch, bars), batch.idx, batch.fparams, c, direction)
        pos = np.searchsorted(timeline, bars.timestamp).astype(np.int64)
        rows = kp.targets_batch_with_equity(targets, o, h, lo, c, pos, ppy, cash, comm, slip, whole, sl, tp, *acc)
        np.testing.assert_array_equal(rows, simulate_stats_batch(o, h, lo, c, targets, ppy, cash, comm, slip,
                                                                 whole, sl, tp))
        np.testing.assert_array_equal(rows, fused)
    for a, b in zip(acc, fused_acc):
        np.testing.assert_array_equal(a, b)


def test_merging_symbol_groups_equals_one_group(universe, timeline):
    costs = _costs("long_short")
    _, whole = _accumulate("sma_cross", SETS, universe, timeline, costs)
    _, left = _accumulate("sma_cross", SETS, universe, timeline, costs, symbols=universe[:2])
    _, right = _accumulate("sma_cross", SETS, universe, timeline, costs, symbols=universe[2:])
    merged = kp.merge_accumulators(left, right)
    np.testing.assert_allclose(merged[0], whole[0], rtol=1e-15)
    np.testing.assert_array_equal(merged[2], whole[2])
    np.testing.assert_array_equal(merged[1][:, [0, 1, 6, 7, 8]], whole[1][:, [0, 1, 6, 7, 8]])
    np.testing.assert_allclose(merged[1], whole[1], rtol=1e-12)
    np.testing.assert_allclose(kp.portfolio_stats(*merged, PPY), kp.portfolio_stats(*whole, PPY),
                               rtol=1e-12, atol=1e-15)
    # order of the merge does not matter
    np.testing.assert_array_equal(kp.merge_trade_acc(left[1], right[1]), kp.merge_trade_acc(right[1], left[1]))


def test_groups_on_their_own_timelines_rebase_onto_the_union(universe, timeline):
    """A container folds its symbols onto its own timeline; rebased and merged, that is the one-group result.

    The groups' timelines differ (DDD misses days and runs longest, BBB starts late), so
    the rebase must carry each group's sum forward and prefill its starting cash.
    """
    costs = _costs("long_short")
    _, whole = _accumulate("sma_cross", SETS, universe, timeline, costs)
    groups = (universe[1:3], [universe[3]], [universe[0]])
    merged = reference = None
    for group in groups:
        own = np.unique(np.concatenate([b.timestamp for b in group]))
        assert len(own) < len(timeline)
        _, acc = _accumulate("sma_cross", SETS, universe, own, costs, symbols=group)
        before = kp.starting_equity(len(SETS), len(group), CASH)
        rebased = (kp.rebase_equity(acc[0], own, timeline, before), acc[1], acc[2])
        merged = rebased if merged is None else kp.merge_accumulators(merged, rebased)
        _, on_union = _accumulate("sma_cross", SETS, universe, timeline, costs, symbols=group)
        reference = on_union if reference is None else kp.merge_accumulators(reference, on_union)
    for a, b in zip(merged, reference):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(kp.portfolio_stats(*merged, PPY), kp.portfolio_stats(*whole, PPY),
                               rtol=1e-12, atol=1e-15)


def test_symbol_order_does_not_matter(universe, timeline):
    """Folding the sleeves in any order gives the same row; best / worst are the extremes over symbols."""
    costs = _costs("long_only", 0.04)
    rows, acc = _accumulate("sma_cross", SETS, universe, timeline, costs)
    want = kp.portfolio_stats(*acc, PPY)
    per_symbol = np.stack(rows)  # (symbols, sets, N_STATS)
    np.testing.assert_array_equal(want[:, COL["best_trade"]], np.nanmax(per_symbol[:, :, COL["best_trade"]], 0))
    np.testing.assert_array_equal(want[:, COL["worst_trade"]], np.nanmin(per_symbol[:, :, COL["worst_trade"]], 0))
    for order in ([3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]):
        _, other = _accumulate("sma_cross", SETS, universe, timeline, costs, symbols=[universe[i] for i in order])
        np.testing.assert_allclose(kp.portfolio_stats(*other, PPY), want, rtol=1e-12, atol=1e-15)


def test_single_symbol_portfolio_is_its_row(universe):
    """One sleeve on its own calendar: the portfolio row is the symbol's row, but for the fixed-point sums.

    Its equity is added rounded to 2**-20 (~1e-10 of the cash here) and its trade returns to 2**-42
    (kernels.state.fixed): sums of sleeves are then exact in any order.
    """
    bars = universe[1]
    own = bars.timestamp
    rows, acc = _accumulate("sma_cross", SETS, [bars], own, _costs("long_short"))
    assert (np.mod(acc[0], EQUITY_QUANTUM) == 0).all()
    np.testing.assert_allclose(kp.portfolio_stats(*acc, PPY), rows[0], rtol=1e-8, atol=1e-12)


def test_sleeve_curve_prefill_and_forward_fill():
    """One sleeve on a gappy union timeline: cash before its first bar, then carried forward."""
    n = 6
    close = np.linspace(100.0, 105.0, n)
    pos = np.array([2, 3, 5, 6, 9, 10], dtype=np.int64)
    acc = kp.accumulators_init(1, 13)
    targets = np.zeros((1, n), dtype=np.int8)
    targets[0, 1:4] = 1  # long from bar 2's open to bar 5's open (open = close here)
    rows = kp.targets_batch_with_equity(targets, close, close, close, close, pos, PPY, CASH, 0.0, 0.0, False,
                                        np.nan, np.nan, *acc)
    eq = CASH * np.r_[1.0, 1.0, 1.0, close[3:] / close[2]]
    want = np.r_[CASH, CASH, eq[0], eq[1], eq[1], eq[2], eq[3], eq[3], eq[3], eq[4], eq[5], eq[5], eq[5]]
    assert (np.mod(acc[0][0], EQUITY_QUANTUM) == 0).all()  # each value rounded to a multiple of 2**-20
    np.testing.assert_allclose(acc[0][0], want, rtol=1e-15, atol=EQUITY_QUANTUM / 2)
    assert acc[2][0].tolist() == [*fixed_np([rows[0, COL["exposure"]], rows[0, COL["buy_and_hold_return"]]],
                                            RATIO_QUANTUM), 1.0]
    trade = acc[1][0]
    assert trade[0] == 1.0 and trade[1] == 1.0 and trade[7] == trade[8] == rows[0, COL["best_trade"]]


def test_empty_accumulators_and_validation(universe, timeline):
    tr = kp.trade_acc_init(2)
    assert tr.shape == (2, 9) and all(tuple(r) == trade_init() for r in tr)
    assert np.isnan(kp.portfolio_stats(*kp.accumulators_init(2, 10), PPY)).all()

    bars = universe[0]
    batch = prepare_batch("sma_cross", SETS)
    args = (ks.CROSS, _ind(batch, bars), batch.idx, batch.fparams, *_prices(bars))
    good = np.searchsorted(timeline, bars.timestamp).astype(np.int64)
    bad_order = good.copy()
    bad_order[[5, 6]] = bad_order[[6, 5]]
    for pos, acc, match in [
        (bad_order, kp.accumulators_init(3, len(timeline)), "strictly increasing"),
        (good[:-1], kp.accumulators_init(3, len(timeline)), "one entry per bar"),
        (good, kp.accumulators_init(3, int(good[-1])), "outside the union timeline"),
        (good, kp.accumulators_init(2, len(timeline)), "accumulators must be"),
    ]:
        with pytest.raises(ValueError, match=match):
            kp.strategy_batch_with_equity(*args, pos, *_costs(), *acc)
    with pytest.raises(ValueError, match="differ in shape"):
        kp.merge_accumulators(kp.accumulators_init(3, 5), kp.accumulators_init(3, 6))
