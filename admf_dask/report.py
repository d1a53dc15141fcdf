"""What a command or workflow step produced: text for people, plain data for ``--json``.

Both the ``admf`` commands and the workflow steps describe their results here, so
neither imports the other: the tables (:func:`format_top`, :func:`format_signal_set`)
and the JSON-safe dicts of ids and counts (:func:`run_data`, :func:`signal_set_data`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StepResult", "error_line", "format_signal_set", "format_top", "ingest_data", "outcome", "run_data",
           "signal_set_data", "top_records", "utc_now"]

# Exit statuses of the admf command (README "Exit codes", `admf --help`)
OK, FAILED, BAD_INPUT, BUSY, INTERRUPTED = 0, 1, 2, 75, 130


@dataclass(frozen=True)
class StepResult:
    """A step's outcome: ``text`` for people (printed as the step's output) and ``data`` for the
    ``--json`` summary (ids, URLs, counts; JSON-safe values only).

    >>> StepResult("wrote 2 symbol(s)", {"symbols": 2, "bars": 504}).data["bars"]
    504
    """

    text: str
    data: dict[str, Any] = field(default_factory=dict)


def outcome(exc: BaseException) -> tuple[int, str]:
    """The exit code and status word of an error: ``(2, "failed")`` for bad input or configuration
    (AdmfError), ``(75, "busy")`` for a lease held elsewhere, ``(130, "interrupted")`` for SIGINT or
    SIGTERM, ``(1, "failed")`` for anything else (a bug, a lost cluster).

    >>> from admf_dask.errors import BusyError, ConfigError
    >>> outcome(ConfigError("bad")), outcome(BusyError("run x is running")), outcome(ValueError("boom"))
    ((2, 'failed'), (75, 'busy'), (1, 'failed'))
    """
    from .errors import AdmfError, Interrupted

    if isinstance(exc, (Interrupted, KeyboardInterrupt)):
        return INTERRUPTED, "interrupted"
    if isinstance(exc, AdmfError):
        return exc.exit_code, "busy" if exc.exit_code == BUSY else "failed"
    return FAILED, "failed"


def error_line(exc: BaseException) -> str:
    """One line for the user: the AdmfError's own message, else ``<type>: <message>``."""
    from .errors import AdmfError

    return str(exc) if isinstance(exc, AdmfError) else f"{type(exc).__name__}: {exc}"


def utc_now() -> str:
    """The current time as ISO 8601 UTC with milliseconds: ``2026-01-31T02:00:00.123Z``."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_safe(value: Any) -> Any:
    """Plain JSON values: numpy scalars to Python, NaN and infinities to None, timestamps to ISO text."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def dumps(obj: dict[str, Any]) -> str:
    """One line of strict JSON (no NaN)."""
    return json.dumps(json_safe(obj), allow_nan=False, separators=(",", ":"))


def format_top(result: Any) -> str:
    """The top rows of a sweep (or replay) as a table: parameters, symbol and the main statistics."""
    names = result.config.param_names()
    cols = ["symbol", *names, result.config.metric, "total_return", "sharpe", "max_drawdown", "n_trades"]
    top = result.top()[list(dict.fromkeys(cols))]
    return f"top {len(top)} by {result.config.metric}:\n" + top.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def top_records(result: Any) -> list[dict[str, Any]]:
    """The rows of :func:`format_top` as records (every statistic), NaN as None."""
    return [json_safe(row) for row in result.top().to_dict(orient="records")]


def run_data(result: Any) -> dict[str, Any]:
    """A sweep or replay run for ``--json``: run id, URL, whether it was already done, and its counts.

    Keys: ``run_id``, ``url``, ``already_done``, then the run summary's counts
    (``param_sets``, ``symbols``, ``backtests``, ``bar_evaluations``, ``tasks``,
    ``tasks_resumed``, ``wall_seconds``, ...) and ``indicators`` (the hub's counters).
    """
    summary = dict(result.summary)
    status = str(summary.pop("status", ""))
    summary.pop("indicators", None)  # the human line; its numbers are in "hub"
    data = {"run_id": result.run_id, "url": result.url, "already_done": status != "complete"}
    hub = summary.pop("hub", None)
    data.update(json_safe(summary))
    if hub is not None:
        data["indicators"] = json_safe(hub)
    return data


def ingest_data(report: Any) -> dict[str, Any]:
    """An ingest report for ``--json``: ``symbols``, ``bars``, ``rows`` per symbol, ``repairs``, ``fingerprint``,
    the ``mode`` and each symbol's ``changes`` (change, rows before and after, bars added/overwritten/removed)."""
    from dataclasses import asdict

    return {"symbols": len(report.rows), "bars": sum(report.rows.values()), "rows": dict(report.rows),
            "repairs": list(report.repairs), "fingerprint": report.fingerprint,
            "mode": getattr(report, "mode", None),
            "changes": {s: asdict(c) for s, c in getattr(report, "changes", {}).items()}}


def format_signal_set(signal_set: Any) -> list[str]:
    size = signal_set.size()
    lines = [f"signal set {signal_set.set_id} at {signal_set.ref.url}: {len(signal_set.members)} member(s) x "
             f"{len(signal_set.symbols)} symbol(s), {size['events']:,} change events, {size['bytes']:,} bytes "
             f"(dense int8: {size['dense_int8_bytes']:,})"]
    lines += [f"  {k}: {m.label}" for k, m in enumerate(signal_set.members)]
    return lines


def signal_set_data(signal_set: Any) -> dict[str, Any]:
    """A signal set for ``--json``: ``set_id``, ``url``, ``members`` (labels), ``symbols``, ``events``, ``bytes``."""
    size = signal_set.size()
    return {"set_id": signal_set.set_id, "url": signal_set.ref.url,
            "members": [m.label for m in signal_set.members], "symbols": len(signal_set.symbols),
            "events": size["events"], "bytes": size["bytes"]}
