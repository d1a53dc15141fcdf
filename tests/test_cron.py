"""admf under cron and at a terminal, for real: Ctrl-C and SIGTERM on a local cluster, library noise.

Each test runs the ``admf`` command as a subprocess with a LocalCluster of worker
processes. The sweeps use a user strategy that sleeps in the workers, so a task takes
a known time on any machine and the run is still working when the signal comes.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

STRATEGIES = '''
import os
import signal
import time

import numpy as np


def _in_worker():
    try:
        from distributed import get_worker
        get_worker()
        return True
    except ValueError:
        return False


def slow_momentum(bars, indicators, window=5):
    """The sign of the change over `window` bars; 0.3 s per call in a worker (instant in the client's probe)."""
    if _in_worker():
        time.sleep(0.3)
    c = bars.close
    out = np.zeros(len(c), dtype=np.int8)
    out[window:] = np.sign(c[window:] - c[:-window])
    return out


def kills_its_worker(bars, indicators, window=5):
    """slow_momentum, but the first call in a worker kills that worker process (marker file in $CRON_MARK)."""
    mark = os.path.join(os.environ["CRON_MARK"], "killed")
    if _in_worker() and not os.path.exists(mark):
        open(mark, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return slow_momentum(bars, indicators, window)
'''

SETS = 12  # parameter sets of the interrupted sweep: 12 tasks of 0.3 s

# A line admf logs to a non-terminal stderr: UTC time, level, an admf_dask logger, the pid.
ADMF_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) admf_dask[.\w]* \[\d+\] ")


@pytest.fixture
def env(tmp_path):
    """The environment of the admf subprocesses: the strategies importable (workers inherit it)."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "cronstrats.py").write_text(STRATEGIES)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(mods), os.environ.get("PYTHONPATH", "")]),
            "CRON_MARK": str(tmp_path)}


def _workflow(tmp_path: Path, cluster: str, strategy: str, windows: list[int]) -> Path:
    path = tmp_path / "nightly.yaml"
    path.write_text(textwrap.dedent(f"""\
        storage: store
        cluster: {cluster}
        steps:
          - generate: {{dataset: d, symbols: 1, start: 2020-01-01, end: 2021-12-31}}
          - sweep: {{dataset: d, strategy: "{strategy}", params: {{window: {windows}}}, batch_seconds: 1.0e-7}}
        """))
    return path


def _admf(*args) -> list[str]:
    return [sys.executable, "-m", "admf_dask.cli", *map(str, args)]


def _markers(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "store" / "runs").glob("*/done/*.json"))


def _start_and_interrupt(tmp_path: Path, env: dict, signum: int, *, group: bool, workers: int):
    """Start a sweep on a local cluster of worker processes; once its first task has committed, send
    ``signum`` (to the process group, as a terminal's Ctrl-C does, or to admf alone, as `kill` does).
    Returns the exit code, stderr and the worker processes that were running."""
    wf = _workflow(tmp_path, f"{{kind: local, n_workers: {workers}, threads_per_worker: 1, dashboard_address: ''}}",
                   "cronstrats:slow_momentum", list(range(2, 2 + SETS)))
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        proc = subprocess.Popen(_admf("--log-file", tmp_path / "admf.log", "run", wf), stdout=subprocess.DEVNULL,
                                stderr=stderr, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not _markers(tmp_path):
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= workers, "a local cluster has worker processes"
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return code, err.read_text(), children


def _assert_one_clean_line(stderr: str, name: str) -> None:
    """Only admf's own messages, then the one line about the interrupt: no worker tracebacks, no Dask noise."""
    lines = stderr.splitlines()
    assert lines[-1] == f"interrupted by {name}: committed work is kept; rerun the same command to resume", stderr
    assert all(ADMF_LINE.match(line) for line in lines[:-1]), stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr and "distributed" not in stderr


@pytest.mark.slow
def test_ctrl_c_prints_one_line_keeps_committed_tasks_and_the_rerun_resumes(tmp_path, env):
    code, stderr, children = _start_and_interrupt(tmp_path, env, signal.SIGINT, group=True, workers=2)
    assert code == 130
    _assert_one_clean_line(stderr, "SIGINT")
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, "the cluster was closed: no worker process is left"
    kept = len(_markers(tmp_path))
    assert 1 <= kept < SETS
    assert "interrupted by SIGINT" in (tmp_path / "admf.log").read_text()

    # the cluster is not part of a run's identity: the rest runs on threads (no worker processes to start)
    rerun = subprocess.run(_admf("run", tmp_path / "nightly.yaml", "--cluster", "threads"), capture_output=True,
                           text=True, env=env, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    resumed = re.search(r"resuming: (\d+) of (\d+) tasks already committed", rerun.stderr)
    assert resumed and int(resumed[1]) >= kept and int(resumed[2]) == SETS, rerun.stderr
    assert "up to date" in rerun.stdout  # the generate step too


@pytest.mark.slow
def test_sigterm_prints_one_line_and_closes_the_cluster(tmp_path, env):
    code, stderr, children = _start_and_interrupt(tmp_path, env, signal.SIGTERM, group=False, workers=1)
    assert code == 130
    _assert_one_clean_line(stderr, "SIGTERM")
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive
    assert 1 <= len(_markers(tmp_path)) < SETS


@pytest.mark.slow
def test_dask_noise_goes_to_the_log_file_not_the_terminal(tmp_path, env):
    # the dashboard's port is taken (another cluster), and the worker is killed once mid-task
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    wf = _workflow(tmp_path, f"{{kind: local, n_workers: 1, dashboard_address: ':{port}'}}",
                   "cronstrats:kills_its_worker", [3, 4])
    with taken:
        out = subprocess.run(_admf("--log-file", tmp_path / "admf.log", "run", wf), capture_output=True, text=True,
                             env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "killed").exists(), "the worker was killed once"
    assert all(ADMF_LINE.match(line) for line in out.stderr.splitlines()), out.stderr
    for noise in ("already in use", "Restarting worker", "killed", "Traceback", "distributed", "Warning"):
        assert noise not in out.stderr
    log = (tmp_path / "admf.log").read_text()
    assert f"Port {port} is already in use" in log and "Restarting worker" in log
    assert "top 2 by sharpe" in log  # the command's output is in the log file too
