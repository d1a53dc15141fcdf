"""Memory budgets: how much one task may hold, and how many bars of a symbol fit in a chunk.

A task's memory is its inputs (bars, indicator rows), its timelines and its
portfolio accumulators. Each grows with the bars it holds at once, so the engine
holds a bounded *chunk* of a symbol's history at a time and carries the state of
every kernel from one chunk to the next (see :mod:`admf_dask.kernels.state`). The
budget is what a task may hold; Dask's worker ``memory_limit`` is the hard wall,
and the budget sits well below it (Dask starts spilling at 60 % of the limit and
pauses a worker at 80 %, and a worker's own code and libraries take a share).

``memory_budget`` is a setting of sweeps, signal sets and replays (config key,
workflow key, ``--memory-budget 256MiB`` on the command line): bytes as an int or
a string such as ``"256MiB"`` or ``"1 GB"``. Unset, it comes from the cluster:
:func:`default_budget` of the workers' memory limit and threads.

Examples
--------
>>> parse_budget("256MiB")
268435456
>>> parse_budget("lots")
Traceback (most recent call last):
...
admf_dask.errors.ConfigError: memory_budget must be a size such as 256MiB or 1GB, got 'lots' [key memory_budget]
>>> chunk_rows(64 << 20, symbols=1, sets=10, payload_bytes=208)
137518
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError

__all__ = ["BAR_BYTES", "budget_error", "chunk_bytes", "chunk_rows", "default_budget", "format_bytes",
           "parse_budget", "whole_bytes", "worker_memory"]

# Bytes one bar of one symbol costs a streaming container, per chunk:
# the six bar columns (int64 timestamp + five float64) are held by the reader while it
# builds the next chunk (at most ~2.5 chunks of them, see BarStore.iter_chunks) and once
# more in the buffer that puts the halo in front of the chunk; the kernel's one equity
# row per parameter set is a scratch of 8 bytes a bar.
BAR_BYTES = 6 * 8 * 4 + 8
# The default budget keeps a worker under half its memory limit: its own memory (the
# interpreter, numpy, pyarrow, dask and the loaded kernels: ~360 MB measured on a worker
# that has run a sweep) plus one budget per thread. Dask starts spilling at 60 % of the
# limit and pauses the worker at 80 %; the rest is headroom for what no budget counts
# (allocator fragmentation, the reader's read-ahead, pyarrow's pools). At 40 % of the
# limit per thread on top of that, one 900-set minute sweep peaked at 98 % of the pause
# threshold on a 1 GiB worker.
_SHARE = 0.5
_WORKER_BASE = 384 << 20  # a worker's own memory
_MIN_DEFAULT, _MAX_DEFAULT = 64 << 20, 4 << 30
_UNKNOWN_LIMIT = 4 << 30  # a worker without a memory limit (or a threads cluster): assume this


def parse_budget(value: Any, key: str = "memory_budget") -> int | None:
    """Bytes from an int or a size string ("256MiB", "1 GB"); None stays None. ConfigError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a size such as 256MiB or 1GB, got {value!r}", key=key)
    if isinstance(value, (int, float)):
        size = value
    else:
        from dask.utils import parse_bytes

        try:
            size = parse_bytes(str(value).strip())
        except (ValueError, TypeError):
            raise ConfigError(f"{key} must be a size such as 256MiB or 1GB, got {value!r}", key=key) from None
    if not math.isfinite(size) or size <= 0:
        raise ConfigError(f"{key} must be a positive size, got {value!r}", key=key)
    return int(size)


def format_bytes(n: float) -> str:
    """``268435456`` -> ``"256 MiB"``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def worker_memory(client: Any) -> tuple[int, int]:
    """The smallest worker memory limit on the cluster (bytes; 0 if none is set) and the most threads a worker runs."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    limits = [int(w.get("memory_limit") or 0) for w in workers.values()]
    threads = [int(w.get("nthreads") or 1) for w in workers.values()]
    limit = min((v for v in limits if v > 0), default=0)
    return limit, max(threads, default=1)


def default_budget(limit: int, threads: int) -> int:
    """The budget of a task when none is given: half the worker's memory limit, less the
    worker's own memory (384 MiB), shared by its threads; 64 MiB to 4 GiB.

    A constant for the worker's own memory, not a reading: the same cluster gives the
    same chunks (and so the same chunk cache keys) in every run.

    >>> format_bytes(default_budget(1 << 30, 1))
    '128 MiB'
    >>> format_bytes(default_budget(8 << 30, 2))
    '1.81 GiB'
    """
    limit = limit or _UNKNOWN_LIMIT
    spare = _SHARE * limit - _WORKER_BASE
    return int(min(max(spare / max(threads, 1), _MIN_DEFAULT), _MAX_DEFAULT))


def budget_error(budget: int, limit: int, threads: int, min_bytes: int, what: str) -> ConfigError | None:
    """The error for a budget the cluster cannot hold, or that cannot hold one chunk; None if it is fine.

    ``min_bytes`` is the memory of the smallest chunk (the longest halo plus one bar, one
    symbol, one parameter set) and ``what`` says what needs it.
    """
    if budget < min_bytes:
        return ConfigError(f"memory_budget {format_bytes(budget)} is smaller than one chunk of {what} needs "
                           f"({format_bytes(min_bytes)}: the longest halo plus one bar)", key="memory_budget",
                           hint=f"give at least --memory-budget {math.ceil(min_bytes / (1 << 20))}MiB")
    if limit and budget * threads > limit:
        return ConfigError(f"memory_budget {format_bytes(budget)} per task is over the workers' memory limit "
                           f"({format_bytes(limit)} per worker, {threads} task(s) at a time each)",
                           key="memory_budget",
                           hint=f"give at most --memory-budget {format_bytes(limit // threads).replace(' ', '')}, "
                                f"or start workers with more memory")
    return None


def chunk_bytes(rows: int, *, symbols: int, sets: int, payload_bytes: float, aligned: bool = True) -> int:
    """Bytes a streaming container of ``symbols`` x ``sets`` holds with chunks of ``rows`` bars.

    Per bar of each symbol: the bar columns (:data:`BAR_BYTES`) and the payload (the
    indicator rows, or a replay's signal rows); per bar of the group's timeline: the
    portfolio accumulator, one float per set (the timeline of symbols with different
    bar times can be up to ``symbols`` times as long).
    """
    return int(rows * (symbols * (BAR_BYTES + payload_bytes) + 8 * sets * (1 if aligned else symbols)))


def chunk_rows(budget: int, *, symbols: int, sets: int, payload_bytes: float, aligned: bool = True) -> int:
    """Bars per symbol per chunk that a streaming container holds within ``budget`` (see :func:`chunk_bytes`)."""
    return max(0, int(budget // chunk_bytes(1, symbols=symbols, sets=sets, payload_bytes=payload_bytes,
                                            aligned=aligned)))


def whole_bytes(bars: Mapping[str, int], sets: int, payload_bytes: float, aligned: bool = True) -> int:
    """Bytes a whole-series container holds, or the hub task that builds one of its symbols' inputs needs.

    The container: its symbols' bars and payload, and the accumulators on their timeline.
    The hub task, for the longest symbol: the store read (up to :data:`BAR_BYTES` a bar
    while the Parquet pages are decoded) and the payload twice (the indicator rows and
    their cache pack). A 20-year minute symbol that the container alone would hold
    in 272 MB needs 656 MB in the hub.
    """
    total = sum(bars.values())
    longest = max(bars.values(), default=0)
    timeline = longest if aligned else total
    held = total * (6 * 8 + payload_bytes) + timeline * 8 * (sets + 2)
    return int(max(held, longest * (BAR_BYTES + 2 * payload_bytes)))
