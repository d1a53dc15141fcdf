"""Indicators computed in time chunks equal the whole series bit for bit.

Each chunk gets ``min(spec.halo, bars processed)`` halo bars and the state the
previous chunk returned (:meth:`IndicatorSpec.compute_chunk`); the joined chunk
outputs must equal :meth:`IndicatorSpec.compute` of the whole series exactly:
same bits, NaN at the same places. Property tests draw the series (GBM prices
with NaN/inf gaps, flat runs, zero-volume runs), the parameters and the chunk
boundaries; the deterministic tests pin the awkward places: both sides of the
running sums' exact-recompute points, many blocks, a gap across a boundary,
more halo than needed, and a state that went through bytes.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admf_dask import indicators as registry
from admf_dask.errors import DataError
from admf_dask.indicators import INDICATORS, IndicatorSpec, computations
from admf_dask.kernels import indicators as kern

COLUMNS = ("open", "high", "low", "close", "volume")


# --------------------------------------------------------------------------- data and helpers


def gbm_bars(n: int, seed: int = 7, vol: float = 0.01) -> dict[str, np.ndarray]:
    """Seeded geometric Brownian motion OHLCV bars around 100."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, vol, n)))
    open_ = np.concatenate([[100.0], close[:-1]]) * np.exp(rng.normal(0.0, vol / 4, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, vol / 2, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, vol / 2, n)))
    volume = rng.integers(0, 10_000, n).astype(np.float64)
    return {"open": open_, "high": high, "low": low, "close": close, "volume": volume}


def flatten(bars: dict[str, np.ndarray], start: int, length: int) -> None:
    """Equal prices over ``[start, start + length)``: flat windows, std 0, HH == LL."""
    for c in ("open", "high", "low", "close"):
        bars[c][start : start + length] = bars["close"][start]


def chunked(spec: IndicatorSpec, cols: dict[str, np.ndarray], cuts, extra_halo: int = 0):
    """Run ``spec`` chunk by chunk (chunks end at ``cuts``, then at the end); join the outputs."""
    n = len(cols["close"])
    state = spec.init_state()
    parts: dict[str, list[np.ndarray]] = {o: [] for o in spec.outputs}
    done = 0
    for end in [*sorted(set(cuts)), n]:
        h = min(spec.halo + extra_halo, done)
        out, state = spec.compute_chunk({c: cols[c][done - h : end] for c in spec.inputs}, h, state)
        for name, arr in out.items():
            assert arr.shape == (end - done,) and arr.dtype == np.float64
            parts[name].append(arr)
        assert state[0] == end  # the bar count rides in state[0]
        done = end
    return {name: np.concatenate(p) for name, p in parts.items()}


def assert_same_bits(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], what: str = "") -> None:
    assert list(actual) == list(expected)
    for name, e in expected.items():
        a = actual[name]
        assert a.shape == e.shape, (what, name)
        if not np.array_equal(a.view(np.int64), e.view(np.int64)):
            bad = np.flatnonzero(a.view(np.int64) != e.view(np.int64))
            raise AssertionError(f"{what} {name}: {bad.size} bars differ, first {bad[:5]}: {a[bad[:5]]} != {e[bad[:5]]}")


def check_all(specs, cols, cuts, extra_halo: int = 0) -> None:
    for spec in specs:
        assert_same_bits(chunked(spec, cols, cuts, extra_halo), spec.compute(cols), f"{spec.label} cuts={cuts}")


def specs_with(w: int) -> list[IndicatorSpec]:
    """All 13 indicators with window-like parameters around ``w``."""
    return [
        IndicatorSpec.make("sma", window=w),
        IndicatorSpec.make("ema", span=w),
        IndicatorSpec.make("wma", window=w),
        IndicatorSpec.make("rsi", window=w),
        IndicatorSpec.make("atr", window=w),
        IndicatorSpec.make("bollinger", window=w, k=2.0),
        IndicatorSpec.make("macd", fast=max(1, w // 2), slow=w + 1, signal=max(1, w // 3)),
        IndicatorSpec.make("donchian", window=w),
        IndicatorSpec.make("zscore", window=w),
        IndicatorSpec.make("roc", window=w),
        IndicatorSpec.make("stochastic", k_window=w, d_window=3),
        IndicatorSpec.make("obv"),
        IndicatorSpec.make("vwap", window=w),
    ]


def test_specs_with_covers_every_indicator():
    assert sorted({s.name for s in specs_with(5)}) == sorted(INDICATORS)


# --------------------------------------------------------------------------- property tests (hypothesis)


@st.composite
def bar_series(draw, short: bool = False):
    """GBM bars with optional flat runs, zero-volume runs and NaN/inf gaps in some or all columns."""
    n = draw(st.integers(0, 90) if short else st.one_of(st.integers(0, 150), st.integers(150, 2300)))
    bars = gbm_bars(n, seed=draw(st.integers(0, 2**32 - 1)), vol=draw(st.sampled_from([0.001, 0.02, 0.2])))
    if n:
        at = st.integers(0, n - 1)
        for start, length in draw(st.lists(st.tuples(at, st.integers(1, 80)), max_size=3)):
            flatten(bars, start, length)
        for start, length in draw(st.lists(st.tuples(at, st.integers(1, 40)), max_size=2)):
            bars["volume"][start : start + length] = 0.0
        for start, length, value, which in draw(
            st.lists(
                st.tuples(
                    at,
                    st.integers(1, 12),
                    st.sampled_from([np.nan, np.inf, -np.inf]),
                    st.sampled_from([COLUMNS, ("close",), ("high",), ("low",), ("volume",)]),
                ),
                max_size=4,
            )
        ):
            for c in which:
                bars[c][start : start + length] = value
    return bars


@st.composite
def boundaries(draw, n: int):
    """Chunk ends: random ones, sometimes a run of 1-bar chunks (often inside the warm-up)."""
    if n == 0:
        return []
    cuts = draw(st.lists(st.integers(0, n), max_size=40))
    if draw(st.booleans()):
        start = draw(st.integers(0, n))
        cuts += list(range(start, min(n, start + draw(st.integers(1, 40)))))
    return cuts


WINDOWS = st.one_of(st.integers(1, 30), st.integers(31, 260))


@st.composite
def indicator_specs(draw):
    """One spec per indicator (all 13), parameters drawn independently."""
    w = WINDOWS
    fast = draw(st.integers(1, 40))
    return [
        IndicatorSpec.make("sma", window=draw(w)),
        IndicatorSpec.make("ema", span=draw(w)),
        IndicatorSpec.make("wma", window=draw(w)),
        IndicatorSpec.make("rsi", window=draw(w)),
        IndicatorSpec.make("atr", window=draw(w)),
        IndicatorSpec.make("bollinger", window=draw(w), k=draw(st.sampled_from([0.0, 1.5, 2.0]))),
        IndicatorSpec.make("macd", fast=fast, slow=fast + draw(st.integers(1, 60)), signal=draw(st.integers(1, 30))),
        IndicatorSpec.make("donchian", window=draw(w)),
        IndicatorSpec.make("zscore", window=draw(w)),
        IndicatorSpec.make("roc", window=draw(w)),
        IndicatorSpec.make("stochastic", k_window=draw(w), d_window=draw(st.integers(1, 12))),
        IndicatorSpec.make("obv"),
        IndicatorSpec.make("vwap", window=draw(w)),
    ]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_chunks_equal_the_whole_series(data):
    cols = data.draw(bar_series())
    specs = data.draw(indicator_specs())
    cuts = data.draw(boundaries(len(cols["close"])))
    check_all(specs, cols, cuts)


@settings(max_examples=40, deadline=None)
@given(bar_series(short=True), st.integers(1, 12))
def test_one_bar_chunks_equal_the_whole_series(cols, w):
    n = len(cols["close"])
    check_all(specs_with(w), cols, range(n))


# --------------------------------------------------------------------------- deterministic: block boundaries


def long_bars(n: int, seed: int = 3) -> dict[str, np.ndarray]:
    bars = gbm_bars(n, seed=seed)
    flatten(bars, 1030, 30)  # a flat run across the first recompute point of window 20 (bar 1043)
    for c in COLUMNS:
        bars[c][2060:2064] = np.nan  # a gap just before the second (bar 2067)
    bars["close"][3090:3091] = np.inf  # slices: shorter series simply lack these
    bars["volume"][4100:4130] = 0.0
    return bars


def test_boundaries_at_both_sides_of_the_recompute_points():
    """Window 20: running sums restart exactly at global bars 19 + k * 1024 (SMA, WMA, VWAP),
    19 + k * 64 (variance), van Herk blocks at multiples of 20."""
    cols = long_bars(5000)
    recompute = [19 + k * 1024 for k in range(5)]
    recentre = [19 + k * 64 for k in (1, 16, 17, 32)]
    herk = [1040, 2060, 4100]
    for points in (recompute, recentre, herk):
        for delta in (-1, 0, 1, 2):
            check_all(specs_with(20), cols, [p + delta for p in points])
    check_all(specs_with(20), cols, range(1035, 1050))  # 1-bar chunks through a recompute point


def test_long_series_many_blocks():
    """Many blocks of every kind, chunks of uneven sizes; a window longer than the default block too."""
    cols = long_bars(30_000, seed=5)
    cuts = np.cumsum(np.random.default_rng(0).integers(1, 2500, 30))
    for w in (5, 50, 1500):
        check_all(specs_with(w), cols, cuts[cuts < 30_000])


def test_nan_gap_straddling_a_boundary():
    cols = gbm_bars(400, seed=9)
    for c in COLUMNS:
        cols[c][195:210] = np.nan
    for cut in (194, 195, 200, 209, 210, 211):
        check_all(specs_with(14), cols, [cut])
    check_all(specs_with(14), cols, range(190, 230))


def test_chunks_inside_the_warm_up_and_longer_than_the_series():
    cols = gbm_bars(60, seed=4)
    check_all(specs_with(40), cols, [3, 17, 39])  # boundaries before the first value
    check_all(specs_with(100), cols, [10, 30])  # never leaves the warm-up
    check_all(specs_with(5), cols, [])  # one chunk: the whole series


def test_empty_chunks_change_nothing():
    cols = gbm_bars(200, seed=2)
    for spec in specs_with(10):
        _, state = spec.compute_chunk({c: cols[c][:80] for c in spec.inputs}, 0, spec.init_state())
        h = min(spec.halo, 80)
        empty, same = spec.compute_chunk({c: cols[c][80 - h : 80] for c in spec.inputs}, h, state)
        assert all(a.shape == (0,) for a in empty.values())
        np.testing.assert_array_equal(same.view(np.int64), state.view(np.int64))


# --------------------------------------------------------------------------- halo and state


def test_more_halo_than_required_reads_only_the_last_halo_bars():
    """Extra halo bars are ignored: replacing them with garbage changes nothing."""
    cols = long_bars(3000)
    cuts = [5, 700, 1043, 1044, 2500]
    check_all(specs_with(20), cols, cuts, extra_halo=13)
    for spec in specs_with(20):
        expected = spec.compute(cols)
        state = spec.init_state()
        parts: dict[str, list[np.ndarray]] = {o: [] for o in spec.outputs}
        done = 0
        for end in [*cuts, 3000]:
            chunk = {c: cols[c][:end].copy() for c in spec.inputs}  # everything so far as halo
            for arr in chunk.values():
                arr[: max(0, done - spec.halo)] = -1e300  # garbage where nothing may be read
            out, state = spec.compute_chunk(chunk, done, state)
            for name, arr in out.items():
                parts[name].append(arr)
            done = end
        assert_same_bits({k: np.concatenate(v) for k, v in parts.items()}, expected, spec.label)


@pytest.mark.parametrize("name", sorted(INDICATORS))
def test_halo_is_exactly_what_the_kernel_needs(name):
    """The kernel itself refuses one halo bar fewer than ``spec.halo`` (so the registry cannot understate it)."""
    spec = specs_with(9)[[s.name for s in specs_with(9)].index(name)]
    cols = gbm_bars(100, seed=1)
    _, state = spec.compute_chunk({c: cols[c][:50] for c in spec.inputs}, 0, spec.init_state())
    d = spec.definition
    params = [dict(spec.params)[p.name] for p in d.params]
    for h in (spec.halo, spec.halo - 1):
        if h < 0:
            continue
        arrays = [np.ascontiguousarray(cols[c][50 - h :]) for c in spec.inputs]
        outs = [np.empty(50) for _ in spec.outputs]
        s = state.copy()
        if h == spec.halo:
            d.chunk(*arrays, h, *params, s, *outs)
            assert s[0] == 100
        else:
            with pytest.raises(ValueError, match="shorter than the kernel needs"):
                d.chunk(*arrays, h, *params, s, *outs)


def test_halos_documented():
    p = {"window": 20, "span": 20, "k": 2.0, "fast": 12, "slow": 26, "signal": 9, "k_window": 14, "d_window": 3}

    def halo(name):
        return IndicatorSpec.make(name, **{q.name: p[q.name] for q in INDICATORS[name].params}).halo

    assert {name: halo(name) for name in INDICATORS} == {
        "sma": 20, "wma": 20, "bollinger": 20, "zscore": 20, "vwap": 20, "roc": 20,
        "donchian": 19, "stochastic": 13,
        "ema": 0, "rsi": 0, "atr": 0, "macd": 0, "obv": 0,
    }  # fmt: skip


def test_state_round_trips_through_bytes():
    """A state stored as raw float64 bytes (read back read-only) continues exactly."""
    cols = long_bars(2500)
    for spec in specs_with(20):
        expected = spec.compute(cols)
        first, state = spec.compute_chunk({c: cols[c][:1044] for c in spec.inputs}, 0, spec.init_state())
        assert state.dtype == np.float64 and state.ndim == 1 and state.shape == spec.init_state().shape
        stored = state.tobytes()
        restored = np.frombuffer(stored, dtype=np.float64)  # read-only: compute_chunk must copy, not write
        h = min(spec.halo, 1044)
        rest, after = spec.compute_chunk({c: cols[c][1044 - h :] for c in spec.inputs}, h, restored)
        assert restored.tobytes() == stored
        joined = {k: np.concatenate([first[k], rest[k]]) for k in first}
        assert_same_bits(joined, expected, spec.label)
        assert after[0] == 2500


def test_initial_states_are_fixed_length_float64():
    for spec in specs_with(7) + [IndicatorSpec.make("stochastic", k_window=5, d_window=11)]:
        s = spec.init_state()
        assert s.dtype == np.float64 and s.ndim == 1 and s[0] == 0.0
        assert s is not spec.init_state()  # a fresh array each time
    assert IndicatorSpec.make("stochastic", k_window=5, d_window=11).init_state().shape == (8 + 11,)
    assert IndicatorSpec.make("macd").init_state().shape == (12,)


# --------------------------------------------------------------------------- compute_chunk: validation and counting


def test_compute_chunk_validates_and_leaves_the_callers_state_alone():
    spec = IndicatorSpec.make("atr", window=5)
    cols = gbm_bars(30)
    with pytest.raises(DataError, match="low"):
        spec.compute_chunk({"high": cols["high"], "close": cols["close"]}, 0, spec.init_state())
    with pytest.raises(ValueError, match="differ in length"):
        spec.compute_chunk({"high": cols["high"], "low": cols["low"][:-1], "close": cols["close"]}, 0, spec.init_state())
    sma = IndicatorSpec.make("sma", window=5)
    close = {"close": cols["close"][:10]}
    with pytest.raises(ValueError, match="from 0 to the 10 bars"):
        sma.compute_chunk(close, 11, sma.init_state())
    with pytest.raises(ValueError, match="halo h"):
        sma.compute_chunk(close, -1, sma.init_state())
    with pytest.raises(ValueError, match="shape"):
        sma.compute_chunk(close, 0, np.zeros(3))
    _, state = sma.compute_chunk(close, 0, sma.init_state())
    before = state.copy()
    with pytest.raises(ValueError, match="min\\(halo=5, bars processed=10\\)"):
        sma.compute_chunk({"close": cols["close"][6:20]}, 4, state)  # one halo bar short
    with pytest.raises(ValueError, match="bars processed"):
        sma.compute_chunk({"close": cols["close"][:20]}, 0, np.zeros(4) + [0.5, 0, 0, 0])
    out, after = sma.compute_chunk({"close": cols["close"][5:20]}, 5, state)
    np.testing.assert_array_equal(state, before)  # the caller's state is untouched
    assert after is not state and after[0] == 20 and out["value"].shape == (10,)


def test_compute_chunk_counts_one_computation_like_compute():
    spec = IndicatorSpec.make("macd")
    cols = gbm_bars(100)
    start = computations()
    spec.compute(cols)
    assert computations() == start + 1
    spec.compute_chunk(cols, 0, spec.init_state())
    assert computations() == start + 2
    assert registry._COMPUTED[0] == start + 2


def test_compute_series_is_the_whole_series_chunk_bit_for_bit():
    """The hub's fast path (checks once per process) gives compute_chunk's outputs and end state, same bits,
    on its first call (which checks) and its later ones (which do not), and counts one computation each."""
    cols = gbm_bars(300, seed=3)
    cols["close"][40:45] = np.nan  # a gap: NaN at the same places
    for spec in specs_with(7):
        registry._INITIAL.pop(spec.token, None)
        want, want_state = spec.compute_chunk(cols, 0, spec.init_state())
        for _ in range(2):
            start = computations()
            got, state = spec.compute_series(cols)
            assert computations() == start + 1, spec.label
            np.testing.assert_array_equal(state.view(np.int64), want_state.view(np.int64), err_msg=spec.label)
            for name in spec.outputs:
                np.testing.assert_array_equal(got[name].view(np.int64), want[name].view(np.int64),
                                              err_msg=f"{spec.label}.{name}")
        state[:] = -1.0  # the returned state is the caller's: the next call starts from the initial state again
        again, _ = spec.compute_series(cols)
        np.testing.assert_array_equal(again[spec.outputs[0]].view(np.int64), want[spec.outputs[0]].view(np.int64))
    with pytest.raises(DataError, match="low"):
        IndicatorSpec.make("atr", window=5).compute_series({"high": cols["high"], "close": cols["close"]})


def test_public_kernels_are_the_one_chunk_case():
    cols = long_bars(2000)
    c, h, lo, v = cols["close"], cols["high"], cols["low"], cols["volume"]
    pairs = [
        (kern.sma(c, 20), "sma", {"window": 20}),
        (kern.zscore(c, 20), "zscore", {"window": 20}),
        (kern.stochastic(h, lo, c, 14, 3)[1], "stochastic", {"k_window": 14, "d_window": 3}),
        (kern.vwap(h, lo, c, v, 20), "vwap", {"window": 20}),
        (kern.macd(c)[2], "macd", {}),
    ]
    for expected, name, params in pairs:
        spec = IndicatorSpec.make(name, **params)
        got = spec.compute(cols)[spec.outputs[-1] if name != "stochastic" else "d"]
        np.testing.assert_array_equal(got.view(np.int64), expected.view(np.int64))
