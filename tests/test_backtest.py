"""The public backtest API against backtesting.py and vectorbt run in the test, plus its contract."""
from __future__ import annotations

import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
import pytest

from admf_dask.backtest import backtest, run_batch
from admf_dask.bars import BarStore, Bars, generate_bars
from admf_dask.cache import IndicatorHub
from admf_dask.errors import ConfigError, DataError
from admf_dask.kernels.stats import STAT_NAMES
from admf_dask.strategies import prepare_batch

CASH = 10_000.0


@pytest.fixture(scope="module")
def goog():
    from backtesting.test import GOOG
    return GOOG.copy()


@pytest.fixture(scope="module")
def bars():
    return generate_bars("AAA", "2016-01-01", "2021-12-31", seed=7)


# ------------------------------------------------------------------ backtesting.py oracle


def run_backtesting_sma_cross(df, fast, slow, commission):
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover

    class SmaCross(Strategy):
        def init(self):
            close = pd.Series(self.data.Close)
            self.fast = self.I(lambda: close.rolling(fast).mean().to_numpy())
            self.slow = self.I(lambda: close.rolling(slow).mean().to_numpy())

        def next(self):
            if crossover(self.fast, self.slow):
                self.buy()
            elif crossover(self.slow, self.fast):
                self.sell()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Backtest(df, SmaCross, cash=CASH, commission=commission, exclusive_orders=True).run()


def test_sma_cross_matches_backtesting_py_on_goog(goog):
    theirs = run_backtesting_sma_cross(goog, 10, 20, 0.002)
    ours = backtest(goog, "sma_cross", {"fast": 10, "slow": 20}, direction="long_short", cash=CASH,
                    commission=0.002, whole_units=True)
    bt_trades = theirs["_trades"]
    assert len(ours.trades) == len(bt_trades) > 50
    np.testing.assert_array_equal(ours.trades["entry_bar"], bt_trades["EntryBar"])
    np.testing.assert_array_equal(ours.trades["exit_bar"], bt_trades["ExitBar"])
    np.testing.assert_array_equal(ours.trades["direction"] * ours.trades["size"], bt_trades["Size"])
    assert (ours.trades["entry_time"].dt.tz_localize(None).to_numpy() == bt_trades["EntryTime"].to_numpy()).all()
    assert ours.equity.iloc[-1] == pytest.approx(theirs["Equity Final [$]"], rel=1e-4)
    assert ours.stats["sharpe"] == pytest.approx(theirs["Sharpe Ratio"], rel=1e-6, abs=1e-6)
    assert ours.stats["max_drawdown"] * 100 == pytest.approx(theirs["Max. Drawdown [%]"], abs=1e-6)
    assert ours.stats["n_trades"] == theirs["# Trades"]
    assert ours.stats["total_return"] * 100 == pytest.approx(
        theirs["Return [%]"], rel=1e-9)
    # The same run through the batch API gives the same row.
    row = run_batch(goog, "sma_cross", [{"fast": 10, "slow": 20}], cash=CASH, commission=0.002,
                    whole_units=True).iloc[0]
    np.testing.assert_allclose(row[list(STAT_NAMES)].to_numpy(dtype=float), ours.stats.to_numpy(), rtol=1e-12)


# ------------------------------------------------------------------ vectorbt oracle


def test_sma_cross_long_only_total_return_matches_vectorbt(bars):
    """vectorbt's all-in size (``size=inf``) buys cash / (price * (1 + fees)): our fractional sizing."""
    vbt = pytest.importorskip("vectorbt")
    index = pd.DatetimeIndex(bars.timestamp.view("datetime64[ns]"))
    close = pd.Series(bars.close, index=index)
    open_ = pd.Series(bars.open, index=index)
    sets = [{"fast": f, "slow": s} for f in (5, 10, 20) for s in (30, 50) if f < s]
    rows = run_batch(bars, "sma_cross", sets, direction="long_only", commission=0.001, cash=CASH)
    fast = vbt.MA.run(close, window=[p["fast"] for p in sets], short_name="fast")
    slow = vbt.MA.run(close, window=[p["slow"] for p in sets], short_name="slow")
    entries = fast.ma_crossed_above(slow).shift(1, fill_value=False)
    exits = fast.ma_crossed_below(slow).shift(1, fill_value=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pf = vbt.Portfolio.from_signals(close, entries, exits, price=open_, fees=0.001, init_cash=CASH,
                                        freq="1D")
    theirs = pf.total_return().to_numpy()
    assert (rows["n_trades"] > 5).all()
    np.testing.assert_allclose(rows["total_return"].to_numpy(), theirs, rtol=0, atol=1e-9)


# ------------------------------------------------------------------ the API


def test_result_shapes_and_batch_equals_single_runs(bars):
    sets = [{"fast": 5, "slow": 20}, {"fast": 10, "slow": 40}]
    kw = dict(direction="long_short", commission=0.001, slippage_bps=2.0, stop_loss=0.05)
    rows = run_batch(bars, "sma_cross", sets, **kw)
    assert list(rows.columns) == ["fast", "slow", *STAT_NAMES] and len(rows) == 2
    for k, p in enumerate(sets):
        r = backtest(bars, "sma_cross", p, **kw)
        np.testing.assert_allclose(rows.loc[k, list(STAT_NAMES)].to_numpy(dtype=float), r.stats.to_numpy(),
                                   rtol=1e-12)
        assert list(r.stats.index) == list(STAT_NAMES)
        assert isinstance(r.equity.index, pd.DatetimeIndex) and len(r.equity) == len(bars)
        assert list(r.trades.columns[:4]) == ["entry_time", "exit_time", "entry_bar", "exit_bar"]
        assert r.stats["n_trades"] == len(r.trades)
        assert r.equity.iloc[0] == CASH


@pytest.mark.parametrize("name", ["ema_cross", "macd_cross", "rsi_reversion", "bollinger_reversion",
                                  "bollinger_breakout", "donchian_breakout", "momentum"])
def test_every_builtin_runs_and_directions_clip(bars, name):
    for direction, allowed in [("long_only", {1}), ("short_only", {-1}), ("long_short", {1, -1})]:
        r = backtest(bars, name, direction=direction, commission=0.001)
        assert set(r.trades["direction"]) <= allowed
        assert len(r.trades) > 0, (name, direction)


def test_indicator_set_from_the_hub_is_used(bars):
    store = BarStore("memory://backtest-tests/bars")
    store.write([bars])
    sets = [{"fast": 5, "slow": 20}, {"fast": 10, "slow": 40}]
    hub = IndicatorHub(store)
    indicator_set = hub.get("AAA", prepare_batch("sma_cross", sets).plan)
    from_set = run_batch(indicator_set, "sma_cross", sets, commission=0.001)
    from_bars = run_batch(bars, "sma_cross", sets, commission=0.001)
    pd.testing.assert_frame_equal(from_set, from_bars)
    # Specs the set lacks are computed from its bars.
    more = run_batch(indicator_set, "sma_cross", [{"fast": 7, "slow": 30}], commission=0.001)
    assert more.loc[0, "total_return"] == backtest(bars, "sma_cross", {"fast": 7, "slow": 30},
                                                   commission=0.001).stats["total_return"]


def test_user_strategy_by_path_generic_path_equals_single_run(bars, tmp_path, monkeypatch):
    (tmp_path / "user_strats_bt.py").write_text(textwrap.dedent("""
        import numpy as np
        from admf_dask.indicators import IndicatorSpec

        def above_sma(bars, indicators, window=50):
            return np.sign(np.nan_to_num(bars.close - indicators["sma"])).astype(np.int8)

        above_sma.indicators = lambda window=50: {"sma": IndicatorSpec.make("sma", window=window)}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        rows = run_batch(bars, "user_strats_bt:above_sma", [{"window": 20}, {"window": 60}],
                         direction="long_only", commission=0.001)
        single = backtest(bars, "user_strats_bt:above_sma", {"window": 60}, direction="long_only",
                          commission=0.001)
        assert list(rows.columns[:2]) == ["window", "total_return"]
        np.testing.assert_allclose(rows.loc[1, list(STAT_NAMES)].to_numpy(dtype=float),
                                   single.stats.to_numpy(), rtol=1e-12)
        assert (single.trades["direction"] == 1).all() and len(single.trades) > 5
    finally:
        sys.modules.pop("user_strats_bt", None)


def test_periods_per_year_inferred_or_given(bars):
    daily = backtest(bars, "sma_cross")
    given = backtest(bars, "sma_cross", periods_per_year=252)
    other = backtest(bars, "sma_cross", periods_per_year=365)
    assert daily.stats["cagr"] == given.stats["cagr"] != other.stats["cagr"]


def test_frame_without_timestamps_needs_periods_per_year(bars):
    frame = pd.DataFrame({k: bars.columns[k] for k in ("open", "high", "low", "close")})
    with pytest.raises(ConfigError, match="periods_per_year is needed"):
        backtest(frame, "sma_cross")
    r = backtest(frame, "sma_cross", periods_per_year=252)
    assert r.stats["total_return"] == backtest(bars, "sma_cross").stats["total_return"]


# ------------------------------------------------------------------ bad input


def test_empty_data_is_a_data_error():
    empty = Bars("EMPTY", np.empty(0, dtype=np.int64),
                 {k: np.empty(0) for k in ("open", "high", "low", "close", "volume")})
    with pytest.raises(DataError, match="no bars to backtest") as err:
        backtest(empty, "sma_cross")
    assert err.value.where["symbol"] == "EMPTY"
    with pytest.raises(DataError, match="no bars"):
        run_batch(pd.DataFrame(columns=["Open", "High", "Low", "Close"]), "sma_cross", [{}])


def test_missing_columns_are_a_data_error():
    with pytest.raises(DataError, match="missing \\['high'"):
        backtest(pd.DataFrame({"open": [1.0], "close": [1.0], "low": [1.0]}), "sma_cross")


def test_bad_parameter_sets_name_strategy_set_and_rule(bars):
    with pytest.raises(ConfigError) as err:
        run_batch(bars, "sma_cross", [{"fast": 5, "slow": 20}, {"fast": 50, "slow": 20}])
    assert str(err.value).startswith("sma_cross: fast=50 must be < slow=20 (parameter set 1")
    assert err.value.where == {"key": "sma_cross.fast", "rule": "fast < slow"}
    with pytest.raises(ConfigError, match="rsi_reversion: lower=80.0 must be < upper=70.0"):
        backtest(bars, "rsi_reversion", {"lower": 80})
    with pytest.raises(ConfigError, match="momentum: window=0 must be >= 1"):
        backtest(bars, "momentum", {"window": 0})


def test_unknown_strategy_and_bad_path(bars):
    with pytest.raises(ConfigError, match="did you mean 'ema_cross'"):
        backtest(bars, "ema_crosss")
    with pytest.raises(ConfigError, match="'nope_pkg_q.mod:f' does not import: ModuleNotFoundError"):
        run_batch(bars, "nope_pkg_q.mod:f", [{}])


@pytest.mark.parametrize("kw, key", [
    (dict(commission=-0.1), "commission"), (dict(commission=1.0), "commission"), (dict(cash=0), "cash"),
    (dict(stop_loss=0.0), "stop_loss"), (dict(stop_loss=1.5), "stop_loss"), (dict(take_profit=-1), "take_profit"),
    (dict(slippage_bps=-1), "slippage_bps"), (dict(direction="both"), "direction"),
    (dict(periods_per_year=0), "periods_per_year"),
])
def test_bad_settings(bars, kw, key):
    with pytest.raises(ConfigError) as err:
        backtest(bars, "sma_cross", **kw)
    assert err.value.where["key"] == key
