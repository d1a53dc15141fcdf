"""The kernels' names and codes as plain Python constants (no numba).

What a driver needs to plan and check a run (the statistics' names, the strategy kinds'
and direction modes' codes) without importing numba and compiling-or-loading the kernel
modules: :mod:`admf_dask.kernels.stats` and :mod:`admf_dask.kernels.strategies` take
theirs from here, so there is one definition.
"""

from __future__ import annotations

STAT_NAMES = (
    "total_return",
    "cagr",
    "ann_volatility",
    "sharpe",
    "sortino",
    "calmar",
    "max_drawdown",
    "max_drawdown_duration",
    "n_trades",
    "win_rate",
    "profit_factor",
    "avg_trade",
    "best_trade",
    "worst_trade",
    "expectancy",
    "exposure",
    "buy_and_hold_return",
)
N_STATS = len(STAT_NAMES)

# Fields of the trades record returned by ``simulate``; ``compute_stats`` takes it as is.
TRADE_FIELDS = (
    "entry_bar", "exit_bar", "direction", "size",
    "entry_price", "exit_price", "pnl", "return",
)

# strategy kinds (the fused kernels' ``kind``)
CROSS = 0
RSI = 1
BB_REVERSION = 2
BB_BREAKOUT = 3
DONCHIAN = 4
MOMENTUM = 5

# direction modes
LONG_SHORT = 0
LONG_ONLY = 1
SHORT_ONLY = -1
