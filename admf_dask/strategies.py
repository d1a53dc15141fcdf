"""Strategies: built-ins with declared parameters, constraints and indicators; user strategies by path.

A strategy turns bars into a *target* per bar: -1 (short), 0 (flat) or +1 (long
with all equity), decided at the bar's close and filled at the next open (see
:mod:`admf_dask.kernels.simulate`). The engine clips targets for the direction
mode: ``long_short`` trades them as they are, ``long_only`` turns -1 into 0 (a
short signal only closes the long), ``short_only`` turns +1 into 0.

Built-in strategies
-------------------
Each declares its parameters (name, type, default), the rules a parameter set
must satisfy, and the :class:`~admf_dask.indicators.IndicatorSpec` objects it
reads, so a sweep's :class:`~admf_dask.indicators.IndicatorPlan` computes each
unique indicator once for all parameter sets. Comparisons with NaN (indicator
warm-up) are false: no signal fires before the indicators are valid, and the
target is 0 until the first signal.

``sma_cross(fast=10, slow=20)``, ``ema_cross(fast=12, slow=26)``
    Event based, like backtesting.py's ``SmaCross`` and vectorbt's
    ``crossed_above``: the target becomes +1 on the bar where the fast average
    crosses above the slow one (``fast[t] > slow[t]`` and ``fast[t-1] <= slow[t-1]``,
    all four valid), -1 on a cross below, and persists until the opposite cross.
    Rules: ``fast >= 1``, ``fast < slow``.
``macd_cross(fast=12, slow=26, signal=9)``
    The same crossing rule for the MACD line against its signal line.
``rsi_reversion(window=14, lower=30, upper=70)``
    Wilder RSI. +1 (oversold: buy) on a bar where ``RSI < lower``, -1 (overbought:
    sell short) where ``RSI > upper``; in between the target is held. So long-only
    buys when RSI first dips below ``lower`` and exits when it first rises above
    ``upper``; long-short is always in the market after the first signal;
    short-only shorts above ``upper`` and covers below ``lower``. Level based:
    unlike the crosses, a first valid RSI already below ``lower`` is a signal.
    Rules: ``0 < lower < upper < 100``.
``bollinger_reversion(window=20, k=2.0)``
    Mean reversion: +1 when the close is below the lower band, -1 when above the
    upper band; a long goes flat once the close is back at or above the middle
    band, a short once at or below it. Rules: ``window >= 2``, ``k > 0``.
``bollinger_breakout(window=20, k=2.0)``
    Trend following: +1 when the close is above the upper band, -1 below the
    lower band, held in between (until the opposite breakout).
``donchian_breakout(window=20)``
    +1 when the close exceeds the highest high of the ``window`` bars *before*
    it (the Donchian upper channel at ``t - 1``), -1 when it falls below the
    lowest low of those bars; held in between.
``momentum(window=20)``
    The sign of the rate of change ``close[t] / close[t - window] - 1``: +1 when
    positive, -1 when negative, 0 when zero or undefined. A state, not an event.

User strategies
---------------
Name a function by import path ``"package.module:function"``. It is called as
``function(bars, indicators, **params)`` with the symbol's
:class:`~admf_dask.bars.Bars` and a dict of the indicator arrays it declared,
and returns one target per bar (anything convertible to int8 in {-1, 0, 1}).
Its parameters are its keyword arguments after the first two (defaults taken
from the signature). It may declare indicators in an ``indicators`` attribute:
a function of the parameters returning ``{name: IndicatorSpec}`` or
``{name: (IndicatorSpec, output)}`` for multi-output indicators; they then come
from the plan (and the indicator hub), shared with other strategies. Example,
in ``mystrats.py``::

    import numpy as np
    from admf_dask.indicators import IndicatorSpec

    def above_sma(bars, indicators, window=50):
        \"\"\"Long while the close is above its SMA, short below.\"\"\"
        return np.sign(np.nan_to_num(bars.close - indicators["sma"])).astype(np.int8)

    above_sma.indicators = lambda window=50: {"sma": IndicatorSpec.make("sma", window=window)}

and ``backtest(bars, "mystrats:above_sma", {"window": 30})``. The generic
engine path computes the targets of a batch with the function, then runs
:func:`~admf_dask.kernels.simulate.simulate_stats_batch`.

A history longer than a task's memory budget is given to the function in time
chunks (:mod:`admf_dask.stream`). Its ``lookback`` says how many bars of history a
target needs: an int or a function of the parameters, as ``above_sma.lookback = 0``
(it reads only the current bar and its SMA, whose values the engine supplies); by
default the longest warm-up of its indicators plus one bar. The function then gets
each chunk with twice that many bars before it and must return, for the last
``lookback`` of them, the targets it returned for them in the chunk before; a
strategy that reads further back is stopped with an error naming the bar.

Examples
--------
>>> s = get_strategy("sma_cross")
>>> s.validate({"fast": 5})
{'fast': 5, 'slow': 20}
>>> [spec.label for spec, _ in s.inputs({"fast": 5, "slow": 20})]
['sma(window=5)', 'sma(window=20)']
>>> s.validate({"fast": 50, "slow": 20})
Traceback (most recent call last):
...
admf_dask.errors.ConfigError: sma_cross: fast=50 must be < slow=20 [key sma_cross.fast, rule fast < slow]
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import numbers
import operator
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from admf_dask.errors import ConfigError, DataError, did_you_mean
from admf_dask.indicators import IndicatorPlan, IndicatorSpec
from admf_dask.kernels import names as kern

__all__ = [
    "DIRECTIONS", "STRATEGIES", "BatchPlan", "Param", "Strategy", "direction_code",
    "get_strategy", "prepare_batch",
]

DIRECTIONS = {"long_short": kern.LONG_SHORT, "long_only": kern.LONG_ONLY,
              "short_only": kern.SHORT_ONLY}

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def direction_code(direction: object) -> int:
    """The kernel code of a direction mode name; ConfigError with a hint otherwise."""
    if isinstance(direction, str) and direction in DIRECTIONS:
        return DIRECTIONS[direction]
    hint = did_you_mean(str(direction), DIRECTIONS) or f"choose one of: {', '.join(DIRECTIONS)}"
    raise ConfigError(f"unknown direction {direction!r}", key="direction", hint=hint)


@dataclass(frozen=True)
class Param:
    """A strategy parameter: ``int`` (a window, in bars) or ``float``, with its default."""

    name: str
    kind: type | None
    default: Any = None
    doc: str = ""

    def convert(self, strategy: str, value: object) -> Any:
        key = f"{strategy}.{self.name}"
        if self.kind is None:
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{strategy}: {self.name} must be a number, got {value!r}", key=key)
        if not math.isfinite(float(value)):
            raise ConfigError(f"{strategy}: {self.name} must be finite, got {value!r}", key=key)
        if self.kind is int:
            if not float(value).is_integer():
                raise ConfigError(f"{strategy}: {self.name} must be a whole number of bars, got {value!r}",
                                  key=key)
            return int(value)
        return float(value)


# A rule (left, op, right): right is another parameter's name or a number.
Rule = tuple[str, str, "str | float"]
# A kernel input: an indicator spec and which of its outputs (None: its only one).
Input = tuple[IndicatorSpec, "str | None"]


@dataclass(frozen=True)
class Strategy:
    """A strategy: parameters, rules, indicator inputs, and either a fused kernel kind or a function.

    Built-ins have ``kind`` (a kernel code of :mod:`admf_dask.kernels.strategies`)
    and ``make_inputs(params) -> [(spec, output), ...]`` in the kernel's slot order
    and ``make_floats(params) -> (p0, p1)``. User strategies have ``function`` and
    ``make_inputs`` returning ``{name: (spec, output)}``.
    """

    name: str
    params: tuple[Param, ...]
    rules: tuple[Rule, ...] = ()
    kind: int | None = None
    make_inputs: Callable[[Mapping[str, Any]], Any] = field(default=lambda p: [], repr=False)
    make_floats: Callable[[Mapping[str, Any]], tuple[float, float]] = field(
        default=lambda p: (0.0, 0.0), repr=False)
    function: Callable | None = field(default=None, repr=False)
    doc: str = ""

    @property
    def builtin(self) -> bool:
        return self.kind is not None

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params if p.default is not None}

    def validate(self, params: Mapping[str, Any] | None = None, *, where: str = "") -> dict[str, Any]:
        """Fill in defaults, convert types and check the rules; ConfigError naming the key.

        ``where`` (e.g. ``"parameter set 3 {...}"``) is added to the message.
        """
        params = {} if params is None else params
        if not isinstance(params, Mapping):
            raise ConfigError(f"{self.name}: parameters must be a mapping, got {type(params).__name__}",
                              key=self.name)
        suffix = f" ({where})" if where else ""
        known = {p.name: p for p in self.params}
        for key in params:
            if key not in known:
                hint = did_you_mean(str(key), known) or (
                    f"{self.name} takes: {', '.join(known)}" if known else f"{self.name} takes no parameters")
                raise ConfigError(f"{self.name}: unknown parameter {key!r}{suffix}",
                                  key=f"{self.name}.{key}", hint=hint)
        values: dict[str, Any] = {}
        for p in self.params:
            if p.name in params:
                try:
                    values[p.name] = p.convert(self.name, params[p.name])
                except ConfigError as exc:
                    raise ConfigError(exc.message + suffix, **exc.where) from None
            elif p.default is not None:
                values[p.name] = p.default
            else:
                raise ConfigError(f"{self.name}: parameter {p.name!r} is required{suffix}",
                                  key=f"{self.name}.{p.name}")
        for left, op, right in self.rules:
            other = values[right] if isinstance(right, str) else right
            if not _OPS[op](values[left], other):
                shown = f"{right}={other}" if isinstance(right, str) else f"{right}"
                raise ConfigError(f"{self.name}: {left}={values[left]} must be {op} {shown}{suffix}",
                                  key=f"{self.name}.{left}", rule=f"{left} {op} {right}")
        return values

    def inputs(self, params: Mapping[str, Any]) -> list[Input]:
        """The (spec, output) pairs a validated parameter set reads."""
        made = self.make_inputs(params)
        return list(made.values()) if isinstance(made, Mapping) else list(made)

    def specs(self, params: Mapping[str, Any]) -> list[IndicatorSpec]:
        """The indicator specs of a validated parameter set (for an IndicatorPlan)."""
        return [spec for spec, _ in self.inputs(params)]

    def lookback(self, params: Mapping[str, Any]) -> int:
        """Bars of history a user strategy's target needs (its streaming contract, see the module docstring).

        The function's ``lookback`` attribute (an int, or a function of the parameters),
        else derived from its declared indicators: the longest warm-up plus one bar
        (enough for a rule that compares a bar with the one before it). 0 for built-ins,
        whose kernels carry their state instead.
        """
        if self.builtin:
            return 0
        declared = getattr(self.function, "lookback", None)
        if declared is not None:
            value = declared(**params) if callable(declared) else declared
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ConfigError(f"strategy {self.name!r}: lookback must be a whole number of bars >= 0, "
                                  f"got {value!r}", key="strategy.lookback")
            return int(value)
        return max((spec.lookback for spec in self.specs(params)), default=0) + 1

    def user_targets(self, bars: Any, arrays: Mapping[str, np.ndarray], params: Mapping[str, Any]) -> np.ndarray:
        """Call a user strategy and check what it returns: int8 targets, one per bar."""
        try:
            out = self.function(bars, dict(arrays), **params)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"strategy {self.name!r} failed with params {dict(params)}: "
                              f"{type(exc).__name__}: {exc}", key="strategy") from exc
        a = np.asarray(out)
        n = len(bars)
        if a.shape != (n,):
            raise DataError(f"strategy {self.name!r} returned shape {a.shape}, expected ({n},): "
                            "one target per bar", key="strategy", rule="targets-shape")
        if a.dtype.kind == "f":
            a = np.nan_to_num(a, nan=0.0)
        if a.dtype.kind not in "biuf" or not np.isin(a, (-1, 0, 1)).all():
            raise DataError(f"strategy {self.name!r} returned targets outside {{-1, 0, 1}}",
                            key="strategy", rule="targets-values")
        return a.astype(np.int8)


def _p(name: str, kind: type, default: Any, doc: str) -> Param:
    return Param(name, kind, default, doc)


# a grid asks for the same few windows thousands of times (3,790 sets of a sweep: 7,580 specs, ~120 distinct);
# a spec is immutable, and making one validates and hashes its parameters
@functools.lru_cache(maxsize=4096)
def _sma(w: int) -> Input:
    return IndicatorSpec.make("sma", window=w), None


@functools.lru_cache(maxsize=4096)
def _ema(w: int) -> Input:
    return IndicatorSpec.make("ema", span=w), None


def _macd(p: Mapping[str, Any]) -> list[Input]:
    spec = IndicatorSpec.make("macd", fast=p["fast"], slow=p["slow"], signal=p["signal"])
    return [(spec, "line"), (spec, "signal")]


def _bollinger(p: Mapping[str, Any]) -> list[Input]:
    spec = IndicatorSpec.make("bollinger", window=p["window"], k=p["k"])
    return [(spec, "middle"), (spec, "upper"), (spec, "lower")]


def _donchian(p: Mapping[str, Any]) -> list[Input]:
    spec = IndicatorSpec.make("donchian", window=p["window"])
    return [(spec, "upper"), (spec, "lower")]


_FAST_SLOW = (("fast", ">=", 1), ("fast", "<", "slow"))
_WINDOW = _p("window", int, 20, "lookback in bars")
_K = _p("k", float, 2.0, "band width in standard deviations")

STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("sma_cross", (_p("fast", int, 10, "fast SMA window"), _p("slow", int, 20, "slow SMA window")),
                 _FAST_SLOW, kern.CROSS, lambda p: [_sma(p["fast"]), _sma(p["slow"])],
                 doc="fast SMA crossing the slow SMA"),
        Strategy("ema_cross", (_p("fast", int, 12, "fast EMA span"), _p("slow", int, 26, "slow EMA span")),
                 _FAST_SLOW, kern.CROSS, lambda p: [_ema(p["fast"]), _ema(p["slow"])],
                 doc="fast EMA crossing the slow EMA"),
        Strategy("macd_cross", (_p("fast", int, 12, "fast EMA span"), _p("slow", int, 26, "slow EMA span"),
                                _p("signal", int, 9, "signal line EMA span")),
                 (*_FAST_SLOW, ("signal", ">=", 1)), kern.CROSS, _macd,
                 doc="MACD line crossing its signal line"),
        Strategy("rsi_reversion", (_p("window", int, 14, "RSI window"),
                                   _p("lower", float, 30.0, "oversold level: buy below it"),
                                   _p("upper", float, 70.0, "overbought level: sell above it")),
                 (("window", ">=", 1), ("lower", ">", 0), ("lower", "<", "upper"), ("upper", "<", 100)),
                 kern.RSI, lambda p: [(IndicatorSpec.make("rsi", window=p["window"]), None)],
                 lambda p: (p["lower"], p["upper"]), doc="RSI mean reversion between two levels"),
        Strategy("bollinger_reversion", (_WINDOW, _K), (("window", ">=", 2), ("k", ">", 0)),
                 kern.BB_REVERSION, _bollinger, doc="fade closes outside the bands, exit at the middle"),
        Strategy("bollinger_breakout", (_WINDOW, _K), (("window", ">=", 2), ("k", ">", 0)),
                 kern.BB_BREAKOUT, lambda p: _bollinger(p)[1:], doc="follow closes outside the bands"),
        Strategy("donchian_breakout", (_WINDOW,), (("window", ">=", 1),), kern.DONCHIAN, _donchian,
                 doc="close beyond the previous window's high / low"),
        Strategy("momentum", (_WINDOW,), (("window", ">=", 1),), kern.MOMENTUM,
                 lambda p: [(IndicatorSpec.make("roc", window=p["window"]), None)],
                 doc="sign of the rate of change"),
    )
}

_USER: dict[str, Strategy] = {}


def _user_strategy(path: str) -> Strategy:
    if path in _USER:
        return _USER[path]
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"strategy path {path!r} must look like 'package.module:function'", key="strategy")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or any error raised while importing it
        raise ConfigError(f"strategy {path!r} does not import: {type(exc).__name__}: {exc}", key="strategy",
                          hint="check the module is on sys.path (installed or in the working directory)") from None
    fn = getattr(module, attr, None)
    if fn is None:
        public = [n for n in dir(module) if not n.startswith("_")]
        raise ConfigError(f"strategy {path!r} does not import: module {module_name!r} has no {attr!r}",
                          key="strategy", hint=did_you_mean(attr, public))
    if not callable(fn):
        raise ConfigError(f"strategy {path!r} is not a function", key="strategy")
    sig = list(inspect.signature(fn).parameters.values())
    if len(sig) < 2:
        raise ConfigError(f"strategy {path!r} must take (bars, indicators, **params)", key="strategy")
    params = []
    for p in sig[2:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is p.empty else p.default
        kind = type(default) if type(default) in (int, float) else None
        params.append(Param(p.name, kind, default))
    declared = getattr(fn, "indicators", None)

    def make_inputs(values: Mapping[str, Any]) -> dict[str, Input]:
        if declared is None:
            return {}
        made = declared(**values) if callable(declared) else declared
        out = {}
        for name, item in dict(made).items():
            spec, output = item if isinstance(item, tuple) else (item, None)
            if not isinstance(spec, IndicatorSpec):
                raise ConfigError(f"strategy {path!r}: indicator {name!r} must be an IndicatorSpec, "
                                  f"got {type(spec).__name__}", key="strategy")
            out[name] = (spec, output)
        return out

    strategy = Strategy(path, tuple(params), (), None, make_inputs, function=fn, doc=inspect.getdoc(fn) or "")
    _USER[path] = strategy
    return strategy


def get_strategy(strategy: str | Strategy) -> Strategy:
    """A built-in strategy by name, or a user strategy by ``"package.module:function"``.

    >>> get_strategy("sma_crosss")
    Traceback (most recent call last):
    ...
    admf_dask.errors.ConfigError: unknown strategy 'sma_crosss' [key strategy]; did you mean 'sma_cross'?
    """
    if isinstance(strategy, Strategy):
        return strategy
    if not isinstance(strategy, str):
        raise ConfigError(f"strategy must be a name or 'package.module:function', got {strategy!r}",
                          key="strategy")
    if strategy in STRATEGIES:
        return STRATEGIES[strategy]
    if ":" in strategy:
        return _user_strategy(strategy)
    hint = did_you_mean(strategy, STRATEGIES) or (
        f"choose one of: {', '.join(STRATEGIES)}, or name a function as 'package.module:function'")
    raise ConfigError(f"unknown strategy {strategy!r}", key="strategy", hint=hint)


@dataclass(frozen=True)
class BatchPlan:
    """A batch of parameter sets of one strategy, resolved for the kernels.

    ``params`` are the validated sets; ``plan`` the unique indicators; for
    built-ins, ``rows`` are the unique (token, output) indicator arrays stacked
    as the kernel's ``ind`` rows, and ``idx`` / ``fparams`` each set's slots.
    """

    strategy: Strategy
    params: tuple[dict[str, Any], ...]
    plan: IndicatorPlan
    rows: tuple[tuple[str, str | None], ...]
    idx: np.ndarray
    fparams: np.ndarray

    def columns(self) -> dict[str, list[Any]]:
        """The parameter columns of the result frame: name -> values per set."""
        names = list(dict.fromkeys(k for p in self.params for k in p))
        return {k: [p.get(k) for p in self.params] for k in names}


_BATCHES: OrderedDict[tuple, BatchPlan] = OrderedDict()
_BATCH_CACHE_SIZE = 32


def _key(strategy: Strategy, param_sets: Sequence[Mapping[str, Any]]) -> tuple | None:
    try:
        key = (strategy.name, tuple(tuple(sorted(p.items())) for p in param_sets))
        hash(key)
        return key
    except (TypeError, AttributeError):
        return None


def prepare_batch(strategy: str | Strategy, param_sets: Sequence[Mapping[str, Any]]) -> BatchPlan:
    """Validate every parameter set and resolve the batch's indicators (cached per batch).

    A sweep runs the same batch on every symbol; the plan is built once.

    >>> b = prepare_batch("sma_cross", [{"fast": 5, "slow": 20}, {"fast": 10, "slow": 20}])
    >>> b.plan.requested, b.plan.unique, b.idx.tolist()
    (4, 3, [[0, 1, 1], [2, 1, 1]])
    """
    s = get_strategy(strategy)
    if isinstance(param_sets, Mapping) or not isinstance(param_sets, Sequence):
        raise ConfigError(f"{s.name}: param_sets must be a list of dicts", key="param_sets")
    key = _key(s, param_sets)
    if key is not None and key in _BATCHES:
        _BATCHES.move_to_end(key)
        return _BATCHES[key]
    validated = tuple(s.validate(p, where=f"parameter set {i} {dict(p)!r}" if isinstance(p, Mapping) else
                                 f"parameter set {i}") for i, p in enumerate(param_sets))
    inputs = [s.inputs(p) for p in validated]
    plan = IndicatorPlan.from_requests(spec for ins in inputs for spec, _ in ins)
    rows: dict[tuple[str, str | None], int] = {}
    m = len(validated)
    idx = np.zeros((m, 3), dtype=np.int64)
    fparams = np.zeros((m, 2))
    if s.builtin:
        for k, (p, ins) in enumerate(zip(validated, inputs)):
            for j, (spec, output) in enumerate(ins):
                idx[k, j] = rows.setdefault((spec.token, output), len(rows))
            idx[k, len(ins):] = idx[k, len(ins) - 1]
            fparams[k] = s.make_floats(p)
    batch = BatchPlan(s, validated, plan, tuple(rows), idx, fparams)
    if key is not None:
        _BATCHES[key] = batch
        if len(_BATCHES) > _BATCH_CACHE_SIZE:
            _BATCHES.popitem(last=False)
    return batch
