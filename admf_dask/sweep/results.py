"""Result tables: the rows of containers and portfolios as Arrow, the final table, :class:`SweepResult`."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..kernels.stats import STAT_NAMES
from ..storage import Storage
from .grid import SweepConfig

PORTFOLIO = "PORTFOLIO"  # the symbol column of the equal-weight portfolio rows


def _stats_table(set_id: np.ndarray, symbol: pa.Array, params: Mapping[str, list], matrix: np.ndarray) -> pa.Table:
    """Result rows as Arrow: set_id, symbol, the parameter columns, then every statistic."""
    columns: dict[str, Any] = {"set_id": set_id, "symbol": symbol}
    for name, values in params.items():
        columns[name] = pa.array(values)
    for i, name in enumerate(STAT_NAMES):
        columns[name] = matrix[:, i]
    return pa.table(columns)

def _rows_table(task: Any, batch: Any, stats: list[np.ndarray]) -> pa.Table:
    """One Arrow table of the task's rows, symbol-major."""
    m = task.hi - task.lo
    n_sym = len(stats)
    return _stats_table(np.tile(np.arange(task.lo, task.hi, dtype=np.int64), n_sym),
                        pa.array(np.repeat(np.array(task.symbols, dtype=object), m), pa.string()),
                        {name: values * n_sym for name, values in batch.columns().items()},
                        np.vstack(stats) if stats else np.empty((0, len(STAT_NAMES))))

def _final_table(storage: Storage, n_parts: int, held: Mapping[int, pa.Table],
                 portfolio: list[pa.Table]) -> pa.Table:
    """Every part's rows (those this session's tasks returned, the committed others read back) and the
    portfolio rows, ordered by set id, then symbol, each set's PORTFOLIO row last."""
    tables = []
    for j in range(n_parts):
        if j in held:
            tables.append(held[j])
        else:
            tables.append(pq.read_table(io.BytesIO(storage.read_bytes(f"results/part-{j:06d}.parquet"))))
    table = pa.concat_tables([*tables, *portfolio], promote_options="default")
    is_portfolio = pc.equal(table.column("symbol"), PORTFOLIO)
    order = pc.sort_indices(table.append_column("_portfolio", is_portfolio),
                            sort_keys=[("set_id", "ascending"), ("_portfolio", "ascending"), ("symbol", "ascending")])
    return table.take(order)

@dataclass
class SweepResult:
    """A finished sweep: its id, where it lives, the table and the run summary."""

    run_id: str
    url: str
    table: pd.DataFrame
    summary: dict[str, Any]
    config: SweepConfig

    @property
    def portfolio(self) -> pd.DataFrame:
        """One equal-weight portfolio row per parameter set (``symbol == "PORTFOLIO"``)."""
        return self.table[self.table["symbol"] == PORTFOLIO].reset_index(drop=True)

    @property
    def per_symbol(self) -> pd.DataFrame:
        """One row per (parameter set, symbol)."""
        return self.table[self.table["symbol"] != PORTFOLIO].reset_index(drop=True)

    def top(self, n: int | None = None, metric: str | None = None, per_symbol: bool = False) -> pd.DataFrame:
        """The best parameter sets by ``metric`` of their portfolio row (or of single symbols).

        Highest first; for ``max_drawdown`` (negative) that is the shallowest.
        """
        metric = metric or self.config.metric
        n = self.config.top if n is None else n
        rows = self.per_symbol if per_symbol else self.portfolio
        return rows.sort_values(metric, ascending=False, na_position="last", kind="stable").head(n)

    def lines(self) -> list[str]:
        s = self.summary
        out = [f"run {self.run_id} at {self.url}: {s['status']}",
               f"{s['backtests']:,} backtests ({s['param_sets']:,} parameter sets x {s['symbols']} symbols), "
               f"{s['bar_evaluations']:,} bar-evaluations"]
        if s.get("wall_seconds"):
            out.append(f"wall {s['wall_seconds']:.1f}s, {s['bar_evals_per_s']:,.0f} bar-evals/s, "
                       f"{s['tasks']} tasks ({s['tasks_resumed']} resumed), "
                       f"peak worker memory {s['peak_worker_memory_mb']:,.0f} MB")
        if s.get("indicators"):
            out.append(s["indicators"])
        return out
