"""Faults the user causes, recognised wherever they surface, and the limits that bound waiting.

Storage and libraries raise their own exceptions (botocore, aiohttp, pandas, gzip,
OSError); :func:`user_error` maps the ones a user causes -- an endpoint that refuses
or never answers, missing or wrong credentials, a full disk, a corrupt compressed
file, a date outside pandas' nanosecond range -- to an :class:`~admf_dask.errors.AdmfError`
(one line, exit 2). Anything else stays what it is (exit 1 with a traceback).

Timeouts (environment variables, read when a filesystem or cluster is opened):

==================================  =======  =================================================
``ADMF_STORAGE_CONNECT_TIMEOUT``    5        seconds to open a connection to an object store
``ADMF_STORAGE_READ_TIMEOUT``       15       seconds to wait for bytes of an answer
``ADMF_STORAGE_RETRIES``            3        attempts per request (backoff 0.1 s x 1.7^i)
``ADMF_WORKER_WAIT``                60       seconds to wait for a scheduler's first worker
``ADMF_STALL_TIMEOUT``              1800     seconds without a finished task before a run stops
==================================  =======  =================================================

A frozen S3 endpoint thus fails after about 3 x 15 s plus backoff (< 60 s). Storage
options (``connect_timeout``, ``read_timeout``, ``retries``, ``config_kwargs``) win over
the variables.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from .errors import AdmfError, ConfigError, DataError, StorageError

__all__ = ["env_seconds", "bar_cache_bytes", "s3_defaults", "s3_retries", "user_error", "check_storage_options", "yaml_load"]

DEFAULTS = {"ADMF_STORAGE_CONNECT_TIMEOUT": 5.0, "ADMF_STORAGE_READ_TIMEOUT": 15.0, "ADMF_STORAGE_RETRIES": 3,
            "ADMF_WORKER_WAIT": 60.0, "ADMF_STALL_TIMEOUT": 1800.0}


def env_seconds(name: str) -> float:
    """A positive number from the environment variable ``name``, else its default (ConfigError if bad)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return DEFAULTS[name]
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name}={raw!r} is not a positive number of seconds", key=name)
    return value


def bar_cache_bytes() -> int:
    """``ADMF_BAR_CACHE_MB`` (default 64; 0 keeps no bar file) in bytes, ConfigError if it is not a size.

    Read by each process that keeps bar files (bars.store._FileCache), and checked by the
    ``admf`` command before anything runs, so a bad value is one line there, not a worker's error.
    """
    raw = os.environ.get("ADMF_BAR_CACHE_MB", "").strip()
    try:
        mb = float(raw) if raw else 64.0
    except ValueError:
        mb = -1.0
    if not 0 <= mb < float("inf"):
        raise ConfigError(f"ADMF_BAR_CACHE_MB={raw!r} is not a number of megabytes >= 0", key="ADMF_BAR_CACHE_MB")
    return int(mb * 1e6)


def s3_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the admf timeouts and bounded retries filled in where the user set none."""
    out = dict(options)
    config = dict(out.get("config_kwargs") or {})
    config.setdefault("connect_timeout", env_seconds("ADMF_STORAGE_CONNECT_TIMEOUT"))
    config.setdefault("read_timeout", env_seconds("ADMF_STORAGE_READ_TIMEOUT"))
    config.setdefault("retries", {"max_attempts": 0})  # botocore's own retries: none; s3fs's: s3_retries()
    out["config_kwargs"] = config
    return out


def s3_retries() -> int:
    """Attempts per S3 request (s3fs's retry loop, backoff 0.1 s x 1.7^i)."""
    return max(1, int(env_seconds("ADMF_STORAGE_RETRIES")))


# Options every fsspec filesystem takes (AbstractFileSystem / the instance cache).
_COMMON = {"skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths", "asynchronous", "loop"}


def check_storage_options(url: str, protocol: str, options: dict[str, Any]) -> None:
    """ConfigError for a storage option the filesystem of ``url`` does not take (local, memory, s3)."""
    if not options:
        return
    import inspect

    try:
        import s3fs

        s3_known = set(inspect.signature(s3fs.S3FileSystem.__init__).parameters) - {"self", "args", "kwargs"}
    except ImportError:
        s3_known = set()
    # One set of options serves a command's store and its storage root (an S3 store, a local root):
    # local and memory roots refuse only options that no filesystem admf uses would take.
    if protocol in ("file", "local"):
        known = {"auto_mkdir"} | s3_known
    elif protocol == "memory":
        known = set(s3_known)
    elif protocol in ("s3", "s3a"):
        known = s3_known
    else:
        return
    known |= _COMMON
    for key in options:
        if key not in known:
            from .errors import did_you_mean

            raise ConfigError(f"unknown storage option {key!r} for {protocol} storage", key=key, file=url,
                              hint=did_you_mean(key, known) or "see the filesystem's documentation (fsspec, s3fs)")


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _endpoint(exc: BaseException, fallback: str | None) -> str:
    kwargs = getattr(exc, "kwargs", None) or {}
    return str(kwargs.get("endpoint_url") or fallback or "the storage endpoint")


def user_error(exc: BaseException, where: str | None = None) -> AdmfError | None:
    """The AdmfError a user-caused exception stands for, or None if it is not one.

    ``where`` names the storage URL (or file) being used, for messages whose
    exception does not carry one.
    """
    if isinstance(exc, AdmfError):
        return exc
    names = []
    for e in _chain(exc):
        name = type(e).__name__
        names.append(name)
        text = str(e)
        if name in ("NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError"):
            return StorageError(f"no storage credentials: {text}", file=where,
                                hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or -o key=... -o secret=...")
        code = (getattr(e, "response", None) or {}).get("Error", {}).get("Code") if hasattr(e, "response") else None
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
                    "InvalidToken", "403"):
            return StorageError(f"storage refused the credentials ({code})", file=where,
                                hint="check the key and secret (-o key=... -o secret=...)")
        if code in ("NoSuchBucket",):
            return StorageError("no such bucket", file=where, hint="create it, or check the URL")
        if name in ("EndpointConnectionError", "ClientConnectorError", "ConnectionRefusedError",
                    "ServerDisconnectedError", "ClientOSError"):
            return StorageError(f"cannot connect to {_endpoint(e, where)}: {_short(text)}", file=where,
                                hint="is the endpoint up and the URL right? (-o endpoint_url=...)")
        if name in ("ConnectTimeoutError", "ReadTimeoutError", "FSTimeoutError", "ServerTimeoutError",
                    "TimeoutError", "timeout"):
            return StorageError(f"{_endpoint(e, where)} did not answer in time ({_short(text) or name})",
                                file=where, hint="the endpoint is frozen or unreachable; timeouts: "
                                "ADMF_STORAGE_READ_TIMEOUT, ADMF_STORAGE_CONNECT_TIMEOUT, ADMF_STORAGE_RETRIES")
        if name == "OutOfBoundsDatetime" or "Out of bounds nanosecond timestamp" in text or (
                name == "OverflowError" and "Timestamp to nanoseconds" in text):
            return DataError(f"date out of range: {_short(text)}", file=where,
                             hint="dates must lie between 1677-09-22 and 2262-04-11")
        if name in ("BadGzipFile", "BadZipFile") or (name == "error" and type(e).__module__ == "zlib") or (
                name == "EOFError" and "compressed" in text):
            return DataError(f"corrupt compressed file: {_short(text)}", file=where)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return StorageError("no space left on the device", file=getattr(e, "filename", None) or where,
                                hint="free some space (temporary files were removed) and rerun")
        if isinstance(e, PermissionError):
            return StorageError(f"permission denied: {_short(text)}", file=getattr(e, "filename", None) or where,
                                hint="check the storage path is writable")
        if isinstance(e, RecursionError):
            return ConfigError("input nested too deeply", file=where)
    return None


def _short(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit] + "..."


# ----------------------------------------------------------------------------- YAML with limits
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000  # nodes after alias expansion


def yaml_load(text: str, *, file: str | None = None) -> Any:
    """``yaml.safe_load`` with limits: nesting depth and the node count after alias expansion.

    A "billion laughs" bomb is refused while composing (before any object is built),
    in milliseconds; so is a document nested deeper than MAX_YAML_DEPTH.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            self.depth += 1
            if self.depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"YAML nested deeper than {MAX_YAML_DEPTH} levels", file=file, line=mark.line + 1)
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    _flow_depth(text, file)
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _count(node, {}, file)
            return loader.construct_document(node)
        return None
    finally:
        loader.dispose()


def _count(node: Any, memo: dict[int, int], file: str | None) -> int:
    import yaml

    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # cycles count once
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_count(child, memo, file) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_count(k, memo, file) + _count(v, memo, file) for k, v in node.value)
    if total > MAX_YAML_NODES:
        raise ConfigError(f"YAML expands to over {MAX_YAML_NODES:,} nodes (alias expansion)", file=file,
                          hint="aliases that repeat aliases multiply; write the values out")
    memo[key] = total
    return total


def _flow_depth(text: str, file: str | None) -> None:
    """Refuse flow collections (``[[[...``, ``{{{...``) nested deeper than MAX_YAML_DEPTH before parsing:
    PyYAML's scanner would take seconds (and Python's stack) on thousands of levels."""
    depth, quote = 0, None
    line = 1
    for ch in text:
        if ch == "\n":
            line += 1
        if quote:
            if ch == quote:
                quote = None
            continue
        if ch in "\"'" and depth:
            quote = ch
        elif ch in "[{":
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(f"YAML nested deeper than {MAX_YAML_DEPTH} levels", file=file, line=line)
        elif ch in "]}":
            depth = max(0, depth - 1)
