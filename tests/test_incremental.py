"""Incremental runs: a sweep over data that only grew goes on from the state its last run saved.

The oracle is a fresh full run of the same sweep on the grown data, in another storage
root (the whole-series path, itself checked against backtesting.py and a plain loop
elsewhere): statistics rows bit for bit, portfolio rows within 1e-12. The bars each
run read are counted on the workers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from admf_dask.bars import BarStore, Bars, generate_bars
from admf_dask.cluster import connect
from admf_dask.errors import StorageError
from admf_dask.storage import StorageRef
from admf_dask.sweep import PORTFOLIO, SweepConfig, run_sweep

THREADS = {"kind": "threads", "n_workers": 2, "dashboard_address": ""}
DAYS = ("2020-06-30", "2020-07-10", "2020-07-31")  # the data as it stood on three evenings


@pytest.fixture(scope="module")
def client():
    with connect(THREADS, echo=lambda m: None) as c:
        yield c


def _history() -> dict[str, Bars]:
    """Four symbols with different calendars: one starts later, one stops early, one misses days."""
    full = {s: generate_bars(s, "2019-01-01", DAYS[-1], seed=11) for s in ("AAA", "BBB", "CCC", "DDD")}
    n = len(full["AAA"])
    holes = np.random.default_rng(2).random(n) < 0.05
    holes[:2] = False
    keep = {"AAA": slice(None), "BBB": slice(60, None), "CCC": slice(None, n - 40), "DDD": ~holes}
    return {s: Bars(s, b.timestamp[keep[s]].copy(), {k: v[keep[s]].copy() for k, v in b.columns.items()})
            for s, b in full.items()}


def _until(b: Bars, day: str) -> Bars:
    k = int(np.searchsorted(b.timestamp, np.datetime64(day + "T23:59:59", "ns").astype(np.int64), side="right"))
    return Bars(b.symbol, b.timestamp[:k].copy(), {c: v[:k].copy() for c, v in b.columns.items()})


def _evenings(tmp_path, changed: tuple[str, ...] = ()) -> list[BarStore]:
    """The dataset on each evening of DAYS, each a store whose manifest says which symbols only grew.

    The lineage is what ``admf ingest --mode append`` records (tests/bars check that);
    ``changed`` symbols get an old bar rewritten on the second evening instead.
    """
    history = _history()
    stores, before = [], None
    for d, day in enumerate(DAYS):
        bars = {s: _until(b, day) for s, b in history.items()}
        for s in changed if d == 1 else ():
            bars[s].columns["volume"][3] += 1.0
        store = BarStore(str(tmp_path / f"day{d}"))
        store.write(list(bars.values()))
        if before is not None:
            path = tmp_path / f"day{d}" / "_dataset.json"
            manifest = json.loads(path.read_text())
            for s, entry in manifest["symbols"].items():
                old = before.entry(s)
                grew = s not in changed or d != 1
                entry["lineage"] = (old.get("lineage", []) + [{k: old[k] for k in ("fingerprint", "rows", "last_ns")}]
                                    if grew else [])
            path.write_text(json.dumps(manifest))
            store.refresh()
        stores.append(store)
        before = store
    return stores


def _same(result, oracle) -> None:
    a, b = result.table, oracle.table
    assert list(a["symbol"]) == list(b["symbol"]) and list(a["set_id"]) == list(b["set_id"])
    stats = [c for c in a.columns if a[c].dtype.kind == "f"]
    sym = (a["symbol"] != PORTFOLIO).to_numpy()
    np.testing.assert_array_equal(a.loc[sym, stats].to_numpy(), b.loc[sym, stats].to_numpy())
    np.testing.assert_allclose(a.loc[~sym, stats].to_numpy(), b.loc[~sym, stats].to_numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("strategy, params, budget", [
    ("sma_cross", {"fast": [3, 8], "slow": [12, 30]}, None),  # day 1 held whole
    ("rsi_reversion", {"window": [7, 14], "lower": [30.0], "upper": [65.0]}, "40KiB"),  # day 1 streamed
])
def test_runs_on_grown_data_go_on_from_the_last_run(tmp_path, client, strategy, params, budget):
    stores = _evenings(tmp_path)
    config = SweepConfig(strategy=strategy, params=params, direction="long_only", commission=0.001,
                         batch_seconds=0.001, memory_budget=budget)
    root = StorageRef.make(str(tmp_path / "root"))
    first = run_sweep(config, stores[0], root, client, echo=lambda m: None, progress=False)
    assert first.summary["incremental_symbols"] == 0
    for d in (1, 2):
        result = run_sweep(config, stores[d], root, client, echo=lambda m: None, progress=False)
        oracle = run_sweep(config, stores[d], StorageRef.make(str(tmp_path / f"full{d}")), client,
                           echo=lambda m: None, progress=False)
        _same(result, oracle)
        new = sum(stores[d].entry(s)["rows"] - stores[d - 1].entry(s)["rows"] for s in stores[d].symbols())
        assert result.summary["incremental_symbols"] == 4 and result.summary["full_symbols"] == 0
        # every set range's tasks read the new bars of their symbols, and nothing else
        ranges = {(lo, hi) for _, lo, hi, *_ in json.loads((tmp_path / "root" / "runs" / result.run_id /
                                                            "run.json").read_text())["layout"]}
        assert result.summary["bars_read"] == new * len(ranges)
        assert oracle.summary["bars_read"] >= 10 * new


def test_symbols_whose_history_changed_are_recomputed_in_full(tmp_path, client):
    stores = _evenings(tmp_path, changed=("BBB",))
    config = SweepConfig(strategy="sma_cross", params={"fast": [3, 8], "slow": [12, 30]}, batch_seconds=0.001,
                         memory_budget="40KiB")  # symbol groups of one or two: parts that change, parts that grow
    root = StorageRef.make(str(tmp_path / "root"))
    first = run_sweep(config, stores[0], root, client, echo=lambda m: None, progress=False)
    layout = json.loads((tmp_path / "root" / "runs" / first.run_id / "run.json").read_text())["layout"]
    assert any("BBB" not in group for group, *_ in layout)
    result = run_sweep(config, stores[1], root, client, echo=lambda m: None, progress=False)
    oracle = run_sweep(config, stores[1], StorageRef.make(str(tmp_path / "full")), client, echo=lambda m: None,
                       progress=False)
    _same(result, oracle)
    assert 1 <= result.summary["full_symbols"] < 4
    assert result.summary["incremental_symbols"] == 4 - result.summary["full_symbols"]
    # the next evening every symbol only grew again: all of it goes on, from a run that mixed both
    third = run_sweep(config, stores[2], root, client, echo=lambda m: None, progress=False)
    _same(third, run_sweep(config, stores[2], StorageRef.make(str(tmp_path / "full2")), client,
                           echo=lambda m: None, progress=False))
    assert third.summary["incremental_symbols"] == 4


def test_a_damaged_saved_state_is_one_clear_error_and_force_recomputes(tmp_path, client):
    stores = _evenings(tmp_path)
    config = SweepConfig(strategy="sma_cross", params={"fast": [3], "slow": [12]})
    root = StorageRef.make(str(tmp_path / "root"))
    first = run_sweep(config, stores[0], root, client, echo=lambda m: None, progress=False)
    state = next((tmp_path / "root" / "runs" / first.run_id / "state").iterdir())
    raw = bytearray(state.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    state.write_bytes(bytes(raw))
    with pytest.raises(StorageError, match="does not match its commit record") as err:
        run_sweep(config, stores[1], root, client, echo=lambda m: None, progress=False)
    assert state.name in str(err.value)
    result = run_sweep(config, stores[1], root, client, force=True, echo=lambda m: None, progress=False)
    assert result.summary["full_symbols"] == 4
    _same(result, run_sweep(config, stores[1], StorageRef.make(str(tmp_path / "full")), client,
                            echo=lambda m: None, progress=False))


def test_replays_over_a_grown_signal_set_go_on_from_the_last_replay(tmp_path, client):
    from admf_dask.replay import ReplayConfig, run_replay
    from admf_dask.signals import SignalsConfig, generate_signals

    stores = _evenings(tmp_path)
    members = [{"strategy": "sma_cross", "params": {"fast": 5, "slow": 20}},
               {"strategy": "rsi_reversion", "params": {"window": 14}}]
    root, full = StorageRef.make(str(tmp_path / "root")), StorageRef.make(str(tmp_path / "full"))

    def replay(store, where):
        signal_set = generate_signals(SignalsConfig(configs=members), store, where, client, echo=lambda m: None,
                                      progress=False)
        return run_replay(ReplayConfig(signals=signal_set.set_id, grid=[0, 0.5, 1], batch_seconds=0.001), where,
                          client, echo=lambda m: None, progress=False)

    replay(stores[0], root)
    result = replay(stores[1], root)
    assert result.summary["incremental_symbols"] == 4
    new = sum(stores[1].entry(s)["rows"] - stores[0].entry(s)["rows"] for s in stores[1].symbols())
    assert 0 < result.summary["bars_read"] <= new * result.summary["tasks"]
    _same(result, replay(stores[1], full))


def test_the_nightly_flow_from_the_shell(tmp_path):
    """Day 1 ingested and swept; day 2's bars ingested with --mode append; the same sweep again.

    Each `admf` is a process of its own, as cron runs them; the oracle is the same sweep
    in a fresh storage root."""
    import subprocess
    import sys

    import pandas as pd

    history = _history()

    def csv(day: str, after: str | None, name: str) -> str:
        frames = []
        for s, b in history.items():
            b = _until(b, day)
            keep = b.timestamp > (pd.Timestamp(after + "T23:59:59", tz="UTC").value if after else -1)
            frames.append(pd.DataFrame({"timestamp": pd.to_datetime(b.timestamp[keep], utc=True), "symbol": s,
                                        **{c: v[keep] for c, v in b.columns.items()}}))
        path = tmp_path / name
        pd.concat(frames).to_csv(path, index=False)
        return str(path)

    admf = [sys.executable, "-m", "admf_dask.cli"]
    store = str(tmp_path / "bars")
    sweep = ["sweep", store, "-s", "sma_cross", "-p", "fast=3,8", "-p", "slow=12,30", "--cluster", "threads",
             "--batch-seconds", "0.001"]

    def run(*args: str) -> dict:
        done = subprocess.run([*admf, "--json", *args], capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    run("ingest", store, csv(DAYS[0], None, "day1.csv"))
    first = run(*sweep, "--storage", str(tmp_path / "root"))
    appended = run("ingest", store, "--mode", "append", csv(DAYS[1], DAYS[0], "day2.csv"))
    assert {c["change"] for c in appended["changes"].values()} <= {"append", "unchanged"}
    second = run(*sweep, "--storage", str(tmp_path / "root"))
    oracle = run(*sweep, "--storage", str(tmp_path / "full"))
    assert second["run_id"] == oracle["run_id"] != first["run_id"]
    assert second["incremental_from"] == first["run_id"] and second["incremental_symbols"] == 4
    new = sum(c["rows"] - c["rows_before"] for c in appended["changes"].values())
    assert 0 < second["bars_read"] <= new * second["tasks"] < oracle["bars_read"]

    def table(root: str) -> pd.DataFrame:
        return pd.read_parquet(tmp_path / root / "runs" / second["run_id"] / "results.parquet")

    a, b = table("root"), table("full")
    stats = [c for c in a.columns if a[c].dtype.kind == "f"]
    sym = (a["symbol"] != PORTFOLIO).to_numpy()
    np.testing.assert_array_equal(a.loc[sym, stats].to_numpy(), b.loc[sym, stats].to_numpy())
    np.testing.assert_allclose(a.loc[~sym, stats].to_numpy(), b.loc[~sym, stats].to_numpy(), rtol=1e-12, atol=1e-12)
