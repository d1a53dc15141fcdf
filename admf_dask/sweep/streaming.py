"""The streaming container: a symbol group x a set range, read and backtested chunk by chunk.

What :func:`~admf_dask.sweep.container.run_container` does for symbols held whole,
for symbols whose history does not fit the task's memory budget: every symbol of
the group is read as bounded time chunks (:class:`~admf_dask.stream.SymbolStream`),
in lockstep (:func:`~admf_dask.stream.windows`), and each parameter set's run
state (:mod:`admf_dask.kernels.state`) is carried from chunk to chunk. The rows are
the same as the whole-series container's, bit for bit.

The portfolio accumulators cover one window of the group's timeline at a time. The
only task of its set range folds them into the portfolio statistics as it goes
(:func:`~admf_dask.kernels.portfolio.portfolio_fold`); otherwise each window is
written (``portfolio/part-<j>/w-<k>.acc``: the window's summed equity and its
timestamps) and the part's pooled trades last (``portfolio/part-<j>.acc``), and
:func:`~admf_dask.sweep.portfolio.reduce_portfolio` merges the parts' windows in
time order.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import AdmfError, DataError
from ..monitor import enabled, rss
from ..storage import StorageRef
from .portfolio import _arrays_parts, _stream_portfolio_table
from .results import _rows_table, write_part

__all__ = ["StreamSpec", "run_stream_container"]


@dataclass(frozen=True)
class StreamSpec:
    """How a streaming container reads: the bar store, the bars per chunk, the indicator cache.

    ``persist``: write the indicator chunks computed to the cache (when other tasks of
    the run read the same symbols).
    """

    bars_ref: StorageRef
    fingerprint: str
    rows: int
    cache_ref: StorageRef | None
    persist: bool = False


def run_stream_container(task: Any) -> dict[str, Any]:
    """Task: the container of :func:`~admf_dask.sweep.container.run_container`, streamed along time.

    ``task.stream`` (a :class:`StreamSpec`) says how to read; the task holds at most
    two chunks of each of its symbols, their payload rows, the run states and one
    window of portfolio accumulators. Returns what ``run_container`` returns.
    """
    from ..bars import BarStore
    from ..bars.store import to_ns
    from .incremental import indicator_states, read_state, symbol_state, unpack_symbol, write_state
    from .integrity import commit, digest
    from ..kernels.portfolio import EXTRA_WIDTH, fold_sleeves, portfolio_fold, portfolio_state_init, trade_acc_init
    from ..kernels.state import finalize_runs, fixed_np, run_state_init, sleeve_before
    from ..kernels.stats import PeriodsPerYearStream
    from ..stream import SymbolStream, windows

    t_start = time.perf_counter()
    spec: StreamSpec = task.stream
    config = task.config
    store = BarStore.open(spec.bars_ref, spec.fingerprint)
    batch = config.prepare([dict(p) for p in task.param_sets])
    m = len(task.param_sets)
    cash = float(config.cash)
    saved = read_state(task.resume) if task.resume is not None else None  # an incremental run goes on from it
    ind_index = indicator_states(saved) if saved is not None else None
    inputs, streams, states, seen0 = [], [], [], []
    for i, symbol in enumerate(task.symbols):
        inp = config.stream_input(batch, symbol, store, spec)
        inputs.append(inp)
        start = config.start
        if saved is not None:  # only the bars after the last one the previous run saw
            prev = unpack_symbol(saved, i, ind_index)
            start = max(to_ns(config.start, prev.last_ns + 1), prev.last_ns + 1)
        stream = SymbolStream(store, symbol, start, config.end, spec.rows, inp.halo, inp.rows, inp.dtype, inp.build)
        if saved is not None:
            stream.restore(prev.seen, prev.tail, prev.payload, prev.first_close, prev.last_close, prev.spacing)
            inp.build.restore(prev.ind, prev.last_ns)  # what the payload builder carried at that bar
            states.append(prev.run)
        else:
            states.append(run_state_init(m, cash))
        streams.append(stream)
        seen0.append(stream.seen)
    storage = task.run_ref.open()
    sleeves = np.full(m, float(len(task.symbols)))
    pstate = portfolio_state_init(m) if task.whole_range else None
    union = PeriodsPerYearStream()
    folded = 0  # timeline columns so far
    if saved is not None and pstate is not None:
        pstate = saved["pstate"].copy()
        union = PeriodsPerYearStream.from_arrays({k: saved[f"union/{k}"] for k in ("spacings", "counts", "scalars")})
        folded = int(saved["folded"][0])
    n_windows = 0
    files: dict[str, dict[str, Any]] = {}  # what the part commits: name -> size, sha256
    for window in windows(streams):
        acc = np.zeros((m, len(window.stamps)))
        for i, piece in enumerate(window.pieces):
            if piece.n == 0:  # nothing of this symbol in the window: its sleeve holds its last value
                acc += fixed_np(np.array([sleeve_before(row) for row in states[i]]))[:, None]  # as _sleeve_add
                continue
            try:
                config.stats_chunk(piece, batch, states[i], (window.position(i), acc))
            except AdmfError:
                raise
            except Exception as exc:
                raise AdmfError(f"{config.label} failed on bars {piece.t0}..{piece.t0 + piece.n - 1}: "
                                f"{type(exc).__name__}: {exc}", symbol=piece.symbol,
                                key=f"run {task.run_id} part {task.part}") from None
        if pstate is not None:
            portfolio_fold(acc, sleeves, folded, pstate)
        else:
            name = f"portfolio/part-{task.part:06d}/w-{n_windows:06d}.acc"
            buffers = _arrays_parts({"equity": acc, "timeline": window.stamps})
            storage.write_bytes(buffers, name)
            files[name] = digest(buffers)
        union.update(window.stamps)
        folded += len(window.stamps)
        n_windows += 1
    trades, extra = trade_acc_init(m), np.zeros((m, EXTRA_WIDTH))
    rows = []
    for stream, state in zip(streams, states):
        if stream.seen < 2:
            raise DataError(f"{stream.seen} bar(s) in the range: at least two are needed to backtest",
                            symbol=stream.symbol, key="start", hint="widen the start/end range")
        r = finalize_runs(state, stream.first_close, stream.last_close, stream.spacing.value())
        fold_sleeves(state, r, trades, extra)
        rows.append(r)
    table = _rows_table(task, batch, rows)
    if pstate is not None:
        ppy = union.value() if folded > 1 else 252.0
        table = pa.concat_tables([table, _stream_portfolio_table(task.lo, task.hi, task.param_sets, pstate, trades,
                                                                 extra, ppy)], promote_options="default")
    pending = storage.uploads()  # the part's last files, each PUT out while the next is encoded
    if pstate is None:
        name = f"portfolio/part-{task.part:06d}.acc"
        buffers = _arrays_parts({"trades": trades, "extra": extra, "windows": np.array([n_windows], dtype=np.int64)})
        files[name] = digest(buffers)
        pending[name] = buffers
    name = f"results/part-{task.part:06d}.parquet"
    files[name] = write_part(storage, table, name, into=pending)
    marker: dict[str, Any] = {"windows": n_windows}
    if not task.whole_range:  # the part's summed equity, window files relative to the storage root, after
        # the history of the run it went on from
        before = list(task.resume.equity) if task.resume is not None else []
        marker["equity"] = before + [f"runs/{task.run_id}/portfolio/part-{task.part:06d}/w-{k:06d}.acc"
                                     for k in range(n_windows)]
    if task.keep_state:
        keep: dict[str, np.ndarray] = {}
        for i, (stream, inp, state) in enumerate(zip(streams, inputs, states)):
            keep.update(symbol_state(i, state, inp.build.save(), stream.last_payload(), stream.tail(),
                                     stream.seen, stream.first_close, stream.last_close, stream.spacing))
        if pstate is not None:
            keep.update({"pstate": pstate, "folded": np.array([folded], dtype=np.int64),
                         **{f"union/{k}": v for k, v in union.to_arrays().items()}})
        marker["state"] = write_state(storage, keep, f"state/part-{task.part:06d}.state", into=pending)
        files[marker["state"]["file"]] = {k: marker["state"][k] for k in ("size", "sha256")}
    pending.wait()
    marker = commit(storage, task, table.num_rows, files, **marker)
    return {"part": task.part, "rows": table.num_rows, "seconds": time.perf_counter() - t_start, "files": files,
            "marker": marker,
            "counters": {sym: inp.counters() for sym, inp in zip(task.symbols, inputs)},
            "bars": {sym: stream.seen - s0 for sym, stream, s0 in zip(task.symbols, streams, seen0)},
            "pid": os.getpid(), "rss": rss() if enabled() else 0}  # stages interleave along time: not split
