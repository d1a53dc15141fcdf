"""The equal-weight portfolio rows of a sweep: partial accumulators written by containers, reduced per set range.

The row's definition is in :mod:`admf_dask.kernels.portfolio`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import StorageError
from ..storage import StorageRef
from .grid import ParamSets
from .results import PORTFOLIO, _stats_table


def reduce_portfolio(run_ref: StorageRef, parts: list[int], lo: int, hi: int,
                     param_sets: ParamSets, cash: float) -> str:
    """Task: merge the partial accumulators of one set range into its portfolio rows, written under the run.

    The parts of a range cover every symbol once; the union of their timelines is
    the sweep's union timeline, onto which each part's equity is rebased first.
    Returns the rows' file (``portfolio/rows-<lo>.parquet``, relative to the run).
    """
    from ..kernels.portfolio import merge_accumulators, rebase_equity, starting_equity

    storage = run_ref.open()
    accs = []
    for j in parts:
        part = f"portfolio/part-{j:06d}.acc"
        arrays = _arrays_read(storage.read_bytes(part), storage.display(part))
        accs.append((arrays["equity"], arrays["trades"], arrays["extra"], arrays["timeline"]))
    union = np.unique(np.concatenate([a[3] for a in accs]))
    total = None
    for equity, trades, extra, timeline in accs:
        sleeves = int(extra[0, 2]) if len(extra) else 0
        acc = (rebase_equity(equity, timeline, union, starting_equity(len(equity), sleeves, float(cash))), trades, extra)
        total = acc if total is None else merge_accumulators(total, acc)
    table = _portfolio_table(lo, hi, param_sets, total, union)
    name = f"portfolio/rows-{lo:09d}.parquet"
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(buf.getvalue(), name)
    return name

_ARRAYS_MAGIC = b"ADMFARR1"

def _arrays_parts(arrays: Mapping[str, np.ndarray]) -> list[Any]:
    """Named arrays as buffers to write in order, not copied: magic, header length, JSON header, raw bytes.

    A task's portfolio accumulators are a few MB; ``np.savez`` spent ~9 ms per task
    zipping and checksumming them, this format nothing beyond the write.
    """
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    header = json.dumps({name: [a.dtype.str, list(a.shape)] for name, a in arrays.items()}).encode()
    return [_ARRAYS_MAGIC, len(header).to_bytes(8, "little"), header,
            *(memoryview(a).cast("B") for a in arrays.values() if a.size)]

def _arrays_read(raw: bytes, where: str) -> dict[str, np.ndarray]:
    """The arrays of :func:`_arrays_parts`' file ``raw``; a StorageError naming ``where`` if damaged.

    Writable (views of one copy of ``raw``): numba compiles and caches a kernel apart for
    read-only arrays, which each worker would then load on its first reduce.
    """
    raw = bytearray(raw)
    try:
        if raw[:8] != _ARRAYS_MAGIC:
            raise ValueError("not an accumulator file")
        size = int.from_bytes(raw[8:16], "little")
        offset = 16 + size
        out = {}
        for name, (dtype, shape) in json.loads(raw[16:offset]).items():
            dt = np.dtype(dtype)
            count = int(np.prod(shape, dtype=np.int64))
            out[name] = np.frombuffer(raw, dt, count, offset).reshape(shape)
            offset += count * dt.itemsize
        if offset != len(raw):
            raise ValueError(f"{len(raw) - offset} bytes too many")
        return out
    except (ValueError, TypeError, KeyError) as exc:
        raise StorageError(f"damaged portfolio accumulators ({exc})", file=where,
                           hint="rerun with --force to recompute the run") from None

def _portfolio_table(lo: int, hi: int, param_sets: ParamSets, acc: tuple, union: np.ndarray,
                     ppy: float | None = None) -> pa.Table:
    """The PORTFOLIO rows of sets [lo, hi) from their final accumulators on the union timeline."""
    from ..kernels.portfolio import portfolio_stats
    from ..kernels.stats import periods_per_year

    if ppy is None:
        ppy = periods_per_year(union) if len(union) > 1 else 252.0
    rows = portfolio_stats(acc[0], acc[1], acc[2], ppy)
    sets = [dict(p) for p in param_sets]
    params = {name: [p.get(name) for p in sets] for name in dict.fromkeys(k for p in sets for k in p)}
    return _stats_table(np.arange(lo, hi, dtype=np.int64), pa.array([PORTFOLIO] * len(sets), pa.string()),
                        params, rows)
