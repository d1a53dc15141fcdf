"""Shared fixtures: a real moto S3 server on loopback, storage snapshots, small datasets."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

# s3fs/botocore must never look for real credentials or the instance metadata service.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
# the user's cache (kept probes, a kept cluster: admf_dask.home) is never the real one; each test gets its own
os.environ["ADMF_CACHE_DIR"] = os.path.join(__import__("tempfile").mkdtemp(prefix="admf-test-home-"), "session")


@pytest.fixture(autouse=True)
def _own_user_cache(tmp_path_factory, monkeypatch):
    """A test's kept probes are its own: another test's sweep of the same bars must not change its layout."""
    monkeypatch.setenv("ADMF_CACHE_DIR", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server over HTTP on 127.0.0.1, on a free port, for the whole session.

    The in-process mock would not intercept s3fs's aiobotocore, so tests talk HTTP
    to a real server, exactly as they would to S3.
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per HTTP request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """A fresh bucket per test; yields (url of the bucket, storage_options).

    Every storage opened on it makes its own s3fs client (``skip_instance_cache``: no listing
    is kept between a test's steps). Their botocore sessions in this process share one loader
    of S3's models, parsed once (tests/bars/fork_ingest.py): parsing them for each new client
    took a threads sweep on S3 from ~4 s to ~7-11 s at load 7-10. The requests do not change.
    """
    import botocore.session
    import s3fs

    from tests.bars.fork_ingest import botocore_loader

    loader = botocore_loader()
    monkeypatch.setattr(botocore.session, "create_loader", lambda *args, **kwargs: loader)
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing",
               "skip_instance_cache": True}
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir(bucket)
    yield f"s3://{bucket}", options
    fs.rm(bucket, recursive=True)


@pytest.fixture
def s3_atomic_puts(s3, monkeypatch):
    """The ``s3`` bucket, with the moto server deciding conditional PUTs atomically, as S3 does.

    moto (5.2) checks ``If-Match`` / ``If-None-Match`` and then stores the object in
    separate steps, unlocked, in a threaded server: two PUTs racing on one ETag can
    both succeed (seen: 128 successful conditional PUTs from 12 processes, only 126
    of them kept). S3 itself serialises them. This serialises moto's PutObject
    handler; every request still goes over HTTP to the real server.
    """
    import threading

    from moto.s3.responses import S3Response

    lock = threading.Lock()
    put_object = S3Response.put_object

    def atomic_put_object(self, *args, **kwargs):
        with lock:
            return put_object(self, *args, **kwargs)

    monkeypatch.setattr(S3Response, "put_object", atomic_put_object)
    return s3


def snapshot(fs, root: str) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes: to prove nothing changed."""
    try:
        paths = fs.find(root)
    except FileNotFoundError:
        return {}
    return {p: hashlib.sha256(fs.cat_file(p)).hexdigest() for p in sorted(paths)}


@pytest.fixture
def small_bars():
    """Three symbols of synthetic daily bars over three calendar years."""
    from admf_dask.bars import generate_bars

    return [generate_bars(s, "2020-01-01", "2022-12-31", seed=7) for s in ("AAA", "BBB", "CCC")]


DASK = str(Path(sys.executable).with_name("dask"))


@pytest.fixture
def dask_cluster_processes(tmp_path):
    """A scheduler and two workers started with the `dask` command, as separate processes."""
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--dashboard-address", ":0", "--scheduler-file", str(scheduler_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        deadline = time.time() + 60
        while not scheduler_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen([DASK, "worker", address, "--nthreads", "1", "--no-dashboard",
                                           "--local-directory", str(tmp_path / "workers")],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        yield address
    finally:
        # the workers first, then the scheduler: stopped together, the workers' nannies waited for the gone
        # scheduler and the teardown took 8.2-9.4 s, against 0.7-1.0 s in this order (3 + 3 runs)
        for group in (procs[1:], procs[:1]):
            for p in group:
                p.terminate()
            for p in group:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()


# --- a finished sweep and a replay, for the report tests (tests/test_report*.py) ---------------------------------

REPORT_SYMBOLS = ("AAA", "BBB", "CCC")
REPORT_MEMBERS = ({"fast": 5, "slow": 40}, {"fast": 15, "slow": 60})


@pytest.fixture(scope="session")
def report_sweep(tmp_path_factory):
    """(dir, bars, root, result): sma_cross over fast 5..25 x slow 40/60/80 on 3 symbols, 2.5 years, threads."""
    import numpy as np

    from admf_dask.bars import BarStore, generate_bars
    from admf_dask.storage import StorageRef
    from admf_dask.sweep import SweepConfig, run_sweep

    d = tmp_path_factory.mktemp("report")
    store = BarStore(str(d / "bars"))
    store.write([generate_bars(s, "2019-01-01", "2021-06-30", seed=i) for i, s in enumerate(REPORT_SYMBOLS)])
    root = StorageRef.make(str(d / "store"))
    config = SweepConfig(strategy="sma_cross", params={"fast": range(5, 30, 5), "slow": np.array([40, 60, 80])},
                         commission=0.001)
    result = run_sweep(config, store, root, "threads", progress=False, echo=lambda _: None)
    return d, store, root, result


@pytest.fixture(scope="session")
def report_replay(report_sweep):
    """(dir, bars, root, result): a replay of 2 explicit members (grid 0, 0.5, 1) over the sweep's bars, in a root
    of its own (its `latest` is the replay)."""
    from admf_dask.replay import ReplayConfig, run_replay
    from admf_dask.signals import SignalsConfig, generate_signals
    from admf_dask.storage import StorageRef

    d, store, _, _ = report_sweep
    root = StorageRef.make(str(d / "replay_store"))
    configs = [{"strategy": "sma_cross", "params": p} for p in REPORT_MEMBERS]
    signal_set = generate_signals(SignalsConfig(configs=configs, commission=0.001), store, root, "threads",
                                  progress=False, echo=lambda _: None)
    result = run_replay(ReplayConfig(signals=signal_set.set_id, grid=[0, 0.5, 1]), root, "threads", progress=False,
                        echo=lambda _: None)
    return d, store, root, result
