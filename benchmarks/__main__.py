"""Run one benchmark by name: ``python -m benchmarks store [--help]``."""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys

import benchmarks


def _names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = _names()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m benchmarks NAME [options]\n\nbenchmarks: " + ", ".join(names))
        print("Each prints a table, then one JSON object of its figures as the last line.")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in names:
        print(f"unknown benchmark {name!r}; choose one of: {', '.join(names)}", file=sys.stderr)
        return 2
    figures = importlib.import_module(f"benchmarks.{name}").main(rest)
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
