"""What admf keeps for this user on this machine, outside any storage root.

The folder is ``$ADMF_CACHE_DIR``, else ``$XDG_CACHE_HOME/admf-dask``, else
``~/.cache/admf-dask``:

=========================  =============================================================
``probe/<class>/<t>.json``  layout probes by machine class and configuration (a storage
                            root keeps its own too): a sweep run into a new root on this
                            machine plans from them, with no probe task
``cluster.json``            the cluster kept by ``admf cluster up`` (:mod:`admf_dask.keep`)
=========================  =============================================================

Everything here is a cache: deleting the folder loses nothing but time.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["folder", "read_json", "write_json"]


def folder() -> str:
    """The folder (not created here)."""
    chosen = os.environ.get("ADMF_CACHE_DIR")
    if chosen:
        return os.path.abspath(os.path.expanduser(chosen))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "admf-dask")


def read_json(name: str) -> Any:
    """The value kept under ``name`` (a relative path), or None when it is missing or does not parse."""
    try:
        with open(os.path.join(folder(), name), "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def write_json(value: Any, name: str) -> str:
    """Keep ``value`` under ``name``, whole or not at all (written beside it, then renamed); the path.

    Raises OSError when the folder cannot be written.
    """
    from .storage import replacing

    path = os.path.join(folder(), name)
    with replacing(path) as tmp, open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    return path
