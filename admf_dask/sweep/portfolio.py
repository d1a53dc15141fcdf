"""The equal-weight portfolio rows of a sweep: partial accumulators written by containers, reduced per set range.

The row's definition is in :mod:`admf_dask.kernels.portfolio`.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import StorageError
from ..storage import StorageRef
from .grid import ParamSets
from .integrity import digest
from .results import PORTFOLIO, _stats_table


def reduce_portfolio(run_ref: StorageRef, parts: list[int], lo: int, hi: int,
                     param_sets: ParamSets, cash: float, resume: Any = None,
                     keep_state: bool = False, history: StorageRef | None = None,
                     markers: Mapping[int, Mapping[str, Any]] | None = None,
                     held: Mapping[int, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Task: merge the partial accumulators of one set range into its portfolio rows, written under the run.

    The parts of a range cover every symbol once; each part's summed equity is on its own
    group's timeline. Parts held whole (``portfolio/part-<j>.acc``) are read one at a time,
    rebased onto the union of their timelines and summed in part order: the task holds the
    sum and one part, never every part. Parts of streaming containers come in windows
    (``portfolio/part-<j>/w-<k>.acc``); they, and that sum as one more part, are merged in
    time order, a step at a time up to the earliest last timestamp among the windows at
    hand: each rebased onto the union of the step's timestamps (carried forward, starting
    cash before its first bar) and summed in part order. Every step is folded into the
    portfolio statistics (:func:`~admf_dask.kernels.portfolio.portfolio_fold`), so the
    union timeline of a streamed range is never held whole either.
    With ``keep_state`` the folded state at the end (portfolio bar states, the union
    timeline's spacing counts, the columns folded, and each part's last summed equity) is
    written too (``portfolio/reduce-<lo>.state``). With ``resume`` (that state of the
    previous run, :class:`~admf_dask.sweep.incremental.Resume`) the parts hold only the
    windows after it, every part carried in from its own last value: an incremental run.
    With ``history`` (the storage root), each part's summed equity is read from the
    files its done marker lists (``equity``, relative to the root: the windows of the
    runs it went on from, then its own), all of them from the first bar: an incremental
    run in which some parts were recomputed in full.
    ``markers`` are parts' done markers as their tasks committed them (the driver has them): a
    part's marker not among them is read from the run.
    ``held`` are results of this run's containers still on the cluster (object stores): a part's
    accumulator bytes among them (``acc``, what its task PUT and digested) are taken from there,
    not read back; any other part's file is read and checked against its record.
    Returns ``{"rows": the rows' file (portfolio/rows-<lo>.parquet, relative to the run),
    "state": the state's commit record or None, "files": {the rows' file: its size and sha256}}``
    (the final table checks the rows against that record as it reads them), and on an object
    store ``"given": {the rows' file: its bytes}`` (the final table takes them, not reading them back).
    """
    from ..kernels.portfolio import (
        merge_trade_acc, portfolio_fold, portfolio_state_init, rebase_equity, starting_equity,
    )
    from ..kernels.stats import PeriodsPerYearStream
    from .incremental import read_state, write_state

    storage = run_ref.open()
    # what each part committed (file -> size, sha256): every accumulator file is checked as it is read
    # (on an object store the markers' GETs overlap, and so do the parts' when they are held)
    known = dict(markers or {})
    unread = [j for j in parts if j not in known]
    known.update(zip(unread, storage.each(lambda j: storage.read_json(f"done/part-{j:06d}.json"), unread)))
    committed = {j: known[j] for j in parts}
    records = {name: rec for marker in committed.values() for name, rec in marker.get("files", {}).items()}
    kept = {j: out["acc"] for j, out in (held or {}).items() if isinstance(out, Mapping) and "acc" in out}
    # parts that fit _HOLD_BYTES together are read (and checked) once, equity included; otherwise each is
    # read twice, its small arrays first (trades, extra, the timeline of whole parts) and its equity when summed
    sizes = [records.get(f"portfolio/part-{j:06d}.acc", {}).get("size") for j in parts]
    hold = history is None and None not in sizes and sum(sizes) <= _HOLD_BYTES
    heads = (storage.each(lambda j: _read_part(storage, j, equity=True, records=records, raw=kept.get(j)), parts)
             if hold else [_read_part(storage, j, equity=False, records=records, raw=kept.get(j)) for j in parts])
    trades, extra = heads[0]["trades"], heads[0]["extra"]
    for h in heads[1:]:
        trades, extra = merge_trade_acc(trades, h["trades"]), extra + h["extra"]
    m = len(extra)
    readers: list[_PartReader] = []
    whole = [(j, h) for j, h in zip(parts, heads) if "windows" not in h and history is None]
    lasts: dict[int, np.ndarray] = {}  # a whole part's summed equity at its last bar
    if whole:  # the sum of the whole parts, one part read at a time: a part of the merge below
        union = np.unique(np.concatenate([h["timeline"] for _, h in whole]))
        total, before = None, None
        for j, h in whole:
            equity = h.pop("equity") if hold else \
                _read_part(storage, j, equity=True, records=records, raw=kept.get(j))["equity"]
            lasts[j] = equity[:, -1].copy()
            start = starting_equity(m, int(h["extra"][0, 2]) if m else 0, float(cash))
            if len(h["timeline"]) == len(union) and np.array_equal(h["timeline"], union):
                step = equity  # already on the union (aligned groups): what rebase_equity would copy
            else:
                step = rebase_equity(equity, h["timeline"], union, start)
            total = step if total is None else total + step
            before = start if before is None else before + start
            del equity, step
        readers.append(_PartReader(storage, [], total, union, before))
    root = history.open() if history is not None else None
    for j, h in zip(parts, heads):
        if history is not None:
            files = committed[j]["equity"]
            readers.append(_PartReader(root, files, np.empty((m, 0)), np.empty(0, np.int64),
                                       starting_equity(m, int(h["extra"][0, 2]) if m else 0, float(cash))))
        elif "windows" in h:
            files = [f"portfolio/part-{j:06d}/w-{k:06d}.acc" for k in range(int(h["windows"][0]))]
            readers.append(_PartReader(storage, files, np.empty((m, 0)), np.empty(0, np.int64),
                                       starting_equity(m, int(h["extra"][0, 2]) if m else 0, float(cash)),
                                       records))
    sleeves = np.ascontiguousarray(extra[:, 2])
    pstate = portfolio_state_init(m)
    spacing = PeriodsPerYearStream()
    folded = 0
    if resume is not None:  # every part is windows after the saved state, each carried in from its last value
        saved = read_state(resume)
        pstate, folded = saved["pstate"].copy(), int(saved["folded"][0])
        spacing = PeriodsPerYearStream.from_arrays({k: saved[f"union/{k}"] for k in ("spacings", "counts",
                                                                                      "scalars")})
        for r, before in zip(readers, saved["befores"]):
            r.before = before.copy()
    while True:
        live = [r for r in readers if r.pending()]
        if not live:
            break
        cut = min(r.last() for r in live)
        pieces = [r.take(cut) for r in readers]
        stamps = np.unique(np.concatenate([ts for _, ts in pieces]))
        total = None
        for r, (equity, ts) in zip(readers, pieces):
            if len(ts):
                step = rebase_equity(equity, ts, stamps, r.before)
                r.before = np.ascontiguousarray(equity[:, -1])
            else:
                step = np.repeat(r.before[:, None], len(stamps), axis=1)
            total = step if total is None else total + step
        portfolio_fold(total, sleeves, folded, pstate)
        spacing.update(stamps)
        folded += len(stamps)
    table = _stream_portfolio_table(lo, hi, param_sets, pstate, trades, extra,
                                    spacing.value() if folded > 1 else 252.0)
    name = f"portfolio/rows-{lo:09d}.parquet"
    buf = io.BytesIO()
    pq.write_table(table, buf)
    pending = storage.uploads()  # on an object store the state is encoded while the rows' PUT is out
    data = buf.getvalue()
    pending[name] = data
    state = None
    if keep_state:  # each part's last value, in part order (whole parts were summed into one reader)
        windowed = iter(readers[1:] if whole else readers)
        befores = [lasts[j] if j in lasts else next(windowed).before for j in parts]
        state = write_state(storage, {"pstate": pstate, "folded": np.array([folded], dtype=np.int64),
                                      "befores": np.array(befores).reshape(len(parts), m),
                                      **{f"union/{k}": v for k, v in spacing.to_arrays().items()}},
                            f"portfolio/reduce-{lo:09d}.state", into=pending)
    pending.wait()
    # files: checked when the table reads them; on an object store the rows go to the driver too (not read back)
    return {"rows": name, "state": state, "files": {name: digest(data)},
            **({"given": {name: data}} if not storage.is_local and len(data) <= _GIVEN_BYTES else {})}


def _read_part(storage: Any, part: int, equity: bool = False,
               records: Mapping[str, Any] | None = None, raw: bytes | None = None) -> dict[str, np.ndarray]:
    """A part's accumulator file: everything but its equity (dropped at once), or with it.

    Checked against its commit record in ``records`` (file -> size, sha256) when it has one.
    ``raw``: the file's bytes as its task of this run wrote them (never read back), used instead.
    """
    from .integrity import read_checked

    name = f"portfolio/part-{part:06d}.acc"
    if raw is None:
        raw = read_checked(storage, name, (records or {}).get(name))
    arrays = _arrays_read(raw, storage.display(name))
    if not equity:  # copies: views would keep the whole file's bytes, equity included, alive
        arrays = {k: v.copy() for k, v in arrays.items() if k != "equity"}
    return arrays


class _PartReader:
    """One part's summed equity in time order: in memory, then window files (see :func:`reduce_portfolio`)."""

    def __init__(self, storage: Any, files: list[str], equity: np.ndarray, stamps: np.ndarray,
                 before: np.ndarray, records: Mapping[str, Any] | None = None) -> None:
        self.storage, self._files = storage, list(files)
        self._records = records or {}  # the run's window files' commit records (file -> size, sha256)
        self._equity, self._stamps, self._pos = equity, stamps, 0
        self.before = before  # the part's value before the stamps to come

    def pending(self) -> bool:
        while self._pos >= len(self._stamps):
            if not self._files:
                return False
            from .integrity import read_checked

            name = self._files.pop(0)
            arrays = _arrays_read(read_checked(self.storage, name, self._records.get(name)), self.storage.display(name))
            self._equity, self._stamps, self._pos = arrays["equity"], arrays["timeline"], 0
        return True

    def last(self) -> int:
        return int(self._stamps[-1])

    def take(self, cut: int) -> tuple[np.ndarray, np.ndarray]:
        a = self._pos
        b = max(a, int(np.searchsorted(self._stamps, cut, side="right")))
        self._pos = b
        return self._equity[:, a:b], self._stamps[a:b]


_HOLD_BYTES = 64 << 20  # a range's accumulator files up to this size in all are read once by the reduce, and held
_GIVEN_BYTES = 16 << 20  # on an object store, a part's results (or a reduce's rows) up to this size go to the driver

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
            count = math.prod(shape)
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
    return _rows_of_sets(lo, hi, param_sets, portfolio_stats(acc[0], acc[1], acc[2], ppy))


def _stream_portfolio_table(lo: int, hi: int, param_sets: ParamSets, pstate: np.ndarray, trades: np.ndarray,
                            extra: np.ndarray, ppy: float) -> pa.Table:
    """The PORTFOLIO rows of sets [lo, hi) from folded portfolio states (:func:`~admf_dask.kernels.portfolio.portfolio_fold`)."""
    from ..kernels.portfolio import portfolio_finalize

    return _rows_of_sets(lo, hi, param_sets, portfolio_finalize(pstate, trades, extra, ppy))


def _rows_of_sets(lo: int, hi: int, param_sets: ParamSets, rows: np.ndarray) -> pa.Table:
    """PORTFOLIO rows of sets [lo, hi) as a table: set ids, parameters, the statistics ``rows``."""
    sets = [dict(p) for p in param_sets]
    params = {name: [p.get(name) for p in sets] for name in dict.fromkeys(k for p in sets for k in p)}
    return _stats_table(np.arange(lo, hi, dtype=np.int64), pa.array([PORTFOLIO] * len(sets), pa.string()),
                        params, rows)
