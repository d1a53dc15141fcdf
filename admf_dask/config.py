"""Configuration as frozen dataclasses, validated once at the edge.

:func:`build` turns a mapping (from YAML or the CLI) into a dataclass: unknown keys
are rejected with a "did you mean" hint, values are checked against the field's
type, and every message names the key by its path (``steps[0].generate.symbols``).
What comes out is plain, picklable data that tasks receive explicitly.

Environment overrides (applied by the workflow loader, and by the ``admf`` options of
every command): ``ADMF_CLUSTER`` replaces the ``cluster`` setting, ``ADMF_STORAGE`` the
storage root and ``ADMF_MEMORY_BUDGET`` every ``memory_budget``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import types
import typing
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, did_you_mean

__all__ = ["ClusterConfig", "build", "token"]


def token(obj: Any) -> str:
    """A stable hex token of plain data (dataclasses, dicts, lists, numbers, strings).

    Stable across processes and Python runs, unlike ``hash()``.
    """
    import hashlib

    def plain(o: Any) -> Any:
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return {"__type__": type(o).__name__, **{f.name: plain(getattr(o, f.name))
                                                      for f in dataclasses.fields(o)}}
        if isinstance(o, dict):
            return {str(k): plain(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [plain(v) for v in o]
        return o

    text = json.dumps(plain(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{where} must be {' or '.join(_describe(o) for o in options if o is not type(None))}, "
                          f"got {value!r}", key=where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}", key=where)
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}", key=where)
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}", key=where)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be a whole number, got {value!r}", key=where)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where} must be a number, got {value!r}", key=where)
    if tp is str:
        if isinstance(value, (_dt.date, _dt.datetime)):  # YAML turns 2020-01-01 into a date
            return value.isoformat()
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}", key=where)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    return value


def build(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and bad values.

    >>> @dataclass(frozen=True)
    ... class Demo:
    ...     symbols: int = 3
    >>> build(Demo, {"symbols": 5})
    Demo(symbols=5)
    >>> build(Demo, {"symbol": 5})
    Traceback (most recent call last):
    ...
    admf_dask.errors.ConfigError: unknown key 'symbol' in config [key config.symbol]; did you mean 'symbols'?
    """
    if data is None:
        data = {}
    if hasattr(cls, "parse") and not isinstance(data, dict):
        return cls.parse(data, where)
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of settings, got {data!r}", key=where)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(f"unknown key {key!r} in {where}", key=f"{where}.{key}",
                              hint=did_you_mean(str(key), fields) or f"known keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where} needs the key {name!r}", key=f"{where}.{name}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        key = exc.where.get("key")
        raise ConfigError(exc.message, key=f"{where}.{key}" if key else where, hint=exc.hint) from None


@dataclass(frozen=True)
class ClusterConfig:
    """Where tasks run.

    ``kind`` is ``threads`` (one process, a thread pool: no pickling, good for small
    runs and debugging), ``local`` (a LocalCluster of worker processes, the default),
    ``auto`` (the cluster kept by ``admf cluster up`` when it is up, else ``local``:
    :mod:`admf_dask.keep`) or the address of a running scheduler (``tcp://host:8786``),
    e.g. one started with ``dask scheduler`` / ``dask worker``. ``n_workers`` defaults to the number of
    cores; ``memory_limit`` is per worker ("auto" shares the machine's memory).
    ``timeout`` is how many seconds to wait for a remote scheduler to answer.
    ``dashboard_address`` is where a local cluster serves its dashboard ("" for none).
    """

    kind: str = "local"
    n_workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    timeout: float = 10.0
    dashboard_address: str = ":8787"

    def __post_init__(self) -> None:
        if self.kind not in ("threads", "local", "auto") and "://" not in self.kind:
            raise ConfigError(f"cluster must be threads, local, auto or a scheduler address such as "
                              f"tcp://127.0.0.1:8786, got {self.kind!r}", key="kind",
                              hint=did_you_mean(self.kind, ["threads", "local", "auto"]))
        if self.n_workers is not None and self.n_workers < 1:
            raise ConfigError("n_workers must be >= 1", key="n_workers")
        if self.threads_per_worker < 1:
            raise ConfigError("threads_per_worker must be >= 1", key="threads_per_worker")
        if self.timeout <= 0:
            raise ConfigError("timeout must be > 0 seconds", key="timeout")
        if isinstance(self.memory_limit, str) and self.memory_limit != "auto":
            from dask.utils import parse_bytes

            try:
                parse_bytes(self.memory_limit)
            except (ValueError, TypeError):
                raise ConfigError(f"memory limit {self.memory_limit!r} is not a size", key="memory_limit",
                                  hint="a size per worker such as 4GiB, or auto") from None

    @classmethod
    def parse(cls, value: Any, where: str = "cluster") -> ClusterConfig:
        """Accept a bare string (``local``, ``threads``, ``tcp://...``) or a mapping."""
        if isinstance(value, ClusterConfig):
            return value
        if isinstance(value, str):
            try:
                return cls(kind=value)
            except ConfigError as exc:
                raise ConfigError(exc.message, key=where, hint=exc.hint) from None
        return build(cls, value, where)

    @property
    def is_remote(self) -> bool:
        return "://" in self.kind


def env_override(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None
