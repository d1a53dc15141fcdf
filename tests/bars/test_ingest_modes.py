"""Ingest that respects history: merge (default), append, replace; each version's change and lineage."""

from __future__ import annotations

import json
import re
import textwrap

import numpy as np
import pandas as pd
import pytest

from admf_dask.bars import BarStore, Bars, SyntheticSpec, generate_bars, generate_dataset, ingest
from admf_dask.bars.update import LINEAGE_MAX
from admf_dask.errors import ConfigError, DataError
from tests.conftest import snapshot


def iso(ns) -> str:
    return pd.Timestamp(int(ns), tz="UTC").isoformat()


def cut(bars: Bars, a: int, b: int) -> Bars:
    return Bars(bars.symbol, bars.timestamp[a:b], {c: v[a:b] for c, v in bars.columns.items()})


def at(bars: Bars, day: str) -> int:
    return int(np.searchsorted(bars.timestamp, pd.Timestamp(day, tz="UTC").value))


def to_csv(path, bars: Bars) -> str:
    frame = bars.to_frame().reset_index()
    frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%d")
    frame.to_csv(path, index=False, float_format="%.17g")
    return str(path)


@pytest.fixture
def history():
    """AAA's daily bars 2019-2024; the store starts with 2019-2023 and 2024 arrives later."""
    return generate_bars("AAA", "2019-01-01", "2024-12-31", seed=11)


@pytest.fixture
def store(tmp_path, history):
    s = BarStore(str(tmp_path / "store"))
    ingest(s, [to_csv(tmp_path / "AAA.csv", cut(history, 0, at(history, "2024-01-01")))], granularity="year")
    return s


def assert_bars(got: Bars, want: Bars) -> None:
    np.testing.assert_array_equal(got.timestamp, want.timestamp)
    for c in want.columns:
        np.testing.assert_array_equal(got.columns[c], want.columns[c], err_msg=c)


def test_a_new_year_merges_into_the_history_by_default(tmp_path, store, history):
    """The issue's case: ingesting 2024/AAA.csv took AAA from 2,346 rows to 262. Now it adds them."""
    v2023 = store.symbol_fingerprint("AAA")
    rows, files = store.entry("AAA")["rows"], store.files("AAA")
    report = ingest(store, [to_csv(tmp_path / "AAA.csv", cut(history, at(history, "2024-01-01"), len(history)))])
    fresh = BarStore(store.url)
    assert_bars(fresh.read("AAA"), history)
    added = len(history) - rows
    assert report.changes["AAA"].line() == f"AAA: append, +{added:,} bars ({rows:,} -> {len(history):,} rows)"
    assert report.lines()[0].startswith("ingested 1 symbol(s), 262 bars (merge)")
    entry = fresh.entry("AAA")
    assert entry["change"] == "append"
    assert entry["lineage"] == [{"fingerprint": v2023, "rows": rows, "last_ns": int(history.timestamp[rows - 1])}]
    assert fresh.extends("AAA", v2023) == rows
    assert fresh.extends("AAA", entry["fingerprint"]) == len(history)
    # only the new year was written: the 2019-2023 files are the same files
    assert [f["path"] for f in entry["files"][:-1]] == files


def test_an_identical_overlap_adds_only_the_new_bars(tmp_path, store, history):
    start = at(history, "2023-10-02")
    report = ingest(store, [to_csv(tmp_path / "AAA.csv", cut(history, start, at(history, "2024-02-01")))])
    assert report.changes["AAA"].change == "append"
    assert report.changes["AAA"].added == at(history, "2024-02-01") - at(history, "2024-01-01")
    assert_bars(BarStore(store.url).read("AAA"), cut(history, 0, at(history, "2024-02-01")))
    again = ingest(store, [to_csv(tmp_path / "AAA.csv", cut(history, start, at(history, "2024-02-01")))])
    assert again.changes["AAA"].line() == f"AAA: unchanged, {at(history, '2024-02-01'):,} rows"


def test_bars_inside_the_history_are_a_merge_that_breaks_the_lineage(tmp_path, history):
    gap = [at(history, "2022-03-01"), at(history, "2022-04-01")]
    holey = Bars("AAA", np.delete(history.timestamp, np.arange(*gap)),
                 {c: np.delete(v, np.arange(*gap)) for c, v in history.columns.items()})
    store = BarStore(str(tmp_path / "store"))
    store.write([holey])
    v1 = store.symbol_fingerprint("AAA")
    report = ingest(store, [to_csv(tmp_path / "AAA.csv", cut(history, *gap))])
    assert report.changes["AAA"].line() == (f"AAA: merge, +{gap[1] - gap[0]} bars "
                                            f"({len(holey):,} -> {len(history):,} rows)")
    assert_bars(BarStore(store.url).read("AAA"), history)
    assert store.entry("AAA")["change"] == "merge" and store.entry("AAA")["lineage"] == []
    assert store.extends("AAA", v1) is None
    before = {f["path"] for f in store.refresh().entry("AAA")["files"]}
    assert sum("year=2022" in p for p in before) == 1  # only 2022 was rewritten, the old 2022 file is gone
    assert {p.relative_to(store.url).as_posix() for p in (tmp_path / "store").rglob("*.parquet")} == before


def test_an_overlapping_bar_that_differs_is_an_error_naming_symbol_timestamp_and_file(tmp_path, store, history):
    new = cut(history, at(history, "2023-12-01"), at(history, "2024-01-31"))
    close = new.close.copy()
    i, j = at(new, "2023-12-13"), at(new, "2023-12-20")
    close[[i, j]] *= 1.01
    new = Bars("AAA", new.timestamp, {**new.columns, "close": close, "high": np.maximum(new.high, close)})
    path = to_csv(tmp_path / "AAA.csv", new)
    before = snapshot(store.storage.fs, store.storage.root)
    with pytest.raises(DataError) as err:
        ingest(store, [path])
    message = str(err.value)
    assert message.startswith(f"the bar at {iso(new.timestamp[i])} differs from the stored one (")
    assert "2 overlapping bars differ" in message
    assert f"file {path}" in message and "symbol AAA" in message and "rule merge-conflict" in message
    assert "--on-conflict new" in message
    assert snapshot(store.storage.fs, store.storage.root) == before


def test_on_conflict_new_takes_the_new_bars_and_old_keeps_the_stored_ones(tmp_path, store, history):
    new = cut(history, at(history, "2023-12-01"), at(history, "2024-01-31"))
    volume = new.volume.copy()
    volume[:3] += 1
    new = Bars("AAA", new.timestamp, {**new.columns, "volume": volume})
    path = to_csv(tmp_path / "AAA.csv", new)
    added = at(history, "2024-01-31") - at(history, "2024-01-01")
    rows = store.entry("AAA")["rows"]
    old = ingest(store, [path], on_conflict="old")
    assert old.changes["AAA"].line() == (f"AAA: append, +{added} bars ({rows:,} -> {rows + added:,} rows); "
                                        "3 differing new bars ignored, stored ones kept")
    assert_bars(BarStore(store.url).read("AAA"), cut(history, 0, at(history, "2024-01-31")))
    new_wins = ingest(store, [path], on_conflict="new")
    assert new_wins.changes["AAA"].line() == f"AAA: merge, 3 overwritten ({rows + added:,} -> {rows + added:,} rows)"
    got = BarStore(store.url).read("AAA")
    np.testing.assert_array_equal(got.volume[at(history, "2023-12-01"):], volume)
    assert store.refresh().entry("AAA")["lineage"] == []


def test_append_takes_only_bars_after_the_stored_last_one(tmp_path, store, history):
    last = store.entry("AAA")["last_ns"]
    late = cut(history, at(history, "2023-12-20"), at(history, "2024-01-10"))
    path = to_csv(tmp_path / "AAA.csv", late)
    before = snapshot(store.storage.fs, store.storage.root)
    with pytest.raises(DataError) as err:
        ingest(store, [path], mode="append")
    n_bad = int((late.timestamp <= last).sum())
    assert str(err.value).startswith(f"append mode takes only bars after the stored last bar {iso(last)}; "
                                     f"the first new bar is {iso(late.timestamp[0])} "
                                     f"({n_bad} new bars are not after it)")
    assert f"file {path}" in str(err.value) and "symbol AAA" in str(err.value)
    assert snapshot(store.storage.fs, store.storage.root) == before
    fresh = generate_bars("NEW", "2024-01-01", "2024-01-31", seed=2)
    report = ingest(store, [to_csv(tmp_path / "AAA.csv", cut(history, at(history, "2024-01-01"), len(history))),
                            to_csv(tmp_path / "NEW.csv", fresh)], mode="append")
    assert {s: c.change for s, c in report.changes.items()} == {"AAA": "append", "NEW": "new"}
    assert_bars(BarStore(store.url).read("AAA"), history)


def test_replace_says_how_many_stored_rows_it_removed(tmp_path, store, history):
    v1, rows = store.symbol_fingerprint("AAA"), store.entry("AAA")["rows"]
    only_2024 = cut(history, at(history, "2024-01-01"), len(history))
    report = ingest(store, [to_csv(tmp_path / "AAA.csv", only_2024)], mode="replace")
    assert report.changes["AAA"].line() == (f"AAA: replace, removed {rows:,} stored rows, wrote {len(only_2024)} "
                                            f"({rows:,} -> {len(only_2024)} rows)")
    fresh = BarStore(store.url)
    assert_bars(fresh.read("AAA"), only_2024)
    assert fresh.entry("AAA")["change"] == "replace" and fresh.extends("AAA", v1) is None
    assert len(list((tmp_path / "store").rglob("*.parquet"))) == 1  # the old years' files are removed
    again = ingest(store, [to_csv(tmp_path / "AAA.csv", only_2024)], mode="replace")
    assert again.changes["AAA"].line() == f"AAA: unchanged, {len(only_2024)} rows"


def test_write_and_generate_record_how_each_version_relates_to_the_last(tmp_path, history):
    store = BarStore(str(tmp_path / "store"))
    first = cut(history, 0, at(history, "2021-07-01"))
    assert store.write([first])["symbols"]["AAA"]["change"] == "new"
    v1 = store.symbol_fingerprint("AAA")
    same = store.write([first])["symbols"]["AAA"]
    assert same["change"] == "unchanged" and same["lineage"] == [] and same["fingerprint"] == v1
    # the same bars and more after them, written whole: detected as a pure append (mid-year, so the last
    # year's file differs and is compared bar for bar)
    longer = cut(history, 0, at(history, "2022-02-01"))
    entry = store.write([longer])["symbols"]["AAA"]
    assert entry["change"] == "append" and store.extends("AAA", v1) == len(first)
    # one value of the old bars changed, the rest appended: not an append
    volume = longer.volume.copy()
    volume[5] += 1
    changed = Bars("AAA", longer.timestamp, {**longer.columns, "volume": volume})
    assert store.write([changed])["symbols"]["AAA"]["change"] == "replace"
    assert store.extends("AAA", v1) is None
    spec = SyntheticSpec("2024-01-01", "2024-03-31", seed=5)
    gen = BarStore(str(tmp_path / "gen"))
    assert {e["change"] for e in generate_dataset(gen, ["X", "Y"], spec, progress=False)["symbols"].values()} == {"new"}
    files = sorted(p.name for p in (tmp_path / "gen").rglob("*.parquet"))
    again = generate_dataset(gen, ["X", "Y"], spec, progress=False)
    assert {e["change"] for e in again["symbols"].values()} == {"unchanged"}
    assert sorted(p.name for p in (tmp_path / "gen").rglob("*.parquet")) == files


def test_the_lineage_keeps_the_last_64_versions(tmp_path):
    bars = generate_bars("L", "2024-01-01", "2024-06-28", seed=3)
    store = BarStore("memory://lineage-cap/store")
    store.write([cut(bars, 0, 10)])
    versions = [store.symbol_fingerprint("L")]
    for k in range(10, 10 + LINEAGE_MAX + 2):
        change = store.update([cut(bars, k, k + 1)], mode="append").changes["L"]
        assert change.change == "append"
        versions.append(store.symbol_fingerprint("L"))
    lineage = store.entry("L")["lineage"]
    assert LINEAGE_MAX == 64 and len(lineage) == 64
    assert [v["fingerprint"] for v in lineage] == versions[2:-1]
    assert [v["rows"] for v in lineage] == list(range(12, 12 + 64))
    assert store.extends("L", versions[0]) is None and store.extends("L", versions[2]) == 12


def test_manifests_from_before_lineage_still_read_and_grow_one(tmp_path, history):
    store = BarStore(str(tmp_path / "store"))
    store.write([cut(history, 0, 300)])
    path = tmp_path / "store" / "_dataset.json"
    old = json.loads(path.read_text())
    old.pop("txn")
    for entry in old["symbols"].values():
        del entry["change"], entry["lineage"]
    path.write_text(json.dumps(old))
    legacy = BarStore(str(tmp_path / "store"))
    v1 = legacy.symbol_fingerprint("AAA")
    assert legacy.extends("AAA", v1) == 300 and legacy.extends("AAA", "0" * 64) is None
    assert_bars(legacy.read("AAA"), cut(history, 0, 300))
    legacy.update([cut(history, 300, 320)], mode="append")
    assert BarStore(legacy.url).entry("AAA")["lineage"] == [
        {"fingerprint": v1, "rows": 300, "last_ns": int(history.timestamp[299])}]


def test_bad_mode_and_on_conflict_are_config_errors(tmp_path, store):
    with pytest.raises(ConfigError, match="did you mean 'append'"):
        ingest(store, [str(tmp_path / "x.csv")], mode="apend")
    with pytest.raises(ConfigError, match="on_conflict must be new or old.*did you mean 'new'"):
        store.update([], on_conflict="neww")
    with pytest.raises(ConfigError, match="on_conflict applies to mode merge only"):
        store.update([], mode="append", on_conflict="new")


def test_the_ingest_command_takes_a_mode_and_reports_each_symbol(tmp_path, history, capsys):
    from admf_dask.cli import main

    def admf(*args: str) -> int:  # the console entry: it always exits, with the command's status
        with pytest.raises(SystemExit) as exit_:
            main(["-q", *args])
        return exit_.value.code

    root = str(tmp_path / "store")
    assert admf("ingest", root, to_csv(tmp_path / "AAA.csv", cut(history, 0, 100))) == 0
    assert admf("ingest", root, to_csv(tmp_path / "AAA.csv", cut(history, 100, 120)), "--mode", "append") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "  AAA: new, 100 rows" and out[3] == "  AAA: append, +20 bars (100 -> 120 rows)"
    assert admf("ingest", root, to_csv(tmp_path / "AAA.csv", cut(history, 110, 130)), "--mode", "append") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: append mode takes only bars after the stored last bar")
    assert admf("ingest", root, to_csv(tmp_path / "AAA.csv", cut(history, 0, 50)), "--mode", "replace") == 0
    assert "AAA: replace, removed 120 stored rows, wrote 50 (120 -> 50 rows)" in capsys.readouterr().out
    try:
        main(["ingest", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    help_text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "--mode [merge|append|replace]" in help_text and "--on-conflict [new|old]" in help_text
    assert "Stored history is kept" in help_text and "are replaced" not in help_text


def test_the_workflow_ingest_step_takes_mode_and_on_conflict(tmp_path, history):
    from admf_dask.workflow import load_workflow, run_workflow

    (tmp_path / "csv").mkdir()
    to_csv(tmp_path / "csv" / "AAA.csv", cut(history, 0, 40))

    def workflow(text):
        path = tmp_path / "wf.yaml"
        path.write_text(textwrap.dedent(text))
        return load_workflow(path)

    with pytest.raises(ConfigError) as err:
        workflow("storage: store\nsteps:\n  - ingest: {dataset: d, files: [csv/AAA.csv], mode: apend}\n")
    assert "steps[0].ingest.mode" in str(err.value) and "did you mean 'append'" in str(err.value)
    with pytest.raises(ConfigError, match="steps\\[0\\].ingest.on_conflict.*did you mean 'old'"):
        workflow("storage: store\nsteps:\n  - ingest: {dataset: d, files: [csv/AAA.csv], on_conflict: odl}\n")
    lines = []
    wf = workflow("""\
        storage: store
        cluster: threads
        steps:
          - ingest: {dataset: d, files: [csv/AAA.csv]}
          - ingest: {dataset: d, files: [csv/AAA.csv], mode: replace}
        """)
    run_workflow(wf, echo=lines.append)
    text = "\n".join(lines)
    assert "\n  AAA: new, 40 rows" in text and "(replace); dataset fingerprint" in text
    assert "\n  AAA: unchanged, 40 rows" in text
    wf = workflow("storage: store\ncluster: threads\nsteps:\n"
                  "  - ingest: {dataset: d, files: [csv/AAA.csv], mode: append}\n")
    with pytest.raises(DataError, match="append mode takes only bars after the stored last bar"):
        run_workflow(wf, echo=lines.append)
