"""Bar frequencies: periods per year from the bars' real rate, and sweeps over symbols of different frequencies.

The oracle of the annualisation is pandas counting the bars of a whole calendar year
of the same data.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from admf_dask.backtest import backtest
from admf_dask.bars import Bars
from admf_dask.kernels.stats import PeriodsPerYearStream, periods_per_year


def fx_hours(start: str, end: str) -> pd.DatetimeIndex:
    """FX hours: Sunday 22:00 UTC to Friday 21:00 UTC (24x5), as FX vendors stamp them."""
    idx = pd.date_range(start, end, freq="h", tz="UTC").as_unit("ns")
    w, h = idx.day_of_week, idx.hour
    return idx[(w < 4) | ((w == 4) & (h < 22)) | ((w == 6) & (h >= 22))]


def gbm_bars(symbol: str, idx: pd.DatetimeIndex, seed: int = 3) -> Bars:
    rng = np.random.default_rng(seed)
    n = len(idx)
    close = 1.1 * np.exp(np.cumsum(rng.standard_normal(n) * 0.0015 + 0.00002))
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) * (1 + np.abs(rng.standard_normal(n)) * 0.0005)
    low = np.minimum(open_, close) * (1 - np.abs(rng.standard_normal(n)) * 0.0005)
    return Bars(symbol, idx.asi8.copy(), {"open": open_, "high": high, "low": low, "close": close,
                                          "volume": np.round(rng.lognormal(8, 0.5, n))})


def bars_in_year(idx: pd.DatetimeIndex, year: int) -> int:
    return int(pd.Series(1, index=idx).groupby(idx.year).size()[year])


@pytest.mark.parametrize("kind", ["fx-24x5", "crypto-24x7", "session-hourly"])
def test_periods_per_year_is_the_bars_real_rate(kind):
    if kind == "fx-24x5":
        idx = fx_hours("2022-12-25", "2024-01-07")
    elif kind == "crypto-24x7":
        idx = pd.date_range("2022-12-25", "2024-01-07", freq="h", tz="UTC").as_unit("ns")
    else:  # an exchange's hourly bars, 14:30 .. 20:30 UTC on the exchange's days (holidays left out)
        days = pd.bdate_range("2022-12-25", "2024-01-07")
        days = days[~days.isin(pd.to_datetime(["2023-01-02", "2023-01-16", "2023-02-20", "2023-04-07",
                                               "2023-05-29", "2023-06-19", "2023-07-04", "2023-09-04",
                                               "2023-11-23", "2023-12-25"]))]
        idx = pd.DatetimeIndex((days.values[:, None] + np.timedelta64(870, "m")
                                + np.arange(7) * np.timedelta64(1, "h")).ravel()).tz_localize("UTC").as_unit("ns")
    oracle = bars_in_year(idx, 2023)  # pandas: the bars of 2023
    ppy = periods_per_year(idx.asi8)
    assert abs(ppy / oracle - 1) < 0.01, (kind, ppy, oracle)
    # the value does not depend on how the bars arrive
    for parts in (2, 7, 365):
        stream = PeriodsPerYearStream()
        for i, chunk in enumerate(np.array_split(idx.asi8, parts)):
            stream.update(chunk)
            if i == 1:
                stream = PeriodsPerYearStream.from_arrays(stream.to_arrays())
        assert stream.value() == ppy
    # on a shorter stretch too (a quarter): same rate
    q = idx[(idx >= "2023-04-01") & (idx < "2023-07-01")]
    assert periods_per_year(q.asi8) == ppy


def test_fx_sharpe_is_annualised_with_the_data_rate():
    idx = fx_hours("2022-12-25", "2024-01-07")
    bars = gbm_bars("EURUSD", idx)
    oracle = bars_in_year(idx, 2023)
    inferred = backtest(bars, "sma_cross", {"fast": 20, "slow": 100})
    given = backtest(bars, "sma_cross", {"fast": 20, "slow": 100}, periods_per_year=oracle)
    session = backtest(bars, "sma_cross", {"fast": 20, "slow": 100}, periods_per_year=252 * 6.5)  # the old, wrong rate
    assert inferred.stats["n_trades"] > 10
    assert inferred.stats["sharpe"] == pytest.approx(given.stats["sharpe"], rel=0.01)
    assert inferred.stats["ann_volatility"] == pytest.approx(given.stats["ann_volatility"], rel=0.01)
    assert abs(session.stats["ann_volatility"] / given.stats["ann_volatility"] - 1) > 0.3


def test_old_saved_spacing_state_restores_without_day_counts():
    idx = fx_hours("2023-01-01", "2023-02-01")
    stream = PeriodsPerYearStream()
    stream.update(idx.asi8)
    old = {k: v for k, v in stream.to_arrays().items()}
    old["scalars"] = old["scalars"][:3]  # what version 0.2.1 saved
    back = PeriodsPerYearStream.from_arrays(old)
    assert back.bars_per_day() is None
    assert back.value() == 252 * 6.5  # valued as that version did; runs of another version are not gone on from


# ---------------------------------------------------------------- a sweep over symbols of different frequencies


def test_sweep_over_mixed_frequencies_warns_and_leaves_the_portfolio_out(tmp_path, caplog):
    import logging

    from admf_dask.bars import BarStore, generate_bars
    from admf_dask.cluster import connect
    from admf_dask.storage import StorageRef
    from admf_dask.sweep import PORTFOLIO, SweepConfig, run_sweep

    store = BarStore(str(tmp_path / "bars"))
    daily = [generate_bars(s, "2023-01-01", "2023-12-31", seed=i) for i, s in enumerate(["AAA", "BBB"])]
    fx = gbm_bars("EURUSD", fx_hours("2023-01-01", "2023-12-31"))
    store.write([*daily, fx])
    config = SweepConfig(strategy="sma_cross", params={"fast": [5, 10], "slow": [20, 40]})
    threads = {"kind": "threads", "n_workers": 1, "dashboard_address": ""}
    with connect(threads) as client, caplog.at_level(logging.WARNING, logger="admf_dask"):
        mixed = run_sweep(config, store, StorageRef.make(str(tmp_path / "runs")), client, progress=False,
                          echo=lambda _: None)
        warned = [r.getMessage() for r in caplog.records if "different bar frequencies" in r.getMessage()]
        same = run_sweep(SweepConfig(strategy="sma_cross", params={"fast": [5, 10], "slow": [20, 40]},
                                     symbols=["AAA", "BBB"]), store, StorageRef.make(str(tmp_path / "runs")),
                         client, progress=False, echo=lambda _: None)
    assert len(warned) == 1
    assert "daily" in warned[0] and "AAA, BBB" in warned[0] and "hourly" in warned[0] and "EURUSD" in warned[0]
    # the rates named against pandas counting each symbol's bars of 2023
    import re

    named = [float(x.replace(",", "")) for x in re.findall(r"~([\d,]+) bars a year", warned[0])]
    counted = [bars_in_year(pd.DatetimeIndex(daily[0].timestamp), 2023), bars_in_year(fx_hours("2023-01-01", "2023-12-31"), 2023)]
    assert len(named) == 2 and all(abs(a / b - 1) < 0.03 for a, b in zip(named, counted)), (named, counted)
    table = mixed.table
    assert PORTFOLIO not in set(table["symbol"]) and len(table) == 4 * 3
    assert mixed.summary["portfolio_left_out"] == warned[0]
    assert warned[0] in mixed.lines()
    assert len(mixed.top()) and set(mixed.top()["symbol"]) <= {"AAA", "BBB", "EURUSD"}
    assert "portfolio_left_out" not in same.summary
    assert (same.table["symbol"] == PORTFOLIO).sum() == 4
