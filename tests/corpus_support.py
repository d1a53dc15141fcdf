"""Helpers of the bad-input corpus and the fault tests: a TCP proxy to freeze and cut, tree hashes."""

from __future__ import annotations

import hashlib
import os
import re
import select
import socket
import threading


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of ``target`` (host, port), plain sockets and threads.

    ``freeze()``: connections are still accepted but no byte goes either way (a frozen
    endpoint); ``cut()``: open connections are closed and new ones refused (the listener
    closes: an outage); ``resume()`` undoes freeze. ``cut_at``: a request whose first bytes
    match this pattern is not forwarded but cuts the proxy (an outage at a known point of a run).
    """

    cut_at: re.Pattern[bytes] | None = None

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.frozen = threading.Event()
        self.cut_event = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.frozen.set()

    def resume(self) -> None:
        self.frozen.clear()

    def cut(self) -> None:
        self.cut_event.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self._conns.clear()

    close = cut

    def _accept(self) -> None:
        while not self.cut_event.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.frozen.is_set():  # accepted, never answered
                with self._lock:
                    self._conns.append(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while not self.cut_event.is_set():
                ready, _, _ = select.select([a, b], [], [], 0.1)
                if self.frozen.is_set():
                    continue  # hold every byte
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is a and self.cut_at is not None and self.cut_at.match(data):
                        self.cut()
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass


def tree_hash(root: str) -> str:
    """A hash of every path, size and content under a local directory ('' if it does not exist)."""
    if not os.path.exists(root):
        return ""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        h.update(os.path.relpath(dirpath, root).encode() + b"/\0")
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            h.update(name.encode() + b"\0")
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args, *, cwd: str | None = None, env: dict | None = None):
    """Run ``admf ARGS`` in this process through ``cli.main``: (exit code, stdout, stderr, seconds).

    stderr and stdout are captured separately; the signal handlers main installs are
    restored afterwards, and so are ``env`` and the working directory.
    """
    import contextlib
    import io
    import signal
    import time

    from admf_dask.cli import main

    old_handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    old_env = {k: os.environ.get(k) for k in (env or {})}
    old_cwd = os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    try:
        os.environ.update({k: v for k, v in (env or {}).items() if v is not None})
        for k, v in (env or {}).items():
            if v is None:
                os.environ.pop(k, None)
        if cwd:
            os.chdir(cwd)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                main([str(a) for a in args])
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(old_cwd)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for s, h in old_handlers.items():
            signal.signal(s, h)
    return code, out.getvalue(), err.getvalue(), time.perf_counter() - t0
