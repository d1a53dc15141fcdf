"""Out of core along time: runs read in chunks equal runs held whole, and memory budgets are enforced.

The oracle of every test here is the same run with the whole history in one chunk
(today's path, itself checked against backtesting.py and a plain loop elsewhere):
statistics rows bit for bit, portfolio rows within 1e-12 relative (their sums may
group the symbols differently), signal change events and replay rows exactly.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from admf_dask.bars import BarStore, Bars, generate_bars
from admf_dask.cluster import connect
from admf_dask.errors import ConfigError, DataError
from admf_dask.kernels.stats import STAT_NAMES
from admf_dask.storage import StorageRef
from admf_dask.sweep import PORTFOLIO, SweepConfig, run_sweep
from tests.conftest import snapshot

THREADS = {"kind": "threads", "n_workers": 2, "dashboard_address": ""}
LOCAL = {"kind": "local", "n_workers": 2, "memory_limit": "1GiB", "dashboard_address": ""}
WHOLE = "1GiB"  # every symbol of these datasets fits: today's path
TINY = "40KiB"  # a few hundred bars per chunk: every symbol streams, boundaries everywhere

STRATEGIES = {
    "sma_cross": {"fast": [3, 8], "slow": [12, 30]},
    "ema_cross": {"fast": [4], "slow": [15, 25]},
    "macd_cross": {"fast": [6], "slow": [13], "signal": [5, 9]},
    "rsi_reversion": {"window": [7, 14], "lower": [30.0], "upper": [65.0]},
    "bollinger_reversion": {"window": [10, 20], "k": [1.5]},
    "bollinger_breakout": {"window": [15], "k": [1.0, 2.0]},
    "donchian_breakout": {"window": [5, 20]},
    "momentum": {"window": [3, 12]},
}


def _ragged(tmp_path) -> BarStore:
    """Four symbols with different calendars: one starts later, one ends earlier, one misses days."""
    full = {s: generate_bars(s, "2019-01-01", "2021-06-30", seed=3) for s in ("AAA", "BBB", "CCC", "DDD")}
    n = len(full["AAA"])
    holes = np.random.default_rng(1).random(n) < 0.05
    holes[:2] = holes[-2:] = False

    def part(b: Bars, keep) -> Bars:
        return Bars(b.symbol, b.timestamp[keep].copy(), {k: v[keep].copy() for k, v in b.columns.items()})

    store = BarStore(str(tmp_path / "bars"))
    store.write([full["AAA"], part(full["BBB"], slice(90, None)), part(full["CCC"], slice(None, n - 120)),
                 part(full["DDD"], ~holes)])
    return store


@pytest.fixture(scope="module")
def threads_client():
    with connect(THREADS) as client:
        yield client


def _tables(result) -> tuple[pd.DataFrame, pd.DataFrame]:
    t = result.table.sort_values(["set_id", "symbol"]).reset_index(drop=True)
    return t[t["symbol"] != PORTFOLIO].reset_index(drop=True), t[t["symbol"] == PORTFOLIO].reset_index(drop=True)


def _assert_same_run(chunked, whole) -> None:
    rows_c, port_c = _tables(chunked)
    rows_w, port_w = _tables(whole)
    assert rows_c[["set_id", "symbol"]].equals(rows_w[["set_id", "symbol"]])
    np.testing.assert_array_equal(rows_c[list(STAT_NAMES)].to_numpy(float), rows_w[list(STAT_NAMES)].to_numpy(float))
    np.testing.assert_allclose(port_c[list(STAT_NAMES)].to_numpy(float), port_w[list(STAT_NAMES)].to_numpy(float),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_a_chunked_sweep_equals_the_whole_series_sweep(tmp_path, threads_client, strategy):
    store = _ragged(tmp_path)
    common = dict(strategy=strategy, params=STRATEGIES[strategy], commission=0.001, batch_seconds=1e-3)
    runs = {}
    for name, budget, direction in (("whole", WHOLE, "long_short"), ("chunked", TINY, "long_short")):
        config = SweepConfig(**common, direction=direction, memory_budget=budget)
        runs[name] = run_sweep(config, store, StorageRef.make(str(tmp_path / name)), threads_client,
                               progress=False, echo=lambda m: None)
    run = StorageRef.make(str(tmp_path / "chunked")).child("runs", runs["chunked"].run_id).open().read_json("run.json")
    assert run["chunk_rows"] and all(streamed for *_, streamed in run["layout"])
    assert 0 < run["chunk_rows"] < 300  # so chunk boundaries fall inside trades, warm-ups and gaps
    _assert_same_run(runs["chunked"], runs["whole"])


@pytest.mark.parametrize("direction,extra", [("long_only", {"whole_units": True}),
                                             ("short_only", {"stop_loss": 0.02, "take_profit": 0.03}),
                                             ("long_short", {"slippage_bps": 5.0, "stop_loss": 0.03})])
def test_directions_units_and_stops_chunked(tmp_path, threads_client, direction, extra):
    store = _ragged(tmp_path)
    runs = {}
    for name, budget in (("whole", WHOLE), ("chunked", TINY)):
        config = SweepConfig(strategy="sma_cross", params={"fast": [3, 5], "slow": [10, 20]}, direction=direction,
                             commission=0.002, memory_budget=budget, batch_seconds=1e-3, **extra)
        runs[name] = run_sweep(config, store, StorageRef.make(str(tmp_path / name)), threads_client,
                               progress=False, echo=lambda m: None)
    _assert_same_run(runs["chunked"], runs["whole"])


def test_streamed_run_on_worker_processes_splits_symbols_into_groups(tmp_path):
    """Several lockstep groups per set range: partial windows written, merged by the reduce task."""
    store = _ragged(tmp_path)
    config = dict(strategy="sma_cross", params={"fast": [3, 5, 8], "slow": [20, 40]}, commission=0.001,
                  batch_seconds=1e-3)
    lines = []
    with connect(LOCAL) as client:
        chunked = run_sweep(SweepConfig(**config, memory_budget="48KiB"), store,
                            StorageRef.make(str(tmp_path / "chunked")), client, progress=False, echo=lines.append)
        whole = run_sweep(SweepConfig(**config, memory_budget=WHOLE), store,
                          StorageRef.make(str(tmp_path / "whole")), client, progress=False, echo=lambda m: None)
    storage = StorageRef.make(str(tmp_path / "chunked")).child("runs", chunked.run_id).open()
    run = storage.read_json("run.json")
    groups = {tuple(g) for g, *_ in run["layout"]}
    assert len(groups) > 1, run["layout"]  # symbols in several lockstep groups: partial windows merged
    assert storage.fs.glob(storage.path("portfolio", "part-*", "w-*.acc"))
    assert any("read in chunks of" in line and "chunks per symbol" in line for line in lines), lines
    _assert_same_run(chunked, whole)


USER_STRATEGY = '''
import numpy as np
from admf_dask.indicators import IndicatorSpec

def above(bars, indicators, window=10):
    """Long while the close is above its SMA: only the current bar matters (lookback 0)."""
    s = indicators["sma"]
    return np.where(np.isnan(s), 0, np.where(bars.close > s, 1, -1)).astype(np.int8)

above.indicators = lambda window=10: {"sma": IndicatorSpec.make("sma", window=window)}
above.lookback = 0

def peeks(bars, indicators, window=10):
    """Reads further back than it declares: the close `2 * window` bars ago (and says lookback 1)."""
    c = bars.close
    out = np.zeros(len(c), dtype=np.int8)
    out[2 * window:] = np.where(c[2 * window:] > c[:-2 * window], 1, -1)
    return out

peeks.lookback = 1
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "streamstrats.py").write_text(USER_STRATEGY)
    monkeypatch.syspath_prepend(str(mods))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(mods), os.environ.get("PYTHONPATH", "")]))


def test_user_strategy_streams_with_its_lookback(tmp_path, threads_client, user_module):
    store = _ragged(tmp_path)
    runs = {}
    for name, budget in (("whole", WHOLE), ("chunked", TINY)):
        config = SweepConfig(strategy="streamstrats:above", params={"window": [5, 20]}, commission=0.001,
                             memory_budget=budget, batch_seconds=1e-3)
        runs[name] = run_sweep(config, store, StorageRef.make(str(tmp_path / name)), threads_client,
                               progress=False, echo=lambda m: None)
    _assert_same_run(runs["chunked"], runs["whole"])


def test_user_strategy_reading_past_its_lookback_is_stopped(tmp_path, threads_client, user_module):
    store = _ragged(tmp_path)
    config = SweepConfig(strategy="streamstrats:peeks", params={"window": [30]}, memory_budget=TINY,
                         batch_seconds=1e-3)
    with pytest.raises(DataError) as err:
        run_sweep(config, store, StorageRef.make(str(tmp_path / "r")), threads_client, progress=False,
                  echo=lambda m: None)
    e = err.value
    assert "streamstrats:peeks" in e.message and "lookback of 1" in e.message
    assert e.where.get("symbol") in {"AAA", "BBB", "CCC", "DDD"} and isinstance(e.where.get("row"), int)


def test_budget_too_small_for_one_chunk_is_one_error_before_anything_is_written(tmp_path, threads_client):
    store = _ragged(tmp_path)
    root = tmp_path / "root"
    config = SweepConfig(strategy="sma_cross", params={"fast": [5], "slow": [400]}, memory_budget="8KiB")
    with pytest.raises(ConfigError, match="smaller than one chunk") as err:
        run_sweep(config, store, StorageRef.make(str(root)), threads_client, progress=False, echo=lambda m: None)
    assert err.value.where.get("key") == "memory_budget" and "--memory-budget" in err.value.hint
    assert not list(root.rglob("*.json"))  # no run.json, no marker


def test_budget_over_the_workers_memory_is_one_error_before_any_task(tmp_path):
    store = _ragged(tmp_path)
    root = tmp_path / "root"
    config = SweepConfig(strategy="sma_cross", params={"fast": [5], "slow": [20]}, memory_budget="3GiB")
    with connect(LOCAL) as client:
        with pytest.raises(ConfigError, match="over the workers' memory limit"):
            run_sweep(config, store, StorageRef.make(str(root)), client, progress=False, echo=lambda m: None)
    assert snapshot(__import__("fsspec").filesystem("file"), str(root)) == {}


def test_memory_budget_parses_sizes_and_rejects_nonsense():
    assert SweepConfig(strategy="sma_cross", memory_budget="256MiB").memory_budget == 256 << 20
    assert SweepConfig(strategy="sma_cross", memory_budget=1_000_000).memory_budget == 1_000_000
    for bad in ("lots", "-5MiB", 0, True):
        with pytest.raises(ConfigError, match="memory_budget"):
            SweepConfig(strategy="sma_cross", memory_budget=bad)
    # the budget schedules; it does not change results: same run id
    a = SweepConfig(strategy="sma_cross", memory_budget="1MiB").identity()
    assert a == SweepConfig(strategy="sma_cross").identity()


def test_signal_sets_and_replays_chunked_equal_whole(tmp_path, threads_client):
    from admf_dask.replay import ReplayConfig, run_replay
    from admf_dask.signals import SignalsConfig, generate_signals

    store = _ragged(tmp_path)
    members = [{"strategy": "sma_cross", "params": {"fast": 5, "slow": 20}, "direction": "long_short"},
               {"strategy": "donchian_breakout", "params": {"window": 15}, "direction": "long_only"},
               {"strategy": "rsi_reversion", "params": {"window": 10}, "direction": "long_short"}]
    out = {}
    for name, budget in (("whole", WHOLE), ("chunked", TINY)):
        root = StorageRef.make(str(tmp_path / name))
        sset = generate_signals(SignalsConfig(configs=members, commission=0.001, memory_budget=budget), store, root,
                                threads_client, progress=False, echo=lambda m: None)
        parts = {s: pq.read_table(sset.ref.open().path(e["file"])) for s, e in sset.manifest["parts"].items()}
        replays = {rule: run_replay(ReplayConfig(signals=sset.set_id, rule=rule, grid=[0.0, 0.5, 1.0],
                                                 memory_budget=budget, batch_seconds=1e-3),
                                    root, threads_client, store, progress=False, echo=lambda m: None)
                   for rule in ("vote", "fraction")}
        out[name] = (sset, parts, replays)
    (s_c, parts_c, rep_c), (s_w, parts_w, rep_w) = out["chunked"], out["whole"]
    assert s_c.set_id == s_w.set_id
    for sym in parts_w:
        assert parts_c[sym].equals(parts_w[sym]), sym  # the same change events
    for rule in rep_w:
        _assert_same_run(rep_c[rule], rep_w[rule])


def test_result_top_reads_only_what_it_needs_and_equals_a_full_sort(tmp_path, threads_client):
    store = _ragged(tmp_path)
    config = SweepConfig(strategy="sma_cross", params={"fast": [2, 3, 5, 8], "slow": [13, 21, 34]},
                         batch_seconds=1e-3)
    result = run_sweep(config, store, StorageRef.make(str(tmp_path)), threads_client, progress=False,
                       echo=lambda m: None)
    again = run_sweep(config, store, StorageRef.make(str(tmp_path)), threads_client, progress=False,
                      echo=lambda m: None)  # a finished run: read back from storage, nothing recomputed
    table = result.table
    for per_symbol in (False, True):
        rows = table[(table["symbol"] != PORTFOLIO) if per_symbol else (table["symbol"] == PORTFOLIO)]
        expected = rows.sort_values("sharpe", ascending=False, na_position="last", kind="stable").head(4)
        got = again.top(4, "sharpe", per_symbol=per_symbol)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))
    batches = list(again.batches(batch_rows=7))
    assert max(len(b) for b in batches) <= 7 and sum(len(b) for b in batches) == len(table)


def test_streamed_indicator_chunks_are_cached_with_their_states_and_corrupt_ones_recomputed(tmp_path, threads_client):
    """More set ranges than threads: later tasks load the chunks the first ones stored, states included."""
    store = _ragged(tmp_path)
    root = StorageRef.make(str(tmp_path / "root"))
    config = SweepConfig(strategy="ema_cross", params={"fast": [3, 4, 5, 6, 7], "slow": [20, 30, 40, 50, 60, 70, 80, 90]},
                         symbols=["DDD"], memory_budget=TINY, batch_seconds=1e-3)
    first = run_sweep(config, store, root, threads_client, progress=False, echo=lambda m: None)
    run = root.child("runs", first.run_id).open().read_json("run.json")
    assert len({(lo, hi) for _, lo, hi, _ in run["layout"]}) > 2  # more ranges than the 2 threads
    cache = root.child("cache").open()
    packs = sorted(cache.fs.glob(cache.path("indicators", "*", "*", "pack-*.pack")))
    assert packs and all(b'"states"' in open(p, "rb").read(4096) for p in packs)
    hub = first.summary["hub"]
    assert hub["loaded_storage"] > 0  # ranges after the first read the chunks back

    again = run_sweep(config, store, root, threads_client, force=True, progress=False, echo=lambda m: None)
    assert again.summary["hub"]["computed"] == 0 and again.summary["hub"]["corrupt"] == 0
    _assert_same_run(again, first)

    chunk_dir = os.path.dirname(packs[len(packs) // 2])
    for pack in (p for p in packs if os.path.dirname(p) == chunk_dir):  # every pack of one chunk
        damaged = bytearray(open(pack, "rb").read())
        damaged[-9] ^= 0xFF  # one flipped byte in the indicator values
        open(pack, "wb").write(bytes(damaged))
    third = run_sweep(config, store, root, threads_client, force=True, progress=False, echo=lambda m: None)
    assert third.summary["hub"]["corrupt"] >= 1 and third.summary["hub"]["computed"] >= 1
    _assert_same_run(third, first)


# ---------------------------------------------------------------- the stream in process, at random chunk lengths

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_GAPPY = {}


def _gappy_store() -> BarStore:
    """One symbol with a gap of missing days, written with small row groups (boundaries everywhere)."""
    if "store" not in _GAPPY:
        import pyarrow.parquet as pq_

        bars = generate_bars("GAP", "2020-01-01", "2021-12-31", seed=11, annual_vol=0.6)
        keep = np.ones(len(bars), bool)
        keep[200:230] = False  # a data gap
        bars = Bars("GAP", bars.timestamp[keep].copy(), {k: v[keep].copy() for k, v in bars.columns.items()})
        store = BarStore(f"memory://streaming-{os.getpid()}/bars")
        original = pq_.write_table
        pq_.write_table = lambda table, where, **kw: original(table, where, **{**kw, "row_group_size": 37})
        try:
            store.write([bars])
        finally:
            pq_.write_table = original
        _GAPPY["store"], _GAPPY["bars"] = store, bars
    return _GAPPY["store"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strategy=st.sampled_from(sorted(STRATEGIES)), rows=st.one_of(st.just(1), st.integers(2, 120)),
       direction=st.sampled_from(["long_short", "long_only", "short_only"]), whole=st.booleans(),
       stops=st.booleans())
def test_streamed_rows_equal_whole_rows_at_random_chunk_lengths(strategy, rows, direction, whole, stops):
    """Bars read in chunks of `rows` (1-bar chunks included; row groups of 37 bars, a 30-day gap), the
    indicators streamed, the runs carried: the rows equal the whole series' bit for bit."""
    from admf_dask.backtest import _costs, batch_chunk, batch_stats, stream_input
    from admf_dask.cache import stream_key
    from admf_dask.kernels.state import finalize_runs, run_state_init
    from admf_dask.stream import SymbolStream
    from admf_dask.strategies import prepare_batch
    from admf_dask.sweep import expand_params

    store = _gappy_store()
    sets, _ = expand_params(strategy, STRATEGIES[strategy])
    batch = prepare_batch(strategy, sets)
    costs = _costs(direction, 10_000.0, 0.001, 2.0, whole, 0.03 if stops else None, 0.05 if stops else None)
    expected = batch_stats(_GAPPY["bars"], batch, costs)
    inp = stream_input(batch, costs, "GAP", stream_key(store.symbol_fingerprint("GAP"), None))
    stream = SymbolStream(store, "GAP", None, None, rows, inp.halo, inp.rows, inp.dtype, inp.build)
    state = run_state_init(len(sets), costs.cash)
    while stream.pending():
        piece = stream.take(stream.last_stamp())
        batch_chunk(batch, costs, piece.columns, piece.payload, piece.h, piece.t0, state)
    got = finalize_runs(state, stream.first_close, stream.last_close, stream.spacing.value())
    np.testing.assert_array_equal(got, expected)
