"""Indicator kernels: numpy arrays in, numpy arrays out, compiled with numba.

Kernel rules
------------
- Inputs are 1-D float64 numpy arrays (the public wrappers convert with
  ``np.ascontiguousarray(x, dtype=np.float64)``); windows are ints.
- Every kernel allocates its own output and never writes into its inputs:
  arrays from pandas 3 (copy-on-write) may be read-only. The work is done by
  the chunk kernel ``_<name>_chunk_nb`` (below); the whole-series
  ``_<name>_fill_nb(inputs..., params..., outputs...)``, which writes every
  element of outputs it is given, is its one-chunk case, and ``_<name>_nb``
  allocates and calls that. The public wrappers allocate with numpy instead:
  numpy asks Linux for huge pages on large arrays and numba's allocator does
  not, which saves ~35 ms of page faults per 10-million-bar output.
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

Chunks: halo and state
----------------------
A series can be computed in time chunks, so that memory stays flat however long
the history. ``_<name>_chunk_nb(inputs..., h, params..., state, outputs...)``
takes inputs holding ``h`` *halo* bars (the bars just before the chunk, which an
earlier chunk processed) followed by the chunk's bars, writes outputs for the
chunk's bars only (``len(input) - h``), and updates ``state`` in place: a 1-D
float64 array, of fixed length per kernel and parameters (so it can be stored
as it is), holding what the next chunk needs besides the halo.
``_<name>_state_nb(params...)`` gives the state of nothing processed.
``state[0]`` is always the number of bars processed, i.e. the global index of
the chunk's first bar; the caller passes ``h = min(halo, state[0])``. More halo
is fine (only the last ``halo`` bars are read); less raises ``ValueError``.
Rolling kernels read their window from the halo instead of storing it.
Recursive kernels need no halo, because their memory is in the state.

Splitting a series anywhere and joining the chunks' outputs gives the
whole-series result bit for bit, because the arithmetic is the same. The exact
recomputations of the running sums happen at the same *global* bars
(``window - 1 + k * block``), and the running sums between them, the
missing-value counts and the last change of value ride in the state. The SMA's
fast path agrees with its general path bar by bar, so where a boundary cuts a
block changes which path runs, never a value. Van Herk blocks start at global
multiples of the window. Per family (``n`` = bars processed; "last change" is
the global index where the value last differed from the bar before, used for
exact flat windows):

- SMA, halo ``window`` (``x[i - window]`` leaves the sum): n, window sum,
  missing count, last change.
- Bollinger / z-score (``_moments``), halo ``window``: n, shift, sum and sum of
  squares of ``x - shift``, missing count, last change.
- WMA, halo ``window``: n, plain sum, weighted sum, missing count.
- VWAP, halo ``window``: n, sum(tp * volume), sum(volume), missing count,
  count of nonzero volumes.
- ROC, halo ``window`` (the base value): n.
- Donchian / %K (``_extremes``), halo ``window - 1``: n, last missing bar, and
  the prefix max/min of the van Herk block the chunk ends inside. The suffix
  extremes of the previous block that the chunk's windows reach back into are
  recomputed from the halo, in the same order.
- Stochastic, halo ``k_window - 1``: the %K state, the state of %D's SMA, and the
  last ``d_window`` %K values. %D's window over %K is kept in the state rather
  than recomputed from ``d_window`` more bars of halo, which would mean running
  %K twice over them.
- EMA, no halo: n, finite values in the segment, seed sum, last EMA. MACD: the
  three EMAs' states (fast, slow, signal).
- RSI, no halo: n, changes in the segment (-1: none yet), last close, average
  (or, in the warm-up, summed) gain and loss.
- ATR, no halo: n, true ranges in the segment (-1: none yet), last close, ATR
  (or TR sum).
- OBV, no halo: n, segment started, last close, OBV.

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


@numba.njit(inline="always")
def _chunk_start_nb(state, h, n, halo):
    """Global index of ``x[0]`` for a chunk of ``n`` input bars, ``h`` of them halo.

    ``state[0]`` is the number of bars processed before the chunk. The halo must
    hold ``min(halo, processed)`` bars or more (only the last ``halo`` are read)
    and cannot hold bars that were never processed.
    """
    done = int(state[0])
    if h < 0 or h > n:
        raise ValueError("the halo h must be between 0 and the input length")
    if h > done:
        raise ValueError("the halo h is longer than the bars processed so far (state[0])")
    if h < min(halo, done):
        raise ValueError("the halo h is shorter than the kernel needs: pass min(halo, bars processed)")
    return done - h


# --------------------------------------------------------------------------- #
# Rolling sums: mean, mean + std, weighted mean, volume-weighted mean
# --------------------------------------------------------------------------- #


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


@numba.njit(cache=True)
def _sma_state_nb(window):
    """Nothing processed: ``[bars done, window sum, missing in window, last change of value]``."""
    return np.zeros(4)


@numba.njit(cache=True, nogil=True)
def _sma_chunk_nb(x, h, window, state, out):
    """Write the rolling mean of the chunk ``x[h:]`` into ``out``; halo ``window`` bars.

    Blocks of ``max(window, 1024)`` bars start at global bars ``window - 1 + k * block``,
    each with an exact window sum. A block part (the bars of one block in this
    chunk) whose running sum has no missing value runs on a fast path first, with
    no per-bar missing-value test: a NaN or inf entering the running sum leaves it
    non-finite for good, so one ``isfinite`` at the end tells whether a bar was
    missing (or the sum overflowed), and only then is the part redone on the
    general path, which counts missing values. Both paths add the same
    differences in the same order, so they agree bar by bar up to the first
    missing value: where a chunk boundary cuts a block changes which path runs,
    never a result. The loops index slices from 0 rather than ``x[i - window]``:
    numba cannot prove a computed index non-negative and adds a wraparound
    select to every access, which cost more than the running sum itself.
    """
    n = x.shape[0]
    base = _chunk_start_nb(state, h, n, window)  # global index of x[0]
    inv = 1.0 / window
    block = max(window, _RECOMPUTE_EVERY)
    s = state[1]
    bad = int(state[2])
    # where the value last changed, as an index into x (negative: before the halo);
    # a window ending at i is flat when i - changed >= window - 1, and its mean is
    # then exactly its value, so SMAs of different windows agree on flat prices
    changed = int(state[3]) - base
    i = h
    while i < n and base + i < window - 1:  # warm-up: only the last change is kept
        if base + i > 0 and not x[i] == x[i - 1]:
            changed = i
        out[i - h] = np.nan
        i += 1
    while i < n:
        off = (base + i - window + 1) % block  # bar i's place in its block
        end = min(n, i + block - off)
        if off == 0:
            s, bad = _finite_sum_nb(x, i - window + 1, i + 1)  # exact, in the window ending at i
            if base + i > 0 and not x[i] == x[i - 1]:
                changed = i
            if bad != 0:
                out[i - h] = np.nan
            elif i - changed >= window - 1:
                out[i - h] = x[i]
            else:
                out[i - h] = s * inv
            i += 1
        new = x[i:end]  # bar i + j enters as new[j], x[i + j - window] leaves as old[j]
        old = x[i - window : end - window]
        dst = out[i - h : end - h]
        if bad == 0:
            t = s
            last = changed - i  # `changed`, relative to the part
            prev = x[i - 1]
            for j in range(new.shape[0]):
                v = new[j]
                t += v - old[j]
                if not v == prev:
                    last = j
                prev = v
                dst[j] = v if j - last >= window - 1 else t * inv
            if np.isfinite(t):
                s = t
                changed = last + i
                i = end
                continue
        prev = x[i - 1]
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
                changed = i + j
            prev = v
            if bad != 0:
                dst[j] = np.nan
            elif i + j - changed >= window - 1:
                dst[j] = v
            else:
                dst[j] = s * inv
        i = end
    state[0] = base + n
    state[1] = s
    state[2] = bad
    state[3] = changed + base


@numba.njit(cache=True, nogil=True)
def _sma_fill_nb(x, window, out):
    """Write the rolling mean of ``x`` into ``out`` (same length): the whole series as one chunk."""
    _sma_chunk_nb(x, 0, window, _sma_state_nb(window), out)


@numba.njit(cache=True, nogil=True)
def _sma_nb(x, window):
    out = np.empty(x.shape[0])
    _sma_fill_nb(x, window, out)
    return out


@numba.njit(cache=True)
def _moments_state_nb(window):
    """Nothing processed: ``[bars done, shift, sum(x - shift), sum((x - shift)^2), missing, last change]``."""
    return np.zeros(6)


@numba.njit(cache=True, nogil=True)
def _moments_chunk_nb(x, h, window, k, zscore, state, out1, out2, out3):
    """Rolling mean and population std (ddof=0) of the chunk ``x[h:]``; halo ``window`` bars.

    ``zscore=False``: ``out1, out2, out3 = mean, mean + k*std, mean - k*std``.
    ``zscore=True``: ``out1 = (x - mean) / std`` (NaN where std == 0); out2/out3 unused.
    """
    n = x.shape[0]
    base = _chunk_start_nb(state, h, n, window)
    inv = 1.0 / window
    # re-centre often: the error of s2 scales with (x - shift)^2, i.e. with the
    # price drift since the last re-centring, relative to the window variance
    block = max(2 * window, _RECENTRE_EVERY)
    shift = state[1]
    s1 = state[2]
    s2 = state[3]
    bad = int(state[4])
    changed = int(state[5]) - base  # as an index into x, see _sma_chunk_nb
    i = h
    while i < n and base + i < window - 1:
        if base + i > 0 and not x[i] == x[i - 1]:
            changed = i
        out1[i - h] = np.nan
        if not zscore:
            out2[i - h] = np.nan
            out3[i - h] = np.nan
        i += 1
    while i < n:
        off = (base + i - window + 1) % block
        end = min(n, i + block - off)
        slide = i  # the first bar that slides the window (the block's first bar does not)
        if off == 0:
            # re-centre on the window mean so the sums of squares do not cancel
            shift, bad = _finite_sum_nb(x, i - window + 1, i + 1)
            if bad < window:
                shift /= window - bad
            s1 = 0.0
            s2 = 0.0
            for j in range(i - window + 1, i + 1):
                v = x[j]
                if np.isfinite(v):
                    d = v - shift
                    s1 += d
                    s2 += d * d
            if base + i > 0 and not x[i] == x[i - 1]:
                changed = i
            slide = i + 1
        prev = x[slide - 1]
        start = i
        for i in range(start, end):
            v = x[i]
            if i >= slide:
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
                out1[i - h] = (v - mean) / std if std > 0.0 else np.nan
            else:
                out1[i - h] = mean
                out2[i - h] = mean + k * std
                out3[i - h] = mean - k * std
        i = end
    state[0] = base + n
    state[1] = shift
    state[2] = s1
    state[3] = s2
    state[4] = bad
    state[5] = changed + base


@numba.njit(cache=True, nogil=True)
def _moments_fill_nb(x, window, k, zscore, out1, out2, out3):
    """Rolling mean and std of the whole series ``x`` (one chunk); outputs as in ``_moments_chunk_nb``."""
    _moments_chunk_nb(x, 0, window, k, zscore, _moments_state_nb(window), out1, out2, out3)


@numba.njit(cache=True, nogil=True)
def _bollinger_chunk_nb(close, h, window, k, state, middle, upper, lower):
    _moments_chunk_nb(close, h, window, k, False, state, middle, upper, lower)


@numba.njit(cache=True, nogil=True)
def _zscore_chunk_nb(x, h, window, state, out):
    _moments_chunk_nb(x, h, window, 0.0, True, state, out, out, out)


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


@numba.njit(cache=True)
def _wma_state_nb(window):
    """Nothing processed: ``[bars done, window sum, weighted sum, missing in window]``."""
    return np.zeros(4)


@numba.njit(cache=True, nogil=True)
def _wma_chunk_nb(x, h, window, state, out):
    """Linearly weighted mean, weights 1..window (newest heaviest); halo ``window`` bars."""
    n = x.shape[0]
    base = _chunk_start_nb(state, h, n, window)
    inv = 2.0 / (window * (window + 1.0))
    block = max(window, _RECOMPUTE_EVERY)
    s = state[1]  # plain sum of the window (missing values as 0)
    ws = state[2]  # weighted sum
    bad = int(state[3])
    i = h
    while i < n and base + i < window - 1:
        out[i - h] = np.nan
        i += 1
    while i < n:
        off = (base + i - window + 1) % block
        end = min(n, i + block - off)
        if off == 0:
            s = 0.0
            ws = 0.0
            bad = 0
            for j in range(window):
                v = x[i - window + 1 + j]
                if np.isfinite(v):
                    s += v
                    ws += (j + 1.0) * v
                else:
                    bad += 1
            out[i - h] = ws * inv if bad == 0 else np.nan
            i += 1
        start = i
        for i in range(start, end):
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
            out[i - h] = ws * inv if bad == 0 else np.nan
        i = end
    state[0] = base + n
    state[1] = s
    state[2] = ws
    state[3] = bad


@numba.njit(cache=True, nogil=True)
def _wma_fill_nb(x, window, out):
    _wma_chunk_nb(x, 0, window, _wma_state_nb(window), out)


@numba.njit(cache=True, nogil=True)
def _wma_nb(x, window):
    out = np.empty(x.shape[0])
    _wma_fill_nb(x, window, out)
    return out


@numba.njit(cache=True)
def _vwap_state_nb(window):
    """Nothing processed: ``[bars done, sum(tp * vol), sum(vol), missing, nonzero volumes]``."""
    return np.zeros(5)


@numba.njit(cache=True, nogil=True)
def _vwap_chunk_nb(high, low, close, volume, h, window, state, out):
    """Rolling sum(typical * volume) / sum(volume); typical = (h + l + c) / 3; halo ``window`` bars."""
    n = close.shape[0]
    base = _chunk_start_nb(state, h, n, window)
    block = max(window, _RECOMPUTE_EVERY)
    pv = state[1]
    vs = state[2]
    bad = int(state[3])
    nonzero = int(state[4])  # bars with volume != 0: an all-zero window is NaN exactly
    i = h
    while i < n and base + i < window - 1:
        out[i - h] = np.nan
        i += 1
    while i < n:
        off = (base + i - window + 1) % block
        end = min(n, i + block - off)
        if off == 0:
            pv = 0.0
            vs = 0.0
            bad = 0
            nonzero = 0
            for j in range(i - window + 1, i + 1):
                tp = (high[j] + low[j] + close[j]) / 3.0
                vol = volume[j]
                if np.isfinite(tp) and np.isfinite(vol):
                    pv += tp * vol
                    vs += vol
                    nonzero += vol != 0.0
                else:
                    bad += 1
            out[i - h] = pv / vs if bad == 0 and nonzero > 0 else np.nan
            i += 1
        start = i
        for i in range(start, end):
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
            out[i - h] = pv / vs if bad == 0 and nonzero > 0 else np.nan
        i = end
    state[0] = base + n
    state[1] = pv
    state[2] = vs
    state[3] = bad
    state[4] = nonzero


@numba.njit(cache=True, nogil=True)
def _vwap_fill_nb(high, low, close, volume, window, out):
    _vwap_chunk_nb(high, low, close, volume, 0, window, _vwap_state_nb(window), out)


@numba.njit(cache=True, nogil=True)
def _vwap_nb(high, low, close, volume, window):
    out = np.empty(close.shape[0])
    _vwap_fill_nb(high, low, close, volume, window, out)
    return out


# --------------------------------------------------------------------------- #
# Rolling extremes
# --------------------------------------------------------------------------- #


@numba.njit(cache=True)
def _extremes_state_nb(window):
    """Nothing processed: ``[bars done, last missing bar, block prefix max, block prefix min]``."""
    return np.array([0.0, -1.0 - window, -np.inf, np.inf])


# inlined into its callers, which pass `stochastic` as a constant: the flag's
# branches then fold away (~5% on the stochastic oscillator)
@numba.njit(cache=True, nogil=True, inline="always")
def _extremes_chunk_nb(high, low, close, h, window, stochastic, state, out1, out2):
    """Rolling max of ``high`` and min of ``low`` over the chunk, O(n) for any window.

    Van Herk / Gil-Werman: cut the series into blocks of ``window`` bars (from
    global bar 0); a window spans the tail of one block and the head of the
    next, so its max is ``max(suffix max of the previous block, prefix max of
    this block)``. Three branch-free comparisons per bar (a monotonic deque
    branches unpredictably on prices and measured ~3x slower here). Missing
    values enter as -inf/+inf and the window is NaN while the last missing bar
    is inside it. Halo ``window - 1`` bars: the suffixes the chunk's first
    windows reach back into are recomputed from it (in the same order, so the
    same values); the prefix extremes of a block the chunk starts inside come
    from the state.

    ``stochastic=False``: ``out1, out2 = upper, lower``.
    ``stochastic=True``: ``out1 = %K = 100 * (close - lower) / (upper - lower)``
    (NaN when upper == lower); ``out2`` unused.
    """
    n = high.shape[0]
    base = _chunk_start_nb(state, h, n, window - 1)
    first = base + h  # global index of the chunk's first bar
    c = n - h
    # the chunk's bars, aligned with the outputs: i below indexes both, from 0
    hx = high[h:]
    lx = low[h:]
    cx = close[h:]
    last_bad = int(state[1]) - first  # the last bar with a missing high or low, as a chunk index
    warm = window - 1 - first  # chunk bars before this have no full window
    suf_hi = np.empty(window + 1)  # suffix extremes of the previous block, by offset into it
    suf_lo = np.empty(window + 1)
    suf_hi[window] = -np.inf
    suf_lo[window] = np.inf
    s0 = -(first % window)  # the start of the block of the chunk's first bar, as a chunk index (<= 0)
    # prefix extremes of that block so far (-inf/+inf at a block start: a block
    # that ends with a chunk is closed below, so the state has no stale prefix)
    hi = state[2]
    lo = state[3]
    if s0 + first > 0:
        # the suffixes of the block before, as far back as the halo goes: the
        # only clamped suffix loop (a clamped bound in the block loop cost 20-30%)
        shi = -np.inf
        slo = np.inf
        for j in range(h + s0 - 1, max(h + s0 - window, 0) - 1, -1):
            hv = high[j]
            lv = low[j]
            if hv > shi:
                shi = hv
            if lv < slo:
                slo = lv
            suf_hi[j - h - s0 + window] = shi
            suf_lo[j - h - s0 + window] = slo
    for s in range(s0, c, window):
        end = s + window
        for i in range(max(s, 0), min(c, end)):
            hv = hx[i]
            lv = lx[i]
            if not (np.isfinite(hv) and np.isfinite(lv)):
                last_bad = i
            # NaN compares false: a missing value never becomes the extreme
            if hv > hi:
                hi = hv
            if lv < lo:
                lo = lv
            if i < warm or last_bad > i - window:
                out1[i] = np.nan
                if not stochastic:
                    out2[i] = np.nan
                continue
            off = i - s + 1
            upper = suf_hi[off] if suf_hi[off] > hi else hi
            lower = suf_lo[off] if suf_lo[off] < lo else lo
            if stochastic:
                rng = upper - lower
                cv = cx[i]
                out1[i] = 100.0 * (cv - lower) / rng if rng > 0.0 and np.isfinite(cv) else np.nan
            else:
                out1[i] = upper
                out2[i] = lower
        if end <= c:
            # the block is complete: its suffixes for the next block (computed at its
            # end, not at the next block's start, so they never reach before the
            # inputs), and a fresh prefix (reset here: a branch per block start cost ~5%)
            shi = -np.inf
            slo = np.inf
            for j in range(h + end - 1, h + s - 1, -1):
                hv = high[j]
                lv = low[j]
                if hv > shi:
                    shi = hv
                if lv < slo:
                    slo = lv
                suf_hi[j - h - s] = shi
                suf_lo[j - h - s] = slo
            hi = -np.inf
            lo = np.inf
    state[0] = base + n
    state[1] = last_bad + first
    state[2] = hi
    state[3] = lo


@numba.njit(cache=True, nogil=True)
def _extremes_fill_nb(high, low, close, window, stochastic, out1, out2):
    """Rolling max of ``high`` and min of ``low`` over the whole series (one chunk)."""
    _extremes_chunk_nb(high, low, close, 0, window, stochastic, _extremes_state_nb(window), out1, out2)


@numba.njit(cache=True, nogil=True)
def _donchian_chunk_nb(high, low, h, window, state, upper, lower):
    _extremes_chunk_nb(high, low, high, h, window, False, state, upper, lower)


@numba.njit(cache=True, nogil=True)
def _donchian_fill_nb(high, low, window, upper, lower):
    _donchian_chunk_nb(high, low, 0, window, _extremes_state_nb(window), upper, lower)


@numba.njit(cache=True, nogil=True)
def _donchian_nb(high, low, window):
    n = high.shape[0]
    upper, lower = np.empty(n), np.empty(n)
    _donchian_fill_nb(high, low, window, upper, lower)
    return upper, lower


@numba.njit(cache=True)
def _stochastic_state_nb(k_window, d_window):
    """Nothing processed: the %K extremes' state, the %D SMA's, then the last ``d_window`` %K values."""
    state = np.full(8 + d_window, np.nan)
    state[:4] = _extremes_state_nb(k_window)
    state[4:8] = _sma_state_nb(d_window)
    return state


@numba.njit(cache=True, nogil=True)
def _stochastic_chunk_nb(high, low, close, h, k_window, d_window, state, k, d):
    """%K over the chunk (halo ``k_window - 1`` bars), %D the SMA of %K.

    %D's window reaches ``d_window`` %K values back; they are kept in the state
    rather than recomputed from a longer halo.
    """
    done = int(state[0])
    c = k.shape[0]
    _extremes_chunk_nb(high, low, close, h, k_window, True, state[0:4], k, k)
    tail = state[8 : 8 + d_window]  # the last d_window %K values, newest last
    hk = min(d_window, done)
    if hk == 0:
        _sma_chunk_nb(k, 0, d_window, state[4:8], d)
    else:
        kk = np.empty(hk + c)
        kk[:hk] = tail[d_window - hk :]
        kk[hk:] = k
        _sma_chunk_nb(kk, hk, d_window, state[4:8], d)
    if c >= d_window:
        tail[:] = k[c - d_window :]
    else:
        for j in range(d_window - c):
            tail[j] = tail[j + c]
        tail[d_window - c :] = k


@numba.njit(cache=True, nogil=True)
def _stochastic_fill_nb(high, low, close, k_window, d_window, k, d):
    _stochastic_chunk_nb(high, low, close, 0, k_window, d_window, _stochastic_state_nb(k_window, d_window), k, d)


@numba.njit(cache=True, nogil=True)
def _stochastic_nb(high, low, close, k_window, d_window):
    n = close.shape[0]
    k, d = np.empty(n), np.empty(n)
    _stochastic_fill_nb(high, low, close, k_window, d_window, k, d)
    return k, d


# --------------------------------------------------------------------------- #
# Element-wise
# --------------------------------------------------------------------------- #


@numba.njit(cache=True)
def _roc_state_nb(window):
    """Nothing processed: ``[bars done]`` (the base values come from the halo)."""
    return np.zeros(1)


@numba.njit(cache=True, nogil=True)
def _roc_chunk_nb(x, h, window, state, out):
    """``x[i] / x[i - window] - 1`` over the chunk; halo ``window`` bars."""
    n = x.shape[0]
    base = _chunk_start_nb(state, h, n, window)
    start = min(n, max(h, window - base))  # the first bar with a base value
    out[: start - h] = np.nan
    new = x[start:]  # slices from 0: no wraparound select per access (see _sma_chunk_nb)
    old = x[start - window : n - window]
    dst = out[start - h :]
    for j in range(new.shape[0]):
        v = new[j]
        u = old[j]
        dst[j] = v / u - 1.0 if np.isfinite(v) and np.isfinite(u) and u != 0.0 else np.nan
    state[0] = base + n


@numba.njit(cache=True, nogil=True)
def _roc_fill_nb(x, window, out):
    _roc_chunk_nb(x, 0, window, _roc_state_nb(window), out)


@numba.njit(cache=True, nogil=True)
def _roc_nb(x, window):
    out = np.empty(x.shape[0])
    _roc_fill_nb(x, window, out)
    return out


# --------------------------------------------------------------------------- #
# Recursive: EMA family, Wilder smoothing, OBV (restart after a missing value)
# --------------------------------------------------------------------------- #


@numba.njit(cache=True)
def _ema_state_nb(span):
    """Nothing processed: ``[bars done, finite values in the segment, seed sum, last EMA]``."""
    return np.zeros(4)


@numba.njit(cache=True, nogil=True)
def _ema_chunk_nb(x, h, span, state, out):
    """EMA seeded with the SMA of the first ``span`` values of each segment; no halo."""
    base = _chunk_start_nb(state, h, x.shape[0], 0)
    xs = x[h:]
    alpha = 2.0 / (span + 1.0)
    count = int(state[1])  # consecutive finite values in the current segment
    seed = state[2]
    y = state[3]
    for i in range(xs.shape[0]):
        v = xs[i]
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
    state[0] = base + x.shape[0]
    state[1] = count
    state[2] = seed
    state[3] = y


@numba.njit(cache=True, nogil=True)
def _ema_fill_nb(x, span, out):
    _ema_chunk_nb(x, 0, span, _ema_state_nb(span), out)


@numba.njit(cache=True, nogil=True)
def _ema_nb(x, span):
    out = np.empty(x.shape[0])
    _ema_fill_nb(x, span, out)
    return out


@numba.njit(cache=True)
def _macd_state_nb(fast, slow, signal):
    """Nothing processed: the states of the fast, slow and signal EMAs, in that order."""
    state = np.empty(12)
    state[0:4] = _ema_state_nb(fast)
    state[4:8] = _ema_state_nb(slow)
    state[8:12] = _ema_state_nb(signal)
    return state


@numba.njit(cache=True, nogil=True)
def _macd_chunk_nb(close, h, fast, slow, signal, state, line, sig, hist):
    _ema_chunk_nb(close, h, fast, state[0:4], hist)  # hist as scratch for the fast EMA
    _ema_chunk_nb(close, h, slow, state[4:8], line)
    for i in range(line.shape[0]):
        line[i] = hist[i] - line[i]
    _ema_chunk_nb(line, 0, signal, state[8:12], sig)
    for i in range(line.shape[0]):
        hist[i] = line[i] - sig[i]


@numba.njit(cache=True, nogil=True)
def _macd_fill_nb(close, fast, slow, signal, line, sig, hist):
    _macd_chunk_nb(close, 0, fast, slow, signal, _macd_state_nb(fast, slow, signal), line, sig, hist)


@numba.njit(cache=True, nogil=True)
def _macd_nb(close, fast, slow, signal):
    n = close.shape[0]
    line, sig, hist = np.empty(n), np.empty(n), np.empty(n)
    _macd_fill_nb(close, fast, slow, signal, line, sig, hist)
    return line, sig, hist


@numba.njit(cache=True)
def _rsi_state_nb(window):
    """Nothing processed: ``[bars done, changes in the segment (-1: none yet), last close, gain, loss]``."""
    return np.array([0.0, -1.0, 0.0, 0.0, 0.0])


@numba.njit(cache=True, nogil=True)
def _rsi_chunk_nb(close, h, window, state, out):
    """Wilder RSI; a window with no movement gives 50, only gains 100; no halo."""
    base = _chunk_start_nb(state, h, close.shape[0], 0)
    cs = close[h:]
    changes = int(state[1])  # price changes seen in the segment; -1: no previous close
    prev = state[2]
    gain = state[3]
    loss = state[4]
    keep = (window - 1.0) / window
    for i in range(cs.shape[0]):
        out[i] = np.nan
        c = cs[i]
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
    state[0] = base + close.shape[0]
    state[1] = changes
    state[2] = prev
    state[3] = gain
    state[4] = loss


@numba.njit(cache=True, nogil=True)
def _rsi_fill_nb(close, window, out):
    _rsi_chunk_nb(close, 0, window, _rsi_state_nb(window), out)


@numba.njit(cache=True, nogil=True)
def _rsi_nb(close, window):
    out = np.empty(close.shape[0])
    _rsi_fill_nb(close, window, out)
    return out


@numba.njit(cache=True)
def _atr_state_nb(window):
    """Nothing processed: ``[bars done, true ranges in the segment (-1: none yet), last close, ATR or TR sum]``."""
    return np.array([0.0, -1.0, 0.0, 0.0])


@numba.njit(cache=True, nogil=True)
def _atr_chunk_nb(high, low, close, h, window, state, out):
    """Wilder ATR: first value = mean(TR[1..window]) of each segment; no halo."""
    base = _chunk_start_nb(state, h, close.shape[0], 0)
    hs = high[h:]
    ls = low[h:]
    cs = close[h:]
    bars = int(state[1])  # true ranges seen in the segment; -1: no previous close
    prev = state[2]
    acc = state[3]
    keep = (window - 1.0) / window
    for i in range(cs.shape[0]):
        out[i] = np.nan
        hv = hs[i]
        lo = ls[i]
        c = cs[i]
        if not (np.isfinite(hv) and np.isfinite(lo) and np.isfinite(c)):
            bars = -1
            continue
        if bars < 0:
            bars = 0
            prev = c
            acc = 0.0
            continue
        tr = max(hv - lo, abs(hv - prev), abs(lo - prev))
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
    state[0] = base + close.shape[0]
    state[1] = bars
    state[2] = prev
    state[3] = acc


@numba.njit(cache=True, nogil=True)
def _atr_fill_nb(high, low, close, window, out):
    _atr_chunk_nb(high, low, close, 0, window, _atr_state_nb(window), out)


@numba.njit(cache=True, nogil=True)
def _atr_nb(high, low, close, window):
    out = np.empty(close.shape[0])
    _atr_fill_nb(high, low, close, window, out)
    return out


@numba.njit(cache=True)
def _obv_state_nb():
    """Nothing processed: ``[bars done, segment started (0/1), last close, OBV]``."""
    return np.zeros(4)


@numba.njit(cache=True, nogil=True)
def _obv_chunk_nb(close, volume, h, state, out):
    """On-balance volume, 0 on the first bar of each segment; no halo."""
    base = _chunk_start_nb(state, h, close.shape[0], 0)
    cs = close[h:]
    vs = volume[h:]
    started = state[1] != 0.0
    prev = state[2]
    acc = state[3]
    for i in range(cs.shape[0]):
        c = cs[i]
        v = vs[i]
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
    state[0] = base + close.shape[0]
    state[1] = 1.0 if started else 0.0
    state[2] = prev
    state[3] = acc


@numba.njit(cache=True, nogil=True)
def _obv_fill_nb(close, volume, out):
    _obv_chunk_nb(close, volume, 0, _obv_state_nb(), out)


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

    First valid index ``window - 1``; O(n) for any window (van Herk blocks).
    """
    h, lo = _arrays(high=high, low=low)
    upper, lower = np.empty(h.shape[0]), np.empty(h.shape[0])
    _donchian_fill_nb(h, lo, _window("window", window), upper, lower)
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
