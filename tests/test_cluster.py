"""Clusters: the same workflow on threads, a LocalCluster and `dask scheduler` + `dask worker` processes."""

from __future__ import annotations

import os
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


def _square_slowly(x: int) -> int:
    import time

    time.sleep(0.02)
    return x * x


def test_run_tasks_with_a_window_keeps_that_many_in_flight_and_returns_all_in_order():
    from distributed import Client, LocalCluster

    from admf_dask.cluster import run_tasks

    seen: list[int] = []
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        most = []

        def on_result(i: int, r: int) -> None:
            seen.append(i)
            most.append(len([f for f in client.futures.values() if f.status == "pending"]))

        out = run_tasks(client, _square_slowly, list(range(25)), label="t", progress=False, window=3,
                        on_result=on_result, keys=[f"sq-{i}" for i in range(25)])
    assert out == [i * i for i in range(25)]
    assert sorted(seen) == list(range(25))
    assert max(most) <= 3  # never more than the window submitted and unfinished


def _worker_settings() -> dict:
    import os

    import dask

    return {"malloc": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
            **{key: dask.config.get(key) for key in ("distributed.worker.profile.interval",
                                                     "distributed.admin.tick.interval")}}


def test_the_dashboard_answers_at_the_printed_link_and_an_empty_address_means_none():
    import urllib.error
    import urllib.request
    import warnings

    port = _free_port()
    lines: list[str] = []
    with connect({"kind": "threads", "n_workers": 1, "dashboard_address": f"127.0.0.1:{port}"},
                 echo=lines.append) as client:
        client.submit(sum, [1, 2], key="sweep-000001-dash").result()
        apps = client.cluster.scheduler.http_application.applications
        assert not [a for a in apps if "Bokeh" in type(a).__name__]  # no pages built until someone asks for one
        for path in ("/status", "/workers"):  # the first request builds them, then they serve
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
                assert response.status == 200 and response.url.endswith(path) and "Dask" in response.read().decode()
        assert [a for a in apps if "Bokeh" in type(a).__name__]
    assert f":{port}/status" in lines[0]
    # "" is no dashboard: no pages, and the scheduler's HTTP server does not take :8787 (or warn that it is taken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with connect({"kind": "threads", "n_workers": 1, "dashboard_address": ""}, echo=lines.append) as client:
            server = client.cluster.scheduler.http_server
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(f"http://127.0.0.1:{server.port}/status", timeout=10)
    assert server.port != 8787 and not [w for w in caught if "already in use" in str(w.message)]
    assert "(dashboard off)" in lines[1]


def test_local_workers_get_the_malloc_and_quiet_monitoring_settings_but_a_users_setting_wins(tmp_path):
    import dask
    import distributed  # noqa: F401  (its defaults registered before the config is changed below)

    from admf_dask.cluster import QUIET_MONITORING, WORKER_MALLOC

    with dask.config.set({"distributed.admin.tick.interval": "50ms"}):  # the user's own choice
        with connect({"kind": "local", "n_workers": 1, "threads_per_worker": 1, "dashboard_address": ""},
                     echo=lambda m: None) as client:
            (found,) = client.run(_worker_settings).values()
            (pid,) = client.run(_plant_exit_markers, str(tmp_path)).values()
    assert found == {"malloc": WORKER_MALLOC["MALLOC_MMAP_THRESHOLD_"],
                     "distributed.worker.profile.interval": QUIET_MONITORING["distributed.worker.profile.interval"],
                     "distributed.admin.tick.interval": "50ms"}
    assert dask.config.get("distributed.worker.profile.interval") == "10ms"  # this process's config is untouched
    # closed, the worker process ran its exit handlers and ended without interpreter teardown (logs.dask_teardown)
    assert (tmp_path / f"exit-handlers-{pid}").exists()
    assert not (tmp_path / f"teardown-{pid}").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone (and reaped), not left behind


class _TornDown:
    """Writes a file when freed: at interpreter teardown, if the process gets that far."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __del__(self) -> None:
        open(self.path, "w").close()


def _plant_exit_markers(folder: str) -> int:
    import atexit
    import sys

    pid = os.getpid()
    atexit.register(lambda: open(os.path.join(folder, f"exit-handlers-{pid}"), "w").close())
    sys.modules["admf_dask"]._torn_down_marker = _TornDown(os.path.join(folder, f"teardown-{pid}"))
    return pid
