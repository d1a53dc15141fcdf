"""The admf command, run as a real subprocess: exit codes, one-line errors, help."""

from __future__ import annotations

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
