"""Ingest vendor files (CSV or Parquet) into a BarStore, all or nothing.

Accepted shapes:

* one file per symbol: the symbol is ``symbol=`` if given, else the file name's stem
  (``AAPL.csv`` -> ``AAPL``);
* one long file with a ``symbol`` (or ``ticker``) column holding many symbols.

Column names are matched loosely: case, spaces and dashes do not matter, and the
common vendor names are understood (``Date``, ``Datetime``, ``timestamp``, ``time``;
``Open``/``o``, ``High``, ``Low``, ``Close``/``last``, ``Volume``/``vol``; ``Adj Close``).
A separate ``Date`` and ``Time`` pair is joined. Timestamps with an offset or zone are
converted to UTC; naive ones are taken in ``tz`` (default UTC). ``Adj Close`` is
ignored unless ``adjust=True``, which scales open/high/low/close by adj_close/close.

Every file is parsed and validated before anything is written, so any error leaves
the store exactly as it was. With ``repair=True`` rows are sorted by time and exact
duplicate rows dropped, and the changes are reported; conflicting rows for the same
timestamp are still an error.

Stored history is respected (``mode``, see :mod:`admf_dask.bars.update`): ``merge``
(the default) adds the new bars to the stored ones by timestamp, and a stored bar
whose values differ from the new one is an error unless ``on_conflict`` says which
wins; ``append`` takes only bars after the stored last one; ``replace`` makes the
file the symbol's whole history and reports the stored rows it removed. The report
has one line per symbol saying what changed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from .schema import VALUE_COLUMNS, Bars, check_symbol, validate_arrays
from .store import BarStore
from .update import SymbolChange, check_mode

__all__ = ["IngestReport", "ingest", "read_source"]

_ALIASES = {
    "timestamp": ("timestamp", "datetime", "date_time", "date", "time", "ts", "dt"),
    "open": ("open", "o", "open_price"),
    "high": ("high", "h", "high_price"),
    "low": ("low", "l", "low_price"),
    "close": ("close", "c", "last", "close_price"),
    "adj_close": ("adj_close", "adjclose", "adjusted_close", "adj"),
    "volume": ("volume", "vol", "v"),
    "symbol": ("symbol", "ticker", "sym"),
}
_LOOKUP = {alias: canon for canon, aliases in _ALIASES.items() for alias in aliases}


@dataclass
class IngestReport:
    """What an ingest committed: bars read per symbol, each symbol's change, and any repairs made."""

    rows: dict[str, int] = field(default_factory=dict)
    repairs: list[str] = field(default_factory=list)
    fingerprint: str = ""
    mode: str = "merge"
    changes: dict[str, SymbolChange] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"ingested {len(self.rows)} symbol(s), {sum(self.rows.values()):,} bars ({self.mode}); "
               f"dataset fingerprint {self.fingerprint[:12]}"]
        out += [f"  {c.line()}" for c in self.changes.values()]
        out += [f"repaired: {r}" for r in self.repairs]
        return out


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _rename(frame: pd.DataFrame, file: str) -> pd.DataFrame:
    """Map vendor column names onto the schema; raise on missing or ambiguous columns."""
    normed = {c: _norm(c) for c in frame.columns}
    if "timestamp" not in normed.values() and "datetime" not in normed.values() \
            and {"date", "time"} <= set(normed.values()):
        dcol = next(c for c, n in normed.items() if n == "date")
        tcol = next(c for c, n in normed.items() if n == "time")
        frame = frame.assign(**{"__timestamp": frame[dcol].astype("string") + " " + frame[tcol].astype("string")})
        frame = frame.drop(columns=[dcol, tcol])
        normed = {c: _norm(c) for c in frame.columns}
        normed["__timestamp"] = "timestamp"
    mapping: dict[str, str] = {}
    for col, n in normed.items():
        canon = _LOOKUP.get(n)
        if canon is None:
            continue
        if canon in mapping.values():
            other = next(c for c, k in mapping.items() if k == canon)
            raise DataError(f"columns {other!r} and {col!r} both look like {canon!r}; keep one",
                            file=file, key=col, rule="columns")
        mapping[col] = canon
    present = set(mapping.values())
    missing = [c for c in ("timestamp", *VALUE_COLUMNS) if c not in present]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns))}",
                        file=file, rule="columns",
                        hint="expected timestamp (or Date/Datetime), open, high, low, close, volume")
    return frame[list(mapping)].rename(columns=mapping)


def _parse_times(raw: pd.Series, numbers: np.ndarray, unit: str, *, file: str, tz: str) -> np.ndarray:
    """Parse a timestamp column to int64 ns UTC, or raise naming the first bad line."""
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return raw.dt.tz_convert("UTC").dt.as_unit("ns").to_numpy(dtype="datetime64[ns]").view("int64")
    if pd.api.types.is_datetime64_dtype(raw.dtype):
        parsed = raw
    else:
        text = raw.astype("string").str.strip()
        parsed = None
        for kwargs in ({}, {"format": "mixed"}):
            try:
                parsed = pd.to_datetime(text, errors="coerce", **kwargs)
            except (ValueError, TypeError):  # e.g. mixed offsets: compare in UTC instead
                parsed = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
            if not (parsed.isna() & text.notna() & (text != "")).any():
                break
        bad = np.flatnonzero((parsed.isna()).to_numpy())
        if len(bad):
            i = bad[0]
            raise DataError(f"timestamp {raw.iloc[i]!r} does not parse as a date/time"
                            + (f" ({len(bad)} rows break this rule)" if len(bad) > 1 else ""),
                            file=file, rule="timestamp-parse", **{unit: int(numbers[i])})
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        parsed = parsed.dt.tz_convert("UTC")
    else:
        try:
            parsed = parsed.dt.tz_localize(tz, ambiguous="raise", nonexistent="raise").dt.tz_convert("UTC")
        except Exception as exc:  # pytz/zoneinfo raise several kinds for DST gaps and bad zones
            raise DataError(f"cannot place naive timestamps in time zone {tz!r}: {exc}",
                            file=file, rule="timestamp-zone",
                            hint="pass --tz with an IANA zone, or give timestamps with an offset") from None
    return parsed.dt.as_unit("ns").to_numpy(dtype="datetime64[ns]").view("int64").copy()


def _to_bars(frame: pd.DataFrame, numbers: np.ndarray, unit: str, *, symbol: str, file: str, tz: str,
             repair: bool, adjust: bool, repairs: list[str]) -> Bars:
    ts = _parse_times(frame["timestamp"], numbers, unit, file=file, tz=tz)
    values = {}
    for c in (*VALUE_COLUMNS, *(["adj_close"] if adjust and "adj_close" in frame else [])):
        values[c] = pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if adjust and "adj_close" in values:
        factor = values.pop("adj_close") / values["close"]
        for c in ("open", "high", "low", "close"):
            values[c] = values[c] * factor
    if repair:
        order = np.argsort(ts, kind="stable")
        moved = int((order != np.arange(len(ts))).sum())
        ts, numbers = ts[order], numbers[order]
        values = {k: v[order] for k, v in values.items()}
        stacked = np.column_stack([values[c] for c in VALUE_COLUMNS])
        same = np.zeros(len(ts), bool)
        if len(ts) > 1:
            same[1:] = (ts[1:] == ts[:-1]) & np.all(
                (stacked[1:] == stacked[:-1]) | (np.isnan(stacked[1:]) & np.isnan(stacked[:-1])), axis=1)
        dropped = int(same.sum())
        if dropped:
            keep = ~same
            ts, numbers = ts[keep], numbers[keep]
            values = {k: v[keep] for k, v in values.items()}
        if moved or dropped:
            repairs.append(f"{symbol} ({file}): sorted {moved} row(s) into time order, "
                           f"dropped {dropped} exact duplicate row(s)")
    validate_arrays(ts, values, symbol=symbol, file=file, numbers=numbers, unit=unit)
    return Bars(symbol, ts, values)


def _read_frame(path: str, storage_options: dict | None) -> tuple[pd.DataFrame, np.ndarray, str]:
    """Read a CSV or Parquet file; also each row's place in the file and its unit ("line" or "row")."""
    import fsspec

    ext = os.path.splitext(path.lower().removesuffix(".gz"))[1]
    try:
        if ext == ".parquet" or ext == ".pq":
            with fsspec.open(path, "rb", **(storage_options or {})) as f:
                frame = pq.read_table(f).to_pandas()
            return frame, np.arange(1, len(frame) + 1), "row"
        with fsspec.open(path, "rb", compression="infer", **(storage_options or {})) as f:
            frame = pd.read_csv(f, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except (pa.ArrowException, pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        kind = "Parquet" if ext in (".parquet", ".pq") else "CSV"
        raise DataError(f"cannot read as {kind}: {exc}", file=path, rule="file-format") from None
    lines = np.arange(2, len(frame) + 2)  # line 1 is the header
    blank = (frame == "").all(axis=1).to_numpy() if len(frame.columns) else np.zeros(len(frame), bool)
    frame = frame.replace("", None)
    return frame[~blank].reset_index(drop=True), lines[~blank], "line"


def read_source(path: str, *, symbol: str | None = None, tz: str = "UTC", repair: bool = False,
                adjust: bool = False, storage_options: dict | None = None,
                repairs: list[str] | None = None) -> list[Bars]:
    """Parse and validate one CSV/Parquet file into Bars, one per symbol in it."""
    path = str(path)
    repairs = [] if repairs is None else repairs
    frame, numbers, unit = _read_frame(path, storage_options)
    frame = _rename(frame, path)
    if len(frame) == 0:
        raise DataError("the file has no data rows", file=path, rule="non-empty")
    if "symbol" in frame and symbol is None:
        syms = frame["symbol"].astype("string")
        if syms.isna().any():
            i = int(np.flatnonzero(syms.isna().to_numpy())[0])
            raise DataError("symbol is empty", file=path, rule="symbol-name", **{unit: int(numbers[i])})
        out = []
        for name in pd.unique(syms):
            mask = (syms == name).to_numpy()
            check_symbol(str(name), file=path, **{unit: int(numbers[np.flatnonzero(mask)[0]])})
            out.append(_to_bars(frame[mask].reset_index(drop=True), numbers[mask], unit, symbol=str(name), file=path,
                                tz=tz, repair=repair, adjust=adjust, repairs=repairs))
        return out
    name = symbol if symbol is not None else os.path.basename(path).split(".")[0]
    check_symbol(name, file=path, hint=None if symbol else "name the symbol with --symbol, or rename the file")
    return [_to_bars(frame, numbers, unit, symbol=name, file=path, tz=tz, repair=repair, adjust=adjust,
                     repairs=repairs)]


def ingest(store: BarStore, paths: list[str], *, symbol: str | None = None, tz: str = "UTC",
           repair: bool = False, adjust: bool = False, storage_options: dict | None = None,
           mode: str = "merge", on_conflict: str | None = None) -> IngestReport:
    """Parse and validate every file, then merge, append or replace and commit them in one step.

    ``mode`` and ``on_conflict`` are those of :meth:`BarStore.update`. Raises DataError
    on the first problem (a bad row, an overlap that differs, a bar that does not
    append), before anything is committed: the store is then exactly as it was.
    """
    check_mode(mode, on_conflict)
    if not paths:
        raise DataError("no input files given", rule="non-empty")
    if symbol is not None and len(paths) > 1:
        raise DataError("symbol= names one file's symbol; it cannot apply to several files", key="symbol")
    report = IngestReport()
    seen: dict[str, str] = {}
    all_bars: list[Bars] = []
    for path in paths:
        for bars in read_source(path, symbol=symbol, tz=tz, repair=repair, adjust=adjust,
                                storage_options=storage_options, repairs=report.repairs):
            if bars.symbol in seen:
                raise DataError(f"symbol appears in two inputs ({seen[bars.symbol]} and {path})",
                                file=str(path), symbol=bars.symbol, rule="symbol-unique")
            seen[bars.symbol] = str(path)
            all_bars.append(bars)
            report.rows[bars.symbol] = len(bars)
    source = {"kind": "ingest", "files": [os.path.basename(str(p)) for p in paths], "tz": tz}
    update = store.update(all_bars, mode=mode, on_conflict=on_conflict, source=source, files=seen)
    report.fingerprint = update.manifest["fingerprint"]
    report.mode = mode
    report.changes = update.changes
    return report
