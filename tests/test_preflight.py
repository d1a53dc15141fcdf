"""Preflight and stored references: what runs record of their dataset, read back from elsewhere.

The bad inputs the preflight refuses (dates, symbols, clusters, unwritable roots, workflow
steps) are cases of the corpus (tests/test_corpus.py); here: the paths runs store.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.corpus_support import run_cli


@pytest.fixture(scope="module")
def made_here(tmp_path_factory):
    """A dataset, a signal set and a replay made with relative paths from one directory: (base, set id)."""
    base = tmp_path_factory.mktemp("relative")
    work = base / "work"
    work.mkdir()
    quiet = ["-q"]
    code, _, err, _ = run_cli([*quiet, "generate", "bars", "--symbols", "1", "--start", "2020-01-01",
                               "--end", "2020-12-31"], cwd=str(work))
    assert code == 0, err
    code, _, err, _ = run_cli([*quiet, "signals", "bars", "-c", "sma_cross:fast=5,slow=20", "--storage", "st",
                               "--cluster", "threads"], cwd=str(work))
    assert code == 0, err
    (set_id,) = _ids(work / "st" / "signals")
    return base, set_id


def _ids(path) -> list[str]:
    return [p.name for p in path.iterdir() if not p.name.startswith("_") and p.is_dir()]


def test_runs_and_sets_store_absolute_dataset_paths_and_replay_works_from_elsewhere(made_here):
    base, set_id = made_here
    manifest = json.loads((base / "work" / "st" / "signals" / set_id / "_signals.json").read_text())
    assert manifest["bars"] == str(base / "work" / "bars")
    elsewhere = base / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    code, _, err, _ = run_cli(["-q", "replay", set_id, "--grid", "0,1", "--storage", str(base / "work" / "st"),
                               "--cluster", "threads"], cwd=str(elsewhere))
    assert code == 0, err
    (run_id,) = _ids(base / "work" / "st" / "runs")
    run = json.loads((base / "work" / "st" / "runs" / run_id / "run.json").read_text())
    assert run["bars"] == str(base / "work" / "bars")
    assert os.listdir(elsewhere) == []  # nothing written where it ran


def test_an_older_relative_reference_read_from_elsewhere_is_one_clear_line(made_here, tmp_path):
    base, set_id = made_here
    path = base / "work" / "st" / "signals" / set_id / "_signals.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "bars": "bars"}))  # as admf stored it before: the path as typed
    try:
        code, _, err, _ = run_cli(["-q", "replay", set_id, "--grid", "0,1", "--storage", str(base / "work" / "st"),
                                   "--cluster", "threads"], cwd=str(tmp_path))
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "relative path 'bars'" in err and "--store" in err, err
        code, _, err, _ = run_cli(["-q", "replay", set_id, "--grid", "0,1", "--storage", "st", "--cluster",
                                   "threads"], cwd=str(base / "work"))  # from where it was made: still read
        assert code == 0, err
    finally:
        path.write_text(json.dumps(manifest))


def test_signals_top_more_than_the_runs_sets_is_refused_before_writing(made_here):
    from tests.corpus_support import tree_hash

    base, _ = made_here
    work = base / "work"
    code, _, err, _ = run_cli(["-q", "sweep", "bars", "-s", "sma_cross", "-p", "fast=5,10", "-p", "slow=20",
                               "--storage", "st", "--cluster", "threads"], cwd=str(work))
    assert code == 0, err
    before = tree_hash(str(work))
    code, _, err, _ = run_cli(["-q", "signals", "bars", "--from-run", "last", "--top", "1000", "--storage", "st",
                               "--cluster", "threads"], cwd=str(work))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "top 1000 is more than the 2 parameter set(s)" in err and "--top 2 or fewer" in err, err
    assert tree_hash(str(work)) == before


def test_a_run_removes_the_temporary_files_of_dead_writers_and_keeps_live_ones(made_here):
    import subprocess
    import sys
    import time

    from admf_dask.bars.txn import _HOST

    base, _ = made_here
    work = base / "work"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    cache = work / "st" / "cache" / "x"
    cache.mkdir(parents=True, exist_ok=True)
    tag = "0123456789ab"
    names = {"dead": f"a.pack.tmp-{_HOST}-{dead}-{tag}", "live": f"b.pack.tmp-{_HOST}-{os.getpid()}-{tag}",
             "old_elsewhere": f"c.json.tmp-ffffffff-1-{tag}", "new_elsewhere": f"d.json.tmp-ffffffff-1-{tag}",
             "old_untagged": "e.json.tmp-0f1e2d3c4b5a69788796a5b4c3d2e1f0", "not_ours": "notes.tmp-draft"}
    other = work / "st" / "mine"  # not a directory admf writes: never searched
    other.mkdir(exist_ok=True)
    old = time.time() - 2 * 24 * 3600
    for folder in (cache, other):
        for name in names.values():
            (folder / name).write_bytes(b"x")
            if not name.startswith(("b.", "d.")):
                os.utime(folder / name, (old, old))
    code, _, err, _ = run_cli(["-q", "sweep", "bars", "-s", "sma_cross", "-p", "fast=5,10", "-p", "slow=20",
                               "--storage", "st", "--cluster", "threads"], cwd=str(work))
    assert code == 0, err
    assert sorted(p.name for p in cache.iterdir()) == sorted([names["live"], names["new_elsewhere"],
                                                              names["not_ours"]])
    assert sorted(p.name for p in other.iterdir()) == sorted(names.values())


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    from admf_dask.cache import _allocate
    from admf_dask.storage import Storage, replacing

    storage = Storage(str(tmp_path))
    with pytest.raises(TypeError):
        storage.write_bytes([b"ok", object()], "a.json")  # fails while writing
    target = str(tmp_path / "b.pack")
    with pytest.raises(OSError) as raised, replacing(target) as tmp, open(tmp, "wb") as f:
        _allocate(f, 1 << 44)  # more than the disk: ENOSPC (or EFBIG) now, not a SIGBUS in a mapped write
    assert raised.value.errno in (28, 27), raised.value
    assert os.listdir(tmp_path) == []
