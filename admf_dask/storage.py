"""Storage: one fsspec filesystem plus a root path, with commit-safe writes.

Any fsspec URL works as a root: a local path, ``file://``, ``s3://`` (with
``storage_options`` such as ``endpoint_url``, ``key``, ``secret``) or ``memory://``.

Object stores have no rename and no multi-object transaction, so the rules are:
write data to fresh, deterministic names; write the manifest (or marker) last,
in one PUT; readers trust only what a manifest lists and never list a prefix to
decide what is complete. On local disk a single-file write goes to a temporary
name first and is renamed into place, so a reader never sees half a file.

Read-modify-write of one file by several processes (a dataset manifest) uses
:meth:`Storage.read_versioned` and :meth:`Storage.write_if` inside
:meth:`Storage.exclusive`: on S3 the write is a conditional PUT (``If-Match`` the
ETag of the bytes read, ``If-None-Match: *`` for a first write) and the lock is a
no-op; on local disk the lock is ``fcntl.flock`` on a lock file and the write is
plain; on other filesystems (``memory://``, ...) the lock is process-local, so
only writers within one process are serialised there.

A :class:`StorageRef` is the picklable description of a root (URL + options)
that tasks receive; workers open their own filesystem from it.
"""

from __future__ import annotations

import itertools
import json
import os
import posixpath
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .errors import StorageError

_READS_AT_ONCE = 8  # Storage.each: small reads in flight at once on an object store

__all__ = ["Storage", "StorageRef", "Uploads", "absolute_url", "call_s3", "replacing"]


TEMP_MARK = ".tmp-"  # a temporary sibling: <target>.tmp-<host tag>-<pid>-<random>


def temp_tag() -> str:
    """``<host tag>-<pid>-<random>``: who writes a temporary file, so a clean-up can tell a live writer's."""
    import hashlib
    import socket

    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


@contextmanager
def replacing(target: str) -> Iterator[str]:
    """A temporary sibling of the local file ``target`` to write: renamed onto it on success, removed on failure.

    Readers see the old file or the whole new one, never a part. The temporary file exists
    (empty) when this yields: a concurrent writer's clean-up removes only *empty* directories
    (a finished transaction's ``_staging``, a ``symbol=X/year=Y`` left empty), and one could
    remove a directory made here before a file is in it. So the directories and the file are
    made together, again if a directory went meanwhile.
    """
    tmp = f"{target}{TEMP_MARK}{temp_tag()}"
    for attempt in range(8):
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileNotFoundError:  # a parent directory was pruned between the mkdir calls or before the open
            if attempt == 7:
                raise
            time.sleep(0.001 * (attempt + 1))
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def call_s3(fs: Any, method: str, **kwargs: Any) -> Any:
    """One S3 API call (``"put_object"``, ...) through ``fs``'s own ``_call_s3``, so the monitor counts it.

    s3fs's ``fs.call_s3`` calls the class's ``_call_s3``, not the instance's that
    :func:`~admf_dask.monitor.count_requests` wraps: a request made through it went uncounted.
    """
    from fsspec.asyn import sync

    return sync(fs.loop, fs._call_s3, method, **kwargs)


def absolute_url(url: str) -> str:
    """A plain local path made absolute; a URL with a protocol (``s3://``, ``file://``, ``memory://``) as it is.

    Runs and signal sets store the dataset's URL, and tasks open storage from a
    :class:`StorageRef`: a relative path would mean another place in another working
    directory (``admf replay`` run elsewhere, a ``dask worker`` started elsewhere).

    >>> absolute_url("s3://bucket/bars") == "s3://bucket/bars" and absolute_url("/data/bars") == "/data/bars"
    True
    >>> os.path.isabs(absolute_url("data/bars"))
    True
    """
    url = str(url)
    if "://" in url or "::" in url or not url:
        return url
    return os.path.abspath(url)


@dataclass(frozen=True)
class StorageRef:
    """Where a storage root lives: an fsspec URL and its options (picklable, hashable by value).

    A plain local path is kept absolute (:func:`absolute_url`), so a reference means the
    same place in every process.
    """

    url: str
    storage_options: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        absolute = absolute_url(self.url)
        if absolute != self.url:
            object.__setattr__(self, "url", absolute)

    @classmethod
    def make(cls, url: str, storage_options: dict[str, Any] | None = None) -> StorageRef:
        return cls(str(url), _freeze(storage_options or {}))

    @property
    def options(self) -> dict[str, Any]:
        return _thaw(self.storage_options)

    def open(self) -> Storage:
        return Storage(self.url, self.options)

    def child(self, *parts: str) -> StorageRef:
        return StorageRef(_join(self.url, *parts), self.storage_options)


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("__list__", tuple(_freeze(v) for v in value))
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and value[:1] == ("__list__",):
        return [_thaw(v) for v in value[1]]
    if isinstance(value, tuple):
        return {k: _thaw(v) for k, v in value}
    return value


def _join(base: str, *parts: str) -> str:
    return posixpath.join(base.rstrip("/"), *parts) if parts else base


class Storage:
    """A root directory on some filesystem.

    Parameters
    ----------
    url:
        Any fsspec URL or local path, e.g. ``"data/generated"`` or ``"s3://bucket/prefix"``.
    storage_options:
        Passed to the fsspec filesystem (for S3: ``endpoint_url``, ``key``, ``secret``, ...).
    fs:
        An already-open filesystem to use instead of creating one from ``url``.

    Examples
    --------
    >>> st = Storage("memory://doc-example")
    >>> st.write_json({"x": 1}, "a", "b.json")
    >>> st.read_json("a", "b.json")
    {'x': 1}
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, fs: Any = None) -> None:
        self.url = absolute_url(url) if fs is None or isinstance(fs, LocalFileSystem) else str(url)
        self.storage_options = dict(storage_options or {})
        try:
            if fs is None:
                from .faults import check_storage_options, s3_defaults

                protocol = self.url.split("://", 1)[0] if "://" in self.url else "file"
                check_storage_options(self.url, protocol, self.storage_options)
                options = s3_defaults(self.storage_options) if protocol in ("s3", "s3a") else self.storage_options
                fs, root = fsspec.core.url_to_fs(self.url, **options)
                if protocol in ("s3", "s3a"):
                    from .faults import s3_retries

                    fs.retries = s3_retries()  # bounded: a frozen endpoint fails in ~retries x read_timeout
            else:
                root = fs._strip_protocol(self.url)
        except (ImportError, ValueError, TypeError) as exc:
            raise StorageError(f"cannot open storage: {exc}", file=self.url,
                               hint="use a local path or an fsspec URL such as s3://bucket/prefix") from exc
        from .monitor import count_requests

        self.fs = count_requests(fs)  # requests counted and timed for the run's monitor (monitor.py)
        self.root = root.rstrip("/") or "/"

    @property
    def ref(self) -> StorageRef:
        return StorageRef.make(self.url, self.storage_options)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @property
    def conditional(self) -> bool:
        """Whether writes can be conditional on the version read (S3: If-Match / If-None-Match)."""
        return "s3" in _protocols(self.fs)

    def path(self, *parts: str) -> str:
        """Filesystem path (no protocol) of ``parts`` under the root."""
        return _join(self.root, *parts)

    def display(self, *parts: str) -> str:
        """A path for messages: the URL the user gave, joined with ``parts``."""
        return _join(self.url, *parts)

    def exists(self, *parts: str) -> bool:
        path = self.path(*parts)
        if not self.is_local:  # object-store filesystems cache listings; another process may have written since
            self.fs.invalidate_cache(posixpath.dirname(path))
        return self.fs.exists(path)

    def read_bytes(self, *parts: str) -> bytes:
        """A whole file's bytes: on S3 one GET (s3fs would HEAD it first for its size)."""
        try:
            return self.fs.cat_file(self.path(*parts), **({"max_concurrency": 1} if self.conditional else {}))
        except FileNotFoundError:
            raise StorageError("file not found", file=self.display(*parts)) from None
        except OSError as exc:
            raise StorageError(f"cannot read: {exc}", file=self.display(*parts)) from exc

    def each(self, read: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """``[read(x) for x in items]``; on an object store up to ``_READS_AT_ONCE`` at a time in threads,
        so that small reads' round trips overlap (results in order, the first error in order raised)."""
        items = list(items)
        if self.is_local or len(items) < 2:
            return [read(x) for x in items]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(len(items), _READS_AT_ONCE), thread_name_prefix="admf-storage") as pool:
            return list(pool.map(read, items))

    def read_optional(self, *parts: str) -> bytes | None:
        """A whole file's bytes, or None if it does not exist: one GET on S3, where :meth:`exists` and
        then :meth:`read_bytes` would make a HEAD, a LIST and a GET."""
        try:
            return self.fs.cat_file(self.path(*parts), **({"max_concurrency": 1} if self.conditional else {}))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"cannot read: {exc}", file=self.display(*parts)) from exc

    def write_bytes(self, data: bytes | list[Any], *parts: str) -> None:
        """Write a whole file so that readers see the old content or the new, never half.

        ``data`` is bytes, or a list of buffers (bytes, memoryviews) written one after
        the other, so a caller need not join large buffers into one copy first.
        On local disk: write a temporary sibling, then rename it into place. On object
        stores a single PUT is already all-or-nothing.
        """
        target = self.path(*parts)
        chunks = data if isinstance(data, list) else [data]
        try:
            if self.is_local:  # plain os calls: fsspec's open/mv/exists cost ~1 ms per small file
                with replacing(target) as tmp, open(tmp, "wb") as f:
                    for chunk in chunks:
                        f.write(chunk)
            else:
                self.fs.pipe_file(target, data if len(chunks) == 1 else b"".join(chunks))
        except OSError as exc:
            raise StorageError(f"cannot write: {exc}", file=self.display(*parts)) from exc

    def uploads(self) -> Uploads:
        """Whole files to write before a commit marker, each started as soon as it is added (see :class:`Uploads`)."""
        return Uploads(self)

    @contextmanager
    def writing(self, *parts: str) -> Iterator[Any]:
        """A binary file to write a large file into, streamed: committed whole when the block ends, or not at all.

        Local disk: a temporary sibling renamed into place. Object stores: a local
        temporary file uploaded in one put when the block ends (an upload streamed
        straight to the store would commit a half-written object if the block failed).
        """
        import tempfile

        target = self.path(*parts)
        try:
            if self.is_local:
                with replacing(target) as tmp, open(tmp, "wb") as f:
                    yield f
            else:
                with tempfile.NamedTemporaryFile(prefix="admf-", suffix=".part") as f:
                    yield f
                    f.flush()
                    self.fs.put_file(f.name, target)
        except OSError as exc:
            raise StorageError(f"cannot write: {exc}", file=self.display(*parts)) from exc

    def read_json(self, *parts: str, missing: Any = ...) -> Any:
        """A JSON file's value; ``missing`` (when given) if the file does not exist (one GET on S3)."""
        raw = self.read_bytes(*parts) if missing is ... else self.read_optional(*parts)
        return missing if raw is None else self.parse_json(raw, *parts)

    def parse_json(self, raw: bytes, *parts: str) -> Any:
        """The value of JSON bytes read from ``parts``; a StorageError naming the file if they do not parse."""
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise StorageError(f"corrupt JSON ({exc})", file=self.display(*parts),
                               hint="the file was damaged or written by something else") from None

    def write_json(self, obj: Any, *parts: str) -> None:
        self.write_bytes(json_bytes(obj), *parts)

    def remove(self, paths: list[str], *, prune: bool = False) -> None:
        """Remove files given as paths relative to the root; missing files are ignored.

        With ``prune``, local directories left empty above them are removed too (a
        writer moving a file into such a directory must retry: :meth:`rename` does).
        On S3 one DeleteObjects per 1,000 paths (a missing key is no error there), not a
        HEAD and a DELETE each.
        """
        if self.conditional:
            try:
                if paths:
                    self.fs.rm([self.path(rel) for rel in paths])
            except OSError:  # best effort, as below
                pass
            return
        for rel in paths:
            full = self.path(rel)
            try:
                if self.is_local:
                    os.remove(full)
                    if prune:
                        self._prune_parents(full)
                elif self.fs.exists(full):
                    self.fs.rm(full)
            except OSError:  # best effort: missing already, or an orphan that a later commit removes
                pass

    def _prune_parents(self, full: str) -> None:
        """Remove the now empty local directories above a removed file, up to the root."""
        parent = os.path.dirname(full)
        while len(parent) > len(self.root) and parent.startswith(self.root):
            try:
                os.rmdir(parent)
            except OSError:
                return
            parent = os.path.dirname(parent)

    def remove_tree(self, *parts: str) -> None:
        """Remove a directory (prefix) and everything under it; a missing one is ignored."""
        full = self.path(*parts)
        try:
            if self.is_local:
                import shutil

                shutil.rmtree(full, ignore_errors=True)
            else:
                self.fs.invalidate_cache(full)
                self.fs.rm(full, recursive=True)
        except (FileNotFoundError, OSError):
            pass

    def prune(self, *parts: str) -> None:
        """Remove a local directory if it is empty (object stores have no directories)."""
        if self.is_local:
            try:
                os.rmdir(self.path(*parts))
            except OSError:
                pass

    def listdir(self, *parts: str) -> list[str]:
        """Names (not paths) directly under a directory or prefix; none if it does not exist."""
        full = self.path(*parts)
        try:
            if self.is_local:
                return sorted(os.listdir(full))
            self.fs.invalidate_cache(full)
            if self.conditional:  # one LIST (s3fs's ls lists a missing prefix's parent too)
                from fsspec.asyn import sync

                bucket, key, _ = self.fs.split_path(full)
                return sorted(sync(self.fs.loop, _list_names, self.fs, bucket, key.rstrip("/") + "/"))
            return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(full, detail=False))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def rename(self, src: str, dst: str) -> None:
        """Move a file (paths relative to the root) to a new name, replacing nothing that is there.

        Local disk: one ``os.replace`` (atomic). S3: a server-side copy, then the source
        is deleted. Other filesystems: their ``mv``.
        """
        try:
            if self.is_local:
                target = self.path(dst)
                for attempt in range(5):  # a concurrent _prune_parents may remove the directory just made
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    try:
                        os.replace(self.path(src), target)
                        break
                    except FileNotFoundError:
                        if attempt == 4 or not os.path.exists(self.path(src)):
                            self._prune_parents(target)  # no empty symbol=X/year=Y directory is left
                            raise
                    except BaseException:
                        self._prune_parents(target)
                        raise
            elif self.conditional:
                self.fs.copy(self.path(src), self.path(dst))
                self.fs.rm(self.path(src))
                self.fs.invalidate_cache(posixpath.dirname(self.path(dst)))
            else:
                self.fs.mv(self.path(src), self.path(dst))
        except FileNotFoundError:
            raise StorageError("a staged file is missing", file=self.display(src),
                               hint="another writer's clean-up removed it (was this write idle for a day?); "
                                    "run it again") from None
        except OSError as exc:
            raise StorageError(f"cannot move into place: {exc}", file=self.display(dst)) from exc

    def copy(self, src: str, dst: str) -> None:
        """Copy a file (paths relative to the root); on S3 a server-side copy."""
        try:
            if self.conditional:  # one CopyObject (fsspec's copy lists and heads the source first)
                bucket, key, _ = self.fs.split_path(self.path(dst))
                src_bucket, src_key, _ = self.fs.split_path(self.path(src))
                call_s3(self.fs, "copy_object", Bucket=bucket, Key=key,
                        CopySource={"Bucket": src_bucket, "Key": src_key})
            else:
                self.fs.copy(self.path(src), self.path(dst))
            if not self.is_local:
                self.fs.invalidate_cache(posixpath.dirname(self.path(dst)))
        except FileNotFoundError:
            raise StorageError("a staged file is missing", file=self.display(src),
                               hint="another writer's clean-up removed it (was this write idle for a day?); "
                                    "run it again") from None
        except OSError as exc:
            raise StorageError(f"cannot copy into place: {exc}", file=self.display(dst)) from exc

    # ------------------------------------------------------------------ read-modify-write of one file
    def read_versioned(self, *parts: str) -> tuple[bytes | None, str | None]:
        """A file's bytes and the version to condition a later :meth:`write_if` on.

        ``(None, None)`` if the file does not exist. On S3 the version is the ETag
        of the very GetObject response that returned the bytes (no cache in
        between); elsewhere it is None (writers there are serialised by
        :meth:`exclusive` instead).
        """
        path = self.path(*parts)
        try:
            if self.conditional:
                from fsspec.asyn import sync

                bucket, key, _ = self.fs.split_path(path)
                return sync(self.fs.loop, _get_object, self.fs, bucket, key)
            if self.is_local:
                with open(path, "rb") as f:
                    return f.read(), None
            return self.fs.cat_file(path), None
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            raise StorageError(f"cannot read: {exc}", file=self.display(*parts)) from exc

    def write_if(self, data: bytes, *parts: str, version: str | None) -> bool:
        """Write a whole file unless it changed since it was read; False if it did.

        On S3 one conditional PUT: ``If-Match: version`` when the file was read with
        that ETag, ``If-None-Match: *`` when it did not exist (``version`` None); a
        412 Precondition Failed (or a 409 conditional conflict, or the object gone)
        returns False. Elsewhere a plain :meth:`write_bytes` that always succeeds:
        call it inside :meth:`exclusive`.
        """
        if not self.conditional:
            self.write_bytes(data, *parts)
            return True
        path = self.path(*parts)
        bucket, key, _ = self.fs.split_path(path)
        condition = {"IfMatch": version} if version is not None else {"IfNoneMatch": "*"}
        try:
            call_s3(self.fs, "put_object", Bucket=bucket, Key=key, Body=data, **condition)
        except (FileExistsError, FileNotFoundError):  # If-None-Match failed / the object was deleted
            return False
        except OSError as exc:
            if _precondition_failed(exc):
                return False
            raise StorageError(f"cannot write: {exc}", file=self.display(*parts)) from exc
        finally:
            self.fs.invalidate_cache(path)
        return True

    @contextmanager
    def exclusive(self, name: str, timeout: float = 600.0) -> Iterator[None]:
        """Hold the dataset's writer lock ``name`` (a file under the root) for a read-modify-write.

        Local disk: ``fcntl.flock`` on the lock file, which the kernel releases when
        the holder dies; waits up to ``timeout`` seconds, then StorageError. S3:
        nothing (commits are optimistic: :meth:`write_if`). Other filesystems: a lock
        shared by the threads of this process only.
        """
        if self.conditional:
            yield
            return
        if not self.is_local:
            with _process_lock((type(self.fs).__name__, self.path(name))):
                yield
            return
        import fcntl

        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline, pause = time.monotonic() + timeout, 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StorageError(f"another writer has held the lock for over {timeout:.0f} s",
                                           file=self.display(name),
                                           hint="is an ingest or generate still running on this dataset?") from None
                    time.sleep(pause * random.uniform(0.5, 1.5))
                    pause = min(pause * 2, 0.05)
            yield
        finally:
            os.close(fd)  # releases the lock


def json_bytes(obj: Any) -> bytes:
    """The bytes :meth:`Storage.write_json` writes for ``obj``."""
    return json.dumps(obj, indent=1, sort_keys=True).encode()


class Uploads(dict):
    """Whole files (relative path: bytes, or a list of buffers) written as they are added, for a commit marker after.

    ``uploads[name] = data`` starts the write at once: on an object store with an async
    client (S3) the PUT goes out on the filesystem's event loop while the caller goes on
    encoding the next file, so a task's PUTs overlap its own work and each other, not only
    each other; elsewhere the file is written then and there (:meth:`Storage.write_bytes`).
    :meth:`wait` returns once every file is in place and raises the first failure (as a
    StorageError naming the file), after every PUT has ended (so a caller that cleans up
    after a failure sees every PUT that will land). A commit marker is written
    after :meth:`wait`, never through this. A PUT started before the caller fails may still
    land: without its marker the file is not part of any commit (and a retry writes the
    same name). The dict holds what was added (the bytes stay referenced until written).
    """

    def __init__(self, storage: Storage) -> None:
        super().__init__()
        self._storage = storage
        self._async = not storage.is_local and getattr(storage.fs, "async_impl", False) \
            and getattr(storage.fs, "loop", None) is not None
        self._flights: list[tuple[str, Any]] = []

    def __setitem__(self, name: str, data: bytes | list[Any]) -> None:
        if name in self:
            raise ValueError(f"{name} is already being written")
        super().__setitem__(name, data)
        if not self._async:
            self._storage.write_bytes(data, name)
            return
        import asyncio

        body = data if not isinstance(data, list) else b"".join(data)
        self._flights.append((name, asyncio.run_coroutine_threadsafe(
            self._storage.fs._pipe_file(self._storage.path(name), body), self._storage.fs.loop)))

    def wait(self) -> None:
        """Block until every file added is written; the first failure, in the order added, raised."""
        first: BaseException | None = None
        for name, flight in self._flights:
            try:
                flight.result()
            except BaseException as exc:  # noqa: BLE001 - every PUT ends before the first failure is raised
                first = first or self._failure(name, exc)
        self._flights = []
        if first is not None:
            raise first

    def _failure(self, name: str, exc: BaseException) -> BaseException:
        """What a failed write of ``name`` raises: an OSError as a StorageError naming the file, else itself."""
        if isinstance(exc, OSError):
            return StorageError(f"cannot write: {exc}", file=self._storage.display(name))
        return exc

    @property
    def later(self) -> bool:
        """Whether :meth:`commit_later` can write a marker without blocking (an object store with an async client)."""
        return self._async

    def commit_later(self, name: str, data: bytes) -> Any:
        """Write ``name`` (a commit marker) once every file added is in place, without waiting: a future of it.

        The marker's PUT starts only after every file's PUT has succeeded; if one failed,
        the marker is not written and the future raises the first failure (as :meth:`wait`
        would). The future is a ``concurrent.futures.Future``: ``result()`` blocks until the
        marker is written. Only where :attr:`later` is true.
        """
        import asyncio

        if not self._async:
            raise ValueError("commit_later needs an object store with an async client")
        flights, self._flights = self._flights, []
        storage = self._storage

        async def marker_last() -> None:
            first: BaseException | None = None
            for fname, flight in flights:
                try:
                    await asyncio.wrap_future(flight)
                except BaseException as exc:  # noqa: BLE001 - every PUT ends before the first failure is raised
                    first = first or self._failure(fname, exc)
            if first is not None:
                raise first
            try:
                await storage.fs._pipe_file(storage.path(name), data)
            except OSError as exc:
                raise self._failure(name, exc) from exc

        return asyncio.run_coroutine_threadsafe(marker_last(), storage.fs.loop)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = getattr(fs, "protocol", ())
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


async def _get_object(fs: Any, bucket: str, key: str) -> tuple[bytes, str]:
    response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    try:
        return await response["Body"].read(), response["ETag"]
    finally:
        response["Body"].close()


async def _list_names(fs: Any, bucket: str, prefix: str, pages: int | None = None) -> list[str] | None:
    """Names directly under ``prefix`` (files and sub-prefixes): one LIST per 1,000; None past ``pages`` LISTs."""
    names, kw = [], {}
    for _ in itertools.count() if pages is None else range(pages):
        response = await fs._call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, Delimiter="/", **kw)
        names += [o["Key"][len(prefix):] for o in response.get("Contents", ())]
        names += [p["Prefix"][len(prefix):].rstrip("/") for p in response.get("CommonPrefixes", ())]
        if not response.get("IsTruncated"):
            return [n for n in names if n]
        kw = {"ContinuationToken": response["NextContinuationToken"]}
    return None


def _precondition_failed(exc: BaseException) -> bool:
    response = getattr(exc.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey")


_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _process_lock(key: tuple[str, str]) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())
