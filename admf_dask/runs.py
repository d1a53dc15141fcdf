"""Run directories in storage: who works on a run (leases), latest pointers, listing and clean-up.

Under a storage root::

    runs/<run-id>/                            a sweep or replay run (:mod:`admf_dask.sweep.run`)
    runs/_leases/<run-id>.json                the lease of the process working on it
    runs/latest-sweep.json                    the sweep run completed last: {"id", "kind", "finished"}
    runs/latest-replay.json                   the replay run completed last
    signals/<set-id>/                         a signal set (:mod:`admf_dask.signals`)
    signals/_leases/<set-id>.json
    signals/latest.json                       the signal set completed last
    workflows/<name>/_lease.json              the lease of the process running the workflow
    workflows/<name>/latest/<i>-<kind>.json   what the workflow's step i (``steps[i]``) produced last

A lease (:mod:`admf_dask.leases`) says which process works on a run; :func:`run_lease`
holds one around a run's work. Leases sit beside the run directories, not in them:
``--force`` and ``admf runs gc`` delete a run's directory while they hold its lease.
"""

from __future__ import annotations

import json
import posixpath
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from .errors import BusyError, ConfigError, StorageError
from .leases import (EXPIRY, HEARTBEAT, NO_LEASE, Lease, drop_if_stale, lease_state, owner, read_lease, short_time,
                     utc_epoch, utc_iso)
from .storage import Storage, StorageRef

__all__ = ["KINDS", "GcReport", "RunInfo", "find_run", "gc_runs", "latest", "lease_ref", "list_lines", "list_runs",
           "load_run", "resolve_last", "run_complete", "run_lease", "set_latest", "set_step_latest", "show_lines",
           "workflow_latest", "workflow_lease"]

KINDS = ("sweep", "replay", "signals")


# --- leases and latest pointers of runs, signal sets and workflows ---------------------------------------


def _dir(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return "signals" if kind == "signals" else "runs"


def _what(kind: str, run_id: str) -> str:
    return f"signal set {run_id}" if kind == "signals" else f"{kind} run {run_id}"


def lease_ref(root: StorageRef, kind: str, run_id: str) -> StorageRef:
    """Where the lease of run ``run_id`` of ``kind`` (sweep, replay, signals) lives under ``root``."""
    return root.child(_dir(kind), "_leases", f"{run_id}.json")


def run_complete(ref: StorageRef) -> bool:
    """Whether the sweep or replay run at ``ref`` has finished (its run.json says complete)."""
    storage = ref.open()
    run = storage.read_json("run.json", missing=None)  # one GET on S3
    return run is not None and run.get("status") == "complete"


@contextmanager
def run_lease(root: StorageRef, kind: str, run_id: str, *, wait: bool = False,
              echo: Callable[[str], None] = print, complete: Callable[[], bool] | None = None,
              heartbeat: float = HEARTBEAT, expiry: float = EXPIRY) -> Iterator[Any]:
    """Hold the lease of run ``run_id`` while the block works on it; point ``latest`` at it if the block succeeds.

    ``complete()`` true before the lease is taken: the run is finished and the block
    only reports it (it gets :data:`NO_LEASE`, no pointer is written). The block must
    check completion again: the run may have finished while this waited for its lease.
    """
    if complete is not None and complete():
        yield NO_LEASE
        return
    from concurrent.futures import ThreadPoolExecutor

    lease = Lease(lease_ref(root, kind, run_id), _what(kind, run_id), heartbeat=heartbeat, expiry=expiry)
    with ThreadPoolExecutor(1, thread_name_prefix="admf-latest") as pool:
        with lease.acquire(wait=wait, echo=echo):
            yield lease
            # the block succeeded: the pointer is written while the lease is released (two requests at once)
            pointed = pool.submit(set_latest, root, kind, run_id)
        pointed.result()


def _workflow_dir(name: str) -> str:
    """A workflow's name as a directory name (characters other than letters, digits, ``._-`` become ``-``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", name).strip(".") or "workflow"


def workflow_lease(root: StorageRef, name: str, *, heartbeat: float = HEARTBEAT, expiry: float = EXPIRY) -> Lease:
    """The (not yet acquired) lease of workflow ``name`` under ``root``."""
    return Lease(root.child("workflows", _workflow_dir(name), "_lease.json"), f"workflow {name}",
                 heartbeat=heartbeat, expiry=expiry)


def _pointer(run_id: str, kind: str) -> dict[str, str]:
    return {"id": run_id, "kind": kind, "finished": utc_iso(time.time())}


def _latest_path(kind: str) -> tuple[str, str]:
    return ("signals", "latest.json") if kind == "signals" else ("runs", f"latest-{kind}.json")


def set_latest(root: StorageRef, kind: str, run_id: str) -> None:
    """Point ``runs/latest-<kind>.json`` (``signals/latest.json``) at a run just completed."""
    root.open().write_json(_pointer(run_id, kind), *_latest_path(kind))


def latest(root: StorageRef, kind: str) -> str | None:
    """The id the storage-wide pointer of ``kind`` names, or None."""
    storage = root.open()
    path = _latest_path(kind)
    return storage.read_json(*path).get("id") if storage.exists(*path) else None


def set_step_latest(root: StorageRef, workflow: str, index: int, kind: str, run_id: str) -> None:
    """Point ``workflows/<name>/latest/<index>-<kind>.json`` at what the workflow's step ``index`` produced."""
    root.open().write_json(_pointer(run_id, kind), "workflows", _workflow_dir(workflow), "latest",
                           f"{index}-{kind}.json")


def workflow_latest(root: StorageRef, workflow: str, kind: str) -> str | None:
    """The id that a ``kind`` step of the workflow produced last (any step of that kind), or None."""
    pointers = [p for p in _pointers(root.open(), f"workflows/{_workflow_dir(workflow)}/latest")
                if p.get("kind") == kind]
    return max(pointers, key=lambda p: p.get("finished", ""))["id"] if pointers else None


def _pointers(storage: Storage, rel: str) -> list[dict]:
    fs = storage.fs
    path = storage.path(rel)
    fs.invalidate_cache(path)
    try:
        names = [p for p in fs.ls(path, detail=False) if p.endswith(".json")]
    except FileNotFoundError:
        return []
    out = []
    for p in names:
        try:
            doc = json.loads(fs.cat_file(p))
        except (FileNotFoundError, ValueError):
            continue
        if isinstance(doc, dict) and "id" in doc:
            out.append(doc)
    return out


def resolve_last(root: StorageRef, kind: str) -> str:
    """``last`` on the command line: the ``kind`` run (or signal set) completed last under ``root``.

    The storage-wide pointer if its run is still there and complete, else the most
    recent complete one found by listing; ConfigError if there is none.
    """
    pointed = latest(root, kind)
    if pointed is not None:
        ref = root.child(_dir(kind), pointed)
        if (ref.open().exists("_signals.json") if kind == "signals" else run_complete(ref)):
            return pointed
    done = [r for r in list_runs(root) if r.kind == kind and r.status == "complete"]
    if not done:
        what = "signal set" if kind == "signals" else f"{kind} run"
        raise ConfigError(f"'last': no complete {what} under {root.url}", key="last",
                          hint=f"give an id, or the --storage root the {what} was written under")
    return done[-1].id


# --- listing, showing, cleaning up ---------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """One run or signal set under a storage root, as ``admf runs list`` shows it."""

    id: str
    kind: str  # sweep | replay | signals | run (a run directory without run.json yet)
    status: str  # complete | running | stale | incomplete
    time: float  # created: when the run started (run.json) or its earliest file was written (epoch seconds)
    size: int  # bytes stored under its directory
    label: str
    url: str
    refers_to: str | None = None  # the sweep run a signal set was made from; the signal set a replay replays
    lease: dict | None = None  # its lease, as its owner wrote it

    @property
    def status_line(self) -> str:
        if self.status == "running":
            return f"running (leased by {self.lease.get('host')}:{self.lease.get('pid')})"
        return self.status

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "time": utc_iso(self.time) if self.time else None, "status_line": self.status_line}


def _stamp(info: dict) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return utc_epoch(value)
            except ValueError:
                continue
    return None


def _leases(storage: Storage, kind_dir: str) -> dict[str, dict]:
    fs = storage.fs
    path = storage.path(kind_dir, "_leases")
    fs.invalidate_cache(path)
    try:
        files = [p for p in fs.ls(path, detail=False) if p.endswith(".json")]
    except FileNotFoundError:
        return {}
    out = {}
    for p in files:
        run_id = posixpath.basename(p)[:-5]
        doc = read_lease(StorageRef(storage.display(kind_dir, "_leases", f"{run_id}.json"),
                                    storage.ref.storage_options))
        if doc is not None:  # else released meanwhile
            out[run_id] = doc
    return out


def _run_dirs(storage: Storage, kind_dir: str) -> list[str]:
    fs = storage.fs
    path = storage.path(kind_dir)
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    names = [posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory"]
    return sorted(n for n in names if not n.startswith(("_", ".")))


def _label(kind: str, doc: dict) -> str:
    if kind == "signals":
        members = [m.get("label", m.get("strategy", "?")) for m in doc.get("members", [])]
        source = doc.get("source", {})
        origin = f" from sweep {source['run']}" if source.get("run") else ""
        shown = ", ".join(members[:3]) + (f", ... ({len(members)})" if len(members) > 3 else "")
        return f"{len(members)} member(s){origin}: {shown}; {len(doc.get('symbols', []))} symbol(s)"
    config = doc.get("config", {})
    sets, symbols = doc.get("param_sets", "?"), len(doc.get("symbols", []))
    if kind == "replay":
        return f"replay of signal set {config.get('signals')} ({config.get('rule')}): {sets} weight vector(s) x " \
               f"{symbols} symbol(s)"
    direction = f" {config['direction']}" if config.get("direction") else ""
    return f"{config.get('strategy', '?')}{direction}: {sets} parameter set(s) x {symbols} symbol(s)"


def _run_info(storage: Storage, kind_dir: str, run_id: str, lease: dict | None, now: float) -> RunInfo:
    fs = storage.fs
    path = storage.path(kind_dir, run_id)
    fs.invalidate_cache(path)
    try:
        files = fs.find(path, detail=True)
    except FileNotFoundError:
        files = {}
    size = sum(int(info.get("size") or 0) for info in files.values())
    stamps = [t for t in map(_stamp, files.values()) if t is not None]
    manifest = "_signals.json" if kind_dir == "signals" else "run.json"
    doc: dict = {}
    if storage.exists(kind_dir, run_id, manifest):
        try:
            doc = storage.read_json(kind_dir, run_id, manifest)
        except StorageError:
            doc = {}
    if kind_dir == "signals":
        kind, complete, refers = "signals", bool(doc), doc.get("source", {}).get("run")
    else:
        kind = doc.get("kind") or ((lease or {}).get("what", "").split(" ")[0] if lease else "") or "run"
        kind = kind if kind in KINDS else "run"
        complete = doc.get("status") == "complete"
        refers = doc.get("config", {}).get("signals") if kind == "replay" else None
    state = lease_state(lease, now)
    status = "running" if state == "live" else "complete" if complete else "stale" if state else "incomplete"
    started = doc.get("started_at") or doc.get("started")
    created = utc_epoch(started) if isinstance(started, str) else min(stamps) if stamps else \
        utc_epoch(lease["acquired_at"]) if lease else 0.0
    return RunInfo(run_id, kind, status, created, size, _label(kind, doc) if doc else "", storage.display(kind_dir,
                   run_id), refers, lease)


def list_runs(root: StorageRef) -> list[RunInfo]:
    """Every run under ``<root>/runs`` and signal set under ``<root>/signals``, oldest first."""
    storage = root.open()
    now = time.time()
    out = []
    for kind_dir in ("runs", "signals"):
        leases = _leases(storage, kind_dir)
        out += [_run_info(storage, kind_dir, run_id, leases.get(run_id), now)
                for run_id in _run_dirs(storage, kind_dir)]
    return sorted(out, key=lambda r: (r.time, r.id))


def find_run(root: StorageRef, text: str) -> RunInfo:
    """A run by id, by a unique prefix of its id, or ``last`` (the most recent); ConfigError otherwise."""
    found = list_runs(root)
    if not found:
        raise ConfigError(f"no runs under {root.url}", hint="give the --storage root the runs were written under")
    if text == "last":
        return found[-1]
    exact = [r for r in found if r.id == text]
    matches = exact or [r for r in found if r.id.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(f"{text!r} matches {len(matches)} runs: {', '.join(r.id for r in matches[:5])}",
                          hint="give more of the id")
    from .errors import did_you_mean

    raise ConfigError(f"no run or signal set {text!r} under {root.url}",
                      hint=did_you_mean(text, [r.id for r in found]) or "see `admf runs list`")


def show_lines(root: StorageRef, info: RunInfo) -> list[str]:
    """What ``admf runs show`` prints: the run's essentials and its summary."""
    from .budget import format_bytes

    storage = root.open()
    kind_dir = _dir(info.kind) if info.kind in KINDS else "runs"
    lines = [f"{_what(info.kind, info.id) if info.kind in KINDS else 'run ' + info.id} at {info.url}",
             f"status: {info.status_line}", f"created: {short_time(utc_iso(info.time)) if info.time else '?'}",
             f"size: {format_bytes(info.size)}"]
    if info.label:
        lines.append(f"label: {info.label}")
    if info.lease:
        lines.append(f"lease: {owner(info.lease)}, last heartbeat {short_time(info.lease.get('heartbeat_at', '?'))}, "
                     f"expires {short_time(info.lease.get('expires_at', '?'))}")
    if info.kind == "signals" and info.status != "incomplete" and storage.exists(kind_dir, info.id, "_signals.json"):
        doc = storage.read_json(kind_dir, info.id, "_signals.json")
        parts = doc.get("parts", {}).values()
        lines += [f"data: fingerprint {str(doc.get('data_fingerprint'))[:12]} ({doc.get('bars')})",
                  f"range: {doc.get('start') or 'first bar'} to {doc.get('end') or 'last bar'}",
                  f"symbols: {len(doc.get('symbols', []))}; change events: {sum(p.get('events', 0) for p in parts):,}",
                  f"source: {json.dumps(doc.get('source', {}), sort_keys=True)}", "members:"]
        lines += [f"  {k}: {m.get('label')}" for k, m in enumerate(doc.get("members", []))]
        return lines
    if not storage.exists(kind_dir, info.id, "run.json"):
        return lines
    run = storage.read_json(kind_dir, info.id, "run.json")
    done = _count(storage, kind_dir, info.id, "done")
    lines += [f"data: fingerprint {str(run.get('data_fingerprint'))[:12]} ({run.get('bars')})",
              f"symbols: {len(run.get('symbols', []))}; parameter sets: {run.get('param_sets')}; "
              f"tasks: {len(run.get('layout', []))} ({done} committed)",
              f"config: {json.dumps(run.get('config', {}), sort_keys=True)}"]
    for key in ("version", "host", "started_at", "finished_at", "started", "finished"):
        if run.get(key) is not None:
            lines.append(f"{key}: {run[key]}")
    if run.get("summary"):
        lines.append("summary:")
        lines += [f"  {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in run["summary"].items()]
    return lines


def _count(storage: Storage, *parts: str) -> int:
    path = storage.path(*parts)
    storage.fs.invalidate_cache(path)
    try:
        return len(storage.fs.ls(path, detail=False))
    except FileNotFoundError:
        return 0


@dataclass(frozen=True)
class GcReport:
    """What ``gc_runs`` deleted (or would delete) and what it kept on purpose, with reasons."""

    deleted: list[RunInfo]
    kept: list[tuple[RunInfo, str]]
    dry_run: bool

    @property
    def freed(self) -> int:
        return sum(r.size for r in self.deleted)

    def lines(self) -> list[str]:
        from .budget import format_bytes

        verb = "would delete" if self.dry_run else "deleted"
        out = [f"{verb} {_describe(r)} ({format_bytes(r.size)}, {r.status}, created {short_time(utc_iso(r.time))})"
               for r in self.deleted]
        out += [f"kept {_describe(r)}: {why}" for r, why in self.kept]
        out.append(f"{'would free' if self.dry_run else 'freed'} {format_bytes(self.freed)} in "
                   f"{len(self.deleted)} run(s)")
        return out


def _describe(info: RunInfo) -> str:
    return _what(info.kind, info.id) if info.kind in KINDS else f"run {info.id}"


def _protected_ids(root: StorageRef) -> dict[str, str]:
    """Ids the latest pointers name (storage-wide and every workflow's), with the pointer's name."""
    storage = root.open()
    out = {}
    for kind in KINDS:
        path = _latest_path(kind)
        if storage.exists(*path):
            out.setdefault(storage.read_json(*path).get("id"), f"the latest {kind} pointer names it")
    fs = storage.fs
    fs.invalidate_cache(storage.path("workflows"))
    try:
        names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(storage.path("workflows"), detail=False)]
    except FileNotFoundError:
        names = []
    for name in names:
        for p in _pointers(storage, f"workflows/{name}/latest"):
            out.setdefault(p["id"], f"workflow {name}'s latest {p.get('kind')} pointer names it")
    return out


def gc_runs(root: StorageRef, keep: int, *, dry_run: bool = False) -> GcReport:
    """Delete all but the ``keep`` most recent runs of each kind (sweep, replay, signals) under ``root``.

    Never deleted: a run whose lease is live (running), one a latest pointer names, a
    sweep run a remaining signal set was made from, a signal set a remaining replay
    run replays. Each deletion holds the run's lease, so a process starting to work on
    the run meanwhile makes gc skip it, and is never deleted under. ``dry_run`` only
    reports. Stale leases of runs that no longer exist are removed as well.
    """
    if keep < 0:
        raise ConfigError("keep must be >= 0", key="keep")
    runs = list_runs(root)
    protected = _protected_ids(root)
    newest: set[str] = set()
    for kind in {r.kind for r in runs}:
        newest |= {r.id for r in [r for r in runs if r.kind == kind][::-1][:keep]}
    gone: set[str] = set()
    deleted, kept = [], []
    order = {"replay": 0, "signals": 1, "sweep": 2, "run": 3}
    for info in sorted(runs, key=lambda r: (order[r.kind], r.time)):  # referrers are decided before what they refer to
        if info.id in newest:
            continue
        referrers = [r for r in runs if r.refers_to == info.id and r.id not in gone]
        reason = f"running on {owner(info.lease)}" if info.status == "running" else protected.get(info.id) or \
            (f"{_describe(referrers[0])} refers to it" if referrers else None)
        if reason is None and not dry_run:
            reason = _delete(root, info)
        if reason is not None:
            kept.append((info, reason))
            continue
        gone.add(info.id)
        deleted.append(info)
    if not dry_run:
        _drop_orphan_leases(root, {r.id for r in runs} - gone)
    return GcReport(deleted, kept, dry_run)


def _delete(root: StorageRef, info: RunInfo) -> str | None:
    """Delete a run's directory while holding its lease; a reason not to if someone holds it."""
    kind = info.kind if info.kind in KINDS else "sweep"
    lease = Lease(lease_ref(root, kind, info.id), f"gc of {_describe(info)}")
    try:
        lease.acquire(echo=lambda _: None)
    except BusyError as exc:
        return f"it started running meanwhile ({exc.message})"
    try:
        storage = root.open()
        storage.fs.rm(storage.path(_dir(kind), info.id), recursive=True)
    finally:
        lease.release()
    return None


def _drop_orphan_leases(root: StorageRef, existing: set[str]) -> None:
    """Delete the stale leases of runs that are gone."""
    storage = root.open()
    for kind_dir in ("runs", "signals"):
        for run_id in set(_leases(storage, kind_dir)) - existing:
            drop_if_stale(root.child(kind_dir, "_leases", f"{run_id}.json"))


def list_lines(runs: list[RunInfo]) -> list[str]:
    """``admf runs list``: a header and one line per run, oldest first."""
    from .budget import format_bytes

    rows = [(r.id, r.kind, r.status_line, short_time(utc_iso(r.time)) if r.time else "?", format_bytes(r.size), r.label)
            for r in runs]
    head = ("ID", "KIND", "STATUS", "CREATED", "SIZE", "LABEL")
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(5)]
    return ["  ".join([*(str(x[i]).ljust(widths[i]) for i in range(5)), x[5]]).rstrip() for x in [head, *rows]]


def load_run(root: StorageRef | str, run_id: str = "latest", storage_options: dict | None = None) -> Any:
    """A finished sweep or replay loaded back (:class:`admf_dask.runresult.RunResult`): by id, prefix or ``latest``."""
    from .runresult import load_run as _load

    return _load(root, run_id, storage_options)
