"""A symbol's next version: new bars merged, appended or replacing, and how it relates to the last.

:func:`plan_bars` turns a symbol's new bars and its committed manifest entry (the
*base*) into a :class:`Plan`: the new entry, the data files it staged for it, and a
:class:`SymbolChange` for the report. The plan is a pure function of (new bars,
base): when another writer commits the same symbol first, the commit calls it again
on the new base (``BarStore.update``).

=======  ==============================================================  ==============================
mode     rule                                                            stored bars it reads
=======  ==============================================================  ==============================
merge    the union by timestamp; a bar in both whose values differ is    the years the new bars touch
         an error unless ``on_conflict`` is ``"new"`` (the new values)
         or ``"old"`` (the stored ones)
append   only bars strictly after the stored last bar; then as merge     the last year, if touched
replace  the new bars are the history                                    the last year, if needed to
                                                                         tell a pure append
=======  ==============================================================  ==============================

Files are one per calendar year; a year the new bars do not touch keeps its file.

Every entry records ``change``, how it relates to the previous committed version of
the symbol: ``new``; ``unchanged`` (the same bars); ``append`` (its first
``rows`` of the previous version are exactly the previous bars, byte for byte, and
there are more after them); ``merge`` (history changed or bars were inserted before
the previous last bar); ``replace`` (a replacement that is none of these). And
``lineage``: the earlier versions it extends by pure appends, oldest first,
``{"fingerprint", "rows", "last_ns"}`` each, at most :data:`LINEAGE_MAX` (``[]``
after a merge or replace; kept when unchanged).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..errors import ConfigError, DataError, did_you_mean
from ..storage import Storage
from .schema import VALUE_COLUMNS, Bars, check_symbol
from .txn import Txn

__all__ = ["CHANGES", "LINEAGE_MAX", "MODES", "ON_CONFLICT", "Plan", "SymbolChange", "check_mode", "make_entry",
           "plan_bars", "plan_staged", "write_symbol_files"]

MODES = ("merge", "append", "replace")
ON_CONFLICT = ("new", "old")
CHANGES = ("new", "unchanged", "append", "merge", "replace")
LINEAGE_MAX = 64
_MIN_NS, _MAX_NS = np.iinfo(np.int64).min, np.iinfo(np.int64).max


def check_mode(mode: object, on_conflict: object = None) -> None:
    """Raise ConfigError (with a "did you mean") unless ``mode`` and ``on_conflict`` are valid together.

    >>> check_mode("merge", "new")
    >>> check_mode("apend")
    Traceback (most recent call last):
    ...
    admf_dask.errors.ConfigError: mode must be merge, append or replace, got 'apend' [key mode]; did you mean 'append'?
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be merge, append or replace, got {mode!r}", key="mode",
                          hint=did_you_mean(str(mode), MODES))
    if on_conflict is not None and on_conflict not in ON_CONFLICT:
        raise ConfigError(f"on_conflict must be new or old, got {on_conflict!r}", key="on_conflict",
                          hint=did_you_mean(str(on_conflict), ON_CONFLICT))
    if on_conflict is not None and mode != "merge":
        raise ConfigError(f"on_conflict applies to mode merge only, not {mode}", key="on_conflict",
                          hint="append and replace never keep two versions of a bar")


def iso(ns: int) -> str:
    return pd.Timestamp(int(ns), tz="UTC").isoformat()


def _hash_arrays(timestamp: np.ndarray, columns: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(timestamp, dtype="<i8").tobytes())
    for name in VALUE_COLUMNS:
        h.update(np.ascontiguousarray(columns[name], dtype="<f8").tobytes())
    return h.hexdigest()


def _years(timestamp: np.ndarray) -> np.ndarray:
    return timestamp.view("datetime64[ns]").astype("datetime64[Y]").astype(np.int64) + 1970


def _year_slices(timestamp: np.ndarray) -> list[tuple[int, int, int]]:
    """``(year, start, stop)`` of each calendar year in sorted timestamps."""
    if len(timestamp) == 0:
        return []
    years = _years(timestamp)
    cuts = [0, *(np.flatnonzero(np.diff(years)) + 1).tolist(), len(timestamp)]
    return [(int(years[a]), a, b) for a, b in zip(cuts[:-1], cuts[1:])]


def make_entry(files: list[dict[str, Any]]) -> dict[str, Any]:
    """A symbol's manifest entry from its files' entries (any order): rows, range, fingerprint."""
    files = sorted(files, key=lambda f: f["first_ns"])
    fingerprint = hashlib.sha256("|".join(f["sha256"] for f in files).encode()).hexdigest()
    first, last = files[0]["first_ns"], files[-1]["last_ns"]
    return {"rows": sum(f["rows"] for f in files), "first_ns": first, "last_ns": last, "first": iso(first),
            "last": iso(last), "fingerprint": fingerprint, "files": files}


def stage_piece(storage: Storage, txn: Txn, symbol: str, timestamp: np.ndarray,
                columns: dict[str, np.ndarray]) -> tuple[dict[str, Any], str]:
    """Write one year of bars to the transaction's staging; return its file entry and the staged path."""
    digest = _hash_arrays(timestamp, columns)
    year = int(_years(timestamp[:1])[0])
    staged = txn.staged_path(symbol, year, digest)
    buf = io.BytesIO()
    pq.write_table(Bars(symbol, timestamp, {c: columns[c] for c in VALUE_COLUMNS}).to_arrow(), buf,
                   compression="snappy")
    storage.write_bytes(buf.getvalue(), staged)
    meta = {"path": txn.final_path(symbol, year, digest), "year": year, "rows": len(timestamp), "sha256": digest,
            "first_ns": int(timestamp[0]), "last_ns": int(timestamp[-1])}
    return meta, staged


def write_symbol_files(storage: Storage, bars: Bars, txn: Txn | str | None = None) -> dict[str, Any]:
    """Stage one symbol's bars as one Parquet file per year; return its manifest entry.

    Nothing becomes visible until :meth:`BarStore.commit` records the entry: the files
    are written under ``_staging/<txn>/`` (see :mod:`admf_dask.bars.txn`) and moved into
    place by the commit. The entry's ``"staged"`` maps each file's final path to its
    staged one and ``"txn"`` names the transaction. Runs on workers in parallel writes:
    it takes a :class:`Storage` and a transaction id, not the store. Without ``txn`` a
    transaction of its own is started.
    """
    check_symbol(bars.symbol)
    if len(bars.timestamp) == 0:
        raise DataError("no bars to write", symbol=bars.symbol, rule="non-empty")
    txn = Txn(storage) if txn is None else txn if isinstance(txn, Txn) else Txn(storage, txn)
    files, staged = _stage_all(storage, txn, bars)
    return {"symbol": bars.symbol, **make_entry(files), "staged": staged, "txn": txn.id}


def _stage_all(storage: Storage, txn: Txn, bars: Bars) -> tuple[list[dict[str, Any]], dict[str, str]]:
    files, staged = [], {}
    for _, a, b in _year_slices(bars.timestamp):
        meta, path = stage_piece(storage, txn, bars.symbol, bars.timestamp[a:b],
                                 {c: bars.columns[c][a:b] for c in VALUE_COLUMNS})
        files.append(meta)
        staged[meta["path"]] = path
    return files, staged


@dataclass(frozen=True)
class SymbolChange:
    """What a commit did to one symbol: the kind of change and the bars counted."""

    symbol: str
    change: str
    rows_before: int
    rows: int
    added: int = 0        # bars whose timestamp was not stored
    overwritten: int = 0  # stored bars replaced by differing new ones (merge, on_conflict="new")
    kept: int = 0         # differing new bars dropped for the stored ones (merge, on_conflict="old")
    removed: int = 0      # stored rows dropped (replace)

    def line(self) -> str:
        """One report line, e.g. ``AAA: append, +262 bars (2,346 -> 2,608 rows)``."""
        span = f"({self.rows_before:,} -> {self.rows:,} rows)"
        if self.change == "new":
            text = f"new, {self.rows:,} rows"
        elif self.change == "unchanged":
            text = f"unchanged, {self.rows:,} rows"
        elif self.change == "replace":
            text = f"replace, removed {self.removed:,} stored rows, wrote {self.rows:,} {span}"
        else:
            parts = [f"+{self.added:,} bar{'s' if self.added != 1 else ''}"] if self.added else []
            parts += [f"{self.overwritten:,} overwritten"] if self.overwritten else []
            text = f"{', '.join([self.change, *parts])} {span}"
        if self.kept:
            text += f"; {self.kept:,} differing new bars ignored, stored ones kept"
        return f"{self.symbol}: {text}"


@dataclass
class Plan:
    """A symbol's next version against ``base``: its entry (with change and lineage) and staged files."""

    symbol: str
    base: dict[str, Any] | None
    entry: dict[str, Any]
    staged: dict[str, str]  # final path -> staged path, for the entry's files not in the base
    change: SymbolChange


def lineage_after(change: str, base: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The lineage of a new version given how it relates to ``base``."""
    if base is None or change not in ("unchanged", "append"):
        return []
    old = [dict(v) for v in base.get("lineage") or []]
    if change == "unchanged":
        return old
    return [*old, {"fingerprint": base["fingerprint"], "rows": base["rows"], "last_ns": base["last_ns"]}][-LINEAGE_MAX:]


def _finish(symbol: str, base: dict[str, Any] | None, files: list[dict[str, Any]], staged: dict[str, str],
            change: str, **counts: int) -> Plan:
    if change == "unchanged":
        entry = {k: v for k, v in base.items() if k not in ("change", "lineage")}
    else:
        entry = make_entry(files)
    entry["change"] = change
    entry["lineage"] = lineage_after(change, base)
    listed = {f["path"] for f in entry["files"]}
    staged = {final: path for final, path in staged.items() if final in listed}
    rows_before = base["rows"] if base is not None else 0
    return Plan(symbol, base, entry, staged, SymbolChange(symbol, change, rows_before, entry["rows"], **counts))


def _read_bars(store: Any, meta: dict[str, Any], symbol: str, path: str | None = None) -> Bars:
    """A whole data file (a committed one, or a staged one at ``path``) as Bars."""
    meta = {**meta, "path": path} if path is not None else meta
    return Bars.from_arrow(symbol, store._read_file(meta, symbol, list(VALUE_COLUMNS), _MIN_NS, _MAX_NS))


def plan_bars(store: Any, txn: Txn, bars: Bars, base: dict[str, Any] | None, *, mode: str = "merge",
              on_conflict: str | None = None, file: str | None = None) -> Plan:
    """The next version of ``bars.symbol`` from validated new bars and its committed entry ``base``.

    Raises DataError naming the symbol, the file and the timestamp when the bars break
    the mode's rule (a differing overlap in merge, a bar not after the stored last one
    in append). Stages only the files the new version needs.
    """
    symbol = bars.symbol
    if len(bars.timestamp) == 0:
        raise DataError("no bars to write", symbol=symbol, file=file, rule="non-empty")
    if base is None:
        files, staged = _stage_all(store.storage, txn, bars)
        return _finish(symbol, None, files, staged, "new", added=len(bars))
    if mode == "replace":
        files, staged = _stage_all(store.storage, txn, bars)

        def new_year(meta: dict[str, Any]) -> Bars:
            a, b = np.searchsorted(bars.timestamp, [meta["first_ns"], meta["last_ns"]], side="left")
            return Bars(symbol, bars.timestamp[a:b + 1], {c: bars.columns[c][a:b + 1] for c in VALUE_COLUMNS})

        return _against_base(store, symbol, base, files, staged, new_year)
    if mode == "append" and bars.timestamp[0] <= base["last_ns"]:
        late = int(np.searchsorted(bars.timestamp, base["last_ns"], side="right"))
        raise DataError(f"append mode takes only bars after the stored last bar {iso(base['last_ns'])}; "
                        f"the first new bar is {iso(bars.timestamp[0])}"
                        + (f" ({late:,} new bars are not after it)" if late > 1 else ""),
                        symbol=symbol, file=file, rule="append-after-last",
                        hint="use --mode merge to add bars inside the stored history")
    return _merge(store, txn, bars, base, on_conflict, file)


def _merge(store: Any, txn: Txn, bars: Bars, base: dict[str, Any], on_conflict: str | None,
           file: str | None) -> Plan:
    symbol = bars.symbol
    by_year: dict[int, list[dict[str, Any]]] = {}
    for f in base["files"]:
        by_year.setdefault(f["year"], []).append(f)
    slices = _year_slices(bars.timestamp)
    touched = {year for year, _, _ in slices}
    files = [f for f in base["files"] if f["year"] not in touched]
    staged: dict[str, str] = {}
    added = overwritten = kept = differ_total = 0
    first_added = _MAX_NS
    conflict: tuple[int, str, float, float] | None = None
    for year, a, b in slices:
        ts = bars.timestamp[a:b]
        new = {c: bars.columns[c][a:b] for c in VALUE_COLUMNS}
        olds = by_year.get(year, [])
        stored = [_read_bars(store, f, symbol) for f in olds]
        s_ts = np.concatenate([s.timestamp for s in stored]) if stored else np.empty(0, np.int64)
        s_cols = {c: np.concatenate([s.columns[c] for s in stored]) if stored else np.empty(0) for c in VALUE_COLUMNS}
        common, si, ti = np.intersect1d(s_ts, ts, assume_unique=True, return_indices=True)
        differ = np.zeros(len(common), bool)
        for c in VALUE_COLUMNS:
            differ |= s_cols[c][si] != new[c][ti]
        n_differ = int(differ.sum())
        if n_differ:
            differ_total += n_differ
            if conflict is None:
                i = int(np.flatnonzero(differ)[0])
                col = next(c for c in VALUE_COLUMNS if s_cols[c][si[i]] != new[c][ti[i]])
                conflict = (int(common[i]), col, float(s_cols[col][si[i]]), float(new[col][ti[i]]))
            if on_conflict == "new":
                overwritten += n_differ
            elif on_conflict == "old":
                kept += n_differ
        only = np.ones(len(ts), bool)
        only[ti] = False
        n_only = int(only.sum())
        if n_only:
            added += n_only
            first_added = min(first_added, int(ts[only][0]))
        if n_only == 0 and not (n_differ and on_conflict == "new"):
            files.extend(olds)  # nothing new in this year: its stored file stays as it is
            continue
        if differ_total and on_conflict is None:
            continue  # fails below, once every conflict is counted
        if on_conflict == "new" and n_differ:
            for c in VALUE_COLUMNS:
                s_cols[c] = s_cols[c].copy()
                s_cols[c][si[differ]] = new[c][ti[differ]]
        m_ts = np.concatenate([s_ts, ts[only]])
        order = np.argsort(m_ts, kind="stable")
        meta, path = stage_piece(store.storage, txn, symbol, m_ts[order],
                                 {c: np.concatenate([s_cols[c], new[c][only]])[order] for c in VALUE_COLUMNS})
        files.append(meta)
        staged[meta["path"]] = path
    if differ_total and on_conflict is None:
        at, col, old, new_value = conflict
        raise DataError(f"the bar at {iso(at)} differs from the stored one ({col}: stored {old!r}, new {new_value!r})"
                        + (f"; {differ_total:,} overlapping bars differ" if differ_total > 1 else ""),
                        symbol=symbol, file=file, rule="merge-conflict",
                        hint="pass --on-conflict new to take the new bars or old to keep the stored ones, "
                             "or use --mode replace")
    if added == 0 and overwritten == 0:
        change = "unchanged"
    elif overwritten == 0 and first_added > base["last_ns"]:
        change = "append"
    else:
        change = "merge"
    return _finish(symbol, base, files, staged, change, added=added, overwritten=overwritten, kept=kept)


def plan_staged(store: Any, staged_entry: dict[str, Any], base: dict[str, Any] | None) -> Plan:
    """The plan of an entry already staged whole (:func:`write_symbol_files`): it replaces ``base``."""
    symbol = staged_entry["symbol"]
    files = [dict(f) for f in staged_entry["files"]]
    staged = dict(staged_entry["staged"])
    if base is None:
        return _finish(symbol, None, files, staged, "new", added=staged_entry["rows"])

    def new_year(meta: dict[str, Any]) -> Bars:
        return _read_bars(store, meta, symbol, staged_entry["staged"][meta["path"]])

    return _against_base(store, symbol, base, files, staged, new_year)


def _against_base(store: Any, symbol: str, base: dict[str, Any], files: list[dict[str, Any]],
                  staged: dict[str, str], new_year: Callable[[dict[str, Any]], Bars]) -> Plan:
    """A whole new history against the stored one: unchanged, a pure append, or a replacement.

    A new year file identical to a stored one (same year and content hash) is the
    stored file, so rewriting identical data adds no file.
    """
    stored = {(f["year"], f["sha256"], f["rows"]): f for f in base["files"]}
    files = [stored.get((f["year"], f["sha256"], f["rows"]), f) for f in files]
    rows = sum(f["rows"] for f in files)
    if make_entry(files)["fingerprint"] == base["fingerprint"]:
        return _finish(symbol, base, files, staged, "unchanged")
    if rows > base["rows"] and _extends(store, symbol, base, sorted(files, key=lambda f: f["first_ns"]), new_year):
        return _finish(symbol, base, files, staged, "append", added=rows - base["rows"])
    return _finish(symbol, base, files, staged, "replace", added=rows, removed=base["rows"])


def _extends(store: Any, symbol: str, base: dict[str, Any], files: list[dict[str, Any]],
             new_year: Callable[[dict[str, Any]], Bars]) -> bool:
    """Whether ``files`` (sorted) start with exactly the stored bars: equal years, then one starting with the last."""
    old = base["files"]
    k = len(old)
    if len(files) < k:
        return False
    for o, n in zip(old[:-1], files[:k - 1]):
        if o["sha256"] != n["sha256"] or o["year"] != n["year"]:
            return False
    last, cand = old[-1], files[k - 1]
    if cand["year"] != last["year"]:
        return False
    if cand["sha256"] == last["sha256"]:
        return len(files) > k
    if cand["rows"] <= last["rows"]:
        return False
    before, after = _read_bars(store, last, symbol), new_year(cand)
    n = len(before)
    if not np.array_equal(before.timestamp, after.timestamp[:n]):
        return False
    return all(np.array_equal(before.columns[c].view(np.int64), after.columns[c][:n].view(np.int64))
               for c in VALUE_COLUMNS)
