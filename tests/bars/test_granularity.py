"""The store's file granularity (year / decade / symbol), repack, and reading at every granularity.

Oracles: pandas over the very bars written (a frame sliced by timestamp), pyarrow's
own footers for the row groups, and the year-granularity dataset for fingerprints.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from admf_dask.bars import BarStore, SyntheticSpec, generate_bars, generate_dataset
from admf_dask.bars.schema import VALUE_COLUMNS
from admf_dask.errors import ConfigError


@pytest.fixture(scope="module")
def universe():
    """Two symbols of daily bars over 2008-2021 (two decade boundaries), one starting mid-decade."""
    return [generate_bars("AAA", "2008-03-01", "2021-06-30", seed=3),
            generate_bars("BBB", "2013-01-01", "2021-12-31", seed=4)]


def frame(bars):
    return pd.DataFrame({"timestamp": bars.timestamp, **{c: bars.columns[c] for c in VALUE_COLUMNS}})


def assert_matches(got, want: pd.DataFrame, cols=VALUE_COLUMNS):
    np.testing.assert_array_equal(got.timestamp, want["timestamp"].to_numpy())
    for c in cols:
        np.testing.assert_array_equal(got.columns[c], want[c].to_numpy())


def calendar_years(bars) -> list[int]:
    return sorted(set(pd.DatetimeIndex(bars.timestamp).year))


@pytest.mark.parametrize("granularity", ["year", "decade", "symbol"])
def test_round_trip_against_pandas(tmp_path, universe, granularity):
    store = BarStore(str(tmp_path / "bars"))
    store.update(universe, granularity=granularity)
    fresh = BarStore(store.url)
    assert fresh.granularity == granularity
    lo, hi = pd.Timestamp("2012-11-15", tz="UTC"), pd.Timestamp("2014-02-03", tz="UTC")
    for bars in universe:
        want = frame(bars)
        assert_matches(fresh.read(bars.symbol), want)
        inside = want[(want.timestamp >= lo.value) & (want.timestamp <= hi.value)]
        assert_matches(fresh.read(bars.symbol, lo, hi, columns=["close"]), inside, ["close"])
        chunks = list(fresh.iter_chunks(bars.symbol, start=lo, end=hi, max_rows=100))
        assert sum(len(c) for c in chunks) == len(inside) == fresh.rows_in_range(bars.symbol, lo, hi)
        years = calendar_years(bars)
        files = fresh.entry(bars.symbol)["files"]
        expected_files = {"year": len(years), "decade": len({y // 10 for y in years}), "symbol": 1}[granularity]
        assert len(files) == expected_files
        for f in files:  # one row group per calendar year, whatever the file
            md = pq.ParquetFile(fresh.storage.path(f["path"])).metadata
            ts = pd.DatetimeIndex(fresh.read(bars.symbol, f["first_ns"], f["last_ns"]).timestamp)
            assert md.num_row_groups == len(set(ts.year))
            assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == \
                [int((ts.year == y).sum()) for y in sorted(set(ts.year))]
    # the fingerprints hash calendar years: the same bars give the same fingerprints at every granularity
    year_store = BarStore(str(tmp_path / "by-year"))
    year_store.update(universe, granularity="year")
    assert fresh.fingerprint == year_store.fingerprint
    assert all(fresh.symbol_fingerprint(b.symbol) == year_store.symbol_fingerprint(b.symbol) for b in universe)


def test_default_granularity_follows_the_frequency(tmp_path):
    daily, minute = BarStore(str(tmp_path / "d")), BarStore(str(tmp_path / "m"))
    generate_dataset(daily, ["AAA"], SyntheticSpec("2019-01-01", "2021-12-31"), progress=False)
    generate_dataset(minute, ["AAA"], SyntheticSpec("2020-12-28", "2021-01-05", "minute"), progress=False)
    assert (daily.granularity, minute.granularity) == ("symbol", "year")
    assert len(daily.entry("AAA")["files"]) == 1 and len(minute.entry("AAA")["files"]) == 2
    library = BarStore(str(tmp_path / "lib"))
    library.write([generate_bars("AAA", "2020-01-01", "2021-12-31")])  # the library's plain write: by year
    assert library.granularity == "year" and "granularity" not in library.storage.read_json("_dataset.json")


def test_old_datasets_read_and_keep_their_granularity(tmp_path, universe):
    store = BarStore(str(tmp_path / "old"))
    store.write(universe)  # what earlier versions wrote: no granularity key, a file per year
    raw = store.storage.read_json("_dataset.json")
    assert "granularity" not in raw and all("groups" not in f for f in raw["symbols"]["AAA"]["files"])
    fresh = BarStore(store.url)
    assert fresh.granularity == "year"
    assert_matches(fresh.read("AAA"), frame(universe[0]))
    more = generate_bars("AAA", "2021-07-01", "2021-09-30", seed=9)
    fresh.update([more], mode="append", granularity="auto")  # "auto" keeps an existing dataset's own
    assert BarStore(store.url).granularity == "year"
    with pytest.raises(ConfigError, match="stored by year, not symbol") as err:
        fresh.update([more], granularity="symbol")
    assert "admf repack" in str(err.value)


def test_repack_keeps_data_fingerprints_and_lineage(tmp_path, universe):
    store = BarStore(str(tmp_path / "bars"))
    store.write(universe)
    first = generate_bars("AAA", "2021-07-01", "2021-08-31", seed=9)
    store.update([first], mode="append")
    before = store.storage.read_json("_dataset.json")
    old_files = {f["path"] for e in before["symbols"].values() for f in e["files"]}
    out = store.repack("symbol")
    assert (out["from"], out["to"], out["files_after"]) == ("year", "symbol", 2)
    after = BarStore(store.url)
    assert after.granularity == "symbol" and after.fingerprint == before["fingerprint"]
    for symbol, entry in before["symbols"].items():
        new = after.entry(symbol)
        assert {k: v for k, v in new.items() if k != "files"} == {k: v for k, v in entry.items() if k != "files"}
    want = frame(universe[0])
    want = pd.concat([want, frame(first)], ignore_index=True)
    assert_matches(after.read("AAA"), want)
    assert_matches(after.read("BBB"), frame(universe[1]))
    on_disk = {p.relative_to(tmp_path / "bars").as_posix() for p in (tmp_path / "bars").rglob("*.parquet")}
    assert on_disk == {f["path"] for e in after.manifest["symbols"].values() for f in e["files"]}
    assert not on_disk & old_files and not (tmp_path / "bars" / "_staging").exists()
    # appends go on at the new granularity and give the fingerprint the same append gives by year
    second = generate_bars("AAA", "2021-09-01", "2021-10-29", seed=10)
    after.update([second], mode="append")
    twin = BarStore(str(tmp_path / "twin"))
    twin.write(universe)
    twin.update([first], mode="append")
    twin.update([second], mode="append")
    assert after.symbol_fingerprint("AAA") == twin.symbol_fingerprint("AAA")
    assert after.extends("AAA", before["symbols"]["AAA"]["fingerprint"]) == before["symbols"]["AAA"]["rows"]
    assert after.repack("symbol")["files_after"] == 2  # already there: nothing written
    back = after.repack("year")
    assert back["files_after"] == sum(len(calendar_years(b)) for b in universe)
    assert BarStore(store.url).fingerprint == twin.fingerprint


def test_row_groups_outside_the_range_are_skipped(tmp_path, universe, monkeypatch):
    store = BarStore(str(tmp_path / "bars"))
    store.update(universe, granularity="symbol")
    read_groups = []
    original = pq.ParquetFile.read_row_groups

    def spy(self, row_groups, *args, **kwargs):
        read_groups.append(list(row_groups))
        return original(self, row_groups, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    got = BarStore(store.url).read("AAA", "2015-03-01", "2015-05-31")
    years = calendar_years(universe[0])
    assert read_groups == [[years.index(2015)]]
    want = frame(universe[0])
    lo, hi = pd.Timestamp("2015-03-01", tz="UTC").value, pd.Timestamp("2015-05-31", tz="UTC").value
    assert_matches(got, want[(want.timestamp >= lo) & (want.timestamp <= hi)])
    assert [r[2] for r in store.row_groups("AAA", "2015-03-01", "2016-01-10")] == \
        [int((pd.DatetimeIndex(universe[0].timestamp).year == y).sum()) for y in (2015, 2016)]


def requests_of(read, monkeypatch) -> list[tuple[str, str]]:
    """The requests the moto server receives (every one, over HTTP) while ``read()`` runs."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    seen: list[tuple[str, str]] = []
    call = DomainDispatcherApplication.__call__

    def counting(self, environ, start_response):
        seen.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")))
        return call(self, environ, start_response)

    with monkeypatch.context() as m:
        m.setattr(DomainDispatcherApplication, "__call__", counting)
        read()
    return seen


def assert_one_get_per_file(store, symbol, want, monkeypatch):
    monkeypatch.setenv("ADMF_BAR_CACHE_MB", "0")  # the files' requests, not this process's kept copies
    fresh = BarStore(store.url, store.storage.storage_options)
    fresh.manifest  # noqa: B018 - read first, not counted
    got = []
    seen = requests_of(lambda: got.append(fresh.read(symbol)), monkeypatch)
    assert_matches(got[0], want)
    prefix = store.url.split("/", 2)[2]  # bucket/prefix
    assert sorted(seen) == sorted(("GET", f"/{prefix}/{f['path']}") for f in fresh.entry(symbol)["files"])


def test_s3_round_trip_repack_and_cli(s3, tmp_path, universe, monkeypatch):
    url, options = s3
    options = {k: v for k, v in options.items() if k != "skip_instance_cache"}  # one s3fs client, not one each
    store = BarStore(f"{url}/bars", options)
    store.update(universe, granularity="auto")
    assert store.granularity == "symbol"
    for bars in universe:
        assert_matches(BarStore(store.url, options).read(bars.symbol), frame(bars))
    assert_one_get_per_file(store, "AAA", frame(universe[0]), monkeypatch)  # one GET, no HEAD
    fingerprint = store.fingerprint
    from admf_dask.cli import cli

    opts = [f"--storage-option={k}={v}" for k, v in options.items()]
    result = CliRunner().invoke(cli, ["--json", "repack", store.url, "--granularity", "decade", *opts])
    assert result.exit_code == 0, result.output
    again = BarStore(store.url, options)
    assert again.granularity == "decade" and again.fingerprint == fingerprint
    assert_matches(again.read("AAA", "2010-01-01", "2019-12-31"),
                   frame(universe[0]).query("timestamp >= @pd.Timestamp('2010-01-01', tz='UTC').value and "
                                            "timestamp <= @pd.Timestamp('2019-12-31', tz='UTC').value"))
    listed = {f["path"] for e in again.manifest["symbols"].values() for f in e["files"]}
    keys = {p.split("/bars/", 1)[1] for p in again.storage.fs.find(again.storage.root)}
    assert {k for k in keys if k.endswith(".parquet")} == listed
    assert json.loads(again.storage.read_bytes("_dataset.json"))["granularity"] == "decade"
    assert len(again.entry("AAA")["files"]) == 3
    assert_one_get_per_file(again, "AAA", frame(universe[0]), monkeypatch)  # three GETs at once, no HEAD

