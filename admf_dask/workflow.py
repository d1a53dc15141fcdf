"""YAML workflows: a list of steps over one storage root and one cluster, fit for cron.

A workflow file looks like this (``workflows/quickstart.yaml`` is the runnable one)::

    storage: ../data/generated        # root URL or path; relative paths are relative to this file
    storage_options: {}               # fsspec options for the root (S3 endpoint_url, key, ...)
    cluster: local                    # threads | local | tcp://host:8786 | {kind: local, n_workers: 2, ...}
    steps:
      - generate: {dataset: quickstart, symbols: 8, start: 2019-01-01, end: 2023-12-31, seed: 42}
      - summary: {dataset: quickstart}

Datasets live under ``<storage>/bars/<dataset>``. The whole file is validated before
any step runs, so a typo fails in a second with the key's path, not after an hour.
Steps are idempotent: rerunning a finished workflow recomputes nothing it has.
``ADMF_CLUSTER``, ``ADMF_STORAGE`` and ``ADMF_MEMORY_BUDGET`` override the file's settings.

Each step returns a :class:`~admf_dask.report.StepResult` (text + data); the run
records each step's status, UTC start and finish times, data and warnings as a
:class:`StepRecord` (what ``admf --json run`` prints). Progress messages go to the
``admf_dask.workflow`` logger; the steps' texts to ``echo`` (stdout by default).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .bars.synthetic import SyntheticSpec
from .config import ClusterConfig, build, env_override
from .errors import ConfigError, did_you_mean
from .logs import collect_warnings
from .replay import ReplayConfig
from .report import (StepResult, error_line, format_signal_set, format_top, ingest_data, outcome, run_data,
                     signal_set_data, utc_now)
from .signals import SignalsConfig
from .sweep import SweepConfig

__all__ = ["STEPS", "StepRecord", "Workflow", "load_workflow", "run_workflow"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class GenerateStep(SyntheticSpec):
    """Synthetic bars: ``symbols`` is a count (names SYM000...) or a list of names; the rest is a SyntheticSpec."""

    dataset: str
    symbols: int | list[str] = 8

    def __post_init__(self) -> None:
        from .bars import check_symbol
        from .errors import DataError

        super().__post_init__()  # dates, freq, prices
        if isinstance(self.symbols, int) and self.symbols < 1:
            raise ConfigError("symbols must be >= 1", key="symbols")
        for s in [] if isinstance(self.symbols, int) else self.symbols:
            try:
                check_symbol(s)
            except DataError as exc:
                raise ConfigError(exc.message, key="symbols") from None

    def spec(self) -> SyntheticSpec:
        return SyntheticSpec(**{f.name: getattr(self, f.name) for f in fields(SyntheticSpec)})


@dataclass(frozen=True)
class IngestStep:
    """CSV/Parquet files into a dataset; ``files`` are relative to the workflow file.

    ``mode`` is ``merge`` (default: the union with the stored bars by timestamp),
    ``append`` (only bars after the stored last one) or ``replace``; ``on_conflict``
    (``new`` or ``old``) settles merged bars whose values differ from the stored ones.
    """

    dataset: str
    files: list[str]
    tz: str = "UTC"
    repair: bool = False
    adjust: bool = False
    mode: str = "merge"
    on_conflict: str | None = None
    timestamp_unit: str | None = None  # epoch numbers' unit (s, ms, us, ns); default: by magnitude
    columns: list[str] | None = None  # a headerless file's column names
    drop_missing: bool = False  # drop rows with missing values (Yahoo's null rows), saying how many

    def __post_init__(self) -> None:
        from .bars.update import check_mode

        check_mode(self.mode, self.on_conflict)
        if self.timestamp_unit not in (None, "s", "ms", "us", "ns"):
            raise ConfigError(f"timestamp_unit must be s, ms, us or ns, got {self.timestamp_unit!r}",
                              key="timestamp_unit")


@dataclass(frozen=True)
class SummaryStep:
    """Read a dataset back on the cluster and print one line per symbol."""

    dataset: str
    symbols: list[str] | None = None
    start: str | None = None
    end: str | None = None


@dataclass(frozen=True)
class IndicatorsStep:
    """Compute (or load from the cache) indicators for every symbol of a dataset.

    ``indicators`` is a list of mappings such as ``{name: sma, window: 20}``; each
    unique one is computed once per symbol and cached under ``<storage>/cache``.
    """

    dataset: str
    indicators: list[dict]
    symbols: list[str] | None = None
    start: str | None = None
    end: str | None = None

    def plan(self):
        from .indicators import IndicatorPlan, IndicatorSpec

        specs = []
        for i, raw in enumerate(self.indicators):
            if not isinstance(raw, dict) or "name" not in raw:
                raise ConfigError(f"each indicator is a mapping with a name, e.g. {{name: sma, window: 20}}; "
                                  f"got {raw!r}", key=f"indicators[{i}]")
            params = {k: v for k, v in raw.items() if k != "name"}
            try:
                specs.append(IndicatorSpec.make(raw["name"], **params))
            except ConfigError as exc:
                raise ConfigError(exc.message, key=f"indicators[{i}]", hint=exc.hint) from None
        return IndicatorPlan.from_requests(specs)

    def __post_init__(self) -> None:
        self.plan()


def _check_report(value: Any) -> None:
    if not (value is None or isinstance(value, bool) or (isinstance(value, str) and value)):
        raise ConfigError(f"performance_report must be true, false or a file path, got {value!r}",
                          key="performance_report")


@dataclass(frozen=True, kw_only=True)
class SweepStep(SweepConfig):
    """A parameter sweep over a dataset (see :class:`admf_dask.sweep.SweepConfig`).

    ``performance_report`` (in sweep, signals and replay steps): ``true`` for dask's
    performance report of the step's tasks in its default place, or a file path
    (relative to the workflow file).
    """

    dataset: str
    force: bool = False
    yes: bool = False
    performance_report: bool | str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_report(self.performance_report)

    def config(self) -> SweepConfig:
        return SweepConfig(**{f.name: getattr(self, f.name) for f in fields(SweepConfig)})


@dataclass(frozen=True, kw_only=True)
class SignalsStep(SignalsConfig):
    """Store the signals of configurations as a set (see :class:`admf_dask.signals.SignalsConfig`).

    ``from_run: last`` takes the top configurations of this workflow's latest sweep: the
    sweep step before this one, or else the run its sweep step made when it last ran.
    """

    dataset: str
    force: bool = False
    performance_report: bool | str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_report(self.performance_report)

    def config(self, last_run: str | None) -> SignalsConfig:
        values = {f.name: getattr(self, f.name) for f in fields(SignalsConfig)}
        if values["from_run"] == "last":
            if last_run is None:
                raise ConfigError("from_run: last needs a sweep step before this one, or an earlier run of this "
                                  "workflow with a sweep step", key="from_run")
            values["from_run"] = last_run
        return SignalsConfig(**values)


@dataclass(frozen=True, kw_only=True)
class ReplayStep(ReplayConfig):
    """Replay weight vectors over a signal set (see :class:`admf_dask.replay.ReplayConfig`).

    ``signals: last`` is the set of this workflow's latest ``signals`` step (before this
    one, or else from the workflow's last run). The bars are the set's dataset, or
    ``dataset`` when given.
    """

    dataset: str | None = None
    force: bool = False
    yes: bool = False
    performance_report: bool | str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_report(self.performance_report)

    def config(self, last_set: str | None) -> ReplayConfig:
        values = {f.name: getattr(self, f.name) for f in fields(ReplayConfig)}
        if values["signals"] == "last":
            if last_set is None:
                raise ConfigError("signals: last needs a signals step before this one, or an earlier run of this "
                                  "workflow with a signals step", key="signals")
            values["signals"] = last_set
        return ReplayConfig(**values)


@dataclass(frozen=True)
class ReportStep:
    """Write a run's self-contained HTML report (as ``admf report``) and print its path.

    ``run`` is ``sweep`` or ``replay`` (this workflow's latest run of that kind: a step
    before this one, or else the run its step made when the workflow last ran) or a run
    id. ``output`` is the file, relative to the workflow file (default:
    ``<storage>/reports/report-<run id>.html`` on a local root, else
    ``report-<run id>.html`` beside the workflow file). An existing file is kept
    (rerunning a workflow recomputes nothing) unless ``force``.
    """

    run: str = "sweep"
    output: str | None = None
    top: int = 10
    metric: str | None = None
    symbol: str | None = None
    force: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.run, str) or not self.run:
            raise ConfigError(f"run must be sweep, replay or a run id, got {self.run!r}", key="run")
        if not isinstance(self.top, int) or isinstance(self.top, bool) or self.top < 1:
            raise ConfigError(f"top must be a whole number >= 1, got {self.top!r}", key="top")
        if self.metric is not None:
            from .sweep.grid import check_metric

            check_metric(self.metric)


@dataclass(frozen=True)
class Workflow:
    storage: str
    steps: tuple[tuple[str, Any], ...]
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    storage_options: dict = field(default_factory=dict)
    name: str = "workflow"
    base_dir: str = "."


@dataclass
class StepRecord:
    """What happened to one step of a run: for ``--json`` summaries and for callers of :func:`run_workflow`.

    ``status`` is ``ok``, ``failed``, ``busy``, ``interrupted`` or ``not_run`` (a step
    after the one that stopped the workflow); times are ISO 8601 UTC; ``data`` is the
    step's :attr:`StepResult.data <admf_dask.report.StepResult.data>` (run or set ids, counts).
    """

    step: int
    kind: str
    status: str = "not_run"
    started: str | None = None
    finished: str | None = None
    seconds: float | None = None
    data: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The record as one flat mapping: the record's fields, then the step's data."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "data"}
        clash = set(out) & set(self.data)
        if clash:  # a programming error in a step function
            raise ValueError(f"step data may not use the record's keys {sorted(clash)}")
        return {**out, **self.data}


class Context:
    """What steps share: the storage root, a lazily started cluster, and output."""

    def __init__(self, workflow: Workflow, stack: ExitStack, echo: Callable[[str], None],
                 wait: bool = False) -> None:
        from .storage import StorageRef

        self.workflow = workflow
        self.echo = echo
        self.wait = wait  # wait for runs another process holds (instead of BusyError)
        self.root = StorageRef.make(workflow.storage, workflow.storage_options)
        self._stack = stack
        self._client = None
        self.last_run: str | None = None  # the latest sweep's run id, for `from_run: last`
        self.last_set: str | None = None  # the latest signal set's id, for `signals: last`
        self.last_replay: str | None = None  # the latest replay's run id, for a report step's `run: replay`
        self.produced: tuple[str, str] | None = None  # (kind, id) of the run the current step made
        self.report_dir: str | None = None  # admf run --performance-report: "" (default places) or a directory
        self.step_no = 0

    def last(self, kind: str) -> str | None:
        """This run's latest sweep run or signal set, else what the workflow's steps made when it last ran."""
        from .runs import workflow_latest

        mine = {"sweep": self.last_run, "signals": self.last_set, "replay": self.last_replay}[kind]
        return mine or workflow_latest(self.root, self.workflow.name, kind)

    @property
    def client(self):
        if self._client is None:
            from .cluster import connect

            self._client = self._stack.enter_context(connect(self.workflow.cluster, echo=self.echo))
        return self._client

    def dataset(self, name: str):
        from .bars import BarStore
        from .storage import StorageRef

        ref = StorageRef.make(self.workflow.storage, self.workflow.storage_options).child("bars", name)
        return BarStore(ref.url, ref.options)

    def path(self, rel: str) -> str:
        return rel if "://" in rel or os.path.isabs(rel) else os.path.join(self.workflow.base_dir, rel)

    def performance_report(self, step: Any, kind: str) -> str | bool | None:
        """The step's performance report: its own key, else ``admf run --performance-report [DIR]``."""
        if step.performance_report is not None:
            value = step.performance_report
            return self.path(value) if isinstance(value, str) else value or None
        if self.report_dir is None:
            return None
        if self.report_dir == "":
            return True
        return os.path.join(os.path.abspath(self.report_dir), f"performance-{self.step_no}-{kind}.html")


def _run_generate(ctx: Context, step: GenerateStep) -> StepResult:
    from .bars import bar_timestamps, generate_dataset, symbol_names

    store = ctx.dataset(step.dataset)
    spec = step.spec()
    symbols = symbol_names(step.symbols) if isinstance(step.symbols, int) else list(step.symbols)
    if store.exists() and store.source == {"kind": "synthetic", **spec.to_dict()}:
        missing = [s for s in symbols if s not in store.manifest["symbols"]]
    else:
        missing = symbols
    data = {"dataset": step.dataset, "url": store.url, "symbols": len(symbols)}
    if not missing:
        return StepResult(f"{store.url}: up to date ({len(symbols)} symbols, fingerprint {store.fingerprint[:12]})",
                          {**data, "written": 0, "bars_written": 0, "fingerprint": store.fingerprint})
    bars_total = len(missing) * len(bar_timestamps(spec.start, spec.end, spec.freq))
    client = ctx.client if bars_total > 2_000_000 else None  # small jobs are faster in process
    manifest = generate_dataset(store, missing, spec, client=client)
    return StepResult(f"{store.url}: wrote {len(missing)} symbol(s), {bars_total:,} {spec.freq} bars; "
                      f"fingerprint {manifest['fingerprint'][:12]}",
                      {**data, "written": len(missing), "bars_written": bars_total,
                       "fingerprint": manifest["fingerprint"]})


def _run_ingest(ctx: Context, step: IngestStep) -> StepResult:
    from .bars import ingest

    store = ctx.dataset(step.dataset)
    report = ingest(store, [ctx.path(f) for f in step.files], tz=step.tz, repair=step.repair, adjust=step.adjust,
                    mode=step.mode, on_conflict=step.on_conflict, timestamp_unit=step.timestamp_unit,
                    columns=list(step.columns) if step.columns else None, drop_missing=step.drop_missing)
    return StepResult("\n".join(report.lines()), {"dataset": step.dataset, "url": store.url, **ingest_data(report)})


def _run_summary(ctx: Context, step: SummaryStep) -> StepResult:
    from .cluster import run_tasks
    from .summary import format_summary, summarize_symbol

    store = ctx.dataset(step.dataset)
    symbols = list(step.symbols) if step.symbols else store.symbols()
    for s in symbols:
        store.entry(s)  # unknown symbols fail here, with a suggestion, before any task runs
    rows = run_tasks(ctx.client, summarize_symbol, [(store.ref, s, step.start, step.end) for s in symbols],
                     label="summary", stage="bars", progress=False)
    return StepResult(format_summary(rows), {"dataset": step.dataset, "symbols": len(rows),
                                             "bars": sum(int(r["bars"]) for r in rows)})


def _run_indicators(ctx: Context, step: IndicatorsStep) -> StepResult:
    from .cache import IndicatorHub
    from .cluster import collect
    from .storage import StorageRef

    store = ctx.dataset(step.dataset)
    symbols = list(step.symbols) if step.symbols else store.symbols()
    for s in symbols:
        store.entry(s)
    plan = step.plan()
    cache = StorageRef.make(ctx.workflow.storage, ctx.workflow.storage_options).child("cache")
    hub = IndicatorHub(store, cache, client=ctx.client)
    collect(ctx.client, [hub.submit(s, plan, step.start, step.end) for s in symbols], label="indicators")
    return StepResult(f"{plan.unique} unique indicator(s) x {len(symbols)} symbol(s) "
                      f"({plan.requested} requested)\n{hub.counters.line()}",
                      {"dataset": step.dataset, "symbols": len(symbols), "unique": plan.unique,
                       "requested": plan.requested, "indicators": hub.counters.as_dict()})


def _run_sweep(ctx: Context, step: SweepStep) -> StepResult:
    from .storage import StorageRef
    from .sweep import run_sweep

    root = StorageRef.make(ctx.workflow.storage, ctx.workflow.storage_options)
    result = run_sweep(step.config(), ctx.dataset(step.dataset), root, lambda: ctx.client, force=step.force,
                       yes=step.yes, echo=ctx.echo, wait=ctx.wait,
                       performance_report=ctx.performance_report(step, "sweep"))
    ctx.last_run = result.run_id
    ctx.produced = ("sweep", result.run_id)
    return StepResult("\n".join([*result.lines(), format_top(result)]), {"dataset": step.dataset, **run_data(result)})


def _run_signals(ctx: Context, step: SignalsStep) -> StepResult:
    from .signals import generate_signals
    from .storage import StorageRef

    root = StorageRef.make(ctx.workflow.storage, ctx.workflow.storage_options)
    signal_set = generate_signals(step.config(ctx.last("sweep") if step.from_run == "last" else None),
                                  ctx.dataset(step.dataset), root, lambda: ctx.client, force=step.force,
                                  echo=ctx.echo, wait=ctx.wait,
                                  performance_report=ctx.performance_report(step, "signals"))
    ctx.last_set = signal_set.set_id
    ctx.produced = ("signals", signal_set.set_id)
    return StepResult("\n".join(format_signal_set(signal_set)), {"dataset": step.dataset, **signal_set_data(signal_set)})


def _run_replay(ctx: Context, step: ReplayStep) -> StepResult:
    from .replay import best_weights, run_replay
    from .storage import StorageRef

    root = StorageRef.make(ctx.workflow.storage, ctx.workflow.storage_options)
    signals = ctx.last("signals") if step.signals == "last" else None
    result = run_replay(step.config(signals), root, lambda: ctx.client,
                        ctx.dataset(step.dataset) if step.dataset else None, force=step.force, yes=step.yes,
                        echo=ctx.echo, wait=ctx.wait, performance_report=ctx.performance_report(step, "replay"))
    ctx.last_replay = result.run_id
    ctx.produced = ("replay", result.run_id)
    return StepResult("\n".join([*result.lines(), format_top(result), best_weights(result)]),
                      {"signals": signals if step.signals == "last" else step.signals, **run_data(result)})


def _run_report(ctx: Context, step: ReportStep) -> StepResult:
    from .reports import write_report
    from .runresult import load_run

    run_id = step.run
    if run_id in ("sweep", "replay"):
        run_id = ctx.last(step.run)
        if run_id is None:
            raise ConfigError(f"run: {step.run} needs a {step.run} step before this one, or an earlier run of this "
                              f"workflow with a {step.run} step", key="run")
    result = load_run(ctx.root, run_id)
    if step.symbol is not None and step.symbol not in result.run.get("symbols", []):
        raise ConfigError(f"symbol {step.symbol!r} is not in run {result.run_id}", key="symbol")
    name = f"report-{result.run_id}.html"
    if step.output:
        path = Path(ctx.path(step.output))
    elif "://" not in ctx.workflow.storage or ctx.workflow.storage.startswith("file://"):
        path = Path(ctx.workflow.storage.removeprefix("file://")) / "reports" / name
    else:
        path = Path(ctx.workflow.base_dir) / name
    data = {"run_id": result.run_id, "run_kind": result.kind, "path": str(path)}
    if path.exists() and not step.force:
        return StepResult(f"report of {result.kind} {result.run_id}: {path} (kept; force: true rewrites it)",
                          {**data, "written": False})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_report(result, path, top=step.top, metric=step.metric, symbol=step.symbol)
    return StepResult(f"report of {result.kind} {result.run_id}: {path}", {**data, "written": True})


STEPS: dict[str, tuple[type, Callable[[Context, Any], StepResult]]] = {
    "generate": (GenerateStep, _run_generate),
    "ingest": (IngestStep, _run_ingest),
    "summary": (SummaryStep, _run_summary),
    "indicators": (IndicatorsStep, _run_indicators),
    "sweep": (SweepStep, _run_sweep),
    "signals": (SignalsStep, _run_signals),
    "replay": (ReplayStep, _run_replay),
    "report": (ReportStep, _run_report),
}


def load_workflow(path: str | os.PathLike, *, cluster: str | None = None, storage: str | None = None,
                  memory_budget: str | None = None, storage_options: dict | None = None) -> Workflow:
    """Read and validate a workflow file; CLI/env overrides win over the file.

    ``cluster``, ``storage`` and ``memory_budget`` (or ``ADMF_CLUSTER``, ``ADMF_STORAGE``,
    ``ADMF_MEMORY_BUDGET``) replace the file's cluster, storage root and every step's
    ``memory_budget``; ``storage_options`` are merged over the file's.
    """
    path = Path(path)
    try:
        from .faults import yaml_load

        data = yaml_load(path.read_text(), file=str(path))
    except FileNotFoundError:
        raise ConfigError("workflow file not found", file=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"not valid YAML: {getattr(exc, 'problem', exc)}", file=str(path),
                          line=mark.line + 1 if mark else None) from None
    if not isinstance(data, dict):
        raise ConfigError("a workflow is a mapping with storage, cluster and steps", file=str(path))
    known = {"name", "storage", "storage_options", "cluster", "steps"}
    for key in data:
        if key not in known:
            raise ConfigError(f"unknown key {key!r}", file=str(path), key=key,
                              hint=did_you_mean(str(key), known) or f"known keys: {', '.join(sorted(known))}")
    base_dir = str(path.resolve().parent)
    storage = storage or env_override("ADMF_STORAGE") or data.get("storage")
    if not storage:
        raise ConfigError("the workflow needs a storage root", file=str(path), key="storage")
    storage = str(storage)
    if "://" not in storage and not os.path.isabs(storage):
        storage = os.path.normpath(os.path.join(base_dir, storage))
    try:
        # the file's own cluster is checked even when --cluster or ADMF_CLUSTER replaces it: a bad
        # file is refused the same way wherever it runs
        cluster_cfg = ClusterConfig.parse(data.get("cluster", "local"))
        if override := cluster or env_override("ADMF_CLUSTER"):
            cluster_cfg = ClusterConfig.parse(override)
        steps = []
        raw_steps = data.get("steps") or []
        if not isinstance(raw_steps, list) or not raw_steps:
            raise ConfigError("steps must be a non-empty list", key="steps")
        for i, raw in enumerate(raw_steps):
            if not isinstance(raw, dict) or len(raw) != 1:
                raise ConfigError(f"each step is one mapping like '- generate: {{...}}', got {raw!r}",
                                  key=f"steps[{i}]")
            (kind, settings), = raw.items()
            if kind not in STEPS:
                raise ConfigError(f"unknown step {kind!r}", key=f"steps[{i}]",
                                  hint=did_you_mean(str(kind), STEPS) or f"steps are: {', '.join(STEPS)}")
            steps.append((kind, build(STEPS[kind][0], settings, f"steps[{i}].{kind}")))
        options = data.get("storage_options") or {}
        if not isinstance(options, dict):
            raise ConfigError("storage_options must be a mapping", key="storage_options")
        options = {**options, **(storage_options or {})}
        budget = memory_budget or env_override("ADMF_MEMORY_BUDGET")
        if budget:
            steps = [(kind, dataclasses.replace(step, memory_budget=budget) if hasattr(step, "memory_budget") else step)
                     for kind, step in steps]
    except ConfigError as exc:
        if "file" in exc.where:
            raise
        raise ConfigError(exc.message, file=str(path), hint=exc.hint, **exc.where) from None
    return Workflow(storage=storage, steps=tuple(steps), cluster=cluster_cfg, storage_options=options,
                    name=str(data.get("name") or path.stem), base_dir=base_dir)


def run_workflow(workflow: Workflow, *, echo: Callable[[str], None] | None = None,
                 records: list[StepRecord] | None = None, wait: bool = False,
                 performance_report: str | None = None) -> list[StepRecord]:
    """Run the steps in order; a failing step stops the workflow with its error.

    Each step's text goes to ``echo`` (default: printed to stdout), progress messages
    to the ``admf_dask.workflow`` logger. Returns one :class:`StepRecord` per step;
    pass ``records`` (a list, filled in place) to keep them when a step raises.

    The process holds the workflow's lease (:func:`admf_dask.runs.workflow_lease`) while
    it runs: a second invocation raises BusyError (exit 75), or with ``wait`` waits for
    the first (and then finds its work done). Each step that makes a run points
    ``workflows/<name>/latest/<i>-<kind>.json`` at it. ``performance_report`` ("" or a
    directory) gives sweep, signals and replay steps without their own key a performance report.
    """
    from .runs import set_step_latest, workflow_lease

    echo = echo or (lambda text: print(text, flush=True))
    records = [] if records is None else records
    records[:] = [StepRecord(n, kind) for n, (kind, _) in enumerate(workflow.steps, 1)]
    t0 = time.perf_counter()
    log.info("workflow %s: %d step(s), storage %s", workflow.name, len(workflow.steps), workflow.storage)
    with ExitStack() as stack:
        ctx = Context(workflow, stack, log.info, wait=wait)
        ctx.report_dir = performance_report
        from .preflight import preflight_workflow, remove_stale_temp

        preflight_workflow(workflow, ctx.last)  # every step against storage, before step 1 writes
        remove_stale_temp(ctx.root.url)
        stack.enter_context(workflow_lease(ctx.root, workflow.name).acquire(wait=wait, echo=ctx.echo))
        for record, (kind, step) in zip(records, workflow.steps):
            where = f"[{record.step}/{len(records)}] {kind}"
            log.info("%s", where)
            record.started, t = utc_now(), time.perf_counter()
            ctx.produced, ctx.step_no = None, record.step
            try:
                with collect_warnings() as warned:
                    result = STEPS[kind][1](ctx, step)
            except BaseException as exc:
                record.status, record.error = outcome(exc)[1], error_line(exc)
                raise
            finally:
                record.finished, record.seconds = utc_now(), round(time.perf_counter() - t, 3)
                record.warnings = warned
            if ctx.produced is not None:
                set_step_latest(ctx.root, workflow.name, record.step - 1, *ctx.produced)
            record.status, record.data = "ok", result.data
            echo(result.text)
            log.info("%s done in %.1fs", where, record.seconds)
    log.info("workflow %s finished in %.1fs", workflow.name, time.perf_counter() - t0)
    return records
