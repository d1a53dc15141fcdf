"""Indicator kernels against pandas references, plus every documented edge case.

Tolerance: 1e-9 relative, NaN at the same positions. Outputs that cross zero
(MACD, z-score, ROC, OBV, %K) also get an absolute tolerance of 1e-9 times
their natural scale, because a relative test is meaningless at zero.

Rolling standard deviations are checked against ``rolling().apply(np.std)``
(an exact two-pass per window): pandas' own online ``rolling().std()``
drifts on long series (measured: 2e-7 relative after 1e5 bars, 2e-6 after 1e6).
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admf_dask.kernels import indicators as ind

RTOL = 1e-9


# --------------------------------------------------------------------------- data


def gbm_bars(n: int, seed: int = 7, start: float = 100.0, vol: float = 0.01) -> dict[str, np.ndarray]:
    """Seeded geometric Brownian motion OHLCV bars around ``start``."""
    rng = np.random.default_rng(seed)
    close = start * np.exp(np.cumsum(rng.normal(0.0, vol, n)))
    open_ = np.concatenate([[start], close[:-1]]) * np.exp(rng.normal(0.0, vol / 4, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, vol / 2, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, vol / 2, n)))
    volume = rng.integers(0, 10_000, n).astype(np.float64)
    return {"open": open_, "high": high, "low": low, "close": close, "volume": volume}


def goog_bars() -> dict[str, np.ndarray]:
    from backtesting.test import GOOG

    return {c.lower(): GOOG[c].to_numpy(dtype=np.float64) for c in ("Open", "High", "Low", "Close", "Volume")}


def with_missing_bars(bars: dict[str, np.ndarray], idx) -> dict[str, np.ndarray]:
    out = {k: v.copy() for k, v in bars.items()}
    for v in out.values():
        v[idx] = np.nan
    return out


DATASETS = {
    "gbm": gbm_bars(3000),
    "goog": goog_bars(),
    "gbm_gaps": with_missing_bars(gbm_bars(3000, seed=11), [0, 5, 400, 401, 1500, 2990]),
}


@pytest.fixture(params=sorted(DATASETS))
def bars(request) -> dict[str, np.ndarray]:
    return DATASETS[request.param]


def check(actual, expected, scale: float = 0.0) -> None:
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.dtype == np.float64 and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale, equal_nan=True)


# --------------------------------------------------------------------------- pandas references


def by_segment(fn, *arrays):
    """Apply ``fn`` to each run of bars where every input is finite (restart semantics)."""
    n = len(arrays[0])
    valid = np.logical_and.reduce([np.isfinite(a) for a in arrays]) if n else np.zeros(0, bool)
    results = None
    i = 0
    while i < n:
        if not valid[i]:
            i += 1
            continue
        j = i
        while j < n and valid[j]:
            j += 1
        outs = fn(*[pd.Series(a[i:j]) for a in arrays])
        outs = outs if isinstance(outs, tuple) else (outs,)
        if results is None:
            results = [np.full(n, np.nan) for _ in outs]
        for r, o in zip(results, outs):
            r[i:j] = np.asarray(o, dtype=np.float64)
        i = j
    if results is None:
        results = [np.full(n, np.nan)]
    return tuple(results) if len(results) > 1 else results[0]


def ref_sma(x, w):
    return pd.Series(x).rolling(w).mean().to_numpy()


def ref_std(x, w):
    return pd.Series(x).rolling(w).apply(np.std, raw=True).to_numpy()


def ref_wma(x, w):
    weights = np.arange(1.0, w + 1)
    return pd.Series(x).rolling(w).apply(lambda a: a @ weights / weights.sum(), raw=True).to_numpy()


def _seeded(values: pd.Series, first: int, seed: float, alpha: float) -> pd.Series:
    """ewm(adjust=False) started at index ``first`` with value ``seed``."""
    t = values.copy()
    t.iloc[: first + 1] = np.nan
    t.iloc[first] = seed
    return t.ewm(alpha=alpha, adjust=False).mean()


def ref_ema_segment(s: pd.Series, span: int) -> pd.Series:
    if len(s) < span:
        return s * np.nan
    return _seeded(s, span - 1, s.iloc[:span].mean(), 2.0 / (span + 1))


def ref_ema(x, span):
    return by_segment(lambda s: ref_ema_segment(s, span), x)


def ref_rsi(close, w):
    def seg(c: pd.Series):
        if len(c) <= w:
            return c * np.nan
        d = c.diff()
        gain = _seeded(d.clip(lower=0), w, d.clip(lower=0).iloc[1 : w + 1].mean(), 1.0 / w)
        loss = _seeded((-d).clip(lower=0), w, (-d).clip(lower=0).iloc[1 : w + 1].mean(), 1.0 / w)
        total = gain + loss
        return (100 * gain / total).mask(total == 0, 50.0)

    return by_segment(seg, close)


def ref_atr(high, low, close, w):
    def seg(h, lo, c):
        if len(c) <= w:
            return c * np.nan
        prev = c.shift()
        tr = pd.concat([h - lo, (h - prev).abs(), (lo - prev).abs()], axis=1).max(axis=1)
        return _seeded(tr, w, tr.iloc[1 : w + 1].mean(), 1.0 / w)

    return by_segment(seg, high, low, close)


def ref_macd(close, fast, slow, signal):
    line = ref_ema(close, fast) - ref_ema(close, slow)
    sig = ref_ema(line, signal)
    return line, sig, line - sig


def ref_roc(x, w):
    s = pd.Series(x)
    base = s.shift(w)
    return (s / base.where(base != 0) - 1).to_numpy()


def ref_donchian(high, low, w):
    return pd.Series(high).rolling(w).max().to_numpy(), pd.Series(low).rolling(w).min().to_numpy()


def ref_stochastic(high, low, close, kw, dw):
    hh, ll = ref_donchian(high, low, kw)
    rng = pd.Series(hh - ll)
    k = 100 * (pd.Series(close) - ll) / rng.where(rng > 0)
    return k.to_numpy(), k.rolling(dw).mean().to_numpy()


def ref_obv(close, volume):
    return by_segment(lambda c, v: (np.sign(c.diff()).fillna(0.0) * v).cumsum(), close, volume)


def ref_vwap(high, low, close, volume, w):
    tp = (pd.Series(high) + pd.Series(low) + pd.Series(close)) / 3
    v = pd.Series(volume)
    out = (tp * v).rolling(w).sum() / v.rolling(w).sum()
    all_zero = (v != 0).astype(float).where(v.notna()).rolling(w).sum() == 0
    return out.mask(all_zero).to_numpy()


# --------------------------------------------------------------------------- against pandas


@pytest.mark.parametrize("w", [1, 2, 5, 20, 200])
def test_sma_wma_match_pandas(bars, w):
    c = bars["close"]
    check(ind.sma(c, w), ref_sma(c, w))
    check(ind.wma(c, w), ref_wma(c, w))


@pytest.mark.parametrize("span", [1, 2, 12, 26, 200])
def test_ema_matches_pandas_with_talib_seed(bars, span):
    check(ind.ema(bars["close"], span), ref_ema(bars["close"], span))


@pytest.mark.parametrize("w", [2, 20, 100])
def test_bollinger_and_zscore_match_pandas(bars, w):
    c = bars["close"]
    mid, up, lo = ind.bollinger(c, w, 2.5)
    m, sd = ref_sma(c, w), ref_std(c, w)
    check(mid, m)
    check(up, m + 2.5 * sd)
    check(lo, m - 2.5 * sd)
    z = (c - m) / np.where(sd > 0, sd, np.nan)
    check(ind.zscore(c, w), z, scale=1.0)


@pytest.mark.parametrize("w", [1, 2, 14, 50])
def test_rsi_atr_match_wilder_reference(bars, w):
    check(ind.rsi(bars["close"], w), ref_rsi(bars["close"], w), scale=100.0)
    check(ind.atr(bars["high"], bars["low"], bars["close"], w), ref_atr(bars["high"], bars["low"], bars["close"], w))


@pytest.mark.parametrize(("fast", "slow", "signal"), [(12, 26, 9), (3, 5, 1), (5, 50, 20)])
def test_macd_matches_pandas(bars, fast, slow, signal):
    c = bars["close"]
    scale = np.nanmax(np.abs(c))
    for a, e in zip(ind.macd(c, fast, slow, signal), ref_macd(c, fast, slow, signal)):
        check(a, e, scale=scale)


@pytest.mark.parametrize("w", [1, 3, 20, 250])
def test_donchian_stochastic_roc_vwap_match_pandas(bars, w):
    h, lo, c, v = bars["high"], bars["low"], bars["close"], bars["volume"]
    for a, e in zip(ind.donchian(h, lo, w), ref_donchian(h, lo, w)):
        check(a, e)
    for a, e in zip(ind.stochastic(h, lo, c, w, 3), ref_stochastic(h, lo, c, w, 3)):
        check(a, e, scale=100.0)
    check(ind.roc(c, w), ref_roc(c, w), scale=1.0)
    check(ind.vwap(h, lo, c, v, w), ref_vwap(h, lo, c, v, w))


def test_obv_matches_pandas(bars):
    obv = ind.obv(bars["close"], bars["volume"])
    check(obv, ref_obv(bars["close"], bars["volume"]), scale=np.nanmax(np.abs(obv)))


# --------------------------------------------------------------------------- random data (hypothesis)


@st.composite
def random_bars(draw):
    n = draw(st.integers(0, 160))
    bars = gbm_bars(n, seed=draw(st.integers(0, 2**32 - 1)), vol=draw(st.sampled_from([0.001, 0.02, 0.2])))
    missing = draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=6)) if n else []
    return with_missing_bars(bars, missing), draw(st.integers(1, 40))


@settings(max_examples=60, deadline=None)
@given(random_bars())
def test_rolling_kernels_random(case):
    bars, w = case
    h, lo, c, v = bars["high"], bars["low"], bars["close"], bars["volume"]
    check(ind.sma(c, w), ref_sma(c, w))
    check(ind.wma(c, w), ref_wma(c, w))
    m, sd = ref_sma(c, w), ref_std(c, w)
    check(ind.bollinger(c, w, 2.0)[2], m - 2.0 * sd)
    check(ind.zscore(c, w), (c - m) / np.where(sd > 0, sd, np.nan), scale=1.0)
    for a, e in zip(ind.donchian(h, lo, w), ref_donchian(h, lo, w)):
        check(a, e)
    check(ind.stochastic(h, lo, c, w, 2)[1], ref_stochastic(h, lo, c, w, 2)[1], scale=100.0)
    check(ind.vwap(h, lo, c, v, w), ref_vwap(h, lo, c, v, w))
    check(ind.roc(c, w), ref_roc(c, w), scale=1.0)


@settings(max_examples=40, deadline=None)
@given(random_bars())
def test_recursive_kernels_random(case):
    bars, w = case
    h, lo, c = bars["high"], bars["low"], bars["close"]
    check(ind.ema(c, w), ref_ema(c, w))
    check(ind.rsi(c, w), ref_rsi(c, w), scale=100.0)
    check(ind.atr(h, lo, c, w), ref_atr(h, lo, c, w))


# --------------------------------------------------------------------------- long series accuracy


def test_ten_million_bars_match_to_1e9():
    """Running sums stay exact enough over 10M realistic bars (no drift)."""
    n = 10_000_000
    c = gbm_bars(n, seed=3)["close"]
    check(ind.sma(c, 50), ref_sma(c, 50))
    rng = np.random.default_rng(0)
    picks = np.sort(rng.integers(2000, n, 2000))
    mid, up, _ = ind.bollinger(c, 2000, 1.0)
    z = ind.zscore(c, 20)
    w = ind.wma(c, 30)
    weights = np.arange(1.0, 31)
    for i in picks:
        win = c[i - 1999 : i + 1]
        np.testing.assert_allclose(mid[i], win.mean(), rtol=RTOL)
        np.testing.assert_allclose(up[i] - mid[i], win.std(), rtol=1e-8)  # difference of two 1e-9 values
        short = c[i - 19 : i + 1]
        np.testing.assert_allclose(z[i], (c[i] - short.mean()) / short.std(), rtol=RTOL, atol=RTOL)
        np.testing.assert_allclose(w[i], c[i - 29 : i + 1] @ weights / weights.sum(), rtol=RTOL)


# --------------------------------------------------------------------------- edge cases

X = gbm_bars(50)["close"]
H, L, C, V = (gbm_bars(50)[k] for k in ("high", "low", "close", "volume"))

# name -> (call with window w, window parameter names, number of outputs)
CALLS = {
    "sma": (lambda x, w: ind.sma(x, w), ["window"]),
    "ema": (lambda x, w: ind.ema(x, w), ["span"]),
    "wma": (lambda x, w: ind.wma(x, w), ["window"]),
    "rsi": (lambda x, w: ind.rsi(x, w), ["window"]),
    "atr": (lambda x, w: ind.atr(x * 1.01, x * 0.99, x, w), ["window"]),
    "bollinger": (lambda x, w: ind.bollinger(x, w, 2.0), ["window"]),
    "macd": (lambda x, w: ind.macd(x, w, 30, w), ["fast"]),
    "donchian": (lambda x, w: ind.donchian(x * 1.01, x * 0.99, w), ["window"]),
    "zscore": (lambda x, w: ind.zscore(x, w), ["window"]),
    "roc": (lambda x, w: ind.roc(x, w), ["window"]),
    "stochastic": (lambda x, w: ind.stochastic(x * 1.01, x * 0.99, x, w, w), ["k_window", "d_window"]),
    "vwap": (lambda x, w: ind.vwap(x * 1.01, x * 0.99, x, np.ones_like(x), w), ["window"]),
}


def outputs(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_window_longer_than_data_is_all_nan(name):
    for out in outputs(CALLS[name][0](X[:10], 11)):
        assert out.shape == (10,) and np.isnan(out).all()


@pytest.mark.parametrize("name", sorted(CALLS) + ["obv"])
def test_empty_input_gives_empty_output(name):
    empty = np.array([], dtype=np.float64)
    result = ind.obv(empty, empty) if name == "obv" else CALLS[name][0](empty, 3)
    for out in outputs(result):
        assert out.shape == (0,) and out.dtype == np.float64


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("bad", [0, -3, 2.5, True, None])
def test_invalid_window_raises_naming_parameter(name, bad):
    with pytest.raises(ValueError, match=CALLS[name][1][0]):
        CALLS[name][0](X, bad)


def test_other_parameter_checks():
    with pytest.raises(ValueError, match="slow"):
        ind.macd(X, 26, 12, 9)
    with pytest.raises(ValueError, match="signal"):
        ind.macd(X, 12, 26, 0)
    with pytest.raises(ValueError, match="d_window"):
        ind.stochastic(H, L, C, 14, 0)
    with pytest.raises(ValueError, match="k must"):
        ind.bollinger(X, 20, -1.0)
    with pytest.raises(ValueError, match="differ in length"):
        ind.atr(H, L[:-1], C, 14)
    with pytest.raises(ValueError, match="1-D"):
        ind.sma(np.ones((3, 3)), 2)
    with pytest.raises(ValueError, match="span"):
        ind.ema_many(X, [3, 0])


def test_numpy_integer_windows_and_lists_accepted():
    check(ind.sma(list(X), np.int64(5)), ref_sma(X, 5))


def test_read_only_inputs():
    x = X.copy()
    x.flags.writeable = False
    check(ind.sma(x, 5), ref_sma(X, 5))
    check(ind.ema(x, 5), ref_ema(X, 5))
    assert ind.zscore(x, 5).flags.writeable


def test_rolling_nan_recovers_when_it_leaves_the_window():
    x = X.copy()
    x[20] = np.nan
    for fn in (ind.sma, ind.wma, ind.zscore, lambda a, w: ind.bollinger(a, w)[1]):
        out = fn(x, 5)
        assert np.isnan(out[20:25]).all()
        assert np.isfinite(out[25:]).all() and np.isfinite(out[4:20]).all()
    check(ind.sma(x, 5)[25:], ref_sma(X, 5)[25:])


def test_inf_is_treated_as_missing():
    x = X.copy()
    x[20] = np.inf
    expect = X.copy()
    expect[20] = np.nan
    check(ind.sma(x, 5), ref_sma(expect, 5))
    check(ind.zscore(x, 5), ind.zscore(expect, 5))
    check(ind.ema(x, 5), ref_ema(expect, 5))
    check(ind.donchian(x, x, 5)[0], ref_donchian(expect, expect, 5)[0])
    check(ind.roc(x, 3), ref_roc(expect, 3), scale=1.0)


def test_recursive_kernels_restart_after_a_gap():
    x = X.copy()
    x[20] = np.nan
    check(ind.ema(x, 5)[21:], ind.ema(X[21:], 5))
    assert np.isnan(ind.ema(x, 5)[20:25]).all() and np.isfinite(ind.ema(x, 5)[25])
    check(ind.rsi(x, 5)[21:], ind.rsi(X[21:], 5))
    assert np.isnan(ind.rsi(x, 5)[20:26]).all() and np.isfinite(ind.rsi(x, 5)[26])
    for a, e in zip(ind.macd(x, 3, 6, 4), ind.macd(X[21:], 3, 6, 4)):
        check(a[21:], e)
    check(ind.obv(x, V)[21:], ind.obv(X[21:], V[21:]))
    assert ind.obv(x, V)[21] == 0.0


def test_constant_prices():
    flat = np.full(60, 101.37)
    assert (ind.sma(flat, 7)[6:] == 101.37).all()
    mid, up, lo = ind.bollinger(flat, 7, 2.0)
    assert (mid[6:] == 101.37).all() and (up[6:] == 101.37).all() and (lo[6:] == 101.37).all()
    assert np.isnan(ind.zscore(flat, 7)).all()
    assert (ind.rsi(flat, 14)[14:] == 50.0).all()
    assert (ind.atr(flat, flat, flat, 14)[14:] == 0.0).all()
    k, d = ind.stochastic(flat, flat, flat, 5, 3)
    assert np.isnan(k).all() and np.isnan(d).all()
    assert (ind.roc(flat, 3)[3:] == 0.0).all()
    assert (ind.obv(flat, np.ones(60)) == 0.0).all()


def test_flat_stretch_inside_moving_prices_is_exact():
    """SMAs of different windows agree exactly on a flat stretch (no spurious crosses)."""
    x = np.concatenate([X, np.full(40, X[-1] + 0.1), X])
    fast, slow = ind.sma(x, 5), ind.sma(x, 20)
    stretch = slice(len(X) + 20, len(X) + 40)
    assert (fast[stretch] == slow[stretch]).all()
    assert (ind.bollinger(x, 20)[1][stretch] == x[stretch]).all()


def test_rsi_extremes():
    up = np.arange(1.0, 40.0)
    assert (ind.rsi(up, 14)[14:] == 100.0).all()
    assert (ind.rsi(up[::-1].copy(), 14)[14:] == 0.0).all()
    assert np.isnan(ind.rsi(up, 14)[:14]).all()


def test_warm_up_lengths():
    assert np.isnan(ind.ema(X, 10)[:9]).all() and np.isfinite(ind.ema(X, 10)[9])
    assert ind.ema(X, 10)[9] == pytest.approx(X[:10].mean(), rel=1e-12)
    line, sig, hist = ind.macd(X, 3, 8, 4)
    assert np.isnan(line[:7]).all() and np.isfinite(line[7])
    assert np.isnan(sig[:10]).all() and np.isfinite(sig[10]) and np.isfinite(hist[10])
    k, d = ind.stochastic(H, L, C, 5, 3)
    assert np.isnan(k[:4]).all() and np.isfinite(k[4]) and np.isnan(d[:6]).all() and np.isfinite(d[6])
    a = ind.atr(H, L, C, 5)
    assert np.isnan(a[:5]).all() and np.isfinite(a[5])


def test_obv_convention_starts_at_zero():
    c = np.array([10.0, 11.0, 11.0, 9.0, 12.0])
    v = np.array([5.0, 7.0, 100.0, 3.0, 2.0])
    np.testing.assert_array_equal(ind.obv(c, v), [0.0, 7.0, 7.0, 4.0, 6.0])


def test_vwap_zero_volume_window_is_nan():
    v = np.ones(30)
    v[10:20] = 0.0
    out = ind.vwap(H[:30], L[:30], C[:30], v, 4)
    assert np.isnan(out[13:20]).all()
    assert np.isfinite(out[10:13]).all() and np.isfinite(out[20:]).all()
    tp = (H[:30] + L[:30] + C[:30]) / 3
    assert out[20] == pytest.approx(tp[20], rel=1e-12)


def test_roc_is_a_fraction_and_zero_base_is_nan():
    np.testing.assert_allclose(ind.roc(np.array([100.0, 0.0, 105.0, 1.0]), 2), [np.nan, np.nan, 0.05, np.nan])


def test_many_helpers_match_single_calls():
    windows = [5, 20, 5, 1]
    many = ind.sma_many(X, windows)
    assert many.shape == (4, len(X))
    for row, w in zip(many, windows):
        np.testing.assert_array_equal(row, ind.sma(X, w))
    spans = [3, 3, 10]
    for row, s in zip(ind.ema_many(X, spans), spans):
        np.testing.assert_array_equal(row, ind.ema(X, s))
    assert ind.sma_many(X, []).shape == (0, len(X))


def test_kernels_callable_from_numba():
    import numba

    @numba.njit
    def cross(x):
        return ind._sma_nb(x, 3) - ind._ema_nb(x, 5) + ind._zscore_nb(x, 4) + ind._donchian_nb(x, x, 3)[0]

    expect = ind.sma(X, 3) - ind.ema(X, 5) + ind.zscore(X, 4) + ind.donchian(X, X, 3)[0]
    np.testing.assert_allclose(cross(X), expect, rtol=1e-12)
