"""Ingest: vendor CSV/Parquet shapes that must work, and a corpus of bad inputs that must not."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from admf_dask.bars import BarStore, generate_bars, ingest
from admf_dask.errors import DataError
from tests.conftest import snapshot

HEADER = "Date,Open,High,Low,Close,Volume\n"
GOOD_ROWS = ["2020-01-02,10,11,9,10.5,100", "2020-01-03,10.5,11.5,10,11,200", "2020-01-06,11,12,10.5,11.5,300"]


def csv(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def store(tmp_path, small_bars):
    """A store that already holds AAA, so 'unchanged' is a real check."""
    s = BarStore(str(tmp_path / "store"))
    s.write(small_bars[:1])
    return s


# (file name, content, expected message fragments, where: the line or row named)
BAD_CSV = [
    ("XYZ.csv", "Date,Open,High,Low,Volume\n2020-01-02,1,2,0.5,10\n", ["missing column(s) close"], None),
    ("XYZ.csv", HEADER + GOOD_ROWS[0] + "\nnot-a-date,1,2,0.5,1,10\n", ["'not-a-date' does not parse"], "line 3"),
    ("XYZ.csv", HEADER + GOOD_ROWS[0] + "\n" + GOOD_ROWS[1] + "\n2020-01-03,10,11,9,10,5\n",
     ["duplicate timestamp 2020-01-03", "timestamp-unique", "--repair"], "line 4"),
    ("XYZ.csv", HEADER + GOOD_ROWS[1] + "\n" + GOOD_ROWS[0] + "\n", ["earlier than the row before",
                                                                    "timestamp-sorted"], "line 3"),
    ("XYZ.csv", HEADER + "2020-01-02,10,11,9,,100\n", ["close is missing", "price-missing"], "line 2"),
    ("XYZ.csv", HEADER + "2020-01-02,10,11,9,abc,100\n", ["close is missing or not a number"], "line 2"),
    ("XYZ.csv", HEADER + GOOD_ROWS[0] + "\n2020-01-03,0,11,9,10,100\n", ["open must be a positive", "price-positive"],
     "line 3"),
    ("XYZ.csv", HEADER + "2020-01-02,10,10.2,9,10.5,100\n", ["high 10.2 is below max(open, close) = 10.5",
                                                             "high-max"], "line 2"),
    ("XYZ.csv", HEADER + "2020-01-02,10,11,10.1,10.5,100\n", ["low 10.1 is above min(open, close) = 10.0",
                                                              "low-min"], "line 2"),
    ("XYZ.csv", HEADER + GOOD_ROWS[0] + "\n2020-01-03,10,11,9,10,-5\n2020-01-06,10,11,9,10,-1\n",
     ["volume must be finite and >= 0, got -5.0", "(2 rows break this rule)"], "line 3"),
    ("bad name!.csv", HEADER + GOOD_ROWS[0] + "\n", ["invalid symbol name 'bad name!'", "--symbol"], None),
    ("LONG.csv", "symbol,Date,Open,High,Low,Close,Volume\nAAA,2020-01-02,10,11,9,10,1\n../../etc,2020-01-02,10,11,9,10,1\n",
     ["invalid symbol name '../../etc'"], "line 3"),
    ("XYZ.csv", HEADER, ["no data rows"], None),
    ("XYZ.csv", "Date,Datetime,Open,High,Low,Close,Volume\n", ["both look like 'timestamp'"], None),
    ("XYZ.csv", '"Date,Open\n2020-01-02,1\n', ["cannot read as CSV"], None),
]


@pytest.mark.parametrize("name,text,fragments,where", BAD_CSV, ids=[f"{i}-{c[2][0][:24]}" for i, c in enumerate(BAD_CSV)])
def test_bad_csv_gets_one_clear_error_and_nothing_is_committed(tmp_path, store, name, text, fragments, where):
    path = csv(tmp_path, name, text)
    before = snapshot(store.storage.fs, store.storage.root)
    with pytest.raises(DataError) as err:
        ingest(store, [path])
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message
    assert f"file {path}" in message
    if where:
        assert where in message
    assert snapshot(store.storage.fs, store.storage.root) == before
    assert BarStore(store.url).symbols() == ["AAA"]


def test_a_bad_file_among_good_ones_commits_none_of_them(tmp_path, store):
    good = csv(tmp_path, "GOOD.csv", HEADER + "\n".join(GOOD_ROWS) + "\n")
    bad = csv(tmp_path, "BAD.csv", HEADER + "2020-01-02,10,11,9,,100\n")
    before = snapshot(store.storage.fs, store.storage.root)
    with pytest.raises(DataError, match="close is missing"):
        ingest(store, [good, bad])
    assert snapshot(store.storage.fs, store.storage.root) == before


def _parquet(tmp_path, name, frame):
    path = tmp_path / name
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return str(path)


def _frame(n=5):
    b = generate_bars("PQ", "2021-01-01", "2021-03-01", seed=5)
    return b.to_frame().reset_index().iloc[:n]


def test_bad_parquet_inputs(tmp_path, store):
    before = snapshot(store.storage.fs, store.storage.root)
    cases = []
    cases.append((_parquet(tmp_path, "P1.parquet", _frame().drop(columns=["volume"])), "missing column(s) volume"))
    f = _frame()
    f.loc[2, "close"] = np.nan
    cases.append((_parquet(tmp_path, "P2.parquet", f), "close is missing"))
    cases.append((_parquet(tmp_path, "P3.parquet", _frame().iloc[::-1]), "earlier than the row before"))
    junk = tmp_path / "P4.parquet"
    junk.write_bytes(b"definitely not parquet")
    cases.append((str(junk), "cannot read as Parquet"))
    for path, fragment in cases:
        with pytest.raises(DataError) as err:
            ingest(store, [path])
        assert fragment in str(err.value) and path in str(err.value)
    f = _frame()
    f.loc[3, "close"] = np.nan
    with pytest.raises(DataError, match=r"row 4"):
        ingest(store, [_parquet(tmp_path, "P5.parquet", f)])
    assert snapshot(store.storage.fs, store.storage.root) == before


def test_yahoo_style_csv_with_adj_close(tmp_path, store):
    path = csv(tmp_path, "MSFT.csv", """\
        Date,Open,High,Low,Close,Adj Close,Volume
        2020-01-02,158.78,160.73,158.33,160.62,154.78,22622100
        2020-01-03,158.32,159.95,158.06,158.62,152.85,21116200
        """)
    report = ingest(store, [path])
    assert report.rows == {"MSFT": 2}
    bars = BarStore(store.url).read("MSFT")
    assert list(bars.close) == [160.62, 158.62]
    assert list(bars.to_frame().index) == [pd.Timestamp("2020-01-02", tz="UTC"), pd.Timestamp("2020-01-03", tz="UTC")]
    ingest(store, [path], adjust=True, mode="replace")
    adjusted = BarStore(store.url).read("MSFT")
    np.testing.assert_allclose(adjusted.close, [154.78, 152.85], rtol=1e-12)
    np.testing.assert_allclose(adjusted.open, [158.78 * 154.78 / 160.62, 158.32 * 152.85 / 158.62], rtol=1e-12)


def test_separate_date_and_time_columns_in_a_local_time_zone(tmp_path, store):
    path = csv(tmp_path, "SPY.csv", """\
        date,time,o,h,l,c,vol
        2024-03-08,09:30,100,101,99,100.5,10
        2024-03-11,09:30,100,101,99,100.5,10
        """)
    ingest(store, [path], tz="America/New_York")
    idx = BarStore(store.url).read("SPY").to_frame().index
    # 09:30 New York is 14:30 UTC in winter time and 13:30 UTC after the March 10 change
    assert list(idx) == [pd.Timestamp("2024-03-08 14:30", tz="UTC"), pd.Timestamp("2024-03-11 13:30", tz="UTC")]


def test_offsets_in_timestamps_are_converted_to_utc(tmp_path, store):
    path = csv(tmp_path, "QQQ.csv", """\
        timestamp,open,high,low,close,volume
        2024-01-02T09:30:00-05:00,1,2,0.5,1.5,10
        2024-01-02T10:31:00-04:00,1,2,0.5,1.5,10
        """)
    ingest(store, [path], tz="Asia/Tokyo")  # ignored: every value carries its offset
    idx = BarStore(store.url).read("QQQ").to_frame().index
    assert list(idx) == [pd.Timestamp("2024-01-02 14:30", tz="UTC"), pd.Timestamp("2024-01-02 14:31", tz="UTC")]


def test_one_long_file_with_a_ticker_column(tmp_path, store):
    path = csv(tmp_path, "universe.csv", """\
        Ticker,Datetime,Open,High,Low,Close,Volume
        XOM,2024-01-02,100,101,99,100,5
        CVX,2024-01-02,150,151,149,150,6
        XOM,2024-01-03,100,102,99,101,7
        """)
    report = ingest(store, [path])
    assert report.rows == {"XOM": 2, "CVX": 1}
    assert BarStore(store.url).symbols() == ["AAA", "CVX", "XOM"]
    assert list(BarStore(store.url).read("XOM").volume) == [5.0, 7.0]


def test_repair_sorts_and_drops_exact_duplicates_and_reports_it(tmp_path, store):
    path = csv(tmp_path, "REP.csv", HEADER + "\n".join([GOOD_ROWS[2], GOOD_ROWS[0], GOOD_ROWS[1], GOOD_ROWS[0]]) + "\n")
    report = ingest(store, [path], repair=True)
    assert report.repairs == [f"REP ({path}): sorted 3 row(s) into time order, dropped 1 exact duplicate row(s)"]
    bars = BarStore(store.url).read("REP")
    assert list(bars.close) == [10.5, 11.0, 11.5]


def test_repair_does_not_hide_conflicting_duplicates(tmp_path, store):
    path = csv(tmp_path, "CON.csv", HEADER + GOOD_ROWS[0] + "\n2020-01-02,10,11,9,10.4,100\n")
    with pytest.raises(DataError, match="duplicate timestamp 2020-01-02"):
        ingest(store, [path], repair=True)


def test_naive_times_in_a_dst_gap_are_an_error(tmp_path, store):
    path = csv(tmp_path, "GAP.csv", HEADER.replace("Date", "Datetime") + "2024-03-10 02:30,1,2,0.5,1,1\n")
    with pytest.raises(DataError, match="America/New_York"):
        ingest(store, [path], tz="America/New_York")


def test_ingest_to_s3(tmp_path, s3):
    bucket, options = s3
    path = csv(tmp_path, "S3SYM.csv", HEADER + "\n".join(GOOD_ROWS) + "\n")
    target = BarStore(f"{bucket}/bars/csv", options)
    ingest(target, [path])
    assert list(BarStore(f"{bucket}/bars/csv", options).read("S3SYM").close) == [10.5, 11.0, 11.5]
    before = snapshot(target.storage.fs, target.storage.root)
    bad = csv(tmp_path, "S3BAD.csv", HEADER + "2020-01-02,10,11,9,10.5,-1\n")
    with pytest.raises(DataError, match="volume"):
        ingest(target, [path, bad])
    assert snapshot(target.storage.fs, target.storage.root) == before
