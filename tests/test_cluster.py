"""Clusters: the same workflow on threads, a LocalCluster and `dask scheduler` + `dask worker` processes."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from admf_dask.bars import BarStore
from admf_dask.cluster import connect
from admf_dask.errors import ConfigError
from admf_dask.workflow import load_workflow, run_workflow

QUICKSTART = Path(__file__).resolve().parents[1] / "workflows" / "quickstart.yaml"


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
    table = lambda out: [line for line in "\n".join(out).splitlines()  # noqa: E731
                         if line.startswith(("SYM", "PORTFOLIO"))]
    # summary rows + the sweep's top 5 + the replay's top 5
    assert table(out) == table(reference) and len(table(out)) == 8 + 5 + 5
    assert "indicators: 0 computed" in text  # the replay, on worker processes
