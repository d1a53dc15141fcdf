"""What checking a bar file against its manifest costs when it is read (CPU seconds, one thread).

Every bar file read is checked against the size and ``file_sha256`` (sha256 of its bytes) its commit
recorded; entries written before that field by the sha256 of their arrays. Figures:

- ``check_ms_year_file`` / ``check_ms_symbol_file``: the check alone, a daily year file (~14 KB) and a
  10-year daily symbol file (~130 KB) in memory; ``*_older``: the older entries' check of the same file.
- ``read_cpu_s``: reading every symbol of an N-symbol, 10-year daily dataset (``.bench/checks-N-G``) as a
  sweep task does (``BarStore._read``, one thread, page cache), median of ``--repeat``;
  ``read_cpu_s_older``: the same with the manifest's ``file_sha256`` dropped (a dataset written before it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from benchmarks._harness import print_table, record_digests

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".bench")


def _per_call_ms(fn, n: int) -> float:
    fn()
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n * 1e3


def _older(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k != "file_sha256"}


def _read_cpu(store, names: list[str], repeat: int) -> float:
    for s in names:  # warm: page cache, imports
        store._read(s, None, None, None, parallel=False)
    runs = []
    for _ in range(repeat):
        t = time.process_time()
        for s in names:
            store._read(s, None, None, None, parallel=False)
        runs.append(time.process_time() - t)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> dict:
    from admf_dask.bars import BarStore, SyntheticSpec, generate_bars, generate_dataset, symbol_names

    p = argparse.ArgumentParser(prog="python -m benchmarks checks", description=__doc__.splitlines()[0])
    p.add_argument("--symbols", type=int, default=100, help="symbols of the dataset read (10 years of daily bars)")
    p.add_argument("--granularity", choices=["year", "symbol"], default="year")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)

    figures: dict = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, start, granularity in (("year", "2023-01-01", "year"), ("symbol", "2014-01-01", "symbol")):
            store = BarStore(os.path.join(tmp, label))
            store.update([generate_bars("AAA", start, "2023-12-31", seed=1)], granularity=granularity)
            meta = store.entry("AAA")["files"][-1]
            with open(store.storage.path(meta["path"]), "rb") as f:
                data = f.read()
            new = _per_call_ms(lambda s=store, m=meta, d=data: s._check_bytes(m, "AAA", d), 2000)
            older = _older(meta)
            old = _per_call_ms(lambda s=store, m=older, d=data: s._check_bytes(m, "AAA", d), 200)
            figures[f"check_ms_{label}_file"], figures[f"check_ms_{label}_file_older"] = round(new, 4), round(old, 4)
            rows.append([f"check of a daily {label} file ({len(data):,} B): size + sha256 of its bytes", new])
            rows.append(["  the same file, an older entry: parse + sha256 of its arrays", old])

    name = f"checks-{args.symbols}-{args.granularity}"
    store = BarStore(os.path.join(ROOT, name))
    spec = SyntheticSpec("2014-01-01", "2023-12-31", "daily", seed=42)
    names = symbol_names(args.symbols)
    if not store.exists() or store.symbols() != names:
        generate_dataset(store, names, spec, progress=False)
        store = BarStore(store.url)
        if store.granularity != args.granularity:
            store.repack(args.granularity)
    record_digests(BarStore(store.url))
    store = BarStore(store.url)
    files = sum(len(store.entry(s)["files"]) for s in names)
    cpu = _read_cpu(store, names, args.repeat)
    older = BarStore(store.url)
    for entry in older.manifest["symbols"].values():
        entry["files"] = [_older(f) for f in entry["files"]]
    cpu_older = _read_cpu(older, names, args.repeat)
    rows.append([f"read {args.symbols} symbols ({files:,} {args.granularity} files), checked", cpu * 1e3])
    rows.append(["  the same, older entries (no file_sha256)", cpu_older * 1e3])
    figures.update(read_files=files, read_cpu_s=round(cpu, 4), read_cpu_s_older=round(cpu_older, 4),
                   read_cpu_ms_per_file=round(cpu / files * 1e3, 4))
    print_table(["what", "ms (CPU)"], rows, title="Checking bar files as they are read")
    return figures
