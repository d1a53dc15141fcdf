"""Incremental runs: the nightly sweep after new bars arrive, against recomputing it in full.

    python -m benchmarks incremental [--symbols N] [--years Y] [--days D] [--repeat R]

1. A dataset of ``--symbols`` (500) x ``--years`` (10) of daily bars, made with
   ``admf generate``'s code; the 184-set SMA-cross grid of the seed document swept over
   it on a LocalCluster of 2 single-threaded worker processes (day 1).
2. ``--days`` (5) new business days of bars for every symbol, written as one CSV with a
   symbol column and added with ``admf ingest --mode append`` (the manifest records the
   pure appends).
3. Timed, alternating, ``--repeat`` times: the sweep on the grown data into a fresh
   storage root (the full recompute), and the same sweep into a copy of day 1's root
   (incremental: it goes on from day 1's saved state and reads only the new bars).

``incremental_ratio`` = median incremental wall time / median full wall time (target
<= 0.05). ``max_abs_diff`` = the largest difference between the two results tables
over every statistic of every row (target <= 1e-12). Both runs are whole ``run_sweep``
calls (run directory, tasks, portfolio, final table); the cluster is warm.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from benchmarks._harness import print_table
from benchmarks.sweep import ROOT, _cluster, _dataset, _warm


def _grown(name: str, base, days: int):
    """A copy of ``base`` with ``days`` new business days of bars per symbol, ingested with --mode append."""
    import pandas as pd

    from admf_dask.bars import BarStore, generate_bars, ingest

    path = os.path.join(ROOT, name)
    if os.path.exists(path):
        store = BarStore(path)
        if store.exists() and store.entry(base.symbols()[0]).get("lineage"):
            return store
        shutil.rmtree(path)
    shutil.copytree(base.url, path)
    store = BarStore(path)
    last = pd.Timestamp(max(store.entry(s)["last_ns"] for s in store.symbols()), tz="UTC")
    start, end = last + pd.Timedelta(days=1), last + pd.offsets.BDay(days)
    frames = []
    for i, s in enumerate(store.symbols()):
        new = generate_bars(s, start.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d"), seed=1000 + i)
        scale = store.read_head(s, 1, start=store.entry(s)["last_ns"]).columns["close"][0] / new.columns["open"][0]
        frame = pd.DataFrame({"timestamp": pd.to_datetime(new.timestamp, utc=True), "symbol": s,
                              **{c: v * (scale if c != "volume" else 1.0) for c, v in new.columns.items()}})
        frames.append(frame)
    csv = os.path.join(tempfile.mkdtemp(dir=ROOT), "new-bars.csv")
    pd.concat(frames).to_csv(csv, index=False)
    ingest(store, [csv], mode="append")
    shutil.rmtree(os.path.dirname(csv))
    return BarStore(path)


def _sweep(client, store, root: str, config):
    from admf_dask.storage import StorageRef
    from admf_dask.sweep import run_sweep

    t0 = time.perf_counter()
    result = run_sweep(config, store, StorageRef.make(root), client, echo=lambda m: None, progress=False)
    return time.perf_counter() - t0, result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks incremental", description=__doc__.split("\n\n")[0])
    p.add_argument("--symbols", type=int, default=500)
    p.add_argument("--years", type=int, default=10)
    p.add_argument("--days", type=int, default=5, help="new business days appended to every symbol")
    p.add_argument("--repeat", type=int, default=3, help="timed full and incremental runs, alternating; medians")
    args = p.parse_args(argv)
    os.makedirs(ROOT, exist_ok=True)

    from admf_dask.sweep import SweepConfig

    end_year = 2024
    base = _dataset(f"incremental-{args.symbols}x{args.years}y", args.symbols, f"{end_year - args.years + 1}-01-01",
                    f"{end_year}-12-31")
    grown = _grown(f"incremental-{args.symbols}x{args.years}y+{args.days}d", base, args.days)
    new_bars = sum(grown.entry(s)["rows"] - base.entry(s)["rows"] for s in grown.symbols())
    config = SweepConfig(strategy="sma_cross", params={"fast": {"from": 5, "to": 50, "step": 5},
                                                         "slow": {"from": 20, "to": 210, "step": 10}},
                         direction="long_only", commission=0.001)
    work = tempfile.mkdtemp(prefix="admf-bench-incremental-", dir=ROOT)
    try:
        with _cluster(2) as client:
            _warm(client, base)
            day1 = os.path.join(work, "day1")
            t_day1, _ = _sweep(client, base, day1, config)
            full_t, inc_t = [], []
            full = inc = None
            for k in range(max(1, args.repeat)):
                t, full = _sweep(client, grown, os.path.join(work, f"full-{k}"), config)
                full_t.append(t)
                nightly = os.path.join(work, f"nightly-{k}")
                shutil.copytree(day1, nightly)
                t, inc = _sweep(client, grown, nightly, config)
                inc_t.append(t)
                if k == 0:  # the first incremental run compiled the chunk kernels on the workers: again, warm
                    shutil.rmtree(nightly)
                    shutil.copytree(day1, nightly)
                    inc_t[-1], inc = _sweep(client, grown, nightly, config)
            a, b = inc.table, full.table
            stats = [c for c in a.columns if a[c].dtype.kind == "f"]
            same_rows = list(a["symbol"]) == list(b["symbol"]) and list(a["set_id"]) == list(b["set_id"])
            diff = np.abs(a[stats].to_numpy() - b[stats].to_numpy())
            nan_same = bool(np.array_equal(np.isnan(a[stats].to_numpy()), np.isnan(b[stats].to_numpy())))
            max_abs_diff = float(np.nanmax(diff)) if same_rows and nan_same else float("inf")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    t_full, t_inc = statistics.median(full_t), statistics.median(inc_t)
    backtests = len(inc.per_symbol)
    rows = [[f"day 1: full sweep of {args.symbols} x {args.years}y daily (184 sets)", t_day1, "", ""],
            [f"night: full recompute on the grown data, median of {len(full_t)}", t_full,
             full.summary["bars_read"], backtests],
            [f"night: incremental from day 1, median of {len(inc_t)}", t_inc, inc.summary["bars_read"], backtests]]
    print_table(["run", "seconds", "bars read", "backtests"], rows,
                title=f"incremental: {args.days} new days x {args.symbols} symbols = {new_bars:,} new bars")
    ratio = t_inc / t_full
    print(f"\nincremental_ratio {ratio:.4f} (target <= 0.05); max_abs_diff {max_abs_diff:.3g} (target <= 1e-12); "
          f"incremental symbols {inc.summary['incremental_symbols']}, full {inc.summary['full_symbols']}")
    return {"incremental_ratio": round(ratio, 4), "max_abs_diff": max_abs_diff, "full_seconds": round(t_full, 3),
            "incremental_seconds": round(t_inc, 3), "full_seconds_all": [round(t, 3) for t in full_t],
            "incremental_seconds_all": [round(t, 3) for t in inc_t], "day1_seconds": round(t_day1, 3),
            "new_bars": new_bars, "bars_read_incremental": inc.summary["bars_read"],
            "bars_read_full": full.summary["bars_read"], "incremental_symbols": inc.summary["incremental_symbols"]}
