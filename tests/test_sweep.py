"""Sweeps: equal to a plain loop, resumable after SIGKILL (local and S3), tolerant of dying workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

from admf_dask.backtest import backtest
from admf_dask.bars import BarStore, generate_bars, symbol_names
from admf_dask.cluster import connect
from admf_dask.errors import AdmfError, ConfigError
from admf_dask.kernels.stats import STAT_NAMES
from admf_dask.storage import StorageRef
from admf_dask.sweep import SweepConfig, expand_params, layout, run_sweep

THREADS = {"kind": "threads", "n_workers": 2, "dashboard_address": ""}
LOCAL = {"kind": "local", "n_workers": 2, "dashboard_address": ""}

# A user strategy that is slow on purpose (so a sweep can be interrupted midway) and can be made to fail.
SLOW_STRATEGY = '''
import time
import numpy as np
from admf_dask.indicators import IndicatorSpec

def slow_cross(bars, indicators, fast=10, slow=30, delay=0.02, fail_symbol=""):
    """Long while SMA(fast) > SMA(slow); sleeps `delay` seconds per call."""
    time.sleep(delay)
    if bars.symbol == fail_symbol and fast == 15:
        raise ZeroDivisionError("a deliberate bug for fast=15")
    f, s = indicators["fast"], indicators["slow"]
    return np.where(np.isnan(f) | np.isnan(s), 0, np.where(f > s, 1, 0)).astype(np.int8)

slow_cross.indicators = lambda fast=10, slow=30, delay=0.02, fail_symbol="": {
    "fast": IndicatorSpec.make("sma", window=fast), "slow": IndicatorSpec.make("sma", window=slow)}
'''


@pytest.fixture
def slow_module(tmp_path, monkeypatch):
    """Write the slow strategy module where this process and its workers can import it."""
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "slowstrats.py").write_text(SLOW_STRATEGY)
    monkeypatch.syspath_prepend(str(mod_dir))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(mod_dir), os.environ.get("PYTHONPATH", "")]))
    return str(mod_dir)


@pytest.fixture
def dataset(tmp_path):
    store = BarStore(str(tmp_path / "bars"))
    store.write([generate_bars(s, "2018-01-01", "2021-12-31", seed=5) for s in symbol_names(4)])
    return store


def test_grid_expansion_ranges_lists_rules_and_samples():
    sets, dropped = expand_params("sma_cross", {"fast": {"from": 5, "to": 50, "step": 5},
                                                "slow": {"from": 20, "to": 210, "step": 10}})
    assert (len(sets), dropped) == (184, 16)
    assert sets[0] == {"fast": 5, "slow": 20} and all(p["fast"] < p["slow"] for p in sets)
    sample, _ = expand_params("sma_cross", {"fast": [5, 10, 15], "slow": [20, 40]}, sample=3, seed=1)
    assert sample == expand_params("sma_cross", {"fast": [5, 10, 15], "slow": [20, 40]}, sample=3, seed=1)[0]
    assert len(sample) == 3
    with pytest.raises(ConfigError, match="unknown parameter 'fst'.*did you mean 'fast'"):
        expand_params("sma_cross", {"fst": [5]})
    with pytest.raises(ConfigError, match="no parameter set of the grid satisfies.*fast=50 must be < slow=20"):
        expand_params("sma_cross", {"fast": [50], "slow": [20]})
    with pytest.raises(ConfigError, match="unknown metric 'sharp'.*did you mean 'sharpe'"):
        SweepConfig(strategy="sma_cross", metric="sharp")


@pytest.mark.parametrize("strategy,params", [
    ("sma_cross", {"fast": {"from": 5, "to": 25, "step": 5}, "slow": [30, 50, 80]}),
    ("bollinger_reversion", {"window": [10, 20], "k": [1.5, 2.0, 2.5]}),
])
def test_a_sweep_equals_a_plain_single_process_loop(tmp_path, dataset, strategy, params):
    config = SweepConfig(strategy=strategy, params=params, commission=0.001, direction="long_only",
                         start="2019-01-01", batch_seconds=1e-4)
    with connect(THREADS) as client:
        result = run_sweep(config, dataset, StorageRef.make(str(tmp_path)), client, progress=False)
    sets, _ = expand_params(strategy, params)
    assert result.summary["tasks"] > 1
    expected = []
    for set_id, p in enumerate(sets):
        for symbol in dataset.symbols():
            bars = dataset.read(symbol, start="2019-01-01")
            stats = backtest(bars, strategy, p, commission=0.001, direction="long_only").stats
            expected.append({"set_id": set_id, "symbol": symbol, **p, **stats.to_dict()})
    expected = pd.DataFrame(expected)
    got = result.per_symbol
    assert list(got["set_id"]) == list(expected["set_id"]) and list(got["symbol"]) == list(expected["symbol"])
    for col in (*p.keys(), *STAT_NAMES):
        np.testing.assert_allclose(got[col].to_numpy(float), expected[col].to_numpy(float), rtol=1e-12,
                                   equal_nan=True, err_msg=col)


@pytest.mark.parametrize("batch_seconds, reduced", [(1e-4, True), (0.5, False)])
def test_portfolio_rows_are_the_mean_of_the_sleeves(tmp_path, dataset, batch_seconds, reduced, monkeypatch):
    """The equal-weight portfolio row of each set against pandas on backtest() equity curves.

    Both ways to get there: partial accumulators of many tasks merged by reduce tasks, and
    one task per set range that holds every symbol and writes the rows itself. The layout
    splits even a 0.5 s batch into 4 tasks a thread once the probe measures the whole
    sweep above ~0.08 s (a busy CI machine did); lifting that floor makes the 0.5 s case
    one task whatever the machine.
    """
    monkeypatch.setattr(layout, "_MIN_TASK_SECONDS", 1e9)
    params = {"fast": [5, 10], "slow": [30, 60]}
    config = SweepConfig(strategy="sma_cross", params=params, commission=0.001, batch_seconds=batch_seconds)
    with connect(THREADS) as client:
        result = run_sweep(config, dataset, StorageRef.make(str(tmp_path)), client, progress=False)
    partials = list((tmp_path / "runs" / result.run_id).glob("portfolio/part-*.acc"))
    assert bool(partials) == reduced
    sets, _ = expand_params("sma_cross", params)
    portfolio = result.portfolio
    assert list(portfolio["set_id"]) == list(range(len(sets))) and (portfolio["symbol"] == "PORTFOLIO").all()
    for set_id, p in enumerate(sets):
        runs = [backtest(dataset.read(s), "sma_cross", p, commission=0.001) for s in dataset.symbols()]
        curve = pd.concat([r.equity for r in runs], axis=1).ffill().fillna(10_000.0).mean(axis=1)
        row = portfolio.iloc[set_id]
        assert row["total_return"] == pytest.approx(curve.iloc[-1] / curve.iloc[0] - 1, rel=1e-9)
        assert row["max_drawdown"] == pytest.approx((curve / curve.cummax() - 1).min(), rel=1e-9)
        assert row["n_trades"] == sum(len(r.trades) for r in runs)
        assert row["exposure"] == pytest.approx(np.mean([r.stats["exposure"] for r in runs]), rel=1e-12)


def test_a_finished_run_is_not_recomputed_and_force_recomputes(tmp_path, dataset):
    config = SweepConfig(strategy="sma_cross", params={"fast": [5, 10], "slow": [20, 40]})
    root = StorageRef.make(str(tmp_path))
    with connect(THREADS) as client:
        first = run_sweep(config, dataset, root, client, progress=False)
        again = run_sweep(config, dataset, root, client, progress=False)
        assert again.summary["status"] == "complete (already done)"
        pd.testing.assert_frame_equal(again.table, first.table)
        forced = run_sweep(config, dataset, root, client, force=True, progress=False)
    assert forced.summary["status"] == "complete" and forced.summary["tasks_resumed"] == 0
    pd.testing.assert_frame_equal(forced.table, first.table)


def _run_dirs(root):
    """The run directories under ``root/runs`` (not its _leases/ or latest-*.json pointers)."""
    return [p for p in (root / "runs").glob("[0-9a-f]*") if p.is_dir()] if (root / "runs").exists() else []


def test_the_guard_refuses_big_sweeps_unless_told(tmp_path, dataset):
    config = SweepConfig(strategy="sma_cross", params={"fast": [5, 10], "slow": [20, 40]}, max_backtests=10)
    with connect(THREADS) as client:
        with pytest.raises(ConfigError, match="16 backtests, over max_backtests=10.*--yes"):
            run_sweep(config, dataset, StorageRef.make(str(tmp_path)), client, progress=False)
        assert not _run_dirs(tmp_path)
        assert len(run_sweep(config, dataset, StorageRef.make(str(tmp_path)), client, yes=True,
                             progress=False).per_symbol) == 16


def test_a_deterministic_bug_names_strategy_set_and_symbol(tmp_path, dataset, slow_module):
    config = SweepConfig(strategy="slowstrats:slow_cross", params={"fast": [5, 10, 15], "slow": [30],
                         "delay": [0.0], "fail_symbol": ["SYM002"]}, retries=0, batch_seconds=1e-4)
    root = StorageRef.make(str(tmp_path))
    with connect(THREADS) as client:
        with pytest.raises(AdmfError) as err:
            run_sweep(config, dataset, root, client, progress=False)
    message = str(err.value)
    assert "slowstrats:slow_cross" in message and "'fast': 15" in message and "symbol SYM002" in message
    assert "ZeroDivisionError" in message
    (run_dir,) = _run_dirs(tmp_path)
    for marker in (run_dir / "done").glob("*.json") if (run_dir / "done").exists() else []:
        assert (run_dir / "results" / marker.name.replace(".json", ".parquet")).exists()


def _sweep_cmd(bars_url, storage, *extra):
    return [sys.executable, "-m", "admf_dask.cli", "sweep", bars_url, "-s", "slowstrats:slow_cross",
            "-p", "fast=5:15:5", "-p", "slow=30,60", "-p", "delay=0.05", "--batch-seconds", "0.1",
            "--cluster", "local", "--storage", storage, *extra]


def _kill_midway_then_resume(bars, storage, reference_storage, options=()):
    """Run the CLI, SIGKILL the driver once some tasks are committed, rerun, compare with a clean run.

    The clean run is the same sweep in this process on threads: the same run id (a run's identity is not its
    cluster) and the same rows, without a third CLI process and local cluster to start."""
    storage_options = dict(o.split("=", 1) for o in options[1::2]) if options else None
    runs = StorageRef.make(storage, storage_options).open()
    proc = subprocess.Popen(_sweep_cmd(bars.url, storage, *options), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        committed = []
        while time.time() < deadline and proc.poll() is None:
            runs.fs.invalidate_cache()
            committed = runs.fs.glob(runs.path("runs", "*", "done", "*.json"))
            if len(committed) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep finished before it could be interrupted"
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, as a crash or OOM kill would
        proc.wait(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # orphaned local workers, if any
        except ProcessLookupError:
            pass
    runs.fs.invalidate_cache()
    total = len(runs.fs.glob(runs.path("runs", "*", "done", "*.json")))
    resumed = subprocess.run(_sweep_cmd(bars.url, storage, *options), capture_output=True, text=True,
                             timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {total} of" in resumed.stderr
    config = SweepConfig(strategy="slowstrats:slow_cross", batch_seconds=0.1,  # _sweep_cmd's sweep
                         params={"fast": {"from": 5, "to": 15, "step": 5}, "slow": [30, 60], "delay": 0.05})
    with connect(THREADS) as client:
        clean = run_sweep(config, bars, StorageRef.make(reference_storage, storage_options), client,
                          progress=False, echo=lambda _: None)
    runs.fs.invalidate_cache()
    (run_id,) = [p.rsplit("/", 1)[-1] for p in runs.fs.ls(runs.path("runs"), detail=False)
                 if not p.rsplit("/", 1)[-1].startswith(("_", "latest-"))]
    assert run_id == clean.run_id
    ref = StorageRef.make(reference_storage, storage_options).open()
    a = pd.read_parquet(runs.fs.open(runs.path("runs", run_id, "results.parquet")))
    b = pd.read_parquet(ref.fs.open(ref.path("runs", run_id, "results.parquet")))
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 6 * (4 + 1) and not a.duplicated(["set_id", "symbol"]).any()


@pytest.mark.slow
def test_resume_after_sigkill_on_local_disk(tmp_path, dataset, slow_module):
    _kill_midway_then_resume(dataset, str(tmp_path / "interrupted"), str(tmp_path / "clean"))


@pytest.mark.slow
def test_resume_after_sigkill_on_s3(tmp_path, s3, slow_module):
    bucket, options = s3
    store = BarStore(f"{bucket}/bars", options)
    store.write([generate_bars(s, "2018-01-01", "2021-12-31", seed=5) for s in symbol_names(4)])
    flags = []
    for k in ("endpoint_url", "key", "secret"):
        flags += ["-o", f"{k}={options[k]}"]
    _kill_midway_then_resume(store, f"{bucket}/interrupted", f"{bucket}/clean", tuple(flags))


@pytest.mark.slow
def test_a_worker_killed_mid_sweep_is_tolerated(tmp_path, dataset, slow_module):
    config = SweepConfig(strategy="slowstrats:slow_cross", params={"fast": [5, 10, 15, 20], "slow": [30, 60],
                         "delay": [0.05]}, batch_seconds=0.1)
    with connect(THREADS) as client:
        reference = run_sweep(config, dataset, StorageRef.make(str(tmp_path / "clean")), client, progress=False)
    root = StorageRef.make(str(tmp_path / "killed"))
    with connect(LOCAL) as client:
        pids = client.run(os.getpid)
        killed = []

        def kill_one_worker():
            deadline = time.time() + 60
            while time.time() < deadline and not list((tmp_path / "killed").rglob("done/*.json")):
                time.sleep(0.02)
            victim = next(iter(pids.values()))
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

        killer = threading.Thread(target=kill_one_worker)
        killer.start()
        result = run_sweep(config, dataset, root, client, progress=False)
        killer.join()
    assert killed
    pd.testing.assert_frame_equal(result.table, reference.table)
    assert not result.table.duplicated(["set_id", "symbol"]).any() and len(result.table) == 8 * (4 + 1)


@pytest.mark.slow
def test_a_worker_lost_before_the_reduce_has_its_held_parts_computed_again_identically(tmp_path, s3, monkeypatch):
    """On an object store the reduce takes the parts' accumulators from the tasks' results, still on the cluster.
    A worker killed after the tasks finished, before the reduce ran: Dask computes its lost results again (those
    tasks write their files again) and the run equals a clean one, every committed file byte for byte."""
    import hashlib

    import admf_dask.cluster as cluster_module
    from admf_dask.errors import StorageError

    bucket, options = s3
    bars = BarStore(f"{bucket}/bars", options)
    bars.write([generate_bars(s, "2020-01-01", "2021-12-31", seed=5) for s in symbol_names(2)])
    # tasks of one set and one symbol whatever the probe measures (the probe's floor is 1e-10 s a bar): each set's
    # 2 parts are reduced
    config = SweepConfig(strategy="sma_cross", params={"fast": [5, 10], "slow": [30]}, batch_seconds=1e-9)
    real_run_tasks, killed = cluster_module.run_tasks, []

    def kill_a_holder_then_reduce(client, fn, items, **kwargs):
        if kwargs.get("label") == "portfolio":  # every task finished: the reduce is next
            held = [f for args in kwargs["extra_args"] for f in args[-1].values()]
            assert held, "the reduce takes the parts' results still on the cluster"
            holder = client.who_has(held[:1])[held[0].key][0]
            pids = client.run(os.getpid)
            os.kill(pids[holder], signal.SIGKILL)
            killed.append(holder)
            deadline = time.time() + 60
            while holder in client.scheduler_info()["workers"] and time.time() < deadline:
                time.sleep(0.02)  # the scheduler has seen the worker go: its results are lost
        return real_run_tasks(client, fn, items, **kwargs)

    monkeypatch.setattr(cluster_module, "run_tasks", kill_a_holder_then_reduce)
    with connect(LOCAL) as client:
        try:
            lost = run_sweep(config, bars, StorageRef.make(f"{bucket}/lost", options), client, progress=False)
        except StorageError as exc:  # the worker took commits still on their way along (commit_later): a rerun resumes
            assert "commit was lost with their worker" in str(exc), exc
            lost = None
    monkeypatch.setattr(cluster_module, "run_tasks", real_run_tasks)
    assert killed
    with connect(THREADS) as client:
        if lost is None:
            lost = run_sweep(config, bars, StorageRef.make(f"{bucket}/lost", options), client, progress=False)
        clean = run_sweep(config, bars, StorageRef.make(f"{bucket}/clean", options), client, progress=False)
    assert lost.run_id == clean.run_id
    pd.testing.assert_frame_equal(lost.table, clean.table)

    def files(root):
        storage = StorageRef.make(f"{bucket}/{root}/runs/{lost.run_id}", options).open()
        names = [p.split(f"/{lost.run_id}/", 1)[1] for p in storage.fs.find(storage.path())]
        return {n: hashlib.sha256(storage.read_bytes(n)).hexdigest() for n in names
                if n.startswith(("results", "portfolio", "done/"))}

    got, want = files("lost"), files("clean")
    assert len(want) > 3 and got == want


def test_a_sweep_on_dask_scheduler_and_worker_processes(tmp_path, dataset, dask_cluster_processes):
    from distributed import Client

    config = SweepConfig(strategy="rsi_reversion", params={"window": [7, 14], "lower": [20, 30], "upper": [70]})
    with Client(dask_cluster_processes, timeout=30) as c:
        c.wait_for_workers(2, timeout=60)
    with connect({"kind": dask_cluster_processes}) as client:
        remote = run_sweep(config, dataset, StorageRef.make(str(tmp_path / "remote")), client, progress=False)
    with connect(THREADS) as client:
        local = run_sweep(config, dataset, StorageRef.make(str(tmp_path / "local")), client, progress=False)
    assert remote.run_id == local.run_id
    pd.testing.assert_frame_equal(remote.table, local.table)


def test_cli_rejects_a_bad_param_spec_with_exit_2(tmp_path, dataset):
    out = subprocess.run([sys.executable, "-m", "admf_dask.cli", "sweep", dataset.url, "-s", "sma_cross",
                          "-p", "fast=5:10:2:7", "--cluster", "threads"], capture_output=True, text=True)
    assert out.returncode == 2 and "a range is name=from:to" in out.stderr
    out = subprocess.run([sys.executable, "-m", "admf_dask.cli", "sweep", dataset.url, "-s", "sma_crss",
                          "--cluster", "threads"], capture_output=True, text=True)
    assert out.returncode == 2 and "did you mean 'sma_cross'" in out.stderr


def test_accumulator_buffers_are_zeroed_and_reused():
    from admf_dask.sweep.container import _Scratch

    scratch = _Scratch(keep=2)
    a = scratch.take(3, 5)
    assert a.shape == (3, 5) and not a.any()
    a[:] = 7.0
    base = a.base
    scratch.give(a)
    b = scratch.take(2, 6)  # fits in the kept buffer: the same memory, zeroed again
    assert b.shape == (2, 6) and not b.any() and np.shares_memory(b, base)
    c = scratch.take(4, 5)  # the kept buffer is taken: a new one
    assert not np.shares_memory(c, base)
    scratch.give(b)
    scratch.give(c)
    d = scratch.take(3, 4)  # the smallest kept buffer that fits (15 of 15 and 20)
    assert np.shares_memory(d, base)


def test_big_accumulator_buffers_come_from_their_own_mapping_and_are_reused_zeroed():
    import mmap

    from admf_dask.sweep.container import _Scratch

    scratch = _Scratch(keep=2)
    a = scratch.take(64, 10_000)  # 5.1 MB: an anonymous mapping the OS may back with huge pages
    assert a.shape == (64, 10_000) and a.flags.writeable and not a.any()
    root = a
    while isinstance(root.base, np.ndarray):
        root = root.base
    assert isinstance(getattr(root.base, "obj", root.base), mmap.mmap)  # frombuffer: a memoryview of the mapping
    a[:] = 3.0
    scratch.give(a)
    b = scratch.take(32, 20_000)
    assert np.shares_memory(a, b) and not b.any()


def test_the_probe_times_the_kernel_only_on_an_input_that_holds_the_samples_indicators(tmp_path, dataset):
    """Indicators are built once per symbol by the hub, not per task: the probe must not time them."""
    from admf_dask.indicators import computations
    from admf_dask.sweep.layout import _PROBE_SETS, _probe
    from admf_dask.sweep.run import SweepFeed

    config = SweepConfig(strategy="sma_cross", params={"fast": list(range(5, 40)), "slow": [50, 60, 70]})
    sets, _ = expand_params("sma_cross", config.params)
    sample = sets[:_PROBE_SETS]
    feed = SweepFeed(config, sets, dataset, StorageRef.make(str(tmp_path / "root")), client=None)
    before = computations()
    data = feed.probe_input("SYM000", sample, 100_000)
    built = computations() - before
    assert built == len({w for p in sample for w in (p["fast"], p["slow"])})  # each window once, here
    spb = _probe(config, data, sample)
    assert computations() - before == built  # the timed runs computed nothing
    assert 1e-10 <= spb < 1e-5


def test_accumulator_files_round_trip_and_a_damaged_one_is_named(tmp_path):
    from admf_dask.errors import StorageError
    from admf_dask.storage import Storage
    from admf_dask.sweep.portfolio import _arrays_parts, _arrays_read

    rng = np.random.default_rng(3)
    arrays = {"equity": rng.random((4, 7)), "trades": rng.random((4, 9)), "extra": np.zeros((0, 3)),
              "timeline": np.arange(7, dtype=np.int64) * 86_400_000_000_000}
    storage = Storage(str(tmp_path))
    storage.write_bytes(_arrays_parts(arrays), "portfolio/part-000001.acc")
    raw = storage.read_bytes("portfolio/part-000001.acc")
    back = _arrays_read(raw, "part-1")
    assert list(back) == list(arrays)
    for name, a in arrays.items():
        assert back[name].dtype == a.dtype and back[name].shape == a.shape and np.array_equal(back[name], a)
        assert back[name].flags.writeable  # numba would compile (and each worker load) read-only variants
    for damaged in (raw[:-8], raw + b"x", b"PK" + raw[2:]):
        with pytest.raises(StorageError, match="damaged portfolio accumulators") as info:
            _arrays_read(damaged, "runs/r/portfolio/part-000001.acc")
        assert "runs/r/portfolio/part-000001.acc" in str(info.value)


def test_group_timeline_is_the_union_with_positions_and_is_kept_by_data_key():
    from types import SimpleNamespace

    from admf_dask.bars import Bars
    from admf_dask.kernels.stats import periods_per_year
    from admf_dask.sweep import group_timeline

    a = generate_bars("AAA", "2020-01-01", "2020-12-31", seed=1)
    b = generate_bars("BBB", "2020-03-01", "2021-06-30", seed=2)
    gapped = Bars("CCC", a.timestamp[::3].copy(), {k: v[::3].copy() for k, v in a.columns.items()})
    sets = [SimpleNamespace(bars=x, data_key=f"k-{x.symbol}") for x in (a, b, gapped)]
    tl = group_timeline(sets)
    union = np.unique(np.concatenate([a.timestamp, b.timestamp, gapped.timestamp]))
    np.testing.assert_array_equal(tl.stamps, union)
    for s, pos in zip(sets, tl.positions):
        np.testing.assert_array_equal(pos, np.searchsorted(union, s.bars.timestamp))
        np.testing.assert_array_equal(tl.stamps[pos], s.bars.timestamp)
    assert tl.periods_per_year == periods_per_year(union)
    assert group_timeline(sets) is tl  # same data keys: kept
    aligned = group_timeline([SimpleNamespace(bars=a, data_key="x1"), SimpleNamespace(bars=a, data_key="x2")])
    np.testing.assert_array_equal(aligned.stamps, a.timestamp)
    assert all(np.array_equal(p, np.arange(len(a))) for p in aligned.positions)
    assert aligned.periods_per_year == periods_per_year(a.timestamp)  # the bars' own value, reused
    unkeyed = [SimpleNamespace(bars=a, data_key=""), SimpleNamespace(bars=b, data_key="")]
    assert group_timeline(unkeyed) is not group_timeline(unkeyed)  # no data key: never kept


def test_bars_periods_per_year_is_computed_once():
    from admf_dask.bars import Bars
    from admf_dask.kernels.stats import PeriodsPerYearStream, periods_per_year

    bars = generate_bars("AAA", "2020-01-01", "2020-12-31", seed=1)
    assert bars.periods_per_year() == periods_per_year(bars.timestamp) == 252.0
    assert bars.__dict__["_periods_per_year"] == 252.0
    # the spacing counts an incremental state keeps come from the same single fold of the timestamps
    stream = PeriodsPerYearStream()
    stream.update(bars.timestamp)
    saved = bars.spacing_arrays()
    assert saved.keys() == stream.to_arrays().keys()
    assert all(np.array_equal(saved[k], v) for k, v in stream.to_arrays().items())
    assert bars.__dict__["_spacing_stream"] is bars._spacing()
    minutes = np.datetime64("2024-01-02T14:30", "ns").astype(np.int64) + np.arange(390) * 60 * 10**9
    intraday = Bars("M", minutes, {})
    assert intraday.spacing_arrays()["spacings"].tolist() == [60 * 10**9]
    assert intraday.periods_per_year() == periods_per_year(minutes) == 98280.0
    with pytest.raises(ValueError, match="at least two timestamps"):
        Bars("ONE", minutes[:1], {}).periods_per_year()
    # aligned symbols of a container share one fold; other timestamps keep their own
    twin, shifted = Bars("T", minutes.copy(), {}), Bars("S", minutes + 60 * 10**9, {})
    twin.spacing_from(intraday)
    shifted.spacing_from(intraday)
    assert twin._spacing() is intraday._spacing() and shifted._spacing() is not intraday._spacing()
    assert twin.periods_per_year() == shifted.periods_per_year() == 98280.0


def test_the_last_set_ranges_are_halved_so_the_sweep_ends_in_small_tasks():
    from admf_dask.sweep.layout import _halve_tail

    parts = [(("A", "B"), lo, min(lo + 10, 85)) for lo in range(0, 85, 10)]
    out = _halve_tail(parts, threads=1)
    assert out[:7] == parts[:7]
    assert out[7:] == [(("A", "B"), 70, 75), (("A", "B"), 75, 80), (("A", "B"), 80, 82), (("A", "B"), 82, 85)]
    assert _halve_tail(parts, threads=2) == parts  # 9 ranges for 2 threads: too short to have a tail
    narrow = [(g, lo, lo + 4) for lo in range(0, 32, 4) for g in (("A",), ("B",))]
    halved = _halve_tail(narrow, threads=1)  # every group's tasks of a halved range, each set once per group
    for g in (("A",), ("B",)):
        spans = sorted((lo, hi) for grp, lo, hi in halved if grp == g)
        assert spans == [(lo, lo + 4) for lo in range(0, 24, 4)] + [(24, 26), (26, 28), (28, 30), (30, 32)]
    ones = [(("A",), i, i + 1) for i in range(8)]
    assert _halve_tail(ones, threads=1) == ones  # single sets: nothing to halve


def test_the_layout_counts_what_a_shared_set_costs_so_many_short_symbols_are_grouped_not_ranged():
    """Row 1 of the sweep benchmark (100 daily symbols x 184 sets, 2 threads): cut into set ranges, every
    symbol's set is shared by every range (a task of its own, a pack, a mapping per worker: twice the CPU of
    the whole run, measured), so one range in symbol groups wins whatever the probe's load figure; and a
    part that holds every symbol of its range writes no accumulator, so a single group is not charged one."""
    from admf_dask.sweep.layout import (
        _SHARED_INPUT_SECONDS,
        _TASK_SECONDS,
        _overhead,
        plan_layout,
    )

    symbols = [f"S{i:03d}" for i in range(100)]
    bars = dict.fromkeys(symbols, 2520)
    for load in (0.0005, 0.00138, 0.003):  # 0.00138 s: the kept probe with which the old model chose 9 ranges
        layout = plan_layout(184, symbols, bars, 2.98e-8, 0.5, 2, 4 << 30, 208.0, 200, True, load)["layout"]
        assert {(lo, hi) for _, lo, hi, _ in layout} == {(0, 184)}, load
        assert sorted(s for g, *_ in layout for s in g) == symbols and len(layout) == 8
    whole = [(tuple(symbols), lo, lo + 23) for lo in range(0, 184, 23)]
    assert _overhead(whole, 100, 2520, 0.001) == 100 * (2 * 0.001 + _SHARED_INPUT_SECONDS) + 8 * _TASK_SECONDS


def test_the_probe_times_a_builtin_kernel_in_cpu_time_and_a_users_strategy_by_the_clock(tmp_path, dataset,
                                                                                        slow_module):
    """A busy machine preempts the probe's thread: what the kernel costs plans the layout, not how long the thread
    waited (a probe taken at a busy moment planned another layout). A user's strategy may wait: the clock."""
    from admf_dask.sweep.layout import _probe
    from admf_dask.sweep.run import SweepFeed

    class Preempted:  # the built-in kernel, then 50 ms off the CPU, as a busy machine would take them
        def __init__(self, config):
            self.config = config

        def prepare(self, param_sets):
            return self.config.prepare(param_sets)

        def stats(self, *args, **kwargs):
            out = self.config.stats(*args, **kwargs)
            time.sleep(0.05)
            return out

    for config, builtin in ((SweepConfig(strategy="sma_cross", params={"fast": [5, 10], "slow": [30, 60]}), True),
                            (SweepConfig(strategy="slowstrats:slow_cross",
                                         params={"fast": [5, 10], "slow": [30], "delay": [0.05]}), False)):
        sets, _ = expand_params(config.strategy, config.params)
        feed = SweepFeed(config, sets, dataset, StorageRef.make(str(tmp_path / "root")), client=None)
        data = feed.probe_input("SYM000", sets, 100_000)
        evals = len(sets) * len(data.bars)  # the probe runs every set of a sample this small
        if builtin:
            assert _probe(Preempted(config), data, sets) * evals < 0.05
        else:
            assert _probe(config, data, sets) * evals >= 0.05


def test_the_probe_times_the_whole_container_path_and_rounds_to_a_grid(tmp_path, dataset):
    """probe_path (run on a worker by run_sweep): load, kernel and results measured; the figures the layout
    uses are powers of sqrt(2) within 19 % of the measures, so probe noise rarely changes the layout."""
    import math

    from admf_dask.sweep.layout import _PROBE_SETS, coarse, probe_path
    from admf_dask.sweep.run import SweepFeed

    assert coarse(1.0) == 1.0 and coarse(1.1) == 1.0 and coarse(1.3) == math.sqrt(2) and coarse(0.0) == 0.0
    config = SweepConfig(strategy="sma_cross", params={"fast": [5, 10], "slow": [30, 60]})
    sets, _ = expand_params("sma_cross", config.params)
    feed = SweepFeed(config, sets, dataset, StorageRef.make(str(tmp_path / "root")), client=None)
    rows = dataset.rows_in_range("SYM000", None, None)
    probe = probe_path("SYM000", feed.probe_reader(), config, sets[:_PROBE_SETS], 100_000, rows)
    for key, measured in (("seconds_per_bar", "measured_seconds_per_bar"), ("load_seconds", "measured_load_seconds")):
        assert probe[key] == coarse(probe[measured]) > 0
        assert 2 ** -0.26 <= probe[key] / probe[measured] <= 2 ** 0.26
        assert math.log2(probe[key]) * 2 == round(math.log2(probe[key]) * 2)
    assert probe["measured_seconds_per_bar"] > probe["kernel_seconds_per_bar"] > 0  # the results are in
    assert probe["results_seconds_per_row"] > 0 and probe["rows"] == rows


def test_run_json_records_the_probe_taken_on_a_worker(tmp_path, dataset):
    import json

    from distributed import get_task_stream

    config = SweepConfig(strategy="sma_cross", params={"fast": [5], "slow": [30]})
    with connect(THREADS) as client, get_task_stream(client) as ts:
        result = run_sweep(config, dataset, StorageRef.make(str(tmp_path)), client, progress=False)
    assert [t["key"] for t in ts.data if str(t["key"]).endswith("-probe")], "the probe was a task"
    run = json.loads((tmp_path / "runs" / result.run_id / "run.json").read_text())
    assert run["seconds_per_bar_probe"] == run["probe"]["seconds_per_bar"] > 0
    assert run["probe"]["symbol"] in run["symbols"] and "kept" not in run["probe"]
    # the same configuration again on this machine: the kept probe, the same layout, no probe task
    with connect(THREADS) as client, get_task_stream(client) as ts:
        again = run_sweep(config, dataset, StorageRef.make(str(tmp_path)), client, progress=False, force=True)
    assert not [t["key"] for t in ts.data if str(t["key"]).endswith("-probe")]
    rerun = json.loads((tmp_path / "runs" / again.run_id / "run.json").read_text())
    assert rerun["probe"] == {**run["probe"], "kept": True} and rerun["layout"] == run["layout"]
    # the same bars into another storage root: the probe kept in the user's cache (admf_dask.home)
    other = tmp_path / "other"
    with connect(THREADS) as client, get_task_stream(client) as ts:
        moved = run_sweep(config, dataset, StorageRef.make(str(other)), client, progress=False)
    assert not [t["key"] for t in ts.data if str(t["key"]).endswith("-probe")]
    there = json.loads((other / "runs" / moved.run_id / "run.json").read_text())
    assert there["probe"] == {**run["probe"], "kept": True} and there["layout"] == run["layout"]
    assert moved.table.equals(result.table)
    # the probe is the machine's, not the cluster's: one worker thread plans from the probe two took
    with connect({**THREADS, "n_workers": 1}) as client, get_task_stream(client) as ts:
        alone = run_sweep(config, dataset, StorageRef.make(str(tmp_path / "alone")), client, progress=False)
    assert not [t["key"] for t in ts.data if str(t["key"]).endswith("-probe")]
    assert json.loads((tmp_path / "alone" / "runs" / alone.run_id / "run.json").read_text())["probe"] == \
        {**run["probe"], "kept": True}
    # the user's cache keeps the fastest probe measured (a busy moment's slower one does not replace it);
    # a root keeps its latest
    from admf_dask.sweep.run import _keep_probe, _kept_probe

    what, here, elsewhere = ([{"fast": 5, "slow": 30}], 100, 200), tmp_path / "third", tmp_path / "fourth"
    for spb in (2e-8, 8e-8, 1e-8, 4e-8):
        _keep_probe(StorageRef.make(str(here)), "sweep", config, what, "bars", {"seconds_per_bar": spb})
    assert _kept_probe(StorageRef.make(str(here)), "sweep", config, what, "bars")["seconds_per_bar"] == 4e-8
    assert _kept_probe(StorageRef.make(str(elsewhere)), "sweep", config, what, "bars")["seconds_per_bar"] == 1e-8
