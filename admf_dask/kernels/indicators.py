"""Indicator kernels: numpy arrays in, numpy arrays out, compiled with numba.

Kernel rules
------------
- Inputs are 1-D float64 numpy arrays (the public wrappers convert with
  ``np.ascontiguousarray(x, dtype=np.float64)``); windows are ints.
- Every kernel allocates its own output and never writes into its inputs:
  arrays from pandas 3 (copy-on-write) may be read-only. The work is done by
  ``_<name>_fill_nb(inputs..., params..., outputs...)``, which writes every
  element of outputs it is given; ``_<name>_nb`` allocates and calls it. The
  public wrappers allocate with numpy instead: numpy asks Linux for huge pages
  on large arrays and numba's allocator does not, which saves ~35 ms of page
  faults per 10-million-bar output.
- Compiled kernels are ``@numba.njit(cache=True, nogil=True)`` and named ``_<name>_nb`` so
  other numba code (strategies, simulation) can call them directly. The public
  function of the same name without the prefix validates its arguments in
  Python (``ValueError`` naming the parameter) and calls the kernel.
- O(n) per series whatever the window: running sums, recursions and block
  prefix/suffix extremes (van Herk / Gil-Werman, used instead of a monotonic
  deque because it is branch-free: 3 comparisons per bar); a window is never
  re-summed bar by bar (except the rare ill-conditioned variance, below).
- No ``fastmath``: it would drop the NaN/inf checks the kernels rely on.
- Nothing here imports pandas, dask or fsspec.

Conventions shared by all kernels
---------------------------------
- Warm-up bars are NaN. The first valid index of each kernel is in its docstring
  (and in :mod:`admf_dask.indicators` as the spec's ``lookback``).
- A window longer than the data gives all NaN; an empty input gives an empty output.
- Missing data: NaN and +-inf are both treated as missing. A *rolling* kernel
  gives NaN while its window holds a missing value and recovers exactly once the
  value has left the window (a count of missing values rides along the running
  sums). A *recursive* kernel (EMA, RSI, ATR, MACD, OBV) gives NaN on the missing
  bar and restarts after it: the segment after a gap is computed exactly as if it
  were a separate series, warm-up included.
- Numerical care: running sums are recomputed exactly from the window every
  ``max(window, 1024)`` bars, so rounding error cannot accumulate over a long
  series; variance uses sums of ``x - shift``, re-centred on the window mean
  every ``max(2 * window, 64)`` bars (no catastrophic cancellation at price
  level ~100), and a window whose variance is below 1e-4 of the mean squared
  deviation from the shift is recomputed two-pass, so tiny standard deviations
  stay accurate to 1e-9 relative too. A window of
  identical values is detected exactly (run length of equal values), so its
  mean is that value and its standard deviation exactly 0.
  Results match pandas to 1e-9 relative on 10-million-bar price series (for the
  std the reference is an exact two-pass: pandas' online rolling std itself
  drifts, ~2e-6 relative after 1e6 bars, measured with pandas 3.1).

Examples
--------
>>> import numpy as np
>>> sma(np.array([1.0, 2.0, 3.0, 4.0]), 2)
array([nan, 1.5, 2.5, 3.5])
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

__all__ = [
    "atr",
    "bollinger",
    "donchian",
    "ema",
    "ema_many",
    "macd",
    "obv",
    "roc",
    "rsi",
    "sma",
    "sma_many",
    "stochastic",
    "vwap",
    "wma",
    "zscore",
]

# Bars between exact recomputations of running sums (at least the window).
_RECOMPUTE_EVERY = 1024
# Bars between exact re-centred recomputations of the variance sums (at least 2 windows).
_RECENTRE_EVERY = 64


# --------------------------------------------------------------------------- #
# Rolling sums: mean, mean + std, weighted mean, volume-weighted mean
# --------------------------------------------------------------------------- #


@numba.njit(inline="always")
def _last_change_nb(x, upto):
    """The last index below ``upto`` where ``x`` differs from the value before it (0 if none).

    A window ending at ``i`` is flat when ``i - changed >= window - 1``; NaN always
    counts as a change.
    """
    changed = 0
    for j in range(1, upto):
        if not x[j] == x[j - 1]:
            changed = j
    return changed


@numba.njit(inline="always")
def _finite_sum_nb(x, lo, hi):
    """Exact sum of the finite values of ``x[lo:hi]``, and how many were not finite."""
    s = 0.0
    bad = 0
    for j in range(lo, hi):
        v = x[j]
        if np.isfinite(v):
            s += v
        else:
            bad += 1
    return s, bad


@numba.njit(cache=True, nogil=True)
def _sma_fill_nb(x, window, out):
    """Write the rolling mean of ``x`` into ``out`` (same length).

    A block (the bars after one exact window sum) whose first window has no
    missing value runs on a fast path first, with no per-bar missing-value test:
    a NaN or inf entering the running sum leaves it non-finite for good, so one
    ``isfinite`` at the end of the block tells whether a bar was missing (or the
    sum overflowed), and only then is the block redone on the general path, which
    counts missing values. Both paths add the same differences in the same order,
    so their results are identical. The loops index slices from 0 rather than
    ``x[i - window]``: numba cannot prove a computed index non-negative and adds a
    wraparound select to every access, which cost more than the running sum itself.
    """
    n = x.shape[0]
    if window > n:
        out[:] = np.nan
        return
    out[: window - 1] = np.nan
    inv = 1.0 / window
    block = max(window, _RECOMPUTE_EVERY)
    # a flat window's mean is exactly its value, so SMAs of different windows agree on flat prices
    changed = _last_change_nb(x, window - 1)
    i0 = window - 1
    while i0 < n:
        s, bad = _finite_sum_nb(x, i0 - window + 1, i0 + 1)  # exact, in the window ending at i0
        if i0 > 0 and not x[i0] == x[i0 - 1]:
            changed = i0
        if bad != 0:
            out[i0] = np.nan
        elif i0 - changed >= window - 1:
            out[i0] = x[i0]
        else:
            out[i0] = s * inv
        end = min(n, i0 + block)
        new = x[i0 + 1 : end]  # bar i = i0 + 1 + j enters as new[j], x[i - window] leaves as old[j]
        old = x[i0 + 1 - window : end - window]
        dst = out[i0 + 1 : end]
        if bad == 0:
            t = s
            last = changed - (i0 + 1)  # `changed`, relative to the block
            prev = x[i0]
            for j in range(new.shape[0]):
                v = new[j]
                t += v - old[j]
                if not v == prev:
                    last = j
                prev = v
                dst[j] = v if j - last >= window - 1 else t * inv
            if np.isfinite(t):
                changed = last + i0 + 1
                i0 = end
                continue
        prev = x[i0]
        for j in range(new.shape[0]):
            v = new[j]
            u = old[j]
            d = v - u
            if np.isfinite(d):  # both finite
                s += d
            else:
                a = v
                if not np.isfinite(v):
                    a = 0.0
                    bad += 1
                b = u
                if not np.isfinite(u):
                    b = 0.0
                    bad -= 1
                s += a - b
            if not v == prev:
                changed = i0 + 1 + j
            prev = v
            if bad != 0:
                dst[j] = np.nan
            elif i0 + 1 + j - changed >= window - 1:
                dst[j] = v
            else:
                dst[j] = s * inv
        i0 = end


@numba.njit(cache=True, nogil=True)
def _sma_nb(x, window):
    out = np.empty(x.shape[0])
    _sma_fill_nb(x, window, out)
    return out


@numba.njit(cache=True, nogil=True)
def _moments_fill_nb(x, window, k, zscore, out1, out2, out3):
    """Rolling mean and population std (ddof=0), emitted as bands or a z-score.

    ``zscore=False``: ``out1, out2, out3 = mean, mean + k*std, mean - k*std``.
    ``zscore=True``: ``out1 = (x - mean) / std`` (NaN where std == 0); out2/out3 unused.
    """
    n = x.shape[0]
    if window > n:
        out1[:] = np.nan
        if not zscore:
            out2[:] = np.nan
            out3[:] = np.nan
        return
    out1[: window - 1] = np.nan
    if not zscore:
        out2[: window - 1] = np.nan
        out3[: window - 1] = np.nan
    inv = 1.0 / window
    # re-centre often: the error of s2 scales with (x - shift)^2, i.e. with the
    # price drift since the last re-centring, relative to the window variance
    block = max(2 * window, _RECENTRE_EVERY)
    changed = _last_change_nb(x, window - 1)
    i0 = window - 1
    while i0 < n:
        # re-centre on the window mean so the sums of squares do not cancel
        shift, bad = _finite_sum_nb(x, i0 - window + 1, i0 + 1)
        if bad < window:
            shift /= window - bad
        s1 = 0.0
        s2 = 0.0
        for j in range(i0 - window + 1, i0 + 1):
            v = x[j]
            if np.isfinite(v):
                d = v - shift
                s1 += d
                s2 += d * d
        if i0 > 0 and not x[i0] == x[i0 - 1]:
            changed = i0
        prev = x[i0]
        end = min(n, i0 + block)
        for i in range(i0, end):
            v = x[i]
            if i > i0:
                u = x[i - window]
                if np.isfinite(v - u):  # both finite: the fast path
                    a = v - shift
                    b = u - shift
                else:
                    a = v - shift
                    if not np.isfinite(v):
                        a = 0.0
                        bad += 1
                    b = u - shift
                    if not np.isfinite(u):
                        b = 0.0
                        bad -= 1
                s1 += a - b
                s2 += (a - b) * (a + b)
                if not v == prev:
                    changed = i
                prev = v
            if bad != 0:
                mean = np.nan
                std = np.nan
            elif i - changed >= window - 1:
                mean = v
                std = 0.0
            else:
                m = s1 * inv
                ms = s2 * inv
                var = ms - m * m
                if var < 1e-4 * ms:
                    # ill-conditioned (window variance tiny against the drift
                    # since re-centring): two-pass over this window, O(window), rare
                    mean = 0.0
                    for j in range(i - window + 1, i + 1):
                        mean += x[j]
                    mean *= inv
                    var = 0.0
                    for j in range(i - window + 1, i + 1):
                        var += (x[j] - mean) * (x[j] - mean)
                    var *= inv
                else:
                    mean = shift + m
                std = np.sqrt(max(var, 0.0))
            if zscore:
                out1[i] = (v - mean) / std if std > 0.0 else np.nan
            else:
                out1[i] = mean
                out2[i] = mean + k * std
                out3[i] = mean - k * std
        i0 = end


@numba.njit(cache=True, nogil=True)
def _bollinger_nb(close, window, k):
    n = close.shape[0]
    middle, upper, lower = np.empty(n), np.empty(n), np.empty(n)
    _moments_fill_nb(close, window, k, False, middle, upper, lower)
    return middle, upper, lower


@numba.njit(cache=True, nogil=True)
def _zscore_nb(x, window):
    out = np.empty(x.shape[0])
    _moments_fill_nb(x, window, 0.0, True, out, out, out)
    return out


@numba.njit(cache=True, nogil=True)
def _wma_fill_nb(x, window, out):
    """Linearly weighted mean, weights 1..window (newest heaviest)."""
    n = x.shape[0]
    if window > n:
        out[:] = np.nan
        return
    out[: window - 1] = np.nan
    inv = 2.0 / (window * (window + 1.0))
    block = max(window, _RECOMPUTE_EVERY)
    i0 = window - 1
    while i0 < n:
        s = 0.0  # plain sum of the window (missing values as 0)
        ws = 0.0  # weighted sum
        bad = 0
        for j in range(window):
            v = x[i0 - window + 1 + j]
            if np.isfinite(v):
                s += v
                ws += (j + 1.0) * v
            else:
                bad += 1
        out[i0] = ws * inv if bad == 0 else np.nan
        end = min(n, i0 + block)
        for i in range(i0 + 1, end):
            v = x[i]
            u = x[i - window]
            a = v
            if not np.isfinite(v):
                a = 0.0
                bad += 1
            b = u
            if not np.isfinite(u):
                b = 0.0
                bad -= 1
            # slide: every old weight drops by one, the new value gets `window`
            ws += window * a - s
            s += a - b
            out[i] = ws * inv if bad == 0 else np.nan
        i0 = end


@numba.njit(cache=True, nogil=True)
def _wma_nb(x, window):
    out = np.empty(x.shape[0])
    _wma_fill_nb(x, window, out)
    return out


@numba.njit(cache=True, nogil=True)
def _vwap_fill_nb(high, low, close, volume, window, out):
    """Rolling sum(typical * volume) / sum(volume); typical = (h + l + c) / 3."""
    n = close.shape[0]
    if window > n:
        out[:] = np.nan
        return
    out[: window - 1] = np.nan
    block = max(window, _RECOMPUTE_EVERY)
    i0 = window - 1
    while i0 < n:
        pv = 0.0
        vs = 0.0
        bad = 0
        nonzero = 0  # bars with volume != 0: an all-zero window is NaN exactly
        for j in range(i0 - window + 1, i0 + 1):
            tp = (high[j] + low[j] + close[j]) / 3.0
            vol = volume[j]
            if np.isfinite(tp) and np.isfinite(vol):
                pv += tp * vol
                vs += vol
                nonzero += vol != 0.0
            else:
                bad += 1
        out[i0] = pv / vs if bad == 0 and nonzero > 0 else np.nan
        end = min(n, i0 + block)
        for i in range(i0 + 1, end):
            tp = (high[i] + low[i] + close[i]) / 3.0
            vol = volume[i]
            if np.isfinite(tp) and np.isfinite(vol):
                pv += tp * vol
                vs += vol
                nonzero += vol != 0.0
            else:
                bad += 1
            j = i - window
            tp = (high[j] + low[j] + close[j]) / 3.0
            vol = volume[j]
            if np.isfinite(tp) and np.isfinite(vol):
                pv -= tp * vol
                vs -= vol
                nonzero -= vol != 0.0
            else:
                bad -= 1
            out[i] = pv / vs if bad == 0 and nonzero > 0 else np.nan
        i0 = end


@numba.njit(cache=True, nogil=True)
def _vwap_nb(high, low, close, volume, window):
    out = np.empty(close.shape[0])
    _vwap_fill_nb(high, low, close, volume, window, out)
    return out


# --------------------------------------------------------------------------- #
# Rolling extremes
# --------------------------------------------------------------------------- #


@numba.njit(cache=True, nogil=True)
def _extremes_fill_nb(high, low, close, window, stochastic, out1, out2):
    """Rolling max of ``high`` and min of ``low``, O(n) for any window.

    Van Herk / Gil-Werman: cut the series into blocks of ``window`` bars; a
    window spans the tail of one block and the head of the next, so its max is
    ``max(suffix max of the previous block, prefix max of this block)``. Three
    branch-free comparisons per bar (a monotonic deque branches unpredictably
    on prices and measured ~3x slower here). Missing values enter as -inf/+inf
    and the window is NaN while the last missing bar is inside it.

    ``stochastic=False``: ``out1, out2 = upper, lower``.
    ``stochastic=True``: ``out1 = %K = 100 * (close - lower) / (upper - lower)``
    (NaN when upper == lower); ``out2`` unused.
    """
    n = high.shape[0]
    if window > n:
        out1[:] = np.nan
        if not stochastic:
            out2[:] = np.nan
        return
    suf_hi = np.empty(window + 1)  # suffix extremes of the previous block
    suf_lo = np.empty(window + 1)
    suf_hi[window] = -np.inf
    suf_lo[window] = np.inf
    last_bad = -1 - window  # last bar with a missing high or low
    for s in range(0, n, window):
        if s > 0:
            hi = -np.inf
            lo = np.inf
            for j in range(s - 1, s - window - 1, -1):
                h = high[j]
                l_ = low[j]
                if h > hi:
                    hi = h
                if l_ < lo:
                    lo = l_
                suf_hi[j - s + window] = hi
                suf_lo[j - s + window] = lo
        hi = -np.inf
        lo = np.inf
        for i in range(s, min(n, s + window)):
            h = high[i]
            l_ = low[i]
            if not (np.isfinite(h) and np.isfinite(l_)):
                last_bad = i
            # NaN compares false: a missing value never becomes the extreme
            if h > hi:
                hi = h
            if l_ < lo:
                lo = l_
            if i < window - 1 or last_bad > i - window:
                out1[i] = np.nan
                if not stochastic:
                    out2[i] = np.nan
                continue
            off = i - s + 1
            upper = suf_hi[off] if suf_hi[off] > hi else hi
            lower = suf_lo[off] if suf_lo[off] < lo else lo
            if stochastic:
                rng = upper - lower
                out1[i] = 100.0 * (close[i] - lower) / rng if rng > 0.0 and np.isfinite(close[i]) else np.nan
            else:
                out1[i] = upper
                out2[i] = lower


@numba.njit(cache=True, nogil=True)
def _donchian_nb(high, low, window):
    n = high.shape[0]
    upper, lower = np.empty(n), np.empty(n)
    _extremes_fill_nb(high, low, high, window, False, upper, lower)
    return upper, lower


@numba.njit(cache=True, nogil=True)
def _stochastic_fill_nb(high, low, close, k_window, d_window, k, d):
    _extremes_fill_nb(high, low, close, k_window, True, k, k)
    _sma_fill_nb(k, d_window, d)


@numba.njit(cache=True, nogil=True)
def _stochastic_nb(high, low, close, k_window, d_window):
    n = close.shape[0]
    k, d = np.empty(n), np.empty(n)
    _stochastic_fill_nb(high, low, close, k_window, d_window, k, d)
    return k, d


# --------------------------------------------------------------------------- #
# Element-wise
# --------------------------------------------------------------------------- #


@numba.njit(cache=True, nogil=True)
def _roc_fill_nb(x, window, out):
    n = x.shape[0]
    out[: min(window, n)] = np.nan
    for i in range(window, n):
        v = x[i]
        u = x[i - window]
        out[i] = v / u - 1.0 if np.isfinite(v) and np.isfinite(u) and u != 0.0 else np.nan


@numba.njit(cache=True, nogil=True)
def _roc_nb(x, window):
    out = np.empty(x.shape[0])
    _roc_fill_nb(x, window, out)
    return out


# --------------------------------------------------------------------------- #
# Recursive: EMA family, Wilder smoothing, OBV (restart after a missing value)
# --------------------------------------------------------------------------- #


@numba.njit(cache=True, nogil=True)
def _ema_fill_nb(x, span, out):
    """EMA seeded with the SMA of the first ``span`` values of each segment."""
    alpha = 2.0 / (span + 1.0)
    count = 0  # consecutive finite values in the current segment
    seed = 0.0
    y = 0.0
    for i in range(x.shape[0]):
        v = x[i]
        if not np.isfinite(v):
            count = 0
            seed = 0.0
            out[i] = np.nan
            continue
        count += 1
        if count < span:
            seed += v
            out[i] = np.nan
        elif count == span:
            y = (seed + v) / span
            out[i] = y
        else:
            y = y + alpha * (v - y)
            out[i] = y


@numba.njit(cache=True, nogil=True)
def _ema_nb(x, span):
    out = np.empty(x.shape[0])
    _ema_fill_nb(x, span, out)
    return out


@numba.njit(cache=True, nogil=True)
def _macd_fill_nb(close, fast, slow, signal, line, sig, hist):
    _ema_fill_nb(close, fast, hist)  # hist as scratch for the fast EMA
    _ema_fill_nb(close, slow, line)
    for i in range(close.shape[0]):
        line[i] = hist[i] - line[i]
    _ema_fill_nb(line, signal, sig)
    for i in range(close.shape[0]):
        hist[i] = line[i] - sig[i]


@numba.njit(cache=True, nogil=True)
def _macd_nb(close, fast, slow, signal):
    n = close.shape[0]
    line, sig, hist = np.empty(n), np.empty(n), np.empty(n)
    _macd_fill_nb(close, fast, slow, signal, line, sig, hist)
    return line, sig, hist


@numba.njit(cache=True, nogil=True)
def _rsi_fill_nb(close, window, out):
    """Wilder RSI; a window with no movement gives 50, only gains 100."""
    changes = -1  # price changes seen in the segment; -1: no previous close
    prev = 0.0
    gain = 0.0
    loss = 0.0
    keep = (window - 1.0) / window
    for i in range(close.shape[0]):
        out[i] = np.nan
        c = close[i]
        if not np.isfinite(c):
            changes = -1
            continue
        if changes < 0:
            changes = 0
            prev = c
            gain = 0.0
            loss = 0.0
            continue
        ch = c - prev
        prev = c
        g = ch if ch > 0.0 else 0.0
        lo = -ch if ch < 0.0 else 0.0
        changes += 1
        if changes < window:
            gain += g
            loss += lo
            continue
        if changes == window:
            gain = (gain + g) / window
            loss = (loss + lo) / window
        else:
            gain = gain * keep + g / window
            loss = loss * keep + lo / window
        total = gain + loss
        out[i] = 100.0 * gain / total if total > 0.0 else 50.0


@numba.njit(cache=True, nogil=True)
def _rsi_nb(close, window):
    out = np.empty(close.shape[0])
    _rsi_fill_nb(close, window, out)
    return out


@numba.njit(cache=True, nogil=True)
def _atr_fill_nb(high, low, close, window, out):
    """Wilder ATR: first value = mean(TR[1..window]) of each segment."""
    bars = -1  # true ranges seen in the segment; -1: no previous close
    prev = 0.0
    acc = 0.0
    keep = (window - 1.0) / window
    for i in range(close.shape[0]):
        out[i] = np.nan
        h = high[i]
        lo = low[i]
        c = close[i]
        if not (np.isfinite(h) and np.isfinite(lo) and np.isfinite(c)):
            bars = -1
            continue
        if bars < 0:
            bars = 0
            prev = c
            acc = 0.0
            continue
        tr = max(h - lo, abs(h - prev), abs(lo - prev))
        prev = c
        bars += 1
        if bars < window:
            acc += tr
            continue
        if bars == window:
            acc = (acc + tr) / window
        else:
            acc = acc * keep + tr / window
        out[i] = acc


@numba.njit(cache=True, nogil=True)
def _atr_nb(high, low, close, window):
    out = np.empty(close.shape[0])
    _atr_fill_nb(high, low, close, window, out)
    return out


@numba.njit(cache=True, nogil=True)
def _obv_fill_nb(close, volume, out):
    """On-balance volume, 0 on the first bar of each segment."""
    started = False
    prev = 0.0
    acc = 0.0
    for i in range(close.shape[0]):
        c = close[i]
        v = volume[i]
        if not (np.isfinite(c) and np.isfinite(v)):
            started = False
            out[i] = np.nan
            continue
        if not started:
            started = True
            acc = 0.0
        elif c > prev:
            acc += v
        elif c < prev:
            acc -= v
        prev = c
        out[i] = acc


@numba.njit(cache=True, nogil=True)
def _obv_nb(close, volume):
    out = np.empty(close.shape[0])
    _obv_fill_nb(close, volume, out)
    return out


# --------------------------------------------------------------------------- #
# Public wrappers: validate in Python, then call the kernel
# --------------------------------------------------------------------------- #


def _window(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _array(name: str, x: object) -> np.ndarray:
    arr = np.ascontiguousarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _arrays(**named: object) -> list[np.ndarray]:
    arrays = [_array(k, v) for k, v in named.items()]
    lengths = {k: len(a) for k, a in zip(named, arrays)}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"input arrays differ in length: {lengths}")
    return arrays


def sma(x, window: int) -> np.ndarray:
    """Simple moving average; first valid index ``window - 1``.

    >>> sma([1.0, 2.0, 3.0], 2)
    array([nan, 1.5, 2.5])
    """
    arr = _array("x", x)
    out = np.empty(arr.shape[0])
    _sma_fill_nb(arr, _window("window", window), out)
    return out


def ema(x, span: int) -> np.ndarray:
    """Exponential moving average, ``alpha = 2 / (span + 1)``, seeded like TA-Lib.

    The first value (index ``span - 1``) is the simple mean of the first ``span``
    values; then ``y[i] = y[i-1] + alpha * (x[i] - y[i-1])``. This differs from
    pandas ``ewm(span, adjust=False)`` (seeded with ``x[0]``) only in the early
    bars: the difference decays like ``(1 - alpha) ** i``. A missing value
    restarts the EMA, which is NaN again for ``span - 1`` bars after it.

    >>> ema([1.0, 2.0, 3.0, 4.0], 2)
    array([nan, 1.5, 2.5, 3.5])
    """
    arr = _array("x", x)
    out = np.empty(arr.shape[0])
    _ema_fill_nb(arr, _window("span", span), out)
    return out


def wma(x, window: int) -> np.ndarray:
    """Linearly weighted moving average, weights ``1..window`` (newest = ``window``).

    First valid index ``window - 1``.

    >>> wma([1.0, 2.0, 4.0], 2)
    array([       nan, 1.66666667, 3.33333333])
    """
    arr = _array("x", x)
    out = np.empty(arr.shape[0])
    _wma_fill_nb(arr, _window("window", window), out)
    return out


def rsi(close, window: int = 14) -> np.ndarray:
    """Relative strength index (Wilder, TA-Lib definition), 0..100.

    The first average gain/loss is the simple mean of the first ``window``
    price changes; after that ``avg = (avg * (window - 1) + value) / window``.
    First valid index ``window``. ``RSI = 100 * avg_gain / (avg_gain + avg_loss)``:
    only gains give 100, only losses 0, and no movement at all (constant prices)
    gives 50, the neutral value (TA-Lib returns 0 there).
    """
    arr = _array("close", close)
    out = np.empty(arr.shape[0])
    _rsi_fill_nb(arr, _window("window", window), out)
    return out


def atr(high, low, close, window: int = 14) -> np.ndarray:
    """Average true range (Wilder, TA-Lib definition).

    ``TR[i] = max(high - low, |high - close[i-1]|, |low - close[i-1]|)``; the
    first ATR (index ``window``) is the mean of ``TR[1..window]``, then Wilder
    smoothing. A bar with any input missing restarts the ATR.
    """
    h, lo, c = _arrays(high=high, low=low, close=close)
    out = np.empty(c.shape[0])
    _atr_fill_nb(h, lo, c, _window("window", window), out)
    return out


def bollinger(close, window: int = 20, k: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bollinger bands ``(middle, upper, lower)``: SMA +- ``k`` population std.

    The standard deviation uses ddof=0 like TA-Lib (pandas' ``rolling().std()``
    defaults to ddof=1). First valid index ``window - 1``; a window of equal
    values gives std exactly 0, so all three bands equal the price.
    """
    k = float(k)
    if not np.isfinite(k) or k < 0:
        raise ValueError(f"k must be a finite number >= 0, got {k!r}")
    arr = _array("close", close)
    middle, upper, lower = np.empty(arr.shape[0]), np.empty(arr.shape[0]), np.empty(arr.shape[0])
    _moments_fill_nb(arr, _window("window", window), k, False, middle, upper, lower)
    return middle, upper, lower


def macd(close, fast: int = 12, slow: int = 26, signal: int = 9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MACD ``(line, signal, hist)``: ``line = ema(fast) - ema(slow)``.

    Each EMA is seeded with its own SMA (see :func:`ema`), so the line starts at
    index ``slow - 1``; the signal line is the EMA of the line seeded with the
    mean of its first ``signal`` values, so signal and hist start at
    ``slow + signal - 2``. TA-Lib instead seeds the fast EMA at ``slow - fast``;
    the two agree after the early bars as the seeds decay. Requires ``fast < slow``.
    """
    fast, slow, signal = _window("fast", fast), _window("slow", slow), _window("signal", signal)
    if fast >= slow:
        raise ValueError(f"fast must be smaller than slow, got fast={fast}, slow={slow}")
    arr = _array("close", close)
    line, sig, hist = np.empty(arr.shape[0]), np.empty(arr.shape[0]), np.empty(arr.shape[0])
    _macd_fill_nb(arr, fast, slow, signal, line, sig, hist)
    return line, sig, hist


def donchian(high, low, window: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Donchian channel ``(upper, lower)``: rolling max of high, min of low.

    First valid index ``window - 1``; O(n) for any window (monotonic deques).
    """
    h, lo = _arrays(high=high, low=low)
    upper, lower = np.empty(h.shape[0]), np.empty(h.shape[0])
    _extremes_fill_nb(h, lo, h, _window("window", window), False, upper, lower)
    return upper, lower


def zscore(x, window: int) -> np.ndarray:
    """``(x - rolling mean) / rolling population std`` (ddof=0).

    First valid index ``window - 1``. A window of equal values (std 0) gives NaN:
    the score is undefined, not infinite.
    """
    arr = _array("x", x)
    out = np.empty(arr.shape[0])
    _moments_fill_nb(arr, _window("window", window), 0.0, True, out, out, out)
    return out


def roc(x, window: int) -> np.ndarray:
    """Rate of change as a fraction: ``x[i] / x[i - window] - 1`` (0.05 = +5%).

    First valid index ``window``. A zero or missing base value gives NaN.
    """
    arr = _array("x", x)
    out = np.empty(arr.shape[0])
    _roc_fill_nb(arr, _window("window", window), out)
    return out


def stochastic(high, low, close, k_window: int = 14, d_window: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic oscillator ``(k, d)``, 0..100.

    ``%K = 100 * (close - LL) / (HH - LL)`` over ``k_window`` bars (first valid
    index ``k_window - 1``); ``%D`` is the SMA of %K over ``d_window`` bars
    (first valid ``k_window + d_window - 2``). A flat window (HH == LL) gives
    NaN for %K, and %D is NaN while such a bar is in its window.
    """
    h, lo, c = _arrays(high=high, low=low, close=close)
    k, d = np.empty(c.shape[0]), np.empty(c.shape[0])
    _stochastic_fill_nb(h, lo, c, _window("k_window", k_window), _window("d_window", d_window), k, d)
    return k, d


def obv(close, volume) -> np.ndarray:
    """On-balance volume: cumulative volume signed by the close-to-close move.

    Convention: OBV is 0 on the first bar (TA-Lib starts at ``volume[0]``; the
    two differ by that constant only), so the value is the net signed volume
    since the series start. A missing close or volume gives NaN and restarts at 0.
    """
    c, v = _arrays(close=close, volume=volume)
    out = np.empty(c.shape[0])
    _obv_fill_nb(c, v, out)
    return out


def vwap(high, low, close, volume, window: int) -> np.ndarray:
    """Rolling volume-weighted average of the typical price ``(h + l + c) / 3``.

    First valid index ``window - 1``; a window whose volumes are all zero gives NaN.
    """
    h, lo, c, v = _arrays(high=high, low=low, close=close, volume=volume)
    out = np.empty(c.shape[0])
    _vwap_fill_nb(h, lo, c, v, _window("window", window), out)
    return out


def _many(fill, x, windows: Sequence[int], name: str) -> np.ndarray:
    arr = _array("x", x)
    ws = [_window(name, w) for w in windows]
    out = np.empty((len(ws), arr.shape[0]))
    first: dict[int, int] = {}
    for row, w in enumerate(ws):
        if w in first:
            out[row] = out[first[w]]
        else:
            first[w] = row
            fill(arr, w, out[row])
    return out


def sma_many(x, windows: Sequence[int]) -> np.ndarray:
    """SMAs for several windows as a ``(len(windows), n)`` array; each unique window computed once.

    >>> sma_many([1.0, 2.0, 3.0], [1, 2, 1])
    array([[1. , 2. , 3. ],
           [nan, 1.5, 2.5],
           [1. , 2. , 3. ]])
    """
    return _many(_sma_fill_nb, x, windows, "window")


def ema_many(x, spans: Sequence[int]) -> np.ndarray:
    """EMAs for several spans as a ``(len(spans), n)`` array; each unique span computed once."""
    return _many(_ema_fill_nb, x, spans, "span")
