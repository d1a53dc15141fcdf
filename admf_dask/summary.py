"""Per-symbol data summaries: a task that reads one symbol on a worker, and a table."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["format_summary", "summarize_symbol"]


def summarize_symbol(task: tuple) -> dict:
    """Task: read one symbol from storage and describe it in one small dict."""
    from .bars import BarStore

    ref, symbol, start, end = task
    bars = BarStore.open(ref).read(symbol, start=start, end=end)
    n = len(bars)
    row = {"symbol": symbol, "bars": n}
    if n == 0:
        return row
    close = bars.close
    log_ret = np.diff(np.log(close))
    spacing = np.median(np.diff(bars.timestamp)) if n > 1 else 0
    per_year = 252 if spacing >= 12 * 3600e9 else 252 * 390
    running_max = np.maximum.accumulate(close)
    row.update(
        first=pd.Timestamp(int(bars.timestamp[0]), tz="UTC"),
        last=pd.Timestamp(int(bars.timestamp[-1]), tz="UTC"),
        first_close=float(close[0]),
        last_close=float(close[-1]),
        total_return=float(close[-1] / close[0] - 1),
        ann_vol=float(log_ret.std(ddof=1) * np.sqrt(per_year)) if n > 2 else float("nan"),
        max_drawdown=float((close / running_max - 1).min()),
        avg_volume=float(bars.volume.mean()),
    )
    return row


def format_summary(rows: list[dict]) -> str:
    """A fixed-width table of :func:`summarize_symbol` rows."""
    frame = pd.DataFrame(rows).set_index("symbol")
    for col in ("first", "last"):
        if col in frame:
            frame[col] = frame[col].map(lambda t: t.strftime("%Y-%m-%d %H:%M") if pd.notna(t) else "")
    fmt = {"first_close": "{:,.2f}".format, "last_close": "{:,.2f}".format, "total_return": "{:+.1%}".format,
           "ann_vol": "{:.1%}".format, "max_drawdown": "{:.1%}".format, "avg_volume": "{:,.0f}".format}
    return frame.to_string(formatters={k: v for k, v in fmt.items() if k in frame})
