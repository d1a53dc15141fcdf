"""Incremental signal sets: a set over bars that were only appended goes on from the previous set's saved state.

The oracle of every test is a fresh, full set generated on the grown data: the same
change events in every part (the same parquet bytes) and the same manifest but for the
state records and the summary. Days are cuts of one synthetic history: day d holds the
first ``len - CUT[d]`` bars of each symbol, and its bar store's manifest lists, per
symbol, the versions of the days before it as ``lineage`` (what ``admf ingest --mode
append`` records), unless the test changes that symbol's history.
"""

from __future__ import annotations

import json

import pytest

from admf_dask.bars import Bars, BarStore, generate_bars
from admf_dask.cluster import connect
from admf_dask.errors import DataError, StorageError
from admf_dask.signals import (
    MANIFEST,
    SignalsConfig,
    _chunk_rows,
    _explicit_members,
    generate_signals,
    list_signal_sets,
)
from admf_dask.storage import StorageRef
from admf_dask.sweep.incremental import chain_key

THREADS = {"kind": "threads", "n_workers": 2, "dashboard_address": ""}
WHOLE = "1GiB"  # every symbol is held whole on day 1
TINY = "40KiB"  # ~110 bars per chunk: the long symbols stream, the short one is held whole
MEMBERS = [{"strategy": "sma_cross", "params": {"fast": 5, "slow": 20}, "direction": "long_short"},
           {"strategy": "ema_cross", "params": {"fast": 4, "slow": 15}, "direction": "short_only"},
           {"strategy": "donchian_breakout", "params": {"window": 15}, "direction": "long_only"},
           {"strategy": "rsi_reversion", "params": {"window": 10}, "direction": "long_short"},
           {"strategy": "macd_cross", "params": {"fast": 6, "slow": 13, "signal": 5}, "direction": "long_short"},
           {"strategy": "bollinger_reversion", "params": {"window": 10, "k": 1.5}, "direction": "long_short"},
           {"strategy": "bollinger_breakout", "params": {"window": 15, "k": 1.0}, "direction": "long_short"},
           {"strategy": "momentum", "params": {"window": 12}, "direction": "long_short"},
           {"strategy": "sma_cross", "params": {"fast": 3, "slow": 30}, "direction": "long_short"}]
CUT = {1: 255, 2: 250, 3: 0}  # day 2 appends 5 bars to day 1, day 3 appends 250 (several chunks) to day 2


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def client():
    with connect(THREADS) as c:
        yield c


@pytest.fixture(scope="module")
def history() -> dict[str, Bars]:
    """AAA and BBB: ~650 bars; CCC: the last 350 (day 1: 100 bars, shorter than a TINY chunk)."""
    out = {s: generate_bars(s, "2019-01-01", "2021-06-30", seed=3) for s in ("AAA", "BBB", "CCC")}
    out["CCC"] = _cut(out["CCC"], slice(len(out["CCC"]) - 350, None))
    return out


def _cut(b: Bars, keep: slice) -> Bars:
    return Bars(b.symbol, b.timestamp[keep].copy(), {k: v[keep].copy() for k, v in b.columns.items()})


def _day(tmp_path, history, day: int, before: list[BarStore], replaced: dict[str, Bars] | None = None) -> BarStore:
    """The bar store of ``day``: each symbol grown from the stores ``before`` (lineage), but ``replaced`` ones."""
    replaced = replaced or {}
    url = str(tmp_path / f"bars-day{day}")
    bars = [replaced.get(s, _cut(b, slice(0, len(b) - CUT[day]))) for s, b in history.items()]
    BarStore(url).write(bars)
    path = tmp_path / f"bars-day{day}" / "_dataset.json"
    manifest = json.loads(path.read_text())
    for s, entry in manifest["symbols"].items():
        if s not in replaced:
            entry["lineage"] = [{k: old.entry(s)[k] for k in ("fingerprint", "rows", "last_ns")} for old in before]
    path.write_text(json.dumps(manifest))
    return BarStore(url)


def _config(budget: str = WHOLE, members=MEMBERS, symbols=None) -> SignalsConfig:
    return SignalsConfig(configs=members, commission=0.001, memory_budget=budget, symbols=symbols)


def _content(manifest: dict) -> dict:
    """A manifest without what differs between an incremental set and a fresh one: state records, summary."""
    out = {k: v for k, v in manifest.items() if k not in ("set_id", "data_fingerprint", "symbol_versions", "summary")}
    out["parts"] = {s: {k: v for k, v in e.items() if k != "state"} for s, e in manifest["parts"].items()}
    return out


def _assert_equals_fresh(tmp_path, signal_set, store: BarStore, client, config: SignalsConfig) -> None:
    fresh = generate_signals(config, store, StorageRef.make(str(tmp_path / "fresh" / signal_set.set_id)), client,
                             progress=False, echo=quiet)
    assert fresh.manifest["summary"]["full_symbols"] == len(fresh.symbols)
    for s in fresh.symbols:
        mine, theirs = signal_set.read_part(s), fresh.read_part(s)
        assert mine.num_rows > 10 and mine.equals(theirs), s  # the same change events
    assert _content(signal_set.manifest) == _content(fresh.manifest)  # parts' sha256, bars, spans included


@pytest.mark.parametrize("budget", [WHOLE, TINY])
def test_a_grown_dataset_continues_from_the_saved_state_and_equals_a_full_set(tmp_path, client, history, budget):
    config = _config(budget)
    root = StorageRef.make(str(tmp_path / "root"))
    if budget == TINY:  # day 1: CCC is held whole, AAA and BBB stream (their states come from both paths)
        rows = _chunk_rows(config, client, _explicit_members(MEMBERS)[0])
        assert 100 <= rows < 350, rows
    stores = [_day(tmp_path, history, 1, [])]
    sets = [generate_signals(config, stores[0], root, client, progress=False, echo=quiet)]
    assert sets[0].manifest["resumable"] and sets[0].manifest["summary"]["full_symbols"] == 3
    for day in (2, 3):
        stores.append(_day(tmp_path, history, day, stores))
        lines = []
        sets.append(generate_signals(config, stores[-1], root, client, progress=False, echo=lines.append))
        new, old = sets[-1], sets[-2]
        grown = CUT[day - 1] - CUT[day]
        assert new.set_id != old.set_id
        assert new.manifest["summary"] == {
            "incremental_from": old.set_id, "incremental_symbols": 3, "full_symbols": 0,
            "bars_read": 3 * grown,  # counted on the workers: the new bars only
            "note": f"incremental: continuing from set {old.set_id}: 3 symbol(s) only grew"}
        assert any("3 symbol(s) incremental, 0 in full" in line for line in lines), lines
        pointer = root.child("signals").open().read_json(f"_chain/{chain_key(_identity(new))}.json")
        assert pointer == {"set_id": new.set_id}
        _assert_equals_fresh(tmp_path, new, stores[-1], client, config)
    assert list_signal_sets(root) == sorted(s.set_id for s in sets)  # _chain is not a set


def _identity(signal_set) -> dict:
    m = signal_set.manifest
    return {"signals": [{k: v for k, v in x.items() if k != "label"} for x in m["members"]], "costs": m["costs"],
            "symbols": m["symbols"], "start": m["start"], "end": m["end"], "version": m["version"]}


def test_a_symbol_whose_history_changed_is_generated_in_full_the_others_continue(tmp_path, client, history):
    root = StorageRef.make(str(tmp_path / "root"))
    day1 = _day(tmp_path, history, 1, [])
    first = generate_signals(_config(), day1, root, client, progress=False, echo=quiet)
    other = generate_bars("BBB", "2019-01-01", "2020-10-30", seed=99)  # BBB's history rewritten, not appended
    ccc = day1.read("CCC")  # CCC unchanged: no new bar, nothing to read
    day2 = _day(tmp_path, history, 2, [day1], replaced={"BBB": other, "CCC": ccc})
    assert day2.symbol_fingerprint("CCC") == day1.symbol_fingerprint("CCC")
    lines = []
    grown = generate_signals(_config(), day2, root, client, progress=False, echo=lines.append)
    summary = grown.manifest["summary"]
    assert summary["incremental_from"] == first.set_id
    assert (summary["incremental_symbols"], summary["full_symbols"]) == (2, 1)
    assert summary["bars_read"] == 5 + len(other)  # AAA's new bars, BBB in full
    assert "1 generated in full (history changed, not only appended): BBB" in summary["note"]
    assert any("BBB" in line for line in lines)
    _assert_equals_fresh(tmp_path, grown, day2, client, _config())


@pytest.mark.parametrize("what", ["state", "part"])
def test_a_damaged_saved_state_or_part_is_one_error_naming_it_and_force_generates_in_full(tmp_path, client, history,
                                                                                          what):
    """A flipped byte in what the previous set committed stops the next set, before its manifest; --force is full."""
    root = StorageRef.make(str(tmp_path / "root"))
    day1 = _day(tmp_path, history, 1, [])
    first = generate_signals(_config(), day1, root, client, progress=False, echo=quiet)
    name = first.manifest["parts"]["AAA"]["state" if what == "state" else "file"]
    name = name["file"] if what == "state" else name
    assert name == ("state/AAA.state" if what == "state" else "parts/AAA.parquet")
    path = tmp_path / "root" / "signals" / first.set_id / name
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    day2 = _day(tmp_path, history, 2, [day1])
    with pytest.raises(StorageError if what == "state" else DataError) as err:
        generate_signals(_config(), day2, root, client, progress=False, echo=quiet)
    assert err.value.where["file"].endswith(f"{first.set_id}/{name}"), err.value.where
    assert "does not match its commit record" in err.value.message if what == "state" else \
        "fails its checksum" in err.value.message
    assert "--force" in err.value.hint
    assert list_signal_sets(root) == [first.set_id]  # nothing committed
    full = generate_signals(_config(), day2, root, client, force=True, progress=False, echo=quiet)
    assert full.manifest["summary"]["full_symbols"] == 3 and full.manifest["summary"]["incremental_from"] is None
    _assert_equals_fresh(tmp_path, full, day2, client, _config())


def test_an_interrupted_incremental_set_keeps_its_finished_parts_and_states(tmp_path, client, history):
    root = StorageRef.make(str(tmp_path / "root"))
    day1 = _day(tmp_path, history, 1, [])
    first = generate_signals(_config(), day1, root, client, progress=False, echo=quiet)
    day2 = _day(tmp_path, history, 2, [day1])
    done = generate_signals(_config(), day2, root, client, progress=False, echo=quiet)
    storage = done.ref.open()
    storage.fs.rm(storage.path(MANIFEST))  # as if stopped before its commit, AAA not yet written ...
    storage.fs.rm(storage.path("parts", "AAA.parquet"))
    chain = root.child("signals").open()
    chain.write_json({"set_id": first.set_id}, f"_chain/{chain_key(_identity(first))}.json")  # ... nor the chain
    again = generate_signals(_config(), day2, root, client, progress=False, echo=quiet)
    assert again.manifest["summary"]["bars_read"] == 5  # BBB and CCC were found written, with their states
    assert again.manifest["summary"]["incremental_symbols"] == 3
    assert again.manifest["parts"] == done.manifest["parts"]


USER_STRATEGY = '''
import numpy as np
from admf_dask.indicators import IndicatorSpec

def above(bars, indicators, window=10):
    s = indicators["sma"]
    return np.where(np.isnan(s), 0, np.where(bars.close > s, 1, -1)).astype(np.int8)

above.indicators = lambda window=10: {"sma": IndicatorSpec.make("sma", window=window)}
above.lookback = 0
'''


def test_a_set_with_a_user_strategy_saves_no_state_and_is_generated_in_full(tmp_path, client, history, monkeypatch):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "incstrats.py").write_text(USER_STRATEGY)
    monkeypatch.syspath_prepend(str(mods))
    members = [MEMBERS[0], {"strategy": "incstrats:above", "params": {"window": 12}}]
    root = StorageRef.make(str(tmp_path / "root"))
    day1 = _day(tmp_path, history, 1, [])
    first = generate_signals(_config(members=members), day1, root, client, progress=False, echo=quiet)
    assert not first.manifest["resumable"] and all("state" not in e for e in first.manifest["parts"].values())
    assert not (tmp_path / "root" / "signals" / first.set_id / "state").exists()
    assert not (tmp_path / "root" / "signals" / "_chain").exists()
    day2 = _day(tmp_path, history, 2, [day1])
    grown = generate_signals(_config(members=members), day2, root, client, progress=False, echo=quiet)
    assert grown.manifest["summary"]["full_symbols"] == 3
    assert "not resumable" in grown.manifest["summary"]["note"]
    _assert_equals_fresh(tmp_path, grown, day2, client, _config(members=members))


def test_on_s3_the_state_chain_and_listing_work_the_same(tmp_path, client, history, s3):
    url, options = s3
    root = StorageRef.make(f"{url}/root", options)
    config = _config(symbols=["AAA"])  # one symbol: each object store session costs ~0.2 s
    day1 = _day(tmp_path, history, 1, [])
    first = generate_signals(config, day1, root, client, progress=False, echo=quiet)
    day2 = _day(tmp_path, history, 2, [day1])
    grown = generate_signals(config, day2, root, client, progress=False, echo=quiet)
    assert grown.manifest["summary"]["incremental_from"] == first.set_id
    assert grown.manifest["summary"]["bars_read"] == 5
    assert list_signal_sets(root) == sorted([first.set_id, grown.set_id])
    _assert_equals_fresh(tmp_path, grown, day2, client, config)
