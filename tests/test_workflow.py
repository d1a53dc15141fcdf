"""Workflows: the quickstart end to end, idempotent reruns, validation before anything runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest

from admf_dask.bars import BarStore
from admf_dask.errors import ConfigError
from admf_dask.workflow import load_workflow, run_workflow

QUICKSTART = Path(__file__).resolve().parents[1] / "workflows" / "quickstart.yaml"


def test_quickstart_runs_end_to_end_on_its_local_cluster_and_reruns_as_a_no_op(tmp_path):
    cmd = [sys.executable, "-m", "admf_dask.cli", "run", str(QUICKSTART), "--storage", str(tmp_path)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "wrote 8 symbol(s)" in first.stdout
    assert "cluster: local, 2 worker(s)" in first.stderr
    for i in range(8):
        assert f"SYM00{i}" in first.stdout
    store = BarStore(str(tmp_path / "bars" / "quickstart"))
    assert store.symbols() == [f"SYM00{i}" for i in range(8)]
    # the last step writes the sweep's report and prints its path
    (sweep_id,) = [p.parent.name for p in (tmp_path / "runs").glob("*/run.json")
                   if json.loads(p.read_text())["kind"] == "sweep"]
    report = tmp_path / "reports" / f"report-{sweep_id}.html"
    assert first.stdout.rstrip().splitlines()[-1] == f"report of sweep {sweep_id}: {report}"
    page = report.read_text()
    assert sweep_id in page and "Bokeh" in page
    assert not re.search(r"<script[^>]*\bsrc=", page) and not re.search(r"<link[^>]*\bhref=", page)  # no network
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout and store.fingerprint[:12] in second.stdout
    assert f"{report} (kept" in second.stdout and report.read_text() == page


def _workflow(tmp_path, text):
    path = tmp_path / "wf.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_workflow_on_s3_with_threads(tmp_path, s3):
    bucket, options = s3
    wf = _workflow(tmp_path, f"""\
        storage: {bucket}/admf
        storage_options: {{endpoint_url: "{options['endpoint_url']}", key: testing, secret: testing}}
        cluster: {{kind: threads, dashboard_address: ""}}
        steps:
          - generate: {{dataset: s3demo, symbols: [AAA, BBB], start: 2022-01-01, end: 2022-12-31, seed: 3}}
          - summary: {{dataset: s3demo, start: 2022-07-01}}
        """)
    lines = []
    run_workflow(load_workflow(wf), echo=lines.append)
    text = "\n".join(lines)
    assert "wrote 2 symbol(s)" in text and "AAA" in text and "2022-07-01" in text
    assert BarStore(f"{bucket}/admf/bars/s3demo", options).symbols() == ["AAA", "BBB"]


def test_ingest_step_reads_files_relative_to_the_workflow(tmp_path):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "XYZ.csv").write_text("Date,Open,High,Low,Close,Volume\n2020-01-02,10,11,9,10,1\n")
    wf = _workflow(tmp_path, """\
        storage: store
        cluster: threads
        steps:
          - ingest: {dataset: vendor, files: [csv/XYZ.csv]}
        """)
    run_workflow(load_workflow(wf), echo=lambda _: None)
    assert BarStore(str(tmp_path / "store" / "bars" / "vendor")).symbols() == ["XYZ"]


@pytest.mark.parametrize("text,fragments", [
    ("storage: x\nsteps:\n  - generate: {dataset: d, start: 2020-01-01, end: 2020-02-01, symbol: 3}\n",
     ["unknown key 'symbol' in steps[0].generate", "did you mean 'symbols'?"]),
    ("storage: x\nsteps:\n  - generat: {dataset: d}\n", ["unknown step 'generat'", "did you mean 'generate'?"]),
    ("storage: x\nsteps:\n  - generate: {dataset: d, start: 2020-01-01, end: 2020-02-01, seed: abc}\n",
     ["steps[0].generate.seed must be a whole number, got 'abc'"]),
    ("storage: x\nsteps:\n  - generate: {dataset: d, end: 2020-02-01}\n", ["steps[0].generate needs the key 'start'"]),
    ("storage: x\nclustr: local\nsteps: []\n", ["unknown key 'clustr'", "did you mean 'cluster'?"]),
    ("storage: x\ncluster: locl\nsteps:\n  - summary: {dataset: d}\n", ["cluster must be threads, local",
                                                                       "did you mean 'local'?"]),
    ("storage: x\nsteps:\n  - generate: {dataset: d, start: 2020-01-01, end: 2020-02-01, freq: hourly}\n",
     ["freq must be one of", "steps[0].generate.freq"]),
    ("storage: [unclosed\n", ["not valid YAML"]),
])
def test_bad_workflows_fail_before_anything_runs(tmp_path, text, fragments):
    wf = _workflow(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_workflow(wf)
    for fragment in fragments:
        assert fragment in str(err.value)
    assert str(wf) in str(err.value)
    assert not (tmp_path / "x").exists()


def test_bad_workflow_exits_2_from_the_cli(tmp_path):
    wf = _workflow(tmp_path, "storage: x\nsteps:\n  - generat: {}\n")
    out = subprocess.run([sys.executable, "-m", "admf_dask.cli", "run", str(wf)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith("error: unknown step 'generat'")


def test_environment_overrides_the_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("ADMF_CLUSTER", "threads")
    wf = _workflow(tmp_path, "storage: x\ncluster: local\nsteps:\n  - summary: {dataset: d}\n")
    assert load_workflow(wf).cluster.kind == "threads"
    assert load_workflow(wf, cluster="tcp://10.0.0.1:8786").cluster.kind == "tcp://10.0.0.1:8786"


NIGHTLY = """\
    name: nightly
    storage: store
    cluster: {kind: threads, dashboard_address: ""}
    steps:
      - generate: {dataset: d, symbols: 2, start: 2021-01-01, end: 2021-12-31}
      - sweep: {dataset: d, strategy: sma_cross, params: {fast: [5, 10], slow: [20, 30]}}
      - signals: {dataset: d, from_run: last, top: 2}
    """


def _iso(text):
    assert text.endswith("Z")
    return datetime.fromisoformat(text[:-1] + "+00:00")


def test_json_summary_of_a_run_and_of_a_failing_one(tmp_path):
    wf = _workflow(tmp_path, NIGHTLY)
    cmd = [sys.executable, "-m", "admf_dask.cli", "--json", "--log-file", str(tmp_path / "admf.log"), "run", str(wf)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()  # one JSON object and nothing else on stdout
    summary = json.loads(line)
    assert {k: summary[k] for k in ("command", "workflow", "status", "exit_code", "error", "cluster")} == \
        {"command": "run", "workflow": "nightly", "status": "ok", "exit_code": 0, "error": None, "cluster": "threads"}
    assert summary["storage"] == str(tmp_path / "store") and summary["version"] and summary["host"]
    assert _iso(summary["started"]) <= _iso(summary["steps"][0]["started"]) <= _iso(summary["finished"])
    generate, sweep, signals = summary["steps"]
    assert [s["kind"] for s in summary["steps"]] == ["generate", "sweep", "signals"]
    assert all(s["status"] == "ok" and s["warnings"] == [] and s["seconds"] >= 0 for s in summary["steps"])
    assert (generate["symbols"], generate["written"], generate["bars_written"]) == (2, 2, 522)
    assert (tmp_path / "store" / "runs" / sweep["run_id"] / "run.json").exists()
    assert (sweep["backtests"], sweep["param_sets"], sweep["already_done"]) == (8, 4, False)
    assert signals["set_id"] and len(signals["members"]) == 2
    assert "top 4 by sharpe" in out.stderr  # the step's text is still shown, on stderr
    assert "top 4 by sharpe" in (tmp_path / "admf.log").read_text()

    # a step that fails: the summary still comes, with the steps done, the failed one and the rest
    env = {**os.environ, "ADMF_MEMORY_BUDGET": "1KiB", "ADMF_STORAGE": str(tmp_path / "other")}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 2
    summary = json.loads(out.stdout)
    assert (summary["status"], summary["exit_code"]) == ("failed", 2)
    assert "memory_budget 1 KiB is smaller than one chunk" in summary["error"]
    assert [(s["kind"], s["status"]) for s in summary["steps"]] == \
        [("generate", "ok"), ("sweep", "failed"), ("signals", "not_run")]
    assert summary["steps"][1]["error"] == summary["error"] and summary["steps"][2]["started"] is None


def test_step_warnings_are_collected_per_step(tmp_path, monkeypatch):
    """A warning logged by admf during a step lands in that step's record (and --json's)."""
    import logging

    from admf_dask import workflow

    def warn(ctx, step):
        logging.getLogger("admf_dask.demo").warning("3 symbols have no bars in the range")
        return workflow.StepResult("done", {"symbols": 3})

    from admf_dask.bars import BarStore, generate_bars

    monkeypatch.setitem(workflow.STEPS, "summary", (workflow.SummaryStep, warn))
    BarStore(str(tmp_path / "x" / "bars" / "d")).write([generate_bars("AAA", "2024-01-01", "2024-01-31", seed=1)])
    wf = _workflow(tmp_path, "storage: x\ncluster: threads\nsteps:\n  - summary: {dataset: d}\n")
    (record,) = run_workflow(load_workflow(wf), echo=lambda _: None)
    assert (record.status, record.warnings, record.data) == ("ok", ["3 symbols have no bars in the range"],
                                                              {"symbols": 3})


@pytest.mark.parametrize("step,words", [("{run: sweep}", "run: sweep needs a sweep step before this one"),
                                        ("{run: replay}", "run: replay needs a replay step before this one"),
                                        ("{run: 0123abcd}", "no runs under"),
                                        ("{run: sweep, metric: sharp}", "unknown metric")])
def test_a_report_step_without_its_run_fails_before_anything_is_written(tmp_path, step, words):
    wf = _workflow(tmp_path, f"""\
        storage: store
        cluster: threads
        steps:
          - generate: {{dataset: d, symbols: 2, start: 2021-01-01, end: 2021-03-31}}
          - report: {step}
        """)
    with pytest.raises(ConfigError, match=words) as err:
        run_workflow(load_workflow(wf), echo=lambda _: None)
    assert "steps[1].report" in str(err.value)
    assert not (tmp_path / "store" / "bars").exists()
