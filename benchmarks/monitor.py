"""The monitor's cost: the same sweep with ``ADMF_MONITOR=0`` and ``=1``, alternately.

    python -m benchmarks monitor [--repeat N] [--symbols N] [--quick]

The sweep benchmark's row 1 workload (SMA cross, 184 sets x ``--symbols`` symbols x 2,520
daily bars, long-only, 0.1 %) on a warm LocalCluster of 2 single-threaded worker
processes, each run into a fresh storage root. The two settings alternate in ABBA order
(off, on, on, off, off, on, ...: the second run of a pair is not always the same setting;
``ADMF_MONITOR`` set in this process and in every worker before each run), ``--repeat`` runs each after one untimed run of each. Two measures of each run:
its wall time, and the CPU seconds of the cluster's processes (this one, with the
scheduler, and the workers; ``getrusage``), which other load on the machine disturbs
less. ``overhead`` is the median over the pairs of (on / off - 1) of the wall times,
``overhead_cpu`` the same of the CPU seconds, ``overhead_of_medians`` median on /
median off - 1 (target: <= 0.03), ``overhead_of_minimums`` the same of the fastest runs (on a
busy machine the least disturbed estimate). ``monitor_seconds`` is what the monitor itself
records it spent in this process (probes, task stream, the record), as a share of the
run's wall time: ``monitor_share``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time

from benchmarks._harness import print_table


def _set_env(value: str) -> None:
    os.environ["ADMF_MONITOR"] = value


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks monitor", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=9, help="timed runs of each setting (alternating); medians")
    p.add_argument("--symbols", type=int, default=100, help="symbols of the workload")
    p.add_argument("--quick", action="store_true", help="20 symbols, 3 repeats (a smoke run, not the figures)")
    args = p.parse_args(argv)
    if args.quick:
        args.symbols, args.repeat = 20, 3

    from admf_dask.storage import StorageRef
    from admf_dask.sweep import SweepConfig, run_sweep
    from benchmarks.sweep import ROOT, _cluster, _dataset, _warm

    store = _dataset("sweep-daily", 100, "2015-01-01", "2024-12-31")  # the sweep benchmark's row 1 dataset
    symbols = store.symbols()[:args.symbols]
    config = SweepConfig(strategy="sma_cross", params={"fast": {"from": 5, "to": 50, "step": 5},
                                                       "slow": {"from": 20, "to": 210, "step": 10}},
                         symbols=symbols, direction="long_only", commission=0.001)
    wall: dict[str, list[float]] = {"0": [], "1": []}
    cpu: dict[str, list[float]] = {"0": [], "1": []}
    records: list[dict] = []
    with _cluster(2) as client:
        _warm(client, store)

        def run(value: str, timed: bool) -> None:
            _set_env(value)
            client.run(_set_env, value)
            root = tempfile.mkdtemp(prefix="admf-bench-", dir=ROOT)
            try:
                c0 = _cpu() + sum(client.run(_cpu).values())
                t0 = time.perf_counter()
                result = run_sweep(config, store, StorageRef.make(root), client, echo=lambda m: None, progress=False)
                seconds = time.perf_counter() - t0
                c1 = _cpu() + sum(client.run(_cpu).values())
                if timed:
                    wall[value].append(seconds)
                    cpu[value].append(c1 - c0)
                    if value == "1":
                        run_json = StorageRef.make(root).open().read_json("runs", result.run_id, "run.json")
                        records.append({**run_json["monitor"], "findings": run_json["findings"], "seconds": seconds})
            finally:
                shutil.rmtree(root, ignore_errors=True)

        for value in ("0", "1"):
            run(value, timed=False)
        for i in range(args.repeat):
            for value in (("0", "1") if i % 2 == 0 else ("1", "0")):
                run(value, timed=True)
    pairs = [on / off - 1 for off, on in zip(wall["0"], wall["1"])]
    pairs_cpu = [on / off - 1 for off, on in zip(cpu["0"], cpu["1"])]
    off, on = statistics.median(wall["0"]), statistics.median(wall["1"])
    share = statistics.median(r["monitor_seconds"] / r["seconds"] for r in records)
    n = args.repeat
    rows = [[f"W (184 sets x {len(symbols)} symbols), ADMF_MONITOR=0 (median of {n})", off,
             statistics.median(cpu["0"])],
            [f"the same, ADMF_MONITOR=1 (median of {n})", on, statistics.median(cpu["1"])]]
    print_table(["run", "wall s", "cluster CPU s"], rows,
                title="monitor overhead: the same sweep, off and on alternately")
    print(f"wall pairs (on/off - 1): {', '.join(f'{x:+.3f}' for x in pairs)}")
    print(f"CPU pairs (on/off - 1):  {', '.join(f'{x:+.3f}' for x in pairs_cpu)}")
    fastest = min(wall["1"]) / min(wall["0"]) - 1
    print(f"overhead: wall median of pairs {statistics.median(pairs):+.2%}, of medians {on / off - 1:+.2%}, "
          f"of minimums {fastest:+.2%} ({min(wall['0']):.3f} s off, {min(wall['1']):.3f} s on); "
          f"CPU median of pairs {statistics.median(pairs_cpu):+.2%}; the monitor's own time "
          f"{share:.2%} of the wall time (target <= 3 %)")
    last = records[-1]
    print(f"the monitor's record of the last run: stages {last['stages']}; {last['tasks']['count']} tasks, "
          f"median {last['tasks']['median']} s; overhead {last['overhead']}; storage {last['storage']['requests']} "
          f"requests; findings: {[f['finding'] for f in last['findings']] or 'none'}")
    return {"overhead": round(statistics.median(pairs), 4), "overhead_of_medians": round(on / off - 1, 4),
            "overhead_cpu": round(statistics.median(pairs_cpu), 4),
            "overhead_of_minimums": round(fastest, 4), "monitor_share": round(share, 4),
            "seconds_off": round(off, 4), "seconds_on": round(on, 4), "pairs": [round(x, 4) for x in pairs],
            "pairs_cpu": [round(x, 4) for x in pairs_cpu], "symbols": len(symbols), "repeat": n,
            "findings": [f["finding"] for f in last["findings"]]}
