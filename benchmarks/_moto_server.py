"""A moto S3 server in a process of its own, counting the requests it receives (the benchmarks' S3).

    python -m benchmarks._moto_server        (started by benchmarks/_s3.py, not by hand)

It listens on 127.0.0.1 on a free port and prints ``port <n>`` once it serves. Then each
line on stdin is a command: ``take`` prints the requests counted since the last
``take`` as one JSON line (``{"PUT": 202, "GET(list)": 1, ...}``) and clears them; ``cpu``
prints the CPU seconds this process has used (all its threads); end of input stops the server.
``ADMF_BENCH_S3_LATENCY_MS`` (default 0) makes each request wait that long first, as a store across a
network does (requests in flight together wait together). In its own process the server's Python work does not share the
client's GIL, as with any real object store; an in-process ThreadedMotoServer would.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import sys
import threading
import time


def main() -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    counts: collections.Counter = collections.Counter()
    # ADMF_BENCH_S3_LATENCY_MS: each request waits this long first (in its own server thread, so requests
    # in flight together wait together), as a store across a network does; 0 (default): as fast as moto
    latency = float(os.environ.get("ADMF_BENCH_S3_LATENCY_MS", "0") or 0) / 1000
    guard = threading.Lock()
    call = DomainDispatcherApplication.__call__

    def counting(app, environ, start_response):
        query = environ.get("QUERY_STRING", "")
        kind = environ["REQUEST_METHOD"] + ("(list)" if "list-type" in query or "prefix" in query else "")
        if environ["REQUEST_METHOD"] == "PUT" and "HTTP_X_AMZ_COPY_SOURCE" in environ:
            kind = "PUT(copy)"
        with guard:
            counts[kind] += 1
        if latency > 0:
            time.sleep(latency)
        return call(app, environ, start_response)

    DomainDispatcherApplication.__call__ = counting
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(f"port {server.get_host_and_port()[1]}", flush=True)
    for line in sys.stdin:
        if line.strip() == "take":
            with guard:
                out = dict(counts)
                counts.clear()
            print(json.dumps(out), flush=True)
        elif line.strip() == "cpu":
            print(time.process_time(), flush=True)
    server.stop()


if __name__ == "__main__":
    main()
