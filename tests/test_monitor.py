"""Dask inspection and the monitor: stage keys, performance reports, /metrics, findings."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from dask.utils import key_split

from admf_dask.bars import BarStore, generate_bars, symbol_names
from admf_dask.cache import IndicatorHub
from admf_dask.indicators import IndicatorPlan, IndicatorSpec
from admf_dask.monitor import findings
from admf_dask.cluster import STAGES, connect
from admf_dask.replay import ReplayConfig, run_replay
from admf_dask.signals import SignalsConfig, generate_signals
from admf_dask.storage import StorageRef
from admf_dask.sweep import SweepConfig, run_sweep

THREADS = {"kind": "threads", "n_workers": 2, "dashboard_address": ""}
GRID = {"fast": [5, 10, 20], "slow": [30, 60]}


@pytest.fixture
def dataset(tmp_path):
    store = BarStore(str(tmp_path / "bars"))
    store.write([generate_bars(s, "2019-01-01", "2021-12-31", seed=5) for s in symbol_names(4)])
    return store


def test_every_task_of_a_sweep_signals_and_replay_is_keyed_by_its_stage(tmp_path, dataset):
    from distributed import get_task_stream

    root = StorageRef.make(str(tmp_path / "store"))
    config = SweepConfig(strategy="sma_cross", params=GRID, batch_seconds=1e-4)
    with connect(THREADS) as client, get_task_stream(client) as stream:
        swept = run_sweep(config, dataset, root, client, progress=False)
        signal_set = generate_signals(SignalsConfig(from_run=swept.run_id, top=2), dataset, root, client,
                                      progress=False)
        hub = IndicatorHub(dataset, root.child("cache"), client=client)  # the hub's own tasks (workflow step)
        hub.submit(dataset.symbols()[0], IndicatorPlan.from_requests([IndicatorSpec.make("sma", window=7)])).result()
        replayed = run_replay(ReplayConfig(signals=signal_set.set_id, rule="fraction", weights=np.eye(2).tolist(),
                                           batch_seconds=1e-4), root, client, progress=False,
                              performance_report=str(tmp_path / "perf" / "replay.html"))
    prefixes = {key_split(t["key"]) for t in stream.data}
    assert prefixes <= set(STAGES), prefixes
    assert {"indicators", "sweep", "signals", "replay"} <= prefixes, prefixes
    layout = _run_json(tmp_path / "store", swept.run_id)["layout"]
    if len({(lo, hi) for _, lo, hi, *_ in layout}) < len(layout):  # a set range split over symbol groups: reduced
        assert "portfolio" in prefixes
    # an explicit performance report path: written, and the run's run.json points at it
    report = tmp_path / "perf" / "replay.html"
    assert _run_json(tmp_path / "store", replayed.run_id)["performance_report"] == str(report)
    assert "Dask Performance Report" in report.read_text()


def _run_json(root, run_id):
    return json.loads((root / "runs" / run_id / "run.json").read_text())


def test_performance_report_flag_writes_dasks_report_beside_run_json(tmp_path, dataset):
    from .corpus_support import run_cli

    code, out, err, _ = run_cli(["sweep", dataset.url, "-s", "sma_cross", "-p", "fast=5,10", "-p", "slow=30",
                                 "--storage", tmp_path / "store", "--cluster", "threads", "--performance-report"])
    assert code == 0, err
    (run_id,) = [p.name for p in (tmp_path / "store" / "runs").iterdir() if p.is_dir() and not p.name.startswith("_")]
    run = _run_json(tmp_path / "store", run_id)
    path = tmp_path / "store" / "runs" / run_id / "performance-report.html"
    assert run["performance_report"] == str(path)
    html = path.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "Dask Performance Report" in html
    assert "sweep" in html  # the task stream names the stage


def _lagging_clock(dask_worker):
    dask_worker.periodic_callbacks["heartbeat"].stop()  # a heartbeat would measure the delay again
    dask_worker.scheduler_delay = -5.0


def test_a_performance_report_holds_the_runs_task_when_the_workers_clock_estimate_lags(tmp_path):
    # a worker stamps task times with its estimate of the scheduler's clock (scheduler_delay); taken while the
    # event loop was busy it lags, and dask's report (the tasks that ended after its start) missed a short
    # task: test_performance_report_flag_writes_dasks_report_beside_run_json failed ~1 run in 5 that way
    from admf_dask.monitor import RunMonitor

    path = tmp_path / "report.html"
    with connect(THREADS) as client:
        client.run(_lagging_clock)
        monitor = RunMonitor(client, 2, stage="sweep", performance_report=str(path), on=False).start()
        assert client.submit(sum, [1, 2], key="sweep-lagging-part-0").result() == 3
        monitor.stop()
    assert "number of tasks: 1" in path.read_text().lower()


# ---------------------------------------------------------------- rules, on records (fast)

def _record(**over):
    """A clean record of a 2-thread run; ``over`` replaces top-level parts."""
    base = {"wall_seconds": 10.0, "threads": 2,
            "stages": {"bars": 1.0, "indicators": 1.0, "kernel": 15.0, "write": 1.0},
            "tasks": {"stage": "sweep", "count": 40, "median": 0.45, "p95": 0.6, "max": 0.8, "seconds": 18.0,
                      "by_stage": {"sweep": {"count": 40, "seconds": 18.0}}},
            "overhead": {"seconds": 2.0, "fraction": 0.1, "workers_idle": 0},
            "workers": {"tcp://w1": {"peak_bytes": 500, "limit_bytes": 1000, "peak_fraction": 0.5}},
            "events": {"pauses": 0, "restarts": 0, "workers_lost": 0, "spilled": 0, "spilled_bytes": 0},
            "storage": {"requests": 100, "by_op": {}, "seconds": 0.5, "mean_ms": 5.0, "p95_ms": 12.0, "max_ms": 30.0}}
    return {**base, **over}


def _rules(record):
    return [f["rule"] for f in findings(record)]


def test_a_clean_record_and_no_record_give_no_finding():
    assert findings(_record()) == [] and findings({}) == []


@pytest.mark.parametrize("over,rule,words", [
    ({"tasks": {"stage": "sweep", "count": 40, "median": 0.04, "p95": 0.05, "max": 0.06, "seconds": 1.6}},
     "tasks-too-short", "median 40 ms"),
    ({"workers": {"tcp://w1": {"peak_bytes": 880, "limit_bytes": 1000, "peak_fraction": 0.88}}},
     "memory-pressure", "worker tcp://w1 (peak 88 % of its limit)"),
    ({"events": {"pauses": 2, "restarts": 0, "spilled": 0}}, "memory-pressure", "2 pause(s)"),
    ({"stages": {"bars": 8.0, "indicators": 4.4, "kernel": 6.6, "write": 1.0}}, "load-bound", "62 % of task time"),
    ({"tasks": {"stage": "sweep", "count": 40, "median": 0.4, "p95": 0.6, "max": 2.4, "seconds": 18.0}},
     "skew", "slowest task took 6x the median"),
    ({"overhead": {"seconds": 12.0, "fraction": 0.6, "workers_idle": 1}}, "idle-workers", "1 worker(s) ran no task"),
    ({"storage": {"requests": 50, "p95_ms": 180.0}}, "slow-storage", "p95 request 180 ms"),
])
def test_each_rule_fires_on_its_record_with_a_named_fix(over, rule, words):
    found = findings(_record(**over))
    assert [f["rule"] for f in found] == [rule]
    assert words in found[0]["finding"] and found[0]["fix"]


def test_rules_stay_quiet_below_their_thresholds():
    few = {"stage": "sweep", "count": 8, "median": 0.034, "p95": 0.04, "max": 0.04, "seconds": 0.3}
    # 4 tasks per thread: the layout's own cut for balance, whatever batch_seconds (a clean sweep of 4 tasks of
    # 34 ms on 2 threads was found "too short" when the probe measured a busy machine)
    assert _rules(_record(tasks=few)) == []
    short = _record(stages={"bars": 0.5, "indicators": 0.5, "kernel": 0.1, "write": 0.1}, wall_seconds=0.5,
                    overhead={"seconds": 0.6, "fraction": 0.6, "workers_idle": 0})
    assert _rules(short) == []  # a run under a few seconds of task time has no time-share finding
    assert _rules(_record(storage={"requests": 3, "p95_ms": 500.0})) == []  # too few requests to judge


# ---------------------------------------------------------------- rules, provoked by real runs (threads)

def _sweep(tmp_path, store, client, params=GRID, **config):
    root = StorageRef.make(str(tmp_path / "store")) if "://" not in store.url else StorageRef.make(
        store.url.rsplit("/", 1)[0] + "/store")
    result = run_sweep(SweepConfig(strategy="sma_cross", params=params, **config), store, root, client,
                       progress=False)
    return json.loads(root.open().read_bytes("runs", result.run_id, "run.json"))


def test_a_clean_run_records_its_monitor_and_reports_no_finding(tmp_path, dataset, capsys):
    with connect(THREADS) as client:
        run = _sweep(tmp_path, dataset, client)
    assert run["findings"] == [] and "finding:" not in capsys.readouterr().out
    mon = run["monitor"]
    assert mon["tasks"]["count"] == len(run["layout"]) and mon["tasks"]["stage"] == "sweep"
    assert set(mon["stages"]) == {"bars", "indicators", "kernel", "write"} and mon["stages"]["kernel"] > 0
    assert 0 < mon["tasks"]["median"] <= mon["tasks"]["p95"] <= mon["tasks"]["max"]
    assert 0 <= mon["overhead"]["fraction"] < 1 and mon["threads"] == 2
    (worker,) = mon["workers"].values()
    assert worker["peak_bytes"] > 50e6 and worker["limit_bytes"] > worker["peak_bytes"]
    assert mon["storage"]["requests"] > 0 and mon["events"]["restarts"] == 0


def test_ADMF_MONITOR_0_records_nothing(tmp_path, dataset, monkeypatch):
    monkeypatch.setenv("ADMF_MONITOR", "0")
    with connect(THREADS) as client:
        run = _sweep(tmp_path, dataset, client, batch_seconds=1e-4)
    assert "monitor" not in run and run["findings"] == []


def test_a_tiny_batch_seconds_is_found_too_short(tmp_path, dataset, capsys):
    with connect(THREADS) as client:
        run = _sweep(tmp_path, dataset, client, params={"fast": [5, 10, 15, 20], "slow": [30, 40, 50, 60]},
                     batch_seconds=1e-4)
    assert "tasks-too-short" in [f["rule"] for f in run["findings"]], json.dumps(run.get("monitor"))
    assert "finding: tasks too short" in capsys.readouterr().out  # printed at the end of the run


def test_storage_with_added_latency_is_found_slow(tmp_path, monkeypatch):
    from fsspec.implementations.memory import MemoryFileSystem

    read = MemoryFileSystem.cat_file

    def slow_read(self, path, *args, **kwargs):  # 120 ms per bar file read: a far-away object store
        if path.endswith(".parquet"):
            time.sleep(0.12)
        return read(self, path, *args, **kwargs)

    where = f"memory://monitor-{tmp_path.name}"
    store = BarStore(f"{where}/bars")
    store.write([generate_bars(s, "2019-01-01", "2021-12-31", seed=5) for s in symbol_names(4)])
    monkeypatch.setattr(MemoryFileSystem, "cat_file", slow_read)
    with connect(THREADS) as client:
        run = _sweep(tmp_path, store, client)
    slow = [f for f in run["findings"] if f["rule"] == "slow-storage"]
    assert slow and run["monitor"]["storage"]["p95_ms"] >= 100, run["monitor"]["storage"]


def test_a_low_memory_limit_is_found_as_memory_pressure(tmp_path, dataset):
    import dask
    from distributed import Client, LocalCluster

    # the limit is below what this process already holds; dask's own reactions (spill, pause,
    # restart) are off so that the run goes on and the monitor, not dask, reports it
    off = {f"distributed.worker.memory.{k}": False for k in ("target", "spill", "pause", "terminate")}
    with dask.config.set(off), LocalCluster(processes=False, n_workers=1, threads_per_worker=2,
                                            memory_limit="150MB", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        run = _sweep(tmp_path, dataset, client, memory_budget="8MB")
    (pressure,) = [f for f in run["findings"] if f["rule"] == "memory-pressure"]
    assert "lower memory_budget" in pressure["fix"] and "% of its limit" in pressure["finding"]


def test_the_scheduler_dashboard_serves_prometheus_metrics():
    pytest.importorskip("prometheus_client")
    import urllib.request

    from admf_dask.cluster import connect as connect_cluster

    from .corpus_support import free_port

    port = free_port()
    with connect_cluster({"kind": "threads", "n_workers": 1, "dashboard_address": f"127.0.0.1:{port}"}) as client:
        client.submit(sum, [1, 2], key="sweep-000001-metrics").result()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    assert "dask_scheduler_workers" in text and "dask_scheduler_tasks" in text
    assert 'prefix_name="sweep"' in text  # per task prefix: per stage


def test_a_workflow_step_writes_its_performance_report_where_its_key_says(tmp_path):
    from admf_dask.errors import ConfigError
    from admf_dask.workflow import load_workflow, run_workflow

    flow = """\
name: perf
storage: store
cluster: {kind: threads, n_workers: 2}
steps:
  - generate: {dataset: d, symbols: 2, start: 2020-01-01, end: 2021-12-31, freq: daily}
  - sweep:
      dataset: d
      strategy: sma_cross
      params: {fast: [5, 10], slow: [30]}
      performance_report: %s
"""
    wf = tmp_path / "wf.yaml"
    wf.write_text(flow % "reports/sweep.html")
    run_workflow(load_workflow(wf), echo=lambda _: None)
    report = tmp_path / "reports" / "sweep.html"  # relative to the workflow file
    assert "Dask Performance Report" in report.read_text()
    (run_dir,) = [p for p in (tmp_path / "store" / "runs").iterdir() if p.is_dir() and not p.name.startswith("_")]
    assert json.loads((run_dir / "run.json").read_text())["performance_report"] == str(report)
    wf.write_text(flow % "3")
    with pytest.raises(ConfigError, match="performance_report must be"):
        load_workflow(wf)
