"""Signal replay against recomputing the member strategies, on one warm LocalCluster.

    python -m benchmarks replay [--quick] [--vectors N] [--recompute-vectors N]

Workload: the engine benchmark's dataset (100 symbols x 2,520 daily bars) and its
SMA-cross sweep (184 sets, long-only, 0.1 %); the sweep's top K = 8 parameter sets
become a signal set (phase 1, timed); then 5,000 seeded random weight vectors are
replayed over it with the vote rule (phase 2, timed), on a LocalCluster of 2
single-threaded worker processes, warmed first by a tiny replay.

The peer, on the same cluster in the same run: evaluating each weight vector by
recomputing every member strategy from the bar store (read bars, compute the
indicators, derive the K target series, combine, backtest:
:func:`admf_dask.replay.recompute_ensemble`), as batched tasks. It runs on the
first ``--recompute-vectors`` of the same vectors (all of them would take hours)
and its time per vector is scaled to the full count; its rows are checked against
the replay's. ``speedup_vs_recompute`` = recompute seconds / replay seconds for the
same number of vectors (target >= 50). ``indicators_computed_in_replay`` counts
indicator kernel runs in every process during the replay (must be 0).
The signal set's size is compared with dense int8 storage (K x bars bytes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from benchmarks._harness import print_table

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".bench")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks replay", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="10 symbols, 500 vectors (a smoke run, not the figures)")
    p.add_argument("--vectors", type=int, default=5000, help="weight vectors replayed")
    p.add_argument("--recompute-vectors", type=int, default=20, help="weight vectors the recompute peer runs")
    p.add_argument("--members", type=int, default=8, help="K: configurations in the signal set")
    args = p.parse_args(argv)
    os.makedirs(ROOT, exist_ok=True)

    from admf_dask.cluster import run_tasks
    from admf_dask.kernels.stats import STAT_NAMES
    from admf_dask.replay import RULES, ReplayConfig, indicator_runs, recompute_ensemble, run_replay
    from admf_dask.signals import SignalsConfig, generate_signals
    from admf_dask.storage import StorageRef
    from admf_dask.sweep import SweepConfig, run_sweep

    from .engine import CASH, COMMISSION, END, START
    from .sweep import _cluster, _dataset

    n_symbols, n_vectors = (10, 500) if args.quick else (100, args.vectors)
    store = _dataset(f"sweep-engine-{n_symbols}", n_symbols, START, END)
    symbols = store.symbols()
    root_dir = tempfile.mkdtemp(prefix="admf-replay-", dir=ROOT)
    root = StorageRef.make(root_dir)
    rows, figures = [], {}
    try:
        with _cluster(2) as client:
            sweep = SweepConfig(strategy="sma_cross", params={"fast": {"from": 5, "to": 50, "step": 5},
                                                              "slow": {"from": 20, "to": 210, "step": 10}},
                                direction="long_only", commission=COMMISSION, cash=CASH)
            swept = run_sweep(sweep, store, root, client, echo=lambda m: None, progress=False)
            t0 = time.perf_counter()
            signal_set = generate_signals(SignalsConfig(from_run=swept.run_id, top=args.members), store, root,
                                          client, echo=lambda m: None, progress=False)
            t_signals = time.perf_counter() - t0
            k = len(signal_set.members)
            # warm the replay kernels on the workers (numba's cache) with a tiny replay
            run_replay(ReplayConfig(signals=signal_set.set_id, weights=np.eye(k).tolist()), root, client,
                       echo=lambda m: None, progress=False)

            config = ReplayConfig(signals=signal_set.set_id, rule="vote", threshold=0.5, sample=n_vectors, seed=1)
            before = indicator_runs(client)
            t0 = time.perf_counter()
            result = run_replay(config, root, client, echo=lambda m: None, progress=False)
            t_replay = time.perf_counter() - t0
            after = indicator_runs(client)
            computed = sum(n - before.get(pid, 0) for pid, n in after.items())

            n_rec = min(args.recompute_vectors, n_vectors)
            weights = np.array([[w[f"w{j}"] for j in range(k)] for w in config.weight_sets(k)[:n_rec]])
            groups = [symbols[i:i + max(1, len(symbols) // 8)] for i in range(0, len(symbols),
                                                                               max(1, len(symbols) // 8))]
            job_costs = {key: signal_set.costs[key] for key in signal_set.costs}
            before = indicator_runs(client)
            t0 = time.perf_counter()
            parts = run_tasks(client, recompute_ensemble, [store.ref] * len(groups), label="recompute",
                              progress=False,
                              extra_args=[(store.fingerprint, g, None, None, signal_set.members, weights,
                                           RULES["vote"], 0.5, 0, job_costs) for g in groups])
            t_rec = time.perf_counter() - t0
            after = indicator_runs(client)
            computed_rec = sum(n - before.get(pid, 0) for pid, n in after.items())
        recomputed = np.concatenate(parts, axis=1)  # (vectors, symbols, stats)
        mine = result.per_symbol.sort_values(["set_id", "symbol"])
        mine = mine[mine["set_id"] < n_rec][list(STAT_NAMES)].to_numpy(float).reshape(n_rec, len(symbols), -1)
        diff = np.nanmax(np.abs(mine - recomputed))
        size = signal_set.size()
        per_vector_replay = t_replay / n_vectors
        per_vector_rec = t_rec / n_rec
        bar_evals = n_vectors * sum(store.entry(s)["rows"] for s in symbols)
        rows += [
            [f"phase 1: signals of the top {k} configurations, {len(symbols)} symbols", t_signals, "", ""],
            [f"phase 2: replay {n_vectors:,} weight vectors x {len(symbols)} symbols", t_replay,
             per_vector_replay * 1e3, bar_evals / t_replay],
            [f"peer: recompute members from the bar store, {n_rec} vectors", t_rec, per_vector_rec * 1e3,
             n_rec * bar_evals / n_vectors / t_rec],
            [f"peer scaled to {n_vectors:,} vectors", per_vector_rec * n_vectors, per_vector_rec * 1e3, ""],
        ]
        figures.update(
            members=k, symbols=len(symbols), vectors=n_vectors, signals_seconds=round(t_signals, 3),
            replay_seconds=round(t_replay, 3), recompute_vectors=n_rec, recompute_seconds=round(t_rec, 3),
            speedup_vs_recompute=round(per_vector_rec / per_vector_replay, 1),
            indicators_computed_in_replay=computed, indicators_computed_in_recompute=computed_rec,
            max_abs_diff_vs_recompute=float(diff), signal_set_bytes=size["bytes"],
            dense_int8_bytes=size["dense_int8_bytes"], change_events=size["events"],
            size_ratio_vs_dense=round(size["bytes"] / size["dense_int8_bytes"], 4))
        print_table(["run", "seconds", "ms per weight vector", "bar-evals/s"], rows,
                    title="Signal replay vs recomputing the members, LocalCluster of 2 single-threaded workers")
        print(f"signal set: {size['events']:,} change events in {size['bytes']:,} bytes of Parquet; dense int8 "
              f"would be {size['dense_int8_bytes']:,} bytes ({size['bytes'] / size['dense_int8_bytes']:.1%})")
        print(f"indicators computed: {computed} in the replay, {computed_rec} in the recompute peer; "
              f"max |replay - recompute| over {n_rec} vectors: {diff:.3g}")
    finally:
        shutil.rmtree(root_dir, ignore_errors=True)
    return figures
