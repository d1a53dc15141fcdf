"""Backtest engine: the SMA-cross grid through the fused kernel, against vectorbt in the same run.

``python -m benchmarks engine [--symbols N] [--repeat R] [--vbt-chunk C] [--no-vectorbt]``

Workload (issue 4): SMA cross, fast in range(5, 55, 5), slow in range(20, 220, 10),
fast < slow (184 parameter sets), on ``N`` synthetic symbols (default 100) of 2,520
daily bars each (``generate_bars(symbol, "2015-01-01", "2024-08-28", seed=42)``).
Long-only, next-open fills, 0.1 % commission, fractional units, cash 10,000, the full
statistics row. One process, one thread, kernels warm (one untimed run first).

Ours, two timings (medians over ``R`` runs):

* ``end to end``: :func:`admf_dask.backtest.run_batch` per symbol on its Bars: the
  batch's 26 unique SMAs computed directly by the plan (``IndicatorSpec.compute``,
  no hub and no storage), the fused kernel for the 184 sets, the result DataFrame.
* ``kernel only``: :func:`admf_dask.kernels.strategies.run_strategy_batch` per symbol
  on indicator matrices prepared beforehand.

vectorbt: ``vbt.MA.run`` over the paired fast/slow window lists on a (bars x symbols)
close frame, ``ma_crossed_above`` / ``ma_crossed_below`` signals shifted one bar,
``Portfolio.from_signals(close, entries, exits, price=open, fees=0.001,
init_cash=10_000, freq="1D")`` (size ``inf``: all cash, fractional) and
``total_return()``; its default engine resolved (numba, unless vectorbt-rust is
installed), timed on the second run, ``C`` symbols per call (default all).
Bar-evaluations are bars x backtests; ``ratio_vs_vectorbt`` divides our end-to-end
bar-evaluations/s by vectorbt's; ``max_abs_diff_vs_vectorbt`` is the largest
absolute difference in total return over every (symbol, parameter set).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from benchmarks._harness import median_seconds, print_table

START, END = "2015-01-01", "2024-08-28"  # 2,520 business days
N_BARS = 2520
COMMISSION = 0.001
CASH = 10_000.0


def grid() -> list[dict[str, int]]:
    return [{"fast": f, "slow": s} for f in range(5, 55, 5) for s in range(20, 220, 10) if f < s]


def _vectorbt(bars, sets, chunk: int, repeat: int = 1, warm_all: bool = True) -> tuple[np.ndarray, float, str]:
    """Total returns (symbols x sets) from vectorbt, and the warm runs' median seconds.

    ``warm_all=False`` warms on the first chunk only (enough to compile; for big inputs)."""
    import pandas as pd
    import vectorbt as vbt

    index = pd.DatetimeIndex(bars[0].timestamp.view("datetime64[ns]"))
    fast_w = [p["fast"] for p in sets]
    slow_w = [p["slow"] for p in sets]

    def run_chunk(group):
        close = pd.DataFrame({b.symbol: b.close for b in group}, index=index)
        open_ = pd.DataFrame({b.symbol: b.open for b in group}, index=index)
        fast = vbt.MA.run(close, window=fast_w, short_name="fast")
        slow = vbt.MA.run(close, window=slow_w, short_name="slow")
        entries = fast.ma_crossed_above(slow).shift(1, fill_value=False)
        exits = fast.ma_crossed_below(slow).shift(1, fill_value=False)
        pf = vbt.Portfolio.from_signals(close, entries, exits, price=open_, fees=COMMISSION,
                                        init_cash=CASH, freq="1D")
        tr = pf.total_return()
        # columns are (fast_window, slow_window, symbol), parameter set major
        return tr.to_numpy().reshape(len(sets), len(group)).T

    def run_all():
        return np.vstack([run_chunk(bars[i:i + chunk]) for i in range(0, len(bars), chunk)])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_all() if warm_all else run_chunk(bars[:chunk])  # compile / warm
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = run_all()
            times.append(time.perf_counter() - t0)
        seconds = float(np.median(times))
    try:
        from vectorbt._engine import is_rust_available
        engine = "rust" if is_rust_available() else "numba"
    except ImportError:
        engine = "numba"
    return out, seconds, engine


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks engine", description=__doc__.split("\n")[0])
    parser.add_argument("--symbols", type=int, default=100, help="synthetic symbols (default 100)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of ours; the median is reported")
    parser.add_argument("--vbt-chunk", type=int, default=0, help="symbols per vectorbt call (default: all)")
    parser.add_argument("--no-vectorbt", action="store_true", help="skip the vectorbt comparison")
    args = parser.parse_args(argv)

    from admf_dask.backtest import run_batch
    from admf_dask.bars import generate_bars, symbol_names
    from admf_dask.kernels.stats import STAT_NAMES
    from admf_dask.kernels.strategies import LONG_ONLY, run_strategy_batch
    from admf_dask.strategies import prepare_batch

    sets = grid()
    bars = [generate_bars(s, START, END, seed=42) for s in symbol_names(args.symbols)]
    assert all(len(b) == N_BARS for b in bars), "expected 2,520 bars per symbol"
    n_sets, n_sym = len(sets), len(bars)
    bar_evals = n_sets * n_sym * N_BARS
    costs = dict(direction="long_only", cash=CASH, commission=COMMISSION)
    tr_col = STAT_NAMES.index("total_return")

    # End to end: indicators + fused kernel + frame, per symbol.
    results: list = []

    def end_to_end():
        results.clear()
        for b in bars:
            results.append(run_batch(b, "sma_cross", sets, **costs))

    t_e2e = median_seconds(end_to_end, repeat=args.repeat, warmup=1)
    ours = np.vstack([r["total_return"].to_numpy() for r in results])

    # Kernel only, on prepared indicator matrices.
    batch = prepare_batch("sma_cross", sets)
    specs = {s.token: s for s in batch.plan.specs}
    inds = [np.vstack([specs[tok].compute(b.columns)["value"] for tok, _ in batch.rows]) for b in bars]
    prices = [tuple(b.columns[k] for k in ("open", "high", "low", "close")) for b in bars]
    kernel_rows: list = []

    def kernel_only():
        kernel_rows.clear()
        for ind, (o, h, lo, c) in zip(inds, prices):
            kernel_rows.append(run_strategy_batch(0, ind, batch.idx, batch.fparams, o, h, lo, c, 252.0, CASH,
                                                  COMMISSION, 0.0, False, np.nan, np.nan, LONG_ONLY))

    t_kernel = median_seconds(kernel_only, repeat=args.repeat, warmup=1)
    kernel_tr = np.vstack([r[:, tr_col] for r in kernel_rows])
    assert np.array_equal(kernel_tr, ours), "kernel-only and end-to-end rows differ"

    rows = [
        ["ours: end to end (plan + fused kernel + frame)", t_e2e, n_sets * n_sym / t_e2e, bar_evals / t_e2e],
        ["ours: kernel only", t_kernel, n_sets * n_sym / t_kernel, bar_evals / t_kernel],
    ]
    figures = {
        "symbols": n_sym, "bars": N_BARS, "param_sets": n_sets, "backtests": n_sets * n_sym,
        "seconds": round(t_e2e, 4), "kernel_seconds": round(t_kernel, 4),
        "backtests_per_s": round(n_sets * n_sym / t_e2e, 1),
        "bar_evals_per_s": round(bar_evals / t_e2e),
        "kernel_bar_evals_per_s": round(bar_evals / t_kernel),
        "indicators": "IndicatorPlan specs computed directly on in-memory Bars (no hub)",
    }
    if not args.no_vectorbt:
        vbt_tr, t_vbt, engine = _vectorbt(bars, sets, args.vbt_chunk or n_sym)
        rows.append([f"vectorbt ({engine}): MA.run + crosses + from_signals", t_vbt, n_sets * n_sym / t_vbt,
                     bar_evals / t_vbt])
        figures.update({
            "vectorbt_seconds": round(t_vbt, 4),
            "vectorbt_engine": engine,
            "vectorbt_bar_evals_per_s": round(bar_evals / t_vbt),
            "ratio_vs_vectorbt": round(t_vbt / t_e2e, 2),
            "kernel_ratio_vs_vectorbt": round(t_vbt / t_kernel, 2),
            "max_abs_diff_vs_vectorbt": float(np.max(np.abs(vbt_tr - ours))),
        })
    print_table(["run", "seconds", "backtests/s", "bar-evals/s"], rows,
                title=f"SMA-cross grid: {n_sets} sets x {n_sym} symbols x {N_BARS:,} bars, long-only, "
                      f"0.1% commission, full statistics, 1 thread")
    if "ratio_vs_vectorbt" in figures:
        print(f"\nratio vs vectorbt: {figures['ratio_vs_vectorbt']}x end to end, "
              f"{figures['kernel_ratio_vs_vectorbt']}x kernel only; max |total return diff| "
              f"{figures['max_abs_diff_vs_vectorbt']:.3g}")
    return figures
