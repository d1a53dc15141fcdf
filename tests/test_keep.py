"""`admf cluster up / status / down` and `--cluster auto`: real processes (the keeper, its workers, the commands)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from admf_dask.bars import BarStore, generate_bars, symbol_names
from admf_dask.cluster import connect
from admf_dask.storage import StorageRef
from admf_dask.sweep import SweepConfig, run_sweep


def _admf(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "admf_dask.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _gone(pid: int, within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_a_kept_cluster_serves_auto_sweeps_until_it_is_stopped(tmp_path):
    from distributed import Client

    home = os.environ["ADMF_CACHE_DIR"]  # this test's own (conftest)
    bars = BarStore(str(tmp_path / "bars"))
    bars.write([generate_bars(s, "2020-01-01", "2021-12-31", seed=7) for s in symbol_names(3)])

    up = _admf("--json", "cluster", "up", "--workers", "1", "--dashboard-address", "")
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)["cluster"]
    assert json.loads(up.stdout)["started"] is True and state["workers"] == 1
    with open(os.path.join(home, "cluster.json")) as f:
        assert json.load(f) == state
    again = _admf("cluster", "up")
    assert again.returncode == 0 and again.stdout.startswith(f"already up: {state['address']}"), again.stderr
    try:
        with Client(state["address"], timeout=10) as c:
            (worker_pid,) = c.run(os.getpid).values()

        out = _admf("sweep", bars.url, "-s", "sma_cross", "-p", "fast=5,10", "-p", "slow=20,40", "--top", "1",
                    "--cluster", "auto", "--storage", str(tmp_path / "auto"))
        assert out.returncode == 0, out.stderr
        assert f"cluster auto: kept cluster (pid {state['pid']}" in out.stderr
        assert f"cluster: {state['address']}, 1 worker(s)" in out.stderr
        config = SweepConfig(strategy="sma_cross", params={"fast": [5, 10], "slow": [20, 40]})
        with connect("threads", echo=lambda m: None) as client:  # the oracle: the same sweep in this process
            want = run_sweep(config, bars, StorageRef.make(str(tmp_path / "here")), client, progress=False)
        got = pq.read_table(tmp_path / "auto" / "runs" / want.run_id / "results.parquet")
        assert got.equals(pq.read_table(tmp_path / "here" / "runs" / want.run_id / "results.parquet"))

        status = _admf("cluster", "status")
        assert status.returncode == 0 and status.stdout.startswith(f"up: {state['address']}, 1 worker(s)"), status

        down = _admf("cluster", "down")
        assert down.returncode == 0 and down.stdout.strip() == \
            f"stopped the kept cluster at {state['address']} (pid {state['pid']})", down.stderr
    finally:  # never leave the keeper behind
        if not _gone(state["pid"], within=0):
            os.kill(state["pid"], 9)
    assert _gone(state["pid"]) and _gone(worker_pid), "the keeper and its worker ended"
    assert not os.path.exists(os.path.join(home, "cluster.json"))
    status = _admf("cluster", "status")
    assert status.stdout.strip() == "down: no cluster is kept (start one with `admf cluster up`)", status

    # a record left by a keeper that died (killed, a reboot): stale, removed by whoever reads it
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(os.path.join(home, "cluster.json"), "w") as f:
        json.dump({**state, "pid": dead.pid}, f)
    status = _admf("cluster", "status")
    assert status.stdout.strip() == \
        f"down: removed the record of a kept cluster whose process (pid {dead.pid}) is gone", status
    assert not os.path.exists(os.path.join(home, "cluster.json"))


def test_auto_without_a_kept_cluster_means_local_and_says_why(tmp_path):
    from admf_dask.config import ClusterConfig
    from admf_dask.keep import code_token, kept_address

    assert ClusterConfig.parse("auto").kind == "auto"
    bad = _admf("cluster", "up", "--memory-limit", "lots")  # refused before any process starts
    assert bad.returncode == 2 and bad.stderr.splitlines() == [
        "error: memory limit 'lots' is not a size [key memory_limit]; a size per worker such as 4GiB, or auto"], bad
    assert not os.path.exists(os.path.join(os.environ["ADMF_CACHE_DIR"], "cluster.log"))
    assert kept_address() == (None, "no cluster is kept (start one with `admf cluster up`)")
    # a live keeper process (this one stands in) that runs other code than ours is not used
    home = os.environ["ADMF_CACHE_DIR"]
    os.makedirs(home, exist_ok=True)
    keeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "admf_dask.keep"])
    try:
        deadline = time.monotonic() + 10
        while b"admf_dask.keep" not in Path(f"/proc/{keeper.pid}/cmdline").read_bytes():  # exec'd
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with open(os.path.join(home, "cluster.json"), "w") as f:
            json.dump({"address": "tcp://127.0.0.1:1", "pid": keeper.pid, "code": "0" * 16}, f)
        address, why = kept_address()
        assert address is None and "runs other admf code" in why and code_token() != "0" * 16
    finally:
        keeper.kill()
        keeper.wait()
