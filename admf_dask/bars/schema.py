"""The bar schema, the in-memory :class:`Bars`, and the validation rules.

Schema (schema version 1): ``timestamp`` (UTC, nanoseconds), ``open``, ``high``,
``low``, ``close`` (float64), ``volume`` (float64, so fractional volumes fit).

Validation runs at ingest on every row, and the rules are the same wherever data
enters: each problem becomes one :class:`~admf_dask.errors.DataError` naming the
file, symbol, row (and source line) and the rule, plus how many rows break it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import DataError

if TYPE_CHECKING:
    from ..kernels.stats import PeriodsPerYearStream

SCHEMA_VERSION = 1
PRICE_COLUMNS = ("open", "high", "low", "close")
VALUE_COLUMNS = (*PRICE_COLUMNS, "volume")
COLUMNS = ("timestamp", *VALUE_COLUMNS)

ARROW_SCHEMA = pa.schema(
    [pa.field("timestamp", pa.timestamp("ns", tz="UTC"), nullable=False)]
    + [pa.field(c, pa.float64(), nullable=False) for c in VALUE_COLUMNS]
)

_SYMBOL_RE = re.compile(r"[A-Za-z0-9._-]{1,32}")


def check_symbol(symbol: object, **where: object) -> str:
    """Return ``symbol`` if it is a safe name (``[A-Za-z0-9._-]{1,32}``, not all dots), else raise.

    The name becomes a directory (``symbol=<SYM>``), so nothing else may pass.
    """
    if not isinstance(symbol, str) or not _SYMBOL_RE.fullmatch(symbol) or set(symbol) == {"."}:
        raise DataError(f"invalid symbol name {symbol!r}: use 1-32 characters from A-Z a-z 0-9 . _ - "
                        "(not only dots)", rule="symbol-name", **where)
    return symbol


@dataclass(frozen=True)
class Bars:
    """One symbol's bars as numpy arrays.

    ``timestamp`` is int64 nanoseconds since the epoch, UTC. ``columns`` holds the
    value columns that were read (all of them unless a projection was asked for).
    Arrays may be read-only; kernels allocate their own outputs.
    """

    symbol: str
    timestamp: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.timestamp)

    def __getattr__(self, name: str) -> np.ndarray:
        if name in VALUE_COLUMNS:
            try:
                return self.columns[name]
            except KeyError:
                raise AttributeError(f"column {name!r} was not read for {self.symbol}; "
                                     f"read it with columns=[..., {name!r}]") from None
        raise AttributeError(name)

    @property
    def nbytes(self) -> int:
        return self.timestamp.nbytes + sum(a.nbytes for a in self.columns.values())

    def periods_per_year(self) -> float:
        """Bars per year inferred from the bar spacing (``kernels.stats.periods_per_year``), once per object.

        A median over every bar spacing costs ~20 ms on a year of minute bars; a
        sweep asks for it in every task for every symbol.
        """
        cached = self.__dict__.get("_periods_per_year")
        if cached is None:
            stream = self._spacing()
            if stream.n < 2:  # the error of kernels.stats.periods_per_year
                raise ValueError(
                    f"periods_per_year needs a 1-d array of at least two timestamps, got shape ({stream.n},)")
            cached = self.__dict__["_periods_per_year"] = stream.value()
        return cached

    def spacing_arrays(self) -> dict[str, np.ndarray]:
        """The bar spacing counts of these bars (``kernels.stats.PeriodsPerYearStream.to_arrays``), once per object.

        What an incremental run's saved state keeps of a symbol's timestamps; every set
        range's task of a sweep saves it for the same bars.
        """
        cached = self.__dict__.get("_spacing_arrays")
        if cached is None:
            cached = self.__dict__["_spacing_arrays"] = self._spacing().to_arrays()
        return cached

    def spacing_from(self, other: Bars) -> None:
        """Take ``other``'s fold of the bar spacing when both have the same timestamps and this one has none
        yet: a container's aligned symbols (every daily symbol of a dataset, often) fold theirs once."""
        if "_spacing_stream" not in self.__dict__ and len(self) == len(other) \
                and np.array_equal(self.timestamp, other.timestamp):
            self.__dict__["_spacing_stream"] = other._spacing()
            if "_spacing_arrays" not in self.__dict__:  # and its counts as arrays (read only: saved as they are)
                self.__dict__["_spacing_arrays"] = other.spacing_arrays()

    def _spacing(self) -> PeriodsPerYearStream:
        """The spacing counts of every bar (a ``PeriodsPerYearStream``), folded once: both
        :meth:`periods_per_year` and :meth:`spacing_arrays` are read from it (a sweep asks for
        both for every symbol; each fold cost ~0.2 ms on 2,520 daily bars)."""
        stream = self.__dict__.get("_spacing_stream")
        if stream is None:
            from ..kernels.stats import PeriodsPerYearStream

            stream = PeriodsPerYearStream()
            stream.update(self.timestamp)
            self.__dict__["_spacing_stream"] = stream
        return stream

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, symbol: str | None = None, **options) -> Bars:
        """One symbol's validated bars from a pandas DataFrame, read as ``admf ingest`` reads a file.

        Timestamps in a column (``timestamp``, ``Date``, ...) or the DatetimeIndex; vendor
        column names matched loosely; ``symbol`` names it unless the frame has a single-valued
        ``symbol`` column. ``options``: ``tz``, ``repair``, ``adjust``, ``timestamp_unit``,
        ``drop_missing`` (see :func:`admf_dask.bars.ingest.frame_bars`). Raises DataError.
        """
        from .ingest import frame_bars

        out = frame_bars(frame, symbol=symbol, **options)
        if len(out) != 1:
            raise DataError(f"the frame holds {len(out)} symbols; use BarStore.write_frame or pass symbol=",
                            file="<DataFrame>", key="symbol")
        return out[0]

    def to_frame(self) -> pd.DataFrame:
        """A pandas DataFrame indexed by a UTC DatetimeIndex named ``timestamp``."""
        index = pd.DatetimeIndex(self.timestamp.view("datetime64[ns]"), name="timestamp").tz_localize("UTC")
        return pd.DataFrame(dict(self.columns), index=index)

    @classmethod
    def from_arrow(cls, symbol: str, table: pa.Table) -> Bars:
        ts = table.column("timestamp").combine_chunks().cast(pa.int64()).to_numpy()
        cols = {name: table.column(name).to_numpy() for name in table.column_names
                if name in VALUE_COLUMNS}
        return cls(symbol, ts, cols)

    def to_arrow(self) -> pa.Table:
        arrays = [pa.array(self.timestamp, pa.int64()).cast(pa.timestamp("ns", tz="UTC"))]
        arrays += [pa.array(self.columns[c], pa.float64()) for c in VALUE_COLUMNS]
        return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)


def _first(mask: np.ndarray) -> tuple[int, int] | None:
    """(index of the first True, how many True), or None."""
    hits = np.flatnonzero(mask)
    return (int(hits[0]), len(hits)) if len(hits) else None


def validate_arrays(
    timestamp: np.ndarray,
    values: dict[str, np.ndarray],
    *,
    symbol: str,
    file: str | None = None,
    numbers: np.ndarray | None = None,
    unit: str = "row",
) -> None:
    """Raise a DataError for the first broken rule; return None when the bars are valid.

    ``timestamp`` is int64 ns UTC; ``values`` maps each value column to float64.
    ``numbers`` gives each row's place in the source for messages, counted in
    ``unit`` ("line" for CSV line numbers, "row" for Parquet rows); without it rows
    are numbered from 1.
    """

    def fail(rule: str, what: str, hit: tuple[int, int]) -> None:
        i, count = hit
        where: dict[str, object] = {"file": file, "symbol": symbol, "rule": rule}
        where[unit] = int(numbers[i]) if numbers is not None else i + 1
        more = f" ({count} rows break this rule)" if count > 1 else ""
        raise DataError(what + more, **where)

    o, h, l, c, v = (values[k] for k in VALUE_COLUMNS)
    for name in PRICE_COLUMNS:
        arr = values[name]
        if hit := _first(np.isnan(arr)):
            fail("price-missing", f"{name} is missing or not a number", hit)
        if hit := _first(~np.isfinite(arr) | (arr <= 0)):
            fail("price-positive", f"{name} must be a positive finite price, got {float(arr[hit[0]])!r}", hit)
    if hit := _first(h < np.maximum(o, c)):
        i = hit[0]
        fail("high-max", f"high {float(h[i])!r} is below max(open, close) = {float(max(o[i], c[i]))!r}", hit)
    if hit := _first(l > np.minimum(o, c)):
        i = hit[0]
        fail("low-min", f"low {float(l[i])!r} is above min(open, close) = {float(min(o[i], c[i]))!r}", hit)
    if hit := _first(np.isnan(v)):
        fail("volume-missing", "volume is missing or not a number", hit)
    if hit := _first(~np.isfinite(v) | (v < 0)):
        fail("volume-nonnegative", f"volume must be finite and >= 0, got {float(v[hit[0]])!r}", hit)
    if len(timestamp) > 1:
        step = np.diff(timestamp)
        if hit := _first(step == 0):
            i = hit[0] + 1
            fail("timestamp-unique", f"duplicate timestamp {_fmt_ts(timestamp[i])}; "
                 "use --repair to drop exact duplicate rows", (i, hit[1]))
        if hit := _first(step < 0):
            i = hit[0] + 1
            fail("timestamp-sorted", f"timestamp {_fmt_ts(timestamp[i])} is earlier than the row before "
                 f"({_fmt_ts(timestamp[i - 1])}); use --repair to sort rows", (i, hit[1]))


def _fmt_ts(ns: int) -> str:
    return pd.Timestamp(int(ns), tz="UTC").isoformat()
