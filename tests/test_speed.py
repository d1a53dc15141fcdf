"""Speed from the shell (issue 16): numba kernels preloaded in local workers as the cluster starts."""

from __future__ import annotations

import threading


def _cached_and_loaded() -> tuple[int, list[str]]:
    """In a worker: wait for the preload thread, then compare numba's cache index (what this machine
    compiled before) with the overloads the dispatchers hold, without any task having called a kernel."""
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import admf_dask.kernels as kernels

    for t in threading.enumerate():
        if t.name == "admf-kernel-preload":
            t.join(120)
    cached, missing = 0, []
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"{kernels.__name__}.{info.name}")
        for name, obj in vars(module).items():
            cache_file = getattr(getattr(obj, "_cache", None), "_cache_file", None)
            if not isinstance(obj, CPUDispatcher) or obj.__module__ != module.__name__ or cache_file is None:
                continue
            magic = obj.targetctx.codegen().magic_tuple()
            for key in cache_file._load_index():
                if key[1] == magic:
                    cached += 1
                    if key[0] not in obj.overloads:
                        missing.append(f"{info.name}.{name}{key[0]}")
    return cached, missing


def test_local_workers_preload_cached_kernels():
    from admf_dask.backtest import run_batch
    from admf_dask.bars import generate_bars
    from admf_dask.cluster import connect

    # this process runs a backtest first, so numba's cache holds at least its kernels
    run_batch(generate_bars("AAA", "2020-01-01", "2020-06-30", seed=1), "sma_cross", [{"fast": 3, "slow": 8}])
    with connect({"kind": "local", "n_workers": 1, "threads_per_worker": 1, "dashboard_address": ""},
                 echo=lambda m: None) as client:
        (cached, missing), = client.run(_cached_and_loaded).values()
        plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins)).popitem()[1]
    assert cached > 0
    assert missing == []
    assert "admf-kernel-preload" in plugins
