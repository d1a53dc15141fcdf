"""Bounded reads of one symbol: iter_chunks, read_head, rows_in_range, row_groups.

The datasets here are written with irregular Parquet row groups (pyarrow's
``write_table`` is patched while writing), so that chunk alignment, cuts inside
row groups and "only the row groups needed" can be checked; the data files are
read back through an instrumented filesystem that records every byte range read.
The memory test runs in a fresh interpreter and measures peak RSS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem

import admf_dask.bars.store as store_module
import admf_dask.bars.update as update_module
from admf_dask.bars import Bars, BarStore, generate_bars
from admf_dask.errors import DataError, StorageError

GROUPS = [700, 1300, 250, 2000, 900, 50]  # row-group sizes, in turn, of the patched writer
MIB = 1 << 20


def _grouped_writer(sizes):
    """A ``pq.write_table`` that writes row groups of the given sizes in turn."""

    def write_table(table, where, **kwargs):
        with pq.ParquetWriter(where, table.schema, compression=kwargs.get("compression", "snappy")) as w:
            at = i = 0
            while at < table.num_rows:
                n = sizes[i % len(sizes)]
                w.write_table(table.slice(at, n), row_group_size=n)
                at, i = at + n, i + 1

    return write_table


def _write(root: str, bars_list, sizes=GROUPS, options=None) -> BarStore:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pq, "write_table", _grouped_writer(sizes))
        # the small files stand in for large ones, read in part (see `recorded`): their entries record
        # the digests of their footer and row groups, which such a read checks
        mp.setattr(update_module, "WHOLE_FILE_ROWS", 0)
        store = BarStore(root, options)
        store.write(bars_list)
    return BarStore(root, options)


@pytest.fixture(scope="module")
def minute_bars():
    # 7,800 minute bars in two year files of 3,900, in row groups of 700, 1300, 250, 1650 | 700, ...
    return [generate_bars("IRR", "2023-12-18", "2024-01-12", freq="minute", seed=11),
            generate_bars("DAY", "2019-01-01", "2024-06-30", seed=3)]  # 6 small files, one group each


@pytest.fixture(scope="module")
def local_store(tmp_path_factory, minute_bars):
    return _write(str(tmp_path_factory.mktemp("chunks") / "ds"), minute_bars)


def _join(chunks: list[Bars], cols) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    ts = np.concatenate([c.timestamp for c in chunks]) if chunks else np.empty(0, np.int64)
    return ts, {k: (np.concatenate([c.columns[k] for c in chunks]) if chunks else np.empty(0)) for k in cols}


def _assert_equal(got_ts, got_cols, want: Bars) -> None:
    assert got_ts.dtype == np.int64
    np.testing.assert_array_equal(got_ts, want.timestamp)
    assert list(got_cols) == list(want.columns)
    for k, v in want.columns.items():
        assert got_cols[k].dtype == np.float64
        np.testing.assert_array_equal(got_cols[k], v, err_msg=k)


def _group_boundaries(store: BarStore, symbol: str) -> tuple[list[int], list[tuple[int, int, int]]]:
    """Row-group boundaries of the whole symbol, as row offsets, and row_groups() itself."""
    groups = store.row_groups(symbol)
    return list(np.cumsum([0] + [g[2] for g in groups])), groups


# ---------------------------------------------------------------------------------- iter_chunks
def test_chunks_are_runs_of_whole_row_groups_when_the_groups_fit(local_store):
    full = local_store.read("IRR")
    bounds, groups = _group_boundaries(local_store, "IRR")
    assert [g[2] for g in groups][:5] == [700, 1300, 250, 1650, 700] and bounds[-1] == len(full) == local_store.entry("IRR")["rows"]
    assert all(g[0] == full.timestamp[a] and g[1] == full.timestamp[b - 1]
               for g, a, b in zip(groups, bounds[:-1], bounds[1:]))
    for max_rows in (2000, 2600, 3000, 7000):
        chunks = list(local_store.iter_chunks("IRR", max_rows=max_rows))
        cuts = list(np.cumsum([0] + [len(c) for c in chunks]))
        assert set(cuts) <= set(bounds), max_rows            # every boundary is a row-group boundary
        assert all(0 < len(c) <= max_rows for c in chunks)
        for a, b in pairwise(cuts[1:]):                # greedy: the next group did not fit
            nxt = bounds[bounds.index(a) + 1]
            assert len(chunks[cuts.index(a) - 1]) + (nxt - a) > max_rows
        _assert_equal(*_join(chunks, list(full.columns)), full)


def test_row_groups_larger_than_a_chunk_are_cut_into_equal_parts(local_store):
    full = local_store.read("IRR", columns=["close"])
    bounds, _ = _group_boundaries(local_store, "IRR")
    chunks = list(local_store.iter_chunks("IRR", max_rows=600, columns=["close"]))
    cuts = list(np.cumsum([0] + [len(c) for c in chunks]))
    assert set(bounds) <= set(cuts)                           # no chunk crosses a group boundary
    for a, b in pairwise(bounds):
        inside = [len(c) for c, at in zip(chunks, cuts) if a <= at < b]
        assert sum(inside) == b - a
        if b - a > 600:                                       # cut: ceil(size / 600) parts, equal to one bar
            assert len(inside) == -(-(b - a) // 600) and max(inside) - min(inside) <= 1
    _assert_equal(*_join(chunks, ["close"]), full)


def test_max_rows_1_gives_one_bar_per_chunk(local_store):
    want = local_store.read("IRR", start="2024-01-03 14:00", end="2024-01-03 17:00")
    chunks = list(local_store.iter_chunks("IRR", start="2024-01-03 14:00", end="2024-01-03 17:00", max_rows=1))
    assert len(chunks) == len(want) > 100 and all(len(c) == 1 for c in chunks)
    _assert_equal(*_join(chunks, list(want.columns)), want)


def test_max_bytes_sets_rows_by_the_columns_read(local_store):
    # 8 bytes of timestamp + 8 per value column: 6 columns -> 48 bytes a bar, 2 -> 16
    assert max(map(len, local_store.iter_chunks("IRR", max_bytes=48 * 2500))) <= 2500
    assert max(map(len, local_store.iter_chunks("IRR", max_bytes=16 * 2500, columns=["close"]))) <= 2500
    assert [len(c) for c in local_store.iter_chunks("IRR", max_bytes=16 * 2500, columns=["close"])] == [
        len(c) for c in local_store.iter_chunks("IRR", max_rows=2500)]


@pytest.mark.parametrize("where", ["local", "memory"])
def test_random_ranges_and_columns_equal_read(where, local_store, minute_bars):
    store = local_store if where == "local" else _write("memory://chunks-random/ds", minute_bars)
    rng = np.random.default_rng(2024)
    names = ["open", "high", "low", "close", "volume"]
    for case in range(40):
        symbol = ["IRR", "DAY"][case % 2]
        entry = store.entry(symbol)
        span = entry["last_ns"] - entry["first_ns"]
        lo, hi = sorted(entry["first_ns"] + rng.integers(-span // 10, span * 11 // 10, size=2))
        start = None if case % 7 == 0 else int(lo)
        end = None if case % 5 == 0 else int(hi) + int(rng.integers(0, 2))  # on a bar or between bars
        cols = None if case % 6 == 0 else list(rng.choice(names, size=int(rng.integers(0, 6)), replace=False))
        want = store.read(symbol, start, end, cols)
        max_rows = int(rng.choice([1, 7, 300, 1299, 1300, 2345, 10**6]) if case % 3 else rng.integers(2, 5000))
        chunks = list(store.iter_chunks(symbol, start=start, end=end, columns=cols, max_rows=max_rows))
        assert all(0 < len(c) <= max_rows for c in chunks), case
        _assert_equal(*_join(chunks, list(want.columns)), want)
        assert store.rows_in_range(symbol, start, end) == len(want), case
        k = int(rng.integers(0, len(want) + 3))
        head = store.read_head(symbol, k, start, end, cols)
        _assert_equal(head.timestamp, head.columns, Bars(symbol, want.timestamp[:k],
                                                         {c: v[:k] for c, v in want.columns.items()}))


def test_chunks_own_their_arrays_and_are_writable(local_store):
    chunks = list(local_store.iter_chunks("IRR", max_rows=640))   # cuts inside groups and whole runs
    arrays = [a for c in chunks for a in (c.timestamp, *c.columns.values())]
    assert all(a.flags.writeable and a.flags.owndata and a.flags.c_contiguous for a in arrays)
    for c, d in pairwise(chunks):
        for a in (c.timestamp, *c.columns.values()):
            assert not any(np.shares_memory(a, b) for b in (d.timestamp, *d.columns.values()))
    chunks[0].close[:] = 0.0  # the caller may scribble on a chunk it holds
    assert local_store.read_head("IRR", 3).close[0] != 0.0
    assert local_store.read_head("IRR", 3).timestamp.flags.writeable


def test_empty_ranges(local_store):
    first = local_store.entry("IRR")["first_ns"]
    assert list(local_store.iter_chunks("IRR", end=first - 1, max_rows=10)) == []
    assert list(local_store.iter_chunks("IRR", start="2024-01-06", end="2024-01-07", max_rows=10)) == []  # weekend
    assert list(local_store.iter_chunks("IRR", start="2024-01-05", end="2024-01-04", max_rows=10)) == []
    assert local_store.rows_in_range("IRR", "2024-01-06", "2024-01-07") == 0
    assert local_store.rows_in_range("IRR", "2024-01-05", "2024-01-04") == 0
    head = local_store.read_head("IRR", 10, "2024-01-06", "2024-01-07", columns=["close"])
    assert len(head) == 0 and head.timestamp.dtype == np.int64 and list(head.columns) == ["close"]
    assert len(local_store.read_head("IRR", 0)) == 0
    assert local_store.row_groups("IRR", end=first - 1) == []


def test_bad_arguments_raise_a_data_error_naming_the_key_at_call_time(local_store):
    cases = [
        ({}, "max_bytes", "no default"),
        ({"max_bytes": 1 << 20, "max_rows": 10}, "max_rows", "exactly one"),
        ({"max_rows": 0}, "max_rows", ">= 1"),
        ({"max_rows": 2.5}, "max_rows", "integer"),
        ({"max_bytes": True}, "max_bytes", "integer"),
        ({"max_bytes": 8}, "max_bytes", "smaller than one bar"),
    ]
    for kwargs, key, words in cases:
        with pytest.raises(DataError, match=words) as err:
            local_store.iter_chunks("IRR", **kwargs)  # not a generator: raises before any next()
        assert key in err.value.where["key"], kwargs
    with pytest.raises(DataError, match="'NOPE' is not in the dataset"):
        local_store.iter_chunks("NOPE", max_rows=5)
    with pytest.raises(DataError, match="unknown column") as err:
        local_store.iter_chunks("IRR", max_rows=5, columns=["clsoe"])
    assert err.value.where["key"] == "clsoe"
    with pytest.raises(DataError, match="max_rows") as err:
        local_store.read_head("IRR", -1)
    assert err.value.where["key"] == "max_rows"


def test_a_missing_or_changed_data_file_is_a_storage_error_naming_it(tmp_path, minute_bars):
    store = _write(str(tmp_path / "ds"), minute_bars[:1])
    files = store.entry("IRR")["files"]
    os.remove(store.storage.path(files[1]["path"]))
    calls = [lambda: list(store.iter_chunks("IRR", max_rows=1000)),
             lambda: store.read_head("IRR", 5000),
             lambda: store.rows_in_range("IRR", end="2024-01-05"),
             lambda: store.row_groups("IRR")]
    for call in calls:
        with pytest.raises(StorageError, match="missing") as err:
            call()
        assert err.value.where["file"].endswith(files[1]["path"]) and err.value.where["symbol"] == "IRR"
    # the other file replaced by one with different rows: caught at its footer
    other = _write(str(tmp_path / "other"), [generate_bars("IRR", "2023-12-01", "2023-12-29", freq="minute")])
    os.replace(other.storage.path(other.entry("IRR")["files"][0]["path"]), store.storage.path(files[0]["path"]))
    with pytest.raises(StorageError, match="bytes, the manifest says") as err:  # its size tells first
        store.read_head("IRR", 10)
    assert err.value.where["file"].endswith(files[0]["path"])


def test_over_s3(s3, minute_bars):
    bucket, options = s3
    store = _write(f"{bucket}/chunks", minute_bars[:1], options=options)
    want = store.read("IRR", start="2023-12-29 16:00", end="2024-01-04", columns=["close", "volume"])
    chunks = list(store.iter_chunks("IRR", start="2023-12-29 16:00", end="2024-01-04", max_rows=1000,
                                    columns=["close", "volume"]))
    _assert_equal(*_join(chunks, ["close", "volume"]), want)
    assert store.rows_in_range("IRR", "2023-12-29 16:00", "2024-01-04") == len(want)
    head = store.read_head("IRR", 100, "2023-12-29 16:00", columns=["close", "volume"])
    np.testing.assert_array_equal(head.close, want.close[:100])
    assert store.row_groups("IRR") == BarStore(f"{bucket}/chunks", options).row_groups("IRR")
    assert sum(g[2] for g in store.row_groups("IRR")) == store.entry("IRR")["rows"]


# ------------------------------------------------------------- what is read: instrumented filesystem
class _RecordingFile(LocalFileOpener):
    def read(self, *args, **kwargs):
        at = self.tell()
        data = super().read(*args, **kwargs)
        self.fs.reads.append((self.path, at, len(data)))
        return data


class RecordingFS(LocalFileSystem):
    """A real local filesystem that records every (file, offset, length) read from it."""

    cachable = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads: list[tuple[str, int, int]] = []

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        return _RecordingFile(self._strip_protocol(path), mode, fs=self, **kwargs)


def _touched(reads, column: str | None = None) -> tuple[set[tuple[str, int]], list]:
    """Row groups whose column chunks the reads touched (footer reads aside), and reads outside any."""
    groups, stray = set(), []
    for path, at, n in reads:
        if path.endswith(".json") or n == 0:
            continue
        if at + n == os.path.getsize(path):  # pyarrow reads the footer from the end of the file
            continue
        md = pq.read_metadata(path)
        hit = False
        for i in range(md.num_row_groups):
            for j in range(md.num_columns):
                cc = md.row_group(i).column(j)
                if column is not None and cc.path_in_schema != column:
                    continue
                first = min(o for o in (cc.dictionary_page_offset, cc.data_page_offset) if o is not None)
                if at < first + cc.total_compressed_size and first < at + n:
                    groups.add((path.rsplit("/", 2)[-2], i))
                    hit = True
        if not hit:
            stray.append((path, at, n))
    return groups, stray


def _groups_of(store: BarStore, symbol: str, timestamps: np.ndarray) -> set[tuple[str, int]]:
    """The row groups (year directory, index) holding these timestamps."""
    out = set()
    for f in store.entry(symbol)["files"]:
        md = pq.read_metadata(store.storage.path(f["path"]))
        for i in range(md.num_row_groups):
            st = md.row_group(i).column(0).statistics
            if ((timestamps >= st.min_raw) & (timestamps <= st.max_raw)).any():
                out.add((f"year={f['year']}", i))
    return out


@pytest.fixture
def recorded(local_store, monkeypatch):
    monkeypatch.setattr(store_module, "_WHOLE_FILE_ROWS", 0)  # small files would be read whole
    fs = RecordingFS()
    store = BarStore(local_store.url, fs=fs)
    assert store.manifest  # read once; record data files only from here
    fs.reads.clear()
    return store, fs


@pytest.mark.parametrize("start, max_rows", [
    (None, 10),                    # inside the first group
    (None, 2001),                  # the first two groups and one bar of the third
    ("2023-12-20 15:47", 1),       # a start inside a group (its timestamps are read to find it)
    ("2023-12-20 15:47", 2600),    # from there over several groups
    ("2023-12-29 20:00", 500),     # across the year (file) boundary
    ("2024-01-12", 10**6),         # to the end
])
def test_read_head_reads_only_the_groups_it_needs(recorded, start, max_rows):
    store, fs = recorded
    head = store.read_head("IRR", max_rows, start=start, columns=["close"])
    want = store.read("IRR", start=start, columns=["close"])
    np.testing.assert_array_equal(head.timestamp, want.timestamp[:max_rows])
    np.testing.assert_array_equal(head.close, want.close[:max_rows])
    fs.reads.clear()
    store.read_head("IRR", max_rows, start=start, columns=["close"])
    groups, stray = _touched(fs.reads)
    assert groups == _groups_of(store, "IRR", head.timestamp) and not stray
    assert len(groups) < sum(pq.read_metadata(store.storage.path(f["path"])).num_row_groups
                             for f in store.entry("IRR")["files"]) or max_rows == 10**6


def test_row_groups_open_only_footers(recorded):
    store, fs = recorded
    groups = store.row_groups("IRR", start="2023-12-20 15:47", end="2024-01-03")
    full = store.read("IRR", columns=[])
    assert groups[0][0] <= pd.Timestamp("2023-12-20 15:47", tz="UTC").value <= groups[0][1]
    assert groups[-1][0] <= pd.Timestamp("2024-01-03", tz="UTC").value
    assert all(np.isin([g[0], g[1]], full.timestamp).all() for g in groups)
    fs.reads.clear()
    store.row_groups("IRR", start="2023-12-20 15:47", end="2024-01-03")
    assert _touched(fs.reads) == (set(), []) and len(fs.reads) == 2  # one footer read per file


def test_rows_in_range_reads_only_the_timestamps_of_groups_straddling_a_bound(recorded):
    store, fs = recorded
    start, end = "2023-12-20 15:47", "2024-01-03 17:30"
    want = len(store.read("IRR", start, end, columns=[]))
    fs.reads.clear()
    assert store.rows_in_range("IRR", start, end) == want
    ts_groups, stray = _touched(fs.reads, column="timestamp")
    other, _ = _touched(fs.reads)
    bounds = [pd.Timestamp(t, tz="UTC").value for t in (start, end)]
    assert ts_groups == other == _groups_of(store, "IRR", np.array(bounds)) and len(ts_groups) == 2
    assert not stray
    fs.reads.clear()
    assert store.rows_in_range("IRR", "2023-01-01", "2025-01-01") == store.entry("IRR")["rows"]
    assert fs.reads == []  # every file inside: counted from the manifest


# ------------------------------------------------------------------------------------ memory
MEASURE = textwrap.dedent("""
    import json, sys
    import pyarrow as pa
    from admf_dask.bars import BarStore

    def status(key):  # this process's VmRSS / VmHWM (peak RSS since exec or the last reset), in bytes
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

    root, symbol, max_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = BarStore(root)
    store.read_head(symbol, 10)  # warm-up: the manifest, and pyarrow's decoding code paged in
    try:  # reset the peak to the current RSS (Linux >= 4.0), so VmHWM is the peak of the loop alone
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    base, hwm_before = status("VmRSS"), status("VmHWM")
    rows = chunks = biggest = 0
    for chunk in store.iter_chunks(symbol, max_bytes=max_bytes):  # `chunk` is held while the next is built
        rows += len(chunk)
        chunks += 1
        biggest = max(biggest, chunk.nbytes)
        float(chunk.close.sum())
    peak = status("VmHWM")
    print(json.dumps({"peak_above": peak - base, "rows": rows, "chunks": chunks, "biggest": biggest,
                      "hwm_before_above": hwm_before - base, "reset": reset,
                      "arrow_pool_peak": pa.default_memory_pool().max_memory()}))
""")


def _minute_24h(symbol: str, start: str, n: int) -> Bars:
    """``n`` minute bars round the clock: a year file is one ~525k-row group, larger than a 16 MiB chunk."""
    rng = np.random.default_rng(5)
    ts = pd.Timestamp(start, tz="UTC").value + np.arange(n, dtype=np.int64) * 60_000_000_000
    close = 100 * np.exp(np.cumsum(rng.standard_normal(n) * 1e-4))
    open_ = close * np.exp(rng.standard_normal(n) * 1e-4)
    high = np.maximum(open_, close) * (1 + np.abs(rng.standard_normal(n)) * 1e-4)
    low = np.minimum(open_, close) * (1 - np.abs(rng.standard_normal(n)) * 1e-4)
    return Bars(symbol, ts, {"open": open_, "high": high, "low": low, "close": close,
                             "volume": np.round(rng.lognormal(8, 0.5, n))})


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_stays_within_two_and_a_half_chunks(tmp_path):
    """Peak RSS while iterating 2.6M minute bars with max_bytes=16 MiB, in a fresh interpreter.

    The peak is VmHWM, reset to the RSS just before the loop through
    /proc/self/clear_refs, minus that RSS. (``ru_maxrss`` would not do: Linux carries
    the parent's peak over fork and exec, and pytest's is far larger. Where the reset
    is refused the peak since exec counts: an over-estimate, never an under-estimate.)

    Two layouts: session minutes (generate_bars; ~98k-row groups, three to a chunk)
    and round-the-clock minutes (~525k-row groups, each cut in two). The bound is
    2.5 x max_bytes plus 12 MiB for pyarrow's reader state, which does not grow with
    the chunk: per column read, one data page as stored and decompressed and the
    column's dictionary (pyarrow writes pages and dictionaries of up to 1 MiB), so
    about 2 MiB x 6 columns. pyarrow's own pool accounts for it: its peak stays under
    16 MiB here, where holding one whole row group would take 25 MB.
    """
    root = str(tmp_path / "ds")
    BarStore(root).write([generate_bars("MIN", "2000-01-01", "2025-12-31", freq="minute", seed=5),
                          _minute_24h("H24", "2019-01-01", 2_600_000)])
    max_bytes, allowance = 16 * MIB, 12 * MIB
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for symbol, rows in [("MIN", 2_645_370), ("H24", 2_600_000)]:
        out = subprocess.run([sys.executable, "-c", MEASURE, root, symbol, str(max_bytes)], check=False, env=env,
                             capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        print(symbol, {k: v if k in ("rows", "chunks", "reset") else round(v / MIB, 1) for k, v in got.items()})
        assert got["rows"] == rows and got["biggest"] <= max_bytes
        assert got["peak_above"] <= 2.5 * max_bytes + allowance, (symbol, got)
        assert got["arrow_pool_peak"] < 16 * MIB, (symbol, got)
