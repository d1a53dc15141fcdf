"""Local workers forked from a zygote of the admf command (admf_dask/zygote.py), in a real subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import pandas as pd

from admf_dask.bars import BarStore, generate_bars, symbol_names
from admf_dask.cluster import connect
from admf_dask.storage import StorageRef
from admf_dask.sweep import SweepConfig, run_sweep

# the admf command's own entry point (main() with no argv), with an exit handler of the command's process:
# it must run once, in the command, not in the zygote or a worker (they are copies of this process)
SCRIPT = """
import atexit, os, sys
marker = sys.argv.pop(1)
atexit.register(lambda: open(marker, "a").write(f"{os.getpid()} numba={'numba' in sys.modules}\\n"))
from admf_dask.cli import main
main()
"""


def test_a_local_sweep_from_the_command_runs_on_forks_of_its_zygote(tmp_path):
    store = BarStore(str(tmp_path / "bars"))
    store.write([generate_bars(s, "2020-01-01", "2021-12-31", seed=3) for s in symbol_names(3)])
    marker = tmp_path / "exit-handlers.txt"
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(marker), "-v", "--json", "sweep", store.url,
                          "-s", "sma_cross", "-p", "fast=5,10", "-p", "slow=20,40", "--cluster", "local",
                          "--storage", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)  # stdout holds the summary only (the zygote closed its copy of it)
    assert summary["status"] == "ok" and summary["exit_code"] == 0
    (driver, zygote), = re.findall(r"admf_dask\.zygote \[(\d+)\] zygote (\d+) forked", out.stderr)
    workers = dict(re.findall(r"\[(\d+)\] worker process forked from the zygote \(pid (\d+)\)", out.stderr))
    assert len(workers) == 2 and set(workers.values()) == {zygote} and driver not in workers, out.stderr
    # the command's exit handlers ran in the command only, which planned, reduced and wrote the final table without
    # numba (the kernels' names are plain Python, admf_dask.kernels.names): numba is for the zygote and its workers
    assert marker.read_text().split() == [driver, "numba=False"]
    deadline = time.monotonic() + 10  # the zygote ends with the command
    while os.path.exists(f"/proc/{zygote}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{zygote}")

    # the same results as the same sweep on an in-process cluster
    config = SweepConfig(strategy="sma_cross", params={"fast": [5, 10], "slow": [20, 40]})
    with connect({"kind": "threads", "n_workers": 2, "dashboard_address": ""}) as client:
        expected = run_sweep(config, store, StorageRef.make(str(tmp_path / "threads")), client, progress=False)
    (run_id,) = [p.name for p in (tmp_path / "runs" / "runs").iterdir() if not p.name.startswith(("_", "latest"))]
    got = pd.read_parquet(tmp_path / "runs" / "runs" / run_id / "results.parquet")
    pd.testing.assert_frame_equal(got, expected.table)


def test_no_zygote_while_threads_run_or_when_switched_off(monkeypatch):
    from admf_dask import zygote

    monkeypatch.delenv("ADMF_FORK_WORKERS", raising=False)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert not zygote.wanted()  # a fork copies one thread: another's locks would stay held in the copy
    finally:
        stop.set()
        other.join()
    assert not zygote.running() and zygote.forked_from() is None
    monkeypatch.setenv("ADMF_FORK_WORKERS", "0")
    assert not zygote.wanted()


FORKED = """
import multiprocessing, sys
sys.path.insert(0, sys.argv[1])
from admf_dask import zygote
assert zygote.start()
from test_zygote import _in_a_fork
child = multiprocessing.get_context("forkserver").Process(target=_in_a_fork, args=(sys.argv[2],))
child.start()
child.join()
print(zygote._state["pid"], child.pid, child.exitcode)
"""


def _in_a_fork(folder: str) -> None:
    """In a process the zygote forked (the way the nannies' workers start): where it comes from, and markers of
    its exit (test_cluster's)."""
    from test_cluster import _plant_exit_markers

    with open(os.path.join(folder, "parent"), "w") as f:
        f.write(f"{os.getppid()} {zygote_pid()}")
    _plant_exit_markers(folder)


def zygote_pid() -> int | None:
    from admf_dask import zygote

    return zygote.forked_from()


def test_a_forked_worker_ends_as_a_spawned_one(tmp_path):
    from multiprocessing import forkserver

    out = subprocess.run([sys.executable, "-c", FORKED, os.path.dirname(__file__), str(tmp_path)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    command, pid, code = out.stdout.split()
    parent, zygote = (tmp_path / "parent").read_text().split()
    assert code == "0" and parent == zygote != command  # a fork of the zygote, not of the command
    assert (tmp_path / f"exit-handlers-{pid}").exists()  # at its end it ran its exit handlers
    assert not (tmp_path / f"teardown-{pid}").exists()  # and skipped interpreter teardown
    assert forkserver._forkserver._forkserver_pid is None  # nothing of it in this (test) process


def test_the_kernel_preload_stops_when_asked():
    from admf_dask.preload import preload_kernels

    asked = []

    def stop() -> bool:  # asked before each overload: the zygote stops when a worker is asked for
        asked.append(1)
        return len(asked) > 3

    loaded, _ = preload_kernels(stop=stop)
    assert (loaded, len(asked)) == (3, 4) or loaded == len(asked) < 3  # (fewer than 3 in numba's cache)
    assert preload_kernels(stop=lambda: True)[0] == 0


def test_a_workflow_on_a_local_cluster_runs_on_forks_of_its_zygote(tmp_path):
    flow = tmp_path / "wf.yaml"
    flow.write_text("name: forked\nstorage: store\ncluster: {kind: local, n_workers: 1, dashboard_address: ''}\n"
                    "steps:\n  - generate: {dataset: d, symbols: 2, start: 2020-01-01, end: 2020-06-30}\n"
                    "  - summary: {dataset: d}\n")  # the summary reads the bars on the cluster
    out = subprocess.run([sys.executable, "-m", "admf_dask.cli", "-v", "run", str(flow)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    (zygote,) = re.findall(r"zygote (\d+) forked", out.stderr)
    workers = re.findall(r"worker process forked from the zygote \(pid (\d+)\)", out.stderr)
    assert workers and set(workers) == {zygote}, out.stderr
