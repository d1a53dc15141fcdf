"""A moto S3 server in a process of its own, counting the requests it receives (the benchmarks' S3).

    python -m benchmarks._moto_server        (started by benchmarks/_s3.py, not by hand)

It listens on 127.0.0.1 on a free port and prints ``port <n>`` once it serves. Then each
line on stdin is a command: ``take`` prints the requests counted since the last
``take`` as one JSON line (``{"PUT": 202, "GET(list)": 1, ...}``) and clears them; ``cpu``
prints the CPU seconds this process has used (all its threads); end of input stops the server.
``ADMF_BENCH_S3_LATENCY_MS`` (default 0) makes each request wait that long first, as a store across a
network does (requests in flight together wait together). moto's own server (werkzeug's development
server, the default) closes every connection after one response, so each request pays a new connection
at both ends; ``ADMF_BENCH_S3_KEEPALIVE=1`` serves moto's app over kept connections (HTTP/1.1
keep-alive), as S3 does (no difference resolved in CPU or wall time on 127.0.0.1: BENCHMARKS.md,
2026-12-07 s3d). In its own process the server's Python work does not share the
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


class _KeepAliveServer:
    """moto's WSGI app served over HTTP/1.1 keep-alive connections, as S3 serves (tornado's server).

    moto's ThreadedMotoServer is werkzeug's development server, which ends every response with
    ``Connection: close``: each request then paid a new TCP connection at both ends (a thread,
    an accept, a connect), which a client of S3 pays once per connection it keeps. Requests run
    in a pool of threads, so requests in flight together are served together (and wait together
    with ``ADMF_BENCH_S3_LATENCY_MS``), as with moto's threaded server.
    """

    def __init__(self) -> None:
        self._port = 0
        self._ready = threading.Event()
        self._loop = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            create_backend_app,
        )
        from tornado.httpserver import HTTPServer
        from tornado.netutil import bind_sockets
        from tornado.wsgi import WSGIContainer

        logging.getLogger("tornado.access").setLevel(logging.ERROR)
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        app = WSGIContainer(DomainDispatcherApplication(create_backend_app),
                            executor=ThreadPoolExecutor(32, thread_name_prefix="moto"))
        server = HTTPServer(app, max_body_size=1 << 31, max_buffer_size=1 << 31)
        sockets = bind_sockets(0, "127.0.0.1")
        self._port = sockets[0].getsockname()[1]
        server.add_sockets(sockets)
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()

    def get_host_and_port(self) -> tuple[str, int]:
        return "127.0.0.1", self._port

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


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
    if os.environ.get("ADMF_BENCH_S3_KEEPALIVE", "0") == "1":
        server = _KeepAliveServer()
    else:  # moto's own server: a new connection for every request
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
