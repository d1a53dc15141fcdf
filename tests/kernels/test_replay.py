"""Signal replay kernels: events round trip, and ensembles against the plain path.

The plain path: the combined target computed with numpy (the weighted sum in the
documented order, k = 0 .. K-1, then the rule and the direction clip), then
``simulate_stats_batch`` / ``targets_batch_with_equity`` on that target matrix.
The ensemble kernels must give the same rows and accumulators bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admf_dask.kernels.portfolio import accumulators_init, portfolio_stats, targets_batch_with_equity
from admf_dask.kernels.replay import (
    FRACTION, VOTE, dense_targets, ensemble_batch, ensemble_batch_with_equity, events_from_targets,
)
from admf_dask.kernels.simulate import simulate_stats_batch
from admf_dask.kernels.stats import STAT_NAMES
from admf_dask.kernels.strategies import LONG_ONLY, LONG_SHORT, SHORT_ONLY

CASH = 10_000.0
PPY = 252.0
N_TRADES = STAT_NAMES.index("n_trades")

COSTS = [
    dict(commission=0.001, slippage_bps=0.0, whole_units=False, stop_loss=np.nan, take_profit=np.nan),
    dict(commission=0.002, slippage_bps=2.0, whole_units=True, stop_loss=np.nan, take_profit=np.nan),
    dict(commission=0.001, slippage_bps=1.0, whole_units=False, stop_loss=0.02, take_profit=0.04),
]


# ---------------------------------------------------------------- helpers


def bars(seed, n):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0.0, 0.015, n)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, 0.004, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.006, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.006, n)))
    return open_, high, low, close


def sparse_signals(rng, k_rows, n, changes=(5, 20), direction=LONG_SHORT):
    """Piecewise-constant -1 / 0 / +1 rows with a few changes each."""
    out = np.zeros((k_rows, n), dtype=np.int8)
    for k in range(k_rows):
        n_chg = int(rng.integers(*changes))
        at = np.sort(rng.choice(np.arange(1, n), min(n_chg, n - 1), replace=False))
        for t, v in zip(at, rng.integers(-1, 2, len(at))):
            out[k, t:] = v
    if direction == LONG_ONLY:
        out = np.maximum(out, 0)
    elif direction == SHORT_ONLY:
        out = np.minimum(out, 0)
    return out.astype(np.int8)


def step_targets(rng, k_rows, n, p_change):
    """(k_rows, n) int8 targets in -1 / 0 / 1 that change at each bar with probability ``p_change``."""
    targets = np.zeros((k_rows, n), dtype=np.int8)
    for k in range(k_rows):
        v = 0
        for t in range(n):
            if rng.random() < p_change:
                v = int(rng.integers(-1, 2))
            targets[k, t] = v
    return targets


def weighted_sum(signals, weights):
    """(m, n): the sum over k in order 0 .. K-1, starting from 0.0."""
    comb = np.zeros((weights.shape[0], signals.shape[1]))
    for k in range(signals.shape[0]):
        comb += weights[:, k:k + 1] * signals[k].astype(np.float64)
    return comb


def clip_direction(targets, direction):
    if direction == LONG_ONLY:
        return np.maximum(targets, 0)
    if direction == SHORT_ONLY:
        return np.minimum(targets, 0)
    return targets


def vote_targets(signals, weights, threshold, direction):
    comb = weighted_sum(signals, weights)
    out = np.where(np.abs(comb) >= threshold, np.sign(comb), 0.0).astype(np.int8)
    return clip_direction(out, direction)


def fraction_targets(signals, weights, direction):
    return clip_direction(np.clip(weighted_sum(signals, weights), -1.0, 1.0), direction)


def timeline(n, seed):
    """Positions of n bars on a union timeline with an offset start, gaps and a tail."""
    rng = np.random.default_rng(seed)
    steps = 1 + (rng.random(n) < 0.1) * rng.integers(1, 4, n)
    pos = np.cumsum(steps) - 1 + 3
    return pos.astype(np.int64), int(pos[-1] + 5)


def with_equity(kernel, m, n_timeline, *args):
    eq, tr, ex = accumulators_init(m, n_timeline)
    rows = kernel(*args, eq, tr, ex)
    return rows, eq, tr, ex


def assert_same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def cost_args(c):
    return (c["commission"], c["slippage_bps"], c["whole_units"], c["stop_loss"], c["take_profit"])


# ---------------------------------------------------------------- events


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), k_rows=st.integers(0, 6), n=st.integers(0, 80),
       p_change=st.sampled_from([0.02, 0.2, 0.9]))
def test_events_round_trip(seed, k_rows, n, p_change):
    targets = step_targets(np.random.default_rng(seed), k_rows, n, p_change)
    ptr, bar, value = events_from_targets(targets)
    assert ptr.dtype == np.int64 and bar.dtype == np.int64 and value.dtype == np.int8
    assert ptr.shape == (k_rows + 1,) and ptr[0] == 0 and ptr[-1] == len(bar) == len(value)
    for k in range(k_rows):
        prev = np.r_[0, targets[k, :-1]] if n else np.zeros(0)
        expected = np.flatnonzero(targets[k] != prev)
        np.testing.assert_array_equal(bar[ptr[k]:ptr[k + 1]], expected)
        np.testing.assert_array_equal(value[ptr[k]:ptr[k + 1]], targets[k, expected])
    dense = dense_targets(ptr, bar, value, n)
    assert dense.dtype == np.int8
    np.testing.assert_array_equal(dense, targets)


def test_events_example():
    targets = np.array([[0, 1, 1, -1, -1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=np.int8)
    ptr, bar, value = events_from_targets(targets)
    assert ptr.tolist() == [0, 2, 4, 4]
    assert bar.tolist() == [1, 3, 0, 2]
    assert value.tolist() == [1, -1, 1, 0]
    np.testing.assert_array_equal(dense_targets(ptr, bar, value, 5), targets)


def test_dense_targets_rejects_inconsistent_events():
    ptr = np.array([0, 2], dtype=np.int64)
    value = np.array([1, -1], dtype=np.int8)
    with pytest.raises(ValueError, match="increase"):
        dense_targets(ptr, np.array([3, 3], dtype=np.int64), value, 5)
    with pytest.raises(ValueError, match="increase"):
        dense_targets(ptr, np.array([1, 5], dtype=np.int64), value, 5)
    with pytest.raises(ValueError, match="ptr"):
        dense_targets(np.array([0, 3], dtype=np.int64), np.array([1, 2], dtype=np.int64), value, 5)


# ---------------------------------------------------------------- one-hot: bit for bit


@pytest.mark.parametrize("costs", COSTS)
@pytest.mark.parametrize("rule, threshold", [(FRACTION, 0.0), (VOTE, 1e-12), (VOTE, 0.5), (VOTE, 1.0)])
def test_one_hot_equals_the_signals_own_backtest(rule, threshold, costs):
    n, k_rows = 700, 6
    o, h, l, c = bars(1, n)
    signals = sparse_signals(np.random.default_rng(2), k_rows, n)
    weights = np.eye(k_rows)
    pos, n_timeline = timeline(n, 3)
    got = with_equity(ensemble_batch_with_equity, k_rows, n_timeline, signals, weights, rule,
                      threshold, LONG_SHORT, o, h, l, c, pos, PPY, CASH, *cost_args(costs))
    ref = with_equity(targets_batch_with_equity, k_rows, n_timeline, signals, o, h, l, c, pos, PPY,
                      CASH, *cost_args(costs))
    assert_same(got, ref)
    np.testing.assert_array_equal(
        got[0], simulate_stats_batch(o, h, l, c, signals, PPY, CASH, *cost_args(costs)))
    np.testing.assert_array_equal(
        ensemble_batch(signals, weights, rule, threshold, LONG_SHORT, o, h, l, c, PPY, CASH,
                       *cost_args(costs)), got[0])
    assert (got[0][:, N_TRADES] > 3).all()


@pytest.mark.parametrize("direction", [LONG_ONLY, SHORT_ONLY])
@pytest.mark.parametrize("rule", [FRACTION, VOTE])
def test_one_hot_on_signals_stored_with_a_direction(rule, direction):
    n, k_rows = 500, 4
    o, h, l, c = bars(4, n)
    signals = sparse_signals(np.random.default_rng(5), k_rows, n, direction=direction)
    pos, n_timeline = timeline(n, 6)
    for applied in (LONG_SHORT, direction):
        got = with_equity(ensemble_batch_with_equity, k_rows, n_timeline, signals, np.eye(k_rows),
                          rule, 0.5, applied, o, h, l, c, pos, PPY, CASH, *cost_args(COSTS[1]))
        ref = with_equity(targets_batch_with_equity, k_rows, n_timeline, signals, o, h, l, c, pos,
                          PPY, CASH, *cost_args(COSTS[1]))
        assert_same(got, ref)


# ---------------------------------------------------------------- general weights


def replay_is_targets_then_simulation(signals, weights, rule, threshold, direction, targets, ohlc, tl, costs):
    """The replay kernels equal simulating ``targets`` (built in numpy by the test): with and without
    portfolio accumulators, and as plain statistics rows. Returns both accumulating kernels' outputs."""
    o, h, l, c = ohlc
    pos, n_timeline = tl
    m = weights.shape[0]
    got = with_equity(ensemble_batch_with_equity, m, n_timeline, signals, weights, rule, threshold,
                      direction, o, h, l, c, pos, PPY, CASH, *cost_args(costs))
    ref = with_equity(targets_batch_with_equity, m, n_timeline, targets, o, h, l, c, pos, PPY, CASH,
                      *cost_args(costs))
    assert_same(got, ref)
    np.testing.assert_array_equal(
        got[0], simulate_stats_batch(o, h, l, c, targets, PPY, CASH, *cost_args(costs)))
    np.testing.assert_array_equal(
        ensemble_batch(signals, weights, rule, threshold, direction, o, h, l, c, PPY, CASH,
                       *cost_args(costs)), got[0])
    return got, ref


@pytest.mark.parametrize("costs", COSTS)
@pytest.mark.parametrize("direction", [LONG_SHORT, LONG_ONLY, SHORT_ONLY])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5])
def test_vote_equals_numpy_targets_then_simulation(threshold, direction, costs):
    n, k_rows, m = 600, 8, 40
    o, h, l, c = bars(7, n)
    rng = np.random.default_rng(8)
    signals = sparse_signals(rng, k_rows, n)
    weights = rng.normal(0, 1, (m, k_rows)) / k_rows
    weights[:5] = rng.dirichlet(np.ones(k_rows), 5)  # convex weights too
    weights[5] = np.full(k_rows, 1 / k_rows)          # sums landing exactly on thresholds
    targets = vote_targets(signals, weights, threshold, direction)
    assert targets.dtype == np.int8
    replay_is_targets_then_simulation(signals, weights, VOTE, threshold, direction, targets, (o, h, l, c),
                                      timeline(n, 9), costs)


@pytest.mark.parametrize("costs", COSTS)
@pytest.mark.parametrize("direction", [LONG_SHORT, LONG_ONLY, SHORT_ONLY])
def test_fraction_equals_numpy_targets_then_simulation(direction, costs):
    n, k_rows, m = 600, 8, 40
    o, h, l, c = bars(10, n)
    rng = np.random.default_rng(11)
    signals = sparse_signals(rng, k_rows, n)
    weights = rng.dirichlet(np.ones(k_rows), m)
    weights[10:20] *= 3.0                              # sums beyond +-1: clipped
    weights[20:30] = rng.normal(0, 0.5, (10, k_rows))  # signed weights
    targets = fraction_targets(signals, weights, direction)
    assert targets.dtype == np.float64
    assert ((np.abs(targets) > 0) & (np.abs(targets) < 1)).any() and (np.abs(targets) == 1).any()
    got, ref = replay_is_targets_then_simulation(signals, weights, FRACTION, 0.0, direction, targets, (o, h, l, c),
                                                 timeline(n, 12), costs)
    # The portfolio rows of the accumulators are those of the plain path too.
    np.testing.assert_array_equal(portfolio_stats(*got[1:], PPY), portfolio_stats(*ref[1:], PPY))


def test_fraction_of_equal_votes_trades_partial_positions():
    """Two signals at weight 0.5 each: both long is all-in, one long is half."""
    n = 40
    o, h, l, c = bars(13, n)
    signals = np.zeros((2, n), dtype=np.int8)
    signals[0, 5:] = 1
    signals[1, 15:30] = 1
    weights = np.array([[0.5, 0.5]])
    rows = ensemble_batch(signals, weights, FRACTION, 0.0, LONG_SHORT, o, h, l, c, PPY, CASH,
                          0.0, 0.0, False, np.nan, np.nan)
    # Changes at bars 5 (0 -> 0.5), 15 (-> 1), 30 (-> 0.5): the first two positions
    # close (at the opens of bars 16 and 31), the last is still open.
    assert rows[0, N_TRADES] == 2.0
    target = np.zeros(n)
    target[5:] = 0.5
    target[15:30] = 1.0
    np.testing.assert_array_equal(
        rows, simulate_stats_batch(o, h, l, c, target[None], PPY, CASH, 0.0, 0.0, False,
                                   np.nan, np.nan))


def test_nan_weights_stay_flat():
    n = 100
    o, h, l, c = bars(14, n)
    signals = sparse_signals(np.random.default_rng(15), 3, n)
    weights = np.array([[np.nan, 0.5, 0.5], [1.0, 0.0, 0.0]])
    for rule in (VOTE, FRACTION):
        rows = ensemble_batch(signals, weights, rule, 0.1, LONG_SHORT, o, h, l, c, PPY, CASH,
                              0.001, 0.0, False, np.nan, np.nan)
        assert rows[0, STAT_NAMES.index("total_return")] == 0.0
        assert rows[0, STAT_NAMES.index("exposure")] == 0.0
        assert rows[1, N_TRADES] > 0


def test_constant_signals_are_one_segment():
    n = 50
    o, h, l, c = bars(16, n)
    signals = np.ones((3, n), dtype=np.int8)
    weights = np.array([[0.2, 0.2, 0.2], [-0.5, 0.1, 0.1]])
    for rule in (VOTE, FRACTION):
        rows = ensemble_batch(signals, weights, rule, 0.5, LONG_SHORT, o, h, l, c, PPY, CASH,
                              0.0, 0.0, False, np.nan, np.nan)
        targets = (vote_targets(signals, weights, 0.5, LONG_SHORT) if rule == VOTE
                   else fraction_targets(signals, weights, LONG_SHORT))
        np.testing.assert_array_equal(
            rows, simulate_stats_batch(o, h, l, c, targets, PPY, CASH, 0.0, 0.0, False,
                                       np.nan, np.nan))


def test_read_only_inputs():
    n, k_rows = 200, 3
    arrays = [a.copy() for a in bars(17, n)]
    signals = sparse_signals(np.random.default_rng(18), k_rows, n)
    weights = np.random.default_rng(19).dirichlet(np.ones(k_rows), 4)
    for a in [*arrays, signals, weights]:
        a.flags.writeable = False
    rows = ensemble_batch(signals, weights, FRACTION, 0.0, LONG_SHORT, *arrays, PPY, CASH,
                          0.001, 0.0, False, np.nan, np.nan)
    assert rows.shape == (4, len(STAT_NAMES)) and rows.dtype == np.float64
    ptr, bar, value = events_from_targets(signals)
    np.testing.assert_array_equal(dense_targets(ptr, bar, value, n), signals)


def test_invalid_inputs_are_errors():
    n = 20
    o, h, l, c = bars(20, n)
    signals = np.zeros((2, n), dtype=np.int8)
    w = np.ones((1, 2))
    base = (PPY, CASH, 0.0, 0.0, False, np.nan, np.nan)
    with pytest.raises(ValueError, match="rule"):
        ensemble_batch(signals, w, 2, 0.5, LONG_SHORT, o, h, l, c, *base)
    with pytest.raises(ValueError, match="direction"):
        ensemble_batch(signals, w, VOTE, 0.5, 2, o, h, l, c, *base)
    with pytest.raises(ValueError, match="weights"):
        ensemble_batch(signals, np.ones((1, 3)), VOTE, 0.5, LONG_SHORT, o, h, l, c, *base)
    with pytest.raises(ValueError, match="same number of bars"):
        ensemble_batch(signals[:, :-1], w, VOTE, 0.5, LONG_SHORT, o, h, l, c, *base)
    bad = signals.copy()
    bad[0, 3] = 2
    with pytest.raises(ValueError, match="-1, 0 or"):
        ensemble_batch(bad, w, VOTE, 0.5, LONG_SHORT, o, h, l, c, *base)
    eq, tr, ex = accumulators_init(2, n)  # m = 2 accumulators for 1 weight vector
    with pytest.raises(ValueError, match="accumulators"):
        ensemble_batch_with_equity(signals, w, VOTE, 0.5, LONG_SHORT, o, h, l, c,
                                   np.arange(n, dtype=np.int64), *base, eq, tr, ex)
