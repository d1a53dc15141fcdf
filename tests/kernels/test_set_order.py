"""The order a chunk runs its sets in (strategies.set_order): a cache order that changes no result bit."""
from __future__ import annotations

import numpy as np
import pytest

from admf_dask.bars import generate_bars, symbol_names
from admf_dask.kernels import strategies as ks
from admf_dask.kernels.state import run_state_init
from admf_dask.strategies import prepare_batch


def test_set_order_is_by_the_row_with_more_distinct_values_then_the_other_stable():
    rng = np.random.default_rng(3)
    for _ in range(300):
        m, n = int(rng.integers(0, 60)), int(rng.integers(1, 30))
        idx = rng.integers(-1, n, size=(m, 3)).astype(np.int64)  # -1: a set's unused indicator slot
        a, b = idx[:, 0], idx[:, 1]
        if len(np.unique(b)) > len(np.unique(a)):
            a, b = b, a
        expected = np.lexsort((np.arange(m), b, a)) if m >= 3 else np.arange(m)  # numpy's, stable
        np.testing.assert_array_equal(ks.set_order(idx, n), expected)


def test_a_grid_part_runs_slow_row_by_slow_row():
    # a part of a fast-major grid: 3 fast values, 40 slow ones -> grouped by slow row
    idx = np.array([[f, 3 + s, -1] for f in range(3) for s in range(40)][:82], dtype=np.int64)
    order = ks.set_order(idx, 43)
    assert list(idx[order[:4], 1]) == [3, 3, 3, 4] and list(idx[order[:3], 0]) == [0, 1, 2]


@pytest.mark.parametrize("direction", [ks.LONG_ONLY, ks.LONG_SHORT])
def test_each_set_computes_the_same_bits_in_any_order(direction):
    """What set_order relies on: a set's statistics, state and accumulator row do not depend on
    which other sets share its chunk, nor on their order (a shuffled batch, compared set by set)."""
    sets = [{"fast": f, "slow": s} for f in (5, 10, 15) for s in range(20, 120, 10)]
    batch = prepare_batch("sma_cross", sets)
    specs = {s.token: s for s in batch.plan.specs}
    perm = np.random.default_rng(5).permutation(len(sets))
    m = len(sets)
    symbols = [generate_bars(sym, "2020-01-01", "2029-12-31", seed=11) for sym in symbol_names(3)]
    n = len(symbols[0].columns["close"])  # the same calendar: one timeline
    outs = []
    for idx, fp in ((batch.idx, batch.fparams), (batch.idx[perm], batch.fparams[perm])):
        eq = np.zeros((m, n))
        states = []
        for bars in symbols:
            ind = np.vstack([specs[tok].compute(bars.columns)["value"] for tok, _ in batch.rows])
            o, h, lo, c = (np.ascontiguousarray(bars.columns[k], dtype=np.float64)
                           for k in ("open", "high", "low", "close"))
            st = run_state_init(m, 10_000.0)
            ks.strategy_chunk(ks.CROSS, ind, np.ascontiguousarray(idx), np.ascontiguousarray(fp), o, h, lo, c,
                              0, 0, st, 0.001, 2.0, False, 0.05, 0.1, direction,
                              np.arange(len(c), dtype=np.int64), eq)
            states.append(st)
        outs.append((np.stack(states), eq))
    (s0, e0), (s1, e1) = outs
    np.testing.assert_array_equal(s1, s0[:, perm])
    np.testing.assert_array_equal(e1, e0[perm])
