"""The sweep kernel alone, in process: bar-evaluations per CPU-second, no Dask, no storage.

``python -m benchmarks kernel [--symbols N] [--repeat R] [--direction long_only|long_short]``

Workload: the SMA-cross grid of the engine and sweep benchmarks (184 sets; fast 5..50
step 5, slow 20..210 step 10, fast < slow) on ``N`` synthetic symbols (default 20) of
2,520 daily bars, 0.1 % commission, fractional units, no stops. The indicator matrices
are built beforehand; each timed run calls the compiled kernels directly, symbol after
symbol, and is measured in CPU seconds of this process (``time.process_time``) and in
wall seconds; medians over ``R`` runs (default 7) after one warm run (the JSON also
has the best run of each, ``*_best``: on a shared machine the least disturbed), the variants
interleaved run by run (ABCD, ABCD, ...), so a busy spell of the shared machine hits
every variant alike.

* ``sweep (with equity)``: ``strategies._chunk_eq_cross``, what a sweep task runs per
  symbol: statistics, plus each set's sleeve equity added into the portfolio
  accumulator (``(184, 2520)``, reused and zeroed per run, as a container's are).
* ``stats only``: ``strategies._chunk_cross`` (``run_strategy_batch``'s kernel: the
  engine benchmark's "kernel only").
* ``bare fused loop``: signal and position only (the cross rule, the direction clip, a
  position count), no fills, no costs, no statistics: the floor a fused loop sits on.

Bar-evaluations are sets x symbols x bars. ``checksum`` pins the outputs (sha256 of the
bytes of the final run states, and of the equity accumulator), so that two commits can be
compared bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time

import numba
import numpy as np

from benchmarks._harness import print_table
from benchmarks.engine import CASH, COMMISSION, END, START, grid


@numba.njit(cache=True, nogil=True)
def bare_cross(ind, idx, direction):
    """Signal and position of every set on one symbol, nothing else: the bare fused loop."""
    m = idx.shape[0]
    n = ind.shape[1]
    held = 0
    for k in range(m):
        i0 = idx[k, 0]
        i1 = idx[k, 1]
        signal = 0
        for t in range(1, n):
            a1 = ind[i0, t]
            b1 = ind[i1, t]
            a0 = ind[i0, t - 1]
            b0 = ind[i1, t - 1]
            if a1 > b1 and a0 <= b0:
                signal = 1
            elif a1 < b1 and a0 >= b0:
                signal = -1
            target = max(signal, 0) if direction == 1 else signal
            held += target != 0
    return held


def _digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _inputs(n_symbols):
    from admf_dask.bars import generate_bars, symbol_names
    from admf_dask.strategies import prepare_batch

    batch = prepare_batch("sma_cross", grid())
    specs = {s.token: s for s in batch.plan.specs}
    out = []
    for sym in symbol_names(n_symbols):
        b = generate_bars(sym, START, END, seed=42)
        ind = np.vstack([specs[tok].compute(b.columns)["value"] for tok, _ in batch.rows])
        prices = tuple(np.ascontiguousarray(b.columns[k], dtype=np.float64) for k in ("open", "high", "low", "close"))
        out.append((ind, prices))
    return batch, out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks kernel", description=__doc__.split("\n")[0])
    p.add_argument("--symbols", type=int, default=20)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--direction", choices=("long_only", "long_short"), default="long_only")
    args = p.parse_args(argv)

    from admf_dask.kernels.state import run_state_init
    from admf_dask.kernels.strategies import LONG_ONLY, LONG_SHORT, _chunk_cross, _chunk_eq_cross

    direction = LONG_ONLY if args.direction == "long_only" else LONG_SHORT
    batch, inputs = _inputs(args.symbols)
    m = batch.idx.shape[0]
    n = inputs[0][0].shape[1]
    evals = m * n * len(inputs)
    pos = np.arange(n, dtype=np.int64)
    eq = np.zeros((m, n))
    states = [run_state_init(m, CASH) for _ in inputs]
    costs = (COMMISSION, 0.0, False, np.nan, np.nan, direction)
    sums = {}

    def with_equity():
        eq[:] = 0.0
        for st, (ind, (o, h, lo, c)) in zip(states, inputs):
            st[:] = run_state_init(m, CASH)
            _chunk_eq_cross(ind, batch.idx, batch.fparams, o, h, lo, c, 0, None, st, *costs, pos, eq)
        sums["sweep (with equity)"] = _digest(*states, eq)

    def stats_only():
        for st, (ind, (o, h, lo, c)) in zip(states, inputs):
            st[:] = run_state_init(m, CASH)
            _chunk_cross(ind, batch.idx, batch.fparams, o, h, lo, c, 0, None, st, *costs)
        sums["stats only"] = _digest(*states)

    def bare():
        sums["bare fused loop"] = str(sum(bare_cross(ind, batch.idx, direction) for ind, _ in inputs))

    variants = {"sweep (with equity)": with_equity, "stats only": stats_only, "bare fused loop": bare}
    cpu = {k: [] for k in variants}
    wall = {k: [] for k in variants}
    for fn in variants.values():  # warm: compiled or loaded from numba's cache, pages touched
        fn()
    for _ in range(args.repeat):
        for name, fn in variants.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    rows = []
    figures = {"sets": m, "symbols": len(inputs), "bars": n, "bar_evals": evals, "direction": args.direction}
    for name in variants:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        rows.append([name, c, w, evals / c / 1e6, sums[name]])
        key = name.split(" (")[0].replace(" ", "_")
        figures[f"{key}_cpu_s"] = round(c, 4)
        figures[f"{key}_meval_per_cpu_s"] = round(evals / c / 1e6, 1)
        figures[f"{key}_meval_per_cpu_s_best"] = round(evals / min(cpu[name]) / 1e6, 1)
        figures[f"{key}_checksum"] = sums[name]
    print_table(["kernel", "CPU s", "wall s", "M bar-evals / CPU-s", "checksum"], rows,
                title=f"SMA cross, {m} sets x {len(inputs)} symbols x {n:,} bars ({evals / 1e6:.0f} M bar-evals), "
                      f"{args.direction}, 0.1 % commission; medians of {args.repeat}")
    return figures
