"""Bar store read throughput against a raw pyarrow.dataset read of the same files and columns.

    python -m benchmarks store [--symbols 20] [--freq minute] [--start 2023-01-01] [--end 2023-12-31]

Generates the dataset once under .bench/ (reused by later runs), then times, with
a warm page cache and alternating the two readers, the median of ``--repeat`` runs:

* one symbol, all columns;  * one symbol, close only;  * every symbol, all columns.

The store's time includes what a user gets back: numpy arrays per symbol (``Bars``).
The peer is ``pyarrow.dataset.dataset(files).to_table(columns)``, given the exact
file list, so it does no discovery either. ``ratio_vs_pyarrow`` is the worst case's
store time / pyarrow time (target <= 1.3).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import pyarrow.dataset as ds

from admf_dask.bars import BarStore, SyntheticSpec, generate_dataset, symbol_names

from ._harness import print_table, record_digests

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".bench")


def _alternate(fns: dict, repeat: int) -> dict:
    """Median seconds per function, running them in turn so drift hits both alike."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks store", description=__doc__.split("\n\n")[0])
    p.add_argument("--symbols", type=int, default=20)
    p.add_argument("--freq", choices=["daily", "minute"], default="minute")
    p.add_argument("--start", default="2023-01-01")
    p.add_argument("--end", default="2023-12-31")
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args(argv)

    url = os.path.join(ROOT, f"store-{args.freq}-{args.symbols}-{args.start}-{args.end}")
    store = BarStore(url)
    names = symbol_names(args.symbols)
    spec = SyntheticSpec(args.start, args.end, args.freq, seed=42)
    if not store.exists() or store.symbols() != names or store.source != {"kind": "synthetic", **spec.to_dict()}:
        print(f"generating {args.symbols} symbols of {args.freq} bars into {url} ...")
        generate_dataset(store, names, spec)
    record_digests(BarStore(url))
    store = BarStore(url)
    store.manifest  # read once, as any long-lived reader would

    def paths(symbols):
        return [store.storage.path(f) for s in symbols for f in store.files(s)]

    one = names[len(names) // 2]
    cases = {
        "one symbol, all columns": ([one], None),
        "one symbol, close only": ([one], ["close"]),
        f"all {len(names)} symbols, all columns": (names, None),
    }
    rows, figures, ratios = [], {}, []
    for label, (symbols, cols) in cases.items():
        files = paths(symbols)
        arrow_cols = ["timestamp", *(cols or ["open", "high", "low", "close", "volume"])]
        if len(symbols) == 1:
            ours = lambda s=symbols[0], c=cols: store.read(s, columns=c)  # noqa: E731
        else:
            ours = lambda c=cols: store.read_many(columns=c)  # noqa: E731
        peer = lambda f=files, c=arrow_cols: ds.dataset(f, format="parquet").to_table(columns=c)  # noqa: E731
        n_rows = peer().num_rows
        n_bytes = n_rows * 8 * len(arrow_cols)
        t = _alternate({"store": ours, "pyarrow": peer}, args.repeat)
        ratio = t["store"] / t["pyarrow"]
        ratios.append(ratio)
        for who in ("store", "pyarrow"):
            rows.append([label, who, len(files), n_rows, t[who] * 1e3, n_bytes / t[who] / 1e6, n_rows / t[who]])
        rows.append([label, "ratio store/pyarrow", "", "", ratio, "", ""])
        key = label.split(",")[0].replace(" ", "_").split("_symbols")[0]
        figures[f"{key}_{'close' if cols else 'all'}_store_mb_s"] = round(n_bytes / t["store"] / 1e6, 1)
        figures[f"{key}_{'close' if cols else 'all'}_ratio"] = round(ratio, 3)
    print_table(["case", "reader", "files", "bars", "median ms", "MB/s", "bars/s"], rows,
                title=f"bar store read throughput ({args.freq}, {args.symbols} symbols, "
                      f"{args.start}..{args.end}, median of {args.repeat}, warm cache)")
    figures.update(ratio_vs_pyarrow=round(max(ratios), 3), symbols=args.symbols, freq=args.freq,
                   repeat=args.repeat)
    return figures
