"""Streaming: a symbol's history as bounded time chunks, with every kernel's state carried across them.

A task that must not hold a symbol's whole history reads it as a sequence of
chunks from the bar store (:meth:`~admf_dask.bars.BarStore.iter_chunks`, aligned to
row groups, at most ``rows`` bars each). A :class:`SymbolStream` keeps, across
chunks, the last ``halo`` bars (what the indicator kernels read before a chunk,
see :mod:`admf_dask.kernels.indicators`) and hands each new chunk, halo in front,
to a *payload builder* that turns it into the rows a backtest kernel reads
(indicator rows, target rows of a user strategy, stored signal rows), carrying its
own states. The backtest kernels then advance their run states over the chunk
(:mod:`admf_dask.kernels.state`).

Several symbols are processed in *lockstep* (:func:`windows`): each step cuts every
symbol at the same timestamp, the earliest last bar among the chunks at hand, so
the equal-weight portfolio accumulators of a step cover one window of the group's
timeline and nothing grows with the history. The cuts depend only on the data and
the chunk length, and the results do not depend on the cuts at all.

Memory of a stream: at most two chunks of bars (the one being consumed and the
next being built), the halo, the payload rows of one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bars.schema import VALUE_COLUMNS
from .kernels.stats import PeriodsPerYearStream

__all__ = ["Piece", "SymbolStream", "Window", "windows"]

_PRICES = ("open", "high", "low", "close")

# A payload builder: (columns (timestamp and the value columns) with ``hb`` halo bars in
# front, hb, t0 = global index of the first new bar, out = rows of the new bars to fill) -> None.
Builder = Callable[[dict[str, np.ndarray], int, int, np.ndarray], None]


@dataclass(frozen=True)
class Piece:
    """One symbol's bars between two cuts, as a chunk kernel takes them.

    ``columns`` (open, high, low, close, volume) and ``payload`` (rows x bars) hold
    ``h`` halo bars (0 or 1: the bar before the piece) then the piece's ``n`` bars;
    ``stamps`` are the piece's own timestamps; ``t0`` is the global index of its
    first bar (bars of the symbol's range before it).
    """

    symbol: str
    stamps: np.ndarray
    columns: dict[str, np.ndarray]
    payload: np.ndarray | None
    h: int
    t0: int

    @property
    def n(self) -> int:
        return len(self.stamps)


class SymbolStream:
    """One symbol's bars in ``[start, end]`` chunk by chunk, with the payload rows of each bar.

    Parameters
    ----------
    store, symbol, start, end
        Where the bars are.
    rows
        Bars per chunk read from the store (aligned to row groups; see ``iter_chunks``).
    halo
        Bars before each chunk the payload builder needs (the longest indicator halo,
        or a user strategy's lookback); 0 for none.
    payload_rows, dtype, build
        The payload: ``payload_rows`` rows of ``dtype`` per bar, filled by ``build``
        (see :data:`Builder`) for each chunk's new bars. No payload when 0.
    """

    def __init__(self, store: Any, symbol: str, start: Any, end: Any, rows: int, halo: int,
                 payload_rows: int = 0, dtype: Any = np.float64, build: Builder | None = None) -> None:
        self.symbol = symbol
        self._chunks = store.iter_chunks(symbol, start=start, end=end, max_rows=max(1, int(rows)))
        self._halo = max(1, int(halo))  # at least the bar before a chunk, which the kernels read
        self._rows, self._dtype, self._build = payload_rows, dtype, build
        self._tail: dict[str, np.ndarray] | None = None  # the last `halo` bars read (copies)
        self._stamps = np.empty(0, np.int64)  # the buffer: its bars' timestamps ...
        self._cols: dict[str, np.ndarray] = {}  # ... columns and payload, with k halo bars in front
        self._payload: np.ndarray | None = None
        self._k = 0  # halo bars in front of the buffer (the bar before its first new bar, once there is one)
        self._pos = 0  # next unconsumed bar of the buffer (index into _stamps)
        self._base = 0  # global index of the buffer's first new bar
        self.seen = 0  # bars read so far
        self.first_close = np.nan
        self.last_close = np.nan
        self.done = False  # no more chunks in the store
        self.spacing = PeriodsPerYearStream()  # the symbol's periods per year, bar spacing by bar spacing

    # -- carrying over to a later run (admf_dask.sweep.incremental)
    def restore(self, seen: int, tail: dict[str, np.ndarray], payload_last: np.ndarray, first_close: float,
                last_close: float, spacing: PeriodsPerYearStream) -> None:
        """Go on from a stream that stopped after ``seen`` bars: its last bars, payload column and counters.

        Make the stream with ``start`` after that stream's last bar; its bars are then
        numbered from ``seen`` on, with ``tail`` as the halo before them.
        """
        self.seen, self.first_close, self.last_close, self.spacing = int(seen), first_close, last_close, spacing
        self._tail = {c: np.asarray(v) for c, v in tail.items()}
        self._payload = np.asarray(payload_last).reshape(-1, 1) if self._rows else None
        self._base = self.seen

    def tail(self) -> dict[str, np.ndarray]:
        """The last ``max(1, halo)`` bars read (timestamp and value columns), what :meth:`restore` takes."""
        return self._tail

    def last_payload(self) -> np.ndarray:
        """The payload rows' values at the last bar read (empty without payload)."""
        if self._payload is None:
            return np.empty(0)
        return np.ascontiguousarray(self._payload[:, -1])

    # -- reading
    def _fetch(self) -> bool:
        """Read the next chunk into the buffer (the old buffer must be consumed). False at the end."""
        chunk = next(self._chunks, None)
        if chunk is None:
            self.done = True
            return False
        n = len(chunk)
        names = ("timestamp", *VALUE_COLUMNS)
        new = {"timestamp": chunk.timestamp, **{c: chunk.columns[c] for c in VALUE_COLUMNS}}
        tail = self._tail
        hb = 0 if tail is None else len(tail["timestamp"])
        full = new if hb == 0 else {c: np.concatenate([tail[c], new[c]]) for c in names}
        k = 1 if self.seen > 0 else 0
        payload = None
        if self._rows:
            payload = np.empty((self._rows, k + n), dtype=self._dtype)
            if k:
                payload[:, 0] = self._payload[:, -1]
            self._build(full, hb, self.seen, payload[:, k:])
        self.spacing.update(chunk.timestamp)
        if self.seen == 0:
            self.first_close = float(chunk.columns["close"][0])
        self.last_close = float(chunk.columns["close"][n - 1])
        start = hb - k  # keep one halo bar before the new ones for the kernels
        self._stamps = full["timestamp"][hb:]
        self._cols = {c: full[c][start:] for c in VALUE_COLUMNS}
        self._payload = payload
        self._k, self._pos, self._base = k, 0, self.seen
        self.seen += n
        if self._halo:
            keep = min(self._halo, len(full["timestamp"]))
            self._tail = {c: full[c][-keep:].copy() for c in names}
        return True

    def pending(self) -> bool:
        """Whether bars are left (reading the next chunk if the buffer is used up)."""
        while self._pos >= len(self._stamps):
            if self.done or not self._fetch():
                return False
        return True

    def last_stamp(self) -> int:
        """The timestamp of the last bar at hand (call after :meth:`pending` returned True)."""
        return int(self._stamps[-1])

    def take(self, cut: int) -> Piece:
        """The bars at hand up to and including timestamp ``cut`` (possibly none), consumed."""
        a = self._pos
        b = int(np.searchsorted(self._stamps, cut, side="right")) if a < len(self._stamps) else a
        b = max(a, b)
        t0 = self._base + a
        h = 1 if t0 > 0 else 0
        lo, hi = a + self._k - h, b + self._k
        cols = {c: v[lo:hi] for c, v in self._cols.items()}
        payload = self._payload[:, lo:hi] if self._payload is not None else None
        self._pos = b
        return Piece(self.symbol, self._stamps[a:b], cols, payload, h, t0)


@dataclass(frozen=True)
class Window:
    """One lockstep step: the group's timeline up to ``cut`` and each symbol's piece on it.

    ``positions[i]`` places piece ``i``'s bars on ``stamps`` (None when every symbol has
    the same bars in the window: then the positions are ``0 .. len(stamps) - 1`` and not
    stored per symbol).
    """

    stamps: np.ndarray
    pieces: tuple[Piece, ...]
    positions: tuple[np.ndarray, ...] | None

    def position(self, i: int) -> np.ndarray:
        if self.positions is None:
            return np.arange(len(self.stamps), dtype=np.int64)
        return self.positions[i]


def windows(streams: Sequence[SymbolStream]) -> Iterator[Window]:
    """Advance the streams together: each step takes every bar up to the earliest last bar at hand.

    So at least one stream uses up its chunk per step, and no stream holds more than
    its current chunk and the next. Every bar of every stream lands in exactly one
    window, in time order.
    """
    while True:
        live = [s for s in streams if s.pending()]
        if not live:
            return
        cut = min(s.last_stamp() for s in live)
        pieces = tuple(s.take(cut) for s in streams)
        stamps = [p.stamps for p in pieces]
        first = stamps[0]
        if all(len(s) == len(first) for s in stamps) and all(np.array_equal(s, first) for s in stamps[1:]):
            yield Window(first, pieces, None)
            continue
        union = np.unique(np.concatenate(stamps))
        yield Window(union, pieces, tuple(np.searchsorted(union, s).astype(np.int64) for s in stamps))
