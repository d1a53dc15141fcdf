"""The run loop: a sweep's (or replay's) run directory, layout, tasks, resume, and final table.

Storage, under ``<root>/runs/<run-id>/``::

    run.json            config, data fingerprint, package version, task layout, status (written first)
    results/part-<j>.parquet   one per task: set_id, symbol, parameters, statistics
    done/part-<j>.json         the marker: the task is committed (its files' size and sha256, the layout's token)
    results.parquet     the final table, assembled once every task is committed

The run id is the token of (config, data fingerprint, package version), so the
same command finds its run again. Rerunning resumes: committed tasks are skipped
once their markers pass their checks (:mod:`~admf_dask.sweep.integrity`: the
layout and every file as committed; a part that fails, or a results file without
a marker, is redone and overwritten). A finished run prints its result and does
nothing; ``force=True`` starts it afresh.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import Any


from .. import __version__
from ..bars import BarStore
from ..config import token
from ..budget import chunk_rows, format_bytes
from ..errors import AdmfError, ConfigError, DataError, StorageError
from ..preflight import check_range
from ..storage import StorageRef
from .container import ContainerTask, run_container, sent_part
from .frequency import mixed_frequencies
from .grid import SweepConfig, _frozen, expand_params
from .layout import _PROBE_SETS, _estimate, builtin_kernel, bundle_parts, plan_layout, probe_path, task_target
from .incremental import Resume, plan_incremental, record_chain
from .integrity import layout_token, marker_name, verify_committed
from .streaming import run_stream_container
from .portfolio import _HOLD_BYTES, reduce_portfolio
from .results import SweepResult, run_metadata, write_final_table


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
        if s.builtin:  # the batch of every set, which shape() uses too (prepare_batch keeps it): one pass
            self.plan = config.prepare(sets).plan
        else:
            self.plan = IndicatorPlan.from_requests(spec for p in sets for spec in s.specs(p))
        self.hub = IndicatorHub(bars, root.child("cache"), client=client)
        self.bars = bars

    def source(self, symbol: str, consumers: int) -> Any:
        return self.hub.source(symbol, self.plan, self.config.start, self.config.end, consumers=consumers)

    def settle(self, source: Any, counters: Any) -> None:
        self.hub.settle(source, counters)

    def probe_input(self, symbol: str, sample: list[dict[str, Any]], max_rows: int) -> Any:
        return self.probe_reader()(symbol, sample, max_rows)

    def probe_reader(self) -> Callable[[str, list[dict[str, Any]], int], Any]:
        """:meth:`probe_input` as a picklable function, for the probe task on a worker; ``.unique`` indicators
        a symbol's input holds (the whole plan's: the probe input holds only the sample's)."""
        import functools

        reader = functools.partial(_sweep_probe_input, self.bars.ref, self.bars.fingerprint, self.config)
        return _Reader(reader, self.plan.unique)

    def shape(self, sets: list[dict[str, Any]]) -> tuple[float, int]:
        """Payload bytes per bar of a symbol (its indicator rows, or a user strategy's targets) and the halo."""
        batch = self.config.prepare(sets)
        specs = batch.plan.specs
        halo = max((spec.halo for spec in specs), default=0)
        if batch.strategy.builtin:
            return 8.0 * len(batch.rows), halo
        outputs = sum(len(spec.outputs) for spec in specs)
        lookback = max(batch.strategy.lookback(p) for p in batch.params)
        return 8.0 * outputs + len(sets), max(halo, lookback)

    def stream_spec(self, rows: int, persist: bool) -> Any:
        from .streaming import StreamSpec

        return StreamSpec(self.bars.ref, self.bars.fingerprint, rows, self.hub.cache_ref if persist else None, persist)

    def done(self, symbol: str) -> None:
        """No task of the run needs the symbol's set any more: the hub lets go of it (workers free it)."""
        self.hub.forget(symbol)

    def summary(self) -> dict[str, Any]:
        return {"indicators": self.hub.counters.line(), "hub": self.hub.counters.as_dict()}

    def release(self) -> None:
        self.hub.release()

class _Reader:
    """A feed's probe input as a picklable callable, with the count of unique indicators of a whole input."""

    def __init__(self, fn: Callable[..., Any], unique: int) -> None:
        self.fn, self.unique = fn, unique

    def __call__(self, symbol: str, sample: list[dict[str, Any]], max_rows: int) -> Any:
        return self.fn(symbol, sample, max_rows)


def _sweep_probe_input(bars_ref: StorageRef, fingerprint: str, config: SweepConfig, symbol: str,
                       sample: list[dict[str, Any]], max_rows: int) -> Any:
    """A bounded slice of the symbol's bars and the sample's indicators (see :func:`~.layout.probe_path`)."""
    from ..cache import IndicatorSet

    store = BarStore.open(bars_ref, fingerprint)
    bars = store.read_head(symbol, max_rows, start=config.start, end=config.end)
    specs = config.prepare(sample).plan.specs  # the sample's indicators, computed here, not cached
    return IndicatorSet(symbol, "probe", bars, {spec.token: spec.compute(bars.columns) for spec in specs})


def _machine_class() -> str:
    """This machine's class for the probe: architecture, CPU model and cores.

    Not the cluster's threads: the probe times one container alone on one worker thread,
    which is the same measure whatever the cluster's size (the layout then plans with the
    threads). Keyed by them, 1 and 2 workers on the same machine took a probe each, and
    two probes of the same sweep could land on either side of a grid step (``coarse``):
    two layouts of one sweep (49 and 68 tasks here).
    """
    import os
    import platform

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return token([platform.machine(), model or platform.processor(), os.cpu_count()])[:12]


def _probe_name(kind: str, config: Any, what: tuple, where: str | None = None) -> str:
    """The kept probe's name: by machine class, then configuration (and, in the user's cache, the bars' URL:
    the probe times their load)."""
    sample, rows, full = what
    key = [kind, config.identity(), sample, rows, full, __version__, *([where] if where is not None else [])]
    return f"probe/{_machine_class()}/{token(key)[:16]}.json"


def _kept_probe(root: StorageRef, kind: str, config: Any, what: tuple, where: str) -> dict[str, Any] | None:
    """A probe this machine class took of the same configuration, kept under ``<root>/cache/probe/`` or, for
    the same bars into another root, in the user's cache (:mod:`admf_dask.home`); ``ADMF_PROBE=fresh``
    measures again. None when there is none, or it does not read."""
    import os

    from .. import home

    if os.environ.get("ADMF_PROBE", "") == "fresh":
        return None
    try:
        kept = root.child("cache").open().read_json(_probe_name(kind, config, what), missing=None)
    except (OSError, ValueError, TypeError, AdmfError):  # damaged: measure again
        kept = None
    if not (isinstance(kept, dict) and kept.get("seconds_per_bar", 0) > 0):
        kept = home.read_json(_probe_name(kind, config, what, where))
    return {**kept, "kept": True} if isinstance(kept, dict) and kept.get("seconds_per_bar", 0) > 0 else None


def _keep_probe(root: StorageRef, kind: str, config: Any, what: tuple, where: str, probe: dict[str, Any]) -> None:
    from .. import home

    log = logging.getLogger(__name__)
    try:
        root.child("cache").open().write_json(probe, _probe_name(kind, config, what))
    except (OSError, ValueError, AdmfError) as exc:  # an optimisation only: the next run measures again
        log.debug("probe not kept: %r", exc)
    # the user's cache keeps the fastest probe measured: one taken while the machine was busy would
    # otherwise plan every later run of this sweep, in any root, into too many small tasks
    name = _probe_name(kind, config, what, where)
    kept = home.read_json(name)
    if isinstance(kept, dict) and 0 < kept.get("seconds_per_bar", 0) <= probe["seconds_per_bar"]:
        return
    try:
        home.write_json(probe, name)
    except (OSError, ValueError) as exc:
        log.debug("probe not kept in the user's cache: %r", exc)


_PROBE_MAX_ROWS = 200_000  # bars the probe reads: enough to time the kernel on, whatever the history


def _budget(config: Any, client: Any, payload: float, halo: int) -> int:
    """The run's memory budget per task, checked against the workers and the smallest chunk (ConfigError)."""
    from ..budget import BAR_BYTES, budget_error, default_budget, worker_memory

    limit, threads = worker_memory(client)
    budget = config.memory_budget or default_budget(limit, threads)
    need = (halo + 1) * (BAR_BYTES + payload + 8)  # the smallest chunk: one symbol, one set, halo + 1 bars
    error = budget_error(budget, limit, threads, int(need), "this strategy's indicators")
    if error is not None:
        raise error
    return budget


def _aligned(bars: BarStore, symbols: list[str]) -> bool:
    """Whether the symbols look like they share their bar times (same first and last bar and count)."""
    keys = {(e["first_ns"], e["last_ns"], e["rows"]) for e in (bars.entry(s) for s in symbols)}
    return len(keys) == 1


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _host() -> dict[str, Any]:
    import os
    import socket

    return {"host": socket.gethostname(), "pid": os.getpid()}


def _started() -> dict[str, Any]:
    """What run.json records of the launch: when (UTC), on which host and process."""
    return {"started": _now(), **_host()}


def run_part(task: ContainerTask | tuple[ContainerTask, ...], *sources: Any) -> Any:
    """Task: a container, held whole (:func:`run_container`) or streamed along time (:func:`run_stream_container`);
    for a tuple of containers (parts of the same symbols: :func:`~.layout.bundle_parts`), each in turn, their
    results as a list."""
    if isinstance(task, tuple):
        return [run_part(t, *sources) for t in task]
    if task.stream is not None:
        return run_stream_container(task)
    return {**run_container(task, *sources), "worker": _worker_address()}


def _worker_address() -> str | None:
    """The address of the dask worker running this task; None outside one."""
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:
        return None


# where each task's bars were read, per driver process: (bars url, fingerprint, task's symbols) -> worker address,
# the most recent last. An object store's bar files stay in the worker process that fetched them
# (bars.store._FETCHED), so a later run of the same tasks on the same cluster is sent there (_Placement)
_PLACED: OrderedDict[tuple[str, str, tuple[str, ...]], str] = OrderedDict()
_PLACED_MAX = 4096


class _Placement:
    """Where a run's tasks go: each to the worker that read its bars in an earlier run of this process
    (:data:`_PLACED`), while that worker's tasks stay within its share of the run's work (by its threads).

    ``work[b]`` is task b's work (bars x sets). A task over its worker's share goes to the worker furthest
    below its own share instead (it reads its bars there once; the next run keeps it there), so the pins
    of an uneven run do not leave a worker idle. A task never run before is left to the scheduler.
    """

    def __init__(self, data: tuple[str, str], workers: Mapping[str, Mapping[str, Any]], work: list[float]) -> None:
        threads = sum(w.get("nthreads", 1) for w in workers.values()) or 1
        self.data, self.work = data, work
        self.share = {a: sum(work) * w.get("nthreads", 1) / threads for a, w in workers.items()}
        self.load = dict.fromkeys(workers, 0.0)

    def worker(self, b: int, symbols: tuple[str, ...]) -> str | None:
        """The worker to send task ``b`` (of ``symbols``) to; None: the scheduler's choice."""
        address = _PLACED.get((*self.data, tuple(symbols)))
        if address not in self.load:  # never run, or its worker is gone
            return None
        if self.load[address] + self.work[b] > self.share[address] * (1 + 1e-9):
            address = min(self.load, key=lambda a: (self.load[a] - self.share[a], a))
        self.load[address] += self.work[b]
        return address

    def ran(self, symbols: tuple[str, ...], address: str) -> None:
        """A task of ``symbols`` ran on the worker at ``address`` (and keeps their bars)."""
        key = (*self.data, tuple(symbols))
        _PLACED[key] = address
        _PLACED.move_to_end(key)
        while len(_PLACED) > _PLACED_MAX:
            _PLACED.popitem(last=False)


class _Bound:
    """Bytes held against a limit, with their running total (not summed again for every task's result)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.total = limit, 0

    def take(self, size: int) -> bool:
        """Count ``size`` bytes in if they fit under the limit with those taken so far; whether they did."""
        if self.total + size > self.limit:
            return False
        self.total += size
        return True


def _keep_held(held: dict[int, Any], bound: _Bound, i: int, part: int, out: Mapping[str, Any]) -> None:
    """Keep task i's result on the cluster for the reduce while the kept accumulators fit ``bound`` (``_HOLD_BYTES``).

    ``held`` maps items to their results' futures (see :func:`~admf_dask.cluster.run_tasks`'
    ``split``); a part kept costs its bytes on a worker until the reduce, a part dropped is
    read back from storage by the reduce.
    """
    if i not in held:
        return
    size = out.get("files", {}).get(f"portfolio/part-{part:06d}.acc", {}).get("size")
    if size is None or not bound.take(size):
        del held[i]  # the future dropped: Dask forgets the result


_GIVEN_TOTAL = 64 << 20  # what the driver holds of parts' bytes for the final table, in all


def _keep_given(given: dict[str, bytes], bound: _Bound, more: Mapping[str, bytes] | None) -> None:
    """Hold files' bytes a task sent (``given``: object stores) while they fit ``bound`` (``_GIVEN_TOTAL``); the
    final table reads (and checks) the others from storage."""
    for name, data in (more or {}).items():
        if bound.take(len(data)):
            given[name] = data


def _flush_commits(client: Any, run_ref: StorageRef) -> set[int]:
    """The parts of the run at ``run_ref`` whose commits the workers had in flight, once all are written.

    A failed commit raises its StorageError here, as its task would have.
    """
    from .container import flush_commits

    done: set[int] = set()
    for parts in client.run(flush_commits, run_ref.url).values():
        done.update(parts)
    return done


def run_sweep(config: SweepConfig, bars: BarStore, root: StorageRef, client: Any, *, force: bool = False,
              yes: bool = False, echo: Callable[[str], None] = print, progress: bool = True,
              wait: bool = False, performance_report: str | bool | None = None) -> SweepResult:
    """Run (or resume, or just report) a sweep; return its result table and summary.

    ``client`` is a distributed Client, or a function that connects one (called only
    if there is work to do). ``performance_report`` is a path for dask's performance
    report of the run's tasks, or True for the default place (:func:`admf_dask.monitor.report_path`).

    Raises ConfigError before launching when the sweep has more than
    ``config.max_backtests`` backtests and ``yes`` is false.
    """
    sets, dropped = expand_params(config.strategy, config.params, config.sample, config.seed)
    symbols = list(config.symbols) if config.symbols else bars.symbols()
    check_range(bars, symbols, config.start, config.end)  # before the lease, the cluster, run.json
    identity = {"sweep": config.identity(), "data": bars.fingerprint, "symbols": symbols, "version": __version__}
    return run_grid(config, sets, symbols, bars, root, client, identity=identity, kind="sweep",
                    feed=lambda c: SweepFeed(config, sets, bars, root, c),
                    note=f" ({dropped} grid points broke the rules)" if dropped else "",
                    force=force, yes=yes, echo=echo, progress=progress, wait=wait,
                    performance_report=performance_report)


def run_grid(config: Any, sets: list[dict[str, Any]], symbols: list[str], bars: BarStore, root: StorageRef,
             client: Any, *, identity: Mapping[str, Any], kind: str, feed: Callable[[Any], Any], note: str = "",
             force: bool = False, yes: bool = False, echo: Callable[[str], None] = print,
             progress: bool = True, wait: bool = False, performance_report: str | bool | None = None) -> SweepResult:
    """Run (or resume, or report) sets x symbols as container tasks: the engine of sweeps and replays.

    ``config`` has the container hooks (``prepare``, ``stats``, ``load``, ``costs``,
    ``cash``, ``label``, ``param_names``) and the scheduling settings (``batch_seconds``,
    ``retries``, ``max_backtests``, ``metric``, ``top``, ``start``, ``end``).
    ``identity`` is what the run id is the token of; ``feed(client)`` makes the
    per-symbol input feed (see :class:`SweepFeed`), only when there is work to do.
    ``client`` is a distributed Client or a function that connects one: a finished
    run is reported without it.

    While it works on the run, this process holds the run's lease (:mod:`admf_dask.runs`):
    another process working on it raises BusyError (exit 75), or with ``wait`` is waited
    for; a finished run is reported without the lease.
    """
    from ..runs import run_complete, run_lease

    run_id = token(identity)[:16]
    with run_lease(root, kind, run_id, wait=wait, echo=echo,
                   complete=None if force else lambda: run_complete(root.child("runs", run_id))) as lease:
        return _run_grid(config, sets, symbols, bars, root, client, identity=identity, kind=kind, feed=feed,
                         note=note, force=force, yes=yes, echo=echo, progress=progress, lease=lease,
                         performance_report=performance_report)


def _run_grid(config: Any, sets: list[dict[str, Any]], symbols: list[str], bars: BarStore, root: StorageRef,
              client: Any, *, identity: Mapping[str, Any], kind: str, feed: Callable[[Any], Any], note: str = "",
              force: bool = False, yes: bool = False, echo: Callable[[str], None] = print,
              progress: bool = True, lease: Any, performance_report: str | bool | None = None) -> SweepResult:
    """:func:`run_grid`'s work, under the run's ``lease`` (checked before each commit)."""
    from ..cache import InlineSet
    from ..cluster import ensure_client, run_tasks
    from ..faults import bar_cache_bytes

    run_id = token(identity)[:16]
    run_ref = root.child("runs", run_id)
    storage = run_ref.open()
    raw = storage.read_optional("run.json")  # one GET on S3, none of exists' HEAD and LIST
    if force and raw is not None:  # not parsed: --force discards a damaged run.json too
        echo(f"--force: discarding run {run_id}")
        storage.fs.rm(storage.path(), recursive=True)
        raw = None
    run = storage.parse_json(raw, "run.json") if raw is not None else None
    begun = run is not None  # a run.json before this process: tasks may have committed parts
    if run is not None and run.get("status") == "complete":
        return SweepResult(run_id, run_ref.url, {**run["summary"], "status": "complete (already done)"},
                           config, storage)

    keep_state = bool(getattr(config, "resumable", lambda: False)())  # tasks save their end state
    chain = dict(identity)  # the configuration across data versions
    if keep_state and hasattr(config, "chain_identity"):
        chain = config.chain_identity(chain)
    incremental, inc_note = None, ""
    if run is None and keep_state and not force:  # --force recomputes everything
        incremental, inc_note = plan_incremental(root, chain, kind, bars, symbols, len(sets))

    client = ensure_client(client)
    source = feed(client)
    try:
        bars_per_symbol = {s: bars.rows_in_range(s, config.start, config.end) for s in symbols}
        mixed = mixed_frequencies(bars, symbols, bars_per_symbol, config.start, config.end)
        if mixed:  # one warning line; the PORTFOLIO rows are left out of the final table
            logging.getLogger("admf_dask.sweep").warning("%s", mixed)
        workers = client.scheduler_info(n_workers=-1)["workers"]
        threads = sum(w.get("nthreads", 1) for w in workers.values())
        if run is None:
            estimate = _estimate(len(sets), bars_per_symbol, 0)
            if estimate["backtests"] > config.max_backtests and not yes:
                raise ConfigError(f"the {kind} has {estimate['backtests']:,} backtests, over max_backtests="
                                  f"{config.max_backtests:,}", key="max_backtests",
                                  hint="narrow the grid, use sample:, or pass --yes to run it anyway")
            if min(bars_per_symbol.values(), default=0) < 2:
                empty = min(symbols, key=bars_per_symbol.__getitem__)
                raise DataError(f"{bars_per_symbol[empty]} bar(s) of {empty} in the range: at least two are needed",
                                symbol=empty, key="start", hint="widen the start/end range")
            payload, halo = source.shape(sets)
            budget = _budget(config, client, payload, halo)
        if run is None and incremental is not None:  # the previous run's layout, every part streamed on
            size = max(len(g) for g, *_ in incremental["layout"])
            width = max(hi - lo for _, lo, hi, *_ in incremental["layout"])
            rows = incremental["chunk_rows"] or max(2, chunk_rows(budget, symbols=size, sets=width,
                                                                  payload_bytes=payload))
            run = {"run_id": run_id, "kind": kind, "status": "running", "version": __version__, **_started(),
                   "data_fingerprint": bars.fingerprint, "bars": bars.url, "config": config.identity(),
                   "symbols": symbols, "param_sets": len(sets), "memory_budget": budget,
                   "layout": [[g, lo, hi, True] for g, lo, hi, *_ in incremental["layout"]], "chunk_rows": rows,
                   "memory_per_task": 0, "incremental_from": incremental["from"],
                   "resume_parts": incremental["parts"], "resume_reduce": incremental["reduce"],
                   "changed_symbols": incremental["changed"], "incremental_note": inc_note}
            lease.confirm()
            storage.write_json(run, "run.json")
        elif run is None:
            longest = max(symbols, key=bars_per_symbol.__getitem__)
            sample = sets[:_PROBE_SETS]
            probe_rows = int(max(2, min(_PROBE_MAX_ROWS, budget // (48 + payload + 8 * len(sample)))))
            args = (source.probe_reader(), config, sample, probe_rows, bars_per_symbol[longest])
            # kept: this machine class measured this configuration before: the same layout again, no probe
            # in the user's cache by what the probe loads: a sweep's bars (into any root), a replay's signals
            where = bars.url if kind == "sweep" else f"{root.url} {bars.url}"
            probe = _kept_probe(root, kind, config, args[2:], where)
            if probe is None:
                if builtin_kernel(config, sample):
                    # on a worker, as a container runs: this process loads no kernel (from the shell: ~1-3 s)
                    probe = run_tasks(client, probe_path, [longest], label=kind, progress=False,
                                      retries=config.retries, keys=[f"{kind}-{token([run_id, _now()])[:12]}-probe"],
                                      extra_args=[args])[0]
                else:  # a user's strategy: here, where its calls are not the cluster's (nor its failures a worker's)
                    probe = probe_path(longest, *args)
                _keep_probe(root, kind, config, args[2:], where, probe)
            spb, t_load = probe["seconds_per_bar"], probe["load_seconds"]
            plan = plan_layout(len(sets), symbols, bars_per_symbol, spb, config.batch_seconds, threads, budget,
                               payload, halo, _aligned(bars, symbols), t_load)
            run = {"run_id": run_id, "kind": kind, "status": "running", "version": __version__, **_started(),
                   "data_fingerprint": bars.fingerprint, "bars": bars.url, "config": config.identity(),
                   "symbols": symbols, "param_sets": len(sets), "seconds_per_bar_probe": spb, "probe": probe,
                   "memory_budget": budget, "full_because": inc_note, **plan}
            lease.confirm()  # the layout is written once: not by a process that lost the run meanwhile
            storage.write_json(run, "run.json")
        layout = [(tuple(g), lo, hi, bool(rest[0]) if rest else False) for g, lo, hi, *rest in run["layout"]]
        rows = int(run.get("chunk_rows", 0))
        estimate = _estimate(len(sets), bars_per_symbol, len(layout))
        echo(f"{kind} {run_id}: {config.label}, {estimate['param_sets']:,} parameter sets{note} x "
             f"{estimate['symbols']} symbols = {estimate['backtests']:,} backtests, "
             f"{estimate['bar_evaluations']:,} bar-evaluations; {estimate['tasks']} tasks, "
             f"~{format_bytes(run.get('memory_per_task', 0))} per task "
             f"(budget {format_bytes(run.get('memory_budget', 0))}), ~{estimate['output_mb']} MB of results")
        streamed = sorted({s for g, _, _, st in layout if st for s in g})
        prev_id = run.get("incremental_from")
        if prev_id:
            echo(f"  incremental: {run.get('incremental_note') or prev_id}")
        elif run.get("full_because") and keep_state:
            echo(f"  computed in full: {run['full_because']}")
        if streamed and not prev_id:
            chunks = [-(-bars_per_symbol[s] // rows) for s in streamed]
            echo(f"  {len(streamed)} of {len(symbols)} symbols read in chunks of {rows:,} bars: "
                 f"{min(chunks)}-{max(chunks)} chunks per symbol" if min(chunks) != max(chunks) else
                 f"  {len(streamed)} of {len(symbols)} symbols read in chunks of {rows:,} bars: "
                 f"{chunks[0]} chunks per symbol")

        # markers are what we trust; one LIST, not cached (listdir invalidates s3fs's listing cache). None to
        # list in a run this process began: its tasks start only once its run.json is written
        listed = {int(n.rsplit("part-", 1)[1].split(".")[0])
                  for n in (storage.listdir("done") if begun else ()) if n.startswith("part-") and n.endswith(".json")}
        layout_tok = layout_token(layout)
        done, failed = verify_committed(storage, listed, layout, layout_tok)  # files and layout, not mere markers
        todo = [j for j in range(len(layout)) if j not in done]
        if done or failed:
            echo(f"resuming: {len(done)} of {len(layout)} tasks already committed")
        if failed:
            j, why = min(failed.items())
            echo(f"  {len(failed)} committed part(s) failed their check and are recomputed: part {j}: {why}"
                 + (" ..." if len(failed) > 1 else ""))

        t0 = time.perf_counter()
        from ..monitor import RunMonitor, findings, report_path

        monitor = RunMonitor(client, threads, stage=kind,
                             performance_report=report_path(performance_report, storage, run_id)).start()
        # task keys: the run and where it is stored (one run id in two storage roots is two runs)
        place = token(run_ref.url)[:8]
        ranges: dict[tuple[int, int], list[int]] = {}
        for j, (_, lo, hi, _) in enumerate(layout):
            ranges.setdefault((lo, hi), []).append(j)
        # streamed symbols' indicator chunks go to the cache only when tasks after the first ones
        # read them again (more set ranges than threads); tasks running at once would all compute them
        persist = len(ranges) > threads and not prev_id  # new bars of an incremental run: read once
        spec = source.stream_spec(rows, persist) if streamed else None
        consumers = Counter(sym for j in todo if not layout[j][3] for sym in layout[j][0])
        sources: dict[str, Any] = {}
        frozen = {r: _frozen(sets[r[0]:r[1]]) for r in ranges}  # one per set range, shared by its tasks
        prev_ref = root.child("runs", prev_id) if prev_id else None

        def resume(meta: Mapping[str, Any] | None) -> Resume | None:
            if not meta or prev_ref is None:
                return None
            return Resume(prev_ref, meta["file"], meta["size"], meta["sha256"], tuple(meta.get("equity", ())))

        resume_parts = run.get("resume_parts") or {}
        went_on = {s for j in resume_parts for s in layout[int(j)][0]}  # symbols continued, not recomputed
        tasks = [ContainerTask(j, layout[j][0], layout[j][1], layout[j][2], frozen[layout[j][1:3]],
                               config, run_ref, run_id, whole_range=len(ranges[layout[j][1:3]]) == 1,
                               stream=spec if layout[j][3] else None,
                               resume=resume(resume_parts.get(str(j), resume_parts.get(j))),
                               keep_state=keep_state, layout=layout_tok, later=not storage.is_local)
                 for j in todo]
        later: set[int] = set()  # parts whose task returned with its commit still in flight (object stores)
        confirmed: set[int] = set()
        bars_read = Counter()
        records: dict[str, Any] = {}  # what the final table checks its parts against: file -> size, sha256
        for marker in done.values():
            records.update(marker["files"])
        # the markers of parts whose range needs a reduce (resumed, or as their tasks committed them): passed
        # to the reduce, which then reads none back
        reduced_parts = {j for parts in ranges.values() if len(parts) > 1 for j in parts}
        markers = {j: m for j, m in done.items() if j in reduced_parts}

        # on an object store the parts' accumulators stay on the cluster for the reduce (sent_part): not read back
        held: dict[int, Any] = {}
        held_bound = _Bound(_HOLD_BYTES)
        split = sent_part if reduced_parts and not storage.is_local else None
        # parts of one symbol group a task computes in turn (see bundle_parts): fewer tasks, the same parts
        spb = run.get("seconds_per_bar_probe")
        bundles = [[i] for i in range(len(tasks))]
        if spb and split is None:
            work = [spb * (t.hi - t.lo) * sum(bars_per_symbol[s] for s in t.symbols) for t in tasks]
            bundles = bundle_parts([(t.symbols, t.whole_range and t.stream is None) for t in tasks], work,
                                   task_target(sum(work), config.batch_seconds, threads), threads)

        def inputs(i: int) -> list[Any]:  # the hub's sets of a task, asked for when the task is submitted
            task = tasks[i]
            if task.stream is not None:
                return []
            for sym in task.symbols:
                if sym not in sources:
                    sources[sym] = source.source(sym, consumers[sym])
            return [sources[sym] for sym in task.symbols]

        given: dict[str, bytes] = {}  # object stores: parts' bytes as their tasks wrote them, for the final table
        given_bound = _Bound(_GIVEN_TOTAL)

        # bars fetched from an object store stay in the worker process that read them (bars.store._FETCHED): a task
        # whose bars it reads itself (inline sets only) goes back to the worker that ran it in this driver's last run
        placement = None
        if not bars.storage.is_local and bar_cache_bytes() > 0:
            placement = _Placement((bars.url, bars.fingerprint), workers,
                                   [sum((t.hi - t.lo) * bars_per_symbol[s] for t in (tasks[i] for i in b)
                                        for s in t.symbols) for b in bundles])

        def worker_of(b: int) -> str | None:  # after inputs(b's first task): its sources are known
            task = tasks[bundles[b][0]]
            if task.stream is not None or not all(isinstance(sources.get(s), InlineSet) for s in task.symbols):
                return None
            return placement.worker(b, task.symbols)

        def finished(i: int, out: dict[str, Any]) -> None:
            if placement is not None and out.get("worker"):
                placement.ran(tasks[i].symbols, out["worker"])
            _keep_given(given, given_bound, out.pop("given", None))
            bars_read.update(out.get("bars", {}))
            records.update(out.get("files", {}))
            if tasks[i].part in reduced_parts and "marker" in out:
                markers[tasks[i].part] = out["marker"]
            _keep_held(held, held_bound, i, tasks[i].part, out)
            if out.pop("later", False):
                later.add(tasks[i].part)
            monitor.task(out)
            lease.check()  # lost (taken over): stop submitting; tasks still running write what the new owner does
            for sym, counters in out["counters"].items():
                source.settle(sources.get(sym), counters)
            if tasks[i].stream is None:
                for sym in tasks[i].symbols:  # the last task that needs a set: let the workers drop it
                    consumers[sym] -= 1
                    if consumers[sym] == 0 and sources.pop(sym, None) is not None:
                        source.done(sym)

        def bundle_done(b: int, out: Any) -> None:
            for i, one in zip(bundles[b], out if len(bundles[b]) > 1 else [out]):
                finished(i, one)

        if tasks:  # (with split, every bundle is one part: held is keyed by the task's index)
            run_tasks(client, run_part, [tasks[b[0]] if len(b) == 1 else tuple(tasks[i] for i in b) for b in bundles],
                      extra_args=lambda b: inputs(bundles[b][0]), retries=config.retries, progress=progress,
                      label=kind, window=2 * max(threads, 1) + 2, on_result=bundle_done, split=split, held=held,
                      workers=None if placement is None else worker_of,
                      keys=[f"{kind}-{run_id}-{place}-part-{tasks[b[0]].part:06d}"
                            + (f"-{tasks[b[-1]].part:06d}" if len(b) > 1 else "") for b in bundles])
        held = {tasks[i].part: f for i, f in held.items()}
        split = {r: parts for r, parts in ranges.items() if len(parts) > 1}  # the others wrote their rows
        if later and any(j not in held for parts in split.values() for j in parts):
            confirmed |= _flush_commits(client, run_ref)  # the reduce reads these parts' accumulators back
        resume_reduce = run.get("resume_reduce") or {}
        reduced = run_tasks(client, reduce_portfolio, [run_ref] * len(split), label="portfolio", progress=False,
                            extra_args=[(parts, lo, hi, frozen[(lo, hi)], config.cash,
                                         resume(resume_reduce.get(str(lo))), keep_state,
                                         root if run.get("changed_symbols") else None,
                                         {j: markers[j] for j in parts if j in markers},
                                         {j: held[j] for j in parts if j in held})
                                        for (lo, hi), parts in split.items()],
                            keys=[f"portfolio-{run_id}-{place}-{lo}" for lo, _ in split])
        held.clear()  # the accumulators kept on the cluster are released
        if later:  # every part committed before the final table reads one or the run is complete
            confirmed |= _flush_commits(client, run_ref)
            # a worker lost after its commit ended took the record of it along: its marker, written last, tells
            lost = [j for j in sorted(later - confirmed) if storage.read_optional(marker_name(j)) is None]
            if lost:
                raise StorageError(f"{len(lost)} part(s) were computed but their commit was lost with their worker "
                                   f"(part {lost[0]})", file=run_ref.url,
                                   hint="run the same command again: it resumes and recomputes them")
        for out in reduced:  # the rows each reduce wrote, checked like every part when the table reads them
            records.update(out.get("files", {}))
            _keep_given(given, given_bound, out.pop("given", None))
        wall = time.perf_counter() - t0
        monitor.stop()
        lease.confirm()
        write_final_table(storage, ranges, {lo: out["rows"] for (lo, _), out in zip(split, reduced)},
                          keep_portfolio=not mixed, symbols=symbols, records=records, metadata=run_metadata(run),
                          given=given)
        given.clear()
        peak = monitor.peak_rss()  # the monitor's end probes have it; else one more round trip
        if peak is None:
            peak = max(client.run(_peak_rss).values(), default=0)
        summary = {**estimate, "status": "complete", "wall_seconds": round(wall, 3),
                   "bar_evals_per_s": round(estimate["bar_evaluations"] * len(todo) / max(len(layout), 1) / wall, 1)
                   if wall > 0 else 0.0,
                   "tasks_resumed": len(done), "recomputed_parts": len(failed), "peak_worker_memory_mb": round(peak / 1e6, 1),
                   "bars_read": int(sum(bars_read.values())),
                   "incremental_symbols": len(went_on), "full_symbols": len(symbols) - len(went_on),
                   "run_started": run.get("started"), "run_finished": _now()}
        if prev_id:
            summary["incremental_from"] = prev_id
        if mixed:
            summary["portfolio_left_out"] = mixed
        if todo:
            summary.update(source.summary())
        record = monitor.record()
        if record.get("storage", {}).get("requests"):  # what the tasks asked of storage, by operation
            summary.update(storage_requests=record["storage"]["requests"], storage_by_op=record["storage"]["by_op"])
        found = findings(record)
        for f in found:  # one line each, at the end of the run
            echo(f"finding: {f['finding']}: {f['fix']}")
        final = {**run, "status": "complete", "summary": summary, "finished": _now(), "finished_on": _host(),
                 "findings": found, **({"monitor": record} if record else {}),
                 **({"performance_report": monitor.path} if monitor.path else {})}
        if keep_state:
            final.update(resumable=True, symbol_versions={s: bars.symbol_fingerprint(s) for s in symbols},
                         reduce_states={str(lo): out["state"] for (lo, _), out in zip(split, reduced)})
        storage.write_json(final, "run.json")
        if keep_state:
            record_chain(root, chain, kind, run_id)
    finally:
        source.release()
    return SweepResult(run_id, run_ref.url, summary, config, storage)
