"""Bars from real vendors' files: each format written here as the vendor writes it, the oracle pandas
reading the same file by the vendor's own rules; `admf ingest` (in-process) must store the same values."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from admf_dask.bars import BarStore, Bars, ingest
from admf_dask.cli import main
from admf_dask.errors import DataError
from tests.conftest import snapshot

COLS = ["open", "high", "low", "close", "volume"]


def ohlcv(n: int, seed: int = 0, price: float = 100.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = np.round(price * np.exp(np.cumsum(rng.standard_normal(n) * 0.01)), 4)
    open_ = np.round(np.r_[price, close[:-1]], 4)
    high = np.round(np.maximum(open_, close) * (1 + rng.random(n) * 0.005), 4)
    low = np.round(np.minimum(open_, close) * (1 - rng.random(n) * 0.005), 4)
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close,
                         "volume": rng.integers(1_000, 90_000, n).astype(float)})


def admf(capsys, *args):
    with pytest.raises(SystemExit) as done:
        main(["-q", *map(str, args)])
    out, err = capsys.readouterr()
    return done.value.code, out, err


def stored(root, symbol: str) -> pd.DataFrame:
    frame = BarStore(str(root)).read(symbol).to_frame()
    return frame.set_axis(frame.index.tz_convert("UTC").as_unit("ns"))


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    want = want[COLS].astype(float)
    want.index = pd.DatetimeIndex(want.index).as_unit("ns")
    if want.index.tz is None:
        want.index = want.index.tz_localize("UTC")
    pd.testing.assert_frame_equal(got[COLS], want, check_names=False, check_freq=False)


# ---------------------------------------------------------------- Stooq


def test_stooq_daily_and_intraday(tmp_path, capsys):
    days = pd.bdate_range("2024-01-02", periods=30)
    d = ohlcv(30, 1)
    daily = pd.DataFrame({"<TICKER>": "AAPL.US", "<PER>": "D", "<DATE>": days.strftime("%Y%m%d"),
                          "<TIME>": "000000", "<OPEN>": d.open, "<HIGH>": d.high, "<LOW>": d.low,
                          "<CLOSE>": d.close, "<VOL>": d.volume.astype(int), "<OPENINT>": 0})
    daily.to_csv(tmp_path / "aapl.us.txt", index=False)
    stamps = pd.date_range("2024-01-02 08:35", periods=40, freq="5min")
    m = ohlcv(40, 2)
    # TIME as a number loses its leading zero (083500 -> 83500) when a spreadsheet has touched the file
    intraday = pd.DataFrame({"<TICKER>": "MSFT.US", "<PER>": 5, "<DATE>": stamps.strftime("%Y%m%d"),
                             "<TIME>": stamps.strftime("%H%M%S").astype(int), "<OPEN>": m.open, "<HIGH>": m.high,
                             "<LOW>": m.low, "<CLOSE>": m.close, "<VOL>": m.volume.astype(int), "<OPENINT>": 0})
    intraday.to_csv(tmp_path / "msft.us.txt", index=False)
    store = tmp_path / "store"
    code, out, err = admf(capsys, "ingest", store, tmp_path / "aapl.us.txt", tmp_path / "msft.us.txt")
    assert (code, err) == (0, ""), err
    for symbol, path in (("AAPL.US", "aapl.us.txt"), ("MSFT.US", "msft.us.txt")):
        raw = pd.read_csv(tmp_path / path, dtype={"<DATE>": str, "<TIME>": str})  # the oracle: Stooq's rules
        index = pd.to_datetime(raw["<DATE>"] + raw["<TIME>"].str.zfill(6), format="%Y%m%d%H%M%S")
        want = raw.set_axis(index).rename(columns=lambda c: c.strip("<>").lower()).rename(columns={"vol": "volume"})
        assert_same(stored(store, symbol), want)


# ---------------------------------------------------------------- epoch timestamps, headerless files


def binance_rows(n: int, start_ms: int, scale: int = 1) -> pd.DataFrame:
    k = ohlcv(n, 3, 42_000.0)
    open_time = (start_ms + np.arange(n) * 3_600_000) * scale
    return pd.DataFrame({"open_time": open_time, **{c: k[c] for c in COLS},
                         "close_time": open_time + 3_599_999 * scale, "quote_volume": k.volume * 42_000,
                         "count": 100, "taker_buy_volume": k.volume / 2, "taker_buy_quote_volume": k.volume * 21_000,
                         "ignore": 0})


BINANCE_COLUMNS = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume," \
                  "taker_buy_quote_volume,ignore"


@pytest.mark.parametrize("unit,scale", [("ms", 1), ("us", 1000)])
def test_binance_klines_headerless_epoch(tmp_path, capsys, unit, scale):
    path = tmp_path / "BTCUSDT-1h-2024-01.csv"
    rows = binance_rows(48, 1_704_067_200_000, scale)
    rows.to_csv(path, index=False, header=False)  # data.binance.vision: no header row
    store = tmp_path / "store"
    before = snapshot_dir(tmp_path)
    code, out, err = admf(capsys, "ingest", store, path, "--symbol", "BTCUSDT")
    assert code == 2 and err.count("\n") == 1 and "no header row" in err and "--columns" in err
    assert snapshot_dir(tmp_path) == before
    code, out, err = admf(capsys, "ingest", store, path, "--symbol", "BTCUSDT", "--columns", BINANCE_COLUMNS)
    assert (code, err) == (0, ""), err
    raw = pd.read_csv(path, header=None, names=BINANCE_COLUMNS.split(","))
    want = raw.set_axis(pd.to_datetime(raw.open_time, unit=unit))
    assert_same(stored(store, "BTCUSDT"), want)


def test_epoch_seconds_ambiguous_and_timestamp_unit(tmp_path, capsys):
    early = binance_rows(10, 0)  # ms counted from 1970: read by magnitude as seconds, in 1970: ambiguous
    early["open_time"] = early["open_time"] // 1000 * 1000
    path = tmp_path / "OLD.csv"
    early.to_csv(path, index=False)
    store = tmp_path / "store"
    code, out, err = admf(capsys, "ingest", store, path)
    assert code == 2 and err.count("\n") == 1, err
    assert "ambiguous" in err and "OLD.csv" in err and "line 2" in err and "--timestamp-unit" in err
    assert not store.exists()
    code, out, err = admf(capsys, "ingest", store, path, "--timestamp-unit", "ms")
    assert (code, err) == (0, ""), err
    assert_same(stored(store, "OLD"), early.set_axis(pd.to_datetime(early.open_time, unit="ms")))


def test_epoch_seconds_by_magnitude(tmp_path):
    rows = binance_rows(24, 1_704_067_200_000)
    rows["open_time"] //= 1000
    rows.to_csv(tmp_path / "SEC.csv", index=False)
    store = BarStore(str(tmp_path / "store"))
    ingest(store, [str(tmp_path / "SEC.csv")])
    assert_same(stored(tmp_path / "store", "SEC"), rows.set_axis(pd.to_datetime(rows.open_time, unit="s")))


# ---------------------------------------------------------------- Yahoo's null rows


def yahoo_csv(path, nulls=(3, 7)) -> None:
    days = pd.bdate_range("2020-03-02", periods=12)
    d = ohlcv(12, 4)
    lines = ["Date,Open,High,Low,Close,Adj Close,Volume"]
    for i, day in enumerate(days):
        if i in nulls:
            lines.append(f"{day:%Y-%m-%d},null,null,null,null,null,null")
        else:
            r = d.iloc[i]
            lines.append(f"{day:%Y-%m-%d},{r.open},{r.high},{r.low},{r.close},{r.close},{int(r.volume)}")
    path.write_text("\n".join(lines) + "\n")


def test_yahoo_null_rows(tmp_path, capsys):
    path = tmp_path / "SPY.csv"
    yahoo_csv(path)
    store = tmp_path / "store"
    code, out, err = admf(capsys, "ingest", store, path)
    assert code == 2 and err.count("\n") == 1, err
    assert "SPY.csv" in err and "line 5" in err and "--drop-missing" in err and "2 row(s)" in err
    assert not store.exists()
    code, out, err = admf(capsys, "ingest", store, path, "--drop-missing")
    assert (code, err) == (0, ""), err
    assert "dropped 2 row(s) with missing values: SPY" in out
    raw = pd.read_csv(path, na_values=["null"], index_col="Date", parse_dates=True).dropna()  # the oracle
    assert_same(stored(store, "SPY"), raw.rename(columns=str.lower))


# ---------------------------------------------------------------- yfinance's multi-row header


@pytest.mark.parametrize("tickers,group_by", [(["AAPL"], "column"), (["AAPL", "MSFT"], "column"),
                                              (["AAPL", "MSFT"], "ticker")])
def test_yfinance_multirow_header(tmp_path, capsys, tickers, group_by):
    days = pd.DatetimeIndex(pd.bdate_range("2024-01-02", periods=15), name="Date")
    parts = {t: ohlcv(15, 5 + i).set_axis(days) for i, t in enumerate(tickers)}
    frame = pd.concat({t: p.rename(columns=str.title) for t, p in parts.items()}, axis=1)
    frame.columns.names = ["Ticker", "Price"]  # yf.download(..., group_by="ticker")
    if group_by == "column":
        frame = frame.swaplevel(axis=1)  # yfinance's default: (Price, Ticker) columns
    path = tmp_path / "yf.csv"
    frame.to_csv(path)  # what `yf.download(...).to_csv()` writes: Price / Ticker / Date header rows
    assert path.read_text().splitlines()[0].startswith("Price," if group_by == "column" else "Ticker,")
    store = tmp_path / "store"
    code, out, err = admf(capsys, "ingest", store, path)
    assert (code, err) == (0, ""), err
    back = pd.read_csv(path, header=[0, 1], index_col=0, parse_dates=True)  # the oracle: pandas, two header rows
    for t in tickers:
        want = back.xs(t, axis=1, level=1 if group_by == "column" else 0).rename(columns=str.lower)
        assert_same(stored(store, t), want)


# ---------------------------------------------------------------- pandas Parquet, DataFrames


def test_pandas_parquet_with_timestamp_index(tmp_path, capsys):
    idx = pd.date_range("2024-03-01 14:30", periods=50, freq="min", tz="America/New_York", name="Datetime")
    df = ohlcv(50, 6).set_axis(idx)
    df.to_parquet(tmp_path / "QQQ.parquet")
    unnamed = ohlcv(20, 7).set_axis(pd.date_range("2024-01-01", periods=20, freq="D"))
    unnamed.to_parquet(tmp_path / "IWM.parquet")
    store = tmp_path / "store"
    code, out, err = admf(capsys, "ingest", store, tmp_path / "QQQ.parquet", tmp_path / "IWM.parquet")
    assert (code, err) == (0, ""), err
    assert_same(stored(store, "QQQ"), pd.read_parquet(tmp_path / "QQQ.parquet").tz_convert("UTC"))
    assert_same(stored(store, "IWM"), pd.read_parquet(tmp_path / "IWM.parquet"))


def test_from_frame_and_write_frame(tmp_path):
    idx = pd.date_range("2024-01-01", periods=30, freq="h", tz="UTC", name="timestamp")
    df = ohlcv(30, 8).set_axis(idx)
    bars = Bars.from_frame(df, symbol="EURUSD")
    assert bars.symbol == "EURUSD"
    assert_same(bars.to_frame(), df)
    store = BarStore(str(tmp_path / "store"))
    long = pd.concat([df.assign(symbol="EURUSD"), ohlcv(30, 9).set_axis(idx).assign(symbol="GBPUSD")])
    manifest = store.write_frame(long.reset_index())
    assert sorted(manifest["symbols"]) == ["EURUSD", "GBPUSD"]
    assert_same(stored(tmp_path / "store", "GBPUSD"), long[long.symbol == "GBPUSD"])
    bad = df.copy()
    bad.iloc[4, bad.columns.get_loc("high")] = bad["low"].iloc[4] - 1
    before = snapshot(store.storage.fs, store.storage.root)
    with pytest.raises(DataError, match=r"row 5") as err:
        store.write_frame(bad, "EURUSD", mode="merge")
    assert "EURUSD" in str(err.value)
    assert snapshot(store.storage.fs, store.storage.root) == before
    with pytest.raises(DataError, match="symbol="):
        Bars.from_frame(df)


# ---------------------------------------------------------------- --check


def snapshot_dir(root) -> dict:
    return {str(p): p.stat().st_size for p in sorted(root.rglob("*"))}


def test_check_reports_every_bad_file_and_writes_nothing(tmp_path, capsys):
    good = tmp_path / "GOOD.csv"
    ohlcv(10, 10).set_axis(pd.bdate_range("2024-01-02", periods=10, name="Date")).to_csv(good)
    yahoo = tmp_path / "SPY.csv"
    yahoo_csv(yahoo)
    broken = tmp_path / "BAD.csv"
    frame = ohlcv(10, 11).set_axis(pd.bdate_range("2024-01-02", periods=10, name="Date"))
    frame.iloc[6, 1] = frame.iloc[6, 2] - 1  # high below low on line 8
    frame.to_csv(broken)
    store = tmp_path / "store"
    before = snapshot_dir(tmp_path)
    code, out, err = admf(capsys, "ingest", store, good, yahoo, broken, "--check")
    assert code == 2 and err.count("\n") == 1 and "2 of 3 file(s) are bad" in err, err
    assert "checked 3 file(s): 1 good, 2 bad" in out and "nothing written" in out
    bad_lines = [line for line in out.splitlines() if line.startswith("  bad: ")]
    assert len(bad_lines) == 2
    assert "SPY.csv" in bad_lines[0] and "line 5" in bad_lines[0]
    assert "BAD.csv" in bad_lines[1] and "line 8" in bad_lines[1]
    assert snapshot_dir(tmp_path) == before and not store.exists()
    code, out, err = admf(capsys, "ingest", store, good, yahoo, "--check", "--drop-missing")
    assert (code, err) == (0, "") and "2 good, 0 bad" in out and not store.exists()


def test_workflow_ingest_step_takes_the_vendor_options(tmp_path):
    from admf_dask.workflow import load_workflow, run_workflow

    binance_rows(24, 1_704_067_200_000).to_csv(tmp_path / "BTCUSDT.csv", index=False, header=False)
    yahoo_csv(tmp_path / "SPY.csv")
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"""\
storage: store
steps:
  - ingest: {{dataset: crypto, files: [BTCUSDT.csv], columns: [{BINANCE_COLUMNS}], timestamp_unit: ms}}
  - ingest: {{dataset: stocks, files: [SPY.csv], drop_missing: true}}
""")
    run_workflow(load_workflow(str(wf)), echo=lambda _: None)
    assert BarStore(str(tmp_path / "store" / "bars" / "crypto")).symbols() == ["BTCUSDT"]
    assert len(BarStore(str(tmp_path / "store" / "bars" / "stocks")).read("SPY")) == 10
    wf.write_text("storage: store\nsteps:\n  - ingest: {dataset: x, files: [SPY.csv], timestamp_unit: sec}\n")
    with pytest.raises(Exception, match="timestamp_unit"):
        load_workflow(str(wf))
