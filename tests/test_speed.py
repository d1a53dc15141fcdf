"""Speed from the shell (issue 16): numba kernels preloaded in local workers as the cluster starts."""

from __future__ import annotations

import threading


def _index() -> list[tuple[str, bool]]:
    """numba's cache index for this machine (what it compiled before), each entry with whether the
    dispatcher holds that overload now: [(module.function(signature), loaded)]."""
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import admf_dask.kernels as kernels

    out = []
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"{kernels.__name__}.{info.name}")
        for name, obj in vars(module).items():
            cache_file = getattr(getattr(obj, "_cache", None), "_cache_file", None)
            if not isinstance(obj, CPUDispatcher) or obj.__module__ != module.__name__ or cache_file is None:
                continue
            magic = obj.targetctx.codegen().magic_tuple()
            out += [(f"{info.name}.{name}{key[0]}", key[0] in obj.overloads)
                    for key in cache_file._load_index() if key[1] == magic]
    return out


def _cached_and_loaded(before: list[str]) -> tuple[int, list[str]]:
    """In a worker: wait for the preload thread, then compare the cache entries ``before`` (the index
    as the worker started: in the suite, other test processes add entries meanwhile) with the
    overloads the dispatchers hold, without any task having called a kernel."""
    for t in threading.enumerate():
        if t.name == "admf-kernel-preload":
            t.join(120)
    wanted = set(before)
    entries = [(entry, loaded) for entry, loaded in _index() if entry in wanted]
    return len(entries), [entry for entry, loaded in entries if not loaded]


def test_local_workers_preload_cached_kernels():
    from admf_dask.backtest import run_batch
    from admf_dask.bars import generate_bars
    from admf_dask.cluster import connect

    # this process runs a backtest first, so numba's cache holds at least its kernels
    run_batch(generate_bars("AAA", "2020-01-01", "2020-06-30", seed=1), "sma_cross", [{"fast": 3, "slow": 8}])
    before = [entry for entry, _ in _index()]  # the index as the worker will find it
    with connect({"kind": "local", "n_workers": 1, "threads_per_worker": 1, "dashboard_address": ""},
                 echo=lambda m: None) as client:
        (cached, missing), = client.run(_cached_and_loaded, before).values()
        plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins)).popitem()[1]
    assert cached > 0
    assert missing == []
    assert "admf-kernel-preload" in plugins


LIGHT = """
import sys
from admf_dask.preload import light_cache_loads
assert light_cache_loads()
from admf_dask.backtest import run_batch
from admf_dask.bars import generate_bars
from admf_dask.kernels import strategies
table = run_batch(generate_bars("AAA", "2020-01-01", "2020-06-30", seed=1), "sma_cross",
                  [{"fast": 3, "slow": 8}, {"fast": 5, "slow": 20}], direction="long_only", commission=0.001)
table.to_pickle(sys.argv[1])
misses = sum(sum(d.stats.cache_misses.values()) for d in vars(strategies).values() if hasattr(d, "stats"))
print("numba.np.arraymath" in sys.modules, misses)
"""


def test_cached_kernels_run_without_numbas_target_set_up_with_the_same_results(tmp_path):
    """What the zygote and local workers do (preload.light_cache_loads): a fresh process loads the cached
    overloads without numba's CPU target (its ~215 registry modules, e.g. numba.np.arraymath, never imported)
    and computes the same bits as this process, where numba set the target up."""
    import subprocess
    import sys

    import pandas as pd

    from admf_dask.backtest import run_batch
    from admf_dask.bars import generate_bars

    # run here first: numba's cache then holds these kernels (the fresh process compiles nothing)
    expected = run_batch(generate_bars("AAA", "2020-01-01", "2020-06-30", seed=1), "sma_cross",
                         [{"fast": 3, "slow": 8}, {"fast": 5, "slow": 20}], direction="long_only", commission=0.001)
    out = subprocess.run([sys.executable, "-c", LIGHT, str(tmp_path / "table.pkl")], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "0"]  # no target set up, no overload compiled
    got = pd.read_pickle(tmp_path / "table.pkl")
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert expected["n_trades"].sum() > 0  # the strategy traded: the kernels computed something


def _busy(dask_worker) -> bool:
    from admf_dask.preload import worker_busy

    return worker_busy(dask_worker)


_STARTED, _GO = threading.Event(), threading.Event()


def _task() -> int:  # in-process (threads): it signals the test from the worker, then waits for it
    _STARTED.set()
    _GO.wait(30)
    return 1


def test_the_preload_stops_once_the_worker_runs_a_task():
    """The loading's stop (preload_kernels(stop)): false while the worker has run no task (``client.run`` is
    not one), true from its first task on, while it runs and after."""
    from admf_dask.cluster import connect

    with connect({"kind": "threads", "n_workers": 1, "dashboard_address": ""}, echo=lambda m: None) as client:
        assert list(client.run(_busy).values()) == [False]
        future = client.submit(_task, pure=False)
        assert _STARTED.wait(30)
        assert list(client.run(_busy).values()) == [True]  # running
        _GO.set()
        assert future.result() == 1
        assert list(client.run(_busy).values()) == [True]  # and after
