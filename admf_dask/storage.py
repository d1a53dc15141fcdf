"""Storage: one fsspec filesystem plus a root path, with commit-safe writes.

Any fsspec URL works as a root: a local path, ``file://``, ``s3://`` (with
``storage_options`` such as ``endpoint_url``, ``key``, ``secret``) or ``memory://``.

Object stores have no rename and no multi-object transaction, so the rules are:
write data to fresh, deterministic names; write the manifest (or marker) last,
in one PUT; readers trust only what a manifest lists and never list a prefix to
decide what is complete. On local disk a single-file write goes to a temporary
name first and is renamed into place, so a reader never sees half a file.

A :class:`StorageRef` is the picklable description of a root (URL + options)
that tasks receive; workers open their own filesystem from it.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .errors import StorageError

__all__ = ["Storage", "StorageRef", "replacing"]


@contextmanager
def replacing(target: str) -> Iterator[str]:
    """A temporary sibling of the local file ``target`` to write: renamed onto it on success, removed on failure.

    Readers see the old file or the whole new one, never a part.
    """
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.tmp-{uuid.uuid4().hex}"
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@dataclass(frozen=True)
class StorageRef:
    """Where a storage root lives: an fsspec URL and its options (picklable, hashable by value)."""

    url: str
    storage_options: tuple[tuple[str, Any], ...] = field(default=())

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
        self.url = str(url)
        self.storage_options = dict(storage_options or {})
        try:
            if fs is None:
                fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
            else:
                root = fs._strip_protocol(self.url)
        except (ImportError, ValueError, TypeError) as exc:
            raise StorageError(f"cannot open storage: {exc}", file=self.url,
                               hint="use a local path or an fsspec URL such as s3://bucket/prefix") from exc
        self.fs = fs
        self.root = root.rstrip("/") or "/"

    @property
    def ref(self) -> StorageRef:
        return StorageRef.make(self.url, self.storage_options)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

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
        try:
            return self.fs.cat_file(self.path(*parts))
        except FileNotFoundError:
            raise StorageError("file not found", file=self.display(*parts)) from None
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

    def read_json(self, *parts: str) -> Any:
        raw = self.read_bytes(*parts)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise StorageError(f"corrupt JSON ({exc})", file=self.display(*parts),
                               hint="the file was damaged or written by something else") from None

    def write_json(self, obj: Any, *parts: str) -> None:
        self.write_bytes(json.dumps(obj, indent=1, sort_keys=True).encode(), *parts)

    def remove(self, paths: list[str]) -> None:
        """Remove files given as paths relative to the root; missing files are ignored."""
        for rel in paths:
            full = self.path(rel)
            try:
                if self.fs.exists(full):
                    self.fs.rm(full)
            except OSError:  # best effort: an orphan file is invisible to readers anyway
                pass
