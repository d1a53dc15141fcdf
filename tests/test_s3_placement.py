"""A repeated sweep on one cluster sends each task to the worker that keeps its bars (issue 16).

An object store's bar files stay in the worker process that fetched them (``bars.store._FETCHED``).
"""

from __future__ import annotations

import dask
import pytest
from distributed.diagnostics.plugin import SchedulerPlugin

from admf_dask.bars import BarStore, generate_bars, symbol_names
from admf_dask.cluster import connect
from admf_dask.storage import StorageRef
from admf_dask.sweep import SweepConfig, run_sweep
from tests.test_s3_requests import counted

# one parameter set: one range, so every task is a symbol group of its own, its sets built inside it; a
# batch_seconds under any symbol's work: one symbol a task, whatever the probe measures on this machine
CONFIG = SweepConfig(strategy="sma_cross", params={"fast": [5], "slow": [30]}, batch_seconds=1e-9)


class _Placed(SchedulerPlugin):
    """The worker restrictions and the worker of each sweep part task as the scheduler starts it."""

    def __init__(self, scheduler) -> None:
        self.scheduler, self.seen = scheduler, {}

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish == "processing" and "-part-" in str(key) and not str(key).endswith("-sent"):
            ts = self.scheduler.tasks[key]
            self.seen[str(key).split("-part-")[1]] = (set(ts.worker_restrictions or ()), ts.processing_on.address)


@pytest.mark.slow  # a process cluster (bar files are kept per process) and 3 sweeps: ~4.7 s (quiet machine)
def test_a_repeated_sweep_goes_where_its_bars_are_kept_and_reads_none_from_s3(s3, monkeypatch):
    bucket, options = s3
    options = {k: v for k, v in options.items() if k != "skip_instance_cache"}
    names = symbol_names(4)
    store = BarStore(f"{bucket}/bars", options)
    store.write([generate_bars(s, "2020-01-01", "2020-12-31", seed=5) for s in names])
    store = BarStore(store.url, options)
    bar_gets = counted(monkeypatch, "/bars/")
    runs = []
    # no work stealing: a task runs where the scheduler sends it, so what is checked does not depend on timing
    with dask.config.set({"distributed.scheduler.work-stealing": False}), \
            connect({"kind": "local", "n_workers": 2, "threads_per_worker": 1, "dashboard_address": ""}) as client:
        placed = _Placed(client.cluster.scheduler)
        client.cluster.scheduler.add_plugin(placed)
        for n in range(3):  # the first places the tasks as it goes; the second evens out the workers' shares
            bar_gets.clear()
            placed.seen = {}
            result = run_sweep(CONFIG, store, StorageRef.make(f"{bucket}/runs-{n}", options), client, progress=False)
            runs.append((result, dict(bar_gets), placed.seen))
    (first, fetched, _), (second, _, where), (third, again, pinned) = runs
    assert first.summary["tasks"] == len(names) and fetched.get("GET", 0) >= len(names), (first.summary, fetched)
    # the third run: every task sent to (and run on) the worker that ran it in the second, 2 tasks each
    assert sorted(pinned) == sorted(where) and len(pinned) == len(names)
    assert all(restricted == {ran} and ran == where[part][1] for part, (restricted, ran) in pinned.items()), \
        (where, pinned)
    ran = [worker for _, worker in pinned.values()]
    assert len(set(ran)) == 2 and ran.count(ran[0]) == 2, pinned  # each worker its share: neither idles
    # so no bar file is fetched again (nor the manifest: this process read it once)
    assert again.get("GET", 0) == 0, again
    assert third.table.equals(first.table) and second.table.equals(first.table)
