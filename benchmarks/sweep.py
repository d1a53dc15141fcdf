"""Distributed sweeps end to end: Parquet store -> warm LocalCluster -> committed results table.

    python -m benchmarks sweep [--quick] [--skip-scaling] [--skip-seed] [--no-vectorbt] [--repeat N]
                               [--skip-s3 | --only-s3 | --only-s3-generate]
                               [--scale-repeat N] [--scale-seconds S] [--skip-500 | --only-500]
                               [--repeat-500 N] [--vbt-chunks 10,100]

1. The engine benchmark's workload (SMA cross, 184 sets x 100 symbols x 2,520 daily
   bars, long-only, 0.1 %, fractional, full statistics) as a real sweep: bars read
   from the bar store on the workers, indicators through the hub (cold: a fresh
   cache), container tasks on a LocalCluster of 2 single-threaded worker processes
   (warmed first by a tiny sweep), results committed to storage and assembled into
   the table. vectorbt runs the same grid on the same data held in memory, in this
   process (its best: all symbols in one call). ``ratio_vs_vectorbt`` = our
   bar-evaluations/s over vectorbt's (target >= 10).
2. Scaling: a sweep of ~``--scale-seconds`` of work on 1 worker, then the same on 2
   workers, ``--scale-repeat`` times, alternating. ``scaling_efficiency`` is the median
   over those pairs of (t1 / t2) / 2 (target >= 0.9); ``scaling_efficiency_of_medians``
   is (median t1 / median t2) / 2. ``scaling_tasks_*`` are each run's task count (parts),
   ``scaling_task_calls_*`` the Dask tasks that computed them (a task may take several
   parts), ``scaling_driver_cpu_*`` / ``scaling_workers_cpu_*`` each run's CPU-seconds of
   this process (client, scheduler, nannies) and of its workers, and
   ``scaling_background_cores_*`` the cores the rest of the machine kept busy during each
   run (/proc/stat less this process and its workers): on 2 cores a pair taken beside
   other work reads low whatever the code (0.2 of a core elsewhere already costs ~0.1).
   Each cluster then runs the same sweep again, into a fresh root as well:
   ``scaling_seconds_*_again`` and ``scaling_efficiency_again`` (the median over pairs) are
   what a cluster kept between commands (``admf cluster up``) gives from its second run on,
   once each worker process has mapped the memory its containers reuse (on this VM a fresh
   process's first container spends 0.3-0.45 s touching new huge pages).
3. The seed document's rows: 1K and 10K backtests over 10-year daily bars, on 1 and
   on 2 workers (the seed quotes 60 min and 10 h on one core).
4. 500 symbols (issue 16): the same grid over 500 symbols x 2,520 daily bars.
   ``ratio_500_warm``: ``run_sweep`` on a warm LocalCluster of 2 single-threaded workers
   (median of ``--repeat-500``) against vectorbt with the bars in memory at its faster
   chunking (``--vbt-chunks``, symbols per call; each timed once after a warm-up on one
   chunk; target >= 30). ``ratio_500_cli``: ``admf sweep ... --cluster local`` from a
   fresh process (wall time of the whole command, median of ``--repeat-500`` after one
   untimed run) against the same vectorbt compute time (target >= 15). Peak RSS per
   worker (``ru_maxrss`` in each worker after the warm runs; target <= 1 GiB), and of
   the largest process of the CLI runs (driver, nannies, workers). The CLI runs keep
   what a user's would in the benchmark's own user cache (``.bench/home``: the probe
   the untimed run takes afresh and keeps); ``sweep_500_cli_fresh_probe_seconds`` are the same runs with
   ``ADMF_PROBE=fresh``, alternated with them. ``ratio_500_cli_up``: the same command
   with ``--cluster auto`` against a cluster kept by ``admf cluster up`` (started before,
   not timed; stopped after), median of ``--repeat-500`` after one untimed run.

Every timed sweep writes to a fresh storage root, so nothing is resumed or cached.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks._harness import print_table, record_digests

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".bench")
SCALE_RATE = 280e6  # bar-evaluations/s of the scaling sweep on 1 worker, end to end, 2026-12-07 (sizes it: see main)


def _dataset(name: str, n_symbols: int, start: str, end: str, freq: str = "daily"):
    from admf_dask.bars import BarStore, SyntheticSpec, generate_dataset, symbol_names

    store = BarStore(os.path.join(ROOT, name))
    spec = SyntheticSpec(start, end, freq, seed=42)
    names = symbol_names(n_symbols)
    if (not store.exists() or store.symbols() != names or store.source != {"kind": "synthetic", **spec.to_dict()}
            or _dictionary_prices(store)):
        generate_dataset(store, names, spec, progress=False)
    record_digests(BarStore(store.url))
    return BarStore(store.url)


def _dictionary_prices(store) -> bool:
    """Whether the dataset was written before bar files kept unique prices plain (2026-12-06): then it is
    written again, so that the figures are those of the files the code writes now."""
    import pyarrow.parquet as pq

    md = pq.read_metadata(store.storage.path(store.entry(store.symbols()[0])["files"][0]["path"]))
    return md.row_group(0).column(md.schema.names.index("close")).has_dictionary_page


def _timed_sweep(client, store, config):
    """Seconds of one sweep into a fresh root (no resume, no indicator cache), and its result."""
    from admf_dask.storage import StorageRef
    from admf_dask.sweep import run_sweep

    root = tempfile.mkdtemp(prefix="admf-bench-", dir=ROOT)
    try:
        t0 = time.perf_counter()
        result = run_sweep(config, store, StorageRef.make(root), client, echo=lambda m: None, progress=False)
        seconds = time.perf_counter() - t0
        result.table  # read (untimed) before the root is removed: results are read from storage lazily
        result.summary["task_calls"] = _task_calls(result)
        return seconds, result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _machine_busy() -> float:
    """CPU-seconds the whole machine has spent busy so far (/proc/stat: all but idle and iowait); 0.0 elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _ours() -> float:
    """CPU-seconds of this process and its children (the LocalCluster's workers) so far."""
    return sum(_ours_split())


def _ours_split() -> tuple[float, float]:
    """CPU-seconds so far of this process (the driver: client, scheduler, nannies) and of its children."""
    import psutil

    driver = children = 0.0
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:  # a child gone meanwhile
            continue
        if p is me:
            driver += t.user + t.system
        else:
            children += t.user + t.system
    return driver, children


def _task_calls(result) -> int:
    """The Dask tasks of a run's main stage (its monitor record): parts, or fewer when a task takes several."""
    import json

    run = json.loads(result._storage.read_bytes("run.json"))
    return int(run.get("monitor", {}).get("tasks", {}).get("count", 0))


def _cluster(n_workers: int):
    from admf_dask.cluster import connect

    return connect({"kind": "local", "n_workers": n_workers, "threads_per_worker": 1, "dashboard_address": ""},
                   echo=lambda m: None)


def _warm(client, store):
    """A small sweep cut into many tasks, so that every worker loads every kernel a sweep uses
    (the containers', and the portfolio reduce's) before anything is timed."""
    from admf_dask.sweep import SweepConfig

    _timed_sweep(client, store, SweepConfig(strategy="sma_cross", params={"fast": [5, 10], "slow": [20, 30]},
                                            direction="long_only", batch_seconds=1e-3))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller workloads (a smoke run, not the figures)")
    p.add_argument("--scale-seconds", type=float, default=30.0, help="work of the scaling sweep on 1 worker")
    p.add_argument("--scale-repeat", type=int, default=5,
                   help="runs of the scaling sweep on 1 and on 2 workers, alternating; medians")
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--skip-seed", action="store_true")
    p.add_argument("--no-vectorbt", action="store_true")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of row 1 (ours and vectorbt's); medians")
    p.add_argument("--skip-500", action="store_true", help="skip the 500-symbol rows (ratio_500_*)")
    p.add_argument("--skip-s3", action="store_true", help="skip the S3 rows (s3_over_local, generate_s3_over_local)")
    p.add_argument("--only-s3", action="store_true", help="run only the S3 rows (s3_over_local, generate_s3_over_local)")
    p.add_argument("--only-s3-generate", action="store_true",
                   help="run only the generate_s3_over_local row (--repeat alternating pairs)")
    p.add_argument("--only-500", action="store_true", help="run only the 500-symbol rows (ratio_500_*)")
    p.add_argument("--repeat-500", type=int, default=3, help="timed runs of ours in the 500-symbol rows")
    p.add_argument("--vbt-chunks", default="10,100", help="vectorbt's symbols per call to try at 500 symbols")
    args = p.parse_args(argv)
    os.makedirs(ROOT, exist_ok=True)
    if args.only_500:
        rows: list = []
        figures: dict = {}
        _rows_500(args, rows, figures)
        print_table(["run", "seconds", "backtests", "bar-evals/s"], rows, title="Sweeps of 500 symbols")
        return figures
    if args.only_s3 or args.only_s3_generate:
        rows, figures = [], {}
        _rows_s3(args, rows, figures, sweep=not args.only_s3_generate)
        print_table(["run", "seconds", "backtests", "bar-evals/s"], rows, title="S3 (moto) against local disk")
        return figures

    from admf_dask.sweep import SweepConfig

    from .engine import CASH, COMMISSION, END, N_BARS, START, _vectorbt, grid

    figures: dict = {}
    rows = []
    n_symbols = 10 if args.quick else 100
    engine_store = _dataset(f"sweep-engine-{n_symbols}", n_symbols, START, END)
    sets = grid()
    config = SweepConfig(strategy="sma_cross", params={"fast": {"from": 5, "to": 50, "step": 5},
                                                         "slow": {"from": 20, "to": 210, "step": 10}},
                         direction="long_only", commission=COMMISSION, cash=CASH)
    with _cluster(2) as client:
        _warm(client, engine_store)
        runs = [_timed_sweep(client, engine_store, config) for _ in range(max(1, args.repeat))]
    t_sweep, result = float(np.median([t for t, _ in runs])), runs[-1][1]
    bar_evals = len(sets) * n_symbols * N_BARS
    rows.append([f"1. engine workload: sweep, 2 workers (store -> hub -> tasks -> table), median of {len(runs)}",
                 t_sweep, len(result.per_symbol), bar_evals / t_sweep])
    figures.update(sweep_seconds=round(t_sweep, 3), sweep_seconds_all=[round(t, 3) for t, _ in runs],
                   sweep_bar_evals_per_s=round(bar_evals / t_sweep), sweep_tasks=result.summary["tasks"])
    if not args.no_vectorbt:
        bars = [engine_store.read(s) for s in engine_store.symbols()]
        vbt_tr, t_vbt, engine = _vectorbt(bars, sets, n_symbols, repeat=max(1, args.repeat))
        ours = result.per_symbol.sort_values(["symbol", "set_id"])["total_return"].to_numpy().reshape(n_symbols, -1)
        rows.append([f"1. vectorbt ({engine}), same data in memory, 1 process, median of {max(1, args.repeat)}",
                     t_vbt, len(sets) * n_symbols, bar_evals / t_vbt])
        figures.update(vectorbt_seconds=round(t_vbt, 3), ratio_vs_vectorbt=round(t_vbt / t_sweep, 2),
                       max_abs_diff_vs_vectorbt=float(np.max(np.abs(vbt_tr - ours))))

    if not args.skip_scaling:
        # minute bars: few, long series, so the work is in the kernel, not in task overhead
        scale_store = _dataset("sweep-scaling", 8, "2023-01-01", "2023-12-31", "minute")
        # sized by the end-to-end rate of 1 worker on minute bars, so that it is ~--scale-seconds of work there
        # (issue 5: "a sweep sized to about 30 s on 1 worker"). It was sized by 105 M bar-evals/s, with more
        # fast values for more work; the kernels since made that an 11 s sweep (3,790 sets: sma_cross keeps
        # fast < slow, so fast values past the slow ones added less than asked), where the fixed costs of each
        # run (a worker's first container, the final table) weighed 2.7 times as much. Now 79 fast values,
        # all below every slow one, and as many slow values as the work asks for.
        per_set = scale_store.entry(scale_store.symbols()[0])["rows"] * 8 / SCALE_RATE
        n_slow = max(2, int(round(args.scale_seconds / per_set / 79)))
        scale_config = SweepConfig(strategy="sma_cross", params={"fast": {"from": 5, "to": 395, "step": 5},
                                                                 "slow": {"from": 400, "to": 400 + 10 * (n_slow - 1),
                                                                          "step": 10}},
                                   direction="long_only", commission=COMMISSION)
        # 1 and 2 workers alternate, so that a slow spell of this shared machine hits both
        times: dict[int, list[float]] = {1: [], 2: []}
        tasks: dict[int, list[int]] = {1: [], 2: []}  # the layout of each run: the same sweep, the same layout?
        # cores the rest of the machine kept busy during each run: a 2-worker run on 2 cores loses what they take,
        # a 1-worker run mostly does not, so a pair taken beside other work reads low whatever the code
        background: dict[int, list[float]] = {1: [], 2: []}
        calls: dict[int, list[int]] = {1: [], 2: []}  # the Dask tasks that computed them
        cpu: dict[int, list[tuple[float, float]]] = {1: [], 2: []}  # CPU-s of the driver and of the workers
        again: dict[int, list[float]] = {1: [], 2: []}  # the same sweep on the same cluster, right after
        for _ in range(max(1, args.scale_repeat)):
            for workers in (1, 2):
                with _cluster(workers) as client:
                    _warm(client, scale_store)
                    busy, (driver, children) = _machine_busy(), _ours_split()
                    t, res = _timed_sweep(client, scale_store, scale_config)
                    driver_end, children_end = _ours_split()
                    others = (_machine_busy() - busy) - (driver_end - driver) - (children_end - children)
                    again[workers].append(_timed_sweep(client, scale_store, scale_config)[0])
                times[workers].append(t)
                tasks[workers].append(res.summary["tasks"])
                calls[workers].append(res.summary.get("task_calls", 0))
                cpu[workers].append((driver_end - driver, children_end - children))
                background[workers].append(max(0.0, others) / t)
        med = {w: float(np.median(ts)) for w, ts in times.items()}
        if not 0.6 * args.scale_seconds <= med[1] <= 1.5 * args.scale_seconds:
            print(f"note: the scaling sweep took {med[1]:.1f} s on 1 worker, not ~{args.scale_seconds:g} s: "
                  f"set SCALE_RATE in benchmarks/sweep.py to this machine's rate "
                  f"(~{res.summary['bar_evaluations'] / med[1] / 1e6:.0f} M bar-evals/s)")
        for workers in (1, 2):
            rows.append([f"2. scaling sweep, {workers} worker(s), median of {len(times[workers])}", med[workers],
                         len(res.per_symbol), res.summary["bar_evaluations"] / med[workers]])
        # each 2-worker run is compared with the 1-worker run just before it (the pair shares
        # the machine's state); the figure is the median over pairs
        pairs = [a / b / 2 for a, b in zip(times[1], times[2])]
        figures.update(scaling_seconds_1=round(med[1], 3), scaling_seconds_2=round(med[2], 3),
                       scaling_seconds_1_all=[round(t, 3) for t in times[1]],
                       scaling_seconds_2_all=[round(t, 3) for t in times[2]],
                       scaling_tasks_1=tasks[1], scaling_tasks_2=tasks[2],
                       scaling_task_calls_1=calls[1], scaling_task_calls_2=calls[2],
                       scaling_driver_cpu_1=[round(d, 3) for d, _ in cpu[1]],
                       scaling_driver_cpu_2=[round(d, 3) for d, _ in cpu[2]],
                       scaling_workers_cpu_1=[round(w, 3) for _, w in cpu[1]],
                       scaling_workers_cpu_2=[round(w, 3) for _, w in cpu[2]],
                       scaling_background_cores_1=[round(b, 2) for b in background[1]],
                       scaling_background_cores_2=[round(b, 2) for b in background[2]],
                       scaling_efficiency=round(float(np.median(pairs)), 3),
                       scaling_efficiency_per_pair=[round(e, 3) for e in pairs],
                       scaling_efficiency_of_medians=round(med[1] / med[2] / 2, 3),
                       scaling_seconds_1_again=[round(t, 3) for t in again[1]],
                       scaling_seconds_2_again=[round(t, 3) for t in again[2]],
                       scaling_efficiency_again=round(float(np.median([a / b / 2 for a, b in zip(again[1], again[2])])),
                                                      3))

    if not args.skip_seed:
        seed_store = _dataset("sweep-seed", 10, "2015-01-01", "2024-12-31")
        seed_grids = {
            "1K backtests": {"fast": {"from": 5, "to": 50, "step": 5}, "slow": {"from": 60, "to": 150, "step": 10}},
            "10K backtests": {"fast": {"from": 2, "to": 101, "step": 1}, "slow": {"from": 110, "to": 200,
                                                                                "step": 10}},
        }
        for label, params in seed_grids.items():
            cfg = SweepConfig(strategy="sma_cross", params=params, direction="long_only", commission=COMMISSION)
            for workers in (1, 2):
                with _cluster(workers) as client:
                    _warm(client, seed_store)
                    t, res = _timed_sweep(client, seed_store, cfg)
                rows.append([f"3. seed row: {label} ({len(res.per_symbol):,}) over 10 years daily, {workers} worker(s)",
                             t, len(res.per_symbol), res.summary["bar_evaluations"] / t])
                figures[f"seed_{label.split()[0]}_{workers}w_seconds"] = round(t, 3)
    if not args.skip_500:
        _rows_500(args, rows, figures)
    if not args.skip_s3:
        _rows_s3(args, rows, figures)
    print_table(["run", "seconds", "backtests", "bar-evals/s"], rows,
                title="Sweeps end to end on LocalClusters of single-threaded worker processes")
    return figures


def _rows_s3(args, rows: list, figures: dict, sweep: bool = True) -> None:
    """Rows s3_over_local and generate_s3_over_local (benchmarks/_s3.py)."""
    from admf_dask.sweep import SweepConfig

    from ._s3 import rows as s3_rows
    from .engine import CASH, COMMISSION, END, START

    config = SweepConfig(strategy="sma_cross", params={"fast": {"from": 5, "to": 50, "step": 5},
                                                         "slow": {"from": 20, "to": 210, "step": 10}},
                         direction="long_only", commission=COMMISSION, cash=CASH)
    s3_rows(args, rows, figures, root=ROOT, config=config, cluster=_cluster, warm=_warm,
            n_symbols=10 if args.quick else 100, start=START, end=END, repeat=max(1, min(args.repeat, 3)),
            generate_repeat=max(1, args.repeat), sweep=sweep)


def _worker_peak_mb() -> float:
    """Peak RSS of this process in MB (run in each worker with client.run)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rows_500(args, rows: list, figures: dict) -> None:
    """Rows 4 (issue 16): W x 500 symbols on a warm cluster and from the shell, against vectorbt."""
    from admf_dask.sweep import SweepConfig

    from .engine import CASH, COMMISSION, END, N_BARS, START, _vectorbt, grid

    n_symbols = 50 if args.quick else 500
    store = _dataset(f"sweep-500-{n_symbols}", n_symbols, START, END)
    sets = grid()
    bar_evals = len(sets) * n_symbols * N_BARS
    config = SweepConfig(strategy="sma_cross", params={"fast": {"from": 5, "to": 50, "step": 5},
                                                         "slow": {"from": 20, "to": 210, "step": 10}},
                         direction="long_only", commission=COMMISSION, cash=CASH)
    repeat = max(1, args.repeat_500)

    # from the shell first: RUSAGE_CHILDREN then covers only these commands' process trees
    cmd = [sys.executable, "-m", "admf_dask.cli", "-q", "sweep", store.url, "-s", "sma_cross",
           "-p", "fast=5:50:5", "-p", "slow=20:210:10", "--direction", "long_only",
           "--commission", str(COMMISSION), "--cash", str(CASH), "--top", "1"]
    env = {**os.environ, "ADMF_CACHE_DIR": os.path.join(ROOT, "home")}  # kept probes, the kept cluster

    def shell(cluster: str, **extra: str) -> float:
        root = tempfile.mkdtemp(prefix="admf-bench-cli-", dir=ROOT)
        try:
            t0 = time.perf_counter()
            subprocess.run([*cmd, "--cluster", cluster, "--storage", root], check=True, stdout=subprocess.DEVNULL,
                           env={**env, **extra})
            return time.perf_counter() - t0
        finally:
            shutil.rmtree(root, ignore_errors=True)

    cli_times, fresh_times = [], []
    for i in range(repeat + 1):
        # the first run is untimed (page cache, numba's cache files) and probes afresh: the timed runs
        # plan from this session's probe, not from one an earlier invocation kept on a busier machine
        t = shell("local", **({} if i else {"ADMF_PROBE": "fresh"}))
        if i:
            cli_times.append(t)
            fresh_times.append(shell("local", ADMF_PROBE="fresh"))
    up_times = []
    admf = [sys.executable, "-m", "admf_dask.cli", "-q", "cluster"]
    subprocess.run([*admf, "up", "--dashboard-address", ""], check=True, stdout=subprocess.DEVNULL, env=env)
    try:
        up_times = [shell("auto") for _ in range(repeat + 1)][1:]
    finally:
        subprocess.run([*admf, "down"], check=True, stdout=subprocess.DEVNULL, env=env)
    cli_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    t_cli = float(np.median(cli_times))

    with _cluster(2) as client:
        _warm(client, store)
        runs = [_timed_sweep(client, store, config) for _ in range(repeat)]
        worker_peaks = client.run(_worker_peak_mb)
    t_warm, result = float(np.median([t for t, _ in runs])), runs[-1][1]
    rows.append([f"4. W x {n_symbols} symbols: run_sweep, warm 2-worker cluster, median of {repeat}", t_warm,
                 len(result.per_symbol), bar_evals / t_warm])
    rows.append([f"4. W x {n_symbols} symbols: `admf sweep --cluster local`, fresh process, median of {repeat}",
                 t_cli, len(result.per_symbol), bar_evals / t_cli])
    t_fresh, t_up = float(np.median(fresh_times)), float(np.median(up_times))
    rows.append([f"4. the same with ADMF_PROBE=fresh (a probe task each run), median of {repeat}",
                 t_fresh, len(result.per_symbol), bar_evals / t_fresh])
    label = f"4. W x {n_symbols} symbols: `admf sweep --cluster auto`, kept cluster (`admf cluster up`), median of {repeat}"
    rows.append([label, t_up, len(result.per_symbol), bar_evals / t_up])
    figures.update(sweep_500_warm_seconds=round(t_warm, 3), sweep_500_warm_seconds_all=[round(t, 3) for t, _ in runs],
                   sweep_500_cli_seconds=round(t_cli, 3), sweep_500_cli_seconds_all=[round(t, 3) for t in cli_times],
                   sweep_500_cli_fresh_probe_seconds=round(t_fresh, 3),
                   sweep_500_cli_fresh_probe_seconds_all=[round(t, 3) for t in fresh_times],
                   sweep_500_cli_up_seconds=round(t_up, 3), sweep_500_cli_up_seconds_all=[round(t, 3) for t in up_times],
                   sweep_500_tasks=result.summary["tasks"],
                   peak_rss_mb_per_worker=sorted(round(v) for v in worker_peaks.values()),
                   peak_rss_mb_max_process_cli=round(cli_peak_mb))
    if args.no_vectorbt:
        return
    bars = [store.read(s) for s in store.symbols()]
    ours = result.per_symbol.sort_values(["symbol", "set_id"])["total_return"].to_numpy().reshape(n_symbols, -1)
    vbt: dict[int, float] = {}
    for chunk in (int(c) for c in args.vbt_chunks.split(",")):
        vbt_tr, vbt[chunk], engine = _vectorbt(bars, sets, chunk, repeat=1, warm_all=False)
        rows.append([f"4. vectorbt ({engine}), {n_symbols} symbols in memory, {chunk} per call", vbt[chunk],
                     len(sets) * n_symbols, bar_evals / vbt[chunk]])
        figures[f"vectorbt_500_seconds_chunk_{chunk}"] = round(vbt[chunk], 3)
        figures["max_abs_diff_500_vs_vectorbt"] = max(figures.get("max_abs_diff_500_vs_vectorbt", 0.0),
                                                      float(np.max(np.abs(vbt_tr - ours))))
    t_vbt = min(vbt.values())
    figures.update(vectorbt_500_seconds=round(t_vbt, 3), ratio_500_warm=round(t_vbt / t_warm, 2),
                   ratio_500_cli=round(t_vbt / t_cli, 2), ratio_500_cli_fresh_probe=round(t_vbt / t_fresh, 2),
                   ratio_500_cli_up=round(t_vbt / t_up, 2))
