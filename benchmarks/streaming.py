"""Out of core along time: memory flat in history length, chunked speed, and data larger than the cluster.

    python -m benchmarks streaming [--quick] [--skip-peer] [--symbols N] [--years Y]

All runs are real sweeps (bars read from the bar store on the workers, results
committed to storage) on a LocalCluster of 2 single-threaded worker processes with
``memory_limit="1GiB"`` each, unless said otherwise. Every worker's resident memory
is sampled every 50 ms from this process (psutil); after each run the workers' logs
are searched for pauses ("Pausing worker") and the worker processes for restarts
(a changed pid), and a killed worker fails the run.

1. Memory flat in history length: one symbol of generated minute bars (6.5-hour
   sessions) over 2, 8 and 32 years, an SMA-cross grid of 100 unique windows
   (fast 2..20 step 2, slow 25..470 step 5: 900 sets), the default memory budget.
   ``peak_rss_growth`` = the highest worker peak at 32 years / that at 2 years
   (target <= 1.15).
2. ``throughput_ratio_vs_whole``: the 2-year case with a budget that holds it whole
   (today's path) against a budget that reads it in ~16 chunks; bar-evaluations per
   second chunked / whole, median of 3 each (target >= 0.9).
3. The peer at the same memory cap: vectorbt on the 32-year case with the same grid,
   in a subprocess whose address space is capped at the cluster's total memory (2 GiB,
   ``resource.setrlimit(RLIMIT_AS)``): whether it completes, and its error if not.
4. Larger than the cluster (skipped with ``--quick``): 100 symbols x 20 years of
   minute bars (generated once under .bench/), a 15-set SMA cross (fast 10:50:10,
   slow 100:300:100), 2 workers of 1 GiB: wall time, bar-evaluations/s, each worker's
   peak RSS, ``big_data_completed``.
5. Driver memory: daily sweeps of 500 symbols x 2 years producing 0.5 and 2 million
   result rows, each in a fresh process (the driver: client, scheduler and the final
   table's assembly); ``driver_rss_ratio`` = peak RSS at 2M / at 0.5M (target <= 1.2).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks._harness import print_table, record_digests

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".bench")
GIB = 1 << 30
LOCAL = {"kind": "local", "n_workers": 2, "threads_per_worker": 1, "memory_limit": "1GiB",
         "dashboard_address": ""}
GRID_100 = {"fast": {"from": 2, "to": 20, "step": 2}, "slow": {"from": 25, "to": 470, "step": 5}}
GRID_15 = {"fast": {"from": 10, "to": 50, "step": 10}, "slow": {"from": 100, "to": 300, "step": 100}}


def _dataset(name: str, symbols: list[str], start: str, end: str, freq: str):
    from admf_dask.bars import BarStore, SyntheticSpec, generate_dataset

    store = BarStore(os.path.join(ROOT, name))
    spec = SyntheticSpec(start, end, freq, seed=42)
    if not store.exists() or store.symbols() != sorted(symbols) or store.source != {"kind": "synthetic",
                                                                                    **spec.to_dict()}:
        from admf_dask.cluster import connect

        with connect({**LOCAL, "memory_limit": "4GiB"}, echo=lambda m: None) as client:
            generate_dataset(store, symbols, spec, client=client, progress=False)
    record_digests(BarStore(store.url))
    return BarStore(store.url)


class Watch:
    """Peak RSS of every worker process, sampled every ``interval`` s from here, and their pauses and restarts."""

    def __init__(self, client, interval: float = 0.05) -> None:
        import psutil

        self.client = client
        self.pids = client.run(os.getpid)  # worker address -> pid
        self.procs = {addr: psutil.Process(pid) for addr, pid in self.pids.items()}
        self.peak = {addr: 0 for addr in self.pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            for addr, proc in self.procs.items():
                try:
                    self.peak[addr] = max(self.peak[addr], proc.memory_info().rss)
                except Exception:  # a worker that died: counted as a restart below
                    pass
            self._stop.wait(interval)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        now = self.client.run(os.getpid)
        restarts = sum(1 for a, pid in self.pids.items() if now.get(a) != pid) + max(0, len(self.pids) - len(now))
        logs = self.client.get_worker_logs()
        pauses = sum(1 for lines in logs.values() for _, line in lines if "Pausing worker" in line)
        return {"peak_rss_mb": {a: round(v / 2**20) for a, v in self.peak.items()},
                "max_peak_mb": round(max(self.peak.values(), default=0) / 2**20), "restarts": restarts,
                "pauses": pauses}


class _Rows(list):
    """The table's rows, each also printed to stderr as it is measured (a long run shows its progress)."""

    def append(self, row) -> None:
        super().append(row)
        print("  ".join(str(round(v, 3) if isinstance(v, float) else v) for v in row), file=sys.stderr, flush=True)


def _sweep(store, params, budget=None):
    """One sweep into a fresh root, on a fresh cluster (a clean slate: no memory left over from
    the last run); (seconds, result, watch figures)."""
    from admf_dask.cluster import connect
    from admf_dask.storage import StorageRef
    from admf_dask.sweep import SweepConfig, run_sweep

    config = SweepConfig(strategy="sma_cross", params=params, direction="long_only", commission=0.001,
                         memory_budget=budget, max_backtests=10**9)
    root = tempfile.mkdtemp(prefix="admf-stream-", dir=ROOT)
    lines = []
    with connect(LOCAL, echo=lambda m: None) as client:
        watch = Watch(client)
        try:
            t0 = time.perf_counter()
            result = run_sweep(config, store, StorageRef.make(root), client, echo=lines.append, progress=False)
            seconds = time.perf_counter() - t0
        finally:
            figures = watch.stop()
            shutil.rmtree(root, ignore_errors=True)
    figures["estimate"] = next((line for line in lines if "per task" in line), "")
    figures["chunks"] = next((line.strip() for line in lines if "read in chunks" in line), "held whole")
    return seconds, result, figures


def _flat_memory(rows: list, out: dict) -> None:
    peaks = {}
    for years in (2, 8, 32):
        store = _dataset(f"stream-1x{years}y-minute", ["SYM0001"], "1990-01-01",
                         f"{1989 + years}-12-31", "minute")
        seconds, result, fig = _sweep(store, GRID_100)
        evals = result.summary["bar_evaluations"]
        peaks[years] = fig["max_peak_mb"]
        rows.append([f"1. {years} y of minute bars, 1 symbol, 900 sets", seconds, evals / seconds,
                     fig["max_peak_mb"], fig["pauses"], fig["restarts"], fig["chunks"]])
        out.setdefault("flat", {})[years] = {"seconds": round(seconds, 2), "bar_evals_per_s": round(evals / seconds),
                                             **{k: fig[k] for k in ("peak_rss_mb", "pauses", "restarts")}}
        out["no_pause_or_restart"] = out.get("no_pause_or_restart", True) and not (fig["pauses"] or fig["restarts"])
    out["peak_rss_growth"] = round(peaks[32] / peaks[2], 3)


def _throughput(rows: list, out: dict, repeat: int) -> None:
    import statistics

    store = _dataset("stream-1x2y-minute", ["SYM0001"], "1990-01-01", "1991-12-31", "minute")
    n = store.rows_in_range("SYM0001")
    rates = {"whole": [], "chunked": []}
    # 16 chunks: the budget for n / 16 bars of the 100 indicator rows and one 900-set accumulator window
    chunk_budget = int(n / 16 * (200 + 8 * 100 + 8 * 900))
    for _ in range(repeat):
        for name, budget in (("whole", "900MiB"), ("chunked", chunk_budget)):
            seconds, result, fig = _sweep(store, GRID_100, budget)
            rates[name].append(result.summary["bar_evaluations"] / seconds)
            if _ == 0:
                rows.append([f"2. 2 y minute, {name} ({fig['chunks']})", seconds,
                             result.summary["bar_evaluations"] / seconds, fig["max_peak_mb"], fig["pauses"],
                             fig["restarts"], fig["estimate"][-60:]])
    whole, chunked = statistics.median(rates["whole"]), statistics.median(rates["chunked"])
    out["throughput_ratio_vs_whole"] = round(chunked / whole, 3)
    out["throughput"] = {"whole_bar_evals_per_s": round(whole), "chunked_bar_evals_per_s": round(chunked)}


_PEER = r'''
import json, resource, sys, time
cap = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
out = {"completed": False}
try:
    import numpy as np, pandas as pd
    import vectorbt as vbt
    from admf_dask.bars import BarStore
    bars = BarStore(sys.argv[2]).read("SYM0001")
    close = pd.Series(bars.close, index=pd.DatetimeIndex(bars.timestamp.view("datetime64[ns]")))
    fast = [f for f in range(2, 21, 2) for s in range(25, 471, 5)]
    slow = [s for f in range(2, 21, 2) for s in range(25, 471, 5)]
    t0 = time.perf_counter()
    fma = vbt.MA.run(close, fast, short_name="fast")
    sma = vbt.MA.run(close, slow, short_name="slow")
    entries = fma.ma_crossed_above(sma)
    exits = fma.ma_crossed_below(sma)
    pf = vbt.Portfolio.from_signals(close, entries, exits, fees=0.001, init_cash=10_000, freq="1min")
    pf.total_return()
    out = {"completed": True, "seconds": time.perf_counter() - t0}
except BaseException as exc:
    out = {"completed": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
print(json.dumps(out))
'''


def _peer(rows: list, out: dict) -> None:
    store = _dataset("stream-1x32y-minute", ["SYM0001"], "1990-01-01", "2021-12-31", "minute")
    cap = 2 * GIB
    proc = subprocess.run([sys.executable, "-c", _PEER, str(cap), store.url], capture_output=True, text=True,
                          timeout=3600)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        result = {"completed": False, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    out["vectorbt_completed"] = bool(result.get("completed"))
    out["vectorbt_error"] = result.get("error")
    rows.append(["3. vectorbt, 32 y minute, 900 sets, address space capped at 2 GiB", result.get("seconds", 0.0),
                 0.0, 0, 0, 0, "completed" if result.get("completed") else f"failed: {result.get('error')}"])


def _big(rows: list, out: dict, n_symbols: int, years: int) -> None:
    from admf_dask.bars import symbol_names

    store = _dataset(f"stream-{n_symbols}x{years}y-minute", symbol_names(n_symbols), "2000-01-01",
                     f"{1999 + years}-12-31", "minute")
    total = sum(store.rows_in_range(s) for s in store.symbols())
    out["big_data"] = {"symbols": n_symbols, "years": years, "bars": total,
                       "gib_in_memory": round(total * 48 / GIB, 2)}
    try:
        seconds, result, fig = _sweep(store, GRID_15)
        evals = result.summary["bar_evaluations"]
        ok = not (fig["pauses"] or fig["restarts"])
        out["big_data"].update({"seconds": round(seconds, 1), "bar_evals_per_s": round(evals / seconds),
                                "peak_rss_mb": fig["peak_rss_mb"], "pauses": fig["pauses"],
                                "restarts": fig["restarts"], "estimate": fig["estimate"]})
        out["big_data_completed"] = ok
        rows.append([f"4. {n_symbols} symbols x {years} y minute ({total / 1e6:.0f} M bars, "
                     f"{total * 48 / GIB:.1f} GiB), 15 sets", seconds, evals / seconds, fig["max_peak_mb"],
                     fig["pauses"], fig["restarts"], fig["chunks"]])
    except Exception as exc:  # noqa: BLE001 - the figure is whether it completes
        out["big_data_completed"] = False
        out["big_data"]["error"] = f"{type(exc).__name__}: {exc}"[:300]
        rows.append([f"4. {n_symbols} symbols x {years} y minute", 0.0, 0.0, 0, 0, 0, f"failed: {exc}"[:80]])


_DRIVER = r'''
import json, os, resource, sys, tempfile, time
from admf_dask.bars import BarStore
from admf_dask.cluster import connect
from admf_dask.storage import StorageRef
from admf_dask.sweep import SweepConfig, run_sweep
store = BarStore(sys.argv[1])
fast_to = int(sys.argv[2])
config = SweepConfig(strategy="sma_cross", params={"fast": {"from": 2, "to": fast_to, "step": 1},
                     "slow": {"from": fast_to + 1, "to": fast_to + 40, "step": 1}}, max_backtests=10**9)
with connect({"kind": "local", "n_workers": 2, "memory_limit": "1GiB", "dashboard_address": ""},
             echo=lambda m: None) as client:
    t0 = time.perf_counter()
    result = run_sweep(config, store, StorageRef.make(tempfile.mkdtemp(dir=sys.argv[3])), client,
                       echo=lambda m: None, progress=False)
    seconds = time.perf_counter() - t0
    top = result.top(5)
rows = result.summary["backtests"] + result.summary["param_sets"]
print(json.dumps({"rows": rows, "seconds": seconds,
                  "driver_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def _driver(rows: list, out: dict) -> None:
    from admf_dask.bars import symbol_names

    store = _dataset("stream-500x2y-daily", symbol_names(500), "2020-01-01", "2021-12-31", "daily")
    peaks = {}
    tmp = tempfile.mkdtemp(prefix="admf-driver-", dir=ROOT)
    try:
        # fast 2..F, slow F+1..F+40 -> (F - 1) * 40 sets: F = 26 -> 960 sets (0.48 M rows), F = 101 -> 4,000 (2.0 M)
        for label, fast_to in (("0.5M", 26), ("2M", 101)):
            proc = subprocess.run([sys.executable, "-c", _DRIVER, store.url, str(fast_to), tmp], capture_output=True,
                                  text=True, timeout=3600)
            if proc.returncode:
                raise RuntimeError(proc.stderr.strip().splitlines()[-1])
            fig = json.loads(proc.stdout.strip().splitlines()[-1])
            peaks[label] = fig["driver_peak_mb"]
            rows.append([f"5. daily sweep, {fig['rows']:,} result rows: driver peak RSS", fig["seconds"], 0.0,
                         round(fig["driver_peak_mb"]), 0, 0, ""])
            out.setdefault("driver", {})[label] = {"rows": fig["rows"], "peak_mb": round(fig["driver_peak_mb"])}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["driver_rss_ratio"] = round(peaks["2M"] / peaks["0.5M"], 3)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks streaming", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip item 4 (100 symbols x 20 years)")
    parser.add_argument("--skip-peer", action="store_true", help="skip item 3 (vectorbt under a memory cap)")
    parser.add_argument("--symbols", type=int, default=100, help="item 4's symbols (default 100)")
    parser.add_argument("--years", type=int, default=20, help="item 4's years (default 20)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side of item 2 (median)")
    args = parser.parse_args(argv)
    os.makedirs(ROOT, exist_ok=True)
    rows: list = _Rows()
    out: dict = {}
    _flat_memory(rows, out)
    _throughput(rows, out, args.repeat)
    if not args.quick:
        _big(rows, out, args.symbols, args.years)
    if not args.skip_peer:
        _peer(rows, out)
    _driver(rows, out)
    print_table(["run", "seconds", "bar-evals/s", "max worker peak MB", "pauses", "restarts", "note"], rows,
                title="streaming: LocalCluster of 2 workers x 1 GiB")
    figures = {k: out.get(k) for k in ("peak_rss_growth", "throughput_ratio_vs_whole", "vectorbt_completed",
                                        "big_data_completed", "driver_rss_ratio")}
    return {**figures, "details": {k: v for k, v in out.items() if k not in figures}}
