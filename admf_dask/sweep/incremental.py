"""Incremental runs: a run over bars that were only appended goes on from the engine state of the run before.

Every task of a sweep whose kernels carry their state (built-in strategies) ends by
writing the state its symbols reached, ``state/part-<j>.state`` (the arrays format of
the portfolio accumulators), and records the file's size and sha256 in its done
marker; a set range's portfolio reduce does the same for the folded portfolio
(``portfolio/reduce-<lo>.state``, recorded in ``run.json``). Per symbol the state is:

======================  ==============================================================
``<i>/run``             the parameter sets' run states (sets x ``RUN_STATE_WIDTH``)
``<i>/ind/<token>``     each indicator kernel's state at the last bar
``<i>/payload``         the indicator rows' values at the last bar (the chunk kernels'
                        halo bar)
``<i>/tail``, ``_ts``   the last ``max(1, halo)`` bars (what indicators read before a
                        chunk)
``<i>/i8``, ``<i>/f8``  ``[bars processed, last timestamp]``, ``[first close, last close]``
``<i>/spacing/*``       the symbol's bar spacing counts (periods per year)
======================  ==============================================================

plus, for the only task of a set range, the portfolio's folded bar states
(``pstate``), its timeline's spacing counts and the columns folded so far.

A later run of the same configuration (same identity but the data) finds the last
complete run through ``runs/_chain/<key>.json``. If every symbol's current version
extends, by appended bars only, the version that run saw (the manifest's
``lineage``, see :mod:`admf_dask.bars.store`), the new run keeps the old layout and
each task streams only the bars after the old last one from the state saved by its
part (:func:`~admf_dask.sweep.streaming.run_stream_container` with ``resume``). The
chunk kernels make the result equal to a full recompute (statistics bit for bit,
portfolio rows within 1e-12). Otherwise the run is computed in full, and says why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import token
from ..errors import StorageError
from ..storage import StorageRef

__all__ = ["Resume", "chain_key", "plan_incremental", "read_saved_state", "read_state", "write_state"]

CHAIN = "_chain"  # runs/_chain/<key>.json: the last complete run of a configuration, whatever the data


@dataclass(frozen=True)
class Resume:
    """Where a part's (or a reduce's) saved state is: a file under a previous run, its size and sha256."""

    run_ref: StorageRef
    file: str
    size: int
    sha256: str
    equity: tuple[str, ...] = ()  # the part's summed equity so far: files relative to the storage root


def write_state(storage: Any, arrays: dict[str, np.ndarray], name: str,
                into: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write named arrays as one state file under a run (or put it in ``into``, a dict of pending writes);
    return what the commit records: file, size, sha256."""
    from .portfolio import _arrays_parts

    raw = b"".join(_arrays_parts(arrays))  # one buffer: a few hundred small arrays per part
    if into is not None:
        into[name] = raw
    else:
        storage.write_bytes(raw, name)
    return {"file": name, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def read_state(resume: Resume) -> dict[str, np.ndarray]:
    """The arrays of a saved state, checked against the size and sha256 recorded when it was committed."""
    return read_saved_state(resume.run_ref.open(), {"file": resume.file, "size": resume.size,
                                                    "sha256": resume.sha256})


def read_saved_state(storage: Any, rec: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of the saved state ``rec`` (``file``, ``size``, ``sha256``: what :func:`write_state`
    returned) on a storage already open, checked against that record: one read (one GET on S3)."""
    from .portfolio import _arrays_read

    where = storage.display(rec["file"])
    try:
        raw = storage.read_bytes(rec["file"])
    except StorageError as exc:
        if exc.message != "file not found":
            raise
        raise StorageError("saved engine state is missing", file=where,
                           hint="rerun with --force to recompute in full") from None
    if len(raw) != rec["size"] or hashlib.sha256(raw).hexdigest() != rec["sha256"]:
        raise StorageError(f"saved engine state does not match its commit record ({len(raw)} bytes, "
                           f"{rec['size']} recorded)", file=where, hint="rerun with --force to recompute in full")
    return _arrays_read(raw, where)


# ---------------------------------------------------------------- one symbol's state

def symbol_state(i: int, run: np.ndarray, ind_states: dict[str, np.ndarray], payload_last: np.ndarray,
                 tail: dict[str, np.ndarray], seen: int, first_close: float, last_close: float,
                 spacing: Any) -> dict[str, np.ndarray]:
    """The arrays of symbol ``i`` of a part (see the module table); ``spacing`` is a
    ``PeriodsPerYearStream`` or its ``to_arrays()``."""
    from ..bars.schema import VALUE_COLUMNS

    p = f"{i}/"
    out = {p + "run": np.ascontiguousarray(run, dtype=np.float64),
           p + "payload": np.ascontiguousarray(payload_last, dtype=np.float64),
           p + "tail_ts": np.ascontiguousarray(tail["timestamp"], dtype=np.int64),
           p + "tail": np.stack([np.asarray(tail[c], dtype=np.float64) for c in VALUE_COLUMNS]),
           p + "i8": np.array([seen, int(tail["timestamp"][-1])], dtype=np.int64),
           p + "f8": np.array([first_close, last_close], dtype=np.float64)}
    for tok, st in ind_states.items():
        out[f"{p}ind/{tok}"] = np.asarray(st, dtype=np.float64)
    for k, v in (spacing if isinstance(spacing, Mapping) else spacing.to_arrays()).items():
        out[f"{p}spacing/{k}"] = v
    return out


@dataclass
class SymbolResume:
    """One symbol's saved state, unpacked (see :func:`symbol_state`)."""

    run: np.ndarray
    ind: dict[str, np.ndarray]
    payload: np.ndarray
    tail: dict[str, np.ndarray]
    seen: int
    last_ns: int
    first_close: float
    last_close: float
    spacing: Any


def unpack_symbol(arrays: dict[str, np.ndarray], i: int,
                  ind_index: dict[int, dict[str, np.ndarray]] | None = None) -> SymbolResume:
    """Symbol ``i``'s state from a part's state file (``ind_index``: :func:`indicator_states` of it)."""
    from ..bars.schema import VALUE_COLUMNS
    from ..kernels.stats import PeriodsPerYearStream

    p = f"{i}/"
    tail = {"timestamp": arrays[p + "tail_ts"].copy(),
            **{c: arrays[p + "tail"][k].copy() for k, c in enumerate(VALUE_COLUMNS)}}
    if ind_index is None:
        ind_index = indicator_states(arrays)
    ind = {tok: v.copy() for tok, v in ind_index.get(i, {}).items()}
    spacing = PeriodsPerYearStream.from_arrays({k: arrays[f"{p}spacing/{k}"] for k in ("spacings", "counts",
                                                                                        "scalars")})
    seen, last_ns = (int(v) for v in arrays[p + "i8"])
    first_close, last_close = (float(v) for v in arrays[p + "f8"])
    return SymbolResume(arrays[p + "run"].copy(), ind, arrays[p + "payload"].copy(), tail, seen, last_ns,
                        first_close, last_close, spacing)


def indicator_states(arrays: dict[str, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    """A part's saved indicator states by symbol (``<i>/ind/<token>``): index a state file once, not per symbol."""
    index: dict[int, dict[str, np.ndarray]] = {}
    for name, v in arrays.items():
        head, sep, tok = name.partition("/ind/")
        if sep:
            index.setdefault(int(head), {})[tok] = v
    return index


def whole_symbol_state(i: int, data: Any, batch: Any, run: np.ndarray, config: Any) -> dict[str, np.ndarray]:
    """The state of a symbol held whole after the container ran it: as a stream would have left it.

    ``config.saved_inputs(data, batch)`` gives what the stream's payload builder would
    carry (indicator kernel states, a replay's last signals), the payload's last column
    and the halo; see :meth:`admf_dask.sweep.SweepConfig.saved_inputs`.
    """
    bars = data.bars
    carried, payload_last, halo = config.saved_inputs(data, batch)
    keep = min(max(1, halo), len(bars))
    tail = {"timestamp": bars.timestamp[-keep:], **{c: v[-keep:] for c, v in bars.columns.items()}}
    close = bars.columns["close"]
    # the spacing counts as the stream's to_arrays gives them (the bars keep them: shared by aligned symbols)
    return symbol_state(i, run, carried, payload_last, tail, len(bars), float(close[0]), float(close[-1]),
                        bars.spacing_arrays())


# ---------------------------------------------------------------- finding the run to go on from

def chain_key(identity: dict[str, Any]) -> str:
    """The configuration's key across data versions: its identity without the data fingerprint.

    A replay's identity names its signal set, whose id changes with the data too; its
    config replaces that by the set's own configuration (``ReplayJob.chain_identity``).
    """
    return token({k: v for k, v in identity.items() if k != "data"})[:16]


def extends(bars: Any, symbol: str, fingerprint: str) -> bool:
    """Whether ``symbol``'s current version is the version ``fingerprint``, or extends it by appended bars only."""
    entry = bars.entry(symbol)
    if entry["fingerprint"] == fingerprint:
        return True
    return any(v.get("fingerprint") == fingerprint for v in entry.get("lineage") or ())


def plan_incremental(root: StorageRef, identity: dict[str, Any], kind: str, bars: Any, symbols: list[str],
                     n_sets: int) -> tuple[dict[str, Any] | None, str]:
    """The previous run to go on from and what of it to reuse, or None and why not.

    Returns ``(plan, note)``. ``plan`` has ``from`` (run id), ``layout`` and ``chunk_rows``
    of that run, ``parts`` (part -> its state record, for the parts whose symbols all
    only grew), ``reduce`` (set range start -> the reduce's state record, when every
    part goes on) and ``changed`` (symbols whose history changed: their parts are
    recomputed in full); ``note`` says in a line what happened.
    """
    from .. import __version__

    storage = root.child("runs").open()
    pointer = f"{CHAIN}/{kind}-{chain_key(identity)}.json"
    last = storage.read_json(pointer, missing=None)  # one GET on S3 (exists, then read: HEAD, LIST, GET)
    if last is None:
        return None, "no earlier run of this configuration"
    prev_id = last.get("run_id")
    prev = storage.read_json(f"{prev_id}/run.json", missing=None)
    if prev is None:
        return None, f"the last run {prev_id} is gone"
    if prev.get("status") != "complete" or prev.get("version") != __version__:
        return None, f"the last run {prev_id} is not complete or of another version"
    if prev.get("symbols") != symbols or prev.get("param_sets") != n_sets or not prev.get("resumable"):
        return None, f"the last run {prev_id} cannot be continued (other symbols, sets, or no saved state)"
    versions = prev.get("symbol_versions") or {}
    changed = [s for s in symbols if s not in versions or not extends(bars, s, versions[s])]
    parts = {}
    for j, (group, *_) in enumerate(prev["layout"]):
        if set(group) & set(changed):
            continue
        name = f"{prev_id}/done/part-{j:06d}.json"
        marker = storage.read_json(name) if storage.exists(name) else {}
        if "state" not in marker:
            return None, f"the last run {prev_id} saved no state for part {j}"
        parts[j] = {**marker["state"], "equity": marker.get("equity", [])}
    if not parts:
        return None, f"history changed (not only appended) for every part's symbols ({len(changed)} changed)"
    if changed:  # the portfolio is summed again over each part's whole history: is it all still there?
        runs = {f.split("/")[1] for meta in parts.values() for f in meta["equity"]}
        gone = sorted(r for r in runs if not storage.exists(f"{r}/run.json"))
        if gone:
            return None, f"history changed for {len(changed)} symbol(s) and run {gone[0]}, which holds the " \
                         "portfolio history of the others, is gone"
    note = (f"continuing from run {prev_id}: every symbol only grew" if not changed else
            f"continuing from run {prev_id}; history changed (not only appended) for {len(changed)} symbol(s) "
            f"({', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}): their parts are recomputed in full")
    return ({"from": prev_id, "layout": prev["layout"], "chunk_rows": prev.get("chunk_rows", 0), "parts": parts,
             "reduce": (prev.get("reduce_states") or {}) if not changed else {}, "changed": changed}, note)


def record_chain(root: StorageRef, identity: dict[str, Any], kind: str, run_id: str) -> None:
    """Point the configuration's chain at a run that just completed (one write)."""
    root.child("runs").open().write_json({"run_id": run_id}, f"{CHAIN}/{kind}-{chain_key(identity)}.json")
