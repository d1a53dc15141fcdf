"""`admf report` on a 1-million-row sweep result: build seconds and file size.

The result table is synthesised (random statistics, a real sma_cross grid of ~48k sets x 20
symbols + PORTFOLIO rows = ~1M rows) and written through the real results writer
(``write_part`` + ``write_final_table``) under a run directory with a run.json, over a real
bar store of daily synthetic bars, so that the report recomputes its curves with backtest().
Usage: ``python -m benchmarks report [--symbols 20] [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks._harness import print_table


def build(d: Path, n_symbols: int, fast: range, slow: range) -> tuple[str, int]:
    from admf_dask.bars import BarStore, generate_bars
    from admf_dask.kernels.stats import STAT_NAMES
    from admf_dask.storage import StorageRef
    from admf_dask.sweep.results import PORTFOLIO, _stats_table, write_final_table, write_part

    symbols = [f"S{i:03d}" for i in range(n_symbols)]
    store = BarStore(str(d / "bars"))
    store.write([generate_bars(s, "2015-01-01", "2024-12-31", seed=i) for i, s in enumerate(symbols)])
    sets = list(itertools.product(fast, slow))
    n = len(sets)
    per = n_symbols + 1
    rng = np.random.default_rng(0)
    names = [*symbols, PORTFOLIO]
    set_id = np.repeat(np.arange(n, dtype=np.int64), per)
    params = {"fast": np.repeat([f for f, _ in sets], per).tolist(), "slow": np.repeat([s for _, s in sets],
                                                                                       per).tolist()}
    matrix = rng.normal(size=(n * per, len(STAT_NAMES)))
    table = _stats_table(set_id, pa.array(np.tile(np.array(names, dtype=object), n), pa.string()), params, matrix)
    run_id = "bench-report-1m"
    storage = StorageRef.make(str(d / "store")).child("runs", run_id).open()
    write_part(storage, table, "results/part-000000.parquet")
    rows = write_final_table(storage, {(0, n): [0]}, {})
    storage.write_json({"run_id": run_id, "kind": "sweep", "status": "complete", "bars": store.url,
                        "data_fingerprint": store.fingerprint, "symbols": symbols, "param_sets": n,
                        "config": {"strategy": "sma_cross", "params": {"fast": list(fast), "slow": list(slow)},
                                   "direction": "long_short", "cash": 10_000.0, "commission": 0.0},
                        "summary": {"status": "complete", "param_sets": n, "symbols": n_symbols,
                                    "backtests": n * n_symbols}}, "run.json")
    return run_id, rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks report")
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(args.dir or tmp)
        fast, slow = range(2, 192), range(200, 704, 2)
        run_id, rows = build(d, args.symbols, fast, slow)
        from admf_dask.reports import write_report
        from admf_dask.runs import load_run

        t0 = time.perf_counter()
        path = write_report(load_run(str(d / "store"), run_id), d / "report.html")
        seconds = time.perf_counter() - t0
        mb = path.stat().st_size / 1e6
    print_table(["rows", "build s", "MB"], [[rows, seconds, mb]], title="admf report of a 1M-row sweep")
    return {"rows": rows, "build_seconds": round(seconds, 2), "mb": round(mb, 2)}
