"""Task layout: how a sweep is cut into container tasks, sized from a probe of the kernel."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from ..bars import BarStore
from ..kernels.stats import STAT_NAMES

MAX_TASKS = 20_000  # a bigger graph stalls the scheduler; batches grow instead
_ACC_BYTES = 64 << 20  # cap on a task's portfolio accumulators (sets x union timeline x 8 bytes)
_MIN_TASK_SECONDS = 0.01


def _layout(n_sets: int, symbols: list[str], bars_per_symbol: dict[str, int], seconds_per_bar: float,
            batch_seconds: float, threads: int, timeline_len: int, load_seconds: float = 0.0
            ) -> list[tuple[tuple[str, ...], int, int]]:
    """Cut the sweep into (symbols, lo, hi) containers of about the target work each.

    Every container uses the same parameter-set ranges, so the portfolio partials of
    one range (one per symbol group) merge directly. Two shapes are candidates, and
    the one with the smaller estimated overhead (:func:`_overhead`) wins:

    * *narrow*: ranges as long as the target work of the longest symbol allows, the
      symbols of a range then grouped up to the target work. Few ranges, so each
      symbol's input is loaded by one task; many groups, so many partial portfolio
      accumulators (sets x timeline each). Best for few parameter sets.
    * *wide*: the fewest symbol groups such that one set over a group fits the
      target, and ranges cut to the target. One accumulator per range and group,
      but every range needs every symbol's input (shared between tasks). Best for
      many parameter sets, where the narrow shape writes gigabytes of accumulators.

    A range's accumulators fit ``_ACC_BYTES`` in both. The last ranges are then
    halved (:func:`_halve_tail`).
    """
    total = seconds_per_bar * n_sets * sum(bars_per_symbol.values())
    # Enough tasks to keep every thread busy, but none under _MIN_TASK_SECONDS unless
    # batch_seconds itself asks for less (tests do, to get many tasks from little work).
    target = min(batch_seconds, max(_MIN_TASK_SECONDS, total / (4 * max(threads, 1))))
    max_step = max(1, _ACC_BYTES // (8 * max(timeline_len, 1)))
    shapes = [_narrow(n_sets, symbols, bars_per_symbol, seconds_per_bar, target, max_step),
              _wide(n_sets, symbols, bars_per_symbol, seconds_per_bar, target, max_step)]
    best = min(shapes, key=lambda parts: _overhead(parts, len(symbols), timeline_len, load_seconds))
    return _halve_tail(best, threads)

def _halve_tail(parts: list[tuple[tuple[str, ...], int, int]], threads: int) -> list[tuple[tuple[str, ...], int, int]]:
    """Halve the last ``2 x threads`` set ranges, so that the sweep ends in small tasks.

    Tasks run about in submission order; when the last ones are as big as the rest,
    one worker can sit idle for most of a task's time while another finishes. Only
    when the sweep has at least ``8 x threads`` ranges: a short sweep is all tail.
    """
    ranges = sorted({(lo, hi) for _, lo, hi in parts})
    if len(ranges) < 8 * max(threads, 1):
        return parts
    tail = {r for r in ranges[-2 * max(threads, 1):] if r[1] - r[0] >= 2}
    out: list[tuple[tuple[str, ...], int, int]] = []
    for group, lo, hi in parts:
        if (lo, hi) in tail:
            mid = (lo + hi) // 2
            out += [(group, lo, mid), (group, mid, hi)]
        else:
            out.append((group, lo, hi))
    return out if len(out) <= MAX_TASKS else parts

def _narrow(n_sets: int, symbols: list[str], bars_per_symbol: dict[str, int], spb: float, target: float,
            max_step: int) -> list[tuple[tuple[str, ...], int, int]]:
    longest = max(bars_per_symbol.values(), default=1)
    while True:
        step = min(max(1, int(target / max(spb * longest, 1e-12))), n_sets, max_step)
        parts: list[tuple[tuple[str, ...], int, int]] = []
        for lo in range(0, n_sets, step):
            hi = min(lo + step, n_sets)
            group: list[str] = []
            work = 0.0
            for s in symbols:
                group.append(s)
                work += spb * bars_per_symbol[s] * (hi - lo)
                if work >= target:
                    parts.append((tuple(group), lo, hi))
                    group, work = [], 0.0
            if group:
                parts.append((tuple(group), lo, hi))
        if len(parts) <= MAX_TASKS:
            return parts
        target *= 2 * len(parts) / MAX_TASKS

def _wide(n_sets: int, symbols: list[str], bars_per_symbol: dict[str, int], spb: float, target: float,
          max_step: int) -> list[tuple[tuple[str, ...], int, int]]:
    while True:
        groups: list[tuple[str, ...]] = []
        group: list[str] = []
        work = 0.0
        for s in symbols:  # the fewest groups in which one parameter set fits the target
            if group and work + spb * bars_per_symbol[s] > target:
                groups.append(tuple(group))
                group, work = [], 0.0
            group.append(s)
            work += spb * bars_per_symbol[s]
        if group:
            groups.append(tuple(group))
        heaviest = max(sum(bars_per_symbol[s] for s in g) for g in groups)
        step = min(max(1, int(target / max(spb * heaviest, 1e-12))), n_sets, max_step)
        parts = [(g, lo, min(lo + step, n_sets)) for lo in range(0, n_sets, step) for g in groups]
        if len(parts) <= MAX_TASKS:
            return parts
        target *= 2 * len(parts) / MAX_TASKS

_ACC_SECONDS_PER_BYTE = 8e-9  # write + read back + rebase + merge of an npz accumulator (measured: 60 MB ~0.5 s)
_TASK_SECONDS = 0.005  # scheduling, the rows table and the commit of one task

def _overhead(parts: list[tuple[tuple[str, ...], int, int]], n_symbols: int, timeline_len: int,
              load_seconds: float) -> float:
    """Estimated seconds a layout spends beside the kernel: accumulators, input loads, tasks.

    An input that several tasks need is shared (a task of its own, then moved between
    workers): counted as two loads.
    """
    acc_bytes = sum((hi - lo) * timeline_len * 8 for _, lo, hi in parts)
    ranges = len({(lo, hi) for _, lo, hi in parts})
    loads = n_symbols * load_seconds * (2 if ranges > 1 else 1)
    return acc_bytes * _ACC_SECONDS_PER_BYTE + loads + len(parts) * _TASK_SECONDS

_PROBE_SETS = 64
_PROBE_BAR_EVALS = 3_000_000  # per timed probe run: ~25 ms

def _probe(config: Any, data: Any, sample: list[dict]) -> float:
    """Seconds per bar-evaluation of the containers' kernel work, measured here on one symbol's input.

    ``data`` holds what a container gets (for a sweep, the sample's indicators: they are
    built once per symbol by the hub, not per set). Only the kernel call is timed, on
    accumulators allocated and touched beforehand (containers reuse theirs), best of
    two: timing the indicators and fresh accumulators too made the estimate 2-3x the
    containers' real cost, and their tasks a third of ``batch_seconds``.
    """
    from ..kernels.portfolio import accumulators_init

    n = len(data.bars)
    if n < 2 or not sample:
        return 1e-8
    pos = np.arange(n, dtype=np.int64)

    def run(param_sets, acc):  # the containers' exact path, so the kernels compiled here are the ones workers load
        config.stats(data, config.prepare(param_sets), (pos, acc))

    run(sample[:1], accumulators_init(1, n))  # compile, or load from numba's cache
    sample = sample[:max(8, -(-_PROBE_BAR_EVALS // n))]  # enough work to time, no more
    acc = accumulators_init(len(sample), n)
    acc[0].fill(0.0)  # np.zeros hands out untouched pages: fault them in now, not in the timed runs
    best = math.inf
    for _ in range(2):
        t0 = time.perf_counter()
        run(sample, acc)
        best = min(best, time.perf_counter() - t0)
    return max(best / (len(sample) * n), 1e-10)

def _estimate(n_sets: int, bars_per_symbol: dict[str, int], n_parts: int) -> dict[str, Any]:
    n_sym = len(bars_per_symbol)
    max_bars = max(bars_per_symbol.values(), default=0)
    return {"param_sets": n_sets, "symbols": n_sym, "backtests": n_sets * n_sym,
            "bar_evaluations": n_sets * sum(bars_per_symbol.values()), "tasks": n_parts,
            # bars + ~30 indicator arrays per symbol in memory, plus the rows a task returns
            "memory_per_task_mb": round(max_bars * 8 * 40 / 1e6 + n_sets * 8 * (len(STAT_NAMES) + 8) / 1e6, 1),
            "output_mb": round(n_sets * n_sym * 8 * (len(STAT_NAMES) + 8) / 1e6, 1)}

def _bars_in_range(store: BarStore, symbol: str, start: Any, end: Any) -> int:
    if start is None and end is None:
        return int(store.entry(symbol)["rows"])
    from ..bars.store import _MAX_NS, _MIN_NS, to_ns

    lo, hi = to_ns(start, _MIN_NS), to_ns(end, _MAX_NS)
    total = 0
    for f in store.entry(symbol)["files"]:
        if f["last_ns"] < lo or f["first_ns"] > hi:
            continue
        if lo <= f["first_ns"] and f["last_ns"] <= hi:
            total += f["rows"]
        else:  # a partial file: estimate by its time share
            span = max(f["last_ns"] - f["first_ns"], 1)
            total += int(f["rows"] * (min(hi, f["last_ns"]) - max(lo, f["first_ns"])) / span) + 1
    return total
