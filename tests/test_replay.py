"""Signal sets and replay: exact against the sweep, independent of indicators, safe on bad input."""

from __future__ import annotations

import subprocess
import sys

import fsspec
import numpy as np
import pandas as pd
import pytest

from admf_dask.backtest import backtest
from admf_dask.bars import BarStore, generate_bars, symbol_names
from admf_dask.cluster import connect
from admf_dask.errors import ConfigError, DataError
from admf_dask.kernels.simulate import simulate_stats
from admf_dask.kernels.stats import STAT_NAMES, periods_per_year
from admf_dask.replay import ReplayConfig, indicator_runs, run_replay
from admf_dask.signals import MANIFEST, SignalSet, SignalsConfig, generate_signals
from admf_dask.storage import StorageRef
from admf_dask.sweep import SweepConfig, run_sweep

from .conftest import snapshot

THREADS = {"kind": "threads", "n_workers": 2, "dashboard_address": ""}
LOCAL = {"kind": "local", "n_workers": 2, "dashboard_address": ""}
GRID = {"fast": [5, 10, 20], "slow": [30, 60]}
COSTS = {"commission": 0.001, "stop_loss": 0.08}


def _bars(store: BarStore, seed: int = 5) -> BarStore:
    store.write([generate_bars(s, "2018-01-01", "2021-12-31", seed=seed) for s in symbol_names(4)])
    return store


@pytest.fixture
def dataset(tmp_path):
    return _bars(BarStore(str(tmp_path / "bars")))


def _sweep_signals_replay(root: StorageRef, bars: BarStore, cluster) -> tuple:
    """Sweep, store its top 3, replay each member alone: (sweep, set, replay, runs per phase)."""
    config = SweepConfig(strategy="sma_cross", params=GRID, direction="long_short", batch_seconds=1e-4, **COSTS)
    with connect(cluster) as client:
        swept = run_sweep(config, bars, root, client, progress=False)
        before = indicator_runs(client)
        signal_set = generate_signals(SignalsConfig(from_run=swept.run_id, top=3), bars, root, client,
                                      progress=False)
        middle = indicator_runs(client)
        one_hot = np.eye(3).tolist()
        replayed = run_replay(ReplayConfig(signals=signal_set.set_id, rule="fraction", weights=one_hot,
                                           batch_seconds=1e-4), root, client, progress=False)
    computed_in_signals = sum(n - before.get(pid, 0) for pid, n in middle.items())
    return swept, signal_set, replayed, computed_in_signals


def _member_rows(swept, member) -> pd.DataFrame:
    rows = swept.per_symbol
    mask = np.logical_and.reduce([rows[k] == v for k, v in member.params.items()])
    return rows[mask].sort_values("symbol").reset_index(drop=True)


def _assert_replay_is_exact(swept, signal_set, replayed):
    assert len(signal_set.members) == 3
    assert [m.params for m in signal_set.members] == [
        {k: int(r[k]) for k in GRID} for _, r in swept.top(3).iterrows()]
    for j, member in enumerate(signal_set.members):
        mine = replayed.per_symbol[replayed.per_symbol["set_id"] == j].sort_values("symbol").reset_index(drop=True)
        theirs = _member_rows(swept, member)
        assert list(mine["symbol"]) == list(theirs["symbol"]) and len(mine) == 4
        for col in STAT_NAMES:  # bit for bit: the same targets through the same simulation step
            np.testing.assert_array_equal(mine[col].to_numpy(float), theirs[col].to_numpy(float), err_msg=col)
        mine_p = replayed.portfolio[replayed.portfolio["set_id"] == j].iloc[0]
        theirs_p = swept.portfolio.set_index(list(GRID)).loc[tuple(member.params[k] for k in GRID)]
        for col in STAT_NAMES:
            assert mine_p[col] == pytest.approx(theirs_p[col], rel=1e-12, nan_ok=True), col


def test_replaying_one_configuration_reproduces_its_backtest_exactly_on_local_disk(tmp_path, dataset):
    """On worker processes: the replay computes no indicator (counted in every process); phase 1 did."""
    swept, signal_set, replayed, computed_in_signals = _sweep_signals_replay(
        StorageRef.make(str(tmp_path / "root")), dataset, LOCAL)
    _assert_replay_is_exact(swept, signal_set, replayed)
    assert replayed.summary["indicators_computed"] == 0
    # phase 1 loaded the sweep's indicators from the hub's storage cache; the next test shows the
    # counter does see indicators computed (on a cold cache), so these zeros are measured, not assumed
    assert computed_in_signals == 0


def test_the_indicator_counter_sees_phase_one_compute(tmp_path, dataset):
    """The check behind "computes no indicator" can fail: signals made on a cold cache count their kernels."""
    root = StorageRef.make(str(tmp_path / "root"))
    config = SignalsConfig(configs=[{"strategy": "sma_cross", "params": {"fast": 5, "slow": 30}},
                                    {"strategy": "rsi_reversion", "params": {"window": 14}}])
    with connect(THREADS) as client:
        before = indicator_runs(client)
        generate_signals(config, dataset, root, client, progress=False)
        after = indicator_runs(client)
    # sma 5, sma 30, rsi 14 on each of 4 symbols (threads: one process)
    assert sum(n - before.get(pid, 0) for pid, n in after.items()) == 3 * 4


def test_replaying_one_configuration_reproduces_its_backtest_exactly_on_s3(s3):
    bucket, options = s3
    bars = _bars(BarStore(f"{bucket}/bars", options))
    swept, signal_set, replayed, _ = _sweep_signals_replay(StorageRef.make(f"{bucket}/root", options), bars,
                                                           THREADS)
    _assert_replay_is_exact(swept, signal_set, replayed)
    assert replayed.summary["indicators_computed"] == 0
    assert signal_set.ref.url.startswith("s3://")


def _positions_targets(bars, member) -> np.ndarray:
    """A member's targets from another path: the reference backtest's positions (no stops: sign(pos[t+1]))."""
    result = backtest(bars, member["strategy"], member["params"], commission=0.001)
    pos = np.sign(result.position.to_numpy())
    return np.append(pos[1:], pos[-1]).astype(np.int8)  # the last target is never executed


@pytest.mark.parametrize("rule", ["vote", "fraction"])
def test_vote_and_fraction_against_numpy_combination(tmp_path, dataset, rule):
    members = [{"strategy": "sma_cross", "params": {"fast": 5, "slow": 30}},
               {"strategy": "sma_cross", "params": {"fast": 10, "slow": 60}},
               {"strategy": "momentum", "params": {"window": 40}}]
    weights = [[0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [1.0, -0.5, 0.25]]
    root = StorageRef.make(str(tmp_path / "root"))
    with connect(THREADS) as client:
        signal_set = generate_signals(SignalsConfig(configs=members, commission=0.001), dataset, root, client,
                                      progress=False)
        result = run_replay(ReplayConfig(signals=signal_set.set_id, rule=rule, threshold=0.4, weights=weights,
                                         batch_seconds=1e-4), root, client, progress=False)
    assert result.summary["indicators_computed"] == 0
    for sym in dataset.symbols():
        bars = dataset.read(sym)
        s = np.vstack([_positions_targets(bars, m) for m in members]).astype(np.float64)
        o, h, lo, c = (bars.columns[k] for k in ("open", "high", "low", "close"))
        for i, w in enumerate(weights):
            combined = np.asarray(w) @ s
            if rule == "vote":
                target = np.where(np.abs(combined) >= 0.4, np.sign(combined), 0).astype(np.int8)
            else:
                target = np.clip(combined, -1.0, 1.0)
            want = simulate_stats(o, h, lo, c, target, periods_per_year(bars.timestamp), 10_000.0, 0.001)
            got = result.per_symbol.query("set_id == @i and symbol == @sym")[list(STAT_NAMES)].to_numpy(float)[0]
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, equal_nan=True,
                                       err_msg=f"{rule} {w} {sym}")


def test_an_interrupted_write_is_invisible_and_rerunning_completes_it(tmp_path, dataset):
    root = StorageRef.make(str(tmp_path / "root"))
    config = SignalsConfig(configs=[{"strategy": "sma_cross", "params": {"fast": 5, "slow": 30}}])
    with connect(THREADS) as client:
        complete = generate_signals(config, dataset, root, client, progress=False)
    storage = complete.ref.open()
    storage.fs.rm(storage.path(MANIFEST))
    storage.fs.rm(storage.path("parts", f"{dataset.symbols()[1]}.parquet"))  # as if killed after some parts
    with pytest.raises(DataError, match="manifest _signals.json is missing"):
        SignalSet.open(complete.ref)
    with connect(THREADS) as client:
        with pytest.raises(DataError, match="missing"):
            run_replay(ReplayConfig(signals=complete.set_id, grid=[0, 1]), root, client, progress=False)
        again = generate_signals(config, dataset, root, client, progress=False)
    assert again.manifest["parts"] == complete.manifest["parts"]
    assert SignalSet.open(complete.ref).manifest == again.manifest


# ------------------------------------------------------------------ bad input: one clear error, nothing written


@pytest.fixture
def made(tmp_path, dataset):
    root = StorageRef.make(str(tmp_path / "root"))
    config = SignalsConfig(configs=[{"strategy": "sma_cross", "params": {"fast": 5, "slow": 30}},
                                    {"strategy": "sma_cross", "params": {"fast": 10, "slow": 60}}])
    with connect(THREADS) as client:
        signal_set = generate_signals(config, dataset, root, client, progress=False)
    return root, signal_set


def _unchanged(root: StorageRef, fn):
    fs = fsspec.filesystem("file")
    before = snapshot(fs, root.url)
    with pytest.raises((ConfigError, DataError)) as info:
        fn()
    assert snapshot(fs, root.url) == before
    return info.value


def test_a_set_made_from_another_dataset_is_refused(tmp_path, made):
    root, signal_set = made
    other = _bars(BarStore(str(tmp_path / "other")), seed=6)
    err = _unchanged(root, lambda: run_replay(ReplayConfig(signals=signal_set.set_id, grid=[0, 1]), root, None,
                                              other, progress=False))
    assert isinstance(err, DataError) and "fingerprint" in err.message and err.hint


def test_missing_and_corrupt_manifests_are_refused(made):
    root, signal_set = made
    storage = signal_set.ref.open()
    storage.write_bytes(b'{"format": "admf-signals/1", "members": [', MANIFEST)
    err = _unchanged(root, lambda: run_replay(ReplayConfig(signals=signal_set.set_id, grid=[0, 1]), root, None))
    assert "corrupt" in err.message and MANIFEST in err.where["file"]
    storage.write_json({"format": "admf-signals/1", "members": []}, MANIFEST)
    err = _unchanged(root, lambda: run_replay(ReplayConfig(signals=signal_set.set_id, grid=[0, 1]), root, None))
    assert "corrupt" in err.message
    storage.fs.rm(storage.path(MANIFEST))
    err = _unchanged(root, lambda: run_replay(ReplayConfig(signals=signal_set.set_id, grid=[0, 1]), root, None))
    assert "missing" in err.message


def test_a_corrupt_part_names_its_file(made):
    root, signal_set = made
    storage = signal_set.ref.open()
    sym = signal_set.symbols[2]
    storage.write_bytes(b"not parquet", "parts", f"{sym}.parquet")
    with connect(THREADS) as client, pytest.raises(DataError, match="checksum") as info:
        run_replay(ReplayConfig(signals=signal_set.set_id, grid=[0, 1], batch_seconds=1e-4), root, client,
                   progress=False)
    assert info.value.where["symbol"] == sym


def test_configurations_whose_symbols_differ_are_refused():
    with pytest.raises(ConfigError, match="symbols do not match") as info:
        SignalsConfig(configs=[{"strategy": "sma_cross", "params": {"fast": 5, "slow": 30}, "symbols": ["A", "B"]},
                               {"strategy": "sma_cross", "params": {"fast": 9, "slow": 30}, "symbols": ["A", "C"]}])
    assert info.value.where["key"] == "configs[1].symbols"


def test_weights_of_the_wrong_length_are_refused(made):
    root, signal_set = made
    err = _unchanged(root, lambda: run_replay(ReplayConfig(signals=signal_set.set_id, weights=[[1, 0], [1, 0, 0]]),
                                              root, None))
    assert err.where["key"] == "weights[1]" and "2 member(s)" in err.message


def test_cli_signals_and_replay_with_exit_2_on_bad_weights(tmp_path, dataset):
    root = str(tmp_path / "root")
    run = [sys.executable, "-m", "admf_dask.cli"]
    out = subprocess.run([*run, "signals", dataset.url, "-c", "sma_cross:fast=5,slow=30", "-c",
                          "sma_cross:fast=10,slow=60", "--storage", root, "--cluster", "threads"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    set_id = out.stdout.split()[2]
    out = subprocess.run([*run, "replay", set_id, "--weights", "1,0;0.5", "--storage", root, "--cluster", "threads"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("error:") == 1 and "weights[1]" in out.stderr
    out = subprocess.run([*run, "replay", set_id, "--grid", "0,0.5,1", "--storage", root, "--cluster", "threads",
                          "--top", "3"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "best weights by sharpe" in out.stdout and "indicators: 0 computed" in out.stdout


def test_a_replay_resumes_from_its_committed_tasks(tmp_path, made):
    """The replay runs on the sweep engine: a run cut short keeps its committed tasks and finishes the rest."""
    root, signal_set = made
    config = ReplayConfig(signals=signal_set.set_id, grid=[0, 0.5, 1], rule="fraction", batch_seconds=1e-6)
    with connect(THREADS) as client:
        first = run_replay(config, root, client, progress=False)
        assert first.summary["tasks"] > 2
        run = root.child("runs", first.run_id).open()
        # as if the driver died after all but two tasks committed: their markers and the final table are gone
        for j in (0, first.summary["tasks"] - 1):
            run.fs.rm(run.path("done", f"part-{j:06d}.json"))
        run.fs.rm(run.path("results.parquet"))
        run.write_json({**run.read_json("run.json"), "status": "running"}, "run.json")
        again = run_replay(config, root, client, progress=False)
    assert again.summary["tasks_resumed"] == first.summary["tasks"] - 2
    pd.testing.assert_frame_equal(again.table, first.table)
    assert len(first.table) == 8 * (len(signal_set.symbols) + 1)  # 3x3 grid minus all-zero, + PORTFOLIO rows
