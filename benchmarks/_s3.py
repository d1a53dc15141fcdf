"""Rows ``generate_s3_over_local`` and ``s3_over_local`` of ``python -m benchmarks sweep``.

A moto S3 server runs on 127.0.0.1 in a process of its own (benchmarks/_moto_server.py:
every request over HTTP, as to S3, and the server's Python work does not share this
process's GIL); requests are counted at the server, by method (``PUT(copy)``: a
CopyObject), so the figures say where they go.

- ``generate_s3_over_local``: ``generate_dataset`` (what ``admf generate`` runs) of N
  symbols x 10 years of daily bars, in process, to S3 vs to local disk (target <= 3).
- ``s3_over_local``: W (the 184-set SMA-cross grid) x N symbols on a warm 2-worker
  LocalCluster, bars and run storage on S3 vs both on local disk (target <= 2).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid

import numpy as np


class _Server:
    """The moto server, in a child process (benchmarks/_moto_server.py), counting requests by method."""

    def __init__(self) -> None:
        import subprocess
        import sys

        for k, v in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                     ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_EC2_METADATA_DISABLED", "true")):
            os.environ.setdefault(k, v)
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks._moto_server"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            self.proc.kill()
            raise RuntimeError(f"the moto server did not start: {line!r}")
        self.options = {"endpoint_url": f"http://127.0.0.1:{int(line.split()[1])}", "key": "testing",
                        "secret": "testing"}
        import s3fs

        self.bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3fs.S3FileSystem(**self.options).mkdir(self.bucket)

    def take(self) -> dict:
        """The requests the server received since the last take, by kind (PUT(copy): CopyObject)."""
        self.proc.stdin.write("take\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def cpu(self) -> float:
        """CPU seconds the server process has used so far."""
        self.proc.stdin.write("cpu\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def stop(self) -> None:
        import subprocess

        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def rows(args, out_rows: list, figures: dict, *, root: str, config, cluster, warm, n_symbols: int,
         start: str, end: str, repeat: int, generate_repeat: int, sweep: bool = True) -> None:
    from admf_dask.bars import BarStore, SyntheticSpec, generate_dataset, symbol_names
    from admf_dask.storage import StorageRef
    from admf_dask.sweep import run_sweep

    from ._harness import record_digests

    server = _Server()
    url = f"s3://{server.bucket}"
    names = symbol_names(n_symbols)
    spec = SyntheticSpec(start, end, "daily", seed=42)
    try:
        # --- generate: in process, the same spec, to a fresh local directory and a fresh S3 prefix each
        # time; local and S3 alternate (a slow spell hits both), after one untimed pair (first use)
        # CPU seconds too (this process; the server's): steadier than wall time on a shared machine
        gen: dict[str, list[float]] = {"local": [], "s3": [], "local_cpu": [], "s3_cpu": [], "server_cpu": []}
        for i in range(max(1, generate_repeat) + 1):
            local_dir = tempfile.mkdtemp(prefix="admf-bench-gen-", dir=root)
            try:
                t0, c0 = time.perf_counter(), time.process_time()
                generate_dataset(BarStore(os.path.join(local_dir, "bars")), names, spec, progress=False)
                t_local, c_local = time.perf_counter() - t0, time.process_time() - c0
            finally:
                shutil.rmtree(local_dir, ignore_errors=True)
            server.take()
            s3_store = BarStore(f"{url}/bars-{i}", server.options)
            s0 = server.cpu()
            t0, c0 = time.perf_counter(), time.process_time()
            generate_dataset(s3_store, names, spec, progress=False)
            t_s3, c_s3 = time.perf_counter() - t0, time.process_time() - c0
            c_server = server.cpu() - s0
            gen_requests = server.take()  # of the last S3 run
            if i:
                for key, value in (("local", t_local), ("s3", t_s3), ("local_cpu", c_local), ("s3_cpu", c_s3),
                                   ("server_cpu", c_server)):
                    gen[key].append(value)
        t_gen_local, t_gen_s3 = float(np.median(gen["local"])), float(np.median(gen["s3"]))
        out_rows.append([f"4. generate {n_symbols} symbols x 10 y daily, local disk, median of {len(gen['local'])}",
                         t_gen_local, n_symbols, None])
        out_rows.append([(f"4. generate {n_symbols} symbols x 10 y daily, S3 (moto, 127.0.0.1), median of "
                          f"{len(gen['s3'])}"), t_gen_s3, n_symbols, None])
        figures.update(generate_local_seconds=round(t_gen_local, 3), generate_s3_seconds=round(t_gen_s3, 3),
                       generate_local_seconds_all=[round(t, 3) for t in gen["local"]],
                       generate_s3_seconds_all=[round(t, 3) for t in gen["s3"]],
                       generate_s3_over_local=round(t_gen_s3 / t_gen_local, 2),
                       generate_s3_over_local_per_pair=[round(b / a, 2) for a, b in zip(gen["local"], gen["s3"])],
                       generate_local_cpu_seconds=round(float(np.median(gen["local_cpu"])), 3),
                       generate_s3_client_cpu_seconds=round(float(np.median(gen["s3_cpu"])), 3),
                       generate_s3_server_cpu_seconds=round(float(np.median(gen["server_cpu"])), 3),
                       generate_s3_requests=gen_requests, generate_granularity=s3_store.granularity)

        if not sweep:
            return
        # --- the sweep: warm cluster, bars and run storage both local, or both on S3
        local_store = BarStore(os.path.join(root, f"sweep-s3-local-{n_symbols}", "bars"))
        if not local_store.exists() or local_store.fingerprint != s3_store.refresh().fingerprint:
            shutil.rmtree(os.path.dirname(local_store.url), ignore_errors=True)
            generate_dataset(local_store, names, spec, progress=False)
            local_store = BarStore(local_store.url)
        record_digests(local_store)
        local_store = BarStore(local_store.url)

        def timed(client, store, where: str) -> float:
            run_root = (StorageRef.make(f"{url}/runs-{uuid.uuid4().hex[:8]}", server.options) if where == "s3"
                        else StorageRef.make(tempfile.mkdtemp(prefix="admf-bench-", dir=root)))
            t0 = time.perf_counter()
            run_sweep(config, store, run_root, client, echo=lambda m: None, progress=False)
            seconds = time.perf_counter() - t0
            if where == "local":
                shutil.rmtree(run_root.url, ignore_errors=True)
            return seconds

        times: dict[str, list[float]] = {"local": [], "s3": []}
        with cluster(2) as client:
            warm(client, local_store)
            timed(client, s3_store, "s3")  # warm: the workers' s3fs clients and manifest
            server.take()
            for _ in range(max(1, repeat)):  # alternating, so that a slow spell hits both
                times["local"].append(timed(client, local_store, "local"))
                server.take()
                times["s3"].append(timed(client, s3_store, "s3"))
        sweep_requests = server.take()  # of the last S3 run
        med = {k: float(np.median(v)) for k, v in times.items()}
        for where, label in (("local", "local disk"), ("s3", "S3 (moto, 127.0.0.1)")):
            out_rows.append([(f"5. W x {n_symbols} symbols, warm 2 workers, bars + storage on {label}, "
                              f"median of {len(times[where])}"), med[where], None, None])
        figures.update(s3_sweep_local_seconds=round(med["local"], 3), s3_sweep_s3_seconds=round(med["s3"], 3),
                       s3_sweep_local_seconds_all=[round(t, 3) for t in times["local"]],
                       s3_sweep_s3_seconds_all=[round(t, 3) for t in times["s3"]],
                       s3_over_local=round(med["s3"] / med["local"], 2), s3_sweep_requests=sweep_requests)
    finally:
        server.stop()
