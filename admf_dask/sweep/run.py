"""The run loop: a sweep's (or replay's) run directory, layout, tasks, resume, and final table.

Storage, under ``<root>/runs/<run-id>/``::

    run.json            config, data fingerprint, package version, task layout, status (written first)
    results/part-<j>.parquet   one per task: set_id, symbol, parameters, statistics
    done/part-<j>.json         the marker: the task is committed
    results.parquet     the final table, assembled once every task is committed

The run id is the token of (config, data fingerprint, package version), so the
same command finds its run again. Rerunning resumes: committed tasks are skipped
(their markers are the truth; a results file without a marker is redone and
overwritten with identical content). A finished run prints its result and does
nothing; ``force=True`` starts it afresh.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any


from .. import __version__
from ..bars import BarStore
from ..config import token
from ..errors import ConfigError
from ..storage import StorageRef
from .container import ContainerTask, run_container
from .grid import SweepConfig, _frozen, expand_params
from .layout import _PROBE_SETS, _bars_in_range, _estimate, _layout, _probe
from .portfolio import reduce_portfolio
from .results import SweepResult, write_final_table


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

class SweepFeed:
    """Where a sweep's containers get each symbol's input: the indicator hub.

    A *feed* is what :func:`run_grid` asks for per-symbol inputs: ``source(symbol,
    consumers)`` (what a task receives: a future or a request its config's ``load``
    resolves), ``settle(source, counters)`` (counters a task brought back),
    ``probe_input(symbol, sample)`` (one symbol's input for the parameter sets of
    ``sample``, built here for the probe),
    ``summary()`` and ``release()``.
    """

    def __init__(self, config: SweepConfig, sets: list[dict[str, Any]], bars: BarStore, root: StorageRef,
                 client: Any) -> None:
        from ..cache import IndicatorHub
        from ..indicators import IndicatorPlan
        from ..strategies import get_strategy

        s = get_strategy(config.strategy)
        self.config = config
        self.plan = IndicatorPlan.from_requests(spec for p in sets for spec in s.specs(p))
        self.hub = IndicatorHub(bars, root.child("cache"), client=client)
        self.bars = bars

    def source(self, symbol: str, consumers: int) -> Any:
        return self.hub.source(symbol, self.plan, self.config.start, self.config.end, consumers=consumers)

    def settle(self, source: Any, counters: Any) -> None:
        self.hub.settle(source, counters)

    def probe_input(self, symbol: str, sample: list[dict[str, Any]]) -> Any:
        from ..cache import IndicatorSet

        bars = self.bars.read(symbol, start=self.config.start, end=self.config.end)
        specs = self.config.prepare(sample).plan.specs  # the sample's indicators, computed here, not cached
        return IndicatorSet(symbol, "probe", bars, {spec.token: spec.compute(bars.columns) for spec in specs})

    def summary(self) -> dict[str, Any]:
        return {"indicators": self.hub.counters.line(), "hub": self.hub.counters.as_dict()}

    def release(self) -> None:
        self.hub.release()

def run_sweep(config: SweepConfig, bars: BarStore, root: StorageRef, client: Any, *, force: bool = False,
              yes: bool = False, echo: Callable[[str], None] = print, progress: bool = True) -> SweepResult:
    """Run (or resume, or just report) a sweep; return its result table and summary.

    ``client`` is a distributed Client, or a function that connects one (called only
    if there is work to do).

    Raises ConfigError before launching when the sweep has more than
    ``config.max_backtests`` backtests and ``yes`` is false.
    """
    sets, dropped = expand_params(config.strategy, config.params, config.sample, config.seed)
    symbols = list(config.symbols) if config.symbols else bars.symbols()
    for s in symbols:
        bars.entry(s)
    identity = {"sweep": config.identity(), "data": bars.fingerprint, "symbols": symbols, "version": __version__}
    return run_grid(config, sets, symbols, bars, root, client, identity=identity, kind="sweep",
                    feed=lambda c: SweepFeed(config, sets, bars, root, c),
                    note=f" ({dropped} grid points broke the rules)" if dropped else "",
                    force=force, yes=yes, echo=echo, progress=progress)

def run_grid(config: Any, sets: list[dict[str, Any]], symbols: list[str], bars: BarStore, root: StorageRef,
             client: Any, *, identity: Mapping[str, Any], kind: str, feed: Callable[[Any], Any], note: str = "",
             force: bool = False, yes: bool = False, echo: Callable[[str], None] = print,
             progress: bool = True) -> SweepResult:
    """Run (or resume, or report) sets x symbols as container tasks: the engine of sweeps and replays.

    ``config`` has the container hooks (``prepare``, ``stats``, ``load``, ``costs``,
    ``cash``, ``label``, ``param_names``) and the scheduling settings (``batch_seconds``,
    ``retries``, ``max_backtests``, ``metric``, ``top``, ``start``, ``end``).
    ``identity`` is what the run id is the token of; ``feed(client)`` makes the
    per-symbol input feed (see :class:`SweepFeed`), only when there is work to do.
    ``client`` is a distributed Client or a function that connects one: a finished
    run is reported without it.
    """
    from ..cluster import ensure_client, run_tasks

    run_id = token(identity)[:16]
    run_ref = root.child("runs", run_id)
    storage = run_ref.open()
    if force and storage.exists("run.json"):
        echo(f"--force: discarding run {run_id}")
        storage.fs.rm(storage.path(), recursive=True)
    run = storage.read_json("run.json") if storage.exists("run.json") else None
    if run is not None and run.get("status") == "complete":
        return SweepResult(run_id, run_ref.url, {**run["summary"], "status": "complete (already done)"},
                           config, storage)

    client = ensure_client(client)
    source = feed(client)
    try:
        bars_per_symbol = {s: _bars_in_range(bars, s, config.start, config.end) for s in symbols}
        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info(n_workers=-1)["workers"].values())
        if run is None:
            estimate = _estimate(len(sets), bars_per_symbol, 0)
            if estimate["backtests"] > config.max_backtests and not yes:
                raise ConfigError(f"the {kind} has {estimate['backtests']:,} backtests, over max_backtests="
                                  f"{config.max_backtests:,}", key="max_backtests",
                                  hint="narrow the grid, use sample:, or pass --yes to run it anyway")
            longest = max(symbols, key=bars_per_symbol.__getitem__)
            sample = sets[:_PROBE_SETS]
            t_load = time.perf_counter()
            probe_input = source.probe_input(longest, sample)
            t_load = time.perf_counter() - t_load
            spb = _probe(config, probe_input, sample)
            layout = _layout(len(sets), symbols, bars_per_symbol, spb, config.batch_seconds, threads,
                             max(bars_per_symbol.values()), t_load)
            run = {"run_id": run_id, "kind": kind, "status": "running", "version": __version__,
                   "data_fingerprint": bars.fingerprint, "bars": bars.url, "config": config.identity(),
                   "symbols": symbols, "param_sets": len(sets), "seconds_per_bar_probe": spb,
                   "layout": [[list(g), lo, hi] for g, lo, hi in layout]}
            storage.write_json(run, "run.json")
        layout = [(tuple(g), lo, hi) for g, lo, hi in run["layout"]]
        estimate = _estimate(len(sets), bars_per_symbol, len(layout))
        echo(f"{kind} {run_id}: {config.label}, {estimate['param_sets']:,} parameter sets{note} x "
             f"{estimate['symbols']} symbols = {estimate['backtests']:,} backtests, "
             f"{estimate['bar_evaluations']:,} bar-evaluations; {estimate['tasks']} tasks, "
             f"~{estimate['memory_per_task_mb']} MB per task, ~{estimate['output_mb']} MB of results")

        done = set()
        storage.fs.invalidate_cache(storage.path("done"))  # s3fs caches listings; markers are what we trust
        if storage.fs.exists(storage.path("done")):
            done = {int(p.rsplit("part-", 1)[1].split(".")[0])
                    for p in storage.fs.ls(storage.path("done"), detail=False) if p.endswith(".json")}
        todo = [j for j in range(len(layout)) if j not in done]
        if done:
            echo(f"resuming: {len(done)} of {len(layout)} tasks already committed")

        t0 = time.perf_counter()
        ranges: dict[tuple[int, int], list[int]] = {}
        for j, (_, lo, hi) in enumerate(layout):
            ranges.setdefault((lo, hi), []).append(j)
        consumers = Counter(sym for j in todo for sym in layout[j][0])
        sources: dict[str, Any] = {}
        tasks, deps = [], []
        for j in todo:
            group, lo, hi = layout[j]
            for sym in group:
                if sym not in sources:
                    sources[sym] = source.source(sym, consumers[sym])
            tasks.append(ContainerTask(j, group, lo, hi, _frozen(sets[lo:hi]), config, run_ref, run_id,
                                       whole_range=len(ranges[(lo, hi)]) == 1))
            deps.append([sources[sym] for sym in group])
        if tasks:
            for out in run_tasks(client, run_container, tasks, extra_args=deps, retries=config.retries,
                                 progress=progress, label=kind, window=2 * max(threads, 1) + 2,
                                 keys=[f"{kind}-{run_id}-part-{t.part:06d}" for t in tasks]):
                for sym, counters in out["counters"].items():
                    source.settle(sources[sym], counters)
        split = {r: parts for r, parts in ranges.items() if len(parts) > 1}  # the others wrote their rows
        written = run_tasks(client, reduce_portfolio, [run_ref] * len(split), label="portfolio", progress=False,
                            extra_args=[(parts, lo, hi, _frozen(sets[lo:hi]), config.cash)
                                        for (lo, hi), parts in split.items()],
                            keys=[f"portfolio-{run_id}-{lo}" for lo, _ in split])
        wall = time.perf_counter() - t0
        write_final_table(storage, ranges, {lo: name for (lo, _), name in zip(split, written)})
        peak = max(client.run(_peak_rss).values(), default=0)
        summary = {**estimate, "status": "complete", "wall_seconds": round(wall, 3),
                   "bar_evals_per_s": round(estimate["bar_evaluations"] * len(todo) / max(len(layout), 1) / wall, 1)
                   if wall > 0 else 0.0,
                   "tasks_resumed": len(done), "peak_worker_memory_mb": round(peak / 1e6, 1)}
        if todo:
            summary.update(source.summary())
        storage.write_json({**run, "status": "complete", "summary": summary}, "run.json")
    finally:
        source.release()
    return SweepResult(run_id, run_ref.url, summary, config, storage)
