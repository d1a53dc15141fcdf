"""Requests a sweep makes of S3, counted at the moto server (every one over HTTP): issue 16 item 2."""

from __future__ import annotations

import collections

import pyarrow.parquet as pq
import pytest

from admf_dask.bars import BarStore, generate_bars, symbol_names
from admf_dask.cluster import connect
from admf_dask.storage import StorageRef
from admf_dask.sweep import SweepConfig, run_sweep

THREADS = {"kind": "threads", "n_workers": 2, "dashboard_address": ""}
CONFIG = SweepConfig(strategy="sma_cross", params={"fast": [5, 10, 15, 20], "slow": [30, 40, 60]},
                     batch_seconds=0.0005)


def counted(monkeypatch, prefix: str):
    """(method, path) of every request under ``prefix`` the moto server receives in the block (a Counter)."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    seen: collections.Counter = collections.Counter()
    call = DomainDispatcherApplication.__call__

    def counting(self, environ, start_response):
        path, query = environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
        listed = "list-type" in query or "prefix=" in query
        where = path.rstrip("/") + ("/" + query.split("prefix=", 1)[1].split("&", 1)[0] if listed else "")
        if prefix in where.replace("%2F", "/"):
            seen[environ["REQUEST_METHOD"] + ("(list)" if listed else "")] += 1
        return call(self, environ, start_response)

    monkeypatch.setattr(DomainDispatcherApplication, "__call__", counting)
    return seen


def test_a_sweep_on_s3_makes_no_head_and_lists_each_prefix_once(s3, tmp_path, monkeypatch):
    bucket, options = s3
    options = {k: v for k, v in options.items() if k != "skip_instance_cache"}
    names = symbol_names(4)
    bars = [generate_bars(s, "2019-01-01", "2020-12-31", seed=5) for s in names]
    store = BarStore(f"{bucket}/bars", options)
    store.write(bars)
    local = BarStore(str(tmp_path / "bars"))
    local.write(bars)
    root = StorageRef.make(f"{bucket}/store", options)
    run_prefix = bucket.split("://", 1)[1] + "/store"
    with connect(THREADS) as client:
        want = run_sweep(CONFIG, local, StorageRef.make(str(tmp_path / "store")), client, progress=False)
        seen = counted(monkeypatch, run_prefix)
        accs = counted(monkeypatch, "/portfolio/part-")  # the accumulators (.acc): PUT by the tasks
        parts = counted(monkeypatch, "/results/part-")  # the tasks' results parts
        rows = counted(monkeypatch, "/portfolio/rows-")  # the reduce's PORTFOLIO rows
        leases = counted(monkeypatch, "/runs/_leases/")  # the run's lease
        got = run_sweep(CONFIG, store, root, client, progress=False)
        first, first_accs, first_parts, first_rows = dict(seen), dict(accs), dict(parts), dict(rows)
        first_leases = dict(leases)
        seen.clear()
        again = run_sweep(CONFIG, store, root, client, progress=False)
        rerun = dict(seen)
        run_dir = root.child("runs", got.run_id).open()
        tasks = len(run_dir.read_json("run.json")["layout"])
        run_dir.write_bytes(b'{"status": "compl', "run.json")  # damaged: --force still discards the run
        forced = run_sweep(CONFIG, store, root, client, progress=False, force=True)
    assert forced.summary["status"] == "complete" and forced.summary["tasks_resumed"] == 0
    assert tasks >= 2 and got.summary["status"] == "complete" and again.summary["status"] == "complete (already done)"
    # the reduce takes this run's accumulators from its tasks' results on the cluster: PUT once each, never GET
    assert first_accs.get("PUT", 0) == tasks and first_accs.get("GET", 0) == 0, first_accs
    # and the final table takes the parts' and the reduce's rows from the tasks' results: PUT once each, never GET
    assert first_parts == {"PUT": tasks} and first_rows.get("PUT", 0) >= 1 and "GET" not in first_rows, \
        (first_parts, first_rows)
    # the lease: created with a conditional PUT, no GET first (none is there), deleted at the end (its renewals
    # depend on the run's length: see test_a_lease_on_s3_is_created_with_one_put_and_confirmed_...)
    assert first_leases.get("GET", 0) == 0 and first_leases.get("DELETE") == 1 and first_leases.get("PUT"), \
        first_leases
    # no HEAD before a read or a write, no exists() (HEAD + LIST) before reading run.json or listing a prefix
    assert first.get("HEAD", 0) == 0, first
    # one LIST of the indicator cache for the run (not one per symbol); none of the done markers: a run this
    # process began (no run.json before it) has none, as its tasks start only once its run.json is written
    assert first.get("GET(list)", 0) == 1, first
    # four PUTs per task (accumulators, results part, end state, marker); the run's own: run.json twice, the
    # lease's, the kept probe, the reduce's, results.parquet, portfolio.parquet, the chain and latest pointers
    assert first.get("PUT", 0) <= 4 * tasks + 16, first
    # GETs: run.json (twice: before and after the lease), the kept probe, the chain pointer; none of the lease's
    # or the parts' (above); the bars (one per symbol) are outside the run's prefix
    assert first.get("GET", 0) <= 5, first
    # the summary reports the tasks' requests by operation (the monitor's count), and prints them in one line
    by_op = got.summary["storage_by_op"]
    assert by_op.get("put_object", 0) >= 4 * tasks and "head_object" not in by_op, by_op
    assert [line for line in got.lines() if line.startswith("storage: ")] == [
        f"storage: {got.summary['storage_requests']:,} requests during the tasks ("
        + ", ".join(f"{n:,} {op}" for op, n in sorted(by_op.items(), key=lambda kv: (-kv[1], kv[0]))) + ")"]
    # a finished run is reported from its run.json: a handful of requests, no listing
    assert sum(rerun.values()) <= 4 and rerun.get("GET(list)", 0) == 0, rerun
    # the table assembled from parts read once and held in memory is the local run's
    s3_table = pq.read_table(store.storage.fs.open(root.open().path("runs", got.run_id, "results.parquet"), "rb"))
    assert s3_table.equals(pq.read_table(f"{want.url}/results.parquet")), "S3 and local results differ"


def test_a_lease_on_s3_is_created_with_one_put_and_confirmed_without_one_moments_after_its_write(s3, monkeypatch):
    from admf_dask.errors import BusyError
    from admf_dask.leases import Lease
    from admf_dask.runs import lease_ref

    bucket, options = s3
    ref = lease_ref(StorageRef.make(f"{bucket}/store", options), "sweep", "x")
    seen = counted(monkeypatch, "/_leases/")
    lease = Lease(ref, "sweep run x", heartbeat=1000, expiry=2000).acquire()  # no beat during the test
    assert seen == {"PUT": 1}  # created outright (If-None-Match), not read first
    lease.confirm()  # written moments ago (< heartbeat / 4): no one can have taken it over before its expiry
    assert seen == {"PUT": 1}
    lease._renewed -= 300  # as if written 300 s ago: confirm renews now
    lease.confirm()
    assert seen == {"PUT": 2}
    with pytest.raises(BusyError, match="sweep run x is running on"):  # a live lease: the create fails, then
        Lease(ref, "sweep run x").acquire()  # it is read and judged
    assert seen == {"PUT": 3, "GET": 1}
    lease.release()
    assert seen == {"PUT": 3, "GET": 1, "DELETE": 1}


class Flight:
    """What :func:`in_flight` saw: ``most`` requests served at once. While ``expect`` is set, a request is held
    until that many have been in flight together (or ``delay`` has passed), so requests sent together are seen
    together even on a loaded machine (0: not held); without it, each is held ``delay``."""

    def __init__(self, expect: int | None) -> None:
        self.most, self.now, self.expect = 0, 0, expect


def in_flight(monkeypatch, prefix: str, delay: float, method: str = "GET", expect: int | None = None) -> Flight:
    """The most GETs (``method`` requests) under ``prefix`` the moto server was serving at once, each held
    first (:class:`Flight`): a store with latency, so that reads one after another cannot overlap."""
    import threading

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    flight, cond = Flight(expect), threading.Condition()
    call = DomainDispatcherApplication.__call__

    def slow(self, environ, start_response):
        if environ["REQUEST_METHOD"] != method or prefix not in environ.get("PATH_INFO", ""):
            return call(self, environ, start_response)
        with cond:
            flight.now += 1
            flight.most = max(flight.most, flight.now)
            cond.notify_all()
            cond.wait_for(lambda: flight.expect is not None and flight.most >= flight.expect, timeout=delay)
        try:
            return call(self, environ, start_response)
        finally:
            with cond:
                flight.now -= 1

    monkeypatch.setattr(DomainDispatcherApplication, "__call__", slow)
    return flight


def test_read_ahead_builds_the_same_sets_from_s3(s3, monkeypatch):
    import numpy as np

    from admf_dask.cache import InlineSet, read_ahead, resolve
    from admf_dask.indicators import IndicatorSpec

    bucket, options = s3
    names = symbol_names(3)
    store = BarStore(f"{bucket}/bars", options)
    store.write([generate_bars(s, "2020-01-01", "2020-12-31", seed=3) for s in names])
    specs = (IndicatorSpec.make("sma", window=5), IndicatorSpec.make("sma", window=20))
    sources = [InlineSet(store.ref, s, None, None, specs, None, store.fingerprint) for s in names]
    BarStore.open(store.ref, store.fingerprint)  # this process's reader, as a worker's: its manifest read once
    flight = in_flight(monkeypatch, "/bars/", 2.0, expect=len(names))
    got = read_ahead(sources, resolve)
    # every symbol's bars requested at once, not one after another: the round trips overlap
    assert flight.most == len(names), flight.most
    flight.most, flight.expect = 0, 0
    monkeypatch.setenv("ADMF_BAR_CACHE_MB", "0")  # read again from the store, not from this process's copies
    want = [resolve(s) for s in sources]
    assert flight.most == 1, flight.most  # the control: in order, one read at a time
    assert [s.symbol for s in got] == names
    for g, w in zip(got, want):
        assert g.data_key == w.data_key and len(g.bars) == len(w.bars) > 200
        for spec in specs:
            np.testing.assert_array_equal(g.get(spec), w.get(spec))
    # bars this process keeps (read above, the cache on again) are read in order, as from local disk: no
    # thread pool beside the sets being built, and no request
    monkeypatch.delenv("ADMF_BAR_CACHE_MB")
    assert all(s.bars_kept() for s in sources)
    import concurrent.futures

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", None)  # read_ahead would fail to start one
    flight.most = 0
    kept = read_ahead(sources, resolve)
    assert flight.most == 0 and [s.symbol for s in kept] == names
    for k, w in zip(kept, want):
        for spec in specs:
            np.testing.assert_array_equal(k.get(spec), w.get(spec))
    from admf_dask.bars import store as bar_store

    bar_store._FETCHED.clear()  # the copies dropped: each is fetched (read ahead) again
    assert not any(s.bars_kept() for s in sources)


def test_storage_each_overlaps_reads_in_order_and_raises_the_first_error(s3, monkeypatch):
    import pytest

    from admf_dask.errors import StorageError

    bucket, options = s3
    storage = StorageRef.make(f"{bucket}/each", options).open()
    for i in range(5):
        storage.write_bytes(bytes([i]) * 10, f"f{i}")
    flight = in_flight(monkeypatch, "/each/", 2.0, expect=5)
    order = [4, 0, 3, 1, 2]
    assert storage.each(storage.read_bytes, [f"f{i}" for i in order]) == [bytes([i]) * 10 for i in order]
    assert flight.most == 5, flight.most  # all five GETs at once
    flight.expect = 0
    with pytest.raises(StorageError) as err:  # both missing: the error is the first one's in order
        storage.each(storage.read_bytes, ["f0", "f9", "f8"])
    assert "each/f9" in str(err.value) and "each/f8" not in str(err.value), str(err.value)


def test_the_monitor_counts_copy_conditional_writes_and_lease_requests(s3):
    from admf_dask.leases import _S3
    from admf_dask.monitor import REQUESTS
    from admf_dask.storage import Storage

    bucket, options = s3
    storage = Storage(f"{bucket}/counted", options)
    storage.write_bytes(b"x", "a")
    REQUESTS.reset()
    storage.copy("a", "b")  # one CopyObject
    assert storage.write_if(b"y", "c", version=None) and not storage.write_if(b"z", "c", version=None)
    lease = _S3(storage, "lease.json")  # a run's lease: conditional PUT and DELETE
    lease.delete(lease.write(b"{}", None))
    ops = REQUESTS.snapshot()["ops"]
    assert ops == {"copy_object": 1, "put_object": 3, "delete_object": 1}, ops


def test_uploads_put_each_file_while_the_caller_works_and_raise_the_first_failure(s3, monkeypatch):
    import time

    import pytest

    from admf_dask.errors import StorageError

    bucket, options = s3
    storage = StorageRef.make(f"{bucket}/up", options).open()
    flight = in_flight(monkeypatch, "/up/", 0.2, method="PUT")
    pending = storage.uploads()
    pending["a"] = b"a" * 1000
    deadline = time.monotonic() + 5
    while flight.most == 0 and time.monotonic() < deadline:  # the caller works on; the PUT is already out
        time.sleep(0.01)
    assert flight.most == 1, flight.most
    pending["b"] = [b"b", memoryview(b"bb")]  # buffers are joined
    pending.wait()
    assert storage.read_bytes("a") == b"a" * 1000 and storage.read_bytes("b") == b"bbb"
    missing = StorageRef.make(f"{bucket}-gone/up", options).open()  # no such bucket: every PUT fails
    pending = missing.uploads()
    pending["x"], pending["y"] = b"x", b"y"
    with pytest.raises(StorageError) as err:
        pending.wait()
    assert "up/x" in str(err.value) and "up/y" not in str(err.value), str(err.value)


def test_bar_files_fetched_from_s3_are_kept_per_process_by_their_content(s3, monkeypatch):
    """A second read of the same files makes no GET; a file of new content is fetched; 0 MB keeps none."""
    import numpy as np

    from admf_dask.errors import ConfigError

    bucket, options = s3
    options = {k: v for k, v in options.items() if k != "skip_instance_cache"}  # one s3fs client, not one each
    old = generate_bars("AAA", "2021-01-01", "2021-06-30", seed=3)
    BarStore(f"{bucket}/bars", options).write([old, generate_bars("BBB", "2021-01-01", "2021-06-30", seed=4)])
    seen = counted(monkeypatch, "/bars/symbol=")
    first = BarStore(f"{bucket}/bars", options).read("AAA")
    fetched = seen["GET"]
    again = BarStore(f"{bucket}/bars", options).read("AAA")  # another reader of the same manifest: kept
    assert fetched >= 1 and seen["GET"] == fetched, dict(seen)
    np.testing.assert_array_equal(again.columns["close"], first.columns["close"])
    np.testing.assert_array_equal(first.columns["close"], old.columns["close"])
    new = generate_bars("AAA", "2021-01-01", "2021-06-30", seed=9)  # same path pattern, other content
    BarStore(f"{bucket}/bars", options).write([new])
    got = BarStore(f"{bucket}/bars", options).read("AAA")
    assert seen["GET"] > fetched and not np.array_equal(got.columns["close"], old.columns["close"])
    np.testing.assert_array_equal(got.columns["close"], new.columns["close"])
    monkeypatch.setenv("ADMF_BAR_CACHE_MB", "0")
    before = seen["GET"]
    BarStore(f"{bucket}/bars", options).read("BBB")
    once = seen["GET"] - before
    BarStore(f"{bucket}/bars", options).read("BBB")
    assert once >= 1 and seen["GET"] - before == 2 * once, dict(seen)
    monkeypatch.setenv("ADMF_BAR_CACHE_MB", "lots")
    with pytest.raises(ConfigError, match="ADMF_BAR_CACHE_MB='lots'"):
        BarStore(f"{bucket}/bars", options).read("BBB")


def gated(monkeypatch, hold: str, fail: str):
    """PUTs whose path has ``hold`` wait for the returned Event; PUTs whose path has ``fail`` are refused (403)."""
    import threading

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    gate, call = threading.Event(), DomainDispatcherApplication.__call__

    def gating(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if environ["REQUEST_METHOD"] == "PUT" and fail in path:
            start_response("403 Forbidden", [("Content-Type", "application/xml")])
            return [b"<Error><Code>AccessDenied</Code><Message>refused by the test</Message></Error>"]
        if environ["REQUEST_METHOD"] == "PUT" and hold in path:
            assert gate.wait(30), "the test never opened the gate"
        return call(self, environ, start_response)

    monkeypatch.setattr(DomainDispatcherApplication, "__call__", gating)
    return gate


def test_a_part_commits_behind_the_next_task_marker_last_and_its_failure_reaches_the_driver(s3, monkeypatch):
    """Uploads.commit_later and the worker's registry (container._commit_later, flush_commits): the task does not
    wait for its PUTs; the marker is PUT only after every file is in place; a failed file leaves no marker and is
    raised by the flush; at most _LATER_MAX commits are in flight per process."""
    import asyncio
    import threading
    from types import SimpleNamespace

    from admf_dask.errors import StorageError
    from admf_dask.sweep import container

    bucket, options = s3
    ref = StorageRef.make(f"{bucket}/run", options)
    storage = ref.open()
    gate = gated(monkeypatch, "/run/held", "/run/refused")
    task = SimpleNamespace(run_ref=ref, part=0)
    pending = storage.uploads()
    assert pending.later
    pending["held-a"], pending["b"] = b"a" * 1000, b"b"
    container._commit_later(task, pending.commit_later("done/part-0.json", b"{}"))  # returns with a PUT held
    assert storage.read_optional("done/part-0.json") is None  # the marker waits for held-a
    more = storage.uploads()
    more["held-c"] = b"c"
    container._commit_later(SimpleNamespace(run_ref=ref, part=1), more.commit_later("done/part-1.json", b"{}"))
    third = storage.uploads()
    third["d"] = b"d"
    waiting = threading.Thread(target=container._commit_later,
                               args=(SimpleNamespace(run_ref=ref, part=2), third.commit_later("done/part-2.json", b"{}")))
    waiting.start()
    waiting.join(0.2)
    assert waiting.is_alive(), "a third commit did not wait for the two in flight"
    gate.set()
    waiting.join(10)
    assert sorted(asyncio.run(container.flush_commits(ref.url))) == [0, 1, 2]
    assert storage.read_bytes("held-a") == b"a" * 1000 and storage.read_bytes("done/part-1.json") == b"{}"
    assert asyncio.run(container.flush_commits(ref.url)) == []  # flushed: forgotten
    failing = storage.uploads()
    failing["refused"], failing["e"] = b"x", b"e"
    container._commit_later(SimpleNamespace(run_ref=ref, part=3), failing.commit_later("done/part-3.json", b"{}"))
    with pytest.raises(StorageError) as err:
        asyncio.run(container.flush_commits(ref.url))
    assert "run/refused" in str(err.value), str(err.value)
    assert storage.read_optional("done/part-3.json") is None and storage.read_bytes("e") == b"e"



def test_a_bar_file_damaged_in_storage_after_a_process_kept_it_is_one_error_where_it_is_fetched(s3, monkeypatch):
    """The process that fetched and kept a file goes on serving the bytes it checked; a process without a copy (a
    fresh one: nothing in _FETCHED) fetches the damaged file and stops with one error naming it. A flipped bit
    of a daily file mostly still parses: only the manifest's sha256 of the arrays tells."""
    import io

    import numpy as np

    from admf_dask.bars import store as store_module
    from admf_dask.errors import StorageError

    bucket, options = s3
    bars = generate_bars("AAA", "2021-01-01", "2021-12-31", seed=3)
    store = BarStore(f"{bucket}/bars", options)
    store.write([bars])
    np.testing.assert_array_equal(BarStore(f"{bucket}/bars", options).read("AAA").columns["close"],
                                  bars.columns["close"])  # fetched, checked, kept by this process
    (meta,) = store.entry("AAA")["files"]
    raw = store.storage.read_bytes(meta["path"])
    damaged = bytearray(raw)
    damaged[len(raw) // 2] ^= 0x10
    assert not pq.read_table(io.BytesIO(bytes(damaged))).equals(pq.read_table(io.BytesIO(raw)))  # it parses
    store.storage.write_bytes(bytes(damaged), meta["path"])
    kept = BarStore(f"{bucket}/bars", options).read("AAA")
    np.testing.assert_array_equal(kept.columns["close"], bars.columns["close"])
    monkeypatch.setattr(store_module, "_FETCHED", store_module._FileCache())  # a fresh process
    for cache in ("64", "0"):  # kept or not, a fetched file is checked
        monkeypatch.setenv("ADMF_BAR_CACHE_MB", cache)
        with pytest.raises(StorageError, match="does not hold the bars the manifest records") as err:
            BarStore(f"{bucket}/bars", options).read("AAA")
        assert meta["path"] in str(err.value) and "AAA" in str(err.value) and "\n" not in str(err.value)
