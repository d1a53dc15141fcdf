"""Results API (`load_run`) and `admf report`: a real sweep on a threads cluster, oracles from pandas and backtest()."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from admf_dask.backtest import backtest
from admf_dask.bars import generate_bars
from admf_dask.cli import cli
from admf_dask.errors import ConfigError
from admf_dask.runs import load_run

from .conftest import REPORT_MEMBERS as MEMBERS
from .conftest import REPORT_SYMBOLS as SYMBOLS


@pytest.fixture(scope="module")
def swept(report_sweep):
    return report_sweep


@pytest.fixture(scope="module")
def replayed(report_replay):
    return report_replay


def test_grid_axes_accept_range_and_numpy_array(swept):
    _, _, _, result = swept
    assert result.config.params == {"fast": [5, 10, 15, 20, 25], "slow": [40, 60, 80]}
    assert all(type(v) is int for v in result.config.params["slow"])  # plain numbers: run.json is JSON
    assert result.summary["param_sets"] == 15


def test_load_run_latest_reads_the_run_back(swept):
    d, _, root, result = swept
    loaded = load_run(str(d / "store"), "latest")
    assert loaded.run_id == result.run_id == load_run(root, result.run_id[:6]).run_id
    assert loaded.config["strategy"] == "sma_cross" and loaded.summary["backtests"] == 15 * 3
    pd.testing.assert_frame_equal(loaded.table, pd.read_parquet(d / "store" / "runs" / result.run_id /
                                                                 "results.parquet"))
    assert sorted(loaded.param_names) == ["fast", "slow"]
    assert len(loaded.portfolio) == 15 and set(loaded.portfolio["symbol"]) == {"PORTFOLIO"}
    oracle = loaded.table[loaded.table["symbol"] == "PORTFOLIO"].sort_values("total_return", ascending=False)
    assert loaded.top(4, "total_return")["set_id"].tolist() == oracle["set_id"].head(4).tolist()
    with pytest.raises(ConfigError, match="no run or signal set"):
        load_run(root, "nosuchrun")


@pytest.mark.parametrize("agg", ["max", "median"])
def test_heatmap_is_the_pandas_pivot(swept, agg):
    _, _, root, _ = swept
    loaded = load_run(root)
    rows = pd.read_parquet(loaded._storage.path("results.parquet"))
    rows = rows[rows["symbol"] == "PORTFOLIO"]
    oracle = pd.pivot_table(rows, values="sharpe", index="slow", columns="fast", aggfunc=agg)
    got = loaded.heatmap("fast", "slow", "sharpe", agg=agg)
    np.testing.assert_allclose(got.to_numpy(), oracle.to_numpy())
    assert got.index.tolist() == [40, 60, 80] and got.columns.tolist() == [5, 10, 15, 20, 25]
    one = loaded.heatmap("fast", "slow", "sharpe", agg=agg, symbol="BBB")
    sym = pd.pivot_table(loaded.per_symbol[loaded.per_symbol["symbol"] == "BBB"], values="sharpe", index="slow",
                         columns="fast", aggfunc=agg)
    np.testing.assert_allclose(one.to_numpy(), sym.to_numpy())
    with pytest.raises(ConfigError, match="no parameter"):
        loaded.heatmap("fast", "nope")


def test_portfolio_curves_recomputed_match_the_runs_portfolio_rows(swept):
    from admf_dask.reports import portfolio_curves

    _, _, root, _ = swept
    loaded = load_run(root)
    ids = loaded.top(2)["set_id"].tolist()
    curves = portfolio_curves(loaded, ids)
    rows = loaded.portfolio.set_index("set_id")
    for i in ids:  # the kernel's PORTFOLIO total_return against the mean of backtest() sleeves
        assert curves[i].iloc[-1] / curves[i].iloc[0] - 1 == pytest.approx(rows.loc[i, "total_return"], rel=1e-9)
    one = loaded.backtest(ids[0], "AAA")
    per = loaded.per_symbol.set_index(["set_id", "symbol"]).loc[(ids[0], "AAA")]
    assert one.stats["total_return"] == pytest.approx(per["total_return"], rel=1e-9)


def test_report_cli_writes_one_self_contained_file(swept, tmp_path):
    d, _, _, result = swept
    out = tmp_path / "r.html"
    res = CliRunner().invoke(cli, ["report", "latest", "--storage", str(d / "store"), "-o", str(out), "--top", "4",
                                   "--metric", "total_return"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(out)
    page = out.read_text()
    assert not re.search(r"<script[^>]+src=", page) and not re.search(r"<link[^>]+href=", page)  # nothing fetched
    assert "Bokeh" in page and result.run_id in page
    assert "total_return over fast x slow, other parameters: max" in page
    assert not list(tmp_path.glob("*.tmp"))


def test_report_bad_input_is_one_line_and_exit_2(swept, tmp_path):
    d, _, _, _ = swept
    for args, words in ((["nosuchrun"], "no run or signal set"), (["latest", "--metric", "sharp"], "unknown metric"),
                        (["latest", "--symbol", "ZZZ"], "symbol 'ZZZ'")):
        out = tmp_path / "x.html"
        proc = _run_main(["report", *args, "--storage", str(d / "store"), "-o", str(out)])
        assert proc[0] == 2, proc
        lines = [x for x in proc[1].splitlines() if x.strip()]
        assert len(lines) == 1 and words in lines[0], proc[1]
        assert not out.exists()


def _run_main(argv):
    import contextlib
    import io

    from admf_dask.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, err.getvalue()


def test_report_shows_findings_and_performance_report_when_recorded(swept):
    from admf_dask.reports import _inspection

    _, _, root, _ = swept
    loaded = load_run(root)
    assert isinstance(loaded.run["findings"], list) and "Findings" in _inspection(loaded)  # every run has them now
    before = copy.copy(loaded)
    before.run = {k: v for k, v in loaded.run.items() if k not in ("findings", "monitor", "performance_report")}
    assert _inspection(before) == ""  # a run made before the monitor: nothing, no error
    withf = copy.copy(loaded)
    withf.run = {**loaded.run, "findings": [{"rule": "skew", "finding": "slowest task 6x the median",
                                             "fix": "smaller batches"}], "performance_report": "perf.html"}
    text = _inspection(withf)
    assert "skew" in text and "smaller batches" in text and "href='perf.html'" in text
    withf.run = {**loaded.run, "findings": []}
    assert "no findings" in _inspection(withf)
    json.dumps(withf.run)


def test_backtest_plot_is_a_bokeh_layout(swept):
    from bokeh.plotting import figure

    _, store, _, _ = swept
    bt = backtest(store.read("AAA"), "sma_cross", {"fast": 5, "slow": 40})
    layout = bt.plot()
    figs = [m for m in layout.children if isinstance(m, figure)]
    assert [f.name for f in figs] == ["price", "equity", "drawdown"]
    assert len(bt.close) == len(bt.equity)



def test_load_run_reads_a_replay_back_with_its_members(replayed):
    from admf_dask.reports import replay_members

    _, _, root, result = replayed
    loaded = load_run(root, "latest")
    assert (loaded.kind, loaded.run_id) == ("replay", result.run_id)
    assert loaded.param_names == ["w0", "w1"] and len(loaded.portfolio) == 8  # 3 x 3 grid minus (0, 0)
    assert replay_members(loaded) == ["sma_cross(fast=5,slow=40)", "sma_cross(fast=15,slow=60)"]
    oracle = pd.pivot_table(loaded.portfolio, values="sharpe", index="w1", columns="w0", aggfunc="max")
    np.testing.assert_allclose(loaded.heatmap("w0", "w1", "sharpe").to_numpy(), oracle.to_numpy())
    with pytest.raises(ConfigError, match="only a sweep's sets are backtests"):
        loaded.backtest(0, "AAA")


def test_replay_curves_match_the_portfolio_rows_and_the_members_own_backtests(replayed):
    from admf_dask.reports import replay_curves

    _, store, root, _ = replayed
    loaded = load_run(root)
    rows = loaded.portfolio.set_index("set_id")
    best = int(loaded.top(1)["set_id"].iloc[0])
    mixed = int(rows[(rows["w0"] == 0.5) & (rows["w1"] == 1.0)].index[0])
    for set_id in (best, mixed):  # the ensemble's curve ends where the run's PORTFOLIO row says
        curves = replay_curves(loaded, set_id)
        ens = curves["ensemble"]
        assert ens.iloc[-1] / 10_000 - 1 == pytest.approx(rows.loc[set_id, "total_return"], rel=1e-9)
    for params, (label, curve) in zip(MEMBERS, list(curves.items())[1:]):  # members alone: backtest() oracle
        sleeves = [backtest(store.read(s), "sma_cross", params, commission=0.001).equity for s in SYMBOLS]
        oracle = pd.concat(sleeves, axis=1).sort_index().ffill().fillna(10_000).mean(axis=1)
        assert label == f"sma_cross(fast={params['fast']},slow={params['slow']})"
        np.testing.assert_allclose(curve.to_numpy(), oracle.to_numpy(), rtol=1e-9)


def test_report_of_a_replay_shows_weights_members_and_equity(replayed, tmp_path):
    d, _, _, result = replayed
    out = tmp_path / "replay.html"
    res = CliRunner().invoke(cli, ["report", result.run_id[:8], "--storage", str(d / "replay_store"), "-o",
                                   str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert not re.search(r"<script[^>]+src=", page) and "admf replay report" in page
    for name in ("weight_w0", "weight_w1", "replay_equity", "replay_drawdown", "heatmap", "top_table"):
        assert f'"name":"{name}"' in page.replace(" ", ""), name
    assert "sma_cross(fast=15,slow=60)" in page and "sharpe over w0 x w1, other parameters: max" in page


def test_heat_map_offers_every_parameter_pair_within_its_size_budget():
    from admf_dask.reports import heat_aggregates

    rng = np.random.default_rng(3)
    names = [f"p{i}" for i in range(6)]
    grid = pd.MultiIndex.from_product([[1, 2, 3]] * 6, names=names).to_frame(index=False)
    grid["sharpe"], grid["total_return"] = rng.normal(size=len(grid)), rng.normal(size=len(grid))
    aggs = heat_aggregates(grid, names, ["sharpe", "total_return"])
    assert len(aggs) == 15 and "p4 x p5" in aggs  # every pair, not only the first parameters'
    cells = aggs["p4 x p5"]
    oracle = pd.pivot_table(grid, values="total_return", index="p5", columns="p4", aggfunc="median")
    got = {(int(x), int(y)): v for x, y, v in zip(cells["x"], cells["y"], cells["v"]["total_return|median"])}
    for (y, x), v in oracle.stack().items():
        assert got[(x, y)] == pytest.approx(v, rel=1e-6)
    per_metric = 9 * 2  # 3 x 3 cells, max and median
    small = heat_aggregates(grid, names, ["sharpe", "total_return"], budget=3 * 2 * per_metric + per_metric)
    assert list(small) == ["p0 x p1", "p0 x p2", "p0 x p3", "p0 x p4"]  # 3 pairs in full, then one metric, then none
    assert [len(d["v"]) for d in small.values()] == [4, 4, 4, 2]
    assert list(heat_aggregates(grid, names, ["sharpe"], budget=0)) == ["p0 x p1"]  # the first pair always


def test_long_curves_and_many_trades_are_thinned_on_the_plot():
    from bokeh.models import ColumnDataSource

    from admf_dask.reports import CURVE_POINTS, MAX_TRADES

    bars = generate_bars("MIN", "2021-01-01", "2021-12-31", freq="minute", seed=4)
    bt = backtest(bars, "sma_cross", {"fast": 2, "slow": 5})
    assert len(bt.equity) > 50_000 and len(bt.trades) > MAX_TRADES
    layout = bt.plot()
    sizes = {len(next(iter(src.data.values()))) for src in layout.select({"type": ColumnDataSource})}
    assert max(sizes) <= 2 * CURVE_POINTS + 2 and MAX_TRADES in sizes
    price = layout.select_one({"name": "price"})
    assert f"{MAX_TRADES:,} of {len(bt.trades):,} trades drawn" in price.title.text
