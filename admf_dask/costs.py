"""A backtest's costs and direction, checked: plain Python, for a driver that checks a run's settings without
importing the engine (numba, the kernels); :mod:`admf_dask.backtest` runs them."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from admf_dask.errors import ConfigError
from admf_dask.strategies import direction_code


@dataclass(frozen=True)
class _Costs:
    cash: float
    commission: float
    slippage_bps: float
    whole_units: bool
    stop_loss: float
    take_profit: float
    direction: int


def _number(key: str, value: object, *, low: float, low_ok: bool, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{key} must be a finite number, got {value!r}", key=key)
    v = float(value)
    if v < low or (v == low and not low_ok) or v >= high:
        rule = f"{key} {'>=' if low_ok else '>'} {low:g}" + (f" and < {high:g}" if high < math.inf else "")
        raise ConfigError(f"{key} must be {rule.split(' ', 1)[1]}, got {value!r}", key=key, rule=rule)
    return v


def _costs(direction: str, cash: float, commission: float, slippage_bps: float, whole_units: bool,
           stop_loss: float | None, take_profit: float | None) -> _Costs:
    def level(key: str, v: float | None) -> float:
        return math.nan if v is None else _number(key, v, low=0.0, low_ok=False, high=1.0 if key == "stop_loss"
                                                   else math.inf)

    return _Costs(_number("cash", cash, low=0.0, low_ok=False),
                  _number("commission", commission, low=0.0, low_ok=True, high=1.0),
                  _number("slippage_bps", slippage_bps, low=0.0, low_ok=True, high=1e4),
                  bool(whole_units), level("stop_loss", stop_loss), level("take_profit", take_profit),
                  direction_code(direction))
