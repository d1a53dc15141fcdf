"""Fused strategy kernels against the reference path.

The reference: targets from plain Python / pandas signal rules written here (not
the kernels' ``signal_step``), then ``simulate`` and ``compute_stats``. The fused
rows must equal it (1e-12 relative, NaN in the same places) for every built-in
strategy kind, every direction mode and several cost settings.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admf_dask.kernels import indicators as ki
from admf_dask.kernels import strategies as ks
from admf_dask.kernels.simulate import simulate
from admf_dask.kernels.stats import STAT_NAMES, compute_stats

PPY = 252.0


def bars(seed, n=700):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.015, n)))
    prev = np.r_[100.0, close[:-1]]
    open_ = prev * np.exp(rng.normal(0, 0.005, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.006, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.006, n)))
    return open_, high, low, close


# ------------------------------------------------------------ reference signal rules


def hold(events):
    """Events (+1 / -1 / 0 = none; NaN = go flat) held until the next event, 0 before the first."""
    return pd.Series(events, dtype=float).replace(0.0, np.nan).ffill().fillna(0.0).to_numpy()


def cross_targets(a, b):
    a, b = pd.Series(a), pd.Series(b)
    up = (a > b) & (a.shift(1) <= b.shift(1))
    down = (a < b) & (a.shift(1) >= b.shift(1))
    return hold(np.where(up, 1.0, np.where(down, -1.0, 0.0)))


def level_targets(x, lower, upper):
    x = pd.Series(x)
    return hold(np.where(x < lower, 1.0, np.where(x > upper, -1.0, 0.0)))


def bb_reversion_targets(close, middle, upper, lower):
    state, out = 0, []
    for c, m, u, lo in zip(close, middle, upper, lower):
        if c < lo:
            state = 1
        elif c > u:
            state = -1
        elif (state == 1 and c >= m) or (state == -1 and c <= m):
            state = 0
        out.append(state)
    return np.array(out, dtype=float)


def donchian_targets(close, upper, lower):
    c = pd.Series(close)
    prev_up, prev_lo = pd.Series(upper).shift(1), pd.Series(lower).shift(1)
    return hold(np.where(c > prev_up, 1.0, np.where(c < prev_lo, -1.0, 0.0)))


def momentum_targets(roc):
    return np.sign(np.nan_to_num(roc, nan=0.0))


def clip(targets, direction):
    lo, hi = {ks.LONG_SHORT: (-1, 1), ks.LONG_ONLY: (0, 1), ks.SHORT_ONLY: (-1, 0)}[direction]
    return np.clip(targets, lo, hi).astype(np.int8)


def cases(close, high, low):
    """(kind, ind rows, idx per set, fparams per set, reference targets per set)."""
    smas = ki.sma_many(close, [5, 10, 20, 40])
    emas = ki.ema_many(close, [8, 21])
    line, sig, _ = ki.macd(close, 12, 26, 9)
    rsi = np.vstack([ki.rsi(close, 14), ki.rsi(close, 5)])
    mid, up, lo = ki.bollinger(close, 20, 1.5)
    d_up, d_lo = ki.donchian(high, low, 15)
    rocs = np.vstack([ki.roc(close, 10), ki.roc(close, 60)])
    yield ("sma", ks.CROSS, smas, [[0, 2, 2], [1, 3, 3], [0, 3, 3]], [[0, 0]] * 3,
           [cross_targets(smas[0], smas[2]), cross_targets(smas[1], smas[3]), cross_targets(smas[0], smas[3])])
    yield ("ema", ks.CROSS, emas, [[0, 1, 1]], [[0, 0]], [cross_targets(emas[0], emas[1])])
    yield ("macd", ks.CROSS, np.vstack([line, sig]), [[0, 1, 1]], [[0, 0]], [cross_targets(line, sig)])
    yield ("rsi", ks.RSI, rsi, [[0, 0, 0], [1, 1, 1]], [[30, 70], [20, 85]],
           [level_targets(rsi[0], 30, 70), level_targets(rsi[1], 20, 85)])
    yield ("bb_rev", ks.BB_REVERSION, np.vstack([mid, up, lo]), [[0, 1, 2]], [[0, 0]],
           [bb_reversion_targets(close, mid, up, lo)])
    yield ("bb_break", ks.BB_BREAKOUT, np.vstack([up, lo]), [[0, 1, 1]], [[0, 0]],
           [hold(np.where(close > up, 1.0, np.where(close < lo, -1.0, 0.0)))])
    yield ("donchian", ks.DONCHIAN, np.vstack([d_up, d_lo]), [[0, 1, 1]], [[0, 0]],
           [donchian_targets(close, d_up, d_lo)])
    yield ("momentum", ks.MOMENTUM, rocs, [[0, 0, 0], [1, 1, 1]], [[0, 0]] * 2,
           [momentum_targets(rocs[0]), momentum_targets(rocs[1])])


COSTS = [
    dict(cash=10_000.0, commission=0.0, slippage_bps=0.0, whole_units=False, stop_loss=np.nan, take_profit=np.nan),
    dict(cash=10_000.0, commission=0.001, slippage_bps=2.0, whole_units=False, stop_loss=0.03,
         take_profit=np.nan),
    dict(cash=10_000.0, commission=0.002, slippage_bps=0.0, whole_units=True, stop_loss=0.02, take_profit=0.04),
]


@pytest.mark.parametrize("costs", COSTS, ids=["plain", "costs+stop", "whole+brackets"])
@pytest.mark.parametrize("direction", [ks.LONG_SHORT, ks.LONG_ONLY, ks.SHORT_ONLY],
                         ids=["long_short", "long_only", "short_only"])
def test_fused_rows_equal_reference_for_every_strategy(direction, costs):
    o, h, l, c = bars(1)
    seen = set()
    for name, kind, ind, idx, fparams, reference in cases(c, h, l):
        seen.add(kind)
        idx = np.array(idx, dtype=np.int64)
        fparams = np.array(fparams, dtype=np.float64)
        fused = ks.run_strategy_batch(kind, ind, idx, fparams, o, h, l, c, PPY, costs["cash"],
                                      costs["commission"], costs["slippage_bps"], costs["whole_units"],
                                      costs["stop_loss"], costs["take_profit"], direction)
        kernel_targets = ks.strategy_targets(kind, ind, idx, fparams, c, direction)
        assert fused.shape == (len(reference), len(STAT_NAMES))
        for k, ref_targets in enumerate(reference):
            targets = clip(ref_targets, direction)
            assert (targets != 0).sum() > 0, name  # the case trades
            np.testing.assert_array_equal(kernel_targets[k], targets, err_msg=name)
            expected = compute_stats(*simulate(o, h, l, c, targets, costs["cash"], costs["commission"],
                                               costs["slippage_bps"], costs["whole_units"], costs["stop_loss"],
                                               costs["take_profit"]), c, PPY)
            np.testing.assert_allclose(fused[k], expected, rtol=1e-12, atol=0, equal_nan=True,
                                       err_msg=f"{name} set {k}")
            np.testing.assert_array_equal(np.isnan(fused[k]), np.isnan(expected))
    assert seen == {ks.CROSS, ks.RSI, ks.BB_REVERSION, ks.BB_BREAKOUT, ks.DONCHIAN, ks.MOMENTUM}


def test_run_cross_batch_is_the_cross_kind():
    o, h, l, c = bars(2)
    ind = ki.sma_many(c, [5, 20, 50])
    a = ks.run_cross_batch(ind, np.array([0, 1]), np.array([1, 2]), o, h, l, c, PPY, 10_000.0, 0.001)
    b = ks.run_strategy_batch(ks.CROSS, ind, np.array([[0, 1, 1], [1, 2, 2]]), np.zeros((2, 2)), o, h, l, c,
                              PPY, 10_000.0, 0.001)
    np.testing.assert_array_equal(a, b)


def test_cross_waits_for_a_cross_and_ignores_warm_up():
    # fast is above slow from its first valid bar: no cross, so no position.
    close = np.linspace(100, 200, 60)
    ind = np.vstack([ki.sma(close, 3), ki.sma(close, 10)])
    t = ks.strategy_targets(ks.CROSS, ind, np.array([[0, 1, 1]]), np.zeros((1, 2)), close)
    assert (t == 0).all()


def test_bad_shapes_are_errors():
    o, h, l, c = bars(3, 50)
    with pytest.raises(ValueError, match="same number of bars"):
        ks.run_strategy_batch(ks.CROSS, np.zeros((2, 49)), np.zeros((1, 3), np.int64), np.zeros((1, 2)),
                              o, h, l, c, PPY)
    with pytest.raises(ValueError, match="outside the indicator rows"):
        ks.run_strategy_batch(ks.CROSS, np.zeros((2, 50)), np.full((1, 3), 2, np.int64), np.zeros((1, 2)),
                              o, h, l, c, PPY)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(30, 120), cut=st.floats(0, 1))
def test_data_after_t_changes_no_target_or_row_prefix(seed, n, cut):
    """No look-ahead: targets up to t depend only on bars up to t, for every strategy kind."""
    o, h, l, c = bars(seed % 1000, n)
    t = min(int(cut * n), n - 1)
    rng = np.random.default_rng(seed)
    changed = [a.copy() for a in (o, h, l, c)]
    for a in changed:
        a[t + 1:] *= np.exp(rng.normal(0, 0.2, n - t - 1))
    changed[1] = np.maximum.reduce(changed)  # keep high >= the rest
    changed[2] = np.minimum.reduce([changed[0], changed[2], changed[3]])
    before = list(cases(c, h, l))
    after = list(cases(changed[3], changed[1], changed[2]))
    for (name, kind, ind_a, idx, fp, _), (_, _, ind_b, _, _, _) in zip(before, after):
        idx = np.array(idx, dtype=np.int64)
        fp = np.array(fp, dtype=np.float64)
        ta = ks.strategy_targets(kind, ind_a, idx, fp, c)
        tb = ks.strategy_targets(kind, ind_b, idx, fp, changed[3])
        np.testing.assert_array_equal(ta[:, : t + 1], tb[:, : t + 1], err_msg=name)
