"""Write transactions on a bar dataset: staged files, the manifest commit, the journal, crash recovery.

While a writer works, its new data files live under the dataset in a directory of
its own, where readers that glob the dataset do not look::

    _staging/<txn>/_txn.json                      the journal (written just before the moves)
    _staging/<txn>/_<symbol>.<year>.<hash>.staged  a new data file (Parquet bytes)

Why these names: pyarrow.dataset skips paths with a component starting with ``_``
or ``.``; DuckDB's ``read_parquet('<store>/**/*.parquet')`` skips nothing but files
not ending in ``.parquet``; polars' ``scan_parquet`` of the directory skips files
whose *name* starts with a ``hidden_file_prefix`` (``"_"``, needed anyway for
``_dataset.json``) and a ``**/*.parquet`` glob skips other extensions. A staged file
satisfies all three (checked in ``tests/bars/test_commit.py``).

A committed file is ``symbol=<S>/year=<Y>/part-<content hash>-<txn tag>.parquet``
(granularity ``decade``: ``symbol=<S>/decade=<first year>/...``; ``symbol``:
``symbol=<S>/part-...``):
the tag makes a path unique to the transaction that first wrote it, so a path that
a manifest stops listing is never listed again (a writer lists only paths of the
manifest it commits over, or its own). That is what makes deleting unlisted files
safe without a global lock: superseded files after a commit, and the files of a
dead transaction.

The journal: before it moves anything into place, a writer records in ``_txn.json``
the paths it is about to add and the listed paths its commit supersedes. If it
dies between the moves and the manifest write, a later commit (by any writer)
finds the record, sees the writer is dead (same host and the process is gone, or
the record is older than :data:`STALE_SECONDS`), and removes those paths that the
manifest does not list, then the directory. A transaction's id names its host and
process, so live writers are told apart without reading their records.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import StorageError
from ..storage import Storage
from .schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from .update import Plan

__all__ = ["HOLD_BYTES", "LOCK", "MANIFEST", "STAGING", "STALE_SECONDS", "Txn", "commit_plans", "recover"]

MANIFEST = "_dataset.json"
STAGING = "_staging"
LOCK = "_dataset.lock"
RECORD = "_txn.json"
# A transaction whose writer cannot be checked (another host) is taken as dead after this long.
STALE_SECONDS = 24 * 3600
# A commit that keeps losing to other writers gives up after this many tries, with a jittered pause between.
_COMMIT_ATTEMPTS = 60
_BACKOFF, _BACKOFF_MAX = 0.05, 2.0  # seconds: the first pause after a lost race is up to 0.1 s, then doubling
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
# An in-process writer on an object store holds up to this many bytes of new files in memory (Txn.keep),
# and its commit PUTs them in place; files beyond it are staged and copied into place, as on workers.
HOLD_BYTES = 64 << 20


class Txn:
    """One writer's transaction: a staging directory under the dataset, and its journal.

    ``Txn(storage)`` starts one (nothing is written until something is staged);
    staging writes go to :meth:`staged_path`; :meth:`write_record` journals the
    moves before the commit makes them; :meth:`finish` (after the commit) or
    :meth:`abort` (instead of it) removes the directory. ``Txn(storage, id)`` is how
    workers stage files of a transaction that the client started.

    ``hold=True`` (a writer that commits in this process) on an object store: new files
    of up to :data:`HOLD_BYTES` in all are not staged but kept in memory (:meth:`keep`)
    and PUT in place by the commit, one request each instead of a staging PUT and a
    CopyObject. Local disk stages everything (a rename is cheap).
    """

    def __init__(self, storage: Storage, txn_id: str | None = None, *, hold: bool = False) -> None:
        self.storage = storage
        self.id = txn_id or new_id()
        self.started = time.time()
        self._hold_left = HOLD_BYTES if hold and not storage.is_local else 0
        self._hold_guard = threading.Lock()

    def keep(self, data: bytes) -> bool:
        """Whether a new file's bytes stay in memory until the commit writes them in place (else: stage them)."""
        with self._hold_guard:
            if len(data) > self._hold_left:
                return False
            self._hold_left -= len(data)
            return True

    @property
    def tag(self) -> str:
        """What makes this transaction's file names its own (8 digits of the id's random part)."""
        return self.id.rsplit("-", 1)[-1][:8]

    @property
    def dir(self) -> str:
        return f"{STAGING}/{self.id}"

    def staged_path(self, symbol: str, year: int | None, digest: str) -> str:
        return f"{self.dir}/_{symbol}.{'all' if year is None else year}.{digest[:20]}.staged"

    def final_path(self, symbol: str, year: int | None, digest: str, granularity: str = "year") -> str:
        part = f"part-{digest[:20]}-{self.tag}.parquet"
        if granularity == "symbol":
            return f"symbol={symbol}/{part}"
        return f"symbol={symbol}/{'decade' if granularity == 'decade' else 'year'}={year}/{part}"

    def write_record(self, add: list[str] = (), drop: list[str] = ()) -> None:
        """Write who this is and, before moves, the journal (paths to add, listed paths dropped)."""
        record = {"txn": self.id, "host": socket.gethostname(), "pid": os.getpid(), "started": self.started,
                  "updated": time.time(), "add": sorted(add), "drop": sorted(drop)}
        for attempt in range(5):  # a concurrent clean-up may remove an empty _staging between mkdir calls
            try:
                self.storage.write_bytes(json.dumps(record).encode(), self.dir, RECORD)
                return
            except StorageError:
                if attempt == 4:
                    raise
                time.sleep(0.01)

    def abort(self) -> None:
        """Remove everything this transaction staged (nothing of it was committed)."""
        self.storage.remove_tree(self.dir)
        self.storage.prune(STAGING)

    finish = abort  # after a commit the staged files were moved out; the rest goes


def commit_plans(store: Any, txn: Txn, plans: dict[str, Plan],
                 planners: dict[str, Callable[[dict[str, Any] | None], Plan]],
                 source: dict[str, Any] | None, granularity: str | None = None,
                 repack: bool = False) -> dict[str, Any]:
    """Read-merge-write the manifest until it holds, with the staged files moved into place just before.

    ``plans`` (symbol -> :class:`~admf_dask.bars.update.Plan`) are updated in place
    to the plans finally committed; ``planners`` redo a symbol's plan on another base.
    Per attempt (under the dataset lock on local disk; optimistic on S3): journal the
    plans' paths to add and the listed paths they supersede (``_txn.json``) and move
    their staged files into place; read the manifest and its version; plan again each
    symbol whose entry another writer changed since its plan's base (journal and move
    again if that changed anything); write the manifest (S3: conditional on the
    version read, so the window between read and write is one request). A lost race
    on S3 tries again after a jittered pause. Afterwards superseded files, files moved
    for a plan that was redone, the staging and dead writers' leftovers are removed.
    """
    storage = store.storage
    moved: set[str] = set()
    journaled: tuple = ([], [])
    manifest: dict[str, Any] | None = None

    def publish() -> None:
        nonlocal journaled
        moves = {final: path for plan in plans.values() for final, path in plan.staged.items() if final not in moved}
        journal = (sorted(moved | set(moves)), sorted(_listed_before(plans.values()) - _listed_by(plans.values())))
        if journal != journaled:
            txn.write_record(*journal)
            journaled = journal
        held = {final: data for final, data in moves.items() if isinstance(data, bytes)}
        if held:  # files kept in memory (Txn.keep): one PUT each, in place, concurrently
            moved.update(held)  # first: after a failure, those that landed are removed (_unmove)
            pending = storage.uploads()
            for final, data in held.items():
                pending[final] = data
            pending.wait()
            moves = {final: path for final, path in moves.items() if final not in held}

        def move(final: str, path: str) -> None:
            if storage.conditional:  # copy: a redone plan may read the staged file again
                storage.copy(path, final)
            else:
                storage.rename(path, final)
            moved.add(final)

        if storage.conditional and len(moves) > 1:  # S3: one CopyObject each, 8 at a time
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=8) as pool:
                for future in [pool.submit(move, final, path) for final, path in moves.items()]:
                    future.result()
        else:
            for final, path in moves.items():
                move(final, path)

    try:
        for attempt in range(_COMMIT_ATTEMPTS):
            with storage.exclusive(LOCK):
                publish()
                raw, version = storage.read_versioned(MANIFEST)
                current = store._parse(raw)
                if attempt and current.get("txn") == txn.id:  # our write landed, its answer was lost
                    manifest = current
                    break
                have = _granularity(current)
                if granularity is not None and have not in (None, granularity) and not repack:
                    raise StorageError(f"the dataset is now stored by {have}, this write was planned by "
                                       f"{granularity} (repacked meanwhile?)", file=storage.display(MANIFEST),
                                       hint="run it again")
                redone = False
                for symbol, plan in plans.items():
                    entry = current["symbols"].get(symbol)
                    if _version(entry) != _version(plan.base):
                        plans[symbol] = planners[symbol](entry)
                        redone = True
                if redone:
                    publish()
                manifest = _compose(current, plans.values(), source, txn.id, granularity)
                if _same(manifest, current):
                    manifest = current
                    break
                if storage.write_if(json.dumps(manifest, indent=1, sort_keys=True).encode(), MANIFEST,
                                    version=version):
                    break
            # lost to another writer (S3 only): back off, full jitter, so that contenders spread out
            time.sleep(random.uniform(0, min(_BACKOFF_MAX, _BACKOFF * 2 ** attempt)))
        else:
            raise StorageError(f"could not commit: other writers changed the manifest {_COMMIT_ATTEMPTS} times "
                               "in a row", file=storage.display(MANIFEST), hint="run it again")
    except BaseException:
        _unmove(store, moved)
        raise
    store._manifest = manifest
    listed = _listed(manifest)
    storage.remove(sorted((_listed_before(plans.values()) | moved) - listed), prune=True)
    txn.finish()
    try:
        recover(storage, listed, own={txn.id})
    except StorageError:  # best effort: the next commit tries again
        pass
    return manifest


def _unmove(store: Any, moved: set[str]) -> None:
    """After a failed commit: remove the files it moved into place that no committed manifest lists."""
    if not moved:
        return
    try:
        raw, _ = store.storage.read_versioned(MANIFEST)
        listed = _listed(store._parse(raw))
    except StorageError:
        return  # cannot tell what is committed: leave them to a later commit's recovery (journaled)
    store.storage.remove(sorted(moved - listed), prune=True)


def _version(entry: dict[str, Any] | None) -> tuple | None:
    """What identifies a committed version of a symbol: its fingerprint and exact files."""
    if entry is None:
        return None
    return entry["fingerprint"], tuple(f["path"] for f in entry["files"])


def _listed(manifest: dict[str, Any]) -> set[str]:
    return {f["path"] for e in manifest["symbols"].values() for f in e["files"]}


def _listed_before(plans: Iterable[Plan]) -> set[str]:
    """The files of the versions the plans replace (each plan's base)."""
    return {f["path"] for p in plans if p.base is not None for f in p.base["files"]}


def _listed_by(plans: Iterable[Plan]) -> set[str]:
    """The files of the plans' new versions."""
    return {f["path"] for p in plans for f in p.entry["files"]}


def _dataset_fingerprint(symbols: dict[str, dict[str, Any]]) -> str:
    return hashlib.sha256(
        f"v{SCHEMA_VERSION}|".encode() +
        "|".join(f"{s}:{e['fingerprint']}" for s, e in sorted(symbols.items())).encode()
    ).hexdigest()


def _granularity(manifest: dict[str, Any]) -> str | None:
    """As :func:`admf_dask.bars.update.granularity_of` (no key: ``year``; no dataset: None)."""
    return manifest.get("granularity") or ("year" if manifest.get("symbols") else None)


def _compose(current: dict[str, Any], plans: Iterable[Plan], source: dict[str, Any] | None,
             txn_id: str, granularity: str | None = None) -> dict[str, Any]:
    manifest = {**current, "symbols": dict(current["symbols"]), "txn": txn_id}
    if granularity is not None and (granularity != "year" or "granularity" in current):
        manifest["granularity"] = granularity  # a year dataset without the key stays as older versions wrote it
    for plan in plans:
        manifest["symbols"][plan.symbol] = plan.entry
    if source is not None:
        manifest["source"] = source
    manifest["fingerprint"] = _dataset_fingerprint(manifest["symbols"])
    return manifest


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal manifests but for the transaction that wrote them."""
    return {k: v for k, v in a.items() if k != "txn"} == {k: v for k, v in b.items() if k != "txn"}


def new_id() -> str:
    """A transaction id: ``<UTC time>-<host tag>-<pid>-<12 random hex digits>``.

    The time tells the age and the host and pid who writes, so a clean-up can tell a
    live writer from a dead one without reading its record.
    """
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _parse_id(txn_id: str) -> tuple[float, str | None, int | None] | None:
    """(start time, host tag, pid) of a transaction id; host and pid None for ids without them; None if not an id."""
    parts = txn_id.split("-")
    try:
        started = calendar.timegm(time.strptime(parts[0], "%Y%m%dT%H%M%S"))
    except ValueError:
        return None
    if len(parts) == 4 and parts[2].isdigit():
        return started, parts[1], int(parts[2])
    return started, None, None


def recover(storage: Storage, listed: set[str], own: set[str] = frozenset()) -> list[str]:
    """Clean up after writers that died: their journaled, unlisted paths and their staging.

    ``listed`` is every path of the manifest just committed. Transactions in ``own``
    and those of live writers are left alone: a writer on this host is dead when its
    process is gone; one elsewhere when its record has not changed for
    :data:`STALE_SECONDS`. Only the records of writers that look dead are read.
    Returns the ids removed.
    """
    removed = []
    now = time.time()
    for txn_id in storage.listdir(STAGING):
        parsed = _parse_id(txn_id)
        if txn_id in own or parsed is None:
            continue
        started, host, pid = parsed
        if host == _HOST:
            if _alive(pid):
                continue
        elif now - started <= STALE_SECONDS:
            continue
        raw, _ = storage.read_versioned(STAGING, txn_id, RECORD)
        try:
            record = json.loads(raw) if raw is not None else {}
        except ValueError:
            record = {}
        if host != _HOST and now - float(record.get("updated", started)) <= STALE_SECONDS:
            continue  # a long transaction elsewhere that wrote its journal lately
        storage.remove([p for p in [*record.get("add", []), *record.get("drop", [])] if p not in listed], prune=True)
        storage.remove_tree(STAGING, txn_id)
        removed.append(txn_id)
    if removed:
        storage.prune(STAGING)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
