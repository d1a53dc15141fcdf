"""Synthetic bars: deterministic, valid OHLC, the right calendar and session."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from admf_dask.bars import BarStore, SyntheticSpec, generate_bars, generate_dataset, symbol_names, validate_arrays
from admf_dask.errors import ConfigError
from tests.conftest import snapshot


def test_same_seed_same_bars_and_symbols_are_independent():
    a = generate_bars("AAA", "2020-01-01", "2020-12-31", seed=1)
    b = generate_bars("AAA", "2020-01-01", "2020-12-31", seed=1)
    c = generate_bars("AAA", "2020-01-01", "2020-12-31", seed=2)
    d = generate_bars("BBB", "2020-01-01", "2020-12-31", seed=1)
    for name in a.columns:
        np.testing.assert_array_equal(a.columns[name], b.columns[name])
    assert not np.array_equal(a.close, c.close)
    assert not np.array_equal(a.close, d.close)


def test_bars_pass_validation_and_have_gbm_statistics():
    bars = generate_bars("VOL", "2000-01-01", "2019-12-31", seed=11, annual_vol=0.3, annual_drift=0.0)
    validate_arrays(bars.timestamp, bars.columns, symbol="VOL")
    log_ret = np.diff(np.log(bars.close))
    assert log_ret.std() * np.sqrt(252) == pytest.approx(0.3, rel=0.05)
    assert (bars.volume > 0).all() and (bars.volume == np.round(bars.volume)).all()
    assert bars.open[0] == pytest.approx(100.0)


def test_daily_calendar_is_business_days_at_midnight_utc():
    idx = generate_bars("D", "2024-01-01", "2024-01-31").to_frame().index
    assert (idx == pd.bdate_range("2024-01-01", "2024-01-31", tz="UTC")).all()


def test_minute_bars_cover_the_new_york_session_across_dst():
    bars = generate_bars("M", "2024-03-08", "2024-03-12", freq="minute", seed=4)
    validate_arrays(bars.timestamp, bars.columns, symbol="M")
    local = bars.to_frame().index.tz_convert("America/New_York")
    per_day = pd.Series(1, index=local).groupby(local.date).size()
    assert list(per_day) == [390, 390, 390]  # Fri, Mon, Tue
    assert {t.strftime("%H:%M") for t in local[::390]} == {"09:30"}
    assert {t.strftime("%H:%M") for t in local[389::390]} == {"15:59"}


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="freq must be one of"):
        SyntheticSpec("2020-01-01", "2020-02-01", freq="hourly")
    with pytest.raises(ConfigError, match="before start"):
        SyntheticSpec("2020-02-01", "2020-01-01")


def test_generate_dataset_on_a_process_cluster_equals_in_process(tmp_path):
    from admf_dask.cluster import connect

    spec = SyntheticSpec("2021-01-01", "2022-12-31", seed=9)
    names = symbol_names(6)
    local = generate_dataset(BarStore(str(tmp_path / "a")), names, spec, progress=False)
    with connect({"kind": "local", "n_workers": 2, "dashboard_address": ""}) as client:
        remote = generate_dataset(BarStore(str(tmp_path / "b")), names, spec, client=client, progress=False)
    assert local["fingerprint"] == remote["fingerprint"]
    assert remote["source"] == {"kind": "synthetic", **spec.to_dict()}


@pytest.mark.parametrize("kind", ["threads", "local"])
def test_a_failing_generation_task_leaves_the_store_as_it_was(tmp_path, kind):
    from admf_dask.cluster import connect
    from admf_dask.errors import StorageError

    store = BarStore(str(tmp_path))
    generate_dataset(store, ["KEEP"], SyntheticSpec("2021-01-01", "2021-03-31"), progress=False)
    (tmp_path / "symbol=BAD").write_text("a file where BAD's directory should go")
    before = snapshot(store.storage.fs, str(tmp_path))
    names = ["OK1", "OK2", "BAD", "OK3", "OK4"]
    with connect({"kind": kind, "n_workers": 2, "dashboard_address": ""}) as client:
        # the tasks stage every symbol; the commit cannot move BAD's file into place
        with pytest.raises(StorageError, match="cannot move into place.*symbol=BAD"):
            generate_dataset(store, names, SyntheticSpec("2021-01-01", "2021-12-31"), client=client,
                             progress=False)
    assert snapshot(store.storage.fs, str(tmp_path)) == before
    assert BarStore(str(tmp_path)).symbols() == ["KEEP"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_dataset.json", "_dataset.lock", "symbol=BAD",
                                                           "symbol=KEEP"]  # no staging, no empty OK1/...
