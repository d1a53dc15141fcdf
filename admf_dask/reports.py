"""Bokeh views of runs and backtests, and ``admf report``'s self-contained HTML file.

* :func:`backtest_layout` - one backtest (``backtest(...).plot()``): price with trades, equity, drawdown.
* :func:`run_layout` - a finished sweep or replay (``load_run(...).plot()``), what :func:`write_report` saves.
* :func:`write_report` - one HTML file with bokeh's JS/CSS inlined (``bokeh.resources.INLINE``): it opens
  with no network.

Curves longer than :data:`CURVE_POINTS` points are downsampled (:func:`downsample`: the first, last, min
and max point of each bucket), so that a report stays small whatever the number of bars. The heat map's
choices (metric, parameter pair, aggregation of the other parameters) are precomputed aggregates that a
CustomJS callback swaps in: the page needs no server.
"""

from __future__ import annotations

import html
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError

__all__ = ["CURVE_POINTS", "HEAT_METRICS", "backtest_layout", "downsample", "replay_curves", "replay_members", "run_layout",
           "save_html", "write_report"]

CURVE_POINTS = 2000  # buckets of a downsampled curve (each keeps its min and max point)
HEAT_METRICS = ("sharpe", "total_return", "cagr", "sortino", "calmar", "max_drawdown", "win_rate", "profit_factor",
                "n_trades")
HEAT_VALUES = 2_000_000  # heat-map values a page stores at most (float32: 8 MB), over every parameter pair
MAX_TRADES = 2_000  # trades drawn on a price plot at most (evenly spaced over the backtest; the count is said)
WIDTH = 900
CHAR_PX, CELL_PAD_PX, MAX_COLUMN_PX = 8, 24, 260  # a table column: 8 px a character, padding, cap


def downsample(y: np.ndarray, buckets: int = CURVE_POINTS) -> np.ndarray:
    """Indices of ``y`` to draw: per bucket of consecutive points its min and max, plus the first and last point.

    >>> downsample(np.array([0., 5, 1, 2, -3, 4, 0, 1]), buckets=2).tolist()
    [0, 1, 4, 5, 7]
    """
    n = len(y)
    if n <= 2 * buckets:
        return np.arange(n)
    k = -(-n // buckets)
    m = n // k * k
    v = np.where(np.isnan(y), 0.0, y)
    block = v[:m].reshape(-1, k)
    base = np.arange(block.shape[0]) * k
    tail = v[m:]  # the last, shorter bucket: its min and max too (at most 2 * buckets + 2 points in all)
    ends = [m + tail.argmin(), m + tail.argmax()] if len(tail) else []
    idx = np.concatenate([base + block.argmin(1), base + block.argmax(1), ends, [0, n - 1]]).astype(np.int64)
    return np.unique(idx)


def _x(index: pd.Index) -> tuple[np.ndarray, str]:
    if isinstance(index, pd.DatetimeIndex):
        ix = index.tz_convert(None) if index.tz is not None else index
        return ix.values, "datetime"
    return np.asarray(index, dtype=np.float64), "linear"


def _curve(series: pd.Series) -> dict[str, np.ndarray]:
    x, _ = _x(series.index)
    y = series.to_numpy(dtype=np.float64)
    keep = downsample(y)
    return {"x": x[keep], "y": y[keep]}


def _drawdown(equity: pd.Series) -> pd.Series:
    return equity / equity.cummax() - 1.0


def backtest_layout(result: Any, title: str | None = None) -> Any:
    """One backtest like backtesting.py's plot: price with entries (triangles) and exits (x), each trade a line
    from entry to exit (green won, red lost); equity; drawdown. x axes linked."""
    from bokeh.layouts import column
    from bokeh.models import ColumnDataSource, Div
    from bokeh.plotting import figure

    equity = result.equity
    _, axis = _x(equity.index)
    params = ", ".join(f"{k}={v}" for k, v in result.params.items())
    head = Div(text=f"<h3>{html.escape(title or result.strategy)} ({html.escape(params)})</h3>"
                    f"<p>{_stats_line(result.stats)}</p>", width=WIDTH)
    tr = result.trades
    shown = ""
    if len(tr) > MAX_TRADES:  # evenly spaced over the backtest: a page of a million trades would not open
        tr = tr.iloc[np.unique(np.linspace(0, len(tr) - 1, MAX_TRADES).round().astype(np.int64))]
        shown = f" ({len(tr):,} of {len(result.trades):,} trades drawn, evenly spaced)"
    price = figure(width=WIDTH, height=300, x_axis_type=axis, title=f"price and trades{shown}", name="price")
    close = getattr(result, "close", None)
    if close is not None:
        price.line("x", "y", source=ColumnDataSource(_curve(close)), color="#333", legend_label="close")
    if len(tr):
        ex, _ = _x(pd.Index(tr["entry_time"]))
        xx, _ = _x(pd.Index(tr["exit_time"]))
        won = tr["pnl"].to_numpy() > 0
        src = ColumnDataSource({"x0": ex, "y0": tr["entry_price"].to_numpy(), "x1": xx,
                                "y1": tr["exit_price"].to_numpy(), "pnl": tr["pnl"].to_numpy(),
                                "dir": np.where(tr["direction"].to_numpy() > 0, "long", "short"),
                                "color": np.where(won, "#2ca02c", "#d62728"),
                                "angle": np.where(tr["direction"].to_numpy() > 0, 0.0, np.pi)})
        price.segment("x0", "y0", "x1", "y1", source=src, color="color", line_width=2, line_dash="dashed")
        price.scatter("x0", "y0", source=src, marker="triangle", angle="angle", size=9, color="color",
                      legend_label="entry")
        price.scatter("x1", "y1", source=src, marker="x", size=9, color="color", legend_label="exit")
        from bokeh.models import HoverTool

        price.add_tools(HoverTool(tooltips=[("trade", "@dir"), ("entry", "@y0{0.00}"), ("exit", "@y1{0.00}"),
                                            ("pnl", "@pnl{0.00}")]))
    price.legend.location = "top_left"
    eq = figure(width=WIDTH, height=200, x_axis_type=axis, x_range=price.x_range, title="equity", name="equity")
    eq.line("x", "y", source=ColumnDataSource(_curve(equity)), color="#1f77b4")
    dd = figure(width=WIDTH, height=150, x_axis_type=axis, x_range=price.x_range, title="drawdown", name="drawdown")
    d = _curve(_drawdown(equity))
    dd.varea(x="x", y1="y", y2=0.0, source=ColumnDataSource(d), color="#d62728", alpha=0.4)
    return column(head, price, eq, dd)


def _stats_line(stats: pd.Series) -> str:
    keys = [k for k in ("total_return", "sharpe", "max_drawdown", "n_trades", "win_rate") if k in stats]
    return ", ".join(f"{k} {stats[k]:.4g}" for k in keys)


# --- runs ---------------------------------------------------------------------------------------------------


def _header(result: Any) -> str:
    run, s = result.run, result.summary
    cfg = result.config
    rows = [("run", f"{result.kind} {result.run_id}"), ("where", result.url),
            ("dataset", str(run.get("bars"))), ("fingerprint", str(run.get("data_fingerprint"))),
            ("symbols", f"{len(run.get('symbols', []))}: {', '.join(run.get('symbols', [])[:20])}"
                        + (" ..." if len(run.get("symbols", [])) > 20 else "")),
            ("range", f"{cfg.get('start') or 'first bar'} to {cfg.get('end') or 'last bar'}"),
            ("started", str(run.get("started"))), ("finished", str(run.get("finished"))),
            ("wall", f"{s.get('wall_seconds', '?')} s"),
            ("counts", f"{s.get('param_sets', run.get('param_sets'))} parameter sets x {s.get('symbols', '?')} "
                       f"symbols = {s.get('backtests', '?')} backtests, {s.get('bar_evaluations', '?')} "
                       f"bar-evaluations, {s.get('tasks', '?')} tasks"),
            ("config", json.dumps(cfg, sort_keys=True, default=str))]
    body = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
                   f"<td><code>{html.escape(v)}</code></td></tr>" for k, v in rows)
    return f"<h2>admf {html.escape(result.kind)} report</h2><table>{body}</table>"


def _inspection(result: Any) -> str:
    """The bottleneck detector's findings and the Dask performance report's link (runs record them)."""
    parts = []
    findings = result.run.get("findings")
    if findings is not None:
        if findings:
            items = "".join(f"<li><b>{html.escape(str(f.get('rule')))}</b>: {html.escape(str(f.get('finding')))}"
                            f" &mdash; fix: {html.escape(str(f.get('fix')))}</li>" for f in findings)
            parts.append(f"<h3>Findings</h3><ul class='findings'>{items}</ul>")
        else:
            parts.append("<h3>Findings</h3><p class='findings'>no findings</p>")
    perf = result.run.get("performance_report")
    if perf:
        parts.append(f"<p>Dask performance report: <a href='{html.escape(str(perf), quote=True)}'>"
                     f"{html.escape(str(perf))}</a></p>")
    return "".join(parts)


def _table(frame: pd.DataFrame, name: str) -> Any:
    """A sortable table of ``frame``, each column as wide as its header and values (bokeh's default squeezes every
    column into the table's width and cuts the headers); wider than the page, the table scrolls sideways."""
    from bokeh.models import ColumnDataSource, DataTable, NumberFormatter, TableColumn

    cols = []
    for c in frame.columns:
        is_float = pd.api.types.is_float_dtype(frame[c])
        fmt = NumberFormatter(format="0.[0000]") if is_float else None
        shown = (frame[c].map("{:.4f}".format) if is_float else frame[c].astype(str)).str.len()
        chars = max(len(str(c)), int(shown.max()) if len(shown) else 0)
        cols.append(TableColumn(field=c, title=c, width=min(CHAR_PX * chars + CELL_PAD_PX, MAX_COLUMN_PX),
                                **({"formatter": fmt} if fmt else {})))
    data = {c: frame[c].to_numpy() for c in frame.columns}
    return DataTable(source=ColumnDataSource(data), columns=cols, width=WIDTH, height=min(40 + 26 * len(frame), 420),
                     autosize_mode="none", sortable=True, reorderable=False, index_position=None, name=name)


def heat_aggregates(rows: pd.DataFrame, params: list[str], metrics: list[str],
                    budget: int | None = None) -> dict[str, dict]:
    """Every heat map the page can show, by parameter pair ``"x x y"`` (every pair of ``params``): the cells ``x``,
    ``y`` (parameter values as text, one per (x, y) pair present) and ``v``: ``{"metric|agg": float32 values}`` in
    the cells' order (a pair's cells are the same for every metric and aggregation: its factors are stored once).

    ``budget`` (default :data:`HEAT_VALUES`) bounds the values stored, so that the page stays small whatever the
    number of parameters: pairs, in order, get every metric while they fit, then only the first metric, then
    nothing (left out of the page). The first pair always gets at least the first metric.
    """
    from .runresult import AGGREGATIONS

    budget = HEAT_VALUES if budget is None else budget
    out: dict[str, dict] = {}
    used = 0
    for x, y in itertools.combinations(params, 2):
        grouped = rows.groupby([y, x])
        cells = grouped.ngroups
        per_metric = cells * len(AGGREGATIONS)
        if used + per_metric * len(metrics) <= budget:
            keep = metrics
        elif used + per_metric <= budget or not out:
            keep = metrics[:1]
        else:
            continue
        used += per_metric * len(keep)
        values = {}
        index = None
        for metric in keep:
            for agg in AGGREGATIONS:
                grid = grouped[metric].agg(agg)
                index = grid.index if index is None else index
                values[f"{metric}|{agg}"] = grid.to_numpy(dtype=np.float32)
        out[f"{x} x {y}"] = {"x": [_factor(v) for v in index.get_level_values(1)],
                             "y": [_factor(v) for v in index.get_level_values(0)], "v": values}
    return out


def _factor(v: Any) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v)) if abs(v) < 1e15 else str(v)
    return str(v.item() if isinstance(v, np.generic) else v)


def _sorted_factors(values: list[str]) -> list[str]:
    uniq = list(dict.fromkeys(values))
    try:
        return sorted(uniq, key=float)
    except ValueError:
        return sorted(uniq)


def _heatmap(portfolio: pd.DataFrame, params: list[str], metric: str) -> Any:
    from bokeh.layouts import column, row
    from bokeh.models import (ColorBar, ColumnDataSource, CustomJS, Div, FactorRange, HoverTool, LinearColorMapper,
                              Select)
    from bokeh.palettes import Viridis256
    from bokeh.plotting import figure

    metrics = [metric] + [m for m in HEAT_METRICS if m != metric and m in portfolio.columns]
    aggs = heat_aggregates(portfolio, params, metrics)
    n_pairs = len(params) * (len(params) - 1) // 2
    thin = [p for p, d in aggs.items() if len(d["v"]) < 2 * len(metrics)]
    budget_note = ""
    if len(aggs) < n_pairs or thin:
        budget_note = (f" (to keep the page small: {n_pairs - len(aggs)} of {n_pairs} parameter pairs left out, "
                       f"{len(thin)} with only {metric}; use RunResult.heatmap for any pair)")
    x, y = params[0], params[1]
    pair = aggs[f"{x} x {y}"]
    first = {"x": pair["x"], "y": pair["y"], "v": pair["v"][f"{metric}|max"]}
    src = ColumnDataSource(first)
    finite = first["v"][np.isfinite(first["v"])]
    mapper = LinearColorMapper(palette=Viridis256, low=float(finite.min()) if finite.size else 0.0,
                               high=float(finite.max()) if finite.size else 1.0, nan_color="#dddddd")
    label = f"{metric} over {x} x {y}, other parameters: max"
    fig = figure(width=WIDTH, height=500, x_range=FactorRange(*_sorted_factors(first["x"])),
                 y_range=FactorRange(*_sorted_factors(first["y"])), title=label, name="heatmap",
                 x_axis_label=x, y_axis_label=y, tools="hover,save,reset")
    cells = fig.rect("x", "y", 1, 1, source=src, fill_color={"field": "v", "transform": mapper}, line_color=None,
                     name="heat_cells")
    fig.select_one(HoverTool).tooltips = [(x, "@x"), (y, "@y"), ("value", "@v{0.[0000]}")]
    fig.select_one(HoverTool).renderers = [cells]
    fig.add_layout(ColorBar(color_mapper=mapper, width=12), "right")
    pairs = list(aggs)
    s_metric = Select(title="metric", value=metric, options=metrics, name="heat_metric")
    s_pair = Select(title="parameters (x x y)", value=pairs[0], options=pairs, name="heat_pair")
    s_agg = Select(title="other parameters aggregated by", value="max", options=["max", "median"], name="heat_agg")
    note = Div(text=f"<i>{html.escape(label)}</i>{html.escape(budget_note)}", name="heat_label")
    hover = fig.select_one(HoverTool)
    cb = CustomJS(args=dict(src=src, aggs=aggs, fig=fig, mapper=mapper, m=s_metric, p=s_pair, a=s_agg, note=note,
                            hover=hover, xaxis=fig.xaxis[0], yaxis=fig.yaxis[0]), code="""
const [x, y] = p.value.split(' x ');
const d = aggs.get ? aggs.get(p.value) : aggs[p.value];
const vs = d.get ? d.get('v') : d.v;
const v = vs.get ? vs.get(m.value + '|' + a.value) : vs[m.value + '|' + a.value];
if (v === undefined) {
  note.text = '<i>' + m.value + ' over ' + p.value + ' is not stored in this page (its size budget): choose ' +
              'another metric, or use RunResult.heatmap</i>';
  return;
}
const dx = d.get ? d.get('x') : d.x, dy = d.get ? d.get('y') : d.y;
const order = (xs) => { const u = [...new Set(xs)];
  return u.every(t => !isNaN(parseFloat(t))) ? u.sort((s, t) => parseFloat(s) - parseFloat(t)) : u.sort(); };
fig.x_range.factors = order(dx); fig.y_range.factors = order(dy);
src.data = {x: dx, y: dy, v: v};
let lo = Infinity, hi = -Infinity;
for (const t of v) { if (isFinite(t)) { lo = Math.min(lo, t); hi = Math.max(hi, t); } }
if (isFinite(lo)) { mapper.low = lo; mapper.high = hi; }
const label = m.value + ' over ' + x + ' x ' + y + ', other parameters: ' + a.value;
fig.title.text = label; note.text = '<i>' + label + '</i>';
xaxis.axis_label = x; yaxis.axis_label = y;
hover.tooltips = [[x, '@x'], [y, '@y'], ['value', '@v{0.[0000]}']];
""")
    for w in (s_metric, s_pair, s_agg):
        w.js_on_change("value", cb)
    return column(row(s_metric, s_pair, s_agg), note, fig)


def _distribution(result: Any, top: pd.DataFrame, metric: str) -> Any:
    """The metric of each symbol for the top sets: one column of points per set, its median marked."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure

    from .sweep.results import PORTFOLIO

    ids = list(dict.fromkeys(int(i) for i in top["set_id"]))
    storage = result._storage
    with storage.fs.open(storage.path("results.parquet"), "rb") as f:
        t = pq.read_table(f, columns=["set_id", "symbol", metric], filters=[("set_id", "in", ids)])
    t = t.filter(pc.not_equal(t.column("symbol"), PORTFOLIO)).to_pandas()
    labels = {i: f"#{r + 1} set {i}" for r, i in enumerate(ids)}
    t["set"] = t["set_id"].map(labels)
    fig = figure(width=WIDTH, height=300, x_range=[labels[i] for i in ids], name="distribution",
                 title=f"{metric} across symbols, top {len(ids)} sets", tools="hover,save,reset")
    src = ColumnDataSource({"set": t["set"].to_numpy(), "v": t[metric].to_numpy(), "symbol": t["symbol"].to_numpy()})
    from bokeh.transform import jitter

    fig.scatter(x=jitter("set", 0.3, range=fig.x_range), y="v", source=src, size=5, alpha=0.6)
    med = t.groupby("set")[metric].median()
    fig.scatter(x=list(med.index), y=med.to_numpy(), marker="dash", size=30, color="#d62728", line_width=3)
    fig.select_one(HoverTool).tooltips = [("set", "@set"), ("symbol", "@symbol"), (metric, "@v{0.0000}")]
    return fig


def portfolio_curves(result: Any, set_ids: list[int]) -> dict[int, pd.Series]:
    """The equal-weight portfolio equity of each set, recomputed with ``backtest()`` per symbol: the mean of the
    sleeves over the union of their timestamps, each carried forward (its starting cash before its first bar),
    as :mod:`admf_dask.kernels.portfolio` defines it."""
    from .backtest import backtest
    from .runresult import BACKTEST_KEYS

    cfg = result.config
    store = result.bars()
    kwargs = {k: cfg[k] for k in BACKTEST_KEYS if k in cfg}
    cash = float(cfg.get("cash", 10_000))
    sleeves: dict[int, list[pd.Series]] = {i: [] for i in set_ids}
    params = {i: result.params_of(i) for i in set_ids}
    for symbol in result.run.get("symbols", []):
        bars = store.read(symbol, cfg.get("start"), cfg.get("end"))
        for i in set_ids:
            sleeves[i].append(backtest(bars, cfg["strategy"], params[i], **kwargs).equity.rename(symbol))
    out = {}
    for i, curves in sleeves.items():
        frame = pd.concat(curves, axis=1).sort_index().ffill().fillna(cash)
        out[i] = frame.mean(axis=1)
    return out


def _equity(result: Any, top: pd.DataFrame, k: int) -> Any:
    from bokeh.layouts import column
    from bokeh.models import ColumnDataSource
    from bokeh.palettes import Category10_10
    from bokeh.plotting import figure

    ids = [int(i) for i in top["set_id"].head(k)]
    curves = portfolio_curves(result, ids)
    axis = _x(next(iter(curves.values())).index)[1] if curves else "linear"
    eq = figure(width=WIDTH, height=300, x_axis_type=axis, title=f"PORTFOLIO equity, top {len(ids)} sets",
                name="portfolio_equity")
    dd = figure(width=WIDTH, height=180, x_axis_type=axis, x_range=eq.x_range, title="PORTFOLIO drawdown",
                name="portfolio_drawdown")
    for n, (i, curve) in enumerate(curves.items()):
        color = Category10_10[n % 10]
        eq.line("x", "y", source=ColumnDataSource(_curve(curve)), color=color, legend_label=f"#{n + 1} set {i}")
        dd.line("x", "y", source=ColumnDataSource(_curve(_drawdown(curve))), color=color)
    eq.legend.location = "top_left"
    return column(eq, dd)


def _trades(result: Any, set_id: int, symbol: str) -> Any:
    bt = result.backtest(set_id, symbol)
    return backtest_layout(bt, title=f"set {set_id} on {symbol}: {bt.strategy}")


def replay_members(result: Any) -> list[str]:
    """The labels of a replay's members in weight order (``w0`` is the first): from its signal set."""
    return [m.label for m in _signal_set(result).members]


def _signal_set(result: Any) -> Any:
    from .replay import open_signal_set

    if result.kind != "replay":
        raise ConfigError(f"run {result.run_id} is a {result.kind}, not a replay", key="run")
    return open_signal_set(str(result.config["signals"]), result.root)


def replay_curves(result: Any, set_id: int) -> dict[str, pd.Series]:
    """A replay's ensemble (weight vector ``set_id``) and each member alone: their equal-weight PORTFOLIO equity,
    recomputed over the run's symbols with the replay's own kernel, rule and costs from the stored signals.

    Keys: ``"ensemble"`` and the member labels. A member alone is its one-hot weight vector, which reproduces
    the member's own backtest exactly (see :mod:`admf_dask.replay`). Sleeves are combined as the PORTFOLIO
    rows are: the mean over the union of timestamps, each carried forward (its cash before its first bar).
    """
    from .backtest import _costs, _f64, _ppy
    from .kernels.portfolio import accumulators_init
    from .kernels.replay import ensemble_batch_with_equity
    from .replay import RULES
    from .strategies import direction_code

    cfg = result.config
    signal_set = _signal_set(result)
    labels = [m.label for m in signal_set.members]
    row = result.portfolio.set_index("set_id").loc[int(set_id)]
    weights = np.vstack([[float(row[f"w{j}"]) for j in range(len(labels))], np.eye(len(labels))])
    costs = _costs("long_short", **cfg["costs"])
    store = result.bars()
    start, end = signal_set.manifest.get("start"), signal_set.manifest.get("end")
    sleeves: list[list[pd.Series]] = [[] for _ in weights]
    for symbol in result.run.get("symbols", []):
        bars = store.read(symbol, start=start, end=end)
        n = len(bars)
        if n == 0:
            continue
        signals = signal_set.load(symbol, bars)
        o, h, lo, c = (_f64(bars.columns[k]) for k in ("open", "high", "low", "close"))
        eq, tr, ex = accumulators_init(len(weights), n)
        ensemble_batch_with_equity(signals, weights, RULES[cfg["rule"]], float(cfg["threshold"]),
                                   direction_code(cfg["direction"]), o, h, lo, c, np.arange(n, dtype=np.int64),
                                   _ppy(bars, True, None), costs.cash, costs.commission, costs.slippage_bps,
                                   costs.whole_units, costs.stop_loss, costs.take_profit, eq, tr, ex)
        index = pd.DatetimeIndex(pd.to_datetime(bars.timestamp, utc=True))
        for k in range(len(weights)):
            sleeves[k].append(pd.Series(eq[k], index=index, name=symbol))
    out = {}
    for name, curves in zip(["ensemble", *labels], sleeves):
        frame = pd.concat(curves, axis=1).sort_index().ffill().fillna(costs.cash)
        out[name] = frame.mean(axis=1)
    return out


def _replay_header(result: Any) -> str:
    """A replay's members (which configuration each weight column weighs) and its rule."""
    cfg = result.config
    rows = "".join(f"<tr><th style='text-align:left;padding-right:1em'>w{j}</th><td><code>{html.escape(label)}"
                   f"</code></td></tr>" for j, label in enumerate(replay_members(result)))
    return (f"<h3>Members (weight column: configuration)</h3><table class='members'>{rows}</table>"
            f"<p>rule {html.escape(str(cfg.get('rule')))}, threshold {cfg.get('threshold')}, direction "
            f"{html.escape(str(cfg.get('direction')))}, signal set {html.escape(str(cfg.get('signals')))}</p>")


def _replay_views(result: Any, best: pd.DataFrame, metric: str) -> list[Any]:
    """A replay: its members, the metric against each member weight (every vector a point; the max and median
    over the other weights a line), and the best ensemble's equity against its members' equity."""
    from bokeh.layouts import column, gridplot
    from bokeh.models import ColumnDataSource, Div, HoverTool
    from bokeh.palettes import Category10_10
    from bokeh.plotting import figure

    labels = replay_members(result)
    p = result.portfolio
    weights = [f"w{j}" for j in range(len(labels)) if f"w{j}" in p.columns]
    items: list[Any] = []
    src = ColumnDataSource({**{w: p[w].to_numpy() for w in weights}, "v": p[metric].to_numpy(),
                            "set_id": p["set_id"].to_numpy()})
    figs = []
    for j, w in enumerate(weights):
        f = figure(width=300, height=260, title=f"{metric} vs {w}", x_axis_label=f"{w}: {labels[j]}"[:60],
                   y_axis_label=metric, name=f"weight_{w}", tools="box_select,save,reset")
        dots = f.scatter(w, "v", source=src, size=5, alpha=0.4, color="#1f77b4")
        f.add_tools(HoverTool(renderers=[dots], tooltips=[("set", "@set_id"), (w, f"@{w}"),
                                                            (metric, "@v{0.[0000]}")]))
        for agg, color in (("max", "#2ca02c"), ("median", "#d62728")):
            line = p.groupby(w)[metric].agg(agg)
            f.line(line.index.to_numpy(dtype=np.float64), line.to_numpy(dtype=np.float64), color=color,
                   line_width=2, legend_label=agg)
        f.legend.location = "bottom_right"
        f.legend.background_fill_alpha = 0.5
        figs.append(f)
    if figs:
        items.append(Div(text=f"<h3>{html.escape(metric)} against each member weight (points: every weight vector; "
                              "lines: max and median over the other weights)</h3>", width=WIDTH))
        items.append(gridplot(figs, ncols=3))
    if len(best):
        set_id = int(best["set_id"].iloc[0])
        curves = replay_curves(result, set_id)
        vector = ", ".join(f"{w}={best[w].iloc[0]:g}" for w in weights)
        eq = figure(width=WIDTH, height=320, x_axis_type="datetime", name="replay_equity",
                    title=f"PORTFOLIO equity: the best ensemble (set {set_id}: {vector}) against its members alone")
        dd = figure(width=WIDTH, height=180, x_axis_type="datetime", x_range=eq.x_range, title="PORTFOLIO drawdown",
                    name="replay_drawdown")
        for n, (name, curve) in enumerate(curves.items()):
            color, width = ("#000000", 3) if name == "ensemble" else (Category10_10[n % 10], 1.5)
            label = f"ensemble (set {set_id})" if name == "ensemble" else name
            eq.line("x", "y", source=ColumnDataSource(_curve(curve)), color=color, line_width=width,
                    legend_label=label[:60])
            dd.line("x", "y", source=ColumnDataSource(_curve(_drawdown(curve))), color=color, line_width=width)
        eq.legend.location = "top_left"
        items.append(Div(text="<h3>The best ensemble against its members (recomputed from the stored signals)</h3>",
                         width=WIDTH))
        items.append(column(eq, dd))
    return items


def run_layout(result: Any, *, top: int = 10, metric: str | None = None, equity_sets: int = 3,
               symbol: str | None = None) -> Any:
    """The bokeh layout of a run: header, findings, top-N table, heat map, distribution, equity, trades."""
    from bokeh.layouts import column
    from bokeh.models import Div

    metric = metric or result.metric
    best = result.top(top, metric)
    head = _header(result) + _inspection(result) + (_replay_header(result) if result.kind == "replay" else "")
    items: list[Any] = [Div(text=head, width=WIDTH, name="header")]
    what = "weight vectors (w<i>j</i>: member j's weight)" if result.kind == "replay" else "parameter sets"
    items.append(Div(text=f"<h3>Top {len(best)} {what} by {html.escape(metric)} (PORTFOLIO rows; click a column to "
                          "sort)</h3>", width=WIDTH))
    shown = best.reset_index(drop=True)
    if "symbol" in shown and (shown["symbol"] == "PORTFOLIO").all():  # says nothing the title does not
        shown = shown.drop(columns="symbol")
    items.append(_table(shown, "top_table"))
    params = result.param_names
    portfolio = result.portfolio
    pooled = portfolio.empty  # no PORTFOLIO rows (symbols of different bar frequencies): map every symbol's rows
    if len(params) >= 2:
        items.append(Div(text="<h3>Heat map</h3>" + ("<p>no PORTFOLIO rows in this run: the map aggregates the "
                                                     "single symbols' rows</p>" if pooled else ""), width=WIDTH))
        items.append(_heatmap(result.per_symbol if pooled else portfolio, params, metric))
    if len(best):
        items.append(Div(text="<h3>Across symbols</h3>", width=WIDTH))
        items.append(_distribution(result, best, metric))
    if result.kind == "sweep" and len(best) and not pooled:
        items.append(Div(text="<h3>PORTFOLIO equity and drawdown (recomputed with backtest())</h3>", width=WIDTH))
        items.append(_equity(result, best, equity_sets))
    if result.kind == "sweep" and len(best):
        sym = symbol or result.run.get("symbols", [None])[0]
        if sym is not None:
            items.append(_trades(result, int(best["set_id"].iloc[0]), sym))
    if result.kind == "replay":
        items += _replay_views(result, best, metric)
    return column(*items)


def write_report(result: Any, path: str | Path, *, top: int = 10, metric: str | None = None,
                 symbol: str | None = None) -> Path:
    """Write ``result``'s report as one self-contained HTML file (bokeh inlined); returns its path.

    Written to a temporary name and renamed: a failed build leaves no half-written file.
    """
    layout = run_layout(result, top=top, metric=metric, symbol=symbol)
    return save_html(layout, path, f"admf {result.kind} {result.run_id}")


def save_html(layout: Any, path: str | Path, title: str) -> Path:
    """Write a bokeh layout as one self-contained HTML file (bokeh's JS and CSS inlined), atomically."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    page = file_html(layout, INLINE, title=title)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
