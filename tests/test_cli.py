"""The admf command, run as a real subprocess: exit codes, one-line errors, help, --json, environment."""

from __future__ import annotations

import io
import json
import os
import re
import select
import subprocess
import sys

import pytest

from admf_dask.bars import BarStore


def admf(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "admf_dask.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_help_lists_the_commands_and_explains_them():
    out = admf("--help")
    assert out.returncode == 0
    for command in ("run", "generate", "ingest", "symbols"):
        assert command in out.stdout
    gen = admf("generate", "--help")
    assert "--seed" in gen.stdout and "same seed, same bars" in gen.stdout


def test_generate_then_list_symbols(tmp_path):
    out = admf("generate", tmp_path / "ds", "--symbols", 3, "--start", "2022-01-01", "--end", "2022-06-30")
    assert out.returncode == 0, out.stderr
    assert "wrote 3 symbol(s)" in out.stdout
    listed = admf("symbols", tmp_path / "ds")
    assert listed.returncode == 0
    assert "SYM000" in listed.stdout and "SYM002" in listed.stdout
    assert BarStore(str(tmp_path / "ds")).fingerprint[:12] in listed.stdout


def test_a_bad_csv_exits_2_with_one_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "AAPL.csv"
    bad.write_text("Date,Open,High,Low,Close,Volume\n2020-01-02,10,11,9,10,1\n2020-01-03,10,9.5,9,10,1\n")
    out = admf("ingest", tmp_path / "ds", bad)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: high 9.5 is below max(open, close)")
    assert f"file {bad}" in lines[0] and "symbol AAPL" in lines[0] and "line 3" in lines[0]
    assert not (tmp_path / "ds").exists()


def test_ingest_repair_reports_its_changes(tmp_path):
    f = tmp_path / "IBM.csv"
    f.write_text("Date,Open,High,Low,Close,Volume\n2020-01-03,10,11,9,10,1\n2020-01-02,10,11,9,10,1\n")
    out = admf("ingest", tmp_path / "ds", f, "--repair")
    assert out.returncode == 0, out.stderr
    assert "sorted 2 row(s) into time order" in out.stdout


def test_missing_store_and_bad_options_exit_2(tmp_path):
    out = admf("symbols", tmp_path / "nothing")
    assert out.returncode == 2 and "no bar dataset here" in out.stderr
    out = admf("generate", tmp_path / "x", "--freq", "hourly")
    assert out.returncode == 2 and "hourly" in out.stderr


@pytest.mark.parametrize("args,fragment", [
    (["generate", "{tmp}/x", "--start", "2022-02-01", "--end", "2022-01-01"], "before start"),
    (["generate", "{tmp}/x", "--symbol-list", "OK,../up"], "invalid symbol name '../up'"),
])
def test_generate_rejects_bad_settings(tmp_path, args, fragment):
    out = admf(*[a.format(tmp=tmp_path) for a in args])
    assert out.returncode == 2
    assert fragment in out.stderr
    assert not (tmp_path / "x").exists()


# -- output for cron: exit codes, --json, logging, environment variables ---------------------------------

FAILING = '''
import os

import numpy as np

from admf_dask.errors import BusyError


def flat(bars, indicators, window=5):
    return np.zeros(len(bars.close), dtype=np.int8)


def _lookback(window=5):
    if os.environ.get("FAILING_AS") == "busy":
        raise BusyError("run 1234 is running on otherhost (pid 42) since 2026-01-01T02:00:00Z")
    raise RuntimeError("lookback table is missing")


flat.lookback = _lookback  # user code that fails outside the call the engine guards


def cursed(bars, indicators, window=5):  # fails on a worker: one symbol, one parameter set
    if window == 7 and bars.symbol == "BBB":
        raise ValueError("window 7 is cursed on BBB")
    return np.zeros(len(bars.close), dtype=np.int8)
'''


@pytest.fixture
def failing(tmp_path, small_bars):
    """A bar store, and an environment where the workers can import the `failing` strategy module."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "failing.py").write_text(FAILING)
    BarStore(str(tmp_path / "ds")).write(small_bars)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "mods"), os.environ.get("PYTHONPATH", "")])}
    return tmp_path / "ds", env


def admf_env(env, *args):
    return subprocess.run([sys.executable, "-m", "admf_dask.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_an_unexpected_error_exits_1_with_its_traceback_and_a_hint_to_report_it(tmp_path, failing):
    store, env = failing
    log = tmp_path / "admf.log"
    args = ["sweep", store, "-s", "failing:flat", "-p", "window=3", "--storage", tmp_path, "--cluster", "threads"]
    out = admf_env(env, "--log-file", log, *args)
    assert out.returncode == 1
    error, hint = out.stderr.splitlines()[-2:]
    assert error == f"error: RuntimeError: lookback table is missing; the traceback is in {log}"
    assert hint.startswith("hint: an unexpected error (exit 1)") and "report it as a bug of admf-dask" in hint
    assert "Traceback" not in out.stderr
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and 'raise RuntimeError("lookback table is missing")' in text

    from tests.corpus_support import run_cli

    with pytest.MonkeyPatch.context() as mp:  # no log file (in this process): the traceback on stderr, then the lines
        mp.syspath_prepend(str(tmp_path / "mods"))
        code, _, err, _ = run_cli(args)
    lines = err.splitlines()
    assert code == 1
    assert "Traceback (most recent call last):" in lines and 'raise RuntimeError("lookback table is missing")' in err
    assert lines[-2] == "error: RuntimeError: lookback table is missing; the traceback is above"
    assert lines[-1] == hint


def test_a_task_failing_on_a_worker_is_one_line_naming_stage_symbol_and_parameter_set(tmp_path, failing,
                                                                                       monkeypatch):
    from tests.corpus_support import run_cli

    store, _ = failing
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))  # a threads cluster: the workers are this process
    code, _, err, _ = run_cli(["sweep", store, "-s", "failing:cursed", "-p", "window=5,7", "--storage", tmp_path,
                               "--cluster", "threads", "--batch-seconds", "0.0001"])
    assert code == 2
    rest = [ln for ln in err.splitlines() if " INFO admf_dask." not in ln]  # the run's own INFO lines
    assert len(rest) == 1, err  # no "Compute Failed" block, no traceback
    assert rest[0].startswith("error: sweep: failing:cursed failed on parameter set 1 {'window': 7}: ValueError: "
                              "window 7 is cursed on BBB [symbol BBB, key run "), rest[0]
    code, _, err, _ = run_cli(["-q", "signals", store, "-c", "failing:cursed:window=7", "--storage", tmp_path,
                               "--cluster", "threads"])  # a user strategy by module:function, then its parameters
    assert code == 2
    line = ("error: signals: strategy 'failing:cursed' failed with params {'window': 7}: "
            "ValueError: window 7 is cursed on BBB [symbol BBB, key strategy]")
    assert err.splitlines() == [line], err


def test_busy_exits_75_and_json_still_reports_it(tmp_path, failing):
    store, env = failing
    out = admf_env({**env, "FAILING_AS": "busy"}, "--json", "sweep", store, "-s", "failing:flat", "-p", "window=3",
                   "--storage", tmp_path, "--cluster", "threads")
    assert out.returncode == 75
    assert out.stderr.splitlines()[-1] == "error: run 1234 is running on otherhost (pid 42) since 2026-01-01T02:00:00Z"
    (line,) = out.stdout.splitlines()
    summary = json.loads(line)
    assert (summary["command"], summary["status"], summary["exit_code"]) == ("sweep", "busy", 75)
    assert summary["error"].startswith("run 1234 is running") and summary["store"] == str(store)


def test_bad_input_exits_2_also_with_json(tmp_path):
    out = admf("--json", "sweep", tmp_path / "ds")  # -s is required
    assert out.returncode == 2 and "Missing option '--strategy'" in out.stderr
    assert json.loads(out.stdout)["status"] == "failed"
    out = admf("--log-file", tmp_path / "no" / "such" / "dir.log", "symbols", tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: cannot open the log file: No such file or directory")
    help_text = admf("--help").stdout
    for fragment in ("Exit codes:", "75   busy", "130  interrupted", "--log-file", "--json", "ADMF_PROGRESS"):
        assert fragment in help_text


def test_environment_variables_reach_every_command(tmp_path, small_bars, s3):
    bucket, options = s3
    env = {**os.environ, "ADMF_CLUSTER": "threads", "ADMF_STORAGE": str(tmp_path / "root"),
           "ADMF_LOG_FILE": str(tmp_path / "admf.log"),
           "ADMF_STORAGE_OPTIONS": f"endpoint_url={options['endpoint_url']} key=testing secret=testing"}
    # storage options from the environment: a store on the moto S3 server
    out = admf_env(env, "generate", f"{bucket}/ds", "--symbols", 2, "--start", "2022-01-01", "--end", "2022-12-31")
    assert out.returncode == 0, out.stderr
    # cluster, storage root and log file from the environment; -q: nothing on stderr
    out = admf_env(env, "-q", "sweep", f"{bucket}/ds", "-s", "sma_cross", "-p", "fast=5", "-p", "slow=20")
    assert out.returncode == 0, out.stderr
    assert out.stderr == "" and "top 1 by sharpe" in out.stdout
    assert len([p for p in (tmp_path / "root" / "runs").iterdir() if p.is_dir() and p.name[0] != "_"]) == 1
    log = (tmp_path / "admf.log").read_text()
    assert "cluster: threads" in log and re.search(r"^\d{4}-\d\d-\d\dT[\d:.]+Z INFO admf_dask\.", log, re.M)
    sweep_help = admf("sweep", "--help").stdout
    for name in ("ADMF_CLUSTER", "ADMF_STORAGE", "ADMF_MEMORY_BUDGET", "ADMF_STORAGE_OPTIONS"):
        assert name in sweep_help


def test_progress_bars_only_on_terminals_unless_asked_for(monkeypatch):
    from admf_dask.progress import Progress

    def draw(stream):
        bar = Progress("work", 10, stream=stream, delay=0)
        for _ in range(10):
            bar.advance()
        bar.close()

    monkeypatch.delenv("ADMF_PROGRESS", raising=False)
    piped = io.StringIO()
    draw(piped)
    assert piped.getvalue() == ""  # cron, CI: nothing
    master, replica = os.openpty()
    with os.fdopen(replica, "w") as terminal:
        draw(terminal)
        shown = b""
        while select.select([master], [], [], 0.5)[0]:  # a pty hands over what was written in pieces
            shown += os.read(master, 65536)
    os.close(master)
    assert b"\rwork [########################] 10/10 100%" in shown
    monkeypatch.setenv("ADMF_PROGRESS", "1")  # admf --progress
    draw(piped)
    assert piped.getvalue().count("\n") == 10 and "10/10 100%" in piped.getvalue()
