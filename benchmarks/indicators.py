"""Indicator kernels vs pandas on one long series, and the plan's deduplication.

``python -m benchmarks indicators [--bars N] [--repeat R]``

For each kernel: median wall time of the (warm) numba kernel and of the pandas
equivalent in the same run, on seeded GBM OHLCV bars, as values per second per
core (both run single-threaded) and the speedup. "Rolling" kernels are those
pandas computes with ``.rolling()``; ``min_speedup_vs_pandas`` is taken over
them. Recursive (EMA family, Wilder, OBV) and element-wise (ROC) kernels are
reported too. Then the SMA-cross grid through the indicator hub (plan + hub):
indicators requested vs computed, and a second session served from the
storage cache without computing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from benchmarks._harness import median_seconds, print_table

ROLLING = ("sma", "wma", "bollinger", "zscore", "donchian", "stochastic", "vwap")


def gbm_bars(n: int, seed: int = 42) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    high = close * np.exp(np.abs(rng.normal(0.0, 0.005, n)))
    low = close * np.exp(-np.abs(rng.normal(0.0, 0.005, n)))
    volume = rng.integers(100, 10_000, n).astype(np.float64)
    return {"high": high, "low": low, "close": close, "volume": volume}


def _pandas_ema(s: pd.Series, span: int) -> pd.Series:
    return s.ewm(span=span, adjust=False).mean()


def _pandas_wilder(s: pd.Series, n: int) -> pd.Series:
    return s.ewm(alpha=1.0 / n, adjust=False).mean()


def cases(bars: dict[str, np.ndarray]):
    """name -> (numba call, pandas call); windows as a typical strategy uses them."""
    from admf_dask.kernels import indicators as k

    h, lo, c, v = (bars[x] for x in ("high", "low", "close", "volume"))
    H, L, C, V = (pd.Series(a) for a in (h, lo, c, v))

    def pd_wma(w=20):
        acc = C * float(w)
        for lag in range(1, w):
            acc = acc + C.shift(lag) * float(w - lag)
        return acc / (w * (w + 1) / 2)

    def pd_bollinger(w=20, kk=2.0):
        m, sd = C.rolling(w).mean(), C.rolling(w).std(ddof=0)
        return m, m + kk * sd, m - kk * sd

    def pd_zscore(w=20):
        return (C - C.rolling(w).mean()) / C.rolling(w).std(ddof=0)

    def pd_stochastic(kw=14, dw=3):
        ll, hh = L.rolling(kw).min(), H.rolling(kw).max()
        kk = 100 * (C - ll) / (hh - ll)
        return kk, kk.rolling(dw).mean()

    def pd_vwap(w=20):
        tp = (H + L + C) / 3
        return (tp * V).rolling(w).sum() / V.rolling(w).sum()

    def pd_rsi(w=14):
        d = C.diff()
        g, ls = _pandas_wilder(d.clip(lower=0), w), _pandas_wilder((-d).clip(lower=0), w)
        return 100 * g / (g + ls)

    def pd_atr(w=14):
        prev = C.shift()
        tr = np.maximum(H - L, np.maximum((H - prev).abs(), (L - prev).abs()))
        return _pandas_wilder(tr, w)

    def pd_macd(f=12, s=26, sig=9):
        line = _pandas_ema(C, f) - _pandas_ema(C, s)
        signal = _pandas_ema(line, sig)
        return line, signal, line - signal

    return {
        "sma": (lambda: k.sma(c, 20), lambda: C.rolling(20).mean()),
        "wma": (lambda: k.wma(c, 20), pd_wma),
        "bollinger": (lambda: k.bollinger(c, 20, 2.0), pd_bollinger),
        "zscore": (lambda: k.zscore(c, 20), pd_zscore),
        "donchian": (lambda: k.donchian(h, lo, 20), lambda: (H.rolling(20).max(), L.rolling(20).min())),
        "stochastic": (lambda: k.stochastic(h, lo, c, 14, 3), pd_stochastic),
        "vwap": (lambda: k.vwap(h, lo, c, v, 20), pd_vwap),
        "ema": (lambda: k.ema(c, 20), lambda: _pandas_ema(C, 20)),
        "rsi": (lambda: k.rsi(c, 14), pd_rsi),
        "atr": (lambda: k.atr(h, lo, c, 14), pd_atr),
        "macd": (lambda: k.macd(c, 12, 26, 9), pd_macd),
        "obv": (lambda: k.obv(c, v), lambda: (np.sign(C.diff()).fillna(0.0) * V).cumsum()),
        "roc": (lambda: k.roc(c, 20), lambda: C / C.shift(20) - 1),
    }


def plan_figures() -> dict[str, float]:
    """The hub on the SMA-cross grid for one symbol of 10 years of daily bars, two sessions."""
    from admf_dask.bars import BarStore, generate_bars
    from admf_dask.cache import IndicatorHub
    from admf_dask.indicators import IndicatorPlan, IndicatorSpec
    from admf_dask.storage import StorageRef

    grid = [(f, s) for f in range(5, 55, 5) for s in range(20, 220, 10) if f < s]
    store = BarStore("memory://bench-indicators/bars")
    store.write([generate_bars("SYM", "2015-01-01", "2024-12-31", seed=42)])
    cache = StorageRef.make("memory://bench-indicators/cache")
    t0 = time.perf_counter()
    plan = IndicatorPlan.from_requests(IndicatorSpec.make("sma", window=w) for f, s in grid for w in (f, s))
    t1 = time.perf_counter()
    first = IndicatorHub(store, cache)
    first.get("SYM", plan)
    t2 = time.perf_counter()
    second = IndicatorHub(BarStore(store.url), cache)  # a new session: memory empty, storage warm
    second.get("SYM", plan)
    t3 = time.perf_counter()
    return {
        "param_sets": len(grid),
        "requested": plan.requested,
        "unique_computed": first.counters.computed,
        "second_session_loaded": second.counters.loaded_storage,
        "second_session_computed": second.counters.computed,
        "plan_build_s": t1 - t0,
        "first_session_s": t2 - t1,
        "second_session_s": t3 - t2,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks indicators", description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=10_000_000, help="bars in the series (default 10,000,000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per kernel; the median is reported")
    args = parser.parse_args(argv)

    bars = gbm_bars(args.bars)
    n = args.bars
    rows, figures = [], {"bars": n, "repeat": args.repeat}
    speedups = {}
    for name, (fast, slow) in cases(bars).items():
        t_nb = median_seconds(fast, repeat=args.repeat)  # the warm-up run also compiles or loads the cache
        t_pd = median_seconds(slow, repeat=args.repeat, warmup=0)
        speedups[name] = t_pd / t_nb
        kind = "rolling" if name in ROLLING else ("elementwise" if name == "roc" else "recursive")
        rows.append([name, kind, t_nb * 1e3, t_pd * 1e3, n / t_nb / 1e6, n / t_pd / 1e6, t_pd / t_nb])
        figures[f"speedup_{name}"] = round(t_pd / t_nb, 2)
        figures[f"numba_ms_{name}"] = round(t_nb * 1e3, 2)
        figures[f"pandas_ms_{name}"] = round(t_pd * 1e3, 2)
    print_table(
        ["kernel", "kind", "numba ms", "pandas ms", "numba Mval/s/core", "pandas Mval/s/core", "speedup"],
        rows,
        title=f"Indicator kernels on {n:,} bars (median of {args.repeat}, single core each)",
    )
    figures["min_speedup_vs_pandas"] = round(min(speedups[k] for k in ROLLING), 2)
    figures["min_speedup_kernel"] = min(ROLLING, key=speedups.__getitem__)

    plan = plan_figures()
    print_table(
        ["session", "param sets", "requested", "computed", "loaded from storage", "seconds"],
        [["1 (cold)", plan["param_sets"], plan["requested"], plan["unique_computed"], 0, plan["first_session_s"]],
         ["2 (new process state, warm storage)", plan["param_sets"], plan["requested"],
          plan["second_session_computed"], plan["second_session_loaded"], plan["second_session_s"]]],
        title="Indicator hub on the SMA-cross grid (fast 5..50/5, slow 20..210/10, fast < slow), "
              "1 symbol x 2,609 daily bars",
    )
    figures.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in plan.items()})
    return figures
