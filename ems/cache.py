"""A per-user cache of derived data that is costly to make and cheap to keep (arrays in ``.npz``).

What goes in is a pure function of ems's data files and code, so each entry is keyed by a
digest of the inputs it was made from (the data files' bytes and the source of the modules
that make it) besides its own parameters: a changed data file or a new ems version makes a
new entry, never a stale answer. An unreadable entry is made again; a cache folder that
cannot be written is skipped. Nothing here is needed for a correct result, only for speed.

Where: ``$EMS_CACHE_DIR`` if set (``off`` or empty: no cache), else ``$XDG_CACHE_HOME/ems``,
else ``~/.cache/ems``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ems.durable import publish

__all__ = ["cache_dir", "digest", "load_arrays", "save_arrays"]

log = logging.getLogger(__name__)


def cache_dir() -> Path | None:
    """The cache folder (see module docs), or None when caching is off."""
    given = os.environ.get("EMS_CACHE_DIR")
    if given is not None:
        return None if given.strip() in ("", "off") else Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ems"


def digest(*parts: bytes | str | Path, files: Iterable[Path] = ()) -> str:
    """A short hex digest of some values and the bytes of some files."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    for f in files:
        h.update(Path(f).read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:20]


def load_arrays(kind: str, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """Arrays and metadata of an entry, or None if there is none (or it cannot be read)."""
    root = cache_dir()
    if root is None:
        return None
    path = root / kind / f"{name}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "_meta"}
            meta: dict[str, Any] = json.loads(str(z["_meta"]))
        return arrays, meta
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as exc:  # damaged or from another format: made again
        log.debug("cache entry %s unreadable (%s); making it again", path, exc)
        return None


def save_arrays(kind: str, name: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Keep an entry (written under a temporary name, then renamed: readers never see half of one)."""
    root = cache_dir()
    if root is None:
        return
    folder = root / kind
    entries: dict[str, Any] = {"_meta": np.array(json.dumps(dict(meta))), **arrays}
    try:
        publish(folder, f"{name}.npz", lambda fh: np.savez(fh, **entries))
    except OSError as exc:
        log.debug("cache folder %s not writable (%s); not caching", folder, exc)
