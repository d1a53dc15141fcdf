"""Bar frequencies of a sweep's symbols, from the manifest alone: a PORTFOLIO row never mixes them.

An equal-weight portfolio of daily and hourly symbols sums sleeves marked on different
clocks and annualises the sum with one rate; the result is meaningless (a CAGR of
11,492 % was seen). :func:`mixed_frequencies` estimates each symbol's bars a year in the
sweep's range (rows over the span from the manifest, no bar read) and reports the mix
when the fastest symbol has more than twice the bars a year of the slowest; the sweep
then warns and leaves the PORTFOLIO rows out (``summary["portfolio_left_out"]``).
Daily stock (252) and crypto (365) bars are not a mix.
"""
from __future__ import annotations

from typing import Any, Mapping

_YEAR_NS = 365.25 * 86_400e9
MIX_RATIO = 2.0  # fastest / slowest bars a year above which the frequencies differ


def _label(per_year: float) -> str:
    if per_year < 20:
        return "monthly"
    if per_year < 80:
        return "weekly"
    if per_year < 500:
        return "daily"
    if per_year < 30_000:
        return "hourly"
    return "minute"


def bars_per_year(entry: Mapping[str, Any], rows: int, start_ns: int, end_ns: int) -> float:
    """Bars a year of a symbol in [start_ns, end_ns]: its rows in the range over the range's span in years."""
    first = max(int(entry["first_ns"]), start_ns)
    last = min(int(entry["last_ns"]), end_ns)
    span = max(last - first, 1)
    return max(rows - 1, 1) * _YEAR_NS / span


def mixed_frequencies(store: Any, symbols: list[str], rows: Mapping[str, int], start: Any = None,
                      end: Any = None) -> str | None:
    """None if the symbols share a bar frequency, else one line naming the symbols and frequencies."""
    from ..bars.store import _MAX_NS, _MIN_NS, to_ns

    lo, hi = to_ns(start, _MIN_NS), to_ns(end, _MAX_NS)
    rate = {s: bars_per_year(store.entry(s), rows[s], lo, hi) for s in symbols if rows.get(s, 0) >= 2}
    if len(rate) < 2 or max(rate.values()) <= MIX_RATIO * min(rate.values()):
        return None
    groups: dict[str, list[str]] = {}
    for s in sorted(rate, key=rate.__getitem__):
        groups.setdefault(_label(rate[s]), []).append(s)
    parts = []
    for label, names in groups.items():
        shown = ", ".join(names[:5]) + (f" +{len(names) - 5} more" if len(names) > 5 else "")
        typical = sorted(rate[s] for s in names)[len(names) // 2]
        parts.append(f"{label} (~{typical:,.0f} bars a year): {shown}")
    return ("symbols of different bar frequencies: " + "; ".join(parts)
            + "; the PORTFOLIO rows are left out (sweep each frequency separately for a portfolio)")
