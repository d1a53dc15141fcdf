"""Task layout: how a sweep is cut into container tasks, sized from a probe of the kernel."""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import numpy as np

from ..kernels.names import STAT_NAMES

MAX_TASKS = 20_000  # a bigger graph stalls the scheduler; batches grow instead
_ACC_BYTES = 64 << 20  # cap on a task's portfolio accumulators (sets x union timeline x 8 bytes)
_MIN_TASK_SECONDS = 0.01


def _layout(n_sets: int, symbols: list[str], bars_per_symbol: dict[str, int], seconds_per_bar: float,
            batch_seconds: float, threads: int, timeline_len: int, load_seconds: float = 0.0,
            budget: int | None = None, bar_bytes: int = 48) -> list[tuple[tuple[str, ...], int, int]]:
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

    A range's accumulators fit ``_ACC_BYTES`` in both, and with a memory ``budget`` a
    task's accumulators fit half of it and its symbols' inputs (``bar_bytes`` a bar:
    the bar columns and indicator rows) the other half. The last ranges are then
    halved (:func:`_halve_tail`).
    """
    total = seconds_per_bar * n_sets * sum(bars_per_symbol.values())
    target = task_target(total, batch_seconds, threads)
    acc_cap = _ACC_BYTES if budget is None else min(_ACC_BYTES, budget // 2)
    max_step = max(1, acc_cap // (8 * max(timeline_len, 1)))
    max_bars = None if budget is None else max(1, budget // 2 // max(bar_bytes, 1))
    shapes = [_narrow(n_sets, symbols, bars_per_symbol, seconds_per_bar, target, max_step, max_bars),
              _wide(n_sets, symbols, bars_per_symbol, seconds_per_bar, target, max_step, max_bars)]
    best = min(shapes, key=lambda parts: _overhead(parts, len(symbols), timeline_len, load_seconds))
    return _halve_tail(best, threads)

def task_target(total: float, batch_seconds: float, threads: int) -> float:
    """The work a task aims at, of ``total`` seconds on ``threads``: ``batch_seconds``, or less for a short sweep.

    Enough tasks to keep every thread busy, but none under _MIN_TASK_SECONDS unless
    batch_seconds itself asks for less (tests do, to get many tasks from little work).
    """
    return min(batch_seconds, max(_MIN_TASK_SECONDS, total / (4 * max(threads, 1))))


def bundle_parts(parts: list[tuple[tuple[str, ...], bool]], seconds: list[float], target: float,
                 threads: int) -> list[list[int]]:
    """Consecutive parts one task computes one after the other: the indexes of ``parts``, grouped, in order.

    ``parts`` are (symbols, bundleable) in the run's part order and ``seconds`` their
    estimated work. A part whose range the accumulator cap (``_ACC_BYTES``) cut below the
    ``target`` work leaves the task short of it, and each task costs the driver ~10 ms of
    CPU (distributed's messages) and the worker a few ms between tasks: on 2 cores that
    comes out of the workers' share. So parts of the same symbols are taken together
    while their work fits the ``target``; each part is still computed, written and
    committed on its own (same files, same markers, same resume). Not bundled: parts
    that are not bundleable (a range split among symbol groups, whose reduce takes its
    parts' results; streamed parts), the last ``4 x threads``, so that the sweep still
    ends in the small tasks :func:`_halve_tail` made, and the first ``2 x threads``: the
    scheduler places the first tasks before it knows how long they take, and may queue
    two on one worker while the other waits for one of them to be stolen.

    >>> a, b = (("A",), True), (("B",), True)
    >>> bundle_parts([a] * 5 + [b] * 3 + [a] * 4, [0.2] * 12, 0.5, threads=1)
    [[0], [1], [2, 3], [4], [5, 6], [7], [8], [9], [10], [11]]
    """
    groups: list[list[int]] = []
    work = 0.0
    first, last = 2 * max(threads, 1), len(parts) - 4 * max(threads, 1)
    for i, (symbols, ok) in enumerate(parts):
        ok = ok and first <= i < last
        prev = groups[-1][-1] if groups else None
        if (ok and prev is not None and parts[prev][1] and first <= prev < last and parts[prev][0] == symbols
                and work + seconds[i] <= target * (1 + 1e-9)):
            groups[-1].append(i)
            work += seconds[i]
        else:
            groups.append([i])
            work = seconds[i]
    return groups


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
            max_step: int, max_bars: int | None = None) -> list[tuple[tuple[str, ...], int, int]]:
    longest = max(bars_per_symbol.values(), default=1)
    while True:
        step = min(max(1, int(target / max(spb * longest, 1e-12))), n_sets, max_step)
        parts: list[tuple[tuple[str, ...], int, int]] = []
        for lo in range(0, n_sets, step):
            hi = min(lo + step, n_sets)
            group: list[str] = []
            work = 0.0
            held = 0
            for s in symbols:
                if group and max_bars is not None and held + bars_per_symbol[s] > max_bars:
                    parts.append((tuple(group), lo, hi))
                    group, work, held = [], 0.0, 0
                group.append(s)
                work += spb * bars_per_symbol[s] * (hi - lo)
                held += bars_per_symbol[s]
                if work >= target:
                    parts.append((tuple(group), lo, hi))
                    group, work, held = [], 0.0, 0
            if group:
                parts.append((tuple(group), lo, hi))
        if len(parts) <= MAX_TASKS:
            return parts
        target *= 2 * len(parts) / MAX_TASKS

def _wide(n_sets: int, symbols: list[str], bars_per_symbol: dict[str, int], spb: float, target: float,
          max_step: int, max_bars: int | None = None) -> list[tuple[tuple[str, ...], int, int]]:
    while True:
        groups: list[tuple[str, ...]] = []
        group: list[str] = []
        work = 0.0
        held = 0
        for s in symbols:  # the fewest groups in which one parameter set fits the target (and the memory)
            if group and (work + spb * bars_per_symbol[s] > target
                          or (max_bars is not None and held + bars_per_symbol[s] > max_bars)):
                groups.append(tuple(group))
                group, work, held = [], 0.0, 0
            group.append(s)
            work += spb * bars_per_symbol[s]
            held += bars_per_symbol[s]
        if group:
            groups.append(tuple(group))
        heaviest = max(sum(bars_per_symbol[s] for s in g) for g in groups)
        step = min(max(1, int(target / max(spb * heaviest, 1e-12))), n_sets, max_step)
        parts = [(g, lo, min(lo + step, n_sets)) for lo in range(0, n_sets, step) for g in groups]
        if len(parts) <= MAX_TASKS:
            return parts
        target *= 2 * len(parts) / MAX_TASKS

_STREAM_ROWS = 16_384  # bars per chunk a streaming layout aims at: per-chunk costs stay under ~10 %
_STREAM_MIN_SETS = 8  # sets per range a streaming task needs to pay for reading its symbols' bars again


def _stream_layout(n_sets: int, symbols: list[str], bars_per_symbol: dict[str, int], threads: int, budget: int,
                   payload_bytes: int, halo: int, aligned: bool) -> tuple[list[tuple[tuple[str, ...], int, int]], int]:
    """Containers for symbols read in chunks, and the bars per chunk: ``(parts, rows)``.

    A streaming task reads all of its symbols' bars and computes their indicators, so
    the fewer set ranges the better; but every thread needs a task, so there are at
    least ``threads`` tasks, and up to ``2 x threads`` while a range keeps at least
    ``_STREAM_MIN_SETS`` sets. Symbols of a range go in as few lockstep groups as the
    budget allows at ``_STREAM_ROWS`` bars per chunk (one group: no partial portfolio
    accumulators at all; each further group writes one set of windows per range).
    """
    from ..budget import chunk_rows

    want = max(1, 2 * threads)

    def ranges_for(groups: int) -> int:
        r = min(n_sets, -(-want // groups))
        if n_sets // max(r, 1) < _STREAM_MIN_SETS:
            r = max(min(n_sets, -(-threads // groups)), n_sets // _STREAM_MIN_SETS)
        return max(1, min(r, n_sets))

    longest = max(bars_per_symbol[s] for s in symbols)
    target = min(longest, max(_STREAM_ROWS, halo + 1))
    n_groups = 1
    while True:
        step = -(-n_sets // ranges_for(n_groups))
        size = -(-len(symbols) // n_groups)
        rows = chunk_rows(budget, symbols=size, sets=step, payload_bytes=payload_bytes, aligned=aligned)
        if rows >= target or size == 1:
            break
        n_groups = -(-len(symbols) // max(1, size * 3 // 4 if size > 1 else 1))
    while rows < halo + 1 and step > 1:  # one symbol per group and still short: fewer sets per task
        step = max(1, step // 2)
        rows = chunk_rows(budget, symbols=1, sets=step, payload_bytes=payload_bytes)
    groups = _balanced(symbols, bars_per_symbol, n_groups)
    parts = [(g, lo, min(lo + step, n_sets)) for lo in range(0, n_sets, step) for g in groups]
    return parts, max(halo + 1, min(rows, longest))


def _balanced(symbols: list[str], bars_per_symbol: dict[str, int], n: int) -> list[tuple[str, ...]]:
    """``symbols`` in ``n`` consecutive groups of about equal bars (in the given order)."""
    total = sum(bars_per_symbol[s] for s in symbols)
    groups: list[tuple[str, ...]] = []
    group: list[str] = []
    acc = 0
    for s in symbols:
        group.append(s)
        acc += bars_per_symbol[s]
        if acc * n >= total * (len(groups) + 1) and len(groups) < n - 1:
            groups.append(tuple(group))
            group = []
    if group:
        groups.append(tuple(group))
    return groups


_ACC_SECONDS_PER_BYTE = 8e-9  # write + read back + rebase + merge of an npz accumulator (measured: 60 MB ~0.5 s)
_TASK_SECONDS = 0.005  # scheduling, the rows table and the commit of one task
# A set several tasks share is built by a task of its own (the client, the scheduler and a worker each
# handle it), written to the cache as a pack, hashed, and mapped or moved by every worker that runs one
# of its consumers. Measured on row 1 of the sweep benchmark (100 daily symbols x 184 sets, 2 workers):
# 8 set ranges sharing every symbol's set took ~1.1 CPU-s more than 8 symbol groups of one range
# building each set inside its one task (2.0 against 0.9 CPU-s in all, driver and workers).
_SHARED_INPUT_SECONDS = 0.01

def _overhead(parts: list[tuple[tuple[str, ...], int, int]], n_symbols: int, timeline_len: int,
              load_seconds: float) -> float:
    """Estimated seconds a layout spends beside the kernel: accumulators, input loads, tasks.

    A part that is the only one of its set range holds every symbol: its portfolio rows are
    final and it writes no accumulator. With more than one range, every symbol's input is
    needed by several tasks and is shared: counted as two loads (built, then mapped or moved
    to the workers) plus :data:`_SHARED_INPUT_SECONDS`.
    """
    per_range = Counter((lo, hi) for _, lo, hi in parts)
    acc_bytes = sum((hi - lo) * timeline_len * 8 for _, lo, hi in parts if per_range[(lo, hi)] > 1)
    if len(per_range) > 1:
        loads = n_symbols * (2 * load_seconds + _SHARED_INPUT_SECONDS)
    else:
        loads = n_symbols * load_seconds
    return acc_bytes * _ACC_SECONDS_PER_BYTE + loads + len(parts) * _TASK_SECONDS

_PROBE_SETS = 64
_PROBE_BAR_EVALS = 3_000_000  # per timed probe run: ~25 ms

def builtin_kernel(config: Any, sample: list[dict]) -> bool:
    """Whether ``config`` runs one of our numba kernels (a built-in strategy, or a batch without a
    strategy: a replay's) rather than a user's strategy: what the probe times in CPU time, on a worker."""
    return getattr(getattr(config.prepare(sample[:1]), "strategy", None), "builtin", True)


def _probe(config: Any, data: Any, sample: list[dict]) -> float:
    """Seconds per bar-evaluation of the containers' kernel work, measured here on one symbol's input.

    ``data`` holds what a container gets (for a sweep, the sample's indicators: they are
    built once per symbol by the hub, not per set). Only the kernel call is timed, on
    accumulators allocated and touched beforehand (containers reuse theirs), best of
    two: timing the indicators and fresh accumulators too made the estimate 2-3x the
    containers' real cost, and their tasks a third of ``batch_seconds``.

    Built-in kernels are timed in this thread's CPU time (numba runs them in the calling
    thread), not by the clock: a ~25 ms run on a shared machine is often preempted, and
    the clock then measured 1.5-2.3x the CPU time (5.8-8.4 against 3.5-3.9 ns a
    bar-evaluation, the scaling benchmark's sweep), so a probe taken at a busy moment
    planned smaller tasks and another layout than one taken at a quiet moment. A user's
    strategy is timed by the clock: it may wait (I/O, sleeps) or run threads of its own.
    """
    from ..kernels.portfolio import accumulators_init

    n = len(data.bars)
    if n < 2 or not sample:
        return 1e-8
    pos = np.arange(n, dtype=np.int64)

    def run(param_sets, acc):  # the containers' exact path, so the kernels compiled here are the ones workers load
        config.stats(data, config.prepare(param_sets), (pos, acc))

    run(sample[:1], accumulators_init(1, n))  # compile, or load from numba's cache
    clock = time.thread_time if builtin_kernel(config, sample) else time.perf_counter
    sample = sample[:max(8, -(-_PROBE_BAR_EVALS // n))]  # enough work to time, no more
    acc = accumulators_init(len(sample), n)
    acc[0].fill(0.0)  # np.zeros hands out untouched pages: fault them in now, not in the timed runs
    best = math.inf
    for _ in range(2):
        t0 = clock()
        run(sample, acc)
        best = min(best, clock() - t0)
    return max(best / (len(sample) * n), 1e-10)

_GRID = 2  # probe figures are rounded to powers of 2 ** (1 / _GRID): within 19 % of the measure, and the
# same from run to run unless the machine's speed moves across a step (noise of +-10 % rarely does)


def coarse(seconds: float) -> float:
    """``seconds`` rounded to the probe's grid (powers of the square root of 2), so that the layout is stable."""
    if seconds <= 0:
        return 0.0
    return float(2.0 ** (round(math.log2(seconds) * _GRID) / _GRID))


def probe_path(symbol: str, read: Any, config: Any, sample: list[dict], max_rows: int, full_rows: int) -> dict[str, Any]:
    """Task: time a container's whole path on one symbol, on a worker: what the layout plans with.

    ``read(symbol, sample, max_rows)`` loads the probe input (the feed's ``probe_reader``:
    a bounded slice of the bars, the sample's indicators); its time, scaled to the
    symbol's ``full_rows`` bars and to the whole input's ``read.unique`` indicators, is a
    symbol's *load* (what its hub task or inline build costs). Then the kernel
    (:func:`_probe`: the sample over the slice, best of two) and the results (the
    sample's rows as a container builds and writes them, best of two, in CPU time; the load too, by the
    clock: it may wait on storage) give the seconds per
    bar-evaluation of a container. Both figures are rounded to the :func:`coarse`
    grid. Returns them with the measures they came from (``run.json["probe"]``).
    """
    import io
    from types import SimpleNamespace

    import pyarrow.parquet as pq

    from ..kernels.portfolio import accumulators_init
    from .results import _dictionary, _rows_table

    t_read = math.inf
    for _ in range(2):  # the first in a fresh worker also pays first-use costs (imports, the manifest, kernels)
        t0 = time.perf_counter()
        data = read(symbol, sample, max_rows)
        t_read = min(t_read, time.perf_counter() - t0)
    n = max(len(data.bars), 1)
    kernel = _probe(config, data, sample)
    batch = config.prepare(sample)
    stats = config.stats(data, batch, (np.arange(len(data.bars), dtype=np.int64), accumulators_init(len(sample), n)))
    t_results = math.inf
    for _ in range(2):  # in this thread's CPU time, as the kernel (see _probe): our code, no waiting
        t0 = time.thread_time()
        table = _rows_table(SimpleNamespace(lo=0, hi=len(sample), symbols=(symbol,)), batch, [stats])
        pq.write_table(table, io.BytesIO(), use_dictionary=_dictionary(table.schema))
        t_results = min(t_results, time.thread_time() - t0)
    unique = max(1, len(batch.plan.specs)) if hasattr(batch, "plan") else 1
    scale = getattr(read, "unique", unique) / unique
    load = t_read * max(1.0, scale) * full_rows / n
    per_bar = kernel + t_results / max(len(sample), 1) / max(full_rows, 1)
    return {"seconds_per_bar": coarse(per_bar), "load_seconds": coarse(load), "symbol": symbol, "rows": n,
            "sets": len(sample), "kernel_seconds_per_bar": kernel, "results_seconds_per_row": t_results / len(sample),
            "read_seconds": t_read, "measured_seconds_per_bar": per_bar, "measured_load_seconds": load}


def plan_layout(n_sets: int, symbols: list[str], bars_per_symbol: dict[str, int], spb: float, batch_seconds: float,
                threads: int, budget: int, payload_bytes: float, halo: int, aligned: bool,
                load_seconds: float = 0.0) -> dict[str, Any]:
    """The task layout of a run within a memory budget: what ``run.json`` records.

    A symbol whose whole history, its payload (indicator or signal rows) and one set's
    accumulators fit the ``budget`` is held whole (today's containers: its input built
    once, shared by the tasks that need it); the others are *streamed*, read in chunks
    of ``chunk_rows`` bars (:func:`_stream_layout`). When both kinds are present the
    whole-series symbols are grouped within the streaming layout's set ranges, so every
    range's portfolio partials still merge. Returns ``{"layout": [[symbols, lo, hi,
    streamed], ...], "chunk_rows": n (0 without streaming), "memory_per_task": bytes}``.
    """
    from ..budget import chunk_bytes, whole_bytes

    bar_bytes = 6 * 8 + payload_bytes
    streamed = [s for s in symbols
                if whole_bytes({s: bars_per_symbol[s]}, 1, payload_bytes) > budget]
    whole = [s for s in symbols if s not in set(streamed)]
    parts: list[tuple[tuple[str, ...], int, int, bool]] = []
    rows = 0
    if not streamed:
        parts = [(g, lo, hi, False) for g, lo, hi in
                 _layout(n_sets, symbols, bars_per_symbol, spb, batch_seconds, threads,
                         max(bars_per_symbol.values()), load_seconds, budget, int(bar_bytes))]
    else:
        sparts, rows = _stream_layout(n_sets, streamed, bars_per_symbol, threads, budget, payload_bytes, halo,
                                      aligned)
        for lo, hi in sorted({(lo, hi) for _, lo, hi in sparts}):
            timeline = max((bars_per_symbol[s] for s in whole), default=0)
            max_bars = max(1, int((budget - 8 * (hi - lo + 2) * timeline) // bar_bytes)) if whole else 1
            group: list[str] = []
            held = 0
            for s in whole:
                if group and held + bars_per_symbol[s] > max_bars:
                    parts.append((tuple(group), lo, hi, False))
                    group, held = [], 0
                group.append(s)
                held += bars_per_symbol[s]
            if group:
                parts.append((tuple(group), lo, hi, False))
        parts += [(g, lo, hi, True) for g, lo, hi in sparts]
    memory = 0
    for group, lo, hi, is_streamed in parts:
        if is_streamed:
            need = chunk_bytes(rows, symbols=len(group), sets=hi - lo, payload_bytes=payload_bytes, aligned=aligned)
        else:
            need = whole_bytes({s: bars_per_symbol[s] for s in group}, hi - lo, payload_bytes, aligned)
        memory = max(memory, need)
    return {"layout": [[list(g), lo, hi, st] for g, lo, hi, st in parts], "chunk_rows": rows,
            "memory_per_task": memory}


def _estimate(n_sets: int, bars_per_symbol: dict[str, int], n_parts: int) -> dict[str, Any]:
    n_sym = len(bars_per_symbol)
    return {"param_sets": n_sets, "symbols": n_sym, "backtests": n_sets * n_sym,
            "bar_evaluations": n_sets * sum(bars_per_symbol.values()), "tasks": n_parts,
            "output_mb": round(n_sets * n_sym * 8 * (len(STAT_NAMES) + 8) / 1e6, 1)}
