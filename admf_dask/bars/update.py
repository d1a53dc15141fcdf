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

Files are one per *bucket* of the dataset's granularity (:data:`GRANULARITIES`):
a calendar year (``year``), ten calendar years (``decade``) or the whole history
(``symbol``); a bucket the new bars do not touch keeps its file. Inside a file each
calendar year is its own row group, and a file holding several years records each
year's rows, bounds and content hash under ``groups``. A symbol's fingerprint hashes
the years' content hashes, so it does not depend on the granularity: repacking a
dataset (:func:`plan_repack`) keeps every fingerprint.

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

__all__ = ["CHANGES", "GRANULARITIES", "LINEAGE_MAX", "MODES", "ON_CONFLICT", "WHOLE_FILE_ROWS", "Plan",
           "SymbolChange", "check_granularity", "check_mode", "granularity_of", "granularity_for", "group_span", "make_entry",
           "part_digests", "plan_bars", "plan_repack", "plan_staged", "write_symbol_files"]

MODES = ("merge", "append", "replace")
ON_CONFLICT = ("new", "old")
CHANGES = ("new", "unchanged", "append", "merge", "replace")
GRANULARITIES = ("year", "decade", "symbol")
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


def check_granularity(granularity: object) -> str:
    """The granularity if valid, else ConfigError (with a "did you mean").

    >>> check_granularity("symbol")
    'symbol'
    >>> check_granularity("years")
    Traceback (most recent call last):
    ...
    admf_dask.errors.ConfigError: granularity must be year, decade or symbol, got 'years' [key granularity]; did you mean 'year'?
    """
    if granularity not in GRANULARITIES:
        raise ConfigError(f"granularity must be year, decade or symbol, got {granularity!r}", key="granularity",
                          hint=did_you_mean(str(granularity), GRANULARITIES))
    return str(granularity)


def granularity_of(manifest: dict[str, Any]) -> str | None:
    """A manifest's granularity: its ``granularity`` key, ``year`` for datasets written before
    there was one, None for a dataset that does not exist yet (no symbols, no key)."""
    return manifest.get("granularity") or ("year" if manifest.get("symbols") else None)


def granularity_for(bars: list[Bars] | None = None, freq: str | None = None) -> str:
    """The default granularity of a new dataset, from its bar frequency.

    Daily bars or coarser (a median spacing of 20 hours or more): ``symbol``, one file
    per symbol (10 years of daily bars are ~150 kB). Hourly-ish bars: ``decade``.
    Finer (minute bars, ~100k bars a year): ``year``. ``freq`` (``"daily"``,
    ``"minute"``) decides without looking at bars.

    >>> granularity_for(freq="daily"), granularity_for(freq="minute")
    ('symbol', 'year')
    """
    if freq is not None:
        return "symbol" if freq == "daily" else "year"
    spacings = [float(np.median(np.diff(b.timestamp))) for b in bars or [] if len(b.timestamp) > 1]
    if not spacings:
        return "year"
    spacing = float(np.median(spacings))
    return "symbol" if spacing >= 20 * 3600e9 else "decade" if spacing >= 3600e9 else "year"


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


def _buckets(timestamp: np.ndarray, granularity: str) -> list[tuple[int | None, int, int]]:
    """``(bucket, start, stop)`` of each file's bars: the calendar year, the decade's first
    year, or None (the whole history) for ``symbol``."""
    if granularity == "symbol":
        return [(None, 0, len(timestamp))] if len(timestamp) else []
    if granularity == "year":
        return _year_slices(timestamp)
    out: list[tuple[int | None, int, int]] = []
    for year, a, b in _year_slices(timestamp):
        decade = year - year % 10
        if out and out[-1][0] == decade:
            out[-1] = (decade, out[-1][1], b)
        else:
            out.append((decade, a, b))
    return out


def _pieces(f: dict[str, Any]) -> list[str]:
    """The content hashes a file contributes to its symbol's fingerprint: one per calendar year."""
    return [g["sha256"] for g in f["groups"]] if "groups" in f else [f["sha256"]]


def make_entry(files: list[dict[str, Any]]) -> dict[str, Any]:
    """A symbol's manifest entry from its files' entries (any order): rows, range, fingerprint.

    The fingerprint hashes the content hash of every calendar year, whatever the files
    holding them: the same bars give the same fingerprint at every granularity.
    """
    files = sorted(files, key=lambda f: f["first_ns"])
    fingerprint = hashlib.sha256("|".join(h for f in files for h in _pieces(f)).encode()).hexdigest()
    first, last = files[0]["first_ns"], files[-1]["last_ns"]
    return {"rows": sum(f["rows"] for f in files), "first_ns": first, "last_ns": last, "first": iso(first),
            "last": iso(last), "fingerprint": fingerprint, "files": files}


def _encoding(timestamp: np.ndarray, columns: dict[str, np.ndarray]) -> dict[str, Any]:
    """How a data file's columns are encoded: dictionary encoding (and snappy) only for a value column
    with few distinct values, where it pays; otherwise plain, with snappy only for the timestamps.

    A year of daily prices has as many distinct values as bars: there a dictionary doubles the
    work of reading (the dictionary, then the indices) and snappy finds nothing to compress, and
    a file read without either decodes in ~60 % of the time and is ~10 % smaller. Prices on a
    tick grid and volumes often repeat (minute bars): a dictionary of at most a quarter of the
    rows halves those columns or better. Every Parquet reader reads every combination, so
    files written before this choice read as they did.
    """
    rows = len(timestamp)
    repeats = [c for c in VALUE_COLUMNS if rows and 4 * len(np.unique(columns[c])) <= rows]
    return {"use_dictionary": repeats or False,
            "compression": {"timestamp": "snappy", **{c: "snappy" if c in repeats else "none" for c in VALUE_COLUMNS}}}


# Files of at most this many rows (~2.5 MB of the six columns) are read whole, then parsed (the store's
# _WHOLE_FILE_ROWS); larger ones are read in part, and their entries record part_digests.
WHOLE_FILE_ROWS = 50_000


def group_span(metadata: Any, group: int) -> tuple[int, int]:
    """The bytes ``[start, stop)`` of a Parquet file holding row group ``group``'s column chunks."""
    rg = metadata.row_group(group)
    spans = []
    for j in range(rg.num_columns):
        cc = rg.column(j)
        first = min(o for o in (cc.dictionary_page_offset, cc.data_page_offset) if o is not None and o > 0)
        spans.append((first, first + cc.total_compressed_size))
    return min(a for a, _ in spans), max(b for _, b in spans)


def part_digests(data: bytes) -> dict[str, Any]:
    """``footer_sha256`` (the file's last ``8 + footer length`` bytes: its metadata, their length and the
    magic) and ``group_sha256`` (each row group's bytes, :func:`group_span`) of a Parquet file: what a
    reader of some row groups checks (the footer, then each group it decodes) instead of the whole file."""
    import pyarrow as pa

    footer = 8 + int.from_bytes(data[-8:-4], "little")
    md = pq.read_metadata(pa.BufferReader(data))
    return {"footer_sha256": hashlib.sha256(data[-footer:]).hexdigest(),
            "group_sha256": [hashlib.sha256(data[a:b]).hexdigest()
                             for a, b in (group_span(md, i) for i in range(md.num_row_groups))]}


def stage_piece(storage: Storage, txn: Txn, symbol: str, timestamp: np.ndarray,
                columns: dict[str, np.ndarray], granularity: str = "year") -> tuple[dict[str, Any], str | bytes]:
    """Write one file's bars to the transaction's staging; return its file entry and the staged path
    (or the file's bytes, when the transaction keeps them in memory for its commit: :meth:`Txn.keep`).

    One row group per calendar year. A ``year`` file's hash is its bars' hash; a file
    of a coarser granularity hashes its years' hashes and lists them under ``groups``
    (rows, bounds and hash of each row group, in order). The entry also records the
    file's size (``bytes``) and the sha256 of its bytes (``file_sha256``), which every
    read checks (:meth:`BarStore._check_bytes`); a file over :data:`WHOLE_FILE_ROWS` rows,
    which readers read in part, also the sha256 of its footer and of each row group's
    bytes (:func:`part_digests`).
    """
    years = _year_slices(timestamp)
    table = Bars(symbol, timestamp, {c: columns[c] for c in VALUE_COLUMNS}).to_arrow()
    buf = io.BytesIO()
    if granularity == "year":
        digest = _hash_arrays(timestamp, columns)
        bucket = years[0][0]
        groups = None
        pq.write_table(table, buf, **_encoding(timestamp, columns))
    else:
        groups = [{"year": y, "rows": b - a, "sha256": _hash_arrays(timestamp[a:b], {c: columns[c][a:b]
                                                                                  for c in VALUE_COLUMNS}),
                   "first_ns": int(timestamp[a]), "last_ns": int(timestamp[b - 1])} for y, a, b in years]
        digest = hashlib.sha256("|".join(g["sha256"] for g in groups).encode()).hexdigest()
        bucket = None if granularity == "symbol" else years[0][0] - years[0][0] % 10
        with pq.ParquetWriter(buf, table.schema, **_encoding(timestamp, columns)) as writer:
            for _, a, b in years:
                writer.write_table(table.slice(a, b - a), row_group_size=b - a)
    data = buf.getvalue()
    if txn.keep(data):
        staged: str | bytes = data
    else:
        staged = txn.staged_path(symbol, bucket, digest)
        storage.write_bytes(data, staged)
    meta = {"path": txn.final_path(symbol, bucket, digest, granularity), "year": bucket, "rows": len(timestamp),
            "sha256": digest, "first_ns": int(timestamp[0]), "last_ns": int(timestamp[-1]), "bytes": len(data),
            "file_sha256": hashlib.sha256(data).hexdigest()}
    if groups is not None:
        meta["groups"] = groups
    if len(timestamp) > WHOLE_FILE_ROWS:
        meta.update(part_digests(data))
    return meta, staged


def write_symbol_files(storage: Storage, bars: Bars, txn: Txn | str | None = None,
                       granularity: str = "year") -> dict[str, Any]:
    """Stage one symbol's bars as Parquet files of ``granularity``; return its manifest entry.

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
    check_granularity(granularity)
    files, staged = _stage_all(storage, txn, bars, granularity)
    return {"symbol": bars.symbol, **make_entry(files), "staged": staged, "txn": txn.id, "granularity": granularity}


def _stage_all(storage: Storage, txn: Txn, bars: Bars,
               granularity: str = "year") -> tuple[list[dict[str, Any]], dict[str, str | bytes]]:
    files, staged = [], {}
    for _, a, b in _buckets(bars.timestamp, granularity):
        meta, path = stage_piece(storage, txn, bars.symbol, bars.timestamp[a:b],
                                 {c: bars.columns[c][a:b] for c in VALUE_COLUMNS}, granularity)
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
    staged: dict[str, str | bytes]  # final path -> staged path (or bytes held: Txn.keep), files not in the base
    change: SymbolChange


def lineage_after(change: str, base: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The lineage of a new version given how it relates to ``base``."""
    if base is None or change not in ("unchanged", "append"):
        return []
    old = [dict(v) for v in base.get("lineage") or []]
    if change == "unchanged":
        return old
    return [*old, {"fingerprint": base["fingerprint"], "rows": base["rows"], "last_ns": base["last_ns"]}][-LINEAGE_MAX:]


def _finish(symbol: str, base: dict[str, Any] | None, files: list[dict[str, Any]], staged: dict[str, str | bytes],
            change: str, **counts: int) -> Plan:
    if change == "unchanged":
        entry = {k: v for k, v in base.items() if k not in ("change", "lineage")}
        if {f["path"] for f in files} != {f["path"] for f in base["files"]}:  # a damaged file written anew
            entry["files"] = sorted(files, key=lambda f: f["first_ns"])
    else:
        entry = make_entry(files)
    entry["change"] = change
    entry["lineage"] = lineage_after(change, base)
    listed = {f["path"] for f in entry["files"]}
    staged = {final: path for final, path in staged.items() if final in listed}
    rows_before = base["rows"] if base is not None else 0
    return Plan(symbol, base, entry, staged, SymbolChange(symbol, change, rows_before, entry["rows"], **counts))


def _read_bars(store: Any, meta: dict[str, Any], symbol: str, path: str | bytes | None = None) -> Bars:
    """A whole data file (a committed one, a staged one at ``path``, or one held in memory: ``path`` its bytes)
    as Bars."""
    if isinstance(path, bytes):
        return Bars.from_arrow(symbol, store._read_file(meta, symbol, list(VALUE_COLUMNS), _MIN_NS, _MAX_NS,
                                                        data=path))
    meta = {**meta, "path": path} if path is not None else meta
    return Bars.from_arrow(symbol, store._read_file(meta, symbol, list(VALUE_COLUMNS), _MIN_NS, _MAX_NS))


def plan_bars(store: Any, txn: Txn, bars: Bars, base: dict[str, Any] | None, *, mode: str = "merge",
              on_conflict: str | None = None, file: str | None = None, granularity: str = "year") -> Plan:
    """The next version of ``bars.symbol`` from validated new bars and its committed entry ``base``.

    Raises DataError naming the symbol, the file and the timestamp when the bars break
    the mode's rule (a differing overlap in merge, a bar not after the stored last one
    in append). Stages only the files the new version needs.
    """
    symbol = bars.symbol
    if len(bars.timestamp) == 0:
        raise DataError("no bars to write", symbol=symbol, file=file, rule="non-empty")
    if base is None:
        files, staged = _stage_all(store.storage, txn, bars, granularity)
        return _finish(symbol, None, files, staged, "new", added=len(bars))
    if mode == "replace":
        files, staged = _stage_all(store.storage, txn, bars, granularity)

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
    return _merge(store, txn, bars, base, on_conflict, file, granularity)


def _merge(store: Any, txn: Txn, bars: Bars, base: dict[str, Any], on_conflict: str | None,
           file: str | None, granularity: str = "year") -> Plan:
    symbol = bars.symbol
    by_year: dict[int, list[dict[str, Any]]] = {}
    for f in base["files"]:
        by_year.setdefault(f["year"], []).append(f)
    slices = _buckets(bars.timestamp, granularity)  # "year" below: the bucket of a file of this granularity
    touched = {year for year, _, _ in slices}
    files = [f for f in base["files"] if f["year"] not in touched]
    staged: dict[str, str | bytes] = {}
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
                                 {c: np.concatenate([s_cols[c], new[c][only]])[order] for c in VALUE_COLUMNS},
                                 granularity)
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
                  staged: dict[str, str | bytes], new_year: Callable[[dict[str, Any]], Bars]) -> Plan:
    """A whole new history against the stored one: unchanged, a pure append, or a replacement.

    A new year file identical to a stored one (same year and content hash) is the
    stored file, so rewriting identical data adds no file; unless the stored file no
    longer holds what its commit recorded (:meth:`BarStore._intact`, read back to
    tell): then the new file replaces it, and writing the bars again repairs it.
    """
    stored = {(f["year"], f["sha256"], f["rows"]): f for f in base["files"]}
    reused = [stored.get((f["year"], f["sha256"], f["rows"])) for f in files]
    intact = iter(store._intact([old for old in reused if old is not None], symbol))
    files = [old if old is not None and next(intact) else f for old, f in zip(reused, files)]
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


def plan_repack(store: Any, txn: Txn, symbol: str, base: dict[str, Any] | None, granularity: str) -> Plan:
    """``symbol``'s committed bars (``base``) staged again as files of ``granularity``.

    The bars are read from the base's files and written unchanged: the entry keeps its
    fingerprint (it hashes calendar years, see :func:`make_entry`), ``change`` and
    ``lineage``; only ``files`` differ.
    """
    if base is None:
        raise DataError("the symbol was removed while the dataset was being repacked", symbol=symbol,
                        hint="run the repack again")
    stored = [_read_bars(store, f, symbol) for f in sorted(base["files"], key=lambda f: f["first_ns"])]
    bars = Bars(symbol, np.concatenate([b.timestamp for b in stored]),
                {c: np.concatenate([b.columns[c] for b in stored]) for c in VALUE_COLUMNS})
    files, staged = _stage_all(store.storage, txn, bars, granularity)
    entry = {**base, **make_entry(files)}
    if entry["fingerprint"] != base["fingerprint"]:  # a file written by something else than admf
        entry["lineage"] = []
    return Plan(symbol, base, entry, staged, SymbolChange(symbol, "unchanged", base["rows"], entry["rows"]))
