"""BarStore: round trips on local disk, file://, memory:// and S3 (moto server), reads, chunks, commits."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from fsspec.implementations.local import LocalFileSystem

from admf_dask.bars import Bars, BarStore, generate_bars, write_symbol_files
from admf_dask.errors import DataError, StorageError
from tests.conftest import snapshot


def assert_same_bars(a: Bars, b: Bars) -> None:
    assert a.symbol == b.symbol
    np.testing.assert_array_equal(a.timestamp, b.timestamp)
    assert set(a.columns) == set(b.columns)
    for name in a.columns:
        np.testing.assert_array_equal(a.columns[name], b.columns[name], err_msg=name)


def _round_trip(url, options, bars_list):
    store = BarStore(url, options)
    manifest = store.write(bars_list)
    reopened = BarStore(url, options)
    assert reopened.symbols() == sorted(b.symbol for b in bars_list)
    assert reopened.fingerprint == manifest["fingerprint"]
    for b in bars_list:
        assert_same_bars(reopened.read(b.symbol), b)
        entry = reopened.entry(b.symbol)
        assert entry["rows"] == len(b)
        assert entry["first_ns"] == b.timestamp[0] and entry["last_ns"] == b.timestamp[-1]
    return reopened


def test_round_trip_local_path(tmp_path, small_bars):
    store = _round_trip(str(tmp_path / "ds"), None, small_bars)
    # hive layout: one directory per symbol and per year
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [
        "_dataset.json", "_dataset.lock", "symbol=AAA", "symbol=BBB", "symbol=CCC"]
    assert sorted(p.name for p in (tmp_path / "ds" / "symbol=AAA").iterdir()) == [
        "year=2020", "year=2021", "year=2022"]
    info = store.info()
    assert list(info["symbol"]) == ["AAA", "BBB", "CCC"]
    assert info["first"].iloc[0] == pd.Timestamp("2020-01-01", tz="UTC")


def test_round_trip_file_url_and_memory(tmp_path, small_bars):
    _round_trip(f"file://{tmp_path}/ds", None, small_bars)
    _round_trip("memory://round-trip/ds", None, small_bars)


def test_round_trip_s3(s3, small_bars):
    bucket, options = s3
    store = _round_trip(f"{bucket}/bars/daily", options, small_bars)
    part = store.read("BBB", start="2021-02-01", end="2021-02-28", columns=["close", "volume"])
    full = small_bars[1].to_frame().loc["2021-02-01":"2021-02-28", ["close", "volume"]]
    pd.testing.assert_frame_equal(part.to_frame(), full)


def test_fingerprint_is_content_addressed(tmp_path, small_bars):
    a = BarStore(str(tmp_path / "a")).write(small_bars)
    b = BarStore(str(tmp_path / "b")).write(list(reversed(small_bars)))
    assert a["fingerprint"] == b["fingerprint"]  # same data, same fingerprint, whatever the order
    changed = small_bars[0]
    close = changed.close.copy()
    close[100] *= 1.0001
    bumped = Bars("AAA", changed.timestamp, {**changed.columns, "close": close,
                                            "high": np.maximum(changed.high, close)})
    c = BarStore(str(tmp_path / "b")).write([bumped])
    assert c["fingerprint"] != a["fingerprint"]
    assert c["symbols"]["BBB"]["fingerprint"] == a["symbols"]["BBB"]["fingerprint"]


class CountingFS(LocalFileSystem):
    """A real local filesystem that records every file it opens."""

    cachable = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.opened: list[str] = []

    def _open(self, path, *args, **kwargs):
        self.opened.append(self._strip_protocol(path))
        return super()._open(path, *args, **kwargs)


def test_read_opens_only_the_symbols_files_in_range(tmp_path, small_bars):
    BarStore(str(tmp_path)).write(small_bars)
    fs = CountingFS()
    store = BarStore(str(tmp_path), fs=fs)
    store.manifest  # the manifest is read once; count data files only from here
    fs.opened.clear()
    bars = store.read("BBB", start="2021-03-01", end="2021-06-30", columns=["close"])
    assert [p.removeprefix(str(tmp_path) + "/").split("/part-")[0] for p in fs.opened] == [
        "symbol=BBB/year=2021"]
    assert list(bars.columns) == ["close"]
    assert bars.timestamp[0] >= pd.Timestamp("2021-03-01", tz="UTC").value
    assert bars.timestamp[-1] <= pd.Timestamp("2021-06-30", tz="UTC").value
    expected = small_bars[1].to_frame().loc["2021-03-01":"2021-06-30", ["close"]]
    pd.testing.assert_frame_equal(bars.to_frame(), expected)

    fs.opened.clear()
    store.read("CCC", start="2021-12-15", end="2022-01-15")  # spans a year boundary: two files
    assert sorted(p.split("/")[-2] for p in fs.opened) == ["year=2021", "year=2022"]
    assert all("symbol=CCC" in p for p in fs.opened)


@pytest.mark.parametrize("whole_file_rows", [0, 10**9], ids=["through-the-handle", "read-whole"])
def test_small_files_read_whole_and_large_ones_through_the_handle_give_the_same_bars(
        tmp_path, small_bars, monkeypatch, whole_file_rows):
    import admf_dask.bars.store as store_module

    monkeypatch.setattr(store_module, "_WHOLE_FILE_ROWS", whole_file_rows)
    BarStore(str(tmp_path)).write(small_bars)
    store = BarStore(str(tmp_path))
    for bars in small_bars:
        pd.testing.assert_frame_equal(store.read(bars.symbol).to_frame(), bars.to_frame())
        part = store.read(bars.symbol, start="2021-12-15", end="2022-01-15", columns=["open", "close"])
        pd.testing.assert_frame_equal(part.to_frame(), bars.to_frame().loc["2021-12-15":"2022-01-15",
                                                                           ["open", "close"]])


def test_iter_chunks_stays_within_budget_and_equals_read(tmp_path):
    bars = generate_bars("MIN", "2024-01-01", "2024-02-29", freq="minute", seed=3)
    store = BarStore(str(tmp_path))
    store.write([bars])
    budget = 100_000
    chunks = list(store.iter_chunks("MIN", max_bytes=budget, columns=["close"]))
    rows_per_chunk = budget // 16  # timestamp + close, 8 bytes each
    assert len(chunks) == -(-len(bars) // rows_per_chunk) == 3
    assert all(c.nbytes <= budget for c in chunks)
    joined = Bars("MIN", np.concatenate([c.timestamp for c in chunks]),
                  {"close": np.concatenate([c.close for c in chunks])})
    assert_same_bars(joined, store.read("MIN", columns=["close"]))
    ranged = list(store.iter_chunks("MIN", max_bytes=budget, start="2024-01-10", end="2024-01-20 23:59"))
    assert sum(map(len, ranged)) == len(store.read("MIN", start="2024-01-10", end="2024-01-20 23:59"))
    with pytest.raises(DataError, match="smaller than one bar"):
        next(store.iter_chunks("MIN", max_bytes=8))


def test_to_dask_over_many_symbols_on_a_process_cluster(s3, small_bars):
    from admf_dask.cluster import connect

    bucket, options = s3
    store = BarStore(f"{bucket}/ds", options)
    store.write(small_bars)
    frame = store.to_dask(columns=["close"], start="2021-01-01")
    assert frame.npartitions == 6  # 3 symbols x 2 year files in range
    with connect({"kind": "local", "n_workers": 2, "dashboard_address": ""}):
        result = frame.compute()
    assert list(result.columns) == ["symbol", "timestamp", "close"]
    for b in small_bars:
        got = result[result.symbol == b.symbol].set_index("timestamp")["close"]
        want = b.to_frame().loc["2021-01-01":, "close"]
        np.testing.assert_array_equal(got.to_numpy(), want.to_numpy())
        np.testing.assert_array_equal(got.index.asi8, want.index.as_unit("ns").asi8)


def test_files_not_in_the_manifest_are_invisible(tmp_path, small_bars):
    store = BarStore(str(tmp_path))
    store.write(small_bars[:2])
    write_symbol_files(store.storage, small_bars[2])  # written but never committed
    fresh = BarStore(str(tmp_path))
    assert fresh.symbols() == ["AAA", "BBB"]
    with pytest.raises(DataError, match="'CCC' is not in the dataset"):
        fresh.read("CCC")
    assert set(fresh.to_dask().symbol.unique().compute()) == {"AAA", "BBB"}


def test_a_failed_write_leaves_the_store_exactly_as_it_was(tmp_path, small_bars):
    store = BarStore(str(tmp_path))
    store.write(small_bars[:1])
    before = snapshot(store.storage.fs, str(tmp_path))
    empty = Bars("ZZZ", np.empty(0, np.int64), {})
    with pytest.raises(DataError, match="no bars to write"):
        store.write([small_bars[1], small_bars[2], empty])  # BBB and CCC get written first
    assert snapshot(store.storage.fs, str(tmp_path)) == before
    assert BarStore(str(tmp_path)).symbols() == ["AAA"]


def test_replacing_a_symbol_removes_its_old_files(tmp_path, small_bars):
    store = BarStore(str(tmp_path))
    store.write(small_bars)
    old = set(store.files("AAA"))
    shorter = generate_bars("AAA", "2021-06-01", "2021-12-31", seed=99)
    store.write([shorter])
    assert_same_bars(BarStore(str(tmp_path)).read("AAA"), shorter)
    on_disk = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.parquet")}
    assert not (old - set(store.files("AAA"))) & on_disk
    assert len([p for p in on_disk if p.startswith("symbol=AAA")]) == 1


def test_rewriting_identical_data_writes_nothing(tmp_path, small_bars):
    store = BarStore(str(tmp_path))
    first = store.write(small_bars)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")}
    again = store.write(small_bars[:1])
    assert again["symbols"]["AAA"]["files"] == first["symbols"]["AAA"]["files"]
    assert again["symbols"]["AAA"]["change"] == "unchanged"
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")} == before
    assert not (tmp_path / "_staging").exists()


def test_reading_without_a_dataset_says_how_to_make_one(tmp_path):
    with pytest.raises(StorageError, match="no bar dataset here.*admf generate"):
        BarStore(str(tmp_path / "nothing")).symbols()


def test_unknown_symbol_and_column_get_suggestions(tmp_path, small_bars):
    store = BarStore(str(tmp_path))
    store.write(small_bars)
    with pytest.raises(DataError, match="did you mean 'BBB'"):
        store.read("BBX")
    with pytest.raises(DataError, match="unknown column 'clse'.*did you mean 'close'"):
        store.read("AAA", columns=["clse"])


def test_missing_and_corrupt_data_files_are_named(tmp_path, small_bars):
    store = BarStore(str(tmp_path))
    store.write(small_bars)
    a_file, b_file = store.files("AAA")[0], store.files("BBB")[0]
    (tmp_path / a_file).unlink()
    with pytest.raises(StorageError, match="missing") as err:
        BarStore(str(tmp_path)).read("AAA")
    assert a_file in str(err.value) and "symbol AAA" in str(err.value)
    (tmp_path / b_file).write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(StorageError, match="data file has 24 bytes, the manifest says") as err:
        BarStore(str(tmp_path)).read("BBB")
    assert b_file in str(err.value)


def test_a_data_file_with_the_wrong_schema_is_rejected_at_read(tmp_path, small_bars):
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = BarStore(str(tmp_path))
    store.write(small_bars[:1])
    path = tmp_path / store.files("AAA")[0]
    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index("close"), "close",
                             pa.array(table.column("close").to_numpy().astype("float32")))
    pq.write_table(table, path)
    # a file changed since its commit: its size tells first (the types are checked after, a second defence)
    with pytest.raises(StorageError, match="bytes, the manifest says"):
        BarStore(str(tmp_path)).read("AAA")


def test_a_corrupt_manifest_is_an_error_not_a_crash(tmp_path, small_bars):
    store = BarStore(str(tmp_path))
    store.write(small_bars)
    (tmp_path / "_dataset.json").write_text('{"format": "admf-bars", "schema')
    with pytest.raises(StorageError, match="corrupt JSON.*_dataset.json"):
        BarStore(str(tmp_path)).symbols()


def _column_chunks(path):
    import pyarrow.parquet as pq

    md = pq.read_metadata(path)
    names = md.schema.names
    return {names[i]: md.row_group(g).column(i) for g in range(md.num_row_groups) for i in range(len(names))}


def test_value_columns_are_dictionary_encoded_only_where_values_repeat(tmp_path, small_bars):
    """Prices that never repeat are written plain and uncompressed (they decode faster, and neither a
    dictionary nor snappy makes them smaller); a column of a few distinct values gets both. Files written
    before this choice (dictionary and snappy everywhere) read back the same bars."""
    import pyarrow.parquet as pq

    from admf_dask.bars.schema import VALUE_COLUMNS

    b = small_bars[0]
    steps = {**b.columns, "volume": np.round(b.columns["volume"], -5)}  # a handful of distinct volumes
    assert 4 * len(np.unique(steps["volume"])) <= len(b)
    stepped = Bars("VOL", b.timestamp, steps)
    for granularity in ("year", "symbol"):
        store = BarStore(str(tmp_path / granularity))
        store.update([b, stepped], mode="replace", granularity=granularity)
        for sym, want in (("AAA", b), ("VOL", stepped)):
            assert_same_bars(store.read(sym), want)
            for f in store.entry(sym)["files"]:
                chunks = _column_chunks(store.storage.path(f["path"]))
                assert chunks["timestamp"].compression == "SNAPPY" and not chunks["timestamp"].has_dictionary_page
                for c in ("open", "high", "low", "close"):
                    assert not chunks[c].has_dictionary_page and chunks[c].compression == "UNCOMPRESSED", c
                vol = chunks["volume"]
                assert (vol.has_dictionary_page, vol.compression) == (
                    (True, "SNAPPY") if sym == "VOL" else (False, "UNCOMPRESSED"))
    # a file of the earlier encoding, put in place of the new one, reads as the same bars
    store = BarStore(str(tmp_path / "year"))
    meta = store.entry("AAA")["files"][0]
    path = store.storage.path(meta["path"])
    table = pq.read_table(path)
    pq.write_table(table, path, compression="snappy")
    assert _column_chunks(path)["close"].has_dictionary_page
    manifest = json.loads(store.storage.read_bytes("_dataset.json"))  # committed so by an earlier version:
    entry = manifest["symbols"]["AAA"]["files"][0]                     # its size, no digest of its bytes
    entry["bytes"] = os.path.getsize(path)
    del entry["file_sha256"]
    store.storage.write_bytes(json.dumps(manifest).encode(), "_dataset.json")
    got = BarStore(store.url).read("AAA", end=int(meta["last_ns"]))
    rows = b.timestamp <= meta["last_ns"]
    assert_same_bars(got, Bars("AAA", b.timestamp[rows], {c: b.columns[c][rows] for c in VALUE_COLUMNS}))
