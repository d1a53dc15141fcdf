"""Signal sets: the target series of K strategy configurations, generated once and stored sparse.

Phase 1 of signal replay (:mod:`admf_dask.replay` is phase 2). Every member of a
set is one strategy configuration (strategy, parameters, direction mode); its
target series on each symbol (int8 -1/0/+1 per bar, already clipped to its
direction) is what its backtest trades. A set stores only the *changes* of those
series, so it is small, and replaying it needs no indicator.

Storage, under ``<root>/signals/<set-id>/``::

    parts/<symbol>.parquet   one row per change: member (int16), timestamp (int64 ns UTC), target (int8)
    _signals.json            the manifest, written last

The manifest holds the members, the shared execution settings (cash, costs,
stops) they were ranked under, the dataset fingerprint and each symbol's bar
count and range, the package version, and every part with its sha256. A reader
sees a set only when the manifest exists, and trusts only the parts it lists
(checksums are verified on load). Parts have deterministic names and are written
whole, so an interrupted write leaves no visible set and rerunning the same
command completes it (parts already written are kept).

The set id is the token of (members, settings, data fingerprint, symbols, range,
package version): the same request finds the same set.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .bars import BarStore, Bars
from .config import token
from .errors import ConfigError, DataError, did_you_mean
from .storage import StorageRef
from .sweep import check_metric

__all__ = ["Member", "SignalSet", "SignalsConfig", "generate_signals", "MANIFEST", "FORMAT"]

MANIFEST = "_signals.json"
FORMAT = "admf-signals/1"
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
    """

    def __init__(self, members: Sequence[Member], symbol: str, series_key: str) -> None:
        from .backtest import _UserTargets
        from .cache import IndicatorStream
        from .kernels.state import run_state_init
        from .strategies import direction_code, prepare_batch

        self.groups = []
        self.halo = 0
        by: dict[tuple[str, str], list[int]] = {}
        for k, m in enumerate(members):
            by.setdefault((m.strategy, m.direction), []).append(k)
        for (strategy, direction), ks in by.items():
            batch = prepare_batch(strategy, [members[k].params for k in ks])
            code = direction_code(direction)
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


def write_parts(set_ref: StorageRef, bars_ref: StorageRef, fingerprint: str, symbols: Sequence[str],
                start: Any, end: Any, members: Sequence[Member], rows: int, cache_ref: StorageRef | None
                ) -> list[dict[str, Any]]:
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
    """
    from .cache import stream_key
    from .kernels.replay import events_from_targets_chunk
    from .stream import SymbolStream

    storage = set_ref.open()
    store = BarStore.open(bars_ref, fingerprint)
    entries = []
    for symbol in symbols:
        name = f"parts/{symbol}.parquet"
        if storage.exists(name):  # written whole by an earlier, interrupted run of the same set
            raw = storage.read_bytes(name)
            events = pq.read_metadata(io.BytesIO(raw)).num_rows
            n, first, last = _span(store, symbol, start, end)
        elif store.rows_in_range(symbol, start, end) <= rows:
            raw, events, n, first, last = _whole_part(storage, store, name, symbol, start, end, members, cache_ref)
        else:
            targets = MemberTargets(members, symbol, stream_key(store.symbol_fingerprint(symbol), start))
            stream = SymbolStream(store, symbol, start, end, rows, targets.halo, len(members), np.int8, targets)
            prev = np.zeros(len(members), dtype=np.int64)
            pieces = []
            first = last = None
            while stream.pending():
                piece = stream.take(stream.last_stamp())
                ptr, bar, value = events_from_targets_chunk(piece.payload, piece.h, piece.t0, prev)
                member = np.repeat(np.arange(len(members), dtype=np.int16), np.diff(ptr))
                pieces.append(pa.table({"member": member, "timestamp": piece.stamps[bar - piece.t0].astype(np.int64),
                                        "target": value}))
                first = int(piece.stamps[0]) if first is None else first
                last = int(piece.stamps[-1])
            n = stream.seen
            table = pa.concat_tables(pieces) if pieces else pa.table(
                {"member": np.empty(0, np.int16), "timestamp": np.empty(0, np.int64), "target": np.empty(0, np.int8)})
            table = table.sort_by([("member", "ascending"), ("timestamp", "ascending")])
            buf = io.BytesIO()
            pq.write_table(table, buf)
            raw = buf.getvalue()
            storage.write_bytes(raw, name)
            events = table.num_rows
        entries.append({"symbol": symbol, "file": name, "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw),
                        "events": events, "bars": n, "first_ns": first, "last_ns": last})
    return entries


def _whole_part(storage: Any, store: BarStore, name: str, symbol: str, start: Any, end: Any,
                members: Sequence[Member], cache_ref: StorageRef | None) -> tuple:
    """One symbol's part from its whole history: ``(bytes, events, bars, first_ns, last_ns)``."""
    from .backtest import batch_targets
    from .cache import build_indicator_set
    from .indicators import IndicatorPlan
    from .strategies import direction_code, get_strategy, prepare_batch

    plan = IndicatorPlan.from_requests(spec for m in members for spec in get_strategy(m.strategy).specs(m.params))
    iset = build_indicator_set(store.ref, symbol, start, end, plan.specs, cache_ref, fingerprint=store.fingerprint)
    targets = np.empty((len(members), len(iset.bars)), dtype=np.int8)
    groups: dict[tuple[str, str], list[int]] = {}
    for k, m in enumerate(members):
        groups.setdefault((m.strategy, m.direction), []).append(k)
    for (strategy, direction), ks in groups.items():
        batch = prepare_batch(strategy, [members[k].params for k in ks])
        targets[ks] = batch_targets(iset, batch, direction_code(direction))
    table = _events_table(iset.bars.timestamp, targets)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    raw = buf.getvalue()
    storage.write_bytes(raw, name)
    ts = iset.bars.timestamp
    n = len(ts)
    return raw, table.num_rows, n, int(ts[0]) if n else None, int(ts[-1]) if n else None


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
        storage = self.ref.open()
        where = storage.display(entry["file"])
        try:
            raw = storage.read_bytes(entry["file"])
        except FileNotFoundError:
            raise DataError(f"signal part {where} listed in the manifest is missing", file=where, symbol=symbol,
                            hint="regenerate the set with `admf signals --force`") from None
        if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
            raise DataError(f"signal part {where} fails its checksum", file=where, symbol=symbol,
                            hint="regenerate the set with `admf signals --force`")
        return pq.read_table(io.BytesIO(raw))

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


def set_identity(plan: _Plan, bars: BarStore) -> dict[str, Any]:
    return {"signals": [asdict(m) for m in plan.members], "costs": plan.costs, "data": bars.fingerprint,
            "symbols": list(plan.symbols), "start": plan.start, "end": plan.end, "version": __version__}


def generate_signals(config: SignalsConfig, bars: BarStore, root: StorageRef, client: Any, *,
                     force: bool = False, echo: Callable[[str], None] = print, progress: bool = True,
                     wait: bool = False) -> SignalSet:
    """Phase 1: compute and store the signals of ``config``'s members; return the committed set.

    Runs as batched tasks (a few symbols each) on ``client`` (a Client, or a function
    that connects one, called only if there is work); writes the manifest last.
    An existing complete set is returned as it is (``force`` rewrites it).
    While writing, this process holds the set's lease (:mod:`admf_dask.runs`): another
    process writing it raises BusyError (exit 75), or with ``wait`` is waited for.
    """
    from .runs import run_lease

    plan = _resolve(config, bars, root)
    for s in plan.symbols:
        bars.entry(s)  # unknown symbols fail here, with a suggestion
    set_id = token(set_identity(plan, bars))[:16]
    ref = root.child("signals", set_id)
    with run_lease(root, "signals", set_id, wait=wait, echo=echo,
                   complete=None if force else lambda: ref.open().exists(MANIFEST)) as lease:
        return _generate_signals(config, plan, set_id, bars, root, client, force=force, echo=echo,
                                 progress=progress, lease=lease)


def _generate_signals(config: SignalsConfig, plan: _Plan, set_id: str, bars: BarStore, root: StorageRef,
                      client: Any, *, force: bool, echo: Callable[[str], None], progress: bool,
                      lease: Any) -> SignalSet:
    """:func:`generate_signals`' work, under the set's ``lease`` (confirmed before the manifest is written)."""
    from .cluster import ensure_client, run_tasks

    ref = root.child("signals", set_id)
    storage = ref.open()
    if force and storage.fs.exists(storage.path()):
        echo(f"--force: discarding signal set {set_id}")
        storage.fs.rm(storage.path(), recursive=True)
    if storage.exists(MANIFEST):
        echo(f"signal set {set_id} is already complete")
        return SignalSet.open(ref)
    echo(f"signal set {set_id}: {len(plan.members)} configuration(s) x {len(plan.symbols)} symbol(s)")
    client = ensure_client(client)
    threads = sum(w.get("nthreads", 1) for w in client.scheduler_info(n_workers=-1)["workers"].values())
    per_task = max(1, math.ceil(len(plan.symbols) / (4 * max(threads, 1))))
    groups = [plan.symbols[i:i + per_task] for i in range(0, len(plan.symbols), per_task)]
    rows = _chunk_rows(config, client, plan.members)
    results = run_tasks(client, _write_group, [(ref, bars.ref, bars.fingerprint, g, plan.start, plan.end,
                                                plan.members, rows, root.child("cache")) for g in groups],
                        label="signals", progress=progress, retries=config.retries,
                        keys=[f"signals-{set_id}-{i}" for i in range(len(groups))])
    parts = {e["symbol"]: {k: v for k, v in e.items() if k != "symbol"} for entries in results for e in entries}
    manifest = {"format": FORMAT, "set_id": set_id, "version": __version__, "data_fingerprint": bars.fingerprint,
                "bars": bars.url, "symbols": list(plan.symbols), "start": plan.start, "end": plan.end,
                "members": [{**asdict(m), "label": m.label} for m in plan.members], "costs": plan.costs,
                "source": plan.source, "parts": parts}
    lease.confirm()
    storage.write_json(manifest, MANIFEST)  # the commit point
    return SignalSet(ref, manifest)


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
