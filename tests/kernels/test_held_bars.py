"""Held bars: the fused kernels fold bars without a fill apart from ``sim_step``, with ``sim_step``'s bits.

The fused strategy kernels fold a bar whose target is the position held (no fill,
no stop to check) without ``sim_step`` (``simulate.holds``); the reference path
(``simulate`` over the kernel's own targets, then ``compute_stats``) runs every bar
through ``sim_step``. Rows and run states must be equal bit for bit, also where a
held bar needs ``sim_step`` after all: a short ruined by a rally, a NaN close, stop
levels, and a chunk boundary inside a held stretch.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from admf_dask.kernels import strategies as ks
from admf_dask.kernels.indicators import sma_many
from admf_dask.kernels.simulate import simulate
from admf_dask.kernels.state import run_state_init
from admf_dask.kernels.stats import compute_stats

PPY = 252.0
CASH = 10_000.0


def prices(case, n=600, seed=3):
    rng = np.random.default_rng(seed)
    steps = rng.normal(0, 0.02, n)
    if case == "rally":  # a fall, shorts opened and held, then a gap up that ruins them
        steps[250:300] = -0.01
        steps[300] = 1.2
    close = 100 * np.exp(np.cumsum(steps))
    if case == "nan":
        close[[200, 201, 450]] = np.nan
    prev = np.r_[100.0, close[:-1]]
    open_ = np.where(np.isnan(prev), 100.0, prev) * np.exp(rng.normal(0, 0.004, n))
    high = np.fmax(open_, close) * 1.01
    low = np.fmin(open_, close) * 0.99
    return open_, high, low, close


COSTS = {
    "plain": (0.0, 0.0, False, np.nan, np.nan),
    "costs": (0.001, 3.0, False, np.nan, np.nan),
    "whole+stops": (0.002, 0.0, True, 0.03, 0.05),
}


@pytest.mark.parametrize("case", ["trend", "rally", "nan"])
@pytest.mark.parametrize("costs", list(COSTS))
def test_fused_rows_and_states_equal_sim_step_bit_for_bit(case, costs):
    o, h, lo, c = prices(case)
    ind = sma_many(c, [3, 5, 10, 20])
    idx = np.array([[0, 2, 2], [1, 3, 3], [0, 3, 3]], dtype=np.int64)
    fp = np.zeros((3, 2))
    cost = COSTS[costs]
    ruined = 0
    for direction in (ks.LONG_SHORT, ks.LONG_ONLY, ks.SHORT_ONLY):
        rows = ks.run_strategy_batch(ks.CROSS, ind, idx, fp, o, h, lo, c, PPY, CASH, *cost, direction)
        targets = ks.strategy_targets(ks.CROSS, ind, idx, fp, c, direction)
        # the same run in two chunks, cut inside held stretches
        state = run_state_init(3, CASH)
        ks.strategy_chunk(ks.CROSS, ind[:, :377], idx, fp, o[:377], h[:377], lo[:377], c[:377], 0, 0, state,
                          *cost, direction)
        whole = run_state_init(3, CASH)
        ks.strategy_chunk(ks.CROSS, ind, idx, fp, o, h, lo, c, 0, 0, whole, *cost, direction)
        ks.strategy_chunk(ks.CROSS, ind[:, 376:], idx, fp, o[376:], h[376:], lo[376:], c[376:], 1, 377, state,
                          *cost, direction)
        np.testing.assert_array_equal(state.view(np.int64), whole.view(np.int64))
        for k in range(3):
            assert (targets[k] != 0).sum() > 20
            eq, pos, trades = simulate(o, h, lo, c, targets[k], CASH, *cost)
            expected = compute_stats(eq, pos, trades, c, PPY)
            np.testing.assert_array_equal(rows[k].view(np.int64), expected.view(np.int64),
                                          err_msg=f"set {k}, direction {direction}")
            ruined += eq[-1] == 0.0
    if case == "rally" and costs == "plain":
        assert ruined > 0  # a short was ruined while held


def kinds(o, h, lo, c):
    """(name, kind, ind, idx, fparams): every strategy kind, two or three sets each."""
    from admf_dask.kernels import indicators as ki

    smas = sma_many(c, [3, 5, 10, 20])
    rsi = np.vstack([ki.rsi(c, 14), ki.rsi(c, 5)])
    mid, up, low = ki.bollinger(c, 20, 1.5)
    d_up, d_lo = ki.donchian(h, lo, 15)
    rocs = np.vstack([ki.roc(c, 10), ki.roc(c, 60)])
    yield "cross", ks.CROSS, smas, [[0, 2, 2], [1, 3, 3], [0, 3, 3]], [[0, 0]] * 3
    yield "rsi", ks.RSI, rsi, [[0, 0, 0], [1, 1, 1]], [[30, 70], [20, 85]]
    yield "bb_rev", ks.BB_REVERSION, np.vstack([mid, up, low]), [[0, 1, 2]], [[0, 0]]
    yield "bb_break", ks.BB_BREAKOUT, np.vstack([up, low]), [[0, 1, 1]], [[0, 0]]
    yield "donchian", ks.DONCHIAN, np.vstack([d_up, d_lo]), [[0, 1, 1]], [[0, 0]]
    yield "momentum", ks.MOMENTUM, rocs, [[0, 0, 0], [1, 1, 1]], [[0, 0]] * 2


@pytest.mark.parametrize("case", ["trend", "nan", "inf"])
def test_held_and_flat_stretches_of_every_kind_equal_sim_step_bit_for_bit(case):
    # Held stretches run apart from sim_bar, flat ones (no position: the equity is the cash)
    # without arithmetic per bar; CROSS reads its events from a pass before the bar loop.
    # Rows equal simulate + compute_stats on the kernel's own targets, bit for bit, for every
    # kind and direction; the run states are those of the whole series when the bars come in
    # chunks cut inside stretches (flat and held), at a NaN close and after it.
    o, h, lo, c = prices("nan" if case == "inf" else case, seed=5)
    if case == "inf":
        c[[200, 450]] = np.inf
    cuts = [0, 97, 199, 201, 202, 377, 451, 600]
    flat = 0
    for name, kind, ind, idx, fp in kinds(o, h, lo, c):
        idx = np.array(idx, dtype=np.int64)
        fp = np.array(fp, dtype=np.float64)
        for direction in (ks.LONG_SHORT, ks.LONG_ONLY, ks.SHORT_ONLY):
            for cost in (COSTS["plain"], COSTS["whole+stops"]):
                rows = ks.run_strategy_batch(kind, ind, idx, fp, o, h, lo, c, PPY, CASH, *cost, direction)
                targets = ks.strategy_targets(kind, ind, idx, fp, c, direction)
                for k in range(len(idx)):
                    eq, pos, trades = simulate(o, h, lo, c, targets[k], CASH, *cost)
                    expected = compute_stats(eq, pos, trades, c, PPY)
                    np.testing.assert_array_equal(rows[k].view(np.int64), expected.view(np.int64),
                                                  err_msg=f"{name} set {k}, direction {direction}")
                    flat += int(((pos[1:] == 0) & (pos[:-1] == 0)).sum())
                whole = run_state_init(len(idx), CASH)
                ks.strategy_chunk(kind, ind, idx, fp, o, h, lo, c, 0, 0, whole, *cost, direction)
                state = run_state_init(len(idx), CASH)
                for a, b in itertools.pairwise(cuts):
                    hh = 1 if a else 0
                    s = slice(a - hh, b)
                    ks.strategy_chunk(kind, np.ascontiguousarray(ind[:, s]), idx, fp, o[s], h[s], lo[s], c[s], hh, a,
                                      state, *cost, direction)
                np.testing.assert_array_equal(state.view(np.int64), whole.view(np.int64), err_msg=name)
    assert flat > 10_000  # flat stretches were run
