"""Faults: a storage endpoint that refuses, freezes or goes away; no credentials; a scheduler
without workers; YAML bombs. Each ends in one line on stderr and exit 2, in bounded time.

The S3 endpoint is the moto server behind a TCP proxy (tests/corpus_support.Proxy) that the
test freezes (connections accepted, nothing answered) or cuts.
"""

from __future__ import annotations

import re
import time
from urllib.parse import urlparse

import pytest

from tests.corpus_support import Proxy, free_port, run_cli, tree_hash

SHORT = {"ADMF_STORAGE_READ_TIMEOUT": "1", "ADMF_STORAGE_CONNECT_TIMEOUT": "1", "ADMF_STORAGE_RETRIES": "2"}


@pytest.fixture
def proxy(s3_endpoint):
    u = urlparse(s3_endpoint)
    p = Proxy((u.hostname, u.port))
    yield p
    p.cut()


@pytest.fixture
def s3_bars(s3, proxy):
    """A small dataset in a fresh bucket, written through the proxy; (url, proxy)."""
    url, _ = s3
    code, _, err, _ = run_cli(["generate", f"{url}/bars", "--symbols", "2", "--start", "2020-01-01",
                               "--end", "2020-06-30", "-o", f"endpoint_url={proxy.url}"])
    assert code == 0, err
    return f"{url}/bars", proxy


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO) admf_dask\.")


def one_error_line(err: str) -> str:
    """A failure once a run has started: the run's own INFO lines (stderr off a terminal carries
    them), then exactly one ``error:`` line; nothing else (no traceback, no Compute Failed block)."""
    rest = [ln for ln in err.strip().splitlines() if not LOG_LINE.match(ln)]
    assert len(rest) == 1 and rest[0].startswith("error: "), err
    return rest[0]


def test_a_frozen_endpoint_gives_one_line_naming_the_url_within_the_timeouts(s3_bars):
    url, proxy = s3_bars
    proxy.freeze()
    code, _, err, seconds = run_cli(["symbols", url, "-o", f"endpoint_url={proxy.url}",
                                     "-o", "skip_instance_cache=true"], env=SHORT)
    assert code == 2
    line = one_line(err)
    assert proxy.url in line and "did not answer" in line
    assert seconds < 15  # 2 attempts x 1 s read timeout + backoff; unbounded it ran past 400 s


def test_a_refused_endpoint_gives_one_line(s3):
    url, _ = s3
    dead = f"http://127.0.0.1:{free_port()}"
    code, _, err, seconds = run_cli(["sweep", f"{url}/bars", "-s", "sma_cross", "-o", f"endpoint_url={dead}",
                                     "--cluster", "threads"], env=SHORT)
    assert code == 2
    assert dead in one_line(err) and "cannot connect" in err
    assert seconds < 15


def test_missing_credentials_are_one_line_before_any_cluster(s3_bars, tmp_path):
    url, proxy = s3_bars
    code, _, err, _ = run_cli(["sweep", url, "-s", "sma_cross", "--storage", str(tmp_path / "st"),
                               "--cluster", "tcp://127.0.0.1:1", "-o", f"endpoint_url={proxy.url}",
                               "-o", "skip_instance_cache=true"],
                              env={"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None,
                                   "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                                   "AWS_CONFIG_FILE": str(tmp_path / "none")})
    assert code == 2
    assert "credentials" in one_line(err)
    assert not (tmp_path / "st").exists()


def test_an_outage_mid_run_gives_one_line(s3_bars, tmp_path):
    """The endpoint goes away while a sweep reads: one line, exit 2, within the timeouts.

    The outage comes as the sweep asks for its first bar file (not after a fixed delay: a
    sweep this small can finish its reads in less than any delay chosen)."""
    url, proxy = s3_bars
    proxy.cut_at = re.compile(rb"GET [^ ]*/bars/[^ ]*\.parquet")
    code, _, err, seconds = run_cli(["sweep", url, "-s", "sma_cross", "-p", "fast=5:20:5", "-p", "slow=30:60:10",
                                     "--storage", str(tmp_path / "st"), "--cluster", "threads",
                                     "-o", f"endpoint_url={proxy.url}", "-o", "skip_instance_cache=true"],
                                    env=SHORT)
    assert proxy.cut_event.is_set(), "the sweep read no bar file through the proxy"
    assert code == 2, err
    assert proxy.url in one_error_line(err)
    assert seconds < 20


def test_an_unknown_storage_option_is_refused_everywhere(tmp_path):
    for store in (str(tmp_path / "local"), "memory://x", "s3://bucket/x"):
        code, _, err, _ = run_cli(["generate", store, "--symbols", "1", "-o", "foo=bar"])
        assert code == 2 and "unknown storage option 'foo'" in one_line(err)
    assert tree_hash(str(tmp_path)) == tree_hash(str(tmp_path))  # nothing below was created
    assert not (tmp_path / "local").exists()


def test_a_bad_bar_cache_size_stops_the_command_before_anything_runs(tmp_path):
    """ADMF_BAR_CACHE_MB is read by every worker that keeps bar files; the command checks it first: one line,
    exit 2, nothing written (not a task's error on a worker, after a cluster started)."""
    for bad in ("lots", "-1", "inf", "nan"):
        code, _, err, _ = run_cli(["generate", str(tmp_path / "bars"), "--symbols", "1"],
                                  env={"ADMF_BAR_CACHE_MB": bad})
        assert code == 2 and one_line(err) == \
            f"error: ADMF_BAR_CACHE_MB={bad!r} is not a number of megabytes >= 0 [key ADMF_BAR_CACHE_MB]"
    assert not list(tmp_path.iterdir())
    code, _, err, _ = run_cli(["generate", str(tmp_path / "bars"), "--symbols", "1", "--start", "2024-01-01",
                               "--end", "2024-01-31"], env={"ADMF_BAR_CACHE_MB": "0"})  # 0: keep none
    assert code == 0 and (tmp_path / "bars" / "_dataset.json").exists(), err


def test_a_scheduler_without_workers_fails_after_a_bounded_wait(tmp_path, small_bars):
    from distributed import LocalCluster

    from admf_dask.bars import BarStore

    BarStore(str(tmp_path / "bars")).write(small_bars)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        t0 = time.perf_counter()
        code, _, err, _ = run_cli(["sweep", str(tmp_path / "bars"), "-s", "sma_cross", "--storage",
                                   str(tmp_path / "st"), "--cluster", cluster.scheduler_address],
                                  env={"ADMF_WORKER_WAIT": "1"})
        assert code == 2
        assert "no worker" in one_line(err)
        assert time.perf_counter() - t0 < 15


def test_a_stalled_stage_stops_with_its_name():
    from distributed import Client, Event, LocalCluster

    from admf_dask.cluster import run_tasks
    from admf_dask.errors import AdmfError

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        event = Event("never", client=client)

        def stuck(i):
            event.wait()

        import os

        os.environ["ADMF_STALL_TIMEOUT"] = "1"
        try:
            with pytest.raises(AdmfError, match="stalled: no task of stage 'probe' finished in 1s"):
                run_tasks(client, stuck, [1, 2], label="probe", progress=False)
        finally:
            del os.environ["ADMF_STALL_TIMEOUT"]
            event.set()


@pytest.mark.parametrize("text, fragment", [
    ("a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(f"{c}: &{c} [{','.join(['*' + p] * 10)}]\n"
                                               for p, c in zip("abcdefgh", "bcdefghi")), "alias expansion"),
    ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
    ("x: " + "{a: " * 200 + "1" + "}" * 200 + "\n", "nested deeper"),
])
def test_yaml_bombs_are_refused_in_under_a_second(tmp_path, text, fragment):
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    from admf_dask.errors import ConfigError
    from admf_dask.workflow import load_workflow

    t0 = time.thread_time()
    with pytest.raises(ConfigError, match=fragment):
        load_workflow(path)
    assert time.thread_time() - t0 < 1  # this thread's CPU: the parser's own work, not the machine's load
    code, _, err, _ = run_cli(["run", str(path)])
    assert code == 2
    assert fragment in one_line(err)


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs mounted at tmp_path/disk (needs root: skipped where mount is refused)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_is_one_line_and_the_rerun_completes(tmp_path, small_disk):
    """The run's files (portfolio accumulators of many small tasks) fill the storage's disk mid-run:
    one line naming the file, exit 2, no temporary file left; with room again the same command
    completes, and its table equals one made on a roomy disk."""
    import subprocess

    import pandas as pd

    code, _, err, _ = run_cli(["-q", "generate", str(tmp_path / "bars"), "--symbols", "3", "--start", "2015-01-01",
                               "--end", "2024-12-31"])
    assert code == 0, err
    args = ["-q", "sweep", str(tmp_path / "bars"), "-s", "sma_cross", "-p", "fast=5:20:5", "-p", "slow=30:60:10",
            "--cluster", "threads", "--batch-seconds", "1e-6"]
    code, _, err, _ = run_cli([*args, "--storage", str(small_disk)])
    assert code == 2, err
    line = one_line(err)
    assert "No space left on device" in line and f"[file {small_disk}/runs/" in line, line
    assert not [p for p in small_disk.rglob("*") if ".tmp-" in p.name]
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    code, _, err, _ = run_cli([*args, "--storage", str(small_disk)])
    assert code == 0, err
    code, _, err, _ = run_cli([*args[:-2], "--storage", str(tmp_path / "roomy")])  # one task: the same bits
    assert code == 0, err
    [mine] = small_disk.glob("runs/*/results.parquet")
    [roomy] = (tmp_path / "roomy").glob("runs/*/results.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(mine), pd.read_parquet(roomy))
