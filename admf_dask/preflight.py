"""Preflight: what a run needs, checked before a cluster starts or anything is written.

A mistake found here costs a second and leaves storage as it was; found by a task it
costs a cluster start, retries, a run directory and cache packs. The checks read only
manifests (no bar file is opened) and never write:

=================  ====================================================================
check              refuses (ConfigError, DataError or StorageError: one line, exit 2)
=================  ====================================================================
cluster            a cluster setting that is not threads, local or a scheduler address
dates              a bound that is not a time, outside 1677-09-22 .. 2262-04-11, or an
                   end before the start
symbols            a symbol the dataset does not hold
range              a range that holds none of a symbol's bars (by the manifest's first
                   and last bar)
writable           a local storage root (or the first of its parents that exists) that
                   this process cannot write
workflow           a step naming a dataset that neither exists nor is made by an earlier
                   step; a named run or signal set that does not exist
=================  ====================================================================

>>> check_dates("2021-06-01", "2021-01-01")
Traceback (most recent call last):
...
admf_dask.errors.ConfigError: end 2021-01-01 is before start 2021-06-01 [key end]; swap them or widen the range
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError, DataError, StorageError, did_you_mean
from .storage import StorageRef

__all__ = ["check_cluster", "check_dates", "check_range", "check_writable", "preflight_workflow", "ready_to_write"]

_MIN_NS, _MAX_NS = np.iinfo(np.int64).min, np.iinfo(np.int64).max


def _day(ns: int) -> str:
    return pd.Timestamp(ns, tz="UTC").strftime("%Y-%m-%d")


def to_bound(when: Any, key: str) -> int | None:
    """A start/end bound as int64 ns UTC (None stays None); ConfigError naming ``key`` if it is not a usable time."""
    if when is None:
        return None
    if isinstance(when, (int, np.integer)) and not isinstance(when, bool):
        return int(when)
    try:
        ts = pd.Timestamp(when)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read {when!r} as a time: {exc}", key=key,
                          hint="give a date such as 2021-01-31 or a time such as 2021-01-31T15:30") from None
    if ts is pd.NaT:
        raise ConfigError(f"cannot read {when!r} as a time", key=key, hint="give a date such as 2021-01-31")
    try:
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        return int(ts.value)
    except (OverflowError, ValueError):
        raise ConfigError(f"{when} is outside the times admf can hold", key=key,
                          hint=f"dates must lie between {pd.Timestamp.min:%Y-%m-%d} and "
                               f"{pd.Timestamp.max:%Y-%m-%d}") from None


def check_dates(start: Any, end: Any) -> tuple[int | None, int | None]:
    """Both bounds parsed (ns UTC or None); ConfigError when one is no usable time or the end is before the start."""
    lo, hi = to_bound(start, "start"), to_bound(end, "end")
    if lo is not None and hi is not None and hi < lo:
        raise ConfigError(f"end {end} is before start {start}", key="end", hint="swap them or widen the range")
    return lo, hi


def check_range(bars: Any, symbols: Iterable[str], start: Any, end: Any) -> None:
    """Every symbol is in ``bars`` and has at least two bars in ``[start, end]``.

    DataError naming the first symbol whose bars all lie outside the range (with its
    first and last bar, from the manifest), or that has fewer than two bars in it:
    counted exactly by :meth:`BarStore.rows_in_range`, which opens only the files a bound
    falls in and keeps the count for the run that follows.
    """
    lo, hi = check_dates(start, end)
    lo_ns, hi_ns = (_MIN_NS if lo is None else lo), (_MAX_NS if hi is None else hi)
    for symbol in symbols:
        entry = bars.entry(symbol)  # DataError with a suggestion for an unknown symbol
        first, last = int(entry["first_ns"]), int(entry["last_ns"])
        if last < lo_ns or first > hi_ns:
            wanted = f"{start or 'the first bar'} to {end or 'the last bar'}"
            raise DataError(f"no bar of {symbol} from {wanted}: its bars run from {_day(first)} to {_day(last)}",
                            symbol=symbol, key="end" if first > hi_ns else "start",
                            hint="choose a start/end range inside the data (`admf symbols` lists it)")
        if lo is not None or hi is not None:
            n = bars.rows_in_range(symbol, start, end)
            if n < 2:
                raise DataError(f"{n} bar(s) of {symbol} from {start or 'the first bar'} to {end or 'the last bar'}:"
                                " at least two are needed", symbol=symbol, key="start",
                                hint="widen the start/end range")


def check_cluster(cluster: Any) -> None:
    """ConfigError for a cluster setting that is not threads, local, an address or a valid mapping."""
    from .config import ClusterConfig

    if cluster is not None:
        ClusterConfig.parse(cluster)


def check_writable(root: StorageRef) -> None:
    """StorageError when a local root cannot be written by this process; other filesystems are not probed.

    The root need not exist: the first of its parents that exists must be a directory
    this process can create a file in (what ``makedirs`` needs; a probe file is created
    there and removed at once), and the root's ``runs``, ``signals`` and ``cache``
    directories, where they exist, must be writable by their permissions.
    """
    if "://" in root.url and not root.url.startswith("file://"):
        return
    path = os.path.abspath(root.url.removeprefix("file://"))
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return
        probe = parent
    if not os.path.isdir(probe):
        raise StorageError(f"{probe} is a file, not a directory", file=root.url,
                           hint="give a storage root that is a directory")
    hint = "give a writable storage root or fix its permissions"
    try:  # os.access is not enough: root passes it on a read-only mount
        fd, name = tempfile.mkstemp(prefix=".admf-write-probe-", dir=probe)
    except OSError as exc:
        raise StorageError(f"cannot write to {probe}: {exc.strerror or exc}", file=root.url, hint=hint) from None
    os.close(fd)
    os.unlink(name)
    for d in ("runs", "signals", "cache"):  # listed by other commands: checked, not probed
        sub = os.path.join(path, d)
        if os.path.isdir(sub) and not os.access(sub, os.W_OK | os.X_OK):
            raise StorageError(f"cannot write to {sub}: permission denied", file=root.url, hint=hint)


# ---------------------------------------------------------------------------- workflows
class _Made:
    """What earlier steps of a workflow make of a dataset: its symbols and span (None: unknown, e.g. ingested)."""

    def __init__(self) -> None:
        self.symbols: set[str] | None = set()
        self.span: tuple[int, int] | None = None  # first and last bar's day (ns), as far as generate steps tell

    def add(self, symbols: Iterable[str] | None, first: int | None, last: int | None) -> None:
        if symbols is None or self.symbols is None:
            self.symbols = None
        else:
            self.symbols |= set(symbols)
        if first is not None and last is not None:
            self.span = (first, last) if self.span is None else (min(first, self.span[0]), max(last, self.span[1]))

    def unknown(self) -> None:
        self.symbols, self.span = None, (_MIN_NS, _MAX_NS)

    def check(self, symbols: Iterable[str], start: Any, end: Any) -> None:
        lo, hi = check_dates(start, end)
        for s in symbols if self.symbols is not None else []:
            if s not in self.symbols:
                raise DataError(f"symbol {s!r} is not among those the earlier generate step(s) make", symbol=s,
                                hint=did_you_mean(s, self.symbols))
        if self.span is not None:
            first, last = self.span
            lo_ns, hi_ns = (_MIN_NS if lo is None else lo), (_MAX_NS if hi is None else hi)
            if last + 86_400 * 10**9 <= lo_ns or first > hi_ns:
                raise DataError(f"no bar from {start or 'the first bar'} to {end or 'the last bar'}: the earlier "
                                f"step(s) make bars from {_day(first)} to {_day(last)}",
                                key="end" if first > hi_ns else "start",
                                hint="choose a start/end range inside the data the workflow makes")


def _generated(step: Any) -> tuple[list[str], int, int]:
    from .bars import symbol_names

    symbols = symbol_names(step.symbols) if isinstance(step.symbols, int) else list(step.symbols)
    return symbols, to_bound(step.start, "start"), to_bound(step.end, "end")


def preflight_workflow(workflow: Any, last: Any = None) -> None:
    """Check every step of ``workflow`` against storage before step 1 runs.

    Datasets a step names must exist, or be made by an earlier ``generate`` or
    ``ingest`` step; their symbols and date ranges are checked against the
    manifest (or the symbols a generate step makes); a named sweep run or signal
    set must exist, ``last`` needs an earlier step or an earlier run of the workflow
    (``last(kind)`` answers that). The storage root must be writable.
    """
    from .bars import BarStore

    root = StorageRef.make(workflow.storage, workflow.storage_options)
    check_writable(root)
    made: dict[str, _Made] = {}  # datasets earlier steps make or add to
    existing: list[str] | None = None
    produced: set[str] = set()  # kinds of runs earlier steps make
    for i, (kind, step) in enumerate(workflow.steps):
        where = f"steps[{i}].{kind}"
        try:
            name = getattr(step, "dataset", None)
            if kind in ("generate", "ingest") and name not in made:
                made[name] = _Made()
                ref = root.child("bars", name)
                store = BarStore(ref.url, ref.options)
                if store.exists():  # what is stored stays: the step adds to it
                    info = store.manifest["symbols"]
                    made[name].add(info, min((e["first_ns"] for e in info.values()), default=None),
                                   max((e["last_ns"] for e in info.values()), default=None))
            if kind == "generate":
                made[name].add(*_generated(step))
                continue
            if kind == "ingest":
                _check_files(workflow.base_dir, step.files)
                made[name].unknown()
                continue
            symbols = list(getattr(step, "symbols", None) or [])
            if name is not None and name not in made:
                ref = root.child("bars", name)
                store = BarStore(ref.url, ref.options)
                if not store.exists():
                    if existing is None:
                        existing = _datasets(root)
                    raise ConfigError(f"dataset {name!r} does not exist under {root.child('bars').url}, and no "
                                      f"earlier step makes it", key="dataset",
                                      hint=did_you_mean(name, existing) or "add a generate or ingest step before "
                                      "this one, or fix the name")
                if kind == "replay":
                    pass  # the set's own symbols and range: checked when the set is opened
                else:
                    check_range(store, symbols or store.symbols(), getattr(step, "start", None),
                                getattr(step, "end", None))
            elif name is not None and kind != "replay":
                made[name].check(symbols, getattr(step, "start", None), getattr(step, "end", None))
            else:
                check_dates(getattr(step, "start", None), getattr(step, "end", None))
            if kind == "signals" and step.from_run is not None:
                _check_source(root, "sweep", step.from_run, "from_run", "sweep" in produced, last)
            if kind == "replay":
                _check_source(root, "signals", step.signals, "signals", "signals" in produced, last)
            if kind == "report":
                _check_report(root, step.run, produced, last)
            produced.add(kind)
        except (ConfigError, DataError, StorageError) as exc:
            if "key" in exc.where and exc.where["key"].startswith("steps["):
                raise
            key = f"{where}.{exc.where['key']}" if "key" in exc.where else where
            where_fields = {k: v for k, v in exc.where.items() if k != "key"}
            raise type(exc)(exc.message, hint=exc.hint, key=key, **where_fields) from None


def _check_report(root: StorageRef, run: str, produced: set[str], last: Any) -> None:
    """A report step's run: ``sweep``/``replay`` needs such a step before it or from the workflow's last run; an id
    must name a run under the root (unless an earlier step makes runs: ids are tokens a step may make again)."""
    from .runs import find_run

    if run in ("sweep", "replay"):
        if run not in produced and (last is None or last(run) is None):
            raise ConfigError(f"run: {run} needs a {run} step before this one, or an earlier run of this "
                              f"workflow with a {run} step", key="run")
    elif not produced & {"sweep", "replay"}:
        find_run(root, run)


def _check_files(base_dir: str, files: Iterable[str]) -> None:
    """An ingest step's local files exist (relative to the workflow file); URLs are left to the step."""
    for i, rel in enumerate(files):
        if "://" in rel:
            continue
        path = rel if os.path.isabs(rel) else os.path.join(base_dir, rel)
        if not os.path.isfile(path):
            raise ConfigError("file not found" if not os.path.exists(path) else "not a file", file=path,
                              key=f"files[{i}]", hint="paths are relative to the workflow file")


def _datasets(root: StorageRef) -> list[str]:
    storage = root.child("bars").open()
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in storage.fs.ls(storage.path(), detail=False))
    except (FileNotFoundError, OSError):
        return []


def _check_source(root: StorageRef, kind: str, name: str, key: str, earlier: bool, last: Any) -> None:
    """A named run (``kind`` sweep) or signal set exists; ``last`` has an earlier step or an earlier workflow run."""
    if name == "last":
        if not earlier and (last is None or last(kind) is None):
            step = "sweep" if kind == "sweep" else "signals"
            raise ConfigError(f"{key}: last needs a {step} step before this one, or an earlier run of this "
                              f"workflow with a {step} step", key=key)
        return
    if earlier or "/" in name:  # an id an earlier step may make again; a URL is opened by the step
        return
    where = root.child("runs" if kind == "sweep" else "signals", name)
    marker = "run.json" if kind == "sweep" else "_signals.json"
    if not where.open().exists(marker):
        raise ConfigError(f"no {'sweep run' if kind == 'sweep' else 'signal set'} {name!r} under {root.url}",
                          key=key, hint="give an id that `admf runs list` shows, or `last`")


# ---------------------------------------------------------------------------- stored references
def stored_bars(stored: str, options: dict[str, Any] | None, *, what: str, hint: str) -> Any:
    """The bar store a run or signal set recorded (``stored``), opened with ``options``.

    Runs and sets store an absolute path or a full URL. Older ones stored the path as
    typed: a relative one is read from the working directory, and if no dataset is
    there, the StorageError says so (``what`` names the run or set, ``hint`` how to
    name the dataset instead) rather than "no bar dataset here".
    """
    from .bars import BarStore

    store = BarStore(stored, options)
    if "://" in stored or os.path.isabs(stored) or store.exists():
        return store
    raise StorageError(f"{what} recorded its dataset as the relative path {stored!r} (made by an older admf), "
                       f"and there is no dataset at {store.url}", file=stored, hint=hint)


# ---------------------------------------------------------------------------- temporary files left behind
TEMP_GRACE = 24 * 3600  # seconds: a temporary file of another host is taken as left behind after this long
_TEMP_NAME = re.compile(r"\.tmp-(?:([0-9a-f]{8})-(\d+)-[0-9a-f]{12}|[0-9a-f]{32})$")


def ready_to_write(root: StorageRef, *, dataset: bool = False) -> None:
    """Before a command writes under ``root``: it must be writable (:func:`check_writable`), and the
    temporary files crashed writers left there go first (:func:`remove_stale_temp`; ``dataset``: a bar
    dataset's directory rather than a storage root)."""
    check_writable(root)
    remove_stale_temp(root.url, dataset=dataset)


def remove_stale_temp(url: str, *, dataset: bool = False, grace: float = TEMP_GRACE) -> int:
    """Remove the temporary files that crashed writers left under a local root (or dataset); how many.

    A writer that fails removes its own; one killed (SIGKILL, a worker lost to SIGBUS or
    the OOM killer) cannot. Only admf's own places are searched: a root's ``runs``,
    ``signals``, ``cache``, ``workflows`` and ``bars`` directories, or with ``dataset`` a
    directory holding a bar dataset; and only names admf gives its temporary files
    (``<file>.tmp-<host tag>-<pid>-<random>``, :func:`admf_dask.storage.temp_tag`, or an
    older admf's ``<file>.tmp-<32 hex digits>``). A file is left behind when its writer
    is dead: on this host a file whose process is gone goes at once and a live writer's
    stays; a file of another host, or an older one, goes once untouched for ``grace``
    seconds. Other filesystems have no temporary files (one PUT each).
    """
    from .bars.txn import _HOST, MANIFEST, _alive

    if "://" in url and not url.startswith("file://"):
        return 0
    root = os.path.abspath(url.removeprefix("file://"))
    if dataset:
        tops = [root] if os.path.isfile(os.path.join(root, MANIFEST)) else []
    else:
        tops = [os.path.join(root, d) for d in ("runs", "signals", "cache", "workflows", "bars")]
    now, removed = time.time(), 0
    for top in tops:
        for dirpath, dirnames, names in os.walk(top):
            dirnames[:] = [d for d in dirnames if d != "_staging"]  # transactions clean up their own (bars.txn)
            for name in names:
                m = _TEMP_NAME.search(name)
                if m is None:
                    continue
                path = os.path.join(dirpath, name)
                try:
                    if m.group(1) == _HOST:
                        if _alive(int(m.group(2))):
                            continue
                    elif now - os.stat(path).st_mtime <= grace:
                        continue
                    os.remove(path)
                    removed += 1
                except OSError:  # gone meanwhile, or not ours to remove
                    pass
    if removed:
        logging.getLogger("admf_dask.preflight").info("removed %d temporary file(s) that crashed writers left under %s",
                                                      removed, root)
    return removed
