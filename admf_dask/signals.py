"""Signal sets: the target series of K strategy configurations, generated once and stored sparse.

Phase 1 of signal replay (:mod:`admf_dask.replay` is phase 2). Every member of a
set is one strategy configuration (strategy, parameters, direction mode); its
target series on each symbol (int8 -1/0/+1 per bar, already clipped to its
direction) is what its backtest trades. A set stores only the *changes* of those
series, so it is small, and replaying it needs no indicator.

Storage, under ``<root>/signals/<set-id>/``::

    parts/<symbol>.parquet   one row per change: member (int16), timestamp (timestamp[ns, UTC]), target (int8),
                             symbol (dictionary string): readable as it is by pandas, polars, DuckDB
    state/<symbol>.state     the engine state the symbol's generation ended in (built-in members only)
    _signals.json            the manifest, written last

and ``<root>/signals/_chain/<key>.json``, the last complete set of a configuration
whatever the data (``_``-prefixed: not a set; :func:`list_signal_sets` skips it).

The manifest holds the members, the shared execution settings (cash, costs,
stops) they were ranked under, the dataset fingerprint and each symbol's bar
count and range, the package version, and every part with its sha256. A reader
sees a set only when the manifest exists, and trusts only the parts it lists
(checksums are verified on load). Parts have deterministic names and are written
whole, so an interrupted write leaves no visible set and rerunning the same
command completes it (parts already written are kept).

The set id is the token of (members, settings, data fingerprint, symbols, range,
package version): the same request finds the same set.

Incremental sets. A set whose members are all built-in strategies saves, per symbol,
the state its generation ended in (the table above :func:`_group_state`: indicator
kernel states, each group's strategy run states and last indicator column, each
member's last target, the last ``max(1, halo)`` bars, bars processed, first and last
timestamp), written before the part with :func:`admf_dask.sweep.incremental.write_state`
and recorded with its size and sha256 in the manifest's part entry (``state``). The
same configuration over data whose symbols only grew (the configuration's key is the
set identity without the data fingerprint) finds the last complete set through the
chain pointer; a symbol whose current version is the one that set saw, or extends it
by appended bars only (the bar store's ``lineage``), goes on from that set's state
(read back checked against its record) and part (checked against its sha256): its
part is the old events followed by the events of the bars after the old last one,
the only bars read. The others are generated in full. Every kernel carries its state
across chunks, so the part is the one a full generation writes, byte for byte. A
damaged state or part of the previous set is one error naming the file (generate
with ``force`` to recompute in full: it never continues). The manifest's ``summary``
says where the set went on from, how many symbols were incremental and how many
full, and how many bars the tasks read.
"""

from __future__ import annotations

import hashlib
import io
import math
import posixpath
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .bars import BarStore, Bars
from .config import token
from .errors import AdmfError, ConfigError, DataError, StorageError, did_you_mean
from .storage import StorageRef
from .sweep import check_metric

__all__ = ["Member", "SignalSet", "SignalsConfig", "generate_signals", "list_signal_sets", "MANIFEST", "FORMAT"]

MANIFEST = "_signals.json"
FORMAT = "admf-signals/1"
CHAIN = "_chain"  # signals/_chain/<key>.json: the last complete set of a configuration, whatever the data
COST_KEYS = ("cash", "commission", "slippage_bps", "whole_units", "stop_loss", "take_profit")


@dataclass(frozen=True)
class Member:
    """One configuration of a signal set: strategy, its parameters and direction mode."""

    strategy: str
    params: dict = field(default_factory=dict)
    direction: str = "long_short"

    @property
    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.strategy}({args})" + ("" if self.direction == "long_short" else f"[{self.direction}]")


@dataclass(frozen=True)
class SignalsConfig:
    """What to store: explicit ``configs``, or the ``top`` K of a finished sweep run (``from_run``).

    ``configs`` is a list of mappings ``{strategy, params, direction, symbols}``
    (``symbols`` optional; if given, every configuration must list the same ones).
    ``from_run`` is a sweep run id under ``<storage>/runs`` (or a run's URL); its
    top ``top`` parameter sets by ``metric`` (default: the run's) of the portfolio
    rows become the members, and the run's symbols, date range, direction and
    costs are used. Otherwise ``symbols`` (default all), ``start``, ``end`` and the
    cost settings here apply; the costs are stored with the set as the replay's
    defaults.
    """

    configs: list[dict] | None = None
    from_run: str | None = None
    top: int = 3
    metric: str | None = None
    symbols: list[str] | None = None
    start: str | None = None
    end: str | None = None
    cash: float = 10_000.0
    commission: float = 0.0
    slippage_bps: float = 0.0
    whole_units: bool = False
    stop_loss: float | None = None
    take_profit: float | None = None
    retries: int = 2
    memory_budget: int | str | None = None

    def __post_init__(self) -> None:
        from .backtest import _costs
        from .budget import parse_budget

        if (self.configs is None) == (self.from_run is None):
            raise ConfigError("give either configs (a list of strategy configurations) or from_run (a sweep run "
                              "id), not both and not neither", key="configs")
        if self.top < 1:
            raise ConfigError("top must be >= 1", key="top")
        if self.metric is not None:
            check_metric(self.metric)
        if self.retries < 0:
            raise ConfigError("retries must be >= 0", key="retries")
        object.__setattr__(self, "memory_budget", parse_budget(self.memory_budget))
        _costs("long_short", self.cash, self.commission, self.slippage_bps, self.whole_units, self.stop_loss,
               self.take_profit)
        if self.configs is not None:
            _explicit_members(self.configs)

    @property
    def costs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in COST_KEYS}


def _explicit_members(configs: Any) -> tuple[list[Member], list[str] | None]:
    """Validate explicit configurations: members, and the symbols they agree on (None: not given)."""
    from .strategies import direction_code, get_strategy

    if not isinstance(configs, list) or not configs:
        raise ConfigError("configs must be a non-empty list of {strategy, params, direction}", key="configs")
    members, symbols, first_with = [], None, None
    for i, raw in enumerate(configs):
        where = f"configs[{i}]"
        if not isinstance(raw, Mapping) or "strategy" not in raw:
            raise ConfigError(f"each configuration is a mapping with a strategy, got {raw!r}", key=where)
        unknown = set(raw) - {"strategy", "params", "direction", "symbols"}
        if unknown:
            name = sorted(unknown)[0]
            raise ConfigError(f"unknown key {name!r}", key=f"{where}.{name}",
                              hint=did_you_mean(name, ["strategy", "params", "direction", "symbols"]))
        try:
            s = get_strategy(raw["strategy"])
            params = s.validate(raw.get("params") or {}, where=where)
            direction = raw.get("direction", "long_short")
            direction_code(direction)
        except ConfigError as exc:
            raise ConfigError(exc.message, key=exc.where.get("key") or where, hint=exc.hint) from None
        members.append(Member(s.name, dict(params), direction))
        if "symbols" in raw:
            mine = list(raw["symbols"])
            if symbols is None:
                symbols, first_with = mine, i
            elif sorted(mine) != sorted(symbols):
                extra = sorted(set(mine) ^ set(symbols))
                raise ConfigError(f"the configurations' symbols do not match: configs[{i}] and "
                                  f"configs[{first_with}] differ in {extra[:5]}", key=f"{where}.symbols",
                                  hint="a signal set holds every member on the same symbols; give one symbols "
                                       "list for the set instead")
    if any("symbols" not in raw for raw in configs) and symbols is not None:
        missing = next(i for i, raw in enumerate(configs) if "symbols" not in raw)
        raise ConfigError(f"the configurations' symbols do not match: configs[{missing}] has none, "
                          f"configs[{first_with}] lists {len(symbols)}", key=f"configs[{missing}].symbols",
                          hint="give every configuration the same symbols, or none (then: all, or the set's)")
    return members, symbols


@dataclass(frozen=True)
class _Plan:
    """A resolved request: members, symbols, range and settings over one bar dataset."""

    members: tuple[Member, ...]
    symbols: tuple[str, ...]
    start: str | None
    end: str | None
    costs: dict
    source: dict


def _resolve(config: SignalsConfig, bars: BarStore, root: StorageRef) -> _Plan:
    if config.configs is not None:
        members, symbols = _explicit_members(config.configs)
        symbols = symbols or (list(config.symbols) if config.symbols else bars.symbols())
        if config.symbols and sorted(config.symbols) != sorted(symbols):
            raise ConfigError("the configurations' symbols do not match the set's symbols", key="symbols")
        return _Plan(tuple(members), tuple(symbols), config.start, config.end, config.costs, {"kind": "explicit"})
    # the top K of a finished sweep
    ref = StorageRef(config.from_run, root.storage_options) if "/" in config.from_run else \
        root.child("runs", config.from_run)
    storage = ref.open()
    if not storage.exists("run.json"):
        raise ConfigError(f"no sweep run {config.from_run!r} at {ref.url}", key="from_run",
                          hint="give the run id that `admf sweep` printed, under the same storage root")
    run = storage.read_json("run.json")
    if run.get("status") != "complete" or run.get("kind", "sweep") != "sweep":
        raise ConfigError(f"run {config.from_run} is not a finished sweep (status {run.get('status')!r})",
                          key="from_run", hint="finish the sweep first (rerun its command: it resumes)")
    if run["data_fingerprint"] != bars.fingerprint:
        raise DataError(f"run {config.from_run} was made from dataset fingerprint {run['data_fingerprint'][:12]}, "
                        f"the bar store at {bars.url} has {bars.fingerprint[:12]}", key="from_run",
                        hint="use the dataset the sweep ran on")
    from .sweep import SweepResult

    swept = run["config"]
    metric = config.metric or "sharpe"
    rows = SweepResult(run["run_id"], ref.url, run.get("summary", {}), None, storage).top(config.top, metric)
    if len(rows) < config.top:  # taking fewer than asked for would be silent
        raise ConfigError(f"top {config.top} is more than the {len(rows)} parameter set(s) run {config.from_run} "
                          f"ranks by {metric}", key="top", hint=f"ask for --top {len(rows)} or fewer")
    from .strategies import get_strategy

    names = get_strategy(swept["strategy"]).param_names
    members = []
    for _, row in rows.iterrows():
        params = {n: _plain(row[n]) for n in names if n in row and not _missing(row[n])}
        members.append(Member(swept["strategy"], params, swept["direction"]))
    costs = {k: swept[k] for k in COST_KEYS}
    return _Plan(tuple(members), tuple(run["symbols"]), swept.get("start"), swept.get("end"), costs,
                 {"kind": "sweep", "run": run["run_id"], "metric": metric, "top": config.top})


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _missing(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


class MemberTargets:
    """Payload builder of a signal set: every member's targets (int8 rows) for each chunk of one symbol.

    Members of one strategy and direction form a batch: a built-in's indicator rows are
    streamed (:class:`~admf_dask.cache.IndicatorStream`) and its rule run with the
    strategy state carried (:func:`~admf_dask.kernels.strategies.strategy_targets_chunk`);
    a user strategy's targets come from its function with its lookback of halo bars.
    A builder of built-ins only can hand over its state (:meth:`state_arrays`) and go on
    from a saved one (:meth:`restore`): what an incremental set continues from.
    """

    def __init__(self, members: Sequence[Member], symbol: str, series_key: str) -> None:
        from .backtest import _UserTargets
        from .cache import IndicatorStream
        from .kernels.state import run_state_init

        self.groups = []
        self.halo = 0
        for ks, batch, code in _member_groups(members):
            if batch.strategy.builtin:
                hub = IndicatorStream(batch.plan.specs, batch.rows, None, series_key)
                builder = (hub, run_state_init(len(ks), 0.0), [np.empty((len(batch.rows), 0))])
                self.halo = max(self.halo, hub.halo)
            else:
                rows = [(spec.token, out) for spec in batch.plan.specs for out in spec.outputs]
                hub = IndicatorStream(batch.plan.specs, rows, None, series_key)
                builder = _UserTargets(batch.strategy, batch, symbol, hub, rows, code)
                self.halo = max(self.halo, hub.halo, builder.halo)
            self.groups.append((ks, batch, code, builder))

    def __call__(self, columns: dict[str, np.ndarray], hb: int, t0: int, out: np.ndarray) -> None:
        from .kernels.strategies import strategy_targets_chunk

        n = out.shape[1]
        for ks, batch, code, builder in self.groups:
            if not isinstance(builder, tuple):
                sub = np.empty((len(ks), n), dtype=np.int8)
                builder(columns, hb, t0, sub)
                out[ks] = sub
                continue
            hub, state, last = builder
            h = 1 if t0 > 0 else 0
            ind = np.empty((len(batch.rows), h + n))
            ind[:, :h] = last[0]
            hub(columns, hb, t0, ind[:, h:])
            close = np.ascontiguousarray(columns["close"][hb - h:], dtype=np.float64)
            out[ks] = strategy_targets_chunk(batch.strategy.kind, ind, batch.idx, batch.fparams, close, h, t0,
                                             state, code)
            last[0] = ind[:, -1:].copy()

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Each group's state after the last chunk: ``g<g>/run``, ``g<g>/last``, ``g<g>/ind/<token>``."""
        out: dict[str, np.ndarray] = {}
        for g, (_, _, _, builder) in enumerate(self.groups):
            hub, state, last = builder
            out.update(_group_state(g, state, last[0][:, -1], hub.states))
        return out

    def restore(self, arrays: Mapping[str, np.ndarray], where: str) -> None:
        """Go on from :meth:`state_arrays` saved after bar ``t0 - 1`` (StorageError if they do not fit)."""
        for g, (ks, batch, _, builder) in enumerate(self.groups):
            hub, state, last = builder
            p = f"g{g}/"
            tokens = {name[len(p) + 4:] for name in arrays if name.startswith(p + "ind/")}
            if (tokens != set(hub.states) or arrays.get(p + "run") is None or arrays[p + "run"].shape != state.shape
                    or arrays.get(p + "last") is None or arrays[p + "last"].shape != (len(batch.rows),)):
                raise StorageError("saved engine state does not fit this signal set's members", file=where,
                                   hint="rerun with --force to generate the set in full")
            state[:] = arrays[p + "run"]
            last[0] = np.array(arrays[p + "last"], dtype=np.float64).reshape(-1, 1)
            for tok in tokens:
                hub.states[tok] = np.array(arrays[f"{p}ind/{tok}"], dtype=np.float64)


def _member_groups(members: Sequence[Member]) -> list[tuple[list[int], Any, int]]:
    """Members by (strategy, direction), in order of first appearance: (member indices, batch, direction code)."""
    from .strategies import direction_code, prepare_batch

    by: dict[tuple[str, str], list[int]] = {}
    for k, m in enumerate(members):
        by.setdefault((m.strategy, m.direction), []).append(k)
    return [(ks, prepare_batch(strategy, [members[k].params for k in ks]), direction_code(direction))
            for (strategy, direction), ks in by.items()]


def resumable(members: Sequence[Member]) -> bool:
    """Whether a set of these members saves the state a later set goes on from (built-in strategies only)."""
    from .strategies import get_strategy

    return all(get_strategy(m.strategy).builtin for m in members)


# ---------------------------------------------------------------- the state a symbol's part ends in
#
# state/<symbol>.state (arrays format of admf_dask.sweep.incremental.write_state), per symbol:
#   i8                 [bars processed, first timestamp, last timestamp] (ns)
#   tail_ts, tail      the last max(1, halo) bars: timestamps, and the value columns (5 x bars)
#   prev               each member's target at the last bar (int64, K): what events_from_targets_chunk carries
#   g<g>/run           group g's strategy run states (what strategy_targets_chunk carries)
#   g<g>/last          group g's indicator rows at the last bar (the halo column of its next chunk)
#   g<g>/ind/<token>   each indicator kernel's state at the last bar

def _group_state(g: int, run: np.ndarray, last: np.ndarray, ind: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    p = f"g{g}/"
    out = {p + "run": np.ascontiguousarray(run, dtype=np.float64),
           p + "last": np.ascontiguousarray(last, dtype=np.float64)}
    out.update({f"{p}ind/{tok}": np.asarray(st, dtype=np.float64) for tok, st in ind.items()})
    return out


def _symbol_state(groups: dict[str, np.ndarray], tail: Mapping[str, np.ndarray], prev: np.ndarray, seen: int,
                  first_ns: int, last_ns: int) -> dict[str, np.ndarray]:
    from .bars.schema import VALUE_COLUMNS

    return {"i8": np.array([seen, first_ns, last_ns], dtype=np.int64),
            "tail_ts": np.ascontiguousarray(tail["timestamp"], dtype=np.int64),
            "tail": np.stack([np.asarray(tail[c], dtype=np.float64) for c in VALUE_COLUMNS]),
            "prev": np.ascontiguousarray(prev, dtype=np.int64), **groups}


def _state_name(symbol: str) -> str:
    return f"state/{symbol}.state"


@dataclass(frozen=True)
class Continue:
    """Where a symbol of a new set goes on from: the previous set's part entry (file, sha256, state record)."""

    set_ref: StorageRef
    part: dict


def write_parts(set_ref: StorageRef, bars_ref: StorageRef, fingerprint: str, symbols: Sequence[str],
                start: Any, end: Any, members: Sequence[Member], rows: int, cache_ref: StorageRef | None,
                keep_state: bool = False, resume: Mapping[str, Continue] | None = None) -> list[dict[str, Any]]:
    """Task: the signal parts of some symbols, written (or found written) under ``parts/``; their entries.

    A symbol of at most ``rows`` bars is held whole: its indicators come through the hub's
    storage cache (:func:`~admf_dask.cache.build_indicator_set`: those of the sweep the
    members came from are loaded, not recomputed) and each member's targets are what its
    backtest trades (:func:`~admf_dask.backtest.batch_targets`).
    A longer symbol is read in chunks of at most ``rows`` bars (:class:`~admf_dask.stream.SymbolStream`);
    each member's targets are what its backtest trades, computed with every state carried
    from chunk to chunk (:class:`MemberTargets`), and their change events are appended to the
    part chunk by chunk (:func:`~admf_dask.kernels.replay.events_from_targets_chunk`), so a
    task holds one chunk of bars whatever the history, plus the symbol's events (sparse:
    a few per trade), which are written once the symbol is done, ordered by member, then time.

    With ``keep_state`` each symbol's end state is written first, ``state/<symbol>.state``,
    and recorded in its entry (``state``: file, size, sha256); then its part. A symbol in
    ``resume`` goes on from the state and part of a previous set (:class:`Continue`): only
    its bars after that set's last one are read. Each entry also says how many bars were
    read from the store (``read``, 0 for a part found written).
    """
    storage = set_ref.open()
    store = BarStore.open(bars_ref, fingerprint)
    resume = resume or {}
    earlier: dict[StorageRef, Any] = {}  # the previous sets' storage, opened once per task
    entries = []
    for symbol in symbols:
        name = f"parts/{symbol}.parquet"
        found = _found(storage, store, name, symbol, start, end, keep_state)
        if found is not None:
            entries.append(found)
            continue
        try:
            if symbol in resume:
                cont = resume[symbol]
                if cont.set_ref not in earlier:
                    earlier[cont.set_ref] = cont.set_ref.open()
                table, n, first, last, state, read = _continued_part(store, symbol, end, members, rows, cont,
                                                                     earlier[cont.set_ref])
            elif store.rows_in_range(symbol, start, end) <= rows:
                table, n, first, last, state = _whole_part(store, symbol, start, end, members, cache_ref,
                                                           keep_state)
                read = n
            else:
                table, n, first, last, state, read = _streamed_part(store, symbol, start, end, members, rows,
                                                                    keep_state)
        except AdmfError as exc:  # the symbol it failed on, for the one line the user gets
            if "symbol" in exc.where:
                raise
            raise type(exc)(exc.message, hint=exc.hint, symbol=symbol, **exc.where) from exc
        entry = {}
        if state is not None:  # the state first: a part found written has its state beside it
            entry["state"] = _write_state(storage, state, _state_name(symbol))
        buf = io.BytesIO()
        pq.write_table(_stored_events(table, symbol), buf)  # one chunk: the same bytes however the events were cut
        raw = buf.getvalue()
        storage.write_bytes(raw, name)
        entries.append({"symbol": symbol, "file": name, "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw),
                        "events": table.num_rows, "bars": n, "first_ns": first, "last_ns": last, **entry,
                        "read": read})
    return entries


def _read_state(storage: Any, rec: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A saved state's arrays, checked against the size and sha256 recorded at commit, on a storage
    already open (one per task, not one per symbol: opening an object store costs a new session)."""
    from .sweep.incremental import read_saved_state

    return read_saved_state(storage, rec)


def _write_state(storage: Any, arrays: dict[str, np.ndarray], name: str) -> dict[str, Any]:
    from .sweep.incremental import write_state

    return write_state(storage, arrays, name)


def _found(storage: Any, store: BarStore, name: str, symbol: str, start: Any, end: Any,
           keep_state: bool) -> dict[str, Any] | None:
    """The entry of a part an earlier, interrupted run of the same set wrote whole (with its state), or None."""
    from .sweep.portfolio import _arrays_read

    if not storage.exists(name):
        return None
    entry: dict[str, Any] = {}
    if keep_state:
        state_name = _state_name(symbol)
        try:
            raw_state = storage.read_bytes(state_name)
            i8 = _arrays_read(raw_state, storage.display(state_name))["i8"]
        except (FileNotFoundError, StorageError, KeyError):
            return None  # no usable state beside it: compute the symbol again (same part, same name)
        n, first, last = (int(v) for v in i8)
        entry["state"] = {"file": state_name, "size": len(raw_state),
                          "sha256": hashlib.sha256(raw_state).hexdigest()}
    else:
        n, first, last = _span(store, symbol, start, end)
    raw = storage.read_bytes(name)
    try:
        events = pq.read_metadata(io.BytesIO(raw)).num_rows
    except (pa.ArrowException, OSError):
        return None  # damaged (truncated, overwritten): compute the symbol again
    return {"symbol": symbol, "file": name, "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw),
            "events": events, "bars": n,
            "first_ns": first if n else None, "last_ns": last if n else None, **entry, "read": 0}


_EVENTS = pa.schema([("member", pa.int16()), ("timestamp", pa.int64()), ("target", pa.int8())])
_STORED_TS = pa.timestamp("ns", tz="UTC")


def _stored_events(table: pa.Table, symbol: str) -> pa.Table:
    """Events as a part stores them: the timestamp a UTC timestamp type, a symbol column; one chunk."""
    table = table.select(["member", "timestamp", "target"]).combine_chunks()
    ts = table.column("timestamp").cast(pa.int64()).cast(_STORED_TS)
    symbols = pa.DictionaryArray.from_arrays(pa.array(np.zeros(table.num_rows, np.int32)), pa.array([symbol]))
    return table.set_column(1, pa.field("timestamp", _STORED_TS), ts).append_column("symbol", symbols)


def _empty_events() -> pa.Table:
    return pa.table({"member": np.empty(0, np.int16), "timestamp": np.empty(0, np.int64),
                     "target": np.empty(0, np.int8)})


def _stream_events(stream: Any, k: int, prev: np.ndarray) -> tuple[list[pa.Table], int | None, int | None]:
    """Drain ``stream``: the change events of its pieces (``prev`` carried), its first and last timestamp."""
    from .kernels.replay import events_from_targets_chunk

    pieces, first, last = [], None, None
    while stream.pending():
        piece = stream.take(stream.last_stamp())
        ptr, bar, value = events_from_targets_chunk(piece.payload, piece.h, piece.t0, prev)
        member = np.repeat(np.arange(k, dtype=np.int16), np.diff(ptr))
        pieces.append(pa.table({"member": member, "timestamp": piece.stamps[bar - piece.t0].astype(np.int64),
                                "target": value}))
        first = int(piece.stamps[0]) if first is None else first
        last = int(piece.stamps[-1])
    return pieces, first, last


def _stream_state(stream: Any, targets: MemberTargets, prev: np.ndarray, first: int | None,
                  last: int | None) -> dict[str, np.ndarray] | None:
    if not stream.seen:
        return None  # no bars in the range: nothing to go on from
    return _symbol_state(targets.state_arrays(), stream.tail(), prev, stream.seen, first, last)


def _streamed_part(store: BarStore, symbol: str, start: Any, end: Any, members: Sequence[Member], rows: int,
                   keep_state: bool) -> tuple:
    """One symbol's events in time chunks: ``(table, bars, first_ns, last_ns, state or None, bars read)``."""
    from .cache import stream_key
    from .stream import SymbolStream

    targets = MemberTargets(members, symbol, stream_key(store.symbol_fingerprint(symbol), start))
    stream = SymbolStream(store, symbol, start, end, rows, targets.halo, len(members), np.int8, targets)
    prev = np.zeros(len(members), dtype=np.int64)
    pieces, first, last = _stream_events(stream, len(members), prev)
    table = pa.concat_tables(pieces) if pieces else _empty_events()
    table = table.sort_by([("member", "ascending"), ("timestamp", "ascending")])
    state = _stream_state(stream, targets, prev, first, last) if keep_state else None
    return table, stream.seen, first, last, state, stream.seen


def _continued_part(store: BarStore, symbol: str, end: Any, members: Sequence[Member], rows: int,
                    cont: Continue, earlier: Any) -> tuple:
    """A symbol that only grew, from the previous set's state and part: only the bars after its last are read.

    The previous part's events (checked against the sha256 its manifest recorded), then
    the new bars' events, computed from the saved state: what a full generation gives.
    """
    from .bars.schema import VALUE_COLUMNS
    from .kernels.stats import PeriodsPerYearStream
    from .stream import SymbolStream

    rec = cont.part["state"]
    saved = _read_state(earlier, rec)
    where = earlier.display(rec["file"])
    try:
        seen, first0, last0 = (int(v) for v in saved["i8"])
        tail = {"timestamp": saved["tail_ts"], **{c: saved["tail"][j] for j, c in enumerate(VALUE_COLUMNS)}}
        prev = np.array(saved["prev"], dtype=np.int64)
    except (KeyError, ValueError, IndexError):
        raise StorageError("saved engine state of a signal part lacks its counters, halo bars or targets",
                           file=where, symbol=symbol, hint="rerun with --force to generate the set in full") from None
    if seen != cont.part["bars"] or last0 != cont.part["last_ns"] or len(prev) != len(members):
        raise StorageError(f"saved engine state does not match its part ({seen} bars to {last0}, the part has "
                           f"{cont.part['bars']} to {cont.part['last_ns']})", file=where, symbol=symbol,
                           hint="rerun with --force to generate the set in full")
    old = read_verified_part(cont.set_ref, cont.part, symbol, earlier)
    targets = MemberTargets(members, symbol, "")
    targets.restore(saved, where)
    begin = last0 + 1  # the range's start is at or before the first bar the previous set read
    stream = SymbolStream(store, symbol, begin, end, rows, targets.halo, len(members), np.int8, targets)
    stream.restore(seen, tail, prev.astype(np.int8), np.nan, np.nan, PeriodsPerYearStream())
    pieces, _, last = _stream_events(stream, len(members), prev)
    table = pa.concat_tables([old.select(["member", "timestamp", "target"]), *pieces])
    table = table.sort_by([("member", "ascending"), ("timestamp", "ascending")])
    last = last0 if last is None else last
    state = _symbol_state(targets.state_arrays(), stream.tail(), prev, stream.seen, first0, last)
    return table, stream.seen, first0, last, state, stream.seen - seen


def _whole_part(store: BarStore, symbol: str, start: Any, end: Any, members: Sequence[Member],
                cache_ref: StorageRef | None, keep_state: bool) -> tuple:
    """One symbol's events from its whole history: ``(table, bars, first_ns, last_ns, state or None)``.

    With ``keep_state`` (built-in members) the targets come from the same rule kernel as
    :func:`~admf_dask.backtest.batch_targets`, as one chunk, so that its end state is kept,
    with the indicators' end states (computed here, or stored with their packs in the
    storage cache; a pack written without them has its indicator run once more, as one
    chunk, for it) and the last ``max(1, halo)`` bars: the state a stream over the same
    bars ends in.
    """
    from .backtest import _f64, _ind_matrix, batch_targets
    from .cache import build_indicator_set
    from .indicators import IndicatorPlan
    from .kernels.state import run_state_init
    from .kernels.strategies import strategy_targets_chunk
    from .strategies import get_strategy

    plan = IndicatorPlan.from_requests(spec for m in members for spec in get_strategy(m.strategy).specs(m.params))
    iset = build_indicator_set(store.ref, symbol, start, end, plan.specs, cache_ref, fingerprint=store.fingerprint)
    bars = iset.bars
    n = len(bars)
    targets = np.empty((len(members), n), dtype=np.int8)
    keep_state = keep_state and n > 0
    groups: dict[str, np.ndarray] = {}
    ends: dict[str, np.ndarray] = dict(iset.states)
    halo = 0
    for g, (ks, batch, code) in enumerate(_member_groups(members)):
        if not keep_state:
            targets[ks] = batch_targets(iset, batch, code)
            continue
        stacked = iset.stacked(batch.rows)
        if stacked is not None:  # the set's own matrix, as batch_targets reads it
            ind, rows = stacked
            idx, last = rows[batch.idx], ind[rows, -1]
        else:
            ind, idx = _ind_matrix(batch, iset, bars)
            last = ind[:len(batch.rows), -1]
        run = run_state_init(len(ks), 0.0)
        targets[ks] = strategy_targets_chunk(batch.strategy.kind, ind, idx, batch.fparams,
                                             _f64(bars.columns["close"]), 0, 0, run, code)
        ends_of = {}
        for spec in batch.plan.specs:
            if spec.token not in ends:
                _, ends[spec.token] = spec.compute_chunk(bars.columns, 0, spec.init_state())
            ends_of[spec.token] = ends[spec.token]
            halo = max(halo, spec.halo)
        groups.update(_group_state(g, run, last, ends_of))
    table = _events_table(bars.timestamp, targets)
    ts = bars.timestamp
    state = None
    if keep_state:
        keep = min(max(1, halo), n)
        tail = {"timestamp": ts[-keep:], **{c: v[-keep:] for c, v in bars.columns.items()}}
        state = _symbol_state(groups, tail, targets[:, -1].astype(np.int64), n, int(ts[0]), int(ts[-1]))
    return table, n, int(ts[0]) if n else None, int(ts[-1]) if n else None, state


def _events_table(timestamps: np.ndarray, targets: np.ndarray) -> pa.Table:
    from .kernels.replay import events_from_targets

    ptr, bar, value = events_from_targets(np.ascontiguousarray(targets, dtype=np.int8))
    member = np.repeat(np.arange(len(ptr) - 1, dtype=np.int16), np.diff(ptr))
    return pa.table({"member": member, "timestamp": timestamps[bar].astype(np.int64), "target": value})


def _span(store: BarStore, symbol: str, start: Any, end: Any) -> tuple[int, int | None, int | None]:
    """Bars of ``symbol`` in the range, and its first and last timestamp (read a timestamp chunk at a time)."""
    n, first, last = 0, None, None
    for chunk in store.iter_chunks(symbol, start=start, end=end, columns=[], max_rows=1 << 20):
        first = int(chunk.timestamp[0]) if first is None else first
        last = int(chunk.timestamp[-1])
        n += len(chunk)
    return n, first, last


@dataclass(frozen=True)
class SignalSet:
    """A committed signal set: its manifest, opened from storage and checked."""

    ref: StorageRef
    manifest: dict

    @classmethod
    def open(cls, ref: StorageRef) -> SignalSet:
        """Open the set at ``ref``; DataError if its manifest is missing or corrupt."""
        storage = ref.open()
        if not storage.exists(MANIFEST):
            raise DataError(f"no signal set at {ref.url}: its manifest {MANIFEST} is missing", file=ref.url,
                            hint="a set is visible only once `admf signals` has finished writing it; "
                                 "rerun that command to complete it")
        try:
            manifest = storage.read_json(MANIFEST)
            ok = (isinstance(manifest, dict) and manifest.get("format") == FORMAT
                  and isinstance(manifest.get("members"), list) and manifest["members"]
                  and isinstance(manifest.get("parts"), dict)
                  and set(manifest["parts"]) == set(manifest.get("symbols", [])))
        except Exception as exc:  # unreadable JSON, a truncated file ...
            raise DataError(f"the signal set manifest at {storage.display(MANIFEST)} is corrupt: "
                            f"{type(exc).__name__}: {exc}", file=storage.display(MANIFEST),
                            hint="regenerate the set with `admf signals`") from None
        if not ok:
            raise DataError(f"the signal set manifest at {storage.display(MANIFEST)} is corrupt: it does not "
                            f"describe a {FORMAT} set with members and one part per symbol",
                            file=storage.display(MANIFEST), hint="regenerate the set with `admf signals`")
        return cls(ref, manifest)

    @property
    def set_id(self) -> str:
        return self.manifest["set_id"]

    @property
    def members(self) -> list[Member]:
        return [Member(m["strategy"], dict(m["params"]), m["direction"]) for m in self.manifest["members"]]

    @property
    def symbols(self) -> list[str]:
        return list(self.manifest["symbols"])

    @property
    def costs(self) -> dict[str, Any]:
        return dict(self.manifest["costs"])

    def check_data(self, bars: BarStore) -> None:
        """DataError unless ``bars`` is the dataset the set was made from."""
        if bars.fingerprint != self.manifest["data_fingerprint"]:
            raise DataError(f"signal set {self.set_id} was made from dataset fingerprint "
                            f"{self.manifest['data_fingerprint'][:12]}, but the bar store at {bars.url} has "
                            f"{bars.fingerprint[:12]}", file=self.ref.url, key="data_fingerprint",
                            hint="replay against the dataset the signals came from, or regenerate them "
                                 "(`admf signals`) on this one")

    def read_part(self, symbol: str) -> pa.Table:
        """The events of ``symbol`` (member, timestamp, target), from its part, checked against its checksum."""
        entry = self.manifest["parts"].get(symbol)
        if entry is None:
            raise DataError(f"signal set {self.set_id} has no part for {symbol}", symbol=symbol, file=self.ref.url,
                            hint=did_you_mean(symbol, self.symbols) or "replay the set's own symbols")
        return read_verified_part(self.ref, entry, symbol)

    def load(self, symbol: str, bars: Bars) -> np.ndarray:
        """The members' dense targets on ``bars`` (int8, K x n), from the verified part of ``symbol``."""
        from .kernels.replay import dense_targets

        table = self.read_part(symbol)
        entry = self.manifest["parts"][symbol]
        where = self.ref.open().display(entry["file"])
        stamps = table.column("timestamp").to_numpy()
        bar = np.searchsorted(bars.timestamp, stamps)
        if len(bars) != entry["bars"] or (len(stamps) and (bar.max() >= len(bars)
                                                            or (bars.timestamp[np.minimum(bar, len(bars) - 1)]
                                                                != stamps).any())):
            raise DataError(f"signal part {where} does not match the bars of {symbol} "
                            f"({len(bars)} bars, the set expects {entry['bars']})", file=where, symbol=symbol,
                            hint="replay over the set's own date range and dataset")
        member = table.column("member").to_numpy().astype(np.int64)
        k = len(self.manifest["members"])
        ptr = np.searchsorted(member, np.arange(k + 1)).astype(np.int64)
        return dense_targets(ptr, bar.astype(np.int64), table.column("target").to_numpy().astype(np.int8), len(bars))

    def size(self) -> dict[str, int]:
        """Bytes stored (parts) against dense int8 storage of the same targets (members x bars)."""
        parts = self.manifest["parts"].values()
        return {"bytes": sum(p["bytes"] for p in parts),
                "dense_int8_bytes": len(self.manifest["members"]) * sum(p["bars"] for p in parts),
                "events": sum(p["events"] for p in parts)}


def read_verified_part(set_ref: StorageRef, entry: Mapping[str, Any], symbol: str,
                       storage: Any = None) -> pa.Table:
    """The events of a part (``entry`` of a set's manifest), checked against the sha256 recorded at commit.

    ``storage``: the set's storage if already open.
    """

    storage = storage if storage is not None else set_ref.open()
    where = storage.display(entry["file"])
    try:
        raw = storage.read_bytes(entry["file"])
    except (FileNotFoundError, StorageError) as exc:
        if isinstance(exc, StorageError) and exc.message != "file not found":
            raise
        raise DataError(f"signal part {where} listed in the manifest is missing", file=where, symbol=symbol,
                        hint="regenerate the set with `admf signals --force`") from None
    if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
        raise DataError(f"signal part {where} fails its checksum", file=where, symbol=symbol,
                        hint="regenerate the set with `admf signals --force`")
    table = pq.read_table(io.BytesIO(raw), columns=["member", "timestamp", "target"])
    return table.cast(_EVENTS)  # int64 ns, as the kernels take them (parts of older sets stored int64)


def set_identity(plan: _Plan, bars: BarStore) -> dict[str, Any]:
    return {"signals": [asdict(m) for m in plan.members], "costs": plan.costs, "data": bars.fingerprint,
            "symbols": list(plan.symbols), "start": plan.start, "end": plan.end, "version": __version__}


def generate_signals(config: SignalsConfig, bars: BarStore, root: StorageRef, client: Any, *,
                     force: bool = False, echo: Callable[[str], None] = print, progress: bool = True,
                     wait: bool = False, performance_report: str | bool | None = None) -> SignalSet:
    """Phase 1: compute and store the signals of ``config``'s members; return the committed set.

    ``performance_report``: a path for dask's performance report of the set's tasks, or
    True for the default place (beside the manifest on local storage); the manifest records it.

    Runs as batched tasks (a few symbols each) on ``client`` (a Client, or a function
    that connects one, called only if there is work); writes the manifest last.
    An existing complete set is returned as it is (``force`` rewrites it, in full).
    While writing, this process holds the set's lease (:mod:`admf_dask.runs`): another
    process writing it raises BusyError (exit 75), or with ``wait`` is waited for.

    Incremental: a set of built-in members saves each symbol's end state. When the same
    configuration (the set identity but the data) was generated before (the chain
    pointer ``signals/_chain/<key>.json`` names its last complete set), each symbol whose
    current version extends the one that set saw by appended bars only continues from
    that set's state and part, reading only the new bars; the others are generated in
    full. The manifest's ``summary`` says which and how many bars were read.
    """
    from .runs import run_lease

    plan = _resolve(config, bars, root)
    from .preflight import check_range

    check_range(bars, plan.symbols, plan.start, plan.end)  # unknown symbols, empty ranges: before any write
    identity = set_identity(plan, bars)
    set_id = token(identity)[:16]
    ref = root.child("signals", set_id)
    with run_lease(root, "signals", set_id, wait=wait, echo=echo,
                   complete=None if force else lambda: ref.open().exists(MANIFEST)) as lease:
        return _generate_signals(config, plan, identity, set_id, bars, root, client, force=force, echo=echo,
                                 progress=progress, lease=lease, performance_report=performance_report)


def _generate_signals(config: SignalsConfig, plan: _Plan, identity: dict[str, Any], set_id: str, bars: BarStore,
                      root: StorageRef,
                      client: Any, *, force: bool, echo: Callable[[str], None], progress: bool,
                      lease: Any, performance_report: str | bool | None = None) -> SignalSet:
    """:func:`generate_signals`' work, under the set's ``lease`` (confirmed before the manifest is written)."""
    from .cluster import ensure_client, run_tasks
    from .sweep.incremental import chain_key

    ref = root.child("signals", set_id)
    storage = ref.open()
    if force and storage.fs.exists(storage.path()):
        echo(f"--force: discarding signal set {set_id}")
        storage.fs.rm(storage.path(), recursive=True)
    if storage.exists(MANIFEST):
        echo(f"signal set {set_id} is already complete")
        return SignalSet.open(ref)
    echo(f"signal set {set_id}: {len(plan.members)} configuration(s) x {len(plan.symbols)} symbol(s)")
    keep_state = resumable(plan.members)
    if force:
        prev_id, resume, note = None, {}, "--force: generated in full"
    else:
        prev_id, resume, note = _plan_continue(root, identity, plan, bars, keep_state)
    echo(f"  {note}")
    client = ensure_client(client)
    threads = sum(w.get("nthreads", 1) for w in client.scheduler_info(n_workers=-1)["workers"].values())
    per_task = max(1, math.ceil(len(plan.symbols) / (4 * max(threads, 1))))
    groups = [plan.symbols[i:i + per_task] for i in range(0, len(plan.symbols), per_task)]
    rows = _chunk_rows(config, client, plan.members)
    # Keys unique to this call: a task of another root's set of the same id, or of an attempt that failed
    # here, must not stand in for this one. On an error the run waits for the tasks already running, so that
    # none is still writing into the set's directory when the call returns (and --force removes it).
    nonce = uuid.uuid4().hex[:8]
    from .monitor import RunMonitor, report_path

    monitor = RunMonitor(client, threads, stage="signals", on=False,
                         performance_report=report_path(performance_report, storage, set_id)).start()
    results = run_tasks(client, _write_group, [(ref, bars.ref, bars.fingerprint, g, plan.start, plan.end,
                                                plan.members, rows, root.child("cache"), keep_state,
                                                {s: resume[s] for s in g if s in resume}) for g in groups],
                        label="signals", progress=progress, retries=config.retries, drain_on_error=True,
                        keys=[f"signals-{set_id}-{nonce}-{i}" for i in range(len(groups))])
    monitor.stop()
    entries = [e for group in results for e in group]
    parts = {e["symbol"]: {k: v for k, v in e.items() if k not in ("symbol", "read")} for e in entries}
    summary = {"incremental_from": prev_id, "incremental_symbols": len(resume),
               "full_symbols": len(plan.symbols) - len(resume), "bars_read": int(sum(e["read"] for e in entries)),
               "note": note}
    manifest = {"format": FORMAT, "set_id": set_id, "version": __version__, "data_fingerprint": bars.fingerprint,
                "bars": bars.url, "symbols": list(plan.symbols), "start": plan.start, "end": plan.end,
                "members": [{**asdict(m), "label": m.label} for m in plan.members], "costs": plan.costs,
                "source": plan.source, "parts": parts, "resumable": keep_state,
                "symbol_versions": {s: bars.symbol_fingerprint(s) for s in plan.symbols}, "summary": summary,
                **({"performance_report": monitor.path} if monitor.path else {})}
    lease.confirm()
    storage.write_json(manifest, MANIFEST)  # the commit point
    if keep_state:  # then the chain: the next set of this configuration goes on from this one
        root.child("signals").open().write_json({"set_id": set_id}, f"{CHAIN}/{chain_key(identity)}.json")
    echo(f"  {summary['incremental_symbols']} symbol(s) incremental, {summary['full_symbols']} in full, "
         f"{summary['bars_read']:,} bars read")
    return SignalSet(ref, manifest)


def _plan_continue(root: StorageRef, identity: dict[str, Any], plan: _Plan, bars: BarStore,
                   keep_state: bool) -> tuple[str | None, dict[str, Continue], str]:
    """The last complete set of this configuration and the symbols that continue from it: ``(set id, resume, note)``.

    A symbol continues when that set saved its state and the symbol's current version is
    the one that set saw or extends it by appended bars only (the bar store's ``lineage``);
    the others are generated in full. ``note`` says in a line what happens and why.
    """
    from .sweep.incremental import chain_key, extends

    if not keep_state:
        return None, {}, "generated in full: a user strategy's state is not saved (not resumable)"
    storage = root.child("signals").open()
    pointer = f"{CHAIN}/{chain_key(identity)}.json"
    if not storage.exists(pointer):
        return None, {}, "generated in full: no earlier set of this configuration"
    try:
        prev_id = str(storage.read_json(pointer)["set_id"])
        prev = SignalSet.open(root.child("signals", prev_id))
    except (DataError, KeyError, ValueError, TypeError) as exc:
        return None, {}, f"generated in full: the last set of this configuration cannot be read ({exc})"
    m = prev.manifest
    if (m.get("version") != __version__ or not m.get("resumable") or m.get("symbols") != list(plan.symbols)
            or [{k: v for k, v in x.items() if k != "label"} for x in m["members"]] != identity["signals"]):
        return None, {}, (f"generated in full: the last set {prev_id} cannot be continued (other members, "
                          f"symbols or version, or no saved state)")
    versions = m.get("symbol_versions") or {}
    resume, changed = {}, []
    for s in plan.symbols:
        part = m["parts"][s]
        if part.get("state") and s in versions and extends(bars, s, versions[s]):
            resume[s] = Continue(prev.ref, dict(part))
        else:
            changed.append(s)
    if not resume:
        return None, {}, f"generated in full: no symbol of set {prev_id} only grew (history changed or no state)"
    note = f"incremental: continuing from set {prev_id}: {len(resume)} symbol(s) only grew"
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        note += f"; {len(changed)} generated in full (history changed, not only appended): {shown}"
    return prev_id, resume, note


def list_signal_sets(root: StorageRef) -> list[str]:
    """The ids of the complete signal sets under ``<root>/signals`` (their manifest present), sorted.

    Entries whose names start with ``_`` (the chain pointers, ``_chain/``) are not sets.
    """
    storage = root.child("signals").open()
    try:
        names = [posixpath.basename(p.rstrip("/")) for p in storage.fs.ls(storage.path(), detail=False)]
    except FileNotFoundError:
        return []
    return sorted(n for n in names if not n.startswith("_") and storage.exists(n, MANIFEST))


def _chunk_rows(config: SignalsConfig, client: Any, members: Sequence[Member]) -> int:
    """Bars per chunk of a signal set's tasks, from the memory budget (ConfigError if it cannot hold one chunk)."""
    from .budget import BAR_BYTES, budget_error, chunk_rows, default_budget, worker_memory
    from .strategies import prepare_batch

    limit, threads = worker_memory(client)
    budget = config.memory_budget or default_budget(limit, threads)
    payload, halo = float(len(members)), 0
    for m in members:
        batch = prepare_batch(m.strategy, [m.params])
        payload += 8 * sum(len(spec.outputs) for spec in batch.plan.specs)
        halo = max([halo, batch.strategy.lookback(batch.params[0]), *(spec.halo for spec in batch.plan.specs)])
    error = budget_error(budget, limit, threads, int((halo + 1) * (BAR_BYTES + payload)), "these members' indicators")
    if error is not None:
        raise error
    return max(halo + 1, chunk_rows(budget, symbols=1, sets=0, payload_bytes=payload))


def _write_group(args: tuple) -> list[dict[str, Any]]:
    return write_parts(*args)
