"""Reports in a real browser: headless Chromium (Debian's ``chromium``) opens each kind of report with no network.

Every page: no console error, no request leaves the file; every bokeh plot's frame is drawn (a crop of the page's
screenshot holds more colours than an empty frame, which a blank figure checks); the sweep's heat-map tooltip shows
the value pandas computes from results.parquet for that cell, before and after the metric is switched on the page.
"""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from admf_dask.runs import load_run

CHROMIUM = os.environ.get("ADMF_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MIN_COLOURS = 12  # distinct colours in a drawn frame; an empty one has background and grid lines only

pytestmark = pytest.mark.slow

# every plot of the page, by model name, with its frame's box in page pixels (the figure's inner plotting area)
PLOTS_JS = """() => {
  const doc = Bokeh.documents[0], out = [];
  for (const m of doc.all_models) {
    if (m.type !== 'Figure' && m.type !== 'Plot') continue;
    const v = Bokeh.index.find_one(m);
    if (v == null) { out.push({name: m.name, id: m.id, missing: true}); continue; }
    const r = v.el.getBoundingClientRect(), f = v.frame.bbox;
    out.push({name: m.name, id: m.id, x: r.left + window.scrollX + f.x, y: r.top + window.scrollY + f.y,
              w: f.width, h: f.height, renderers: m.renderers.length});
  }
  return out;
}"""

# the centre of the heat map's cell (x factor, y factor), in viewport pixels after scrolling the map into view
CELL_JS = """([fx, fy]) => {
  const m = Bokeh.documents[0].get_model_by_name('heatmap'), v = Bokeh.index.find_one(m);
  v.el.scrollIntoView({block: 'center'});
  const r = v.el.getBoundingClientRect(), f = v.frame.bbox;
  const xs = m.x_range.factors, ys = m.y_range.factors, i = xs.indexOf(fx), j = ys.indexOf(fy);
  if (i < 0 || j < 0) return null;
  return {x: r.left + f.x + (i + 0.5) * f.width / xs.length,
          y: r.top + f.y + f.height - (j + 0.5) * f.height / ys.length};
}"""


# the top-N table's column headers: their text, and whether the text is cut (wider than its cell)
HEADERS_JS = """() => {
  const v = Bokeh.index.find_one(Bokeh.documents[0].get_model_by_name('top_table'));
  const root = v.shadow_el ?? v.el.shadowRoot ?? v.el;
  v.el.scrollIntoView({block: 'center'});
  return [...root.querySelectorAll('.slick-header-column')].map(e => {
    const name = e.querySelector('.slick-column-name') ?? e;
    return {text: name.textContent, cut: name.offsetLeft + name.scrollWidth > e.clientWidth};
  });
}"""


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install chromium (.ci/run does), or set ADMF_CHROMIUM")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra: pip install "
                                                                 "-e '.[test]'")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Page:
    """A report opened in a fresh browser page, with what it logged and requested."""

    def __init__(self, browser, path):
        self.errors, self.requests = [], []
        self.page = browser.new_page(viewport={"width": 1000, "height": 900})
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(f"file://{path}")
        self.page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].is_idle",
                                    timeout=30_000)

    def plots(self):
        return self.page.evaluate(PLOTS_JS)

    def colours(self):
        """Distinct colours in each plot's frame, by plot name (from one full-page screenshot)."""
        from PIL import Image

        plots = self.plots()
        assert not [p for p in plots if p.get("missing")], plots
        rgb = np.asarray(Image.open(io.BytesIO(self.page.screenshot(full_page=True))).convert("RGB"), np.uint32)
        packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        out = {}
        for p in plots:  # 2 pixels in from the frame's edge: its outline is not content
            crop = packed[int(p["y"]) + 2:int(p["y"] + p["h"]) - 2, int(p["x"]) + 2:int(p["x"] + p["w"]) - 2]
            out[p["name"] or p["id"]] = len(np.unique(crop))
        return out

    def hover(self, fx, fy):
        """Hover the heat map's cell (fx, fy): its tooltip's fields, by label."""
        cell = self.page.evaluate(CELL_JS, [fx, fy])
        assert cell is not None, (fx, fy)
        self.page.mouse.move(cell["x"], cell["y"])
        tip = self.page.locator(".bk-tooltip-content").first
        tip.wait_for(state="visible", timeout=5_000)
        text = tip.inner_text()
        fields = dict(line.split(":", 1) for line in text.replace(":\n", ":").splitlines() if ":" in line)
        return {k.strip(): v.strip() for k, v in fields.items()}

    def check_clean(self):
        assert self.errors == []
        assert [u for u in self.requests if not u.startswith(("file://", "data:", "blob:"))] == []


def test_an_empty_figure_counts_as_blank_and_the_heat_map_controls_work(browser, tmp_path):
    """The detector itself (a figure with nothing drawn stays under the threshold), and the heat map's page controls
    on 3 parameters: another pair and aggregation swapped in by the page's CustomJS, its tooltip the pandas value."""
    from bokeh.layouts import column
    from bokeh.plotting import figure

    from admf_dask.reports import _heatmap, save_html

    rng = np.random.default_rng(7)
    grid = pd.MultiIndex.from_product([[1, 2, 3], [10, 20], [5, 6, 7, 8]], names=["a", "b", "c"]).to_frame(index=False)
    grid["sharpe"], grid["total_return"] = rng.normal(size=len(grid)), rng.normal(size=len(grid))
    layout = column(figure(width=600, height=300, name="empty"), _heatmap(grid, ["a", "b", "c"], "sharpe"))
    page = Page(browser, save_html(layout, tmp_path / "controls.html", "controls"))
    colours = page.colours()
    assert colours["empty"] < MIN_COLOURS <= colours["heatmap"], colours
    selects = page.page.locator("select")
    selects.nth(1).select_option("a x c")
    selects.nth(2).select_option("median")
    page.page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('heatmap').title.text === "
                                "'sharpe over a x c, other parameters: median'")
    fields = page.hover("2", "7")
    expected = grid[(grid["a"] == 2) & (grid["c"] == 7)]["sharpe"].median()
    assert (fields["a"], fields["c"]) == ("2", "7") and float(fields["value"]) == pytest.approx(expected, abs=6e-5)
    page.check_clean()


def test_sweep_report_renders_and_the_heatmap_tooltip_is_the_table_value(browser, report_sweep, tmp_path):
    from admf_dask.reports import write_report

    _, _, root, result = report_sweep
    path = write_report(load_run(root, result.run_id), tmp_path / "sweep.html", top=5)
    page = Page(browser, path)
    colours = page.colours()
    assert set(colours) >= {"heatmap", "distribution", "portfolio_equity", "portfolio_drawdown", "price", "equity",
                            "drawdown"}
    assert {k: v for k, v in colours.items() if v < MIN_COLOURS} == {}, colours

    headers = page.page.evaluate(HEADERS_JS)
    assert len(headers) >= 8 and {"sharpe", "total_return", "n_trades"} <= {h["text"] for h in headers}, headers
    assert [h for h in headers if h["cut"]] == [], headers  # every header of the top-N table shown in full
    rows = pd.read_parquet(root.child("runs", result.run_id).url + "/results.parquet")
    rows = rows[rows["symbol"] == "PORTFOLIO"]
    for metric in ("sharpe", "total_return"):
        if metric != "sharpe":  # the page's own controls: the CustomJS swaps the map's values
            page.page.locator("select").first.select_option(metric)
            page.page.wait_for_function("m => Bokeh.documents[0].get_model_by_name('heatmap').title.text"
                                        ".startsWith(m + ' over')", arg=metric)
        for fast, slow in ((10, 60), (25, 40)):
            expected = rows.groupby(["fast", "slow"])[metric].max().loc[(fast, slow)]  # the other params: none
            fields = page.hover(str(fast), str(slow))
            assert (fields["fast"], fields["slow"]) == (str(fast), str(slow)), fields
            assert float(fields["value"]) == pytest.approx(expected, abs=6e-5), (metric, fast, slow, fields)
    page.check_clean()


def test_replay_report_renders(browser, report_replay, tmp_path):
    from admf_dask.reports import write_report

    _, _, root, result = report_replay
    page = Page(browser, write_report(load_run(root, result.run_id), tmp_path / "replay.html"))
    colours = page.colours()
    assert set(colours) >= {"heatmap", "distribution", "weight_w0", "weight_w1", "replay_equity", "replay_drawdown"}
    assert {k: v for k, v in colours.items() if v < MIN_COLOURS} == {}, colours
    rows = pd.read_parquet(root.child("runs", result.run_id).url + "/results.parquet")
    expected = rows[rows["symbol"] == "PORTFOLIO"].set_index(["w0", "w1"])["sharpe"].loc[(0.5, 1.0)]
    fields = page.hover("0.5", "1")  # 2 members: one vector per cell
    assert (fields["w0"], fields["w1"]) == ("0.5", "1") and float(fields["value"]) == pytest.approx(expected, abs=6e-5)
    page.check_clean()


def test_backtest_plot_saved_to_html_renders(browser, report_sweep, tmp_path):
    from admf_dask.backtest import backtest

    _, store, _, _ = report_sweep
    path = tmp_path / "bt.html"
    backtest(store.read("BBB"), "sma_cross", {"fast": 10, "slow": 40}).plot(filename=str(path))
    page = Page(browser, path)
    colours = page.colours()
    assert set(colours) == {"price", "equity", "drawdown"}
    assert {k: v for k, v in colours.items() if v < MIN_COLOURS} == {}, colours
    page.check_clean()
