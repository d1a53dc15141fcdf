"""Indicator specs, their registry, and the plan that computes each unique one once.

An :class:`IndicatorSpec` is configuration as data: a name and sorted, validated
parameters, with a ``token`` that is stable across processes and runs (the
cache and the sweep key results by it). An :class:`IndicatorPlan` collects the
specs a sweep requests, keeps each token once, and computes them over the
columns of one symbol.

A spec also computes a series in time chunks (out-of-core along time): each
chunk comes with ``spec.halo`` bars from before it and the state the previous
chunk left, and the chunks' outputs joined are the whole series' bit for bit
(see :mod:`admf_dask.kernels.indicators` for what the halo and state hold).

Examples
--------
>>> spec = IndicatorSpec.make("bollinger", window=20)
>>> spec.params, spec.outputs, spec.lookback
((('k', 2.0), ('window', 20)), ('middle', 'upper', 'lower'), 19)
>>> plan = IndicatorPlan.from_requests([IndicatorSpec.make("sma", window=w) for w in (5, 20, 5)])
>>> plan.requested, plan.unique, plan.required_columns
(3, 2, ('close',))

>>> sma3 = IndicatorSpec.make("sma", window=3)
>>> x = np.arange(1.0, 8.0)
>>> first, state = sma3.compute_chunk({"close": x[:4]}, 0, sma3.init_state())
>>> rest, state = sma3.compute_chunk({"close": x[4 - sma3.halo :]}, sma3.halo, state)
>>> np.concatenate([first["value"], rest["value"]])
array([nan, nan,  2.,  3.,  4.,  5.,  6.])
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from admf_dask.errors import ConfigError, DataError, did_you_mean


class _Kernel:
    """A kernel of :mod:`admf_dask.kernels.indicators` by name, imported on its first call.

    The registry below names its kernels through these, so that importing this module (a
    driver planning a sweep, checking its indicators) imports neither numba nor the ~40
    kernel dispatchers: the kernels module is imported where a kernel first runs (a worker's
    task). Hot callers take the dispatcher itself (:func:`_dispatcher`).
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self.resolve()(*args, **kwargs)

    def resolve(self) -> Callable:
        import admf_dask.kernels.indicators as module

        return getattr(module, self.name)

    def __repr__(self) -> str:
        return f"<kernel admf_dask.kernels.indicators.{self.name}>"


class _Kernels:
    """``k.name``: the kernel ``name`` of :mod:`admf_dask.kernels.indicators`, imported on its first call."""

    def __getattr__(self, name: str) -> _Kernel:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Kernel(name)


k = _Kernels()


def _dispatcher(fn: Callable) -> Callable:
    """The kernel itself of a registry entry's function (numba's dispatcher, not its lazy name)."""
    return fn.resolve() if isinstance(fn, _Kernel) else fn

__all__ = ["INDICATORS", "IndicatorDef", "IndicatorPlan", "IndicatorSpec", "Param", "computations"]


@dataclass(frozen=True)
class Param:
    """One indicator parameter: ``int`` windows (>= ``minimum``) or ``float`` factors."""

    name: str
    kind: type = int
    minimum: float = 1
    default: int | float | None = None

    def validate(self, indicator: str, value: object) -> int | float:
        key = f"{indicator}.{self.name}"
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{key} must be a number, got {value!r}", key=key)
        if self.kind is int:
            if not float(value).is_integer():
                raise ConfigError(f"{key} must be a whole number of bars, got {value!r}", key=key)
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{key} must be finite, got {value!r}", key=key)
        if value < self.minimum:
            raise ConfigError(f"{key} must be >= {self.minimum}, got {value!r}", key=key)
        return value


@dataclass(frozen=True)
class IndicatorDef:
    """Registry entry: how to compute one indicator kind.

    ``kernel(*input arrays, **params)`` is the public whole-series function (one
    array or a tuple matching ``outputs``); ``lookback(params)`` is the number of
    leading NaN (warm-up) bars. What :class:`IndicatorSpec` runs is the chunk
    kernel, of which ``kernel`` is the one-chunk case:
    ``chunk(*input arrays, h, *params in the order of `params`, state, *outputs)``
    writes the outputs of the bars after ``h`` halo bars and updates ``state`` in
    place; ``halo(params)`` is the number of past bars it reads and
    ``init_state(params)`` the float64 state of nothing processed.
    """

    kernel: Callable
    inputs: tuple[str, ...]
    params: tuple[Param, ...]
    outputs: tuple[str, ...]
    lookback: Callable[[Mapping[str, int | float]], int]
    check: Callable[[Mapping[str, int | float]], None] | None = None
    chunk: Callable = field(kw_only=True)
    halo: Callable[[Mapping[str, int | float]], int] = field(kw_only=True)
    init_state: Callable[[Mapping[str, int | float]], np.ndarray] = field(kw_only=True)


def _check_macd(p: Mapping[str, int | float]) -> None:
    if p["fast"] >= p["slow"]:
        raise ConfigError(
            f"macd.fast must be smaller than macd.slow, got fast={p['fast']}, slow={p['slow']}",
            key="macd.fast",
            hint="swap them",
        )


_W = Param("window")

INDICATORS: dict[str, IndicatorDef] = {
    "sma": IndicatorDef(
        k.sma, ("close",), (_W,), ("value",), lambda p: p["window"] - 1,
        chunk=k._sma_chunk_nb, halo=lambda p: p["window"], init_state=lambda p: k._sma_state_nb(p["window"]),
    ),
    "ema": IndicatorDef(
        k.ema, ("close",), (Param("span"),), ("value",), lambda p: p["span"] - 1,
        chunk=k._ema_chunk_nb, halo=lambda p: 0, init_state=lambda p: k._ema_state_nb(p["span"]),
    ),
    "wma": IndicatorDef(
        k.wma, ("close",), (_W,), ("value",), lambda p: p["window"] - 1,
        chunk=k._wma_chunk_nb, halo=lambda p: p["window"], init_state=lambda p: k._wma_state_nb(p["window"]),
    ),
    "rsi": IndicatorDef(
        k.rsi, ("close",), (Param("window", default=14),), ("value",), lambda p: p["window"],
        chunk=k._rsi_chunk_nb, halo=lambda p: 0, init_state=lambda p: k._rsi_state_nb(p["window"]),
    ),
    "atr": IndicatorDef(
        k.atr, ("high", "low", "close"), (Param("window", default=14),), ("value",), lambda p: p["window"],
        chunk=k._atr_chunk_nb, halo=lambda p: 0, init_state=lambda p: k._atr_state_nb(p["window"]),
    ),
    "bollinger": IndicatorDef(
        k.bollinger,
        ("close",),
        (Param("window", default=20), Param("k", float, 0.0, 2.0)),
        ("middle", "upper", "lower"),
        lambda p: p["window"] - 1,
        chunk=k._bollinger_chunk_nb,
        halo=lambda p: p["window"],
        init_state=lambda p: k._moments_state_nb(p["window"]),
    ),
    "macd": IndicatorDef(
        k.macd,
        ("close",),
        (Param("fast", default=12), Param("slow", default=26), Param("signal", default=9)),
        ("line", "signal", "hist"),
        lambda p: p["slow"] + p["signal"] - 2,
        _check_macd,
        chunk=k._macd_chunk_nb,
        halo=lambda p: 0,
        init_state=lambda p: k._macd_state_nb(p["fast"], p["slow"], p["signal"]),
    ),
    "donchian": IndicatorDef(
        k.donchian, ("high", "low"), (Param("window", default=20),), ("upper", "lower"), lambda p: p["window"] - 1,
        chunk=k._donchian_chunk_nb, halo=lambda p: p["window"] - 1,
        init_state=lambda p: k._extremes_state_nb(p["window"]),
    ),
    "zscore": IndicatorDef(
        k.zscore, ("close",), (_W,), ("value",), lambda p: p["window"] - 1,
        chunk=k._zscore_chunk_nb, halo=lambda p: p["window"], init_state=lambda p: k._moments_state_nb(p["window"]),
    ),
    "roc": IndicatorDef(
        k.roc, ("close",), (_W,), ("value",), lambda p: p["window"],
        chunk=k._roc_chunk_nb, halo=lambda p: p["window"], init_state=lambda p: k._roc_state_nb(p["window"]),
    ),
    "stochastic": IndicatorDef(
        k.stochastic,
        ("high", "low", "close"),
        (Param("k_window", default=14), Param("d_window", default=3)),
        ("k", "d"),
        lambda p: p["k_window"] + p["d_window"] - 2,
        chunk=k._stochastic_chunk_nb,
        halo=lambda p: p["k_window"] - 1,  # %D's past %K values are in the state
        init_state=lambda p: k._stochastic_state_nb(p["k_window"], p["d_window"]),
    ),
    "obv": IndicatorDef(
        k.obv, ("close", "volume"), (), ("value",), lambda p: 0,
        chunk=k._obv_chunk_nb, halo=lambda p: 0, init_state=lambda p: k._obv_state_nb(),
    ),
    "vwap": IndicatorDef(
        k.vwap, ("high", "low", "close", "volume"), (_W,), ("value",), lambda p: p["window"] - 1,
        chunk=k._vwap_chunk_nb, halo=lambda p: p["window"], init_state=lambda p: k._vwap_state_nb(p["window"]),
    ),
}


def _definition(name: object) -> IndicatorDef:
    if not isinstance(name, str) or name not in INDICATORS:
        hint = did_you_mean(str(name), INDICATORS) or f"choose one of: {', '.join(sorted(INDICATORS))}"
        raise ConfigError(f"unknown indicator {name!r}", key="indicator", hint=hint)
    return INDICATORS[name]


@dataclass(frozen=True)
class IndicatorSpec:
    """One indicator with its parameters; build it with :meth:`make`.

    Parameters are validated, defaults filled in and sorted by name, so two
    specs are equal (and share a ``token``) exactly when they compute the same
    arrays, however they were spelled.

    >>> IndicatorSpec.make("sma", window=20) == IndicatorSpec.make("sma", window=20.0)
    True
    """

    name: str
    params: tuple[tuple[str, int | float], ...] = ()
    token: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        canonical = json.dumps({"name": self.name, "params": [list(p) for p in self.params]}, separators=(",", ":"))
        object.__setattr__(self, "token", hashlib.sha256(canonical.encode()).hexdigest()[:16])

    @classmethod
    def make(cls, name: str, **params: int | float) -> IndicatorSpec:
        """Validate ``params`` for indicator ``name``; raise ConfigError naming the key."""
        definition = _definition(name)
        known = {p.name: p for p in definition.params}
        for key in params:
            if key not in known:
                hint = did_you_mean(key, known) or (
                    f"{name} takes: {', '.join(known)}" if known else f"{name} takes no parameters"
                )
                raise ConfigError(f"unknown parameter {key!r} for indicator {name!r}", key=f"{name}.{key}", hint=hint)
        values: dict[str, int | float] = {}
        for p in definition.params:
            if p.name in params:
                values[p.name] = p.validate(name, params[p.name])
            elif p.default is not None:
                values[p.name] = p.default
            else:
                raise ConfigError(f"{name} needs parameter {p.name!r}", key=f"{name}.{p.name}")
        if definition.check is not None:
            definition.check(values)
        return cls(name, tuple(sorted(values.items())))

    @property
    def definition(self) -> IndicatorDef:
        return _definition(self.name)

    @property
    def label(self) -> str:
        """Readable form, e.g. ``sma(window=20)``."""
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.params)})"

    @property
    def inputs(self) -> tuple[str, ...]:
        """Bar columns the kernel reads, e.g. ``("high", "low", "close")``."""
        return self.definition.inputs

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of the output arrays: ``("value",)`` for single-output indicators."""
        return self.definition.outputs

    @property
    def lookback(self) -> int:
        """Warm-up length: the number of leading NaN bars of the output.

        For recursive indicators (EMA, RSI, ATR, MACD) values keep a decaying
        memory of all earlier bars, so a chunk computed from only ``lookback``
        bars of history (and no state) differs slightly from the full-series
        value; :meth:`compute_chunk` carries that memory in its state instead.
        """
        return int(self.definition.lookback(dict(self.params)))

    @property
    def halo(self) -> int:
        """Past input bars :meth:`compute_chunk` needs before a chunk (the most any of its kernels reads).

        0 for recursive indicators (EMA, RSI, ATR, MACD, OBV), whose memory is all in the state.
        Worked out once per process (an incremental run's state asks for it per symbol).
        """
        held = _HALOS.get(self.token)
        if held is None:
            if len(_HALOS) > 4096:
                _HALOS.clear()
            held = _HALOS[self.token] = int(self.definition.halo(dict(self.params)))
        return held

    def init_state(self) -> np.ndarray:
        """The state of nothing processed: a flat float64 array (storable as it is), fixed length per spec."""
        return np.array(self.definition.init_state(dict(self.params)), dtype=np.float64)

    def compute(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the kernel over ``columns`` (name -> 1-D array); return output name -> array.

        The whole series as one chunk: ``compute_chunk(columns, 0, init_state())[0]``.
        """
        return self.compute_chunk(columns, 0, self.init_state())[0]

    def compute_chunk(
        self, columns: Mapping[str, np.ndarray], h: int, state: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Compute one time chunk: ``(output name -> array of the chunk's bars, new state)``.

        ``columns`` maps each input column to a 1-D array of ``h`` halo bars (the
        bars just before the chunk, already processed) followed by the chunk's
        bars; pass ``h = min(self.halo, bars processed)`` (more is fine: only the
        last ``halo`` are read). ``state`` is :meth:`init_state` for the first
        chunk, then the state the previous chunk returned; it is not modified.
        Chunks computed this way and joined equal :meth:`compute` of the whole
        series bit for bit. Counts one computation (:func:`computations`).
        """
        missing = [c for c in self.inputs if c not in columns]
        if missing:
            raise DataError(
                f"{self.label} needs column(s) {missing}; got {sorted(columns)}",
                key=missing[0],
            )
        arrays = k._arrays(**{c: columns[c] for c in self.inputs})
        n = arrays[0].shape[0]
        if isinstance(h, bool) or not isinstance(h, numbers.Integral) or not 0 <= h <= n:
            raise ValueError(f"{self.label}: the halo h must be an integer from 0 to the {n} bars given, got {h!r}")
        h = int(h)
        new = self.init_state()
        given = np.asarray(state, dtype=np.float64)
        if given.shape != new.shape:
            raise ValueError(f"{self.label}: state must be a float64 array of shape {new.shape}, got {given.shape}")
        new[:] = given  # a copy: the kernel updates it in place, the caller's stays as it was
        done = new[0]  # bars processed so far
        if not (done >= 0 and float(done).is_integer()):
            raise ValueError(f"{self.label}: state[0] (bars processed) must be a whole number >= 0, got {done!r}")
        if not min(self.halo, done) <= h <= done:
            raise ValueError(
                f"{self.label}: the halo h must be from min(halo={self.halo}, bars processed={int(done)}) "
                f"to the bars processed, got {h}"
            )
        outputs = tuple(np.empty(n - h) for _ in self.outputs)  # numpy allocates (huge pages), see kernels
        self.definition.chunk(*arrays, h, *self._kernel_params(), new, *outputs)
        _COMPUTED[0] += 1
        return dict(zip(self.outputs, outputs)), new

    def chunk_runner(self) -> Callable[[Mapping[str, np.ndarray], int, np.ndarray],
                                       tuple[dict[str, np.ndarray], np.ndarray]]:
        """:meth:`compute_chunk` with its checks done once, for a caller that feeds chunk after chunk.

        A stream of many symbols calls it per spec per chunk (an incremental run: 26
        specs x 500 symbols for a few new bars each), where the per-call checks cost more
        than the kernel. The caller guarantees what :meth:`compute_chunk` checks: the
        input columns, a valid ``h`` and a state that :meth:`compute_chunk` returned.
        """
        held = _RUNNERS.get(self.token)
        if held is not None:
            return held
        params, kernel, inputs, outputs = (self._kernel_params(), _dispatcher(self.definition.chunk), self.inputs,
                                            self.outputs)

        def run(columns: Mapping[str, np.ndarray], h: int, state: np.ndarray
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
            arrays = [np.ascontiguousarray(columns[c], dtype=np.float64) for c in inputs]
            new = np.array(state, dtype=np.float64)
            outs = tuple(np.empty(arrays[0].shape[0] - h) for _ in outputs)
            kernel(*arrays, int(h), *params, new, *outs)
            _COMPUTED[0] += 1
            return dict(zip(outputs, outs)), new

        if len(_RUNNERS) > 4096:
            _RUNNERS.clear()
        _RUNNERS[self.token] = run
        return run

    def compute_series(self, columns: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """:meth:`compute_chunk` of a whole series from its start, ``compute_chunk(columns, 0, init_state())``:
        the same outputs and end state, bit for bit, with the spec's checks done once per process.

        The hub computes the same specs for every symbol of a sweep (26 SMAs x 500 symbols),
        where building the state and checking it and the parameters cost several times the
        kernel itself on daily bars. The input columns are still checked on every call
        (a DataError naming the missing column); they must be of one series (equal lengths).
        """
        if any(c not in columns for c in self.inputs):
            return self.compute_chunk(columns, 0, self.init_state())  # raises the DataError
        held = _INITIAL.get(self.token)
        if held is None:
            if len(_INITIAL) > 4096:
                _INITIAL.clear()
            held = self.init_state()
            held.flags.writeable = False  # shared by every call: the kernels update a copy
            out = self.compute_chunk(columns, 0, held)  # the spec's checks, once
            _INITIAL[self.token] = held
            return out
        return self.chunk_runner()(columns, 0, held)

    def series_kernel(self) -> tuple[Callable, tuple[str, ...], tuple[float, ...], np.ndarray] | None:
        """``(kernel, input columns, parameters, initial state)`` to run a whole series straight into the
        caller's output arrays, once :meth:`compute_series` has checked this spec in this process (None before).

        ``kernel(*inputs, 0, *parameters, state, *outputs)``, with ``state`` a copy of the initial state
        (the kernel updates it: the end state) and one float64 output array per :attr:`outputs`: the
        call :meth:`compute_series` makes, without its allocations and per-call lookups. The
        indicator hub fills a set's matrix rows this way (26 SMAs x 500 symbols in a sweep).
        The caller counts the computation (``_COMPUTED``) and supplies contiguous float64 inputs.
        """
        held = _KERNELS.get(self.token)
        if held is None:
            init = _INITIAL.get(self.token)
            if init is None:
                return None
            if len(_KERNELS) > 4096:
                _KERNELS.clear()
            held = _KERNELS[self.token] = (_dispatcher(self.definition.chunk), self.inputs,
                                           tuple(self._kernel_params()), init)
        return held

    def _kernel_params(self) -> list[float]:
        """Parameter values in the kernel's order, validated again: compiled kernels trust them
        (no bounds checks), and a spec built without :meth:`make` skipped the checks."""
        given = dict(self.params)
        definition = self.definition
        if set(given) != {p.name for p in definition.params}:
            raise ConfigError(
                f"{self.label} must have exactly the parameters {[p.name for p in definition.params]}",
                key=self.name,
                hint="build specs with IndicatorSpec.make",
            )
        values = {p.name: p.validate(self.name, given[p.name]) for p in definition.params}
        if definition.check is not None:
            definition.check(values)
        return list(values.values())


_RUNNERS: dict[str, Callable] = {}  # IndicatorSpec.chunk_runner by token, per process
_INITIAL: dict[str, np.ndarray] = {}  # IndicatorSpec.init_state by token, per process (never modified)
_KERNELS: dict[str, tuple] = {}  # IndicatorSpec.series_kernel by token, per process
_HALOS: dict[str, int] = {}  # IndicatorSpec.halo by token, per process

_COMPUTED = [0]  # indicator kernel runs in this process (a list: incremented in place from any thread)


def computations() -> int:
    """How many indicator kernels this process has run: the ground truth behind "computes no indicator".

    Every indicator anywhere (hub, probe, ``backtest`` on bare bars) is computed by
    :meth:`IndicatorSpec.compute` or, a chunk at a time, :meth:`IndicatorSpec.compute_chunk`;
    each call counts one here. Read it on each worker with ``client.run(computations)``.
    """
    return _COMPUTED[0]


@dataclass(frozen=True)
class IndicatorPlan:
    """The unique indicators behind many requests, in first-seen order.

    >>> grid = [(f, s) for f in (5, 10) for s in (20, 30)]
    >>> plan = IndicatorPlan.from_requests(
    ...     IndicatorSpec.make("sma", window=w) for f, s in grid for w in (f, s))
    >>> plan.requested, plan.unique, plan.max_lookback
    (8, 4, 29)
    """

    specs: tuple[IndicatorSpec, ...]
    requested: int

    @classmethod
    def from_requests(cls, specs: Iterable[IndicatorSpec]) -> IndicatorPlan:
        unique: dict[str, IndicatorSpec] = {}
        requested = 0
        for spec in specs:
            if not isinstance(spec, IndicatorSpec):
                raise ConfigError(
                    f"indicator requests must be IndicatorSpec, got {type(spec).__name__}",
                    key="indicator",
                    hint='build them with IndicatorSpec.make("sma", window=20)',
                )
            requested += 1
            unique.setdefault(spec.token, spec)
        return cls(tuple(unique.values()), requested)

    @property
    def unique(self) -> int:
        return len(self.specs)

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(s.token for s in self.specs)

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Bar columns any spec reads, in first-seen order."""
        return tuple(dict.fromkeys(c for s in self.specs for c in s.inputs))

    @property
    def max_lookback(self) -> int:
        return max((s.lookback for s in self.specs), default=0)

    def compute(self, columns: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """Compute every unique spec once: token -> output name -> array."""
        return {s.token: s.compute(columns) for s in self.specs}
