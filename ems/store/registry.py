"""The embedded store's registry: its format marker and the site and meter registrations.

``ems-store.json`` marks a directory as a store (format and version); ``sites.json`` and
``meters.json`` hold the registrations, upserted under the writers' lock and replaced
atomically, so a reader always sees a whole file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ems.durable import atomic_write_bytes
from ems.errors import StoreError
from ems.readings import MeterInfo, SiteInfo
from ems.store.context import StoreContext

__all__ = ["FORMAT", "Registry", "check_site", "open_root"]

FORMAT: dict[str, Any] = {"format": "ems-segments", "version": 1}
SITE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def check_site(site: str) -> None:
    """Raise unless ``site`` may name a directory of the store."""
    if not SITE_RE.match(site):
        raise StoreError(f"site id {site!r}: expected [a-z0-9][a-z0-9_-]{{0,62}} (it names a directory)")


def open_root(root: Path, read_only: bool) -> None:
    """Check the store marker of ``root``, or make a new store there (unless ``read_only``)."""
    marker = root / "ems-store.json"
    if marker.exists():
        try:
            fmt = json.loads(marker.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{marker}: unreadable store marker: {exc}") from exc
        if fmt.get("format") != FORMAT["format"] or int(fmt.get("version", 0)) > int(FORMAT["version"]):
            raise StoreError(f"{marker}: expected store format {FORMAT}, found {fmt}")
        return
    if read_only:  # a reader never creates anything: say what is there and what to run
        found = "nothing there" if not root.exists() else "a folder without ems-store.json"
        raise StoreError(f"no store at {root} ({found}); write one first, e.g. ems run scenarios/demo.yaml --store {root}")
    if root.exists() and any(root.iterdir()):
        raise StoreError(f"{root}: expected an empty or new directory for a new store; found other files")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(marker, json.dumps(FORMAT).encode())


class Registry:
    """Site and meter registrations of one store (see module docs)."""

    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx

    def _load(self, name: str) -> dict[str, dict[str, Any]]:
        f = self.ctx.root / name
        try:
            data: dict[str, dict[str, Any]] = json.loads(f.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise StoreError(f"{f}: expected JSON registrations; {exc}") from exc
        return data

    def _upsert(self, name: str, items: Mapping[str, dict[str, Any]]) -> None:
        with self.ctx.write_lock.hold():
            data = self._load(name)
            data.update(items)
            atomic_write_bytes(self.ctx.root / name, json.dumps(data, indent=1, sort_keys=True, default=str).encode())

    def register_sites(self, sites: Iterable[SiteInfo]) -> None:
        """Insert or update site registrations (keyed by site)."""
        self.ctx.writable("register_sites")
        items = {s.site: s.to_dict() for s in sites}
        for k in items:
            check_site(k)
        if items:
            self._upsert("sites.json", items)

    def register_meters(self, meters: Iterable[MeterInfo]) -> None:
        """Insert or update meter metadata (keyed by site and meter)."""
        self.ctx.writable("register_meters")
        items = {f"{m.site}/{m.meter}": m.to_dict() for m in meters}
        if items:
            self._upsert("meters.json", items)

    def sites(self) -> list[SiteInfo]:
        """Every registered site."""
        return [SiteInfo.from_dict(d) for _, d in sorted(self._load("sites.json").items())]

    def meters(self) -> list[MeterInfo]:
        """Every registered meter."""
        return [MeterInfo.from_dict(d) for _, d in sorted(self._load("meters.json").items())]
