"""Runs in storage: one process per run (leases), latest pointers, listing and clean-up.

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

Leases sit beside the run directories, not in them: ``--force`` and ``admf runs gc``
delete a run's directory while they hold its lease.

Leases
------
A lease is a JSON file naming its owner (``what``, ``host``, ``pid``, a random
``token``) with ``acquired_at``, ``heartbeat_at`` and ``expires_at`` (UTC). The protocol:

=========  ==========================================================================================
acquire    read the lease. None: create it *exclusively*. A live one: :class:`BusyError` (exit 75)
           naming its owner, or with ``wait=True`` poll until it is released or expires. A stale
           one (its expiry has passed, its owner is a dead process on this host, or it is
           unreadable): replace it *if it is still the version read* (a takeover, announced as a
           warning naming the old owner).
heartbeat  a thread replaces it every ``heartbeat`` seconds *if it is still the version this lease
           wrote*, moving the expiry ``expiry`` seconds ahead. Another owner's version means the
           lease was lost: taken over after this process went ``expiry`` seconds without renewing.
commit     before each commit point (run.json, a task's markers, the final table, a signal set's
           manifest) the run calls :meth:`Lease.check` (no I/O unless a beat was missed) or
           :meth:`Lease.confirm` (renews now); a lost lease raises BusyError there, so a process
           that was paused past its expiry stops before it writes more.
release    leaving the block (success, error, KeyboardInterrupt; SIGTERM raises KeyboardInterrupt
           while a lease is held, unless the program handles SIGTERM itself) deletes the lease
           *if it is still this lease's version*.
=========  ==========================================================================================

*Exclusively* and *if still the version* are atomic on local disk (the lease file is
its own lock: every read-decide-write holds ``flock`` on it, checking that the file
locked is still the one at its path; it is written in place and unlinked on release;
readers take a shared lock) and on S3 through
s3fs (conditional requests: PUT with ``If-None-Match: *`` to create, PUT and DELETE with
``If-Match: <ETag>`` to renew, take over and release; AWS S3, MinIO and moto honour
them). Other filesystems (``memory://``, ``gcs://``, ...) get a best effort: check,
write, read back; two processes racing within milliseconds could both win there.
Lease times are the owner's wall clock: hosts sharing a storage root need clocks
within a few seconds of each other (NTP), far below the 60 s expiry.

Tests shorten ``heartbeat`` and ``expiry`` (:class:`Lease` arguments); the file records
both, and a reader judges a lease by the ``expires_at`` its owner wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from .errors import BusyError, ConfigError, StorageError
from .storage import Storage, StorageRef

__all__ = ["EXPIRY", "HEARTBEAT", "KINDS", "NO_LEASE", "GcReport", "Lease", "RunInfo", "find_run", "gc_runs",
           "latest", "lease_ref", "lease_state", "list_lines", "list_runs", "read_lease", "resolve_last",
           "run_complete", "run_lease", "set_latest", "set_step_latest", "show_lines", "workflow_latest",
           "workflow_lease"]

HEARTBEAT = 10.0  # seconds between renewals of a held lease
EXPIRY = 60.0  # seconds a lease stays valid after its last renewal
FORMAT = "admf-lease/1"
KINDS = ("sweep", "replay", "signals")
HOST = socket.gethostname()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _short(text: str) -> str:
    """``2026-01-02T03:04:05.678Z`` -> ``2026-01-02T03:04:05Z`` for messages."""
    return text.split(".")[0] + "Z" if "." in text else text


def _pid_ns() -> str | None:
    """This process's pid namespace (Linux): a pid means the same process only within one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _parse(raw: bytes | None) -> dict | None:
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        _epoch(doc["expires_at"])
        return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _stale_reason(doc: dict | None, now: float) -> str | None:
    """Why a lease no longer holds (None: it is live)."""
    if doc is None:
        return "unreadable"
    if now >= _epoch(doc["expires_at"]):
        return f"expired at {_short(doc['expires_at'])}"
    if (doc.get("host") == HOST and doc.get("pid_ns") is not None and doc.get("pid_ns") == _pid_ns()
            and not _pid_alive(int(doc.get("pid", 0)))):
        return f"its process {doc['pid']} has ended"
    return None


def _owner(doc: dict) -> str:
    return f"{doc.get('host', '?')} (pid {doc.get('pid', '?')}) since {_short(str(doc.get('acquired_at', '?')))}"


# --- where a lease file lives, and how it is read and written atomically -------------------------------------


class _Files:
    """A lease file on any fsspec filesystem: check, write, read back (best effort)."""

    def __init__(self, storage: Storage, name: str) -> None:
        self.storage, self.name, self.path = storage, name, storage.path(name)

    def locked(self) -> Any:
        return nullcontext()

    def read(self) -> tuple[bytes | None, str | None]:
        """The file's bytes and its version tag; ``(None, None)`` if there is none."""
        self.storage.fs.invalidate_cache(posixpath.dirname(self.path))
        try:
            raw = self.storage.fs.cat_file(self.path)
        except FileNotFoundError:
            return None, None
        return raw, _digest(raw)

    def peek(self) -> tuple[bytes | None, str | None]:
        """:meth:`read` for a reader that only looks (``admf runs list``), not under :meth:`locked`."""
        return self.read()

    def write(self, raw: bytes, tag: str | None) -> str | None:
        """Write ``raw`` if the file is still at version ``tag`` (None: absent); the new tag, or None if it was not."""
        if self.read()[1] != tag:
            return None
        self.storage.write_bytes(raw, self.name)
        return _digest(raw) if self.read()[0] == raw else None

    def delete(self, tag: str) -> None:
        if self.read()[1] == tag:
            self.storage.fs.rm(self.path)


class _Local(_Files):
    """Local disk: the lease file is its own lock (flock), written in place under it and unlinked on release.

    A released lease leaves nothing behind but its (empty) directory.
    """

    _fd: int | None = None  # the locked lease file, inside locked()

    @contextmanager
    def locked(self) -> Iterator[None]:
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:  # released (unlinked) or replaced while this waited: lock the file that is there now
                    current = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    current = False
                if current:
                    self._fd = fd
                    try:
                        yield
                    finally:
                        self._fd = None
                        if os.fstat(fd).st_size == 0:  # no lease in it: created by this lock, or never written
                            _remove_if(self.path, os.fstat(fd).st_ino)
                    return
            finally:
                os.close(fd)  # closing the descriptor releases the lock

    def read(self) -> tuple[bytes | None, str | None]:
        if self._fd is None:
            return self.peek()
        size = os.fstat(self._fd).st_size
        raw = os.pread(self._fd, size, 0) if size else b""
        return (raw, _digest(raw)) if raw else (None, None)  # empty: created by this very lock

    def peek(self) -> tuple[bytes | None, str | None]:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None, None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # not while an owner rewrites it in place
            raw = os.read(fd, 1 << 20)
        finally:
            os.close(fd)
        return (raw, _digest(raw)) if raw else (None, None)

    def write(self, raw: bytes, tag: str | None) -> str | None:
        if self._fd is None:
            raise RuntimeError("a local lease is written under its lock")
        if self.read()[1] != tag:
            return None
        os.pwrite(self._fd, raw, 0)
        os.ftruncate(self._fd, len(raw))
        return _digest(raw)

    def delete(self, tag: str) -> None:
        if self._fd is None:
            raise RuntimeError("a local lease is deleted under its lock")
        if self.read()[1] == tag:
            os.remove(self.path)


def _remove_if(path: str, inode: int) -> None:
    """Remove ``path`` if it is still the file ``inode`` (not one put there since)."""
    try:
        if os.stat(path).st_ino == inode:
            os.remove(path)
    except FileNotFoundError:
        pass


class _S3(_Files):
    """S3 through s3fs: conditional PUT (If-None-Match: *, If-Match: ETag) and DELETE (If-Match)."""

    _CONFLICT = ("PreconditionFailed", "ConditionalRequestConflict")

    def read(self) -> tuple[bytes | None, str | None]:
        from fsspec.asyn import sync

        fs = self.storage.fs
        bucket, key, _ = fs.split_path(self.path)

        async def get() -> tuple[bytes, str]:  # body and ETag from one GET: they belong to the same version
            resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
            try:
                return await resp["Body"].read(), resp["ETag"]
            finally:
                resp["Body"].close()

        try:
            return sync(fs.loop, get)
        except FileNotFoundError:
            return None, None

    def write(self, raw: bytes, tag: str | None) -> str | None:
        fs = self.storage.fs
        bucket, key, _ = fs.split_path(self.path)
        condition = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag}
        try:
            out = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=raw, **condition)
        except (FileExistsError, FileNotFoundError):  # created meanwhile / deleted meanwhile
            return None
        except OSError as exc:
            if _s3_code(exc) in self._CONFLICT:
                return None
            raise
        finally:
            fs.invalidate_cache(self.path)
        return out["ETag"]

    def delete(self, tag: str) -> None:
        fs = self.storage.fs
        bucket, key, _ = fs.split_path(self.path)
        try:
            fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=tag)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if _s3_code(exc) not in self._CONFLICT:
                raise
        finally:
            fs.invalidate_cache(self.path)


def _s3_code(exc: BaseException) -> str | None:
    """The S3 error code behind an error s3fs translated (it keeps botocore's error as the cause)."""
    response = getattr(exc.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code")


def _backend(ref: StorageRef) -> _Files:
    parent, name = ref.url.rstrip("/").rsplit("/", 1) if "/" in ref.url else (".", ref.url)
    storage = Storage(parent, ref.options)
    if storage.is_local:
        return _Local(storage, name)
    if "s3" in storage.fs.protocol and hasattr(storage.fs, "call_s3"):
        return _S3(storage, name)
    return _Files(storage, name)


def read_lease(ref: StorageRef) -> dict | None:
    """The lease at ``ref`` as its owner wrote it (``None``: no lease; ``{}``: unreadable)."""
    raw, _ = _backend(ref).peek()
    return None if raw is None else (_parse(raw) or {})


def lease_state(doc: dict | None, now: float | None = None) -> str | None:
    """``"live"``, ``"stale"``, or None when there is no lease."""
    if doc is None:
        return None
    return "stale" if _stale_reason(doc or None, time.time() if now is None else now) else "live"


# --- the lease ---------------------------------------------------------------------------------------------


class Lease:
    """The lease of one run (or workflow) in storage; see the module docstring for the protocol.

    Parameters
    ----------
    ref:
        The lease file (see :func:`lease_ref`).
    what:
        What it guards, for messages: ``"sweep run 3f2a9c..."``, ``"workflow nightly"``.
    heartbeat, expiry:
        Seconds between renewals, and seconds a renewal keeps the lease valid.

    Examples
    --------
    >>> lease = Lease(StorageRef.make("memory://doc-lease/_leases/x.json"), "run x")
    >>> with lease.acquire(echo=print):
    ...     lease.check()       # before a commit point: BusyError if the lease was lost
    >>> read_lease(lease.ref) is None
    True
    """

    def __init__(self, ref: StorageRef, what: str, *, heartbeat: float = HEARTBEAT, expiry: float = EXPIRY) -> None:
        if not 0 < heartbeat < expiry:
            raise ValueError(f"need 0 < heartbeat < expiry, got {heartbeat} and {expiry}")
        self.ref, self.what, self.heartbeat, self.expiry = ref, what, float(heartbeat), float(expiry)
        self.token = uuid.uuid4().hex
        self._backend = _backend(ref)
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tag: str | None = None  # the version this lease wrote last; None: not held
        self._acquired = self._renewed = 0.0
        self._lost: BusyError | None = None
        self._restore_sigterm: Callable[[], None] = lambda: None

    @property
    def held(self) -> bool:
        return self._tag is not None and self._lost is None

    def _encode(self, now: float) -> bytes:
        return json.dumps({"format": FORMAT, "what": self.what, "host": HOST, "pid": os.getpid(),
                           "pid_ns": _pid_ns(), "token": self.token, "acquired_at": _iso(self._acquired),
                           "heartbeat_at": _iso(now), "expires_at": _iso(now + self.expiry),
                           "heartbeat_seconds": self.heartbeat, "expiry_seconds": self.expiry},
                          indent=1).encode()

    def acquire(self, *, wait: bool = False, echo: Callable[[str], None] = print,
                poll: float | None = None) -> Lease:
        """Take the lease; BusyError if a live one is held elsewhere (``wait``: poll every ``poll`` s until not).

        An expired lease, or one whose owner is a dead process on this host, is taken
        over with a warning naming the old owner. Returns ``self``, a context manager that
        releases the lease when its block ends.
        """
        poll = min(1.0, self.heartbeat) if poll is None else poll
        holder = None
        self._restore_sigterm = _sigterm_interrupts()  # before the lease exists: a SIGTERM then releases it too
        try:
            while True:
                current = self._try_acquire(echo)
                if current is None:
                    break
                if not wait:
                    raise BusyError(f"{self.what} is running on {_owner(current)}",
                                    hint="wait for it with --wait, or try again later; a lease that is not renewed "
                                         f"for {current.get('expiry_seconds', EXPIRY):g} s is taken over")
                if holder is None or current.get("token") != holder.get("token"):
                    echo(f"waiting for {self.what}: running on {_owner(current)} (last heartbeat "
                         f"{_short(str(current.get('heartbeat_at', '?')))})")
                    holder = current
                time.sleep(poll)
        except BaseException:
            self.release()  # restores SIGTERM; deletes the lease if this took it
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.what}", daemon=True)
        self._thread.start()
        return self

    def _try_acquire(self, echo: Callable[[str], None]) -> dict | None:
        """None once acquired; else the live lease that holds it."""
        for _ in range(20):  # each lost race means someone else wrote: the next read sees them
            with self._backend.locked():
                raw, tag = self._backend.read()
                doc = _parse(raw)
                now = time.time()
                reason = None if raw is None else _stale_reason(doc, now)
                if raw is not None and reason is None:
                    return doc
                self._acquired = now
                got = self._backend.write(self._encode(now), tag)
            if got is not None:
                if raw is not None:
                    old = _owner(doc) if doc else "an unknown owner"
                    echo(f"warning: taking over the lease of {self.what} from {old} ({reason})")
                self._tag, self._renewed, self._lost = got, now, None
                return None
        raise StorageError(f"could not take the lease of {self.what}: it changed at every attempt",
                           file=self.ref.url)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                self.renew()
            except BusyError:
                return  # lost: check() and confirm() raise it
            except Exception:  # storage unreachable: retried at the next beat; check() renews once overdue
                pass

    def renew(self) -> None:
        """Move the expiry ahead now; BusyError if another owner's version is there (the lease was lost)."""
        with self._mutex:
            if self._lost is not None:
                raise self._lost
            if self._tag is None:
                return
            now = time.time()
            raw = self._encode(now)
            with self._backend.locked():
                got = self._backend.write(raw, self._tag)
                if got is None:
                    current, tag = self._backend.read()
                    doc = _parse(current)
                    if current is None:  # deleted under us: whoever creates it first owns it
                        got = self._backend.write(raw, None)
                    elif doc is not None and doc.get("token") == self.token:  # our write, its answer lost
                        got = self._backend.write(raw, tag)
            if got is None:
                doc = _parse(self._backend.read()[0])
                by = _owner(doc) if doc else "another process"
                self._lost = BusyError(f"{self.what}: this process lost its lease to {by}; it stops before "
                                       "committing more", hint="another process took the run over after this one "
                                       f"had not renewed its lease for {self.expiry:g} s (paused, or cut off from "
                                       "storage?); its committed work is kept and resumed")
                raise self._lost
            self._tag, self._renewed = got, now

    def check(self) -> None:
        """Before a commit point: BusyError if the lease was lost. No I/O unless a heartbeat is overdue."""
        if self._lost is not None:
            raise self._lost
        if self._tag is not None and time.time() - self._renewed > 2 * self.heartbeat:
            self.renew()

    def confirm(self) -> None:
        """Before a commit point that must not be written twice: renew now (BusyError if lost)."""
        self.renew()

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still this lease's version."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        try:
            with self._mutex:
                tag, self._tag = self._tag, None
                if tag is not None and self._lost is None:
                    with self._backend.locked():
                        self._backend.delete(tag)
        finally:
            self._restore_sigterm()
            self._restore_sigterm = lambda: None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class _NoLease:
    """What a block gets that needs no lease (a finished run it only reports)."""

    held = False

    def check(self) -> None:
        pass

    def confirm(self) -> None:
        pass


NO_LEASE = _NoLease()


def _sigterm_interrupts() -> Callable[[], None]:
    """While a lease is held, SIGTERM raises KeyboardInterrupt (so `with` blocks release it); returns the undo.

    Only in the main thread and only if nobody handles SIGTERM already.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return lambda: None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)

    def undo() -> None:
        if signal.getsignal(signal.SIGTERM) is interrupt:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return undo


# --- runs, signal sets and workflows ---------------------------------------------------------------------


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
    return storage.exists("run.json") and storage.read_json("run.json").get("status") == "complete"


@contextmanager
def run_lease(root: StorageRef, kind: str, run_id: str, *, wait: bool = False,
              echo: Callable[[str], None] = print, complete: Callable[[], bool] | None = None,
              heartbeat: float = HEARTBEAT, expiry: float = EXPIRY) -> Iterator[Lease | _NoLease]:
    """Hold the lease of run ``run_id`` while the block works on it; point ``latest`` at it if the block succeeds.

    ``complete()`` true before the lease is taken: the run is finished and the block
    only reports it (it gets :data:`NO_LEASE`, no pointer is written). The block must
    check completion again: the run may have finished while this waited for its lease.
    """
    if complete is not None and complete():
        yield NO_LEASE
        return
    lease = Lease(lease_ref(root, kind, run_id), _what(kind, run_id), heartbeat=heartbeat, expiry=expiry)
    with lease.acquire(wait=wait, echo=echo):
        yield lease
    set_latest(root, kind, run_id)


def _workflow_dir(name: str) -> str:
    """A workflow's name as a directory name (characters other than letters, digits, ``._-`` become ``-``)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", name).strip(".") or "workflow"
    return safe


def workflow_lease(root: StorageRef, name: str, *, heartbeat: float = HEARTBEAT, expiry: float = EXPIRY) -> Lease:
    """The (not yet acquired) lease of workflow ``name`` under ``root``."""
    return Lease(root.child("workflows", _workflow_dir(name), "_lease.json"), f"workflow {name}",
                 heartbeat=heartbeat, expiry=expiry)


def _pointer(run_id: str, kind: str) -> dict[str, str]:
    return {"id": run_id, "kind": kind, "finished": _iso(time.time())}


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
        return {**asdict(self), "time": _iso(self.time) if self.time else None, "status_line": self.status_line}


def _stamp(info: dict) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return _epoch(value)
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
    created = _epoch(started) if isinstance(started, str) else min(stamps) if stamps else \
        _epoch(lease["acquired_at"]) if lease else 0.0
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
             f"status: {info.status_line}", f"created: {_short(_iso(info.time)) if info.time else '?'}",
             f"size: {format_bytes(info.size)}"]
    if info.label:
        lines.append(f"label: {info.label}")
    if info.lease:
        lines.append(f"lease: {_owner(info.lease)}, last heartbeat {_short(info.lease.get('heartbeat_at', '?'))}, "
                     f"expires {_short(info.lease.get('expires_at', '?'))}")
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
        out = [f"{verb} {_describe(r)} ({format_bytes(r.size)}, {r.status}, created {_short(_iso(r.time))})"
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
        reason = f"running on {_owner(info.lease)}" if info.status == "running" else protected.get(info.id) or \
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
    """Delete the stale leases of runs that are gone (each under its lock, if still the version judged stale)."""
    storage = root.open()
    for kind_dir in ("runs", "signals"):
        for run_id in set(_leases(storage, kind_dir)) - existing:
            backend = _backend(root.child(kind_dir, "_leases", f"{run_id}.json"))
            with backend.locked():
                raw, tag = backend.read()
                if raw is not None and _stale_reason(_parse(raw), time.time()):
                    backend.delete(tag)


def list_lines(runs: list[RunInfo]) -> list[str]:
    """``admf runs list``: a header and one line per run, oldest first."""
    from .budget import format_bytes

    rows = [(r.id, r.kind, r.status_line, _short(_iso(r.time)) if r.time else "?", format_bytes(r.size), r.label)
            for r in runs]
    head = ("ID", "KIND", "STATUS", "CREATED", "SIZE", "LABEL")
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(5)]
    return ["  ".join([*(str(x[i]).ljust(widths[i]) for i in range(5)), x[5]]).rstrip() for x in [head, *rows]]
