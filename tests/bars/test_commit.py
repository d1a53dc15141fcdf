"""Commits that never lose an update: concurrent writers, conditional PUTs, crashes, and readers that glob.

Everything is real: separate processes (forked by tests/bars/fork_ingest.py) killed
with SIGKILL, moto's S3 server over HTTP, and DuckDB, polars and pyarrow reading the
directory as they would any hive-partitioned dataset.
"""

from __future__ import annotations

import collections
import json
import re
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from admf_dask.bars import BarStore, Bars, generate_bars, write_symbol_files
from admf_dask.bars.txn import STAGING, Txn
from admf_dask.errors import DataError
from admf_dask.storage import Storage
from tests.conftest import snapshot

LAUNCHER = str(Path(__file__).with_name("fork_ingest.py"))
ROOT = str(Path(__file__).parents[2])


@pytest.fixture
def s3_quick(s3, monkeypatch):
    """The ``s3`` bucket, with the S3 clients of this test made without parsing botocore's models again."""
    import botocore.session

    from tests.bars.fork_ingest import botocore_loader

    loader = botocore_loader()
    monkeypatch.setattr(botocore.session, "create_loader", lambda *args, **kwargs: loader)
    return s3


def launch(jobs, crash_at=None, timeout=120):
    """Run `admf` command lines at once, one process each; their exit codes and the output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, LAUNCHER, json.dumps({"jobs": jobs, "crash_at": crash_at})],
                         capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out


def to_csv(path, bars: Bars) -> str:
    frame = bars.to_frame().reset_index()
    frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S%z")
    frame.to_csv(path, index=False, float_format="%.17g")
    return str(path)


def s3_args(options):
    return [f"-o{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items()]


def visible_parquet(root: Path) -> set[str]:
    """Data files at paths a reader that globs the dataset may open (not under a `_` directory)."""
    return {str(p.relative_to(root)) for p in root.rglob("*.parquet")
            if not any(part.startswith("_") for part in p.relative_to(root).parts)}


def listed(store: BarStore) -> set[str]:
    return {f["path"] for e in store.refresh().manifest["symbols"].values() for f in e["files"]}


# ------------------------------------------------------------------ conditional writes (S3)
def test_s3_manifest_writes_are_conditional_on_the_etag_read(s3_quick):
    bucket, options = s3_quick
    st = Storage(f"{bucket}/cond", options)
    assert st.read_versioned("m.json") == (None, None)
    assert st.write_if(b"one", "m.json", version=None)            # If-None-Match: * on a new key
    assert not st.write_if(b"two", "m.json", version=None)        # ... and on an existing key: 412
    data, etag = st.read_versioned("m.json")
    assert data == b"one" and etag
    assert st.write_if(b"three", "m.json", version=etag)          # If-Match the ETag read
    assert not st.write_if(b"four", "m.json", version=etag)       # a stale ETag: 412
    assert st.read_bytes("m.json") == b"three"
    assert st.read_versioned("m.json")[1] != etag


# ------------------------------------------------------------------ 20 concurrent ingests
def _twenty_csvs(tmp_path):
    paths = []
    for i in range(20):
        bars = generate_bars(f"C{i:02d}", "2023-11-01", "2024-02-29", seed=i)
        paths.append((bars, to_csv(tmp_path / f"C{i:02d}.csv", bars)))
    return paths


def _check_all_present(store: BarStore, inputs):
    store.refresh()
    assert store.symbols() == sorted(b.symbol for b, _ in inputs)
    for bars, _ in inputs:
        got = store.read(bars.symbol)
        np.testing.assert_array_equal(got.timestamp, bars.timestamp)
        np.testing.assert_allclose(got.close, bars.close, rtol=1e-15)
        assert store.entry(bars.symbol)["change"] == "new"


def test_twenty_concurrent_ingests_on_local_disk_lose_nothing(tmp_path):
    inputs = _twenty_csvs(tmp_path)
    store_dir = tmp_path / "store"
    BarStore(str(store_dir)).write([generate_bars("BASE", "2024-01-01", "2024-01-31", seed=99)])
    codes, out = launch([["ingest", str(store_dir), path] for _, path in inputs])
    assert codes == [0] * 20, out.stdout + out.stderr
    store = BarStore(str(store_dir))
    _check_all_present(BarStore(str(store_dir)), [(store.read("BASE"), None), *inputs])
    assert visible_parquet(store_dir) == listed(store)  # no orphan left at a glob-visible path
    assert not (store_dir / STAGING).exists()


def test_twenty_concurrent_ingests_on_s3_lose_nothing(tmp_path, s3_atomic_puts, s3_quick):
    bucket, options = s3_atomic_puts
    inputs = _twenty_csvs(tmp_path)
    url = f"{bucket}/concurrent"
    codes, out = launch([["ingest", url, path, *s3_args(options)] for _, path in inputs])
    assert codes == [0] * 20, out.stdout + out.stderr
    store = BarStore(url, options)
    _check_all_present(store, inputs)
    files = {p.removeprefix(store.storage.root + "/") for p in store.storage.fs.find(store.storage.root)}
    assert files - {"_dataset.json"} == listed(store)  # no staging, no orphan


# ------------------------------------------------------------------ a writer that loses the race redoes its merge
def _race(store: BarStore, other) -> None:
    """Make ``store``'s next commit find that ``other()`` committed just before it.

    Local disk: just before it takes the lock. S3: just before its conditional PUT,
    after it read the manifest and copied its files into place (the PUT then fails).
    """
    name = "write_if" if store.storage.conditional else "exclusive"
    real = getattr(store.storage, name)
    done = []

    def other_first(*args, **kwargs):
        if not done:
            done.append(other())
        return real(*args, **kwargs)

    setattr(store.storage, name, other_first)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_merge_that_loses_the_race_is_redone_on_the_new_version(tmp_path, request, where):
    if where == "s3":
        bucket, options = request.getfixturevalue("s3_quick")
        url = f"{bucket}/race"
    else:
        url, options = str(tmp_path / "race"), None
    full = generate_bars("RACE", "2023-12-01", "2024-03-29", seed=5)
    cut = lambda a, b: Bars("RACE", full.timestamp[a:b], {c: v[a:b] for c, v in full.columns.items()})  # noqa: E731
    BarStore(url, options).write([cut(0, 40)])
    v1 = BarStore(url, options).symbol_fingerprint("RACE")
    mine = BarStore(url, options)
    _race(mine, lambda: BarStore(url, options).update([cut(40, 60)], mode="append"))
    update = mine.update([cut(60, len(full))], mode="merge")
    store = BarStore(url, options)
    np.testing.assert_array_equal(store.read("RACE").timestamp, full.timestamp)  # both appends are there
    assert update.changes["RACE"].change == "append" and update.changes["RACE"].rows_before == 60
    assert store.extends("RACE", v1) == 40 and [v["rows"] for v in store.entry("RACE")["lineage"]] == [40, 60]
    if where == "s3":
        files = {p.removeprefix(store.storage.root + "/") for p in store.storage.fs.find(store.storage.root)}
        assert files - {"_dataset.json"} == listed(store)  # the files copied for the lost attempt are gone
    else:
        assert visible_parquet(Path(url)) == listed(store)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_append_that_no_longer_holds_on_the_new_version_fails_and_changes_nothing(tmp_path, request, where):
    if where == "s3":
        bucket, options = request.getfixturevalue("s3_quick")
        url = f"{bucket}/race"
    else:
        url, options = str(tmp_path / "race"), None
    full = generate_bars("RACE", "2024-01-01", "2024-03-29", seed=5)
    cut = lambda a, b: Bars("RACE", full.timestamp[a:b], {c: v[a:b] for c, v in full.columns.items()})  # noqa: E731
    BarStore(url, options).write([cut(0, 40)])
    mine = BarStore(url, options)
    left = {}

    def other():  # commits, and notes what it left: its manifest and the data files it lists
        store = BarStore(url, options)
        store.update([cut(40, 55)], mode="append")
        files = snapshot(store.storage.fs, store.storage.root)
        left.update({p: h for p, h in files.items() if p.endswith(("_dataset.json", "_dataset.lock"))
                     or p.removeprefix(store.storage.root + "/") in listed(store)})

    _race(mine, other)
    last, first = (pd.Timestamp(full.timestamp[i], tz="UTC").isoformat() for i in (54, 45))
    with pytest.raises(DataError, match=re.escape(f"after the stored last bar {last}; the first new bar is {first}")):
        mine.update([cut(45, 50)], mode="append")
    assert snapshot(mine.storage.fs, mine.storage.root) == left  # exactly as the other writer left it
    assert BarStore(url, options).entry("RACE")["rows"] == 55


# ------------------------------------------------------------------ crashes and readers that glob
def _glob_readers(root: Path) -> dict[str, pd.DataFrame]:
    """What DuckDB, polars (directory and glob) and pyarrow.dataset read: (symbol, timestamp ns, close) sorted."""
    import duckdb
    import polars as pl
    import pyarrow.dataset as ds

    def norm(frame):
        frame = frame.assign(symbol=frame["symbol"].astype(str),
                             timestamp=pd.to_datetime(frame["timestamp"], utc=True).astype("int64"))
        return frame[["symbol", "timestamp", "close"]].sort_values(["symbol", "timestamp"]).reset_index(drop=True)

    return {
        "duckdb": norm(duckdb.sql(f"select symbol, timestamp, close from read_parquet('{root}/**/*.parquet', "
                                  "hive_partitioning=true)").df()),
        "polars-dir": norm(pl.scan_parquet(str(root), hive_partitioning=True, hidden_file_prefix="_")
                           .select("symbol", "timestamp", "close").collect().to_pandas()),
        "polars-glob": norm(pl.scan_parquet(f"{root}/**/*.parquet", hive_partitioning=True)
                            .select("symbol", "timestamp", "close").collect().to_pandas()),
        "pyarrow": norm(ds.dataset(str(root), partitioning="hive").to_table(
            columns=["symbol", "timestamp", "close"]).to_pandas()),
    }


def _committed(store: BarStore) -> pd.DataFrame:
    frames = [pd.DataFrame({"symbol": s, "timestamp": b.timestamp, "close": b.close})
              for s, b in store.refresh().read_many(columns=["close"]).items()]
    return pd.concat(frames).sort_values(["symbol", "timestamp"]).reset_index(drop=True)


def _crash_setup(tmp_path):
    root = tmp_path / "store"
    store = BarStore(str(root))
    full = generate_bars("AAA", "2022-06-01", "2024-02-29", seed=3)
    split = lambda a, b: Bars("AAA", full.timestamp[a:b], {c: v[a:b] for c, v in full.columns.items()})  # noqa: E731
    dec1, dec15 = np.searchsorted(full.timestamp, [pd.Timestamp(d, tz="UTC").value for d in ("2023-12-01",
                                                                                            "2023-12-16")])
    store.write([split(0, dec15), generate_bars("BBB", "2022-06-01", "2023-12-29", seed=3)])
    # the crashing ingest adds a symbol and merges into AAA: bars after Dec 15 (its 2023 file is superseded)
    files = [to_csv(tmp_path / "AAA.csv", split(dec1, len(full))),
             to_csv(tmp_path / "CCC.csv", generate_bars("CCC", "2023-01-02", "2024-02-29", seed=4))]
    return root, store, files


def _outside_staging(store, root):
    return {p: h for p, h in snapshot(store.storage.fs, str(root)).items() if f"/{STAGING}/" not in p}


@pytest.mark.parametrize("crash_at", ["commit", "manifest"])
def test_a_writer_killed_mid_commit_leaves_readers_the_committed_rows(tmp_path, crash_at):
    root, store, files = _crash_setup(tmp_path)
    committed = _committed(store)
    before = _outside_staging(store, root)
    codes, _ = launch([["ingest", str(root), *files]], crash_at=crash_at)
    assert codes == [-9]  # SIGKILL
    (staging,) = (root / STAGING).iterdir()
    assert sorted(p.suffix for p in staging.iterdir() if p.suffix == ".staged") == (
        [".staged"] * 4 if crash_at == "commit" else [])  # AAA 2023 and 2024, CCC 2023 and 2024
    after = _outside_staging(store, root)
    orphans = visible_parquet(root) - listed(store)
    if crash_at == "commit":
        assert after == before and not orphans
    else:  # killed between the moves and the manifest write: the moved files are journaled orphans
        assert len(orphans) == 4 and {p: h for p, h in after.items() if p not in {str(root / o) for o in orphans}} \
            == before
        assert set(json.loads((staging / "_txn.json").read_text())["add"]) == orphans
    # BarStore readers trust only the manifest: the committed data, every listed file there
    pd.testing.assert_frame_equal(_committed(store), committed)
    readers = _glob_readers(root)
    for name, frame in readers.items():
        if crash_at == "commit":  # staged files are invisible to every glob reader
            pd.testing.assert_frame_equal(frame, committed, obj=name)
        else:  # the documented window: orphans at visible paths until the next commit
            assert len(frame) > len(committed), name
    # the next successful commit (another writer) clears the dead writer's staging and orphans
    BarStore(str(root)).update([generate_bars("DDD", "2024-01-01", "2024-01-31", seed=1)])
    assert not (root / STAGING).exists()
    assert visible_parquet(root) == listed(store)
    committed = _committed(store)
    assert set(committed["symbol"]) == {"AAA", "BBB", "DDD"}
    for name, frame in _glob_readers(root).items():
        pd.testing.assert_frame_equal(frame, committed, obj=name)


def test_a_failed_commit_on_s3_leaves_no_staging(s3_quick, tmp_path):
    bucket, options = s3_quick
    store = BarStore(f"{bucket}/failed", options)
    store.write([generate_bars("AAA", "2024-01-01", "2024-01-31", seed=1)])
    before = snapshot(store.storage.fs, store.storage.root)
    clash = generate_bars("AAA", "2024-01-15", "2024-02-15", seed=2)
    with pytest.raises(DataError, match="the bar at 2024-01-15T00:00:00\\+00:00 differs"):
        store.update([generate_bars("BBB", "2024-01-01", "2024-01-31", seed=1), clash])
    assert snapshot(store.storage.fs, store.storage.root) == before


def test_polars_scans_the_dataset_directory_and_matches_barstore(tmp_path):
    import polars as pl

    root = tmp_path / "store"
    store = BarStore(str(root))
    store.write([generate_bars(s, "2021-06-01", "2023-03-31", seed=i) for i, s in enumerate(("AAA", "BBB", "C.1"))])
    store.update([generate_bars("AAA", "2023-04-03", "2023-05-31", seed=9)], mode="append")
    live = Txn(store.storage)  # a writer at work: its staged files must not disturb the scan
    write_symbol_files(store.storage, generate_bars("ZZZ", "2024-01-01", "2024-01-31"), live)
    frame = (pl.scan_parquet(str(root), hive_partitioning=True, hidden_file_prefix="_")
             .sort("symbol", "timestamp").collect())
    assert frame.columns == ["timestamp", "open", "high", "low", "close", "volume", "symbol", "year"]
    assert sorted(frame["symbol"].unique().to_list()) == store.symbols()
    for symbol in store.symbols():
        part = frame.filter(pl.col("symbol") == symbol)
        bars = store.read(symbol)
        np.testing.assert_array_equal(part["timestamp"].dt.epoch("ns").to_numpy(), bars.timestamp)
        for c in ("open", "high", "low", "close", "volume"):
            np.testing.assert_array_equal(part[c].to_numpy(), bars.columns[c])
        np.testing.assert_array_equal(part["year"].to_numpy(), pd.DatetimeIndex(bars.timestamp).year)
    live.abort()


def test_clean_up_removes_dead_writers_staging_and_keeps_live_ones(tmp_path):
    from admf_dask.bars.txn import _HOST

    root = tmp_path / "store"
    store = BarStore(str(root))
    store.write([generate_bars("AAA", "2024-01-01", "2024-01-31", seed=1)])
    live = Txn(store.storage)  # this process: alive
    write_symbol_files(store.storage, generate_bars("BBB", "2024-01-01", "2024-01-31"), live)
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    now, old = (time.strftime("%Y%m%dT%H%M%S", time.gmtime(t)) for t in (time.time(), time.time() - 2 * 86400))
    writers = {  # id -> record (None: none written yet); the orphan is in every journal
        f"{now}-{_HOST}-{gone}-000000000001": None,                                  # this host, process gone
        f"{old}-elsewhere-7-000000000002": {"updated": time.time() - 2 * 86400},     # another host, a day idle
        f"{now}-elsewhere-7-000000000003": {"updated": time.time()},                 # another host, may live
        f"{old}-elsewhere-7-000000000004": {"updated": time.time() - 60},            # long, but wrote lately
        f"{now}-{_HOST}-{os.getpid()}-000000000005": {"updated": time.time()},       # this process
    }
    orphan = "symbol=AAA/year=2024/part-00000000000000000000-00000000.parquet"
    for txn_id, record in writers.items():
        (root / STAGING / txn_id).mkdir(parents=True)
        (root / STAGING / txn_id / "_AAA.2024.x.staged").write_bytes(b"staged")
        if record is not None:
            (root / STAGING / txn_id / "_txn.json").write_text(json.dumps({**record, "add": [orphan], "drop": []}))
    (root / orphan).write_bytes(b"moved in by a writer that then died")
    dead_with_journal = f"{old}-elsewhere-7-000000000002"
    store.update([generate_bars("CCC", "2024-01-01", "2024-01-31", seed=1)])
    assert sorted(p.name for p in (root / STAGING).iterdir()) == sorted(
        [live.id, *(t for t in writers if t[-1] in "345")])
    assert list((root / live.dir).iterdir())  # the live writer's staged files are untouched
    assert not (root / orphan).exists(), dead_with_journal  # removed through the dead writer's journal
    live.abort()


def test_threads_of_one_process_share_a_lock_on_other_filesystems():
    """memory:// and other fsspec filesystems: commits are serialised within a process (and only there)."""
    from concurrent.futures import ThreadPoolExecutor

    url = "memory://threads-commit/store"
    inputs = [generate_bars(f"T{i}", "2024-01-01", "2024-02-29", seed=i) for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda b: BarStore(url).update([b]), inputs))
    store = BarStore(url)
    assert store.symbols() == sorted(b.symbol for b in inputs)
    for b in inputs:
        np.testing.assert_array_equal(store.read(b.symbol).close, b.close)
    assert not store.storage.fs.exists(store.storage.path(STAGING))
    store.storage.fs.rm(store.storage.root, recursive=True)


def test_a_commit_whose_answer_was_lost_is_not_redone(tmp_path):
    """A manifest write that landed but reported failure (a lost HTTP answer) is recognised by its txn."""
    full = generate_bars("AAA", "2024-01-01", "2024-03-29", seed=2)
    store = BarStore(str(tmp_path / "store"))
    store.write([Bars("AAA", full.timestamp[:30], {c: v[:30] for c, v in full.columns.items()})])
    real = store.storage.write_if
    calls = []

    def lands_but_says_no(data, *parts, version):
        calls.append(real(data, *parts, version=version))
        return len(calls) > 1

    store.storage.write_if = lands_but_says_no
    update = store.update([Bars("AAA", full.timestamp[30:], {c: v[30:] for c, v in full.columns.items()})])
    assert calls == [True]  # written once; the second attempt found its own txn in the manifest
    assert update.changes["AAA"].change == "append"
    fresh = BarStore(str(tmp_path / "store"))
    assert fresh.entry("AAA")["change"] == "append" and fresh.extends("AAA", store.entry("AAA")["lineage"][0][
        "fingerprint"]) == 30
    np.testing.assert_array_equal(fresh.read("AAA").timestamp, full.timestamp)



def test_a_write_survives_concurrent_prunes_of_its_empty_directories(tmp_path, monkeypatch):
    """Finished transactions remove ``_staging`` when it is empty, and removals prune an emptied
    ``symbol=X/year=Y``: a writer that has just made such a directory must not lose it before its
    file is in it (twenty concurrent ingests failed this way: "cannot write: No such file or
    directory: .../_staging/<txn>"). The race is made certain: the first three times the writer
    has made its directories, a prune removes them before it goes on."""
    real = os.makedirs
    pruned = []

    def makedirs_then_pruned(path, *args, **kwargs):
        real(path, *args, **kwargs)  # (makedirs calls itself for missing parents: those pass)
        if len(pruned) < 3 and str(path) == str(tmp_path / "_staging" / "t"):
            os.rmdir(path)  # empty: what a concurrent commit's prune removes
            os.rmdir(os.path.dirname(path))
            pruned.append(path)

    monkeypatch.setattr(os, "makedirs", makedirs_then_pruned)
    Storage(str(tmp_path)).write_bytes(b"x", "_staging", "t", "f")
    assert len(pruned) == 3 and (tmp_path / "_staging" / "t" / "f").read_bytes() == b"x"
    assert os.listdir(tmp_path / "_staging" / "t") == ["f"]  # no temporary file left


# ------------------------------------------------------------------ files kept in memory on S3 (Txn.keep)
def _count_at_moto(monkeypatch, prefix: str) -> collections.Counter:
    """Requests under ``prefix`` the moto server receives: by method, CopyObject as ``PUT(copy)``."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    seen: collections.Counter = collections.Counter()
    call = DomainDispatcherApplication.__call__

    def counting(self, environ, start_response):
        query = environ.get("QUERY_STRING", "").replace("%2F", "/")
        if prefix in environ.get("PATH_INFO", "") + "?" + query:
            kind = environ["REQUEST_METHOD"] + ("(copy)" if "HTTP_X_AMZ_COPY_SOURCE" in environ else "")
            seen[kind + ("(list)" if "list-type" in query else "")] += 1
        return call(self, environ, start_response)

    monkeypatch.setattr(DomainDispatcherApplication, "__call__", counting)
    return seen


@pytest.mark.parametrize("hold_bytes", [None, "one file"])
def test_generate_on_s3_puts_held_files_in_place_and_stages_the_rest(s3_quick, tmp_path, monkeypatch,
                                                                  hold_bytes):
    """In process on S3, new files are kept in memory and PUT in place by the commit (no staging PUT, no
    CopyObject); past ``HOLD_BYTES`` they are staged and copied. The objects equal local disk's files."""
    import hashlib

    from admf_dask.bars import SyntheticSpec, generate_dataset, symbol_names
    from admf_dask.bars import txn as txn_module

    bucket, options = s3_quick
    names, spec = symbol_names(4), SyntheticSpec("2020-01-01", "2021-12-31", seed=3)
    local = BarStore(str(tmp_path / "local"))
    generate_dataset(local, names, spec, progress=False)
    if hold_bytes is not None:  # room for the smallest file only: one held, the others staged and copied
        monkeypatch.setattr(txn_module, "HOLD_BYTES", min(local.entry(s)["files"][0]["bytes"] for s in names))
    store = BarStore(f"{bucket}/gen", options)
    seen = _count_at_moto(monkeypatch, "/" + bucket.split("://", 1)[1])  # this test's bucket
    generate_dataset(store, names, spec, progress=False)
    staged = 0 if hold_bytes is None else len(names) - 1
    assert seen["PUT"] == len(names) + 2  # each file once (held: in place; else staged), the journal, the manifest
    assert seen["PUT(copy)"] == staged  # a staged file is copied into place

    def files(st):
        return sorted((p.split("symbol=")[1].split("/")[0], hashlib.sha256(st.fs.cat_file(p)).hexdigest())
                      for p in st.fs.find(st.root) if p.endswith(".parquet"))

    assert files(store.storage) == files(local.storage)  # byte for byte, one per symbol, nothing else
    assert sorted(p.rsplit("/", 1)[1] for p in store.storage.fs.find(store.storage.root)
                  if "symbol=" not in p) == ["_dataset.json"]  # no staging left
    assert store.refresh().fingerprint == local.fingerprint
    if hold_bytes is None:  # replaced: the superseded files go in one DeleteObjects, with no HEAD first
        seen.clear()
        generate_dataset(store, names, SyntheticSpec("2020-01-01", "2021-12-31", seed=4), progress=False)
        assert seen["HEAD"] == 0 and seen["DELETE"] == 0 and seen["POST"] == 2  # superseded; the staging
        assert {p.removeprefix(store.storage.root + "/") for p in store.storage.fs.find(store.storage.root)} \
            - {"_dataset.json"} == listed(store)


@pytest.mark.parametrize("crash_at", ["commit", "manifest"])
def test_a_writer_on_s3_killed_mid_commit_leaves_nothing_or_journaled_orphans(s3_quick, tmp_path, crash_at):
    bucket, options = s3_quick
    url = f"{bucket}/crash"
    store = BarStore(url, options)
    store.write([generate_bars("BBB", "2022-06-01", "2023-12-29", seed=3)])
    fs, root = store.storage.fs, store.storage.root
    before = snapshot(fs, root)
    csv = to_csv(tmp_path / "CCC.csv", generate_bars("CCC", "2021-01-04", "2023-02-28", seed=4))
    codes, _ = launch([["ingest", url, csv, *s3_args(options)]], crash_at=crash_at)
    assert codes == [-9]  # SIGKILL
    fs.invalidate_cache()
    after = snapshot(fs, root)
    if crash_at == "commit":  # the new files were held in memory: nothing was written at all
        assert after == before
    else:  # killed after its PUTs in place, before the manifest: journaled orphans, visible until recovered
        orphans = {p.removeprefix(root + "/") for p in set(after) - set(before) if "/_staging/" not in p}
        (journal,) = [p for p in set(after) - set(before) if p.endswith("/_txn.json")]
        assert len(orphans) == 3 and orphans == set(json.loads(fs.cat_file(journal))["add"])  # CCC: 3 years
        assert {p: h for p, h in after.items() if p in before} == before
    assert BarStore(url, options).symbols() == ["BBB"]
    BarStore(url, options).update([generate_bars("DDD", "2024-01-01", "2024-01-31", seed=1)])
    fs.invalidate_cache()
    left = {p.removeprefix(root + "/") for p in fs.find(root)}
    assert left - {"_dataset.json"} == listed(BarStore(url, options))  # no orphan, no staging
