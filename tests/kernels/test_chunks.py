"""Chunked kernels against the whole-series ones: bit for bit, wherever the chunks are cut.

Every chunk kernel advances a run state (``admf_dask.kernels.state``) over a time
chunk of bars with ``h`` halo bars in front; splitting a series at any boundaries
(one-bar chunks, inside a trade, on a stop bar, in the indicators' warm-up, at a
gap of the union timeline) must give exactly the whole-series results: statistics
rows, states, curves, trades, portfolio accumulators, events and ensemble rows
(``np.testing.assert_array_equal``, NaNs in the same places). The indicator rows
are computed once on the whole series and sliced, as a caller holding them would.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admf_dask.kernels import indicators as ki
from admf_dask.kernels import portfolio as kp
from admf_dask.kernels import replay as kr
from admf_dask.kernels import strategies as ks
from admf_dask.kernels.simulate import (
    simulate, simulate_chunk, simulate_stats, simulate_stats_batch, simulate_stats_chunk,
)
from admf_dask.kernels.state import (
    BAR0, PENDING, RUN_STATE_WIDTH, SIGNAL, STATE_FIELDS, TRADE0, finalize_runs, run_state_init,
)
from admf_dask.kernels.stats import PeriodsPerYearStream, periods_per_year
from tests.kernels.test_replay import step_targets

PPY = 252.0
CASH = 10_000.0
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
DIRECTIONS = [ks.LONG_SHORT, ks.LONG_ONLY, ks.SHORT_ONLY]
COSTS = [
    # commission, slippage_bps, whole_units, stop_loss, take_profit
    (0.0, 0.0, False, np.nan, np.nan),
    (0.001, 2.0, False, 0.02, np.nan),
    (0.002, 0.0, True, 0.015, 0.03),
    (0.0005, 1.0, False, np.nan, 0.02),
]


# ---------------------------------------------------------------- data


def gbm(seed, n, gaps=False):
    """GBM OHLC bars; with ``gaps``, some opens jump away from the previous close."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    prev = np.r_[100.0, close[:-1]]
    jump = rng.normal(0, 0.03, n) * (rng.random(n) < 0.15) if gaps else 0.0
    open_ = prev * np.exp(rng.normal(0, 0.006, n) + jump)
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.008, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.008, n)))
    return open_, high, low, close


def strategy_cases(o, h, lo, c):
    """(name, kind, ind rows, idx, fparams) for the 8 built-in strategies (6 kinds), short windows."""
    smas = ki.sma_many(c, [3, 5, 8, 13])
    emas = ki.ema_many(c, [4, 9])
    line, sig, _ = ki.macd(c, 5, 11, 4)
    mid, up, low = ki.bollinger(c, 10, 1.2)
    mid2, up2, low2 = ki.bollinger(c, 6, 0.8)
    d_up, d_lo = ki.donchian(h, lo, 7)
    return [
        ("sma_cross", ks.CROSS, smas, [[0, 2, 2], [1, 3, 3], [0, 3, 3]], [[0, 0]] * 3),
        ("ema_cross", ks.CROSS, emas, [[0, 1, 1]], [[0, 0]]),
        ("macd_cross", ks.CROSS, np.vstack([line, sig]), [[0, 1, 1]], [[0, 0]]),
        ("rsi_reversion", ks.RSI, np.vstack([ki.rsi(c, 5), ki.rsi(c, 3)]), [[0, 0, 0], [1, 1, 1]],
         [[35.0, 65.0], [25.0, 80.0]]),
        ("bollinger_reversion", ks.BB_REVERSION, np.vstack([mid, up, low, mid2, up2, low2]),
         [[0, 1, 2], [3, 4, 5]], [[0, 0]] * 2),
        ("bollinger_breakout", ks.BB_BREAKOUT, np.vstack([up, low, up2, low2]), [[0, 1, 1], [2, 3, 3]],
         [[0, 0]] * 2),
        ("donchian_breakout", ks.DONCHIAN, np.vstack([d_up, d_lo]), [[0, 1, 1]], [[0, 0]]),
        ("momentum", ks.MOMENTUM, np.vstack([ki.roc(c, 4), ki.roc(c, 9)]), [[0, 0, 0], [1, 1, 1]],
         [[0, 0]] * 2),
    ]


@st.composite
def splits(draw, n, max_cuts=None):
    """Chunk bounds [(a, b), ...] covering 0 .. n and a halo per chunk (0 for the first, 1 .. 3 after).

    Empty cut lists (one chunk) and one-bar chunks are both likely.
    """
    if n < 2:
        cuts = []
    else:
        mode = draw(st.sampled_from(["none", "few", "many", "every"]))
        if mode == "none":
            cuts = []
        elif mode == "every":
            cuts = list(range(1, n))
        else:
            k = draw(st.integers(1, 3 if mode == "few" else max(1, min(n - 1, max_cuts or n))))
            cuts = draw(st.lists(st.integers(1, n - 1), min_size=1, max_size=k))
    bounds = [0, *sorted(set(cuts)), n]
    chunks = list(itertools.pairwise(bounds))
    halos = [0 if a == 0 else draw(st.integers(1, min(a, 3))) for a, _ in chunks]
    return list(zip(chunks, halos))


def cost_args(costs):
    commission, slippage_bps, whole_units, stop_loss, take_profit = costs
    return float(commission), float(slippage_bps), bool(whole_units), float(stop_loss), float(take_profit)


# ---------------------------------------------------------------- runners


def strategy_whole(kind, ind, idx, fp, prices, costs, direction):
    """State and rows of the whole series as one chunk."""
    o, h, lo, c = prices
    state = run_state_init(len(idx), CASH)
    ks.strategy_chunk(kind, ind, idx, fp, o, h, lo, c, 0, 0, state, *cost_args(costs), direction)
    return state, finalize_runs(state, c[0], c[-1], PPY)


def strategy_chunked(kind, ind, idx, fp, prices, costs, direction, split):
    o, h, lo, c = prices
    state = run_state_init(len(idx), CASH)
    for (a, b), hh in split:
        s = a - hh
        ks.strategy_chunk(kind, np.ascontiguousarray(ind[:, s:b]), idx, fp, o[s:b], h[s:b], lo[s:b], c[s:b],
                          hh, a, state, *cost_args(costs), direction)
    return state, finalize_runs(state, c[0], c[-1], PPY)


def targets_chunked(prices, targets, costs, split, cash=CASH):
    o, h, lo, c = prices
    state = run_state_init(len(targets), cash)
    for (a, b), hh in split:
        s = a - hh
        simulate_stats_chunk(o[s:b], h[s:b], lo[s:b], c[s:b], np.ascontiguousarray(targets[:, s:b]), hh, a,
                             state, *cost_args(costs))
    return state, finalize_runs(state, c[0], c[-1], PPY)


def assert_states_equal(got, want):
    assert got.shape == want.shape and got.shape[1] == RUN_STATE_WIDTH
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- the run state


def test_state_layout():
    assert RUN_STATE_WIDTH == len(STATE_FIELDS) == 37
    assert STATE_FIELDS[BAR0] == "first_eq" and STATE_FIELDS[TRADE0] == "n"
    assert STATE_FIELDS[SIGNAL] == "signal" and STATE_FIELDS[PENDING] == "pending"
    state = run_state_init(2, CASH)
    assert state.shape == (2, RUN_STATE_WIDTH) and state.dtype == np.float64
    assert state[0, STATE_FIELDS.index("cash")] == CASH and state[0, STATE_FIELDS.index("n_bars")] == 0
    assert np.isnan(finalize_runs(state, 1.0, 2.0, PPY)).all()  # no bars: NaN rows


# ---------------------------------------------------------------- built-in strategies


@settings(max_examples=40, **SETTINGS)
@given(data=st.data(), seed=st.integers(0, 2**31), n=st.integers(2, 120), gaps=st.booleans(),
       costs=st.sampled_from(COSTS), direction=st.sampled_from(DIRECTIONS))
def test_strategy_chunks_equal_whole(data, seed, n, gaps, costs, direction):
    prices = gbm(seed, n, gaps)
    split = data.draw(splits(n))
    for name, kind, ind, idx, fp in strategy_cases(*prices):
        idx = np.array(idx, np.int64)
        fp = np.array(fp, np.float64)
        want_state, want_rows = strategy_whole(kind, ind, idx, fp, prices, costs, direction)
        got_state, got_rows = strategy_chunked(kind, ind, idx, fp, prices, costs, direction, split)
        assert_states_equal(got_state, want_state)
        np.testing.assert_array_equal(got_rows, want_rows, err_msg=name)
        # the whole-series entry point is the one-chunk case
        np.testing.assert_array_equal(
            ks.run_strategy_batch(kind, ind, idx, fp, *prices, PPY, CASH, *cost_args(costs), direction),
            want_rows, err_msg=name)
        # targets, chunk by chunk with the strategy state carried
        tstate = run_state_init(len(idx), CASH)
        parts = [ks.strategy_targets_chunk(kind, np.ascontiguousarray(ind[:, a - hh:b]), idx, fp,
                                           prices[3][a - hh:b], hh, a, tstate, direction)
                 for (a, b), hh in split]
        whole_targets = ks.strategy_targets(kind, ind, idx, fp, prices[3], direction)
        np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole_targets, err_msg=name)
        np.testing.assert_array_equal(tstate[:, SIGNAL], want_state[:, SIGNAL])


def test_strategy_rows_are_those_of_the_targets():
    """The fused chunk kernel trades exactly strategy_targets (a check that the cases trade, too)."""
    prices = gbm(5, 300, True)
    for name, kind, ind, idx, fp in strategy_cases(*prices):
        idx = np.array(idx, np.int64)
        fp = np.array(fp, np.float64)
        targets = ks.strategy_targets(kind, ind, idx, fp, prices[3], ks.LONG_SHORT)
        assert (np.diff(targets, axis=1) != 0).any(), name
        _, rows = strategy_whole(kind, ind, idx, fp, prices, COSTS[1], ks.LONG_SHORT)
        np.testing.assert_array_equal(rows, simulate_stats_batch(*prices, targets, PPY, CASH,
                                                                 *cost_args(COSTS[1])), err_msg=name)


def test_cross_and_donchian_need_a_halo_after_the_first_chunk():
    prices = gbm(1, 40)
    _, kind, ind, idx, fp = strategy_cases(*prices)[0]
    state = run_state_init(3, CASH)
    o, h, lo, c = prices
    ks.strategy_chunk(kind, np.ascontiguousarray(ind[:, :10]), np.array(idx), np.array(fp, float), o[:10], h[:10], lo[:10], c[:10], 0, 0,
                      state, *cost_args(COSTS[0]), 0)
    with pytest.raises(ValueError, match="halo"):
        ks.strategy_chunk(kind, np.ascontiguousarray(ind[:, 10:]), np.array(idx), np.array(fp, float), o[10:], h[10:], lo[10:], c[10:],
                          0, 10, state, *cost_args(COSTS[0]), 0)
    with pytest.raises(ValueError, match="t0 must equal"):
        ks.strategy_chunk(kind, np.ascontiguousarray(ind[:, 9:]), np.array(idx), np.array(fp, float), o[9:], h[9:], lo[9:], c[9:],
                          1, 11, state, *cost_args(COSTS[0]), 0)


# ---------------------------------------------------------------- target matrices and simulate


@st.composite
def target_matrix(draw, rng, m, n):
    kind = draw(st.sampled_from(["int", "fraction"]))
    hold = draw(st.integers(1, 6))
    if kind == "int":
        t = rng.integers(-1, 2, (m, n // hold + 1))
        return np.repeat(t, hold, axis=1)[:, :n].astype(np.int8)
    levels = np.array([-1.0, -0.6, -0.25, 0.0, 0.3, 0.5, 1.0, np.nan])
    t = rng.choice(levels, (m, n // hold + 1))
    return np.repeat(t, hold, axis=1)[:, :n]


@settings(max_examples=60, **SETTINGS)
@given(data=st.data(), seed=st.integers(0, 2**31), n=st.integers(1, 90), gaps=st.booleans(),
       costs=st.sampled_from(COSTS))
def test_target_matrix_chunks_equal_whole(data, seed, n, gaps, costs):
    prices = gbm(seed, n, gaps)
    targets = data.draw(target_matrix(np.random.default_rng(seed), 4, n))
    split = data.draw(splits(n))
    want_state, want_rows = targets_chunked(prices, targets, costs, [((0, n), 0)])
    got_state, got_rows = targets_chunked(prices, targets, costs, split)
    assert_states_equal(got_state, want_state)
    np.testing.assert_array_equal(got_rows, want_rows)
    np.testing.assert_array_equal(simulate_stats_batch(*prices, targets, PPY, CASH, *cost_args(costs)), want_rows)
    np.testing.assert_array_equal(simulate_stats(*prices, targets[1], PPY, CASH, *cost_args(costs)), want_rows[1])


def simulate_chunked(prices, targets, costs, split):
    o, h, lo, c = prices
    state = run_state_init(1, CASH)
    eqs, poss, trades = [], [], []
    for (a, b), hh in split:
        s = a - hh
        eq, pos, tr = simulate_chunk(o[s:b], h[s:b], lo[s:b], c[s:b], targets[s:b], hh, a, state, *cost_args(costs))
        assert len(eq) == len(pos) == b - a
        assert all(a <= x < b for x in tr[1])  # trades closed within the chunk, global bars
        eqs.append(eq)
        poss.append(pos)
        trades.append(tr)
    return (np.concatenate(eqs), np.concatenate(poss),
            tuple(np.concatenate([t[f] for t in trades]) for f in range(8))), state


@settings(max_examples=60, **SETTINGS)
@given(data=st.data(), seed=st.integers(0, 2**31), n=st.integers(1, 90), gaps=st.booleans(),
       costs=st.sampled_from(COSTS))
def test_simulate_chunks_equal_whole(data, seed, n, gaps, costs):
    prices = gbm(seed, n, gaps)
    targets = data.draw(target_matrix(np.random.default_rng(seed), 1, n))[0]
    split = data.draw(splits(n))
    want = simulate(*prices, targets, CASH, *cost_args(costs))
    got, state = simulate_chunked(prices, targets, costs, split)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    for a, b in zip(got[2], want[2]):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    # and the recording run leaves the statistics run's state
    assert_states_equal(state, targets_chunked(prices, targets[None], costs, [((0, n), 0)])[0])


# ---------------------------------------------------------------- named boundaries


def stop_case():
    """Bars and int targets with long and short trades, stop-loss and take-profit exits."""
    prices = gbm(7, 160, True)
    rng = np.random.default_rng(8)
    targets = np.repeat(rng.integers(-1, 2, 160 // 8 + 1), 8)[:160].astype(np.int8)
    costs = (0.001, 1.0, False, 0.025, 0.05)
    return prices, targets, costs


def test_named_boundaries():
    """Cuts at an entry bar, inside a trade, on a stop-loss and a take-profit bar, at t0 = 1, at n - 1."""
    prices, targets, costs = stop_case()
    o = prices[0]
    n = len(o)
    want = simulate(*prices, targets, CASH, *cost_args(costs))
    entry, exit_, _, _, _, exit_px, pnl, _ = want[2]
    stopped = np.flatnonzero(exit_px != o[exit_] * (1 + np.where(want[2][2] > 0, -1, 1) * 1e-4))
    assert len(stopped) >= 3 and (pnl[stopped] < 0).any() and (pnl[stopped] > 0).any()  # stop-loss and take-profit
    long_trade = int(np.argmax(exit_ - entry))
    assert exit_[long_trade] - entry[long_trade] >= 3
    named = {
        "t0=1": [1],
        "entry bar": [int(entry[long_trade])],
        "after entry": [int(entry[long_trade]) + 1],
        "inside a trade": [int(entry[long_trade]) + 2],
        "exit bar": [int(exit_[long_trade])],
        "stop bars": sorted({int(exit_[k]) for k in stopped}),
        "after stops": sorted({int(exit_[k]) + 1 for k in stopped if exit_[k] + 1 < n}),
        "last bar": [n - 1],
        "every bar": list(range(1, n)),
    }
    for name, cuts in named.items():
        bounds = [0, *cuts, n]
        for halo in (1, 2):
            split = [((a, b), 0 if a == 0 else min(halo, a)) for a, b in itertools.pairwise(bounds)]
            got, _ = simulate_chunked(prices, targets, costs, split)
            np.testing.assert_array_equal(got[0], want[0], err_msg=name)
            for a, b in zip(got[2], want[2]):
                np.testing.assert_array_equal(a, b, err_msg=name)
            m_state, rows = targets_chunked(prices, np.vstack([targets, -targets]), costs, split)
            w_state, w_rows = targets_chunked(prices, np.vstack([targets, -targets]), costs, [((0, n), 0)])
            assert_states_equal(m_state, w_state)
            np.testing.assert_array_equal(rows, w_rows, err_msg=name)
            for sname, kind, ind, idx, fp in strategy_cases(*prices):
                idx = np.array(idx, np.int64)
                fp = np.array(fp, np.float64)
                got_s = strategy_chunked(kind, ind, idx, fp, prices, costs, ks.LONG_SHORT, split)
                want_s = strategy_whole(kind, ind, idx, fp, prices, costs, ks.LONG_SHORT)
                assert_states_equal(got_s[0], want_s[0])
                np.testing.assert_array_equal(got_s[1], want_s[1], err_msg=f"{name} {sname}")


def test_pending_target_crosses_the_boundary():
    """A target decided at a chunk's last close fills at the next chunk's first open."""
    o, h, lo, c = (np.linspace(100, 110, 6),) * 4
    targets = np.array([0, 0, 1, 1, 1, 1], np.int8)
    costs = cost_args(COSTS[0])  # all arguments given: numba's cache never matches an omitted NaN default
    state = run_state_init(1, CASH)
    simulate_chunk(o[:3], h[:3], lo[:3], c[:3], targets[:3], 0, 0, state, *costs)
    assert state[0, PENDING] == 1.0 and state[0, 0] == 0.0  # decided, not filled
    eq, pos, _ = simulate_chunk(o[2:], h[2:], lo[2:], c[2:], targets[2:], 1, 3, state, *costs)
    assert pos[0] > 0 and state[0, STATE_FIELDS.index("entry_bar")] == 3.0
    whole = simulate(o, h, lo, c, targets, CASH, *costs)[0]
    np.testing.assert_array_equal(np.r_[whole[:3], eq], whole)


# ---------------------------------------------------------------- portfolio accumulators


def universe(seed, n_union=100):
    """Three symbols on a union timeline 0 .. n_union - 1: one starts late, one ends early, one has holes."""
    rng = np.random.default_rng(seed)
    keep = [np.arange(n_union), np.arange(n_union)[n_union // 4:], np.arange(n_union)[: n_union - n_union // 5]]
    holes = rng.random(n_union) < 0.15
    holes[0] = False
    keep[0] = keep[0][~holes]
    out = []
    for j, pos in enumerate(keep):
        prices = gbm(seed + j, len(pos), gaps=True)
        out.append((pos.astype(np.int64), prices))
    return out


def portfolio_whole(advance, syms, m, n_union):
    """Whole-series accumulators: each symbol one chunk onto the full timeline, then folded."""
    eq = np.zeros((m, n_union))
    tr = kp.trade_acc_init(m)
    ex = np.zeros((m, kp.EXTRA_WIDTH))
    states = []
    for s, (pos, prices) in enumerate(syms):
        state = run_state_init(m, CASH)
        advance(s, prices, 0, len(pos), 0, state, pos, eq)
        rows = finalize_runs(state, prices[3][0], prices[3][-1], PPY)
        kp.fold_sleeves(state, rows, tr, ex)
        states.append(state)
    return eq, tr, ex, states


def portfolio_windowed(advance, syms, m, n_union, cuts, halo):
    """Union timeline cut into windows; each symbol advanced over its bars in each window."""
    bounds = [0, *sorted(set(cuts)), n_union]
    states = [run_state_init(m, CASH) for _ in syms]
    done = [0] * len(syms)
    windows = []
    pstate = kp.portfolio_state_init(m)
    sleeves = np.full(m, float(len(syms)))
    for w0, w1 in itertools.pairwise(bounds):
        eq = np.zeros((m, w1 - w0))
        for s, (pos, prices) in enumerate(syms):
            a = done[s]
            b = int(np.searchsorted(pos, w1))
            hh = min(a, halo)
            advance(s, prices, a - hh, b, hh, states[s], pos[a:b] - w0, eq)
            done[s] = b
        kp.portfolio_fold(eq, sleeves, w0, pstate)
        windows.append(eq)
    tr = kp.trade_acc_init(m)
    ex = np.zeros((m, kp.EXTRA_WIDTH))
    for (pos, prices), state in zip(syms, states):
        kp.fold_sleeves(state, finalize_runs(state, prices[3][0], prices[3][-1], PPY), tr, ex)
    return np.concatenate(windows, axis=1), tr, ex, states, pstate


@settings(max_examples=40, **SETTINGS)
@given(data=st.data(), seed=st.integers(0, 2**31), costs=st.sampled_from(COSTS),
       direction=st.sampled_from(DIRECTIONS), path=st.sampled_from(["strategy", "targets", "vote", "fraction"]))
def test_portfolio_windows_equal_whole(data, seed, costs, direction, path):
    n_union = 100
    syms = universe(seed % 1000, n_union)
    cuts = data.draw(st.lists(st.integers(1, n_union - 1), max_size=8))
    halo = data.draw(st.integers(1, 3))
    rng = np.random.default_rng(seed)
    if path == "strategy":
        choice = data.draw(st.integers(0, 7))
        cases = [strategy_cases(*prices)[choice] for _, prices in syms]
        m = len(cases[0][3])

        def advance(s, prices, lo_, hi_, hh, state, pos, eq):
            _, kind, ind, idx, fp = cases[s]
            o, h, lo, c = (p[lo_:hi_] for p in prices)
            ks.strategy_chunk(kind, np.ascontiguousarray(ind[:, lo_:hi_]), np.array(idx, np.int64),
                              np.array(fp, np.float64), o, h, lo, c, hh, lo_ + hh, state, *cost_args(costs),
                              direction, timeline_pos=pos, equity_acc=eq)
    elif path == "targets":
        m = 3
        targets = [data.draw(target_matrix(rng, m, len(pos))) for pos, _ in syms]

        def advance(s, prices, lo_, hi_, hh, state, pos, eq):
            o, h, lo, c = (p[lo_:hi_] for p in prices)
            simulate_stats_chunk(o, h, lo, c, np.ascontiguousarray(targets[s][:, lo_:hi_]), hh, lo_ + hh, state,
                                 *cost_args(costs), timeline_pos=pos, equity_acc=eq)
    else:
        rule = kr.VOTE if path == "vote" else kr.FRACTION
        m, k_rows = 4, 3
        signals = [np.repeat(rng.integers(-1, 2, (k_rows, len(pos) // 4 + 1)), 4, axis=1)[:, :len(pos)].astype(np.int8)
                   for pos, _ in syms]
        weights = rng.dirichlet(np.ones(k_rows), m)
        weights[0] = [1.0, 0.0, 0.0]

        def advance(s, prices, lo_, hi_, hh, state, pos, eq):
            o, h, lo, c = (p[lo_:hi_] for p in prices)
            kr.ensemble_chunk(np.ascontiguousarray(signals[s][:, lo_:hi_]), weights, rule, 0.3, direction, o, h,
                              lo, c, hh, lo_ + hh, state, *cost_args(costs), timeline_pos=pos, equity_acc=eq)

    eq_w, tr_w, ex_w, states_w = portfolio_whole(advance, syms, m, n_union)
    eq_c, tr_c, ex_c, states_c, pstate = portfolio_windowed(advance, syms, m, n_union, cuts, halo)
    np.testing.assert_array_equal(eq_c, eq_w)
    np.testing.assert_array_equal(tr_c, tr_w)
    np.testing.assert_array_equal(ex_c, ex_w)
    for a, b in zip(states_c, states_w):
        assert_states_equal(a, b)
    np.testing.assert_array_equal(kp.portfolio_finalize(pstate, tr_c, ex_c, PPY), kp.portfolio_stats(eq_w, tr_w, ex_w, PPY))


def test_portfolio_whole_series_entry_points_are_one_window():
    """strategy_batch_with_equity / targets_batch_with_equity / ensemble_batch_with_equity: one chunk each."""
    syms = universe(3)
    n_union = 100
    costs = COSTS[2]
    for choice in range(8):
        cases = [strategy_cases(*prices)[choice] for _, prices in syms]
        m = len(cases[0][3])
        acc = kp.accumulators_init(m, n_union)
        for (pos, prices), (_, kind, ind, idx, fp) in zip(syms, cases):
            kp.strategy_batch_with_equity(kind, ind, np.array(idx, np.int64), np.array(fp, np.float64), *prices, pos,
                                          PPY, CASH, *cost_args(costs), ks.LONG_ONLY, *acc)

        def advance(s, prices, lo_, hi_, hh, state, pos, eq, cases=cases):
            _, kind, ind, idx, fp = cases[s]
            ks.strategy_chunk(kind, np.ascontiguousarray(ind[:, lo_:hi_]), np.array(idx, np.int64), np.array(fp, np.float64),
                              *(p[lo_:hi_] for p in prices), hh, lo_ + hh, state, *cost_args(costs), ks.LONG_ONLY,
                              timeline_pos=pos, equity_acc=eq)
        want = portfolio_whole(advance, syms, m, n_union)
        for a, b in zip(acc, want[:3]):
            np.testing.assert_array_equal(a, b)


def test_rebase_equity_by_windows():
    """A group rebased window by window, ``before`` carried from the previous window, equals the whole rebase."""
    rng = np.random.default_rng(4)
    union = np.arange(0, 300, 3, dtype=np.int64)
    own = np.sort(rng.choice(union[10:], 60, replace=False))
    acc = rng.normal(20_000, 500, (3, len(own)))
    before = kp.starting_equity(3, 2, CASH)
    assert (before == CASH + CASH).all()
    whole = kp.rebase_equity(acc, own, union, before)
    parts = []
    for u0, u1 in [(0, 7), (7, 40), (40, 41), (41, 100)]:
        lo, hi = np.searchsorted(own, union[u0]), np.searchsorted(own, union[u1 - 1], side="right")
        parts.append(kp.rebase_equity(acc[:, lo:hi], own[lo:hi], union[u0:u1], before))
        before = parts[-1][:, -1].copy()
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)


# ---------------------------------------------------------------- replay


@settings(max_examples=50, **SETTINGS)
@given(data=st.data(), seed=st.integers(0, 2**31), n=st.integers(1, 90), costs=st.sampled_from(COSTS),
       direction=st.sampled_from(DIRECTIONS), rule=st.sampled_from([kr.VOTE, kr.FRACTION]),
       threshold=st.sampled_from([0.0, 0.3, 0.5]))
def test_ensemble_chunks_equal_whole(data, seed, n, costs, direction, rule, threshold):
    rng = np.random.default_rng(seed)
    prices = gbm(seed, n, True)
    k_rows = 4
    hold = data.draw(st.integers(1, 5))
    signals = np.repeat(rng.integers(-1, 2, (k_rows, n // hold + 1)), hold, axis=1)[:, :n].astype(np.int8)
    weights = np.vstack([np.eye(k_rows), rng.dirichlet(np.ones(k_rows), 3), rng.normal(0, 0.6, (3, k_rows)),
                         np.full((1, k_rows), 1 / k_rows)])
    split = data.draw(splits(n))
    m = len(weights)
    want = kr.ensemble_batch(signals, weights, rule, threshold, direction, *prices, PPY, CASH, *cost_args(costs))
    whole_state = run_state_init(m, CASH)
    kr.ensemble_chunk(signals, weights, rule, threshold, direction, *prices, 0, 0, whole_state, *cost_args(costs))
    state = run_state_init(m, CASH)
    for (a, b), hh in split:
        s = a - hh
        kr.ensemble_chunk(np.ascontiguousarray(signals[:, s:b]), weights, rule, threshold, direction,
                          *(p[s:b] for p in prices), hh, a, state, *cost_args(costs))
    assert_states_equal(state, whole_state)
    np.testing.assert_array_equal(finalize_runs(state, prices[3][0], prices[3][-1], PPY), want)


@settings(max_examples=80, **SETTINGS)
@given(data=st.data(), seed=st.integers(0, 2**31), k_rows=st.integers(0, 4), n=st.integers(0, 70),
       p_change=st.sampled_from([0.05, 0.3, 0.9]))
def test_event_chunks_equal_whole(data, seed, k_rows, n, p_change):
    targets = step_targets(np.random.default_rng(seed), k_rows, n, p_change)
    ptr, bar, value = kr.events_from_targets(targets)
    split = data.draw(splits(n)) if n else [((0, 0), 0)]
    prev = np.zeros(k_rows, np.int64)
    rows = [([], []) for _ in range(k_rows)]
    dense_prev = np.zeros(k_rows, np.int64)
    for (a, b), hh in split:
        p, bb, vv = kr.events_from_targets_chunk(np.ascontiguousarray(targets[:, a - hh:b]), hh, a, prev)
        for k in range(k_rows):
            rows[k][0].append(bb[p[k]:p[k + 1]])
            rows[k][1].append(vv[p[k]:p[k + 1]])
        np.testing.assert_array_equal(prev, targets[:, b - 1] if b > 0 else 0)
        # dense targets of the chunk, from the whole events (carried prev) and from the chunk's own events
        np.testing.assert_array_equal(kr.targets_in_force(ptr, bar, value, a), dense_prev)
        chunk = kr.dense_targets_chunk(ptr, bar, value, a, b - a, dense_prev)
        np.testing.assert_array_equal(chunk, targets[:, a:b])
        own_prev = kr.targets_in_force(ptr, bar, value, a)
        np.testing.assert_array_equal(kr.dense_targets_chunk(p, bb, vv, a, b - a, own_prev), targets[:, a:b])
    for k in range(k_rows):
        np.testing.assert_array_equal(np.concatenate(rows[k][0]).astype(np.int64), bar[ptr[k]:ptr[k + 1]])
        np.testing.assert_array_equal(np.concatenate(rows[k][1]).astype(np.int8), value[ptr[k]:ptr[k + 1]])


# ---------------------------------------------------------------- periods per year


def timestamp_cases(seed):
    rng = np.random.default_rng(seed)
    day = 86_400 * 10**9
    days = np.arange(np.datetime64("2019-01-01"), np.datetime64("2021-06-01"))
    business = days[np.is_busday(days)].astype("datetime64[ns]").view(np.int64)
    session = np.datetime64("2024-01-02T14:30", "ns").astype(np.int64) + np.arange(390) * 60 * 10**9
    minutes = np.concatenate([session + d * day for d in (0, 1, 2, 6, 7)])  # Tue .. Thu, Mon, Tue
    hourly = np.datetime64("2024-01-01", "ns").astype(np.int64) + np.arange(24 * 40) * 3600 * 10**9
    irregular = np.datetime64("2020-01-01", "ns").astype(np.int64) + np.cumsum(
        rng.integers(1, 5 * day, 301) + rng.integers(0, 2, 301) * (2**53 + 1))
    # an even count of spacings whose two middle values' float64 mean rounds
    even = np.array([0, 3, 4, 9, 2**54, 2**54 + 2**53 + 1, 2**54 + 2**54 + 4], dtype=np.int64) + 10**18
    return {"daily": business, "minute": minutes, "24/7": hourly, "irregular": irregular, "even": even,
            "crypto": days.astype("datetime64[ns]").view(np.int64)}


@settings(max_examples=40, **SETTINGS)
@given(data=st.data(), seed=st.integers(0, 1000))
def test_periods_per_year_stream(data, seed):
    for name, ts in timestamp_cases(seed).items():
        cuts = sorted(set(data.draw(st.lists(st.integers(0, len(ts)), max_size=12))))
        stream = PeriodsPerYearStream()
        for i, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(ts)])):
            stream.update(ts[a:b])
            if i == 1:  # stored and restored mid-way
                stream = PeriodsPerYearStream.from_arrays(
                    {k: v.copy() for k, v in stream.to_arrays().items()})
        assert stream.median_spacing() == float(np.median(np.diff(ts))), name
        assert stream.value() == periods_per_year(ts), name
        assert stream.spacings.size <= len(ts)


def test_periods_per_year_stream_small_state_and_errors():
    ts = timestamp_cases(0)["minute"]
    stream = PeriodsPerYearStream()
    for chunk in np.array_split(ts, 50):
        stream.update(chunk.view("datetime64[ns]"))
    assert stream.value() == periods_per_year(ts) == 252.0 * 390
    assert stream.spacings.size <= 4  # minute, overnight, two gaps
    empty = PeriodsPerYearStream()
    empty.update(ts[:1])
    with pytest.raises(ValueError, match="periods_per_year"):
        empty.value()
    backwards = PeriodsPerYearStream()
    backwards.update(ts[:5][::-1])
    with pytest.raises(ValueError, match="periods_per_year"):
        backwards.value()
