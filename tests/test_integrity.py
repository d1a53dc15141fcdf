"""Integrity of committed work (sweep/integrity.py): damaged parts, overlapping layouts, the final table's rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from admf_dask.bars import BarStore, generate_bars, symbol_names
from admf_dask.cluster import connect
from admf_dask.errors import StorageError
from admf_dask.storage import StorageRef
from admf_dask.sweep import SweepConfig, layout, run_sweep
from admf_dask.sweep.results import write_final_table

THREADS = {"kind": "threads", "n_workers": 2, "dashboard_address": ""}
PARAMS = {"fast": [5, 10, 15], "slow": [30, 60]}


@pytest.fixture(scope="module")
def bars(tmp_path_factory):
    store = BarStore(str(tmp_path_factory.mktemp("integrity") / "bars"))
    store.write([generate_bars(s, "2019-01-01", "2021-12-31", seed=11) for s in symbol_names(4)])
    return store


@pytest.fixture(scope="module")
def client():
    with connect(THREADS) as c:
        yield c


def _sweep(bars, root, client, batch_seconds):
    config = SweepConfig(strategy="sma_cross", params=PARAMS, commission=0.001, batch_seconds=batch_seconds)
    return run_sweep(config, bars, StorageRef.make(str(root)), client, progress=False, echo=lambda _: None)


def _interrupted(run_dir):
    """Make a finished run look like one killed before its final table: status running, no table."""
    run = json.loads((run_dir / "run.json").read_text())
    run["status"] = "running"
    run.pop("summary", None)
    (run_dir / "run.json").write_text(json.dumps(run))
    for name in ("results.parquet", "portfolio.parquet"):
        (run_dir / name).unlink()
    return run


def _flip(path, at=None):
    raw = bytearray(path.read_bytes())
    i = len(raw) // 2 if at is None else at
    raw[i] ^= 0x01
    path.write_bytes(bytes(raw))


def test_flipped_and_truncated_parts_are_recomputed_on_rerun(tmp_path, bars, client):
    first = _sweep(bars, tmp_path, client, 1e-5)
    run_dir = tmp_path / "runs" / first.run_id
    reference = (run_dir / "results.parquet").read_bytes()
    marker = json.loads((run_dir / "done" / "part-000000.json").read_text())
    assert set(marker["files"]) >= {"results/part-000000.parquet", "portfolio/part-000000.acc"}
    assert marker["layout"] and marker["files"]["results/part-000000.parquet"]["size"] > 0
    n_tasks = first.summary["tasks"]
    assert n_tasks >= 4 and first.summary["recomputed_parts"] == 0

    _interrupted(run_dir)
    _flip(run_dir / "results" / "part-000000.parquet")  # a statistic's byte: it would still read
    _flip(run_dir / "portfolio" / "part-000001.acc", at=(run_dir / "portfolio" / "part-000001.acc").stat().st_size - 9)
    part = run_dir / "results" / "part-000002.parquet"
    part.write_bytes(part.read_bytes()[:-100])  # truncated
    again = _sweep(bars, tmp_path, client, 1e-5)
    assert again.summary["recomputed_parts"] == 3 and again.summary["tasks_resumed"] == n_tasks - 3
    assert f"({n_tasks - 3} resumed, 3 recomputed: they failed their check)" in "\n".join(again.lines())
    assert (run_dir / "results.parquet").read_bytes() == reference

    # damage after the resume check, before assembly: the final table refuses it, writing nothing
    layout = json.loads((run_dir / "run.json").read_text())["layout"]
    ranges: dict[tuple[int, int], list[int]] = {}
    for j, (_, lo, hi, *_) in enumerate(layout):
        ranges.setdefault((lo, hi), []).append(j)
    portfolio = {lo: f"portfolio/rows-{lo:09d}.parquet" for lo, _ in ranges}
    storage = StorageRef.make(str(run_dir)).open()
    records = {}
    for j in range(len(layout)):
        records.update(json.loads((run_dir / "done" / f"part-{j:06d}.json").read_text())["files"])
    symbols = bars.symbols()
    (lo, hi), parts = min(ranges.items())
    with pytest.raises(StorageError, match=r"1\d* duplicated \(set, symbol\) row\(s\), first \(0, "):
        write_final_table(storage, {**ranges, (lo, hi): parts + parts[:1]}, portfolio, symbols=symbols)
    with pytest.raises(StorageError, match=r"missing \(set, symbol\) row\(s\), first \(0, "):
        write_final_table(storage, {**ranges, (lo, hi): parts[1:]}, portfolio, symbols=symbols)
    _flip(run_dir / "results" / "part-000003.parquet")
    with pytest.raises(StorageError, match="part-000003.parquet fails its checksum"):
        write_final_table(storage, ranges, portfolio, symbols=symbols, records=records)
    assert (run_dir / "results.parquet").read_bytes() == reference  # nothing half-written


def test_parts_of_another_layout_are_not_trusted(tmp_path, bars, client):
    """Two sweeps of one run id with different task layouts in one run directory: no duplicated row.

    The run directory holds the committed parts of layout A (fine tasks) when a run with
    layout B (coarse tasks: another batch_seconds) takes it over and resumes.
    """
    a = _sweep(bars, tmp_path / "a", client, 1e-5)
    b = _sweep(bars, tmp_path / "b", client, 60.0)
    assert a.run_id == b.run_id and a.summary["tasks"] > b.summary["tasks"]
    run_dir = tmp_path / "a" / "runs" / a.run_id
    reference = a.table
    _interrupted(run_dir)
    shutil.copy(tmp_path / "b" / "runs" / b.run_id / "run.json", run_dir / "run.json")  # layout B
    run = json.loads((run_dir / "run.json").read_text())
    run["status"] = "running"
    run.pop("summary")
    (run_dir / "run.json").write_text(json.dumps(run))
    resumed = _sweep(bars, tmp_path / "a", client, 60.0)
    assert resumed.summary["tasks_resumed"] == 0
    assert resumed.summary["recomputed_parts"] == b.summary["tasks"]  # A's markers at B's part numbers
    table = resumed.table
    assert len(table) == len(reference) and not table.duplicated(["set_id", "symbol"]).any()
    assert (reference["symbol"] == "PORTFOLIO").sum() == 6
    _same_bits(table, reference)


def test_portfolio_rows_are_bit_identical_whatever_the_layout(tmp_path, bars, client, monkeypatch):
    """The PORTFOLIO sums do not depend on how the layout groups symbols or the order parts are merged in.

    One task holding every symbol adds the sleeves ((a + b) + c) + d; a layout of the groups
    [a, b] and [c, d] adds (a + b) + (c + d), which in plain float64 differs in the last bits.
    The layout's floor of 4 tasks a thread is lifted, so the first run is one task on any machine.
    """
    monkeypatch.setattr(layout, "_MIN_TASK_SECONDS", 1e9)
    whole = _sweep(bars, tmp_path / "whole", client, 60.0)
    assert whole.summary["tasks"] == 1
    expected = whole.table  # read now: the same run directory is rewritten below
    run_dir = tmp_path / "whole" / "runs" / whole.run_id
    run = _interrupted(run_dir)
    s = bars.symbols()
    run["layout"] = [[s[:2], 0, 3, False], [s[2:], 0, 3, False], [s[:2], 3, 6, False], [s[2:], 3, 6, False]]
    (run_dir / "run.json").write_text(json.dumps(run))
    split = _sweep(bars, tmp_path / "whole", client, 60.0)
    assert split.summary["recomputed_parts"] == 1 and split.summary["tasks"] == 4
    assert len(list((run_dir / "portfolio").glob("part-*.acc"))) == 4  # reduced from the parts
    _same_bits(split.table, expected)

    # streamed in chunks of 200 bars, groups [a, b, c] and [d]: windows summed and merged in time order
    run = _interrupted(run_dir)
    run.update(layout=[[s[:3], 0, 6, True], [s[3:], 0, 6, True]], chunk_rows=200)
    (run_dir / "run.json").write_text(json.dumps(run))
    streamed = _sweep(bars, tmp_path / "whole", client, 60.0)
    assert streamed.summary["recomputed_parts"] == 2 and streamed.summary["tasks"] == 2
    assert len(list((run_dir / "portfolio").glob("part-000000/w-*.acc"))) > 3
    _same_bits(streamed.table, expected)


def test_reduce_and_assembly_give_the_same_bits_held_or_read_twice(tmp_path, bars, client, monkeypatch):
    """The reduce reads a range's accumulator files once when they fit _HOLD_BYTES, else each twice; the
    final table is assembled in blocks of _BLOCK_ROWS rows. Every combination gives the same table."""
    from admf_dask.sweep import portfolio, results

    whole = _sweep(bars, tmp_path, client, 60.0)
    expected = whole.table
    run_dir = tmp_path / "runs" / whole.run_id
    s = bars.symbols()
    run = _interrupted(run_dir)
    run["layout"] = [[s[:1], 0, 6, False], [s[1:3], 0, 6, False], [s[3:], 0, 6, False]]
    (run_dir / "run.json").write_text(json.dumps(run))
    held = _sweep(bars, tmp_path, client, 60.0)  # 3 parts of one range: reduced from 3 files
    assert held.summary["tasks"] == 3
    _same_bits(held.table, expected)
    monkeypatch.setattr(portfolio, "_HOLD_BYTES", 0)  # every file read twice
    monkeypatch.setattr(results, "_BLOCK_ROWS", 7)  # blocks of one set (5 rows): a part read per block
    _interrupted(run_dir)
    twice = _sweep(bars, tmp_path, client, 60.0)
    assert twice.summary["tasks_resumed"] == 3  # the parts stand: only the reduce and the table are redone
    _same_bits(twice.table, expected)


def test_parts_one_task_computes_in_turn_are_byte_for_byte_those_of_a_task_each(tmp_path, bars, client,
                                                                                monkeypatch):
    """A task takes consecutive whole-range parts of one symbol group while they fit its target work
    (layout.bundle_parts), the first 2 x threads and the last 4 x threads parts one each; every part, marker and the final tables are
    the bytes of one task a part, and a part lost from a bundle is resumed alone."""
    from distributed import get_task_stream

    from admf_dask.sweep import run as run_mod

    config = SweepConfig(strategy="sma_cross", params={"fast": [5, 10, 15, 20, 25, 30, 35, 40], "slow": [50, 60]},
                         commission=0.001, batch_seconds=60.0)
    root = StorageRef.make(str(tmp_path))
    first = run_sweep(config, bars, root, client, progress=False, echo=lambda _: None)
    run_dir = tmp_path / "runs" / first.run_id

    def rerun(**patch):  # the run again from no part, one set a part (16 parts), the probe fixed
        run = _interrupted(run_dir)
        run.update(layout=[[bars.symbols(), i, i + 1, False] for i in range(16)], seconds_per_bar_probe=1e-9, **patch)
        (run_dir / "run.json").write_text(json.dumps(run))
        for d in ("done", "results"):
            shutil.rmtree(run_dir / d, ignore_errors=True)
        with get_task_stream(client) as ts:
            result = run_sweep(config, bars, root, client, progress=False, echo=lambda _: None)
        files = {str(f.relative_to(run_dir)): f.read_bytes() for d in ("done", "results") for f in (run_dir / d).iterdir()}
        files.update((n, (run_dir / n).read_bytes()) for n in ("results.parquet", "portfolio.parquet"))
        return result, files, sorted(str(t["key"]).split("-part-")[1] for t in ts.data if "-part-" in str(t["key"]))

    with monkeypatch.context() as m:
        m.setattr(run_mod, "bundle_parts", lambda parts, *_: [[i] for i in range(len(parts))])
        _, alone, keys = rerun()
    assert len(keys) == 16 and len(alone) == 2 * 16 + 2
    bundled, together, keys = rerun()
    assert bundled.summary["tasks"] == 16  # parts, as the layout has them
    # 2 threads: the first 4 and the last 8 parts alone, the 4 between in one task (their estimated work is far
    # under the 0.01 s floor)
    assert keys == ["000000", "000001", "000002", "000003", "000004-000007"] + [f"{j:06d}" for j in range(8, 16)]
    assert together == alone
    # part 5 lost (its marker gone): the rerun computes it alone, the table the same bytes
    (run_dir / "done" / "part-000005.json").unlink()
    run = _interrupted(run_dir)
    (run_dir / "run.json").write_text(json.dumps(run))
    with get_task_stream(client) as ts:
        resumed = run_sweep(config, bars, root, client, progress=False, echo=lambda _: None)
    assert resumed.summary["tasks_resumed"] == 15
    assert sorted(str(t["key"]).split("-part-")[1] for t in ts.data if "-part-" in str(t["key"])) == ["000005"]
    assert (run_dir / "results.parquet").read_bytes() == alone["results.parquet"]
    assert (run_dir / "portfolio.parquet").read_bytes() == alone["portfolio.parquet"]


def _same_bits(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == list(expected.columns) and len(got) == len(expected)
    for col in expected.columns:
        a, b = got[col].to_numpy(), expected[col].to_numpy()
        if a.dtype.kind == "f":
            assert b.dtype == a.dtype, col
            differ = np.flatnonzero(a.view(np.int64) != b.view(np.int64))
            assert not len(differ), f"{col}: {len(differ)} rows differ in their bits, first row {differ[0]}"
        else:
            assert list(a) == list(b), col


def test_other_readers_see_typed_columns_and_the_runs_metadata(tmp_path, bars, client):
    """results.parquet: n_trades int64 and the run's identity in its key-value metadata; a signal part:
    a UTC timestamp column and a symbol column, as pandas reads them, and still replayable."""
    import pyarrow.parquet as pq

    from admf_dask.runs import load_run
    from admf_dask.signals import SignalsConfig, generate_signals

    result = _sweep(bars, tmp_path, client, 60.0)
    path = tmp_path / "runs" / result.run_id / "results.parquet"
    schema = pq.read_schema(path)
    assert str(schema.field("n_trades").type) == "int64" and str(schema.field("sharpe").type) == "double"
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    run = json.loads((path.parent / "run.json").read_text())
    assert meta["admf.run_id"] == result.run_id and meta["admf.data_fingerprint"] == bars.fingerprint
    assert json.loads(meta["admf.config"]) == run["config"] and meta["admf.version"] == run["version"]
    portfolio = pq.read_table(path.parent / "portfolio.parquet")
    assert portfolio.schema.metadata[b"admf.run_id"] == result.run_id.encode()
    loaded = load_run(str(tmp_path), result.run_id)
    assert loaded.table["n_trades"].dtype == "int64" and (loaded.table["n_trades"] > 0).any()

    sigs = generate_signals(SignalsConfig(from_run=result.run_id, top=2), bars, StorageRef.make(str(tmp_path)),
                            client, progress=False, echo=lambda _: None)
    symbol = bars.symbols()[1]
    part = tmp_path / "signals" / sigs.set_id / "parts" / f"{symbol}.parquet"
    frame = pd.read_parquet(part)
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]" and set(frame["symbol"]) == {symbol}
    stamps = bars.read(symbol).timestamp
    assert frame["timestamp"].isin(pd.to_datetime(stamps, utc=True)).all() and len(frame) > 2
    targets = sigs.load(symbol, bars.read(symbol))  # the replay's reader: int64 events on the bars
    assert targets.shape == (2, len(stamps)) and set(np.unique(targets)) <= {-1, 0, 1}

    # an interrupted generation (no manifest yet) with a truncated part: generated again, not trusted
    manifest = json.loads((part.parent.parent / "_signals.json").read_text())
    (part.parent.parent / "_signals.json").unlink()
    part.write_bytes(part.read_bytes()[:-40])
    again = generate_signals(SignalsConfig(from_run=result.run_id, top=2), bars, StorageRef.make(str(tmp_path)),
                             client, progress=False, echo=lambda _: None)
    assert again.manifest["parts"][symbol]["sha256"] == manifest["parts"][symbol]["sha256"]


def test_the_reduces_portfolio_rows_are_checked_when_the_final_table_reads_them(tmp_path, bars, client, monkeypatch):
    """The rows a reduce task writes (portfolio/rows-*.parquet) carry its size and sha256 to the final table, like
    every part: a byte flipped between the reduce and the table is refused, and nothing is written."""
    import admf_dask.sweep.run as run_module

    real = run_module.write_final_table
    flipped = []

    def damage_then_write(storage, ranges, portfolio, *args, **kwargs):
        for name in portfolio.values():
            _flip(Path(storage.path(name)))
            flipped.append(name)
        return real(storage, ranges, portfolio, *args, **kwargs)

    monkeypatch.setattr(run_module, "write_final_table", damage_then_write)
    with pytest.raises(StorageError, match=r"portfolio/rows-\d+\.parquet fails its checksum"):
        _sweep(bars, tmp_path, client, 1e-5)
    assert flipped  # the layout split a range, so a reduce wrote rows
    assert not list((tmp_path / "runs").glob("*/results.parquet"))
