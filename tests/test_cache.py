"""The indicator hub: compute once, reuse from worker memory, cache in storage (local and S3)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from admf_dask.bars import BarStore, Bars, generate_bars
from admf_dask.cache import IndicatorHub
from admf_dask.indicators import IndicatorPlan, IndicatorSpec
from admf_dask.storage import StorageRef

GRID = [(f, s) for f in range(5, 55, 5) for s in range(20, 220, 10) if f < s]


def sma_grid_plan() -> IndicatorPlan:
    return IndicatorPlan.from_requests(IndicatorSpec.make("sma", window=w) for pair in GRID for w in pair)


@pytest.fixture(autouse=True)
def store_every_indicator(monkeypatch):
    """These tests are of the storage cache's mechanics: every computed indicator is stored (on daily bars the
    default stores none, cheaper to compute than to load; see the tests of the rule at the end)."""
    monkeypatch.setenv("ADMF_INDICATOR_STORE", "all")


@pytest.fixture
def dataset(tmp_path):
    store = BarStore(str(tmp_path / "bars"))
    store.write([generate_bars(s, "2015-01-01", "2020-12-31", seed=1) for s in ("AAA", "BBB")])
    return store


def test_the_sma_grid_computes_26_of_368_requested(dataset):
    plan = sma_grid_plan()
    assert (len(GRID), plan.requested, plan.unique) == (184, 368, 26)
    hub = IndicatorHub(dataset)
    s = hub.get("AAA", plan)
    assert hub.counters.computed == 26 and hub.counters.loaded_storage == 0
    close = pd.Series(dataset.read("AAA").close)
    for w in (5, 50, 210):
        np.testing.assert_allclose(s.get(IndicatorSpec.make("sma", window=w)), close.rolling(w).mean(),
                                   rtol=1e-9, equal_nan=True)


def test_a_second_session_loads_from_storage_and_a_data_change_misses(dataset, tmp_path):
    cache = StorageRef.make(str(tmp_path / "cache"))
    plan = sma_grid_plan()
    first = IndicatorHub(dataset, cache)
    a1 = first.get("AAA", plan)
    first.get("BBB", plan)
    assert first.counters.computed == 52

    second = IndicatorHub(BarStore(dataset.url), cache)  # a new session: nothing in memory
    a2 = second.get("AAA", plan)
    assert (second.counters.computed, second.counters.loaded_storage) == (0, 26)
    assert second.counters.hit_rate == 1.0
    for spec in plan.specs:
        np.testing.assert_array_equal(a1.get(spec), a2.get(spec))

    # change one bar of AAA: its fingerprint changes, so its cache entries no longer match
    bars = dataset.read("AAA")
    close = bars.close.copy()
    close[-1] *= 1.01
    changed = Bars("AAA", bars.timestamp, {**bars.columns, "close": close,
                                          "high": np.maximum(bars.high, close), "low": np.minimum(bars.low, close)})
    BarStore(dataset.url).write([changed])
    third = IndicatorHub(BarStore(dataset.url), cache)
    a3 = third.get("AAA", plan)
    third.get("BBB", plan)
    assert (third.counters.computed, third.counters.loaded_storage) == (26, 26)
    spec = IndicatorSpec.make("sma", window=5)
    assert a3.get(spec)[-1] != a1.get(spec)[-1]


def test_a_date_range_is_part_of_the_cache_key(dataset, tmp_path):
    cache = StorageRef.make(str(tmp_path / "cache"))
    plan = IndicatorPlan.from_requests([IndicatorSpec.make("ema", span=20)])
    hub = IndicatorHub(dataset, cache)
    full = hub.get("AAA", plan)
    part = hub.get("AAA", plan, start="2018-01-01")
    assert hub.counters.computed == 2
    assert len(part.bars) < len(full.bars)
    assert IndicatorHub(dataset, cache).get("AAA", plan, start="2018-01-01").counters.loaded_storage == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong-values"])
def test_a_corrupt_cache_entry_is_recomputed_never_used(dataset, tmp_path, damage):
    cache_dir = tmp_path / "cache"
    plan = IndicatorPlan.from_requests([IndicatorSpec.make("sma", window=w) for w in (10, 20, 30)]
                                       + [IndicatorSpec.make("bollinger", window=20, k=2.0)])
    good = IndicatorHub(dataset, StorageRef.make(str(cache_dir))).get("AAA", plan)
    victim = IndicatorSpec.make("bollinger", window=20, k=2.0)
    (entry,) = cache_dir.rglob("pack-*.pack")  # one pack: everything that hub task computed
    raw = entry.read_bytes()
    if damage == "truncate":
        entry.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        entry.write_bytes(b"not a pack file at all")
    else:  # a well-formed pack whose victim arrays do not match their checksum: one value changed
        import json

        size = int.from_bytes(raw[8:16], "little")
        header = json.loads(raw[16:16 + size])
        rows, n = header["shape"]
        row = header["names"].index(f"{victim.token}.upper")
        data = np.frombuffer(raw, "<f8", offset=16 + size).reshape(rows, n).copy()
        data[row, n // 2] += 1.0
        entry.write_bytes(raw[:16 + size] + data.tobytes())
    hub = IndicatorHub(dataset, StorageRef.make(str(cache_dir)))
    again = hub.get("AAA", plan)
    if damage == "wrong-values":  # only the victim is bad; the pack's other entries are good
        assert (hub.counters.computed, hub.counters.loaded_storage, hub.counters.corrupt) == (1, 3, 1)
    else:  # an unreadable pack loses everything in it, and is removed
        assert (hub.counters.computed, hub.counters.loaded_storage, hub.counters.corrupt) == (4, 0, 4)
        assert not entry.exists() or entry.read_bytes() != raw[: len(raw) // 2]
    for spec in plan.specs:
        for out in spec.outputs:
            np.testing.assert_array_equal(again.get(spec, out), good.get(spec, out))
    fresh = IndicatorHub(dataset, StorageRef.make(str(cache_dir)))
    fresh.get("AAA", plan)
    assert (fresh.counters.loaded_storage, fresh.counters.corrupt) == (4, 0)  # the entry was rewritten


def test_s3_as_the_cache_store(s3, tmp_path):
    bucket, options = s3
    store = BarStore(f"{bucket}/bars", options)
    store.write([generate_bars("S3A", "2019-01-01", "2020-12-31", seed=2)])
    cache = StorageRef.make(f"{bucket}/cache", options)
    plan = IndicatorPlan.from_requests([IndicatorSpec.make("rsi", window=14), IndicatorSpec.make("atr", window=14)])
    first = IndicatorHub(store, cache)
    a = first.get("S3A", plan)
    second = IndicatorHub(BarStore(f"{bucket}/bars", options), cache)
    b = second.get("S3A", plan)
    assert (first.counters.computed, second.counters.loaded_storage) == (2, 2)
    for spec in plan.specs:
        np.testing.assert_array_equal(a.get(spec), b.get(spec))


def _sum_of(indicator_set, spec):
    return float(np.nansum(indicator_set.get(spec)))


def test_on_a_cluster_sets_stay_in_worker_memory_and_are_reused(dataset, tmp_path):
    from admf_dask.cluster import connect

    plan = sma_grid_plan()
    small = IndicatorPlan.from_requests([IndicatorSpec.make("sma", window=w) for w in (5, 20)])
    bigger = IndicatorPlan.from_requests([*plan.specs, IndicatorSpec.make("ema", span=12)])
    with connect({"kind": "local", "n_workers": 2, "dashboard_address": ""}) as client:
        hub = IndicatorHub(dataset, StorageRef.make(str(tmp_path / "cache")), client=client)
        fut = hub.submit("AAA", plan)
        spec = IndicatorSpec.make("sma", window=50)
        remote = client.submit(_sum_of, fut, spec).result()  # a later task receives the set by key
        assert client.who_has([fut])[fut.key]  # it lives on a worker
        assert hub.counters.computed == 26
        assert hub.submit("AAA", plan) is fut  # same plan: the same in-memory set
        assert hub.submit("AAA", small) is fut  # a subset of a held plan: the same set
        assert hub.counters.reused_memory == 26 + 2
        fut2 = hub.submit("AAA", bigger)  # one new spec: built from the held set plus one computation
        assert fut2.key != fut.key
        fut2.result()
        c = hub.counters
        assert (c.computed, c.reused_memory, c.loaded_storage) == (27, 28 + 26, 0)
    local = IndicatorHub(dataset).get("AAA", plan)
    assert remote == pytest.approx(float(np.nansum(local.get(spec))), rel=1e-12)


def test_a_set_is_one_read_only_matrix_that_pickles_and_weighs_what_it_holds(dataset, tmp_path):
    import pickle

    from dask.sizeof import sizeof

    from admf_dask.cache import build_indicator_set

    plan = IndicatorPlan.from_requests([IndicatorSpec.make("sma", window=w) for w in (5, 20)]
                                       + [IndicatorSpec.make("bollinger", window=20, k=2.0)])
    s = build_indicator_set(dataset.ref, "AAA", None, None, plan.specs, StorageRef.make(str(tmp_path / "c")))
    close = pd.Series(dataset.read("AAA").close)
    assert s.matrix.shape == (2 + 3, len(close)) and not s.get(plan.specs[0]).flags.writeable
    for spec in plan.specs:
        for out in spec.outputs:
            assert np.shares_memory(s.get(spec, out if len(spec.outputs) > 1 else None), s.matrix)
    np.testing.assert_allclose(s.get(plan.specs[1]), close.rolling(20).mean(), rtol=1e-9, equal_nan=True)
    rows = [(plan.specs[1].token, None), (plan.specs[0].token, None)]
    matrix, idx = s.stacked(rows)
    assert matrix is s.matrix
    np.testing.assert_array_equal(matrix[idx[0]], s.get(plan.specs[1]))
    assert s.stacked([("not-a-token", None)]) is None
    back = pickle.loads(pickle.dumps(s, protocol=5))
    np.testing.assert_array_equal(back.matrix, s.matrix)
    assert back.rows == s.rows and back.data_key == s.data_key
    np.testing.assert_array_equal(back.get(plan.specs[0]), s.get(plan.specs[0]))
    assert sizeof(s) >= s.matrix.nbytes + s.bars.nbytes
    # the periods per year were worked out once, where the set was built, and travel with it
    from admf_dask.kernels.stats import periods_per_year

    assert back.bars.__dict__.get("_periods_per_year") == periods_per_year(dataset.read("AAA").timestamp) == 252.0


def _both(a, b) -> None:
    return None


def _on_worker(indicator_set) -> bool:
    """A set as a worker receives it: its matrix arrives writable (one kernel signature), its arrays do not."""
    return indicator_set.matrix.flags.writeable and not indicator_set.values[next(iter(indicator_set.values))][
        "value"].flags.writeable


def test_a_shared_set_is_spread_to_every_worker_as_soon_as_it_is_built(dataset, tmp_path):
    import time

    from admf_dask.cluster import connect

    plan = sma_grid_plan()
    with connect({"kind": "local", "n_workers": 2, "dashboard_address": ""}) as client:
        hub = IndicatorHub(dataset, None, client=client)  # no local cache to map: the set itself is spread
        fut = hub.source("AAA", plan, consumers=5)
        # five consumers wait on the set (and on a gate no worker can run), as a sweep's containers would:
        # without waiters, Dask's memory manager would rightly drop the extra copy again
        gate = client.submit(_both, None, None, resources={"no-such-resource": 1}, pure=False)
        waiting = [client.submit(_both, fut, gate, pure=False) for _ in range(5)]
        workers = set(client.scheduler_info()["workers"])
        deadline = time.time() + 60
        while set(client.who_has([fut])[fut.key]) != workers and time.time() < deadline:
            time.sleep(0.1)
        # both workers hold it before any consumer ran, and it was built once
        assert set(client.who_has([fut])[fut.key]) == workers
        assert hub.counters.computed == 26
        assert client.submit(_on_worker, fut).result()
        client.cancel([*waiting, gate])
        hub.release()


def _mapped_matrix(source):
    from admf_dask.cache import resolve

    s = resolve(source)
    return np.asarray(s.matrix).copy(), s.rows, isinstance(s.matrix, np.memmap)


def test_a_set_many_workers_share_on_one_machine_is_one_mapped_pack(dataset, tmp_path):
    from admf_dask.cache import IndicatorCache, MappedSet, build_indicator_set
    from admf_dask.cluster import connect

    plan = sma_grid_plan()
    cache = StorageRef.make(str(tmp_path / "cache"))
    reference = build_indicator_set(dataset.ref, "AAA", None, None, plan.specs, None)
    with connect({"kind": "local", "n_workers": 2, "dashboard_address": ""}) as client:
        hub = IndicatorHub(dataset, cache, client=client)
        fut = hub.source("AAA", plan, consumers=8)
        receipt = fut.result()
        assert isinstance(receipt, MappedSet) and receipt.bars.symbol == "AAA"
        assert hub.counters.computed == 26
        # consumers on both workers map the same file; the values are the set's
        for w in client.scheduler_info()["workers"]:
            matrix, rows, mapped = client.submit(_mapped_matrix, fut, workers=[w], pure=False).result()
            assert mapped
            for name, i in rows.items():
                np.testing.assert_array_equal(matrix[i], reference.matrix[reference.rows[name]])
        # the file is an ordinary pack: another session loads it, checksums and all
        loaded, corrupt = IndicatorCache(cache).load(receipt.data_key, plan.specs, receipt.shape[1])
        assert len(loaded) == 26 and corrupt == 0
        hub.release()
        key = fut.key
        del fut
        _forgotten(client, key)
        # a new hub (the next sweep) maps the existing pack instead of computing
        hub2 = IndicatorHub(dataset, cache, client=client)
        fut2 = hub2.source("AAA", plan, consumers=8)
        again = fut2.result()
        assert again.path == receipt.path and hub2.counters.loaded_storage == 26 and hub2.counters.computed == 0
        hub2.release()
        key = fut2.key
        del fut2
        _forgotten(client, key)
        # a damaged pack is not mapped: computed again, and written whole
        with open(receipt.path, "r+b") as f:
            f.seek(receipt.offset + 8 * 100)
            f.write(b"\x00" * 64)
        hub3 = IndicatorHub(dataset, cache, client=client)
        fut3 = hub3.source("AAA", plan, consumers=8)
        third = fut3.result()
        assert hub3.counters.computed == 26 and third.path == receipt.path
        matrix, rows, _ = client.submit(_mapped_matrix, fut3, pure=False).result()
        for name, i in rows.items():
            np.testing.assert_array_equal(matrix[i], reference.matrix[reference.rows[name]])
        hub3.release()


def _forgotten(client, key) -> None:
    """Wait until the scheduler has forgotten a dropped future's key (as at the end of a sweep)."""
    import time

    deadline = time.time() + 30
    while key in client.who_has() and time.time() < deadline:
        time.sleep(0.05)
    assert key not in client.who_has()


def test_a_plan_without_indicators_is_never_mapped(dataset, tmp_path):
    from admf_dask.cluster import connect

    empty = IndicatorPlan.from_requests([])
    with connect({"kind": "local", "n_workers": 1, "dashboard_address": ""}) as client:
        hub = IndicatorHub(dataset, StorageRef.make(str(tmp_path / "cache")), client=client)
        s = hub.source("AAA", empty, consumers=8).result()
        assert s.matrix.shape == (0, len(dataset.read("AAA"))) and s.bars.symbol == "AAA"
        hub.release()


def test_whole_series_packs_carry_each_indicator_end_state(dataset, tmp_path):
    """What an incremental run goes on from: a set loaded or mapped from storage has the end states it was
    computed with (covered by the checksums), so nothing is computed again to get them."""
    from admf_dask.cache import build_indicator_set, build_mapped_set

    specs = [IndicatorSpec.make("ema", span=12), IndicatorSpec.make("sma", window=30),
             IndicatorSpec.make("rsi", window=14)]
    cache = StorageRef.make(str(tmp_path / "cache"))
    computed = build_indicator_set(dataset.ref, "AAA", None, None, specs, cache)
    loaded = build_indicator_set(dataset.ref, "AAA", None, None, specs, cache)
    assert computed.counters.computed == 3 and loaded.counters.loaded_storage == 3 and loaded.counters.computed == 0
    expected = {s.token: s.compute_chunk(computed.bars.columns, 0, s.init_state())[1] for s in specs}
    for got in (computed.states, loaded.states):
        assert set(got) == set(expected)
        for tok, st in expected.items():
            np.testing.assert_array_equal(got[tok], st)
    mapped_cache = StorageRef.make(str(tmp_path / "mapped"))
    first = build_mapped_set(dataset.ref, "BBB", None, None, specs, mapped_cache)
    again = build_mapped_set(dataset.ref, "BBB", None, None, specs, mapped_cache)
    assert first.counters.computed == 3 and again.counters.loaded_storage == 3
    bbb = build_indicator_set(dataset.ref, "BBB", None, None, specs, mapped_cache)  # reads the mapped pack
    assert bbb.counters.loaded_storage == 3
    for receipt in (first, again):
        states = receipt.build().states
        for s in specs:
            np.testing.assert_array_equal(states[s.token], bbb.states[s.token])
            np.testing.assert_array_equal(states[s.token],
                                          s.compute_chunk(bbb.bars.columns, 0, s.init_state())[1])
    # a state that does not match its checksum makes the entry corrupt: recomputed, never used
    pack = next((tmp_path / "cache").rglob("*.pack"))
    raw = pack.read_bytes()
    size = int.from_bytes(raw[8:16], "little")
    head = json.loads(raw[16:16 + size])
    tok = specs[0].token
    head["states"][tok] = [v + 1.0 if np.isfinite(v) else 1.0 for v in head["states"][tok]]
    text = json.dumps(head).encode()
    assert len(text) <= size
    pack.write_bytes(raw[:16] + text + b" " * (size - len(text)) + raw[16 + size:])
    damaged = build_indicator_set(dataset.ref, "AAA", None, None, specs, cache)
    assert damaged.counters.corrupt >= 1 and damaged.counters.computed >= 1
    np.testing.assert_array_equal(damaged.states[tok], expected[tok])


def test_by_default_indicators_cheaper_to_compute_than_to_load_are_not_stored(dataset, tmp_path, monkeypatch):
    """The cost-aware cache: SMAs of daily bars cost less to compute than to write and load back, so a second
    session computes them again, and the counters say why."""
    monkeypatch.delenv("ADMF_INDICATOR_STORE")
    cache = StorageRef.make(str(tmp_path / "cache"))
    plan = sma_grid_plan()
    first = IndicatorHub(dataset, cache)
    a1 = first.get("AAA", plan)
    assert (first.counters.computed, first.counters.cheap) == (26, 26)
    assert not list((tmp_path / "cache").rglob("*.pack"))
    second = IndicatorHub(BarStore(dataset.url), cache)
    a2 = second.get("AAA", plan)
    c = second.counters
    assert (c.computed, c.cheap, c.loaded_storage) == (26, 26, 0)
    assert "26 computed (26 cheaper to compute than to load: not stored)" in c.line()
    assert c.as_dict()["cheap"] == 26
    for spec in plan.specs:
        np.testing.assert_array_equal(a1.get(spec), a2.get(spec))


def test_worth_storing_keeps_what_costs_more_to_compute_than_to_load(monkeypatch):
    from admf_dask.cache import STORE_SECONDS_PER_BYTE as PER_BYTE
    from admf_dask.cache import STORE_SECONDS_PER_PACK as PER_PACK
    from admf_dask.cache import worth_storing

    monkeypatch.delenv("ADMF_INDICATOR_STORE")
    nbytes = 2520 * 8
    load = nbytes * PER_BYTE[True]
    cheap, dear = (load / 2, nbytes), (load + 2 * PER_PACK[True], nbytes)
    assert worth_storing({"a": cheap, "b": dear}, local=True) == {"b"}
    assert worth_storing({"a": cheap}, local=True) == set()
    # worth it on local disk, not where each pack is a request (S3): the pack's own cost is not saved
    small = (load + PER_PACK[True] * 2, nbytes)
    assert worth_storing({"b": small}, local=True) == {"b"} and worth_storing({"b": small}, local=False) == set()


def test_on_local_disk_the_hub_lists_the_cache_keys_once_per_run_and_skips_the_rest(dataset, tmp_path, monkeypatch):
    """An inline set (a sweep's usual input) looks in the local cache only for a data key the hub's one
    directory scan found; release() forgets the scan, so the next run sees what this one stored."""
    from admf_dask.cache import InlineSet

    cache = StorageRef.make(str(tmp_path / "cache"))
    plan = IndicatorPlan.from_requests(IndicatorSpec.make("sma", window=w) for w in (5, 20))
    hub = IndicatorHub(dataset, cache)
    assert hub.known_keys() == frozenset()  # no cache folder yet: nothing to look for
    first = hub.source("AAA", plan)
    assert isinstance(first, InlineSet) and first.known == frozenset()
    built = first.build()
    assert (built.counters.computed, built.counters.loaded_storage) == (2, 0)  # stored (ADMF_INDICATOR_STORE=all)
    assert hub.known_keys() == frozenset()  # the listing stands for the run
    hub.release()
    assert hub.known_keys() == {built.data_key}
    again = hub.source("AAA", plan).build()
    assert (again.counters.computed, again.counters.loaded_storage) == (0, 2)
    np.testing.assert_array_equal(again.matrix, built.matrix)
    # a key left out of the listing is not looked for: computed, not loaded (a missed reuse, same values)
    skipped = InlineSet(first.bars_ref, "AAA", None, None, first.specs, cache, first.fingerprint, frozenset()).build()
    assert (skipped.counters.computed, skipped.counters.loaded_storage) == (2, 0)
    np.testing.assert_array_equal(skipped.matrix, built.matrix)
    monkeypatch.setattr(IndicatorHub, "_KNOWN_PAGES", 0)  # more keys than the hub lists: look per symbol
    big = IndicatorHub(dataset, cache)
    assert big.known_keys() is None and big.source("AAA", plan).build().counters.loaded_storage == 2


def test_a_set_built_straight_into_its_matrix_equals_each_indicator_computed_alone(dataset):
    """The hub runs a checked spec's kernel straight into the set's rows (IndicatorSpec.series_kernel): every
    output and end state is, bit for bit, what compute_series gives alone, for every kind of indicator (several
    outputs, several input columns), the first build of a process (checked path) and every one after."""
    from admf_dask.cache import build_indicator_set
    from admf_dask.indicators import INDICATORS

    specs = [IndicatorSpec.make(name, **params) for name, params in [
        ("sma", {"window": 7}), ("ema", {"span": 12}), ("wma", {"window": 5}), ("rsi", {"window": 14}),
        ("atr", {"window": 10}), ("bollinger", {"window": 9, "k": 1.5}), ("macd", {"fast": 5, "slow": 13, "signal": 4}),
        ("donchian", {"window": 4}), ("zscore", {"window": 20}), ("roc", {"window": 3}),
        ("stochastic", {"k_window": 14, "d_window": 3}), ("obv", {}), ("vwap", {"window": 6})]]
    assert {s.name for s in specs} == set(INDICATORS)
    bars = dataset.read("BBB")
    for _ in range(2):  # the second build takes the straight path for every spec
        built = build_indicator_set(dataset.ref, "BBB", None, None, specs, None, bars=bars)
        assert built.counters.computed == len(specs)
        for spec in specs:
            alone, state = spec.compute_series(bars.columns)
            for out, want in alone.items():
                assert built.get(spec, out).tobytes() == want.tobytes(), (spec.label, out)
            assert built.states[spec.token].tobytes() == state.tobytes(), spec.label
    assert all(spec.series_kernel() is not None for spec in specs)


def test_an_indicator_costs_the_fastest_rate_measured_for_it_so_a_preempted_timing_stores_nothing(monkeypatch):
    """A timing only grows by what is not the indicator's work (the thread preempted on a busy machine): the cost
    that decides storing is the fastest seconds per bar this process measured for the indicator, times the bars."""
    from admf_dask.cache import _fastest, worth_storing

    monkeypatch.delenv("ADMF_INDICATOR_STORE")

    tok = "test-fastest-rate"
    assert _fastest(tok, 40e-6, 2520) == pytest.approx(40e-6)
    stretched = _fastest(tok, 4e-3, 2520)  # preempted for ~4 ms while it ran: still the 40 us it costs
    assert stretched == pytest.approx(40e-6)
    assert worth_storing({tok: (stretched, 2520 * 8)}, local=True) == set()
    assert worth_storing({tok: (4e-3, 2520 * 8)}, local=True) == {tok}  # what the raw timing would have stored
    assert _fastest(tok, 20e-6, 2520) == pytest.approx(20e-6)  # a faster run lowers it
    assert _fastest(tok, 80e-6, 5040) == pytest.approx(40e-6)  # per bar: twice the bars, twice the cost
