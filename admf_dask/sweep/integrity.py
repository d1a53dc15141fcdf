"""Integrity of committed work: what a task's done marker records, and what resume and assembly check.

A task commits by writing its marker ``done/part-<j>.json`` last, after its files.
The marker records:

===========  ==================================================================
``files``    every file the part wrote, relative to the run: ``{name: {"size",
             "sha256"}}`` (its results part, its portfolio accumulators ``.acc``
             and their windows, its saved engine state)
``layout``   the token of the run's task layout (:func:`layout_token`)
``symbols``  the task's symbol group, ``lo``/``hi`` its parameter-set range
===========  ==================================================================

Resume trusts a marker only if its layout token and bounds are those of part ``j``
of the run's layout and every file it lists has the recorded size and sha256
(:func:`verify_committed`); a part that fails is recomputed, and the run's summary
counts it (``recomputed_parts``). The portfolio reduce checks each accumulator file
it reads against its record, and the final assembly checks each results part
(:func:`check_file`) and that every parameter set has exactly one row per symbol and
one PORTFOLIO row (:func:`check_block`): a failure there is a StorageError, never a
table with a duplicated or missing row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..config import token
from ..errors import StorageError

__all__ = ["check_block", "check_file", "commit", "digest", "layout_token", "read_checked", "verify_committed"]

_RERUN = "rerun the same command: parts that fail their check are recomputed"


def digest(data: bytes | Sequence[Any]) -> dict[str, Any]:
    """The record of a file's bytes (bytes, or buffers written one after the other): size and sha256."""
    h = hashlib.sha256()
    size = 0
    for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
        view = memoryview(chunk).cast("B")
        h.update(view)
        size += view.nbytes
    return {"size": size, "sha256": h.hexdigest()}


def layout_token(layout: Sequence[Sequence[Any]]) -> str:
    """The token of a task layout (``[group, lo, hi, streamed]`` per part): which layout a part belongs to."""
    return token([[list(g), int(lo), int(hi), bool(rest[0]) if rest else False]
                  for g, lo, hi, *rest in layout])[:16]


def marker(task: Any, rows: int, files: Mapping[str, Mapping[str, Any]], **extra: Any) -> dict[str, Any]:
    """Part ``task.part``'s done marker: its bounds, the layout's token, ``files`` (name: record), ``extra``."""
    return {"part": task.part, "rows": rows, "symbols": list(task.symbols), "lo": task.lo, "hi": task.hi,
            "layout": task.layout, "files": dict(files), **extra}


def marker_name(part: int) -> str:
    """Where part ``part``'s done marker is, relative to the run's root."""
    return f"done/part-{part:06d}.json"


def commit(storage: Any, task: Any, rows: int, files: Mapping[str, Mapping[str, Any]],
           **extra: Any) -> dict[str, Any]:
    """Write part ``task.part``'s done marker, last: its bounds, the layout's token, ``files`` (name: record).

    Returns the marker as written: the task hands it to the driver, whose portfolio reduce
    then need not read it back.
    """
    done = marker(task, rows, files, **extra)
    storage.write_json(done, marker_name(task.part))
    return done


def _mismatch(storage: Any, name: str, record: Mapping[str, Any]) -> str | None:
    """Why a file does not match its record (missing, size, checksum), or None."""
    path = storage.path(name)
    try:
        size = storage.fs.size(path)
    except (FileNotFoundError, OSError):
        return f"{name} is missing"
    if size != record["size"]:
        return _size_mismatch(name, size, record)
    h = hashlib.sha256()
    with storage.fs.open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"{name} fails its checksum" if h.hexdigest() != record["sha256"] else None


def _size_mismatch(name: str, size: int, record: Mapping[str, Any]) -> str:
    return f"{name} has {size} bytes, {record['size']} recorded"


def check_file(storage: Any, name: str, record: Mapping[str, Any] | None) -> None:
    """Raise a StorageError naming ``name`` unless it matches its commit ``record`` (None: no record, no check)."""
    if record is None:
        return
    problem = _mismatch(storage, name, record)
    if problem is not None:
        raise StorageError(f"committed file changed since its commit: {problem}", file=storage.display(name),
                           hint=_RERUN)


def read_checked(storage: Any, name: str, record: Mapping[str, Any] | None) -> bytes:
    """A committed file's bytes, checked against its ``record`` (size, sha256; None: unchecked)."""
    if record is None:
        return storage.read_bytes(name)
    raw = storage.read_optional(name)
    problem = (f"{name} is missing" if raw is None else _size_mismatch(name, len(raw), record)
               if len(raw) != record["size"] else
               f"{name} fails its checksum" if hashlib.sha256(raw).hexdigest() != record["sha256"] else None)
    if problem is not None:  # worded as check_file words it
        raise StorageError(f"committed file changed since its commit: {problem}", file=storage.display(name),
                           hint=_RERUN)
    return raw


def marker_problem(storage: Any, marker: Any, part: tuple[Sequence[str], int, int], layout: str) -> str | None:
    """Why a done marker cannot be trusted for ``part`` (group, lo, hi) of the layout ``layout``, or None."""
    if not isinstance(marker, dict) or "files" not in marker:
        return "its marker records no files (an older or foreign commit)"
    if marker.get("layout") != layout:
        return "it belongs to another task layout"
    group, lo, hi = part
    if list(marker.get("symbols", ())) != list(group) or (marker.get("lo"), marker.get("hi")) != (lo, hi):
        return "its marker's symbols or set range are not the layout's"
    for name, record in sorted(marker["files"].items()):
        problem = _mismatch(storage, name, record)
        if problem is not None:
            return problem
    return None


def verify_committed(storage: Any, parts: Sequence[int], layout: Sequence[Sequence[Any]],
                     token_: str) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """The committed parts (``parts``: those with a done marker) that pass their checks, with their markers,
    and why the others fail.

    A failing part's marker is removed, so that it is recomputed (and is not trusted
    again if this run is interrupted first). Markers beyond the layout are ignored.
    """
    good: dict[int, dict[str, Any]] = {}
    bad: dict[int, str] = {}
    for j in sorted(parts):
        if j >= len(layout):
            continue
        name = f"done/part-{j:06d}.json"
        try:
            marker = storage.read_json(name)
        except StorageError as exc:
            marker = None
            bad[j] = f"its marker is unreadable ({exc.message})"
        if j not in bad:
            problem = marker_problem(storage, marker, tuple(layout[j][:3]), token_)
            if problem is None:
                good[j] = marker
                continue
            bad[j] = problem
        storage.remove([name])
    return good, bad


def check_block(set_id: np.ndarray, symbol: Sequence[str], a: int, b: int, symbols: Sequence[str],
                portfolio: str, where: str) -> None:
    """Raise a StorageError unless sets [a, b) have exactly one row per symbol and one ``portfolio`` row each.

    ``set_id`` and ``symbol`` are the block's columns, sorted by set id, then symbol, the
    portfolio row last (as :func:`~admf_dask.sweep.results._block` sorts them).
    """
    names = sorted(symbols) + [portfolio]
    k = len(names)
    if len(set_id) == (b - a) * k and np.array_equal(set_id, np.repeat(np.arange(a, b, dtype=np.int64), k)) \
            and list(symbol) == names * (b - a):
        return
    from collections import Counter

    seen = Counter(zip((int(s) for s in set_id), symbol))
    dup = sorted(key for key, n in seen.items() if n > 1)
    missing = sorted((s, n) for s in range(a, b) for n in names if (s, n) not in seen)
    extra = sorted(key for key in seen if not (a <= key[0] < b) or key[1] not in names)
    what = []
    for label, keys in (("duplicated", dup), ("missing", missing), ("unexpected", extra)):
        if keys:
            what.append(f"{len(keys)} {label} (set, symbol) row(s), first {keys[0]}")
    raise StorageError(f"the committed parts do not make a complete table: {'; '.join(what) or 'rows out of order'}",
                       file=where, hint="rerun with --force to recompute the run")
