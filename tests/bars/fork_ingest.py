"""Run several `admf` command lines at the same moment, each in its own process; print their exit codes (JSON).

    python tests/bars/fork_ingest.py '{"jobs": [["ingest", STORE, FILE], ...], "crash_at": null}'

The heavy imports happen once, here; then one process per job is forked and all of
them wait on a pipe, so they start together (20 interpreters started one by one
took 30 s on 2 cores, most of it importing pandas and pyarrow). Each child is a
real process: its own pid, file locks and HTTP connections, and `admf`'s own exit
code. ``crash_at`` kills every child with SIGKILL when it reaches a point of the
commit: ``"commit"`` (its files are staged, nothing is committed yet) or
``"manifest"`` (its files are moved into place, the manifest is not written).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import traceback

import fsspec.implementations.chained  # noqa: F401  (imported lazily by the first ingest otherwise)
import pyarrow.dataset  # noqa: F401
import pyarrow.pandas_compat  # noqa: F401
import s3fs  # noqa: F401
import yaml  # noqa: F401

import admf_dask.bars.ingest  # noqa: F401
from admf_dask.cli import main
from admf_dask.storage import Storage


_LOADER = None


def botocore_loader():
    """One botocore data loader holding S3's models, parsed once.

    Every botocore session builds its own loader and parses the same large JSON
    files again (0.5 s of CPU for each new S3 client); sessions that get this one
    skip that. Nothing about the requests changes.
    """
    global _LOADER
    if _LOADER is None:
        import botocore.loaders
        import botocore.session

        _LOADER = botocore.loaders.create_loader()
        session = botocore.session.Session()
        session.register_component("data_loader", _LOADER)
        session.create_client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9",  # no request
                              aws_access_key_id="x", aws_secret_access_key="x")
    return _LOADER


def _die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def run(job: list[str], crash_at: str | None) -> int:
    if crash_at == "commit":
        Storage.exclusive = _die
    elif crash_at == "manifest":
        Storage.write_if = _die
    try:
        main(job)
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        return 1


def launch(jobs: list[list[str]], crash_at: str | None = None) -> list[int]:
    import botocore.session

    loader = botocore_loader()
    botocore.session.create_loader = lambda *args, **kwargs: loader  # the children's sessions share it
    gc.collect()
    gc.freeze()  # children share the parent's objects without copying their pages
    start_r, start_w = os.pipe()
    pids = []
    for job in jobs:
        pid = os.fork()
        if pid == 0:
            os.close(start_w)
            os.read(start_r, 1)  # returns when the parent closes its end: everyone starts now
            code = run(job, crash_at)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        pids.append(pid)
    os.close(start_r)
    os.close(start_w)
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    codes = launch(spec["jobs"], spec.get("crash_at"))
    print(json.dumps(codes))
