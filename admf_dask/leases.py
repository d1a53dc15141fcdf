"""Leases in storage: one process at a time works on a run, a signal set or a workflow.

A lease is a JSON file naming its owner (``what``, ``host``, ``pid``, ``pid_ns``, a
random ``token``) with ``acquired_at``, ``heartbeat_at`` and ``expires_at`` (UTC) and
the ``heartbeat_seconds`` and ``expiry_seconds`` it was taken with. The protocol:

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
           from the start of an acquire until the release, unless the program handles SIGTERM
           itself) deletes the lease *if it is still this lease's version*.
=========  ==========================================================================================

*Exclusively* and *if still the version* are atomic on local disk (the lease file is
its own lock: every read-decide-write holds ``flock`` on it, checking that the file
locked is still the one at its path; it is written in place and unlinked on release;
readers take a shared lock) and on S3 through s3fs (conditional requests: PUT with
``If-None-Match: *`` to create, PUT and DELETE with ``If-Match: <ETag>`` to renew,
take over and release; S3 applies each atomically). Other filesystems (``memory://``,
``gcs://``, ...) get a best effort: check, write, read back; two processes racing
within milliseconds could both win there. Lease times are the owner's wall clock:
hosts sharing a storage root need clocks within a few seconds of each other (NTP),
far below the 60 s expiry.

Tests shorten ``heartbeat`` and ``expiry`` (:class:`Lease` arguments); the file records
both, and a reader judges a lease by the ``expires_at`` its owner wrote. Where the
leases of runs and workflows live is :mod:`admf_dask.runs`' business.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from typing import Any

from .errors import BusyError, StorageError
from .storage import Storage, StorageRef, call_s3

__all__ = ["EXPIRY", "HEARTBEAT", "HOST", "NO_LEASE", "Lease", "drop_if_stale", "lease_state", "owner",
           "read_lease", "short_time", "utc_epoch", "utc_iso"]

HEARTBEAT = 10.0  # seconds between renewals of a held lease
EXPIRY = 60.0  # seconds a lease stays valid after its last renewal
FORMAT = "admf-lease/1"
HOST = socket.gethostname()


def utc_iso(t: float) -> str:
    """Epoch seconds as ``2026-01-02T03:04:05.678Z``."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_epoch(text: str) -> float:
    """:func:`utc_iso`'s text back to epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def short_time(text: str) -> str:
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
        utc_epoch(doc["expires_at"])
        return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _stale_reason(doc: dict | None, now: float) -> str | None:
    """Why a lease no longer holds (None: it is live)."""
    if doc is None:
        return "unreadable"
    if now >= utc_epoch(doc["expires_at"]):
        return f"expired at {short_time(doc['expires_at'])}"
    if (doc.get("host") == HOST and doc.get("pid_ns") is not None and doc.get("pid_ns") == _pid_ns()
            and not _pid_alive(int(doc.get("pid", 0)))):
        return f"its process {doc['pid']} has ended"
    return None


def owner(doc: dict) -> str:
    """``host (pid P) since T`` of a lease."""
    return f"{doc.get('host', '?')} (pid {doc.get('pid', '?')}) since {short_time(str(doc.get('acquired_at', '?')))}"


# --- where a lease file lives, and how it is read and written atomically -------------------------------------


class _Files:
    """A lease file on any fsspec filesystem: check, write, read back (best effort)."""

    creates_atomically = False  # whether write(raw, None) is one request that fails if the file exists

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
    creates_atomically = True  # write(raw, None) creates only if there is none, in one request

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
            out = call_s3(fs, "put_object", Bucket=bucket, Key=key, Body=raw, **condition)
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
            call_s3(fs, "delete_object", Bucket=bucket, Key=key, IfMatch=tag)
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


def drop_if_stale(ref: StorageRef) -> bool:
    """Delete the lease at ``ref`` if it is stale (under its lock, if still the version judged stale)."""
    backend = _backend(ref)
    with backend.locked():
        raw, tag = backend.read()
        if raw is None or _stale_reason(_parse(raw), time.time()) is None:
            return False
        backend.delete(tag)
    return True


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
                           "pid_ns": _pid_ns(), "token": self.token, "acquired_at": utc_iso(self._acquired),
                           "heartbeat_at": utc_iso(now), "expires_at": utc_iso(now + self.expiry),
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
            first = True
            while True:
                current, first = self._try_acquire(echo, first), False
                if current is None:
                    break
                if not wait:
                    raise BusyError(f"{self.what} is running on {owner(current)}",
                                    hint="wait for it with --wait, or try again later; a lease that is not renewed "
                                         f"for {current.get('expiry_seconds', EXPIRY):g} s is taken over")
                if holder is None or current.get("token") != holder.get("token"):
                    echo(f"waiting for {self.what}: running on {owner(current)} (last heartbeat "
                         f"{short_time(str(current.get('heartbeat_at', '?')))})")
                    holder = current
                time.sleep(poll)
        except BaseException:
            self.release()  # restores SIGTERM; deletes the lease if this took it
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.what}", daemon=True)
        self._thread.start()
        return self

    def _try_acquire(self, echo: Callable[[str], None], first: bool = False) -> dict | None:
        """None once acquired; else the live lease that holds it."""
        if first and self._backend.creates_atomically:  # most runs find no lease: create it outright (S3: one PUT with
            now = time.time()  # If-None-Match, not a GET first); one there (live or stale) is read and judged below
            self._acquired = now
            got = self._backend.write(self._encode(now), None)
            if got is not None:
                self._tag, self._renewed, self._lost = got, now, None
                return None
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
                    old = owner(doc) if doc else "an unknown owner"
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
                by = owner(doc) if doc else "another process"
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
        """Before a commit point that must not be written twice: renew now (BusyError if lost).

        Not again within ``heartbeat / 4`` s of this lease's last write (taken or renewed): no one
        takes a lease over before its expiry (``expiry`` s after that write, far longer), so the
        lease then holds as surely as after a renewal now (a sweep's run.json right after the
        lease was taken, its final table after a short run: one PUT each on S3).
        """
        if self._lost is not None:
            raise self._lost
        if self._tag is not None and time.time() - self._renewed < self.heartbeat / 4:
            return
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
