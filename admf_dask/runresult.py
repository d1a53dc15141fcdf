"""A finished run loaded back from storage: :func:`load_run` and :class:`RunResult`.

``load_run(root, "latest")`` needs no config: everything comes from the run's
``run.json`` (config, data, summary, and the keys added later, ``findings``,
``monitor``, ``performance_report``, when present) and its tables, read lazily by
:class:`~admf_dask.sweep.results.SweepResult`, which :class:`RunResult` extends.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError
from .kernels.names import STAT_NAMES
from .storage import StorageRef
from .sweep.results import PORTFOLIO, SweepResult

__all__ = ["AGGREGATIONS", "BACKTEST_KEYS", "RunResult", "load_run"]

AGGREGATIONS = ("max", "median")
BACKTEST_KEYS = ("direction", "cash", "commission", "slippage_bps", "whole_units", "stop_loss", "take_profit")


class RunResult(SweepResult):
    """A finished sweep or replay: ``.table``, ``.portfolio``, ``.config`` (the run's config as recorded, a dict),
    ``.summary``, ``.run`` (its whole run.json), ``.top()``, ``.heatmap()``, ``.plot()``."""

    def __init__(self, root: StorageRef, run_id: str, run: dict[str, Any]) -> None:
        ref = root.child("runs", run_id)
        super().__init__(run_id, ref.url, run.get("summary", {}), run.get("config", {}), ref.open())
        self.root, self.run = root, run
        self.kind = run.get("kind", "sweep")

    def __repr__(self) -> str:
        return f"RunResult({self.kind} {self.run_id!r}, {self.url!r})"

    @property
    def metric(self) -> str:
        """The metric the run ranked by (recorded by newer runs), else ``sharpe``."""
        return self.run.get("metric") or "sharpe"

    @property
    def findings(self) -> list[dict[str, str]] | None:
        """The bottleneck detector's findings (None for runs made before it existed)."""
        return self.run.get("findings")

    @property
    def performance_report(self) -> str | None:
        return self.run.get("performance_report")

    @property
    def param_names(self) -> list[str]:
        """The parameter columns of the table (a replay's are the member weights ``w0, w1, ...``)."""
        cols = self.portfolio.columns
        return [c for c in cols if c not in ("set_id", "symbol") and c not in STAT_NAMES]

    def top(self, n: int | None = 10, metric: str | None = None, per_symbol: bool = False) -> pd.DataFrame:
        """The ``n`` best parameter sets by ``metric`` (default: the run's) of their portfolio row, best first."""
        metric = metric or self.metric
        _check_metric(metric)
        saved, self.config = self.config, _Ranking(metric, 10 if n is None else n)
        try:
            return super().top(10 if n is None else n, metric, per_symbol)
        finally:
            self.config = saved

    def heatmap(self, x: str, y: str, metric: str | None = None, agg: str = "max",
                symbol: str = PORTFOLIO) -> pd.DataFrame:
        """``metric`` over parameters ``x`` (columns) and ``y`` (index), the other parameters aggregated by
        ``agg`` ("max" or "median"); rows of ``symbol`` (default: the portfolio rows)."""
        metric = metric or self.metric
        _check_metric(metric)
        if agg not in AGGREGATIONS:
            raise ConfigError(f"agg must be one of {AGGREGATIONS}, got {agg!r}", key="agg")
        rows = self.portfolio if symbol == PORTFOLIO else self.per_symbol
        if symbol != PORTFOLIO:
            rows = rows[rows["symbol"] == symbol]
        for name in (x, y):
            if name not in self.param_names:
                raise ConfigError(f"no parameter {name!r} in run {self.run_id}", key="heatmap",
                                  hint=f"parameters: {', '.join(self.param_names)}")
        return heat(rows, x, y, metric, agg)

    def bars(self) -> Any:
        """The bar store the run was made from (at its recorded URL, with the root's storage options)."""
        from .bars import BarStore

        from .preflight import stored_bars

        stored_bars(self.run["bars"], self.root.options, what=f"run {self.run_id}",
                    hint="run from the directory the run was made in")
        return BarStore.open(StorageRef.make(self.run["bars"], self.root.options))

    def params_of(self, set_id: int) -> dict[str, Any]:
        row = self.portfolio.set_index("set_id").loc[int(set_id)]
        return {k: _plain(row[k]) for k in self.param_names if not _missing(row[k])}

    def backtest(self, set_id: int, symbol: str) -> Any:
        """Recompute one (parameter set, symbol) of a sweep with :func:`admf_dask.backtest.backtest`."""
        from .backtest import backtest

        if self.kind != "sweep":
            raise ConfigError(f"run {self.run_id} is a {self.kind}: only a sweep's sets are backtests", key="run")
        cfg = self.config
        bars = self.bars().read(symbol, cfg.get("start"), cfg.get("end"))
        return backtest(bars, cfg["strategy"], self.params_of(set_id),
                        **{k: cfg[k] for k in BACKTEST_KEYS if k in cfg})

    def plot(self, top: int = 10, metric: str | None = None) -> Any:
        """A bokeh layout of the run (what ``admf report`` writes), for a notebook's ``bokeh.io.show``."""
        from .reports import run_layout

        return run_layout(self, top=top, metric=metric)


class _Ranking:  # what SweepResult.top reads of a config
    def __init__(self, metric: str, top: int) -> None:
        self.metric, self.top = metric, top


def heat(rows: pd.DataFrame, x: str, y: str, metric: str, agg: str) -> pd.DataFrame:
    """The pivot: ``y`` values as the index, ``x`` values as columns, ``agg`` of ``metric`` over the rest."""
    return rows.groupby([y, x])[metric].agg(agg).unstack(x).sort_index().sort_index(axis=1)


def _check_metric(metric: str) -> None:
    from .sweep.grid import check_metric

    check_metric(metric)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def load_run(root: StorageRef | str, run_id: str = "latest", storage_options: dict | None = None) -> RunResult:
    """A finished sweep or replay under storage ``root`` by id (or unique prefix), or ``"latest"``
    (the sweep or replay completed last). ConfigError when there is none or it is not complete."""
    from .runs import KINDS, find_run, latest, list_runs, run_complete

    if isinstance(root, str):
        root = StorageRef.make(root, storage_options)
    if run_id in ("latest", "last"):
        pointed = [p for p in (latest(root, k) for k in ("sweep", "replay")) if p]
        done = [r for r in list_runs(root) if r.kind in ("sweep", "replay") and r.status == "complete"]
        if not done:
            raise ConfigError(f"no complete sweep or replay run under {root.url}", key="run",
                              hint="give the --storage root the run was written under")
        ids = [r.id for r in done]
        candidates = [p for p in pointed if p in ids]
        run_id = max(candidates, key=ids.index) if candidates else ids[-1]
    else:
        info = find_run(root, run_id)
        if info.kind not in KINDS or info.kind == "signals":
            raise ConfigError(f"{info.id} is a {info.kind}, not a sweep or replay run", key="run")
        run_id = info.id
    ref = root.child("runs", run_id)
    if not run_complete(ref):
        raise ConfigError(f"run {run_id} is not complete", key="run", hint="rerun its command: it resumes")
    return RunResult(root, run_id, ref.open().read_json("run.json"))
