"""Every committed bar file is checked when it is read back, from local disk too: against the size and the
sha256 of its bytes the manifest recorded at the commit, or (entries written before that record) the sha256
of its arrays. Real files on disk, damaged the way storage damages them (a flipped bit, a lost tail).

Oracles: the bars as written, pyarrow parsing the damaged file (it still parses, to other bars), and the
files on disk before and after a failed command.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from admf_dask.bars import BarStore, generate_bars
from admf_dask.bars import store as store_module
from admf_dask.bars import update as update_module
from admf_dask.cli import main
from admf_dask.errors import StorageError


@pytest.fixture
def dataset(tmp_path):
    """Two symbols of daily bars over two years: four year files of ~15 kB."""
    bars = [generate_bars("AAA", "2022-01-01", "2023-12-31", seed=1),
            generate_bars("BBB", "2022-01-01", "2023-12-31", seed=2)]
    store = BarStore(str(tmp_path / "bars"))
    store.write(bars)
    return store, {b.symbol: b for b in bars}


def _flip(store, meta) -> None:
    """Flip one bit in the middle of a data file (a value of the plain-encoded columns): it still parses."""
    path = Path(store.storage.path(meta["path"]))
    raw = path.read_bytes()
    damaged = bytearray(raw)
    damaged[len(raw) // 2] ^= 0x10
    assert not pq.read_table(io.BytesIO(bytes(damaged))).equals(pq.read_table(io.BytesIO(raw)))
    path.write_bytes(bytes(damaged))


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in Path(root).rglob("*")
            if p.is_file() and p.name != "_dataset.lock"}


def _reads(store):
    """Every way bars of AAA's 2023 file are read: whole, a range, bounded chunks, the head, a dask partition."""
    return [lambda: store.read("AAA"),
            lambda: store.read_many(["AAA"], start="2023-06-01"),
            lambda: list(store.iter_chunks("AAA", max_rows=100, start="2023-01-01")),
            lambda: store.read_head("AAA", 5, start="2023-03-01"),
            lambda: store.to_dask(["AAA"], start="2023-01-01").compute(scheduler="sync")]


def test_the_manifest_records_the_size_and_sha256_of_each_files_bytes(dataset):
    store, _ = dataset
    for symbol in ("AAA", "BBB"):
        for meta in store.entry(symbol)["files"]:
            raw = Path(store.storage.path(meta["path"])).read_bytes()
            assert meta["bytes"] == len(raw) and meta["file_sha256"] == hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("whole_file_rows", [50_000, 10])  # files read whole, or checked in blocks (large files)
def test_a_flipped_bit_in_a_local_bar_file_is_one_error_naming_it(dataset, monkeypatch, whole_file_rows):
    monkeypatch.setattr(store_module, "_WHOLE_FILE_ROWS", whole_file_rows)
    store, bars = dataset
    meta = store.entry("AAA")["files"][1]  # 2023
    _flip(store, meta)
    for read in _reads(BarStore(store.url)):
        with pytest.raises(StorageError, match="sha256 of its bytes") as err:
            read()
        text = str(err.value)
        assert err.value.where == {"file": store.storage.display(meta["path"]), "symbol": "AAA"}, text
        assert "\n" not in text and "admf ingest" in text
    np.testing.assert_array_equal(BarStore(store.url).read("BBB").close, bars["BBB"].close)  # the others read
    first = store.entry("AAA")["files"][0]["rows"]  # AAA's intact 2022 file reads
    np.testing.assert_array_equal(BarStore(store.url).read("AAA", end="2022-12-31").close, bars["AAA"].close[:first])
    update = BarStore(store.url).update([bars["AAA"]], mode="replace")  # the same bars written again repair it
    assert update.changes["AAA"].change == "unchanged"
    files = update.manifest["symbols"]["AAA"]["files"]
    assert files[0] == store.entry("AAA")["files"][0] and files[1]["path"] != meta["path"]
    assert not os.path.exists(store.storage.path(meta["path"]))  # the damaged file is gone
    np.testing.assert_array_equal(BarStore(store.url).read("AAA").close, bars["AAA"].close)


def test_a_file_read_in_part_has_its_footer_and_each_row_group_it_decodes_checked(tmp_path, monkeypatch):
    """Files over WHOLE_FILE_ROWS rows are read in part (bounded reads decode only some row groups): their
    entries record the sha256 of the footer and of each row group's bytes, checked before use. Small files
    stand in for them here, at both ends."""
    monkeypatch.setattr(update_module, "WHOLE_FILE_ROWS", 0)
    monkeypatch.setattr(store_module, "_WHOLE_FILE_ROWS", 0)
    bars = generate_bars("AAA", "2022-01-01", "2023-12-31", seed=1)
    store = BarStore(str(tmp_path / "bars"))
    store.update([bars], granularity="symbol")  # one file, a row group per year
    (meta,) = store.entry("AAA")["files"]
    assert len(meta["group_sha256"]) == 2 and "footer_sha256" in meta
    path = Path(store.storage.path(meta["path"]))
    raw = path.read_bytes()
    md = pq.read_metadata(path)
    second = update_module.group_span(md, 1)
    damaged = bytearray(raw)
    damaged[(second[0] + second[1]) // 2] ^= 0x10  # a value of 2023
    path.write_bytes(bytes(damaged))
    np.testing.assert_array_equal(store.read_head("AAA", 5).close, bars.close[:5])  # 2022 alone: intact
    for read in _reads(BarStore(store.url)):
        with pytest.raises(StorageError, match="sha256 of its bytes: row group 1") as err:
            read()
        assert err.value.where["file"].endswith(meta["path"])
    damaged = bytearray(raw)
    damaged[len(raw) - 40] ^= 0x01  # the footer
    path.write_bytes(bytes(damaged))
    with pytest.raises(StorageError, match="sha256 of its bytes: footer"):
        BarStore(store.url).read_head("AAA", 5)


def test_a_truncated_local_bar_file_is_one_error_naming_it_even_where_only_its_footer_is_read(dataset):
    store, _ = dataset
    meta = store.entry("AAA")["files"][1]
    path = Path(store.storage.path(meta["path"]))
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    for read in [*_reads(BarStore(store.url)),
                 lambda: BarStore(store.url).rows_in_range("AAA", start="2023-06-01"),
                 lambda: BarStore(store.url).row_groups("AAA")]:
        with pytest.raises(StorageError, match=f"data file has {len(raw) - 100:,} bytes, the manifest says "
                                               f"{len(raw):,}") as err:
            read()
        assert err.value.where["file"].endswith(meta["path"]) and "\n" not in str(err.value)


def _admf(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([*args])
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_the_cli_stops_on_a_damaged_bar_file_with_one_error_line_and_writes_nothing(dataset, capsys):
    store, _ = dataset
    code, out, err = _admf(capsys, "verify", store.url)
    assert (code, err) == (0, "") and "4 data files of 2 symbol(s)" in out, out
    meta = store.entry("BBB")["files"][0]
    _flip(store, meta)
    truncated = Path(store.storage.path(store.entry("AAA")["files"][1]["path"]))
    intact = truncated.read_bytes()
    truncated.write_bytes(intact[:-1])
    code, out, err = _admf(capsys, "verify", store.url)  # every damaged file listed, then one error line
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: 2 of 4 data files"), err
    damaged = out.strip().splitlines()
    assert len(damaged) == 2 and all(line.startswith("damaged: ") for line in damaged), out
    assert "symbol AAA" in damaged[0] and "bytes, the manifest says" in damaged[0]
    assert meta["path"] in damaged[1] and "sha256 of its bytes" in damaged[1]
    assert _admf(capsys, "verify", store.url, "--symbols", "AAA")[2].startswith("error: 1 of 2 data files")
    assert _admf(capsys, "verify", store.url, "--symbols", "BBB")[2].startswith("error: 1 of 2 data files")
    truncated.write_bytes(intact)  # restored: the repack below meets BBB's flipped bit
    before = _files(store.storage.path(""))
    code, out, err = _admf(capsys, "repack", store.url, "--granularity", "symbol")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and meta["path"] in lines[0], err
    assert "symbol BBB" in lines[0] and "sha256 of its bytes" in lines[0]
    assert _files(store.storage.path("")) == before  # no file added, moved or removed; the manifest as it was


def test_an_old_manifest_without_file_sha256_still_reads_is_checked_by_its_arrays_and_repack_records_it(
        dataset, monkeypatch):
    store, bars = dataset
    manifest_path = store.storage.path("_dataset.json")
    manifest = json.loads(Path(manifest_path).read_text())
    for entry in manifest["symbols"].values():
        for f in entry["files"]:
            del f["file_sha256"]
    del manifest["symbols"]["BBB"]["files"][0]["bytes"]  # the oldest entries had no size either
    Path(manifest_path).write_text(json.dumps(manifest))
    old = BarStore(store.url)
    for symbol in ("AAA", "BBB"):
        got = old.read(symbol)
        np.testing.assert_array_equal(got.timestamp, bars[symbol].timestamp)
        np.testing.assert_array_equal(got.close, bars[symbol].close)
    meta = old.entry("AAA")["files"][1]
    _flip(store, meta)
    for whole_file_rows in (50_000, 10):  # read whole, or streamed column by column
        monkeypatch.setattr(store_module, "_WHOLE_FILE_ROWS", whole_file_rows)
        for read in _reads(BarStore(store.url)):
            with pytest.raises(StorageError, match="sha256 of its bars") as err:
                read()
            assert err.value.where["file"].endswith(meta["path"]) and err.value.where["symbol"] == "AAA"
    with pytest.raises(StorageError, match="sha256 of its bars"):  # repack reads it back too: refused
        BarStore(store.url).repack("year")
    store.write([bars["AAA"]])  # AAA written again: its damaged 2023 file is replaced, with file_sha256
    assert "file_sha256" in BarStore(store.url).entry("AAA")["files"][1]
    fingerprint = BarStore(store.url).fingerprint
    out = BarStore(store.url).repack("year")
    assert out["rewritten"] == 4 and out["fingerprint"] == fingerprint  # AAA's 2022 and BBB's files lacked it
    again = BarStore(store.url)
    assert all("file_sha256" in f and "bytes" in f for e in again.manifest["symbols"].values() for f in e["files"])
    for symbol in ("AAA", "BBB"):
        np.testing.assert_array_equal(again.read(symbol).close, bars[symbol].close)
    assert again.repack("year")["rewritten"] == 0  # recorded: nothing to do


def test_on_s3_a_damaged_file_is_listed_by_verify_and_written_anew_by_the_same_bars(s3):
    bucket, options = s3
    bars = generate_bars("AAA", "2022-01-01", "2023-12-31", seed=1)
    store = BarStore(f"{bucket}/bars", options)
    store.write([bars])
    first, second = store.entry("AAA")["files"]
    raw = store.storage.read_bytes(second["path"])
    store.storage.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]), second["path"])  # the magic's last byte
    (damaged,) = BarStore(store.url, options).verify()["damaged"]
    assert damaged.where["file"].endswith(second["path"]) and "sha256 of its bytes" in damaged.message
    update = BarStore(store.url, options).update([bars], mode="replace")
    assert update.changes["AAA"].change == "unchanged"
    files = update.manifest["symbols"]["AAA"]["files"]
    assert files[0] == first and files[1]["path"] != second["path"] and files[1]["file_sha256"] == second["file_sha256"]
    assert BarStore(store.url, options).verify()["damaged"] == []
    assert not store.storage.exists(second["path"])
    np.testing.assert_array_equal(BarStore(store.url, options).read("AAA").close, bars.close)
