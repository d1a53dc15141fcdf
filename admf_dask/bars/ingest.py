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

Vendors' shapes understood (see the README's ingest section):

* Stooq: ``<TICKER>,<PER>,<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>,<OPENINT>``
  (angle brackets dropped; ``YYYYMMDD`` dates and ``HHMMSS`` times);
* epoch timestamps (Binance's ``open_time``): integers in s, ms, us or ns, the unit
  told by their magnitude (s < 1e11 <= ms < 1e14 <= us < 1e17 <= ns), or given by
  ``timestamp_unit`` when the dates would fall outside 1971-2200; ``YYYYMMDD``
  integers are dates;
* headerless files: ``columns`` names them (``open_time,open,high,low,close,volume,...``);
  a file whose first row is all numbers without ``columns`` is refused with that hint;
* Yahoo exports with ``null`` rows: refused naming the first such line unless
  ``drop_missing=True``, which drops them and reports how many;
* yfinance's ``to_csv`` (a ``Price``/``Ticker``/``Date`` three-row header, one or many
  tickers): read, each ticker a symbol;
* Parquet written by pandas with the timestamps as its index.

``check=True`` parses and validates every file, writes nothing, and raises one
DataError counting the bad files after listing each one's problem in the report.

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

__all__ = ["IngestReport", "frame_bars", "ingest", "read_source"]

TIMESTAMP_UNITS = ("s", "ms", "us", "ns")
_MISSING = {"null", "nan", "na", "n/a", "none", "-", ""}

_ALIASES = {
    "timestamp": ("timestamp", "datetime", "date_time", "date", "time", "ts", "dt", "open_time", "opentime"),
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
    dropped: dict[str, int] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # check: each bad file's error
    checked: int = 0  # check: files read

    def lines(self) -> list[str]:
        if self.checked:
            out = [f"checked {self.checked} file(s): {self.checked - len(self.problems)} good, "
                   f"{len(self.problems)} bad; {len(self.rows)} symbol(s), {sum(self.rows.values()):,} bars; "
                   "nothing written"]
            out += [f"  bad: {p}" for p in self.problems.values()]
            out += [f"dropped {n} row(s) with missing values: {s}" for s, n in self.dropped.items()]
            return out
        out = [f"ingested {len(self.rows)} symbol(s), {sum(self.rows.values()):,} bars ({self.mode}); "
               f"dataset fingerprint {self.fingerprint[:12]}"]
        out += [f"  {c.line()}" for c in self.changes.values()]
        out += [f"dropped {n} row(s) with missing values: {s}" for s, n in self.dropped.items()]
        out += [f"repaired: {r}" for r in self.repairs]
        return out


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().strip("<>").lower())


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
    if missing and all(re.fullmatch(r"-?[\d.eE+\-]+", str(c).strip()) for c in frame.columns):
        raise DataError(f"the file has no header row (its first row is {', '.join(map(str, frame.columns))})",
                        file=file, rule="columns", line=1,
                        hint="name the columns with --columns, e.g. --columns open_time,open,high,low,close,volume")
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns))}",
                        file=file, rule="columns",
                        hint="expected timestamp (or Date/Datetime), open, high, low, close, volume")
    return frame[list(mapping)].rename(columns=mapping)


_UNIT_NS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
_PLAUSIBLE = (pd.Timestamp("1971-01-01").value, pd.Timestamp("2200-01-01").value)


def _epoch(raw: pd.Series, numbers: np.ndarray, unit: str, *, file: str,
           timestamp_unit: str | None) -> np.ndarray | None:
    """Epoch integers (s/ms/us/ns by magnitude, or ``timestamp_unit``) as int64 ns; None if not epoch numbers."""
    if pd.api.types.is_datetime64_dtype(raw.dtype) or isinstance(raw.dtype, pd.DatetimeTZDtype):
        return None
    if pd.api.types.is_integer_dtype(raw.dtype) or pd.api.types.is_float_dtype(raw.dtype):
        values = pd.to_numeric(raw, errors="coerce")
    else:
        text = raw.astype("string").str.strip()
        if not text.notna().all() or not text.str.fullmatch(r"-?\d+(\.0*)?").all():
            return None
        if timestamp_unit is None and text.str.fullmatch(r"(19|20|21)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])").all():
            return None  # YYYYMMDD dates (Stooq)
        if timestamp_unit is None and text.str.fullmatch(r"(1[89]|2[01])\d{2}").all():
            return None  # years (yearly bars)
        values = pd.to_numeric(text, errors="coerce")
    if values.isna().any():
        i = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise DataError("timestamp is missing", file=file, rule="timestamp-parse", **{unit: int(numbers[i])})
    ints = values.to_numpy(dtype=np.float64)
    if not np.all(ints == np.round(ints)):
        return None
    ints = values.astype("int64").to_numpy()
    if timestamp_unit is None:
        big = float(np.median(np.abs(ints)))
        timestamp_unit = "s" if big < 1e11 else "ms" if big < 1e14 else "us" if big < 1e17 else "ns"
        given = False
    else:
        given = True
    if timestamp_unit not in _UNIT_NS:
        raise DataError(f"timestamp unit must be one of {', '.join(TIMESTAMP_UNITS)}, got {timestamp_unit!r}",
                        key="timestamp_unit")
    scale = _UNIT_NS[timestamp_unit]
    limit = np.iinfo(np.int64).max // scale
    if np.any(np.abs(ints) > limit):
        i = int(np.flatnonzero(np.abs(ints) > limit)[0])
        raise DataError(f"epoch timestamp {ints[i]} in {timestamp_unit} is out of range", file=file,
                        rule="timestamp-parse", hint="pass --timestamp-unit", **{unit: int(numbers[i])})
    ns = ints * scale
    odd = (ns < _PLAUSIBLE[0]) | (ns >= _PLAUSIBLE[1])
    if odd.any() and not given:
        i = int(np.flatnonzero(odd)[0])
        raise DataError(f"epoch timestamp {ints[i]} is ambiguous: read as {timestamp_unit} it is "
                        f"{pd.Timestamp(int(ns[i]), tz='UTC')}", file=file, rule="timestamp-unit",
                        hint="pass --timestamp-unit s, ms, us or ns", **{unit: int(numbers[i])})
    return ns.astype(np.int64)


def _parse_times(raw: pd.Series, numbers: np.ndarray, unit: str, *, file: str, tz: str,
                 timestamp_unit: str | None = None) -> np.ndarray:
    """Parse a timestamp column to int64 ns UTC, or raise naming the first bad line."""
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return raw.dt.tz_convert("UTC").dt.as_unit("ns").to_numpy(dtype="datetime64[ns]").view("int64")
    epoch = _epoch(raw, numbers, unit, file=file, timestamp_unit=timestamp_unit)
    if epoch is not None:
        return epoch
    text = None if pd.api.types.is_datetime64_dtype(raw.dtype) else raw.astype("string").str.strip()
    if text is not None:  # Stooq's TIME as a number: 93500 is 09:35:00
        text = text.str.replace(r"^(\d{8}) (\d{1,5})$", lambda m: f"{m.group(1)} {int(m.group(2)):06d}", regex=True)
    if text is not None and text.notna().all() and text.str.fullmatch(r"\d{8}( \d{6})?").all():
        fmt = "%Y%m%d %H%M%S" if text.str.len().eq(15).all() else "%Y%m%d"  # Stooq's DATE (and TIME)
        raw = pd.Series(pd.to_datetime(text, format=fmt, errors="coerce"))
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
             repair: bool, adjust: bool, repairs: list[str], timestamp_unit: str | None = None,
             drop_missing: bool = False, dropped: dict[str, int] | None = None) -> Bars:
    cols = [c for c in VALUE_COLUMNS if c in frame]
    gone = np.zeros(len(frame), bool)
    first: dict[str, np.ndarray] = {}
    for c in cols:
        v = frame[c]
        if v.dtype == object or pd.api.types.is_string_dtype(v.dtype):
            miss = v.astype("string").str.strip().str.lower().isin(_MISSING).fillna(True).to_numpy(dtype=bool)
        else:
            miss = v.isna().to_numpy()
        first[c] = miss
        gone |= miss
    if gone.any():
        i = int(np.flatnonzero(gone)[0])
        if not drop_missing:
            col = next(c for c in cols if first[c][i])
            raise DataError(f"{col} is missing ({frame[col].iloc[i]!r}; {int(gone.sum())} row(s) with missing "
                            "values)", file=file, symbol=symbol, rule="missing-values",
                            hint="pass --drop-missing to drop such rows", **{unit: int(numbers[i])})
        frame, numbers = frame[~gone].reset_index(drop=True), numbers[~gone]
        if dropped is not None:
            dropped[symbol] = dropped.get(symbol, 0) + int(gone.sum())
        if len(frame) == 0:
            raise DataError("every row has missing values", file=file, symbol=symbol, rule="non-empty")
    ts = _parse_times(frame["timestamp"], numbers, unit, file=file, tz=tz, timestamp_unit=timestamp_unit)
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


def _index_to_column(frame: pd.DataFrame) -> pd.DataFrame:
    """pandas Parquet whose timestamps are the index: the index as a ``timestamp`` column."""
    if isinstance(frame.index, pd.DatetimeIndex) and not any(
            _LOOKUP.get(_norm(c)) == "timestamp" for c in frame.columns):
        return frame.rename_axis("timestamp").reset_index()
    return frame


def _yfinance(frame: pd.DataFrame, lines: np.ndarray) -> tuple[pd.DataFrame, np.ndarray] | None:
    """yfinance's ``to_csv``: ``Price,Close,...`` / ``Ticker,AAPL,...`` / ``Date,,...`` -> long rows with a symbol.

    Also ``group_by="ticker"``'s order (the ``Ticker`` row first, then ``Price``).
    """
    if len(frame.columns) < 2 or len(frame) < 2:
        return None
    top, second = _norm(frame.columns[0]), _norm(frame.iloc[0, 0] or "")
    if {top, second} != {"price", "ticker"}:
        return None
    skip = 2 if _LOOKUP.get(_norm(frame.iloc[1, 0] or "")) == "timestamp" and frame.iloc[1, 1:].isna().all() else 1
    header = [re.sub(r"\.\d+$", "", str(c)) for c in frame.columns[1:]]  # pandas numbers repeated names
    row = [str(x) for x in frame.iloc[0, 1:]]
    tickers, base = (row, header) if top == "price" else (header, row)
    body = frame.iloc[skip:].reset_index(drop=True)
    lines = lines[skip:]
    parts, numbers = [], []
    for t in dict.fromkeys(tickers):
        pick = [i + 1 for i, x in enumerate(tickers) if x == t]
        part = body.iloc[:, [0, *pick]].copy()
        part.columns = ["timestamp", *(base[i - 1] for i in pick)]
        part["symbol"] = t
        parts.append(part)
        numbers.append(lines)
    return pd.concat(parts, ignore_index=True), np.concatenate(numbers)


def _read_frame(path: str, storage_options: dict | None,
                columns: list[str] | None = None) -> tuple[pd.DataFrame, np.ndarray, str]:
    """Read a CSV or Parquet file; also each row's place in the file and its unit ("line" or "row")."""
    import fsspec

    ext = os.path.splitext(path.lower().removesuffix(".gz"))[1]
    try:
        if ext == ".parquet" or ext == ".pq":
            with fsspec.open(path, "rb", **(storage_options or {})) as f:
                table = pq.read_table(f)
            if not columns:
                _typed_columns(table, path)
            frame = _index_to_column(table.to_pandas())
            if columns:
                frame = frame.set_axis(_names(columns, len(frame.columns), path), axis=1)
            return frame, np.arange(1, len(frame) + 1), "row"
        with fsspec.open(path, "rb", compression="infer", **(storage_options or {})) as f:
            if columns:
                frame = pd.read_csv(f, dtype=str, keep_default_na=False, skip_blank_lines=False, header=None)
                frame = frame.set_axis(_names(columns, len(frame.columns), path), axis=1)
            else:
                frame = pd.read_csv(f, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except EOFError as exc:  # a truncated gzip stream (click would take an EOFError for an aborted prompt)
        raise DataError(f"the compressed file ends early (truncated?): {exc}", file=path,
                        rule="file-format", hint="download or copy the file again") from None
    except (pa.ArrowException, pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        kind = "Parquet" if ext in (".parquet", ".pq") else "CSV"
        raise DataError(f"cannot read as {kind}: {exc}", file=path, rule="file-format") from None
    lines = np.arange(1, len(frame) + 1) if columns else np.arange(2, len(frame) + 2)  # line 1: the header
    blank = (frame == "").all(axis=1).to_numpy() if len(frame.columns) else np.zeros(len(frame), bool)
    frame = frame.replace("", None)
    frame, lines = frame[~blank].reset_index(drop=True), lines[~blank]
    yf = None if columns else _yfinance(frame, lines)
    if yf is not None:
        frame, lines = yf
    return frame, lines, "line"


def _typed_columns(table: pa.Table, path: str) -> None:
    """A Parquet file's prices and volume are numbers, its timestamps times or numbers: text is refused.

    Parquet carries types; text where a number belongs means the file was written from
    unparsed strings, and converting them silently would hide that.
    """
    for field in table.schema:
        canon = _LOOKUP.get(_norm(field.name))
        if canon is not None and (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            want = "a timestamp or number" if canon == "timestamp" else "a number"
            raise DataError(f"Parquet column {field.name!r} holds text ({field.type}), not {want}", file=path,
                            key=field.name, rule="column-type",
                            hint="cast it when writing the file, e.g. df.astype({'close': float}) or "
                                 "pd.to_datetime(df['timestamp']), or ingest a CSV")


def _names(columns: list[str], width: int, path: str) -> list[str]:
    """``columns`` for a file ``width`` columns wide: extra trailing columns are named ``_extra<i>``."""
    if len(columns) > width:
        raise DataError(f"--columns names {len(columns)} columns but the file has {width}", file=path,
                        rule="columns")
    return [*columns, *(f"_extra{i}" for i in range(width - len(columns)))]


def read_source(path: str, *, symbol: str | None = None, tz: str = "UTC", repair: bool = False,
                adjust: bool = False, storage_options: dict | None = None,
                repairs: list[str] | None = None, timestamp_unit: str | None = None,
                columns: list[str] | None = None, drop_missing: bool = False,
                dropped: dict[str, int] | None = None) -> list[Bars]:
    """Parse and validate one CSV/Parquet file into Bars, one per symbol in it."""
    path = str(path)
    repairs = [] if repairs is None else repairs
    frame, numbers, unit = _read_frame(path, storage_options, columns)
    return _frame_to_bars(frame, numbers, unit, path, symbol=symbol, tz=tz, repair=repair, adjust=adjust,
                          repairs=repairs, timestamp_unit=timestamp_unit, drop_missing=drop_missing,
                          dropped=dropped)


def frame_bars(frame: pd.DataFrame, *, symbol: str | None = None, tz: str = "UTC", repair: bool = False,
               adjust: bool = False, timestamp_unit: str | None = None, drop_missing: bool = False,
               name: str = "<DataFrame>") -> list[Bars]:
    """Validated Bars from a pandas DataFrame, as ingest reads a file (columns matched the same way).

    The timestamps are a column or the (Datetime) index; one symbol (``symbol``) or a
    ``symbol``/``ticker`` column of many. Errors name ``name`` and the row (from 1).
    """
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame, got {type(frame).__name__}", file=name)
    frame = _index_to_column(frame)
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index(drop=True)
    return _frame_to_bars(frame, np.arange(1, len(frame) + 1), "row", name, symbol=symbol, tz=tz, repair=repair,
                          adjust=adjust, repairs=[], timestamp_unit=timestamp_unit, drop_missing=drop_missing,
                          dropped=None, need_symbol=True)


def _frame_to_bars(frame: pd.DataFrame, numbers: np.ndarray, unit: str, path: str, *, symbol: str | None,
                   tz: str, repair: bool, adjust: bool, repairs: list[str], timestamp_unit: str | None,
                   drop_missing: bool, dropped: dict[str, int] | None, need_symbol: bool = False) -> list[Bars]:
    kw = dict(tz=tz, repair=repair, adjust=adjust, repairs=repairs, timestamp_unit=timestamp_unit,
              drop_missing=drop_missing, dropped=dropped)
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
                                **kw))
        return out
    if symbol is None and need_symbol:
        raise DataError("the frame has no symbol column: pass symbol=", file=path, key="symbol")
    name = symbol if symbol is not None else os.path.basename(path).split(".")[0]
    check_symbol(name, file=path, hint=None if symbol else "name the symbol with --symbol, or rename the file")
    return [_to_bars(frame, numbers, unit, symbol=name, file=path, **kw)]


def ingest(store: BarStore | None, paths: list[str], *, symbol: str | None = None, tz: str = "UTC",
           repair: bool = False, adjust: bool = False, storage_options: dict | None = None,
           mode: str = "merge", on_conflict: str | None = None, timestamp_unit: str | None = None,
           columns: list[str] | None = None, drop_missing: bool = False, check: bool = False,
           granularity: str | None = None) -> IngestReport:
    """Parse and validate every file, then merge, append or replace and commit them in one step.

    ``mode`` and ``on_conflict`` are those of :meth:`BarStore.update`. Raises DataError
    on the first problem (a bad row, an overlap that differs, a bar that does not
    append), before anything is committed: the store is then exactly as it was.
    ``timestamp_unit``, ``columns`` and ``drop_missing``: see the module. ``check``
    reads every file, writes nothing, and raises one DataError counting the bad files
    (the returned report, or the error's ``report``, lists each file's problem).
    ``granularity`` applies to a new dataset (None: from the bars' spacing, see
    :func:`~admf_dask.bars.update.granularity_for`); an existing one keeps its own.
    """
    check_mode(mode, on_conflict)
    if timestamp_unit is not None and timestamp_unit not in TIMESTAMP_UNITS:
        raise DataError(f"timestamp unit must be one of {', '.join(TIMESTAMP_UNITS)}, got {timestamp_unit!r}",
                        key="timestamp_unit")
    if columns is not None:
        columns = [c.strip() for c in columns]
        if not columns or any(not c for c in columns) or len(set(columns)) != len(columns):
            raise DataError(f"--columns must name distinct, non-empty columns, got {','.join(columns)!r}",
                            key="columns")
    if not paths:
        raise DataError("no input files given", rule="non-empty")
    if symbol is not None and len(paths) > 1:
        raise DataError("symbol= names one file's symbol; it cannot apply to several files", key="symbol")
    report = IngestReport()
    seen: dict[str, str] = {}
    all_bars: list[Bars] = []
    for path in paths:
        try:
            got = read_source(path, symbol=symbol, tz=tz, repair=repair, adjust=adjust,
                              storage_options=storage_options, repairs=report.repairs,
                              timestamp_unit=timestamp_unit, columns=columns, drop_missing=drop_missing,
                              dropped=report.dropped)
        except DataError as exc:
            if not check:
                raise
            report.problems[str(path)] = str(exc)
            continue
        for bars in got:
            if bars.symbol in seen and check:
                report.problems.setdefault(str(path), f"symbol {bars.symbol} appears in two inputs "
                                                      f"({seen[bars.symbol]} and {path})")
                continue
            if bars.symbol in seen:
                raise DataError(f"symbol appears in two inputs ({seen[bars.symbol]} and {path})",
                                file=str(path), symbol=bars.symbol, rule="symbol-unique")
            seen[bars.symbol] = str(path)
            all_bars.append(bars)
            report.rows[bars.symbol] = len(bars)
    if check:
        report.checked = len(paths)
        if report.problems:
            err = DataError(f"{len(report.problems)} of {len(paths)} file(s) are bad; nothing written",
                            rule="check", hint="the lines above name each file's problem")
            err.report = report
            raise err
        return report
    source = {"kind": "ingest", "files": [os.path.basename(str(p)) for p in paths], "tz": tz}
    update = store.update(all_bars, mode=mode, on_conflict=on_conflict, source=source, files=seen,
                          granularity=granularity or "auto")
    report.fingerprint = update.manifest["fingerprint"]
    report.mode = mode
    report.changes = update.changes
    return report
