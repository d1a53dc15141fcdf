"""BarStore: hive-partitioned Parquet bars under any fsspec URL, committed by a manifest.

Layout of one dataset (the URL given to :class:`BarStore` is its directory)::

    _dataset.json                                     the manifest: the commit point
    _dataset.lock                                     local disk: the writers' lock file (flock)
    symbol=<SYM>/year=<YYYY>/part-<content-hash>-<txn-tag>.parquet
    _staging/<txn>/...                                a writer's files before its commit

The manifest records the schema version, every symbol with its first and last
timestamp, row count, content fingerprint, exact file list, ``change`` and
``lineage`` (see :mod:`admf_dask.bars.update`), and a fingerprint of the whole
dataset (later stages use it as a cache key). Readers open only the files the
manifest lists. Writers stage new files where no reader looks and move them into
place just before the manifest commit (:mod:`admf_dask.bars.txn`); the manifest is
replaced in one write, and only then are superseded files removed.

Any number of writers may work on one dataset at once: the commit is a
read-merge-write of the manifest under a lock (local disk) or a conditional PUT
(S3), redone on a new base when another writer committed first
(:meth:`BarStore.update`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager, nullcontext
from itertools import pairwise
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from pyarrow import fs as pafs

from ..errors import ConfigError, DataError, StorageError, did_you_mean
from ..storage import Storage, StorageRef
from .schema import ARROW_SCHEMA, COLUMNS, SCHEMA_VERSION, VALUE_COLUMNS, Bars
from .txn import MANIFEST, Txn, commit_plans
from .update import (WHOLE_FILE_ROWS, Plan, SymbolChange, check_granularity, check_mode, granularity_for,
                     granularity_of, group_span, plan_bars, plan_repack, plan_staged, write_symbol_files)

__all__ = ["BarStore", "MANIFEST", "Update", "to_ns", "write_symbol_files"]

FORMAT = "admf-bars"
_MIN_NS, _MAX_NS = np.iinfo(np.int64).min, np.iinfo(np.int64).max


def to_ns(when: object, default: int) -> int:
    """A time bound as int64 ns UTC. None gives ``default``; naive times are taken as UTC."""
    if when is None:
        return default
    if isinstance(when, (int, np.integer)):
        return int(when)
    try:
        ts = pd.Timestamp(when)
    except (ValueError, TypeError) as exc:
        raise DataError(f"cannot read {when!r} as a time: {exc}", rule="time-bound") from None
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value)


class Update(NamedTuple):
    """What :meth:`BarStore.update` committed: the manifest and each symbol's change."""

    manifest: dict[str, Any]
    changes: dict[str, SymbolChange]


# Files of at most this many rows (~2.5 MB of the six columns) are read whole, then parsed.
_WHOLE_FILE_ROWS = WHOLE_FILE_ROWS


class BarStore:
    """A bar dataset at ``url`` (local path, ``file://``, ``s3://``, ``memory://``, ...).

    Examples
    --------
    >>> from admf_dask.bars import BarStore, generate_bars
    >>> store = BarStore("memory://doc/bars")
    >>> manifest = store.write([generate_bars("AAA", "2024-01-01", "2024-03-31", seed=1)])
    >>> store.symbols()
    ['AAA']
    >>> bars = store.read("AAA", start="2024-02-01", columns=["close"])
    >>> sorted(bars.columns)
    ['close']
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, *, fs: Any = None) -> None:
        self.storage = Storage(url, storage_options, fs=fs)
        self._manifest: dict[str, Any] | None = None
        self._counted: dict[tuple, int] = {}  # rows_in_range by (symbol version, bounds): preflight, then the run
        # pyarrow's own local filesystem is much faster than going through fsspec;
        # other filesystems (and fsspec subclasses, e.g. instrumented ones) are wrapped.
        if type(self.storage.fs) is LocalFileSystem:
            self._arrow_fs = pafs.LocalFileSystem()
        else:
            self._arrow_fs = pafs.PyFileSystem(pafs.FSSpecHandler(self.storage.fs))

    @classmethod
    def open(cls, ref: StorageRef, fingerprint: str | None = None) -> BarStore:
        """Open from a reference, as tasks do.

        With ``fingerprint`` (the dataset's, known to whoever submitted the task) the
        store this process last opened so is returned when its manifest has that
        fingerprint, so a worker running a hundred tasks on one dataset parses the
        manifest once (and opens its filesystem once). Without it, or when the dataset
        has changed since, the manifest is read again. A store opened so is shared:
        its readers must not :meth:`refresh` it.
        """
        if fingerprint is None:
            return cls(ref.url, ref.options)
        held = _OPENED.get(ref)
        if held is not None and type(held) is cls and held._manifest is not None \
                and held._manifest.get("fingerprint") == fingerprint:
            return held  # opening costs ~0.1 ms (a filesystem from the URL): per symbol of a sweep, per task
        store = cls(ref.url, ref.options)
        store.manifest  # noqa: B018 (read now: the store is kept with it)
        _OPENED[ref] = store
        while len(_OPENED) > 8:
            _OPENED.pop(next(iter(_OPENED)))
        return store

    @property
    def ref(self) -> StorageRef:
        return self.storage.ref

    @property
    def url(self) -> str:
        return self.storage.url

    def __repr__(self) -> str:
        return f"BarStore({self.url!r})"

    # ------------------------------------------------------------------ manifest
    def exists(self) -> bool:
        return self.storage.exists(MANIFEST)

    @property
    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            if not self.exists():
                raise StorageError("no bar dataset here (no _dataset.json)", file=self.url,
                                   hint="create one with `admf generate` or `admf ingest`")
            self._manifest = self._check(self.storage.read_json(MANIFEST))
        return self._manifest

    def _check(self, manifest: Any) -> dict[str, Any]:
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise StorageError("not a bar dataset manifest", file=self.storage.display(MANIFEST))
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise StorageError(f"schema version {manifest.get('schema_version')!r} is not supported "
                               f"(this version reads {SCHEMA_VERSION})", file=self.storage.display(MANIFEST),
                               hint="upgrade admf-dask or re-ingest the data")
        return manifest

    def refresh(self) -> BarStore:
        """Forget the cached manifest so the next access reads the committed one."""
        self._manifest = None
        return self

    @property
    def fingerprint(self) -> str:
        """Content fingerprint of the whole dataset: changes when any bar changes."""
        return self.manifest["fingerprint"]

    @property
    def source(self) -> dict[str, Any] | None:
        """What produced the data (generator settings or ingested files), if recorded."""
        return self.manifest.get("source")

    @property
    def granularity(self) -> str:
        """The files' granularity: ``year``, ``decade`` or ``symbol`` (datasets without the key: ``year``)."""
        return granularity_of(self.manifest) or "year"

    def symbols(self) -> list[str]:
        return sorted(self.manifest["symbols"])

    def entry(self, symbol: str) -> dict[str, Any]:
        try:
            return self.manifest["symbols"][symbol]
        except KeyError:
            raise DataError(f"symbol {symbol!r} is not in the dataset", symbol=symbol, file=self.url,
                            hint=did_you_mean(symbol, self.manifest["symbols"]) or
                            f"it has {len(self.manifest['symbols'])} symbols; list them with `admf symbols`") from None

    def symbol_fingerprint(self, symbol: str) -> str:
        return self.entry(symbol)["fingerprint"]

    def extends(self, symbol: str, fingerprint: str) -> int | None:
        """Rows of the version ``fingerprint`` of ``symbol`` if the current version is it or extends it by appends.

        The current version extends an earlier one when its first ``rows`` bars are
        exactly that version's bars (the manifest's ``lineage``: pure appends since,
        at most the last 64). None if the symbol changed otherwise since, or is gone.
        An incremental run over a symbol processes only the bars after those rows.

        >>> from admf_dask.bars import generate_bars
        >>> store = BarStore("memory://doc/extends")
        >>> _ = store.write([generate_bars("AAA", "2024-01-01", "2024-03-29", seed=1)])
        >>> march = store.symbol_fingerprint("AAA")
        >>> update = store.update([generate_bars("AAA", "2024-04-01", "2024-04-30", seed=2)], mode="append")
        >>> update.changes["AAA"].line()
        'AAA: append, +22 bars (65 -> 87 rows)'
        >>> store.extends("AAA", march), store.extends("AAA", store.symbol_fingerprint("AAA"))
        (65, 87)
        >>> _ = store.update([generate_bars("AAA", "2024-02-01", "2024-02-29", seed=3)], on_conflict="new")
        >>> store.entry("AAA")["change"], store.extends("AAA", march)
        ('merge', None)
        """
        entry = self.manifest["symbols"].get(symbol)
        if entry is None:
            return None
        if entry["fingerprint"] == fingerprint:
            return entry["rows"]
        for version in entry.get("lineage") or []:
            if version["fingerprint"] == fingerprint:
                return version["rows"]
        return None

    def info(self) -> pd.DataFrame:
        """One row per symbol: first and last timestamp, rows, fingerprint."""
        rows = [{"symbol": s, "first": pd.Timestamp(e["first_ns"], tz="UTC"),
                 "last": pd.Timestamp(e["last_ns"], tz="UTC"), "rows": e["rows"],
                 "fingerprint": e["fingerprint"][:12]}
                for s, e in sorted(self.manifest["symbols"].items())]
        return pd.DataFrame(rows, columns=["symbol", "first", "last", "rows", "fingerprint"])

    # ------------------------------------------------------------------ reading
    def _columns(self, columns: Sequence[str] | None) -> list[str]:
        if columns is None:
            return list(VALUE_COLUMNS)
        if isinstance(columns, str):
            columns = [columns]
        cols = [c for c in columns if c != "timestamp"]
        for c in cols:
            if c not in VALUE_COLUMNS:
                raise DataError(f"unknown column {c!r}; columns are {', '.join(COLUMNS)}",
                                key=c, hint=did_you_mean(c, COLUMNS))
        return list(dict.fromkeys(cols))

    def _files(self, symbol: str, lo: int, hi: int) -> list[dict[str, Any]]:
        return [f for f in self.entry(symbol)["files"] if f["last_ns"] >= lo and f["first_ns"] <= hi]

    def files(self, symbol: str, start: object = None, end: object = None) -> list[str]:
        """The data files (paths under the dataset) that a read of this range opens."""
        return [f["path"] for f in self._files(symbol, to_ns(start, _MIN_NS), to_ns(end, _MAX_NS))]

    def _read_file(self, meta: dict[str, Any], symbol: str, cols: list[str], lo: int, hi: int,
                   threads: bool = True, data: bytes | None = None) -> pa.Table:
        """Read one data file, opened once; row groups outside [lo, hi] are skipped by their statistics.

        ``data``: the file's bytes, already fetched and checked (:meth:`_fetch`), or held in memory by the
        writer that just made them. A file read here is checked first (:meth:`_check_bytes`).
        """
        inside = lo <= meta["first_ns"] and meta["last_ns"] <= hi
        try:
            with (nullcontext(None) if data is not None else self._open_input(meta)) as handle:
                # A small file (a year of daily bars is ~15 kB) is read in one call and parsed
                # from memory: 1.5 ms instead of 2.8 ms for ten such files, and one request on
                # object storage instead of one per footer and column chunk.
                check = _UNCHECKED
                if data is None and meta["rows"] <= _WHOLE_FILE_ROWS:
                    data = handle.read()
                    self._check_bytes(meta, symbol, data)
                elif data is None:
                    check = self._check_large(meta, symbol, handle)
                pf = pq.ParquetFile(pa.BufferReader(data) if data is not None else handle)
                if inside:
                    check(pf, None)
                    table = pf.read(columns=["timestamp", *cols], use_threads=threads)
                else:
                    groups = [i for i in range(pf.metadata.num_row_groups)
                              if _overlaps(pf.metadata.row_group(i).column(0).statistics, lo, hi)]
                    check(pf, groups)
                    table = pf.read_row_groups(groups, columns=["timestamp", *cols], use_threads=threads)
        except FileNotFoundError:
            raise StorageError("a data file listed in the manifest is missing", symbol=symbol,
                               file=self.storage.display(meta["path"]),
                               hint="the dataset was changed outside admf; re-ingest this symbol") from None
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise StorageError(f"cannot read data file: {exc}", symbol=symbol,
                               file=self.storage.display(meta["path"])) from None
        for name in ["timestamp", *cols]:
            if not table.schema.field(name).type.equals(ARROW_SCHEMA.field(name).type):
                raise StorageError(f"column {name!r} has type {table.schema.field(name).type}, expected "
                                   f"{ARROW_SCHEMA.field(name).type}", symbol=symbol,
                                   file=self.storage.display(meta["path"]), key=name)
        if inside:
            if table.num_rows != meta["rows"]:
                raise StorageError(f"data file has {table.num_rows} rows, the manifest says {meta['rows']}",
                                   symbol=symbol, file=self.storage.display(meta["path"]))
            return table
        ts = table.column("timestamp").combine_chunks().cast(pa.int64()).to_numpy()
        a, b = np.searchsorted(ts, lo, "left"), np.searchsorted(ts, hi, "right")
        return table.slice(a, b - a)

    def read(self, symbol: str, start: object = None, end: object = None,
             columns: Sequence[str] | None = None) -> Bars:
        """Read one symbol's bars in ``[start, end]`` (inclusive), only the given columns.

        Only the files of that symbol whose time span overlaps the range are opened;
        within a file, row groups outside the range are skipped by their statistics.
        A symbol's files (or a single file's columns) are read concurrently, except
        inside a Dask task: there the cluster already keeps every core busy, and
        threads only add CPU time (~25 % more for ten small files) and waits.
        """
        from ..monitor import timed

        with timed("bars"):  # the task's "bars" stage, when a task collects its stages (monitor.py)
            return self._read(symbol, start, end, columns, parallel=not _in_dask_task())

    def _read(self, symbol: str, start: object, end: object, columns: Sequence[str] | None,
              parallel: bool) -> Bars:
        cols = self._columns(columns)
        lo, hi = to_ns(start, _MIN_NS), to_ns(end, _MAX_NS)
        metas = self._files(symbol, lo, hi)
        if self._remote and metas and all(m["rows"] <= _WHOLE_FILE_ROWS for m in metas):
            # object stores: one GET per file, all of the symbol's files at once, no HEAD
            datas = self._fetch(metas, symbol)
            tables = [self._read_file(f, symbol, cols, lo, hi, parallel and len(metas) == 1, data=d)
                      for f, d in zip(metas, datas)]
        elif parallel and len(metas) > 1:  # many small files: overlap their latency, one thread each
            tables = list(_file_pool().map(lambda f: self._read_file(f, symbol, cols, lo, hi, False), metas))
        else:
            tables = [self._read_file(f, symbol, cols, lo, hi, parallel and len(metas) == 1) for f in metas]
        if not tables:
            return Bars(symbol, np.empty(0, np.int64), {c: np.empty(0) for c in cols})
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        return Bars.from_arrow(symbol, table)

    @property
    def _remote(self) -> bool:
        return not isinstance(self._arrow_fs, pafs.LocalFileSystem)

    def kept(self, symbol: str, start: object = None, end: object = None) -> bool:
        """Whether reading ``symbol`` in ``[start, end]`` makes no request: an object store's files this
        process fetched whole and keeps (:data:`_FETCHED`), every one of them. False on local disk."""
        if not self._remote or not _FETCHED.limit():
            return False
        metas = self._files(symbol, to_ns(start, _MIN_NS), to_ns(end, _MAX_NS))
        return bool(metas) and all(m["rows"] <= _WHOLE_FILE_ROWS and _FETCHED.holds(_FETCHED.key(self.url, m))
                                   for m in metas)

    def _open_input(self, meta: dict[str, Any]) -> Any:
        """A data file opened for reading. Object stores: fsspec's file with the size the manifest
        records (no HEAD) and no read-ahead cache; local disk: pyarrow's own file."""
        path = self.storage.path(meta["path"])
        if not self._remote:
            return self._arrow_fs.open_input_file(path)
        known = {"size": meta["bytes"]} if "bytes" in meta and self.storage.conditional else {}
        return pa.PythonFile(self.storage.fs.open(path, "rb", cache_type="none", **known), mode="r")

    def _fetch(self, metas: list[dict[str, Any]], symbol: str) -> list[bytes]:
        """Whole data files' bytes: kept ones from this process's :data:`_FETCHED`, the others on async
        filesystems (s3fs) all at once, one GET each, no HEAD (then kept)."""
        if not _FETCHED.limit():  # none kept (ADMF_BAR_CACHE_MB=0): nor taken
            return self._get(metas, symbol)
        keys = [_FETCHED.key(self.url, m) for m in metas]
        got = [_FETCHED.get(k) for k in keys]
        missing = [i for i, g in enumerate(got) if g is None]
        if missing:
            for i, data in zip(missing, self._get([metas[i] for i in missing], symbol)):
                got[i] = data
                _FETCHED.put(keys[i], data)
        return got

    def _get(self, metas: list[dict[str, Any]], symbol: str) -> list[bytes]:
        fs = self.storage.fs
        paths = [self.storage.path(m["path"]) for m in metas]
        # s3fs asks for the size first (a HEAD) unless the GET is not to be split in parallel ranges
        kw = {"max_concurrency": 1} if self.storage.conditional else {}
        if getattr(fs, "async_impl", False) and len(paths) > 1:
            import asyncio

            from fsspec.asyn import sync

            async def gather() -> list[Any]:
                return await asyncio.gather(*(fs._cat_file(p, **kw) for p in paths), return_exceptions=True)

            got = sync(fs.loop, gather)
        else:
            got = []
            for p in paths:
                try:
                    got.append(fs.cat_file(p, **kw))
                except Exception as exc:  # noqa: BLE001 - reported below, naming the file
                    got.append(exc)
        for meta, value in zip(metas, got):
            if isinstance(value, BaseException):
                with self._reading(meta, symbol):
                    raise value
            self._check_bytes(meta, symbol, value)
        return got

    def _check_bytes(self, meta: dict[str, Any], symbol: str, data: bytes) -> None:
        """A data file's bytes, read whole (from local disk or fetched), are those the manifest recorded
        when the file was committed: its size (``bytes``) and the sha256 of its bytes (``file_sha256``,
        ~15 us for a year of daily bars), checked before its bars are parsed, used or kept (:data:`_FETCHED`).
        Entries written before ``file_sha256`` was recorded have their arrays' ``sha256`` checked instead
        (each row group's for a coarser file; ~0.5 ms for a year of daily bars: ``admf repack`` records
        the new field). A flipped bit of a daily file mostly still parses: only these tell."""
        self._check_size(meta, symbol, len(data))
        if "file_sha256" in meta:
            self._check_digest(meta, symbol, hashlib.sha256(data).hexdigest(), "the file", meta["file_sha256"])
            return
        with self._reading(meta, symbol):
            self._check_arrays(meta, symbol, pq.ParquetFile(pa.BufferReader(data)))

    def _check_large(self, meta: dict[str, Any], symbol: str, handle: Any) -> Callable[[Any, Any], None]:
        """:meth:`_check_bytes` for a file read in part (over ``_WHOLE_FILE_ROWS`` rows): its size and, when the
        entry records them (:func:`~admf_dask.bars.update.part_digests`), the sha256 of its footer now; returns
        ``check(pf, groups)``, which checks the sha256 of each row group's bytes (``groups`` None: all)
        before the caller decodes it, each once, so a bounded read reads only the groups it uses (twice: to
        check, then to decode; from the page cache on local disk). An entry without them has the whole file
        checked now, its bytes hashed in blocks (``file_sha256``) or its arrays (older entries), and its
        ``check`` does nothing. The handle is left at the start."""
        size = handle.size()
        self._check_size(meta, symbol, size)

        def check_digest(digest: str, what: str, want: str) -> None:
            self._check_digest(meta, symbol, digest, what, want)

        if "group_sha256" in meta:
            handle.seek(max(size - _IO_BUFFER, 0))  # the footer is at most a few kB: one read (one request)
            tail = handle.read(_IO_BUFFER)
            footer = 8 + int.from_bytes(tail[-8:-4], "little")
            if footer > len(tail):
                handle.seek(max(size - footer, 0))
                tail = handle.read(footer)
            check_digest(hashlib.sha256(tail[-footer:]).hexdigest(), "footer", meta["footer_sha256"])
            handle.seek(0)
            done: set[int] = set()

            def check(pf: pq.ParquetFile, groups: Any) -> None:
                metadata = pf.metadata
                for i in range(metadata.num_row_groups) if groups is None else groups:
                    if i in done:
                        continue
                    if i >= len(meta["group_sha256"]):
                        raise StorageError(f"data file has {metadata.num_row_groups} row groups, the manifest "
                                           f"says {len(meta['group_sha256'])}", **self._damaged(meta, symbol))
                    a, b = group_span(metadata, i)
                    handle.seek(a)
                    check_digest(_hash_blocks(handle, b - a), f"row group {i}", meta["group_sha256"][i])
                    done.add(i)
                handle.seek(0)

            return check
        if "file_sha256" in meta:
            check_digest(_hash_blocks(handle, size), "the file", meta["file_sha256"])
        else:
            self._check_arrays(meta, symbol, pq.ParquetFile(handle, pre_buffer=False, buffer_size=_IO_BUFFER))
        handle.seek(0)
        return _UNCHECKED

    def _check_size(self, meta: dict[str, Any], symbol: str, size: int) -> None:
        """A data file's size is the one its commit recorded (``bytes``; older entries may lack it)."""
        if "bytes" in meta and size != meta["bytes"]:
            raise StorageError(f"data file has {size:,} bytes, the manifest says {meta['bytes']:,}",
                               **self._damaged(meta, symbol))

    def _check_digest(self, meta: dict[str, Any], symbol: str, digest: str, what: str, want: str) -> None:
        """The sha256 of ``what`` (the file, its footer, a row group) is the one its commit recorded."""
        if digest != want:
            raise StorageError(f"data file does not hold the bars the manifest records (sha256 of its bytes: "
                               f"{what} {digest[:12]}, committed {want[:12]})", **self._damaged(meta, symbol))

    def _check_arrays(self, meta: dict[str, Any], symbol: str, pf: pq.ParquetFile) -> None:
        """An older entry's check: the sha256 of the file's arrays (each ``groups`` row group's), streamed."""
        groups = meta.get("groups") or [{"rows": meta["rows"], "sha256": meta["sha256"]}]
        if pf.metadata.num_rows != sum(g["rows"] for g in groups):
            raise StorageError(f"data file has {pf.metadata.num_rows:,} rows, the manifest says "
                               f"{sum(g['rows'] for g in groups):,}", **self._damaged(meta, symbol))
        if _arrays_digests(pf, [g["rows"] for g in groups]) != [g["sha256"] for g in groups]:
            raise StorageError("data file does not hold the bars the manifest records (sha256 of its bars)",
                               **self._damaged(meta, symbol))

    def _intact(self, metas: list[dict[str, Any]], symbol: str) -> list[bool]:
        """Whether each committed data file still holds what the manifest recorded (the checks of a read pass);
        on an object store a few at a time, in threads."""
        if self._remote and len(metas) > 1 and not threading.current_thread().name.startswith("admf-read"):
            return [e is None for e in _file_pool().map(lambda m: self._damage(m, symbol), metas)]
        return [self._damage(m, symbol) is None for m in metas]

    def _damage(self, meta: dict[str, Any], symbol: str) -> StorageError | None:
        """What is wrong with a committed data file, read whole through every check of a read, or None."""
        try:
            with self._reading(meta, symbol), self._parquet(meta, symbol, []) as pf:
                pf.check(None)
        except StorageError as exc:
            return exc
        return None

    def verify(self, symbols: Iterable[str] | None = None) -> dict[str, Any]:
        """Check every data file of ``symbols`` (all by default) as a read would, each read whole once.

        Returns ``{"symbols", "files", "bytes", "damaged"}``, ``damaged`` being a StorageError per
        file that does not hold what the manifest recorded at its commit (its size, the sha256 of its
        bytes, or for older entries of its bars), missing or unreadable, in symbol and time order.
        Files are read a few at a time in threads (overlapping an object store's latency).

        >>> from admf_dask.bars import generate_bars
        >>> store = BarStore("memory://doc/verify")
        >>> _ = store.write([generate_bars("AAA", "2023-06-01", "2024-03-31", seed=1)])
        >>> out = store.verify()
        >>> out["files"], out["damaged"]
        (2, [])
        """
        names = self.symbols() if symbols is None else list(symbols)
        files = [(s, f) for s in names for f in self.entry(s)["files"]]
        damaged = [e for e in _file_pool().map(lambda sf: self._damage(sf[1], sf[0]), files) if e is not None]
        return {"symbols": len(names), "files": len(files), "bytes": sum(f.get("bytes", 0) for _, f in files),
                "damaged": damaged}

    def _damaged(self, meta: dict[str, Any], symbol: str) -> dict[str, Any]:
        """Where a data file that fails its check is, and what to do."""
        return {"symbol": symbol, "file": self.storage.display(meta["path"]),
                "hint": "the file changed after its commit (damaged in storage, or written outside admf); "
                        f"write this symbol's bars again from their source (admf ingest {self.url} FILE "
                        "--mode replace, or the same admf generate: the file is written anew) or restore it; "
                        f"admf verify {self.url} lists every such file"}

    def read_many(self, symbols: Iterable[str] | None = None, start: object = None, end: object = None,
                  columns: Sequence[str] | None = None) -> dict[str, Bars]:
        """Read several symbols (all by default), a few at a time in threads."""
        from concurrent.futures import ThreadPoolExecutor

        names = self.symbols() if symbols is None else list(symbols)
        for s in names:
            self.entry(s)
        with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
            return dict(zip(names, pool.map(lambda s: self._read(s, start, end, columns, False), names)))

    # ------------------------------------------------------------------ bounded reading
    def iter_chunks(self, symbol: str, max_bytes: int | None = None, start: object = None, end: object = None,
                    columns: Sequence[str] | None = None, *, max_rows: int | None = None) -> Iterator[Bars]:
        """Yield a symbol's bars in ``[start, end]`` in time order, as chunks of bounded size.

        Give exactly one bound: ``max_rows`` (bars per chunk), or ``max_bytes``, which
        allows ``max_bytes // (8 * (1 + len(columns)))`` bars per chunk (8 bytes for the
        timestamp and for each value column read). Concatenated, the chunks equal
        :meth:`read` over the same range, array for array. A range holding no bars
        yields nothing.

        Chunk boundaries fall on Parquet row-group boundaries (files, one per calendar
        year, are runs of whole row groups): a chunk is as many whole row groups as fit,
        and only a row group larger than a chunk is cut inside it, into equal parts
        (sizes differing by at most one bar). :meth:`row_groups` lists the row groups,
        so a caller can choose a bound that fits them.

        Each chunk is built in its own preallocated, **writable** numpy arrays (one per
        column, owned by the chunk: no chunk shares memory with another chunk or with
        pyarrow), filled from record batches of ``_BATCH_ROWS`` (16384) bars decoded one
        row group at a time, with pyarrow's pre-buffering off and a small read buffer,
        so a large row group is never held whole. Memory above what the caller had
        stays within two chunks (the one the caller still holds and the one being
        built) plus pyarrow's reader state, which does not grow with the chunk: about
        one page, its decompressed copy and the dictionary per column read (pyarrow
        writes 1 MiB pages and dictionaries), measured at 4-8 MiB for all six columns
        (``tests/bars/test_store_chunks.py`` checks 2.5 chunks + 12 MiB).

        The arguments are checked when this is called, not at the first chunk: a
        missing bound or an unknown symbol or column raises :class:`DataError` here.
        """
        cols = self._columns(columns)
        rows = _chunk_rows(max_bytes, max_rows, len(cols))
        self.entry(symbol)
        lo, hi = to_ns(start, _MIN_NS), to_ns(end, _MAX_NS)
        return self._iter_chunks(symbol, cols, lo, hi, rows)

    def _iter_chunks(self, symbol: str, cols: list[str], lo: int, hi: int, rows: int) -> Iterator[Bars]:
        reader = _RowReader(self, symbol, cols)
        plan = self._plan(symbol, cols, lo, hi, rows)
        try:
            for segments in plan:
                # Nothing in this frame refers to the chunk once it is yielded, so a
                # caller that drops it frees it before the next one is built.
                yield reader.fill(segments)
        finally:
            plan.close()
            reader.close()

    def _plan(self, symbol: str, cols: list[str], lo: int, hi: int, rows: int) -> Iterator[list[_Segment]]:
        """The chunks of :meth:`iter_chunks`, each a list of segments, worked out lazily.

        A file wholly inside the range that fits in the chunk being planned is taken
        whole without opening it; other files are opened (their footer) and planned
        row group by row group.
        """
        chunk: list[_Segment] = []
        n = 0
        for meta in self._files(symbol, lo, hi):
            if lo <= meta["first_ns"] and meta["last_ns"] <= hi and n + meta["rows"] <= rows:
                chunk.append(_Segment(meta, None, None, 0, meta["rows"]))
                n += meta["rows"]
                continue
            with closing(self._file_segments(meta, symbol, cols, lo, hi)) as segments:
                for seg in segments:
                    size = seg.stop - seg.start
                    if n + size <= rows:
                        chunk.append(seg)
                        n += size
                        continue
                    if chunk:
                        yield chunk
                    chunk, n = [], 0
                    if size <= rows:
                        chunk, n = [seg], size
                        continue
                    parts = -(-size // rows)  # a row group larger than a chunk: equal parts
                    cuts = [seg.start + size * i // parts for i in range(parts + 1)]
                    for a, b in pairwise(cuts):
                        yield [seg._replace(start=a, stop=b)]
        if chunk:
            yield chunk

    def read_head(self, symbol: str, max_rows: int, start: object = None, end: object = None,
                  columns: Sequence[str] | None = None) -> Bars:
        """The first ``max_rows`` bars of ``[start, end]`` (fewer if the range holds fewer).

        Equals ``read(symbol, start, end, columns)`` cut to its first ``max_rows`` bars,
        but opens only the files and decodes only the row groups those bars are in
        (and a row group straddling ``start`` twice: its timestamps first, to find
        where the range begins), so probing a symbol costs the same whatever the
        length of its history. The arrays are writable and owned by the result.
        """
        cols = self._columns(columns)
        if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or max_rows < 0:
            raise DataError(f"max_rows must be an integer >= 0, got {max_rows!r}", key="max_rows")
        self.entry(symbol)
        lo, hi = to_ns(start, _MIN_NS), to_ns(end, _MAX_NS)
        max_rows = int(max_rows)
        chosen: list[_Segment] = []
        n = 0
        for meta in self._files(symbol, lo, hi):
            if n == max_rows:
                break
            if lo <= meta["first_ns"] and meta["last_ns"] <= hi and n + meta["rows"] <= max_rows:
                chosen.append(_Segment(meta, None, None, 0, meta["rows"]))
                n += meta["rows"]
                continue
            with closing(self._file_segments(meta, symbol, cols, lo, hi)) as segments:
                for seg in segments:
                    take = min(seg.stop - seg.start, max_rows - n)
                    chosen.append(seg._replace(stop=seg.start + take))
                    n += take
                    if n == max_rows:
                        break
        reader = _RowReader(self, symbol, cols)
        try:
            return reader.fill(chosen)
        finally:
            reader.close()

    def rows_in_range(self, symbol: str, start: object = None, end: object = None) -> int:
        """The exact number of bars of ``symbol`` in ``[start, end]`` (inclusive).

        Files wholly inside the range count by the manifest (nothing is opened). Of a
        file straddling a bound, the footer is opened and its row groups counted by
        their timestamp statistics; only a row group straddling the bound has its
        timestamp column read (in batches), to count exactly.
        """
        entry = self.entry(symbol)
        lo, hi = to_ns(start, _MIN_NS), to_ns(end, _MAX_NS)
        key = (symbol, entry["fingerprint"], lo, hi)
        if key in self._counted:
            return self._counted[key]
        total = 0
        for meta in self._files(symbol, lo, hi):
            if lo <= meta["first_ns"] and meta["last_ns"] <= hi:
                total += meta["rows"]
                continue
            with closing(self._file_segments(meta, symbol, [], lo, hi)) as segments:
                total += sum(seg.stop - seg.start for seg in segments)
        self._counted[key] = total
        return total

    def row_groups(self, symbol: str, start: object = None, end: object = None) -> list[tuple[int, int, int]]:
        """``(first_ns, last_ns, rows)`` of every row group holding bars in ``[start, end]``, in time order.

        Whole row groups (``rows`` counts all their bars, also those outside the
        range), from the Parquet footers of the symbol's files in the range: only the
        footers are read, the first and last timestamps being the row groups'
        statistics (a file written without statistics has its timestamps read instead).
        A planner uses this to choose chunk lengths that :meth:`iter_chunks` keeps whole.
        """
        self.entry(symbol)
        lo, hi = to_ns(start, _MIN_NS), to_ns(end, _MAX_NS)
        out: list[tuple[int, int, int]] = []
        for meta in self._files(symbol, lo, hi):
            with self._reading(meta, symbol), self._parquet(meta, symbol, [], footer_only=True) as pf:
                md = pf.metadata
                for i in range(md.num_row_groups):
                    rows = md.row_group(i).num_rows
                    if rows == 0:
                        continue
                    bounds = _ts_stats(md, i)
                    if bounds is None:
                        bounds = _ts_bounds(pf, i)
                    if bounds[1] >= lo and bounds[0] <= hi:
                        out.append((bounds[0], bounds[1], rows))
        return out

    # ------------------------------------------------------------------ bounded reading: helpers
    def _file_segments(self, meta: dict[str, Any], symbol: str, cols: list[str], lo: int,
                       hi: int) -> Iterator[_Segment]:
        """The row groups of one file holding bars in ``[lo, hi]``, as segments with exact row bounds.

        Opens the file's footer; a row group that straddles a bound (by its timestamp
        statistics) has its timestamps streamed to find exactly where the range starts
        and ends in it. Lazy: a caller that stops early reads nothing further.
        """
        with self._reading(meta, symbol), self._parquet(meta, symbol, cols, footer_only=True) as pf:
            md = pf.metadata
            inside = lo <= meta["first_ns"] and meta["last_ns"] <= hi
            for i in range(md.num_row_groups):
                rows = md.row_group(i).num_rows
                if rows == 0:
                    continue
                bounds = None if inside else _ts_stats(md, i)
                if inside or (bounds is not None and lo <= bounds[0] and bounds[1] <= hi):
                    segment = _Segment(meta, md, i, 0, rows)
                elif bounds is not None and (bounds[1] < lo or bounds[0] > hi):
                    continue
                else:
                    a, b = _ts_range(pf, i, lo, hi)
                    if b <= a:
                        continue
                    segment = _Segment(meta, md, i, a, b)
                yield segment

    @contextmanager
    def _reading(self, meta: dict[str, Any], symbol: str) -> Iterator[None]:
        """Report failures of pyarrow or the filesystem as a StorageError naming the file."""
        try:
            yield
        except FileNotFoundError:
            raise StorageError("a data file listed in the manifest is missing", symbol=symbol,
                               file=self.storage.display(meta["path"]),
                               hint="the dataset was changed outside admf; re-ingest this symbol") from None
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise StorageError(f"cannot read data file: {exc}", symbol=symbol,
                               file=self.storage.display(meta["path"])) from None

    @contextmanager
    def _parquet(self, meta: dict[str, Any], symbol: str, cols: list[str], *, metadata: Any = None,
                 footer_only: bool = False) -> Iterator[_CheckedFile]:
        """One data file opened for bounded reads; its footer checked against the manifest.

        Pre-buffering is off and reads go through a ``_IO_BUFFER`` buffer, so pyarrow
        holds a page at a time per column, never a whole column chunk. Files of up to
        ``_WHOLE_FILE_ROWS`` rows are read in one call (one request on object storage)
        unless only the footer is wanted. Other filesystems than the local one are
        read without fsspec's read-ahead cache (s3fs's would fetch 50 MiB blocks).
        A file whose bars are read is checked against the manifest (:meth:`_check_bytes`; a file
        read in part: :meth:`_check_large`, the caller calling ``pf.check(groups)`` before it
        decodes row groups); of one opened for its footer only (planning), the size is checked.
        """
        handle = self._open_input(meta)
        try:
            source = handle
            check = _UNCHECKED
            if footer_only:  # no bars are used: the size only (known without reading on local disk)
                if "bytes" in meta and handle.size() != meta["bytes"]:
                    raise StorageError(f"data file has {handle.size():,} bytes, the manifest says "
                                       f"{meta['bytes']:,}", **self._damaged(meta, symbol))
            elif meta["rows"] <= _WHOLE_FILE_ROWS:
                data = handle.read()
                handle.close()
                self._check_bytes(meta, symbol, data)
                source = pa.BufferReader(data)
            else:
                check = self._check_large(meta, symbol, handle)
            pf = _CheckedFile(source, metadata=metadata, pre_buffer=False, buffer_size=_IO_BUFFER)
            pf.check = lambda groups: check(pf, groups)
            if metadata is None:
                _check_footer(pf, meta, symbol, cols, self.storage.display(meta["path"]))
            yield pf
        finally:
            handle.close()

    def to_dask(self, symbols: Iterable[str] | None = None, start: object = None, end: object = None,
                columns: Sequence[str] | None = None):
        """A lazy dask DataFrame over many symbols: one partition per symbol-year file.

        Columns: ``symbol``, ``timestamp`` (UTC) and the value columns. Partitions are
        read where the graph runs (on the workers), straight from storage.
        """
        import dask.dataframe as dd

        cols = self._columns(columns)
        lo, hi = to_ns(start, _MIN_NS), to_ns(end, _MAX_NS)
        names = self.symbols() if symbols is None else list(symbols)
        parts = [(self.ref, s, f, tuple(cols), lo, hi) for s in names for f in self._files(s, lo, hi)]
        meta = _partition_frame("", np.empty(0, np.int64), {c: np.empty(0) for c in cols})
        if not parts:
            return dd.from_pandas(meta, npartitions=1)
        return dd.from_map(_read_partition, parts, meta=meta, label="read-bars", enforce_metadata=False)

    # ------------------------------------------------------------------ writing
    def write(self, bars: Iterable[Bars], source: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write and commit symbols (added, or replaced if present); all or nothing.

        ``update(bars, mode="replace")``, returning the committed manifest. A symbol
        written again with the same bars is ``unchanged`` (no file is added); one
        whose new bars start with exactly the stored ones is recorded as an
        ``append``. If anything fails before the commit, the store is as it was.
        """
        return self.update(bars, mode="replace", source=source).manifest

    def write_frame(self, frame: Any, symbol: str | None = None, *, mode: str = "replace",
                    on_conflict: str | None = None, **options: Any) -> dict[str, Any]:
        """Write a pandas DataFrame of bars (one symbol, or a ``symbol`` column of many); all or nothing.

        Read as ``admf ingest`` reads a file (:func:`admf_dask.bars.ingest.frame_bars`; ``options``:
        ``tz``, ``repair``, ``adjust``, ``timestamp_unit``, ``drop_missing``), then
        ``update(bars, mode=, on_conflict=)`` (``replace`` by default, as :meth:`write`).
        Returns the committed manifest.
        """
        from .ingest import frame_bars
        from .update import check_mode

        check_mode(mode, on_conflict)
        bars = frame_bars(frame, symbol=symbol, **options)
        return self.update(bars, mode=mode, on_conflict=on_conflict,
                           source={"kind": "frame", "symbols": [b.symbol for b in bars]}).manifest

    def update(self, bars: Iterable[Bars], *, mode: str = "merge", on_conflict: str | None = None,
               source: dict[str, Any] | None = None, files: dict[str, str] | None = None,
               granularity: str | None = None) -> Update:
        """Commit new bars for some symbols, respecting their stored history; all or nothing.

        Parameters
        ----------
        bars:
            Validated bars, one per symbol (a symbol given twice is an error).
        mode:
            ``"merge"`` (the union by timestamp with the stored bars), ``"append"``
            (only bars after the stored last bar) or ``"replace"`` (the new bars become
            the symbol's history). See :mod:`admf_dask.bars.update`.
        on_conflict:
            In merge mode, a stored bar whose values differ from the new bar at the same
            timestamp is a DataError; ``"new"`` takes the new bar, ``"old"`` keeps the stored one.
        source:
            Recorded as the manifest's ``source``.
        files:
            The input file of each symbol, named in errors.
        granularity:
            Of a new dataset: ``"year"``, ``"decade"``, ``"symbol"``, or ``"auto"`` (from
            the bars' spacing, :func:`~admf_dask.bars.update.granularity_for`); None means
            ``year``. An existing dataset keeps its own; naming another is a ConfigError
            (convert it with :meth:`repack`).

        Each symbol's plan is staged against the manifest read at the start; at the
        commit, a symbol that another writer committed meanwhile is planned again on
        its new version (a merge or append is recomputed, and fails if it no longer
        holds). Returns the manifest and each symbol's :class:`SymbolChange`.
        """
        check_mode(mode, on_conflict)
        files = files or {}
        txn: Txn | None = None
        if granularity == "auto":
            bars = list(bars)
        try:
            base = self._read_base()
            layout = self._layout(base, granularity, lambda: granularity_for(bars))
            plans: dict[str, Plan] = {}
            planners: dict[str, Callable[[dict[str, Any] | None], Plan]] = {}
            for b in bars:
                if b.symbol in plans:
                    raise DataError("symbol given twice in one write", symbol=b.symbol, rule="symbol-unique")
                txn = txn or Txn(self.storage, hold=True)

                def planner(entry, b=b, txn=txn):
                    return plan_bars(self, txn, b, entry, mode=mode, on_conflict=on_conflict,
                                     file=files.get(b.symbol), granularity=layout)

                planners[b.symbol] = planner
                plans[b.symbol] = planner(base["symbols"].get(b.symbol))
            txn = txn or Txn(self.storage, hold=True)
            manifest = commit_plans(self, txn, plans, planners, source, layout)
        except BaseException:
            if txn is not None:
                txn.abort()
            raise
        return Update(manifest, {s: p.change for s, p in plans.items()})  # plans as finally committed

    def discard(self, entries: Iterable[dict[str, Any]]) -> None:
        """Remove what uncommitted entries staged (after a failed write): their transactions' staging."""
        for txn_id in {e["txn"] for e in entries if "txn" in e}:
            Txn(self.storage, txn_id).abort()

    def commit(self, entries: list[dict[str, Any]], source: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record entries from :func:`write_symbol_files` in the manifest: the commit point.

        Symbols in ``entries`` are added or replaced (``change`` is ``new``,
        ``unchanged``, ``append`` for a pure append, else ``replace``); others are
        kept. The entries' staged files are moved into place just before the
        manifest is written; files of replaced symbols that the new manifest no
        longer lists are removed afterwards.
        """
        seen = [e["symbol"] for e in entries]
        if len(set(seen)) != len(seen):
            dup = next(s for s in seen if seen.count(s) > 1)
            raise DataError("symbol given twice in one write", symbol=dup, rule="symbol-unique")
        txn_ids = sorted({e["txn"] for e in entries})
        txn = Txn(self.storage, txn_ids[0] if txn_ids else None)
        layouts = {e.get("granularity", "year") for e in entries}
        if len(layouts) > 1:
            raise DataError(f"entries of several granularities in one commit: {', '.join(sorted(layouts))}",
                            key="granularity")
        planners = {e["symbol"]: (lambda entry, e=e: plan_staged(self, e, entry)) for e in entries}
        base = self._read_base()
        layout = layouts.pop() if layouts else None
        if layout is not None:
            self._layout(base, layout, lambda: "year")
        plans = {s: planner(base["symbols"].get(s)) for s, planner in planners.items()}
        manifest = commit_plans(self, txn, plans, planners, source, layout)
        for other in txn_ids[1:]:
            Txn(self.storage, other).finish()
        return manifest

    def repack(self, granularity: str | None = None) -> dict[str, Any]:
        """Rewrite every symbol's files at ``granularity`` (None: from the bars' spacing); all or nothing.

        One transaction (staging, journal, one manifest commit, then the old files are
        removed): readers see the old files or the new ones. The bars, every symbol's
        fingerprint (it hashes calendar years, not files), ``change`` and ``lineage``,
        and the dataset fingerprint stay as they were, so caches keyed on them survive.
        A dataset already at ``granularity`` is rewritten only if some file entry predates
        ``file_sha256`` (the sha256 of the file's bytes, which reads check): the rewrite records it.
        Returns ``{"from", "to", "symbols", "files_before", "files_after", "fingerprint", "rewritten"}``.
        """
        base = self._read_base()
        if not base["symbols"] and not self.exists():
            raise StorageError("no bar dataset here (no _dataset.json)", file=self.url,
                               hint="create one with `admf generate` or `admf ingest`")
        have = granularity_of(base) or "year"
        if granularity is None:
            sample = [self.read_head(s, 64) for s in sorted(base["symbols"])[:16]]
            granularity = granularity_for(sample)
        target = check_granularity(granularity)
        out = {"from": have, "to": target, "symbols": len(base["symbols"]),
               "files_before": sum(len(e["files"]) for e in base["symbols"].values())}
        unrecorded = sum("file_sha256" not in f for e in base["symbols"].values() for f in e["files"])
        if (have == target and "granularity" in base or have == target == "year") and not unrecorded:
            return {**out, "files_after": out["files_before"], "fingerprint": base.get("fingerprint"), "rewritten": 0}
        txn = Txn(self.storage, hold=True)
        try:
            planners = {s: (lambda entry, s=s: plan_repack(self, txn, s, entry, target)) for s in base["symbols"]}
            if self.storage.is_local:
                plans = {s: planners[s](e) for s, e in base["symbols"].items()}
            else:  # object stores: overlap the requests of several symbols
                names = list(base["symbols"])
                plans = dict(zip(names, _file_pool().map(lambda s: planners[s](base["symbols"][s]), names)))
            manifest = commit_plans(self, txn, plans, planners, None, target, repack=True)
        except BaseException:
            txn.abort()
            raise
        return {**out, "files_after": sum(len(e["files"]) for e in manifest["symbols"].values()),
                "fingerprint": manifest.get("fingerprint"), "rewritten": out["files_before"]}

    def _layout(self, base: dict[str, Any], granularity: str | None, auto: Callable[[], str]) -> str:
        """The granularity a write uses: the dataset's own, or for a new dataset the one asked for."""
        have = granularity_of(base)
        if have is not None:
            if granularity not in (None, "auto", have):
                raise ConfigError(f"the dataset is stored by {have}, not {granularity}", key="granularity",
                                  file=self.url, hint=f"convert it first: admf repack {self.url} "
                                                      f"--granularity {granularity}")
            return have
        if granularity is None:
            return "year"
        return auto() if granularity == "auto" else check_granularity(granularity)

    def _read_base(self) -> dict[str, Any]:
        raw, _ = self.storage.read_versioned(MANIFEST)
        return self._parse(raw)

    def _parse(self, raw: bytes | None) -> dict[str, Any]:
        if raw is None:
            return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "symbols": {}}
        try:
            return self._check(json.loads(raw))
        except ValueError as exc:
            raise StorageError(f"corrupt JSON ({exc})", file=self.storage.display(MANIFEST),
                               hint="the file was damaged or written by something else") from None

_OPENED: dict[StorageRef, BarStore] = {}  # per process: stores by dataset, with their manifests, see BarStore.open
_READ_THREADS = 4  # reading is latency- and decode-bound; a few threads overlap both
def _in_dask_task() -> bool:
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False


_POOL = None


def _file_pool():
    """A process-wide thread pool for reading one symbol's files concurrently."""
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=_READ_THREADS, thread_name_prefix="admf-read")
    return _POOL


class _FileCache:
    """Whole data files fetched from an object store, kept per process (least recently used first out).

    Object stores have no page cache: a kept cluster that runs a second sweep over the same
    dataset would GET every bar file again, where local disk reads them from memory. A file
    is kept under its dataset's URL, its path and the manifest's record of its content
    (``sha256`` of its arrays and ``bytes``; the path holds the content hash too): a file of
    another content is another key, so a hit is the file the manifest a reader holds lists.
    Files without both records are not kept; a file is kept only once checked against them
    (:meth:`BarStore._check_bytes`). At most ``ADMF_BAR_CACHE_MB`` (default 64) MB in
    all, memory Dask does not see; 0 keeps none. Parsing and the row-count and type checks of
    :meth:`BarStore._read_file` run on every read, kept or not.
    """

    def __init__(self) -> None:
        import threading
        from collections import OrderedDict

        self._files: OrderedDict[tuple, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def limit() -> int:
        from ..faults import bar_cache_bytes

        return bar_cache_bytes()

    @staticmethod
    def key(url: str, meta: dict[str, Any]) -> tuple | None:
        if "sha256" not in meta or "bytes" not in meta:
            return None
        return url, meta["path"], meta["sha256"], meta["bytes"]

    def holds(self, key: tuple | None) -> bool:
        with self._lock:
            return key is not None and key in self._files

    def get(self, key: tuple | None) -> bytes | None:
        if key is None:
            return None
        with self._lock:
            data = self._files.get(key)
            if data is not None:
                self._files.move_to_end(key)
            return data

    def put(self, key: tuple | None, data: bytes) -> None:
        limit = self.limit()
        if key is None or len(data) != key[3] or len(data) > limit:
            return
        with self._lock:
            if key in self._files:
                return
            self._files[key] = data
            self._bytes += len(data)
            while self._bytes > limit:
                self._bytes -= len(self._files.popitem(last=False)[1])

    def clear(self) -> None:
        with self._lock:
            self._files.clear()
            self._bytes = 0


_FETCHED = _FileCache()


def _overlaps(stats: Any, lo: int, hi: int) -> bool:
    """Whether a row group's timestamp statistics may hold rows in [lo, hi] (no stats: assume yes)."""
    if stats is None or not stats.has_min_max:
        return True
    return int(stats.max_raw) >= lo and int(stats.min_raw) <= hi


def _arrays_digests(pf: pq.ParquetFile, rows: list[int]) -> list[str]:
    """sha256 of the arrays (``update._hash_arrays``) of consecutive runs of ``rows`` rows of a file, streamed
    one column at a time in record batches: an older entry's content hash, each of its ``groups``'."""
    hashers = [hashlib.sha256() for _ in rows]
    ends = np.cumsum(rows)
    for name in ["timestamp", *VALUE_COLUMNS]:
        at, k = 0, 0
        for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=[name], use_threads=False):
            column = batch.column(0)
            values = np.ascontiguousarray(column.cast(pa.int64()).to_numpy(zero_copy_only=False), "<i8") \
                if name == "timestamp" else np.ascontiguousarray(column.to_numpy(zero_copy_only=False), "<f8")
            i = 0
            while i < len(values) and k < len(rows):
                n = min(len(values) - i, int(ends[k]) - at)
                hashers[k].update(values[i:i + n])
                i, at = i + n, at + n
                if at == ends[k]:
                    k += 1
    return [h.hexdigest() for h in hashers]


# Bounded reads (iter_chunks, read_head, rows_in_range): pyarrow's read buffer per column
# (see BarStore._parquet), and rows per record batch decoded before being copied into a
# chunk's arrays: 128 KiB per column, whatever the chunk size. Batches proportional to
# the chunk cost memory for nothing (an eighth of a 16 MiB chunk, 43690 rows, even made
# mimalloc keep ~30 MiB more), and smaller ones only add per-batch overhead.
_IO_BUFFER = 64 << 10
_BATCH_ROWS = 1 << 14


def _chunk_rows(max_bytes: object, max_rows: object, ncols: int) -> int:
    """Bars per chunk from exactly one of ``max_bytes`` and ``max_rows`` (see BarStore.iter_chunks)."""
    if (max_bytes is None) == (max_rows is None):
        raise DataError("give exactly one of max_bytes and max_rows" if max_rows is not None else
                        "give max_bytes or max_rows: the chunk size has no default",
                        key="max_bytes" if max_rows is None else "max_bytes, max_rows")
    key, value = ("max_rows", max_rows) if max_bytes is None else ("max_bytes", max_bytes)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{key} must be an integer, got {value!r}", key=key)
    if key == "max_rows":
        if value < 1:
            raise DataError(f"max_rows must be >= 1, got {value}", key=key)
        return int(value)
    row_bytes = 8 * (1 + ncols)
    if value < row_bytes:
        raise DataError(f"max_bytes={value} is smaller than one bar ({row_bytes} bytes)", key=key)
    return int(value) // row_bytes


class _Segment(NamedTuple):
    """Rows ``[start, stop)`` of one data file: of its row group ``group``, or of the whole file if None."""

    meta: dict[str, Any]   # the file's manifest entry
    metadata: Any          # its pyarrow FileMetaData, when the footer was already read
    group: int | None
    start: int
    stop: int


class _RowReader:
    """Copies segments of data files, in order, into preallocated arrays: builds the chunks.

    One record-batch stream is open at a time (the row group being read); it stays
    open between chunks only when a chunk ends inside a row group, so the next
    chunk goes on from there instead of decoding the row group again. The file of
    the stream is the only one open.
    """

    def __init__(self, store: BarStore, symbol: str, cols: list[str]) -> None:
        self.store, self.symbol, self.cols = store, symbol, cols
        self.names = ["timestamp", *cols]
        self.path: str | None = None               # the open file, if any
        self.file = ExitStack()
        self.pf: _CheckedFile | None = None
        self.key: tuple[str, int | None] | None = None
        self.batches: Iterator[pa.RecordBatch] | None = None
        self.rows = 0                              # rows of the stream (row group or file)
        self.pos = 0                               # row of the stream at arrays[.][off]
        self.arrays: list[np.ndarray] = []
        self.off = self.length = 0

    def fill(self, segments: list[_Segment]) -> Bars:
        n = sum(s.stop - s.start for s in segments)
        out = [np.empty(n, np.int64), *(np.empty(n, np.float64) for _ in self.cols)]
        at = 0
        for seg in segments:
            with self.store._reading(seg.meta, self.symbol):
                at = self._copy(seg, out, at)
        return Bars(self.symbol, out[0], dict(zip(self.cols, out[1:])))

    def _copy(self, seg: _Segment, out: list[np.ndarray], at: int) -> int:
        if (seg.meta["path"], seg.group) != self.key or self.pos > seg.start:
            self._open(seg)
        while self.pos < seg.stop:
            if self.off == self.length:
                self._next_batch(seg)
            n = min(self.length - self.off, seg.stop - self.pos)
            if self.pos < seg.start:  # rows before the range (a row group straddling its start)
                n = min(n, seg.start - self.pos)
            else:
                for dst, src in zip(out, self.arrays):
                    dst[at:at + n] = src[self.off:self.off + n]
                at += n
            self.off += n
            self.pos += n
        if self.pos == self.rows:  # the stream is done: free its reader and last batch now
            self.batches, self.arrays, self.key = None, [], None
            self.off = self.length = 0
        return at

    def _open(self, seg: _Segment) -> None:
        self.batches, self.arrays, self.key = None, [], None
        self.off = self.length = 0
        if seg.meta["path"] != self.path:
            self.close()
            self.pf = self.file.enter_context(
                self.store._parquet(seg.meta, self.symbol, self.cols, metadata=seg.metadata))
            self.path = seg.meta["path"]
        md = self.pf.metadata
        self.rows = md.num_rows if seg.group is None else md.row_group(seg.group).num_rows
        self.pf.check(None if seg.group is None else [seg.group])
        self.batches = self.pf.iter_batches(batch_size=_BATCH_ROWS, columns=self.names, use_threads=False,
                                            row_groups=None if seg.group is None else [seg.group])
        self.key, self.pos = (seg.meta["path"], seg.group), 0

    def _next_batch(self, seg: _Segment) -> None:
        batch = next(self.batches, None)
        while batch is not None and batch.num_rows == 0:
            batch = next(self.batches, None)
        if batch is None:
            raise StorageError(f"data file ends at row {self.pos} of a stream of {self.rows}",
                               symbol=self.symbol, file=self.store.storage.display(seg.meta["path"]))
        self.arrays = [batch.column(0).view(pa.int64()).to_numpy(),
                       *(batch.column(i).to_numpy(zero_copy_only=False) for i in range(1, len(self.names)))]
        self.off, self.length = 0, batch.num_rows

    def close(self) -> None:
        self.batches, self.arrays, self.key, self.pf, self.path = None, [], None, None, None
        self.file.close()


def _hash_blocks(handle: Any, n: int) -> str:
    """sha256 (hex) of the next ``n`` bytes of a file, read in blocks of ``_IO_BUFFER`` (never held whole)."""
    h = hashlib.sha256()
    while n > 0 and (block := handle.read(min(n, _IO_BUFFER))):
        h.update(block)
        n -= len(block)
    return h.hexdigest()


def _UNCHECKED(pf: Any, groups: Any) -> None:
    """The row-group check of a file checked whole (or held in memory): nothing left to check."""


class _CheckedFile(pq.ParquetFile):
    """A data file opened by :meth:`BarStore._parquet`: ``check(groups)`` (None: all) before decoding row groups."""

    check: Callable[[Any], None]


def _check_footer(pf: pq.ParquetFile, meta: dict[str, Any], symbol: str, cols: list[str], where: str) -> None:
    if pf.metadata.num_rows != meta["rows"]:
        raise StorageError(f"data file has {pf.metadata.num_rows} rows, the manifest says {meta['rows']}",
                           symbol=symbol, file=where)
    schema = pf.schema_arrow
    for name in ["timestamp", *cols]:
        index = schema.get_field_index(name)
        if index < 0:
            raise StorageError(f"data file has no column {name!r}", symbol=symbol, file=where, key=name)
        if not schema.field(index).type.equals(ARROW_SCHEMA.field(name).type):
            raise StorageError(f"column {name!r} has type {schema.field(index).type}, expected "
                               f"{ARROW_SCHEMA.field(name).type}", symbol=symbol, file=where, key=name)


def _ts_stats(md: Any, group: int) -> tuple[int, int] | None:
    """(first, last) timestamp of a row group from its statistics, or None if it has none."""
    column = md.row_group(group).column(md.schema.names.index("timestamp"))
    stats = column.statistics if column.is_stats_set else None
    if stats is None or not stats.has_min_max:
        return None
    return int(stats.min_raw), int(stats.max_raw)


def _ts_batches(pf: pq.ParquetFile, group: int) -> Iterator[np.ndarray]:
    for b in pf.iter_batches(batch_size=_BATCH_ROWS, row_groups=[group], columns=["timestamp"], use_threads=False):
        if b.num_rows:
            yield b.column(0).view(pa.int64()).to_numpy()


def _ts_range(pf: pq.ParquetFile, group: int, lo: int, hi: int) -> tuple[int, int]:
    """Rows ``[a, b)`` of a row group inside ``[lo, hi]``, from its timestamps streamed in batches."""
    a = b = 0
    for ts in _ts_batches(pf, group):
        a += int(np.searchsorted(ts, lo, "left"))
        b += int(np.searchsorted(ts, hi, "right"))
        if ts[-1] > hi:  # timestamps are sorted: nothing further is in range
            break
    return a, b


def _ts_bounds(pf: pq.ParquetFile, group: int) -> tuple[int, int]:
    first = last = None
    for ts in _ts_batches(pf, group):
        first = int(ts[0]) if first is None else first
        last = int(ts[-1])
    return first, last


def _partition_frame(symbol: str, timestamp: np.ndarray, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    frame = pd.DataFrame({"symbol": pd.array([symbol] * len(timestamp), dtype="string"),
                          "timestamp": pd.DatetimeIndex(timestamp.view("datetime64[ns]")).tz_localize("UTC")})
    for c, v in columns.items():
        frame[c] = v
    return frame


def _read_partition(part: tuple) -> pd.DataFrame:
    """One partition of :meth:`BarStore.to_dask`: runs on a worker."""
    ref, symbol, meta, cols, lo, hi = part
    table = BarStore.open(ref)._read_file(meta, symbol, list(cols), lo, hi)
    bars = Bars.from_arrow(symbol, table)
    return _partition_frame(symbol, bars.timestamp, bars.columns)
