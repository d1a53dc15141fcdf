"""Result tables: the rows of containers and portfolios as Arrow, the final table, :class:`SweepResult`."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..kernels.names import STAT_NAMES
from ..storage import Storage

PORTFOLIO = "PORTFOLIO"  # the symbol column of the equal-weight portfolio rows
INTEGER_STATS = ("n_trades",)  # statistics stored as int64 (null where the row has none), the others float64


def _stats_table(set_id: np.ndarray, symbol: pa.Array, params: Mapping[str, list], matrix: np.ndarray) -> pa.Table:
    """Result rows as Arrow: set_id, symbol, the parameter columns, then every statistic."""
    columns: dict[str, Any] = {"set_id": set_id, "symbol": symbol}
    for name, values in params.items():
        columns[name] = pa.array(values)
    for i, name in enumerate(STAT_NAMES):
        values = matrix[:, i]
        if name in INTEGER_STATS:  # counts: exact integers in the kernels' float rows
            missing = np.isnan(values)
            values = pa.array(np.where(missing, 0, values).astype(np.int64), mask=missing if missing.any() else None)
        columns[name] = values
    return pa.table(columns)

def _rows_table(task: Any, batch: Any, stats: list[np.ndarray]) -> pa.Table:
    """One Arrow table of the task's rows (``stats``: one (sets, STAT_NAMES) matrix per symbol), set-major:
    by set id, then in the task's symbol order, as the final table wants them."""
    m = task.hi - task.lo
    n_sym = len(stats)
    matrix = np.stack(stats, axis=1).reshape(m * n_sym, -1) if stats else np.empty((0, len(STAT_NAMES)))
    return _stats_table(np.repeat(np.arange(task.lo, task.hi, dtype=np.int64), n_sym),
                        pa.array(np.tile(np.array(task.symbols, dtype=object), m), pa.string()),
                        {name: [v for v in values for _ in range(n_sym)] for name, values in batch.columns().items()},
                        matrix)


PART_ROW_GROUP = 16_384  # rows per row group of a task's part: the final table reads parts by set-id blocks
_BLOCK_ROWS = 131_072  # rows of the final table assembled at once (a block of set ids, every symbol)
_HOLD_BYTES = 16 << 20  # a committed part up to this size (local disk: a range's parts together) is read whole, once


def _dictionary(schema: pa.Schema) -> list[str]:
    """The columns worth dictionary-encoding: symbols and parameters, not the float statistics.

    pyarrow tries a dictionary on every column by default; on statistics columns (all
    distinct values) that made writing the 92k-row table of a 184-set x 500-symbol sweep
    0.41 s instead of 0.07 s, for a larger file.
    """
    return [f.name for f in schema if not pa.types.is_floating(f.type)]


def write_part(storage: Storage, table: pa.Table, name: str, into: dict[str, Any] | None = None) -> dict[str, Any]:
    """A task's rows (set-major, see :func:`_rows_table`) as a Parquet part in row groups the final table can skip.

    Returns the part's commit record (size, sha256: :func:`~admf_dask.sweep.integrity.digest`). With
    ``into`` (pending writes: :meth:`Storage.uploads`) the bytes go there instead.
    """
    from .integrity import digest

    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=PART_ROW_GROUP, use_dictionary=_dictionary(table.schema))
    raw = buf.getvalue()
    if into is not None:
        into[name] = raw
    else:
        storage.write_bytes(raw, name)
    return digest(raw)

def write_final_table(storage: Storage, ranges: Mapping[tuple[int, int], list[int]],
                      portfolio: Mapping[int, str], keep_portfolio: bool = True, *,
                      symbols: list[str] | None = None, records: Mapping[str, Any] | None = None,
                      metadata: Mapping[str, str] | None = None, given: Mapping[str, bytes] | None = None) -> int:
    """Stream the final table ``results.parquet`` from the committed parts, a block of set ids at a time.

    Rows are ordered by set id, then symbol, each set's PORTFOLIO row last. A range's
    rows are those of its parts (``results/part-<j>.parquet``, set-major, in row groups of
    :data:`PART_ROW_GROUP` rows) plus its portfolio rows (``portfolio[lo]``, a file under
    the run, when a reduce task wrote them). The range is cut into blocks of set ids of
    about :data:`_BLOCK_ROWS` rows; for each block, each part's rows of those sets are
    read (row groups outside the block are skipped by their statistics), sorted and
    written as a row group before the next block. The client holds one block, never the
    whole table, whatever the number of rows. The PORTFOLIO rows also go to
    ``portfolio.parquet`` (one per set), which :class:`SweepResult` reads for its rankings.
    Returns the row count. ``keep_portfolio=False`` (symbols of different bar frequencies:
    :mod:`admf_dask.sweep.frequency`) leaves the PORTFOLIO rows out of both files.

    Checked (:mod:`admf_dask.sweep.integrity`), a StorageError otherwise: each part
    against its commit record in ``records`` (file -> size, sha256), and, with
    ``symbols``, each block holds exactly one row per (set, symbol) and one PORTFOLIO
    row per set. ``metadata`` goes into both files' Parquet key-value metadata (the
    run's id, config, data fingerprint and version: :func:`run_metadata`). ``given``: parts' bytes
    as this run's tasks wrote them (object stores; file -> bytes), taken instead of reading them back.
    """
    from .integrity import check_block, check_file, read_checked

    records = records or {}
    rows = 0
    portfolio_rows = []
    pool = pa.default_memory_pool()
    with storage.writing("results.parquet") as f:
        writer = None
        try:
            for lo, hi in sorted(ranges):
                files = [f"results/part-{j:06d}.parquet" for j in ranges[(lo, hi)]]
                if lo in portfolio:
                    files.append(portfolio[lo])
                metas = []
                # on an object store a small part (or the reduce's portfolio rows: one per set) is read once
                # (one GET; the range's GETs overlap), checked against its record, and held while its range is
                # assembled; on local disk too when the range's parts fit _HOLD_BYTES together (one read each,
                # where checking, the footer and every block opened the file again: ~1/4 of the table's CPU)
                sizes = [records[n]["size"] if n in records else None for n in files]
                local_hold = storage.is_local and None not in sizes and sum(sizes) <= _HOLD_BYTES
                small = [n for n in files if (local_hold or not storage.is_local) and n not in (given or {})
                         and (records.get(n) is None or records[n]["size"] <= _HOLD_BYTES)]
                held = dict(zip(small, storage.each(lambda n: pa.py_buffer(read_checked(storage, n, records.get(n))),
                                                    small)))
                held.update((n, pa.py_buffer(given[n])) for n in files if n in (given or {}))
                for name in files:
                    record = records.get(name)
                    if name in held:
                        metas.append(pq.read_metadata(pa.BufferReader(held[name])))
                        continue
                    check_file(storage, name, record)
                    with storage.fs.open(storage.path(name), "rb") as fh:
                        metas.append(pq.read_metadata(fh))
                per_set = max(1, sum(md.num_rows for md in metas) // max(hi - lo, 1))
                step = max(1, _BLOCK_ROWS // per_set)
                for a in range(lo, hi, step):
                    table = _block(storage, files, metas, a, min(a + step, hi), held)
                    if symbols is not None:
                        check_block(table.column("set_id").to_numpy(), table.column("symbol").to_pylist(), a,
                                    min(a + step, hi), symbols, PORTFOLIO, storage.display("results"))
                    if not keep_portfolio:
                        table = table.filter(pc.not_equal(table.column("symbol"), PORTFOLIO))
                    if writer is None:
                        schema = table.schema.with_metadata({**(table.schema.metadata or {}), **(metadata or {})})
                        writer = pq.ParquetWriter(f, schema, use_dictionary=_dictionary(table.schema))
                    elif not table.schema.equals(writer.schema):
                        table = table.cast(writer.schema)
                    writer.write_table(table)
                    rows += table.num_rows
                    if keep_portfolio:
                        portfolio_rows.append(table.filter(pc.equal(table.column("symbol"), PORTFOLIO)))
                    del table
                    pool.release_unused()  # Arrow's allocator keeps freed blocks; the next block reuses less
        finally:
            if writer is not None:
                writer.close()
        pending = storage.uploads()  # on an object store portfolio.parquet's PUT and results.parquet's overlap
        if portfolio_rows:
            buf = io.BytesIO()
            rows_ = pa.concat_tables(portfolio_rows)
            pq.write_table(rows_.replace_schema_metadata({**(rows_.schema.metadata or {}), **(metadata or {})}), buf)
            pending["portfolio.parquet"] = buf.getvalue()
    pending.wait()
    return rows


def run_metadata(run: Mapping[str, Any]) -> dict[str, str]:
    """A run's identity as Parquet key-value metadata (``admf.*`` keys, strings; the config as JSON).

    >>> run_metadata({"run_id": "ab12", "kind": "sweep", "config": {"strategy": "sma_cross"},
    ...               "data_fingerprint": "f00", "version": "0.1", "bars": "/data/bars"})["admf.config"]
    '{"strategy": "sma_cross"}'
    """
    import json

    return {"admf.run_id": str(run["run_id"]), "admf.kind": str(run["kind"]),
            "admf.config": json.dumps(run["config"], sort_keys=True),
            "admf.data_fingerprint": str(run["data_fingerprint"]), "admf.version": str(run["version"]),
            "admf.bars": str(run.get("bars", ""))}


def _block(storage: Storage, files: list[str], metas: list[Any], a: int, b: int,
           held: Mapping[str, Any] | None = None) -> pa.Table:
    """The rows of set ids [a, b) from every part, sorted: set id, then symbol, PORTFOLIO last.

    Each part is opened for the block and closed after it (its footer read once, before):
    a Parquet reader kept open holds its buffers, ~1.6 MB per file here with pyarrow's
    pre-buffering, which made the client's memory grow with the number of parts.
    """
    tables = []
    for name, md in zip(files, metas):
        groups = [g for g in range(md.num_row_groups) if _holds(md.row_group(g), a, b)]
        if not groups:
            continue
        with (pa.BufferReader(held[name]) if held and name in held else storage.fs.open(storage.path(name), "rb")) as fh:
            t = pq.ParquetFile(fh, metadata=md, pre_buffer=False, buffer_size=1 << 16).read_row_groups(
                groups, use_threads=False)
        ids = t.column("set_id")
        tables.append(t.filter(pc.and_(pc.greater_equal(ids, a), pc.less(ids, b))))
    table = pa.concat_tables(tables, promote_options="default")
    is_portfolio = pc.equal(table.column("symbol"), PORTFOLIO)
    order = pc.sort_indices(table.append_column("_portfolio", is_portfolio),
                            sort_keys=[("set_id", "ascending"), ("_portfolio", "ascending"), ("symbol", "ascending")])
    return table.take(order)


def _holds(group: Any, a: int, b: int) -> bool:
    """Whether a row group's set ids (by its statistics; none: maybe) overlap [a, b)."""
    stats = group.column(0).statistics
    if stats is None or not stats.has_min_max:
        return True
    return stats.max >= a and stats.min < b


class SweepResult:
    """A finished sweep (or replay): its id, where it lives, its summary, and its table, read when asked for.

    The table stays in storage (``results.parquet`` under the run) and is read lazily:
    :attr:`portfolio` and :meth:`top` read only what they need, so a result of millions
    of rows is never loaded whole unless :attr:`table` is used.
    """

    def __init__(self, run_id: str, url: str, summary: dict[str, Any], config: Any,
                 storage: Storage | None = None, table: pd.DataFrame | None = None) -> None:
        self.run_id, self.url, self.summary, self.config = run_id, url, summary, config
        self._storage = storage
        self._table = table

    def __repr__(self) -> str:
        return f"SweepResult({self.run_id!r}, {self.url!r}, {self.summary.get('status')!r})"

    def _read(self, portfolio: bool | None) -> pd.DataFrame:
        if self._table is not None:
            t = self._table
            if portfolio is not None:
                t = t[(t["symbol"] == PORTFOLIO) == portfolio].reset_index(drop=True)
            return t
        if portfolio and self._storage.exists("portfolio.parquet"):  # one row per set, kept apart
            return pd.read_parquet(io.BytesIO(self._storage.read_bytes("portfolio.parquet")))
        filters = None if portfolio is None else [("symbol", "==" if portfolio else "!=", PORTFOLIO)]
        with self._storage.fs.open(self._storage.path("results.parquet"), "rb") as f:
            return pq.read_table(f, filters=filters).to_pandas()

    @property
    def table(self) -> pd.DataFrame:
        """Every row (read whole: for large results prefer :meth:`top`, :attr:`portfolio` or :meth:`batches`)."""
        if self._table is None:
            self._table = self._read(None)
        return self._table

    @property
    def portfolio(self) -> pd.DataFrame:
        """One equal-weight portfolio row per parameter set (``symbol == "PORTFOLIO"``)."""
        return self._read(True)

    @property
    def per_symbol(self) -> pd.DataFrame:
        """One row per (parameter set, symbol)."""
        return self._read(False)

    def batches(self, batch_rows: int = 65_536) -> Any:
        """The table as pandas frames of at most ``batch_rows`` rows, in table order, read one at a time."""
        if self._table is not None:
            for i in range(0, len(self._table), batch_rows):
                yield self._table.iloc[i:i + batch_rows]
            return
        with self._storage.fs.open(self._storage.path("results.parquet"), "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
                yield batch.to_pandas()

    def top(self, n: int | None = None, metric: str | None = None, per_symbol: bool = False) -> pd.DataFrame:
        """The best parameter sets by ``metric`` of their portfolio row (or of single symbols).

        Highest first; for ``max_drawdown`` (negative) that is the shallowest; ties keep table order.
        The per-symbol ranking streams the table, keeping only the best ``n`` rows so far.
        """
        metric = metric or self.config.metric
        n = self.config.top if n is None else n
        if self.summary.get("portfolio_left_out"):  # no PORTFOLIO rows: rank single symbols
            per_symbol = True

        def best(rows: pd.DataFrame) -> pd.DataFrame:
            return rows.sort_values(metric, ascending=False, na_position="last", kind="stable").head(n)

        if not per_symbol:
            return best(self.portfolio)
        kept = None
        for frame in self.batches():
            frame = frame[frame["symbol"] != PORTFOLIO]
            kept = best(frame if kept is None else pd.concat([kept, frame]))
        return kept if kept is not None else self.per_symbol

    def lines(self) -> list[str]:
        s = self.summary
        out = [f"run {self.run_id} at {self.url}: {s['status']}",
               f"{s['backtests']:,} backtests ({s['param_sets']:,} parameter sets x {s['symbols']} symbols), "
               f"{s['bar_evaluations']:,} bar-evaluations"]
        if s.get("wall_seconds"):
            out.append(f"wall {s['wall_seconds']:.1f}s, {s['bar_evals_per_s']:,.0f} bar-evals/s, "
                       f"{s['tasks']} tasks ({s['tasks_resumed']} resumed"
                       + (f", {s['recomputed_parts']} recomputed: they failed their check"
                          if s.get("recomputed_parts") else "") + "), "
                       f"peak worker memory {s['peak_worker_memory_mb']:,.0f} MB")
        if s.get("indicators"):
            out.append(s["indicators"])
        if s.get("storage_requests"):
            ops = sorted(s.get("storage_by_op", {}).items(), key=lambda kv: (-kv[1], kv[0]))
            out.append(f"storage: {s['storage_requests']:,} requests during the tasks ("
                       + ", ".join(f"{n:,} {op}" for op, n in ops) + ")")
        if s.get("portfolio_left_out"):
            out.append(s["portfolio_left_out"])
        return out
