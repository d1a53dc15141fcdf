"""The indicator hub: each unique indicator is computed once per symbol and then shared.

Three levels, checked in this order for every (symbol, bar range, indicator spec):

1. **Memory.** An :class:`IndicatorSet` (the symbol's bars plus the arrays of every
   spec of a plan) lives in worker memory under a deterministic Dask key. Later
   tasks and later sweeps of the same session receive it by key; it never travels
   through the client. A new plan for the same symbol starts from the sets already
   held, so only specs new to the session are looked up further.
2. **Storage.** Computed indicators that cost more to compute than to store and load
   back (:func:`worth_storing`: their measured compute time against their bytes; on
   daily bars no built-in indicator does, an SMA of 2,520 bars computes in a third of
   its load cost) are written to the cache root, content
   addressed by (symbol data fingerprint and bar range, package version), one pack
   per hub task holding every such indicator it computed, keyed inside by spec token::

       <cache root>/indicators/v<version>/<data key>/pack-<hash of its tokens>.pack

   A new session (or another machine) loads them instead of recomputing. Each
   indicator carries a sha256 of its arrays; one that fails its checksum or shape,
   or sits in a pack that does not load, is counted as corrupt, recomputed and
   written again (an unreadable pack is removed), never used.
   Changed data has another fingerprint and so another data key: a miss.
3. **Compute.** The kernels run on the bars, once per unique spec.

Counters (:class:`HubCounters`) say how many indicators were computed (and of those,
how many were ``cheap``: cheaper to compute than to load, so not stored, and computed
again by the next session), reused from memory and loaded from storage, and the hit
rate; run summaries print them. Within a run every set is still built once per symbol
and shared from worker memory by every task that needs it; the storage cache only
decides what a later session loads rather than computes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import posixpath
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import __version__
from .bars import BarStore, Bars
from .config import token
from .indicators import _COMPUTED, IndicatorPlan, IndicatorSpec
from .storage import StorageRef, replacing

__all__ = ["HubCounters", "IndicatorCache", "IndicatorHub", "IndicatorSet", "IndicatorStream", "InlineSet",
           "MappedSet", "build_indicator_set", "build_mapped_set", "resolve", "stream_key"]


@dataclass
class HubCounters:
    """How the hub served indicator requests (one count per spec per symbol)."""

    computed: int = 0
    reused_memory: int = 0
    loaded_storage: int = 0
    corrupt: int = 0
    cheap: int = 0  # of the computed: cheaper to compute than to write and load back, so not stored (see worth_storing)

    @property
    def served(self) -> int:
        return self.computed + self.reused_memory + self.loaded_storage

    @property
    def hit_rate(self) -> float:
        """Share of requests served without computing (memory or storage)."""
        return (self.reused_memory + self.loaded_storage) / self.served if self.served else 0.0

    def add(self, other: HubCounters) -> HubCounters:
        for name in ("computed", "reused_memory", "loaded_storage", "corrupt", "cheap"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def as_dict(self) -> dict[str, float]:
        return {"computed": self.computed, "reused_memory": self.reused_memory,
                "loaded_storage": self.loaded_storage, "corrupt": self.corrupt, "cheap": self.cheap,
                "hit_rate": round(self.hit_rate, 4)}

    def line(self) -> str:
        cheap = f" ({self.cheap} cheaper to compute than to load: not stored)" if self.cheap else ""
        return (f"indicators: {self.computed} computed{cheap}, {self.reused_memory} reused from memory, "
                f"{self.loaded_storage} loaded from storage ({self.corrupt} corrupt entries replaced); "
                f"hit rate {self.hit_rate:.0%}")


@dataclass
class IndicatorSet:
    """One symbol's bars and indicator arrays: ``values[spec.token][output]``.

    Every array is a row of one float64 matrix (``matrix``, row numbers in
    ``rows`` by ``(token, output)``), stacked once when the set is made. A batch's
    kernel reads its indicator rows straight from it (:meth:`stacked`), instead of
    copying them into a matrix of its own per task and symbol: on minute bars that
    copy (tens of MB of freshly mapped pages) cost as much as the kernel itself.
    Pickled as the matrix, so moving a set between workers moves one buffer.
    ``states`` holds, for the indicators computed on these bars (not loaded from the
    storage cache), each kernel's state at the last bar: what an incremental run goes
    on from when bars are appended (:mod:`admf_dask.sweep.incremental`).
    """

    symbol: str
    data_key: str
    bars: Bars
    values: dict[str, dict[str, np.ndarray]]
    counters: HubCounters = field(default_factory=HubCounters)
    states: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [(tok, out) for tok, outputs in self.values.items() for out in outputs]
        matrix = np.empty((len(names), len(self.bars)))
        for i, (tok, out) in enumerate(names):
            matrix[i] = self.values[tok][out]
        self._adopt(matrix, names)

    @classmethod
    def from_matrix(cls, symbol: str, data_key: str, bars: Bars, matrix: np.ndarray,
                    names: list[tuple[str, str]], counters: HubCounters,
                    states: dict[str, np.ndarray] | None = None) -> IndicatorSet:
        """A set over an already stacked matrix (row ``i`` is ``names[i]``), without copying it."""
        obj = cls.__new__(cls)
        obj.symbol, obj.data_key, obj.bars, obj.counters = symbol, data_key, bars, counters
        obj.states = dict(states or {})
        obj._adopt(matrix, names)
        return obj

    def _adopt(self, matrix: np.ndarray, names: list[tuple[str, str]]) -> None:
        # The arrays handed out (values, get) are read-only views: the set is shared by
        # every task that reads it. The matrix itself is left as it is, so the kernels
        # (which only read it) compile one signature for it and for the arrays tests pass.
        self.matrix = matrix
        self.rows = {name: i for i, name in enumerate(names)}
        values: dict[str, dict[str, np.ndarray]] = {}
        for i, (tok, out) in enumerate(names):
            view = matrix[i]
            view.flags.writeable = False
            values.setdefault(tok, {})[out] = view
        self.values = values

    def __getstate__(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "data_key": self.data_key, "bars": self.bars, "counters": self.counters,
                "matrix": self.matrix, "names": list(self.rows), "states": self.states}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.symbol, self.data_key, self.bars = state["symbol"], state["data_key"], state["bars"]
        self.counters, self.states = state["counters"], state.get("states", {})
        self._adopt(state["matrix"], [tuple(n) for n in state["names"]])

    def stacked(self, rows: Sequence[tuple[str, str | None]]) -> tuple[np.ndarray, np.ndarray] | None:
        """``(matrix, row numbers)`` of those ``(token, output)`` arrays, or None if one is not held.

        An output of None names a single-output indicator's only output.
        """
        out = np.empty(len(rows), dtype=np.int64)
        for i, (tok, output) in enumerate(rows):
            outputs = self.values.get(tok)
            if outputs is None:
                return None
            if output is None:
                if len(outputs) != 1:
                    return None
                (output,) = outputs
            row = self.rows.get((tok, output))
            if row is None:
                return None
            out[i] = row
        return self.matrix, out

    def get(self, spec: IndicatorSpec, output: str | None = None) -> np.ndarray:
        """The array of ``spec`` (its only output, or the named one)."""
        outputs = self.values[spec.token]
        if output is None:
            if len(outputs) != 1:
                raise KeyError(f"{spec.label} has outputs {sorted(outputs)}; name one")
            (output,) = outputs
        return outputs[output]

    def covers(self, tokens: Iterable[str]) -> bool:
        return all(t in self.values for t in tokens)


def _register_sizeof() -> None:
    """Tell Dask what a set weighs: its memory accounting, spilling and transfer batching use it."""
    try:
        from dask.sizeof import sizeof
    except ImportError:  # pragma: no cover - dask is a dependency
        return

    @sizeof.register(IndicatorSet)
    def _sizeof_set(obj: IndicatorSet) -> int:
        return int(obj.matrix.nbytes + obj.bars.nbytes + 1000)

    @sizeof.register(MappedSet)
    def _sizeof_mapped(obj: MappedSet) -> int:  # the matrix is a file's pages, not the worker's memory
        return int(obj.bars.nbytes + 1000)


def data_key(symbol_fingerprint: str, bars: Bars) -> str:
    """Identify the exact bars an indicator was computed on: symbol data + range."""
    first = int(bars.timestamp[0]) if len(bars) else 0
    last = int(bars.timestamp[-1]) if len(bars) else 0
    return token([symbol_fingerprint, first, last, len(bars)])[:24]


class IndicatorCache:
    """Indicator arrays in storage: content addressed, checksummed, written in packs.

    A pack holds every indicator one hub task computed for one data key, in one
    ``.pack`` file: an 8-byte magic, the length of a JSON header (``names``:
    ``<token>.<output>`` per row, ``tokens`` and their ``sha256``, the matrix shape),
    the header, then the float64 matrix, one row per output (``pack_parts``). A symbol
    costs one write and, later, one read per pack, not one per indicator; reading is
    a view of the bytes, no decoding (an ``.npz`` cost ~1 ms more per pack). Each pack
    is written whole (temp file + rename, or one PUT), so listing the data key's
    packs is safe: every listed pack is complete. A pack that does not load, or an
    indicator whose arrays fail their checksum or shape, is corrupt: it is not used.
    """

    def __init__(self, ref: StorageRef) -> None:
        self.ref = ref
        self.storage = ref.open()

    def _dir(self, key: str) -> str:
        return f"indicators/v{__version__}/{key}"

    def load(self, key: str, specs: Sequence[IndicatorSpec], n: int,
             states: dict[str, np.ndarray] | None = None,
             require_states: bool = True) -> tuple[dict[str, dict[str, np.ndarray]], int]:
        """Arrays of those ``specs`` found in the packs of ``key``, and how many were corrupt.

        With ``states`` (a dict to fill), each found indicator stored with its end state
        has it put in ``states[token]``; with ``require_states`` (chunks of a streamed
        series, see :class:`IndicatorStream`) only those are found. A stored state is
        covered by its indicator's checksum.
        """
        wanted = {s.token: s for s in specs}
        found: dict[str, dict[str, np.ndarray]] = {}
        corrupt: set[str] = set()
        fs, folder = self.storage.fs, self.storage.path(self._dir(key))
        # an object store: one LIST (none cached: another worker may have written since), not exists' HEAD + LIST
        try:
            names = (self.storage.listdir(self._dir(key)) if not self.storage.is_local
                     else [posixpath.basename(p) for p in fs.ls(folder, detail=False)])
        except (FileNotFoundError, NotADirectoryError):
            names = []
        packs = sorted(posixpath.join(folder, n) for n in names if n.endswith(".pack"))
        if not packs:
            return found, 0
        for path in packs:
            if len(found) == len(wanted):
                break
            try:
                names, tokens, sums, data, stored = unpack(fs.cat_file(path), with_states=True)
                sums = dict(zip(tokens, sums))
                rows = {name: i for i, name in enumerate(names)}
                for tok in (set(sums) & set(wanted)) - set(found):
                    spec = wanted[tok]
                    if states is not None and require_states and tok not in stored:
                        continue  # an entry written without its state: nothing to go on from
                    end = np.asarray(stored[tok], dtype=np.float64) if tok in stored else None
                    keys = [f"{tok}.{o}" for o in spec.outputs]
                    arrays = {o: data[rows[k]] for o, k in zip(spec.outputs, keys) if k in rows}
                    if (len(arrays) == len(spec.outputs) and data.shape[1:] == (n,)
                            and sums[tok] == _checksum(spec, arrays, end)):
                        found[tok] = arrays
                        if states is not None and end is not None:
                            states[tok] = end
                        corrupt.discard(tok)
                    else:
                        corrupt.add(tok)
            except Exception:  # a truncated or foreign file fails in many ways; all mean "corrupt"
                corrupt.update(set(wanted) - set(found))
                self.storage.remove([path.removeprefix(self.storage.root.rstrip("/") + "/")])
        return found, len(corrupt - set(found))

    def save(self, key: str, computed: dict[str, tuple[IndicatorSpec, dict[str, np.ndarray]]],
             states: dict[str, np.ndarray] | None = None) -> None:
        """Write one pack with every computed indicator (token -> (spec, arrays)).

        ``states`` (token -> the kernel state at the end of these bars) are stored with
        them (chunks of a streamed series; whole series, for incremental runs), and
        covered by their checksums.
        """
        if not computed:
            return
        names, rows, tokens, sums = [], [], [], []
        for tok, (spec, arrays) in computed.items():
            tokens.append(tok)
            sums.append(_checksum(spec, arrays, None if states is None else states[tok]))
            for output in spec.outputs:
                names.append(f"{tok}.{output}")
                rows.append(arrays[output])
        name = token_of_pack(sorted(computed))
        stored = None if states is None else {tok: [float(v) for v in states[tok]] for tok in computed}
        self.storage.write_bytes(pack_parts(names, tokens, sums, rows, stored), f"{self._dir(key)}/pack-{name}.pack")


_CACHES: dict[StorageRef, IndicatorCache] = {}  # per process, see _cache_at


def _cache_at(ref: StorageRef) -> IndicatorCache:
    """The :class:`IndicatorCache` at ``ref``, opened once per process (it holds nothing but its
    storage): a sweep builds a set per symbol, and opening a filesystem costs ~0.1 ms each time."""
    cache = _CACHES.get(ref)
    if cache is None:
        if len(_CACHES) > 8:
            _CACHES.clear()
        cache = _CACHES[ref] = IndicatorCache(ref)
    return cache


_MAGIC = b"ADMFPK01"


def pack_parts(names: list[str], tokens: list[str], sums: list[str], rows: list[np.ndarray],
               states: dict[str, list[float]] | None = None) -> list[Any]:
    """A pack file as buffers to write in order: the head, then each row's float64 LE bytes, not copied.

    The head is the magic, the header length (uint64 LE) and the JSON header; rows have equal lengths.
    ``states`` (token -> floats) go into the header (JSON keeps a float's exact value).
    """
    n = len(rows[0]) if rows else 0
    return [_pack_head(names, tokens, sums, (len(rows), n), states),
            *(memoryview(np.ascontiguousarray(r, dtype="<f8")).cast("B") for r in rows)]


def _pack_head(names: list[str], tokens: list[str], sums: list[str], shape: tuple[int, int],
               states: dict[str, list[float]] | None = None, size: int | None = None) -> bytes:
    """Magic, header length, JSON header padded with spaces so that the rows start 64-byte aligned.

    ``size``: pad to exactly that many bytes (a head rewritten in place over a placeholder).
    """
    head: dict[str, Any] = {"names": names, "tokens": tokens, "sha256": sums, "shape": list(shape)}
    if states is not None:
        head["states"] = states
    header = json.dumps(head).encode()
    header += b" " * ((-(16 + len(header)) % 64) if size is None else size - 16 - len(header))
    if size is not None and 16 + len(header) != size:  # pragma: no cover - placeholders are the longest floats
        raise RuntimeError("pack header outgrew its placeholder")
    return _MAGIC + len(header).to_bytes(8, "little") + header


def unpack(raw: bytes, with_states: bool = False) -> tuple:
    """(names, tokens, sha256s, matrix) of a pack, and its end states (token -> floats) ``with_states``;
    ValueError if it is not a whole pack."""
    if raw[:8] != _MAGIC:
        raise ValueError("not an indicator pack")
    size = int.from_bytes(raw[8:16], "little")
    header = json.loads(raw[16:16 + size])
    r, n = header["shape"]
    offset = 16 + size
    if len(raw) != offset + 8 * r * n or len(header["names"]) != r:
        raise ValueError("truncated indicator pack")
    data = np.frombuffer(raw, dtype="<f8", count=r * n, offset=offset).reshape(r, n)
    if with_states:
        return header["names"], header["tokens"], header["sha256"], data, dict(header.get("states") or {})
    return header["names"], header["tokens"], header["sha256"], data


def token_of_pack(tokens: list[str]) -> str:
    return hashlib.sha256("|".join(tokens).encode()).hexdigest()[:16]


def _checksum(spec: IndicatorSpec, arrays: dict[str, np.ndarray], state: np.ndarray | None = None) -> str:
    h = hashlib.sha256(spec.token.encode())
    for name in spec.outputs:
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name], dtype="<f8"))  # hashed in place, not copied
    if state is not None:  # as stored in JSON: every NaN is the one NaN
        state = np.asarray(state, dtype="<f8")
        h.update(b"state")
        h.update(np.ascontiguousarray(np.where(np.isnan(state), np.nan, state), dtype="<f8"))
    return h.hexdigest()


def _set_rows(specs: Sequence[IndicatorSpec]) -> tuple[list[IndicatorSpec], list[tuple[str, str]],
                                                     dict[tuple[str, str], int]]:
    """A set's rows: the unique specs, ``(token, output)`` per row in their order, and the row of each."""
    specs = list({spec.token: spec for spec in specs}.values())
    names = [(spec.token, out) for spec in specs for out in spec.outputs]
    return specs, names, {name: i for i, name in enumerate(names)}


_SET_PLANS: dict[tuple[str, ...], tuple] = {}  # _set_plan by the specs' tokens, per process


def _set_plan(specs: Sequence[IndicatorSpec]) -> tuple[list[IndicatorSpec], list[tuple[str, str]],
                                                       dict[tuple[str, str], int],
                                                       dict[str, tuple[tuple[str, ...], tuple[int, ...]]]]:
    """:func:`_set_rows` and each spec's outputs and their rows, worked out once per process for a
    list of specs (a sweep builds the same set for every symbol)."""
    key = tuple(spec.token for spec in specs)
    plan = _SET_PLANS.get(key)
    if plan is None:
        unique, names, row = _set_rows(specs)
        plan = (unique, names, row, {s.token: (s.outputs, tuple(row[(s.token, out)] for out in s.outputs))
                                     for s in unique})
        if len(_SET_PLANS) > 64:
            _SET_PLANS.clear()
        _SET_PLANS[key] = plan
    return plan


def _with_period(bars: Bars) -> Bars:
    """``bars`` with its periods per year worked out now, once: the value is kept on the object
    and travels with it, so the tasks (and workers) that receive the set do not each spend
    ~13 ms per minute symbol on it. Bars it cannot be inferred from are left to fail where used."""
    if len(bars) > 1:
        try:
            bars.periods_per_year()
        except ValueError:
            pass
    return bars


# What storing an indicator costs, to be loaded later instead of computed: write it, read it
# back, and its sha256 twice (at the write and at the load). Measured on the development
# machine: 2.6-6 ns a byte and ~0.2 ms a pack on local disk (an SMA of 2,520 daily bars
# computes in ~35 us and costs ~80 us to store and load); S3 adds a request each way.
STORE_SECONDS_PER_BYTE = {True: 4e-9, False: 2e-8}  # by Storage.is_local
STORE_SECONDS_PER_PACK = {True: 2e-4, False: 2e-2}


_TIMED: set[str] = set()  # indicator kinds this process has computed (see build_indicator_set)
_PER_BAR: dict[str, float] = {}  # the fastest seconds per bar each indicator took in this process (see _fastest)


def _fastest(tok: str, seconds: float, bars: int) -> float:
    """What computing indicator ``tok`` over ``bars`` bars costs: the fastest rate this process has measured
    for it (this one included), times the bars.

    A timing only ever grows by what is not the indicator's work (the thread preempted, waiting for the GIL):
    on a busy machine single SMAs of daily bars timed 10x their cost and were stored, for a pack write each.
    """
    rate = seconds / max(bars, 1)
    best = _PER_BAR.get(tok)
    if best is None or rate < best:
        if len(_PER_BAR) > 4096:
            _PER_BAR.clear()
        _PER_BAR[tok] = best = rate
    return best * max(bars, 1)


def worth_storing(costs: dict[str, tuple[float, int]], local: bool) -> set[str]:
    """The indicators worth a place in the storage cache: those whose compute time exceeds their load cost.

    ``costs`` maps each computed indicator's token to (seconds it took, bytes of its arrays).
    An indicator is kept when its compute time is above what storing and loading its bytes
    costs, and the kept ones together save more than a pack's own cost; otherwise none is
    stored. ``ADMF_INDICATOR_STORE=all`` stores every computed indicator (the cache before
    this rule, for tests of its storage and for costs the rule gets wrong).
    """
    if os.environ.get("ADMF_INDICATOR_STORE", "costly") == "all":
        return set(costs)
    per_byte = STORE_SECONDS_PER_BYTE[bool(local)]
    gain = {tok: seconds - nbytes * per_byte for tok, (seconds, nbytes) in costs.items()}
    keep = {tok for tok, g in gain.items() if g > 0}
    return keep if sum(gain[tok] for tok in keep) > STORE_SECONDS_PER_PACK[bool(local)] else set()


def build_indicator_set(bars_ref: StorageRef, symbol: str, start: Any, end: Any, specs: Sequence[IndicatorSpec],
                        cache_ref: StorageRef | None, *priors: IndicatorSet,
                        fingerprint: str | None = None, known: frozenset[str] | None = None,
                        bars: Bars | None = None, period: bool = True) -> IndicatorSet:
    """Task: load a symbol's bars and get every spec from memory, storage or the kernels.

    ``priors`` are sets of this symbol already in memory (passed as futures on a
    cluster); their arrays are reused when they were computed on the same bars.
    ``fingerprint`` is the dataset's, so the worker can reuse a manifest it has read.
    ``known`` is the set of data keys that had packs in the cache when the hub listed it
    (:meth:`IndicatorHub.known_keys`; None: not listed): a key not in it is not looked for
    (no LIST per symbol on an object store; a pack written since is only a missed reuse).
    ``bars`` are the symbol's bars in the range when already read (:func:`read_ahead`).
    ``period=False`` leaves the bars' periods per year to be worked out where they are used (a set built
    inside the task that consumes it: see :class:`InlineSet`).
    """
    store = BarStore.open(bars_ref, fingerprint)
    key = None
    for prior in priors:
        if prior.symbol == symbol:
            bars, key = prior.bars, prior.data_key
            break
    if key is None:
        if bars is None:
            bars = store.read(symbol, start=start, end=end)
            if period:
                bars = _with_period(bars)
        key = data_key(store.symbol_fingerprint(symbol), bars)
    cache = _cache_at(cache_ref) if cache_ref is not None else None
    counters = HubCounters()
    specs, names, row, spec_rows = _set_plan(specs)
    # One matrix for the whole set, filled row by row: every array is copied into it
    # once, as soon as it is at hand (a computed one is written there by its kernel),
    # so no second full copy of the set is ever held.
    matrix = np.empty((len(names), len(bars)))

    def put(spec: IndicatorSpec, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for out in spec.outputs:
            matrix[row[(spec.token, out)]] = arrays[out]
        return {out: matrix[row[(spec.token, out)]] for out in spec.outputs}

    missing = []
    states: dict[str, np.ndarray] = {}  # kernel states at the last bar, where known (see IndicatorSet)
    for spec in specs:
        prior = next((p for p in priors if p.data_key == key and spec.token in p.values), None)
        if prior is not None:
            put(spec, prior.values[spec.token])
            if spec.token in prior.states:
                states[spec.token] = prior.states[spec.token]
            counters.reused_memory += 1
        else:
            missing.append(spec)
    if cache is not None and missing and (known is None or key in known):  # with the end states beside them
        loaded, corrupt = cache.load(key, missing, len(bars), states=states, require_states=False)
        for spec in missing:
            if spec.token in loaded:
                put(spec, loaded[spec.token])
        counters.loaded_storage += len(loaded)
        counters.corrupt += corrupt
        missing = [s for s in missing if s.token not in loaded]
    computed = {}
    costs: dict[str, tuple[float, int]] = {}  # token -> (seconds to compute, bytes to store)
    first: set[str] = set()  # computed by a kernel this process had not run yet: its time includes loading it
    inputs: dict[str, np.ndarray] = {}  # the bar columns the kernels read, contiguous float64, once per set
    n = len(bars)
    for spec in missing:  # the whole series as one chunk (IndicatorSpec.compute), keeping the end state
        t0 = time.perf_counter()
        fast = spec.series_kernel()
        if fast is not None and all(c in bars.columns for c in fast[1]):  # straight into the set's rows
            kernel, cols, params, init = fast
            for c in cols:
                if c not in inputs:
                    inputs[c] = np.ascontiguousarray(bars.columns[c], dtype=np.float64)
            state = init.copy()
            outputs, rows_of = spec_rows[spec.token]
            outs = [matrix[r] for r in rows_of]
            kernel(*[inputs[c] for c in cols], 0, *params, state, *outs)
            _COMPUTED[0] += 1
            states[spec.token] = state
            arrays = dict(zip(outputs, outs))
        else:  # this process has not checked the spec yet (or a column is missing: the DataError)
            computed_arrays, states[spec.token] = spec.compute_series(bars.columns)
            arrays = put(spec, computed_arrays)
        costs[spec.token] = (_fastest(spec.token, time.perf_counter() - t0, n), 8 * n * len(arrays))
        computed[spec.token] = (spec, arrays)
        if spec.name not in _TIMED:
            _TIMED.add(spec.name)
            first.add(spec.token)
    counters.computed += len(computed)
    if cache is not None and computed:
        keep = worth_storing(costs, cache.storage.is_local)
        if keep & first:  # timed again: numba loading a kernel from its cache is no cost of the indicator
            for tok in keep & first:
                spec = computed[tok][0]
                t0 = time.perf_counter()
                spec.compute_series(bars.columns)
                costs[tok] = (_fastest(tok, time.perf_counter() - t0, len(bars)), costs[tok][1])
                _COMPUTED[0] -= 1  # a timing of an indicator counted above, not another computation
            keep = worth_storing(costs, cache.storage.is_local)
        counters.cheap += len(computed) - len(keep)
        cache.save(key, {tok: v for tok, v in computed.items() if tok in keep}, {tok: states[tok] for tok in keep})
    return IndicatorSet.from_matrix(symbol, key, bars, matrix, names, counters, states)


class IndicatorStream:
    """One symbol's indicator rows chunk by chunk: the hub for a series that is never held whole.

    The payload builder of a :class:`~admf_dask.stream.SymbolStream`: for each chunk of
    new bars (with the halo bars in front) it fills the rows ``rows`` (``(token,
    output)`` pairs, in the kernel's order; an output of None is a single-output
    indicator's only one) for the new bars, carrying every spec's kernel state to the
    next chunk (:meth:`~admf_dask.indicators.IndicatorSpec.compute_chunk`).

    With a cache, each chunk's indicators are looked up in storage first, under the
    chunk's own content key (the symbol's data fingerprint, the start of the range, the
    chunk's position and length) together with the state at its end, checksummed like
    every pack, so a later chunk can go on from a chunk loaded from storage; a corrupt
    entry is recomputed. ``persist=True`` also writes the chunks it computed: the run
    does that when other tasks read the same chunks (the symbol in several set ranges).
    ``counters`` count per spec per symbol: computed if any chunk was, else loaded.
    """

    def __init__(self, specs: Sequence[IndicatorSpec], rows: Sequence[tuple[str, str | None]],
                 cache_ref: StorageRef | None, key: str, persist: bool = False) -> None:
        self.specs, names, _ = _set_rows(specs)
        by_token = {spec.token: spec for spec in self.specs}
        self.rows = []  # (spec, output) per row to fill
        for tok, output in rows:
            spec = by_token[tok]
            self.rows.append((spec, output if output is not None else spec.outputs[0]))
        self.halo = max((spec.halo for spec in self.specs), default=0)
        self.states = {spec.token: spec.init_state() for spec in self.specs}
        self._run = {spec.token: spec.chunk_runner() for spec in self.specs}
        self.cache = IndicatorCache(cache_ref) if cache_ref is not None else None
        self.key, self.persist = key, persist
        self._computed: set[str] = set()
        self._loaded: set[str] = set()
        self._corrupt = 0

    def __call__(self, columns: dict[str, np.ndarray], hb: int, t0: int, out: np.ndarray) -> None:
        """Fill ``out`` (one row per entry of ``rows``, one column per new bar) for the chunk starting at ``t0``."""
        n = out.shape[1]
        loaded: dict[str, dict[str, np.ndarray]] = {}
        ends: dict[str, np.ndarray] = {}
        if self.cache is not None:
            key = token([self.key, t0, n])[:24]
            loaded, corrupt = self.cache.load(key, self.specs, n, states=ends)
            self._corrupt += corrupt
        values: dict[str, dict[str, np.ndarray]] = {}
        computed: dict[str, tuple[IndicatorSpec, dict[str, np.ndarray]]] = {}
        for spec in self.specs:
            tok = spec.token
            if tok in loaded:
                values[tok], self.states[tok] = loaded[tok], ends[tok]
                self._loaded.add(tok)
            else:
                values[tok], self.states[tok] = self._run[tok](columns, hb, self.states[tok])
                computed[tok] = (spec, values[tok])
                self._computed.add(tok)
        for i, (spec, output) in enumerate(self.rows):
            out[i] = values[spec.token][output]
        if self.persist and self.cache is not None and computed:
            self.cache.save(key, computed, {tok: self.states[tok] for tok in computed})

    def save(self) -> dict[str, np.ndarray]:
        """The kernel states carried to the next chunk (what an incremental run goes on from)."""
        return dict(self.states)

    def restore(self, states: dict[str, np.ndarray], last_ns: int) -> None:
        """Go on from :meth:`save` of a stream that stopped at bar time ``last_ns``."""
        self.states.update(states)

    @property
    def counters(self) -> HubCounters:
        return HubCounters(computed=len(self._computed), loaded_storage=len(self._loaded - self._computed),
                           corrupt=self._corrupt)


def stream_key(symbol_fingerprint: str, start: Any) -> str:
    """The part of an :class:`IndicatorStream`'s chunk keys that names the series: the symbol's data and range start.

    A chunk's values depend on every bar before it from the start of the range (EMAs
    remember them all), so the start is part of the key; the end is not.
    """
    return token(["stream", symbol_fingerprint, str(start), __version__])[:24]


def _arrived(indicator_set: IndicatorSet) -> None:
    """Task: nothing; running it brings the set to the worker it runs on (``IndicatorHub._spread``)."""


def _counters_of(indicator_set: IndicatorSet) -> HubCounters:
    return indicator_set.counters


@dataclass(frozen=True)
class InlineSet:
    """A hub request to be built inside the one task that consumes it (see :meth:`IndicatorHub.source`).

    Same function, storage cache and counters as a hub task; what it saves is a
    task, and moving the set between workers, when nothing else needs it.
    """

    bars_ref: StorageRef
    symbol: str
    start: Any
    end: Any
    specs: tuple[IndicatorSpec, ...]
    cache_ref: StorageRef | None
    fingerprint: str | None
    known: frozenset[str] | None = None

    def build(self, bars: Bars | None = None) -> IndicatorSet:
        """The set; ``bars`` are the symbol's bars in the range if already read (:func:`read_ahead`)."""
        return build_indicator_set(self.bars_ref, self.symbol, self.start, self.end, self.specs, self.cache_ref,
                                   fingerprint=self.fingerprint, known=self.known, bars=bars, period=False)

    def read_bars(self) -> Bars:
        """The symbol's bars in the range, as :func:`build_indicator_set` reads them."""
        return _with_period(BarStore.open(self.bars_ref, self.fingerprint).read(self.symbol, start=self.start,
                                                                                end=self.end))

    def bars_kept(self) -> bool:
        """Whether reading the symbol's bars makes no request (this process keeps their files: BarStore.kept)."""
        return BarStore.open(self.bars_ref, self.fingerprint).kept(self.symbol, self.start, self.end)


def read_ahead(sources: Sequence[Any], load: Any) -> list[Any]:
    """``[load(s) for s in sources]``, with every inline set's bars read at once, up front.

    Only for bars on an object store (each read is a round trip): the reads of a task's
    symbols are in flight together (up to ``_READ_AHEAD`` at a time) while the sets are
    built in order, so their latencies overlap instead of adding up; the bars are those
    the task holds anyway, once its sets are built. Elsewhere, or with fewer than two
    inline sets, plainly in order. ``load`` is a config's hook: an inline set given its
    bars is built from them (``load`` resolves an :class:`InlineSet` by calling ``build``).
    """
    inline = [s for s in sources if isinstance(s, InlineSet)]
    if len(inline) < 2 or "://" not in inline[0].bars_ref.url or inline[0].bars_ref.url.startswith("file://"):
        return [load(s) for s in sources]
    # bars this process keeps (a warm run's) are read in order where they are needed, as from local disk:
    # no round trip to overlap, and threads parsing them beside the sets being built only contend for the
    # GIL (a warm W x 100 sweep's inputs on moto: 0.36-0.49 task-s read ahead, 0.19-0.21 in order)
    inline = [s for s in inline if not s.bars_kept()]
    if len(inline) < 2:
        return [load(s) for s in sources]
    from concurrent.futures import ThreadPoolExecutor

    out = []
    with ThreadPoolExecutor(min(len(inline), _READ_AHEAD), thread_name_prefix="admf-read-ahead") as pool:
        ahead = {id(s): pool.submit(s.read_bars) for s in inline}
        for src in sources:
            out.append(src.build(ahead[id(src)].result()) if id(src) in ahead else load(src))
    return out


_READ_AHEAD = 8  # bar reads of one task in flight at once (object stores; see read_ahead)


def resolve(source: IndicatorSet | InlineSet | MappedSet) -> IndicatorSet:
    """The set itself: a hub future arrives resolved; an inline request is built here; a mapped one is mapped."""
    return source.build() if isinstance(source, (InlineSet, MappedSet)) else source


# Sets mapped in this process, by pack path (see MappedSet). Dropped at the end of each
# sweep (IndicatorHub.release), so that no mapping outlives its run's use of the file.
_MAPPED: dict[str, IndicatorSet] = {}
_MAPPED_LOCK = threading.Lock()


def _forget_mapped() -> int:
    with _MAPPED_LOCK:
        n = len(_MAPPED)
        _MAPPED.clear()
    return n


@dataclass(frozen=True)
class MappedSet:
    """A shared set written whole to one pack on local storage: each process maps that file.

    What a consumer task receives instead of the set itself when many tasks on several
    workers of one machine share it (:meth:`IndicatorHub.source`). The matrix is the
    pack file's pages in the OS page cache, mapped by every worker process that needs
    it (copy-on-write, never written): one copy per machine instead of one per worker,
    and nothing moved between workers. Only the bars travel with this receipt.
    """

    path: str
    offset: int
    shape: tuple[int, int]
    names: tuple[tuple[str, str], ...]
    symbol: str
    data_key: str
    bars: Bars
    counters: HubCounters
    states: tuple[tuple[str, tuple[float, ...]], ...] = ()  # kernel end states of the specs computed

    def build(self) -> IndicatorSet:
        with _MAPPED_LOCK:
            held = _MAPPED.get(self.path)
        if held is not None:
            return held
        matrix = np.memmap(self.path, dtype="<f8", mode="c", offset=self.offset, shape=self.shape)
        mapped = IndicatorSet.from_matrix(self.symbol, self.data_key, self.bars, matrix, list(self.names),
                                          self.counters, {tok: np.array(v) for tok, v in self.states})
        with _MAPPED_LOCK:
            return _MAPPED.setdefault(self.path, mapped)


def build_mapped_set(bars_ref: StorageRef, symbol: str, start: Any, end: Any, specs: Sequence[IndicatorSpec],
                     cache_ref: StorageRef, fingerprint: str | None = None) -> MappedSet:
    """Task: a symbol's whole set as one pack on the local cache, mapped; the receipt for its consumers.

    The pack of exactly these specs is mapped if it exists and every checksum holds;
    otherwise every spec is computed and its rows written into a new pack file at once
    (header first, with the checksums filled in at the end, then renamed into place),
    so the set is never held twice. Same file format as :meth:`IndicatorCache.save`.
    """
    store = BarStore.open(bars_ref, fingerprint)
    bars = _with_period(store.read(symbol, start=start, end=end))
    key = data_key(store.symbol_fingerprint(symbol), bars)
    specs, names, row = _set_rows(specs)
    cache = IndicatorCache(cache_ref)
    path = cache.storage.path(f"{cache._dir(key)}/pack-{token_of_pack(sorted(s.token for s in specs))}.pack")
    shape = (len(names), len(bars))
    counters = HubCounters()
    found = _map_pack(path, specs, names, row, shape)
    if found is not None:
        offset, ends = found
        counters.loaded_storage += len(specs)
        return MappedSet(path, offset, shape, tuple(names), symbol, key, bars, counters,
                         tuple((tok, tuple(v)) for tok, v in ends.items()))
    row_names, tokens = [f"{t}.{o}" for t, o in names], [s.token for s in specs]
    # the end states go into the head, written last: its placeholder holds the longest floats
    widest = {s.token: [-2.2250738585072014e-308] * len(s.init_state()) for s in specs}
    head = _pack_head(row_names, tokens, ["0" * 64] * len(specs), shape, widest)
    with replacing(path) as tmp:
        states, sums = [], []
        with open(tmp, "wb") as f:  # allocated, not sparse: a full disk is an error here, not a SIGBUS later
            _allocate(f, len(head) + 8 * shape[0] * shape[1])
            # each row written (pwrite) as it is computed, not through a shared mapping of the file: every page
            # of one is a write fault, several times the kernel's CPU of copying the rows in (0.5-1.4 s of sys for
            # a worker's 4 packs of 110 MB on fresh memory against ~0.1 s)
            for spec in specs:
                arrays, end = spec.compute_series(bars.columns)
                states.append((spec.token, tuple(float(v) for v in end)))
                rows = {out: np.ascontiguousarray(arrays[out], dtype="<f8") for out in spec.outputs}
                for out, values in rows.items():
                    _write_at(f.fileno(), values, len(head) + 8 * shape[1] * row[(spec.token, out)])
                sums.append(_checksum(spec, rows, np.array(states[-1][1])))
                del arrays, rows
            ends = dict(states)
            f.seek(0)
            f.write(_pack_head(row_names, tokens, sums, shape, {tok: list(v) for tok, v in ends.items()},
                               size=len(head)))
    counters.computed += len(specs)
    return MappedSet(path, len(head), shape, tuple(names), symbol, key, bars, counters, tuple(states))


def _write_at(fd: int, values: np.ndarray, offset: int) -> None:
    """Write the bytes of the contiguous array ``values`` at ``offset`` of the open file ``fd``, whole."""
    view = memoryview(values).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _allocate(f: Any, size: int) -> None:
    """Give the open file ``f`` ``size`` bytes of disk (ENOSPC raised now: a sparse file mapped would kill
    the worker with SIGBUS when the disk fills, leaving its temporary file behind)."""
    f.truncate(size)
    if size and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


def _map_pack(path: str, specs: Sequence[IndicatorSpec], names: list[tuple[str, str]],
              row: dict[tuple[str, str], int], shape: tuple[int, int]) -> tuple[int, dict[str, list[float]]] | None:
    """The matrix offset of the pack at ``path`` and its stored end states, if it holds exactly ``names``
    (``row`` of each) and every checksum holds."""
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if magic == _MAGIC else None
        if header is None or header["names"] != [f"{t}.{o}" for t, o in names] or tuple(header["shape"]) != shape:
            return None
        offset = 16 + size
        if os.path.getsize(path) != offset + 8 * shape[0] * shape[1]:
            return None
        matrix = np.memmap(path, dtype="<f8", mode="r", offset=offset, shape=shape)
        sums = dict(zip(header["tokens"], header["sha256"]))
        ends = {tok: [float(v) for v in st] for tok, st in (header.get("states") or {}).items()}
        for spec in specs:
            end = np.array(ends[spec.token], dtype=np.float64) if spec.token in ends else None
            if sums.get(spec.token) != _checksum(spec, {o: matrix[row[(spec.token, o)]] for o in spec.outputs}, end):
                return None
        return offset, ends
    except (OSError, ValueError, KeyError, TypeError):
        return None


class IndicatorHub:
    """Serve each symbol's indicator plan once per session, from memory, storage or compute.

    Parameters
    ----------
    bars:
        The bar dataset (a BarStore or its StorageRef).
    cache:
        Where indicator arrays are cached across sessions (a StorageRef), or None.
    client:
        A ``distributed.Client``: sets are then built by tasks and stay in worker memory
        (:meth:`submit` returns futures). Without one, sets are built in this process
        and kept in a dict (:meth:`get`).

    Examples
    --------
    >>> from admf_dask.bars import BarStore, generate_bars
    >>> store = BarStore("memory://hub-doc/bars")
    >>> _ = store.write([generate_bars("AAA", "2024-01-01", "2024-06-30")])
    >>> hub = IndicatorHub(store)
    >>> plan = IndicatorPlan.from_requests(IndicatorSpec.make("sma", window=w) for w in (5, 10, 5))
    >>> s = hub.get("AAA", plan)
    >>> s.get(plan.specs[0]).shape, hub.counters.computed
    ((130,), 2)
    >>> _ = hub.get("AAA", plan); hub.counters.reused_memory
    2
    """

    def __init__(self, bars: BarStore | StorageRef, cache: StorageRef | None = None, client: Any = None) -> None:
        self.bars_ref = bars.ref if isinstance(bars, BarStore) else bars
        self.fingerprint = bars.fingerprint if isinstance(bars, BarStore) else None
        self.cache_ref = cache
        self.client = client
        self._sets: dict[str, list[Any]] = {}  # symbol -> IndicatorSets (or futures of them) held
        self._pending: dict[str, Any] = {}  # key -> future whose counters are not yet collected
        self._counters = HubCounters()
        self._workers: list[str] | None = None
        self._spreading: dict[str, list[Any]] = {}  # set key -> its _arrived tasks, one per worker
        self._local: bool | None = None  # every worker on this machine and the cache on local disk
        self._mapped = False  # MappedSets were handed out: workers hold mappings until release()
        self._known: Any = ...  # known_keys(), once listed

    def _key(self, symbol: str, start: Any, end: Any, plan: IndicatorPlan) -> str:
        # the stage first, then a hex token: the dashboard files the task under "indicators" (dask's key_split
        # stops at the first word that is not all letters; a symbol such as AAPL would have joined the name)
        return f"indicators-{token([self.bars_ref, symbol, str(start), str(end), sorted(plan.tokens), __version__])[:20]}-{symbol}"

    def get(self, symbol: str, plan: IndicatorPlan, start: Any = None, end: Any = None) -> IndicatorSet:
        """Build (or reuse) the set in this process."""
        if self.client is not None:
            return self.submit(symbol, plan, start, end).result()
        held = self._sets.setdefault(symbol, [])
        for s in held:
            if s.covers(plan.tokens) and getattr(s, "_range", None) == (start, end):
                self._counters.reused_memory += plan.unique
                return s
        priors = [s for s in held if getattr(s, "_range", None) == (start, end)]
        result = build_indicator_set(self.bars_ref, symbol, start, end, plan.specs, self.cache_ref, *priors)
        result._range = (start, end)
        held.append(result)
        self._counters.add(result.counters)
        return result

    def _held(self, symbol: str, start: Any, end: Any, plan: IndicatorPlan) -> Any:
        key = self._key(symbol, start, end, plan)
        for fut, tokens, rng in self._sets.get(symbol, []):
            if fut.key == key or (rng == (start, end) and set(plan.tokens) <= tokens):
                return fut
        return None

    def submit(self, symbol: str, plan: IndicatorPlan, start: Any = None, end: Any = None) -> Any:
        """A future of the symbol's set, under a deterministic key, kept in worker memory."""
        if self.client is None:
            raise RuntimeError("IndicatorHub.submit needs a client; use get() in process")
        held = self._held(symbol, start, end, plan)
        if held is not None:
            self._counters.reused_memory += plan.unique
            return held
        key = self._key(symbol, start, end, plan)
        priors = [fut for fut, _, rng in self._sets.get(symbol, []) if rng == (start, end)]
        fut = self.client.submit(build_indicator_set, self.bars_ref, symbol, start, end, plan.specs, self.cache_ref,
                                 *priors, fingerprint=self.fingerprint, known=self.known_keys(), key=key, pure=False)
        self._sets.setdefault(symbol, []).append((fut, set(plan.tokens), (start, end)))
        self._pending[fut.key] = fut
        return fut

    def source(self, symbol: str, plan: IndicatorPlan, start: Any = None, end: Any = None, *,
               consumers: int = 1) -> Any:
        """What a task should receive for this symbol's set: a future, or an :class:`InlineSet`.

        A set already held in worker memory (an earlier step or sweep of the session)
        is reused, and one that several tasks consume is submitted once and shared.
        A set that only one task needs and nobody holds is built inside that task
        (``resolve`` it there): the same storage cache and counters, without a task
        of its own and without moving the set between workers. Report the built
        set's counters back with :meth:`settle`.
        """
        held = self._held(symbol, start, end, plan) if self.client is not None else None
        if held is None and plan.specs and self._maps(consumers):  # nothing to map without indicators
            key = f"{self._key(symbol, start, end, plan)}-mapped"
            fut = self.client.submit(build_mapped_set, self.bars_ref, symbol, start, end, plan.specs,
                                     self.cache_ref, fingerprint=self.fingerprint, key=key, pure=False)
            self._pending[fut.key] = fut
            self._mapped = True
            return fut
        if held is not None or (consumers > 1 and self.client is not None):
            fut = self.submit(symbol, plan, start, end)
            if consumers > 1:
                self._spread(fut, consumers)
            return fut
        return InlineSet(self.bars_ref, symbol, start, end, tuple(plan.specs), self.cache_ref, self.fingerprint,
                         self.known_keys())

    _KNOWN_PAGES = 5  # LIST pages (1,000 keys each) the hub reads of the cache at most; more: per symbol

    def known_keys(self) -> frozenset[str] | None:
        """The data keys with packs in the cache, listed once per run (until :meth:`release`): on an
        object store one LIST, on local disk one directory scan, where each symbol's set would make its
        own. None (look per symbol) without a cache, on other filesystems, or when the cache holds over
        ``_KNOWN_PAGES`` thousand keys."""
        if self._known is ...:
            self._known = None
            if self.cache_ref is not None:
                storage = IndicatorCache(self.cache_ref).storage
                if storage.is_local:
                    self._known = _local_keys(storage.path(IndicatorCache(self.cache_ref)._dir("")),
                                              self._KNOWN_PAGES * 1000)
                elif storage.conditional:
                    from fsspec.asyn import sync

                    from .storage import _list_names

                    bucket, prefix, _ = storage.fs.split_path(storage.path(IndicatorCache(self.cache_ref)._dir("")))
                    try:
                        names = sync(storage.fs.loop, _list_names, storage.fs, bucket, prefix.rstrip("/") + "/",
                                     self._KNOWN_PAGES)
                        self._known = None if names is None else frozenset(names)
                    except OSError:
                        self._known = None
        return self._known

    def _worker_addresses(self) -> list[str]:
        if self._workers is None:
            self._workers = list(self.client.scheduler_info(n_workers=-1)["workers"])
        return self._workers

    def _maps(self, consumers: int) -> bool:
        """Whether a set with these consumers goes through a mapped pack (:class:`MappedSet`).

        When several tasks share it (two or more per worker), the cache is on local disk
        and every worker runs on this machine: then the workers map one file instead of
        each receiving a private copy, and building it straight into the file is also the
        cheaper build (one copy of the set, not a matrix plus the pack written from it),
        so one worker takes this path too. A worker elsewhere cannot see this machine's files.
        """
        if self.client is None or self.cache_ref is None or consumers < 2:
            return False
        workers = self._worker_addresses()
        if consumers < 2 * len(workers):
            return False
        if self._local is None:
            import socket

            here = {"127.0.0.1", "localhost", socket.gethostname()}
            hosts = {w.split("://", 1)[-1].rsplit(":", 1)[0] for w in workers}
            self._local = self.cache_ref.open().is_local and hosts <= here
        return self._local

    def _spread(self, fut: Any, consumers: int) -> None:
        """Copy a set that many tasks share to every worker as soon as it is built.

        Consumers of such a set run everywhere, and a task starts only once all
        its inputs are at hand: left to the consumers, every worker would fetch the
        sets it lacks after the last one is built, and wait. A tiny task per worker
        pulls each set over while the next sets are still being built. Only for sets
        with at least two consumers per worker; a set two tasks share is fetched
        when needed (the tiny tasks would cost more than the wait).
        """
        workers = self._worker_addresses()
        if len(workers) < 2 or consumers < 2 * len(workers) or fut.key in self._spreading:
            return
        self._spreading[fut.key] = [
            self.client.submit(_arrived, fut, workers=[w], allow_other_workers=False, pure=False,
                               key=f"indicators-{i}-spread-{fut.key}") for i, w in enumerate(workers)]

    def settle(self, source: Any, counters: HubCounters) -> None:
        """Record the counters of a set that a task has already brought back.

        ``source`` is what :meth:`source` (or :meth:`submit`) gave that task, or None for
        a task that streamed the symbol's indicators itself (:class:`IndicatorStream`). Saves
        :attr:`counters` a round trip per set; a shared set is counted once however
        many tasks report it.
        """
        if source is None or isinstance(source, InlineSet) or self._pending.pop(source.key, None) is not None:
            self._counters.add(counters)

    @property
    def counters(self) -> HubCounters:
        """Counters so far (on a cluster, collects the small counter objects of finished sets)."""
        if self._pending:
            pending, self._pending = list(self._pending.values()), {}
            for c in self.client.gather([self.client.submit(_counters_of, f, key=f"indicators-{uuid.uuid4().hex[:12]}0-counters")
                                                for f in pending]):
                self._counters.add(c)
        return self._counters

    def forget(self, symbol: str) -> None:
        """Drop the sets of one symbol held in memory (its last consumer is done): workers free them.

        A run calls this as it goes, so the sets held at once are those of the tasks in
        flight, not every symbol's; the storage cache still serves a later request.
        """
        for fut, _, _ in self._sets.pop(symbol, []):
            self._spreading.pop(fut.key, None)

    def release(self) -> None:
        """Drop the sets held in memory (worker memory is freed when no task needs them), and the
        listing of the cache's keys (:meth:`known_keys`: the next run lists them again)."""
        self._sets.clear()
        self._spreading.clear()
        self._known = ...
        if self._mapped:
            self._mapped = False
            try:
                self.client.run(_forget_mapped)
            except Exception:  # a cluster going down drops its mappings anyway
                pass
            _forget_mapped()


def _local_keys(folder: str, most: int) -> frozenset[str] | None:
    """The entries of a local cache folder (its data keys): none if it is missing, None past ``most``.
    The scan is one storage request in the run's monitor, as the listing through fsspec it replaces was."""
    from .monitor import REQUESTS, enabled

    t0 = time.perf_counter()
    try:
        return _scan(folder, most)
    finally:
        if enabled():
            REQUESTS.add("ls", time.perf_counter() - t0)


def _scan(folder: str, most: int) -> frozenset[str] | None:
    names: list[str] = []
    try:
        with os.scandir(folder.rstrip("/")) as entries:
            for entry in entries:
                names.append(entry.name)
                if len(names) > most:
                    return None
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()
    except OSError:
        return None
    return frozenset(names)


_register_sizeof()
