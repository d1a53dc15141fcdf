"""Errors that reach the user: each says what is wrong, where, and what to do.

Every error the package raises on bad input is an :class:`AdmfError`. The CLI
prints ``str(error)`` on one line and exits with ``error.exit_code`` (2), so a
scheduled job fails loudly and the message points at the fix.

Examples
--------
>>> err = DataError("high below max(open, close)", file="AAPL.csv", symbol="AAPL", line=7)
>>> str(err)
'high below max(open, close) [file AAPL.csv, symbol AAPL, line 7]'
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["AdmfError", "BusyError", "ConfigError", "DataError", "Interrupted", "StorageError", "did_you_mean"]

# Order in which the "where" fields are printed.
_WHERE = ("file", "symbol", "row", "line", "key", "rule")


class AdmfError(Exception):
    """Base class: a message plus where it happened (file, symbol, row, line, key, rule)."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, **where: object) -> None:
        unknown = set(where) - set(_WHERE)
        if unknown:  # a programming error, not a user error
            raise TypeError(f"unknown location fields {sorted(unknown)}; use {_WHERE}")
        self.message = message
        self.hint = hint
        self.where = {k: where[k] for k in _WHERE if where.get(k) is not None}
        super().__init__(str(self))

    def __str__(self) -> str:
        text = self.message
        if self.where:
            text += " [" + ", ".join(f"{k} {v}" for k, v in self.where.items()) + "]"
        if self.hint:
            text += f"; {self.hint}"
        return text

    def __reduce__(self):  # keep the fields when the error crosses a process boundary
        return (_rebuild, (type(self), self.message, self.hint, self.where))


def _rebuild(cls, message, hint, where):
    return cls(message, hint=hint, **where)


class DataError(AdmfError):
    """Market data breaks a rule: a missing column, an unsorted timestamp, a bad price."""


class ConfigError(AdmfError):
    """A configuration or parameter is unknown, missing or out of range."""


class StorageError(AdmfError):
    """Storage cannot be read or written, or holds something it should not."""


class BusyError(AdmfError):
    """Another process holds the lease of this run or workflow: try again later (exit 75, EX_TEMPFAIL)."""

    exit_code = 75


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (exit 130): raised by the ``admf`` command's signal handler.

    A BaseException like KeyboardInterrupt, so ``except Exception`` clean-up code lets
    it through; its own class so that click does not turn it into a bare "Aborted!".
    """

    exit_code = 130

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """Return ``"did you mean 'x'?"`` for the closest choice, or None.

    >>> did_you_mean("n_symbol", ["n_symbols", "seed"])
    "did you mean 'n_symbols'?"
    """
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean {close[0]!r}?" if close else None
