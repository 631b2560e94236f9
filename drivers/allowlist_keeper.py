"""The allow-list a gate device runs now: its config list, replaced by a stored versioned document.

The rule (one device):
- the config file's `allow_list` is the starting point, version 0 ("config list");
- once a document is stored (from `set_allowlist`, the fleet's whole list, or from an
  `allow_plate` / `revoke_plate` command) it *replaces* the config list, at every later start too.
  Why replace and not add on top: the fleet's document is the whole list. With the config as a
  base, a plate in the config could never be revoked by the fleet, and the box would run a list
  the fleet never sent; a box should run exactly the version it reports. The first command on a
  box with nothing stored starts from the config list (version 0 -> 1), so an operator who adds
  one plate does not silently drop the others. Deny lists, prefixes and confidence stay in the
  config: they are site rules, not membership.
- `set_allowlist` replaces the document only with a newer version; an equal or older one is
  refused naming both (a fleet re-send is idempotent, an out-of-order delivery harmless);
- `allow_plate` / `revoke_plate` make version + 1 (a command that changes nothing writes nothing).
  A fleet that wants to replace such a box-local change sends a version above the one the box
  reports (`allowlist_version` point).

Every change is on disk (drivers/allowlist_store.py: temp file, fsync, rename, folder fsync; in a
worker thread) before it is applied in memory and before the command returns: nothing the box
decides with is newer than what a restart would load. The change runs as its own task behind
asyncio.shield, so a command that times out meanwhile still ends with disk and memory equal.

A stored document that cannot be read or validated does not stop the agent: the device runs its
config list, the problem is logged and reported on the `allowlist_version` point (value missing,
COMM_FAILURE, the reason as text). Meanwhile `allow_plate` / `revoke_plate` are refused (an
incremental change over an unknown list would be a guess); `set_allowlist` of any version
replaces the broken file, which is how the fleet repairs such a box.

Without a store (a driver built with no data directory: tests, a one-off `quanedge agent read`)
changes are kept in memory only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from core.errors import CommandRefused, DriverError
from core.reading import Quality, Reading
from drivers.allowlist import AllowList, normalise_plate_entry, normalise_plates, parse_document
from drivers.allowlist_store import AllowListStore, AllowListUnreadable

__all__ = ["AllowListKeeper", "VERSION_POINT"]

log = logging.getLogger(__name__)

VERSION_POINT = "allowlist_version"


class AllowListKeeper:
    """One device's allow-list: load at build, versioned changes, persisted before they apply."""

    def __init__(self, device: str, config_plates: frozenset[str], store: AllowListStore | None, *,
                 on_change: Callable[[AllowList], None], plates: bool = True, cards: bool = False,
                 note: str = "") -> None:
        self.device = device
        self.store = store
        self.plates, self.cards = plates, cards  # which lists this kind has
        self.note = note  # appended to the point's text (e.g. what the device does not enforce)
        self._on_change = on_change
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.problem: str | None = None  # why the stored document is not used
        self.current = AllowList(0, normalise_plates(config_plates, "allow_list"))
        stored = None
        if store is not None:
            try:
                stored = store.load()
            except AllowListUnreadable as exc:
                self.problem = str(exc)
                log.error("%s: stored allow-list not used, running the config list (%d plates): %s", device,
                          len(self.current.plates), exc)
        if stored is not None:
            self.current = stored
        on_change(self.current)

    @property
    def version(self) -> int:
        return self.current.version

    async def replace(self, args: Mapping[str, Any]) -> AllowList:
        """`set_allowlist`: the whole document, applied only if newer than the one running."""
        try:
            # in a worker thread: 100,000 plates take ~0.1 s to check
            doc = await asyncio.to_thread(parse_document, args, plates=self.plates, cards=self.cards)
        except ValueError as exc:
            raise CommandRefused(f"{self.device}: set_allowlist: {exc}") from None
        async with self._lock:
            if self.problem is None and doc.version <= self.version:
                raise CommandRefused(f"{self.device}: set_allowlist: version {doc.version} is not newer than the "
                                     f"running version {self.version}; nothing changed")
            await self._commit(doc)
        return doc

    async def change_plate(self, plate: str, *, allow: bool) -> AllowList:
        """`allow_plate` / `revoke_plate`: one plate in or out, as version + 1 (no-op: nothing written)."""
        command = "allow_plate" if allow else "revoke_plate"
        try:
            norm = normalise_plate_entry(plate, "plate")
        except ValueError as exc:
            raise CommandRefused(f"{self.device}: {command}: {exc}") from None
        if not self.plates:
            raise CommandRefused(f"{self.device}: {command}: this device reads no plates")
        async with self._lock:
            if self.problem is not None:
                raise CommandRefused(f"{self.device}: {command} refused while the stored allow-list is unusable "
                                     f"(send set_allowlist with the whole list to repair it): {self.problem}")
            plates = set(self.current.plates)
            if (norm in plates) == allow:
                return self.current
            plates = plates | {norm} if allow else plates - {norm}
            await self._commit(self.current.with_plates(plates, self.version + 1))
        return self.current

    async def _commit(self, doc: AllowList) -> None:
        task = asyncio.create_task(self._save_and_apply(doc), name=f"allowlist:{self.device}")
        self._tasks.add(task)
        task.add_done_callback(self._settled)
        await asyncio.shield(task)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self.store is not None:
            log.warning("%s: %s", self.device, task.exception())  # also raised to the command, if it still waits

    async def _save_and_apply(self, doc: AllowList) -> None:
        if self.store is not None:
            try:
                await asyncio.to_thread(self.store.save, doc)
            except OSError as exc:
                raise DriverError(f"{self.device}: cannot store allow-list version {doc.version} at "
                                  f"{self.store.path}: {exc}; nothing changed") from None
        self.current, self.problem = doc, None
        self._on_change(doc)
        log.info("%s: allow-list version %d running (%d plates, %d cards)", self.device, doc.version,
                 len(doc.plates), len(doc.cards))

    def reading(self, ts: float) -> Reading:
        """The `allowlist_version` point: the running version (0 = config list), or the problem."""
        doc = self.current
        if self.problem is not None:
            return Reading(self.device, VERSION_POINT, None, "", ts, Quality.COMM_FAILURE,
                           text=f"running the config list ({len(doc.plates)} plates): {self.problem}"[:500])
        where = "config list" if doc.version == 0 else ("stored" if self.store is not None else "in memory only")
        counts = ", ".join(([f"{len(doc.plates)} plates"] if self.plates else [])
                           + ([f"{len(doc.cards)} cards"] if self.cards else []))
        return Reading(self.device, VERSION_POINT, float(doc.version), "", ts,
                       text=f"{counts}, {where}{self.note}"[:500])
