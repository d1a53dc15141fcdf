"""Clusters: the same workflow on threads, a LocalCluster and `dask scheduler` + `dask worker` processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from admf_dask.bars import BarStore
from admf_dask.cluster import connect
from admf_dask.errors import ConfigError
from admf_dask.workflow import load_workflow, run_workflow

QUICKSTART = Path(__file__).resolve().parents[1] / "workflows" / "quickstart.yaml"
DASK = Path(sys.executable).with_name("dask")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_where_nothing_listens_fails_fast_and_clearly():
    address = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=f"no dask scheduler answered at {address} within 2s"):
        with connect({"kind": address, "timeout": 2}):
            pass
    assert time.perf_counter() - t0 < 15


@pytest.fixture
def dask_cluster_processes(tmp_path):
    """A scheduler and two workers started with the `dask` command, as separate processes."""
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--dashboard-address", ":0", "--scheduler-file", str(scheduler_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        deadline = time.time() + 60
        while not scheduler_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen([str(DASK), "worker", address, "--nthreads", "1", "--no-dashboard",
                                           "--local-directory", str(tmp_path / "workers")],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_quickstart_runs_unchanged_on_dask_scheduler_and_worker_processes(tmp_path, dask_cluster_processes):
    from distributed import Client

    with Client(dask_cluster_processes, timeout=30) as c:
        c.wait_for_workers(2, timeout=60)
    wf = load_workflow(QUICKSTART, cluster=dask_cluster_processes, storage=str(tmp_path / "remote"))
    out: list[str] = []
    run_workflow(wf, echo=out.append)
    text = "\n".join(out)
    assert "SYM007" in text
    reference: list[str] = []
    run_workflow(load_workflow(QUICKSTART, cluster="threads", storage=str(tmp_path / "threads")),
                 echo=reference.append)
    # same data, same summary, whichever cluster ran it
    assert BarStore(str(tmp_path / "remote" / "bars" / "quickstart")).fingerprint == \
        BarStore(str(tmp_path / "threads" / "bars" / "quickstart")).fingerprint
    table = lambda out: [line for line in "\n".join(out).splitlines() if line.startswith("SYM")]  # noqa: E731
    assert table(out) == table(reference) and len(table(out)) == 8
