"""Logging: admf's messages through stdlib ``logging``, fit for a terminal and for cron.

Modules log under the ``admf_dask`` logger tree (``logging.getLogger(__name__)``).
:func:`setup_logging` (called once by the ``admf`` command) routes every record:

=========================  ================================  ==============================
records of                 on stderr                         in ``--log-file`` (appended)
=========================  ================================  ==============================
``admf_dask.*``            INFO (``-q``: WARNING,            INFO (``-v``: DEBUG)
                           ``-v``: DEBUG)
libraries (distributed,    only with ``-v``, and never       WARNING (``-v``: INFO)
bokeh, tornado, Python     after an interrupt
warnings)
=========================  ================================  ==============================

On a terminal stderr shows bare messages (``warning:``/``error:`` prefixed); written
to a file or a pipe, and in the log file, each line carries a UTC timestamp, the
level, the logger and the process id. Dask's library noise -- "Port 8787 is already
in use", the nanny's "Worker process ... was killed", "Restarting worker",
closing-stream errors -- thus stays out of the user's way but is kept in the log.

Worker processes of a ``local`` cluster get the same routing and ignore SIGINT
(:func:`worker_config`, applied by :func:`dask_setup` as a worker preload), so a
Ctrl-C reaches only the admf process, which closes the cluster itself. Once closed, such
a worker process ends without interpreter teardown (:func:`dask_teardown`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["FILE_ONLY", "collect_warnings", "dask_setup", "dask_teardown", "hush_libraries", "setup_logging", "worker_config"]

PACKAGE = "admf_dask"
# Loggers that libraries give their own stderr handlers (distributed does on import, with
# propagate=False): once adopted, their records go through admf's handlers instead.
LIBRARIES = ("distributed", "bokeh", "tornado", "tornado.application", "asyncio", "py.warnings")

FILE_ONLY = {"console": False}  # ``log.info(text, extra=FILE_ONLY)``: to the log file, not to stderr

_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
_state: dict[str, Any] = {"configured": False, "hushed": False, "verbosity": 0, "log_file": None}


class _UTCFormatter(logging.Formatter):
    """``2026-01-31T02:00:00.123Z INFO admf_dask.workflow [4242] message``."""

    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created)) + f".{int(record.msecs):03d}Z"


class _TerminalFormatter(logging.Formatter):
    """Bare messages for people; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING and record.name.startswith(PACKAGE):
            text = f"{record.levelname.lower()}: {text}"
        elif not record.name.startswith(PACKAGE):
            text = f"[{record.name}] {record.levelname.lower()}: {text}"
        return text


class _Route(logging.Filter):
    """Which records a handler takes: admf's always (the handler's level decides), the libraries'
    on stderr only with -v and never after an interrupt, in the log file from WARNING (INFO with -v)."""

    def __init__(self, console: bool, verbose: bool) -> None:
        super().__init__()
        self.console, self.verbose = console, verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == PACKAGE or record.name.startswith(PACKAGE + "."):
            return not self.console or getattr(record, "console", True)
        if self.console:
            return self.verbose and not _state["hushed"]
        return self.verbose or record.levelno >= logging.WARNING


def _ours(handler: logging.Handler) -> bool:
    return getattr(handler, "_admf", False)


def setup_logging(*, verbosity: int = 0, log_file: str | os.PathLike | None = None,
                  stream: TextIO | None = None) -> None:
    """Route admf's and the libraries' records to stderr and (optionally) a log file.

    ``verbosity`` is -1 (``--quiet``: warnings and errors only), 0 (messages) or 1
    (``-v``: debug, and library records on stderr too). ``log_file`` is appended to at
    INFO (DEBUG with ``-v``). Calling it again replaces the previous setup.

    Raises OSError when the log file cannot be opened.
    """
    stream = sys.stderr if stream is None else stream
    root = logging.getLogger()
    for handler in [h for h in root.handlers if _ours(h)]:
        root.removeHandler(handler)
        handler.close()
    debug = verbosity > 0
    console = logging.StreamHandler(stream)
    console._admf = True  # type: ignore[attr-defined]
    console.setLevel(logging.DEBUG if debug else logging.INFO if verbosity == 0 else logging.WARNING)
    console.addFilter(_Route(console=True, verbose=debug))
    tty = bool(getattr(stream, "isatty", lambda: False)())
    console.setFormatter(_TerminalFormatter("%(message)s") if tty else _UTCFormatter(_FORMAT))
    handlers: list[logging.Handler] = [console]
    if log_file:
        file = logging.FileHandler(os.fspath(log_file), mode="a", encoding="utf-8")
        file._admf = True  # type: ignore[attr-defined]
        file.setLevel(logging.DEBUG if debug else logging.INFO)
        file.addFilter(_Route(console=False, verbose=debug))
        file.setFormatter(_UTCFormatter(_FORMAT))
        handlers.append(file)
    for handler in handlers:
        root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)  # libraries (botocore, fsspec) stay at INFO even with -v: their DEBUG floods
    logging.getLogger(PACKAGE).setLevel(logging.DEBUG if debug else logging.INFO)
    logging.captureWarnings(True)
    _state.update(configured=True, hushed=False, verbosity=verbosity,
                  log_file=os.path.abspath(log_file) if log_file else None)  # workers may run elsewhere
    adopt_library_loggers()


def adopt_library_loggers() -> None:
    """Take distributed's (and bokeh's, tornado's) records into admf's handlers.

    distributed gives these loggers a stderr handler of its own when it is imported;
    that handler is removed and the records propagate to the root handlers set up by
    :func:`setup_logging`. A no-op in a process where that was not called, so the
    library keeps its own logging when admf is used from Python.
    """
    if not _state["configured"]:
        return
    for name in LIBRARIES:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True


def hush_libraries() -> None:
    """From now on no library record reaches stderr (even with ``-v``): called on SIGINT or SIGTERM,
    so that closing the cluster does not print its complaints about cancelled tasks and closed streams."""
    _state["hushed"] = True


@contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """Collect the messages of admf's warnings logged inside the block (for ``--json`` summaries).

    >>> with collect_warnings() as seen:
    ...     logging.getLogger("admf_dask.demo").warning("3 symbols have no bars in the range")
    >>> seen
    ['3 symbols have no bars in the range']
    """
    seen: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = _Collect(logging.WARNING)
    logger = logging.getLogger(PACKAGE)
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


def worker_config() -> dict[str, Any]:
    """Dask config for the workers of a local cluster: :func:`dask_setup` as a preload, and this process's
    logging settings (they reach the worker processes through their nanny's config)."""
    import dask

    preload = list(dask.config.get("distributed.worker.preload", []) or [])
    if __name__ not in preload:
        preload.append(__name__)
    return {"distributed.worker.preload": preload,
            "admf.logging": {"configured": _state["configured"], "verbosity": _state["verbosity"],
                             "log_file": _state["log_file"]}}


def dask_setup(worker: Any) -> None:
    """Worker preload (runs in each worker process as it starts, restarts included).

    The process ignores SIGINT: a Ctrl-C in the terminal goes to the whole process
    group, and the admf process closes the cluster itself (a worker raising
    KeyboardInterrupt printed its traceback). Then, if the admf command configured
    logging, the worker's records are routed the same way (into the same log file).
    """
    import dask

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = dask.config.get("admf.logging", None) or {}
    if settings.get("configured"):
        setup_logging(verbosity=settings.get("verbosity", 0), log_file=settings.get("log_file"))
    zygote = sys.modules.get("admf_dask.zygote")
    if zygote is not None and zygote.forked_from() is not None:
        logging.getLogger(__name__).debug("worker process forked from the zygote (pid %d)", zygote.forked_from())


def dask_teardown(worker: Any) -> None:
    """Worker preload's end (the worker has closed: its tasks are over, the scheduler told): the process
    then exits without tearing the interpreter down.

    Freeing numba's, pandas' and distributed's modules and objects took a closed worker
    process 0.3-1 s, and the nanny (so ``cluster.close()``, so the ``admf`` command) waited
    for it. The exit handlers run first; only the teardown after them is skipped. Never in
    the process that started the cluster (a worker of a ``threads`` cluster lives there).
    """
    import atexit
    import multiprocessing

    if multiprocessing.parent_process() is not None:  # a worker process the nanny started
        atexit.register(_exit_now)


def _exit_now() -> None:
    """Registered last, so run first at exit: run the other exit handlers, flush, end the process (status 0:
    the worker closed normally)."""
    import atexit

    atexit.unregister(_exit_now)
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)
