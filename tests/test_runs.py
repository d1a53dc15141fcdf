"""Runs: one process per run (leases.py, on local disk and S3), latest pointers, `admf runs list|show|gc`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from admf_dask.bars import BarStore, generate_bars
from admf_dask.cli import cli
from admf_dask.cluster import connect
from admf_dask.errors import BusyError
from admf_dask.leases import HOST, Lease, read_lease
from admf_dask.replay import ReplayConfig, run_replay
from admf_dask.runs import gc_runs, lease_ref, list_runs, workflow_latest
from admf_dask.signals import SignalsConfig, generate_signals
from admf_dask.storage import StorageRef
from admf_dask.sweep import SweepConfig, run_sweep
from admf_dask.workflow import load_workflow, run_workflow

THREADS = {"kind": "threads", "n_workers": 2, "dashboard_address": ""}
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                     os.environ.get("PYTHONPATH", "")])}

# A real `admf` process, started ahead and held until a go-file appears, so that several
# of them reach their leases within milliseconds of each other (not seconds of imports apart).
ARMED = """
import os, sys, time
import distributed, admf_dask.cli, admf_dask.workflow, admf_dask.sweep, admf_dask.replay, admf_dask.signals
open(f"{sys.argv[1]}.{os.getpid()}", "w").close()  # ready
while not os.path.exists(sys.argv[1]):
    time.sleep(0.005)
admf_dask.cli.main(sys.argv[2:])
"""


def armed(go: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", ARMED, str(go), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def release(go: Path, *procs: subprocess.Popen) -> None:
    """Start armed processes once all of them have imported what they need."""
    deadline = time.time() + 120
    while not all(Path(f"{go}.{p.pid}").exists() for p in procs) and time.time() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    go.touch()


@pytest.fixture(scope="module")
def atomic_s3():
    """A moto S3 server that applies one request at a time, as S3 applies a conditional write: atomically.

    moto checks If-None-Match / If-Match and then stores the object as two steps of one request
    (moto/s3/responses.py, put_object), so on its threaded server two concurrent conditional
    PUTs of a new key can both succeed (about one race in 20 here); on S3 one gets 412.
    """
    import uuid

    import s3fs
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app, lock = DomainDispatcherApplication(create_backend_app), threading.Lock()

    def one_at_a_time(environ, start_response):
        with lock:
            return list(app(environ, start_response))

    server = make_server("127.0.0.1", 0, one_at_a_time, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # one cached s3fs instance, as in production (a fresh one per lease spends ~0.5 s making its session)
    options = {"endpoint_url": f"http://127.0.0.1:{server.server_address[1]}", "key": "testing", "secret": "testing"}
    bucket = f"leases-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**options).mkdir(bucket)
    yield f"s3://{bucket}", options
    server.shutdown()
    thread.join()


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return StorageRef.make(str(tmp_path / "root"))
    bucket, options = request.getfixturevalue("atomic_s3")
    return StorageRef.make(f"{bucket}/{tmp_path.name}", options)


def _stale(ref: StorageRef, **changes) -> None:
    """Write a lease as another process would have left it (by default: another host, expired 5 minutes ago)."""
    doc = {"format": "admf-lease/1", "what": "sweep run x", "host": "old-host", "pid": 4242, "pid_ns": None,
           "token": "old", "acquired_at": "2024-01-01T00:00:00.000Z", "heartbeat_at": _ago(300),
           "expires_at": _ago(240), "heartbeat_seconds": 10.0, "expiry_seconds": 60.0, **changes}
    parent, name = ref.url.rsplit("/", 1)
    StorageRef(parent, ref.storage_options).open().write_bytes(json.dumps(doc).encode(), name)


def _ago(seconds: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(time.time() - seconds, timezone.utc).isoformat(timespec="milliseconds")


def _race(ref: StorageRef, n: int = 8) -> tuple[list[Lease], list[BusyError], list[str]]:
    """n threads acquire the same lease at once: (winners, the losers' errors, every echoed line)."""
    barrier = threading.Barrier(n)
    won, lost, lines = [], [], []

    def attempt() -> None:
        lease = Lease(ref, "sweep run x", heartbeat=0.2, expiry=5.0)
        barrier.wait()
        try:
            won.append(lease.acquire(echo=lines.append))
        except BusyError as exc:
            lost.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(n)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave between any two steps of an acquire, not every 5 ms
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    return won, lost, lines


ROUNDS = {"local": 40, "s3": 3}  # a local race takes ~10 ms, one over HTTP ~0.3 s


def test_of_many_concurrent_acquirers_exactly_one_wins(root):
    for r in range(ROUNDS[root.url.split(":")[0] if "://" in root.url else "local"]):
        ref = lease_ref(root, "sweep", f"x{r}")
        won, lost, lines = _race(ref)
        assert len(won) == 1 and len(lost) == 7, (r, won, lost)
        assert not lines  # nothing was taken over
        for exc in lost:
            assert exc.exit_code == 75
            assert f"sweep run x is running on {HOST} (pid {os.getpid()}) since " in str(exc)
        assert read_lease(ref)["token"] == won[0].token
        won[0].release()
        assert read_lease(ref) is None


def test_a_stale_lease_is_taken_over_once_with_a_warning_naming_its_owner(root):
    for r in range(ROUNDS[root.url.split(":")[0] if "://" in root.url else "local"]):
        ref = lease_ref(root, "sweep", f"x{r}")
        _stale(ref)
        won, lost, lines = _race(ref)
        assert len(won) == 1 and len(lost) == 7, (r, won, lost)
        assert len(lines) == 1
        assert lines[0].startswith("warning: taking over the lease of sweep run x from old-host (pid 4242) since "
                                   "2024-01-01T00:00:00Z (expired at ")
        assert read_lease(ref)["token"] == won[0].token
        won[0].release()


def test_the_lease_of_a_dead_process_on_this_host_is_taken_over_before_it_expires(tmp_path):
    ref = lease_ref(StorageRef.make(str(tmp_path)), "sweep", "x")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pid_ns = os.readlink("/proc/self/ns/pid")
    _stale(ref, host=HOST, pid=os.getpid(), pid_ns=pid_ns, expires_at=_ago(-3600))  # alive: this process
    with pytest.raises(BusyError, match=f"running on {HOST} \\(pid {os.getpid()}\\)"):
        Lease(ref, "sweep run x").acquire()
    _stale(ref, host=HOST, pid=dead.pid, pid_ns=pid_ns, expires_at=_ago(-3600))
    lines = []
    with Lease(ref, "sweep run x").acquire(echo=lines.append):
        assert lines == [f"warning: taking over the lease of sweep run x from {HOST} (pid {dead.pid}) since "
                         f"2024-01-01T00:00:00Z (its process {dead.pid} has ended)"]
    assert read_lease(ref) is None


def test_the_heartbeat_keeps_the_lease_and_a_takeover_stops_the_holder_at_its_next_check(root):
    ref = lease_ref(root, "sweep", "x")
    holder = Lease(ref, "sweep run x", heartbeat=0.1, expiry=0.6).acquire()
    time.sleep(1.0)  # past the first expiry: only the heartbeat keeps it
    with pytest.raises(BusyError):
        Lease(ref, "sweep run x").acquire()
    holder.check()
    _stale(ref, host="new-host", pid=77, token="new", expires_at=_ago(-3600))  # another process took it over
    deadline = time.time() + 5
    with pytest.raises(BusyError, match="sweep run x: this process lost its lease to new-host \\(pid 77\\)"):
        while time.time() < deadline:
            holder.check()
            time.sleep(0.05)
    holder.release()
    assert read_lease(ref)["token"] == "new"  # the new owner's lease is left alone


def test_wait_polls_until_the_holder_releases(tmp_path):
    ref = lease_ref(StorageRef.make(str(tmp_path)), "sweep", "x")
    first = Lease(ref, "sweep run x").acquire()
    second, lines = Lease(ref, "sweep run x"), []
    waiter = threading.Thread(target=lambda: second.acquire(wait=True, echo=lines.append, poll=0.05))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and not second.held
    first.release()
    waiter.join(5)
    assert second.held and read_lease(ref)["token"] == second.token
    assert lines and lines[0].startswith(f"waiting for sweep run x: running on {HOST} (pid {os.getpid()})")
    second.release()


def test_sigterm_releases_the_lease(tmp_path):
    ref = lease_ref(StorageRef.make(str(tmp_path)), "sweep", "x")
    script = ("import time\nfrom admf_dask.leases import Lease\nfrom admf_dask.storage import StorageRef\n"
              f"with Lease(StorageRef({ref.url!r}), 'sweep run x').acquire():\n"
              "    print('held', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    assert proc.stdout.readline() == "held\n"
    assert read_lease(ref)["pid"] == proc.pid
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    assert "KeyboardInterrupt" in proc.stderr.read()
    assert read_lease(ref) is None


def _results(run_dir: Path) -> tuple[dict, list[Path], int]:
    run = json.loads((run_dir / "run.json").read_text())
    parts = sorted((run_dir / "results").glob("*.parquet"))
    return run, parts, sum(pq.read_metadata(p).num_rows for p in parts)


def test_overlapping_runs_of_one_workflow_exit_75_or_wait_and_compute_once(tmp_path):
    wf = tmp_path / "wf.yaml"
    wf.write_text(textwrap.dedent("""\
        name: overlap
        storage: store
        cluster: {kind: threads, n_workers: 2, dashboard_address: ""}
        steps:
          - generate: {dataset: d, symbols: 3, start: 2019-01-01, end: 2021-12-31, seed: 1}
          - sweep: {dataset: d, strategy: sma_cross, params: {fast: [5, 10, 20], slow: [40, 80]}, batch_seconds: 0.0001}
        """))
    go = tmp_path / "go"
    first = armed(tmp_path / "go-first", "run", wf)
    second, waiting = armed(go, "run", wf), armed(go, "run", wf, "--wait")
    release(tmp_path / "go-first", first)
    lease = tmp_path / "store" / "workflows" / "overlap" / "_lease.json"
    deadline = time.time() + 60
    while not lease.exists() and time.time() < deadline:
        time.sleep(0.002)
    release(go, second, waiting)  # the other two start while the first holds the workflow
    busy = second.communicate(timeout=120)
    assert second.returncode == 75, busy
    errors = [line for line in busy[1].splitlines() if line.startswith("error:")]  # the rest: timestamped log lines
    assert errors == [errors[0]] and errors[0].startswith(
        f"error: workflow overlap is running on {HOST} (pid {first.pid}) since "), busy[1]
    out = [p.communicate(timeout=120) for p in (first, waiting)]
    assert first.returncode == 0 and waiting.returncode == 0, out
    assert f"waiting for workflow overlap: running on {HOST} (pid {first.pid})" in out[1][1]
    assert "complete (already done)" in out[1][0]  # it found the first one's work done
    run_dir = next((tmp_path / "store" / "runs").glob("[0-9a-f]*"))
    run, parts, _ = _results(run_dir)
    assert len(parts) == len(run["layout"]) > 1 and len(list((run_dir / "done").iterdir())) == len(parts)
    table = pq.read_table(run_dir / "results.parquet").to_pandas()
    per_symbol = table[table["symbol"] != "PORTFOLIO"]
    assert len(per_symbol) == 6 * 3 == len(per_symbol.drop_duplicates(["set_id", "symbol"]))
    assert not lease.exists()
    pointer = json.loads((tmp_path / "store" / "workflows" / "overlap" / "latest" / "1-sweep.json").read_text())
    assert pointer["id"] == run["run_id"] and pointer["kind"] == "sweep"


@pytest.fixture(scope="module")
def client():
    with connect(THREADS) as c:
        yield c


def _sweep(store, root, client, fast, force=False):
    config = SweepConfig(strategy="sma_cross", params={"fast": fast, "slow": [40, 80]})
    return run_sweep(config, store, root, client, progress=False, echo=lambda _: None, force=force)


def _cli(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_two_sweeps_of_one_run_started_together_compute_it_once(tmp_path, client):
    store = BarStore(str(tmp_path / "bars"))
    store.write([generate_bars(s, "2019-01-01", "2021-12-31", seed=2) for s in ("AAA", "BBB")])
    root = StorageRef.make(str(tmp_path / "store"))
    config = SweepConfig(strategy="sma_cross", params={"fast": [5, 10, 20], "slow": [40, 80]}, batch_seconds=1e-6)
    barrier, lines, results = threading.Barrier(2), [[], []], [None, None]

    def sweep(i: int) -> None:
        barrier.wait()
        results[i] = run_sweep(config, store, root, client, progress=False, echo=lines[i].append, wait=True)

    threads = [threading.Thread(target=sweep, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = sorted(r.summary["status"] for r in results)
    assert statuses == ["complete", "complete (already done)"], lines
    waited = lines[[r.summary["status"] for r in results].index("complete (already done)")]
    assert waited[0].startswith(f"waiting for sweep run {results[0].run_id}: running on {HOST} (pid {os.getpid()})")
    run_dir = tmp_path / "store" / "runs" / results[0].run_id
    run, parts, _ = _results(run_dir)
    assert len(parts) == len(run["layout"]) > 1 and len(list((run_dir / "done").iterdir())) == len(parts)
    table = pq.read_table(run_dir / "results.parquet").to_pandas()
    per_symbol = table[table["symbol"] != "PORTFOLIO"]
    assert len(per_symbol) == 6 * 2 == len(per_symbol.drop_duplicates(["set_id", "symbol"]))


def test_force_never_discards_a_run_another_process_is_working_on(tmp_path, client):
    store = BarStore(str(tmp_path / "bars"))
    store.write([generate_bars(s, "2020-01-01", "2021-12-31", seed=2) for s in ("AAA", "BBB")])
    root = StorageRef.make(str(tmp_path / "store"))
    done = _sweep(store, root, client, [5])
    before = sorted(p.name for p in (tmp_path / "store" / "runs" / done.run_id).rglob("*"))
    with Lease(lease_ref(root, "sweep", done.run_id), "another process").acquire():
        with pytest.raises(BusyError, match=f"sweep run {done.run_id} is running on {HOST}"):
            _sweep(store, root, client, [5], force=True)
    assert sorted(p.name for p in (tmp_path / "store" / "runs" / done.run_id).rglob("*")) == before


def test_list_show_and_gc_which_keeps_running_and_referenced_runs(tmp_path, client):
    store = BarStore(str(tmp_path / "bars"))
    store.write([generate_bars(s, "2020-01-01", "2021-12-31", seed=3) for s in ("AAA", "BBB")])
    root = StorageRef.make(str(tmp_path / "store"))
    a = _sweep(store, root, client, [5])
    s = generate_signals(SignalsConfig(from_run=a.run_id, top=1), store, root, client, progress=False,
                         echo=lambda _: None)
    p = run_replay(ReplayConfig(signals=s.set_id, weights=[[1.0]]), root, client, progress=False,
                   echo=lambda _: None)
    b, c, d = (_sweep(store, root, client, [f]) for f in (10, 15, 20))
    held = Lease(lease_ref(root, "sweep", c.run_id), f"sweep run {c.run_id}").acquire()  # c is "running"
    try:
        _stale(lease_ref(root, "sweep", b.run_id))  # b's process died (after it finished)
        listed = json.loads(_cli("runs", "list", "--storage", root.url, "--json").output)
        assert [r["id"] for r in listed] == [a.run_id, s.set_id, p.run_id, b.run_id, c.run_id, d.run_id]
        assert [r["kind"] for r in listed] == ["sweep", "signals", "replay", "sweep", "sweep", "sweep"]
        assert [r["status_line"] for r in listed] == ["complete"] * 4 + [
            f"running (leased by {HOST}:{os.getpid()})", "complete"]
        assert listed[1]["refers_to"] == a.run_id and listed[2]["refers_to"] == s.set_id
        assert listed[0]["label"] == "sma_cross long_short: 2 parameter set(s) x 2 symbol(s)"
        assert all(r["size"] > 0 for r in listed)
        table = _cli("runs", "list", "--storage", root.url).output.splitlines()
        assert table[0].split() == ["ID", "KIND", "STATUS", "CREATED", "SIZE", "LABEL"] and len(table) == 7
        shown = _cli("runs", "show", a.run_id[:6], "--storage", root.url).output
        assert f"sweep run {a.run_id} at " in shown and "status: complete" in shown and "backtests: 4" in shown
        assert f"signal set {s.set_id}" in _cli("runs", "show", s.set_id, "--storage", root.url).output
        assert f"sweep run {d.run_id}" in _cli("runs", "show", "last", "--storage", root.url).output

        dry = _cli("runs", "gc", "--keep", "1", "--dry-run", "--storage", root.url).output
        assert dry.splitlines()[0].startswith(f"would delete sweep run {b.run_id} (")
        assert f"kept sweep run {a.run_id}: signal set {s.set_id} refers to it" in dry
        assert f"kept sweep run {c.run_id}: running on {HOST} (pid {os.getpid()})" in dry
        assert [r.id for r in list_runs(root)] == [r["id"] for r in listed]  # nothing deleted
        report = gc_runs(root, 1)
        assert [r.id for r in report.deleted] == [b.run_id] and report.freed == listed[3]["size"]
        assert {r.id for r in list_runs(root)} == {a.run_id, s.set_id, p.run_id, c.run_id, d.run_id}
        assert read_lease(lease_ref(root, "sweep", b.run_id)) is None  # its stale lease went with it
        assert report.lines()[-1].startswith("freed ") and report.lines()[-1].endswith(" in 1 run(s)")
    finally:
        held.release()
    # nothing refers to the set and the replay once the pointers name others: keep 0 deletes all but
    # the pointers' targets (d, the latest sweep) and what they need
    (tmp_path / "store" / "runs" / "latest-replay.json").unlink()
    (tmp_path / "store" / "signals" / "latest.json").unlink()
    gone = {r.id for r in gc_runs(root, 0).deleted}
    assert gone == {p.run_id, s.set_id, a.run_id, c.run_id}
    assert [r.id for r in list_runs(root)] == [d.run_id]


def test_last_on_the_command_line_and_in_workflows(tmp_path, client):
    store = BarStore(str(tmp_path / "store" / "bars" / "d"))
    store.write([generate_bars(s, "2020-01-01", "2021-12-31", seed=4) for s in ("AAA", "BBB")])
    root = StorageRef.make(str(tmp_path / "store"))
    with pytest.raises(Exception, match="'last': no complete sweep run under"):
        CliRunner().invoke(cli, ["signals", str(store.url), "--from-run", "last", "--storage", root.url],
                           standalone_mode=False, catch_exceptions=False)
    older, newer = _sweep(store, root, client, [5]), _sweep(store, root, client, [10])
    made = _cli("signals", store.url, "--from-run", "last", "--top", "1", "--cluster", "threads",
                "--storage", root.url)
    set_id = json.loads((tmp_path / "store" / "signals" / "latest.json").read_text())["id"]
    source = json.loads((tmp_path / "store" / "signals" / set_id / "_signals.json").read_text())["source"]
    assert source["run"] == newer.run_id != older.run_id and f"signal set {set_id}" in made.output
    replayed = _cli("replay", "last", "--weights", "1", "--cluster", "threads", "--storage", root.url)
    run = json.loads((tmp_path / "store" / "runs" / "latest-replay.json").read_text())["id"]
    assert json.loads((tmp_path / "store" / "runs" / run / "run.json").read_text())["config"]["signals"] == set_id
    assert f"run {run}" in replayed.output

    # a workflow's `from_run: last` with no sweep step of its own: what its sweep step made when it last ran
    wf = tmp_path / "wf.yaml"
    wf.write_text("name: nightly\nstorage: store\ncluster: threads\nsteps:\n"
                  "  - sweep: {dataset: d, strategy: sma_cross, params: {fast: [5], slow: [40, 80]}}\n")
    run_workflow(load_workflow(wf), echo=lambda _: None)
    assert workflow_latest(root, "nightly", "sweep") == older.run_id
    wf.write_text("name: nightly\nstorage: store\ncluster: threads\nsteps:\n"
                  "  - signals: {dataset: d, from_run: last, top: 1}\n  - replay: {signals: last, weights: [[1]]}\n")
    run_workflow(load_workflow(wf), echo=lambda _: None)
    made_set = workflow_latest(root, "nightly", "signals")
    assert json.loads((tmp_path / "store" / "signals" / made_set / "_signals.json").read_text())["source"]["run"] \
        == older.run_id
    replay_run = workflow_latest(root, "nightly", "replay")
    assert json.loads((tmp_path / "store" / "runs" / replay_run / "run.json").read_text())["config"]["signals"] \
        == made_set
    assert sorted(p.name for p in (tmp_path / "store" / "workflows" / "nightly" / "latest").iterdir()) == \
        ["0-signals.json", "0-sweep.json", "1-replay.json"]
