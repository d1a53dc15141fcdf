"""Dask inspection and the monitor: stage keys, performance reports, /metrics, findings."""

from __future__ import annotations

import numpy as np
import pytest
from dask.utils import key_split

from admf_dask.bars import BarStore, generate_bars, symbol_names
from admf_dask.cluster import STAGES, connect
from admf_dask.replay import ReplayConfig, run_replay
from admf_dask.signals import SignalsConfig, generate_signals
from admf_dask.storage import StorageRef
from admf_dask.sweep import SweepConfig, run_sweep

THREADS = {"kind": "threads", "n_workers": 2, "dashboard_address": ""}
GRID = {"fast": [5, 10, 20], "slow": [30, 60]}


@pytest.fixture
def dataset(tmp_path):
    store = BarStore(str(tmp_path / "bars"))
    store.write([generate_bars(s, "2019-01-01", "2021-12-31", seed=5) for s in symbol_names(4)])
    return store


def test_every_task_of_a_sweep_signals_and_replay_is_keyed_by_its_stage(tmp_path, dataset):
    from distributed import get_task_stream

    root = StorageRef.make(str(tmp_path / "store"))
    config = SweepConfig(strategy="sma_cross", params=GRID, batch_seconds=1e-4)
    with connect(THREADS) as client, get_task_stream(client) as stream:
        swept = run_sweep(config, dataset, root, client, progress=False)
        signal_set = generate_signals(SignalsConfig(from_run=swept.run_id, top=2), dataset, root, client,
                                      progress=False)
        run_replay(ReplayConfig(signals=signal_set.set_id, rule="fraction", weights=np.eye(2).tolist(),
                                batch_seconds=1e-4), root, client, progress=False)
    prefixes = {key_split(t["key"]) for t in stream.data}
    assert prefixes <= set(STAGES), prefixes
    # a split layout: shared indicator sets, several containers per set range, then the reduce
    assert {"indicators", "sweep", "portfolio", "signals", "replay"} <= prefixes, prefixes
