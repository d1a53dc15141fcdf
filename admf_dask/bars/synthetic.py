"""Synthetic OHLCV bars: geometric Brownian motion, deterministic for a seed.

Each symbol draws from its own random stream, derived from ``(seed, symbol)``, so
a symbol's bars do not depend on which other symbols are generated with it or in
what order, and symbols can be generated in parallel on any worker.

Daily bars are stamped at 00:00 UTC on business days (Mon-Fri). Minute bars cover
the New York regular session, 09:30 to 15:59 local time (390 bars a day, stamped
at the minute's start), converted to UTC, so daylight saving moves them in UTC.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .schema import Bars, check_symbol

__all__ = ["SyntheticSpec", "bar_timestamps", "generate_bars", "generate_dataset", "symbol_names"]

FREQUENCIES = ("daily", "minute")
_BARS_PER_YEAR = {"daily": 252, "minute": 252 * 390}


@dataclass(frozen=True)
class SyntheticSpec:
    """Settings of a synthetic dataset (everything but the symbol names).

    ``annual_drift`` and ``annual_vol`` are the GBM's yearly log drift and volatility;
    ``start_price`` the first open.
    """

    start: str
    end: str
    freq: str = "daily"
    seed: int = 42
    start_price: float = 100.0
    annual_drift: float = 0.05
    annual_vol: float = 0.25

    def __post_init__(self) -> None:
        if self.freq not in FREQUENCIES:
            raise ConfigError(f"freq must be one of {FREQUENCIES}, got {self.freq!r}", key="freq")
        if not self.start_price > 0:
            raise ConfigError("start_price must be > 0", key="start_price")
        if not self.annual_vol >= 0:
            raise ConfigError("annual_vol must be >= 0", key="annual_vol")
        # bounds that keep every price finite and positive (1e308 overflowed to inf/NaN bars)
        if not self.start_price <= 1e12:
            raise ConfigError(f"start_price must be at most 1e12, got {self.start_price:g}", key="start_price")
        if not self.annual_vol <= 10:
            raise ConfigError(f"annual_vol must be at most 10 (1000 %), got {self.annual_vol:g}", key="annual_vol")
        if not abs(self.annual_drift) <= 10:
            raise ConfigError(f"annual_drift must be within [-10, 10], got {self.annual_drift:g}", key="annual_drift")
        try:
            start, end = pd.Timestamp(self.start), pd.Timestamp(self.end)
        except ValueError as exc:
            raise ConfigError(f"start/end must be dates: {exc}", key="start") from None
        if end < start:
            raise ConfigError(f"end {self.end} is before start {self.start}", key="end")

    def to_dict(self) -> dict:
        return asdict(self)


def symbol_names(n: int, prefix: str = "SYM") -> list[str]:
    """Deterministic names ``SYM000, SYM001, ...`` (wide enough for ``n``)."""
    width = max(3, len(str(n - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def bar_timestamps(start: str, end: str, freq: str = "daily") -> np.ndarray:
    """Bar timestamps (int64 ns UTC) between two dates, inclusive."""
    days = pd.bdate_range(pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize())
    if freq == "daily":
        return days.tz_localize("UTC").as_unit("ns").asi8.copy()
    if freq == "minute":
        local = (days.values[:, None] + np.timedelta64(9 * 60 + 30, "m")
                 + np.arange(390).astype("timedelta64[m]")[None, :]).ravel()
        return (pd.DatetimeIndex(local).tz_localize("America/New_York").tz_convert("UTC")
                .as_unit("ns").asi8.copy())
    raise ConfigError(f"freq must be one of {FREQUENCIES}, got {freq!r}", key="freq")


def generate_bars(symbol: str, start: str, end: str, *, freq: str = "daily", seed: int = 42,
                  start_price: float = 100.0, annual_drift: float = 0.05, annual_vol: float = 0.25) -> Bars:
    """One symbol's synthetic bars.

    Close-to-close log returns are GBM with the given drift and volatility; a small
    share of the variance falls between bars (the open gaps from the previous close),
    the rest within the bar. High and low extend beyond the open and close by a
    half-normal excursion, so high >= max(open, close) and low <= min(open, close).

    >>> bars = generate_bars("AAA", "2024-01-01", "2024-01-31", seed=7)
    >>> len(bars), bool((bars.high >= bars.close).all())
    (23, True)
    """
    spec = SyntheticSpec(start, end, freq, seed, start_price, annual_drift, annual_vol)
    check_symbol(symbol)
    ts = bar_timestamps(spec.start, spec.end, spec.freq)
    n = len(ts)
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, zlib.crc32(symbol.encode())]))
    dt = 1.0 / _BARS_PER_YEAR[spec.freq]
    sigma = spec.annual_vol * np.sqrt(dt)
    mu = (spec.annual_drift - 0.5 * spec.annual_vol**2) * dt
    gap_share = 0.2  # share of the return variance that falls between bars
    gap = rng.standard_normal(n) * sigma * np.sqrt(gap_share) + mu * gap_share
    body = rng.standard_normal(n) * sigma * np.sqrt(1 - gap_share) + mu * (1 - gap_share)
    gap[0] = 0.0
    log_open = np.log(spec.start_price) + np.cumsum(gap + np.concatenate(([0.0], body[:-1])))
    open_ = np.exp(log_open)
    close = np.exp(log_open + body)
    up = np.abs(rng.standard_normal(n)) * sigma * 0.5
    down = np.abs(rng.standard_normal(n)) * sigma * 0.5
    high = np.maximum(open_, close) * np.exp(up)
    low = np.minimum(open_, close) * np.exp(-down)
    base_volume = 1e6 if spec.freq == "daily" else 5e3
    volume = np.round(base_volume * rng.lognormal(0.0, 0.5, n))
    return Bars(symbol, ts, {"open": open_, "high": high, "low": low, "close": close, "volume": volume})


def _generate_and_write(task: tuple) -> dict:
    """Task: generate one symbol and stage its files in transaction ``txn`` (an id, or in process the
    :class:`Txn`, which may keep them in memory); not committed. Runs on a worker."""
    ref, symbol, spec, txn, *layout = task
    from .update import write_symbol_files

    return write_symbol_files(ref.open(), generate_bars(symbol, **spec.to_dict()), txn, *layout)


def generate_dataset(store, symbols: list[str], spec: SyntheticSpec, *, client=None,
                     progress: bool = True, granularity: str | None = None) -> dict:
    """Generate ``symbols`` into ``store`` and commit them in one manifest write.

    With a ``client`` each symbol is generated and staged by a task on the cluster
    (the bars never travel through the client); without one, in this process (on an
    object store the files, up to ``txn.HOLD_BYTES``, are kept in memory and the commit
    PUTs them in place: no staging PUT and CopyObject each). If
    anything fails, the staged files are removed and the store is unchanged.
    Returns the committed manifest. Symbols already present are replaced
    (``change`` ``unchanged`` when the bars are the same: regenerating identical
    settings adds no file). ``granularity`` (of a new dataset; None: from
    ``spec.freq``, daily bars one file per symbol, minute bars one per year); an
    existing dataset keeps its own.
    """
    from ..progress import Progress
    from .txn import Txn

    for s in symbols:
        check_symbol(s)
    from .update import granularity_for

    source = {"kind": "synthetic", **spec.to_dict()}
    layout = store._layout(store._read_base(), granularity or "auto", lambda: granularity_for(freq=spec.freq))
    entries: list[dict] = []
    txn = Txn(store.storage, hold=client is None)  # in process, on an object store: files kept for the commit
    try:
        if client is None:
            bar = Progress("generate", len(symbols), enabled=progress)
            tasks = [(store.storage.ref, s, spec, txn, layout) for s in symbols]
            if store.storage.is_local:
                for task in tasks:
                    entries.append(_generate_and_write(task))
                    bar.advance()
            else:  # object stores: a few symbols at a time (overlaps the staging PUTs, if any)
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(max_workers=4) as pool:
                    for entry in pool.map(_generate_and_write, tasks):
                        entries.append(entry)
                        bar.advance()
            bar.close()
        else:
            from ..cluster import run_tasks
            from ..config import token

            tasks = [(store.storage.ref, s, spec, txn.id, layout) for s in symbols]
            run_tasks(client, _generate_and_write, tasks, label="generate",
                      keys=[f"bars-{token([store.url, s, spec, txn.id])}-generate-{s}" for s in symbols],
                      on_result=lambda i, entry: entries.append(entry), progress=progress,
                      drain_on_error=True)
        return store.commit(entries, source=source)
    except BaseException:
        txn.abort()
        raise
